"""Test-only stand-in for the compiled ops of mmcv 1.x (``mmcv.ops``), used by the official-K-Net training
parity test (``tests/test_parity_train_knet.py``) in the layer ``.venv-parity-mmdet``.

mmcv 1.7.2 is built there with ``MMCV_WITH_OPS=0``: the Python files of ``mmcv.ops`` are installed but the
compiled ``mmcv._ext`` they load is not, so ``import mmcv.ops`` fails, and with it ``import mmdet.models``
(mmdet 2.28.2 imports ``batched_nms``, ``RoIPool``, ``DeformConv2d``, ... at module level). The official
K-Net's training path (ResNet, FPN, ``ConvKernelHead``, ``KernelIterHead``, the Hungarian assigner and the
losses) never calls a compiled op, so a module whose every attribute is a placeholder that raises when *used*
is enough; ``mmcv.ops.<submodule>`` imports get such a module too. mmcv 1.x and the mmcv-lite 2.x of
``.venv-parity`` share the module name, hence this separate file (``tests/parity/mmcv_shim.py`` is the mmcv
2.x one).

Never import this from the package: it is only for the parity tests and ``tools/parity_mmdet_env.sh``.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys

from parity.mmcv_shim import _OpsModule  # the placeholder module is the same for mmcv 1.x and 2.x

__all__ = ["install_mmcv1_ops_shim", "SHIM_MARKER"]

SHIM_MARKER = "__knet_mmcv1_ops_shim__"


def install_mmcv1_ops_shim():
    """Put the stand-in at ``sys.modules['mmcv.ops']`` unless mmcv's compiled ops are really installed.

    Returns True when the shim is (now) in place, False when the real compiled ``mmcv.ops`` is available.
    Must run before ``import mmdet``.
    """
    current = sys.modules.get("mmcv.ops")
    if current is not None and getattr(current, SHIM_MARKER, False):
        return True
    if importlib.util.find_spec("mmcv") is None:
        raise ImportError(
            "mmcv is not installed; run `make parity` (tools/parity_mmdet_env.sh creates .venv-parity-mmdet)"
        )
    import mmcv

    if not str(getattr(mmcv, "__version__", "")).startswith("1."):
        raise ImportError(
            f"tests/parity/mmcv1_shim.py is for mmcv 1.x, found mmcv {mmcv.__version__}; "
            "use .venv-parity-mmdet (tools/parity_mmdet_env.sh)"
        )
    if importlib.util.find_spec("mmcv._ext") is not None:
        return False  # full mmcv with compiled ops: nothing to stand in for
    shim = _OpsModule("mmcv.ops", __doc__)
    setattr(shim, SHIM_MARKER, True)
    # A package whose submodules are stand-ins too: mmdet 2.28.2 falls back from
    # `from mmcv.ops.multi_scale_deform_attn import X` to an mmcv 1.x name that does not exist, so the
    # submodule import has to succeed.
    shim.__path__ = []
    sys.modules["mmcv.ops"] = shim
    mmcv.ops = shim
    sys.meta_path.insert(0, _SubmoduleFinder())
    return True


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every ``mmcv.ops.<name>`` as another stand-in module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("mmcv.ops.") and getattr(sys.modules.get("mmcv.ops"), SHIM_MARKER, False):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _OpsModule(spec.name, __doc__)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass
