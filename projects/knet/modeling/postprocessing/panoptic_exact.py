"""The exact panoptic mode: the reference's full-resolution result without resizing all N maps.

Bilinear resizing makes every output value a combination, with non-negative weights, of at most 3 x 3
stride-4 cells (:func:`~.bilinear.axis_support`). Output rows (columns) that read the same cells form a run;
a rectangle of a row run and a column run reads one support block. Where every cell of the block has the same
best kernel by a margin, that kernel wins at every pixel of the rectangle. Only the pixels of the other
rectangles (near segment borders) are evaluated, with the candidates of their block (:func:`resolve_argmax`).
The ``prob >= mask_threshold`` areas are counted the same way, exactly where the overlap decision needs it
(:func:`threshold_areas`). When most kernels peak far below the strongest one (a trained model's unused
proposals), only the others are compared cell by cell, the largest peak of the rest bounding them
(:func:`strong_kernels`). Noise-like maps (most pixels on a border, e.g. random weights) fall back to the
reference order, cheaper there. Reference: ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py``
(``get_panoptic``, ``merge_stuff_thing``) and ``knet/det/kernel_update_head.py`` (``rescale_masks``).

Decision margins: every value the reference compares is a combination with non-negative float32 weights of
float32 probabilities (two bilinear resizes: four levels of two products and a sum, then x score), so
whatever the order of its operations or its use of fused multiply-adds it lies within a relative
(1 + 2**-24)**9 - 1 < 5.4e-7 of the same combination in exact arithmetic (subnormals aside: an absolute
floor). Our float64 evaluations of that combination are exact to ~1e-15, so a comparison that holds with the
margins below on them holds on the reference's float32 values; closer values are decided with the
reference's own float32 values (:class:`~.pixel_values.PixelValues`).
"""

from typing import Dict

import torch

from .bilinear import axis_support, source_index_rounding
from .fusion import PanopticRules, merge_decisions, segment_lut
from .pixel_values import PixelValues
from .runs import AxisRuns, axis_runs, rect_pixels, support_counts, uniform_over_runs

__all__ = ["panoptic_exact", "LAST_EXACT_STATS"]

ARGMAX_MARGIN = 1e-6  # relative: b < a for sure when a - b > ARGMAX_MARGIN * (a + b) + TINY
TINY = 1e-35
# noise-like maps (e.g. random weights), where the reference order is cheaper: more border pixels, or more
# pixels needing every kernel, than these fractions of the output
BORDER_FRACTION = 0.5
HARD_FRACTION = 0.1
ALL_KERNELS_PAIRS = 2**18  # (pixel, kernel) pairs evaluated at once where all kernels are (bounded memory)
PEAK_RATIO = 1e-3  # kernels peaking below this fraction of the strongest peak are bounded, not compared
THRESHOLD_MARGIN = 1e-6  # absolute, around mask_threshold (values near 0.5)

# counters of the last call (diagnostics for tests and benchmarks)
LAST_EXACT_STATS: Dict[str, int] = {}


