"""detectron2's model-zoo config files without importing ``detectron2.model_zoo`` when that fails.

``detectron2.model_zoo`` imports ``pkg_resources`` at module level (v0.6 and main, up to at least commit
02b5c4e, June 2026) to find its bundled yaml files; setuptools no longer ships ``pkg_resources``, so with a
detectron2 built from source that import fails. (The detectron2 that ``tools/install_detectron2.py`` builds
has this rewritten.) :func:`get_config_file` uses ``detectron2.model_zoo`` when it imports and otherwise finds
the same file next to it, from the installed package's location, without importing it.
"""
import importlib.util
import os

__all__ = ["get_config_file"]


def get_config_file(config_path: str) -> str:
    """The path of detectron2's bundled config ``config_path`` (e.g.
    ``"COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"``), as
    ``detectron2.model_zoo.get_config_file``."""
    try:
        from detectron2 import model_zoo
    except ImportError as e:  # pkg_resources missing (current setuptools)
        reason = f"detectron2.model_zoo does not import ({e})"
    else:
        return model_zoo.get_config_file(config_path)
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("detectron2 is not installed; run `make venv` (or tools/install_detectron2.py).")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "model_zoo", "configs", config_path)
        if os.path.isfile(path):
            return path
    raise RuntimeError(
        f"{config_path} not found in detectron2's model zoo ({reason}; looked in "
        f"{', '.join(os.path.join(r, 'model_zoo', 'configs') for r in spec.submodule_search_locations)}). "
        "Install detectron2 with its bundled configs (pip install from a detectron2 source tree) or pass an "
        "explicit config file."
    )
