"""Convert published K-Net checkpoints (and ImageNet backbones) to this package's state-dict names.

Sources (``--source`` of ``tools/convert_knet_checkpoint.py``):

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

Everything here is a pure function of state dicts: :func:`convert_checkpoint` renames every key by the
source's rules (:mod:`.resnet`, :mod:`.swin`, :mod:`.knet_heads`), drops what is not a weight
(``num_batches_tracked``, classifier heads of ImageNet models, optimizer state and ``meta`` at the top level),
and, given the state dict of the target model, refuses (:class:`CheckpointMismatchError`, nothing is returned,
so nothing can be written) any checkpoint that does not fill that model exactly: unknown or leftover keys, a
shape mismatch, a different class count, or (for full K-Net checkpoints) a model parameter the checkpoint does
not provide.

Colour order and normalisation: every source was trained on **RGB** images normalised with mean
(123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) on the 0-255 scale (mmdet/mmseg ``Normalize`` with
``to_rgb=True`` / ``bgr_to_rgb=True``; torchvision's and Swin's ImageNet mean/std times 255). Our configs use
``INPUT.FORMAT = "RGB"`` with the same ``MODEL.PIXEL_MEAN/PIXEL_STD``, so the first conv is copied unchanged;
for a config with ``INPUT.FORMAT = "BGR"`` (``input_format="BGR"``) the first conv's input channels are
flipped. :func:`check_normalization` verifies that a config's pixel mean/std are the recipe's (in its channel
order).
"""

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .knet_heads import (
    mmdet_neck_rules,
    mmdet_rpn_head_rules,
    mmseg_aux_head_rules,
    mmseg_generate_head_rules,
    update_head_rules,
)
from .resnet import NUM_BATCHES_TRACKED, resnet_rules
from .rules import Drop, apply_rules, compile_rules
from .swin import swin_imagenet_rules, swin_mm_rules

__all__ = [
    "SOURCES",
    "RECIPE_PIXEL_MEAN_RGB",
    "RECIPE_PIXEL_STD_RGB",
    "CheckpointMismatchError",
    "ConversionSummary",
    "ConversionResult",
    "extract_state_dict",
    "extract_class_names",
    "build_rules",
    "convert_state_dict",
    "convert_checkpoint",
    "check_normalization",
]

logger = logging.getLogger(__name__)

SOURCES = ("mmdet-knet", "mmseg-knet", "torchvision-resnet", "swin", "mmcv-resnet-v1c")

# The normalisation of every supported source, RGB order, 0-255 scale.
RECIPE_PIXEL_MEAN_RGB = (123.675, 116.28, 103.53)
RECIPE_PIXEL_STD_RGB = (58.395, 57.12, 57.375)

# Our first conv (the one that sees the image's channels), by backbone.
FIRST_CONV_KEYS = (
    "backbone.bottom_up.stem.conv1.weight",
    "backbone.stem.conv1.weight",
    "backbone.bottom_up.patch_embed.proj.weight",
    "backbone.patch_embed.proj.weight",
)

# Top-level model buffers that come from the config, not from a checkpoint (detectron2's checkpointer ignores
# them when missing).
CONFIG_BUFFERS = ("pixel_mean", "pixel_std")

# (source key, our key, what the class count is) used to explain a class-count mismatch.
_CLASS_KEYS = {
    "mmdet-knet": [("rpn_head.conv_seg.weight", "kernel_head.conv_seg.weight")],
    "mmseg-knet": [("decode_head.kernel_generate_head.conv_seg.weight", "pixel_decoder.conv_seg.weight")],
}

# Backbone-only sources fill this prefix (by default; see _resolve_backbone_prefix); the rest of the model
# keeps its initialisation.
_BACKBONE_ONLY = {
    "torchvision-resnet": "backbone.bottom_up.",
    "swin": "backbone.bottom_up.",
    "mmcv-resnet-v1c": "backbone.",
}
# Target keys a backbone-only source may leave at their initialisation (not in the ImageNet model).
_BACKBONE_NEW_KEYS = {
    "torchvision-resnet": (),
    "mmcv-resnet-v1c": (),
    # dense-prediction Swin adds per-output norms; relative_position_index / attn_mask are derived buffers
    "swin": (
        r"norm\d\.(weight|bias)",
        r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
        r"layers\.\d+\.blocks\.\d+\.attn_mask",
    ),
}


