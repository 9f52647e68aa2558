"""Training and evaluation with 2 CPU processes through detectron2's ``launch`` (DistributedDataParallel over
gloo): ``train_net.main`` trains the tiny model on the synthetic dataset, evaluates with every process
handling part of the validation set and the results gathered, and both processes end with identical weights.
"""
import hashlib
import json
import os
import uuid

import torch
from detectron2.engine import launch
from support.scripts import REPO, import_train_net

from knet.data.datasets.register_synthetic import register_knet_synthetic
from knet.data.datasets.synthetic import ensure_synthetic_dataset

CONFIG = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")
NUM_VAL = 4


def _state_hash(model) -> str:
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker(root, prefix, out_dir, iters):
    """Runs in each spawned process: register the datasets (the parent's registrations are not inherited),
    then ``train_net.main`` with hooks that record what this rank did."""
    from detectron2.evaluation import COCOPanopticEvaluator
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    from knet.engine import Trainer

    train_net = import_train_net()

    register_knet_synthetic(root, prefix)
    rank = comm.get_rank()
    record = {"rank": rank, "world_size": comm.get_world_size(), "evaluated": 0}

    original_process = COCOPanopticEvaluator.process

    def counting_process(self, inputs, outputs):
        record["evaluated"] += len(inputs)
        return original_process(self, inputs, outputs)

    COCOPanopticEvaluator.process = counting_process
    original_train = Trainer.train

    def recording_train(self):
        record["ddp"] = isinstance(self.model, DistributedDataParallel)
        module = self.model.module if record["ddp"] else self.model
        record["initial_hash"] = _state_hash(module)
        record["threads"] = torch.get_num_threads()
        original_train(self)
        record["final_hash"] = _state_hash(module)
        record["results"] = getattr(self, "_last_eval_results", None)

    Trainer.train = recording_train
    argv = [
        "--config-file", CONFIG, "--num-gpus", "2",
        "OUTPUT_DIR", os.path.join(out_dir, "train"),
        "DATASETS.TRAIN", f"('{prefix}_panoptic_train',)",
        "DATASETS.TEST", f"('{prefix}_panoptic_val',)",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({iters - 1},)",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "TEST.EVAL_PERIOD", str(iters),
    ]
    train_net.main(train_net.default_argument_parser().parse_args(argv))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


def _run(tmp_path, iters):
    root = ensure_synthetic_dataset(
        str(tmp_path / "knet_synthetic"), num_train=8, num_val=NUM_VAL, image_size=64
    )
    prefix = f"knet_test_mp{uuid.uuid4().hex[:6]}"
    out = str(tmp_path / "out")
    os.makedirs(out)
    launch(_worker, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(root, prefix, out, iters))
    records = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]

    assert [r["world_size"] for r in records] == [2, 2] and all(r["ddp"] for r in records)
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in records)
    # identical weights on both processes, and training changed them
    assert records[0]["initial_hash"] == records[1]["initial_hash"]
    assert records[0]["final_hash"] == records[1]["final_hash"]
    assert records[0]["final_hash"] != records[0]["initial_hash"]
    # evaluation: each process saw part of the validation set, the main process reports on all of it
    assert sorted(r["evaluated"] for r in records) == [NUM_VAL // 2, NUM_VAL // 2]
    res = records[0]["results"]
    assert set(res) == {"panoptic_seg", "segm", "sem_seg"} and records[1]["results"] == {}
    assert 0.0 <= res["panoptic_seg"]["PQ"] <= 100.0 and 0.0 <= res["sem_seg"]["mIoU"] <= 100.0
    with open(os.path.join(out, "train", "inference", "predictions.json")) as f:
        gathered = json.load(f)["annotations"]
    assert sorted(a["image_id"] for a in gathered) == list(range(1, NUM_VAL + 1))
    with open(os.path.join(out, "train", "inference", "sem_seg_predictions.json")) as f:
        assert len({p["file_name"] for p in json.load(f)}) == NUM_VAL
    final = torch.load(os.path.join(out, "train", "model_final.pth"), map_location="cpu", weights_only=True)
    assert final["iteration"] == iters - 1


def test_two_cpu_processes_20_iterations(tmp_path):
    """The issue's acceptance run: 20 iterations with 2 processes (about 30 s on 2 cores, most of it the
    start-up of the two processes)."""
    _run(tmp_path, iters=20)
