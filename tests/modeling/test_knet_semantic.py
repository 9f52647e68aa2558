"""The semantic meta-architecture ``KNetSemantic``: training losses, padding, whole / sliding-window
inference, its options, and building every decode head from the config."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from support.semantic import (
    HEAD_NAMES,
    NUM_CLASSES,
    image,
    labels,
    semantic_options,
    tiny_semantic_cfg,
    tiny_semantic_knet,
)
from torch import nn

from knet.modeling.dense_inference import slide_inference, whole_inference
from knet.modeling.decode_head.fcn_head import KNetFCNHead
from knet.modeling.meta_arch import KNetSemantic
from knet.test_time_augmentation import KNetSemanticTTA


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_training_losses_for_every_head(name):
    model = tiny_semantic_knet(name).train()
    batch = [{"image": image(64, 64, i), "sem_seg": labels(64, 64, i)} for i in range(2)]
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
    model = tiny_semantic_knet("fcn").train()
    lab = labels(40, 48)
    batch = [{"image": image(40, 48), "sem_seg": lab},
             {"image": image(64, 64, 1), "sem_seg": labels(64, 64, 1)}]
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": image(32, 32)}])


# ------------------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("name", ["fcn", "uper"])
def test_inference_output_is_probabilities_at_the_original_size(name):
    model = tiny_semantic_knet(name).eval()
    with torch.no_grad():
        out = model([{"image": image(50, 70), "height": 100, "width": 140}, {"image": image(33, 47, 1)}])
    assert out[0]["sem_seg"].shape == (NUM_CLASSES, 100, 140)
    assert out[1]["sem_seg"].shape == (NUM_CLASSES, 33, 47)
    torch.testing.assert_close(out[0]["sem_seg"].sum(0), torch.ones(100, 140))
    assert out[0]["sem_seg"].min() >= 0


def test_whole_inference_matches_manual_resize_softmax():
    model = tiny_semantic_knet("psp").eval()
    img = image(45, 61)
    with torch.no_grad():
        out = model([{"image": img, "height": 90, "width": 122}])[0]["sem_seg"]
        x = ((img.float() - model.pixel_mean) / model.pixel_std).unsqueeze(0)
        dec = model.pixel_decoder(model.backbone(x))
        logits = model.kernel_head(dec["feat"], dec["init_kernels"], dec["init_logits"])
    logits = F.interpolate(logits, (45, 61), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, (90, 122), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, logits[0].softmax(0))


def test_slide_inference_on_an_image_smaller_than_the_window_equals_whole():
    whole = tiny_semantic_knet("aspp", semantic_options(test_mode="whole")).eval()
    opts = semantic_options(test_mode="slide", crop_size=(64, 64), stride=(48, 48))
    slide = tiny_semantic_knet("aspp", opts).eval()
    slide.load_state_dict(whole.state_dict())
    inputs = [{"image": image(40, 56), "height": 80, "width": 112}]
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
        semantic_options(test_mode="sliding")
    with pytest.raises(ValueError, match="SLIDE_STRIDE"):
        semantic_options(stride=(0, 3))


@pytest.mark.parametrize("head", ["KNetFCNHead", "KNetPSPHead", "KNetASPPHead", "KNetUPerHead"])
def test_knet_semantic_builds_and_runs_every_decode_head_from_config(head):
    torch.manual_seed(0)
    cfg = tiny_semantic_cfg(head)
    model = build_model(cfg)
    assert type(model.pixel_decoder).__name__ == head and isinstance(model, KNetSemantic)
    assert model.options.aux_weight == 0.4 and isinstance(model.auxiliary_head, KNetFCNHead)
    assert len(model.kernel_head.update_heads) == 3
    assert model.kernel_head.update_heads[0].kernel_update_conv.in_channels == 32  # half of the 64 head
    model.train()
    batch = [{"image": image(64, 64, i), "sem_seg": labels(64, 64, i) % 11} for i in range(2)]
    losses = model(batch)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([{"image": image(48, 64), "height": 96, "width": 128}])
    assert out[0]["sem_seg"].shape == (11, 96, 128)
    tta = KNetSemanticTTA(cfg, model)  # the trainer's construction path (TEST.AUG.*)
    assert tta.ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and tta.flip and tta.min_size == 256


def test_semantic_config_errors_name_the_key():
    cfg = tiny_semantic_cfg()
    cfg.MODEL.KNET.HIDDEN_DIM = 32
    with pytest.raises(ValueError, match="HIDDEN_DIM"):
        build_model(cfg)
    cfg = tiny_semantic_cfg("KNetFCNHead")
    cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES = ["res6"]
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_model(cfg)
    cfg = tiny_semantic_cfg()
    cfg.MODEL.KNET.RESNET_V1C.OUT_STRIDE = 8  # R-18 (BasicBlock) has no dilated variant
    with pytest.raises(ValueError, match="OUT_STRIDE"):
        build_model(cfg)
