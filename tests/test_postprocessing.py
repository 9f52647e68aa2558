"""Post-processing on synthetic logits: panoptic fusion rules, instance top-k, semantic scores, alignment."""

import math

import pytest
import torch

from knet.modeling.postprocessing import (
    crop_to_image,
    instance_inference,
    kernel_scores,
    nearest_cells,
    panoptic_inference,
    panoptic_inference_full_resolution,
    semantic_inference,
    upsample_probs,
)

BIG = 8.0  # logit of a confident pixel


def logit(p):
    return math.log(p / (1 - p))


def block_masks(n, h, w, boxes):
    """(n, h, w) logits: +BIG inside each (y0, y1, x0, x1) box, -BIG elsewhere."""
    m = torch.full((n, h, w), -BIG)
    for k, (y0, y1, x0, x1) in boxes.items():
        m[k, y0:y1, x0:x1] = BIG
    return m


def panoptic_case():
    """P = 3 thing kernels, 2 stuff kernels; T = 2 thing classes, C = 4; 6 x 8 mask cells (24 x 32 input)."""
    cls = torch.full((5, 4), -10.0)
    cls[0, 1] = logit(0.9)  # thing, class 1, score 0.9: top-left
    cls[1, 0] = logit(0.29)  # thing below the 0.3 threshold
    cls[2, 0] = logit(0.8)  # thing, half hidden by kernel 0 (keeps 3 of 6 cells) -> overlap test fails
    cls[3, 2] = logit(0.05)  # stuff class 2, low score but stuff has no threshold
    cls[4, 3] = logit(0.5)  # stuff class 3, its mask is empty
    masks = block_masks(5, 6, 8, {0: (0, 3, 0, 4), 1: (3, 6, 0, 4), 2: (0, 3, 3, 5), 3: (0, 6, 4, 8)})
    return cls, masks


def test_kernel_scores_diagonal_for_stuff():
    probs = torch.rand(5, 4)
    scores, labels = kernel_scores(probs, num_proposals=3, num_thing_classes=2)
    assert torch.equal(scores[:3], probs[:3, :2].max(1).values) and labels[:3].max() < 2
    assert scores[3] == probs[3, 2] and scores[4] == probs[4, 3] and labels[3:].tolist() == [2, 3]


def test_panoptic_rules():
    """The fusion rules, on the stride-4 cells (mode "stride4": each cell is a 4 x 4 block of pixels)."""
    cls, masks = panoptic_case()
    pan, info = panoptic_inference(
        cls, masks, (24, 32), (24, 32), num_proposals=3, num_thing_classes=2, mode="stride4"
    )
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
    kw = dict(num_proposals=3, num_thing_classes=2, mode="stride4")
    pan, info = panoptic_inference(cls, masks, (24, 32), (24, 32), **kw)
    assert sorted(s["category_id"] for s in info) == [0, 1, 2]
    pan, info = panoptic_inference(cls, masks, (24, 32), (24, 32), overlap_threshold=0.8, **kw)
    assert sorted(s["category_id"] for s in info) == [0, 2]  # 0.75 < 0.8: kernel 0 dropped


def test_nothing_above_threshold_gives_empty_result():
    cls, masks = panoptic_case()
    cls[3, 2] = -10.0
    masks[3] = -BIG  # the stuff kernel has no pixel >= 0.5
    cls[0, 1] = cls[2, 0] = logit(0.2)
    pan, info = panoptic_inference(cls, masks, (24, 32), (30, 40), num_proposals=3, num_thing_classes=2)
    assert info == [] and pan.shape == (30, 40) and int(pan.abs().sum()) == 0
    inst = instance_inference(cls[:3, :2], masks[:3], (24, 32), (30, 40), score_threshold=0.3)
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 30, 40)


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
        kwargs = dict(num_proposals=4, num_thing_classes=3, thing_score_threshold=0.0)
        ref = _category_map(*panoptic_inference_full_resolution(cls, masks, (93, 118), (186, 236), **kwargs))
        for soft in (False, True):
            fast = panoptic_inference(
                cls, masks, (93, 118), (186, 236), mode="soft" if soft else "stride4", **kwargs
            )
            agree[soft].append((_category_map(*fast) == ref).float().mean().item())
        exact = panoptic_inference(cls, masks, (93, 118), (186, 236), **kwargs)
        assert torch.equal(_category_map(*exact), ref)
    assert sum(agree[False]) / 10 > 0.92 and sum(agree[True]) / 10 > 0.95, agree
    assert sorted(agree[True])[5] > 0.99  # the median image agrees almost everywhere


