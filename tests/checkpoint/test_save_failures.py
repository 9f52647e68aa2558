"""Checkpoint writes that fail: a process killed while writing a checkpoint never leaves a truncated
checkpoint behind (``last_checkpoint`` keeps pointing at the previous, complete one); a full disk says what
happened, what is intact and what to do, and leaves no partial file."""
import errno
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from knet.checkpoint.checkpointer import KNetCheckpointer

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


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails with ENOSPC."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.real.write(b)

    def fileno(self):
        return self.real.fileno()

    def flush(self):
        self.real.flush()

    def close(self):
        self.real.close()
        super().close()


def test_full_disk_while_saving_checkpoint(tmp_path, monkeypatch):
    from knet.checkpoint import io as ckpt_io
    from knet.checkpoint.checkpointer import KNetCheckpointer
    from knet.checkpoint.io import CheckpointSaveError

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    ckpt = KNetCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000001")
    before = sorted(os.listdir(tmp_path))
    real_fdopen = os.fdopen
    with pytest.raises(RuntimeError, match="unexpected pos"):  # what torch makes of ENOSPC (the case)
        torch.save(model.state_dict(), _FullDisk(open(tmp_path / "probe.bin", "wb"), 1000))
    os.unlink(tmp_path / "probe.bin")
    monkeypatch.setattr(ckpt_io.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), 1000))
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(CheckpointSaveError) as e:
        ckpt.save("model_0000002")
    message = str(e.value)
    assert e.value.errno == errno.ENOSPC and e.value.__cause__ is None
    assert "no space left on the device" in message and "no partial file is left" in message
    assert f"'{tmp_path / 'model_0000001.pth'}'" in message and "is intact" in message
    assert "--resume" in message and "OUTPUT_DIR" in message
    assert sorted(os.listdir(tmp_path)) == before  # no partial or temporary file
    monkeypatch.setattr(ckpt_io.os, "fdopen", real_fdopen)
    restored = torch.nn.Linear(64, 64)
    KNetCheckpointer(restored, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    torch.manual_seed(0)
    assert torch.equal(restored.weight, torch.nn.Linear(64, 64).weight)
