"""Safe checkpoint reading and atomic writing.

* :func:`load_checkpoint` never executes code from a file: ``.pth``/``.pt``/``.pyth`` files are read with
  ``torch.load(..., weights_only=True)`` (tensors, containers, strings and numbers, plus numpy arrays and
  scalars, which hold data only); ``.safetensors`` files with the ``safetensors`` library; detectron2 ``.pkl``
  weight files with a restricted unpickler that accepts numpy arrays and plain containers only. Anything else
  fails with a :class:`CheckpointLoadError` naming the file, what was refused and what to do. There is no
  fallback to an unrestricted unpickler.
* :func:`save_checkpoint` / :func:`save_safetensors` write to a temporary file in the destination folder and
  ``os.replace`` it into place, so an interrupted write never leaves a partial file under the final name.
  A full disk (``ENOSPC``, also when torch wraps it in a ``RuntimeError``) raises :class:`CheckpointSaveError`
  saying what happened, which checkpoint is intact and what to do.
"""

import codecs
import contextlib
import errno
import json
import os
import pickle
import shutil
import tempfile
from collections import OrderedDict

import numpy as np
import torch

__all__ = [
    "CheckpointLoadError",
    "CheckpointSaveError",
    "atomic_write",
    "load_checkpoint",
    "load_safetensors",
    "save_checkpoint",
    "save_safetensors",
    "SAFETENSORS_META_KEY",
]

# Key of the JSON-encoded non-tensor entries in a .safetensors file's (string-only) metadata.
SAFETENSORS_META_KEY = "knet_checkpoint"


