"""Parameter counts against the official figures (of the published checkpoints), which the checkpoint
converters rely on."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from support.models import knet_kernel_head, tiny_knet_cfg
from support.semantic import conv_bn_count, count as count_all

from knet.modeling.backbone.resnet_v1c import make_resnet_v1c
from knet.modeling.decode_head.aspp_head import KNetASPPHead
from knet.modeling.decode_head.fcn_head import KNetFCNHead
from knet.modeling.decode_head.psp_head import KNetPSPHead
from knet.modeling.decode_head.uper_head import KNetUPerHead
from knet.modeling.kernel_head.kernel_update_head import KernelUpdateHead
from knet.modeling.kernel_head.semantic_kernel_head import KNetSemanticKernelHead
from knet.modeling.pixel_decoder.localization_fpn import KNetLocalizationFPN


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
    return KNetLocalizationFPN(shapes, conv_dim=256, norm="GN")


@pytest.mark.parametrize("num_classes,expected", [(133, 4_456_325), (80, 4_442_704)])
def test_kernel_generating_head(num_classes, expected):
    """The official ``rpn_head`` = localization FPN + loc/seg convs + init_kernels + conv_seg."""
    head = knet_kernel_head(in_channels=256, num_proposals=100, num_classes=num_classes, num_thing_classes=80)
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
    head = knet_kernel_head(
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
    head = knet_kernel_head(in_channels=256, num_proposals=100, num_classes=133, num_thing_classes=80)
    assert abs(head.init_kernels.weight.std().item() - 1.0) < 0.02
    assert abs(head.conv_seg.weight.std().item() - 0.01) < 0.001
    assert torch.allclose(head.conv_seg.bias, torch.full((133,), -4.59512), atol=1e-4)
    assert torch.allclose(head.update_heads[0].fc_cls.bias, torch.full((133,), -4.59512), atol=1e-4)
    # xavier-uniform: bound sqrt(6 / (fan_in + fan_out))
    w = head.update_heads[1].ffn.linear1.weight
    assert w.abs().max() <= (6 / (256 + 2048)) ** 0.5 and w.abs().max() > 0.9 * (6 / (256 + 2048)) ** 0.5
    assert abs(localization_fpn().conv_pred.weight.std().item() - 0.01) < 0.001


# --------------------------------------------------------------------------- semantic K-Net (ADE20K)
def _expected_resnet_v1c_50():
    """ResNetV1c-50 parameters from the layer shapes of the mmseg checkpoints (deep stem 32-32-64,
    [3,4,6,3])."""
    n = conv_bn_count(3, 32, 3) + conv_bn_count(32, 32, 3) + conv_bn_count(32, 64, 3)
    cin = 64
    for mid, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        out = 4 * mid
        for b in range(blocks):
            n += conv_bn_count(cin, mid, 1) + conv_bn_count(mid, mid, 3) + conv_bn_count(mid, out, 1)
            if b == 0:
                n += conv_bn_count(cin, out, 1)
            cin = out
    return n


def test_semantic_update_head_parameter_counts():
    """Official counts: C=512 with the 256 updator: 4,403,968; C=256: 1,975,808."""
    h512 = KernelUpdateHead(in_channels=512, num_classes=0, num_heads=8, feedforward_channels=2048,
                            num_mask_fcs=1, mask_mode="soft", updator_channels=256)
    h256 = KernelUpdateHead(in_channels=256, num_classes=0, num_heads=8, feedforward_channels=2048,
                            num_mask_fcs=1, mask_mode="soft", updator_channels=256)
    assert count_all(h512) == 4_403_968
    assert count_all(h256) == 1_975_808
    assert count_all(KNetSemanticKernelHead(in_channels=512)) == 3 * 4_403_968
    # the updator stays 256-sized inside the 512 head (checkpoint layout §6.2)
    assert tuple(h512.kernel_update_conv.dynamic_layer.weight.shape) == (512, 256)


def _r50_heads():
    c = dict(channels=512, num_classes=150, norm="BN", dropout_ratio=0.1)
    return {
        "fcn": KNetFCNHead(in_channels=2048, in_feature="res5", num_convs=2, kernel_size=3, concat_input=True,
                           **c),
        "psp": KNetPSPHead(in_channels=2048, in_feature="res5", pool_scales=(1, 2, 3, 6), **c),
        "deeplabv3": KNetASPPHead(in_channels=2048, in_feature="res5", dilations=(1, 12, 24, 36), **c),
        "upernet": KNetUPerHead(in_channels=[256, 512, 1024, 2048],
                                in_features=["res2", "res3", "res4", "res5"], pool_scales=(1, 2, 3, 6), **c),
    }


def test_r50_model_parameter_counts():
    """Per-part parameter counts of the four ADE20K R-50 models equal those of the mmseg checkpoint layout."""
    seg = 512 * 150 + 150
    expected_heads = {
        "fcn": conv_bn_count(2048, 512, 3) + conv_bn_count(512, 512, 3) + conv_bn_count(2560, 512, 3) + seg,
        "psp": 4 * conv_bn_count(2048, 512, 1) + conv_bn_count(4096, 512, 3) + seg,
        "deeplabv3": 2 * conv_bn_count(2048, 512, 1) + 3 * conv_bn_count(2048, 512, 3)
        + conv_bn_count(2560, 512, 3) + seg,
        "upernet": 4 * conv_bn_count(2048, 512, 1) + conv_bn_count(4096, 512, 3)
        + sum(conv_bn_count(c, 512, 1) for c in (256, 512, 1024)) + 3 * conv_bn_count(512, 512, 3)
        + conv_bn_count(2048, 512, 3) + seg,
    }
    expected_aux = conv_bn_count(1024, 256, 3) + 256 * 150 + 150
    backbone = count_all(make_resnet_v1c(depth=50, out_stride=8))
    assert backbone == _expected_resnet_v1c_50() == 23_527_264
    assert count_all(make_resnet_v1c(depth=50, out_stride=32)) == backbone
    aux = count_all(KNetFCNHead(in_channels=1024, in_feature="res4", channels=256, num_classes=150,
                                num_convs=1, kernel_size=3, concat_input=False, norm="BN", dropout_ratio=0.1))
    assert aux == expected_aux
    kernel = count_all(KNetSemanticKernelHead(in_channels=512, updator_channels=256))
    assert kernel == 13_211_904
    report = {}
    for name, head in _r50_heads().items():
        n = count_all(head)
        assert n == expected_heads[name], name
        report[name] = dict(backbone=backbone, head=n, aux=aux, kernel_head=kernel,
                            total=backbone + n + aux + kernel, total_inference=backbone + n + kernel)
    for name, r in report.items():
        print(f"K-Net + {name} R-50 parameters: {r}")
    assert report["fcn"]["total"] == 23_527_264 + expected_heads["fcn"] + expected_aux + 13_211_904
