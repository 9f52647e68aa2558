"""The deep-stem ResNetV1c of semantic K-Net (mmseg ``ResNetV1c``): strides, dilations, stem, names."""
import pytest
import torch
from support.semantic import tiny_backbone

from knet.modeling.backbone.resnet_v1c import make_resnet_v1c, resnet_v1c_strides_dilations


def test_resnet_v1c_strides_dilations_table():
    assert resnet_v1c_strides_dilations(8) == ([1, 2, 1, 1], [1, 1, 2, 4])
    assert resnet_v1c_strides_dilations(32) == ([1, 2, 2, 2], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="OUT_STRIDE"):
        resnet_v1c_strides_dilations(4)


@pytest.mark.parametrize("out_stride, res5_hw", [(8, (8, 12)), (32, (2, 3))])
def test_resnet_v1c_shapes_and_dilations(out_stride, res5_hw):
    bb = tiny_backbone(out_stride).eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert out["res2"].shape == (1, 32, 16, 24)
    assert out["res5"].shape == (1, 256) + res5_hw
    assert {k: v.stride for k, v in bb.output_shape().items()} == (
        {"res2": 4, "res3": 8, "res4": 8, "res5": 8} if out_stride == 8
        else {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    )
    dil = {name: [blk.conv2.dilation[0] for blk in getattr(bb, name)] for name in ("res4", "res5")}
    if out_stride == 8:  # contract_dilation: the first block of a dilated stage uses half the dilation
        assert dil == {"res4": [1, 2, 2, 2, 2, 2], "res5": [2, 4, 4]}
        assert [blk.conv2.padding[0] for blk in bb.res5] == [2, 4, 4]
    else:
        assert dil == {"res4": [1] * 6, "res5": [1] * 3}
    # the deep stem: 3x3 convs 8-8-16 (half, half, full) and a max-pool (stride 4 in total)
    assert [tuple(getattr(bb.stem, f"conv{i}").weight.shape) for i in (1, 2, 3)] == [
        (8, 3, 3, 3), (8, 8, 3, 3), (16, 8, 3, 3)
    ]
    keys = bb.state_dict().keys()
    assert "stem.conv3.norm.running_var" in keys and "res2.0.shortcut.norm.weight" in keys
    assert "res3.0.conv2.weight" in keys and "res5.2.conv3.norm.bias" in keys


def test_resnet_v1c_without_contract_dilation():
    bb = make_resnet_v1c(depth=50, stem_out_channels=16, res2_out_channels=32, width_per_group=8,
                         out_stride=8, contract_dilation=False)
    assert [blk.conv2.dilation[0] for blk in bb.res5] == [4, 4, 4]
    assert [blk.conv2.dilation[0] for blk in bb.res4][:2] == [2, 2]
