"""Checkpoints: safe loading and atomic saving (:mod:`.io`, :class:`KNetCheckpointer`) and converters from the
published K-Net (mmdet / mmseg), torchvision ResNet and Swin checkpoints (:mod:`.convert`, one
:class:`~.layouts.SourceLayout` per source in :mod:`.layouts`).

``KNetCheckpointer`` lives in :mod:`knet.checkpoint.checkpointer` (it imports detectron2's checkpointer); the
rest of this package needs torch (and safetensors) only.
"""

from .convert import (  # noqa: F401
    SOURCES,
    CheckpointMismatchError,
    ConversionResult,
    ConversionSummary,
    check_normalization,
    convert_checkpoint,
    convert_state_dict,
    extract_class_names,
    extract_state_dict,
)
from .io import (  # noqa: F401
    CheckpointLoadError,
    atomic_write,
    load_checkpoint,
    load_safetensors,
    save_checkpoint,
    save_safetensors,
)
from .layouts import SOURCE_LAYOUTS, SourceLayout, get_source_layout, register_source_layout  # noqa: F401
