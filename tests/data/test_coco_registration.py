"""COCO panoptic registration with K-Net's metadata, on a miniature COCO tree (2 images a split).

The expected contiguous ids are written out by hand from the COCO panoptic category list (80 things with
ids 1..90, then 53 stuff with ids 92..200), not recomputed from detectron2's ``COCO_CATEGORIES``.
"""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator
from detectron2.modeling import build_model
from panopticapi.utils import id2rgb
from PIL import Image
from support.models import tiny_knet_cfg

import knet  # noqa: F401  (registers the datasets)
from knet.data.dataset_mappers import build_mapper
from knet.data.datasets import register_knet_coco_panoptic
from knet.evaluation import build_evaluator

PREFIX = "knet_test_coco_2017"
H, W = 24, 32
# dataset category id -> contiguous id (K-Net: things 0..79, then stuff 80..132)
KNOWN_IDS = {1: 0, 2: 1, 3: 2, 90: 79, 92: 80, 184: 116, 187: 119, 199: 131, 200: 132}
# per image: (segment id, category id, iscrowd, (y0, y1, x0, x1)); pixels outside every box are void
SEGMENTS = {
    1: [(1, 1, 0, (2, 10, 2, 10)),             # person
        (70000, 3, 0, (2, 10, 14, 22)),        # car (id > 65535: uses the blue channel)
        (301, 1, 1, (11, 15, 2, 8)),           # crowd person: ignored by the mapper
        (5, 184, 0, (16, 24, 0, 32)),          # tree-merged
        (6, 187, 0, (0, 2, 0, 32))],           # sky-other-merged
    2: [(11, 90, 0, (4, 12, 4, 12)),           # toothbrush
        (12, 200, 0, (14, 24, 0, 30))],        # rug-merged
}
EXPECTED = {  # image id -> [(contiguous id, isthing, iscrowd)]
    1: [(0, True, 0), (2, True, 0), (0, True, 1), (116, False, 0), (119, False, 0)],
    2: [(79, True, 0), (132, False, 0)],
}


def _write_split(root, split):
    """Write <root>/coco/{split}2017, panoptic_{split}2017 and the two annotation files."""
    coco = os.path.join(root, "coco")
    img_dir, pan_dir = os.path.join(coco, f"{split}2017"), os.path.join(coco, f"panoptic_{split}2017")
    ann_dir = os.path.join(coco, "annotations")
    for d in (img_dir, pan_dir, ann_dir):
        os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    images, pan_anns, inst_anns = [], [], []
    for image_id, segs in SEGMENTS.items():
        stem = f"{image_id:012d}"
        image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(img_dir, stem + ".jpg"))
        pan = np.zeros((H, W), dtype=np.int64)
        infos = []
        for seg_id, cat, crowd, (y0, y1, x0, x1) in segs:
            pan[y0:y1, x0:x1] = seg_id
            bbox = [x0, y0, x1 - x0, y1 - y0]
            area = (y1 - y0) * (x1 - x0)
            infos.append(dict(id=seg_id, category_id=cat, iscrowd=crowd, bbox=bbox, area=area))
            if cat <= 90 and not crowd:
                poly = [x0, y0, x1, y0, x1, y1, x0, y1]
                inst_anns.append(dict(id=len(inst_anns) + 1, image_id=image_id, category_id=cat, iscrowd=0,
                                      bbox=bbox, area=area, segmentation=[poly]))
        Image.fromarray(id2rgb(pan)).save(os.path.join(pan_dir, stem + ".png"))
        images.append(dict(id=image_id, file_name=stem + ".jpg", height=H, width=W))
        pan_anns.append(dict(image_id=image_id, file_name=stem + ".png", segments_info=infos))
    cats = [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in COCO_CATEGORIES]
    with open(os.path.join(ann_dir, f"panoptic_{split}2017.json"), "w") as f:
        json.dump(dict(images=images, annotations=pan_anns, categories=cats), f)
    with open(os.path.join(ann_dir, f"instances_{split}2017.json"), "w") as f:
        json.dump(dict(images=images, annotations=inst_anns, categories=[c for c in cats if c["isthing"]]), f)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_root"))
    for split in ("train", "val"):
        _write_split(root, split)
    registered = register_knet_coco_panoptic(root, prefix=PREFIX)
    assert registered == [f"{PREFIX}_train_panoptic", f"{PREFIX}_val_panoptic"]
    return {"root": root, "train": registered[0], "val": registered[1]}


def test_import_registers_default_names_under_detectron2_datasets():
    root = os.path.abspath(os.getenv("DETECTRON2_DATASETS", "datasets"))
    for split in ("train", "val"):
        name = f"knet_coco_2017_{split}_panoptic"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.panoptic_json == os.path.join(root, f"coco/annotations/panoptic_{split}2017.json")
        assert meta.panoptic_root == os.path.join(root, f"coco/panoptic_{split}2017")
        assert meta.image_root == os.path.join(root, f"coco/{split}2017")
        assert meta.json_file == os.path.join(root, f"coco/annotations/instances_{split}2017.json")
        assert len(meta.thing_classes) == 80 and len(meta.stuff_classes) == 133
        assert meta.get("sem_seg_root", None) is None  # no semantic maps are provided


