"""The pre-flight: what can be checked before any process starts or any model is built."""
from detectron2.config import CfgNode

from ..data.dataset_mappers.registry import KNET_MAPPER_REGISTRY
from ..data.metadata import check_dataset_metadata
from .config_loader import KNetConfigError

__all__ = ["preflight"]


def _uses_crop(mapper_class) -> bool:
    """A mapper's ``USES_INPUT_CROP`` (:class:`~knet.data.dataset_mappers.base.KNetDatasetMapperBase`); a
    registered mapper of another lineage is assumed to read ``INPUT.CROP`` itself."""
    return getattr(mapper_class, "USES_INPUT_CROP", True)


def preflight(cfg: CfgNode, *, eval_only: bool = False) -> None:
    """Check that ``INPUT.DATASET_MAPPER_NAME`` names a registered mapper (that uses ``INPUT.CROP`` if it is
    enabled), then every dataset the run uses
    (:func:`knet.data.metadata.check_dataset_metadata`, strict; ``DATASETS.TEST`` only when ``eval_only``).
    Called by ``train_net.py`` before it starts its processes and by ``Trainer``; a second call for the same
    config and datasets checks nothing again.

    Raises:
        KNetConfigError: the mapper name is unknown (the message lists the registered ones), or
            ``INPUT.CROP.ENABLED`` is set for a mapper that does not apply it (training only).
        knet.data.metadata.DatasetMetadataError: a dataset is not registered or its metadata does not fit.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in KNET_MAPPER_REGISTRY:
        available = ", ".join(sorted(k for k, _ in KNET_MAPPER_REGISTRY))
        raise KNetConfigError(
            f"INPUT.DATASET_MAPPER_NAME = '{name}' is not a registered K-Net mapper; choose one of: "
            f"{available}."
        )
    if not eval_only and cfg.INPUT.CROP.ENABLED and not _uses_crop(KNET_MAPPER_REGISTRY.get(name)):
        users = ", ".join(sorted(k for k, m in KNET_MAPPER_REGISTRY if _uses_crop(m)))
        raise KNetConfigError(
            f"INPUT.CROP.ENABLED is True, but the mapper INPUT.DATASET_MAPPER_NAME = '{name}' does not use "
            f"INPUT.CROP (it would be ignored): set INPUT.CROP.ENABLED False, or choose a mapper that crops "
            f"with it: {users}."
        )
    check_dataset_metadata(cfg, train=not eval_only, strict=True)
