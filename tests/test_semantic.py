"""Semantic K-Net (ADE20K recipe): deep-stem ResNet, kernel-generating heads, semantic kernel head, losses,
whole / sliding-window inference, test-time augmentation, ADE20K labels and configs.

Reference shapes and counts: mmsegmentation ``configs/knet`` checkpoints.
"""
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from knet.modeling.backbone.resnet_v1c import make_resnet_v1c, resnet_v1c_strides_dilations
from knet.modeling.kernel_head.kernel_update_head import KernelUpdateHead
from knet.modeling.kernel_head.kernel_updator import KernelUpdator
from knet.modeling.kernel_head.semantic_kernel_head import KNetSemanticKernelHead
from knet.modeling.pixel_decoder.aspp_head import KNetASPPHead
from knet.modeling.pixel_decoder.fcn_head import KNetFCNHead
from knet.modeling.pixel_decoder.psp_head import KNetPSPHead
from knet.modeling.pixel_decoder.uper_head import KNetUPerHead
from knet.modeling.semantic_forward import (
    SemanticOptions,
    cross_entropy_all_pixels,
    semantic_forward,
    semantic_losses,
    slide_inference,
    whole_inference,
)
from knet.test_time_augmentation import KNetSemanticTTA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5
HEAD_NAMES = ["fcn", "psp", "aspp", "uper"]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------- tiny models
def _tiny_backbone(out_stride=8):
    # channels res2..res5 = 32, 64, 128, 256
    return make_resnet_v1c(
        depth=50, stem_out_channels=16, res2_out_channels=32, width_per_group=8, norm="BN",
        out_stride=out_stride,
    )


def _tiny_aux():
    return KNetFCNHead(
        in_channels=128, in_feature="res4", channels=16, num_classes=NUM_CLASSES, num_convs=1,
        concat_input=False, norm="BN", dropout_ratio=0.1,
    )


def _tiny_head(name, channels=32, aux=True):
    common = dict(channels=channels, num_classes=NUM_CLASSES, norm="BN", dropout_ratio=0.1,
                  auxiliary_head=_tiny_aux() if aux else None)
    if name == "fcn":
        return KNetFCNHead(in_channels=256, in_feature="res5", num_convs=2, concat_input=True, **common)
    if name == "psp":
        return KNetPSPHead(in_channels=256, in_feature="res5", pool_scales=(1, 2, 3, 6), **common)
    if name == "aspp":
        return KNetASPPHead(in_channels=256, in_feature="res5", dilations=(1, 2, 3, 4), **common)
    return KNetUPerHead(in_channels=[32, 64, 128, 256], in_features=["res2", "res3", "res4", "res5"],
                        pool_scales=(1, 2, 3, 6), **common)


