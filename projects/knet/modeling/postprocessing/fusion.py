"""The fusion rules of K-Net's panoptic inference, shared by every panoptic mode.

Reference: ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py`` (``KernelIterHead.get_panoptic``,
``merge_stuff_thing``); paper Sec. 3.3 ("panoptic segmentation": the thing and stuff kernels' masks are
merged by score). Every kernel gets a score and a label (:func:`kernel_scores`), each pixel goes to the kernel
maximising score x probability, kernels are visited by descending score, things need a minimum score, and a
kernel is kept when enough of its thresholded mask survives the argmax (:func:`merge_decisions`).
"""

from dataclasses import dataclass
from typing import Dict, List

import torch

__all__ = ["PanopticRules", "kernel_scores", "merge_decisions", "segments_info", "segment_lut", "paint"]


@dataclass(frozen=True)
class PanopticRules:
    """What every panoptic mode needs besides the logits (values from ``MODEL.KNET.TEST``, see
    :func:`knet.modeling.postprocessing.panoptic_inference`)."""

    num_proposals: int  # thing kernels (first), followed by one kernel per stuff class
    num_thing_classes: int
    stride: int  # of the mask logits, in input pixels
    thing_score_threshold: float
    overlap_threshold: float
    mask_threshold: float


def kernel_scores(cls_probs: torch.Tensor, num_proposals: int, num_thing_classes: int):
    """Score and label of every kernel (reference ``get_panoptic``): a thing kernel takes the max over the
    thing classes; the stuff kernel ``num_proposals + j`` takes its own class ``num_thing_classes + j`` (the
    diagonal).

    Args:
        cls_probs: (N, C) class probabilities, N = num_proposals + C - num_thing_classes.
    Returns:
        scores (N,) and labels (N,) int64.
    """
    P, T = num_proposals, num_thing_classes
    N, C = cls_probs.shape
    if N != P + C - T:
        raise ValueError(
            f"expected {P} thing kernels + {C - T} stuff kernels (one per stuff class), got {N} kernels "
            f"for {C} classes"
        )
    thing_scores, thing_labels = cls_probs[:P, :T].max(dim=1)
    stuff_scores = cls_probs[P:, T:].diagonal()
    stuff_labels = torch.arange(stuff_scores.shape[0], device=cls_probs.device) + T
    return torch.cat([thing_scores, stuff_scores]), torch.cat([thing_labels, stuff_labels])


def merge_decisions(scores, labels, mask_area, orig_area, rules: PanopticRules) -> torch.Tensor:
    """The per-kernel tests of ``merge_stuff_thing`` (kernels visited by ``argsort(-scores)``): things need
    ``score >= thing_score_threshold`` (compared in float32, as the reference's tensor/float comparison),
    every kernel needs ``mask_area > 0``, ``orig_area > 0`` and ``mask_area / orig_area >=
    overlap_threshold`` (float64 division, as the reference's Python ints). Decisions are independent of each
    other; the visiting order only numbers the segments.

    Args:
        scores, labels: (N,) from :func:`kernel_scores`.
        mask_area: (N,) argmax pixel counts; orig_area: (N,) ``prob >= mask_threshold`` pixel counts.
    Returns:
        kept kernel indices (K,) int64 in visiting order (segment ids 1, 2, ...).
    """
    visit = (labels >= rules.num_thing_classes) | ~(scores < rules.thing_score_threshold)
    area, orig = mask_area.double(), orig_area.double()
    ratio_ok = ~((area / orig.clamp(min=1)) < rules.overlap_threshold)
    keep = visit & (mask_area > 0) & (orig_area > 0) & ratio_ok
    order = torch.argsort(-scores)  # the reference's call (not stable): same order for tied scores
    return order[keep[order]]


def segments_info(kept, scores, labels, areas, num_thing_classes) -> List[Dict]:
    """detectron2's ``segments_info`` of the kept kernels (K,) that have a pixel: id = 1 + visiting rank,
    ``areas`` (K,) their exact pixel counts."""
    info = []
    for seg_id, (k, area) in enumerate(zip(kept.tolist(), areas.tolist()), start=1):
        if area == 0:
            continue
        label = int(labels[k])
        info.append(
            {
                "id": seg_id,
                "category_id": label,
                "isthing": bool(label < num_thing_classes),
                "score": float(scores[k]),
                "area": int(area),
            }
        )
    return info


def segment_lut(num_kernels: int, kept: torch.Tensor) -> torch.Tensor:
    """(num_kernels,) int32 map kernel -> segment id: 1..K for the kept kernels (K,), 0 (void) for the
    others."""
    lut = torch.zeros(num_kernels, dtype=torch.int32, device=kept.device)
    lut[kept] = torch.arange(1, len(kept) + 1, dtype=torch.int32, device=kept.device)
    return lut


def paint(kernel_map, kept, scores, labels, num_thing_classes, mask_area=None):
    """(H, W) kernel index map -> (panoptic_seg (H, W) int32, segments_info). ``mask_area``: the (N,) pixel
    counts of ``kernel_map`` per kernel, if known."""
    panoptic = segment_lut(len(scores), kept)[kernel_map]
    if mask_area is None:
        areas = torch.bincount(panoptic.flatten().long(), minlength=len(kept) + 1)[1:]
    else:
        areas = mask_area[kept]
    return panoptic, segments_info(kept, scores, labels, areas, num_thing_classes)
