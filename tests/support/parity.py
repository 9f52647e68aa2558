"""Helpers shared by the reference-comparison tests of tests/parity/ (``-m parity`` / ``-m parity_mmdet``)."""
import importlib.util
import logging
import os

import pytest

from support.scripts import REPO

__all__ = ["REPO", "install_ops_shim", "mmseg_modules", "syncbn_to_bn"]


def install_ops_shim(filename: str, installer: str) -> None:
    """Load the test-only ``mmcv.ops`` shim ``tests/parity/{filename}`` and call its ``installer``."""
    name = "knet_parity_" + os.path.splitext(filename)[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tests", "parity", filename))
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    getattr(shim, installer)()


def mmseg_modules() -> dict:
    """mmsegmentation's ``Config``, ``MODELS`` and K-Net config folder, imported behind the test-only
    ``mmcv.ops`` shim; skips the test with the reason when mmsegmentation is absent."""
    if importlib.util.find_spec("mmseg") is None or importlib.util.find_spec("mmcv") is None:
        pytest.skip(
            "mmsegmentation is not installed in this environment: run `make parity` "
            "(tools/parity_env.sh creates .venv-parity with mmsegmentation 1.2.2, mmcv-lite, mmengine)"
        )
    install_ops_shim("mmcv_shim.py", "install_mmcv_ops_shim")
    import mmseg
    import mmseg.models  # noqa: F401  (registers the modules)
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every parameter at INFO
    return {
        "Config": Config,
        "MODELS": MODELS,
        "config_dir": os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", "knet"),
    }


def syncbn_to_bn(node) -> None:
    """Replace ``type="SyncBN"`` by ``"BN"`` in place, anywhere in a nested mmengine config dict."""
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for v in node.values():
            syncbn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            syncbn_to_bn(v)
