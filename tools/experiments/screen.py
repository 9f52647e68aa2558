#!/usr/bin/env python
"""Run a plan of training runs (configurations x seeds) a few at a time and collect their metrics.

A lever is only measured when it is run beside the baseline on the same machine, over seeds
(docs/quickstart_experiments.md): this runs such a plan. Each run is ``train_net.py`` (or
``tools/experiments/train_other.py`` for the second dataset) with the quickstart config, its own
``OUTPUT_DIR`` and ``SEED``, and the run's overrides; ``--slots`` runs go at a time, each with
``--threads`` intra-op threads. When a run ends, one JSON line (name, seed, overrides, the headline metrics,
wall time and seconds per iteration) is appended to ``OUT/results.jsonl``, so a plan cut short keeps every run
that finished. ``--summarize`` prints the table (per configuration: the mean and every seed).

A plan is a JSON list of ``{"name": str, "opts": [KEY, VALUE, ...], "seeds": [int, ...],
"dataset": "synthetic" | "other"}`` (``opts``, ``seeds`` and ``dataset`` optional: none, ``[0]``, synthetic)::

    .venv/bin/python tools/experiments/screen.py --plan plan.json --out output/screen --slots 2 --threads 1
    .venv/bin/python tools/experiments/screen.py --summarize output/screen/results.jsonl
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import namedtuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic", "knet_panoptic_R10.yaml")
# The second dataset (make_other_dataset.py): its registration wrapper and the overrides it needs.
OTHER = (
    os.path.join(REPO, "tools", "experiments", "train_other.py"),
    ["DATASETS.TRAIN", "('knet_other_panoptic_train',)", "DATASETS.TEST", "('knet_other_panoptic_val',)",
     "MODEL.KNET.NUM_CLASSES", "7", "MODEL.KNET.NUM_THING_CLASSES", "4",
     "MODEL.KNET.NUM_PROPOSALS", "12",  # twice the most things an image holds (6), as README advises
     "MODEL.KNET.TEST.SEMANTIC_ON", "False"],
)
METRICS = {  # column -> (task, key) in train_net.py's last_eval_results.json
    "PQ": ("panoptic_seg", "PQ"), "PQ_th": ("panoptic_seg", "PQ_th"), "PQ_st": ("panoptic_seg", "PQ_st"),
    "AP": ("segm", "AP"), "AP50": ("segm", "AP50"), "mIoU": ("sem_seg", "mIoU"),
}


Run = namedtuple("Run", "name seed dataset opts")  # one training run of a plan


def load_plan(path):
    """The plan as a list of :class:`Run`, in file order, seeds innermost."""
    with open(path) as f:
        plan = json.load(f)
    runs, names = [], set()
    for i, entry in enumerate(plan):
        name = entry.get("name")
        if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in names:
            raise ValueError(f"{path}: entry {i} needs a unique 'name' of letters, digits, '_', '.', '-'")
        names.add(name)
        opts = [str(o) for o in entry.get("opts", [])]
        if len(opts) % 2:
            raise ValueError(f"{path}: entry '{name}': 'opts' must be KEY VALUE pairs, got {len(opts)} items")
        dataset = entry.get("dataset", "synthetic")
        if dataset not in ("synthetic", "other"):
            raise ValueError(f"{path}: entry '{name}': 'dataset' must be 'synthetic' or 'other'")
        for seed in entry.get("seeds", [0]):
            runs.append(Run(name, int(seed), dataset, opts))
    return runs


def command(run, args):
    """The training command line of a :class:`Run` and its output folder."""
    out_dir = os.path.join(args.out, f"{run.name}_s{run.seed}")
    script, extra = (os.path.join(REPO, "train_net.py"), []) if run.dataset == "synthetic" else OTHER
    cmd = [args.python, script, "--config-file", args.config_file, *extra, "OUTPUT_DIR", out_dir,
           "SEED", str(run.seed), "MODEL.DEVICE", args.device, *args.common, *run.opts]
    return cmd, out_dir


def seconds_per_iter(out_dir):
    """Median of the ``time`` records of the run's metrics.json (detectron2 writes one per logging period, the
    median iteration time of that period); None if there are none."""
    path = os.path.join(out_dir, "metrics.json")
    times = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "time" in rec:
                    times.append(rec["time"])
    return sorted(times)[len(times) // 2] if times else None


def collect(run, out_dir, rc, wall):
    """One result line: the :class:`Run`, its exit code, times and headline metrics (none when it failed)."""
    rec = dict(run._asdict(), rc=rc, wall_s=round(wall, 1), s_per_iter=seconds_per_iter(out_dir))
    path = os.path.join(out_dir, "last_eval_results.json")
    if rc == 0 and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        for col, (task, key) in METRICS.items():
            if key in results.get(task, {}):
                rec[col] = round(results[task][key], 2)
    return rec


def run_plan(args):
    runs = load_plan(args.plan)
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.jsonl")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    pending, active, done = list(runs), [], 0
    print(f"{len(runs)} runs, {args.slots} at a time, {args.threads} thread(s) each -> {results}", flush=True)
    while pending or active:
        while pending and len(active) < args.slots:
            run = pending.pop(0)
            cmd, out_dir = command(run, args)
            os.makedirs(out_dir, exist_ok=True)
            log = open(os.path.join(out_dir, "run.log"), "w")
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            active.append((proc, log, time.time(), run, out_dir))
        time.sleep(2)
        for item in list(active):
            proc, log, start, run, out_dir = item
            if proc.poll() is None:
                continue
            active.remove(item)
            log.close()
            rec = collect(run, out_dir, proc.returncode, time.time() - start)
            with open(results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            done += 1
            shown = " ".join(f"{k} {rec[k]:.1f}" for k in METRICS if k in rec)
            shown = shown or f"FAILED (see {out_dir}/run.log)"
            print(f"[{done}/{len(runs)}] {run.name} seed {run.seed}: {shown} ({rec['wall_s']:.0f} s)",
                  flush=True)
    summarize(results)


def summarize(path):
    """Print, per configuration (in first-seen order), the mean of each metric and its seeds' values."""
    groups = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            groups.setdefault(rec["name"], []).append(rec)
    print(f"| configuration | seeds | {' | '.join(METRICS)} | s/it |")
    print("|---|---|" + "---|" * (len(METRICS) + 1))
    for name, recs in groups.items():
        ok = sorted((r for r in recs if r["rc"] == 0), key=lambda r: r["seed"])
        cells = []
        for col in METRICS:
            vals = [r[col] for r in ok if col in r]
            each = " / ".join(f"{v:.1f}" for v in vals)
            cells.append(f"{sum(vals) / len(vals):.1f} ({each})" if vals else "-")
        spi = [r["s_per_iter"] for r in ok if r.get("s_per_iter")]
        cells.append(f"{sum(spi) / len(spi):.3f}" if spi else "-")
        seeds = "/".join(str(r["seed"]) for r in ok)
        if len(ok) < len(recs):
            seeds += f" ({len(recs) - len(ok)} failed)"
        print(f"| {name} | {seeds} | {' | '.join(cells)} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", help="JSON plan (see the module docstring)")
    p.add_argument("--out", default=os.path.join(REPO, "output", "screen"), help="output folder")
    p.add_argument("--config-file", default=CONFIG, help="base config of every run")
    p.add_argument("--slots", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per run (OMP_NUM_THREADS)")
    p.add_argument("--device", default="cpu", help="MODEL.DEVICE of every run")
    p.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    p.add_argument("--common", nargs="*", default=[], help="KEY VALUE overrides added to every run")
    p.add_argument("--summarize", metavar="RESULTS_JSONL", help="only print the table of a results file")
    args = p.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
    elif args.plan:
        run_plan(args)
    else:
        p.error("give --plan or --summarize")


if __name__ == "__main__":
    main()
