"""Choose detectron2 evaluators from a dataset's metadata (``evaluator_type``).

This replaces the dataset-specific if/else that Mask2Former keeps in ``Trainer.build_evaluator``
(facebookresearch/Mask2Former, ``train_net.py``): ``train_net.py`` stays thin and custom datasets only need
the right metadata. Supported ``evaluator_type`` values:

* ``"coco_panoptic_seg"`` (also ``"ade20k_panoptic_seg"``): ``COCOPanopticEvaluator`` (PQ); plus
  ``COCOEvaluator`` (mask AP) when the metadata has ``json_file`` and the model outputs instances
  (``MODEL.KNET.TEST.INSTANCE_ON``); plus ``SemSegEvaluator`` (mIoU) when the metadata has ``sem_seg_root``
  and the model outputs semantic maps (``MODEL.KNET.TEST.SEMANTIC_ON``);
* ``"coco"``: ``COCOEvaluator`` on the ``segm`` task (box AP is meaningless for a box-free model);
* ``"sem_seg"``: ``SemSegEvaluator``.

Fallback: when ``evaluator_type`` is missing, the type is inferred from the other metadata keys (panoptic
json → panoptic, COCO json → instance, semantic root or ``stuff_classes`` + ``ignore_label`` → semantic).
Everything else raises :class:`knet.data.metadata.DatasetMetadataError` naming the dataset and the missing
key.
"""
import logging
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from ..data.metadata import DatasetMetadataError, missing_metadata_error
from .coverage import KNetDatasetEvaluators

__all__ = [
    "EVALUATOR_REQUIRED_METADATA",
    "build_evaluator",
    "resolve_evaluator_type",
    "missing_evaluator_metadata",
]

logger = logging.getLogger(__name__)

# Metadata keys each evaluator type reads (detectron2 v0.6, detectron2/evaluation/*.py).
EVALUATOR_REQUIRED_METADATA: Dict[str, Tuple[str, ...]] = {
    # COCOPanopticEvaluator: id maps in __init__, panoptic_json/panoptic_root in evaluate()
    "coco_panoptic_seg": (
        "panoptic_json",
        "panoptic_root",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
    ),
    # COCOEvaluator: class names (and json_file, or it converts the dataset dicts into output_dir)
    "coco": ("thing_classes",),
    # SemSegEvaluator: class list and the ignore value of the ground-truth PNGs
    "sem_seg": ("stuff_classes", "ignore_label"),
}
_ALIASES = {"ade20k_panoptic_seg": "coco_panoptic_seg"}
SUPPORTED_EVALUATOR_TYPES = tuple(EVALUATOR_REQUIRED_METADATA) + tuple(_ALIASES)


def _has(meta, key: str) -> bool:
    return meta.get(key, None) is not None


def resolve_evaluator_type(dataset_name: str) -> str:
    """Return the canonical evaluator type of a registered dataset.

    Reads ``MetadataCatalog.get(dataset_name).evaluator_type``; when it is missing, infers the type from the
    other metadata keys (and logs that it did). Raises :class:`DatasetMetadataError` when nothing fits.
    """
    meta = MetadataCatalog.get(dataset_name)
    etype = meta.get("evaluator_type", None)
    if etype is not None:
        etype = _ALIASES.get(etype, etype)
        if etype not in EVALUATOR_REQUIRED_METADATA:
            raise DatasetMetadataError(
                f"Dataset '{dataset_name}' has metadata evaluator_type='{meta.evaluator_type}', which K-Net "
                f"cannot evaluate. Supported: {', '.join(SUPPORTED_EVALUATOR_TYPES)}. Set "
                f"MetadataCatalog.get('{dataset_name}').evaluator_type to one of them, or pass your own "
                "evaluator to Trainer.test(cfg, model, evaluators=...)."
            )
        return etype
    if _has(meta, "panoptic_json") and _has(meta, "panoptic_root"):
        inferred = "coco_panoptic_seg"
    elif _has(meta, "json_file"):
        inferred = "coco"
    elif _has(meta, "sem_seg_root") or (_has(meta, "stuff_classes") and _has(meta, "ignore_label")):
        inferred = "sem_seg"
    else:
        raise DatasetMetadataError(
            f"Dataset '{dataset_name}' has no metadata key 'evaluator_type' and none of the keys it could be "
            "inferred from (panoptic_json + panoptic_root, json_file, sem_seg_root, stuff_classes + "
            f"ignore_label). Register it with e.g. MetadataCatalog.get('{dataset_name}').set("
            "evaluator_type='sem_seg', ...); see docs/custom_datasets.md."
        )
    logger.warning(
        f"Dataset '{dataset_name}' has no metadata 'evaluator_type'; inferred '{inferred}' from its other "
        "keys."
    )
    return inferred


