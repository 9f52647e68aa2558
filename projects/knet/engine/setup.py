"""Config loading and pre-flight checks for ``train_net.py`` and the tools.

* :func:`load_config`: ``get_cfg`` + ``add_knet_config`` + ``merge_from_file`` + ``merge_from_list``; an
  unknown or mistyped key raises :class:`KNetConfigError` naming the key, where it came from (the yaml file
  or the command line) and the closest existing keys.
* :func:`setup`: the above, frozen, then detectron2's ``default_setup`` (logging, config backup, seeding).
* :func:`check_dataset_metadata`: fails before any model is built when a dataset is not registered or its
  metadata lacks a key that the chosen mapper or evaluator reads.
"""
import difflib
import logging
import os
from typing import Iterable, List, Optional

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_knet_config
from ..data.dataset_mappers.registry import KNET_MAPPER_REGISTRY
from ..evaluation.build import KNetMetadataError, missing_evaluator_metadata

__all__ = [
    "KNetConfigError",
    "KNetMetadataError",
    "MAPPER_REQUIRED_METADATA",
    "load_config",
    "setup",
    "check_dataset_metadata",
]

logger = logging.getLogger(__name__)

# Metadata keys read by the training mappers, by INPUT.DATASET_MAPPER_NAME (names registered in
# knet.data.dataset_mappers.KNET_MAPPER_REGISTRY). A mapper class may also declare its own
# ``REQUIRED_METADATA`` tuple, which takes precedence.
_PANOPTIC_KEYS = ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id", "ignore_label")
MAPPER_REQUIRED_METADATA = {
    "knet_panoptic": _PANOPTIC_KEYS,
    "knet_panoptic_lsj": _PANOPTIC_KEYS,
    "knet_instance": ("thing_dataset_id_to_contiguous_id",),
    "knet_instance_lsj": ("thing_dataset_id_to_contiguous_id",),
    "knet_semantic": ("ignore_label", "stuff_classes"),
}


class KNetConfigError(ValueError):
    """A config file or a command-line override is wrong (unknown key, bad value, missing file)."""


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CfgNode):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _bad_key(cfg: CfgNode, message: str) -> Optional[str]:
    """The dotted key named in a yacs error message, if any."""
    for marker in ("Non-existent config key: ", "Non-existent key: "):
        if marker in message:
            return message.split(marker, 1)[1].strip().strip("'\"").split()[0]
    return None


def _explain(cfg: CfgNode, err: Exception, source: str) -> KNetConfigError:
    message = err.args[0] if err.args else str(err)
    message = str(message)
    key = _bad_key(cfg, message)
    if key is not None:
        close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return KNetConfigError(
            f"Unknown config key '{key}' in {source}.{hint} Every valid key is defined in detectron2's "
            "defaults or in knet/config.py (add_knet_config); fix or remove that key."
        )
    return KNetConfigError(f"Invalid config in {source}: {message}")


def load_config(config_file: str = "", opts: Optional[Iterable[str]] = None) -> CfgNode:
    """``get_cfg()`` + ``add_knet_config`` + the yaml file (with ``_BASE_`` inheritance) + ``opts``
    (``["KEY", "VALUE", ...]``). Not frozen.

    Raises:
        KNetConfigError: the file is missing, or a key in the file or in ``opts`` does not exist or has a
            value of the wrong type (the message names the key and the file / the command line).
    """
    cfg = get_cfg()
    add_knet_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise KNetConfigError(f"Config file '{config_file}' does not exist (--config-file).")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError, ValueError, TypeError) as e:
            raise _explain(cfg, e, f"config file '{config_file}' (or a _BASE_ file it inherits)") from e
    opts = list(opts or [])
    if opts:
        if len(opts) % 2:
            raise KNetConfigError(
                f"Command-line overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
            )
        try:
            cfg.merge_from_list(opts)
        except (KeyError, AssertionError, ValueError, TypeError) as e:
            raise _explain(cfg, e, "the command-line overrides (opts)") from e
    return cfg


