"""The Hungarian matcher: cost formulas, optimality against brute force, fp16 inputs, empty inputs."""

import itertools
import math

import numpy as np
import pytest
import torch

from knet.modeling.matcher import KNetHungarianMatcher, dice_cost, focal_class_cost, mask_cost


def brute_force_min(cost: np.ndarray) -> float:
    n, m = cost.shape
    if n >= m:
        return min(
            sum(cost[r, c] for c, r in enumerate(rows)) for rows in itertools.permutations(range(n), m)
        )
    return min(sum(cost[r, c] for r, c in enumerate(cols)) for cols in itertools.permutations(range(m), n))


@pytest.mark.parametrize(
    "seed,n,m,with_cls", [(0, 5, 3, True), (1, 4, 4, False), (2, 6, 2, True), (3, 3, 5, True)]
)
def test_matches_brute_force(seed, n, m, with_cls):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randn(n, 6, 7, generator=g) * 3
    gts = (torch.rand(m, 6, 7, generator=g) > 0.5).float()
    cls = torch.randn(n, 4, generator=g) if with_cls else None
    labels = torch.randint(0, 4, (m,), generator=g)
    matcher = KNetHungarianMatcher(cost_class=2.0, cost_mask=1.0, cost_dice=4.0)
    rows, cols = matcher(masks, gts, cls, labels)
    assert len(rows) == len(cols) == min(n, m)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    cost = matcher.cost_matrix(masks, gts, cls, labels).numpy()
    assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force_min(cost), abs=1e-5)


def test_cost_formulas_by_hand():
    logit = torch.tensor([[[0.0, 2.0]]])  # one prediction, 1 x 2 pixels
    gt = torch.tensor([[[1.0, 0.0]]])
    p = [0.5, 1 / (1 + math.exp(-2))]
    # MaskCost: -(sum p t + sum (1-p)(1-t)) / HW
    assert mask_cost(logit, gt).item() == pytest.approx(-(p[0] * 1 + (1 - p[1]) * 1) / 2, rel=1e-6)
    # DiceCost: -2 sum pt / (sum p^2 + eps + sum t^2 + eps)
    expected = -2 * p[0] / (p[0] ** 2 + p[1] ** 2 + 1e-3 + 1 + 1e-3)
    assert dice_cost(logit, gt).item() == pytest.approx(expected, rel=1e-6)
    # FocalLossCost at the gt label
    q = 1 / (1 + math.exp(-0.3))
    pos = -math.log(q + 1e-12) * 0.25 * (1 - q) ** 2
    neg = -math.log(1 - q + 1e-12) * 0.75 * q**2
    cost = focal_class_cost(torch.tensor([[0.3, -1.0]]), torch.tensor([0]))
    assert cost.item() == pytest.approx(pos - neg, rel=1e-6)


def test_weights_combine():
    g = torch.Generator().manual_seed(5)
    masks, gts = torch.randn(3, 4, 4, generator=g), torch.rand(2, 4, 4, generator=g)
    cls, labels = torch.randn(3, 5, generator=g), torch.tensor([1, 4])
    total = KNetHungarianMatcher(cost_class=2.0, cost_mask=1.0, cost_dice=4.0).cost_matrix(
        masks, gts, cls, labels
    )
    expected = 2 * focal_class_cost(cls, labels) + mask_cost(masks, gts) + 4 * dice_cost(masks, gts)
    assert torch.allclose(total, expected, atol=1e-6)
    # no class logits: no class cost (official stage 0 / kernel-head matching)
    no_cls = KNetHungarianMatcher().cost_matrix(masks, gts)
    assert torch.allclose(no_cls, mask_cost(masks, gts) + 4 * dice_cost(masks, gts), atol=1e-6)


def test_perfect_prediction_is_found():
    gts = torch.zeros(3, 8, 8)
    gts[0, :4], gts[1, 4:, :4], gts[2, 4:, 4:] = 1, 1, 1
    perm = [4, 0, 2]  # kernel perm[j] predicts gt j
    masks = torch.full((5, 8, 8), -6.0)
    for j, k in enumerate(perm):
        masks[k][gts[j] > 0] = 6.0
    rows, cols = KNetHungarianMatcher()(masks, gts)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 0, 2: 2}


def test_fp16_inputs_same_assignment():
    g = torch.Generator().manual_seed(7)
    masks, gts = torch.randn(6, 8, 8, generator=g) * 2, (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    cls, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 2, 1])
    m = KNetHungarianMatcher()
    a = m(masks, gts, cls, labels)
    b = m(masks.half(), gts.half(), cls.half(), labels)
    assert m.cost_matrix(masks.half(), gts.half(), cls.half(), labels).dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_empty():
    m = KNetHungarianMatcher()
    rows, cols = m(
        torch.randn(4, 5, 5), torch.zeros(0, 5, 5), torch.randn(4, 2), torch.zeros(0, dtype=torch.long)
    )
    assert rows.numel() == 0 and cols.numel() == 0 and rows.dtype == torch.int64


@pytest.mark.parametrize("with_cls", [True, False])
def test_match_batch_equals_matching_each_image(with_cls):
    """The batch's costs at once (one matrix, each image reading its block) give every image the assignment
    and the costs of matching it alone; an image without ground truth gets none."""
    g = torch.Generator().manual_seed(5)
    B, N, C = 4, 6, 3
    masks = torch.randn(B, N, 5, 7, generator=g) * 3
    cls = torch.randn(B, N, C, generator=g) if with_cls else None
    counts = [3, 0, 6, 2]
    gts = [(torch.rand(m, 5, 7, generator=g) > 0.5).float() for m in counts]
    labels = [torch.randint(0, C, (m,), generator=g) for m in counts]
    matcher = KNetHungarianMatcher(cost_class=2.0, cost_mask=1.0, cost_dice=4.0)
    batch = matcher.match_batch(masks, gts, cls, labels if with_cls else None)
    for b in range(B):
        one = matcher(masks[b], gts[b], None if cls is None else cls[b], labels[b])
        assert torch.equal(batch[b][0], one[0]) and torch.equal(batch[b][1], one[1])
        assert len(batch[b][0]) == min(N, counts[b])
    flat_cls = None if cls is None else cls.flatten(0, 1)
    whole = matcher.cost_matrix(masks.flatten(0, 1), torch.cat(gts), flat_cls, torch.cat(labels))
    alone = matcher.cost_matrix(masks[2], gts[2], None if cls is None else cls[2], labels[2])
    torch.testing.assert_close(whole[2 * N:3 * N, 3:9], alone, rtol=1e-6, atol=1e-6)
    empty = matcher.match_batch(masks, [g[:0] for g in gts], cls, [lb[:0] for lb in labels])
    assert all(len(r) == 0 and len(c) == 0 for r, c in empty)
