"""The exact panoptic mode (the default) equals the full-resolution reference function pixel for pixel and
segment for segment, on random, structured (exact ties: duplicated kernels, saturated probabilities, equal
scores), trained-like and adversarial near-tie maps at odd sizes (1 pixel wide, not multiples of 4 or 32, up-
and downscaled outputs). The reference function itself is checked against the official code in
test_reference_official.py."""

import pytest
import torch
from support.postprocessing import (
    SIZES,
    near_tie_maps,
    panoptic_options,
    panoptic_rules,
    random_maps,
    structured_maps,
    trained_like_maps,
)

from knet.modeling.postprocessing import panoptic_inference, panoptic_inference_full_resolution
from knet.modeling.postprocessing import panoptic_exact
from knet.modeling.postprocessing.panoptic_exact import LAST_EXACT_STATS
from knet.modeling.postprocessing.runs import axis_runs, rect_pixels, uniform_over_runs


def _compare(ref, got):
    """(differing pixels, equal segments_info)."""
    return int((ref[0] != got[0]).sum()), ref[1] == got[1]


def _check_maker(maker, seeds=2):
    pixels = diff_pixels = segments = diff_segments = 0
    fast_calls = exact_values = all_kernels = 0
    for seed in range(seeds):
        cls, masks, kw = maker(seed)
        for image_size, output_size in SIZES:
            # (0.0, 0.1): keeps most kernels, so that the whole argmax map shows (and ratios sit near 0.1)
            for thr, overlap in ((0.3, 0.6), (0.0, 0.1)):
                rules = panoptic_rules(**kw, thing_score_threshold=thr, overlap_threshold=overlap)
                ref = panoptic_inference_full_resolution(cls, masks, image_size, output_size, rules)
                LAST_EXACT_STATS.clear()
                options = panoptic_options(thing_score_threshold=thr, overlap_threshold=overlap, mode="exact")
                got = panoptic_inference(cls, masks, image_size, output_size, **kw, **options)
                d, same = _compare(ref, got)
                pixels += ref[0].numel()
                diff_pixels += d
                segments += len(ref[1])
                diff_segments += len(set(map(str, ref[1])) ^ set(map(str, got[1])))
                fast = LAST_EXACT_STATS.get("pixels", 0) == ref[0].numel()
                fast_calls += fast and "fallback" not in LAST_EXACT_STATS
                exact_values += LAST_EXACT_STATS.get("exact_values", 0)
                all_kernels += LAST_EXACT_STATS.get("argmax_all_kernels", 0)
                assert d == 0 and same, (maker.__name__, seed, image_size, output_size, thr, overlap, d)
    print(
        f"\n{maker.__name__}: {pixels} pixels, {diff_pixels} differ; {segments} segments, {diff_segments} "
        f"differ; fast path in {fast_calls} calls, {exact_values} values reproduced exactly, "
        f"{all_kernels} pixels with all kernels evaluated"
    )
    assert fast_calls >= seeds * 2 * (len(SIZES) - 1)  # all but the tiny (96 + 120 <= 128) outputs
    return exact_values, all_kernels


@pytest.mark.parametrize("maker", [random_maps, structured_maps, trained_like_maps])
def test_exact_mode_equals_full_resolution_reference(maker):
    exact_values, _ = _check_maker(maker)
    if maker is structured_maps:
        assert exact_values > 0  # the exact ties went through the float32 reproduction


def test_exact_mode_near_ties(monkeypatch):
    """Kernels within float32 rounding of each other over whole blocks, a third kernel just below them,
    scores 1 ulp apart, probabilities at and within 3e-8 of the mask threshold: the pruning rules
    (rectangles decided by their cells, candidates bounded by the third value, threshold counts bounded by
    uniform blocks) leave these to exact evaluation, which gives the reference's answer. (So many border and
    all-kernel pixels would make the mode fall back to the reference order: not here.)"""
    monkeypatch.setattr(panoptic_exact, "BORDER_FRACTION", 1.0)
    monkeypatch.setattr(panoptic_exact, "HARD_FRACTION", 1.0)
    exact_values, all_kernels = _check_maker(near_tie_maps, seeds=1)
    assert exact_values > 0 and all_kernels > 0  # the near-ties reached the last resorts


def test_exact_mode_large_output_and_tiny_scores():
    """800 x 1216-like geometry (stride 4, 153-kernel layout shrunk to 40 kernels) and kernels whose scores
    and probabilities are tiny (relative margins)."""
    cls, masks, kw = trained_like_maps(
        7, h4=50, w4=76, n_things=30, n_stuff=10, num_thing_classes=20, present=(8, 6)
    )
    cls[25:30] = -30.0  # scores ~1e-13
    ref = panoptic_inference_full_resolution(
        cls, masks, (197, 301), (331, 487), panoptic_rules(**kw, thing_score_threshold=0.0)
    )
    options = panoptic_options(thing_score_threshold=0.0, mode="exact")
    got = panoptic_inference(cls, masks, (197, 301), (331, 487), **kw, **options)
    assert _compare(ref, got) == (0, True)
    assert LAST_EXACT_STATS["pixels"] == 331 * 487
    assert LAST_EXACT_STATS["border_pixels"] < 0.25 * 331 * 487  # only borders are evaluated


def test_noise_like_maps_fall_back_to_the_reference_order():
    """Pure noise (every pixel a border, most needing every kernel, as random weights give): the reference
    order is cheaper there and runs instead."""
    g = torch.Generator().manual_seed(0)
    cls, masks = torch.randn(24, 14, generator=g), torch.randn(24, 24, 30, generator=g)
    kw = dict(num_proposals=16, num_thing_classes=6)
    ref = panoptic_inference_full_resolution(cls, masks, (93, 118), (186, 236), panoptic_rules(**kw))
    LAST_EXACT_STATS.clear()
    got = panoptic_inference(cls, masks, (93, 118), (186, 236), **kw, **panoptic_options(mode="exact"))
    assert _compare(ref, got) == (0, True)
    assert LAST_EXACT_STATS["fallback"] == 1 and LAST_EXACT_STATS["border_pixels"] > 0.5 * 186 * 236


def test_runs_and_rectangles():
    """Output indices with the same support form one run; a run is decided only when all its cells agree;
    the rectangles' pixels are enumerated row by row."""
    lo = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    span = torch.tensor([1, 2, 2, 2, 3, 1, 2, 2])
    runs = axis_runs(lo, span)
    assert runs.lo.tolist() == [0, 0, 1, 1, 2, 2] and runs.span.tolist() == [1, 2, 2, 3, 1, 2]
    assert runs.start.tolist() == [0, 1, 3, 4, 5, 6] and runs.length.tolist() == [1, 2, 1, 1, 1, 2]
    assert runs.run_of.tolist() == [0, 1, 1, 2, 3, 4, 5, 5]
    key = torch.tensor([[3, 3], [3, -1], [3, 5], [4, 5]])  # 4 cells along dim 0
    got = uniform_over_runs(key, runs, 0)
    assert got.tolist() == [[3, 3], [3, -1], [3, -1], [-1, -1], [3, 5], [-1, 5]]
    ys, xs, rect = rect_pixels(torch.tensor([1, 5]), torch.tensor([5, 0]), runs, runs)
    assert list(zip(ys.tolist(), xs.tolist())) == [(1, 6), (1, 7), (2, 6), (2, 7), (6, 0), (7, 0)]
    assert rect.tolist() == [0, 0, 0, 0, 1, 1]