class TinySemanticKNet(nn.Module):
    """The semantic path of the KNet meta-architecture on tiny modules (what ``KNet.forward`` delegates
    to)."""

    def __init__(self, head="fcn", options=None, channels=32, updator=16):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = _tiny_backbone(32 if head == "uper" else 8)
        self.pixel_decoder = _tiny_head(head, channels)
        self.kernel_head = KNetSemanticKernelHead(
            in_channels=channels, num_stages=3, updator_channels=updator, num_heads=4,
            feedforward_channels=64,
            semantic_options=options or SemanticOptions(),
        )
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1), False)

    def forward(self, batched_inputs):
        return semantic_forward(
            batched_inputs, backbone=self.backbone, pixel_decoder=self.pixel_decoder,
            kernel_head=self.kernel_head, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std,
            size_divisibility=32,
        )


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _labels(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, NUM_CLASSES, (h, w), generator=g)
    lab[: h // 4] = 255
    return lab


# ------------------------------------------------------------------------------------------------ backbone
def test_resnet_v1c_strides_dilations_table():
    assert resnet_v1c_strides_dilations(8) == ([1, 2, 1, 1], [1, 1, 2, 4])
    assert resnet_v1c_strides_dilations(32) == ([1, 2, 2, 2], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="OUT_STRIDE"):
        resnet_v1c_strides_dilations(4)


@pytest.mark.parametrize("out_stride, res5_hw", [(8, (8, 12)), (32, (2, 3))])
def test_resnet_v1c_shapes_and_dilations(out_stride, res5_hw):
    bb = _tiny_backbone(out_stride).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert out["res2"].shape == (1, 32, 16, 24)
    assert out["res5"].shape == (1, 256) + res5_hw
    assert {k: v.stride for k, v in bb.output_shape().items()} == (
        {"res2": 4, "res3": 8, "res4": 8, "res5": 8} if out_stride == 8
        else {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    )
    dil = {name: [blk.conv2.dilation[0] for blk in getattr(bb, name)] for name in ("res4", "res5")}
    if out_stride == 8:  # contract_dilation: the first block of a dilated stage uses half the dilation
        assert dil == {"res4": [1, 2, 2, 2, 2, 2], "res5": [2, 4, 4]}
        assert [blk.conv2.padding[0] for blk in bb.res5] == [2, 4, 4]
    else:
        assert dil == {"res4": [1] * 6, "res5": [1] * 3}
    # the deep stem: 3x3 convs 8-8-16 (half, half, full) and a max-pool (stride 4 in total)
    assert [tuple(getattr(bb.stem, f"conv{i}").weight.shape) for i in (1, 2, 3)] == [
        (8, 3, 3, 3), (8, 8, 3, 3), (16, 8, 3, 3)
    ]
    keys = bb.state_dict().keys()
    assert "stem.conv3.norm.running_var" in keys and "res2.0.shortcut.norm.weight" in keys
    assert "res3.0.conv2.weight" in keys and "res5.2.conv3.norm.bias" in keys


def test_resnet_v1c_without_contract_dilation():
    bb = make_resnet_v1c(depth=50, stem_out_channels=16, res2_out_channels=32, width_per_group=8,
                         out_stride=8, contract_dilation=False)
    assert [blk.conv2.dilation[0] for blk in bb.res5] == [4, 4, 4]
    assert [blk.conv2.dilation[0] for blk in bb.res4][:2] == [2, 2]


def _conv_bn(cin, cout, k):
    return cin * cout * k * k + 2 * cout


def _expected_resnet_v1c_50():
    """ResNetV1c-50 parameters from the layer shapes of the mmseg checkpoints (deep stem 32-32-64,
    [3,4,6,3])."""
    n = _conv_bn(3, 32, 3) + _conv_bn(32, 32, 3) + _conv_bn(32, 64, 3)
    cin = 64
    for mid, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        out = 4 * mid
        for b in range(blocks):
            n += _conv_bn(cin, mid, 1) + _conv_bn(mid, mid, 3) + _conv_bn(mid, out, 1)
            if b == 0:
                n += _conv_bn(cin, out, 1)
            cin = out
    return n


# ---------------------------------------------------------------------------------- parameter counts
def test_semantic_update_head_parameter_counts():
    """Official counts: C=512 with the 256 updator: 4,403,968; C=256: 1,975,808."""
    h512 = KernelUpdateHead(in_channels=512, num_classes=0, num_heads=8, feedforward_channels=2048,
                            num_mask_fcs=1, mask_mode="soft", updator_channels=256)
    h256 = KernelUpdateHead(in_channels=256, num_classes=0, num_heads=8, feedforward_channels=2048,
                            num_mask_fcs=1, mask_mode="soft", updator_channels=256)
    assert _count(h512) == 4_403_968
    assert _count(h256) == 1_975_808
    assert _count(KNetSemanticKernelHead(in_channels=512)) == 3 * 4_403_968
    # the updator stays 256-sized inside the 512 head (checkpoint layout §6.2)
    assert tuple(h512.kernel_update_conv.dynamic_layer.weight.shape) == (512, 256)


def _r50_heads():
    c = dict(channels=512, num_classes=150, norm="BN", dropout_ratio=0.1)
    return {
        "fcn": KNetFCNHead(in_channels=2048, in_feature="res5", num_convs=2, concat_input=True, **c),
        "psp": KNetPSPHead(in_channels=2048, in_feature="res5", **c),
        "deeplabv3": KNetASPPHead(in_channels=2048, in_feature="res5", dilations=(1, 12, 24, 36), **c),
        "upernet": KNetUPerHead(in_channels=[256, 512, 1024, 2048],
                                in_features=["res2", "res3", "res4", "res5"], **c),
    }


def test_r50_model_parameter_counts():
    """Per-part parameter counts of the four ADE20K R-50 models equal those of the mmseg checkpoint layout."""
    seg = 512 * 150 + 150
    expected_heads = {
        "fcn": _conv_bn(2048, 512, 3) + _conv_bn(512, 512, 3) + _conv_bn(2560, 512, 3) + seg,
        "psp": 4 * _conv_bn(2048, 512, 1) + _conv_bn(4096, 512, 3) + seg,
        "deeplabv3": 2 * _conv_bn(2048, 512, 1) + 3 * _conv_bn(2048, 512, 3) + _conv_bn(2560, 512, 3) + seg,
        "upernet": 4 * _conv_bn(2048, 512, 1) + _conv_bn(4096, 512, 3)
        + sum(_conv_bn(c, 512, 1) for c in (256, 512, 1024)) + 3 * _conv_bn(512, 512, 3)
        + _conv_bn(2048, 512, 3) + seg,
    }
    expected_aux = _conv_bn(1024, 256, 3) + 256 * 150 + 150
    backbone = _count(make_resnet_v1c(depth=50, out_stride=8))
    assert backbone == _expected_resnet_v1c_50() == 23_527_264
    assert _count(make_resnet_v1c(depth=50, out_stride=32)) == backbone
    aux = _count(KNetFCNHead(in_channels=1024, in_feature="res4", channels=256, num_classes=150,
                             num_convs=1, concat_input=False))
    assert aux == expected_aux
    kernel = _count(KNetSemanticKernelHead(in_channels=512, updator_channels=256))
    assert kernel == 13_211_904
    report = {}
    for name, head in _r50_heads().items():
        n = _count(head)
        assert n == expected_heads[name], name
        report[name] = dict(backbone=backbone, head=n, aux=aux, kernel_head=kernel,
                            total=backbone + n + aux + kernel, total_inference=backbone + n + kernel)
    for name, r in report.items():
        print(f"K-Net + {name} R-50 parameters: {r}")
    assert report["fcn"]["total"] == 23_527_264 + expected_heads["fcn"] + expected_aux + 13_211_904


# ---------------------------------------------------------------------------------------- updator split
def test_half_split_updator_equals_per_half_application():
    torch.manual_seed(0)
    upd = KernelUpdator(256, 256, 256)
    for p in upd.parameters():  # non-trivial LayerNorm affine parameters too
        nn.init.normal_(p, std=0.2)
    feat = torch.randn(2, 7, 512)
    kern = torch.randn(2, 7, 1, 512)
    out = upd(feat, kern)
    halves = torch.cat([upd(feat[..., :256], kern[..., :256]), upd(feat[..., 256:], kern[..., 256:])], dim=-1)
    assert out.shape == (2, 7, 1, 512)
    torch.testing.assert_close(out, halves, rtol=1e-5, atol=1e-5)
    # a mixed pairing (half 0 of the feature with half 1 of the kernel) gives something else
    crossed = upd(feat[..., :256], kern[..., 256:])
    assert not torch.allclose(crossed, out[..., :256], atol=1e-3)


# -------------------------------------------------------------------------------------------- the heads
@pytest.mark.parametrize("name", HEAD_NAMES)
def test_generating_head_outputs(name):
    torch.manual_seed(0)
    bb = _tiny_backbone(32 if name == "uper" else 8).eval()
    head = _tiny_head(name)
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 64, 64))
        head.train()
        out_train = head(feats)
        head.eval()
        out = head(feats)
    hw = (16, 16) if name == "uper" else (8, 8)  # UPerNet: stride 4; the others: stride 8
    assert out["feat"].shape == (2, 32) + hw
    assert out["init_logits"].shape == (2, NUM_CLASSES) + hw
    assert out["init_kernels"] is head.conv_seg.weight
    assert out["init_kernels"].shape == (NUM_CLASSES, 32, 1, 1)
    # the initial logits are conv_seg(feat) (dropout is off in eval): kernel n convolved with feat, + bias
    manual = torch.einsum("nc,bchw->bnhw", head.conv_seg.weight[:, :, 0, 0], out["feat"])
    torch.testing.assert_close(out["init_logits"], manual + head.conv_seg.bias.view(1, -1, 1, 1))
    assert "aux_logits" not in out
    aux_hw = (4, 4) if name == "uper" else (8, 8)  # res4: stride 16 undilated, 8 dilated
    assert out_train["aux_logits"].shape == (2, NUM_CLASSES) + aux_hw


