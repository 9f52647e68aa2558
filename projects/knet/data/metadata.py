"""The dataset-metadata check: one function, one error class, run once per datasets and config.

What is required is declared where it is read: each mapper's ``REQUIRED_METADATA`` (training datasets,
``INPUT.DATASET_MAPPER_NAME``) and ``knet.evaluation.build.EVALUATOR_REQUIRED_METADATA`` (test datasets, by
``evaluator_type``). :func:`check_dataset_metadata` is called by the pre-flight of ``train_net.py`` / the
``Trainer`` (``knet.engine.preflight``), by the training mappers and by the model; a dataset that passed for
the same config values is not checked again.
"""
import difflib
import logging
from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["DatasetMetadataError", "check_dataset_metadata", "check_registered", "missing_metadata_error"]

logger = logging.getLogger(__name__)

_TRAIN, _TEST = "DATASETS.TRAIN", "DATASETS.TEST"
_THING_KEY = "thing_dataset_id_to_contiguous_id"

# (role, dataset name, strict, config values the check reads) -> the Metadata object that passed. A dataset
# registered again gets a new Metadata object, so it is checked again; existing keys cannot change value.
_PASSED = {}


class DatasetMetadataError(ValueError):
    """A dataset used by the config is not registered, or its metadata lacks (or contradicts) what a mapper,
    an evaluator or the model reads. The message names the dataset, the key and the fix."""


def missing_metadata_error(name: str, role: str, missing: Sequence[str], reader: str):
    """The error for dataset ``name`` (``role``: where the config lists it) lacking the keys ``missing``,
    which ``reader`` (e.g. "the mapper INPUT.DATASET_MAPPER_NAME='knet_panoptic'") needs: a
    :class:`DatasetMetadataError`."""
    return DatasetMetadataError(
        f"Dataset '{name}' ({role}) lacks the metadata key(s) {', '.join(repr(k) for k in missing)} "
        f"needed by {reader}. Set them with MetadataCatalog.get('{name}').set(...); see "
        "docs/custom_datasets.md."
    )


def check_registered(name: str, role: str) -> None:
    """Raise :class:`DatasetMetadataError` (with the closest registered names) if ``name`` is not in
    ``DatasetCatalog``; ``role`` says where the config lists it (e.g. ``"DATASETS.TRAIN"``)."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DatasetMetadataError(
            f"Dataset '{name}' ({role}) is not registered in DatasetCatalog.{hint} Register it before "
            "training (see docs/custom_datasets.md); `import knet` registers the built-in K-Net datasets."
        )


def _num_thing_classes(meta) -> Optional[int]:
    """Thing classes of a dataset: ``thing_dataset_id_to_contiguous_id`` when present (detectron2's standard
    panoptic metadata lists all classes in ``thing_classes``), else ``thing_classes``; None if neither."""
    mapping = meta.get(_THING_KEY, None)
    if mapping is not None:
        return len(mapping)
    classes = meta.get("thing_classes", None)
    return None if classes is None else len(classes)


def _num_classes(meta) -> Optional[int]:
    """All classes of a panoptic / semantic dataset: ``stuff_classes`` (for panoptic datasets detectron2 lists
    every class there, things first), else ``stuff_dataset_id_to_contiguous_id``; None if neither."""
    classes = meta.get("stuff_classes", None)
    if classes is not None:
        return len(classes)
    mapping = meta.get("stuff_dataset_id_to_contiguous_id", None)
    return None if mapping is None else len(mapping)


def _check_class_counts(cfg: CfgNode, name: str, role: str, meta, semantic: bool) -> None:
    """The dataset's class counts against ``MODEL.KNET``: its thing classes == ``NUM_THING_CLASSES`` (not for
    semantic models); its classes == ``NUM_CLASSES`` for panoptic and semantic models and on panoptic datasets
    (metadata ``panoptic_json``). Counts the metadata does not hold are not checked."""
    k = cfg.MODEL.get("KNET", None)
    if k is None:
        return
    things = None if semantic else _num_thing_classes(meta)
    if things is not None and things != k.NUM_THING_CLASSES:
        raise DatasetMetadataError(
            f"MODEL.KNET.NUM_THING_CLASSES = {k.NUM_THING_CLASSES}, but dataset '{name}' ({role}) has "
            f"{things} thing classes in its metadata; set MODEL.KNET.NUM_THING_CLASSES to {things}."
        )
    panoptic_data = meta.get("panoptic_json", None) is not None
    total = _num_classes(meta) if (semantic or k.NUM_CLASSES > k.NUM_THING_CLASSES or panoptic_data) else None
    if total is not None and total != k.NUM_CLASSES:
        raise DatasetMetadataError(
            f"MODEL.KNET.NUM_CLASSES = {k.NUM_CLASSES}, but dataset '{name}' ({role}) has {total} classes "
            "(stuff_classes; for panoptic datasets it lists all classes, things first) in its metadata; set "
            f"MODEL.KNET.NUM_CLASSES to {total}."
        )


def _mapper_required_metadata(cfg: CfgNode) -> tuple:
    """The ``REQUIRED_METADATA`` of the mapper ``INPUT.DATASET_MAPPER_NAME`` (empty for an unknown name: the
    pre-flight and ``build_mapper`` reject it, naming the registered mappers)."""
    from .dataset_mappers.registry import KNET_MAPPER_REGISTRY  # the mappers import this module

    name = cfg.INPUT.get("DATASET_MAPPER_NAME", "")
    return tuple(KNET_MAPPER_REGISTRY.get(name).REQUIRED_METADATA) if name in KNET_MAPPER_REGISTRY else ()


def _require(name: str, role: str, needs) -> None:
    """Raise :func:`missing_metadata_error` if ``needs()`` (-> ``(reader, missing keys)``) reports missing
    keys after loading the dataset once: detectron2's loaders (``load_coco_json``,
    ``load_coco_panoptic_json``) fill some metadata only when the dataset is loaded."""
    reader, missing = needs()
    if missing:
        logger.info(f"Loading dataset '{name}' to complete its metadata (missing: {', '.join(missing)}) ...")
        DatasetCatalog.get(name)
        reader, missing = needs()
    if missing:
        raise missing_metadata_error(name, role, missing, reader)


def _mapper_needs(cfg: CfgNode, meta, required: tuple):
    reader = f"the mapper INPUT.DATASET_MAPPER_NAME='{cfg.INPUT.DATASET_MAPPER_NAME}'"
    return reader, [k for k in required if meta.get(k, None) is None]


def _evaluator_needs(cfg: CfgNode, name: str):
    from ..evaluation.build import missing_evaluator_metadata  # knet.evaluation imports this module

    etype, missing = missing_evaluator_metadata(cfg, name)
    return f"its evaluator (evaluator_type '{etype}')", missing


def _config_values(cfg: CfgNode, role: str, semantic: bool) -> tuple:
    """The config values a dataset's check reads (part of the key under which a passed check is kept)."""
    k = cfg.MODEL.get("KNET", None)
    counts = (k.NUM_CLASSES, k.NUM_THING_CLASSES) if k is not None else ()
    if role == _TRAIN:
        return (cfg.INPUT.get("DATASET_MAPPER_NAME", ""), semantic) + counts
    test = k.get("TEST", {}) if k is not None else {}
    flags = tuple(test.get(f, True) for f in ("PANOPTIC_ON", "INSTANCE_ON", "SEMANTIC_ON"))
    return flags + (semantic,) + counts


