"""Bad data files (issue 16): a truncated JPEG, a non-image file, a panoptic PNG whose ids disagree with its
JSON and an image of the wrong size.

* training skips them (one warning naming the file), counts them with the metrics, resumes bit-exactly across
  a skipped sample, and stops with an error listing the files when DATALOADER.MAX_SKIPPED_FRACTION is passed;
* evaluation names them and the metrics say how many images they cover;
* tools/check_dataset.py reports every one of them and exits non-zero.

(A full disk while saving a checkpoint: tests/checkpoint/test_save_failures.py.)
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase, default_argument_parser
from support.models import register_tiny_synthetic
from support.scripts import REPO, import_train_net
from PIL import Image

from knet.data.check import DataProblem, check_dataset_main, check_record, dataset_spec
from knet.data.robust import RobustMapper, is_skipped
from knet.engine import Trainer
from knet.engine.train_loader import BadDataHook, BadDataLimitError

CONFIG = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")

# file (relative to the dataset root) -> a piece of the reason every report must give
TRAIN_DEFECTS = {
    "images/train/000002.jpg": "image file is truncated",
    "images/train/000003.jpg": "cannot identify image file",
    "panoptic/train/000004.png": "segments_info (JSON) does not list",
    "images/train/000005.jpg": "the image is 48x64 (width x height) but its panoptic PNG",
}
VAL_DEFECTS = {
    "images/val/000002.jpg": "image file is truncated",
    "panoptic/val/000003.png": "cannot decode the panoptic PNG",
}


def _break_files(root):
    """Put the four defects into the train split and two into the val split of a synthetic dataset copy."""
    for split in ("train", "val"):
        jpg = os.path.join(root, "images", split, "000002.jpg")
        data = open(jpg, "rb").read()
        open(jpg, "wb").write(data[: len(data) // 2])  # truncated JPEG
    open(os.path.join(root, "images/train/000003.jpg"), "w").write("not an image\n")  # a text file
    open(os.path.join(root, "panoptic/val/000003.png"), "w").write("not a PNG\n")
    pan_json = os.path.join(root, "annotations/panoptic_train.json")
    pan = json.load(open(pan_json))
    ann = next(a for a in pan["annotations"] if a["file_name"] == "000004.png")
    ann["segments_info"][0]["id"] = 4242424  # the PNG keeps the old id: ids disagree
    json.dump(pan, open(pan_json, "w"))
    img = os.path.join(root, "images/train/000005.jpg")
    Image.open(img).convert("RGB").resize((48, 64)).save(img)  # wrong size (the annotations are 64x64)


def _register_copy(src_prefix, root, prefix):
    """Register ``{prefix}_panoptic_{train,val}`` over the (broken) copy at ``root``, as a user would."""
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    from knet.data.datasets.synthetic import synthetic_paths

    for split in ("train", "val"):
        p = synthetic_paths(root, split)
        meta = {k: v for k, v in MetadataCatalog.get(f"{src_prefix}_panoptic_{split}").as_dict().items()
                if k != "name"}
        meta.update(image_root=p["image_root"], panoptic_root=p["panoptic_root"], dataset_root=root,
                    panoptic_json=p["panoptic_json"], json_file=p["instances_json"],
                    sem_seg_root=p["sem_seg_root"])

        def load(p=p, meta=meta):
            records = load_coco_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"], meta)
            for r in records:
                stem = os.path.basename(r["pan_seg_file_name"])
                r["sem_seg_file_name"] = os.path.join(p["sem_seg_root"], stem)
            return records

        DatasetCatalog.register(f"{prefix}_panoptic_{split}", load)
        MetadataCatalog.get(f"{prefix}_panoptic_{split}").set(**meta)


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    """(prefix of the clean datasets, prefix of the broken ones, root of the broken copy)."""
    folder = tmp_path_factory.mktemp("bad_data")
    clean = register_tiny_synthetic(folder, "knet_test_bad_clean", num_train=8, num_val=4)
    root = str(folder / "broken")
    shutil.copytree(str(folder / "knet_synthetic"), root)
    _break_files(root)
    _register_copy(clean, root, clean.replace("clean", "broken"))
    return clean, clean.replace("clean", "broken"), root


def _args(out_dir, prefix, *opts, resume=False, eval_only=False):
    argv = ["--config-file", CONFIG] + (["--resume"] if resume else [])
    argv += ["--eval-only"] if eval_only else []
    argv += ["OUTPUT_DIR", str(out_dir), "DATASETS.TRAIN", f"('{prefix}_panoptic_train',)",
             "DATASETS.TEST", "()",
             "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(3,)",
             "SOLVER.WARMUP_ITERS", "1", "SEED", "3", *opts]
    return default_argument_parser().parse_args(argv)


def _metrics(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.json")) if line.strip()]


def _abs(root, defects):
    return {os.path.join(root, k): v for k, v in defects.items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, train_net, bad_dataset):
    """An uninterrupted 4-iteration run over the broken training set (bad files tolerated)."""
    out = tmp_path_factory.mktemp("full_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_net.main(_args(out, bad_dataset[1], "DATALOADER.MAX_SKIPPED_FRACTION", "1.0"))
    finally:
        torch.set_num_threads(threads)
    return out


# --------------------------------------------------------------------------------------------- per record
def test_check_record_names_each_defect(bad_dataset):
    _, broken, root = bad_dataset
    records = DatasetCatalog.get(f"{broken}_panoptic_train")
    spec = dataset_spec(f"{broken}_panoptic_train")
    found = {}
    for r in records:
        for p in check_record(r, spec):
            found.setdefault(p.file_name, []).append(p.reason)
    expected = _abs(root, TRAIN_DEFECTS)
    assert set(found) == set(expected), found
    for f, piece in expected.items():
        assert any(piece in reason for reason in found[f]), (f, found[f])
    # the panoptic defect is reported both ways (PNG id not in the JSON, JSON id not in the PNG)
    assert len(found[os.path.join(root, "panoptic/train/000004.png")]) == 2


def test_check_record_instance_masks_and_categories(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    rec = {"file_name": str(img), "height": 20, "width": 30, "annotations": [
        {"category_id": 0, "segmentation": [[0, 0, 10, 0, 10, 10]]},
        {"category_id": 1, "segmentation": [[0, 0, 40, 0, 40, 10]]},  # x = 40 > width 30
        {"category_id": 7, "segmentation": {"size": [20, 30], "counts": "PPYo0"}},  # unknown class
        {"category_id": 0, "segmentation": {"size": [10, 30], "counts": "abc"}},  # RLE of another size
    ]}
    from knet.data.check import DatasetSpec

    problems = check_record(rec, DatasetSpec(instance_classes=frozenset({0, 1})))
    reasons = [p.reason for p in problems]
    assert len(problems) == 3, reasons
    assert "annotation 1: a polygon reaches outside the 30x20 image" in reasons[0]
    assert "annotation 2: category id 7" in reasons[1]
    assert "annotation 3: its RLE mask has size" in reasons[2]
    rec2 = dict(rec, height=21, annotations=[])
    assert check_record(rec2) == [
        DataProblem(str(img), "the image is 30x20 (width x height) but its record says 30x21 "
                              "(width x height)")
    ]


def test_robust_mapper_skips_bad_files_and_reraises_bugs(bad_dataset):
    _, broken, root = bad_dataset
    records = {os.path.basename(r["file_name"]): r for r in DatasetCatalog.get(f"{broken}_panoptic_train")}

    def mapper(record):  # reads the image like the real mappers, then fails on 000006 for a non-data reason
        from detectron2.data import detection_utils as utils

        image = utils.read_image(record["file_name"], "RGB")
        if record["file_name"].endswith("000006.jpg"):
            raise KeyError("a bug in the mapper")
        return {"image": image}

    robust = RobustMapper(mapper, is_train=True)
    assert robust(records["000002.jpg"]) is None
    data, skip = robust.map_or_skip(records["000003.jpg"])
    assert data is None and skip.file_name == os.path.join(root, "images/train/000003.jpg")
    assert robust(records["000007.jpg"])["image"].shape == (64, 64, 3)
    with pytest.raises(KeyError, match="a bug in the mapper"):  # the files are fine: not skipped
        robust(records["000006.jpg"])
    placeholder = RobustMapper(mapper, is_train=False)(records["000002.jpg"])
    assert is_skipped(placeholder) and placeholder["image_id"] == 2


# --------------------------------------------------------------------------------------------- training
def test_training_skips_names_and_counts_bad_files(full_run, bad_dataset):
    _, broken, root = bad_dataset
    out = full_run
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    state = ckpt["trainer"]["hooks"]["BadDataHook"]
    expected = _abs(root, TRAIN_DEFECTS)
    assert set(state["bad_files"]) == set(expected)  # 4 iterations x 2 images: one epoch, every bad file
    for f, piece in expected.items():
        assert piece in state["bad_files"][f], (f, state["bad_files"][f])
    metrics = _metrics(out)
    last = metrics[-1]
    assert last["data/bad_files"] == 4 and last["data/skipped_samples"] == state["num_skipped"] >= 4
    log = (out / "log.txt").read_text()
    for f in expected:
        assert f"Bad data file {f}: " in log


class _Crash(HookBase):
    def after_step(self):
        if self.trainer.iter == 2:
            raise KeyboardInterrupt("simulated crash after iteration 2")


def test_resume_across_skipped_sample_is_bit_exact(tmp_path, train_net, bad_dataset, full_run, monkeypatch,
                                                   one_thread):
    _, broken, _ = bad_dataset
    full, resumed = full_run, tmp_path / "resumed"
    opts = ("DATALOADER.MAX_SKIPPED_FRACTION", "1.0")

    def skipped(path):
        return torch.load(path, map_location="cpu", weights_only=True)["trainer"]["hooks"]["BadDataHook"]

    # samples are skipped before the checkpoint of iteration 1 and after it (so the resumed part has some)
    at_ckpt, at_end = skipped(full / "model_0000001.pth"), skipped(full / "model_final.pth")
    assert 0 < at_ckpt["num_skipped"] < at_end["num_skipped"], (at_ckpt, at_end)

    original = Trainer.build_hooks
    monkeypatch.setattr(Trainer, "build_hooks", lambda self: original(self) + [_Crash()])
    with pytest.raises(KeyboardInterrupt):
        train_net.main(_args(resumed, broken, *opts))
    monkeypatch.setattr(Trainer, "build_hooks", original)
    assert (resumed / "last_checkpoint").read_text() == "model_0000001.pth"
    train_net.main(_args(resumed, broken, *opts, resume=True))

    a = torch.load(full / "model_final.pth", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "model_final.pth", map_location="cpu", weights_only=True)
    mismatched = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not mismatched, mismatched[:5]
    assert a["trainer"]["hooks"]["BadDataHook"] == b["trainer"]["hooks"]["BadDataHook"]


def test_limit_stops_training_listing_the_files(tmp_path, train_net, bad_dataset, one_thread):
    _, broken, root = bad_dataset
    with pytest.raises(BadDataLimitError) as e:
        train_net.main(_args(tmp_path / "run", broken, "DATALOADER.MAX_SKIPPED_FRACTION", "0.2"))
    message = str(e.value)
    listed = [f for f in _abs(root, TRAIN_DEFECTS) if f in message]
    # 0.2 x (7 or 8) samples: stops at the step where a second bad file is met (one item may skip several)
    assert len(listed) >= 2 and f"Training stopped: {len(listed)} of the " in message, message
    assert "DATALOADER.MAX_SKIPPED_FRACTION = 0.2" in message and "tools/check_dataset.py" in message
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_bad_data_hook_same_decision_on_every_process(monkeypatch):
    """Two processes: each sees the other's skips (all_gather), so both stop at the same step."""
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage

    class Loader:
        dataset_size = 10

        def __init__(self, records):
            self.records = records

        def pop_skipped(self):
            out, self.records = self.records, []
            return out

    class FakeTrainer:
        def __init__(self, records):
            self.data_loader, self.iter, self.storage = Loader(records), 0, EventStorage(0)

    mine, theirs = [("/d/a.jpg", "truncated")], [("/d/b.jpg", "not an image")]
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda data: [data, theirs])
    hook = BadDataHook(0.15)  # 1.5 of 10 samples
    hook.trainer = FakeTrainer(mine)
    with pytest.raises(BadDataLimitError, match="2 of the 10 training samples"):
        hook.after_step()
    assert hook.state_dict() == {"num_skipped": 2,
                                 "bad_files": {"/d/a.jpg": "truncated", "/d/b.jpg": "not an image"}}
    assert hook.trainer.storage.latest()["data/bad_files"][0] == 2
    with pytest.raises(ValueError, match="DATALOADER.MAX_SKIPPED_FRACTION must be a number in"):
        BadDataHook(1.5)


