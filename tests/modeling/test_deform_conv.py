"""Deformable convolution without compiled ops (knet.modeling.backbone.deform_conv) and the R-101-DCN models.

* The op equals a direct computation: bilinear sampling at ``p * stride - padding + tap * dilation + offset``
  (row offset first, per offset group), zeros outside the image, as mmcv's ``deformable_im2col`` kernel
  (``mmcv/ops/csrc/common/cuda/deform_conv_cuda_kernel.cuh``) computes it; with a mask for the modulated op.
* The DCN backbone has detectron2's ``DeformBottleneckBlock`` names, builds without detectron2's compiled ops,
  and a converted official R-101-DCN checkpoint (ZwwWayne/K-Net
  ``knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco-panoptic``: mmcv ``DCN``, i.e. v1) loads with nothing missing or
  unexpected and computes, block for block, what the mmdet names prescribe.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from support.official_layouts import official_mmdet_knet
from support.scripts import REPO

from knet import add_knet_config
from knet.checkpoint import convert_checkpoint, save_checkpoint
from knet.checkpoint.checkpointer import KNetCheckpointer
from knet.modeling.backbone.deform_conv import DeformBottleneckBlock, DeformConv, ModulatedDeformConv

DCN_PANOPTIC = os.path.join(REPO, "configs", "model_zoo", "knet_R101_dcn_ms3x_coco_panoptic_inference.yaml")


# ------------------------------------------------------------------------------------------ references
def _bilinear(img, y, x):
    """img (H, W) sampled at the real point (y, x): 0 when (y, x) is at or beyond one pixel outside the
    image, else the bilinear mix of the 4 neighbours, a neighbour outside the image counting 0."""
    H, W = img.shape
    if y <= -1 or y >= H or x <= -1 or x >= W:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    total = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < H and 0 <= xx < W:
                total += wy * wx * float(img[yy, xx])
    return total


def direct_deform_conv(x, offset, weight, bias, stride, padding, dilation, mask=None):
    """Deformable convolution by explicit loops (float64 Python arithmetic)."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    groups = C // Cg
    K = kh * kw
    dg = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[2:]
    out = torch.zeros(N, O, Ho, Wo, dtype=torch.float64)
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                # sampled values per input channel and tap
                cols = torch.zeros(C, K, dtype=torch.float64)
                for c in range(C):
                    g = c // (C // dg)
                    for a in range(kh):
                        for b in range(kw):
                            k = a * kw + b
                            dy = float(offset[n, g * 2 * K + 2 * k, i, j])
                            dx = float(offset[n, g * 2 * K + 2 * k + 1, i, j])
                            y = i * stride - padding + a * dilation + dy
                            xx = j * stride - padding + b * dilation + dx
                            v = _bilinear(x[n, c], y, xx)
                            if mask is not None:
                                v *= float(mask[n, g * K + k, i, j])
                            cols[c, k] = v
                for o in range(O):
                    g = o // (O // groups)
                    w = weight[o].reshape(Cg, K).double()
                    b0 = 0.0 if bias is None else float(bias[o])
                    out[n, o, i, j] = (w * cols[g * Cg:(g + 1) * Cg]).sum() + b0
    return out


def grid_sample_deform_conv(x, offset, weight, stride, padding, dilation):
    """Deformable conv v1 (one offset group, groups 1) with ``F.grid_sample``: another independent
    computation, vectorised, for full-size blocks (``align_corners=True`` maps pixel centres to -1..1;
    ``padding_mode='zeros'`` gives the zero neighbours outside the image)."""
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    base_y = (torch.arange(Ho, dtype=x.dtype) * stride - padding).view(1, Ho, 1)
    base_x = (torch.arange(Wo, dtype=x.dtype) * stride - padding).view(1, 1, Wo)
    out = x.new_zeros(N, O, Ho, Wo)
    for a in range(kh):
        for b in range(kw):
            k = a * kw + b
            y = base_y + a * dilation + offset[:, 2 * k]
            xx = base_x + b * dilation + offset[:, 2 * k + 1]
            grid = torch.stack((2 * xx / (W - 1) - 1, 2 * y / (H - 1) - 1), dim=-1)
            sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out += torch.einsum("oc,nchw->nohw", weight[:, :, a, b], sampled)
    return out


