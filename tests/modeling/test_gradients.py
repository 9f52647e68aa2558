"""Every trainable parameter receives a gradient in a training step (DDP needs no find_unused_parameters)."""

import pytest
import torch
from detectron2.modeling import build_model
from support.models import batched_input, tiny_knet_cfg


@pytest.mark.parametrize("num_classes,num_thing_classes", [(5, 3), (3, 3)], ids=["panoptic", "instance"])
def test_every_parameter_gets_a_gradient(num_classes, num_thing_classes):
    torch.manual_seed(0)
    model = build_model(tiny_knet_cfg(num_classes=num_classes, num_thing_classes=num_thing_classes)).train()
    classes = [[0, 1, num_classes - 1], [2, 0]]
    inputs = [batched_input(61, 83, classes[0], seed=0), batched_input(50, 64, classes[1], seed=1)]
    losses = model(inputs)
    sum(losses.values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
    assert zero == [], zero
    # frozen: the stem and res2 (FrozenBatchNorm2d and convs), nothing else
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(
        n.startswith(("backbone.bottom_up.stem.", "backbone.bottom_up.res2.")) for n in frozen
    )
    assert "kernel_head.init_kernels.weight" in trainable and "kernel_head.conv_seg.weight" in trainable
