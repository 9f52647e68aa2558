"""The synthetic dataset: determinism, format consistency, registration, atomic (re)generation."""
import json
import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

import knet  # noqa: F401  (registers the datasets)
from knet.data.datasets import register_synthetic, synthetic
from knet.data.datasets.synthetic import (
    MARKER_NAME,
    STUFF_CLASSES,
    THING_CLASSES,
    check_synthetic_dataset,
    ensure_synthetic_dataset,
    render_synthetic_image,
    synthetic_paths,
)

TINY = dict(num_train=6, num_val=3, image_size=64)


def _tree(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = f.read()
    return files


def _rgb2id(path):
    a = np.asarray(Image.open(path)).astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 256 * 256 * a[..., 2]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "knet_synthetic")
    return ensure_synthetic_dataset(root, seed=3, **TINY)


def _load(root, split, kind):
    with open(synthetic_paths(root, split)[f"{kind}_json"]) as f:
        return json.load(f)


def test_same_seed_byte_identical_other_seed_different(tmp_path, tiny_root):
    again = ensure_synthetic_dataset(str(tmp_path / "a" / "knet_synthetic"), seed=3, **TINY)
    ref, same = _tree(tiny_root), _tree(again)
    assert sorted(ref) == sorted(same)
    assert len(ref) == 3 * (6 + 3) + 4 + 1
    assert all(ref[k] == same[k] for k in ref), [k for k in ref if ref[k] != same[k]]

    other = _tree(ensure_synthetic_dataset(str(tmp_path / "b" / "knet_synthetic"), seed=4, **TINY))
    assert sorted(other) == sorted(ref)
    images = [k for k in ref if k.endswith(".jpg")]
    assert len(images) == 9
    assert all(other[k] != ref[k] for k in images)
    pan_json = os.path.join("annotations", "panoptic_train.json")
    assert other[pan_json] != ref[pan_json]


def test_the_bytes_do_not_depend_on_the_number_of_worker_processes(tmp_path, tiny_root):
    from knet.data.datasets.synthetic.generate import generate_synthetic_dataset

    # tiny_root was generated with the default workers (one per core); these with 1 and with 3 processes
    one = generate_synthetic_dataset(str(tmp_path / "one"), seed=3, workers=1, **TINY)
    three = generate_synthetic_dataset(str(tmp_path / "three"), seed=3, workers=3, **TINY)
    assert one == three
    ref = _tree(tiny_root)
    assert _tree(str(tmp_path / "one")) == _tree(str(tmp_path / "three")) == ref
    assert len(ref) == 3 * (6 + 3) + 4 + 1


def test_render_is_pure_and_sized():
    a = render_synthetic_image(7, "train", 5, (48, 80))
    b = render_synthetic_image(7, "train", 5, (48, 80))
    assert a[0].shape == (48, 80, 3) and a[0].dtype == np.uint8 and a[1].shape == (48, 80)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    c = render_synthetic_image(7, "val", 5, (48, 80))
    assert not np.array_equal(a[0], c[0])
    # every listed segment is visible, ids are 0 (void) or 1..K
    img, seg, segments = render_synthetic_image(1, "train", 3, 128)
    assert set(np.unique(seg).tolist()) - {0} == set(range(1, len(segments) + 1))
    # stuff is textured (not flat): the pixel spread inside each stuff region is large
    for k, s in enumerate(segments, start=1):
        if not s["isthing"] and (seg == k).sum() > 200:
            assert img[seg == k].std(axis=0).max() > 4.0


def test_training_scenes_are_denser_than_validation_ones(monkeypatch):
    from knet.data.datasets.synthetic import render

    def thing_counts(split):
        return [sum(s["isthing"] for s in render_synthetic_image(0, split, i, 96)[2]) for i in range(1, 30)]

    train, val = thing_counts("train"), thing_counts("val")
    # visible things: a drawn thing may be hidden by later ones, so a count can fall below the range's low end
    assert max(train) <= 10 and max(val) <= 8
    assert np.mean(train) > 1.4 * np.mean(val)
    assert not any(s["isthing"] for s in render_synthetic_image(0, "train", 10, 96)[2])  # one image in ten
    # the validation images do not depend on the training density (they stay those of generator version 3)
    val_image = render_synthetic_image(0, "val", 3, 96)[0]
    train_image = render_synthetic_image(0, "train", 3, 96)[0]
    monkeypatch.setitem(render.THINGS_PER_IMAGE, "train", (1, 8))
    assert np.array_equal(render_synthetic_image(0, "val", 3, 96)[0], val_image)
    assert not np.array_equal(render_synthetic_image(0, "train", 3, 96)[0], train_image)


