"""K-Net inference post-processing as pure functions (one image at a time).

Reference: ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py`` (``simple_test``, ``get_panoptic``,
``merge_stuff_thing``) and ``knet/det/kernel_update_head.py`` (``rescale_masks``), knet_spec §4.

The reference applies the sigmoid at stride 4, upsamples *all* masks to the padded input size, crops and
resizes them to the original size, and only then decides. Here every decision is made at mask resolution on
the stride-4 probabilities cropped to the image area (``ceil(h / stride)`` x ``ceil(w / stride)`` cells), and
only what is kept is brought to the output size:

* panoptic: per-cell argmax of score x probability, thresholds and overlap test per kernel (areas count
  each cell by the fraction of it inside the image); the kept
  segments are brought to the output size as bool (each output pixel takes the segment of the cell its centre
  falls in), or, with ``soft_boundaries``, by bilinearly upsampling the kept segments' score x probability
  maps (plus one map for everything discarded) and taking the argmax;
* instance: top-k (kernel, class) pairs; only their probability maps are upsampled (bilinear) and
  thresholded;
* semantic: per-class scores at stride 4, upsampled bilinearly.

The stride-4 grid and the output are aligned as in the reference: the output pixel centre ``y`` maps to the
image coordinate ``(y + 0.5) * h / H`` (``h`` the size of the resized input, ``H`` the output size).
"""

import math
from typing import Dict, List, Tuple

import torch
from detectron2.structures import BitMasks, Boxes, Instances
from torch.nn import functional as F

__all__ = [
    "crop_to_image",
    "upsample_probs",
    "nearest_cells",
    "instance_inference",
    "panoptic_inference",
    "panoptic_inference_full_resolution",
    "semantic_inference",
    "kernel_scores",
    "cell_coverage",
]


def crop_to_image(maps: torch.Tensor, image_size: Tuple[int, int], stride: int) -> torch.Tensor:
    """Keep the cells of a (..., h_pad/stride, w_pad/stride) map that cover the (h, w) image area."""
    hc, wc = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    return maps[..., :hc, :wc]


def upsample_probs(
    maps: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    stride: int,
    chunk: int = 16,
) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of cropped stride-``stride`` maps (K, hc, wc) to
    ``output_size`` (K, H, W), aligned as described in the module docstring. Processed ``chunk`` maps at a
    time to bound memory."""
    H, W = output_size
    if maps.shape[0] == 0:
        return maps.new_zeros((0, H, W))
    scale = (stride * H / image_size[0], stride * W / image_size[1])
    out = []
    for part in maps.split(chunk):
        up = F.interpolate(
            part[None], scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )
        up = up[..., :H, :W]
        if up.shape[-2] < H or up.shape[-1] < W:  # float rounding of the output size
            up = F.pad(up, (0, W - up.shape[-1], 0, H - up.shape[-2]), mode="replicate")
        out.append(up[0])
    return torch.cat(out)


def nearest_cells(image_size, output_size, num_cells, stride: int, device=None):
    """Row and column cell indices of every output pixel centre: ``floor((y + 0.5) * h / (H * stride))``,
    clamped to the cropped grid. Returns (rows (H,), cols (W,)) int64."""
    idx = []
    for n_out, n_img, n_cells in zip(output_size, image_size, num_cells):
        pos = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_img / (n_out * stride))
        idx.append(pos.floor().long().clamp_(0, n_cells - 1))
    return idx[0], idx[1]


def kernel_scores(cls_probs: torch.Tensor, num_proposals: int, num_thing_classes: int):
    """Score and label of every kernel (reference ``get_panoptic``): thing kernels take the max over the
    thing classes; the stuff kernel ``num_proposals + j`` takes its own class ``num_thing_classes + j``
    (the diagonal). Returns (scores (N,), labels (N,) int64)."""
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


def instance_inference(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    *,
    stride: int = 4,
    max_per_image: int = 100,
    mask_threshold: float = 0.5,
    score_threshold: float = 0.0,
) -> Instances:
    """Top-``max_per_image`` (kernel, class) pairs ranked by class probability (reference ``simple_test``).
    One kernel can appear with several classes. Score = class probability (no mask rescoring, no NMS).

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


