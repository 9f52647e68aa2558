"""``MODEL.KNET.ZERO_INIT_RESIDUAL``: the residual branches of ``build_knet_resnet_fpn_backbone``'s ResNet
start at zero (for ResNets trained from scratch)."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from knet.config import add_knet_config
from knet.modeling.backbone.resnet_fpn import build_knet_resnet_fpn_backbone


def _cfg(*opts, config="configs/synthetic/knet_panoptic_R18.yaml"):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def _last_norms(bottom_up):
    blocks = [m for m in bottom_up.modules() if isinstance(m, (BasicBlock, BottleneckBlock))]
    return [(b.conv2 if isinstance(b, BasicBlock) else b.conv3).norm for b in blocks]


# (): the synthetic R-18 (the narrow builder, BasicBlocks); DEPTH 10: the same builder, one block per stage;
# DEPTH 50: detectron2's builder (bottleneck blocks)
@pytest.mark.parametrize("opts, num_blocks", [
    ((), 8), (("MODEL.RESNETS.DEPTH", 10), 4),
    (("MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256), 16),
])
def test_zero_init_residual_zeroes_only_the_last_norm_of_each_block(opts, num_blocks):
    torch.manual_seed(0)
    plain = build_knet_resnet_fpn_backbone(
        _cfg(*opts, "MODEL.KNET.ZERO_INIT_RESIDUAL", False), ShapeSpec(channels=3)
    ).bottom_up
    torch.manual_seed(0)
    zero = build_knet_resnet_fpn_backbone(
        _cfg(*opts, "MODEL.KNET.ZERO_INIT_RESIDUAL", True), ShapeSpec(channels=3)
    ).bottom_up
    last = {id(n) for n in _last_norms(zero)}
    assert len(last) == num_blocks
    for (name, p), (_, q) in zip(plain.named_parameters(), zero.named_parameters()):
        module = zero.get_submodule(name.rsplit(".", 1)[0])
        if id(module) in last and name.endswith("weight"):
            assert torch.all(p == 1) and torch.all(q == 0), name
        else:
            assert torch.equal(p, q), name
    # each block starts as its shortcut: a block whose shortcut is the identity returns relu(x)
    block = zero.res2[-1]
    block.eval()
    x = torch.randn(2, block.in_channels, 16, 16)
    assert torch.equal(block(x), torch.relu(x))


def test_depth_10_is_one_basic_block_per_stage_of_the_narrow_widths():
    """``MODEL.RESNETS.DEPTH 10``: the stem and one BasicBlock per stage (detectron2's builder has no
    depth 10), at the config's channel widths, with the same outputs and strides as the ResNet-18."""
    r10 = build_knet_resnet_fpn_backbone(_cfg("MODEL.RESNETS.DEPTH", 10), ShapeSpec(channels=3))
    r18 = build_knet_resnet_fpn_backbone(_cfg(), ShapeSpec(channels=3))
    stages = [getattr(r10.bottom_up, f"res{i}") for i in range(2, 6)]
    assert [len(s) for s in stages] == [1, 1, 1, 1]
    assert all(isinstance(s[0], BasicBlock) for s in stages)
    assert [s[0].out_channels for s in stages] == [32, 64, 128, 256]
    assert [s[0].conv1.stride for s in stages] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert r10.output_shape() == r18.output_shape()
    x = torch.randn(1, 3, 64, 64)
    out = r10(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 64, 16, 16), "p3": (1, 64, 8, 8), "p4": (1, 64, 4, 4), "p5": (1, 64, 2, 2)
    }
    n10 = sum(p.numel() for p in r10.bottom_up.parameters())
    n18 = sum(p.numel() for p in r18.bottom_up.parameters())
    assert 0.4 < n10 / n18 < 0.6  # about half the trunk's weights


def test_float32_quickstart_trunk_is_a_resnet10_of_24_to_192_channels():
    """``knet_panoptic_R10.yaml`` (the float32 quickstart recipe): stem 24, one BasicBlock per stage of 24,
    48, 96 and 192 channels, and the same 64-channel FPN outputs as the ResNet-18 recipe."""
    backbone = build_knet_resnet_fpn_backbone(
        _cfg(config="configs/synthetic/knet_panoptic_R10.yaml"), ShapeSpec(channels=3)
    )
    bottom_up = backbone.bottom_up
    assert bottom_up.stem.out_channels == 24
    stages = [getattr(bottom_up, f"res{i}") for i in range(2, 6)]
    assert [len(s) for s in stages] == [1, 1, 1, 1]
    assert [s[0].out_channels for s in stages] == [24, 48, 96, 192]
    r18 = build_knet_resnet_fpn_backbone(_cfg(), ShapeSpec(channels=3))
    assert backbone.output_shape() == r18.output_shape()
