"""Whole-image and sliding-window inference of semantic K-Net, as pure functions.

Reference: mmsegmentation ``mmseg/models/segmentors/encoder_decoder.py::{whole_inference, slide_inference,
inference}``. The last stage's logits are resized to the network input, then to the original image size, and
turned into probabilities with a softmax over classes; the output is detectron2's ``{"sem_seg": (C, H, W)}``.
"whole" runs each image as it is (no padding, as mmseg's ``whole_inference``); "slide" runs windows of
``crop_size`` every ``stride`` pixels (an image smaller than the window is one window, the whole image) and
averages the overlapping logits (mmseg ``slide_inference``). Shared by ``KNetSemantic`` and ``KNetONNX``.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from .layers import resize

__all__ = ["whole_inference", "slide_inference", "semantic_probabilities"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def whole_inference(logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) normalised image -> (1, C, h, w) logits: the network on the image as it is, resized
    back."""
    return resize(logits_fn(image), image.shape[-2:])


def slide_inference(
    logits_fn: LogitsFn, image: torch.Tensor, crop_size: Tuple[int, int], stride: Tuple[int, int]
) -> torch.Tensor:
    """Sliding-window logits, as mmseg ``EncoderDecoder.slide_inference``.

    Windows of ``crop_size`` = (h_crop, w_crop) start every ``stride`` pixels; the last window of a row/column
    is shifted back to end at the border; a side shorter than the window gives one window of that side's
    length (so an image smaller than the window is run whole). The logits of every window are resized to the
    window, summed into place and divided by the number of windows covering each pixel.

    Args:
        image: (B, 3, h, w) normalised images.
    Returns:
        (B, C, h, w) logits.
    """
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    _, _, h_img, w_img = image.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = None
    count = image.new_zeros((1, 1, h_img, w_img))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * h_stride + h_crop, h_img)
            x2 = min(wi * w_stride + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_logits = resize(logits_fn(image[:, :, y1:y2, x1:x2]), (y2 - y1, x2 - x1))
            if preds is None:
                preds = crop_logits.new_zeros((image.shape[0], crop_logits.shape[1], h_img, w_img))
            preds[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def semantic_probabilities(
    logits_fn: LogitsFn,
    images: Sequence[torch.Tensor],
    output_sizes: Sequence[Tuple[int, int]],
    *,
    mode: str,
    crop_size: Tuple[int, int],
    stride: Tuple[int, int],
) -> List[Dict[str, torch.Tensor]]:
    """Per-image semantic probabilities.

    Args:
        logits_fn: (1, 3, h, w) normalised image -> (1, C, h', w') last-stage logits.
        images: normalised (3, h, w) images (unpadded).
        output_sizes: (height, width) of each original image.
        mode: "whole" or "slide"; crop_size, stride: the sliding window (h, w) ("slide" only).
    Returns:
        one ``{"sem_seg": (C, height, width)}`` per image: softmax over classes of the logits resized to the
        network input and then to the original size.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"MODEL.KNET.TEST.SEMANTIC_MODE must be 'whole' or 'slide', got {mode!r}")
    results = []
    for image, out_size in zip(images, output_sizes):
        x = image.unsqueeze(0)
        if mode == "whole":
            logits = whole_inference(logits_fn, x)
        else:
            logits = slide_inference(logits_fn, x, crop_size, stride)
        logits = resize(logits, tuple(int(s) for s in out_size))
        results.append({"sem_seg": logits[0].softmax(dim=0)})
    return results
