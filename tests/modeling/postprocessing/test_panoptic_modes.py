"""Panoptic fusion rules on synthetic logits (the stride-4 mode shows them cell by cell), the approximate
modes against the reference order, and the mode option."""

import pytest
import torch
from support.postprocessing import logit, panoptic_case, panoptic_options, panoptic_rules

from knet.modeling.postprocessing import kernel_scores, panoptic_inference, panoptic_inference_full_resolution


def test_kernel_scores_diagonal_for_stuff():
    probs = torch.rand(5, 4)
    scores, labels = kernel_scores(probs, num_proposals=3, num_thing_classes=2)
    assert torch.equal(scores[:3], probs[:3, :2].max(1).values) and labels[:3].max() < 2
    assert scores[3] == probs[3, 2] and scores[4] == probs[4, 3] and labels[3:].tolist() == [2, 3]


def test_panoptic_rules():
    """The fusion rules, on the stride-4 cells (mode "stride4": each cell is a 4 x 4 block of pixels)."""
    cls, masks = panoptic_case()
    kw = dict(num_proposals=3, num_thing_classes=2)
    pan, info = panoptic_inference(cls, masks, (24, 32), (24, 32), **kw, **panoptic_options(mode="stride4"))
    assert pan.shape == (24, 32) and pan.dtype == torch.int32
    by_cat = {s["category_id"]: s for s in info}
    assert set(by_cat) == {1, 2}  # kernel 1 (score .29) and kernel 2 (overlap) dropped; empty stuff dropped
    assert by_cat[1]["isthing"] and not by_cat[2]["isthing"]
    assert by_cat[1]["score"] == pytest.approx(0.9) and by_cat[2]["score"] == pytest.approx(0.05, rel=1e-4)
    assert [s["id"] for s in info] == [1, 2]  # ids in descending score order
    assert [int((pan == s["id"]).sum()) for s in info] == [192, 336]  # pixel areas of the segments
    # non-overlapping ids, every id in segments_info present in the map and vice versa
    assert set(pan.unique().tolist()) == {0, 1, 2}
    thing_id, stuff_id = by_cat[1]["id"], by_cat[2]["id"]
    assert (pan[:12, :16] == thing_id).all()  # kernel 0's block, x4
    assert (pan[:, 20:] == stuff_id).all()
    assert (pan[12:, :16] == 0).all()  # the argmax there is kernel 1, which is dropped: void


def test_overlap_threshold_keeps_segment_that_mostly_survives():
    cls, masks = panoptic_case()
    cls[2, 0] = logit(0.95)  # now kernel 2 wins its whole block; kernel 0 keeps 9 of its 12 cells (0.75)
    kw = dict(num_proposals=3, num_thing_classes=2)
    pan, info = panoptic_inference(cls, masks, (24, 32), (24, 32), **kw, **panoptic_options(mode="stride4"))
    assert sorted(s["category_id"] for s in info) == [0, 1, 2]
    options = panoptic_options(mode="stride4", overlap_threshold=0.8)
    pan, info = panoptic_inference(cls, masks, (24, 32), (24, 32), **kw, **options)
    assert sorted(s["category_id"] for s in info) == [0, 2]  # 0.75 < 0.8: kernel 0 dropped


def test_nothing_above_threshold_gives_empty_panoptic_result():
    cls, masks = panoptic_case()
    cls[3, 2] = -10.0
    masks[3] = -8.0  # the stuff kernel has no pixel >= 0.5
    cls[0, 1] = cls[2, 0] = logit(0.2)
    pan, info = panoptic_inference(
        cls, masks, (24, 32), (30, 40), num_proposals=3, num_thing_classes=2, **panoptic_options()
    )
    assert info == [] and pan.shape == (30, 40) and int(pan.abs().sum()) == 0


def _category_map(pan, info):
    out = torch.full_like(pan, -1)
    for s in info:
        out[pan == s["id"]] = s["category_id"]
    return out


def test_approximate_modes_close_to_full_resolution_reference():
    """The opt-in modes deciding at mask resolution agree with the reference order of operations (upsample
    everything first) except near segment borders and for segments whose overlap ratio is close to the
    threshold; the default mode equals it."""
    agree = {False: [], True: []}
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        cls = torch.randn(6, 5, generator=g) * 3  # 4 thing kernels + 2 stuff kernels
        masks = torch.nn.functional.interpolate(
            torch.randn(1, 6, 4, 5, generator=g) * 6, (24, 30), mode="bilinear"
        )[0]
        kw = dict(num_proposals=4, num_thing_classes=3)
        rules = panoptic_rules(**kw, thing_score_threshold=0.0)
        ref = _category_map(*panoptic_inference_full_resolution(cls, masks, (93, 118), (186, 236), rules))
        for soft in (False, True):
            options = panoptic_options(thing_score_threshold=0.0, mode="soft" if soft else "stride4")
            fast = panoptic_inference(cls, masks, (93, 118), (186, 236), **kw, **options)
            agree[soft].append((_category_map(*fast) == ref).float().mean().item())
        options = panoptic_options(thing_score_threshold=0.0, mode="exact")
        exact = panoptic_inference(cls, masks, (93, 118), (186, 236), **kw, **options)
        assert torch.equal(_category_map(*exact), ref)
    assert sum(agree[False]) / 10 > 0.92 and sum(agree[True]) / 10 > 0.95, agree
    assert sorted(agree[True])[5] > 0.99  # the median image agrees almost everywhere


def test_soft_boundaries_is_the_soft_mode_and_bad_mode_is_rejected():
    cls, masks = panoptic_case()
    kw = dict(num_proposals=3, num_thing_classes=2)
    a = panoptic_inference(cls, masks, (24, 32), (30, 40), **kw, **panoptic_options(soft_boundaries=True))
    b = panoptic_inference(cls, masks, (24, 32), (30, 40), **kw, **panoptic_options(mode="soft"))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="MODEL.KNET.TEST.PANOPTIC_MODE"):
        panoptic_inference(cls, masks, (24, 32), (30, 40), **kw, **panoptic_options(mode="fast"))
    with pytest.raises(ValueError, match="exceeds the padded input"):
        panoptic_inference(cls, masks, (25, 32), (30, 40), **kw, **panoptic_options())
