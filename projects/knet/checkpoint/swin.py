"""Key rules for Swin Transformer backbones, to the *original* Swin naming (microsoft/Swin-Transformer
``models/swin_transformer.py``; also what Swin-Transformer-Object-Detection and timm's checkpoint filter
read).

The converted names are those of this package's Swin backbone
(:class:`knet.modeling.backbone.swin.KNetSwinTransformer`), the original repository's, under the backbone
prefix: ``patch_embed.proj``, ``layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,
attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}``, ``layers.{i}.downsample.{reduction,norm}`` and the
per-output norms ``norm{0..3}`` of the detection/segmentation variant. The prefix is ``backbone.`` in the
semantic models (``build_knet_swin_backbone``) and ``backbone.bottom_up.`` in the panoptic Swin + FPN model
(``build_knet_swin_fpn_backbone``); :mod:`.convert` picks the one the target model has.

Sources:

* mmdet / mmseg ``SwinTransformer`` (``stages``, ``attn.w_msa``, ``ffn.layers``, ``patch_embed.projection``):
  the inverse of mmdet's ``swin_converter`` (``mmdet/models/utils/ckpt_convert.py``), *including* the
  patch-merging weights, which mmdet stores in ``nn.Unfold`` channel order (see :func:`unpermute_reduction`).
* the official ImageNet(-22k) classification checkpoints
  (``swin_{tiny,base,large}_patch4_window7_224_22k.pth``, ``{"model": ...}`` in the original naming): the
  classifier ``head``, the final classification ``norm`` and the resolution-dependent ``attn_mask`` buffers
  are dropped;
* the same ImageNet weights as mmsegmentation redistributes them (``pretrain/swin/swin_*_224*.pth``, made by
  mmseg's ``tools/model_converters/swin2mmseg.py``: mmseg naming, patch merging in ``nn.Unfold`` order,
  ``head`` removed, ``norm`` and ``attn_mask`` kept): the mmdet/mmseg rules plus the same drops.
"""

import torch

from .rules import Drop, Rename

__all__ = [
    "swin_mm_rules",
    "swin_imagenet_rules",
    "unpermute_reduction",
    "unpermute_norm",
    "permute_reduction",
    "permute_norm",
]

# Patch merging concatenates the 2x2 neighbours as x0 (top-left), x1 (bottom-left), x2 (top-right),
# x3 (bottom-right); nn.Unfold orders them top-left, top-right, bottom-left, bottom-right. Swapping the middle
# two converts between the orders (the permutation is its own inverse).
_GROUP_ORDER = [0, 2, 1, 3]


