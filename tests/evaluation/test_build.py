"""build_evaluator: evaluators chosen from the metadata, fallback, clear errors, and a real evaluation of
perfect predictions on a tiny synthetic panoptic split (PQ, mask AP and mIoU all 100)."""
import json
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Instances
from PIL import Image

from knet.config import add_knet_config
from knet.data.metadata import DatasetMetadataError
from knet.evaluation import build_evaluator, resolve_evaluator_type


@pytest.fixture
def cfg(tmp_path):
    from detectron2.config import get_cfg

    c = get_cfg()
    add_knet_config(c)
    c.OUTPUT_DIR = str(tmp_path / "out")
    c.MODEL.KNET.TEST.PANOPTIC_ON = True
    c.MODEL.KNET.TEST.INSTANCE_ON = True
    c.MODEL.KNET.TEST.SEMANTIC_ON = True
    return c


def _coco_json(path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path.write_text(json.dumps(data))
    return str(path)


def _register(records, **meta):
    name = f"knet_test_eval_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**meta)
    return name


PANOPTIC_META = dict(
    panoptic_json="/nonexistent/panoptic.json",
    panoptic_root="/nonexistent/panoptic",
    thing_dataset_id_to_contiguous_id={1: 0},
    stuff_dataset_id_to_contiguous_id={1: 0, 2: 1},
    thing_classes=["thing"],
    stuff_classes=["thing", "stuff"],
    ignore_label=255,
)


def _types(evaluators):
    return [type(e) for e in evaluators._evaluators]


def test_panoptic_with_all_annotations(cfg, tmp_path):
    recs = [{"file_name": "a.jpg", "sem_seg_file_name": "a.png"}]
    name = _register(recs, evaluator_type="coco_panoptic_seg", json_file=_coco_json(tmp_path / "i.json"),
                     sem_seg_root="/nonexistent/sem", **PANOPTIC_META)
    ev = build_evaluator(cfg, name)
    assert _types(ev) == [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]
    coco = ev._evaluators[1]
    assert coco._tasks == ("segm",) and coco._use_fast_impl is False
    assert coco._output_dir == str(tmp_path / "out" / "inference")


def test_panoptic_follows_annotations_and_outputs(cfg):
    name = _register([{"file_name": "a.jpg"}], evaluator_type="coco_panoptic_seg", **PANOPTIC_META)
    # no json_file, no sem_seg_root: PQ only
    assert _types(build_evaluator(cfg, name)) == [COCOPanopticEvaluator]
    cfg.MODEL.KNET.TEST.INSTANCE_ON = False
    cfg.MODEL.KNET.TEST.SEMANTIC_ON = False
    assert _types(build_evaluator(cfg, name)) == [COCOPanopticEvaluator]
    cfg.MODEL.KNET.TEST.PANOPTIC_ON = False
    with pytest.raises(DatasetMetadataError, match=name):
        build_evaluator(cfg, name)


def test_instance_and_semantic(cfg, tmp_path):
    json_file = _coco_json(tmp_path / "i.json")
    name = _register([], evaluator_type="coco", json_file=json_file, thing_classes=["t"])
    ev = build_evaluator(cfg, name, output_folder=str(tmp_path / "o"))
    assert _types(ev) == [COCOEvaluator]
    assert ev._evaluators[0]._tasks == ("segm",) and ev._evaluators[0]._use_fast_impl is False

    name = _register([{"file_name": "a.jpg", "sem_seg_file_name": "a.png"}], evaluator_type="sem_seg",
                     stuff_classes=["a", "b"], ignore_label=255)
    assert _types(build_evaluator(cfg, name)) == [SemSegEvaluator]


def test_fallback_without_evaluator_type(cfg):
    recs = [{"file_name": "a.jpg", "sem_seg_file_name": "a.png"}]
    name = _register(recs, stuff_classes=["a"], ignore_label=255)
    assert resolve_evaluator_type(name) == "sem_seg"
    assert _types(build_evaluator(cfg, name)) == [SemSegEvaluator]
    name = _register([], **PANOPTIC_META)
    assert resolve_evaluator_type(name) == "coco_panoptic_seg"


def test_clear_errors(cfg):
    name = _register([], thing_classes=["a"])
    with pytest.raises(DatasetMetadataError) as e:
        build_evaluator(cfg, name)
    assert name in str(e.value) and "evaluator_type" in str(e.value)

    meta = dict(PANOPTIC_META)
    del meta["panoptic_json"]
    name = _register([], evaluator_type="coco_panoptic_seg", **meta)
    with pytest.raises(DatasetMetadataError) as e:
        build_evaluator(cfg, name)
    assert name in str(e.value) and "'panoptic_json'" in str(e.value)

    name = _register([], evaluator_type="sem_seg", stuff_classes=["a"])
    with pytest.raises(DatasetMetadataError, match="ignore_label"):
        build_evaluator(cfg, name)

    name = _register([], evaluator_type="lvis")
    with pytest.raises(DatasetMetadataError, match="lvis"):
        build_evaluator(cfg, name)


def test_perfect_predictions_score_100(cfg, tmp_path):
    """The evaluators built for a synthetic panoptic split score the ground truth itself as perfect."""
    from panopticapi.utils import rgb2id

    from knet.data.datasets.register_synthetic import register_knet_synthetic
    from knet.data.datasets.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset(str(tmp_path / "syn"), num_train=1, num_val=3, image_size=48)
    prefix = f"knet_test_ev{uuid.uuid4().hex[:6]}"
    register_knet_synthetic(root, prefix)
    name = f"{prefix}_panoptic_val"
    ev = build_evaluator(cfg, name, output_folder=str(tmp_path / "eval"))
    assert _types(ev) == [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]

    meta = MetadataCatalog.get(name)
    ev.reset()
    num_classes = len(meta.stuff_classes)
    for rec in DatasetCatalog.get(name):
        pan_rgb = np.asarray(Image.open(rec["pan_seg_file_name"]).convert("RGB"))
        pan = torch.from_numpy(rgb2id(pan_rgb).astype(np.int64))
        sem = torch.from_numpy(np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64))
        segs = [{k: s[k] for k in ("id", "category_id", "isthing")} for s in rec["segments_info"]]
        things = [s for s in segs if s["isthing"]]
        h, w = pan.shape
        inst = Instances((h, w))
        masks = [pan == s["id"] for s in things]
        inst.pred_masks = torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)
        inst.pred_classes = torch.tensor([s["category_id"] for s in things], dtype=torch.int64)
        inst.scores = torch.ones(len(things))
        inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
        one_hot = torch.nn.functional.one_hot(sem.clamp(max=num_classes - 1), num_classes)
        sem_scores = one_hot.permute(2, 0, 1).float()
        ev.process([{"file_name": rec["file_name"], "image_id": rec["image_id"], "height": h, "width": w}],
                   [{"panoptic_seg": (pan, segs), "instances": inst, "sem_seg": sem_scores}])
    res = ev.evaluate()
    assert res["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_custom_dataset_doc_examples_register_usable_datasets(cfg, tmp_path, monkeypatch, train_net):
    """The three scripts of docs/custom_datasets.md register datasets whose records load and whose metadata
    passes the mapper and evaluator checks, with the evaluators the page announces."""
    import os
    import re
    import sys

    from support.scripts import REPO as repo

    from knet.data.datasets.synthetic import ensure_synthetic_dataset
    from knet.data.metadata import check_dataset_metadata

    doc = open(os.path.join(repo, "docs", "custom_datasets.md")).read()
    scripts = dict(re.findall(r"Save as `(\w+)\.py`.*?```python\n(.*?)```", doc, re.S))
    assert set(scripts) == {"my_panoptic", "my_instance", "my_semantic"}
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    ensure_synthetic_dataset(str(tmp_path / "my_data"), num_train=2, num_val=2, image_size=48)
    assert sys.modules["train_net"] is train_net  # the scripts `import train_net` (support.scripts loaded it)
    tasks = ("panoptic", "instance", "semantic")
    names = [f"my_{task}_{split}" for task in tasks for split in ("train", "val")]
    try:
        for script in scripts.values():
            exec(compile(script, "<docs/custom_datasets.md>", "exec"), {"__name__": "doc_example"})
        expected = {
            "panoptic": ("knet_panoptic", [COCOPanopticEvaluator, COCOEvaluator]),
            "instance": ("knet_instance", [COCOEvaluator]),
            "semantic": ("knet_semantic", [SemSegEvaluator]),
        }
        for task, (mapper, evaluators) in expected.items():
            c = cfg.clone()
            c.INPUT.DATASET_MAPPER_NAME = mapper
            c.DATASETS.TRAIN = (f"my_{task}_train",)
            c.DATASETS.TEST = (f"my_{task}_val",)
            c.MODEL.KNET.NUM_CLASSES, c.MODEL.KNET.NUM_THING_CLASSES = 11, 6  # the synthetic dataset's
            # loads what detectron2 fills lazily, then finds nothing missing
            check_dataset_metadata(c, strict=True)
            assert len(DatasetCatalog.get(f"my_{task}_train")) == 2
            assert _types(build_evaluator(c, f"my_{task}_val")) == evaluators
    finally:
        for name in names:
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
