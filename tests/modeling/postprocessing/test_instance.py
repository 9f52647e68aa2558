"""Instance inference: top-k (kernel, class) pairs, their masks resized and thresholded."""

import pytest
import torch
from support.postprocessing import block_masks, instance_options, logit, panoptic_case

from knet.modeling.postprocessing import instance_inference


def test_instance_topk():
    cls = torch.full((3, 2), -6.0)
    cls[0, 0], cls[0, 1], cls[2, 1] = logit(0.9), logit(0.7), logit(0.8)
    masks = block_masks(3, 6, 8, {0: (1, 3, 2, 6), 2: (4, 6, 0, 2)})
    inst = instance_inference(cls, masks, (24, 32), (48, 64), **instance_options(max_per_image=3))
    assert len(inst) == 3
    assert inst.scores.tolist() == pytest.approx([0.9, 0.8, 0.7], rel=1e-5)
    assert inst.pred_classes.tolist() == [0, 1, 1]  # kernel 0 appears with two classes
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (3, 48, 64)
    assert torch.equal(inst.pred_masks[0], inst.pred_masks[2])
    box = inst.pred_boxes.tensor[0].tolist()
    assert box == [16.0, 8.0, 48.0, 24.0]  # cells x 2..5, y 1..2 -> pixels x 16..47, y 8..23 (x2 output)
    options = instance_options(max_per_image=3, score_threshold=0.75)
    thr = instance_inference(cls, masks, (24, 32), (48, 64), **options)
    assert thr.scores.tolist() == pytest.approx([0.9, 0.8], rel=1e-5)
    assert len(instance_inference(cls, masks, (24, 32), (48, 64), **instance_options(max_per_image=2))) == 2


def test_nothing_above_threshold_gives_empty_instances():
    cls, masks = panoptic_case()
    cls[0, 1] = cls[2, 0] = logit(0.2)
    options = instance_options(score_threshold=0.3)
    inst = instance_inference(cls[:3, :2], masks[:3], (24, 32), (30, 40), **options)
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 30, 40)