def test_soft_boundaries_is_the_soft_mode_and_bad_mode_is_rejected():
    cls, masks = panoptic_case()
    kw = dict(num_proposals=3, num_thing_classes=2)
    a = panoptic_inference(cls, masks, (24, 32), (30, 40), soft_boundaries=True, **kw)
    b = panoptic_inference(cls, masks, (24, 32), (30, 40), mode="soft", **kw)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="MODEL.KNET.TEST.PANOPTIC_MODE"):
        panoptic_inference(cls, masks, (24, 32), (30, 40), mode="fast", **kw)
    with pytest.raises(ValueError, match="exceeds the padded input"):
        panoptic_inference(cls, masks, (25, 32), (30, 40), **kw)


def test_crop_and_alignment():
    # image 20 x 30 padded to 32 x 32 -> mask grid 8 x 8, cropped to 5 x 8 cells
    probs = torch.zeros(1, 8, 8)
    assert crop_to_image(probs, (20, 30), 4).shape == (1, 5, 8)
    rows, cols = nearest_cells((20, 30), (40, 60), (5, 8), 4)
    assert rows.tolist() == [i // 8 for i in range(40)] and cols.tolist() == [j // 8 for j in range(60)]
    # a cell block maps onto the matching pixels after bilinear upsampling
    m = torch.zeros(1, 5, 8)
    m[0, 1:3, 2:4] = 1.0
    up = upsample_probs(m, (20, 30), (40, 60), 4)
    assert up.shape == (1, 40, 60)
    assert (up[0, 12:20, 20:28] > 0.99).all() and (up[0, :4] == 0).all() and (up[0, 28:] == 0).all()
    # odd output sizes: exactly the requested size
    assert upsample_probs(m, (19, 29), (37, 55), 4).shape == (1, 37, 55)


def test_instance_topk():
    cls = torch.full((3, 2), -6.0)
    cls[0, 0], cls[0, 1], cls[2, 1] = logit(0.9), logit(0.7), logit(0.8)
    masks = block_masks(3, 6, 8, {0: (1, 3, 2, 6), 2: (4, 6, 0, 2)})
    inst = instance_inference(cls, masks, (24, 32), (48, 64), max_per_image=3)
    assert len(inst) == 3
    assert inst.scores.tolist() == pytest.approx([0.9, 0.8, 0.7], rel=1e-5)
    assert inst.pred_classes.tolist() == [0, 1, 1]  # kernel 0 appears with two classes
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (3, 48, 64)
    assert torch.equal(inst.pred_masks[0], inst.pred_masks[2])
    box = inst.pred_boxes.tensor[0].tolist()
    assert box == [16.0, 8.0, 48.0, 24.0]  # cells x 2..5, y 1..2 -> pixels x 16..47, y 8..23 (x2 output)
    thr = instance_inference(cls, masks, (24, 32), (48, 64), max_per_image=3, score_threshold=0.75)
    assert thr.scores.tolist() == pytest.approx([0.9, 0.8], rel=1e-5)
    assert len(instance_inference(cls, masks, (24, 32), (48, 64), max_per_image=2)) == 2


def test_semantic_scores():
    cls, masks = panoptic_case()
    sem = semantic_inference(cls, masks, (24, 32), (24, 32), num_proposals=3, num_thing_classes=2)
    assert sem.shape == (4, 24, 32)
    seg = sem.argmax(0)
    assert (seg[:12, :8] == 1).all()  # kernel 0, class 1
    assert (seg[:, 24:] == 2).all()  # stuff kernel of class 2 (cells 6-7; kernel 2 reaches cell 4)
    # stuff kernels only contribute to their own class
    assert sem[3].max() < 1e-3
