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


def _is_number(value) -> bool:
    """A config value that is an int or a float (YAML's booleans are ints to Python, so not those)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pastes(mapper_class) -> bool:
    """Whether a mapper applies ``INPUT.COPY_PASTE_PROB`` (its ``USES_COPY_PASTE``: the panoptic mappers)."""
    return getattr(mapper_class, "USES_COPY_PASTE", False)


def preflight(cfg: CfgNode, *, eval_only: bool = False) -> None:
    """Check that ``INPUT.DATASET_MAPPER_NAME`` names a registered mapper (that uses ``INPUT.CROP`` if it is
    enabled), then every dataset the run uses
    (:func:`knet.data.metadata.check_dataset_metadata`, strict; ``DATASETS.TEST`` only when ``eval_only``).
    Called by ``train_net.py`` before it starts its processes and by ``Trainer``; a second call for the same
    config and datasets checks nothing again.

    Raises:
        KNetConfigError: the mapper name is unknown (the message lists the registered ones), or
            ``INPUT.CROP.ENABLED`` is set for a mapper that does not apply it (training only), or
            ``INPUT.COPY_PASTE_PROB`` is outside [0, 1] or above 0 for a mapper that does not paste, or
            ``DATALOADER.DECODED_CACHE_MB`` is not a number >= 0.
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
    prob = cfg.INPUT.COPY_PASTE_PROB
    if not _is_number(prob) or not 0.0 <= prob <= 1.0:
        raise KNetConfigError(
            f"INPUT.COPY_PASTE_PROB must be a number in [0, 1] (the chance that a training image receives "
            f"things pasted from another; 0 turns copy-paste off), got {prob!r}."
        )
    cache_mb = cfg.DATALOADER.DECODED_CACHE_MB
    if not _is_number(cache_mb) or cache_mb < 0:
        raise KNetConfigError(
            f"DATALOADER.DECODED_CACHE_MB must be a number >= 0 (megabytes of decoded training images kept "
            f"in memory by each data-loader process; 0 turns the cache off), got {cache_mb!r}."
        )
    if not eval_only and prob > 0 and not _pastes(KNET_MAPPER_REGISTRY.get(name)):
        users = ", ".join(sorted(k for k, m in KNET_MAPPER_REGISTRY if _pastes(m)))
        raise KNetConfigError(
            f"INPUT.COPY_PASTE_PROB is {prob:g}, but the mapper INPUT.DATASET_MAPPER_NAME = '{name}' does "
            f"not paste (it would be ignored): set INPUT.COPY_PASTE_PROB 0, or choose a panoptic mapper: "
            f"{users}."
        )
    check_dataset_metadata(cfg, train=not eval_only, strict=True)