def test_psp_pyramid_branch_values():
    """The 1x1 bin of the pyramid is the conv of the global mean, broadcast back over the map."""
    torch.manual_seed(0)
    head = _tiny_head("psp", aux=False).eval()
    x = torch.randn(1, 256, 8, 8)
    from knet.modeling.pixel_decoder.psp_head import pyramid_pooling

    with torch.no_grad():
        outs = pyramid_pooling(x, head.psp_modules, head.pool_scales)
        expected = head.psp_modules[0](x.mean(dim=(2, 3), keepdim=True))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8)] * 4
    torch.testing.assert_close(outs[0], expected.expand(1, 32, 8, 8))


def test_semantic_kernel_head_stages():
    torch.manual_seed(0)
    kh = KNetSemanticKernelHead(in_channels=32, updator_channels=16, num_heads=4, feedforward_channels=64)
    assert all(h.mask_mode == "soft" and h.fc_cls is None for h in kh.update_heads)
    feat = torch.randn(2, 32, 6, 7)
    kernels = torch.randn(NUM_CLASSES, 32, 1, 1, requires_grad=True)
    logits = torch.randn(2, NUM_CLASSES, 6, 7)
    kh.train()
    maps = kh(feat, kernels, logits)
    assert len(maps) == 4 and maps[0] is logits
    assert all(m.shape == (2, NUM_CLASSES, 6, 7) for m in maps)
    maps[-1].sum().backward()
    assert kernels.grad is not None and kernels.grad.abs().sum() > 0  # the class kernels are refined
    kh.eval()
    with torch.no_grad():
        last = kh(feat, kernels, logits)
    torch.testing.assert_close(last, maps[-1].detach())