class CheckpointLoadError(RuntimeError):
    """A checkpoint file could not be read safely (or at all)."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written because the disk is full; no file was changed."""


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _no_space_error(err):
    """The ``OSError`` (ENOSPC/EDQUOT) in the chain of ``err`` (torch wraps it in a RuntimeError), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024.0


def _disk_full_message(path: str, existed: bool, cause: OSError) -> str:
    folder = os.path.dirname(path)
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    last = None
    with contextlib.suppress(OSError):
        with open(os.path.join(folder, "last_checkpoint")) as f:
            last = f.read().strip() or None
    if os.path.basename(path) == "last_checkpoint":
        intact = (f"'{path}' keeps its previous content" + (f" ('{last}')" if last else "") + ", a complete "
                  "checkpoint")
    elif last and os.path.isfile(os.path.join(folder, last)):
        intact = (f"The last complete checkpoint, '{os.path.join(folder, last)}' (named in "
                  f"'{os.path.join(folder, 'last_checkpoint')}'), is intact")
        if existed:
            intact += f", and the earlier '{os.path.basename(path)}' was not modified"
    elif existed:
        intact = f"The earlier '{path}' was not modified"
    else:
        intact = f"No earlier checkpoint exists in '{folder}'"
    return (
        f"Cannot save '{path}': no space left on the device ({free} in '{folder}'; {type(cause).__name__}: "
        f"{cause.strerror or cause}). Nothing was changed: no partial file is left. {intact}. Free disk "
        "space (e.g. delete old model_*.pth files) or set OUTPUT_DIR to a disk with room, then run the same "
        "command with --resume: training continues from the last complete checkpoint."
    )


def _numpy_safe_globals():
    """numpy reconstructors that create arrays / scalars / dtypes from data only (no user code runs)."""
    allowed = [np.ndarray, np.dtype]
    try:  # numpy >= 2 moved the pickle helpers to numpy._core (numpy.core still aliases them)
        from numpy._core import multiarray as _ma  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as _ma
    allowed += [_ma._reconstruct, _ma.scalar]
    try:
        from numpy.core import multiarray as _ma_old

        allowed += [_ma_old._reconstruct, _ma_old.scalar]
    except ImportError:  # pragma: no cover
        pass
    for code in ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d", "g", "U", "S"):
        allowed.append(type(np.dtype(code)))
    return list({id(x): x for x in allowed}.values())


def _torch_load_safely(path):
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    ctx = safe_globals(_numpy_safe_globals()) if safe_globals is not None else contextlib.nullcontext()
    with open(path, "rb") as f, ctx:
        return torch.load(f, map_location="cpu", weights_only=True)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 ``.pkl`` weight files: numpy arrays, plain containers, nothing else."""

    _ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol 2 writes bytes as (str, "latin1")
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(np.core.multiarray, name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":  # protocol 5
            return np.core.numeric._frombuffer
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(__import__("numpy.dtypes", fromlist=[name]), name)
        raise pickle.UnpicklingError(
            f"global '{module}.{name}' is not allowed (numpy arrays and containers only)"
        )


def _unsafe_message(path, err):
    return (
        f"Refusing to load checkpoint '{path}': it contains Python objects that can only be restored by "
        f"executing code from the file, and knet never does that ({type(err).__name__}: "
        f"{str(err).splitlines()[-1] if str(err) else err!r}). "
        "If the file comes from a source you trust, re-save only its tensors in a separate Python session "
        "(e.g. `torch.save({'model': sd}, 'clean.pth')` with `sd` a dict of tensors) or as .safetensors, and "
        "load that file instead."
    )


def load_safetensors(path):
    """Read a ``.safetensors`` file. Returns ``(OrderedDict name -> tensor, metadata dict of str -> str)``."""
    from safetensors import safe_open

    try:
        tensors = OrderedDict()
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointLoadError(
            f"Cannot read '{path}' as a .safetensors file ({type(e).__name__}: {e}). Is it truncated, or a "
            "pickle file renamed to .safetensors?"
        ) from e
    return tensors, metadata


def load_checkpoint(path):
    """Load a checkpoint file without executing code from it.

    Returns a dict. ``.safetensors`` files come back as ``{"model": tensors, **meta}`` where ``meta`` is the
    JSON decoded from the metadata key :data:`SAFETENSORS_META_KEY` (written by :func:`save_checkpoint`), if
    any. ``.pkl`` files (detectron2 weight format) are read with a numpy-only unpickler. Every other file is
    read with ``torch.load(weights_only=True)``. Raises :class:`CheckpointLoadError` with a clear message
    otherwise.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist (or is not a file).")
    if path.endswith(".safetensors"):
        tensors, metadata = load_safetensors(path)
        out = {"model": tensors}
        if SAFETENSORS_META_KEY in metadata:
            try:
                out.update(json.loads(metadata[SAFETENSORS_META_KEY]))
            except ValueError as e:
                raise CheckpointLoadError(
                    f"'{path}': the metadata entry '{SAFETENSORS_META_KEY}' is not valid JSON ({e})."
                ) from e
        return out
    if path.endswith(".pkl"):
        try:
            with open(path, "rb") as f:
                data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise CheckpointLoadError(_unsafe_message(path, e)) from e
        except Exception as e:
            raise CheckpointLoadError(f"Cannot read '{path}' as a pickle of numpy arrays ({e}).") from e
        if not isinstance(data, dict):
            raise CheckpointLoadError(
                f"'{path}': expected a dict at the top level, got {type(data).__name__}."
            )
        return data
    try:
        data = _torch_load_safely(path)
    except pickle.UnpicklingError as e:
        raise CheckpointLoadError(_unsafe_message(path, e)) from e
    except Exception as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "Unsupported operand" in msg:
            raise CheckpointLoadError(_unsafe_message(path, e)) from e
        raise CheckpointLoadError(
            f"Cannot read checkpoint '{path}' with torch.load "
            f"({type(e).__name__}: {msg.splitlines()[0] if msg else ''}). "
            "Is the file complete (not truncated) and a PyTorch checkpoint?"
        ) from e
    if not isinstance(data, dict):
        raise CheckpointLoadError(
            f"'{path}': expected a dict (a state dict, or a checkpoint with a 'model'/'state_dict' entry) "
            "at the "
            f"top level, got {type(data).__name__}."
        )
    return data


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path`` for writing; on success flush, fsync and ``os.replace`` it onto
    ``path``; on any exception remove it and re-raise, leaving ``path`` untouched (absent or the old file)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    existed = os.path.exists(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        cause = _no_space_error(e) if isinstance(e, Exception) else None
        if cause is not None:
            message = _disk_full_message(os.path.abspath(path), existed, cause)
            raise CheckpointSaveError(cause.errno, message) from None
        raise


def _contiguous_tensors(state_dict):
    out = OrderedDict()
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"safetensors stores tensors only; entry '{k}' is a {type(v).__name__}")
        out[k] = v.detach().cpu().contiguous()
    return out


def save_safetensors(state_dict, path, metadata=None):
    """Atomically write a dict of tensors to ``path`` (.safetensors). ``metadata``: dict of str -> str.

    Tensors that share memory are cloned first (safetensors refuses shared storage)."""
    from safetensors.torch import save

    tensors = _contiguous_tensors(state_dict)
    seen = set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        if ptr is not None and ptr in seen:
            tensors[k] = v.clone()
        elif ptr is not None:
            seen.add(ptr)
    blob = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_write(path, "wb") as f:
        f.write(blob)


def save_checkpoint(checkpoint, path):
    """Atomically save a checkpoint dict.

    ``.safetensors``: ``checkpoint["model"]`` (a dict of tensors) becomes the tensors; every other entry must
    be JSON-serialisable and is stored under the metadata key :data:`SAFETENSORS_META_KEY`.
    Anything else: ``torch.save`` to a temporary file, then ``os.replace``.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        if "model" not in checkpoint:
            raise ValueError(f"save_checkpoint('{path}'): a .safetensors checkpoint needs a 'model' entry")
        extra = {k: v for k, v in checkpoint.items() if k != "model"}
        try:
            meta = {SAFETENSORS_META_KEY: json.dumps(extra)} if extra else {}
        except TypeError as e:
            raise TypeError(
                f"save_checkpoint('{path}'): the non-tensor entries of a .safetensors checkpoint must be "
                f"JSON-serialisable ({e}); save as .pth instead"
            ) from e
        save_safetensors(checkpoint["model"], path, meta)
        return
    with atomic_write(path, "wb") as f:
        torch.save(checkpoint, f)
