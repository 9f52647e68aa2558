"""K-Net inference post-processing as pure functions (one image at a time).

Reference: ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py`` (``simple_test``, ``get_panoptic``,
``merge_stuff_thing``) and ``knet/det/kernel_update_head.py`` (``rescale_masks``, ``get_seg_masks``).

The reference applies the sigmoid at stride 4, resizes *all* masks bilinearly to the padded input size,
crops them to the resized image and resizes them to the original size, and only then decides.

* panoptic (:func:`panoptic_inference`): by default (``mode="exact"``) the reference's full-resolution
  result, pixel for pixel, without resizing all masks (see the function);
  :func:`panoptic_inference_full_resolution` is the reference order itself. The opt-in approximate
  modes decide on the stride-4 cells;
* instance: top-k (kernel, class) pairs; only their probability maps are upsampled (bilinear) and
  thresholded;
* semantic: per-class scores at stride 4, upsampled bilinearly (our own output; the reference has none).
"""

import functools
import math
from typing import Dict, List, Optional, Tuple

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
    "PANOPTIC_MODES",
    "resolve_panoptic_mode",
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


# ----------------------------------------------------------------------------------------------------------
# Panoptic fusion (reference ``KernelIterHead.get_panoptic`` / ``merge_stuff_thing``)
# ----------------------------------------------------------------------------------------------------------

PANOPTIC_MODES = ("exact", "stride4", "soft")

# Decision margins of the exact mode. Every value the reference compares is a combination with non-negative
# float32 weights of float32 probabilities (two bilinear resizes: four levels of two products and a sum,
# then x score), so whatever the order of its operations or its use of fused multiply-adds it lies within a
# relative (1 + 2**-24)**9 - 1 < 5.4e-7 of the same combination in exact arithmetic (subnormals aside: an
# absolute floor). Our float64 evaluations of that combination are exact to ~1e-15, so a comparison that
# holds with these margins on them holds on the reference's float32 values.
_ARGMAX_MARGIN = 1e-6  # relative: b < a for sure when a - b > _ARGMAX_MARGIN * (a + b) + _TINY
_TINY = 1e-35
_THRESHOLD_MARGIN = 1e-6  # absolute, around mask_threshold (values near 0.5)


def resolve_panoptic_mode(mode: str, soft_boundaries: bool = False) -> str:
    """``MODEL.KNET.TEST.PANOPTIC_MODE`` checked, with the legacy ``SOFT_BOUNDARIES True`` meaning "soft"."""
    if mode not in PANOPTIC_MODES:
        raise ValueError(
            f"unknown panoptic post-processing mode {mode!r} (MODEL.KNET.TEST.PANOPTIC_MODE); use one of "
            f"{', '.join(PANOPTIC_MODES)}"
        )
    return "soft" if soft_boundaries else mode


def _rescale_probs(probs: torch.Tensor, image_size, output_size, stride: int) -> torch.Tensor:
    """The reference's ``KernelUpdateHead.rescale_masks`` on probabilities (n, h4, w4) -> (n, H, W):
    bilinear (align_corners=False) to the padded input size ``stride * (h4, w4)``, crop to ``image_size``,
    bilinear to ``output_size``. ``ZwwWayne/K-Net:knet/det/kernel_update_head.py`` (``rescale_masks``)."""
    h4, w4 = probs.shape[-2:]
    x = F.interpolate(probs[None], size=(h4 * stride, w4 * stride), mode="bilinear", align_corners=False)
    x = x[..., : image_size[0], : image_size[1]]
    return F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)[0]


def _merge_decisions(scores, labels, mask_area, orig_area, num_thing_classes, thing_thr, overlap_thr):
    """The per-kernel tests of ``merge_stuff_thing`` (kernels visited by ``argsort(-scores)``): things need
    ``score >= thing_thr`` (compared in float32, as the reference's tensor/float comparison), every kernel
    needs ``mask_area > 0``, ``orig_area > 0`` and ``mask_area / orig_area >= overlap_thr`` (float64
    division, as the reference's Python ints). Decisions are independent of each other; the visiting order
    only numbers the segments.

    Returns kept kernel indices (int64) in visiting order (segment ids 1, 2, ...)."""
    visit = (labels >= num_thing_classes) | ~(scores < thing_thr)
    area, orig = mask_area.double(), orig_area.double()
    ratio_ok = ~((area / orig.clamp(min=1)) < overlap_thr)
    keep = visit & (mask_area > 0) & (orig_area > 0) & ratio_ok
    order = torch.argsort(-scores)  # the reference's call (not stable): same order for tied scores
    return order[keep[order]]


def _segments_info(kept, scores, labels, areas, num_thing_classes) -> List[Dict]:
    """detectron2 ``segments_info`` (id = 1 + visiting rank of the kept kernel) of the segments with a
    pixel (``areas``: exact pixel counts of the kept kernels)."""
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


def _segment_lut(num_kernels: int, kept: torch.Tensor) -> torch.Tensor:
    """(num_kernels,) int32 map kernel -> segment id: 1..len(kept) for the kept kernels, 0 (void) else."""
    lut = torch.zeros(num_kernels, dtype=torch.int32, device=kept.device)
    lut[kept] = torch.arange(1, len(kept) + 1, dtype=torch.int32, device=kept.device)
    return lut


