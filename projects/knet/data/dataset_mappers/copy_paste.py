"""Copy-paste of thing segments between panoptic training images (Ghiasi et al., "Simple Copy-Paste is a
Strong Data Augmentation Method for Instance Segmentation", CVPR 2021, Sec. 3).

Both images go through the mapper's own augmentations independently (their own flip and scale); a random
subset of the source's things is pasted, pixels and labels, onto the target's top-left-aligned overlap
(the paper pads both to one size, which aligns them the same way), without blending (Sec. 3: blending made
no difference). Target segments the pasted things cover lose those pixels; one covered entirely disappears
(:func:`~.panoptic_mapper.panoptic_targets` drops absent segments). Crowd and stuff segments of the source
are never pasted.
"""
from typing import Tuple

import numpy as np

__all__ = ["choose_things_to_paste", "paste_segments"]


def choose_things_to_paste(src_index: np.ndarray, src_classes: np.ndarray, src_crowd: np.ndarray,
                           num_thing_classes: int, rng: np.random.RandomState) -> np.ndarray:
    """The source segments to paste: each non-crowd thing still present after augmentation with probability
    1/2 (the paper's "random subset"), at least one when there is any.

    Args:
        src_index: (H, W) int segment-index map of the source (0 = void, k >= 1 = segment k - 1).
        src_classes: (K,) contiguous class ids (things ``0..num_thing_classes-1``); src_crowd: (K,) bool.
        rng: the generator to draw from (the mapper passes ``np.random``, seeded per item by the loader).

    Returns:
        (M,) int64 indices into the source segments, ascending (M = 0: nothing to paste).
    """
    present = np.bincount(np.asarray(src_index).ravel(), minlength=len(src_classes) + 1)[1:] > 0
    things = np.nonzero(present & ~src_crowd & (src_classes < num_thing_classes))[0]
    if len(things) == 0:
        return things.astype(np.int64)
    keep = rng.random_sample(len(things)) < 0.5
    if not keep.any():
        keep[rng.randint(len(things))] = True
    return things[keep].astype(np.int64)


def paste_segments(image: np.ndarray, index: np.ndarray, classes: np.ndarray, crowd: np.ndarray,
                   src_image: np.ndarray, src_index: np.ndarray, src_classes: np.ndarray,
                   chosen: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paste the source segments ``chosen`` onto the target, top-left aligned.

    Args:
        image: (H, W, C) target image; index: (H, W) its segment-index map; classes: (K,), crowd: (K,) bool.
        src_image: (H2, W2, C) source image; src_index: (H2, W2) its segment-index map; src_classes: (K2,).
        chosen: (M,) indices into the source segments (:func:`choose_things_to_paste`).

    Returns:
        ``(image, index, classes, crowd)`` of the target with the pasted segments appended as segments
        ``K .. K+M-1`` (never crowd); new arrays, the inputs are not modified. Only the overlap
        ``min(H, H2) x min(W, W2)`` receives pixels.
    """
    if len(chosen) == 0:
        return image, index, classes, crowd
    h, w = min(image.shape[0], src_image.shape[0]), min(image.shape[1], src_image.shape[1])
    k = len(classes)
    lut = np.zeros(len(src_classes) + 1, dtype=np.int64)  # source index -> new target index (0: not pasted)
    lut[np.asarray(chosen) + 1] = k + 1 + np.arange(len(chosen))
    new_index = lut[src_index[:h, :w]]
    paste = new_index > 0
    image = image.copy()
    image[:h, :w][paste] = src_image[:h, :w][paste]
    dtype = np.uint8 if k + len(chosen) < 255 else np.int64
    index = index.astype(dtype, copy=True)
    index[:h, :w][paste] = new_index[paste]
    classes = np.concatenate([classes, np.asarray(src_classes)[chosen]]).astype(classes.dtype)
    crowd = np.concatenate([crowd, np.zeros(len(chosen), dtype=bool)])
    return image, index, classes, crowd
