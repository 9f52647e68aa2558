"""Parameter counts against the official figures (of the published checkpoints), which the checkpoint
converters rely on."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from support.models import tiny_knet_cfg

from knet.modeling.kernel_head.kernel_update_head import KernelUpdateHead
from knet.modeling.kernel_head.knet_kernel_head import KNetKernelHead
from knet.modeling.pixel_decoder.semantic_fpn import KNetSemanticFPN


def count(module, exclude_prefix=None):
    return sum(
        p.numel()
        for n, p in module.named_parameters()
        if exclude_prefix is None or not n.startswith(exclude_prefix)
    )


@pytest.mark.parametrize("num_classes,expected", [(133, 2_076_037), (80, 2_062_416)])
def test_det_update_head(num_classes, expected):
    assert count(KernelUpdateHead(in_channels=256, num_classes=num_classes)) == expected


@pytest.mark.parametrize("width,expected", [(512, 4_403_968), (256, 1_975_808)])
def test_semantic_update_head(width, expected):
    # the 512-wide semantic head keeps a 256-wide updator (mmseg ``KernelUpdator``)
    head = KernelUpdateHead(in_channels=width, num_classes=0, mask_mode="soft", updator_channels=256)
    assert count(head) == expected
    assert head.kernel_update_conv.dynamic_layer.weight.shape == (512, 256)


def localization_fpn():
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
    return KNetSemanticFPN(shapes, conv_dim=256, norm="GN")


@pytest.mark.parametrize("num_classes,expected", [(133, 4_456_325), (80, 4_442_704)])
def test_kernel_generating_head(num_classes, expected):
    """The official ``rpn_head`` = localization FPN + loc/seg convs + init_kernels + conv_seg."""
    head = KNetKernelHead(in_channels=256, num_proposals=100, num_classes=num_classes, num_thing_classes=80)
    total = count(head, exclude_prefix="update_heads.") + count(localization_fpn())
    assert total == expected
    assert head.init_kernels.weight.shape == (100, 256, 1, 1) and head.init_kernels.bias is None
    assert head.conv_seg.weight.shape == (num_classes, 256, 1, 1)
    # three stages, each with its own weights
    assert len(head.update_heads) == 3
    assert head.update_heads[0].fc_cls.weight.data_ptr() != head.update_heads[1].fc_cls.weight.data_ptr()


def test_fpn_neck():
    cfg = tiny_knet_cfg(hidden_dim=256)
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    backbone = build_backbone(cfg)
    fpn = sum(p.numel() for n, p in backbone.named_parameters() if n.startswith("fpn_"))
    assert fpn == 3_344_384
    assert sorted(backbone.output_shape()) == ["p2", "p3", "p4", "p5"]  # no P6
    # the ResNet-50 body: torchvision style, stride in the 3x3 conv
    block = backbone.bottom_up.res3[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_state_dict_names():
    """Leaf names of docs/architecture.md."""
    head = KNetKernelHead(
        in_channels=64,
        num_proposals=4,
        num_classes=5,
        num_thing_classes=3,
        num_heads=4,
        feedforward_channels=32,
    )
    names = set(head.state_dict())
    for name in [
        "loc_convs.0.weight",
        "loc_convs.0.norm.weight",
        "seg_convs.0.norm.bias",
        "init_kernels.weight",
        "conv_seg.weight",
        "conv_seg.bias",
        "update_heads.2.attention.in_proj_weight",
        "update_heads.0.attention.out_proj.bias",
        "update_heads.0.attention_norm.weight",
        "update_heads.0.kernel_update_conv.dynamic_layer.weight",
        "update_heads.0.kernel_update_conv.fc_norm.bias",
        "update_heads.0.kernel_update_conv.input_norm_out.weight",
        "update_heads.0.feat_transform.weight",
        "update_heads.0.feat_transform.bias",
        "update_heads.0.ffn.linear1.weight",
        "update_heads.0.ffn.linear2.bias",
        "update_heads.0.ffn_norm.weight",
        "update_heads.0.cls_fcs.0.weight",
        "update_heads.0.cls_fcs.1.weight",
        "update_heads.0.fc_cls.bias",
        "update_heads.0.mask_fcs.0.weight",
        "update_heads.0.mask_fcs.1.bias",
        "update_heads.0.fc_mask.weight",
    ]:
        assert name in names, name
    assert "update_heads.0.cls_fcs.0.bias" not in names and "update_heads.0.mask_fcs.0.bias" not in names
    fpn_names = set(localization_fpn().state_dict())
    for name in [
        "convs_all_levels.0.conv0.weight",
        "convs_all_levels.3.conv2.norm.weight",
        "conv_pred.weight",
        "aux_convs.0.norm.bias",
    ]:
        assert name in fpn_names, name
    assert (
        "convs_all_levels.3.conv3.weight" not in fpn_names
        and "convs_all_levels.0.conv0.bias" not in fpn_names
    )


def test_initialisation():
    """Official counts."""
    torch.manual_seed(0)
    head = KNetKernelHead(in_channels=256, num_proposals=100, num_classes=133, num_thing_classes=80)
    assert abs(head.init_kernels.weight.std().item() - 1.0) < 0.02
    assert abs(head.conv_seg.weight.std().item() - 0.01) < 0.001
    assert torch.allclose(head.conv_seg.bias, torch.full((133,), -4.59512), atol=1e-4)
    assert torch.allclose(head.update_heads[0].fc_cls.bias, torch.full((133,), -4.59512), atol=1e-4)
    # xavier-uniform: bound sqrt(6 / (fan_in + fan_out))
    w = head.update_heads[1].ffn.linear1.weight
    assert w.abs().max() <= (6 / (256 + 2048)) ** 0.5 and w.abs().max() > 0.9 * (6 / (256 + 2048)) ** 0.5
    assert abs(localization_fpn().conv_pred.weight.std().item() - 0.01) < 0.001