# ---------------------------------------------------------------------------------------------- losses
def test_cross_entropy_counts_ignored_pixels_in_the_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :3] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    logp = up.log_softmax(1)
    valid = target != 255
    picked = logp.gather(1, target.clamp(max=2).unsqueeze(1))[:, 0]
    expected = -(picked * valid).sum() / target.numel()  # ignored pixels count in the denominator
    got = cross_entropy_all_pixels(logits, target, 255)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, -(picked[valid]).mean())  # differs from the mean over valid pixels
    all_ignored = torch.full((2, 8, 8), 255)
    assert cross_entropy_all_pixels(logits, all_ignored).item() == 0.0


def test_semantic_losses_keys_and_weights():
    torch.manual_seed(0)
    maps = [torch.randn(1, 3, 4, 4) for _ in range(4)]
    aux = torch.randn(1, 3, 2, 2)
    target = torch.randint(0, 3, (1, 8, 8))
    losses = semantic_losses(maps, aux, target, ce_weight=1.0, aux_weight=0.4)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    torch.testing.assert_close(losses["loss_ce_s2"], cross_entropy_all_pixels(maps[2], target))
    torch.testing.assert_close(losses["loss_aux"], 0.4 * cross_entropy_all_pixels(aux, target))
    assert "loss_aux" not in semantic_losses(maps, None, target)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_training_losses_for_every_head(name):
    model = TinySemanticKNet(name).train()
    batch = [{"image": _image(64, 64, i), "sem_seg": _labels(64, 64, i)} for i in range(2)]
    losses = model(batch)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    for k, v in losses.items():
        assert v.ndim == 0 and torch.isfinite(v), k
        # random 5-class logits: the CE over the 3/4 labelled pixels is near 0.75 * log(5)
        expected = 0.75 * np.log(NUM_CLASSES) * (0.4 if k == "loss_aux" else 1.0)
        assert 0.3 * expected < v.item() < 3 * expected, (k, v.item())
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # every parameter takes part (DDP-safe)


