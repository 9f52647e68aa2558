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


def test_compare_interleaves_two_configs_and_gives_their_ratio(monkeypatch):
    step_time = load_script("tools/experiments/step_time.py")
    from knet.data.dataset_mappers.panoptic_mapper import KNetPanopticDatasetMapper

    original = KNetPanopticDatasetMapper.map_train
    calls = {"slow": 0, "plain": 0}
    slow = 0.2

    def map_train(self, *args, **kwargs):  # the mapper of the config with copy-paste on is 200 ms slower
        import time

        if self.copy_paste_prob > 0:
            calls["slow"] += 1
            time.sleep(slow)
        else:
            calls["plain"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(KNetPanopticDatasetMapper, "map_train", map_train)
    common = ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    res = step_time.compare(TINY, common + ["INPUT.COPY_PASTE_PROB", "1.0"],
                            common + ["INPUT.COPY_PASTE_PROB", "0.0"], warmup=1, steps=2, rounds=2, threads=1)
    # each config ran its warm-up and its rounds, two images per step, and nothing else
    assert calls == {"slow": 2 * (1 + 2 * 2), "plain": 2 * (1 + 2 * 2)}
    assert res["rounds"] == 2 and len(res["round_ratios"]) == 2
    assert res["step_s"] - res["baseline_step_s"] >= 2 * slow * 0.8  # 0.4 s more per step, less noise
    assert res["ratio"] == pytest.approx(res["step_s"] / res["baseline_step_s"]) and res["ratio"] > 1
    assert all(r > 1 for r in res["round_ratios"]) and res["median_ratio"] > 1