def test_pq_of_ground_truth_against_itself_is_100(tiny_root):
    from panopticapi.evaluation import pq_compute

    for split in ("train", "val"):
        p = synthetic_paths(tiny_root, split)
        res = pq_compute(p["panoptic_json"], p["panoptic_json"], p["panoptic_root"], p["panoptic_root"])
        assert res["All"]["pq"] == pytest.approx(1.0)
        assert res["Things"]["n"] >= 1 and res["Stuff"]["n"] >= 1
        # areas and boxes of the JSON are those of the PNG
        for ann in _load(tiny_root, split, "panoptic")["annotations"]:
            ids = _rgb2id(os.path.join(p["panoptic_root"], ann["file_name"]))
            listed = {s["id"] for s in ann["segments_info"]}
            assert set(np.unique(ids).tolist()) - {0} == listed
            for s in ann["segments_info"]:
                m = ids == s["id"]
                ys, xs = np.nonzero(m)
                assert s["area"] == int(m.sum())
                assert s["bbox"] == [int(xs.min()), int(ys.min()), int(xs.ptp() + 1), int(ys.ptp() + 1)]
                assert s["iscrowd"] == 0


def test_instance_json_matches_panoptic_things(tiny_root):
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        p = synthetic_paths(tiny_root, split)
        coco = COCO(p["instances_json"])
        assert sorted(coco.getCatIds()) == list(range(1, len(THING_CLASSES) + 1))
        pan = _load(tiny_root, split, "panoptic")
        n_things = 0
        for ann in pan["annotations"]:
            ids = _rgb2id(os.path.join(p["panoptic_root"], ann["file_name"]))
            things = [s for s in ann["segments_info"] if s["category_id"] <= len(THING_CLASSES)]
            inst = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
            assert len(inst) == len(things)
            by_key = {}
            for a in inst:
                m = coco.annToMask(a).astype(bool)
                assert a["iscrowd"] == 0 and a["area"] == int(m.sum()) and m.any()
                by_key[(a["category_id"], m.tobytes())] = a
            for s in things:
                assert (s["category_id"], (ids == s["id"]).tobytes()) in by_key
            n_things += len(things)
        assert n_things > 0


def test_semantic_png_agrees_with_panoptic_png(tiny_root):
    for split in ("train", "val"):
        p = synthetic_paths(tiny_root, split)
        for ann in _load(tiny_root, split, "panoptic")["annotations"]:
            ids = _rgb2id(os.path.join(p["panoptic_root"], ann["file_name"]))
            sem = np.asarray(Image.open(os.path.join(p["sem_seg_root"], ann["file_name"])))
            assert sem.dtype == np.uint8 and sem.shape == ids.shape
            expected = np.full(ids.shape, 255, np.uint8)
            for s in ann["segments_info"]:
                expected[ids == s["id"]] = s["category_id"] - 1  # contiguous = dataset id - 1, things first
            assert np.array_equal(sem, expected)
            assert set(np.unique(sem).tolist()) <= set(range(len(THING_CLASSES) + len(STUFF_CLASSES))) | {255}


def test_images_without_things_and_thing_class_coverage(tiny_root):
    cats_seen, empty = set(), 0
    for split in ("train", "val"):
        for ann in _load(tiny_root, split, "panoptic")["annotations"]:
            things = [s for s in ann["segments_info"] if s["category_id"] <= len(THING_CLASSES)]
            empty += not things
            cats_seen |= {s["category_id"] for s in things}
            # stuff everywhere
            assert any(s["category_id"] > len(THING_CLASSES) for s in ann["segments_info"])
    assert empty >= 2  # image index 0 of each split
    assert len(cats_seen) >= 5