def check_dataset_metadata(
    cfg: CfgNode, *, train: bool = True, test: bool = True, strict: bool = False,
    semantic: Optional[bool] = None,
) -> List:
    """Check the datasets of ``DATASETS.TRAIN`` (``train``) and ``DATASETS.TEST`` (``test``) against ``cfg``.

    * ``strict`` (pre-flight, training mappers): every dataset is registered; a training dataset has the keys
      its mapper declares (``REQUIRED_METADATA`` of ``INPUT.DATASET_MAPPER_NAME``), a test dataset those its
      evaluator reads; the training datasets agree on ``ignore_label``. A dataset lacking a key is loaded once
      first (detectron2 fills some keys at load time).
    * always (also for the model, which is built outside training runs too: demo, export): the class counts
      of the registered datasets match ``MODEL.KNET.NUM_THING_CLASSES`` / ``NUM_CLASSES`` (see
      :func:`_check_class_counts`); unregistered datasets are skipped when not ``strict``.

    A dataset that passed for the same config values (and the same registration) is not checked again: one run
    checks each dataset once, however many of the pre-flight, the mappers and the model ask.

    Args:
        semantic: the model predicts no thing classes (the thing count is not compared). Default: the mapper
            ``INPUT.DATASET_MAPPER_NAME`` reads no thing metadata.

    Returns:
        the ``Metadata`` of the (registered) ``DATASETS.TRAIN`` datasets in order when ``train``, else ``[]``.

    Raises:
        DatasetMetadataError: naming the dataset, the key and the fix.
    """
    required = _mapper_required_metadata(cfg)
    if semantic is None:
        semantic = bool(required) and _THING_KEY not in required
    roles = ([(_TRAIN, n) for n in cfg.DATASETS.TRAIN] if train else []) + (
        [(_TEST, n) for n in cfg.DATASETS.TEST] if test else []
    )
    registered = set(DatasetCatalog.list())
    for role, name in roles:
        if name not in registered:
            if strict:
                check_registered(name, role)
            continue
        meta = MetadataCatalog.get(name)
        values = _config_values(cfg, role, semantic)
        if any(_PASSED.get((role, name, s, values)) is meta for s in {strict, True}):
            continue
        if strict and role == _TRAIN:
            _require(name, role, lambda: _mapper_needs(cfg, meta, required))
        elif strict:
            _require(name, role, lambda: _evaluator_needs(cfg, name))
        _check_class_counts(cfg, name, role, meta, semantic)
        _PASSED[(role, name, strict, values)] = meta
    if not train:
        return []
    if strict and "ignore_label" in required:
        labels = {n: MetadataCatalog.get(n).ignore_label for n in cfg.DATASETS.TRAIN}
        if len(set(labels.values())) > 1:
            raise DatasetMetadataError(
                f"The training datasets (DATASETS.TRAIN) disagree on the metadata 'ignore_label': {labels}; "
                "one model is trained on all of them: give them the same ignore_label."
            )
    return [MetadataCatalog.get(n) for n in cfg.DATASETS.TRAIN if n in registered]
