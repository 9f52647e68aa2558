"""tools/experiments/screen.py: a plan of runs (configurations x seeds) is validated, each run gets its
own command line, output folder and seed, finished runs are collected into results.jsonl (failed ones
too), and the summary gives per configuration the mean and every seed. The training command is replaced
by a fake trainer that writes what train_net.py writes, so the test checks the bookkeeping, not training."""
import argparse
import importlib
import json
import os
import stat
import sys

import pytest
from support.scripts import REPO

EXP = os.path.join(REPO, "tools", "experiments")


def _screen():
    if EXP not in sys.path:
        sys.path.insert(0, EXP)
    return importlib.import_module("screen")


def _write_plan(path, plan):
    path.write_text(json.dumps(plan))
    return str(path)


def test_plan_is_validated_and_expanded_in_order(tmp_path):
    screen = _screen()
    runs = screen.load_plan(_write_plan(tmp_path / "p.json", [
        {"name": "base", "seeds": [0, 1]},
        {"name": "lr", "opts": ["SOLVER.BASE_LR", 0.001], "dataset": "other"},
    ]))
    assert runs == [("base", 0, "synthetic", []), ("base", 1, "synthetic", []),
                    ("lr", 0, "other", ["SOLVER.BASE_LR", "0.001"])]
    bad = [
        ([{"name": "a", "opts": ["SOLVER.BASE_LR"]}], "KEY VALUE pairs"),
        ([{"name": "a"}, {"name": "a"}], "unique 'name'"),
        ([{"name": "a b"}], "unique 'name'"),
        ([{"name": "a", "dataset": "coco"}], "'dataset'"),
    ]
    for plan, message in bad:
        with pytest.raises(ValueError, match=message):
            screen.load_plan(_write_plan(tmp_path / "bad.json", plan))


def test_command_puts_the_run_overrides_last(tmp_path):
    screen = _screen()
    args = argparse.Namespace(out=str(tmp_path), python="py", config_file="cfg.yaml", device="cuda",
                              common=["SOLVER.MAX_ITER", "10"])
    cmd, out_dir = screen.command(screen.Run("lr", 3, "other", ["SOLVER.MAX_ITER", "20"]), args)
    assert out_dir == os.path.join(str(tmp_path), "lr_s3")
    assert cmd[:2] == ["py", screen.OTHER[0]]
    assert cmd[cmd.index("OUTPUT_DIR") + 1] == out_dir and cmd[cmd.index("SEED") + 1] == "3"
    assert cmd[cmd.index("MODEL.DEVICE") + 1] == "cuda"
    assert "('knet_other_panoptic_train',)" in cmd
    # yacs applies overrides left to right: the run's own value wins over --common
    assert cmd[-4:] == ["SOLVER.MAX_ITER", "10", "SOLVER.MAX_ITER", "20"]
    cmd, _ = screen.command(screen.Run("base", 0, "synthetic", []), args)
    assert cmd[1] == os.path.join(REPO, "train_net.py") and "DATASETS.TRAIN" not in cmd


FAKE_TRAINER = """\
#!{python}
# Stands in for `python train_net.py ...`: writes last_eval_results.json and metrics.json like train_net.py.
import json, os, sys
argv = sys.argv[2:]
opt = {{argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].isupper() or "." in argv[i]}}
if opt.get("FAKE.FAIL") == "1":
    sys.exit(1)
out, seed, pq = opt["OUTPUT_DIR"], int(opt["SEED"]), float(opt.get("FAKE.PQ", 50))
os.makedirs(out, exist_ok=True)
res = {{"panoptic_seg": {{"PQ": pq + seed, "PQ_th": 30.0 + seed, "PQ_st": 90.0}},
        "segm": {{"AP": 18.0, "AP50": 38.0}}, "sem_seg": {{"mIoU": 64.0}}}}
json.dump(res, open(os.path.join(out, "last_eval_results.json"), "w"))
with open(os.path.join(out, "metrics.json"), "w") as f:
    for t in (0.3, 0.5, 0.4):
        f.write(json.dumps({{"iteration": 1, "time": t}}) + "\\n")
"""


def test_run_plan_collects_every_run_and_summarizes(tmp_path, capsys):
    screen = _screen()
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    plan = _write_plan(tmp_path / "plan.json", [
        {"name": "base", "seeds": [0, 1, 2]},
        {"name": "better", "opts": ["FAKE.PQ", "60"], "seeds": [0, 1]},
        {"name": "broken", "opts": ["FAKE.FAIL", "1"]},
    ])
    out = tmp_path / "out"
    screen.main(["--plan", plan, "--out", str(out), "--slots", "3", "--python", str(fake)])
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    by_run = {(r["name"], r["seed"]): r for r in recs}
    assert by_run[("base", 2)]["PQ"] == 52.0 and by_run[("better", 1)]["PQ"] == 61.0
    assert by_run[("base", 0)]["s_per_iter"] == 0.4  # the median of the logged iteration times
    assert by_run[("broken", 0)]["rc"] == 1 and "PQ" not in by_run[("broken", 0)]
    assert (out / "broken_s0" / "run.log").exists()
    table = capsys.readouterr().out
    assert "| base | 0/1/2 | 51.0 (50.0 / 51.0 / 52.0) | 31.0 (30.0 / 31.0 / 32.0) |" in table
    assert "| better | 0/1 | 60.5 (60.0 / 61.0) |" in table
    assert "| broken |  (1 failed) | - |" in table