# --------------------------------------------------------------------------------------------- evaluation
def test_evaluation_names_bad_files_and_counts_images(tmp_path, train_net, bad_dataset, one_thread):
    from knet.checkpoint.checkpointer import KNetCheckpointer
    from knet.engine import load_config

    _, broken, root = bad_dataset
    model = Trainer.build_model(load_config(CONFIG))
    KNetCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    out = tmp_path / "eval"
    args = _args(out, broken, "MODEL.WEIGHTS", str(tmp_path / "weights.pth"),
                 "DATASETS.TEST", f"('{broken}_panoptic_val',)", eval_only=True)
    res = train_net.main(args)
    assert set(res) == {"panoptic_seg", "segm", "sem_seg"}
    for task, metrics in res.items():
        assert metrics["num_images"] == 2.0 and metrics["num_skipped_images"] == 2.0, (task, metrics)
    assert 0.0 <= res["panoptic_seg"]["PQ"] <= 100.0 and 0.0 <= res["sem_seg"]["mIoU"] <= 100.0
    log = (out / "log.txt").read_text()
    assert "2 image(s) of 'knet_test_bad_broken" in log and "the metrics cover the other 2 of 4 images" in log
    for f, piece in _abs(root, VAL_DEFECTS).items():
        assert f"{f}: " in log and piece in log


