"""ADE20K (SceneParsing, 150 classes) for semantic K-Net, registered the detectron2 way.

Layout under ``$DETECTRON2_DATASETS`` (default ``./datasets``)::

    ADEChallengeData2016/
      images/{training,validation}/*.jpg
      annotations/{training,validation}/*.png             # original labels: 0 = "other", 1..150 = classes
      annotations_detectron2/{training,validation}/*.png  # written by tools/prepare_ade20k_sem_seg.py

detectron2 v0.6 already registers ``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` on this layout
(``detectron2/data/datasets/builtin.py::register_all_ade20k``, with 150 ``stuff_classes``, ``ignore_label``
255 and ``evaluator_type`` "sem_seg"). This module reuses that registration when it is there and checks its
metadata (so a wrong registration fails early with a readable message); if the names are missing (a detectron2
build without its builtin datasets) it registers them itself. The label conversion (mmseg
``reduce_zero_label=True``: 0 -> 255 ignore, class k -> k - 1) is :func:`convert_ade20k_label`.
"""
import functools
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .catalog import register_dataset

__all__ = [
    "ADE20K_SEM_SEG_SPLITS",
    "convert_ade20k_label",
    "check_ade20k_metadata",
    "register_all_ade20k_sem_seg",
]

ADE20K_IGNORE_LABEL = 255
# name -> (image dir, converted label dir), relative to <root>/ADEChallengeData2016
ADE20K_SEM_SEG_SPLITS = {
    "ade20k_sem_seg_train": ("images/training", "annotations_detectron2/training"),
    "ade20k_sem_seg_val": ("images/validation", "annotations_detectron2/validation"),
}


def convert_ade20k_label(label: np.ndarray) -> np.ndarray:
    """ADE20K label map (0 = other, 1..150 = classes) -> contiguous ids 0..149 with 255 = ignore (uint8).

    Values outside 0..150 (not present in the official data) are also mapped to 255.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"ADE20K label maps are single-channel (H, W); got shape {label.shape}")
    lab = label.astype(np.int64)
    out = lab - 1
    out[(lab == 0) | (lab > len(ADE20K_SEM_SEG_CATEGORIES))] = ADE20K_IGNORE_LABEL
    return out.astype(np.uint8)


def check_ade20k_metadata(name: str) -> None:
    """Raise a ValueError naming the dataset and the key if ``name``'s metadata is not ADE20K-150's."""
    meta = MetadataCatalog.get(name)
    problems = []
    classes = meta.get("stuff_classes", None)
    if classes is None or len(classes) != len(ADE20K_SEM_SEG_CATEGORIES):
        n = None if classes is None else len(classes)
        problems.append(f"stuff_classes has {n} entries, expected 150")
    if meta.get("ignore_label", None) != ADE20K_IGNORE_LABEL:
        problems.append(f"ignore_label is {meta.get('ignore_label', None)!r}, expected 255")
    if meta.get("evaluator_type", None) != "sem_seg":
        problems.append(f"evaluator_type is {meta.get('evaluator_type', None)!r}, expected 'sem_seg'")
    if problems:
        raise ValueError(
            f"Dataset {name!r} is registered with unexpected metadata: {'; '.join(problems)}. "
            "Another add-on may have re-registered it; register ADE20K under a new name instead."
        )


def _load_ade20k(gt_dir: str, image_dir: str):
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(
            f"ADE20K labels not found in {gt_dir}: download ADEChallengeData2016 into $DETECTRON2_DATASETS "
            "and "
            "run `python tools/prepare_ade20k_sem_seg.py` to write annotations_detectron2/"
        )
    return load_sem_seg(gt_dir, image_dir, gt_ext="png", image_ext="jpg")


def register_all_ade20k_sem_seg(root: str) -> None:
    """Register (or check detectron2's registration of) ``ade20k_sem_seg_{train,val}`` under ``root``."""
    base = os.path.join(root, "ADEChallengeData2016")
    for name, (image_rel, gt_rel) in ADE20K_SEM_SEG_SPLITS.items():
        if name not in DatasetCatalog.list():
            image_dir = os.path.join(base, image_rel)
            gt_dir = os.path.join(base, gt_rel)
            metadata = dict(
                stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:],
                image_root=image_dir,
                sem_seg_root=gt_dir,
                evaluator_type="sem_seg",
                ignore_label=ADE20K_IGNORE_LABEL,
            )
            register_dataset(name, functools.partial(_load_ade20k, gt_dir, image_dir), metadata)
        check_ade20k_metadata(name)


register_all_ade20k_sem_seg(os.getenv("DETECTRON2_DATASETS", "datasets"))