def test_training_pads_labels_with_ignore():
    """Images of different sizes are padded together; padded label pixels are ignored (no loss)."""
    model = TinySemanticKNet("fcn").train()
    lab = _labels(40, 48)
    batch = [{"image": _image(40, 48), "sem_seg": lab},
             {"image": _image(64, 64, 1), "sem_seg": _labels(64, 64, 1)}]
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": _image(32, 32)}])


# ------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("name", ["fcn", "uper"])
def test_inference_output_is_probabilities_at_the_original_size(name):
    model = TinySemanticKNet(name).eval()
    with torch.no_grad():
        out = model([{"image": _image(50, 70), "height": 100, "width": 140}, {"image": _image(33, 47, 1)}])
    assert out[0]["sem_seg"].shape == (NUM_CLASSES, 100, 140)
    assert out[1]["sem_seg"].shape == (NUM_CLASSES, 33, 47)
    torch.testing.assert_close(out[0]["sem_seg"].sum(0), torch.ones(100, 140))
    assert out[0]["sem_seg"].min() >= 0


def test_whole_inference_matches_manual_resize_softmax():
    model = TinySemanticKNet("psp").eval()
    img = _image(45, 61)
    with torch.no_grad():
        out = model([{"image": img, "height": 90, "width": 122}])[0]["sem_seg"]
        x = ((img.float() - model.pixel_mean) / model.pixel_std).unsqueeze(0)
        dec = model.pixel_decoder(model.backbone(x))
        logits = model.kernel_head(dec["feat"], dec["init_kernels"], dec["init_logits"])
    logits = F.interpolate(logits, (45, 61), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, (90, 122), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, logits[0].softmax(0))


def test_slide_inference_on_an_image_smaller_than_the_window_equals_whole():
    whole = TinySemanticKNet("aspp", SemanticOptions(test_mode="whole")).eval()
    opts = SemanticOptions(test_mode="slide", crop_size=(64, 64), stride=(48, 48))
    slide = TinySemanticKNet("aspp", opts).eval()
    slide.load_state_dict(whole.state_dict())
    inputs = [{"image": _image(40, 56), "height": 80, "width": 112}]
    with torch.no_grad():
        a = whole(inputs)[0]["sem_seg"]
        b = slide(inputs)[0]["sem_seg"]
    assert b.shape == (NUM_CLASSES, 80, 112)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_slide_inference_windows_and_averaging():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)  # a per-pixel network: sliding must equal whole
    crops = []

    def logits_fn(x):
        crops.append(tuple(x.shape[-2:]))
        return conv(x)[:, :, ::2, ::2]  # stride-2 logits, resized back per window

    def pointwise(x):
        return conv(x)

    img = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        out = slide_inference(logits_fn, img, (32, 48), (20, 30))
        torch.testing.assert_close(slide_inference(pointwise, img, (32, 48), (20, 30)), conv(img))
        torch.testing.assert_close(whole_inference(pointwise, img), conv(img))
    # mmseg grid: ceil((70-32)/20)+1 = 3 rows, ceil((90-48)/30)+1 = 3 columns, windows shifted to the border
    assert crops == [(32, 48)] * 9
    assert out.shape == (1, 4, 70, 90) and torch.isfinite(out).all()
    # a pixel covered by one window only (top-left corner) holds that window's resized logits
    with torch.no_grad():
        first = F.interpolate(conv(img[:, :, :32, :48])[:, :, ::2, ::2], (32, 48), mode="bilinear",
                              align_corners=False)
    torch.testing.assert_close(out[:, :, :10, :15], first[:, :, :10, :15])


