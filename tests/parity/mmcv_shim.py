"""Test-only stand-in for mmcv's compiled ops (``mmcv.ops``), used by the mmsegmentation parity test.

mmsegmentation 1.2.2 imports names from ``mmcv.ops`` at import time (``point_sample``, ``sigmoid_focal_loss``,
``CrissCrossAttention``, ...). ``mmcv-lite`` ships the Python files of ``mmcv.ops`` but not the compiled
``mmcv._ext`` they load, so ``import mmcv.ops`` fails and with it ``import mmseg.models``. The K-Net head
(mmseg ``decode_heads/knet_head.py``) and the FCN/PSP/ASPP/UPer heads and ResNetV1c it is built on never call
a compiled op, so a module whose every attribute is a placeholder that raises when *used* is enough.

Never import this from the package: it is only for ``tests/test_parity_mmseg.py`` and ``tools/parity_env.sh``.
"""

import importlib.util
import sys
import types

__all__ = ["install_mmcv_ops_shim", "SHIM_MARKER"]

SHIM_MARKER = "__knet_mmcv_ops_shim__"


def _missing(name):
    def _raise(*args, **kwargs):
        raise RuntimeError(
            f"mmcv.ops.{name} is a compiled mmcv op, replaced by the knet parity test shim "
            "(tests/parity/mmcv_shim.py, mmcv1_shim.py); the reference code's path should never call it "
            "(install the full `mmcv` package to use it)."
        )

    # A class, so that both `op(...)` and `class X(op)` fail only when instantiated or called.
    return type(
        name, (), {"__new__": lambda cls, *a, **k: _raise(), "__call__": _raise, "__module__": "mmcv.ops"}
    )


class _OpsModule(types.ModuleType):
    """A module whose every public attribute is a placeholder for a compiled op (shared by both shims)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _missing(name)
        setattr(self, name, value)
        return value


def install_mmcv_ops_shim():
    """Put the stand-in at ``sys.modules['mmcv.ops']`` unless the compiled ops are really installed.

    Returns True when the shim is (now) in place, False when the real compiled ``mmcv.ops`` is available.
    Must run before ``import mmseg``.
    """
    current = sys.modules.get("mmcv.ops")
    if current is not None and getattr(current, SHIM_MARKER, False):
        return True
    if importlib.util.find_spec("mmcv") is None:
        raise ImportError(
            "mmcv is not installed; run `make parity` (tools/parity_env.sh) to create .venv-parity"
        )
    if importlib.util.find_spec("mmcv._ext") is not None:
        return False  # full mmcv with compiled ops: nothing to stand in for
    import mmcv

    shim = _OpsModule("mmcv.ops", __doc__)
    setattr(shim, SHIM_MARKER, True)
    # No __path__: `import mmcv.ops.<submodule>` raises ImportError, which mmcv's own optional imports catch.
    sys.modules["mmcv.ops"] = shim
    mmcv.ops = shim
    return True