def cell_coverage(image_size, num_cells, stride: int, device=None) -> torch.Tensor:
    """(hc, wc) fraction of every cropped cell that lies inside the (h, w) image (1 except on the last
    row / column when h or w is not a multiple of ``stride``): the pixel area a cell stands for."""
    fractions = []
    for n_img, n_cells in zip(image_size, num_cells):
        start = torch.arange(n_cells, device=device, dtype=torch.float32) * stride
        fractions.append(((n_img - start).clamp(0, stride)) / stride)
    return fractions[0][:, None] * fractions[1][None, :]


def _select_segments(
    scores,
    labels,
    probs,
    num_thing_classes,
    thing_score_threshold,
    overlap_threshold,
    mask_threshold,
    weights=None,
):
    """The panoptic decisions of ``merge_stuff_thing`` on (N, h, w) probabilities; areas are sums of the
    (h, w) ``weights`` (pixel areas of the cells; None = 1 each).

    Returns (cell_ids (h, w) kernel index of the argmax, kept kernel indices sorted by descending score)."""
    N = probs.shape[0]
    cell_ids = (scores[:, None, None] * probs).argmax(dim=0)
    if weights is None:
        weights = torch.ones_like(probs[0])
    area = torch.bincount(cell_ids.flatten(), weights=weights.flatten(), minlength=N).to(probs.dtype)
    orig_area = (probs >= mask_threshold).to(probs.dtype).flatten(1) @ weights.flatten().to(probs.dtype)
    is_thing = labels < num_thing_classes
    ok = (~is_thing) | (scores >= thing_score_threshold)
    ok &= (area > 0) & (orig_area > 0)
    ok &= area >= overlap_threshold * orig_area
    order = torch.argsort(-scores, stable=True)
    return cell_ids, order[ok[order]]


def _segments_info(kept, scores, labels, num_thing_classes, present) -> List[Dict]:
    info = []
    for seg_id, k in enumerate(kept.tolist(), start=1):
        if not present[seg_id]:
            continue
        label = int(labels[k])
        info.append(
            {
                "id": seg_id,
                "category_id": label,
                "isthing": bool(label < num_thing_classes),
                "score": float(scores[k]),
            }
        )
    return info


