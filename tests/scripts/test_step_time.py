"""tools/experiments/step_time.py: times a config's training steps with and without their data loading."""
import os

import pytest
from support.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")


def test_step_time_separates_data_loading(monkeypatch):
    step_time = load_script("tools/experiments/step_time.py")
    # a mapper 250 ms slower per image: the loaded steps must show it, the in-memory ones not. Large against
    # how much a tiny step's own time moves between steps (a 50 ms delay measured 0.086 s for 0.1 s once)
    slow = 0.25
    from knet.data.dataset_mappers.panoptic_mapper import KNetPanopticDatasetMapper

    original = KNetPanopticDatasetMapper.map_train
    calls = []

    def slow_map_train(self, *args, **kwargs):
        import time

        calls.append(1)
        time.sleep(slow)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(KNetPanopticDatasetMapper, "map_train", slow_map_train)
    res = step_time.measure(TINY, ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"], warmup=1,
                            steps=3, threads=1)
    assert res["steps"] == 3 and res["threads"] == 1
    assert res["in_memory_step_s"] > 0
    # two images per step, each 250 ms slower to load: 0.5 s of data time per step, less the step's noise
    assert res["data_s"] >= 2 * slow * 0.8
    # the mapper ran for the warm-up and timed steps and for the batches kept in memory, never in the
    # in-memory steps (no loader worker: NUM_WORKERS 0 maps exactly what is asked for)
    assert len(calls) == 2 * (1 + 3 + 3)
    assert res["data_share"] == pytest.approx(res["data_s"] / res["step_s"]) and res["data_share"] < 1
