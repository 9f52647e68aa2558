"""Loss functions against hand-computed values, and the criterion's targets, weights and matching order."""

import math

import pytest
import torch
from detectron2.structures import Instances

from knet.modeling.criterion import KNetCriterion, prepare_targets
from knet.modeling.losses import (
    RANK_IGNORE,
    dice_loss,
    mask_bce_loss,
    rank_loss,
    rank_targets,
    sigmoid_focal_loss,
)
from knet.modeling.matcher import KNetHungarianMatcher


def sig(x):
    return 1 / (1 + math.exp(-x))


def focal_term(logit, target, alpha=0.25, gamma=2.0):
    p = sig(logit)
    if target:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_sigmoid_focal_loss_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    labels = torch.tensor([1, 3])  # row 1: background (label == C)
    weights = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    expected = (focal_term(0.5, 0) + focal_term(-1.0, 1) + focal_term(0.0, 0) + focal_term(-0.5, 0)) / 2.0
    assert sigmoid_focal_loss(logits, labels, weights, avg_factor=2.0).item() == pytest.approx(
        expected, rel=1e-5
    )
    all_terms = [
        focal_term(0.5, 0),
        focal_term(-1.0, 1),
        focal_term(2.0, 0),
        focal_term(1.5, 0),
        focal_term(0.0, 0),
        focal_term(-0.5, 0),
    ]
    assert sigmoid_focal_loss(logits, labels).item() == pytest.approx(sum(all_terms) / 6, rel=1e-5)
    row_w = torch.tensor([2.0, 0.0])
    assert sigmoid_focal_loss(logits, labels, row_w, avg_factor=1.0).item() == pytest.approx(
        2 * sum(all_terms[:3]), rel=1e-5
    )


def test_mask_bce_by_hand():
    logits = torch.tensor([[[0.0, 1.0]], [[-2.0, 3.0]]])  # (2, 1, 2)
    targets = torch.tensor([[[1.0, 0.25]], [[0.0, 1.0]]])

    def bce(x, t):
        return -(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))

    expected = (bce(0, 1) + bce(1, 0.25) + bce(-2, 0) + bce(3, 1)) / 4  # mean over P * H * W
    assert mask_bce_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
    logits = torch.tensor([[[0.0, 1.0]], [[-2.0, 3.0]]])
    targets = torch.tensor([[[1.0, 0.5]], [[0.0, 1.0]]])
    d = []
    for (a, b), (s, t) in zip([(0.0, 1.0), (-2.0, 3.0)], [(1.0, 0.5), (0.0, 1.0)]):
        p, q = sig(a), sig(b)
        d.append(1 - 2 * (p * s + q * t) / (p * p + q * q + 1e-3 + s * s + t * t + 1e-3))
    assert dice_loss(logits, targets).item() == pytest.approx(sum(d) / 2, rel=1e-6)
    # perfect, confident prediction: ~0
    assert dice_loss(torch.tensor([[[20.0, -20.0]]]), torch.tensor([[[1.0, 0.0]]])).item() < 1e-3


def test_rank_targets_and_loss_by_hand():
    # 1 image, 3 kernels, 1 x 3 pixels; kernels 0 and 2 positive and overlapping at pixel 1
    targets = torch.tensor([[[[1.0, 0.6, 0.0]], [[0.0, 0.0, 1.0]], [[0.0, 0.2, 0.0]]]])
    positive = torch.tensor([[True, False, True]])
    rt = rank_targets(targets, positive)
    assert rt.tolist() == [[[0, 2, RANK_IGNORE]]]  # the later positive overwrites; uncovered pixel ignored
    logits = torch.tensor([[[[1.0, 0.0, 5.0]], [[0.0, 1.0, 5.0]], [[-1.0, 2.0, 5.0]]]])

    def ce(col, j):
        z = [logits[0, k, 0, col].item() for k in range(3)]
        return -(z[j] - math.log(sum(math.exp(v) for v in z)))

    expected = (ce(0, 0) + ce(1, 2)) / 3  # the ignored pixel counts in the denominator
    assert rank_loss(logits, rt).item() == pytest.approx(expected, rel=1e-6)


def _instances(classes, masks):
    inst = Instances(masks.shape[-2:])
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.gt_masks = masks.bool()
    return inst


