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

import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

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
SYNTHETIC_DATASET_NAMES = [
    f"{_PREFIX}_{task}_{split}" for task in ("panoptic", "instance", "sem_seg") for split in SPLITS
]


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


def _load_panoptic(root: str, split: str, meta: dict):
    ensure_synthetic_dataset(root)
    p = synthetic_paths(root, split)
    records = load_coco_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"], meta)
    for r in records:
        stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
        r["sem_seg_file_name"] = os.path.join(p["sem_seg_root"], stem + ".png")
    return records


def _load_instance(root: str, split: str, name: str):
    ensure_synthetic_dataset(root)
    p = synthetic_paths(root, split)
    return load_coco_json(p["instances_json"], p["image_root"], name)


def _load_sem_seg(root: str, split: str):
    ensure_synthetic_dataset(root)
    p = synthetic_paths(root, split)
    return load_sem_seg(p["sem_seg_root"], p["image_root"], gt_ext="png", image_ext="jpg")


def _register(name: str, loader, metadata: dict):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_knet_synthetic(root: Optional[str] = None, prefix: str = _PREFIX) -> list:
    """Register ``{prefix}_{panoptic,instance,sem_seg}_{train,val}`` rooted at ``root``; return the names.

    ``root`` is the dataset folder itself (default ``$DETECTRON2_DATASETS/knet_synthetic``).
    Registering a name
    again replaces it (useful to point the names at another folder, e.g. in tests). Touches no disk.
    """
    if not prefix.startswith("knet_"):
        raise ValueError(f"Registered dataset names must start with 'knet_', got prefix {prefix!r}")
    root = os.path.abspath(root if root is not None else default_synthetic_root())
    base = get_synthetic_metadata()
    names = []
    for split in SPLITS:
        p = synthetic_paths(root, split)
        common = dict(image_root=p["image_root"], dataset_root=root)

        name = f"{prefix}_panoptic_{split}"
        _register(
            name,
            (lambda root=root, split=split, meta=base: _load_panoptic(root, split, meta)),
            dict(
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
        )
        names.append(name)

        name = f"{prefix}_instance_{split}"
        thing_meta = {
            k: base[k] for k in ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id")
        }
        _register(
            name,
            (lambda root=root, split=split, name=name: _load_instance(root, split, name)),
            dict(thing_meta, **common, json_file=p["instances_json"], evaluator_type="coco"),
        )
        names.append(name)

        name = f"{prefix}_sem_seg_{split}"
        stuff_meta = {
            k: base[k] for k in ("stuff_classes", "stuff_colors", "stuff_dataset_id_to_contiguous_id")
        }
        _register(
            name,
            (lambda root=root, split=split: _load_sem_seg(root, split)),
            dict(
                stuff_meta,
                **common,
                sem_seg_root=p["sem_seg_root"],
                evaluator_type="sem_seg",
                ignore_label=IGNORE_LABEL,
            ),
        )
        names.append(name)
    return names


def register_all_knet_synthetic():
    """The import-time registration: the default names under the default root."""
    return register_knet_synthetic(default_synthetic_root(), _PREFIX)
