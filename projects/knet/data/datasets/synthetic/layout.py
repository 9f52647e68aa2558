"""The synthetic dataset on disk: its folder layout, completion marker, generator version and default sizes.

Pure path arithmetic and constants; nothing here touches the disk.
"""

import os
from typing import Dict, Sequence, Tuple, Union

import numpy as np

# Bump whenever the drawing or the file formats change: an existing dataset of another version is regenerated.
# 2: class-typical surface patterns on the things; 3: high-contrast, fixed-scale ones; 4: denser training
# scenes (4-10 things instead of 1-8; the validation images are unchanged).
GENERATOR_VERSION = 4
# Written into the completion marker (the generator's historical module name; part of the dataset's bytes).
GENERATOR_NAME = "knet.data.datasets.synthetic"
MARKER_NAME = "COMPLETE.json"
SPLITS = ("train", "val")
DEFAULT_SEED = 0
DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 50
DEFAULT_IMAGE_SIZE = 256


def default_parameters() -> Dict[str, object]:
    """The dataset generated when nothing else is asked for (read at call time): seed, split sizes, image
    size."""
    return {
        "seed": DEFAULT_SEED,
        "num_train": DEFAULT_NUM_TRAIN,
        "num_val": DEFAULT_NUM_VAL,
        "image_size": DEFAULT_IMAGE_SIZE,
    }


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/knet_synthetic`` (``DETECTRON2_DATASETS`` defaults to ``datasets``)."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "knet_synthetic")


def synthetic_paths(root: str, split: str) -> Dict[str, str]:
    """Where the files of ``split`` live under ``root`` (pure path arithmetic, touches no disk)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown synthetic split {split!r}; expected one of {SPLITS}")
    return {
        "image_root": os.path.join(root, "images", split),
        "panoptic_root": os.path.join(root, "panoptic", split),
        "sem_seg_root": os.path.join(root, "semantic", split),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def normalize_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``image_size`` (int: square, or (height, width)) as ``(h, w)``; at least 16x16."""
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        h, w = (int(v) for v in image_size)
    if h < 16 or w < 16:
        raise ValueError(f"Synthetic image size must be at least 16x16, got {h}x{w}")
    return h, w