def test_registered_metadata_is_consistent_with_files(tmp_path, tiny_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    # registration touches no disk
    missing = str(tmp_path / "never" / "knet_synthetic")
    register_synthetic.register_knet_synthetic(missing, prefix="knet_synthetic_nodisk")
    assert not os.path.exists(os.path.dirname(missing))

    names = register_synthetic.register_knet_synthetic(tiny_root, prefix="knet_synthetic_tiny")
    assert len(names) == 6
    cats = _load(tiny_root, "train", "panoptic")["categories"]
    thing_names = [c["name"] for c in cats if c["isthing"]]
    all_names = [c["name"] for c in cats]

    for split, n in (("train", 6), ("val", 3)):
        pm = MetadataCatalog.get(f"knet_synthetic_tiny_panoptic_{split}")
        assert pm.evaluator_type == "coco_panoptic_seg" and pm.ignore_label == 255
        assert pm.thing_classes == thing_names == THING_CLASSES and pm.stuff_classes == all_names
        assert len(pm.thing_colors) == len(pm.thing_classes) and len(pm.stuff_colors) == len(pm.stuff_classes)
        thing_map = {c["id"]: i for i, c in enumerate(cats) if c["isthing"]}
        assert pm.thing_dataset_id_to_contiguous_id == thing_map
        assert pm.stuff_dataset_id_to_contiguous_id == {c["id"]: i for i, c in enumerate(cats)}
        for key in ("panoptic_root", "image_root", "sem_seg_root"):
            assert os.path.isdir(getattr(pm, key)), key
        for key in ("panoptic_json", "json_file"):
            assert os.path.isfile(getattr(pm, key)), key
        recs = DatasetCatalog.get(f"knet_synthetic_tiny_panoptic_{split}")
        assert len(recs) == n
        for r in recs:
            for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
                assert os.path.isfile(r[key]), r[key]
            sem = np.asarray(Image.open(r["sem_seg_file_name"]))
            ids = _rgb2id(r["pan_seg_file_name"])
            for s in r["segments_info"]:  # contiguous ids, isthing flag, class names agree with the files
                assert s["isthing"] == (s["category_id"] < len(pm.thing_classes))
                assert np.all(sem[ids == s["id"]] == s["category_id"])

        im = MetadataCatalog.get(f"knet_synthetic_tiny_instance_{split}")
        assert im.evaluator_type == "coco" and im.thing_classes == THING_CLASSES
        irecs = DatasetCatalog.get(f"knet_synthetic_tiny_instance_{split}")
        assert len(irecs) == n and {r["image_id"] for r in irecs} == {r["image_id"] for r in recs}
        for r in irecs:
            assert (r["height"], r["width"]) == (64, 64)
            assert all(0 <= a["category_id"] < len(THING_CLASSES) for a in r["annotations"])

        sm = MetadataCatalog.get(f"knet_synthetic_tiny_sem_seg_{split}")
        assert sm.evaluator_type == "sem_seg" and sm.ignore_label == 255 and sm.stuff_classes == all_names
        srecs = DatasetCatalog.get(f"knet_synthetic_tiny_sem_seg_{split}")
        assert sorted(r["sem_seg_file_name"] for r in srecs) == sorted(r["sem_seg_file_name"] for r in recs)


def test_evaluators_accept_the_metadata(tiny_root):
    """detectron2's evaluators build from the registered metadata and score the ground truth perfectly."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import SemSegEvaluator

    register_synthetic.register_knet_synthetic(tiny_root, prefix="knet_synthetic_tiny")
    name = "knet_synthetic_tiny_panoptic_val"
    ev = SemSegEvaluator(name, distributed=False)
    ev.reset()
    for r in DatasetCatalog.get(name):
        sem = torch.from_numpy(np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64))
        logits = torch.nn.functional.one_hot(sem.clamp(max=10), 11).permute(2, 0, 1).float()
        ev.process([{"file_name": r["file_name"]}], [{"sem_seg": logits}])
    assert ev.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_corrupt_or_half_written_dataset_is_regenerated(tmp_path, caplog):
    root = ensure_synthetic_dataset(
        str(tmp_path / "knet_synthetic"), seed=5, num_train=3, num_val=1, image_size=48
    )
    original = _tree(root)
    assert check_synthetic_dataset(root) == (True, "complete")
    png = os.path.join(root, "panoptic", "train", "000002.png")

    def corrupt_and_check(damage, expect_reason, **params):
        damage()
        ok, reason = check_synthetic_dataset(root)
        assert not ok and expect_reason in reason, reason
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="knet.data.datasets.synthetic"):
            # parameters not given are taken from the (still readable) marker of the damaged folder
            assert ensure_synthetic_dataset(root, **params) == root
        assert "not valid" in caplog.text and "regenerating" in caplog.text
        assert _tree(root) == original  # same parameters (from the folder's marker) -> same bytes

    def truncate():
        with open(png, "r+b") as f:
            f.truncate(10)

    def flip_byte():
        with open(png, "r+b") as f:
            f.seek(40)
            b = f.read(1)
            f.seek(40)
            f.write(bytes([b[0] ^ 0xFF]))

    def drop_marker():  # an interrupted generation: files, no marker
        os.remove(os.path.join(root, MARKER_NAME))

    def bad_marker():
        with open(os.path.join(root, MARKER_NAME), "w") as f:
            f.write('{"version": 1, "files": {')

    def old_version():
        path = os.path.join(root, MARKER_NAME)
        with open(path) as f:
            marker = json.load(f)
        marker["version"] = -1
        with open(path, "w") as f:
            json.dump(marker, f)

    def delete_file():
        os.remove(os.path.join(root, "images", "val", "000001.jpg"))

    corrupt_and_check(truncate, "bytes instead of")
    corrupt_and_check(flip_byte, "sha256")
    params = dict(seed=5, num_train=3, num_val=1, image_size=48)
    corrupt_and_check(drop_marker, "no completion marker", **params)
    corrupt_and_check(bad_marker, "unreadable", **params)
    corrupt_and_check(old_version, "version")
    corrupt_and_check(delete_file, "missing")

    # other parameters than asked for -> regenerated with the new ones
    ensure_synthetic_dataset(root, seed=5, num_train=2, num_val=1, image_size=48)
    assert check_synthetic_dataset(root, num_train=2)[0] and not check_synthetic_dataset(root, num_train=3)[0]

    # a leftover temporary folder of a killed generation is removed, never used
    leftover = tmp_path / ".knet_synthetic.tmp-123-deadbeef"
    (leftover / "images").mkdir(parents=True)
    ensure_synthetic_dataset(root, force=True)
    assert not leftover.exists()
    assert not [e for e in os.listdir(tmp_path) if ".tmp-" in e or ".old-" in e]


def test_loader_generates_lazily(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog

    # the defaults ensure_synthetic_dataset generates with when nothing is asked for
    monkeypatch.setattr(synthetic.layout, "DEFAULT_NUM_TRAIN", 2)
    monkeypatch.setattr(synthetic.layout, "DEFAULT_NUM_VAL", 1)
    monkeypatch.setattr(synthetic.layout, "DEFAULT_IMAGE_SIZE", 32)
    root = str(tmp_path / "lazy" / "knet_synthetic")
    register_synthetic.register_knet_synthetic(root, prefix="knet_synthetic_lazy")
    assert not os.path.exists(root)
    recs = DatasetCatalog.get("knet_synthetic_lazy_sem_seg_val")
    assert len(recs) == 1 and check_synthetic_dataset(root, num_train=2, num_val=1, image_size=32)[0]
    assert len(DatasetCatalog.get("knet_synthetic_lazy_instance_train")) == 2


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="at least 16x16"):
        render_synthetic_image(0, "train", 0, 8)
    with pytest.raises(ValueError, match="num_val"):
        ensure_synthetic_dataset(str(tmp_path / "x"), num_train=2, num_val=0, image_size=32)
    with pytest.raises(ValueError, match="knet_"):
        register_synthetic.register_knet_synthetic(str(tmp_path), prefix="synthetic")


@pytest.mark.slow
def test_generation_speed(tmp_path):
    start = time.perf_counter()
    ensure_synthetic_dataset(str(tmp_path / "knet_synthetic"), num_train=270, num_val=30, image_size=256)
    assert time.perf_counter() - start < 30.0
