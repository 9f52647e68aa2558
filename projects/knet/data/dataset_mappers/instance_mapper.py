"""``knet_instance``: COCO instance records -> thing masks (polygons or RLE decoded to bool masks).

The recipe of the official K-Net instance configs (ZwwWayne/K-Net
``configs/det/_base_/datasets/coco_instance.py``): resize the shortest edge and flip. Masks are decoded at the
original size and transformed exactly with the image (nearest neighbour, 8 masks per pass), which needs no
polygon clipping library.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..metadata import check_dataset_metadata
from .base import KNetDatasetMapperBase, build_resize_augmentation
from .registry import KNET_MAPPER_REGISTRY
from .utils import (
    annotations_to_masks,
    check_class_ids,
    image_to_tensor,
    pad_to_size,
    transform_masks,
)

__all__ = ["KNetInstanceDatasetMapper"]


@KNET_MAPPER_REGISTRY.register_as("knet_instance")
class KNetInstanceDatasetMapper(KNetDatasetMapperBase):
    """Map a COCO instance record (``load_coco_json``: ``annotations`` with ``segmentation``, contiguous
    ``category_id``, ``iscrowd``) to the K-Net data contract.

    Training steps:
      1. read the image; drop crowd annotations; decode every ``segmentation`` (polygons, RLE,
         compressed RLE);
      2. augment the image (``INPUT.CROP`` if enabled, resize, flip:
         :func:`~.base.build_resize_augmentation`), transform the masks with the same transforms;
      3. optionally pad to a fixed size (large-scale-jitter subclass);
      4. drop instances left without any pixel; ``instances``: ``gt_classes`` int64, ``gt_masks`` bool
         (N, H, W).

    At test time only the resize of ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` is applied.
    """

    USES_INPUT_CROP = True
    REQUIRED_METADATA = ("thing_dataset_id_to_contiguous_id",)

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, image_format: str = "RGB",
                 pad_size: Optional[Tuple[int, int]] = None, image_pad_value=0,
                 decoded_cache_mb: float = 0.0):
        """See :class:`~.base.KNetDatasetMapperBase` for the arguments."""
        super().__init__(is_train, augmentations=augmentations, image_format=image_format, pad_size=pad_size,
                         image_pad_value=image_pad_value, decoded_cache_mb=decoded_cache_mb)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        if is_train:
            names = list(cfg.DATASETS.TRAIN)
            metas = check_dataset_metadata(cfg, test=False, strict=True)
            num_classes = cfg.MODEL.KNET.NUM_CLASSES if hasattr(cfg.MODEL, "KNET") else None
            check_class_ids(names, metas, "thing_dataset_id_to_contiguous_id", cls.MAPPER_NAME, num_classes)
        return dict(cls.common_config(cfg, is_train), augmentations=build_resize_augmentation(cfg, is_train))

    def map_train(self, dataset_dict, image):
        h, w = image.shape[:2]
        annos = [a for a in dataset_dict.pop("annotations", []) if not a.get("iscrowd", 0)]
        masks = annotations_to_masks(annos, h, w, dataset_dict["file_name"])
        classes = np.array([a["category_id"] for a in annos], dtype=np.int64)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        masks = transform_masks(transforms, masks)
        if self.pad_size is not None:
            image = pad_to_size(image, self.pad_size, self.image_pad_value)
            masks = pad_to_size(masks.transpose(1, 2, 0), self.pad_size, False).transpose(2, 0, 1)

        keep = masks.any(axis=(1, 2))
        instances = Instances(image.shape[:2])
        instances.gt_classes = torch.as_tensor(classes[keep], dtype=torch.int64)
        instances.gt_masks = torch.as_tensor(masks[keep], dtype=torch.bool)
        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["instances"] = instances
        return dataset_dict