def test_prepare_targets_pads_then_resizes_bilinearly():
    masks = torch.zeros(3, 6, 8)
    masks[0, :, :4] = 1  # thing 0
    masks[1, :2] = 1  # stuff class 3
    masks[2, 4:, 6:] = 1  # stuff class 3 again (merged)
    t = prepare_targets([_instances([0, 3, 3], masks)], (8, 16), (2, 4), num_thing_classes=2, panoptic=True)[
        0
    ]
    padded = torch.nn.functional.pad(masks[0], (0, 8, 0, 2))
    expected = torch.nn.functional.interpolate(
        padded[None, None], (2, 4), mode="bilinear", align_corners=False
    )
    assert torch.allclose(t["masks"][0], expected[0, 0])
    assert t["labels"].tolist() == [0] and t["stuff_labels"].tolist() == [3]
    # 4x downsampling with align_corners=False averages the 2 x 2 centre pixels of each 4 x 4 cell
    assert t["masks"][0].tolist() == [[1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]]
    # merged stuff: cell (1, 1) samples pixels rows 5-6 x cols 5-6; only (5, 6) is set (row 6 is padding)
    assert (
        t["stuff_masks"].shape == (1, 2, 4)
        and t["stuff_masks"][0, 0, 0] == 0.5
        and t["stuff_masks"][0, 1, 1] == 0.25
    )
    inst = prepare_targets([_instances([0, 3, 3], masks)], (8, 16), (2, 4), 2, panoptic=False)[0]
    assert inst["stuff_masks"].shape == (0, 2, 4) and inst["labels"].tolist() == [0]  # stuff ignored


def criterion(num_classes=4, num_thing=2, num_proposals=3):
    return KNetCriterion(
        matcher=KNetHungarianMatcher(),
        num_classes=num_classes,
        num_thing_classes=num_thing,
        num_proposals=num_proposals,
    )


def _targets():
    masks = torch.zeros(2, 2, 2)
    masks[0, 0] = 1
    stuff = torch.zeros(1, 2, 2)
    stuff[0, 1] = 1
    return [
        {
            "labels": torch.tensor([1, 0]),
            "masks": masks,
            "stuff_labels": torch.tensor([3]),
            "stuff_masks": stuff,
        }
    ]


def test_panoptic_label_weights_and_stuff_targets():
    crit = criterion()
    assign = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]  # kernel 2 <- gt 0 (label 1), kernel 0 <- gt 1
    labels, weights, mask_targets, positive = crit.stage_targets(
        _targets(), assign, num_kernels=5, mask_size=(2, 2)
    )
    assert labels.tolist() == [
        [0, 4, 1, 4, 3]
    ]  # 4 = background; stuff kernel of class 2 absent, class 3 present
    assert positive.tolist() == [[True, False, True, False, True]]
    assert weights[0].tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],  # thing kernels: never penalised on stuff classes
        [0, 0, 1, 0],
        [0, 0, 0, 1],  # stuff kernel j: one-hot on its own class
    ]
    assert torch.equal(mask_targets[0, 4], _targets()[0]["stuff_masks"][0])
    assert torch.equal(mask_targets[0, 2], _targets()[0]["masks"][0])


def test_kernel_head_seg_targets_order():
    crit = criterion()
    t = _targets()
    t[0]["masks"][1] = 1.0  # gt 1 (label 0) covers everything
    # kernel 0 <- gt 1 (label 0), kernel 2 <- gt 0 (label 1): things written in kernel order after stuff
    seg = crit.seg_targets(t, [(torch.tensor([2, 0]), torch.tensor([0, 1]))], (2, 2))
    assert seg.tolist() == [[[1, 1], [0, 0]]]
    seg = crit.seg_targets(
        t, [(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))], (2, 2)
    )
    assert seg.tolist() == [[[4, 4], [3, 3]]]  # only stuff, the rest background


def test_stage_loss_value_by_hand():
    crit = criterion()
    g = torch.Generator().manual_seed(0)
    stage = {
        "pred_logits": torch.randn(1, 5, 4, generator=g),
        "pred_masks": torch.randn(1, 5, 2, 2, generator=g),
    }
    assign = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]
    losses = crit.stage_losses(stage, _targets(), assign, "s1_")
    labels, weights, targets, pos = crit.stage_targets(_targets(), assign, 5, (2, 2))
    cls = 0.0
    for n in range(5):
        for c in range(4):
            cls += weights[0, n, c].item() * focal_term(
                stage["pred_logits"][0, n, c].item(), labels[0, n].item() == c
            )
    assert losses["s1_loss_cls"].item() == pytest.approx(2.0 * cls / 3, rel=1e-5)  # 3 positives, weight 2
    pm, pt = stage["pred_masks"][0, [0, 2, 4]], targets[0, [0, 2, 4]]
    assert losses["s1_loss_mask"].item() == pytest.approx(mask_bce_loss(pm, pt).item(), rel=1e-6)
    assert losses["s1_loss_dice"].item() == pytest.approx(4.0 * dice_loss(pm, pt).item(), rel=1e-6)
    rank = rank_loss(stage["pred_masks"], rank_targets(targets, pos))
    assert losses["s1_loss_rank"].item() == pytest.approx(0.1 * rank.item(), rel=1e-6)