def _task_flags(cfg) -> Tuple[bool, bool, bool]:
    """(panoptic_on, instance_on, semantic_on) from ``MODEL.KNET.TEST`` (all on when the keys are absent)."""
    test = cfg.MODEL.get("KNET", {}).get("TEST", {})
    return (
        bool(test.get("PANOPTIC_ON", True)),
        bool(test.get("INSTANCE_ON", True)),
        bool(test.get("SEMANTIC_ON", True)),
    )


def missing_evaluator_metadata(cfg, dataset_name: str) -> Tuple[str, List[str]]:
    """Return ``(evaluator_type, missing_keys)`` for ``dataset_name``: the metadata keys that the evaluators
    :func:`build_evaluator` would build for it need but the dataset lacks (empty when all are present)."""
    meta = MetadataCatalog.get(dataset_name)
    etype = resolve_evaluator_type(dataset_name)
    required = list(EVALUATOR_REQUIRED_METADATA[etype])
    if etype == "coco_panoptic_seg":
        _, instance_on, semantic_on = _task_flags(cfg)
        if semantic_on and _has(meta, "sem_seg_root"):
            required += [k for k in EVALUATOR_REQUIRED_METADATA["sem_seg"] if k not in required]
    return etype, [k for k in required if not _has(meta, k)]


def build_evaluator(cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluators:
    """Build the evaluators for one test dataset, chosen from its metadata ``evaluator_type``.

    Args:
        cfg: the config (reads ``OUTPUT_DIR`` and ``MODEL.KNET.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``).
        dataset_name: a name registered in ``DatasetCatalog``/``MetadataCatalog``.
        output_folder: where evaluators write predictions; default ``<OUTPUT_DIR>/inference``.

    Returns:
        ``KNetDatasetEvaluators`` (a ``DatasetEvaluators``) wrapping every evaluator that applies; it leaves
        the images skipped for bad data files out of the metrics and says so
        (:mod:`knet.evaluation.coverage`).

    Raises:
        DatasetMetadataError: the metadata lacks the evaluator type (and it cannot be inferred), or a key an
            evaluator needs; the message names the dataset and the key.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    etype, missing = missing_evaluator_metadata(cfg, dataset_name)
    if missing:
        reader = f"its evaluator (evaluator_type '{etype}')"
        raise missing_metadata_error(dataset_name, "to be evaluated", missing, reader)
    meta = MetadataCatalog.get(dataset_name)
    panoptic_on, instance_on, semantic_on = _task_flags(cfg)
    evaluators = []
    if etype == "coco_panoptic_seg":
        if panoptic_on:
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if instance_on:
            if _has(meta, "json_file"):
                evaluators.append(
                    COCOEvaluator(
                        dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False
                    )
                )
            else:
                logger.warning(f"Dataset '{dataset_name}' has no metadata 'json_file': mask AP is skipped.")
        if semantic_on:
            if _has(meta, "sem_seg_root"):
                evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
            else:
                logger.warning(f"Dataset '{dataset_name}' has no metadata 'sem_seg_root': mIoU is skipped.")
    elif etype == "coco":
        evaluators.append(
            COCOEvaluator(dataset_name, tasks=("segm",), output_dir=output_folder, use_fast_impl=False)
        )
    elif etype == "sem_seg":
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if not evaluators:
        raise DatasetMetadataError(
            f"No evaluator applies to dataset '{dataset_name}' (evaluator_type '{etype}'): the model's "
            f"enabled outputs are panoptic={panoptic_on}, instance={instance_on}, semantic={semantic_on} "
            "(MODEL.KNET.TEST.*_ON). Enable the output this dataset is evaluated on."
        )
    logger.info(
        f"Evaluators for '{dataset_name}' ({etype}): " + ", ".join(type(e).__name__ for e in evaluators)
    )
    return KNetDatasetEvaluators(evaluators, dataset_name)
