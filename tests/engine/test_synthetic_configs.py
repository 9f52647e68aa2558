"""The shipped synthetic configs (panoptic in float32 and bf16, instance, semantic) train and evaluate through
``train_net.py`` with the evaluators their datasets name, on a tiny generated copy of the synthetic data."""
import json
import math
import os

import pytest
import torch
from detectron2.engine import default_argument_parser
from support.models import register_tiny_synthetic
from support.scripts import REPO

from knet.engine import Trainer, load_config

SYN = os.path.join(REPO, "configs", "synthetic")

# config -> (dataset task, metric groups its evaluation must report, number of output classes)
CASES = {
    "knet_panoptic_R10.yaml": ("panoptic", {"panoptic_seg": "PQ", "segm": "AP", "sem_seg": "mIoU"}, 11),
    "knet_panoptic_R18.yaml": ("panoptic", {"panoptic_seg": "PQ", "segm": "AP", "sem_seg": "mIoU"}, 11),
    "knet_panoptic_R18_bf16.yaml": ("panoptic", {"panoptic_seg": "PQ", "segm": "AP", "sem_seg": "mIoU"}, 11),
    "knet_instance_R18.yaml": ("instance", {"segm": "AP"}, 6),
    "knet_upernet_semantic_tiny.yaml": ("sem_seg", {"sem_seg": "mIoU"}, 11),
}


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    return register_tiny_synthetic(tmp_path_factory.mktemp("syn"), "knet_test_cfg", num_train=4, num_val=2)


def test_every_synthetic_config_is_covered():
    assert sorted(f for f in os.listdir(SYN) if f.endswith(".yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_synthetic_config_trains_and_evaluates(name, tmp_path, prefix, train_net):
    task, metrics, num_classes = CASES[name]
    path = os.path.join(SYN, name)
    shipped = load_config(path, [])
    assert shipped.DATASETS.TRAIN == (f"knet_synthetic_{task}_train",)
    assert shipped.DATASETS.TEST == (f"knet_synthetic_{task}_val",)

    opts = [
        "OUTPUT_DIR", str(tmp_path),
        "DATASETS.TRAIN", f"('{prefix}_{task}_train',)",
        "DATASETS.TEST", f"('{prefix}_{task}_val',)",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2",
        "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MIN_SIZE_TEST", "64",
    ]
    torch.manual_seed(0)
    train_net.main(default_argument_parser().parse_args(["--config-file", path] + opts))

    results = json.loads((tmp_path / "last_eval_results.json").read_text())
    assert set(results) == set(metrics), results.keys()
    for group, key in metrics.items():
        value = results[group][key]
        assert isinstance(value, float) and not math.isnan(value) and 0.0 <= value <= 100.0, (group, value)

    cfg = load_config(path, opts)
    model = Trainer.build_model(cfg)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])[0]
    assert ("panoptic_seg" in out) == (task == "panoptic")
    assert ("instances" in out) == (task in ("panoptic", "instance"))
    if "sem_seg" in out:
        assert out["sem_seg"].shape == (num_classes, 64, 64)
    if "instances" in out:
        assert int(out["instances"].pred_classes.max()) < 6  # thing classes only