def test_metadata_follows_knet_convention(names):
    meta = MetadataCatalog.get(names["val"])
    assert len(meta.thing_classes) == 80 and len(meta.thing_colors) == 80
    assert len(meta.stuff_classes) == 133 and len(meta.stuff_colors) == 133
    assert meta.stuff_classes[:80] == meta.thing_classes  # things first
    assert meta.stuff_colors[:80] == meta.thing_colors
    assert (meta.thing_classes[0], meta.thing_classes[79]) == ("person", "toothbrush")
    assert (meta.stuff_classes[80], meta.stuff_classes[116], meta.stuff_classes[132]) == (
        "banner", "tree-merged", "rug-merged")
    things, allc = meta.thing_dataset_id_to_contiguous_id, meta.stuff_dataset_id_to_contiguous_id
    assert len(things) == 80 and sorted(things.values()) == list(range(80))
    assert len(allc) == 133 and sorted(allc.values()) == list(range(133))
    assert all(allc[k] == v for k, v in things.items())
    assert 92 not in things and 184 not in things
    for dataset_id, contiguous in KNOWN_IDS.items():
        assert allc[dataset_id] == contiguous
        if dataset_id <= 90:
            assert things[dataset_id] == contiguous
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    root = os.path.join(names["root"], "coco")
    assert meta.json_file == os.path.join(root, "annotations", "instances_val2017.json")
    assert meta.panoptic_root == os.path.join(root, "panoptic_val2017")


def test_records_have_contiguous_ids_and_isthing(names):
    for split in ("train", "val"):
        recs = DatasetCatalog.get(names[split])
        assert [r["image_id"] for r in recs] == [1, 2]
        for r in recs:
            assert r["file_name"].endswith(f"{split}2017/{r['image_id']:012d}.jpg")
            assert os.path.isfile(r["file_name"])
            assert os.path.isfile(r["pan_seg_file_name"])
            got = [(s["category_id"], s["isthing"], s["iscrowd"]) for s in r["segments_info"]]
            assert got == EXPECTED[r["image_id"]]
            assert [s["id"] for s in r["segments_info"]] == [s[0] for s in SEGMENTS[r["image_id"]]]


def test_panoptic_mapper_yields_every_non_crowd_segment(names):
    cfg = tiny_knet_cfg(num_classes=133, num_thing_classes=80)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptic"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)  # the images' short side: identity resize
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATASETS.TRAIN = (names["train"],)
    mapper = build_mapper(cfg, True)  # also runs the mapper's metadata checks on this dataset
    for rec in DatasetCatalog.get(names["train"]):
        out = mapper(rec)
        segs = [s for s in SEGMENTS[rec["image_id"]] if not s[2]]
        expected_classes = [c for c, _, crowd in EXPECTED[rec["image_id"]] if not crowd]
        inst = out["instances"]
        assert inst.gt_classes.tolist() == expected_classes
        assert inst.gt_masks.shape == (len(segs), H, W)
        sem = np.full((H, W), 255)
        for mask, (_, _, _, (y0, y1, x0, x1)), cls in zip(inst.gt_masks.numpy(), segs, expected_classes):
            box = np.zeros((H, W), dtype=bool)
            box[y0:y1, x0:x1] = True
            assert np.array_equal(mask, box)
            sem[box] = cls
        assert np.array_equal(out["sem_seg"].numpy(), sem)  # void and crowd pixels -> 255


def test_knet_metadata_check_on_coco_panoptic(names):
    cfg = tiny_knet_cfg(num_classes=133, num_thing_classes=80, num_stages=1)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["train"],), (names["val"],)
    model = build_model(cfg)
    assert model.kernel_head.num_thing_classes == 80
    cfg = tiny_knet_cfg(num_classes=80, num_thing_classes=80, num_stages=1)
    cfg.DATASETS.TEST = (names["val"],)
    with pytest.raises(ValueError, match=rf"MODEL\.KNET\.NUM_CLASSES = 80.*'{names['val']}'.* to 133"):
        build_model(cfg)
    cfg = tiny_knet_cfg(num_classes=133, num_thing_classes=133, num_stages=1)
    cfg.DATASETS.TRAIN = (names["train"],)
    msg = rf"MODEL\.KNET\.NUM_THING_CLASSES = 133.*'{names['train']}'.* to 80"
    with pytest.raises(ValueError, match=msg):
        build_model(cfg)


def test_evaluators_for_coco_panoptic(names, tmp_path):
    """PQ plus mask AP (json_file); no mIoU since the registration provides no semantic maps."""
    cfg = tiny_knet_cfg(num_classes=133, num_thing_classes=80, instance_on=True, semantic_on=True)
    cfg.OUTPUT_DIR = str(tmp_path)
    ev = build_evaluator(cfg, names["val"], output_folder=str(tmp_path / "eval"))
    assert [type(e) for e in ev._evaluators] == [COCOPanopticEvaluator, COCOEvaluator]
    assert len(ev._evaluators[1]._coco_api.getAnnIds()) == 3  # the instances json of the tiny tree


def test_builtin_coco_instance_metadata_fits_knet():
    """Instance K-Net uses detectron2's own coco_2017_{train,val}: 80 things, same order as ours."""
    ours = MetadataCatalog.get("knet_coco_2017_val_panoptic")
    for name in ("coco_2017_train", "coco_2017_val"):
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ours.thing_classes
        assert meta.thing_dataset_id_to_contiguous_id == ours.thing_dataset_id_to_contiguous_id
        split = name.split("_")[-1]
        assert meta.evaluator_type == "coco" and meta.json_file.endswith(f"instances_{split}2017.json")


def test_missing_tree_and_bad_prefix_are_reported(tmp_path):
    name = register_knet_coco_panoptic(str(tmp_path), prefix="knet_test_coco_missing")[1]
    with pytest.raises(FileNotFoundError, match=r"panoptic_val2017\.json.*DETECTRON2_DATASETS"):
        DatasetCatalog.get(name)
    with pytest.raises(ValueError, match="knet_"):
        register_knet_coco_panoptic(str(tmp_path), prefix="coco_mine")
