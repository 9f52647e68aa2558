"""``knet_panoptic``: COCO panoptic records -> every segment (things and stuff) as a mask, plus a semantic
map.

The recipe of the official K-Net panoptic configs (ZwwWayne/K-Net
``configs/det/_base_/datasets/coco_panoptic.py`` and ``..._mstrain_3x``): resize the shortest edge
(``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN``/``MIN_SIZE_TRAIN_SAMPLING``) and flip (``INPUT.RANDOM_FLIP``).

Optionally (``INPUT.COPY_PASTE_PROB``) things of another training image are pasted onto the image
(:mod:`.copy_paste`).
"""
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..metadata import check_dataset_metadata
from .base import KNetDatasetMapperBase, build_resize_augmentation
from .copy_paste import choose_things_to_paste, paste_segments
from .registry import KNET_MAPPER_REGISTRY
from .utils import LabelAugInput, check_class_ids, image_to_tensor, pad_to_size

__all__ = ["KNetPanopticDatasetMapper", "panoptic_targets", "read_panoptic_png"]

logger = logging.getLogger(__name__)


def read_panoptic_png(file_name: str) -> np.ndarray:
    """A COCO panoptic PNG as an (H, W, 3) uint8 RGB array, read as panopticapi reads it (``Image.open``,
    no EXIF orientation: these PNGs carry none). ``detection_utils.read_image`` would also look for EXIF
    data and copy the array (0.4 of its 1.1 ms for a 256x256 PNG)."""
    with PathManager.open(file_name, "rb") as f, Image.open(f) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def panoptic_targets(
    segment_index: np.ndarray, classes: np.ndarray, crowd: np.ndarray, ignore_label: int = 255
):
    """Targets of one image from its segment-index map.

    Args:
        segment_index: (H, W) int, 0 = void, k >= 1 = segment k - 1.
        classes: (K,) contiguous class id of each segment; crowd: (K,) bool (crowd segments are ignored).
        ignore_label: value of void/crowd pixels in the semantic map.

    Returns:
        gt_classes (N,) int64 and gt_masks (N, H, W) bool of the non-crowd segments with at least one pixel
        (in segment order), and sem_seg (H, W) int64.
    """
    k = len(classes)
    sem_lut = np.full(k + 1, ignore_label, dtype=np.int64)
    sem_lut[1:][~crowd] = classes[~crowd]
    sem_seg = sem_lut[segment_index]
    present = np.bincount(segment_index.ravel(), minlength=k + 1)[1:] > 0
    keep = np.nonzero(present & ~crowd)[0]
    masks = segment_index[None] == (keep + 1)[:, None, None]
    return classes[keep].astype(np.int64), masks, sem_seg


