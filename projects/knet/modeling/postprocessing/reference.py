"""The reference's panoptic inference in its own order of operations (slow: N full-resolution maps).

``ZwwWayne/K-Net:knet/det/kernel_iter_head.py`` (``get_panoptic``, ``merge_stuff_thing``) and
``knet/det/kernel_update_head.py`` (``rescale_masks``). The exact mode
(:mod:`knet.modeling.postprocessing.panoptic_exact`) gives the same output without resizing all maps.
"""

from typing import Dict, List, Tuple

import torch

from .fusion import PanopticRules, kernel_scores, merge_decisions, paint
from .resize import Size, rescale_probs

__all__ = ["panoptic_inference_full_resolution"]


def panoptic_inference_full_resolution(cls_logits: torch.Tensor, mask_logits: torch.Tensor, image_size: Size,
                                       output_size: Size,
                                       rules: PanopticRules) -> Tuple[torch.Tensor, List[Dict]]:
    """sigmoid at stride ``rules.stride``; bilinear to the padded input, crop to ``image_size``, bilinear to
    ``output_size`` (:func:`~knet.modeling.postprocessing.resize.rescale_probs`); every pixel goes to the
    kernel maximising score x probability (first index on ties); then
    :func:`~knet.modeling.postprocessing.fusion.merge_decisions` with the argmax areas and the ``prob >=
    mask_threshold`` areas. The reference writes ``label + rank * INSTANCE_OFFSET`` (rank from 0, void =
    num_classes); here the id is ``rank + 1`` (void = 0) and the category is in ``segments_info``.

    Args:
        cls_logits: (N, C) logits of all kernels (thing kernels first, then one per stuff class).
        mask_logits: (N, h, w) mask logits at stride ``rules.stride`` of the padded input.
        image_size, output_size: (h, w) of the resized input and (H, W) of the output.
    Returns:
        panoptic_seg (H, W) int32 and segments_info (dicts with "id", "category_id", "isthing", "score",
        "area").
    """
    probs = mask_logits.float().sigmoid()
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), rules.num_proposals, rules.num_thing_classes)
    masks = rescale_probs(probs, image_size, output_size, rules.stride)
    kernel_map = (scores.view(-1, 1, 1) * masks).argmax(0)
    mask_area = torch.bincount(kernel_map.flatten(), minlength=len(scores))
    orig_area = (masks >= rules.mask_threshold).flatten(1).sum(1)
    kept = merge_decisions(scores, labels, mask_area, orig_area, rules)
    return paint(kernel_map, kept, scores, labels, rules.num_thing_classes, mask_area)