def test_evaluators_restricted_to_the_images_read(tmp_path):
    """COCOEvaluator gets the ids of the images read, COCOPanopticEvaluator a ground-truth JSON of only
    them."""
    from types import SimpleNamespace

    from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator

    from knet.data.robust import SKIPPED_KEY
    from knet.evaluation.coverage import KNetDatasetEvaluators, SkipBadInputs

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": i} for i in (1, 2, 3)], "categories": [],
                              "annotations": [{"image_id": i, "segments_info": []} for i in (1, 2, 3)]}))
    seen = {}

    class Coco(COCOEvaluator):
        def __init__(self):
            pass

        def process(self, inputs, outputs):
            seen.setdefault("coco_inputs", []).extend(x["image_id"] for x in inputs)

        def evaluate(self, img_ids=None):
            seen["img_ids"] = img_ids
            return {"segm": {"AP": 1.0}}

    class Panoptic(COCOPanopticEvaluator):
        def __init__(self):
            self._metadata = SimpleNamespace(panoptic_json=str(gt))

        def process(self, inputs, outputs):
            pass

        def evaluate(self):
            seen["gt_images"] = [im["id"] for im in json.load(open(self._metadata.panoptic_json))["images"]]
            return {"panoptic_seg": {"PQ": 2.0}}

    ev = KNetDatasetEvaluators([Coco(), Panoptic()], "d")
    ev.reset()
    inputs = [{"image_id": 1, "image": 0}, {"image_id": 2, SKIPPED_KEY: ("/x/2.jpg", "truncated")},
              {"image_id": 3, "image": 0}]
    model = SkipBadInputs(lambda xs: [{"out": x["image_id"]} for x in xs])
    outputs = model(inputs)
    assert outputs == [{"out": 1}, {}, {"out": 3}]
    ev.process(inputs, outputs)
    res = ev.evaluate()
    assert seen == {"coco_inputs": [1, 3], "img_ids": [1, 3], "gt_images": [1, 3]}
    assert res == {"segm": {"AP": 1.0, "num_images": 2.0, "num_skipped_images": 1.0},
                   "panoptic_seg": {"PQ": 2.0, "num_images": 2.0, "num_skipped_images": 1.0}}
    assert ev._evaluators[1]._metadata.panoptic_json == str(gt)  # restored