@KNET_MAPPER_REGISTRY.register_as("knet_panoptic")
class KNetPanopticDatasetMapper(KNetDatasetMapperBase):
    """Map a COCO panoptic record (``load_coco_panoptic_json``: ``pan_seg_file_name``, ``segments_info`` with
    contiguous ``category_id``, ``iscrowd``) to the K-Net data contract.

    Training steps:
      1. read the image (``INPUT.FORMAT``) and the panoptic PNG (id = R + 256 G + 256^2 B), turned into a
         segment-index map (0 = void);
      2. augment image and index map together (nearest neighbour for the map, exact for any number of
         segments): ``INPUT.CROP`` if enabled, resize, flip (:func:`~.base.build_resize_augmentation`);
         with probability ``copy_paste_prob``, paste things of another record of the pool
         (:meth:`set_paste_pool`), itself augmented the same way (:mod:`.copy_paste`);
      3. optionally pad both to a fixed size (large-scale-jitter subclass);
      4. ``instances``: one mask per non-crowd segment present, things and stuff, ``gt_classes`` contiguous
         (things ``0..T-1``, stuff ``T..C-1``); ``sem_seg``: int64, void and crowd pixels = ``ignore_label``.

    At test time only the resize of ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` is applied.
    """

    USES_INPUT_CROP = True
    USES_COPY_PASTE = True
    REQUIRED_METADATA = (
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
        "ignore_label",
    )

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, image_format: str = "RGB",
                 ignore_label: int = 255, pad_size: Optional[Tuple[int, int]] = None, image_pad_value=0,
                 copy_paste_prob: float = 0.0, num_thing_classes: int = 0, decoded_cache_mb: float = 0.0):
        """
        Args:
            ignore_label: semantic value of void and crowd pixels.
            copy_paste_prob: probability that a training image receives things pasted from another record
                of the pool (``INPUT.COPY_PASTE_PROB``; 0: off, no random draw is made).
            num_thing_classes: things are the contiguous ids below it (only things are pasted).
            The others: see :class:`~.base.KNetDatasetMapperBase` (the augmentations apply to the image and
            the segment map).
        """
        if not 0.0 <= float(copy_paste_prob) <= 1.0:
            raise ValueError(f"INPUT.COPY_PASTE_PROB must be in [0, 1], got {copy_paste_prob!r}.")
        self.ignore_label = ignore_label
        self.copy_paste_prob = float(copy_paste_prob)
        self.num_thing_classes = int(num_thing_classes)
        self._paste_pool: Sequence[dict] = ()
        super().__init__(is_train, augmentations=augmentations, image_format=image_format, pad_size=pad_size,
                         image_pad_value=image_pad_value, decoded_cache_mb=decoded_cache_mb)

    @classmethod
    def _check_train_metadata(cls, cfg):
        names = list(cfg.DATASETS.TRAIN)
        metas = check_dataset_metadata(cfg, test=False, strict=True)
        num_classes = cfg.MODEL.KNET.NUM_CLASSES if hasattr(cfg.MODEL, "KNET") else None
        check_class_ids(names, metas, "thing_dataset_id_to_contiguous_id", cls.MAPPER_NAME, num_classes,
                        things_first=True)
        check_class_ids(names, metas, "stuff_dataset_id_to_contiguous_id", cls.MAPPER_NAME, num_classes)
        return metas  # class counts and one ignore_label: checked by check_dataset_metadata

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = dict(cls.common_config(cfg, is_train), augmentations=build_resize_augmentation(cfg, is_train))
        if is_train:
            metas = cls._check_train_metadata(cfg)
            ret["ignore_label"] = metas[0].ignore_label
            ret["copy_paste_prob"] = cfg.INPUT.COPY_PASTE_PROB
            ret["num_thing_classes"] = len(metas[0].thing_dataset_id_to_contiguous_id)
        return ret

    def set_paste_pool(self, records: Sequence[dict]) -> None:
        """The records copy-paste draws its sources from (the training loader passes its own list)."""
        self._paste_pool = records

    def _read_segments(self, dataset_dict, key):
        """Panoptic PNG -> (segment index map, classes, crowd flags), through the decoded cache under ``key``
        (the record's :meth:`_segments_key`; read-only when they come from there)."""
        return self.decoded_cache.get(key, lambda: self._decode_segments(dataset_dict))

    @staticmethod
    def _segments_key(dataset_dict):
        """What the segment-index map of a record is decoded from: its PNG, its segments' ids and classes."""
        segments = dataset_dict["segments_info"]
        return ("segments", dataset_dict["pan_seg_file_name"],
                tuple((s["id"], s["category_id"], bool(s.get("iscrowd", 0))) for s in segments))

    @staticmethod
    def _decode_segments(dataset_dict):
        from panopticapi.utils import rgb2id

        file_name = dataset_dict["pan_seg_file_name"]
        pan_ids = rgb2id(read_panoptic_png(file_name).astype(np.int64))
        segments = dataset_dict["segments_info"]
        ids = np.array([s["id"] for s in segments], dtype=np.int64)
        classes = np.array([s["category_id"] for s in segments], dtype=np.int64)
        crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments], dtype=bool)
        # segment id -> 1 + its position in segments_info (0 = void) by a binary search in the sorted ids:
        # the same map as np.unique over the pixels, a few times faster
        void = pan_ids == 0
        if len(ids):
            order = np.argsort(ids, kind="stable")
            pos = np.minimum(np.searchsorted(ids[order], pan_ids), len(ids) - 1)
            listed = (ids[order][pos] == pan_ids) & ~void
            index = np.where(listed, order[pos] + 1, 0)
        else:
            listed, index = np.zeros(pan_ids.shape, dtype=bool), np.zeros(pan_ids.shape, dtype=np.int64)
        unknown = ~listed & ~void
        if unknown.any():
            raise ValueError(
                f"Panoptic PNG {file_name} contains segment id {int(pan_ids[unknown].min())}, which is not "
                f"listed in the segments_info of its JSON annotation."
            )
        if len(segments) < 255:
            index = index.astype(np.uint8)
        return index, classes, crowd

    def _paste_from_pool(self, image, index, classes, crowd):
        """Paste things of a random record of the pool (read and augmented like the target). A source whose
        files cannot be read is named in a warning and the target keeps its own segments (the source is
        reported again, and skipped, when it comes up as a target)."""
        source = self._paste_pool[np.random.randint(len(self._paste_pool))]
        try:
            src_image = self.read_image(source["file_name"])
            src_image, src_index, src_classes, src_crowd = self._augmented_segments(source, src_image)
        except (OSError, ValueError, KeyError) as e:
            logger.warning(f"Copy-paste: cannot use {source.get('file_name')} as a source ({e}); this "
                           f"training sample gets no pasted things.")
            return image, index, classes, crowd
        chosen = choose_things_to_paste(src_index, src_classes, src_crowd, self.num_thing_classes, np.random)
        return paste_segments(image, index, classes, crowd, src_image, src_index, src_classes, chosen)

    def _augmented_segments(self, dataset_dict, image):
        """Read the record's segments, check them against its image (H, W, C) and augment both together:
        ``(image, segment-index map, classes, crowd flags)``."""
        if "pan_seg_file_name" not in dataset_dict or "segments_info" not in dataset_dict:
            raise ValueError(
                f"Record of {dataset_dict['file_name']} has no 'pan_seg_file_name'/'segments_info': "
                f"the {self.MAPPER_NAME!r} mapper needs COCO panoptic records."
            )
        segments_key = self._segments_key(dataset_dict)
        index, classes, crowd = self._read_segments(dataset_dict, segments_key)
        if index.shape != image.shape[:2]:
            raise ValueError(f"Panoptic PNG {dataset_dict['pan_seg_file_name']} is {index.shape}, its image "
                             f"{image.shape[:2]}")
        aug_input = LabelAugInput(image, sem_seg=index)
        self.augment(aug_input, cache_key=(dataset_dict["file_name"], self.image_format, segments_key))
        return aug_input.image, aug_input.sem_seg, classes, crowd

    def map_train(self, dataset_dict, image):
        image, index, classes, crowd = self._augmented_segments(dataset_dict, image)
        pool = self._paste_pool
        if self.copy_paste_prob > 0 and len(pool) and np.random.random_sample() < self.copy_paste_prob:
            image, index, classes, crowd = self._paste_from_pool(image, index, classes, crowd)
        if self.pad_size is not None:
            image = pad_to_size(image, self.pad_size, self.image_pad_value)
            index = pad_to_size(index, self.pad_size, 0)

        gt_classes, gt_masks, sem_seg = panoptic_targets(index, classes, crowd, self.ignore_label)
        instances = Instances(image.shape[:2])
        instances.gt_classes = torch.as_tensor(gt_classes, dtype=torch.int64)
        instances.gt_masks = torch.as_tensor(gt_masks, dtype=torch.bool)
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["instances"] = instances
        dataset_dict["sem_seg"] = torch.as_tensor(sem_seg, dtype=torch.int64)
        dataset_dict.pop("annotations", None)
        return dataset_dict