def surely_below(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """b < a holds for the reference's float32 values too (see the margins above)."""
    return a - b > ARGMAX_MARGIN * (a + b) + TINY


def exact_preconditions(probs, output_size, stride) -> bool:
    """Whether the cell-based evaluation applies; else the reference order runs (cheap in these cases)."""
    N, h4, w4 = probs.shape
    H, W = output_size
    return (
        N >= 4  # torch's bilinear takes another kernel for 3 channels (one thread); few kernels are cheap
        and min(h4, w4) >= 3
        and H + W > 128  # torch's bilinear takes another kernel for small outputs; they are cheap anyway
        and stride * (h4 + w4) > 128
        and stride >= 2
    )


def strong_kernels(probs, scores):
    """The kernels compared cell by cell. Kernels whose peak (score x largest probability) is below
    ``PEAK_RATIO`` of the strongest peak are left out when they are most of the kernels (a trained model's
    unused proposals): their largest peak bounds them everywhere, and the bound takes part in every
    comparison instead.

    Args:
        probs: (N, hc, wc) cropped probabilities; scores: (N,).
    Returns:
        strong (S,) int64 and weak_peak () float64, the bound of the others (0 when S = N).
    """
    N = probs.shape[0]
    peak = scores.double() * probs.amax((1, 2)).double()  # (N,): no value of kernel k exceeds peak[k]
    weak = peak < PEAK_RATIO * peak.max()
    if int(weak.sum()) * 2 >= N and N - int(weak.sum()) >= 3:
        return (~weak).nonzero()[:, 0], peak[weak].max()
    return torch.arange(N, device=probs.device), peak.new_zeros(())


def cell_winners(probs, scores, strong, weak_peak):
    """Per cell: the best kernel, kept as the key where it beats every other (and ``weak_peak``) by the
    margin, -1 elsewhere.

    Args:
        probs: (N, hc, wc) cropped probabilities; scores: (N,); strong, weak_peak: from
            :func:`strong_kernels`.
    Returns:
        strong (S,); weighted (S, hc, wc) their score x probability with -inf at the best; best (hc, wc)
        int64 kernel; key (hc, wc) int64; weak_peak.
    """
    if len(strong) < len(scores):
        weighted = scores[strong, None, None] * probs.index_select(0, strong)
    else:
        weighted = scores[:, None, None] * probs
    best_val, best = weighted.max(0)
    weighted.scatter_(0, best[None], float("-inf"))
    rival = torch.maximum(weighted.amax(0).double(), weak_peak)
    best = strong[best]
    key = torch.where(surely_below(rival, best_val.double()), best, -1)
    return strong, weighted, best, key, weak_peak


def panoptic_exact(probs, scores, labels, image_size, output_size, rules: PanopticRules):
    """The result of :func:`~.reference.panoptic_inference_full_resolution` (see the module docstring).

    Args:
        probs: (N, h4, w4) float32 probabilities (sigmoid of the whole mask logits, as the reference).
        scores, labels: (N,) from :func:`~.fusion.kernel_scores`.
    Returns:
        panoptic_seg (H, W) int32, kept (K,) int64 in visiting order and mask_area (N,) int64 (argmax
        pixel counts); None where the preconditions do not hold or the maps are noise-like (the caller runs
        the reference order).
    """
    if not exact_preconditions(probs, output_size, rules.stride):
        return None
    fused = source_index_rounding(probs.device)
    if fused is None:
        return None
    device = probs.device
    N, h4, w4 = probs.shape
    (h, w), (H, W) = image_size, output_size
    rows = axis_support(h4, rules.stride, h, H, fused, device)
    cols = axis_support(w4, rules.stride, w, W, fused, device)
    hc, wc = int((rows[0] + rows[1]).max()), int((cols[0] + cols[1]).max())
    row_runs, col_runs = axis_runs(rows[0], rows[1]), axis_runs(cols[0], cols[1])
    # 1. per cell: the best kernel where it is safe
    strong, weak_peak = strong_kernels(probs[:, :hc, :wc], scores)
    cells = cell_winners(probs[:, :hc, :wc], scores, strong, weak_peak)
    ev = PixelValues(probs, scores, image_size, output_size, rules.stride, rows, cols, fused)
    # 2. per rectangle: decided where all its cells agree
    decided = uniform_over_runs(uniform_over_runs(cells[3], row_runs, 0), col_runs, 1)  # (R_rows, R_cols)
    # 3. the pixels of the other rectangles
    mixed = (decided < 0).nonzero()
    ys, xs, rect = rect_pixels(mixed[:, 0], mixed[:, 1], row_runs, col_runs)
    winner = None
    if len(ys) <= BORDER_FRACTION * H * W:
        winner = resolve_argmax(ys, xs, rect, mixed, row_runs, col_runs, cells, scores, ev)
    del cells
    if winner is None:
        LAST_EXACT_STATS.clear()
        LAST_EXACT_STATS.update(ev.stats, pixels=H * W, border_pixels=len(ys), fallback=1)
        return None
    sure = decided >= 0
    run_area = (row_runs.length[:, None] * col_runs.length[None, :]).double()
    mask_area = torch.bincount(decided[sure], weights=run_area[sure], minlength=N).long()
    mask_area += torch.bincount(winner, minlength=N)
    # 4. the prob >= mask_threshold area of the kernels whose decision depends on it
    visit = (labels >= rules.num_thing_classes) | ~(scores < rules.thing_score_threshold)
    need = (visit & (mask_area > 0)).nonzero()[:, 0]
    orig_area = torch.zeros(N, dtype=torch.int64, device=device)
    if len(need):
        orig_area[need] = threshold_areas(
            need, mask_area[need], probs[need, :hc, :wc], row_runs, col_runs, ev, rules
        )
    kept = merge_decisions(scores, labels, mask_area, orig_area, rules)
    lut = segment_lut(N, kept)
    panoptic = lut[decided.clamp(min=0)].index_select(0, row_runs.run_of).index_select(1, col_runs.run_of)
    panoptic[ys, xs] = lut[winner]
    LAST_EXACT_STATS.clear()
    LAST_EXACT_STATS.update(ev.stats, pixels=H * W, border_pixels=len(ys), area_kernels=len(need))
    return panoptic, kept, mask_area


def block_cells(mixed, rows: AxisRuns, cols: AxisRuns, hc: int, wc: int):
    """The 3 x 3 cells from the first cell of each rectangle (M, 2) (row run, column run), clamped to the
    grid: cell ids (M, 3, 3) into the flattened (hc, wc) grid and whether they are in the support."""
    k3 = torch.arange(3, device=mixed.device)
    r = (rows.lo[mixed[:, 0]][:, None] + k3).clamp(max=hc - 1)
    c = (cols.lo[mixed[:, 1]][:, None] + k3).clamp(max=wc - 1)
    valid = (k3 < rows.span[mixed[:, 0], None])[:, :, None] & (k3 < cols.span[mixed[:, 1], None])[:, None, :]
    return r[:, :, None] * wc + c[:, None, :], valid


def block_candidates(best, second, cell_id, valid) -> torch.Tensor:
    """The distinct best and second-best kernels of each block's cells, first in each row (-1 pads):
    (M, width) int64."""
    M = len(cell_id)
    cand = torch.stack([best.flatten()[cell_id], second[cell_id]])  # (2, M, 3, 3)
    cand = torch.where(valid, cand, -1).permute(1, 0, 2, 3).reshape(M, -1)
    cand = cand.sort(1, descending=True).values
    fresh = torch.ones_like(cand, dtype=torch.bool)
    fresh[:, 1:] = cand[:, 1:] != cand[:, :-1]
    fresh &= cand >= 0
    width = int(fresh.sum(1).max()) if M else 0
    order = fresh.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :width]
    return torch.where(fresh.gather(1, order), cand.gather(1, order), -1)