def test_semantic_options_validation():
    with pytest.raises(ValueError, match="SEMANTIC_MODE"):
        SemanticOptions(test_mode="sliding")
    with pytest.raises(ValueError, match="SLIDE_STRIDE"):
        SemanticOptions(stride=(0, 3))


# ------------------------------------------------------------------------------------------------- TTA
def test_tta_equals_average_of_individual_scaled_and_flipped_predictions():
    model = TinySemanticKNet("fcn").eval()
    img = _image(32, 48)
    tta = KNetSemanticTTA(model, ratios=[0.5, 1.0, 1.5], min_size=32, max_size=64, flip=True)
    with torch.no_grad():
        got = tta([{"image": img, "height": 32, "width": 48}])[0]["sem_seg"]
        preds = []
        for size in [(16, 24), (32, 48), (48, 72)]:  # short side r*32 (long side <= r*64)
            np_img = img.permute(1, 2, 0).numpy()
            resized = np.asarray(Image.fromarray(np_img).resize((size[1], size[0]), Image.BILINEAR))
            t = torch.from_numpy(resized.copy()).permute(2, 0, 1)
            preds.append(model([{"image": t, "height": 32, "width": 48}])[0]["sem_seg"])
            flipped = model([{"image": t.flip(2), "height": 32, "width": 48}])[0]["sem_seg"]
            preds.append(flipped.flip(2))
    expected = torch.stack(preds).mean(0)
    assert got.shape == (NUM_CLASSES, 32, 48)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, preds[2], atol=1e-4)  # differs from the single-scale prediction
    assert model.training is False


# ---------------------------------------------------------------------------------------------- ADE20K
def test_ade20k_label_conversion():
    from knet.data.datasets.register_ade20k import convert_ade20k_label

    lab = np.array([[0, 1, 150], [151, 2, 0]], dtype=np.uint8)
    out = convert_ade20k_label(lab)
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 0, 149], [255, 1, 255]]


def test_ade20k_registration_metadata():
    from detectron2.data import MetadataCatalog

    from knet.data.datasets.register_ade20k import check_ade20k_metadata

    for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
        check_ade20k_metadata(name)
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == 150 and meta.ignore_label == 255
        split = {"train": "training", "val": "validation"}[name.split("_")[-1]]
        assert meta.sem_seg_root.endswith(os.path.join("annotations_detectron2", split))


def test_prepare_ade20k_script(tmp_path):
    import runpy

    ann = tmp_path / "ADEChallengeData2016" / "annotations"
    for split in ("training", "validation"):
        (ann / split).mkdir(parents=True)
        Image.fromarray(np.array([[0, 3], [150, 1]], dtype=np.uint8)).save(ann / split / "a.png")
    mod = runpy.run_path(os.path.join(REPO, "tools", "prepare_ade20k_sem_seg.py"), run_name="not_main")
    assert mod["main"](["--root", str(tmp_path)]) == 0
    converted = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "a.png"
    out = np.asarray(Image.open(converted))
    assert out.tolist() == [[255, 2], [149, 0]]
    assert mod["main"](["--root", str(tmp_path / "missing")]) == 1


# ---------------------------------------------------------------------------------------------- configs
def _semantic_configs():
    return sorted(glob.glob(os.path.join(REPO, "configs", "ade20k", "semantic-segmentation", "knet_*.yaml")))


def test_ade20k_configs_load_with_the_recipe():
    from detectron2.config import get_cfg

    from knet import add_knet_config

    files = _semantic_configs()
    assert len(files) == 4
    heads = {}
    for f in files:
        cfg = get_cfg()
        add_knet_config(cfg)
        cfg.merge_from_file(f)
        heads[os.path.basename(f)] = (cfg.MODEL.KNET.PIXEL_DECODER.NAME, cfg.MODEL.KNET.RESNET_V1C.OUT_STRIDE)
        s = cfg.SOLVER
        assert (s.BASE_LR, s.WEIGHT_DECAY, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS) == (
            1e-4, 5e-4, 80000, (60000, 72000), 1000)
        assert (s.IMS_PER_BATCH, s.REFERENCE_WORLD_SIZE, s.CLIP_GRADIENTS.CLIP_VALUE) == (16, 8, 1.0)
        assert cfg.MODEL.KNET.NUM_CLASSES == 150 and cfg.INPUT.DATASET_MAPPER_NAME == "knet_semantic"
    assert heads == {
        "knet_deeplabv3_R50.yaml": ("KNetASPPHead", 8),
        "knet_fcn_R50.yaml": ("KNetFCNHead", 8),
        "knet_psp_R50.yaml": ("KNetPSPHead", 8),
        "knet_upernet_R50.yaml": ("KNetUPerHead", 32),
    }