# Default backbone prefix of the full K-Net sources: detection models have an FPN (``bottom_up``), semantic
# models not.
_KNET_BACKBONE_PREFIX = {"mmdet-knet": "backbone.bottom_up.", "mmseg-knet": "backbone."}
# Where a Swin backbone can live in our models: under the FPN (panoptic) or directly (semantic).
_SWIN_PREFIXES = ("backbone.bottom_up.", "backbone.")
_SWIN_FIRST_KEY = "patch_embed.proj.weight"


class CheckpointMismatchError(ValueError):
    """The checkpoint's layout does not fit the source rules or the target model; nothing was converted."""


@dataclass
class ConversionSummary:
    """What a conversion did. ``mapped``: number of tensors per group; ``dropped``: (key, reason) pairs."""

    source: str
    num_input_keys: int = 0
    mapped: Dict[str, int] = field(default_factory=dict)
    mapped_numel: int = 0
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    dropped_top_level: List[str] = field(default_factory=list)
    transformed: List[Tuple[str, str]] = field(default_factory=list)
    left_to_model: List[str] = field(default_factory=list)
    from_config: List[str] = field(default_factory=list)
    num_classes: Optional[int] = None

    @property
    def num_mapped(self) -> int:
        return sum(self.mapped.values())

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    def dropped_by_reason(self) -> Dict[str, int]:
        out: Dict[str, int] = OrderedDict()
        for _, reason in self.dropped:
            out[reason] = out.get(reason, 0) + 1
        return out

    def format(self) -> str:
        """A human-readable multi-line report."""
        lines = [
            f"source: {self.source}; {self.num_input_keys} tensors in the checkpoint",
            f"mapped: {self.num_mapped} tensors ({self.mapped_numel:,} values)"
            + (f"; {self.num_classes} classes" if self.num_classes else ""),
        ]
        lines += [f"  {g}: {n}" for g, n in self.mapped.items()]
        lines.append(f"dropped: {self.num_dropped} tensors")
        lines += [f"  {n} x {reason}" for reason, n in self.dropped_by_reason().items()]
        if self.dropped_top_level:
            lines.append(f"dropped top-level entries: {', '.join(self.dropped_top_level)}")
        for key, what in self.transformed:
            lines.append(f"transformed: {key}: {what}")
        if self.left_to_model:
            lines.append(
                "not in this checkpoint (keep the model's initialisation): "
                f"{len(self.left_to_model)} tensors, "
                f"e.g. {', '.join(self.left_to_model[:3])}"
            )
        if self.from_config:
            lines.append(f"from the config, not the checkpoint: {', '.join(self.from_config)}")
        return "\n".join(lines)


@dataclass
class ConversionResult:
    """``state_dict``: our names -> tensors; ``metadata``: JSON-serialisable info (source, class names,
    ...)."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    metadata: dict
    summary: ConversionSummary

    def to_checkpoint(self) -> dict:
        """The dict to save: detectron2's checkpointer loads ``model`` and returns the rest."""
        return {"model": self.state_dict, "meta": self.metadata}


def extract_state_dict(checkpoint, where="checkpoint"):
    """Return ``(state_dict, dropped_top_level_keys)`` from a loaded file: ``{"state_dict": ...}``
    (mmdet/mmseg), ``{"model": ...}`` (Swin, detectron2), or a bare dict of tensors (torchvision)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{where}: expected a dict, got {type(checkpoint).__name__}")
    for key in ("state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key], [k for k in checkpoint if k != key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, []
    raise CheckpointMismatchError(
        f"{where}: no state dict found: expected a 'state_dict' or 'model' entry, or a dict of tensors; "
        f"top-level keys are {sorted(map(str, checkpoint))[:10]}"
    )


def extract_class_names(checkpoint) -> Optional[List[str]]:
    """Class names from an mmdet/mmseg checkpoint's ``meta`` (``CLASSES``, ``classes`` or
    ``dataset_meta.classes``), or from our own converted checkpoints' ``meta.classes``; None if absent."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    for holder in (meta, meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}):
        for key in ("CLASSES", "classes"):
            names = holder.get(key)
            if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
                return list(names)
    return None


