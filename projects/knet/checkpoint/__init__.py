"""Checkpoints: safe loading and atomic saving (:mod:`.io`, :class:`KNetCheckpointer`) and converters from the
published K-Net (mmdet / mmseg), torchvision ResNet and Swin checkpoints (:mod:`.convert`).

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