# ------------------------------------------------------------------------------------------ the op
@pytest.mark.parametrize(
    "stride,padding,dilation,groups,dgroups,modulated",
    [(1, 1, 1, 1, 1, False), (2, 1, 1, 1, 1, False), (1, 2, 2, 2, 2, False), (1, 1, 1, 1, 1, True),
     (2, 1, 2, 2, 2, True)],
)
def test_deform_conv_equals_direct_bilinear_sampling(stride, padding, dilation, groups, dgroups, modulated):
    g = torch.Generator().manual_seed(0)
    C, O, H, W = 4, 6, 5, 7
    op_cls = ModulatedDeformConv if modulated else DeformConv
    conv = op_cls(C, O, 3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                  deformable_groups=dgroups, bias=modulated).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(O, generator=g, dtype=torch.float64))
    x = torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
    Ho = (H + 2 * padding - dilation * 2 - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * 2 - 1) // stride + 1
    # offsets up to +-3 pixels: many samples fall between pixels, some outside the image
    offset = (torch.rand(2, 2 * dgroups * 9, Ho, Wo, generator=g, dtype=torch.float64) - 0.5) * 6
    mask = torch.rand(2, dgroups * 9, Ho, Wo, generator=g, dtype=torch.float64) if modulated else None
    out = conv(x, offset, mask) if modulated else conv(x, offset)
    bias = None if conv.bias is None else conv.bias.detach()
    ref = direct_deform_conv(x, offset, conv.weight.detach(), bias,
                             stride, padding, dilation, mask)
    assert out.shape == ref.shape == (2, O, Ho, Wo)
    assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()
    # some taps really sampled outside: the zero-padding rule was exercised
    assert (offset.abs() > 1).any()


