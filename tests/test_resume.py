"""Checkpointing and resume through ``train_net.py``.

* A run stopped after a checkpoint and restarted with ``--resume`` ends with exactly (bit for bit) the weights
  of an uninterrupted run of the same length (CPU, fixed seed, tiny model on a tiny synthetic dataset).
* A process killed while writing a checkpoint never leaves a truncated checkpoint behind, and
  ``last_checkpoint`` keeps pointing at the previous, complete one.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser
from support.models import register_tiny_synthetic

from knet.checkpoint.checkpointer import KNetCheckpointer
from knet.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return register_tiny_synthetic(tmp_path_factory.mktemp("syn"), "knet_test_resume", num_train=8, num_val=2)


def _args(out_dir, prefix, resume=False, extra=()):
    argv = ["--config-file", CONFIG] + (["--resume"] if resume else []) + [
        "OUTPUT_DIR", str(out_dir),
        "DATASETS.TRAIN", f"('{prefix}_panoptic_train',)",
        "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "6",
        "SOLVER.CHECKPOINT_PERIOD", "3",
        "SOLVER.STEPS", "(4,)",
        "SOLVER.WARMUP_ITERS", "2",
        "SEED", "11",
        *extra,
    ]
    return default_argument_parser().parse_args(argv)


class _Crash(HookBase):
    """Simulates a crash after iteration ``at`` (i.e. after the checkpoint of iteration ``at - 1``)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt(f"simulated crash after iteration {self.at}")


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture
def one_thread():
    """The same reduction order in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("loop", ["this-detectron2", "v0.6-workaround-amp"])
def test_resume_matches_uninterrupted_run(tmp_path, train_net, tiny_dataset, monkeypatch, one_thread, loop):
    """``this-detectron2``: the loader restart of the installed detectron2 (``reset_data_loader`` on main, the
    v0.6 workaround on v0.6); ``v0.6-workaround-amp``: the v0.6 workaround (forced by hiding
    ``reset_data_loader``) with the AMP loop (bfloat16 on CPU)."""
    from detectron2.engine import SimpleTrainer

    extra = ()
    if loop == "v0.6-workaround-amp":
        monkeypatch.delattr(SimpleTrainer, "reset_data_loader", raising=False)
        extra = ("SOLVER.AMP.ENABLED", "True")
    restarts = []
    real_rebuild = Trainer._v06_rebuild_loop
    monkeypatch.setattr(Trainer, "_v06_rebuild_loop",
                        lambda self, dl: restarts.append("_v06_rebuild_loop") or real_rebuild(self, dl))
    if hasattr(SimpleTrainer, "reset_data_loader"):
        real_reset = SimpleTrainer.reset_data_loader
        monkeypatch.setattr(SimpleTrainer, "reset_data_loader",
                            lambda self, b: restarts.append("reset_data_loader") or real_reset(self, b))
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    train_net.main(_args(full_dir, tiny_dataset, extra=extra))

    original = Trainer.build_hooks
    monkeypatch.setattr(Trainer, "build_hooks", lambda self: original(self) + [_Crash(at=3)])
    with pytest.raises(KeyboardInterrupt):
        train_net.main(_args(resumed_dir, tiny_dataset, extra=extra))
    monkeypatch.setattr(Trainer, "build_hooks", original)
    assert restarts == []  # nothing to restart in runs that start at iteration 0
    assert (resumed_dir / "last_checkpoint").read_text() == "model_0000002.pth"
    assert not (resumed_dir / "model_final.pth").exists()
    ckpt = torch.load(resumed_dir / "model_0000002.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2 and "optimizer" in ckpt["trainer"]["_trainer"]

    train_net.main(_args(resumed_dir, tiny_dataset, resume=True, extra=extra))
    expected = "reset_data_loader" if hasattr(SimpleTrainer, "reset_data_loader") else "_v06_rebuild_loop"
    assert restarts == [expected]

    full, resumed = _weights(full_dir / "model_final.pth"), _weights(resumed_dir / "model_final.pth")
    assert full.keys() == resumed.keys()
    mismatched = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not mismatched, f"resumed run differs from the uninterrupted one in {mismatched[:5]}"
    # and training did move the weights after the checkpoint (so the comparison means something)
    at_ckpt = ckpt["model"]
    assert any(not torch.equal(at_ckpt[k], full[k]) for k in full if full[k].is_floating_point())


_KILL_WHILE_SAVING = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from torch import nn
    from knet.checkpoint.checkpointer import KNetCheckpointer

    out = sys.argv[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    ckpt = KNetCheckpointer(model, save_dir=out)
    ckpt.save("model_0000001")                      # a complete checkpoint
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])             # half of the file is on disk ...
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)        # ... when the process is killed

    torch.save = save_half_then_die
    ckpt.save("model_0000002")
    print("not reached")
    """
)


def test_checkpoint_never_truncated_when_killed_while_saving(tmp_path):
    script = tmp_path / "kill_while_saving.py"
    script.write_text(_KILL_WHILE_SAVING)
    out = tmp_path / "ckpts"
    cmd = [sys.executable, str(script), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # it really was killed mid-save
    assert "not reached" not in proc.stdout

    # the previous checkpoint is still the last one, complete and loadable
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_0000002.pth").exists()
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    KNetCheckpointer(model, save_dir=str(out)).resume_or_load("", resume=True)
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    pairs = zip(model.state_dict().values(), reference.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    # every file named like a checkpoint loads completely
    for name in os.listdir(out):
        if name.endswith(".pth"):
            torch.load(out / name, map_location="cpu", weights_only=True)


def test_eval_only_loads_weights_and_verifies_results(tmp_path, train_net, tiny_dataset, monkeypatch):
    """``--eval-only`` loads MODEL.WEIGHTS with KNetCheckpointer, evaluates, and checks TEST.EXPECTED_RESULTS
    (exit status 1 when they are not met)."""
    from knet.engine import load_config

    cfg = load_config(CONFIG)
    model = Trainer.build_model(cfg)
    KNetCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    loaded = []
    original_load = KNetCheckpointer.load
    monkeypatch.setattr(KNetCheckpointer, "load",
                        lambda self, path, *a, **k: loaded.append(path) or original_load(self, path, *a, **k))

    def eval_only(expected):
        argv = ["--config-file", CONFIG, "--eval-only",
                "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(tmp_path / "weights.pth"),
                "DATASETS.TEST", f"('{tiny_dataset}_panoptic_val',)", "TEST.EXPECTED_RESULTS", expected,
                "MODEL.KNET.TEST.INSTANCE_ON", "False", "MODEL.KNET.TEST.SEMANTIC_ON", "False"]
        return train_net.main(default_argument_parser().parse_args(argv))

    res = eval_only("[['panoptic_seg', 'PQ', 50.0, 50.0]]")  # any PQ in [0, 100] passes
    assert loaded == [str(tmp_path / "weights.pth")]
    assert set(res) == {"panoptic_seg"}
    with pytest.raises(SystemExit) as e:
        eval_only("[['panoptic_seg', 'PQ', 1000.0, 1.0]]")
    assert e.value.code == 1
