"""Resume through ``train_net.py``: a run stopped after a checkpoint and restarted with ``--resume`` ends with
exactly (bit for bit) the weights of an uninterrupted run of the same length (CPU, fixed seed, tiny model on a
tiny synthetic dataset), with the loader restart of the installed detectron2 and with v0.6's workaround."""
import os

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser
from support.models import register_tiny_synthetic
from support.scripts import REPO

from knet.engine import Trainer

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
    assert set(ckpt["trainer"]["hooks"]["RandomStateHook"]) == {"python", "numpy", "torch"}

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