def _paint(kernel_map, kept, scores, labels, num_thing_classes, mask_area=None):
    """(H, W) kernel index map -> (panoptic_seg int32, segments_info). ``mask_area``: the (N,) pixel
    counts of ``kernel_map`` per kernel, if known."""
    panoptic = _segment_lut(len(scores), kept)[kernel_map]
    if mask_area is None:
        areas = torch.bincount(panoptic.flatten().long(), minlength=len(kept) + 1)[1:]
    else:
        areas = mask_area[kept]
    return panoptic, _segments_info(kept, scores, labels, areas, num_thing_classes)


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
    """The reference panoptic inference, in its order of operations (pure, slow: it moves N full-resolution
    maps through memory). ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py`` (``get_panoptic``,
    ``merge_stuff_thing``) and ``knet/det/kernel_update_head.py`` (``rescale_masks``).

    sigmoid at stride ``stride``; bilinear to the padded input (``stride`` x the mask size), crop to
    ``image_size``, bilinear to ``output_size``; every pixel goes to the kernel maximising score x
    probability (first index on ties); kernels visited by descending score, things need ``score >=
    thing_score_threshold``, a kernel is kept when its argmax area is > 0 and at least
    ``overlap_threshold`` of its ``prob >= mask_threshold`` area. The reference writes ``label +
    rank * INSTANCE_OFFSET`` (rank from 0, void = num_classes); here the id is ``rank + 1`` (void = 0) and
    the category is in ``segments_info``.

    Args:
        cls_logits: (N, C) logits of all kernels (thing kernels first, then one per stuff class).
        mask_logits: (N, h, w) mask logits at stride ``stride`` of the padded input.
        image_size, output_size: (h, w) of the resized input and (H, W) of the output.

    Returns:
        panoptic_seg (H, W) int32 and segments_info (dicts with "id", "category_id", "isthing", "score",
        "area").
    """
    probs = mask_logits.float().sigmoid()
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), num_proposals, num_thing_classes)
    masks = _rescale_probs(probs, image_size, output_size, stride)
    kernel_map = (scores.view(-1, 1, 1) * masks).argmax(0)
    mask_area = torch.bincount(kernel_map.flatten(), minlength=len(scores))
    orig_area = (masks >= mask_threshold).flatten(1).sum(1)
    kept = _merge_decisions(
        scores, labels, mask_area, orig_area, num_thing_classes, thing_score_threshold, overlap_threshold
    )
    return _paint(kernel_map, kept, scores, labels, num_thing_classes, mask_area)


# ---- exact and fast: decide from the stride-4 cells where they agree, evaluate the rest -------------------


def _axis_weights(n_in: int, n_out: int, fused: bool):
    """Source indices and float32 weights of one axis of torch's bilinear resize (align_corners=False,
    output size given): ``src = max(n_in / n_out * (i + 0.5) - 0.5, 0)``, ``i0 = min(floor(src), n_in-1)``,
    ``i1 = i0 + (i0 < n_in - 1)``, ``l1 = clamp(src - i0, 0, 1)``, ``l0 = 1 - l1``; a copy when sizes are
    equal. ``fused``: ``src`` rounded once (a fused multiply-add, as torch's AVX2 CPU kernels and CUDA
    compute it) instead of twice. Returns (i0, i1, l0, l1) on the CPU, each (n_out,)."""
    if n_in == n_out:
        i = torch.arange(n_out)
        return i, i, torch.ones(n_out), torch.zeros(n_out)
    scale = torch.tensor(float(n_in), dtype=torch.float32) / torch.tensor(float(n_out), dtype=torch.float32)
    d = torch.arange(n_out, dtype=torch.float32) + 0.5  # exact
    if fused:  # the float64 product of two float32 is exact, the -0.5 too: one rounding to float32
        src = (scale.double() * d.double() - 0.5).float()
    else:
        src = scale * d - 0.5
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    l1 = (src - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    return i0, i1, 1 - l1, l1


# counters of the last exact-mode call (diagnostics for tests and benchmarks)
LAST_EXACT_STATS: Dict[str, int] = {}

_ROUNDING_CACHE: Dict[Tuple[str, int], Optional[bool]] = {}


def _source_index_rounding(device: torch.device) -> Optional[bool]:
    """Whether ``F.interpolate(mode="bilinear")`` on ``device`` rounds the source index once (True) or
    twice (False), read once per device from the interpolation weights it actually applies (one-hot
    inputs); None when neither matches (the exact mode then runs the reference)."""
    key = (device.type, -1 if device.index is None else device.index)
    if key not in _ROUNDING_CACHE:
        found = None
        for fused in (True, False):
            ok = True
            for n_in, n_out in ((61, 797), (797, 613), (301, 1216)):  # H + W > 128: torch's generic kernel
                eye = torch.eye(n_in, device=device)[None, :, None, :]
                got = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False)[0, :, 0].cpu()
                i0, i1, l0, l1 = _axis_weights(n_in, n_out, fused)
                x = torch.arange(n_out)
                inner = i0 != i1
                ok &= bool((got[i0, x] == l0)[inner].all()) and bool((got[i1, x] == l1)[inner].all())
            if ok:
                found = fused
                break
        _ROUNDING_CACHE[key] = found
    return _ROUNDING_CACHE[key]