# --------------------------------------------------------------------------------------------- check command
def _check_args(prefix, split_train="train", split_test="val"):
    return ["--config-file", CONFIG, "--num-workers", "0", "--no-progress",
            "DATASETS.TRAIN", f"('{prefix}_panoptic_{split_train}',)",
            "DATASETS.TEST", f"('{prefix}_panoptic_{split_test}',)"]


def test_check_command_reports_every_defect(bad_dataset, capsys):
    clean, broken, root = bad_dataset
    assert check_dataset_main(_check_args(clean)) == 0
    assert "OK: 12 records in 2 dataset(s), no problems found." in capsys.readouterr().out

    assert check_dataset_main(_check_args(broken)) == 1
    report = capsys.readouterr().out
    for f, piece in {**_abs(root, TRAIN_DEFECTS), **_abs(root, VAL_DEFECTS)}.items():
        line = next((ln for ln in report.splitlines() if ln.strip().startswith(f + ":")), None)
        assert line is not None and piece in line, (f, report)
    assert f"{broken}_panoptic_train (DATASETS.TRAIN): 8 records, 4 with problems" in report
    assert f"{broken}_panoptic_val (DATASETS.TEST): 4 records, 2 with problems" in report
    assert "FAILED: 6 of 12 records have problems" in report

    assert check_dataset_main(_check_args("knet_not_registered")) == 2
    assert "is not registered" in capsys.readouterr().err


