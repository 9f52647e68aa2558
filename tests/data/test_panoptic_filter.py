"""The panoptic training filter (mmdet 2.28.2 ``CocoPanopticDataset._filter_imgs``: keep an image only if it
has at least one thing segment, crowd included, and a shorter side of at least 32 px), on a small COCO-format
panoptic set with stuff-only and empty images read through the package's registration and training loader."""
import itertools
import json
import logging
import os
import uuid

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from knet.config import add_knet_config
from knet.data.datasets.filters import filter_panoptic_images_without_things, panoptic_record_has_thing
from knet.data.datasets.register_coco_panoptic import (
    get_knet_coco_panoptic_metadata,
    register_knet_coco_panoptic,
)
from knet.engine import build_knet_train_loader

PERSON, CAR = 1, 3  # COCO thing category ids
GRASS, SKY = 193, 187  # COCO stuff category ids ("grass-merged", "sky-other-merged")

# image -> [(category id, iscrowd)]; segment k covers rows band k of the image, the rest is void (id 0)
IMAGES = {
    "thing_and_stuff": [(PERSON, 0), (GRASS, 0)],
    "stuff_only": [(GRASS, 0), (SKY, 0)],
    "empty": [],  # every pixel void, no segment
    "crowd_thing_only": [(PERSON, 1), (SKY, 0)],  # a crowd region is a thing segment
    "thing_no_stuff": [(CAR, 0)],
}
KEPT = {"thing_and_stuff", "crowd_thing_only", "thing_no_stuff"}


def _write_coco_panoptic(root, height=40, width=48):
    """A COCO panoptic train split (JPEGs, PNGs, json) under ``root/coco``."""
    img_dir = os.path.join(root, "coco", "train2017")
    png_dir = os.path.join(root, "coco", "panoptic_train2017")
    ann_dir = os.path.join(root, "coco", "annotations")
    for d in (img_dir, png_dir, ann_dir):
        os.makedirs(d, exist_ok=True)
    meta = get_knet_coco_panoptic_metadata()
    cats = [{"id": i, "name": n, "isthing": int(i in meta["thing_dataset_id_to_contiguous_id"])}
            for i, n in zip(meta["stuff_dataset_id_to_contiguous_id"], meta["stuff_classes"])]
    images, annotations = [], []
    for image_id, (name, segments) in enumerate(IMAGES.items(), start=1):
        Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(os.path.join(img_dir, name + ".jpg"))
        pan = np.zeros((height, width), np.int64)
        infos = []
        for k, (cat, crowd) in enumerate(segments):
            seg_id = 10 * image_id + k + 1
            pan[8 * k: 8 * (k + 1)] = seg_id
            infos.append({"id": seg_id, "category_id": cat, "iscrowd": crowd, "area": 8 * width,
                          "bbox": [0, 8 * k, width, 8]})
        rgb = np.stack([pan % 256, pan // 256 % 256, pan // 256 ** 2], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(png_dir, name + ".png"))
        images.append({"id": image_id, "file_name": name + ".jpg", "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": name + ".png", "segments_info": infos})
    with open(os.path.join(ann_dir, "panoptic_train2017.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": cats}, f)


@pytest.fixture(scope="module")
def tiny_coco_panoptic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_pan"))
    _write_coco_panoptic(root)
    prefix = f"knet_test_filter{uuid.uuid4().hex[:6]}"
    names = register_knet_coco_panoptic(root, prefix=prefix)
    yield f"{prefix}_train_panoptic"
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _stem(file_name):
    return os.path.splitext(os.path.basename(file_name))[0]


def _cfg(dataset, filter_empty):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = filter_empty
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SEED = 0
    return cfg


def _images_seen(loader, n):
    return {_stem(d["file_name"]) for batch in itertools.islice(iter(loader), n) for d in batch}


@pytest.mark.parametrize("pass_dataset", [False, True])  # loaded by the loader / by the Trainer
def test_training_loader_keeps_images_with_a_thing(tiny_coco_panoptic, caplog, pass_dataset):
    dicts = DatasetCatalog.get(tiny_coco_panoptic)
    assert {_stem(d["file_name"]) for d in dicts} == set(IMAGES)

    def mapper(record):
        return {"file_name": record["file_name"]}

    cfg = _cfg(tiny_coco_panoptic, filter_empty=True)
    with caplog.at_level(logging.INFO, logger="knet.data.datasets.filters"):
        loader = build_knet_train_loader(cfg, mapper, dataset=list(dicts) if pass_dataset else None)
    # 4 epochs of the kept images: every kept image appears, no removed one does
    assert _images_seen(loader, 4 * len(KEPT)) == KEPT
    assert "Removed 2 panoptic images without a thing segment" in caplog.text
    assert "3 of 5 panoptic images left" in caplog.text

    loader = build_knet_train_loader(_cfg(tiny_coco_panoptic, filter_empty=False), mapper)
    assert _images_seen(loader, 4 * len(IMAGES)) == set(IMAGES)


def test_filter_rule_on_records():
    def rec(name, things, height=None, width=None):
        segments = [{"id": i + 1, "category_id": 0, "isthing": t, "iscrowd": 0} for i, t in enumerate(things)]
        r = {"file_name": name, "segments_info": segments}
        if height is not None:
            r.update(height=height, width=width)
        return r

    records = [
        rec("a", [True, False]),
        rec("b", [False, False]),
        rec("c", []),
        rec("d", [True], height=31, width=500),  # shorter side below the official 32 px
        rec("e", [True], height=32, width=32),
        {"file_name": "instance", "annotations": []},  # not panoptic: untouched (detectron2 filters these)
        {"file_name": "semantic", "sem_seg_file_name": "x.png"},
    ]
    kept = filter_panoptic_images_without_things(records)
    assert [r["file_name"] for r in kept] == ["a", "e", "instance", "semantic"]
    kept = filter_panoptic_images_without_things(records, min_size=0)
    assert [r["file_name"] for r in kept] == ["a", "d", "e", "instance", "semantic"]
    assert panoptic_record_has_thing(rec("x", [False, True])) and not panoptic_record_has_thing(rec("y", []))

    with pytest.raises(ValueError, match="FILTER_EMPTY_ANNOTATIONS"):
        filter_panoptic_images_without_things([rec("b", [False]), rec("c", [])])
    with pytest.raises(KeyError, match="isthing"):
        filter_panoptic_images_without_things([{"file_name": "z", "segments_info": [{"id": 1}]}])