def _tiny_cfg(head="KNetUPerHead"):
    from detectron2.config import get_cfg

    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic", "knet_upernet_semantic_tiny.yaml"))
    cfg.MODEL.KNET.PIXEL_DECODER.NAME = head
    if head != "KNetUPerHead":
        cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES = ["res5"]
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("head", ["KNetFCNHead", "KNetPSPHead", "KNetASPPHead", "KNetUPerHead"])
def test_knet_meta_arch_builds_and_runs_every_semantic_head_from_config(head):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = _tiny_cfg(head)
    model = build_model(cfg)
    assert type(model.pixel_decoder).__name__ == head and model.kernel_head.is_semantic
    assert model.kernel_head.semantic_options.aux_weight == 0.4
    assert len(model.kernel_head.update_heads) == 3
    assert model.kernel_head.update_heads[0].kernel_update_conv.in_channels == 32  # half of the 64 head
    model.train()
    batch = [{"image": _image(64, 64, i), "sem_seg": _labels(64, 64, i) % 11} for i in range(2)]
    losses = model(batch)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([{"image": _image(48, 64), "height": 96, "width": 128}])
    assert out[0]["sem_seg"].shape == (11, 96, 128)
    tta = KNetSemanticTTA(cfg, model)  # the trainer's construction path (TEST.AUG.*)
    assert tta.ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and tta.flip and tta.min_size == 256


