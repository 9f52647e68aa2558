"""The pre-flight: what can be checked before any process starts or any model is built."""
from detectron2.config import CfgNode

from ..data.dataset_mappers.registry import KNET_MAPPER_REGISTRY
from ..data.metadata import check_dataset_metadata
from .config_loader import KNetConfigError

__all__ = ["preflight"]


def preflight(cfg: CfgNode, *, eval_only: bool = False) -> None:
    """Check that ``INPUT.DATASET_MAPPER_NAME`` names a registered mapper, then every dataset the run uses
    (:func:`knet.data.metadata.check_dataset_metadata`, strict; ``DATASETS.TEST`` only when ``eval_only``).
    Called by ``train_net.py`` before it starts its processes and by ``Trainer``; a second call for the same
    config and datasets checks nothing again.

    Raises:
        KNetConfigError: the mapper name is unknown (the message lists the registered ones).
        knet.data.metadata.DatasetMetadataError: a dataset is not registered or its metadata does not fit.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in KNET_MAPPER_REGISTRY:
        available = ", ".join(sorted(k for k, _ in KNET_MAPPER_REGISTRY))
        raise KNetConfigError(
            f"INPUT.DATASET_MAPPER_NAME = '{name}' is not a registered K-Net mapper; choose one of: "
            f"{available}."
        )
    check_dataset_metadata(cfg, train=not eval_only, strict=True)
