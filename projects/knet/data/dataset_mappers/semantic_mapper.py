"""``knet_semantic``: semantic records -> an int64 label map, with mmsegmentation's ADE20K training recipe.

Recipe of the K-Net semantic configs (mmsegmentation ``configs/_base_/datasets/ade20k.py``, used by
``configs/knet/knet_s3_*_ade20k-512x512.py``): resize by a random ratio in ``RATIO_RANGE`` of ``SCALE``
keeping the aspect ratio, random crop ``CROP_SIZE`` in which no class covers more than ``CAT_MAX_RATIO``
(detectron2's ``RandomCrop_CategoryAreaConstraint``, 10 tries), flip, photometric distortion.

No padding here: mmsegmentation pads *after* normalisation, the image with 0 and the labels with 255, up to
the crop size (1.x: ``SegDataPreProcessor(size=crop_size, pad_val=0, seg_pad_val=255)`` of the model;
0.x: ``Normalize`` then ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)`` in the pipeline). A uint8 image
cannot hold the padding value ``-mean / std``, so the model pads the normalised batch exactly like that
(:func:`knet.modeling.meta_arch.normalize_and_pad`, to ``INPUT.SEMANTIC.CROP_SIZE``), the
detectron2 way (``ImageList.from_tensors`` also pads normalised tensors with 0).
"""
from typing import List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..metadata import check_dataset_metadata
from .augmentations import PhotometricDistortion, RatioRangeResize
from .base import KNetDatasetMapperBase
from .registry import KNET_MAPPER_REGISTRY
from .utils import LabelAugInput, image_to_tensor, read_label_map

__all__ = ["KNetSemanticDatasetMapper", "build_semantic_augmentation"]


def build_semantic_augmentation(cfg, is_train: bool, ignore_label: int = 255) -> List:
    """The mmseg ADE20K training augmentations from ``INPUT.SEMANTIC.*``; the shortest-edge resize at test
    time."""
    if not is_train:
        return utils.build_augmentation(cfg, False)
    sem = cfg.INPUT.SEMANTIC
    crop = sem.CROP_SIZE
    crop = tuple(crop) if isinstance(crop, (list, tuple)) else (crop, crop)
    augs = [
        RatioRangeResize(tuple(sem.SCALE), tuple(sem.RATIO_RANGE)),
        T.RandomCrop_CategoryAreaConstraint("absolute", crop, sem.CAT_MAX_RATIO, ignore_label),
    ]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    if sem.PHOTOMETRIC:
        augs.append(PhotometricDistortion(image_format=cfg.INPUT.FORMAT))
    return augs


@KNET_MAPPER_REGISTRY.register_as("knet_semantic")
class KNetSemanticDatasetMapper(KNetDatasetMapperBase):
    """Map a semantic record (``file_name``, ``sem_seg_file_name``: a label PNG of contiguous ids, ignore
    value ``ignore_label``) to ``image`` (uint8 (3, H, W)) + ``sem_seg`` (int64 (H, W), same size).

    Training steps: read image and labels (8- or 16-bit PNG); check that every label is a class id below
    ``num_classes`` or the ignore value; the augmentations above on both (labels with exact nearest
    neighbour). Image and labels are not padded (the model pads the normalised batch, see the module
    docstring). At test time only the shortest-edge resize.
    """

    REQUIRED_METADATA = ("ignore_label", "stuff_classes")

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, image_format: str = "RGB",
                 ignore_label: int = 255, num_classes: Optional[int] = None, decoded_cache_mb: float = 0.0):
        """
        Args:
            ignore_label: the label value to ignore (also the model's label padding).
            num_classes: if given, labels other than ``0..num_classes-1`` and ``ignore_label`` are an error.
            The others: see :class:`~.base.KNetDatasetMapperBase` (the augmentations apply to image and
            labels; no padding).
        """
        self.ignore_label = ignore_label
        self.num_classes = num_classes
        super().__init__(is_train, augmentations=augmentations, image_format=image_format,
                         decoded_cache_mb=decoded_cache_mb)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = cls.common_config(cfg, is_train)
        ignore_label = 255
        if is_train:
            # class counts and one ignore_label across the datasets: checked by check_dataset_metadata
            metas = check_dataset_metadata(cfg, test=False, strict=True)
            ignore_label = metas[0].ignore_label
            num_classes = len(metas[0].stuff_classes)
            ret.update(ignore_label=ignore_label, num_classes=num_classes)
        ret["augmentations"] = build_semantic_augmentation(cfg, is_train, ignore_label)
        return ret

    def map_train(self, dataset_dict, image):
        if "sem_seg_file_name" not in dataset_dict:
            raise ValueError(f"Record of {dataset_dict['file_name']} has no 'sem_seg_file_name': the "
                             f"{self.MAPPER_NAME!r} mapper needs semantic label files.")
        label_file = dataset_dict.pop("sem_seg_file_name")
        label = read_label_map(label_file)
        if label.shape != image.shape[:2]:
            raise ValueError(f"Label file {label_file} is {label.shape}, its image {image.shape[:2]}")
        if self.num_classes is not None:
            values = np.unique(label)
            bad = values[(values != self.ignore_label) & ((values < 0) | (values >= self.num_classes))]
            if len(bad):
                raise ValueError(f"Label file {label_file} contains {bad[:10].tolist()}, outside the "
                                 f"{self.num_classes} classes 0..{self.num_classes - 1} and the ignore value "
                                 f"{self.ignore_label}.")

        aug_input = LabelAugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg

        dataset_dict["image"] = image_to_tensor(image)
        dataset_dict["sem_seg"] = torch.as_tensor(label.astype(np.int64))
        dataset_dict.pop("annotations", None)
        return dataset_dict
