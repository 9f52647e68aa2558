"""The source layouts the converter reads: one :class:`SourceLayout` per ``--source``, in a registry.

A layout says, for one family of published checkpoints, how to recognise its variants from the keys present
(ResNet with a 7x7 or a deep stem, with or without DCN, or Swin; original or mmseg Swin naming), which key
rules rename it (:mod:`.resnet`, :mod:`.swin`, :mod:`.knet_heads`) and what it fills in the target model
(the whole model, or only the backbone under a prefix; which class-count tensor to compare).

=====================  =======================================================================================
``mmdet-knet``         official K-Net detection checkpoints (ZwwWayne/K-Net, instance and panoptic; ResNet-50,
                       ResNet-101, ResNet-101-DCN, Swin-L)
``mmseg-knet``         mmsegmentation's K-Net checkpoints (FCN / PSP / DeepLabv3 / UPerNet heads on R-50-D8;
                       UPerNet on Swin-T / Swin-L)
``torchvision-resnet`` torchvision ImageNet ResNet-50/101 -> ``backbone.bottom_up.*`` (ResNet-FPN)
``swin``               Swin ImageNet(-22k) weights (the official original-naming files, or mmseg's
                       re-export in mmseg naming) -> the Swin backbone: ``backbone.bottom_up.*`` (panoptic
                       Swin + FPN) or ``backbone.*`` (semantic UPerNet), whichever the target model has
``mmcv-resnet-v1c``    OpenMMLab's ImageNet ResNetV1c (``open-mmlab://resnet50_v1c``, deep stem) -> the
                       semantic models' ``backbone.*``
=====================  =======================================================================================
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

from .knet_heads import (
    mmdet_neck_rules,
    mmdet_rpn_head_rules,
    mmseg_aux_head_rules,
    mmseg_generate_head_rules,
    update_head_rules,
)
from .resnet import NUM_BATCHES_TRACKED, resnet_rules
from .rules import Drop
from .swin import swin_imagenet_rules, swin_mm_rules

__all__ = ["SourceLayout", "SOURCE_LAYOUTS", "register_source_layout", "get_source_layout", "SWIN_PREFIXES"]

# Where a Swin backbone can live in our models: under the FPN (panoptic) or directly (semantic).
SWIN_PREFIXES = ("backbone.bottom_up.", "backbone.")

_IMAGENET_CLASSIFIER = Drop(r"fc\.(weight|bias)", "ImageNet classifier")


def _has_prefix(keys: Sequence[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _has_mm_swin_backbone(keys: Sequence[str]) -> bool:
    """Whether an mmdet/mmseg K-Net checkpoint's backbone is mmdet's ``SwinTransformer``
    (``backbone.stages.*``)."""
    return _has_prefix(keys, "backbone.stages.")


@dataclass(frozen=True)
class SourceLayout:
    """One family of published checkpoints.

    Attributes:
        name: the ``--source`` name.
        backbone_prefix: where the backbone goes in our models by default (``backbone.bottom_up.`` under an
            FPN, ``backbone.`` in the semantic models); a Swin checkpoint goes where the target model has its
            Swin (:data:`SWIN_PREFIXES`).
        backbone_rules: ``(keys, dst_prefix) -> rules`` for the backbone, chosen from the keys present.
        head_rules: ``() -> rules`` for everything after the backbone (empty for backbone-only sources).
        is_swin: ``keys -> bool``: whether the checkpoint's backbone is a Swin Transformer.
        backbone_only: the source fills only ``backbone_prefix``; the rest of the target model keeps its
            initialisation. Otherwise (full K-Net checkpoints) every model tensor must come from the file.
        new_backbone_keys: for backbone-only sources, regexes (under the prefix) of target tensors that the
            source does not have (e.g. the dense-prediction Swin's per-output norms).
        class_keys: ``(source key, our key)`` pairs whose first dimension is the class count, to explain a
            class-count mismatch.
    """

    name: str
    backbone_prefix: str
    backbone_rules: Callable[[Sequence[str], str], list]
    head_rules: Callable[[], list] = list
    is_swin: Callable[[Sequence[str]], bool] = _has_mm_swin_backbone
    backbone_only: bool = False
    new_backbone_keys: Tuple[str, ...] = ()
    class_keys: Tuple[Tuple[str, str], ...] = ()

    def rules(self, keys: Sequence[str], dst_prefix: str) -> list:
        """The full rule list for a checkpoint with these ``keys``, the backbone going under
        ``dst_prefix``."""
        return [NUM_BATCHES_TRACKED] + self.backbone_rules(keys, dst_prefix) + self.head_rules()


SOURCE_LAYOUTS: Dict[str, SourceLayout] = {}


def register_source_layout(layout: SourceLayout) -> SourceLayout:
    """Add ``layout`` to :data:`SOURCE_LAYOUTS` (its name must be new)."""
    if layout.name in SOURCE_LAYOUTS:
        raise ValueError(f"source layout '{layout.name}' is already registered")
    SOURCE_LAYOUTS[layout.name] = layout
    return layout


def get_source_layout(name: str) -> SourceLayout:
    """The registered layout called ``name``; a ValueError naming the choices otherwise."""
    if name not in SOURCE_LAYOUTS:
        raise ValueError(f"unknown source '{name}'; choose one of {', '.join(SOURCE_LAYOUTS)}")
    return SOURCE_LAYOUTS[name]


# ----------------------------------------------------------------------------------------------------------------
# The backbone and head rules of each source
# ----------------------------------------------------------------------------------------------------------------
# Full K-Net checkpoints (mmdet, mmseg)
def _mmdet_backbone(keys: Sequence[str], dst: str) -> List:
    if _has_mm_swin_backbone(keys):
        return swin_mm_rules("backbone.", dst)
    return resnet_rules("backbone.", dst)


def _mmdet_heads() -> List:
    return (
        mmdet_neck_rules()
        + mmdet_rpn_head_rules()
        + update_head_rules("roi_head.mask_head.", "kernel_head.update_heads.")
    )


def _mmseg_backbone(keys: Sequence[str], dst: str) -> List:
    if _has_mm_swin_backbone(keys):
        return swin_mm_rules("backbone.", dst)
    return resnet_rules("backbone.", dst, deep_stem="backbone.stem.0.weight" in keys)


def _mmseg_heads() -> List:
    return (
        mmseg_generate_head_rules()
        + update_head_rules("decode_head.kernel_update_head.", "kernel_head.update_heads.")
        + mmseg_aux_head_rules()
    )


# ImageNet backbones
def _torchvision_resnet(keys: Sequence[str], dst: str) -> List:
    return [_IMAGENET_CLASSIFIER] + resnet_rules("", dst)


def _mmcv_resnet_v1c(keys: Sequence[str], dst: str) -> List:
    return [_IMAGENET_CLASSIFIER] + resnet_rules("", dst, deep_stem=True)


def _swin_imagenet(keys: Sequence[str], dst: str) -> List:
    """The official original-naming file, or mmseg's re-export of it in mmseg naming."""
    mm_naming = _has_prefix(keys, "stages.") or _has_prefix(keys, "patch_embed.projection.")
    return swin_imagenet_rules(dst, mm_naming=mm_naming)


def _never_swin(keys: Sequence[str]) -> bool:
    return False


def _always_swin(keys: Sequence[str]) -> bool:
    return True


# dense-prediction Swin adds per-output norms; relative_position_index / attn_mask are derived buffers
_SWIN_NEW_KEYS = (
    r"norm\d\.(weight|bias)",
    r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
    r"layers\.\d+\.blocks\.\d+\.attn_mask",
)
_MMDET_CLASSES = (("rpn_head.conv_seg.weight", "kernel_head.conv_seg.weight"),)
_MMSEG_CLASSES = (("decode_head.kernel_generate_head.conv_seg.weight", "pixel_decoder.conv_seg.weight"),)

# The registered layouts: name, default backbone prefix, backbone rules, head rules, what they fill.
for _layout in (
    SourceLayout("mmdet-knet", "backbone.bottom_up.", _mmdet_backbone, _mmdet_heads,
                 class_keys=_MMDET_CLASSES),
    SourceLayout("mmseg-knet", "backbone.", _mmseg_backbone, _mmseg_heads, class_keys=_MMSEG_CLASSES),
    SourceLayout("torchvision-resnet", "backbone.bottom_up.", _torchvision_resnet, is_swin=_never_swin,
                 backbone_only=True),
    SourceLayout("swin", "backbone.bottom_up.", _swin_imagenet, is_swin=_always_swin, backbone_only=True,
                 new_backbone_keys=_SWIN_NEW_KEYS),
    SourceLayout("mmcv-resnet-v1c", "backbone.", _mmcv_resnet_v1c, is_swin=_never_swin, backbone_only=True),
):
    register_source_layout(_layout)
