#!/usr/bin/env python
"""Wall-clock time of a training step, with and without loading its data.

Builds the trainer of a config exactly as ``train_net.py`` does, runs ``--warmup`` steps, then times
``--steps`` steps as training runs them (the data loader included) and the same number of steps on batches
already in memory (the last ``--steps`` batches, cycled). The difference is what loading the data costs the
step: on a 2-core machine a loader worker runs only by taking a core from the step's threads, which a
process-CPU-time measurement does not see (the worker is another process). Results:
docs/quickstart_experiments.md::

    .venv/bin/python tools/experiments/step_time.py \
        --config-file configs/synthetic/knet_panoptic_R18_bf16.yaml --threads 2 [KEY VALUE ...]

With ``--baseline "KEY VALUE ..."`` it compares instead: the config with the trailing overrides and the config
with the baseline's are built in one process and trained in alternating blocks of ``--steps`` steps for
``--rounds`` rounds, the data loader included. A machine whose speed drifts by more than the difference
between two configs (ours moves by up to 1.5x within a day) then slows both alike, and the ratio of their step
times holds.
"""
import argparse
import itertools
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, help="training config")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=8, help="steps before timing")
    p.add_argument("--steps", type=int, default=20, help="steps timed, each way")
    p.add_argument("--baseline", default=None, metavar="'KEY VALUE ...'",
                   help="compare with the config under these overrides, steps interleaved in one process")
    p.add_argument("--rounds", type=int, default=6,
                   help="with --baseline: rounds of alternating blocks of --steps steps")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def _timed(loop, steps: int) -> float:
    """Seconds per ``loop.run_step()``, over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        loop.run_step()
    return (time.perf_counter() - start) / steps


def _replace_data(loop, iterator):
    """Make ``loop.run_step`` take its batches from ``iterator`` (detectron2 after v0.6 keeps the iterator
    behind a lazy ``_data_loader_iter`` property, v0.6 in a plain attribute)."""
    if isinstance(getattr(type(loop), "_data_loader_iter", None), property):
        loop._data_loader_iter_obj = iterator
    else:
        loop._data_loader_iter = iterator


def _train_loop(config_file: str, opts, out: str, max_iter: int):
    """The training loop of ``config_file`` + ``opts``, built as ``train_net.py`` builds it, writing to
    ``out``."""
    from detectron2.engine import default_argument_parser

    if os.path.join(REPO, "projects") not in sys.path:  # run from a checkout without installing the package
        sys.path.insert(0, os.path.join(REPO, "projects"))
    import knet  # noqa: F401
    from knet.engine import Trainer, setup

    args = default_argument_parser().parse_args(
        ["--config-file", config_file, *opts, "OUTPUT_DIR", out,
         "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "1000000000"]
    )
    trainer = Trainer(setup(args))
    trainer.resume_or_load(resume=False)
    return trainer.train_loop


def compare(config_file: str, opts=(), baseline_opts=(), *, warmup: int = 8, steps: int = 10, rounds: int = 6,
            threads=None) -> dict:
    """Step time of ``config_file`` + ``opts`` against the same config + ``baseline_opts``: both built in this
    process, ``warmup`` steps each, then ``rounds`` rounds of ``steps`` steps of one and ``steps`` of the
    other (which goes first alternates), the data loader included.

    Returns:
        dict with ``step_s`` and ``baseline_step_s`` (seconds per step over all rounds), ``ratio`` (their
        quotient), ``round_ratios`` (the quotient in each round) and ``median_ratio`` (their median: one round
        disturbed by the machine moves it least), plus ``threads``, ``warmup``, ``steps``, ``rounds``.
    """
    import torch
    from detectron2.utils.events import EventStorage

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out_a, tempfile.TemporaryDirectory() as out_b:
        max_iter = warmup + rounds * steps
        loops = {"config": _train_loop(config_file, opts, out_a, max_iter),
                 "baseline": _train_loop(config_file, baseline_opts, out_b, max_iter)}
        times = {k: [] for k in loops}
        with EventStorage(0):
            for loop in loops.values():
                for _ in range(warmup):
                    loop.run_step()
            for r in range(rounds):
                for name in (("config", "baseline") if r % 2 == 0 else ("baseline", "config")):
                    times[name].append(_timed(loops[name], steps))
    step_s, base_s = (sum(times[k]) / rounds for k in ("config", "baseline"))
    round_ratios = [a / b for a, b in zip(times["config"], times["baseline"])]
    return {"step_s": step_s, "baseline_step_s": base_s, "ratio": step_s / base_s,
            "round_ratios": round_ratios, "median_ratio": statistics.median(round_ratios),
            "threads": torch.get_num_threads(), "warmup": warmup, "steps": steps, "rounds": rounds}


def measure(config_file: str, opts=(), *, warmup: int = 8, steps: int = 20, threads=None) -> dict:
    """Build the trainer of ``config_file`` + ``opts`` and time its steps.

    Returns:
        dict with ``step_s`` (seconds per step as training runs it), ``in_memory_step_s`` (the same on batches
        already loaded), ``data_s`` (their difference) and ``data_share`` (``data_s / step_s``), plus
        ``threads``, ``warmup`` and ``steps``.
    """
    import torch
    from detectron2.utils.events import EventStorage

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        loop = _train_loop(config_file, opts, out, warmup + 2 * steps)
        with EventStorage(0):
            for _ in range(warmup):
                loop.run_step()
            step_s = _timed(loop, steps)
            batches = [next(loop._data_loader_iter) for _ in range(steps)]
            _replace_data(loop, itertools.cycle(batches))
            in_memory_step_s = _timed(loop, steps)
    data_s = step_s - in_memory_step_s
    return {"step_s": step_s, "in_memory_step_s": in_memory_step_s, "data_s": data_s,
            "data_share": data_s / step_s, "threads": torch.get_num_threads(), "warmup": warmup,
            "steps": steps}


def main(argv=None):
    args = parse_args(argv)
    if args.baseline is not None:
        res = compare(args.config_file, args.opts, shlex.split(args.baseline), warmup=args.warmup,
                      steps=args.steps, rounds=args.rounds, threads=args.threads)
        spread = ", ".join(f"{r:.3f}" for r in res["round_ratios"])
        print(f"{res['step_s'] * 1000:.1f} ms per step against {res['baseline_step_s'] * 1000:.1f} ms for "
              f"the baseline: {res['ratio']:.3f}x, median of the rounds {res['median_ratio']:.3f}x (rounds: "
              f"{spread}) [{res['threads']} thread(s), "
              f"{res['rounds']} rounds of {res['steps']} steps each after {res['warmup']}]")
        print(json.dumps(res))
        return res
    res = measure(args.config_file, args.opts, warmup=args.warmup, steps=args.steps, threads=args.threads)
    print(f"{res['step_s'] * 1000:.1f} ms per step as trained; {res['in_memory_step_s'] * 1000:.1f} ms on "
          f"batches in memory; data loading {res['data_s'] * 1000:.1f} ms ({100 * res['data_share']:.0f} %) "
          f"[{res['threads']} thread(s), {res['steps']} steps each after {res['warmup']}]")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
