"""The official K-Net checkpoints' key layouts (names and shapes), synthesised for the converter tests.

Written independently of :mod:`knet.checkpoint` from the published checkpoints' layouts: ZwwWayne/K-Net
(mmdet ``ResNet`` / ``SwinTransformer`` backbones, ``FPN`` neck, ``ConvKernelHead`` with its
``SemanticFPNWrapper``, ``KernelUpdateHead`` stages), mmsegmentation's ``knet_head.py`` (FCN / PSP / ASPP /
UPerNet kernel-generate heads, update heads, auxiliary ``FCNHead``) and the official Swin ImageNet files
(``microsoft/Swin-Transformer``). Tensors live on the "meta" device (names and shapes only) unless a device is
given, in which case they hold small random values.
"""

from collections import OrderedDict

import torch

__all__ = [
    "Layout",
    "resnet_layout",
    "mm_swin_layout",
    "update_head_layout",
    "official_mmdet_knet",
    "official_mmseg_knet",
    "official_swin_imagenet",
]


class Layout:
    """An ordered state dict being filled: ``t`` adds one tensor, ``bn`` / ``wb`` / ``linear`` the tensors of
    a BatchNorm, a weight-and-bias pair and a linear layer."""

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


def resnet_layout(L, prefix, depth=50, dcn=False, deep_stem=False):
    """torchvision / mmdet ResNet-50/101 (7x7 stem, optional DCN on c3-c5) or mmseg ResNetV1c (deep stem)
    under ``prefix``; returns the stages' channels."""
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


def _swin_block(L, q, d, heads, window, attn, fc1, fc2):
    """One Swin block of width ``d`` under ``q``; ``attn`` (with its dot), ``fc1``, ``fc2``: the source's
    names of the window attention and the MLP's layers."""
    L.wb(q + "norm1", d)
    L.t(q + attn + "relative_position_bias_table", (2 * window - 1) ** 2, heads)
    L.t(q + attn + "relative_position_index", window**2, window**2, dtype=torch.int64)
    L.linear(q + attn + "qkv", 3 * d, d)
    L.linear(q + attn + "proj", d, d)
    L.wb(q + "norm2", d)
    L.linear(q + fc1, 4 * d, d)
    L.linear(q + fc2, d, 4 * d)


def mm_swin_layout(L, prefix, embed, depths, heads, window=7):
    """mmdet / mmseg ``SwinTransformer`` under ``prefix`` (with the per-output norms); returns the stages'
    channels."""
    L.t(f"{prefix}patch_embed.projection.weight", embed, 3, 4, 4)
    L.t(f"{prefix}patch_embed.projection.bias", embed)
    L.wb(f"{prefix}patch_embed.norm", embed)
    dims = []
    for i, (n, h) in enumerate(zip(depths, heads)):
        d = embed * 2**i
        dims.append(d)
        for j in range(n):
            _swin_block(L, f"{prefix}stages.{i}.blocks.{j}.", d, h, window, "attn.w_msa.", "ffn.layers.0.0",
                        "ffn.layers.1")
        if i < len(depths) - 1:
            L.wb(f"{prefix}stages.{i}.downsample.norm", 4 * d)
            L.t(f"{prefix}stages.{i}.downsample.reduction.weight", 2 * d, 4 * d)
    for i, d in enumerate(dims):
        L.wb(f"{prefix}norm{i}", d)
    return dims


def update_head_layout(L, p, C, nc=None, updator=256, ffn=2048):
    """One ``KernelUpdateHead`` stage under ``p`` (``nc``: with a classifier of ``nc`` classes)."""
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
    L = Layout(device)
    if backbone == "swin_l":
        in_ch = mm_swin_layout(L, "backbone.", 192, [2, 2, 18, 2], [6, 12, 24, 48])
    else:
        in_ch = resnet_layout(
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
        update_head_layout(L, f"roi_head.mask_head.{s}.", 256, nc=num_classes)
    meta = {
        "mmdet_version": "2.17.0",
        "CLASSES": tuple(f"class{i}" for i in range(num_classes)),
        "config": "...",
    }
    return {"meta": meta, "state_dict": L.sd}


def official_mmseg_knet(head="fcn", backbone="r50", C=512, num_classes=150, device="meta"):
    """An mmseg K-Net checkpoint."""
    L = Layout(device)
    if backbone == "swin_t":
        in_ch = mm_swin_layout(L, "backbone.", 96, [2, 2, 6, 2], [3, 6, 12, 24])
    elif backbone == "swin_l":
        in_ch = mm_swin_layout(L, "backbone.", 192, [2, 2, 18, 2], [6, 12, 24, 48])
    else:
        in_ch = resnet_layout(L, "backbone.", 50, deep_stem=True)
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
        update_head_layout(L, f"decode_head.kernel_update_head.{s}.", C)
    L.t("auxiliary_head.convs.0.conv.weight", 256, in_ch[2], 3, 3)
    L.bn("auxiliary_head.convs.0.bn", 256)
    L.t("auxiliary_head.conv_seg.weight", num_classes, 256, 1, 1)
    L.t("auxiliary_head.conv_seg.bias", num_classes)
    return {"meta": {"CLASSES": tuple(f"c{i}" for i in range(num_classes))}, "state_dict": L.sd}


def official_swin_imagenet(embed=192, depths=(2, 2, 18, 2), heads=(6, 12, 24, 48), window=7):
    """An official Swin ImageNet-22k checkpoint (original naming): ``{"model": ...}``."""
    L = Layout("meta")
    L.t("patch_embed.proj.weight", embed, 3, 4, 4)
    L.t("patch_embed.proj.bias", embed)
    L.wb("patch_embed.norm", embed)
    res = 56
    for i, (n, h) in enumerate(zip(depths, heads)):
        d = embed * 2**i
        for j in range(n):
            q = f"layers.{i}.blocks.{j}."
            _swin_block(L, q, d, h, window, "attn.", "mlp.fc1", "mlp.fc2")
            if j % 2 == 1 and res > window:
                L.t(q + "attn_mask", (res // window) ** 2, window**2, window**2)
        if i < len(depths) - 1:
            L.t(f"layers.{i}.downsample.reduction.weight", 2 * d, 4 * d)
            L.wb(f"layers.{i}.downsample.norm", 4 * d)
        res //= 2
    L.wb("norm", embed * 8)
    L.linear("head", 21841, embed * 8)
    return {"model": L.sd}