def test_zero_offsets_are_a_plain_convolution_and_gradients_flow():
    g = torch.Generator().manual_seed(1)
    conv = DeformConv(3, 5, 3, stride=2, padding=1, bias=True).double()
    x = torch.randn(1, 3, 8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(1, 18, 4, 5, dtype=torch.float64, requires_grad=True)
    out = conv(x, offset)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert torch.allclose(out, ref, atol=1e-12)
    small = DeformConv(2, 2, 3, padding=1).double()
    xs = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    offs = (torch.rand(1, 18, 4, 4, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: small(a, b), (xs, offs))


def test_nan_offsets_sample_zero_instead_of_crashing():
    """mmcv's kernel samples 0 for a NaN offset; torchvision's would read arbitrary memory (a segfault)."""
    conv = DeformConv(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 16, 24)
    offset = torch.randn(1, 18, 16, 24)
    offset[0, 4] = float("nan")  # tap k = 2 (row 0, column 2): its row offset is NaN everywhere
    out = conv(x, offset)
    offset_without_tap = offset.clone()
    offset_without_tap[0, 4] = -1e4  # the same tap sampled far outside the image: zeros
    assert torch.isfinite(out).all()
    assert torch.allclose(out, conv(x, offset_without_tap), atol=1e-6)


def test_deform_conv_checks_shapes_and_runs_under_cpu_autocast():
    conv = DeformConv(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(ValueError, match="offset must have shape \\[1, 18, 6, 6\\]"):
        conv(x, torch.zeros(1, 27, 6, 6))
    with pytest.raises(ValueError, match="deformable_groups"):
        DeformConv(6, 6, 3, deformable_groups=4)
    offset = torch.randn(1, 18, 6, 6)
    ref = conv(x, offset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x.bfloat16(), offset.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.05 * ref.abs().max().item())


# ------------------------------------------------------------------------------------------ the backbone
def _dcn_cfg():
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(DCN_PANOPTIC)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_official_dcn_config_is_dcn_v1_and_builds_without_compiled_ops():
    cfg = _dcn_cfg()
    # mmcv 'DCN' (DeformConv2dPack): not modulated, one offset group, on res3-res5
    assert list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) == [False, True, True, True]
    assert cfg.MODEL.RESNETS.DEFORM_MODULATED is False and cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS == 1
    with torch.device("meta"):
        bottom_up = build_backbone(cfg).bottom_up
    blocks = {name: type(m) for name, m in bottom_up.named_children() if name.startswith("res")}
    assert set(blocks) == {"res2", "res3", "res4", "res5"}
    for stage in ("res3", "res4", "res5"):
        assert all(isinstance(b, DeformBottleneckBlock) for b in getattr(bottom_up, stage))
        assert all(type(b.conv2) is DeformConv for b in getattr(bottom_up, stage))
    assert not any(isinstance(b, DeformBottleneckBlock) for b in bottom_up.res2)


def test_dcn_backbone_names_equal_detectron2_deformable_resnet():
    """Our R-101-DCN has the names and shapes of detectron2's own ``build_resnet_backbone`` with
    ``DEFORM_ON_PER_STAGE`` (its DeformBottleneckBlock), apart from the frozen layers' step counters."""
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = _dcn_cfg()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    try:
        with torch.device("meta"):
            d2 = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    except ImportError as e:  # detectron2 main built without its ops makes DeformConv a placeholder class
        pytest.skip(f"this detectron2 cannot build its own deformable ResNet without compiled ops: {e}")
    with torch.device("meta"):
        ours = build_backbone(cfg).bottom_up
    theirs = {k: tuple(v.shape) for k, v in d2.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    assert sum(k.endswith("conv2_offset.weight") for k in theirs) == 4 + 23 + 3


def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                        sd[p + ".bias"], training=False, eps=1e-5)


def test_converted_official_r101_dcn_checkpoint_loads_and_computes_mmdet_block(tmp_path):
    torch.manual_seed(0)
    ckpt = official_mmdet_knet("r101_dcn", 133, device="cpu")
    sd_in = ckpt["state_dict"]
    for k in list(sd_in):
        if k.endswith("running_var"):
            sd_in[k] = torch.rand(sd_in[k].shape) + 0.5
        elif k.endswith("conv_offset.weight"):
            sd_in[k] = torch.randn(sd_in[k].shape) * 0.05  # offsets of a few pixels
        elif k.endswith("conv_offset.bias"):
            sd_in[k] = torch.randn(sd_in[k].shape)
    cfg = _dcn_cfg()
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model = model.to_empty(device="cpu").eval()  # uninitialised: every value must come from the file
    with torch.no_grad():  # ... except the normalisation, which comes from the config
        model.pixel_mean.copy_(torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1))
        model.pixel_std.copy_(torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1))
    result = convert_checkpoint(ckpt, "mmdet-knet", model.state_dict())
    assert result.summary.left_to_model == []
    path = tmp_path / "knet_r101_dcn_panoptic.pth"
    save_checkpoint(result.to_checkpoint(), path)
    checkpointer = KNetCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(path)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []

    # res3.0 (first DCN block, stride 2 in the deformable 3x3) computed from the mmdet names: conv1-bn1-relu,
    # offsets = conv2.conv_offset(.), deformable conv2-bn2-relu, conv3-bn3, + downsample, relu
    p = "backbone.layer2.0."
    x = torch.randn(1, 256, 12, 14)
    with torch.no_grad():
        h = F.relu(_bn(sd_in, p + "bn1", F.conv2d(x, sd_in[p + "conv1.weight"])))
        off = F.conv2d(h, sd_in[p + "conv2.conv_offset.weight"], sd_in[p + "conv2.conv_offset.bias"],
                       stride=2, padding=1)
        assert off.abs().max() > 1  # real deformation, not a plain conv
        h = F.relu(_bn(sd_in, p + "bn2", grid_sample_deform_conv(h, off, sd_in[p + "conv2.weight"], 2, 1, 1)))
        h = _bn(sd_in, p + "bn3", F.conv2d(h, sd_in[p + "conv3.weight"]))
        short = _bn(sd_in, p + "downsample.1", F.conv2d(x, sd_in[p + "downsample.0.weight"], stride=2))
        ref = F.relu(h + short)
        ours = model.backbone.bottom_up.res3[0](x)
    assert torch.allclose(ours, ref, atol=1e-4 * ref.abs().max().item()), (ours - ref).abs().max()

    # the whole converted model runs (inference, CPU)
    with torch.no_grad():
        image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
        out = model([{"image": image, "height": 64, "width": 96}])
    assert out[0]["panoptic_seg"][0].shape == (64, 96)
