"""tools/experiments: the second synthetic dataset (the recipe check on data unlike ours) is written
consistently (panoptic PNG ids <-> segments_info <-> instances JSON), deterministically, and registers the way
docs/custom_datasets.md says, with both evaluators' files."""
import importlib
import json
import os
import sys

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools import mask as mask_util
from support.scripts import REPO

EXP = os.path.join(REPO, "tools", "experiments")


def _module(name):
    if EXP not in sys.path:
        sys.path.insert(0, EXP)
    return importlib.import_module(name)


def _generate(root, seed=123):
    gen = _module("make_other_dataset")
    assert gen.main(["--root", str(root), "--seed", str(seed), "--num-train", "4", "--num-val", "2",
                     "--size", "96"]) == 0


def test_other_dataset_is_consistent_and_deterministic(tmp_path):
    _generate(tmp_path / "a")
    _generate(tmp_path / "b")
    _generate(tmp_path / "c", seed=7)
    for split in ("train", "val"):
        pan = json.loads((tmp_path / "a" / f"panoptic_{split}.json").read_text())
        inst = json.loads((tmp_path / "a" / f"instances_{split}.json").read_text())
        assert {c["id"] for c in pan["categories"]} == {1, 2, 3, 4, 11, 12, 13}
        assert {c["id"] for c in inst["categories"]} == {1, 2, 3, 4}
        assert [a["id"] for a in inst["annotations"]] == list(range(1, len(inst["annotations"]) + 1))
        by_image = {}
        for a in inst["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for ann in pan["annotations"]:
            ids = rgb2id(np.asarray(Image.open(tmp_path / "a" / f"panoptic_{split}" / ann["file_name"])))
            segs = {s["id"]: s for s in ann["segments_info"]}
            assert set(np.unique(ids)) - {0} == set(segs)
            for sid, s in segs.items():
                assert s["area"] == int((ids == sid).sum()) >= 30 and sid // 1000 == s["category_id"]
            things = [s for s in segs.values() if s["category_id"] <= 4]
            inst_here = by_image.get(ann["image_id"], [])
            assert len(inst_here) == len(things)
            for a in inst_here:  # every instance mask is exactly its panoptic segment
                m = mask_util.decode(a["segmentation"]).astype(bool)
                match = [s for s in things if s["area"] == a["area"] and s["category_id"] == a["category_id"]]
                assert any(np.array_equal(m, ids == s["id"]) for s in match)
        for f in sorted(os.listdir(tmp_path / "a" / "images" / split)):
            assert (tmp_path / "a" / "images" / split / f).read_bytes() == \
                (tmp_path / "b" / "images" / split / f).read_bytes()
    first = (tmp_path / "a" / "panoptic_train.json").read_bytes()
    assert first == (tmp_path / "b" / "panoptic_train.json").read_bytes()
    assert first != (tmp_path / "c" / "panoptic_train.json").read_bytes()


def test_other_dataset_registers_for_pq_and_mask_ap(tmp_path, monkeypatch):
    _generate(tmp_path)
    monkeypatch.setenv("KNET_OTHER_ROOT", str(tmp_path))  # importing registers from $KNET_OTHER_ROOT
    for name in ("knet_other_panoptic_train", "knet_other_panoptic_val"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    reg = sys.modules.get("other_dataset") or _module("other_dataset")
    reg.register_other_dataset(str(tmp_path))  # names already registered (by the import) are kept
    records = DatasetCatalog.get("knet_other_panoptic_val")
    assert len(records) == 2 and all(os.path.isfile(r["pan_seg_file_name"]) for r in records)
    meta = MetadataCatalog.get("knet_other_panoptic_val")
    assert meta.thing_classes == ["heart", "crescent", "arrow", "hexagon_frame"]
    assert meta.stuff_classes[4:] == ["wood", "fabric", "concrete"]
    assert meta.stuff_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 11: 4, 12: 5, 13: 6}
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.json_file == os.path.join(str(tmp_path), "instances_val.json")  # mask AP
