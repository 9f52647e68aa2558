"""Helpers shared by the K-Net mappers: metadata checks, exact label/mask transforms, reading, padding."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..metadata import DatasetMetadataError

__all__ = [
    "DatasetMetadataError",
    "check_class_ids",
    "LabelAugInput",
    "is_identity_resize",
    "apply_label_transform",
    "transform_masks",
    "read_label_map",
    "annotations_to_masks",
    "pad_to_size",
    "image_to_tensor",
    "map_test_image",
]


def check_class_ids(dataset_names: Sequence[str], metas: Sequence, key: str, mapper_name: str,
                    num_classes: Optional[int] = None, things_first: bool = False) -> None:
    """Check the contiguous ids of ``meta.<key>`` (a dataset-id -> contiguous-id dict).

    ``things_first``: the values must be exactly ``0..T-1``. ``num_classes``: every value must be below it.
    The maps must agree across datasets (one model is trained on all of them).
    """
    first = None
    for name, meta in zip(dataset_names, metas):
        values = sorted(set(getattr(meta, key).values()))
        if things_first and values != list(range(len(values))):
            raise DatasetMetadataError(
                f"Dataset {name!r}: metadata {key} must map things to the contiguous ids 0..T-1 "
                f"(things first, "
                f"then stuff), got {values[:10]}{'...' if len(values) > 10 else ''}."
            )
        if num_classes is not None and values and values[-1] >= num_classes:
            raise DatasetMetadataError(
                f"Dataset {name!r}: metadata {key} uses contiguous id {values[-1]}, but the model predicts "
                f"MODEL.KNET.NUM_CLASSES={num_classes} classes ({mapper_name!r} mapper)."
            )
        if first is None:
            first = (name, getattr(meta, key))
        elif dict(getattr(meta, key)) != dict(first[1]):
            raise DatasetMetadataError(
                f"Datasets {first[0]!r} and {name!r} have different metadata {key}; they cannot be "
                f"trained together."
            )


class LabelAugInput(T.AugInput):
    """An ``AugInput`` whose ``sem_seg`` may be any non-negative integer map (ids above 255 included).

    detectron2 resizes uint8 label maps with PIL's nearest neighbour but fails on wider integer types with
    this torch; :func:`apply_label_transform` keeps PIL's exact nearest-neighbour sampling for every dtype.
    """

    def transform(self, tfm: T.Transform) -> None:
        if is_identity_resize(tfm, self.image):
            return
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = apply_label_transform(tfm, self.sem_seg)


def is_identity_resize(tfm: T.Transform, image: np.ndarray) -> bool:
    """Whether ``tfm`` resizes a uint8 image to the size it already has.

    detectron2's ``ResizeTransform`` resizes uint8 images (and label maps) with PIL, whose ``Image.resize``
    returns an unchanged copy when the size does not change; nearest-neighbour label maps likewise. Skipping
    it gives the same pixels without the PIL round trip, which costs about a millisecond per 192x192 window
    (an ``absolute`` ``INPUT.CROP`` of the one ``MIN_SIZE_TRAIN`` is followed by such a resize).
    """
    return (isinstance(tfm, T.ResizeTransform) and image.dtype == np.uint8
            and (tfm.h, tfm.w) == (tfm.new_h, tfm.new_w) == tuple(image.shape[:2]))


def apply_label_transform(tfm: T.Transform, label: np.ndarray) -> np.ndarray:
    """Apply ``tfm.apply_segmentation`` to an (H, W) non-negative integer map of any width, exactly.

    uint8 maps go through directly; wider maps are split into byte planes, each transformed with nearest
    neighbour (which only ever copies source pixels), and reassembled. Padding fills 0.
    """
    if label.dtype == np.uint8:
        return tfm.apply_segmentation(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise TypeError(f"Label maps must be integer arrays, got {label.dtype}")
    if label.size and label.min() < 0:
        raise ValueError("Label maps must be non-negative to be transformed")
    wide = label.astype(np.uint32)
    nbytes = max(1, (int(wide.max()).bit_length() + 7) // 8) if wide.size else 1
    out = None
    for b in range(nbytes):
        plane = np.ascontiguousarray(((wide >> (8 * b)) & 0xFF).astype(np.uint8))
        plane = tfm.apply_segmentation(plane).astype(np.uint32) << (8 * b)
        out = plane if out is None else out | plane
    return out.astype(label.dtype)


def transform_masks(tfm: T.Transform, masks: np.ndarray) -> np.ndarray:
    """Transform (N, H, W) bool masks exactly: 8 masks are packed per uint8 plane, one nearest-neighbour
    pass each.

    Returns (N, H', W') bool; padding is False.
    """
    n = masks.shape[0]
    if n == 0:
        probe = tfm.apply_segmentation(np.zeros(masks.shape[1:], np.uint8))
        return np.zeros((0,) + probe.shape, dtype=bool)
    planes = np.packbits(masks.astype(bool), axis=0, bitorder="little")
    out = np.stack([tfm.apply_segmentation(np.ascontiguousarray(p)) for p in planes])
    return np.unpackbits(out, axis=0, count=n, bitorder="little").astype(bool)


def read_label_map(file_name: str) -> np.ndarray:
    """Read a label PNG keeping its integer width (8-bit "L"/"P" -> uint8, 16/32-bit -> int32)."""
    with PathManager.open(file_name, "rb") as f:
        img = Image.open(f)
        img.load()
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(
            f"Semantic label file {file_name} must be a single-channel image, got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        arr = arr.astype(np.int32)
    return arr


def annotations_to_masks(annos: List[dict], height: int, width: int, file_name: str = "") -> np.ndarray:
    """Decode COCO ``segmentation`` fields (polygons, RLE, compressed RLE or masks) to (N, H, W) bool."""
    from pycocotools import mask as mask_util

    masks = np.zeros((len(annos), height, width), dtype=bool)
    for i, a in enumerate(annos):
        if "segmentation" not in a:
            raise ValueError(
                f"An annotation of {file_name} has no 'segmentation': K-Net instance mappers need "
                f"instance masks (polygons or RLE)."
            )
        segm = a["segmentation"]
        if isinstance(segm, list):
            polys = [p for p in segm if len(p) >= 6]
            if not polys:
                continue  # degenerate polygon: an empty mask, dropped by the caller
            m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, height, width)))
        elif isinstance(segm, dict):
            if tuple(segm.get("size", (height, width))) != (height, width):
                raise ValueError(
                    f"An RLE of {file_name} has size {segm['size']}, the image is {height}x{width}."
                )
            rle = mask_util.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
            m = mask_util.decode(rle)
        elif isinstance(segm, np.ndarray):
            m = segm
        else:
            raise ValueError(f"Unsupported 'segmentation' of type {type(segm).__name__} in {file_name}")
        masks[i] = m.astype(bool)
    return masks


def pad_to_size(array: np.ndarray, size: Tuple[int, int], value) -> np.ndarray:
    """Pad an (H, W[, C]) array at the bottom/right up to ``size`` = (h, w); ``value`` may be per channel."""
    ph, pw = size[0] - array.shape[0], size[1] - array.shape[1]
    if ph < 0 or pw < 0:
        raise ValueError(f"Cannot pad an array of shape {array.shape[:2]} to the smaller size {tuple(size)}")
    if ph == 0 and pw == 0:
        return array
    out = np.empty((size[0], size[1]) + array.shape[2:], dtype=array.dtype)
    out[...] = np.asarray(value, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1]] = array
    return out


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> contiguous (C, H, W) uint8 tensor (of its own memory when ``image`` is read-only,
    e.g. a view of :class:`~.decoded_cache.DecodedCache`'s)."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.as_tensor(chw if chw.flags.writeable else chw.copy())


def map_test_image(dataset_dict: Dict, augmentations: T.AugmentationList, image_format: str) -> Dict:
    """Test-time mapping shared by all K-Net mappers (detectron2 ``DatasetMapper`` with is_train=False).

    The image is read and resized; ``height``/``width`` keep the original size; annotations are dropped.
    """
    dataset_dict = copy.deepcopy(dataset_dict)
    image = utils.read_image(dataset_dict["file_name"], format=image_format)
    utils.check_image_size(dataset_dict, image)
    aug_input = T.AugInput(image)
    augmentations(aug_input)
    dataset_dict["image"] = image_to_tensor(aug_input.image)
    for key in ("annotations", "sem_seg_file_name", "segments_info", "pan_seg_file_name"):
        dataset_dict.pop(key, None)
    return dataset_dict