def use_cpu_without_cuda(cfg: CfgNode) -> None:
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is '%s' but CUDA is not available: using 'cpu'.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"


def setup(args) -> CfgNode:
    """Config for ``train_net.py``: :func:`load_config` from ``args.config_file`` and ``args.opts``, frozen,
    then detectron2's ``default_setup`` (output dir, logs, config backup, ``SEED``). On a machine without
    CUDA a ``cuda`` device falls back to ``cpu`` (with a warning). Command-line arguments are not changed."""
    cfg = load_config(getattr(args, "config_file", ""), getattr(args, "opts", None))
    use_cpu_without_cuda(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="knet")
    return cfg


def _registered(name: str, role: str) -> None:
    if name not in DatasetCatalog.list():
        close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KNetMetadataError(
            f"Dataset '{name}' ({role}) is not registered in DatasetCatalog.{hint} Register it before "
            "training (see docs/custom_datasets.md); `import knet` registers the built-in K-Net datasets."
        )


def _mapper_required_metadata(cfg: CfgNode) -> tuple:
    """The metadata keys the training mapper reads (its ``REQUIRED_METADATA``, else the table above)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in KNET_MAPPER_REGISTRY:
        available = ", ".join(sorted(k for k, _ in KNET_MAPPER_REGISTRY))
        raise KNetConfigError(
            f"INPUT.DATASET_MAPPER_NAME = '{name}' is not a registered K-Net mapper; choose one of: "
            f"{available}."
        )
    declared = getattr(KNET_MAPPER_REGISTRY.get(name), "REQUIRED_METADATA", None)
    if declared is not None:
        return tuple(declared)
    return MAPPER_REQUIRED_METADATA.get(name, ())


def _load_if_missing(name: str, missing: List[str]) -> None:
    """detectron2's loaders (``load_coco_json``, ``load_coco_panoptic_json``) fill some metadata only when the
    dataset is loaded (``register_coco_instances`` sets ``thing_classes`` and the id map lazily): load it once
    before calling a key missing."""
    if missing:
        logger.info(f"Loading dataset '{name}' to complete its metadata (missing: {', '.join(missing)}) ...")
        DatasetCatalog.get(name)


def check_dataset_metadata(cfg: CfgNode, *, train: bool = True, test: bool = True) -> None:
    """Fail early when a dataset of ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is not registered, or lacks a
    metadata key that the training mapper (``INPUT.DATASET_MAPPER_NAME``) or its evaluator reads.

    A dataset whose metadata lacks a key is loaded once first (detectron2 fills some keys at load time).

    Raises:
        KNetMetadataError: the message names the dataset and the missing key.
    """
    if train:
        required = _mapper_required_metadata(cfg)
        for name in cfg.DATASETS.TRAIN:
            _registered(name, "DATASETS.TRAIN")
            meta = MetadataCatalog.get(name)
            _load_if_missing(name, [k for k in required if meta.get(k, None) is None])
            missing = [k for k in required if meta.get(k, None) is None]
            if missing:
                raise KNetMetadataError(
                    f"Dataset '{name}' (DATASETS.TRAIN) lacks the metadata key(s) "
                    f"{', '.join(repr(k) for k in missing)} needed by the mapper "
                    f"INPUT.DATASET_MAPPER_NAME='{cfg.INPUT.DATASET_MAPPER_NAME}'. Set them with "
                    f"MetadataCatalog.get('{name}').set(...); see docs/custom_datasets.md."
                )
    if test:
        for name in cfg.DATASETS.TEST:
            _registered(name, "DATASETS.TEST")
            etype, missing = missing_evaluator_metadata(cfg, name)
            if missing:
                _load_if_missing(name, missing)
                etype, missing = missing_evaluator_metadata(cfg, name)
            if missing:
                raise KNetMetadataError(
                    f"Dataset '{name}' (DATASETS.TEST, evaluator_type '{etype}') lacks the metadata key(s) "
                    f"{', '.join(repr(k) for k in missing)} needed by its evaluator. Set them with "
                    f"MetadataCatalog.get('{name}').set(...); see docs/custom_datasets.md."
                )
