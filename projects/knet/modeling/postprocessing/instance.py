"""Instance inference of K-Net: top-k (kernel, class) pairs (reference ``ZwwWayne/K-Net:
knet/det/kernel_iter_head.py``, ``KernelIterHead.simple_test`` / ``get_seg_masks``; paper Sec. 3.3)."""

import torch
from detectron2.structures import BitMasks, Boxes, Instances

from .resize import Size, crop_to_image, upsample_probs

__all__ = ["instance_inference"]


def instance_inference(cls_logits: torch.Tensor, mask_logits: torch.Tensor, image_size: Size,
                       output_size: Size, *, stride: int, max_per_image: int, mask_threshold: float,
                       score_threshold: float) -> Instances:
    """Top-``max_per_image`` (kernel, class) pairs ranked by class probability; one kernel can appear with
    several classes. Score = class probability (no mask rescoring, no NMS). Only the kept pairs' probability
    maps are resized (bilinear, as the reference) and thresholded (``> mask_threshold``).

    Args:
        cls_logits: (N, C) class logits of the thing kernels (pass only thing kernels / thing classes).
        mask_logits: (N, h, w) mask logits at stride ``stride`` of the padded input.
        image_size: (h, w) of the resized input inside the padding.
        output_size: (H, W) of the output (the original image).
        score_threshold: pairs scoring below it are dropped (0 keeps all, as the reference).
    Returns:
        ``Instances`` of size ``output_size`` with ``pred_masks`` (K, H, W) bool, ``scores`` (K,),
        ``pred_classes`` (K,) int64 and ``pred_boxes`` (from the masks).
    """
    N, C = cls_logits.shape
    scores = cls_logits.float().sigmoid().flatten()
    k = min(max_per_image, scores.numel())
    scores, idx = scores.topk(k, sorted=True)
    keep = scores >= score_threshold
    scores, idx = scores[keep], idx[keep]
    kernels, classes = idx // C, idx % C
    probs = crop_to_image(mask_logits[kernels], image_size, stride).float().sigmoid()
    masks = upsample_probs(probs, image_size, output_size, stride) > mask_threshold
    result = Instances(tuple(output_size))
    result.pred_masks = masks
    result.scores = scores
    result.pred_classes = classes
    result.pred_boxes = (
        BitMasks(masks).get_bounding_boxes() if len(masks) else Boxes(masks.new_zeros((0, 4)).float())
    )
    return result