def panoptic_inference(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    *,
    num_proposals: int,
    num_thing_classes: int,
    stride: int = 4,
    thing_score_threshold: float = 0.3,
    overlap_threshold: float = 0.6,
    mask_threshold: float = 0.5,
    soft_boundaries: bool = False,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic fusion of the reference (``merge_stuff_thing``), decided at mask resolution.

    Every kernel gets a score and label (:func:`kernel_scores`). Each cell goes to the kernel maximising
    score x probability. Kernels are visited by descending score; things need ``score >=
    thing_score_threshold`` (stuff has no score threshold); a kernel is kept when its argmax area is > 0
    and at least ``overlap_threshold`` of its ``prob >= mask_threshold`` area. Segment ids count from 1 in
    that order; 0 is unassigned (void).

    Args:
        cls_logits: (N, C) logits of all kernels (thing kernels first, then one per stuff class).
        mask_logits: (N, h, w) mask logits at stride ``stride`` of the padded input.
        image_size, output_size: (h, w) of the resized input and (H, W) of the output.
        soft_boundaries: False: the kept segments are upsampled as bool (each output pixel takes its cell's
            segment). True: the kept segments' score x probability maps and the max of the discarded ones
            are upsampled bilinearly and the argmax decides (smoother, closer to the reference, slower).

    Returns:
        panoptic_seg (H, W) int32 and segments_info (list of dicts with "id", "category_id", "isthing",
        "score"), detectron2's format; segments with no pixel left are dropped.
    """
    probs = crop_to_image(mask_logits, image_size, stride).float().sigmoid()
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), num_proposals, num_thing_classes)
    weights = cell_coverage(image_size, probs.shape[-2:], stride, probs.device)
    cell_ids, kept = _select_segments(
        scores,
        labels,
        probs,
        num_thing_classes,
        thing_score_threshold,
        overlap_threshold,
        mask_threshold,
        weights,
    )
    H, W = output_size
    if kept.numel() == 0:
        return torch.zeros((H, W), dtype=torch.int32, device=probs.device), []
    if soft_boundaries:
        weighted = scores[:, None, None] * probs
        discarded = torch.ones(len(scores), dtype=torch.bool, device=probs.device)
        discarded[kept] = False
        if discarded.any():  # one map for everything discarded: pixels it wins are void
            rest = weighted[discarded].amax(0, keepdim=True)
        else:
            rest = torch.full_like(weighted[:1], -1.0)
        up = upsample_probs(torch.cat([weighted[kept], rest]), image_size, output_size, stride)
        winner = up.argmax(0)
        ids = torch.arange(1, len(kept) + 2, dtype=torch.int32, device=probs.device)
        ids[-1] = 0
        panoptic = ids[winner]
    else:
        lut = _segment_lut(len(scores), kept)
        rows, cols = nearest_cells(image_size, output_size, cell_ids.shape, stride, probs.device)
        panoptic = lut[cell_ids][rows[:, None], cols[None, :]]
    return panoptic, _present_segments_info(panoptic, kept, scores, labels, num_thing_classes)


def panoptic_inference_full_resolution(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    *,
    num_proposals: int,
    num_thing_classes: int,
    stride: int = 4,
    thing_score_threshold: float = 0.3,
    overlap_threshold: float = 0.6,
    mask_threshold: float = 0.5,
) -> Tuple[torch.Tensor, List[Dict]]:
    """The reference order of operations, for comparison and benchmarks: sigmoid, upsample all N masks to
    the padded size, crop, resize to the output size, then fuse at full resolution. It agrees with
    :func:`panoptic_inference` except near segment borders and for segments whose overlap ratio is close to
    the threshold, and moves N full-resolution maps through memory."""
    probs = mask_logits.float().sigmoid()[None]
    h_pad, w_pad = probs.shape[-2] * stride, probs.shape[-1] * stride
    probs = F.interpolate(probs, size=(h_pad, w_pad), mode="bilinear", align_corners=False)
    probs = probs[..., : image_size[0], : image_size[1]]
    probs = F.interpolate(probs, size=tuple(output_size), mode="bilinear", align_corners=False)[0]
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), num_proposals, num_thing_classes)
    cell_ids, kept = _select_segments(
        scores, labels, probs, num_thing_classes, thing_score_threshold, overlap_threshold, mask_threshold
    )
    panoptic = _segment_lut(len(scores), kept)[cell_ids]
    return panoptic, _present_segments_info(panoptic, kept, scores, labels, num_thing_classes)


def _segment_lut(num_kernels: int, kept: torch.Tensor) -> torch.Tensor:
    """(num_kernels,) int32 map kernel -> segment id: 1..len(kept) for the kept kernels, 0 (void) else."""
    lut = torch.zeros(num_kernels, dtype=torch.int32, device=kept.device)
    lut[kept] = torch.arange(1, len(kept) + 1, dtype=torch.int32, device=kept.device)
    return lut


def _present_segments_info(panoptic, kept, scores, labels, num_thing_classes) -> List[Dict]:
    """``segments_info`` of the kept segments that still own at least one pixel of ``panoptic``."""
    present = torch.bincount(panoptic.flatten().long(), minlength=len(kept) + 1) > 0
    return _segments_info(kept, scores, labels, num_thing_classes, present.tolist())


def semantic_inference(
    cls_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    *,
    num_proposals: int,
    num_thing_classes: int,
    stride: int = 4,
) -> torch.Tensor:
    """Per-class scores of a panoptic/instance K-Net (not part of the reference, which has no semantic output
    for these models): ``sem[c] = sum_k w[k, c] * prob_k`` with ``w`` the class probabilities of the thing
    kernels on the thing classes and, for the stuff kernel of class c, its own probability for c. Computed
    at stride 4 and upsampled bilinearly.

    Returns:
        (C, H, W) float scores (argmax over dim 0 gives the semantic map).
    """
    P, T = num_proposals, num_thing_classes
    cls_probs = cls_logits.float().sigmoid()
    weights = torch.zeros_like(cls_probs)
    weights[:P, :T] = cls_probs[:P, :T]
    S = cls_probs.shape[0] - P
    if S > 0:
        j = torch.arange(S, device=cls_probs.device)
        weights[P + j, T + j] = cls_probs[P + j, T + j]
    probs = crop_to_image(mask_logits, image_size, stride).float().sigmoid()
    sem = torch.einsum("nc,nhw->chw", weights, probs)
    return upsample_probs(sem, image_size, output_size, stride)