def resolve_argmax(ys, xs, rect, mixed, rows: AxisRuns, cols: AxisRuns, cells, scores,
                   ev: PixelValues) -> torch.Tensor:
    """The reference's argmax kernel at the pixels (ys, xs) (U,) of the undecided rectangles ``mixed``
    (M, 2); ``rect`` (U,): the rectangle of each pixel.

    ``cells``: from :func:`cell_winners`. Candidates: the two best kernels of every cell of the block. They
    are complete when the best candidate beats, by the margin, the combination of the cells' third-best
    values (or the weak kernels' bound: a bound on any other kernel, the value being a combination of the
    cells with the same weights). Otherwise (rare) all kernels are evaluated
    (:func:`resolve_all_kernels`). Returns (U,) int64 kernels, or None when more than ``HARD_FRACTION`` of
    the output needs all kernels (noise-like maps: the reference order is then cheaper).
    """
    strong, weighted, best, _, weak_peak = cells
    device = best.device
    S, hc, wc = weighted.shape
    U = len(ys)
    winner = torch.full((U,), -1, dtype=torch.int64, device=device)
    if U == 0:
        return winner
    cell_id, valid = block_cells(mixed, rows, cols, hc, wc)
    # second-best kernel and third-best value of the cells of these blocks only
    used = torch.zeros(hc * wc, dtype=torch.bool, device=device)
    used[cell_id[valid]] = True
    used = used.nonzero()[:, 0]
    rest = weighted.view(S, -1).index_select(1, used)  # (S, C_used), -inf at the best
    second_at = rest.max(0).indices
    rest.scatter_(0, second_at[None], float("-inf"))
    second = torch.zeros(hc * wc, dtype=torch.int64, device=device)
    second[used] = strong[second_at]
    third = torch.zeros(hc * wc, dtype=torch.float64, device=device)
    third[used] = torch.maximum(rest.amax(0).double(), weak_peak)
    cand = block_candidates(best, second, cell_id, valid)[rect]  # (U, width)
    offsets, weights = ev.blocks(ys, xs)  # (U, 9), the cells lo + (i, j) as ``cell_id``
    # any other kernel is below the third value of every support cell, hence below their combination
    bound = (third[cell_id.view(-1, 9)][rect] * weights).sum(1)  # (U,)
    val = torch.full(cand.shape, float("-inf"), dtype=torch.float64, device=device)  # -inf: no candidate
    for slot, ks in enumerate(cand.unbind(1)):  # slot 0 and 1: (nearly) every pixel; the others: a few
        if slot < 2:
            v = ev.values_from(offsets, weights, ks.clamp(min=0))
            val[:, slot] = torch.where(ks >= 0, v, val[:, slot])
        else:
            i = (ks >= 0).nonzero()[:, 0]
            val[i, slot] = ev.values_from(offsets[i], weights[i], ks[i])
    vmax = val.amax(1)
    contender = ~surely_below(val, vmax[:, None])
    sure = (contender.sum(1) == 1) & surely_below(bound, vmax)
    winner[sure] = cand[sure].gather(1, contender[sure].to(torch.uint8).argmax(1, keepdim=True))[:, 0]
    hard = (~sure).nonzero()[:, 0]
    if len(hard) > HARD_FRACTION * ev.output_size[0] * ev.output_size[1]:
        return None
    for part in hard.split(max(1, ALL_KERNELS_PAIRS // len(scores))):  # bounded memory
        winner[part] = resolve_all_kernels(ys[part], xs[part], scores, ev)
    ev.stats["argmax_pairs"] += int((cand >= 0).sum())
    ev.stats["argmax_all_kernels"] += len(hard)
    return winner


def resolve_all_kernels(ys, xs, scores, ev: PixelValues) -> torch.Tensor:
    """The reference's argmax at pixels (ys, xs) (V,), every kernel evaluated: where two are within the
    margin, the reference's float32 values decide (first index on exact ties). Returns (V,) int64."""
    N = len(scores)
    device = ys.device
    winner = torch.full((len(ys),), -1, dtype=torch.int64, device=device)
    allk = torch.arange(N, device=device)
    val = ev.values_at(ys.repeat_interleave(N), xs.repeat_interleave(N), allk.repeat(len(ys))).view(-1, N)
    contender = ~surely_below(val, val.amax(1, keepdim=True))
    single = contender.sum(1) == 1
    winner[single] = contender[single].to(torch.uint8).argmax(1)
    tie = (~single).nonzero()[:, 0]
    if len(tie):
        # contenders with the same score and the same support values get bit-identical values from the
        # reference: its first-index rule picks the lowest (e.g. saturated probabilities)
        first = contender[tie].to(torch.uint8).argmax(1)
        same = torch.ones(len(tie), dtype=torch.bool, device=device)
        offsets = ev.blocks(ys[tie], xs[tie])[0]
        ref_blk = ev.support(offsets, first)
        for k in contender[tie].any(0).nonzero()[:, 0].tolist():
            blk = ev.support(offsets, torch.full_like(first, k))
            eq = (blk == ref_blk).all(1) & (scores[k] == scores[first])
            same &= ~contender[tie][:, k] | eq
        winner[tie[same]] = first[same]
        tie = tie[~same]
    if len(tie):
        t_pix, t_k = contender[tie].nonzero(as_tuple=True)  # contenders, kernels increasing per pixel
        exact = scores[t_k] * ev.reference_at(ys[tie][t_pix], xs[tie][t_pix], t_k)  # the reference's values
        best = torch.full((len(tie),), float("-inf"), dtype=exact.dtype, device=device)
        best = best.scatter_reduce(0, t_pix, exact, "amax")
        at_best = exact == best[t_pix]
        # the reference's argmax returns the first maximum: the lowest kernel index among the equal
        first = torch.full((len(tie),), N, dtype=torch.int64, device=device)
        winner[tie] = first.scatter_reduce(0, t_pix[at_best], t_k[at_best], "amin")
    return winner


def threshold_areas(kernels, mask_area, probs, rows: AxisRuns, cols: AxisRuns, ev: PixelValues,
                    rules: PanopticRules) -> torch.Tensor:
    """``prob >= mask_threshold`` pixel counts of ``kernels`` (K,): exact where the overlap decision depends
    on them, elsewhere a count within the proven bounds that gives the same decision.

    Args:
        mask_area: (K,) their argmax areas; probs: (K, hc, wc) their cells.
    Returns:
        (K,) int64.
    """
    thr = rules.mask_threshold
    above, below = probs >= thr + THRESHOLD_MARGIN, probs < thr - THRESHOLD_MARGIN
    lo = support_counts(above, rows, cols)
    hi = int(rows.length.sum() * cols.length.sum()) - support_counts(below, rows, cols)
    area = mask_area.double()
    keep_sure = (lo >= 1) & ~((area / hi.clamp(min=1)) < rules.overlap_threshold)
    drop_sure = (hi == 0) | ((lo >= 1) & ((area / lo.clamp(min=1)) < rules.overlap_threshold))
    out = lo.long()  # decided kernels: a count within the bounds giving the same decision
    for i in (~(keep_sure | drop_sure)).nonzero()[:, 0].tolist():
        ev.stats["exact_counts"] += 1
        code = torch.where(above[i], 1, torch.where(below[i], 0, -1))
        mixed = (uniform_over_runs(uniform_over_runs(code, rows, 0), cols, 1) < 0).nonzero()
        ys, xs, _ = rect_pixels(mixed[:, 0], mixed[:, 1], rows, cols)
        ks = torch.full_like(ys, int(kernels[i]))
        val = ev.probs_at(ys, xs, ks)
        near = ((val - thr).abs() < THRESHOLD_MARGIN).nonzero()[:, 0]
        out[i] += int((val >= thr + THRESHOLD_MARGIN).sum())
        if len(near):
            out[i] += int((ev.reference_at(ys[near], xs[near], ks[near]) >= thr).sum())
    return out