def _has_prefix(keys, prefix):
    return any(k.startswith(prefix) for k in keys)


def _is_swin(source: str, keys: Sequence[str]) -> bool:
    """Whether the checkpoint's backbone is a Swin Transformer."""
    if source == "swin":
        return True
    return source in _KNET_BACKBONE_PREFIX and _has_prefix(keys, "backbone.stages.")


def _resolve_backbone_prefix(source, keys, target_state_dict, dst_prefix):
    """The prefix our backbone names get: ``dst_prefix`` if given; for a Swin checkpoint and a target model,
    the prefix under which that model has its Swin (``backbone.bottom_up.`` with an FPN, ``backbone.`` in the
    semantic models); otherwise the source's default."""
    if dst_prefix is not None:
        return dst_prefix
    default = _KNET_BACKBONE_PREFIX.get(source) or _BACKBONE_ONLY[source]
    if target_state_dict is not None and _is_swin(source, keys):
        for prefix in (default,) + tuple(p for p in _SWIN_PREFIXES if p != default):
            if prefix + _SWIN_FIRST_KEY in target_state_dict:
                return prefix
    return default


def build_rules(source: str, keys: Sequence[str], dst_prefix: Optional[str] = None):
    """The rule list for ``source``, choosing the backbone rules from the keys present (ResNet with 7x7 or
    deep stem, with or without DCN, or Swin; for ``swin``, the original or mmseg naming)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")
    drops = [NUM_BATCHES_TRACKED]
    if source == "mmdet-knet":
        bb = dst_prefix or "backbone.bottom_up."
        if _has_prefix(keys, "backbone.stages."):
            backbone = swin_mm_rules("backbone.", bb)
        else:
            backbone = resnet_rules("backbone.", bb)
        return (
            drops
            + backbone
            + mmdet_neck_rules()
            + mmdet_rpn_head_rules()
            + update_head_rules("roi_head.mask_head.", "kernel_head.update_heads.")
        )
    if source == "mmseg-knet":
        bb = dst_prefix or "backbone."
        if _has_prefix(keys, "backbone.stages."):
            backbone = swin_mm_rules("backbone.", bb)
        else:
            backbone = resnet_rules("backbone.", bb, deep_stem="backbone.stem.0.weight" in keys)
        return (
            drops
            + backbone
            + mmseg_generate_head_rules()
            + update_head_rules("decode_head.kernel_update_head.", "kernel_head.update_heads.")
            + mmseg_aux_head_rules()
        )
    if source == "torchvision-resnet":
        return (
            drops
            + [Drop(r"fc\.(weight|bias)", "ImageNet classifier")]
            + resnet_rules("", dst_prefix or "backbone.bottom_up.")
        )
    if source == "mmcv-resnet-v1c":
        return (
            drops
            + [Drop(r"fc\.(weight|bias)", "ImageNet classifier")]
            + resnet_rules("", dst_prefix or "backbone.", deep_stem=True)
        )
    mm_naming = _has_prefix(keys, "stages.") or _has_prefix(keys, "patch_embed.projection.")
    return drops + swin_imagenet_rules(dst_prefix or "backbone.bottom_up.", mm_naming=mm_naming)


def _shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def _fmt_list(items, n=8):
    items = list(items)
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return "\n    " + "\n    ".join(map(str, items[:n])) + more


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    target_state_dict: Optional[Mapping[str, object]] = None,
    input_format: str = "RGB",
    dst_prefix: Optional[str] = None,
    where: str = "checkpoint",
) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionSummary]:
    """Rename ``state_dict`` (source names -> tensors) to our names.

    Args:
        state_dict: the source weights (already extracted, see :func:`extract_state_dict`).
        source: one of :data:`SOURCES`.
        target_state_dict: the target model's ``state_dict()`` (or a mapping name -> shape). When given, the
            result must fit it exactly (see the module docstring); otherwise only the source rules are
            checked.
        input_format: ``"RGB"`` (our configs; no change) or ``"BGR"`` (flip the first conv's input channels).
        dst_prefix: override the backbone prefix (default ``backbone.bottom_up.`` for detection and ImageNet
            sources, ``backbone.`` for mmseg; a Swin checkpoint goes where ``target_state_dict`` has its
            Swin, ``backbone.bottom_up.`` or ``backbone.``).
        where: the file name, for error messages.
    Returns:
        ``(converted state dict, ConversionSummary)``. Raises :class:`CheckpointMismatchError` on any
        mismatch.
    """
    if input_format not in ("RGB", "BGR"):
        raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
    if source not in SOURCES:
        raise ValueError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")
    keys = list(state_dict.keys())
    prefix = _resolve_backbone_prefix(source, keys, target_state_dict, dst_prefix)
    compiled = compile_rules(build_rules(source, keys, prefix))
    summary = ConversionSummary(source=source, num_input_keys=len(keys))
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    origin: Dict[str, str] = {}
    group_of: Dict[str, str] = {}
    unknown, duplicates, non_tensors = [], [], []
    optional_reason: Dict[str, str] = {}
    for key in keys:
        value = state_dict[key]
        rule, new_key = apply_rules(key, compiled)
        if rule is None:
            unknown.append(key)
            continue
        if new_key is None:
            summary.dropped.append((key, rule.reason))
            continue
        if not isinstance(value, torch.Tensor):
            non_tensors.append(f"{key} ({type(value).__name__})")
            continue
        if new_key in out:
            duplicates.append(f"{origin[new_key]} and {key} -> {new_key}")
            continue
        if rule.transform is not None:
            value = rule.transform(value)
            summary.transformed.append((new_key, rule.transform.__name__))
        out[new_key] = value
        origin[new_key] = key
        group_of[new_key] = rule.group
        if rule.optional:
            optional_reason[new_key] = rule.optional_reason
    if unknown:
        raise CheckpointMismatchError(
            f"{where}: {len(unknown)} key(s) do not belong to a '{source}' checkpoint, "
            f"e.g.:{_fmt_list(unknown)}\n"
            f"Check --source (one of {', '.join(SOURCES)}) and that the file is an unmodified published "
            "checkpoint. Nothing was converted."
        )
    if duplicates or non_tensors:
        raise CheckpointMismatchError(
            f"{where}: cannot convert: "
            + (f"keys mapping to the same name:{_fmt_list(duplicates)}" if duplicates else "")
            + (f" non-tensor entries in the state dict:{_fmt_list(non_tensors)}" if non_tensors else "")
        )

    if target_state_dict is not None:
        backbone_only = prefix if source in _BACKBONE_ONLY else None
        _fit_to_target(
            out, origin, optional_reason, target_state_dict, state_dict, source, summary, where, backbone_only
        )

    if input_format == "BGR":
        first = [k for k in FIRST_CONV_KEYS if k in out]
        if not first:
            raise CheckpointMismatchError(f"{where}: input_format='BGR' but no first conv found to flip")
        for k in first:
            out[k] = out[k].flip(1).contiguous()
            summary.transformed.append(
                (k, "input channels flipped RGB -> BGR (the config's INPUT.FORMAT is BGR)")
            )

    for k, v in out.items():
        summary.mapped[group_of[k]] = summary.mapped.get(group_of[k], 0) + 1
        summary.mapped_numel += v.numel()
    for src_key, dst_key in _CLASS_KEYS.get(source, []):
        if src_key in state_dict:
            summary.num_classes = int(state_dict[src_key].shape[0])
    return out, summary


def _fit_to_target(
    out, origin, optional_reason, target, source_sd, source, summary, where, backbone_prefix
):
    """Check ``out`` against the target model's state dict; drop absent optional keys. Raises on mismatch.
    ``backbone_prefix``: for backbone-only sources, the prefix they fill (the rest of the model may stay at
    its initialisation); None for full K-Net checkpoints, which must fill everything."""
    # 1. a different class count, explained before the generic shape check
    for src_key, dst_key in _CLASS_KEYS.get(source, []):
        if src_key in source_sd and dst_key in target:
            have, want = int(source_sd[src_key].shape[0]), _shape(target[dst_key])[0]
            if have != want:
                raise CheckpointMismatchError(
                    f"{where}: the checkpoint predicts {have} classes ({src_key} has shape "
                    f"{list(source_sd[src_key].shape)}) but the model built from the config has {want} "
                    f"(MODEL.KNET.NUM_CLASSES / {dst_key}). Use the config that matches the checkpoint "
                    "(docs/MODEL_ZOO.md lists one per published model). Nothing was converted."
                )
    # 2. optional keys the target lacks
    for k in list(out):
        if k not in target and k in optional_reason:
            summary.dropped.append((origin[k], optional_reason[k]))
            del out[k]
    # 3. leftovers, shapes, missing
    unexpected = [f"{k} (from {origin[k]})" for k in out if k not in target]
    mismatched = [
        f"{k}: checkpoint {list(out[k].shape)} vs model {list(_shape(target[k]))} (from {origin[k]})"
        for k in out
        if k in target and tuple(out[k].shape) != _shape(target[k])
    ]
    missing, left = [], []
    new_keys = (
        [re.compile(re.escape(backbone_prefix) + p + r"\Z") for p in _BACKBONE_NEW_KEYS.get(source, ())]
        if backbone_prefix
        else []
    )
    for k in target:
        if k in out or k.endswith("num_batches_tracked"):
            continue
        if k in CONFIG_BUFFERS:
            summary.from_config.append(k)
        elif backbone_prefix is not None and (
            not k.startswith(backbone_prefix) or any(r.match(k) for r in new_keys)
        ):
            left.append(k)
        else:
            missing.append(k)
    problems = []
    if unexpected:
        problems.append(
            f"{len(unexpected)} checkpoint tensor(s) have no place in the model:{_fmt_list(unexpected)}"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):{_fmt_list(mismatched)}")
    if missing:
        problems.append(f"{len(missing)} model tensor(s) are not in the checkpoint:{_fmt_list(missing)}")
    if problems:
        raise CheckpointMismatchError(
            f"{where} (--source {source}) does not fit the model built from the config:\n  "
            + "\n  ".join(problems)
            + "\nCheck that the config matches the checkpoint (backbone depth, DCN, Swin size, head type and "
            "width, class count; docs/MODEL_ZOO.md pairs each published checkpoint with its config). "
            "Nothing was converted."
        )
    summary.left_to_model = left


def check_normalization(pixel_mean, pixel_std, input_format, tol=1e-3):
    """Raise ValueError unless ``pixel_mean``/``pixel_std`` are the recipe's normalisation in the channel
    order ``input_format`` ("RGB" or "BGR")."""
    mean, std = list(RECIPE_PIXEL_MEAN_RGB), list(RECIPE_PIXEL_STD_RGB)
    if input_format == "BGR":
        mean, std = mean[::-1], std[::-1]
    ok = (
        len(pixel_mean) == 3
        and len(pixel_std) == 3
        and all(abs(float(a) - b) <= tol for a, b in zip(list(pixel_mean) + list(pixel_std), mean + std))
    )
    if not ok:
        raise ValueError(
            f"MODEL.PIXEL_MEAN={list(pixel_mean)} / MODEL.PIXEL_STD={list(pixel_std)} "
            "are not the normalisation "
            f"the published weights were trained with ({input_format} order: mean {mean}, std {std}); "
            "set them to these values (our K-Net configs do) or the converted model will see shifted inputs."
        )


def convert_checkpoint(
    checkpoint: Mapping,
    source: str,
    target_state_dict: Optional[Mapping[str, object]] = None,
    input_format: str = "RGB",
    dst_prefix: Optional[str] = None,
    where: str = "checkpoint",
) -> ConversionResult:
    """Convert a loaded checkpoint file (see :func:`convert_state_dict` for the arguments).

    Top-level entries other than the weights (``meta``, ``optimizer``, ...) are dropped; class names found in
    ``meta`` are kept in the result's ``metadata["classes"]``.
    """
    state_dict, top_level = extract_state_dict(checkpoint, where)
    converted, summary = convert_state_dict(
        state_dict, source, target_state_dict, input_format=input_format, dst_prefix=dst_prefix, where=where
    )
    summary.dropped_top_level = list(map(str, top_level))
    metadata = {"source": source, "input_format": input_format}
    classes = extract_class_names(checkpoint)
    if classes is not None:
        metadata["classes"] = classes
    if summary.num_classes is not None:
        metadata["num_classes"] = summary.num_classes
    return ConversionResult(converted, metadata, summary)
