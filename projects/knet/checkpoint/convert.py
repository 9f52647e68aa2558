"""Convert published K-Net checkpoints (and ImageNet backbones) to this package's state-dict names.

Sources (``--source`` of ``tools/convert_knet_checkpoint.py``): the registered source layouts
(:class:`~.layouts.SourceLayout`, :mod:`.layouts`): ``mmdet-knet``, ``mmseg-knet``, ``torchvision-resnet``,
``swin``, ``mmcv-resnet-v1c``.

Everything here is a pure function of state dicts: :func:`convert_checkpoint` renames every key by the
source layout's rules (:mod:`.layouts`), drops what is not a weight
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
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .layouts import SOURCE_LAYOUTS, SWIN_PREFIXES, SourceLayout, get_source_layout
from .rules import apply_rules, compile_rules
from .summary import ConversionResult, ConversionSummary

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

# The registered source names (``--source``), see :mod:`.layouts`.
SOURCES = tuple(SOURCE_LAYOUTS)

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


class CheckpointMismatchError(ValueError):
    """The checkpoint's layout does not fit the source rules or the target model; nothing was converted."""


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


_SWIN_FIRST_KEY = "patch_embed.proj.weight"


def _resolve_backbone_prefix(layout: SourceLayout, keys, target_state_dict, dst_prefix):
    """The prefix our backbone names get: ``dst_prefix`` if given; for a Swin checkpoint and a target model,
    the prefix under which that model has its Swin (``backbone.bottom_up.`` with an FPN, ``backbone.`` in the
    semantic models); otherwise the layout's default."""
    if dst_prefix is not None:
        return dst_prefix
    default = layout.backbone_prefix
    if target_state_dict is not None and layout.is_swin(keys):
        for prefix in (default,) + tuple(p for p in SWIN_PREFIXES if p != default):
            if prefix + _SWIN_FIRST_KEY in target_state_dict:
                return prefix
    return default


def build_rules(source: str, keys: Sequence[str], dst_prefix: Optional[str] = None):
    """The rule list for ``source``, choosing the backbone rules from the keys present (ResNet with 7x7 or
    deep stem, with or without DCN, or Swin; for ``swin``, the original or mmseg naming)."""
    layout = get_source_layout(source)
    return layout.rules(keys, dst_prefix or layout.backbone_prefix)


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
    layout = get_source_layout(source)
    keys = list(state_dict.keys())
    prefix = _resolve_backbone_prefix(layout, keys, target_state_dict, dst_prefix)
    compiled = compile_rules(layout.rules(keys, prefix))
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
        backbone_only = prefix if layout.backbone_only else None
        _fit_to_target(
            out, origin, optional_reason, target_state_dict, state_dict, layout, summary, where, backbone_only
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
    for src_key, dst_key in layout.class_keys:
        if src_key in state_dict:
            summary.num_classes = int(state_dict[src_key].shape[0])
    return out, summary


def _fit_to_target(
    out, origin, optional_reason, target, source_sd, layout: SourceLayout, summary, where, backbone_prefix
):
    """Check ``out`` against the target model's state dict; drop absent optional keys. Raises on mismatch.
    ``backbone_prefix``: for backbone-only sources, the prefix they fill (the rest of the model may stay at
    its initialisation); None for full K-Net checkpoints, which must fill everything."""
    # 1. a different class count, explained before the generic shape check
    for src_key, dst_key in layout.class_keys:
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
        [re.compile(re.escape(backbone_prefix) + p + r"\Z") for p in layout.new_backbone_keys]
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
            f"{where} (--source {layout.name}) does not fit the model built from the config:\n  "
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