def test_check_dataset_tool_command_line(bad_dataset, tmp_path):
    """The script itself, with a registration file (how a custom dataset is checked)."""
    _, _, root = bad_dataset
    reg = tmp_path / "register_mine.py"
    reg.write_text(
        "from detectron2.data.datasets import register_coco_panoptic\n"
        "from knet.data.datasets.register_synthetic import get_synthetic_metadata\n"
        "for split in ('train', 'val'):\n"
        f"    r = {root!r}\n"
        "    register_coco_panoptic(f'knet_mine_{split}', get_synthetic_metadata(), f'{r}/images/{split}',\n"
        "                           f'{r}/panoptic/{split}', f'{r}/annotations/panoptic_{split}.json',\n"
        "                           f'{r}/annotations/instances_{split}.json')\n"
    )
    cmd = [sys.executable, os.path.join(REPO, "tools", "check_dataset.py"), "--register", str(reg),
           "--config-file", CONFIG, "--num-workers", "0",
           "DATASETS.TRAIN", "('knet_mine_train',)", "DATASETS.TEST", "('knet_mine_val',)"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAILED: 6 of 12 records have problems" in proc.stdout, proc.stdout
    for f in {**_abs(root, TRAIN_DEFECTS), **_abs(root, VAL_DEFECTS)}:
        assert f"  {f}: " in proc.stdout
    assert "checking knet_mine_train" in proc.stderr  # the progress bar


# --------------------------------------------------------------------------------------------- 2 processes
def _mp_worker(src_prefix, root, out_dir, max_fraction):
    """One of 2 CPU processes: register the broken copy, train 4 iterations (evaluating at the end), and
    record what this rank saw: its BadDataHook state, the iteration and message of its BadDataLimitError."""
    from detectron2.utils import comm

    train_net = import_train_net()
    from knet.data.datasets.register_synthetic import register_knet_synthetic

    register_knet_synthetic(os.path.join(os.path.dirname(root), "knet_synthetic"), src_prefix)
    _register_copy(src_prefix, root, "knet_mp_broken")
    record = {"rank": comm.get_rank()}
    original_train = Trainer.train

    def recording_train(self):
        try:
            original_train(self)
            record["results"] = getattr(self, "_last_eval_results", None)
        except BadDataLimitError as e:
            record.update(stopped_at=self.iter, message=str(e))
        hook = next(h for h in self._hooks if isinstance(h, BadDataHook))
        record["hook"] = hook.state_dict()

    Trainer.train = recording_train
    argv = ["--config-file", CONFIG, "--num-gpus", "2", "OUTPUT_DIR", os.path.join(out_dir, "train"),
            "DATASETS.TRAIN", "('knet_mp_broken_panoptic_train',)",
            "DATASETS.TEST", "('knet_mp_broken_panoptic_val',)",
            "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)",
            "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "4", "SEED", "3",
            "DATALOADER.MAX_SKIPPED_FRACTION", str(max_fraction)]
    train_net.main(train_net.default_argument_parser().parse_args(argv))
    with open(os.path.join(out_dir, f"rank{record['rank']}.json"), "w") as f:
        json.dump(record, f)


@pytest.mark.slow
def test_two_processes_count_together_and_stop_together(bad_dataset, tmp_path):
    from detectron2.engine import launch

    clean, _, root = bad_dataset
    runs = {}
    for max_fraction in (1.0, 0.2):
        out = str(tmp_path / f"mp{max_fraction}")
        os.makedirs(out)
        launch(_mp_worker, 2, num_machines=1, machine_rank=0, dist_url="auto",
               args=(clean, root, out, max_fraction))
        runs[max_fraction] = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]

    tolerant, limited = runs[1.0], runs[0.2]
    # both processes hold the same counts (their skips summed), and every bad training file was met
    assert tolerant[0]["hook"] == tolerant[1]["hook"]
    assert set(tolerant[0]["hook"]["bad_files"]) == set(_abs(root, TRAIN_DEFECTS))
    # the evaluation gathered the skipped images of both processes
    res = tolerant[0]["results"]
    assert all(m["num_images"] == 2.0 and m["num_skipped_images"] == 2.0 for m in res.values()), res
    # with the limit, both processes stop at the same iteration with the same list of files
    assert "stopped_at" in limited[0] and limited[0]["stopped_at"] == limited[1]["stopped_at"]
    assert limited[0]["message"] == limited[1]["message"]
    assert limited[0]["hook"] == limited[1]["hook"]