def _fma32(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """float32 ``x * y + z`` rounded once (a fused multiply-add), for float32 tensors: the float64 product
    is exact, the float64 sum is corrected with its exact error (TwoSum) where it lands on a float32 tie."""
    p = x.double() * y.double()
    zd = z.double()
    s = p + zd
    bb = s - p
    err = (p - (s - bb)) + (zd - bb)
    f = s.float()
    fd = f.double()
    up = torch.nextafter(f, torch.full_like(f, float("inf")))
    down = torch.nextafter(f, torch.full_like(f, float("-inf")))
    lo = torch.where(fd < s, f, down)
    hi = torch.where(fd < s, up, f)
    tie = ((lo.double() + hi.double()) * 0.5 == s) & (err != 0)
    return torch.where(tie, torch.where(err > 0, hi, lo), f)


def _lerp32(t0, w0, t1, w1, fused: bool):
    """One level of torch's generic CPU bilinear kernel, ``t0 * w0 + t1 * w1`` in float32: with
    ``fused`` the compiler's contraction ``fma(t0, w0, t1 * w1)``, else two products and a sum."""
    return _fma32(t0, w0, t1 * w1) if fused else t0 * w0 + t1 * w1


_ARITHMETIC_CACHE: Dict[Tuple[str, int], Optional[bool]] = {}


def _bilinear_arithmetic(device: torch.device, fused_index: bool) -> Optional[bool]:
    """Whether :func:`_reference_values` reproduces ``F.interpolate`` bit for bit on ``device`` with
    contracted (True) or plain (False) multiply-adds, read once from a random two-step probe; None if
    neither (near-ties then use the reference's resized maps)."""
    key = (device.type, -1 if device.index is None else device.index)
    if key not in _ARITHMETIC_CACHE:
        g = torch.Generator().manual_seed(0)
        probs = torch.rand(4, 37, 53, generator=g).to(device)
        found = None
        for image_size, output_size in (((141, 203), (230, 317)), ((147, 211), (97, 150))):
            ref = _rescale_probs(probs, image_size, output_size, 4).cpu()
            ys, xs = torch.meshgrid(torch.arange(output_size[0]), torch.arange(output_size[1]), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            ok = []
            for fused in (True, False):
                plan = _exact_plan(probs.shape[1:], 4, image_size, output_size, fused_index)
                ks = [torch.full_like(ys, k) for k in range(4)]
                vals = torch.stack([_reference_values(probs.cpu(), plan, ys, xs, k, fused) for k in ks])
                ok.append(bool((vals == ref.flatten(1)).all()))
            current = True if ok[0] else (False if ok[1] else None)
            found = current if image_size == (141, 203) else (found if found == current else None)
        _ARITHMETIC_CACHE[key] = found
    return _ARITHMETIC_CACHE[key]


def _exact_plan(cells_hw, stride, image_size, output_size, fused_index: bool):
    """Per axis: step-1 (cells -> padded input) and step-2 (crop -> output) indices and float32 weights."""
    plan = []
    for n_cells, n_img, n_out in zip(cells_hw, image_size, output_size):
        step1 = _axis_weights(n_cells, stride * n_cells, fused_index)
        plan.append((step1, _axis_weights(n_img, n_out, fused_index)))
    return plan


def _reference_values(probs, plan, ys, xs, ks, fused: bool) -> torch.Tensor:
    """The reference's float32 resized probabilities at (ys, xs) of kernels ks, reproducing torch's
    generic CPU bilinear kernel operation by operation (outer level rows, inner level columns; see
    :func:`_lerp32`). (M,) float32."""
    (r1, r2), (c1, c2) = plan
    dev = probs.device
    ys, xs, ks = ys.cpu(), xs.cpu(), ks.cpu()
    flat = probs.reshape(probs.shape[0], -1).cpu()
    w4 = probs.shape[-1]

    def q(a, b):  # step-1 value at padded-input (a, b): rows outer, columns inner
        def t(c):
            left, right = flat[ks, c * w4 + c1[0][b]], flat[ks, c * w4 + c1[1][b]]
            return _lerp32(left, c1[2][b], right, c1[3][b], fused)

        return _lerp32(t(r1[0][a]), r1[2][a], t(r1[1][a]), r1[3][a], fused)

    def t2(a):
        return _lerp32(q(a, c2[0][xs]), c2[2][xs], q(a, c2[1][xs]), c2[3][xs], fused)

    return _lerp32(t2(r2[0][ys]), r2[2][ys], t2(r2[1][ys]), r2[3][ys], fused).to(dev)


def _axis_support(n_cells: int, stride: int, n_img: int, n_out: int, fused: bool, device):
    """See :func:`_axis_support_cpu`; on ``device``."""
    return tuple(t.to(device) for t in _axis_support_cpu(n_cells, stride, n_img, n_out, fused))


@functools.lru_cache(maxsize=256)
def _axis_support_cpu(n_cells: int, stride: int, n_img: int, n_out: int, fused: bool):
    """The composite of the two resizes along one axis (cells -> padded input ``stride * n_cells`` ->
    crop ``n_img`` -> ``n_out``): output index i reads the cells ``lo[i] .. lo[i] + span[i] - 1`` (span
    <= 3) with the float64 products ``weights[i, k]`` of the float32 step weights (k = cell - lo).

    Returns lo (n_out,) int64, span (n_out,) int64, weights (n_out, 3) float64, and ``start`` (n_out,):
    ``lo`` clamped so that ``start + 2 < n_cells``, with ``weights_at_start`` (n_out, 3) shifted to match
    (for 3-cell gathers)."""
    c0, c1, m0, m1 = _axis_weights(n_cells, stride * n_cells, fused)
    a0, a1, l0, l1 = _axis_weights(n_img, n_out, fused)
    lo = c0[a0]
    span = c1[a1] - lo + 1
    if int(span.max()) > 3:
        raise AssertionError("bilinear support wider than 3 cells")
    w = torch.zeros(n_out, 3, dtype=torch.float64)
    rows = torch.arange(n_out)
    for a, lam in ((a0, l0), (a1, l1)):
        for c, mu in ((c0[a], m0[a]), (c1[a], m1[a])):
            w.index_put_((rows, c - lo), lam.double() * mu.double(), accumulate=True)
    start = lo.clamp(max=max(n_cells - 3, 0))
    shift = lo - start
    ws = torch.zeros(n_out, 3, dtype=torch.float64)
    for k in range(3):
        src_k = k - shift
        valid = (src_k >= 0) & (src_k < 3)
        ws[valid, k] = w[valid.nonzero()[:, 0], src_k[valid]]
    return lo, span, w, start, ws


def _uniform_runs(key: torch.Tensor, neg: torch.Tensor, dim: int) -> torch.Tensor:
    """For runs of 1, 2, 3 consecutive entries along ``dim`` starting at each index: the common value of
    ``key`` if the run is uniform, else ``neg`` (unique negative codes of the start). Stacked after
    ``dim``."""
    size = key.shape[dim]
    out, cur = [key], key
    for n in (2, 3):
        keep = max(size - (n - 1), 0)
        nxt = key.narrow(dim, n - 1, keep)
        head = cur.narrow(dim, 0, keep)
        merged = torch.where(head == nxt, head, neg.narrow(dim, 0, keep))
        cur = torch.cat([merged, neg.narrow(dim, keep, size - keep)], dim)
        out.append(cur)
    return torch.stack(out, dim=dim + 1)


def _rect_counts(cells: torch.Tensor, rows, cols) -> torch.Tensor:
    """Number of output pixels whose whole support rectangle is True in ``cells`` (K, hc, wc) bool.
    ``rows``/``cols``: (lo, span) per output row / column. Returns (K,) float64 (exact integers)."""
    K, hc, wc = cells.shape
    total = torch.zeros(K, dtype=torch.float64, device=cells.device)
    # output rows (columns) per (lo, span); float32 holds these integer sums exactly (< 2**24 per row)
    row_w = [torch.bincount(rows[0][rows[1] == n], minlength=hc).float() for n in (1, 2, 3)]
    col_w = [torch.bincount(cols[0][cols[1] == n], minlength=wc).float() for n in (1, 2, 3)]
    run_r = cells
    for n in (1, 2, 3):  # run_r[:, lo]: rows lo .. lo + n - 1 all True (lo <= hc - n)
        if n > 1:
            run_r = run_r[:, :-1] & cells[:, n - 1 :]
        if row_w[n - 1].sum() == 0:
            continue
        run_c = run_r
        for m in (1, 2, 3):
            if m > 1:
                run_c = run_c[:, :, :-1] & run_r[:, :, m - 1 :]
            if col_w[m - 1].sum() == 0:
                continue
            per_row = run_c.float() @ col_w[m - 1][: wc - m + 1]
            total += per_row.double() @ row_w[n - 1][: hc - n + 1].double()
    return total


class _Evaluator:
    """Values of score x (resized probability) at sparse (pixel, kernel) pairs: float64 approximations
    from the 3 x 3 cells of the support (within 6e-7 of the reference's float32 value), and the
    reference's own float32 values (``_rescale_probs`` of the few kernels that need them, cached)."""

    def __init__(self, probs, scores, image_size, output_size, stride, rows, cols, fused_index):
        self.probs, self.scores = probs, scores
        self.image_size, self.output_size, self.stride = image_size, output_size, stride
        self.flat = probs.reshape(-1)
        w4 = probs.shape[-1]
        k3 = torch.arange(3, device=probs.device)
        self.offsets = (k3[:, None] * w4 + k3[None, :]).flatten()  # the 3 x 3 cells from (start_r, start_c)
        self.rows = rows
        self.rows_lo_w, self.cols_lo_w = rows[2], cols[2]
        self.cols = cols[:4] + (cols[4].float(),)
        self.exact: Dict[int, torch.Tensor] = {}
        self.stats = {"argmax_pairs": 0, "argmax_all_kernels": 0, "exact_kernels": 0, "exact_counts": 0,
                      "exact_values": 0}
        self.fused_index = fused_index

    def approx_probs(self, ys, xs, ks):
        """Resized probabilities at (ys, xs) of kernels ks (float64: the exact combination of the reference's
        float32 inputs and weights, up to float64 rounding)."""
        N, h4, w4 = self.probs.shape
        base = ks * (h4 * w4) + self.rows[3][ys] * w4 + self.cols[3][xs]
        blk = self.flat[base[:, None] + self.offsets].double()  # (M, 9)
        w = (self.rows[4][ys][:, :, None] * self.cols[4][xs][:, None, :]).view(-1, 9)
        return (blk * w).sum(1)

    def weights_at_lo(self, ys, xs):
        """(M, 3, 3) float64 composite weights of the cells ``lo + (i, k)`` (0 outside the support)."""
        return self.rows_lo_w[ys][:, :, None] * self.cols_lo_w[xs][:, None, :]

    def identical(self, ys, xs, ks):
        """(M,) int64 fingerprint-free check helper: the (M, 9) float32 support values of kernels ks."""
        N, h4, w4 = self.probs.shape
        base = ks * (h4 * w4) + self.rows[3][ys] * w4 + self.cols[3][xs]
        return self.flat[base[:, None] + self.offsets]

    def approx(self, ys, xs, ks):
        return self.scores[ks].double() * self.approx_probs(ys, xs, ks)

    def reference_at(self, ys, xs, ks) -> torch.Tensor:
        """The reference's float32 resized probabilities at (ys, xs) of kernels ks: reproduced operation by
        operation where that was verified on this device, else read from its resized maps."""
        self.stats["exact_values"] += len(ys)
        arithmetic = _bilinear_arithmetic(self.probs.device, self.fused_index)
        if arithmetic is not None:
            shape = self.probs.shape[1:]
            plan = _exact_plan(shape, self.stride, self.image_size, self.output_size, self.fused_index)
            return _reference_values(self.probs, plan, ys, xs, ks, arithmetic)
        out = torch.empty(len(ys), dtype=self.probs.dtype, device=self.probs.device)
        maps = self.reference_probs(ks.unique().tolist())
        for k, m in maps.items():
            sel = ks == k
            out[sel] = m[ys[sel], xs[sel]]
        return out

    def reference_probs(self, kernels: List[int]) -> Dict[int, torch.Tensor]:
        """The reference's float32 resized probability maps (H, W) of ``kernels`` (computed by the same
        torch calls on a subset of the channels: per element the same arithmetic, as long as torch's
        generic bilinear kernel runs, hence never 3 channels)."""
        todo = [k for k in dict.fromkeys(kernels) if k not in self.exact]
        if todo:
            sel = todo + ([todo[0]] if len(todo) == 3 else [])
            maps = _rescale_probs(self.probs[sel], self.image_size, self.output_size, self.stride)
            for k, m in zip(todo, maps):
                self.exact[k] = m
            self.stats["exact_kernels"] += len(todo)
        return {k: self.exact[k] for k in kernels}


def _exact_fast_preconditions(probs, image_size, output_size, stride) -> bool:
    N, h4, w4 = probs.shape
    H, W = output_size
    return (
        N >= 4  # torch's bilinear takes another kernel for 3 channels (one thread); few kernels are cheap
        and min(h4, w4) >= 3
        and H + W > 128  # torch's bilinear takes another kernel for small outputs; they are cheap anyway
        and stride * (h4 + w4) > 128
        and stride >= 2
    )


def _panoptic_exact(probs, scores, labels, image_size, output_size, stride, num_thing_classes, thing_thr,
                    overlap_thr, mask_thr):
    """Exact mode: the result of :func:`panoptic_inference_full_resolution` without resizing all maps.
    Returns (kernel_map (H, W) int64, kept, mask_area (N,)), or None when the preconditions do not hold."""
    if not _exact_fast_preconditions(probs, image_size, output_size, stride):
        return None
    fused = _source_index_rounding(probs.device)
    if fused is None:
        return None
    device = probs.device
    N, h4, w4 = probs.shape
    (h, w), (H, W) = image_size, output_size
    rows = _axis_support(h4, stride, h, H, fused, device)
    cols = _axis_support(w4, stride, w, W, fused, device)
    hc, wc = int((rows[0] + rows[1]).max()), int((cols[0] + cols[1]).max())

    # 1. per cell: best kernel, and whether it beats every other by the margin
    weighted = scores[:, None, None] * probs[:, :hc, :wc]
    best_val, best = weighted.max(0)
    weighted.scatter_(0, best[None], float("-inf"))
    second_val, second = weighted.max(0)  # ``weighted`` keeps -inf at ``best``: the third is read from it
    neg = -1 - torch.arange(hc * wc, device=device).view(hc, wc)
    key = torch.where(best_val - second_val > _ARGMAX_MARGIN * (best_val + second_val) + _TINY, best, neg)
    # 2. pixels whose support cells all have the same safe best kernel take it
    runs = _uniform_runs(key, neg, 0)  # (hc, 3, wc)
    runs = _uniform_runs(runs, neg[:, None, :].expand(hc, 3, wc), 2)  # (hc, 3, wc, 3)
    ry = rows[0] * 3 + rows[1] - 1
    rx = cols[0] * 3 + cols[1] - 1
    kernel_map = runs.reshape(hc * 3, wc * 3).index_select(0, ry).index_select(1, rx)
    unc = (kernel_map < 0).nonzero()
    ev = _Evaluator(probs, scores, image_size, output_size, stride, rows, cols, fused)
    # 3.-4. the sparse part: a few hundred small tensor operations, on one thread (more only add
    # synchronisation there; the dense steps above use all threads)
    with _one_thread(device):
        # 3. the other pixels: candidates = the two best kernels of each support cell
        if len(unc):
            uy, ux = unc[:, 0], unc[:, 1]
            top = (best, second, weighted)
            kernel_map[uy, ux] = _resolve_argmax(uy, ux, top, scores, hc, wc, rows, cols, ev)
        del weighted
        mask_area = torch.bincount(kernel_map.flatten(), minlength=N)
        # 4. the prob >= mask_thr area of the kernels whose decision depends on it
        visit = (labels >= num_thing_classes) | ~(scores < thing_thr)
        need = (visit & (mask_area > 0)).nonzero()[:, 0]
        orig_area = torch.zeros(N, dtype=torch.int64, device=device)
        if len(need):
            orig_area[need] = _original_areas(
                need, mask_area[need], probs, hc, wc, rows, cols, ev, H * W, mask_thr, overlap_thr
            )
        kept = _merge_decisions(
            scores, labels, mask_area, orig_area, num_thing_classes, thing_thr, overlap_thr
        )
    LAST_EXACT_STATS.clear()
    LAST_EXACT_STATS.update(ev.stats, pixels=H * W, border_pixels=len(unc), area_kernels=len(need))
    return kernel_map, kept, mask_area


class _one_thread:
    """Context: ``torch.set_num_threads(1)`` on CPU devices, the previous count restored on exit."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cpu" and torch.get_num_threads() > 1

    def __enter__(self):
        if self.active:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            torch.set_num_threads(self.threads)
        return False


def _surely_below(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """b < a holds for the reference's float32 values too (see the margins above)."""
    return a - b > _ARGMAX_MARGIN * (a + b) + _TINY


def _resolve_argmax(ys, xs, cells, scores, hc, wc, rows, cols, ev: _Evaluator) -> torch.Tensor:
    """The reference's argmax kernel at the pixels (ys, xs) whose support cells disagree (or are close).

    ``cells``: per cell (hc, wc) the best and second-best kernel, and the (N, hc, wc) score x probability
    with -inf at the best. Candidates: the two best kernels of every support cell. They are complete when
    the best candidate beats, by the margin, the combination of the support cells' third-best values (a
    bound on any other kernel, the value being a combination of the cells with the same weights).
    Otherwise (rare) all kernels are evaluated; where two are within the margin, the reference's float32
    values decide (first index on exact ties)."""
    best, second, weighted = cells
    device = best.device
    N = weighted.shape[0]
    U = len(ys)
    # pixels with the same support rectangle (same lo and span per axis) share their candidates
    ry, rx = rows[0] * 3 + rows[1] - 1, cols[0] * 3 + cols[1] - 1
    pixel_rect = ry[ys] * (3 * wc) + rx[xs]
    used = torch.zeros(9 * hc * wc, dtype=torch.bool, device=device)
    used[pixel_rect] = True
    rect = used.nonzero()[:, 0]
    R = len(rect)
    lookup = torch.zeros(9 * hc * wc, dtype=torch.int64, device=device)
    lookup[rect] = torch.arange(R, device=device)
    inverse = lookup[pixel_rect]
    rlo, rspan = rect // (3 * wc) // 3, rect // (3 * wc) % 3 + 1
    clo, cspan = rect % (3 * wc) // 3, rect % (3 * wc) % 3 + 1
    k3 = torch.arange(3, device=device)
    r = (rlo[:, None] + k3).clamp(max=hc - 1)  # (R, 3)
    c = (clo[:, None] + k3).clamp(max=wc - 1)
    valid = (k3 < rspan[:, None])[:, :, None] & (k3 < cspan[:, None])[:, None, :]  # (R, 3, 3)
    cell_id = (r[:, :, None] * wc + c[:, None, :]).flatten()  # (R * 9,) in the (hc, wc) grid
    top2 = torch.stack([best.flatten()[cell_id], second.flatten()[cell_id]]).view(2, R, 3, 3)
    rest = weighted.reshape(N, -1).index_select(1, cell_id)  # (N, R * 9), -inf at the best
    rest.scatter_(0, top2[1].reshape(1, -1), float("-inf"))
    third = rest.amax(0).view(R, 3, 3)
    cand = torch.where(valid, top2, -1).permute(1, 0, 2, 3).reshape(R, -1)  # (R, 18)
    cand = cand.sort(1, descending=True).values
    fresh = torch.ones_like(cand, dtype=torch.bool)
    fresh[:, 1:] = cand[:, 1:] != cand[:, :-1]
    fresh &= cand >= 0
    width = int(fresh.sum(1).max())
    order = fresh.float().argsort(dim=1, descending=True, stable=True)[:, :width]  # distinct ones first
    cand = torch.where(fresh.gather(1, order), cand.gather(1, order), -1)  # (R, width)
    # any other kernel is below the third value of every support cell, hence below their combination
    third = (third[inverse].double() * ev.weights_at_lo(ys, xs)).sum((1, 2))  # (U,)
    per_pixel = cand[inverse]  # (U, width)
    pu, slot = (per_pixel >= 0).nonzero(as_tuple=True)
    pk = per_pixel[pu, slot]
    val = ev.approx(ys[pu], xs[pu], pk)
    vmax = torch.full((U,), float("-inf"), dtype=torch.float64, device=device)
    vmax = vmax.scatter_reduce(0, pu, val, "amax")
    contender = ~_surely_below(val, vmax[pu])
    n_cont = torch.bincount(pu[contender], minlength=U)
    winner = torch.full((U,), -1, dtype=torch.int64, device=device)
    sure = (n_cont == 1) & _surely_below(third, vmax)
    one = contender & sure[pu]
    winner[pu[one]] = pk[one]
    hard = (~sure).nonzero()[:, 0]
    if len(hard):
        hy, hx = ys[hard], xs[hard]
        allk = torch.arange(N, device=device)
        val = ev.approx(hy.repeat_interleave(N), hx.repeat_interleave(N), allk.repeat(len(hard))).view(-1, N)
        contender = ~_surely_below(val, val.amax(1, keepdim=True))
        single = contender.sum(1) == 1
        winner[hard[single]] = contender[single].float().argmax(1)
        tie = (~single).nonzero()[:, 0]
        if len(tie):
            # contenders with the same score and the same support values get bit-identical values from the
            # reference: its first-index rule picks the lowest (e.g. saturated probabilities)
            first = contender[tie].float().argmax(1)
            same = torch.ones(len(tie), dtype=torch.bool, device=device)
            ref_blk = ev.identical(hy[tie], hx[tie], first)
            for k in contender[tie].any(0).nonzero()[:, 0].tolist():
                rows_k = contender[tie][:, k]
                kk = torch.full_like(first, k)
                blk = ev.identical(hy[tie], hx[tie], kk)
                eq = (blk == ref_blk).all(1) & (scores[k] == scores[first])
                same &= ~rows_k | eq
            winner[hard[tie[same]]] = first[same]
            tie = tie[~same]
        if len(tie):
            t_pix, t_k = contender[tie].nonzero(as_tuple=True)  # contenders, kernels increasing per pixel
            exact = scores[t_k] * ev.reference_at(hy[tie][t_pix], hx[tie][t_pix], t_k)  # the reference's v
            best = torch.full((len(tie),), float("-inf"), dtype=exact.dtype, device=device)
            best = best.scatter_reduce(0, t_pix, exact, "amax")
            at_best = exact == best[t_pix]
            # the reference's argmax returns the first maximum: the lowest kernel index among the equal
            first = torch.full((len(tie),), N, dtype=torch.int64, device=device)
            first = first.scatter_reduce(0, t_pix[at_best], t_k[at_best], "amin")
            winner[hard[tie]] = first
    ev.stats["argmax_pairs"] += len(pu)
    ev.stats["argmax_all_kernels"] += len(hard)
    return winner


def _original_areas(kernels, mask_area, probs, hc, wc, rows, cols, ev: _Evaluator, num_pixels, mask_thr,
                    overlap_thr) -> torch.Tensor:
    """Exact ``prob >= mask_thr`` pixel counts of ``kernels`` where the overlap decision depends on them;
    elsewhere a value in the proven bounds that gives the same decision."""
    p = probs[kernels, :hc, :wc]
    above = _rect_counts(p >= mask_thr + _THRESHOLD_MARGIN, rows[:2], cols[:2])
    below = _rect_counts(p < mask_thr - _THRESHOLD_MARGIN, rows[:2], cols[:2])
    lo, hi = above, num_pixels - below
    area = mask_area.double()
    keep_sure = (lo >= 1) & ~((area / hi.clamp(min=1)) < overlap_thr)
    drop_sure = (hi == 0) | ((lo >= 1) & ((area / lo.clamp(min=1)) < overlap_thr))
    out = lo.long()  # decided kernels: a count in the bounds giving the same decision
    for i in (~(keep_sure | drop_sure)).nonzero()[:, 0].tolist():
        ev.stats["exact_counts"] += 1
        out[i] = _exact_count(int(kernels[i]), p[i], lo[i], rows, cols, ev, mask_thr)
    return out


def _exact_count(k, p, n_above, rows, cols, ev: _Evaluator, mask_thr) -> int:
    """Exact number of output pixels with resized probability >= mask_thr for kernel k (cells ``p``)."""
    hc, wc = p.shape
    code = torch.where(p < mask_thr - _THRESHOLD_MARGIN, 0, -1)
    code = torch.where(p >= mask_thr + _THRESHOLD_MARGIN, 1, code)
    neg = -2 - torch.arange(hc * wc, device=p.device).view(hc, wc)
    code = torch.where(code == -1, neg, code)
    runs = _uniform_runs(code, neg, 0)
    runs = _uniform_runs(runs, neg[:, None, :].expand(hc, 3, wc), 2).reshape(hc * 3, wc * 3)
    ry = rows[0] * 3 + rows[1] - 1
    rx = cols[0] * 3 + cols[1] - 1
    pix = runs[ry[:, None], rx[None, :]]
    mixed = (pix < 0).nonzero()
    count = int(n_above)
    if len(mixed):
        ys, xs = mixed[:, 0], mixed[:, 1]
        ks = torch.full_like(ys, k)
        val = ev.approx_probs(ys, xs, ks)
        count += int((val >= mask_thr + _THRESHOLD_MARGIN).sum())
        near = ((val - mask_thr).abs() < _THRESHOLD_MARGIN).nonzero()[:, 0]
        if len(near):
            exact = ev.reference_at(ys[near], xs[near], ks[near])
            count += int((exact >= mask_thr).sum())
    return count


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
    mode: str = "exact",
    soft_boundaries: bool = False,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic fusion of the reference (``merge_stuff_thing``).

    Every kernel gets a score and label (:func:`kernel_scores`), each pixel goes to the kernel maximising
    score x probability, kernels are visited by descending score, things need ``score >=
    thing_score_threshold`` (stuff has no score threshold), a kernel is kept when its argmax area is > 0
    and at least ``overlap_threshold`` of its ``prob >= mask_threshold`` area. Segment ids count from 1 in
    that order; 0 is void.

    Modes:
        * ``"exact"`` (default): the output of :func:`panoptic_inference_full_resolution` (the reference's
          full-resolution order), computed without resizing all N maps. Bilinear resizing makes every
          output value a convex combination of at most 3 x 3 stride-4 cells; where all of them have the
          same best kernel by a margin, that kernel wins at full resolution, so only pixels near borders are
          evaluated (from their cells, and with the reference's own float32 values where two kernels are
          within rounding distance). The ``prob >= mask_threshold`` areas are counted the same way
          (pixels whose cells are all above / all below), exactly where the overlap decision needs it.
        * ``"stride4"``: decide on the stride-4 cells (areas weighted by the part of a cell inside the
          image) and bring the kept segments up as bool (each pixel takes its cell's segment): 4-pixel
          border steps, decisions may differ near the overlap threshold.
        * ``"soft"``: the stride-4 decisions, with the kept segments' score x probability maps (and the max
          of the discarded ones) resized bilinearly and argmaxed: smoother borders, slower.

    Args:
        cls_logits: (N, C) logits of all kernels (thing kernels first, then one per stuff class).
        mask_logits: (N, h, w) mask logits at stride ``stride`` of the padded input.
        image_size, output_size: (h, w) of the resized input and (H, W) of the output.
        mode: one of :data:`PANOPTIC_MODES`. ``soft_boundaries=True`` is the older spelling of "soft".

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
    kwargs = dict(
        num_proposals=num_proposals,
        num_thing_classes=num_thing_classes,
        stride=stride,
        thing_score_threshold=thing_score_threshold,
        overlap_threshold=overlap_threshold,
        mask_threshold=mask_threshold,
    )
    if mode == "exact":
        probs = mask_logits.float().sigmoid()  # the whole map, as the reference (same float32 values)
        scores, labels = kernel_scores(cls_logits.float().sigmoid(), num_proposals, num_thing_classes)
        result = _panoptic_exact(
            probs, scores, labels, image_size, output_size, stride, num_thing_classes, thing_score_threshold,
            overlap_threshold, mask_threshold,
        )
        if result is None:  # small outputs, few kernels, or an interpolation kernel we cannot read
            return panoptic_inference_full_resolution(
                cls_logits, mask_logits, image_size, output_size, **kwargs
            )
        kernel_map, kept, mask_area = result
        return _paint(kernel_map, kept, scores, labels, num_thing_classes, mask_area)
    return _panoptic_stride4(cls_logits, mask_logits, image_size, output_size, soft=mode == "soft", **kwargs)


def _select_segments_stride4(
    scores, labels, probs, num_thing_classes, thing_thr, overlap_thr, mask_thr, weights
):
    """``merge_stuff_thing``'s decisions on the (N, hc, wc) cells; areas are sums of the (hc, wc) cell
    ``weights`` (the pixel area each cell stands for). Returns (cell kernel map, kept)."""
    N = probs.shape[0]
    cell_ids = (scores[:, None, None] * probs).argmax(dim=0)
    area = torch.bincount(cell_ids.flatten(), weights=weights.flatten(), minlength=N).to(probs.dtype)
    orig_area = (probs >= mask_thr).to(probs.dtype).flatten(1) @ weights.flatten().to(probs.dtype)
    is_thing = labels < num_thing_classes
    ok = (~is_thing) | (scores >= thing_thr)
    ok &= (area > 0) & (orig_area > 0)
    ok &= area >= overlap_thr * orig_area
    order = torch.argsort(-scores, stable=True)
    return cell_ids, order[ok[order]]


def _panoptic_stride4(cls_logits, mask_logits, image_size, output_size, *, num_proposals, num_thing_classes,
                      stride, thing_score_threshold, overlap_threshold, mask_threshold, soft):
    """The approximate modes "stride4" and "soft" (see :func:`panoptic_inference`)."""
    probs = crop_to_image(mask_logits, image_size, stride).float().sigmoid()
    scores, labels = kernel_scores(cls_logits.float().sigmoid(), num_proposals, num_thing_classes)
    weights = cell_coverage(image_size, probs.shape[-2:], stride, probs.device)
    cell_ids, kept = _select_segments_stride4(
        scores, labels, probs, num_thing_classes, thing_score_threshold, overlap_threshold, mask_threshold,
        weights,
    )
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
        up = upsample_probs(torch.cat([weighted[kept], rest]), image_size, output_size, stride)
        winner = up.argmax(0)
        ids = torch.arange(1, len(kept) + 2, dtype=torch.int32, device=probs.device)
        ids[-1] = 0
        panoptic = ids[winner]
    else:
        lut = _segment_lut(len(scores), kept)
        rows, cols = nearest_cells(image_size, output_size, cell_ids.shape, stride, probs.device)
        panoptic = lut[cell_ids][rows[:, None], cols[None, :]]
    areas = torch.bincount(panoptic.flatten().long(), minlength=len(kept) + 1)[1:]
    return panoptic, _segments_info(kept, scores, labels, areas, num_thing_classes)


def _select_segments(scores, labels, probs, num_thing_classes, thing_score_threshold, overlap_threshold,
                     mask_threshold, weights=None):
    """Compatibility name of :func:`_select_segments_stride4` (``weights`` None: 1 per cell)."""
    if weights is None:
        weights = torch.ones_like(probs[0])
    return _select_segments_stride4(scores, labels, probs, num_thing_classes, thing_score_threshold,
                                    overlap_threshold, mask_threshold, weights)


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