def test_semantic_config_errors_name_the_key():
    from detectron2.modeling import build_model

    cfg = _tiny_cfg()
    cfg.MODEL.KNET.HIDDEN_DIM = 32
    with pytest.raises(ValueError, match="HIDDEN_DIM"):
        build_model(cfg)
    cfg = _tiny_cfg("KNetFCNHead")
    cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES = ["res6"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(cfg)
    cfg = _tiny_cfg()
    cfg.MODEL.KNET.RESNET_V1C.OUT_STRIDE = 8  # R-18 (BasicBlock) has no dilated variant
    with pytest.raises(ValueError, match="OUT_STRIDE"):
        build_model(cfg)


# ------------------------------------------------------------------------------------------------- Swin
def _expected_swin(embed, depths, heads, ws=7):
    """Swin parameters from the layer shapes (dense variant: no classifier, one LayerNorm per output)."""
    n = 3 * 16 * embed + embed + 2 * embed  # 4x4 patch embedding + its LayerNorm
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = embed * 2**i
        block = 2 * d + (3 * d * d + 3 * d) + (2 * ws - 1) ** 2 * h + (d * d + d) + 2 * d
        block += (4 * d * d + 4 * d) + (4 * d * d + d)
        n += depth * block + 2 * d  # blocks + output norm
        if i < len(depths) - 1:
            n += 2 * 4 * d + 4 * d * 2 * d  # patch merging: LayerNorm(4d) + Linear(4d, 2d, no bias)
    return n


def test_swin_parameter_counts():
    from knet.modeling.backbone.swin import KNetSwinTransformer

    tiny = KNetSwinTransformer()
    assert _count(tiny) == _expected_swin(96, (2, 2, 6, 2), (3, 6, 12, 24)) == 27_520_698
    with torch.device("meta"):  # Swin-L: count without allocating 195M parameters
        large = KNetSwinTransformer(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
    assert _count(large) == _expected_swin(192, (2, 2, 18, 2), (6, 12, 24, 48)) == 194_998_164
    keys = tiny.state_dict().keys()  # the original Swin names (knet.checkpoint.swin converts to them)
    for k in ("patch_embed.proj.weight", "layers.0.blocks.1.attn.relative_position_bias_table",
              "layers.2.blocks.5.mlp.fc2.bias", "layers.2.downsample.reduction.weight", "norm3.bias"):
        assert k in keys, k
    assert "layers.3.downsample.reduction.weight" not in keys


def test_swin_output_shapes_for_odd_sizes():
    from knet.modeling.backbone.swin import KNetSwinTransformer

    torch.manual_seed(0)
    m = KNetSwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.1)
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 70, 90))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 16, 18, 23), "res3": (2, 32, 9, 12), "res4": (2, 64, 5, 6), "res5": (2, 128, 3, 3)}
    assert {k: (s.channels, s.stride) for k, s in m.output_shape().items()} == {
        "res2": (16, 4), "res3": (32, 8), "res4": (64, 16), "res5": (128, 32)}


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_attends_within_its_windows_only(shift):
    """Perturbing one token changes only the tokens of its (shifted) window."""
    from knet.modeling.backbone.swin import BasicLayer, SwinTransformerBlock

    torch.manual_seed(0)
    blk = SwinTransformerBlock(8, 2, window_size=7, shift_size=shift).eval()
    layer = BasicLayer(8, 2, 2, 7, 4.0, True, [0.0, 0.0], downsample=False)
    H = W = 14
    mask = layer.shifted_window_mask(H, W, torch.device("cpu"))
    x = torch.randn(1, H * W, 8)
    y = x.clone()
    y[0, 0] += 5.0 * torch.randn(8)  # token (0, 0) (not a constant shift: LayerNorm would remove it)
    with torch.no_grad():
        changed = (blk(x, H, W, mask) - blk(y, H, W, mask)).abs().sum(-1).view(H, W) > 1e-6
    expected = torch.zeros(H, W, dtype=torch.bool)
    if shift == 0:
        expected[:7, :7] = True  # the top-left window
    else:
        # rolled by -3: token (0, 0) sits at (11, 11) of the rolled map, in the window [7:14) x [7:14), region
        # rows/cols [11:14); those rolled positions are the original rows/cols 0..2
        expected[:3, :3] = True
    assert torch.equal(changed, expected)


def test_swin_upernet_from_config_trains_and_infers():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = _tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_knet_swin_backbone"
    cfg.MODEL.KNET.SWIN.EMBED_DIM = 16
    cfg.MODEL.KNET.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.KNET.SWIN.NUM_HEADS = [1, 2, 2, 4]
    model = build_model(cfg).train()
    assert type(model.backbone).__name__ == "KNetSwinTransformer"
    batch = [{"image": _image(64, 64, i), "sem_seg": _labels(64, 64, i) % 11} for i in range(2)]
    losses = model(batch)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        assert model([{"image": _image(50, 70)}])[0]["sem_seg"].shape == (11, 50, 70)


def test_swin_configs_load():
    from detectron2.config import get_cfg

    from knet import add_knet_config

    got = {}
    pattern = os.path.join(REPO, "configs", "ade20k", "semantic-segmentation", "swin", "*.yaml")
    for f in sorted(glob.glob(pattern)):
        cfg = get_cfg()
        add_knet_config(cfg)
        cfg.merge_from_file(f)
        s = cfg.MODEL.KNET.SWIN
        assert cfg.MODEL.BACKBONE.NAME == "build_knet_swin_backbone" and cfg.SOLVER.BASE_LR == 6e-5
        crop = tuple(cfg.INPUT.SEMANTIC.CROP_SIZE)
        got[os.path.basename(f)] = (s.EMBED_DIM, tuple(s.DEPTHS), s.DROP_PATH_RATE, crop)
    assert got == {
        "knet_upernet_swin_large_512.yaml": (192, (2, 2, 18, 2), 0.3, (512, 512)),
        "knet_upernet_swin_large_640.yaml": (192, (2, 2, 18, 2), 0.4, (640, 640)),
        "knet_upernet_swin_tiny.yaml": (96, (2, 2, 6, 2), 0.3, (512, 512)),
    }
