"""Register the "knet_other" synthetic panoptic dataset as ``knet_other_panoptic_{train,val}`` on import.

The dataset is written by ``tools/experiments/make_other_dataset.py``; its folder is ``$KNET_OTHER_ROOT``
(default ``datasets/knet_other``, relative to the working directory). Registered as docs/custom_datasets.md
("Panoptic segmentation") tells a user to register a COCO panoptic dataset: detectron2's
``register_coco_panoptic`` with the class names and id maps read from the JSON's categories, things first.

    .venv/bin/python tools/check_dataset.py --register tools/experiments/other_dataset.py --config-file ...
    .venv/bin/python tools/experiments/train_other.py --config-file ...   # imports this module
"""
import json
import os

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_panoptic

ROOT = os.path.expanduser(os.getenv("KNET_OTHER_ROOT", os.path.join("datasets", "knet_other")))
SPLITS = ("train", "val")


def panoptic_metadata(panoptic_json):
    """Class names and id maps from the categories of a COCO panoptic JSON (things first)."""
    with open(panoptic_json) as f:
        categories = json.load(f)["categories"]
    things = [c for c in categories if c["isthing"]]
    ordered = things + [c for c in categories if not c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "stuff_classes": [c["name"] for c in ordered],  # all classes, things first
        "thing_colors": [c.get("color", [220, 20, 60]) for c in things],
        "stuff_colors": [c.get("color", [120, 120, 120]) for c in ordered],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(ordered)},
    }


def register_other_dataset(root=ROOT):
    """Register ``knet_other_panoptic_train`` / ``_val`` from ``root`` (names already registered are kept)."""
    for split in SPLITS:
        name = f"knet_other_panoptic_{split}"
        if name in DatasetCatalog.list():
            continue
        panoptic_json = os.path.join(root, f"panoptic_{split}.json")
        if not os.path.isfile(panoptic_json):
            raise FileNotFoundError(
                f"{panoptic_json} does not exist: generate the dataset first "
                f"(python tools/experiments/make_other_dataset.py --root {root}) or set KNET_OTHER_ROOT."
            )
        register_coco_panoptic(
            name,
            panoptic_metadata(panoptic_json),
            image_root=os.path.join(root, "images", split),
            panoptic_root=os.path.join(root, f"panoptic_{split}"),
            panoptic_json=panoptic_json,
            instances_json=os.path.join(root, f"instances_{split}.json"),  # mask AP
        )
        # register_coco_panoptic sets evaluator_type="coco_panoptic_seg", ignore_label=255 and json_file (the
        # instances JSON: mask AP); no semantic PNGs (no sem_seg_root), so no mIoU.


register_other_dataset()
