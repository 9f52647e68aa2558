"""Registration of the synthetic dataset (see :mod:`knet.data.datasets.synthetic`) in detectron2's catalogs.

``import knet`` registers, rooted at ``$DETECTRON2_DATASETS/knet_synthetic`` (``DETECTRON2_DATASETS`` defaults
to ``datasets``):

=================================  ===================  ===========================================
name                               evaluator_type       records (detectron2 loader)
=================================  ===================  ===========================================
``knet_synthetic_panoptic_train``  coco_panoptic_seg    ``load_coco_panoptic_json`` + sem_seg_file_name
``knet_synthetic_panoptic_val``    coco_panoptic_seg
``knet_synthetic_instance_train``  coco                 ``load_coco_json`` (RLE masks)
``knet_synthetic_instance_val``    coco
``knet_synthetic_sem_seg_train``   sem_seg              ``load_sem_seg``
``knet_synthetic_sem_seg_val``     sem_seg
=================================  ===================  ===========================================

Registration is cheap and touches no disk: the loader functions call :func:`ensure_synthetic_dataset`, so
the data is generated (with the default sizes) the first time a registered dataset is loaded.

Metadata follows detectron2's "coco_panoptic_standard" convention, so that ``Visualizer``,
``COCOPanopticEvaluator``, ``COCOEvaluator`` and ``SemSegEvaluator`` work unchanged:
  * ``thing_classes`` (6 shapes) with contiguous ids 0..5; ``stuff_classes`` lists **all** 11 classes, things
    first, so a contiguous id indexes it directly (the semantic PNGs use these ids, 255 = ignore);
  * ``stuff_dataset_id_to_contiguous_id`` maps every category (things and stuff), as in Mask2Former's
    COCO panoptic registration, so that ``SemSegEvaluator`` can encode predicted thing pixels too;
  * the panoptic datasets also carry ``json_file`` (instances) and ``sem_seg_root``, and their records a
    ``sem_seg_file_name``, so one panoptic evaluation can add ``COCOEvaluator`` (mask AP) and
    ``SemSegEvaluator`` (mIoU).
"""

import functools
import os
from typing import Optional

from detectron2.data.datasets.coco import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from .catalog import check_name_prefix, register_dataset
from .synthetic import (
    IGNORE_LABEL,
    SPLITS,
    STUFF_CLASSES,
    STUFF_COLORS,
    THING_CLASSES,
    THING_COLORS,
    default_synthetic_root,
    ensure_synthetic_dataset,
    synthetic_categories,
    synthetic_paths,
)

__all__ = [
    "SYNTHETIC_DATASET_NAMES",
    "get_synthetic_metadata",
    "register_knet_synthetic",
    "register_all_knet_synthetic",
]

_PREFIX = "knet_synthetic"
_TASKS = ("panoptic", "instance", "sem_seg")
SYNTHETIC_DATASET_NAMES = [f"{_PREFIX}_{task}_{split}" for task in _TASKS for split in SPLITS]


def get_synthetic_metadata() -> dict:
    """Class names, colours and id maps shared by the three tasks (detectron2 panoptic convention)."""
    cats = synthetic_categories()
    return {
        "thing_classes": list(THING_CLASSES),
        "thing_colors": [list(c) for c in THING_COLORS],
        "stuff_classes": list(THING_CLASSES) + list(STUFF_CLASSES),
        "stuff_colors": [list(c) for c in THING_COLORS] + [list(c) for c in STUFF_COLORS],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def _load_panoptic(root: str, split: str, name: str, meta: dict):
    ensure_synthetic_dataset(root)
    p = synthetic_paths(root, split)
    records = load_coco_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"], meta)
    for r in records:
        stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
        r["sem_seg_file_name"] = os.path.join(p["sem_seg_root"], stem + ".png")
    return records


def _load_instance(root: str, split: str, name: str, meta: dict):
    ensure_synthetic_dataset(root)
    p = synthetic_paths(root, split)
    return load_coco_json(p["instances_json"], p["image_root"], name)


def _load_sem_seg(root: str, split: str, name: str, meta: dict):
    ensure_synthetic_dataset(root)
    p = synthetic_paths(root, split)
    return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="jpg")


# task -> loader(root, split, dataset name, metadata): one signature, each uses what its format needs
_LOADERS = {"panoptic": _load_panoptic, "instance": _load_instance, "sem_seg": _load_sem_seg}


def _task_metadata(base: dict, root: str, split: str) -> dict:
    """task -> the metadata of ``{prefix}_{task}_{split}``: the panoptic names carry everything (so one
    evaluation can add mask AP and mIoU), the instance names the thing keys, the semantic names the stuff
    keys."""
    p = synthetic_paths(root, split)
    common = dict(image_root=p["image_root"], dataset_root=root)
    return {
        "panoptic": dict(
            base,
            **common,
            panoptic_root=p["panoptic_root"],
            panoptic_json=p["panoptic_json"],
            json_file=p["instances_json"],
            sem_seg_root=p["sem_seg_root"],
            evaluator_type="coco_panoptic_seg",
            ignore_label=IGNORE_LABEL,
            label_divisor=1000,
        ),
        "instance": dict(
            {k: v for k, v in base.items() if k.startswith("thing_")},
            **common,
            json_file=p["instances_json"],
            evaluator_type="coco",
        ),
        "sem_seg": dict(
            {k: v for k, v in base.items() if k.startswith("stuff_")},
            **common,
            sem_seg_root=p["sem_seg_root"],
            evaluator_type="sem_seg",
            ignore_label=IGNORE_LABEL,
        ),
    }


def register_knet_synthetic(root: Optional[str] = None, prefix: str = _PREFIX) -> list:
    """Register ``{prefix}_{panoptic,instance,sem_seg}_{train,val}`` rooted at ``root``; return the names.

    ``root`` is the dataset folder itself (default ``$DETECTRON2_DATASETS/knet_synthetic``). Registering a
    name again replaces it (useful to point the names at another folder, e.g. in tests). Touches no disk.
    """
    check_name_prefix(prefix)
    root = os.path.abspath(root if root is not None else default_synthetic_root())
    base = get_synthetic_metadata()
    names = []
    for split in SPLITS:
        metadata = _task_metadata(base, root, split)
        for task in _TASKS:
            name = f"{prefix}_{task}_{split}"
            loader = functools.partial(_LOADERS[task], root, split, name, base)
            names.append(register_dataset(name, loader, metadata[task]))
    return names


def register_all_knet_synthetic():
    """The import-time registration: the default names under the default root."""
    return register_knet_synthetic(default_synthetic_root(), _PREFIX)
