"""The opt-in approximate panoptic modes, deciding on the stride-4 cells (``MODEL.KNET.TEST.PANOPTIC_MODE``
"stride4" and "soft"): faster than the reference order, not equal to it near borders and for segments whose
overlap ratio is close to the threshold (see :func:`knet.modeling.postprocessing.panoptic_inference`).
"""

from typing import Dict, List, Tuple

import torch

from .fusion import PanopticRules, kernel_scores, segment_lut, segments_info
from .resize import Size, cell_coverage, crop_to_image, nearest_cells, upsample_probs

__all__ = ["panoptic_inference_stride4", "select_segments_stride4"]


def select_segments_stride4(scores, labels, probs, weights, rules: PanopticRules):
    """``merge_stuff_thing``'s decisions on the cells.

    Args:
        scores, labels: (N,); probs: (N, hc, wc) cropped probabilities.
        weights: (hc, wc) pixel area each cell stands for (:func:`~.resize.cell_coverage`).
    Returns:
        the (hc, wc) argmax kernel of every cell, and the kept kernels (K,) in visiting order.
    """
    N = probs.shape[0]
    cell_ids = (scores[:, None, None] * probs).argmax(dim=0)
    area = torch.bincount(cell_ids.flatten(), weights=weights.flatten(), minlength=N).to(probs.dtype)
    orig_area = (probs >= rules.mask_threshold).to(probs.dtype).flatten(1) @ weights.flatten().to(probs.dtype)
    is_thing = labels < rules.num_thing_classes
    ok = (~is_thing) | (scores >= rules.thing_score_threshold)
    ok &= (area > 0) & (orig_area > 0)
    ok &= area >= rules.overlap_threshold * orig_area
    order = torch.argsort(-scores, stable=True)
    return cell_ids, order[ok[order]]


def panoptic_inference_stride4(cls_logits: torch.Tensor, mask_logits: torch.Tensor, image_size: Size,
                               output_size: Size, rules: PanopticRules,
                               soft: bool) -> Tuple[torch.Tensor, List[Dict]]:
    """Decisions on the cells; ``soft`` False: each output pixel takes its cell's segment (4-pixel steps);
    True: the kept segments' score x probability maps (and the max of the discarded ones, void) are resized
    bilinearly and argmaxed. Shapes as :func:`~.reference.panoptic_inference_full_resolution`."""
    probs = crop_to_image(mask_logits, image_size, rules.stride).float().sigmoid()
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), rules.num_proposals, rules.num_thing_classes)
    weights = cell_coverage(image_size, probs.shape[-2:], rules.stride, probs.device)
    cell_ids, kept = select_segments_stride4(scores, labels, probs, weights, rules)
    H, W = output_size
    if kept.numel() == 0:
        return torch.zeros((H, W), dtype=torch.int32, device=probs.device), []
    if soft:
        weighted = scores[:, None, None] * probs
        discarded = torch.ones(len(scores), dtype=torch.bool, device=probs.device)
        discarded[kept] = False
        if discarded.any():  # one map for everything discarded: pixels it wins are void
            rest = weighted[discarded].amax(0, keepdim=True)
        else:
            rest = torch.full_like(weighted[:1], -1.0)
        up = upsample_probs(torch.cat([weighted[kept], rest]), image_size, output_size, rules.stride)
        ids = torch.arange(1, len(kept) + 2, dtype=torch.int32, device=probs.device)
        ids[-1] = 0
        panoptic = ids[up.argmax(0)]
    else:
        rows, cols = nearest_cells(image_size, output_size, cell_ids.shape, rules.stride, probs.device)
        panoptic = segment_lut(len(scores), kept)[cell_ids][rows[:, None], cols[None, :]]
    areas = torch.bincount(panoptic.flatten().long(), minlength=len(kept) + 1)[1:]
    return panoptic, segments_info(kept, scores, labels, areas, rules.num_thing_classes)
