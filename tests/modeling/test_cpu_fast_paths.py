"""The CPU fast path of the ResNet stem's max-pool gives PyTorch's own answer, bit for bit (values and
gradients), so training is unchanged by it."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicStem

from knet import add_knet_config
from knet.modeling.backbone.resnet_fpn import KNetBasicStem, build_knet_resnet_fpn_backbone
from knet.modeling.layers import _ChannelsLastMaxPool2d, max_pool2d


def _input_with_ties(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=g))  # zeros: ties in every window that holds two
    x[..., ::3, ::2] = 1.0  # exact ties between positive values too
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,k,s,p", [((2, 5, 19, 22), 3, 2, 1), ((3, 4, 16, 16), 2, 2, 0),
                                         ((1, 3, 9, 7), 3, 1, 1)])
def test_max_pool2d_equals_pytorch_bit_for_bit(dtype, shape, k, s, p):
    x = _input_with_ties(shape, dtype).requires_grad_()
    ref = F.max_pool2d(x, k, s, p)
    grad_out = torch.randn(ref.shape).to(dtype)
    (ref_grad,) = torch.autograd.grad(ref, x, grad_out)
    out = max_pool2d(x, k, s, p)
    (out_grad,) = torch.autograd.grad(out, x, grad_out)
    assert out.grad_fn is not None and "ChannelsLast" in type(out.grad_fn).__name__  # the fast path ran
    assert out.is_contiguous() and out_grad.is_contiguous()
    assert torch.equal(out, ref)
    assert torch.equal(out_grad, ref_grad)
    # with ties, the gradient goes to one element per window (the first maximum), as PyTorch's does
    assert int((out_grad != 0).sum()) <= grad_out.numel()


def test_max_pool2d_falls_back_where_the_fast_path_does_not_apply():
    x = _input_with_ties((2, 4, 12, 12), torch.float32)
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert "ChannelsLast" not in type(max_pool2d(cl, 3, 2, 1).grad_fn).__name__
    traced = torch.jit.trace(lambda t: max_pool2d(t, 3, 2, 1), (x,))
    assert "aten::max_pool2d" in str(traced.graph)  # a traced graph (ONNX export) holds PyTorch's own op
    assert torch.equal(traced(x), F.max_pool2d(x, 3, 2, 1))


def test_channels_last_pool_is_what_the_autograd_function_computes():
    x = _input_with_ties((2, 3, 10, 10), torch.float32).requires_grad_()
    y = _ChannelsLastMaxPool2d.apply(x, 3, 2, 1)
    y.sum().backward()
    assert torch.equal(y, F.max_pool2d(x.detach(), 3, 2, 1))
    assert float(x.grad.sum()) == y.numel()  # one unit of gradient per output, none lost or doubled


def _synthetic_backbone_cfg(res2_channels):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file("configs/synthetic/knet_panoptic_R18.yaml")
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2_channels
    if res2_channels == 64:
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
    return cfg


# 32: the narrow builder of the synthetic configs; 64: detectron2's build_resnet_backbone
@pytest.mark.parametrize("res2_channels", [32, 64])
def test_backbone_stem_uses_the_fast_pool_and_keeps_basic_stem_weights(res2_channels):
    torch.manual_seed(0)
    backbone = build_knet_resnet_fpn_backbone(_synthetic_backbone_cfg(res2_channels), ShapeSpec(channels=3))
    stem = backbone.bottom_up.stem
    assert type(stem) is KNetBasicStem and isinstance(stem, BasicStem)
    assert sorted(stem.state_dict()) == ["conv1.norm.bias", "conv1.norm.num_batches_tracked",
                                         "conv1.norm.running_mean", "conv1.norm.running_var",
                                         "conv1.norm.weight", "conv1.weight"]
    stem.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = F.max_pool2d(F.relu(stem.conv1(x)), kernel_size=3, stride=2, padding=1)
    assert torch.equal(stem(x), expected)
