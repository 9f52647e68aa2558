"""Putting a dataset into detectron2's catalogs, one way for every K-Net registration."""
from typing import Callable, List

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["check_name_prefix", "register_dataset"]


def check_name_prefix(prefix: str) -> None:
    """K-Net registers its datasets under names that start with ``knet_`` (never a detectron2 builtin)."""
    if not prefix.startswith("knet_"):
        raise ValueError(f"Registered dataset names must start with 'knet_', got prefix {prefix!r}")


def register_dataset(name: str, loader: Callable[[], List[dict]], metadata: dict) -> str:
    """Register ``loader`` (called when the dataset is first loaded) and ``metadata`` under ``name``.

    Registering a name again replaces it (e.g. to point the names at another folder, as tests do). Touches no
    disk. Returns ``name``.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    return name
