"""Safe loading (no code execution from a checkpoint), ``.safetensors`` and atomic writing
(:mod:`knet.checkpoint.io`, :class:`knet.checkpoint.checkpointer.KNetCheckpointer`)."""
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from knet.checkpoint import CheckpointLoadError, atomic_write, load_checkpoint, save_checkpoint
from knet.checkpoint.checkpointer import KNetCheckpointer


class _Payload:
    """Unpickling this runs exec(), which would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("fmt", ["torch.save", "raw-pickle", "pkl"])
def test_safe_loading_refuses_code_execution(tmp_path, fmt):
    marker = tmp_path / "executed.txt"
    payload = {"model": {"w": torch.ones(2)}, "evil": _Payload(marker)}
    path = tmp_path / ("evil.pkl" if fmt == "pkl" else "evil.pth")
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointLoadError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "never" in str(e.value)
    assert not marker.exists(), "the payload was executed"
    model = nn.Linear(2, 2)
    with pytest.raises(CheckpointLoadError):
        KNetCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_safe_loading_accepts_numpy_in_meta(tmp_path):
    import numpy as np

    path = tmp_path / "ok.pth"
    torch.save(
        {"state_dict": {"w": torch.arange(3.0)}, "meta": {"best": np.float64(0.5), "a": np.arange(2)}}, path
    )
    data = load_checkpoint(path)
    assert data["meta"]["best"] == 0.5 and data["meta"]["a"].tolist() == [0, 1]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pkl_weights_load_with_numpy_only_unpickler(tmp_path, protocol):
    import numpy as np

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {
                "model": {"weight": w, "bias": np.ones(2, np.float32)},
                "__author__": "torchvision",
                "matching_heuristics": True,
            },
            f,
            protocol=protocol,
        )
    model = nn.Linear(3, 2)
    KNetCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.data, torch.from_numpy(w)) and torch.equal(model.bias.data, torch.ones(2))


def test_knet_checkpointer_refuses_unconverted_mmdet_checkpoint(tmp_path):
    path = tmp_path / "knet_s3_r50.pth"
    torch.save({"meta": {"CLASSES": ("a",)}, "state_dict": {"rpn_head.conv_seg.weight": torch.ones(1)}}, path)
    with pytest.raises(CheckpointLoadError, match="convert_knet_checkpoint.py"):
        KNetCheckpointer(nn.Linear(1, 1)).load(str(path))


def test_safetensors_round_trip(tmp_path):
    base = torch.randn(4, 3)
    sd = OrderedDict(
        [("a.weight", base), ("a.view", base[1:]), ("b.idx", torch.arange(5)), ("c", torch.tensor(2.5))]
    )
    meta = {"source": "mmdet-knet", "classes": ["person", "bicycle"]}
    path = tmp_path / "w.safetensors"
    save_checkpoint({"model": sd, "meta": meta}, path)
    loaded = load_checkpoint(path)
    assert list(loaded["model"]) == list(sd) or set(loaded["model"]) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded["model"][k], v) and loaded["model"][k].dtype == v.dtype
    assert loaded["meta"] == meta
    model = nn.Linear(3, 4)
    save_checkpoint({"model": {"weight": base, "bias": torch.ones(4)}}, tmp_path / "lin.safetensors")
    KNetCheckpointer(model).load(str(tmp_path / "lin.safetensors"))
    assert torch.equal(model.weight.data, base)


def test_safetensors_truncated_file_is_reported(tmp_path):
    path = tmp_path / "t.safetensors"
    save_checkpoint({"model": {"w": torch.randn(100)}}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointLoadError, match="t.safetensors"):
        load_checkpoint(path)


def _only(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.pth"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"x" * 1000)
            raise RuntimeError("disk full")
    assert _only(tmp_path) == []

    # an interrupted torch.save (it has written part of the file) neither creates nor corrupts the target
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert _only(tmp_path) == ["out.pth"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_knet_checkpointer_save_is_atomic(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ckpt = KNetCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000009", iteration=9)
    assert _only(tmp_path) == ["last_checkpoint", "model_0000009.pth"]
    monkeypatch.setattr(
        torch, "save", lambda obj, f, *a, **k: (f.write(b"half"), (_ for _ in ()).throw(OSError("boom")))
    )
    with pytest.raises(OSError, match="boom"):
        ckpt.save("model_0000019", iteration=19)
    monkeypatch.undo()
    assert _only(tmp_path) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    extra = KNetCheckpointer(nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