class RecordingMatcher(KNetHungarianMatcher):
    def __init__(self):
        super().__init__()
        self.calls = []

    def match_batch(self, mask_logits, gt_masks, cls_logits=None, gt_labels=None):
        self.calls.append((mask_logits[0].clone(), None if cls_logits is None else cls_logits[0].clone()))
        return super().match_batch(mask_logits, gt_masks, cls_logits, gt_labels)


def test_each_stage_matched_with_previous_predictions():
    crit = KNetCriterion(matcher=RecordingMatcher(), num_classes=4, num_thing_classes=2, num_proposals=3)
    g = torch.Generator().manual_seed(1)
    stages = [
        {"pred_logits": torch.randn(1, 5, 4, generator=g), "pred_masks": torch.randn(1, 5, 2, 2, generator=g)}
        for _ in range(3)
    ]
    outputs = {
        "init_masks": torch.randn(1, 3, 2, 2, generator=g),
        "seg_logits": torch.randn(1, 4, 2, 2, generator=g),
        "stages": stages,
    }
    losses = crit(outputs, _targets())
    calls = crit.matcher.calls
    assert len(calls) == 3  # kernel head (reused by stage 0), stage 1, stage 2
    assert torch.equal(calls[0][0], outputs["init_masks"][0]) and calls[0][1] is None
    for s in (1, 2):  # stage s: the previous stage's thing kernels and thing classes
        assert torch.equal(calls[s][0], stages[s - 1]["pred_masks"][0, :3])
        assert torch.equal(calls[s][1], stages[s - 1]["pred_logits"][0, :3, :2])
    assert {"loss_rpn_mask", "loss_rpn_dice", "loss_rpn_rank", "loss_rpn_seg", "s2_loss_cls"} <= set(losses)


@pytest.mark.parametrize("num_kernels", [5, 300])
def test_rank_targets_are_the_last_covering_positive(num_kernels):
    """Per pixel the largest index of a positive kernel whose target covers it, else RANK_IGNORE (for more
    kernels than a uint8 holds too)."""
    g = torch.Generator().manual_seed(num_kernels)
    shape = (2, num_kernels, 4, 3)
    targets = (torch.rand(shape, generator=g) > 0.97) * torch.rand(shape, generator=g)
    targets[:, :, 0, 0] = 0  # a pixel no kernel covers
    positive = torch.rand(2, num_kernels, generator=g) > 0.3
    expected = torch.full((2, 4, 3), RANK_IGNORE)
    for b in range(2):
        for j in range(num_kernels):
            if positive[b, j]:
                expected[b][targets[b, j] > 0] = j
    got = rank_targets(targets, positive)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert (got == RANK_IGNORE).any() and (got > 255).any() == (num_kernels == 300)


@pytest.mark.parametrize("size, out", [((192, 192), (48, 48)), ((12, 18), (4, 6)), ((12, 18), (6, 9)),
                                       ((10, 12), (10, 12)), ((10, 12), (4, 5))])
def test_binary_target_shortcut_equals_bilinear_resize(size, out):
    """prepare_targets' resize of binary masks (integer factors 4, 3, 2, 1 and a non-integer fallback) gives
    ``F.interpolate``'s bilinear values bit for bit."""
    from torch.nn import functional as F

    from knet.modeling.criterion import _resize_targets

    masks = torch.rand((7, *size), generator=torch.Generator().manual_seed(0)) > 0.5
    expected = F.interpolate(masks[None].float(), size=out, mode="bilinear", align_corners=False)[0]
    got = _resize_targets(masks, out)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    odd_factor = size[0] % out[0] == 0 and (size[0] // out[0]) % 2 == 1  # 1 or 3: a subsampling, values 0 / 1
    assert (len(torch.unique(got)) == 2) == odd_factor  # else soft values
