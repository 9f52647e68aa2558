"""Training-set filters that reproduce the official K-Net data selection on detectron2 dataset dicts.

The official K-Net panoptic models train on mmdet's ``CocoPanopticDataset`` (ZwwWayne/K-Net
``configs/det/_base_/datasets/coco_panoptic.py``, ``configs/det/common/mstrain_3x_coco_panoptic.py``). In
training mode (``test_mode=False``, ``filter_empty_gt=True``, the defaults) mmdet 2.28.2
``mmdet/datasets/coco_panoptic.py::CocoPanopticDataset._filter_imgs(min_size=32)`` keeps an image only if

* at least one of its segments belongs to a category with ``isthing`` = 1 (crowd segments count: ``iscrowd``
  is not looked at), and
* ``min(width, height) >= 32`` (this size check runs in training even when ``filter_empty_gt`` is off).

detectron2's ``get_detection_dataset_dicts(filter_empty=True)`` only filters records that carry
``annotations``; panoptic records carry ``segments_info`` instead, so ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``
alone keeps stuff-only and unlabelled images. :func:`filter_panoptic_images_without_things` is the official
rule on detectron2 records; the K-Net training loader (:func:`knet.engine.build_knet_train_loader`) applies it
when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on.
"""
import logging
from typing import List, Sequence

__all__ = ["filter_panoptic_images_without_things", "panoptic_record_has_thing"]

logger = logging.getLogger(__name__)

OFFICIAL_MIN_SIZE = 32  # mmdet CustomDataset/CocoPanopticDataset._filter_imgs(min_size=32)


def panoptic_record_has_thing(record: dict) -> bool:
    """True if the panoptic record has at least one thing segment (crowd included).

    Args:
        record: a detectron2 panoptic dataset dict with ``segments_info``, each segment carrying ``isthing``
            (set by detectron2's ``load_coco_panoptic_json`` from ``thing_dataset_id_to_contiguous_id``).
    """
    for seg in record["segments_info"]:
        if "isthing" not in seg:
            raise KeyError(
                f"A segment of the panoptic record {record.get('file_name', record.get('image_id'))!r} has "
                "no 'isthing' key: the dataset loader must set it on every entry of 'segments_info' "
                "(detectron2's load_coco_panoptic_json does, from the metadata's "
                "thing_dataset_id_to_contiguous_id)."
            )
        if seg["isthing"]:
            return True
    return False


def filter_panoptic_images_without_things(
    dataset_dicts: Sequence[dict], min_size: int = OFFICIAL_MIN_SIZE
) -> List[dict]:
    """Drop the panoptic records the official training set does not contain (module docstring).

    A record is panoptic if it has ``segments_info``; it is removed if none of its segments is a thing, or if
    it carries ``height`` and ``width`` and the shorter side is below ``min_size`` (detectron2's COCO panoptic
    records carry no image size, so there only the thing rule applies). Other records (instance records with
    ``annotations``, semantic records) are kept unchanged. The order of the kept records is preserved.

    Args:
        dataset_dicts: the training records (``get_detection_dataset_dicts`` output). Anything that is not a
            list or tuple (e.g. a ``torch.utils.data.Dataset``) is returned unchanged.
        min_size: the official minimal shorter side in pixels (mmdet's default 32); 0 disables the check.
    Returns:
        the kept records (a new list).
    Raises:
        ValueError: if panoptic records were given and none of them is kept.
    """
    if not isinstance(dataset_dicts, (list, tuple)):
        return dataset_dicts
    kept, no_thing, too_small, num_panoptic = [], 0, 0, 0
    for record in dataset_dicts:
        if "segments_info" not in record:
            kept.append(record)
            continue
        num_panoptic += 1
        if not panoptic_record_has_thing(record):
            no_thing += 1
        elif "height" in record and "width" in record and min(record["height"], record["width"]) < min_size:
            too_small += 1
        else:
            kept.append(record)
    if num_panoptic == 0:
        return kept
    logger.info(
        f"Removed {no_thing} panoptic images without a thing segment and {too_small} with a side below "
        f"{min_size} px, as the official CocoPanopticDataset does in training. "
        f"{num_panoptic - no_thing - too_small} of {num_panoptic} panoptic images left."
    )
    if num_panoptic == no_thing + too_small:
        raise ValueError(
            f"All {num_panoptic} panoptic training images of DATASETS.TRAIN were removed: none has a thing "
            f"segment and a shorter side of at least {min_size} px. Check the dataset's thing classes "
            "(metadata thing_dataset_id_to_contiguous_id), or set DATALOADER.FILTER_EMPTY_ANNOTATIONS False "
            "to train on images without things."
        )
    return kept
