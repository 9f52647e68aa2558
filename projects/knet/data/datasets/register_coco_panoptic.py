"""COCO panoptic (80 things + 53 stuff) registered with K-Net's metadata.

``import knet`` registers, on detectron2's standard layout under ``$DETECTRON2_DATASETS`` (default
``datasets``)::

    coco/
      {train,val}2017/*.jpg
      panoptic_{train,val}2017/*.png                    # COCO panoptic PNGs (id = R + 256 G + 256^2 B)
      annotations/panoptic_{train,val}2017.json
      annotations/instances_{train,val}2017.json        # only read by COCOEvaluator (mask AP)

================================  ==================  ===========================================
name                              evaluator_type      records (detectron2 loader)
================================  ==================  ===========================================
``knet_coco_2017_train_panoptic``  coco_panoptic_seg   ``load_coco_panoptic_json``
``knet_coco_2017_val_panoptic``    coco_panoptic_seg   ``load_coco_panoptic_json``
================================  ==================  ===========================================

Why not detectron2's own ``coco_2017_{train,val}_panoptic``: its "standard" metadata lists all 133 names in
``thing_classes`` (a Visualizer convenience) and only the 53 stuff categories in
``stuff_dataset_id_to_contiguous_id``. K-Net's convention (as the synthetic dataset's, see
:mod:`knet.data.datasets.register_synthetic`, and Mask2Former's COCO panoptic registration) is:

* ``thing_classes`` / ``thing_colors``: the 80 things, contiguous ids 0..79;
* ``stuff_classes`` / ``stuff_colors``: **all** 133 classes, things first, in ``COCO_CATEGORIES`` order, so a
  contiguous id 0..132 indexes it directly (``MODEL.KNET.NUM_CLASSES`` 133, ``NUM_THING_CLASSES`` 80);
* ``thing_dataset_id_to_contiguous_id``: the 80 thing category ids -> 0..79;
  ``stuff_dataset_id_to_contiguous_id``: all 133 category ids -> 0..132 (``load_coco_panoptic_json`` looks
  things up in the thing map first, so ``isthing`` is still right; ``COCOPanopticEvaluator`` inverts both).

No semantic maps are provided, so there is no ``sem_seg_root`` and no ``_with_sem_seg`` name: evaluation gives
PQ, plus mask AP from ``json_file`` when ``MODEL.KNET.TEST.INSTANCE_ON`` (mIoU is skipped with a warning by
:func:`knet.evaluation.build_evaluator`). The official K-Net COCO results are PQ and mask AP only.

Instance segmentation needs no registration here: detectron2 v0.6's builtin ``coco_2017_{train,val}`` already
carry 80 ``thing_classes``, the 80-entry ``thing_dataset_id_to_contiguous_id``, ``json_file`` and
``evaluator_type`` "coco" (checked in ``tests/data/test_coco_registration.py``).

Registration touches no disk; a missing file is reported when the dataset is first loaded.
"""
import functools
import os
from typing import Dict, List, Optional

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from .catalog import check_name_prefix, register_dataset

__all__ = [
    "KNET_COCO_PANOPTIC_SPLITS",
    "KNET_COCO_PANOPTIC_NAMES",
    "get_knet_coco_panoptic_metadata",
    "load_knet_coco_panoptic",
    "register_knet_coco_panoptic",
]

_PREFIX = "knet_coco_2017"
COCO_IGNORE_LABEL = 255
# split -> (image dir, panoptic PNG dir, panoptic json, instances json), relative to the datasets root
KNET_COCO_PANOPTIC_SPLITS: Dict[str, tuple] = {
    split: (
        f"coco/{split}2017",
        f"coco/panoptic_{split}2017",
        f"coco/annotations/panoptic_{split}2017.json",
        f"coco/annotations/instances_{split}2017.json",
    )
    for split in ("train", "val")
}
KNET_COCO_PANOPTIC_NAMES = [f"{_PREFIX}_{split}_panoptic" for split in KNET_COCO_PANOPTIC_SPLITS]


def get_knet_coco_panoptic_metadata() -> dict:
    """Class names, colours and id maps of COCO panoptic in K-Net's convention (things first, 80 + 53)."""
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    stuff = [c for c in COCO_CATEGORIES if not c["isthing"]]
    ordered = things + stuff  # == COCO_CATEGORIES (ids 1..90 are things, 92..200 stuff)
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
        "stuff_classes": [c["name"] for c in ordered],
        "stuff_colors": [list(c["color"]) for c in ordered],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(ordered)},
    }


def load_knet_coco_panoptic(
    panoptic_json: str, image_root: str, panoptic_root: str, meta: dict
) -> List[dict]:
    """``load_coco_panoptic_json`` with readable errors for a missing COCO tree.

    Returns detectron2 records: ``file_name``, ``image_id``, ``pan_seg_file_name``, ``segments_info`` (each
    with contiguous ``category_id`` and ``isthing``).
    """
    for path, what in ((panoptic_json, "file"), (image_root, "folder"), (panoptic_root, "folder")):
        exists = os.path.isfile(path) if what == "file" else os.path.isdir(path)
        if not exists:
            raise FileNotFoundError(
                f"COCO panoptic {what} not found: {path}. Put COCO 2017 under $DETECTRON2_DATASETS/coco "
                "({train,val}2017/, panoptic_{train,val}2017/ (the PNG zips inside "
                "panoptic_annotations_trainval2017), annotations/panoptic_{train,val}2017.json, "
                "annotations/instances_{train,val}2017.json), or "
                "call knet.data.datasets.register_knet_coco_panoptic(root) with the folder that holds coco/."
            )
    return load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, meta)


def register_knet_coco_panoptic(root: Optional[str] = None, prefix: str = _PREFIX) -> List[str]:
    """Register ``{prefix}_{train,val}_panoptic`` on the COCO tree ``<root>/coco``; return the names.

    ``root`` is the folder that holds ``coco/`` (default ``$DETECTRON2_DATASETS``, else ``datasets``).
    Registering a name again replaces it (e.g. tests point a prefix of their own at a temporary tree).
    Touches no disk.
    """
    check_name_prefix(prefix)
    if root is None:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")
    root = os.path.abspath(os.path.expanduser(root))
    base = get_knet_coco_panoptic_metadata()
    names = []
    for split, rels in KNET_COCO_PANOPTIC_SPLITS.items():
        image_root, panoptic_root, panoptic_json, instances_json = (os.path.join(root, r) for r in rels)
        loader = functools.partial(load_knet_coco_panoptic, panoptic_json, image_root, panoptic_root, base)
        metadata = dict(base, image_root=image_root, panoptic_root=panoptic_root, panoptic_json=panoptic_json,
                        json_file=instances_json, evaluator_type="coco_panoptic_seg",
                        ignore_label=COCO_IGNORE_LABEL, label_divisor=1000)
        names.append(register_dataset(f"{prefix}_{split}_panoptic", loader, metadata))
    return names


register_knet_coco_panoptic()