def unpermute_reduction(w: torch.Tensor) -> torch.Tensor:
    """mmdet/mmseg ``downsample.reduction.weight`` (out, 4d), channel index ``c*4 + g`` -> original order
    ``g*d + c`` (group g in the original x0..x3 order)."""
    out, in4 = w.shape
    return w.reshape(out, in4 // 4, 4).transpose(1, 2)[:, _GROUP_ORDER, :].reshape(out, in4).contiguous()


def unpermute_norm(w: torch.Tensor) -> torch.Tensor:
    """mmdet/mmseg ``downsample.norm.{weight,bias}`` (4d,) -> original order (see
    :func:`unpermute_reduction`)."""
    (in4,) = w.shape
    return w.reshape(in4 // 4, 4).transpose(0, 1)[_GROUP_ORDER].reshape(in4).contiguous()


def permute_reduction(w: torch.Tensor) -> torch.Tensor:
    """Original -> mmdet order (mmdet ``swin_converter``'s direction); the inverse of
    :func:`unpermute_reduction`."""
    out, in4 = w.shape
    return w.reshape(out, 4, in4 // 4)[:, _GROUP_ORDER, :].transpose(1, 2).reshape(out, in4).contiguous()


def permute_norm(w: torch.Tensor) -> torch.Tensor:
    """Original -> mmdet order; the inverse of :func:`unpermute_norm`."""
    (in4,) = w.shape
    return w.reshape(4, in4 // 4)[_GROUP_ORDER].transpose(0, 1).reshape(in4).contiguous()


_WB = r"(weight|bias)"


def swin_mm_rules(src_prefix, dst_prefix, group="backbone"):
    """mmdet/mmseg Swin names under ``src_prefix`` -> original Swin names under ``dst_prefix``."""
    s = src_prefix.replace(".", r"\.")
    d = dst_prefix
    blk = rf"{s}stages\.(\d+)\.blocks\.(\d+)\."
    dblk = rf"{d}layers.\1.blocks.\2."
    return [
        Rename(rf"{s}patch_embed\.projection\.{_WB}", rf"{d}patch_embed.proj.\1", group),
        Rename(rf"{s}patch_embed\.norm\.{_WB}", rf"{d}patch_embed.norm.\1", group),
        Rename(
            rf"{s}absolute_pos_embed",
            rf"{d}absolute_pos_embed",
            group,
            optional=True,
            optional_reason="absolute position embedding (unused by the target Swin)",
        ),
        Rename(rf"{blk}(norm1|norm2)\.{_WB}", rf"{dblk}\3.\4", group),
        Rename(
            rf"{blk}attn\.w_msa\.relative_position_bias_table",
            rf"{dblk}attn.relative_position_bias_table",
            group,
        ),
        Rename(
            rf"{blk}attn\.w_msa\.relative_position_index",
            rf"{dblk}attn.relative_position_index",
            group,
            optional=True,
            optional_reason="relative_position_index buffer (recomputed from the window size)",
        ),
        Rename(rf"{blk}attn\.w_msa\.(qkv|proj)\.{_WB}", rf"{dblk}attn.\3.\4", group),
        Rename(rf"{blk}ffn\.layers\.0\.0\.{_WB}", rf"{dblk}mlp.fc1.\3", group),
        Rename(rf"{blk}ffn\.layers\.1\.{_WB}", rf"{dblk}mlp.fc2.\3", group),
        Rename(
            rf"{s}stages\.(\d+)\.downsample\.reduction\.weight",
            rf"{d}layers.\1.downsample.reduction.weight",
            group,
            transform=unpermute_reduction,
        ),
        Rename(
            rf"{s}stages\.(\d+)\.downsample\.norm\.{_WB}",
            rf"{d}layers.\1.downsample.norm.\2",
            group,
            transform=unpermute_norm,
        ),
        Rename(rf"{s}norm(\d)\.{_WB}", rf"{d}norm\1.\2", group),
    ]


def swin_imagenet_rules(dst_prefix, group="backbone", mm_naming=False):
    """Swin ImageNet checkpoints (no prefix) -> ``dst_prefix`` + original naming. ``mm_naming``: the file is
    mmseg's re-export of them (``stages``, ``attn.w_msa``, ...; see the module docstring), not the official
    original-naming file."""
    d = dst_prefix
    blk = r"layers\.(\d+)\.blocks\.(\d+)\."
    dblk = rf"{d}layers.\1.blocks.\2."
    drops = [
        Drop(r"head\.(weight|bias)", "ImageNet classifier"),
        Drop(r"norm\.(weight|bias)", "final norm of the classifier (dense-prediction Swin has norm0..norm3)"),
        Drop(
            r"(layers|stages)\.\d+\.blocks\.\d+\.attn_mask",
            "shifted-window attention mask (depends on the input size; recomputed)",
        ),
    ]
    if mm_naming:
        return drops + swin_mm_rules("", dst_prefix, group)
    return drops + [
        Rename(rf"patch_embed\.(proj|norm)\.{_WB}", rf"{d}patch_embed.\1.\2", group),
        Rename(
            r"absolute_pos_embed",
            rf"{d}absolute_pos_embed",
            group,
            optional=True,
            optional_reason="absolute position embedding (unused by the target Swin)",
        ),
        Rename(rf"{blk}(norm1|norm2)\.{_WB}", rf"{dblk}\3.\4", group),
        Rename(
            rf"{blk}attn\.relative_position_bias_table", rf"{dblk}attn.relative_position_bias_table", group
        ),
        Rename(
            rf"{blk}attn\.relative_position_index",
            rf"{dblk}attn.relative_position_index",
            group,
            optional=True,
            optional_reason="relative_position_index buffer (recomputed from the window size)",
        ),
        Rename(rf"{blk}attn\.(qkv|proj)\.{_WB}", rf"{dblk}attn.\3.\4", group),
        Rename(rf"{blk}mlp\.(fc1|fc2)\.{_WB}", rf"{dblk}mlp.\3.\4", group),
        Rename(
            r"layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
            rf"{d}layers.\1.downsample.\2",
            group,
        ),
    ]
