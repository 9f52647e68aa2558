"""Panoptic inference of K-Net: one entry point, :func:`panoptic_inference`, over the modes of
``MODEL.KNET.TEST.PANOPTIC_MODE`` (reference ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py``,
``KernelIterHead.get_panoptic`` / ``merge_stuff_thing``; paper Sec. 3.3)."""

from typing import Dict, List, Tuple

import torch

from .approximate import panoptic_inference_stride4
from .fusion import PanopticRules, kernel_scores, segments_info
from .panoptic_exact import panoptic_exact
from .reference import panoptic_inference_full_resolution
from .resize import Size

__all__ = ["PANOPTIC_MODES", "resolve_panoptic_mode", "panoptic_inference"]

PANOPTIC_MODES = ("exact", "stride4", "soft")


def resolve_panoptic_mode(mode: str, soft_boundaries: bool) -> str:
    """``MODEL.KNET.TEST.PANOPTIC_MODE`` checked, with the legacy ``SOFT_BOUNDARIES True`` meaning "soft"."""
    if mode not in PANOPTIC_MODES:
        raise ValueError(
            f"unknown panoptic post-processing mode {mode!r} (MODEL.KNET.TEST.PANOPTIC_MODE); use one of "
            f"{', '.join(PANOPTIC_MODES)}"
        )
    return "soft" if soft_boundaries else mode


def panoptic_inference(cls_logits: torch.Tensor, mask_logits: torch.Tensor, image_size: Size,
                       output_size: Size, *, num_proposals: int, num_thing_classes: int, stride: int,
                       thing_score_threshold: float, overlap_threshold: float, mask_threshold: float,
                       mode: str, soft_boundaries: bool) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic fusion of the reference (``merge_stuff_thing``, see :mod:`.fusion`): every pixel goes to the
    kernel maximising score x probability; kernels are visited by descending score, things need ``score >=
    thing_score_threshold`` (stuff has no score threshold), a kernel is kept when its argmax area is > 0 and
    at least ``overlap_threshold`` of its ``prob >= mask_threshold`` area. Segment ids count from 1 in that
    order; 0 is void. The options are ``MODEL.KNET.TEST``'s (defaults in ``knet.config``).

    Modes (``MODEL.KNET.TEST.PANOPTIC_MODE``):
        * ``"exact"``: the output of :func:`~.reference.panoptic_inference_full_resolution` (the reference's
          full-resolution order), computed without resizing all N maps (:mod:`.panoptic_exact`).
        * ``"stride4"``: decide on the stride-4 cells (areas weighted by the part of a cell inside the image)
          and give each pixel its cell's segment: 4-pixel border steps, decisions may differ near the
          overlap threshold.
        * ``"soft"``: the stride-4 decisions, with the kept segments' score x probability maps (and the max of
          the discarded ones) resized bilinearly and argmaxed: smoother borders, slower.

    Args:
        cls_logits: (N, C) logits of all kernels (``num_proposals`` thing kernels, then one per stuff class).
        mask_logits: (N, h, w) mask logits at stride ``stride`` of the padded input.
        image_size, output_size: (h, w) of the resized input and (H, W) of the output.
        mode: one of :data:`PANOPTIC_MODES`; ``soft_boundaries=True`` is the older spelling of "soft".
    Returns:
        panoptic_seg (H, W) int32 and segments_info (detectron2's format: "id", "category_id", "isthing",
        "score", and "area", the segment's pixel count in ``panoptic_seg``); segments with no pixel are not
        listed.
    """
    mode = resolve_panoptic_mode(mode, soft_boundaries)
    if image_size[0] > stride * mask_logits.shape[-2] or image_size[1] > stride * mask_logits.shape[-1]:
        raise ValueError(
            f"image_size {tuple(image_size)} exceeds the padded input "
            f"{stride} x {tuple(mask_logits.shape[-2:])} of the mask logits"
        )
    rules = PanopticRules(
        num_proposals, num_thing_classes, stride, thing_score_threshold, overlap_threshold, mask_threshold
    )
    if mode != "exact":
        soft = mode == "soft"
        return panoptic_inference_stride4(cls_logits, mask_logits, image_size, output_size, rules, soft)
    probs = mask_logits.float().sigmoid()  # the whole map, as the reference (the same float32 values)
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), num_proposals, num_thing_classes)
    result = panoptic_exact(probs, scores, labels, image_size, output_size, rules)
    if result is None:  # small outputs, few kernels, an interpolation kernel we cannot read, noise-like maps
        return panoptic_inference_full_resolution(cls_logits, mask_logits, image_size, output_size, rules)
    panoptic, kept, mask_area = result
    return panoptic, segments_info(kept, scores, labels, mask_area[kept], num_thing_classes)
