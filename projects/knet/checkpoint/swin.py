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

from dataclasses import dataclass

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


@dataclass(frozen=True)
class _SwinNaming:
    """How a Swin checkpoint names its modules (regular-expression fragments)."""

    patch_proj: str  # the patch embedding's conv
    stages: str  # the stage list
    attn: str  # the window attention
    fc1: str  # the MLP's two linear layers
    fc2: str
    unfold_order: bool  # patch merging stored in nn.Unfold channel order (needs the un-permutation)
    out_norms: bool  # has the dense-prediction per-output norms norm0..norm3


_MM_NAMING = _SwinNaming(
    "projection", "stages", r"attn\.w_msa\.", r"ffn\.layers\.0\.0", r"ffn\.layers\.1", True, True
)
_ORIGINAL_NAMING = _SwinNaming("proj", "layers", r"attn\.", r"mlp\.fc1", r"mlp\.fc2", False, False)


_ABS_POS_REASON = "absolute position embedding (unused by the target Swin)"
_INDEX_REASON = "relative_position_index buffer (recomputed from the window size)"


def _optional(pattern, repl, group, reason):
    """A rename whose result is dropped, with ``reason``, when the target model has no such tensor."""
    return Rename(pattern, repl, group, optional=True, optional_reason=reason)


def _swin_rules(naming: _SwinNaming, src_prefix, dst_prefix, group):
    """Source names in ``naming`` under ``src_prefix`` -> original Swin names under ``dst_prefix``."""
    s = src_prefix.replace(".", r"\.")
    d = dst_prefix
    n = naming
    blk = rf"{s}{n.stages}\.(\d+)\.blocks\.(\d+)\."
    dblk = rf"{d}layers.\1.blocks.\2."
    rules = [
        Rename(rf"{s}patch_embed\.{n.patch_proj}\.{_WB}", rf"{d}patch_embed.proj.\1", group),
        Rename(rf"{s}patch_embed\.norm\.{_WB}", rf"{d}patch_embed.norm.\1", group),
        _optional(rf"{s}absolute_pos_embed", rf"{d}absolute_pos_embed", group, _ABS_POS_REASON),
        Rename(rf"{blk}(norm1|norm2)\.{_WB}", rf"{dblk}\3.\4", group),
        Rename(
            rf"{blk}{n.attn}relative_position_bias_table", rf"{dblk}attn.relative_position_bias_table", group
        ),
        _optional(rf"{blk}{n.attn}relative_position_index", rf"{dblk}attn.relative_position_index", group,
                  _INDEX_REASON),
        Rename(rf"{blk}{n.attn}(qkv|proj)\.{_WB}", rf"{dblk}attn.\3.\4", group),
        Rename(rf"{blk}{n.fc1}\.{_WB}", rf"{dblk}mlp.fc1.\3", group),
        Rename(rf"{blk}{n.fc2}\.{_WB}", rf"{dblk}mlp.fc2.\3", group),
    ]
    # patch merging: its weights in nn.Unfold order are un-permuted
    for src_leaf, dst_leaf, unpermute in (
        (r"reduction\.weight", "reduction.weight", unpermute_reduction),
        (rf"norm\.{_WB}", r"norm.\2", unpermute_norm),
    ):
        transform = unpermute if n.unfold_order else None
        rules.append(
            Rename(
                rf"{s}{n.stages}\.(\d+)\.downsample\.{src_leaf}",
                rf"{d}layers.\1.downsample.{dst_leaf}",
                group,
                transform=transform,
            )
        )
    if n.out_norms:
        rules.append(Rename(rf"{s}norm(\d)\.{_WB}", rf"{d}norm\1.\2", group))
    return rules


def swin_mm_rules(src_prefix, dst_prefix, group="backbone"):
    """mmdet/mmseg Swin names under ``src_prefix`` -> original Swin names under ``dst_prefix``."""
    return _swin_rules(_MM_NAMING, src_prefix, dst_prefix, group)


def swin_imagenet_rules(dst_prefix, group="backbone", mm_naming=False):
    """Swin ImageNet checkpoints (no prefix) -> ``dst_prefix`` + original naming. ``mm_naming``: the file is
    mmseg's re-export of them (``stages``, ``attn.w_msa``, ...; see the module docstring), not the official
    original-naming file."""
    drops = [
        Drop(r"head\.(weight|bias)", "ImageNet classifier"),
        Drop(r"norm\.(weight|bias)", "final norm of the classifier (dense-prediction Swin has norm0..norm3)"),
        Drop(
            r"(layers|stages)\.\d+\.blocks\.\d+\.attn_mask",
            "shifted-window attention mask (depends on the input size; recomputed)",
        ),
    ]
    return drops + _swin_rules(_MM_NAMING if mm_naming else _ORIGINAL_NAMING, "", dst_prefix, group)
