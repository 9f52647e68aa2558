"""Checkpoint converters, safe loading and atomic writing (knet.checkpoint, tools/convert_knet_checkpoint.py).

The official layouts are synthesised here from the published checkpoints' layouts (key names and shapes,
written independently of our modules), mostly on the "meta" device (names and shapes only), and converted
against models built from our configs: every checkpoint tensor must land on a model tensor of the same shape
and every model tensor must be filled. Numerical checks use real torchvision ResNets and the Swin
patch-merging reorder.
"""

import importlib.util
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from knet import add_knet_config
from knet.checkpoint import (
    CheckpointLoadError,
    CheckpointMismatchError,
    atomic_write,
    check_normalization,
    convert_checkpoint,
    convert_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from knet.checkpoint.checkpointer import KNetCheckpointer
from knet.checkpoint.swin import permute_norm, permute_reduction, unpermute_norm, unpermute_reduction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEM_CFG_DIR = os.path.join(ROOT, "configs", "ade20k", "semantic-segmentation")
PAN_CFG_DIR = os.path.join(ROOT, "configs", "coco", "panoptic-segmentation")
RGB_MEAN = [123.675, 116.28, 103.53]
RGB_STD = [58.395, 57.12, 57.375]


# ----------------------------------------------------------------------------------------------------------------
# Official layouts (the published checkpoints' key names and shapes)
# ----------------------------------------------------------------------------------------------------------------
class _Layout:
    def __init__(self, device="meta"):
        self.sd = OrderedDict()
        self.device = device

    def t(self, key, *shape, dtype=torch.float32):
        if self.device == "meta":
            self.sd[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif dtype.is_floating_point:
            self.sd[key] = torch.randn(shape, dtype=dtype) * 0.02
        else:
            self.sd[key] = torch.zeros(shape, dtype=dtype)

    def bn(self, p, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            self.t(f"{p}.{leaf}", c)
        self.t(f"{p}.num_batches_tracked", dtype=torch.int64)

    def wb(self, p, c):
        self.t(f"{p}.weight", c)
        self.t(f"{p}.bias", c)

    def linear(self, p, out, inp, bias=True):
        self.t(f"{p}.weight", out, inp)
        if bias:
            self.t(f"{p}.bias", out)


def _resnet(L, prefix, depth=50, dcn=False, deep_stem=False):
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    if deep_stem:
        for conv, bn, cin, cout in [(0, 1, 3, 32), (3, 4, 32, 32), (6, 7, 32, 64)]:
            L.t(f"{prefix}stem.{conv}.weight", cout, cin, 3, 3)
            L.bn(f"{prefix}stem.{bn}", cout)
    else:
        L.t(f"{prefix}conv1.weight", 64, 3, 7, 7)
        L.bn(f"{prefix}bn1", 64)
    inp = 64
    for li, (n, p) in enumerate(zip(blocks, [64, 128, 256, 512]), start=1):
        for b in range(n):
            q = f"{prefix}layer{li}.{b}."
            cin = inp if b == 0 else 4 * p
            L.t(q + "conv1.weight", p, cin, 1, 1)
            L.bn(q + "bn1", p)
            L.t(q + "conv2.weight", p, p, 3, 3)
            if dcn and li >= 2:
                L.t(q + "conv2.conv_offset.weight", 18, p, 3, 3)
                L.t(q + "conv2.conv_offset.bias", 18)
            L.bn(q + "bn2", p)
            L.t(q + "conv3.weight", 4 * p, p, 1, 1)
            L.bn(q + "bn3", 4 * p)
            if b == 0:
                L.t(q + "downsample.0.weight", 4 * p, cin, 1, 1)
                L.bn(q + "downsample.1", 4 * p)
        inp = 4 * p
    return [256, 512, 1024, 2048]


def _mm_swin(L, prefix, embed, depths, heads, window=7):
    L.t(f"{prefix}patch_embed.projection.weight", embed, 3, 4, 4)
    L.t(f"{prefix}patch_embed.projection.bias", embed)
    L.wb(f"{prefix}patch_embed.norm", embed)
    dims = []
    for i, (n, h) in enumerate(zip(depths, heads)):
        d = embed * 2**i
        dims.append(d)
        for j in range(n):
            q = f"{prefix}stages.{i}.blocks.{j}."
            L.wb(q + "norm1", d)
            L.t(q + "attn.w_msa.relative_position_bias_table", (2 * window - 1) ** 2, h)
            L.t(q + "attn.w_msa.relative_position_index", window**2, window**2, dtype=torch.int64)
            L.linear(q + "attn.w_msa.qkv", 3 * d, d)
            L.linear(q + "attn.w_msa.proj", d, d)
            L.wb(q + "norm2", d)
            L.linear(q + "ffn.layers.0.0", 4 * d, d)
            L.linear(q + "ffn.layers.1", d, 4 * d)
        if i < len(depths) - 1:
            L.wb(f"{prefix}stages.{i}.downsample.norm", 4 * d)
            L.t(f"{prefix}stages.{i}.downsample.reduction.weight", 2 * d, 4 * d)
    for i, d in enumerate(dims):
        L.wb(f"{prefix}norm{i}", d)
    return dims


def _update_head(L, p, C, nc=None, updator=256, ffn=2048):
    L.linear(p + "attention.attn.out_proj", C, C)
    L.t(p + "attention.attn.in_proj_weight", 3 * C, C)
    L.t(p + "attention.attn.in_proj_bias", 3 * C)
    L.wb(p + "attention_norm", C)
    k = p + "kernel_update_conv."
    L.linear(k + "dynamic_layer", 2 * updator, updator)
    L.linear(k + "input_layer", 2 * updator, updator)
    L.linear(k + "input_gate", updator, updator)
    L.linear(k + "update_gate", updator, updator)
    for n in ("norm_in", "norm_out", "input_norm_in", "input_norm_out"):
        L.wb(k + n, updator)
    L.linear(k + "fc_layer", updator, updator)
    L.wb(k + "fc_norm", updator)
    L.t(p + "feat_transform.conv.weight", C, C, 1, 1)
    L.t(p + "feat_transform.conv.bias", C)
    L.linear(p + "ffn.layers.0.0", ffn, C)
    L.linear(p + "ffn.layers.1", C, ffn)
    L.wb(p + "ffn_norm", C)
    if nc is not None:
        L.t(p + "cls_fcs.0.weight", C, C)
        L.wb(p + "cls_fcs.1", C)
        L.linear(p + "fc_cls", nc, C)
    L.t(p + "mask_fcs.0.weight", C, C)
    L.wb(p + "mask_fcs.1", C)
    L.linear(p + "fc_mask", C, C)


def official_mmdet_knet(backbone="r50", num_classes=133, device="meta"):
    """An official K-Net det checkpoint: ``{"meta", "state_dict"}``."""
    L = _Layout(device)
    if backbone == "swin_l":
        in_ch = _mm_swin(L, "backbone.", 192, [2, 2, 18, 2], [6, 12, 24, 48])
    else:
        in_ch = _resnet(
            L, "backbone.", 101 if backbone.startswith("r101") else 50, dcn=backbone.endswith("dcn")
        )
    for i, c in enumerate(in_ch):
        L.t(f"neck.lateral_convs.{i}.conv.weight", 256, c, 1, 1)
        L.t(f"neck.lateral_convs.{i}.conv.bias", 256)
    for i in range(4):
        L.t(f"neck.fpn_convs.{i}.conv.weight", 256, 256, 3, 3)
        L.t(f"neck.fpn_convs.{i}.conv.bias", 256)
    L.t("rpn_head.init_kernels.weight", 100, 256, 1, 1)
    L.t("rpn_head.conv_seg.weight", num_classes, 256, 1, 1)
    L.t("rpn_head.conv_seg.bias", num_classes)
    for name in ("loc_convs", "seg_convs"):
        L.t(f"rpn_head.{name}.0.conv.weight", 256, 256, 1, 1)
        L.wb(f"rpn_head.{name}.0.gn", 256)
    for lvl in range(4):
        for j in range(max(1, lvl)):
            L.t(f"rpn_head.localization_fpn.convs_all_levels.{lvl}.conv{j}.conv.weight", 256, 256, 3, 3)
            L.wb(f"rpn_head.localization_fpn.convs_all_levels.{lvl}.conv{j}.gn", 256)
    for name in ("conv_pred", "aux_convs.0"):
        L.t(f"rpn_head.localization_fpn.{name}.conv.weight", 256, 256, 1, 1)
        L.wb(f"rpn_head.localization_fpn.{name}.gn", 256)
    for s in range(3):
        _update_head(L, f"roi_head.mask_head.{s}.", 256, nc=num_classes)
    meta = {
        "mmdet_version": "2.17.0",
        "CLASSES": tuple(f"class{i}" for i in range(num_classes)),
        "config": "...",
    }
    return {"meta": meta, "state_dict": L.sd}


def official_mmseg_knet(head="fcn", backbone="r50", C=512, num_classes=150, device="meta"):
    """An mmseg K-Net checkpoint."""
    L = _Layout(device)
    if backbone == "swin_t":
        in_ch = _mm_swin(L, "backbone.", 96, [2, 2, 6, 2], [3, 6, 12, 24])
    elif backbone == "swin_l":
        in_ch = _mm_swin(L, "backbone.", 192, [2, 2, 18, 2], [6, 12, 24, 48])
    else:
        in_ch = _resnet(L, "backbone.", 50, deep_stem=True)
    g = "decode_head.kernel_generate_head."

    def cm(name, out, inp, k):
        L.t(f"{g}{name}.conv.weight", out, inp, k, k)
        L.bn(f"{g}{name}.bn", out)

    last = in_ch[-1]
    if head == "fcn":
        cm("convs.0", C, last, 3)
        cm("convs.1", C, C, 3)
        cm("conv_cat", C, last + C, 3)
    elif head == "aspp":
        cm("image_pool.1", C, last, 1)
        cm("aspp_modules.0", C, last, 1)
        for k in (1, 2, 3):
            cm(f"aspp_modules.{k}", C, last, 3)
        cm("bottleneck", C, 5 * C, 3)
    else:  # psp, uper
        for k in range(4):
            cm(f"psp_modules.{k}.1", C, last, 1)
        cm("bottleneck", C, last + 4 * C, 3)
        if head == "uper":
            for i in range(3):
                cm(f"lateral_convs.{i}", C, in_ch[i], 1)
                cm(f"fpn_convs.{i}", C, C, 3)
            cm("fpn_bottleneck", C, 4 * C, 3)
    L.t(f"{g}conv_seg.weight", num_classes, C, 1, 1)
    L.t(f"{g}conv_seg.bias", num_classes)
    for s in range(3):
        _update_head(L, f"decode_head.kernel_update_head.{s}.", C)
    L.t("auxiliary_head.convs.0.conv.weight", 256, in_ch[2], 3, 3)
    L.bn("auxiliary_head.convs.0.bn", 256)
    L.t("auxiliary_head.conv_seg.weight", num_classes, 256, 1, 1)
    L.t("auxiliary_head.conv_seg.bias", num_classes)
    return {"meta": {"CLASSES": tuple(f"c{i}" for i in range(num_classes))}, "state_dict": L.sd}


def official_swin_imagenet(embed=192, depths=(2, 2, 18, 2), heads=(6, 12, 24, 48), window=7):
    """An official Swin ImageNet-22k checkpoint (original naming): ``{"model": ...}``."""
    L = _Layout("meta")
    L.t("patch_embed.proj.weight", embed, 3, 4, 4)
    L.t("patch_embed.proj.bias", embed)
    L.wb("patch_embed.norm", embed)
    res = 56
    for i, (n, h) in enumerate(zip(depths, heads)):
        d = embed * 2**i
        for j in range(n):
            q = f"layers.{i}.blocks.{j}."
            L.wb(q + "norm1", d)
            L.t(q + "attn.relative_position_bias_table", (2 * window - 1) ** 2, h)
            L.t(q + "attn.relative_position_index", window**2, window**2, dtype=torch.int64)
            L.linear(q + "attn.qkv", 3 * d, d)
            L.linear(q + "attn.proj", d, d)
            L.wb(q + "norm2", d)
            L.linear(q + "mlp.fc1", 4 * d, d)
            L.linear(q + "mlp.fc2", d, 4 * d)
            if j % 2 == 1 and res > window:
                L.t(q + "attn_mask", (res // window) ** 2, window**2, window**2)
        if i < len(depths) - 1:
            L.t(f"layers.{i}.downsample.reduction.weight", 2 * d, 4 * d)
            L.wb(f"layers.{i}.downsample.norm", 4 * d)
        res //= 2
    L.wb("norm", embed * 8)
    L.linear("head", 21841, embed * 8)
    return {"model": L.sd}


# ----------------------------------------------------------------------------------------------------------------
# Our models, built on the meta device (names and shapes, no memory, no init time)
# ----------------------------------------------------------------------------------------------------------------
def det_cfg(depth=50, num_classes=133, input_format="RGB"):
    """The official det model settings at full width."""
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "KNet"
    cfg.MODEL.PIXEL_MEAN = RGB_MEAN if input_format == "RGB" else RGB_MEAN[::-1]
    cfg.MODEL.PIXEL_STD = RGB_STD if input_format == "RGB" else RGB_STD[::-1]
    cfg.INPUT.FORMAT = input_format
    cfg.MODEL.BACKBONE.NAME = "build_knet_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "KNetFrozenStatsBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.KNET.NUM_CLASSES = num_classes
    cfg.MODEL.KNET.NUM_THING_CLASSES = 80
    cfg.MODEL.KNET.TEST.PANOPTIC_ON = num_classes > 80
    cfg.MODEL.KNET.TEST.INSTANCE_ON = num_classes == 80
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def sem_cfg(name, *opts):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(SEM_CFG_DIR, name))
    # SyncBN needs a process group; BN has the same parameters and buffers
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "BN", "MODEL.KNET.PIXEL_DECODER.NORM", "BN", *opts])
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def pan_cfg(name, *opts):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(PAN_CFG_DIR, name))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def meta_state_dict(cfg):
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return model.state_dict()


def assert_fills_exactly(converted, target):
    """Same names and shapes. BatchNorm's ``num_batches_tracked`` counters are dropped by the converter; a
    state dict without them loads strictly (``_NormBase`` fills them with 0), see the end-to-end test."""
    target = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    unexpected = sorted(set(converted) - set(target))
    missing = sorted(set(target) - set(converted))
    assert not unexpected and not missing, f"unexpected: {unexpected[:5]}, missing: {missing[:5]}"
    bad = [k for k in target if tuple(converted[k].shape) != tuple(target[k].shape)]
    assert not bad, bad[:5]


# ----------------------------------------------------------------------------------------------------------------
# Detection checkpoints
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "backbone,depth,num_classes,n_in,n_mapped",
    [("r50", 50, 133, 502, 449), ("r50", 50, 80, 502, 449), ("r101", 101, 133, 808, 704)],
    ids=["R50-panoptic", "R50-instance", "R101-panoptic"],
)
def test_official_det_checkpoint_fills_model(backbone, depth, num_classes, n_in, n_mapped):
    ckpt = official_mmdet_knet(backbone, num_classes)
    target = meta_state_dict(det_cfg(depth, num_classes))
    result = convert_checkpoint(ckpt, "mmdet-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (n_in, n_mapped, n_in - n_mapped)
    assert set(s.dropped_by_reason()) == {"BatchNorm step counter (num_batches_tracked)"}
    assert s.mapped["neck"] == 16 and s.mapped["pixel_decoder"] == 27 and s.mapped["kernel_head"] == 141
    assert s.dropped_top_level == ["meta"]
    assert result.metadata["classes"] == [f"class{i}" for i in range(num_classes)]
    assert result.metadata["num_classes"] == num_classes
    # the official parameter counts, from the converted tensors (learnable leaves only)
    sd = result.state_dict
    per_stage = sum(v.numel() for k, v in sd.items() if k.startswith("kernel_head.update_heads.0."))
    assert per_stage == {80: 2_062_416, 133: 2_076_037}[num_classes]
    fpn = sum(v.numel() for k, v in sd.items() if k.startswith("backbone.fpn_"))
    assert fpn == 3_344_384
    rpn = sum(
        v.numel()
        for k, v in sd.items()
        if k.startswith(("pixel_decoder.", "kernel_head.")) and ".update_heads." not in k
    )
    assert rpn == {80: 4_442_704, 133: 4_456_325}[num_classes]
    # a few renames spelled out
    assert "backbone.bottom_up.res5.2.conv3.norm.running_var" in sd
    assert "kernel_head.update_heads.2.ffn.linear2.bias" in sd
    assert "kernel_head.update_heads.1.attention.in_proj_weight" in sd
    assert "pixel_decoder.convs_all_levels.3.conv2.norm.weight" in sd


def test_official_det_checkpoint_loads_through_knet_checkpointer(tmp_path):
    """The converted file loads as MODEL.WEIGHTS does: zero missing, zero unexpected, zero wrong shapes."""
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get("KNet")(det_cfg(50, 133))
    model = model.to_empty(device="cpu")  # uninitialised: every value must come from the file
    ckpt = official_mmdet_knet("r50", 133, device="cpu")
    result = convert_checkpoint(ckpt, "mmdet-knet", model.state_dict())
    sd_in, out = ckpt["state_dict"], result.state_dict
    pairs = {
        "backbone.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.layer3.0.downsample.1.running_mean": "backbone.bottom_up.res4.0.shortcut.norm.running_mean",
        "neck.fpn_convs.3.conv.bias": "backbone.fpn_output5.bias",
        "rpn_head.localization_fpn.aux_convs.0.gn.bias": "pixel_decoder.aux_convs.0.norm.bias",
        "rpn_head.loc_convs.0.conv.weight": "kernel_head.loc_convs.0.weight",
        "roi_head.mask_head.2.kernel_update_conv.dynamic_layer.weight": (
            "kernel_head.update_heads.2.kernel_update_conv.dynamic_layer.weight"
        ),
        "roi_head.mask_head.0.attention.attn.out_proj.weight": (
            "kernel_head.update_heads.0.attention.out_proj.weight"
        ),
        "roi_head.mask_head.1.feat_transform.conv.weight": "kernel_head.update_heads.1.feat_transform.weight",
    }
    for src, dst in pairs.items():
        assert torch.equal(sd_in[src], out[dst]), (src, dst)
    path = tmp_path / "knet_r50_panoptic.safetensors"
    save_checkpoint(result.to_checkpoint(), path)
    incompatible = KNetCheckpointer(model)._load_model(KNetCheckpointer(model)._load_file(str(path)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    sd = model.state_dict()
    assert torch.equal(
        sd["kernel_head.init_kernels.weight"], result.state_dict["kernel_head.init_kernels.weight"]
    )
    assert torch.equal(
        sd["backbone.bottom_up.res3.1.conv2.norm.running_var"],
        result.state_dict["backbone.bottom_up.res3.1.conv2.norm.running_var"],
    )


def test_r101_dcn_names_match_detectron2_deformable_resnet():
    """R-101-DCN at the naming level (detectron2's deformable conv is a compiled op we do not have): the
    converted backbone names and shapes equal those of detectron2's ResNet with DEFORM_ON_PER_STAGE c3-c5."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = det_cfg(101, 133)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = False
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
    with torch.device("meta"):
        bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    target_bb = {"backbone.bottom_up." + k: v for k, v in bottom_up.state_dict().items()}
    converted, summary = convert_state_dict(official_mmdet_knet("r101_dcn")["state_dict"], "mmdet-knet")
    conv_bb = {k: v for k, v in converted.items() if k.startswith("backbone.bottom_up.")}
    assert_fills_exactly(conv_bb, target_bb)
    offsets = [k for k in converted if k.endswith("conv2_offset.weight")]
    assert len(offsets) == 4 + 23 + 3  # every block of res3-res5
    assert tuple(converted["backbone.bottom_up.res4.7.conv2_offset.weight"].shape) == (18, 256, 3, 3)
    assert not any(k.startswith("backbone.bottom_up.res2.") and "offset" in k for k in converted)
    assert (summary.num_input_keys, summary.num_mapped, summary.num_dropped) == (868, 764, 104)


def _patch_merge_original(x, norm_w, norm_b, red):
    """Swin's PatchMerging (original repo): concat x0 (even rows, even cols), x1 (odd, even), x2 (even, odd),
    x3 (odd, odd) -> LN -> Linear. x: (B, H, W, d)."""
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return F.linear(F.layer_norm(cat, cat.shape[-1:], norm_w, norm_b), red)


def _patch_merge_mm(x, norm_w, norm_b, red):
    """mmdet/mmseg PatchMerging: nn.Unfold(2, stride 2) order (channel-major, then kernel position) -> LN ->
    Linear."""
    B, H, W, d = x.shape
    cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, L, d*4)
    return F.linear(F.layer_norm(cols, cols.shape[-1:], norm_w, norm_b), red).reshape(B, H // 2, W // 2, -1)


def test_swin_patch_merging_unpermute_is_numerically_exact():
    torch.manual_seed(0)
    d = 6
    x = torch.randn(2, 4, 6, d)
    red_mm, nw_mm, nb_mm = torch.randn(2 * d, 4 * d), torch.rand(4 * d) + 0.5, torch.randn(4 * d)
    ref = _patch_merge_mm(x, nw_mm, nb_mm, red_mm)
    ours = _patch_merge_original(x, unpermute_norm(nw_mm), unpermute_norm(nb_mm), unpermute_reduction(red_mm))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert not torch.allclose(_patch_merge_original(x, nw_mm, nb_mm, red_mm), ref, atol=1e-3)  # order matters
    w = torch.randn(2 * d, 4 * d)
    assert torch.equal(permute_reduction(unpermute_reduction(w)), w)
    assert torch.equal(permute_norm(unpermute_norm(w[0])), w[0])


def test_swin_l_det_and_imagenet_names():
    converted, s = convert_state_dict(official_mmdet_knet("swin_l")["state_dict"], "mmdet-knet")
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (541, 541, 0)
    names = set(converted)
    assert "backbone.bottom_up.layers.2.blocks.17.attn.qkv.weight" in names
    assert "backbone.bottom_up.layers.1.downsample.reduction.weight" in names
    assert "backbone.bottom_up.patch_embed.proj.weight" in names and "backbone.bottom_up.norm3.bias" in names
    assert "backbone.bottom_up.layers.0.blocks.0.mlp.fc2.weight" in names
    assert not any(
        "w_msa" in k or "ffn.layers" in k or "stages." in k for k in names if k.startswith("backbone")
    )
    assert sum(k.endswith("reduction.weight") for k in names) == 3
    assert [k for k, _ in s.transformed] == [k for k in converted if ".downsample." in k]

    imnet, s2 = convert_state_dict(official_swin_imagenet()["model"], "swin")
    assert (s2.num_input_keys, s2.num_mapped, s2.num_dropped) == (364, 349, 15)
    reasons = s2.dropped_by_reason()
    assert reasons["ImageNet classifier"] == 2 and sum("attention mask" in r for r in reasons) == 1
    # the ImageNet weights fill exactly the K-Net Swin-L backbone, except the per-output norms it adds
    det_bb = {k for k in converted if k.startswith("backbone.bottom_up.")}
    assert det_bb - set(imnet) == {
        f"backbone.bottom_up.norm{i}.{w}" for i in range(4) for w in ("weight", "bias")
    }
    assert set(imnet) <= det_bb


# ----------------------------------------------------------------------------------------------------------------
# Semantic (mmseg) checkpoints
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head,config,n_in,n_mapped",
    [
        ("fcn", "knet_fcn_R50.yaml", 475, 416),
        ("psp", "knet_psp_R50.yaml", 487, 426),
        ("aspp", "knet_deeplabv3_R50.yaml", 493, 431),
        ("uper", "knet_upernet_R50.yaml", 529, 461),
    ],
)
def test_official_mmseg_checkpoint_fills_model(head, config, n_in, n_mapped):
    target = meta_state_dict(sem_cfg(config))
    result = convert_checkpoint(official_mmseg_knet(head), "mmseg-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (n_in, n_mapped, n_in - n_mapped)
    assert s.mapped["auxiliary_head"] == 7 and s.mapped["kernel_head"] == 117
    assert result.metadata["classes"][:2] == ["c0", "c1"] and result.metadata["num_classes"] == 150
    per_stage = sum(
        v.numel() for k, v in result.state_dict.items() if k.startswith("kernel_head.update_heads.1.")
    )
    assert per_stage == 4_403_968  # official count: a 512-wide seg update head with the 256-wide updator


def test_mmseg_auxiliary_head_dropped_when_model_has_none():
    target = meta_state_dict(sem_cfg("knet_psp_R50.yaml", "MODEL.KNET.SEMANTIC.AUX_LOSS_WEIGHT", "0.0"))
    assert not any("auxiliary_head" in k for k in target)
    result = convert_checkpoint(official_mmseg_knet("psp"), "mmseg-knet", target)
    assert_fills_exactly(result.state_dict, target)
    assert sum("auxiliary FCN head" in r for _, r in result.summary.dropped) == 7


def test_mmseg_swin_upernet_names():
    for backbone, n_in, n_mapped in [("swin_t", 388, 375), ("swin_l", 556, 543)]:
        converted, s = convert_state_dict(official_mmseg_knet("uper", backbone)["state_dict"], "mmseg-knet")
        assert (s.num_input_keys, s.num_mapped) == (n_in, n_mapped)
        assert "backbone.layers.3.blocks.1.attn.proj.bias" in converted
        assert "pixel_decoder.fpn_bottleneck.norm.running_var" in converted


# ----------------------------------------------------------------------------------------------------------------
# Swin backbones: semantic UPerNet models (backbone.*) and the panoptic Swin-L + FPN (backbone.bottom_up.*)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config,backbone,n_in,n_mapped,n_backbone",
    [
        ("swin/knet_upernet_swin_tiny.yaml", "swin_t", 388, 363, 177),
        ("swin/knet_upernet_swin_large_512.yaml", "swin_l", 556, 519, 333),
        ("swin/knet_upernet_swin_large_640.yaml", "swin_l", 556, 519, 333),
    ],
)
def test_mmseg_swin_upernet_checkpoint_fills_model(config, backbone, n_in, n_mapped, n_backbone):
    """mmseg K-Net UPerNet Swin-T / Swin-L: every checkpoint tensor lands in the model built from our Swin
    configs and every model tensor is filled; the semantic Swin lives at ``backbone.*`` (no FPN)."""
    target = meta_state_dict(sem_cfg(config))
    result = convert_checkpoint(official_mmseg_knet("uper", backbone), "mmseg-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (n_in, n_mapped, n_in - n_mapped)
    n_blocks = {"swin_t": 12, "swin_l": 24}[backbone]
    assert s.dropped_by_reason() == {
        "BatchNorm step counter (num_batches_tracked)": 13,
        "relative_position_index buffer (recomputed from the window size)": n_blocks,
    }
    assert s.mapped == {"backbone": n_backbone, "pixel_decoder": 62, "kernel_head": 117, "auxiliary_head": 7}
    sd = result.state_dict
    assert not any(k.startswith("backbone.bottom_up.") for k in sd)
    last = {"swin_t": "layers.2.blocks.5", "swin_l": "layers.2.blocks.17"}[backbone]
    assert f"backbone.{last}.attn.relative_position_bias_table" in sd
    leaves = ("norm.weight", "norm.bias", "reduction.weight")
    assert [k for k, _ in s.transformed] == [
        f"backbone.layers.{i}.downsample.{leaf}" for i in range(3) for leaf in leaves
    ]
    embed = {"swin_t": 96, "swin_l": 192}[backbone]
    assert tuple(sd["pixel_decoder.lateral_convs.0.weight"].shape) == (512, embed, 1, 1)
    assert tuple(sd["pixel_decoder.auxiliary_head.convs.0.weight"].shape) == (256, 4 * embed, 3, 3)


def test_official_swin_l_panoptic_checkpoint_fills_swin_fpn_model():
    """The official K-Net Swin-L panoptic checkpoint (mmdet Swin + FPN) fills the model of
    configs/coco/panoptic-segmentation/knet_swinL_ms3x.yaml: Swin under ``backbone.bottom_up.``, the FPN as
    detectron2's ``fpn_lateral{2..5}`` / ``fpn_output{2..5}`` (no P6)."""
    cfg = pan_cfg("knet_swinL_ms3x.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_knet_swin_fpn_backbone"
    target = meta_state_dict(cfg)
    result = convert_checkpoint(official_mmdet_knet("swin_l", 133), "mmdet-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (541, 517, 24)
    assert s.mapped == {"backbone": 333, "neck": 16, "pixel_decoder": 27, "kernel_head": 141}
    sd = result.state_dict
    assert {k.split(".")[1] for k in sd if k.startswith("backbone.")} == {
        "bottom_up", *(f"fpn_{kind}{lvl}" for kind in ("lateral", "output") for lvl in range(2, 6))
    }
    for lvl, c in zip(range(2, 6), (192, 384, 768, 1536)):
        assert tuple(sd[f"backbone.fpn_lateral{lvl}.weight"].shape) == (256, c, 1, 1)
    table = "backbone.bottom_up.layers.3.blocks.1.attn.relative_position_bias_table"
    assert tuple(sd[table].shape) == (169, 48)
    assert tuple(sd["backbone.bottom_up.layers.2.downsample.reduction.weight"].shape) == (1536, 3072)


@pytest.mark.parametrize(
    "where,embed,depths,heads,classes,n_in,n_mapped",
    [
        ("semantic Swin-T", 96, (2, 2, 6, 2), (3, 6, 12, 24), 1000, 190, 169),
        ("panoptic Swin-L", 192, (2, 2, 18, 2), (6, 12, 24, 48), 21841, 364, 325),
    ],
)
def test_swin_imagenet_weights_fill_swin_backbones(where, embed, depths, heads, classes, n_in, n_mapped):
    """``--source swin``: the official ImageNet weights fill our Swin backbone wherever the model has it
    (``backbone.*`` in the semantic models, ``backbone.bottom_up.*`` under the FPN): every backbone tensor but
    the new per-output norms ``norm0..3``; the rest of the model keeps its initialisation."""
    if where == "semantic Swin-T":
        cfg, prefix = sem_cfg("swin/knet_upernet_swin_tiny.yaml"), "backbone."
    else:
        cfg, prefix = pan_cfg("knet_swinL_ms3x.yaml"), "backbone.bottom_up."
    target = meta_state_dict(cfg)
    ckpt = official_swin_imagenet(embed, depths, heads)
    ckpt["model"]["head.weight"] = torch.empty(classes, embed * 8, device="meta")
    ckpt["model"]["head.bias"] = torch.empty(classes, device="meta")
    result = convert_checkpoint(ckpt, "swin", target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped) == (n_in, n_mapped)
    norms = {f"{prefix}norm{i}.{w}" for i in range(4) for w in ("weight", "bias")}
    swin_keys = {k for k in target if k.startswith(prefix) and not k.startswith("backbone.fpn_")}
    assert set(result.state_dict) == swin_keys - norms
    assert all(tuple(v.shape) == tuple(target[k].shape) for k, v in result.state_dict.items())
    assert norms <= set(s.left_to_model)
    assert not any(k.startswith(prefix) for k in set(s.left_to_model) - norms)
    reason = "relative_position_index buffer (recomputed from the window size)"
    assert s.dropped_by_reason()[reason] == sum(depths)


def _tiny_swin(window=3):
    from knet.modeling.backbone.swin import KNetSwinTransformer

    torch.manual_seed(0)
    return KNetSwinTransformer(
        embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=window, drop_path_rate=0.0
    ).eval()


def test_swin_conversion_fills_real_backbone_and_patch_merging_is_numerically_right():
    """A real-valued mmseg-layout Swin (tiny sizes) converted into our ``KNetSwinTransformer``: it loads
    strictly, copies the other tensors unchanged, and our PatchMerging modules with the converted weights
    compute what mmseg's ``nn.Unfold`` patch merging computes with the original ones. mmseg's ImageNet
    re-export of the same weights (``--source swin``, mmseg naming) converts to the same tensors."""
    model = _tiny_swin()
    embed, depths, heads = 8, (2, 2, 2, 2), (1, 2, 2, 4)
    L = _Layout("cpu")
    _mm_swin(L, "backbone.", embed, depths, heads, window=3)
    gen = torch.Generator().manual_seed(1)
    for k, v in L.sd.items():  # LayerNorm scales in [0.5, 1.5], everything else N(0, 1): no order hides
        if v.is_floating_point() and "norm" in k:
            v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
        elif v.is_floating_point():
            v.copy_(torch.randn(v.shape, generator=gen))
    mm = L.sd
    target = {"backbone." + k: v for k, v in model.state_dict().items()}
    converted, summary = convert_state_dict(mm, "mmseg-knet", target)
    assert set(converted) == set(target)
    assert summary.num_dropped == sum(depths)  # the relative_position_index buffers
    model.load_state_dict({k[len("backbone."):]: v for k, v in converted.items()}, strict=True)
    for ours_t, key in [
        (model.layers[1].blocks[1].attn.qkv.weight, "stages.1.blocks.1.attn.w_msa.qkv.weight"),
        (model.layers[3].blocks[0].mlp.fc1.bias, "stages.3.blocks.0.ffn.layers.0.0.bias"),
        (model.layers[2].blocks[1].attn.relative_position_bias_table,
         "stages.2.blocks.1.attn.w_msa.relative_position_bias_table"),
        (model.patch_embed.proj.weight, "patch_embed.projection.weight"),
        (model.norm2.bias, "norm2.bias"),
    ]:
        assert torch.equal(ours_t, mm["backbone." + key]), key

    with torch.no_grad():
        for i in range(3):
            d = embed * 2**i
            xi = torch.randn(2, 6, 10, d, generator=gen)
            p = f"backbone.stages.{i}.downsample."
            ref = _patch_merge_mm(xi, mm[p + "norm.weight"], mm[p + "norm.bias"], mm[p + "reduction.weight"])
            ours = model.layers[i].downsample(xi.reshape(2, 60, d), 6, 10).reshape(2, 3, 5, 2 * d)
            assert torch.allclose(ours, ref, atol=1e-5), (i, (ours - ref).abs().max())
            # without the reorder the same weights give something else
            raw = _patch_merge_original(
                xi, mm[p + "norm.weight"], mm[p + "norm.bias"], mm[p + "reduction.weight"]
            )
            assert (raw - ref).abs().max() > 0.1
        out = model(torch.randn(2, 3, 24, 40, generator=gen))
    shapes = [tuple(out[f"res{i}"].shape) for i in range(2, 6)]
    assert shapes == [(2, 8, 6, 10), (2, 16, 3, 5), (2, 32, 2, 3), (2, 64, 1, 2)]

    # mmseg's ImageNet re-export (tools/model_converters/swin2mmseg.py): no prefix, no per-output norms, the
    # classifier's final norm and the attention masks kept
    imnet = {k[len("backbone."):]: v for k, v in mm.items() if not re.match(r"backbone\.norm\d", k)}
    imnet["norm.weight"], imnet["norm.bias"] = torch.ones(8 * embed), torch.zeros(8 * embed)
    imnet["stages.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)
    res = convert_checkpoint(imnet, "swin", target)
    norms = {f"backbone.norm{i}.{w}" for i in range(4) for w in ("weight", "bias")}
    assert set(res.state_dict) == set(target) - norms and set(res.summary.left_to_model) == norms
    assert all(torch.equal(res.state_dict[k], converted[k]) for k in res.state_dict)
    assert {r for _, r in res.summary.dropped} >= {
        "final norm of the classifier (dense-prediction Swin has norm0..norm3)",
        "shifted-window attention mask (depends on the input size; recomputed)",
    }


def test_swin_fpn_backbone_outputs_p2_to_p5():
    """``build_knet_swin_fpn_backbone`` on a tiny Swin: detectron2 FPN names, P2-P5 only (no P6), strides
    4-32."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    cfg = pan_cfg(
        "knet_swinL_ms3x.yaml",
        "MODEL.KNET.SWIN.EMBED_DIM", "8",
        "MODEL.KNET.SWIN.DEPTHS", "[2, 2, 2, 2]",
        "MODEL.KNET.SWIN.NUM_HEADS", "[1, 2, 2, 4]",
        "MODEL.KNET.SWIN.WINDOW_SIZE", "3",
        "MODEL.FPN.OUT_CHANNELS", "16",
    )
    torch.manual_seed(0)
    bb = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3)).eval()
    names = {k.split(".")[0] for k in bb.state_dict()}
    assert names == {"bottom_up", *(f"fpn_{t}{lvl}" for t in ("lateral", "output") for lvl in range(2, 6))}
    assert bb.size_divisibility == 32
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        f"p{lvl}": (16, 2**lvl) for lvl in range(2, 6)
    }
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{lvl}": (1, 16, 64 >> lvl, 96 >> lvl) for lvl in range(2, 6)
    }
    assert all(torch.isfinite(v).all() and v.std() > 0 for v in out.values())
    bad = pan_cfg("knet_swinL_ms3x.yaml", "MODEL.RESNETS.OUT_FEATURES", '["res3", "res4", "res5"]')
    with pytest.raises(ValueError, match=r"MODEL.FPN.IN_FEATURES .*MODEL.RESNETS.OUT_FEATURES"):
        with torch.device("meta"):
            BACKBONE_REGISTRY.get(bad.MODEL.BACKBONE.NAME)(bad, ShapeSpec(channels=3))


# ----------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------
def test_refuses_unknown_key():
    ckpt = official_mmdet_knet("r50", 133)
    ckpt["state_dict"]["roi_head.mask_head.0.extra_layer.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"roi_head\.mask_head\.0\.extra_layer\.weight") as e:
        convert_checkpoint(ckpt, "mmdet-knet", meta_state_dict(det_cfg(50, 133)), where="bad.pth")
    assert "bad.pth" in str(e.value) and "Nothing was converted" in str(e.value)


def test_refuses_wrong_source():
    with pytest.raises(CheckpointMismatchError, match="do not belong to a 'mmseg-knet' checkpoint"):
        convert_checkpoint(official_mmdet_knet("r50", 80), "mmseg-knet")


def test_refuses_wrong_class_count():
    with pytest.raises(
        CheckpointMismatchError, match=r"predicts 133 classes .* has 80 \(MODEL.KNET.NUM_CLASSES"
    ):
        convert_checkpoint(official_mmdet_knet("r50", 133), "mmdet-knet", meta_state_dict(det_cfg(50, 80)))


def test_refuses_leftover_keys_r101_into_r50():
    with pytest.raises(
        CheckpointMismatchError, match=r"have no place in the model:\s+backbone\.bottom_up\.res4\.6"
    ):
        convert_checkpoint(official_mmdet_knet("r101", 133), "mmdet-knet", meta_state_dict(det_cfg(50, 133)))


def test_refuses_missing_and_shape_mismatch():
    ckpt = official_mmdet_knet("r50", 133)
    del ckpt["state_dict"]["roi_head.mask_head.1.fc_mask.bias"]
    with pytest.raises(
        CheckpointMismatchError, match=r"not in the checkpoint:\s+kernel_head\.update_heads\.1\.fc_mask"
    ):
        convert_checkpoint(ckpt, "mmdet-knet", meta_state_dict(det_cfg(50, 133)))
    # the official-code UPerNet is 256 wide, the mmseg one (our config) 512
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        convert_checkpoint(
            official_mmseg_knet("uper", C=256),
            "mmseg-knet",
            meta_state_dict(sem_cfg("knet_upernet_R50.yaml")),
        )


def test_refuses_non_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="no state dict found"):
        convert_checkpoint({"meta": {}, "epoch": 3}, "mmdet-knet")


# ----------------------------------------------------------------------------------------------------------------
# ImageNet backbones: real torchvision ResNets, numerically
# ----------------------------------------------------------------------------------------------------------------
def _torchvision_features(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for i, name in enumerate(["layer1", "layer2", "layer3", "layer4"], start=2):
        x = getattr(tv, name)(x)
        out[f"res{i}"] = x
    return out


def _randomise_bn(module, gen):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_torchvision_resnet50_gives_torchvision_features(input_format):
    import torchvision

    gen = torch.Generator().manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        _randomise_bn(tv, gen)
    cfg = det_cfg(50, 133, input_format=input_format)
    check_normalization(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, input_format)
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get("KNet")(cfg)
    model = model.to_empty(device="cpu").eval()  # only the converted backbone runs below
    result = convert_checkpoint(
        tv.state_dict(), "torchvision-resnet", model.state_dict(), input_format=input_format
    )
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (320, 265, 55)
    assert s.dropped_by_reason()["ImageNet classifier"] == 2
    # the rest of the model keeps its initialisation: FPN + pixel decoder + kernel head
    assert (
        all(not k.startswith("backbone.bottom_up.") for k in s.left_to_model) and len(s.left_to_model) == 184
    )
    model.load_state_dict(result.state_dict, strict=False)
    x_rgb = torch.randn(1, 3, 64, 96, generator=gen)
    x_ours = x_rgb if input_format == "RGB" else x_rgb.flip(1)
    with torch.no_grad():
        ref = _torchvision_features(tv, x_rgb)
        ours = model.backbone.bottom_up(x_ours)
    for name in ("res2", "res3", "res4", "res5"):
        assert ours[name].shape == ref[name].shape
        # activations grow to ~1e3 through 50 random layers: compare relative to their scale (float32 rounding
        # differs when the first conv's input channels are reordered)
        err = (ours[name] - ref[name]).abs().max().item()
        assert err <= 1e-5 * ref[name].abs().max().item(), (name, err)


def test_torchvision_resnet101_fills_r101_backbone():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet101(weights=None)
    target = meta_state_dict(det_cfg(101, 133))
    result = convert_checkpoint(tv.state_dict(), "torchvision-resnet", target)
    bb_target = {k for k in target if k.startswith("backbone.bottom_up.")}
    assert set(result.state_dict) == bb_target
    assert (result.summary.num_mapped, result.summary.num_dropped) == (520, 106)


def test_torchvision_resnet_refused_by_semantic_deep_stem_model():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
    with pytest.raises(CheckpointMismatchError):
        convert_checkpoint(
            tv.state_dict(),
            "torchvision-resnet",
            meta_state_dict(sem_cfg("knet_fcn_R50.yaml")),
            dst_prefix="backbone.",
        )


def test_mmcv_resnet_v1c_imagenet_fills_semantic_backbone():
    L = _Layout("meta")
    _resnet(L, "", 50, deep_stem=True)
    L.linear("fc", 1000, 2048)
    target = meta_state_dict(sem_cfg("knet_fcn_R50.yaml"))
    result = convert_checkpoint({"state_dict": L.sd}, "mmcv-resnet-v1c", target)
    bb = {k for k in target if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    assert set(result.state_dict) == bb
    assert all(not k.startswith("backbone.") for k in result.summary.left_to_model)
    assert (result.summary.num_mapped, result.summary.num_dropped) == (275, 57)  # 55 BN counters + fc


def test_check_normalization():
    check_normalization(RGB_MEAN, RGB_STD, "RGB")
    check_normalization(RGB_MEAN[::-1], RGB_STD[::-1], "BGR")
    with pytest.raises(ValueError, match="not the normalisation"):
        check_normalization(RGB_MEAN, RGB_STD, "BGR")
    with pytest.raises(ValueError, match="not the normalisation"):
        check_normalization([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "RGB")


# ----------------------------------------------------------------------------------------------------------------
# Safe loading, .safetensors, atomic writing
# ----------------------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs exec(), which would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("fmt", ["torch.save", "raw-pickle", "pkl"])
def test_safe_loading_refuses_code_execution(tmp_path, fmt):
    marker = tmp_path / "executed.txt"
    payload = {"model": {"w": torch.ones(2)}, "evil": _Payload(marker)}
    path = tmp_path / ("evil.pkl" if fmt == "pkl" else "evil.pth")
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointLoadError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "never" in str(e.value)
    assert not marker.exists(), "the payload was executed"
    model = nn.Linear(2, 2)
    with pytest.raises(CheckpointLoadError):
        KNetCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_safe_loading_accepts_numpy_in_meta(tmp_path):
    import numpy as np

    path = tmp_path / "ok.pth"
    torch.save(
        {"state_dict": {"w": torch.arange(3.0)}, "meta": {"best": np.float64(0.5), "a": np.arange(2)}}, path
    )
    data = load_checkpoint(path)
    assert data["meta"]["best"] == 0.5 and data["meta"]["a"].tolist() == [0, 1]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pkl_weights_load_with_numpy_only_unpickler(tmp_path, protocol):
    import numpy as np

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {
                "model": {"weight": w, "bias": np.ones(2, np.float32)},
                "__author__": "torchvision",
                "matching_heuristics": True,
            },
            f,
            protocol=protocol,
        )
    model = nn.Linear(3, 2)
    KNetCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.data, torch.from_numpy(w)) and torch.equal(model.bias.data, torch.ones(2))


def test_knet_checkpointer_refuses_unconverted_mmdet_checkpoint(tmp_path):
    path = tmp_path / "knet_s3_r50.pth"
    torch.save({"meta": {"CLASSES": ("a",)}, "state_dict": {"rpn_head.conv_seg.weight": torch.ones(1)}}, path)
    with pytest.raises(CheckpointLoadError, match="convert_knet_checkpoint.py"):
        KNetCheckpointer(nn.Linear(1, 1)).load(str(path))


def test_safetensors_round_trip(tmp_path):
    base = torch.randn(4, 3)
    sd = OrderedDict(
        [("a.weight", base), ("a.view", base[1:]), ("b.idx", torch.arange(5)), ("c", torch.tensor(2.5))]
    )
    meta = {"source": "mmdet-knet", "classes": ["person", "bicycle"]}
    path = tmp_path / "w.safetensors"
    save_checkpoint({"model": sd, "meta": meta}, path)
    loaded = load_checkpoint(path)
    assert list(loaded["model"]) == list(sd) or set(loaded["model"]) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded["model"][k], v) and loaded["model"][k].dtype == v.dtype
    assert loaded["meta"] == meta
    model = nn.Linear(3, 4)
    save_checkpoint({"model": {"weight": base, "bias": torch.ones(4)}}, tmp_path / "lin.safetensors")
    KNetCheckpointer(model).load(str(tmp_path / "lin.safetensors"))
    assert torch.equal(model.weight.data, base)


def test_safetensors_truncated_file_is_reported(tmp_path):
    path = tmp_path / "t.safetensors"
    save_checkpoint({"model": {"w": torch.randn(100)}}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointLoadError, match="t.safetensors"):
        load_checkpoint(path)


def _only(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.pth"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"x" * 1000)
            raise RuntimeError("disk full")
    assert _only(tmp_path) == []

    # an interrupted torch.save (it has written part of the file) neither creates nor corrupts the target
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert _only(tmp_path) == ["out.pth"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_knet_checkpointer_save_is_atomic(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ckpt = KNetCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert _only(tmp_path) == ["last_checkpoint", "model_0000009.pth"]
    monkeypatch.setattr(
        torch, "save", lambda obj, f, *a, **k: (f.write(b"half"), (_ for _ in ()).throw(OSError("boom")))
    )
    with pytest.raises(OSError, match="boom"):
        ckpt.save("model_0000019", iteration=19)
    monkeypatch.undo()
    assert _only(tmp_path) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    extra = KNetCheckpointer(nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9


# ----------------------------------------------------------------------------------------------------------------
# The command line tool and the model zoo configs
# ----------------------------------------------------------------------------------------------------------------
def test_convert_tool_end_to_end(tmp_path):
    """tools/convert_knet_checkpoint.py on a real-valued mmseg FCN checkpoint: converts, prints the summary,
    writes atomically; a mismatching config is refused and writes nothing."""
    ckpt = official_mmseg_knet("fcn", device="cpu")
    src = tmp_path / "knet_fcn.pth"
    torch.save(ckpt, src)
    cfg_file = os.path.join(ROOT, "configs", "model_zoo", "knet_fcn_R50_ade20k_inference.yaml")
    out = tmp_path / "converted.safetensors"
    tool = os.path.join(ROOT, "tools", "convert_knet_checkpoint.py")
    opts = ["MODEL.RESNETS.NORM", "BN", "MODEL.KNET.PIXEL_DECODER.NORM", "BN"]
    run = subprocess.run(
        [
            sys.executable,
            tool,
            "--source",
            "mmseg-knet",
            "--config-file",
            cfg_file,
            "--input",
            str(src),
            "--output",
            str(out),
            *opts,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"mapped: 416 tensors", run.stdout) and "59 x BatchNorm step counter" in run.stdout
    loaded = load_checkpoint(out)
    assert loaded["meta"]["classes"][:1] == ["c0"] and loaded["meta"]["source"] == "mmseg-knet"
    assert torch.equal(
        loaded["model"]["kernel_head.update_heads.0.ffn.linear1.weight"],
        ckpt["state_dict"]["decode_head.kernel_update_head.0.ffn.layers.0.0.weight"],
    )
    # it loads strictly into the model built from that config (BatchNorm counters restart at 0)
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get("KNet")(sem_cfg("knet_fcn_R50.yaml"))
    model = model.to_empty(device="cpu")  # uninitialised memory: every value must come from the file
    model.load_state_dict(loaded["model"], strict=True)
    assert torch.equal(
        model.pixel_decoder.conv_cat.norm.running_var,
        ckpt["state_dict"]["decode_head.kernel_generate_head.conv_cat.bn.running_var"],
    )
    bad_out = tmp_path / "bad.pth"
    spec = importlib.util.spec_from_file_location("convert_knet_checkpoint", tool)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as e:
        cli.main(
            [
                "--source",
                "mmseg-knet",
                "--config-file",
                os.path.join(ROOT, "configs", "model_zoo", "knet_psp_R50_ade20k_inference.yaml"),
                "--input",
                str(src),
                "--output",
                str(bad_out),
                *opts,
            ]
        )
    assert "does not fit the model" in str(e.value.code)
    assert not bad_out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "converted.safetensors",
        "knet_fcn.pth",
    ]


# inference config -> (converter source, official layout, expected result, reported in docs/MODEL_ZOO.md as)
MODEL_ZOO = {
    "knet_R50_1x_coco_instance_inference.yaml": (
        "mmdet-knet",
        lambda: official_mmdet_knet("r50", 80),
        ["segm", "AP", 34.0],
        "| 34.0 |",
    ),
    "knet_R101_dcn_ms3x_coco_instance_inference.yaml": ("mmdet-knet", None, ["segm", "AP", 40.5], "| 40.5 |"),
    "knet_R50_1x_coco_panoptic_inference.yaml": (
        "mmdet-knet",
        lambda: official_mmdet_knet("r50", 133),
        ["panoptic_seg", "PQ", 44.3],
        "| 44.3 |",
    ),
    "knet_R50_ms3x_coco_panoptic_inference.yaml": (
        "mmdet-knet",
        lambda: official_mmdet_knet("r50", 133),
        ["panoptic_seg", "PQ", 47.1],
        "| 47.1 |",
    ),
    "knet_R101_ms3x_coco_panoptic_inference.yaml": (
        "mmdet-knet",
        lambda: official_mmdet_knet("r101", 133),
        ["panoptic_seg", "PQ", 48.4],
        "| 48.4 |",
    ),
    "knet_R101_dcn_ms3x_coco_panoptic_inference.yaml": (
        "mmdet-knet",
        None,
        ["panoptic_seg", "PQ", 49.6],
        "| 49.6 |",
    ),
    "knet_fcn_R50_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("fcn"),
        ["sem_seg", "mIoU", 43.60],
        "| 43.60 (45.12) |",
    ),
    "knet_psp_R50_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("psp"),
        ["sem_seg", "mIoU", 44.18],
        "| 44.18 (45.58) |",
    ),
    "knet_deeplabv3_R50_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("aspp"),
        ["sem_seg", "mIoU", 45.06],
        "| 45.06 (46.11) |",
    ),
    "knet_upernet_R50_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("uper"),
        ["sem_seg", "mIoU", 43.45],
        "| 43.45 (44.07) |",
    ),
    "knet_upernet_swinT_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("uper", "swin_t"),
        ["sem_seg", "mIoU", 45.84],
        "| 45.84 (46.27) |",
    ),
    "knet_upernet_swinL_512_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("uper", "swin_l"),
        ["sem_seg", "mIoU", 52.05],
        "| 52.05 (53.24) |",
    ),
    "knet_upernet_swinL_640_ade20k_inference.yaml": (
        "mmseg-knet",
        lambda: official_mmseg_knet("uper", "swin_l"),
        ["sem_seg", "mIoU", 52.21],
        "| 52.21 (53.34) |",
    ),
    "knet_swinL_ms3x_coco_panoptic_inference.yaml": (
        "mmdet-knet",
        lambda: official_mmdet_knet("swin_l", 133),
        ["panoptic_seg", "PQ", 54.6],
        "| 54.6 |",
    ),
}


def test_every_model_zoo_config_is_checked():
    assert sorted(os.listdir(os.path.join(ROOT, "configs", "model_zoo"))) == sorted(MODEL_ZOO)


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_model_zoo_config(name):
    """Each inference config: RGB with the recipe's normalisation, the reported number as EXPECTED_RESULTS,
    listed in docs/MODEL_ZOO.md with that number, and the official layout of its checkpoint fills its model
    exactly.
    """
    source, layout, expected, doc_cell = MODEL_ZOO[name]
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "model_zoo", name))
    assert cfg.INPUT.FORMAT == "RGB"
    check_normalization(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, "RGB")
    assert [list(r)[:3] for r in cfg.TEST.EXPECTED_RESULTS] == [expected]
    assert cfg.MODEL.WEIGHTS == "weights/" + name.replace("_inference.yaml", ".pth")
    with open(os.path.join(ROOT, "docs", "MODEL_ZOO.md")) as f:
        rows = [line for line in f if f"configs/model_zoo/{name})" in line]
    assert len(rows) == 1 and doc_cell in rows[0], rows
    if layout is None:  # R-101-DCN: detectron2's deformable conv is compiled; see the naming-level DCN test
        assert list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) == [False, True, True, True]
        assert not cfg.MODEL.RESNETS.DEFORM_MODULATED and cfg.MODEL.RESNETS.DEPTH == 101
        return
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "BN"] if "SyncBN" in cfg.MODEL.RESNETS.NORM else [])
    target = meta_state_dict(cfg)
    result = convert_checkpoint(layout(), source, target)
    assert_fills_exactly(result.state_dict, target)
    assert result.summary.num_mapped > 300
