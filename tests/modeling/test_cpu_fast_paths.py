"""The CPU fast paths: the ResNet stem's max-pool gives PyTorch's own answer, bit for bit (values and
gradients), so training is unchanged by it; the x2 bilinear upsampling gives PyTorch's values bit for bit and
its gradient to float rounding; a backbone in channels-last layout (``MODEL.KNET.BACKBONE_CHANNELS_LAST``)
gives the contiguous model's losses and gradients to float rounding."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicStem
from support.models import batched_input, tiny_knet_cfg

from knet import add_knet_config
from knet.modeling.backbone.resnet_fpn import KNetBasicStem, build_knet_resnet_fpn_backbone
from knet.modeling.layers import (
    BilinearUpsample2x,
    _ChannelsLastMaxPool2d,
    max_pool2d,
    resize,
    upsample_bilinear,
)


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


def _float64_bilinear_grad(x, grad_out):
    """The gradient of PyTorch's own bilinear upsampling, computed in float64 (the exact sum, to 1e-16)."""
    x64 = x.detach().double().requires_grad_()
    y = F.interpolate(x64, size=grad_out.shape[-2:], mode="bilinear", align_corners=False)
    (g,) = torch.autograd.grad(y, x64, grad_out.double())
    return g


# odd, even, 1-pixel and non-square maps: the borders clamp the source index on every side
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 29, 24, 24), (3, 2, 1, 1), (2, 4, 1, 6), (1, 1, 8, 3)])
def test_x2_upsample_equals_pytorch(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_()
    size = (2 * shape[2], 2 * shape[3])
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    out = upsample_bilinear(x, size)
    assert "BilinearUpsample2x" in type(out.grad_fn).__name__  # the fast path ran
    assert torch.equal(out, ref)  # the forward is PyTorch's, bit for bit
    assert torch.equal(out, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    grad_out = torch.randn(ref.shape, generator=g)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    (ref_grad,) = torch.autograd.grad(ref, x, grad_out)
    exact = _float64_bilinear_grad(x, grad_out)
    assert grad.dtype == torch.float32 and grad.shape == x.shape and grad.is_contiguous()
    # the same sum in another order: as close to the exact float64 gradient as PyTorch's own float32 one
    tol = 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert (grad.double() - exact).abs().max().item() <= tol
    assert (ref_grad.double() - exact).abs().max().item() <= tol


def test_x2_upsample_gradient_of_one_unit_at_each_output():
    # each output pixel spreads weights summing to 1 over the inputs: the inputs receive 4 units each in all
    x = torch.zeros(2, 3, 6, 5, requires_grad=True)
    upsample_bilinear(x, (12, 10)).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0))


def test_x2_upsample_falls_back_where_the_fast_path_does_not_apply():
    x = torch.randn(1, 2, 5, 6)
    for t, size in [
        (x.clone().requires_grad_(), (9, 12)),  # not x2
        (x.double().requires_grad_(), (10, 12)),  # float64 (the parity checks' exact arithmetic)
        (x, (10, 12)),  # no gradient wanted (inference)
    ]:
        out = upsample_bilinear(t, size)
        assert "BilinearUpsample2x" not in type(out.grad_fn).__name__
        assert torch.equal(out, F.interpolate(t, size=size, mode="bilinear", align_corners=False))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 recipes: PyTorch's own gradient
        out = upsample_bilinear(x.clone().requires_grad_(), (10, 12))
    assert "BilinearUpsample2x" not in type(out.grad_fn).__name__
    traced = torch.jit.trace(lambda t: upsample_bilinear(t, (10, 12)), (x.clone().requires_grad_(),))
    assert "aten::upsample_bilinear2d" in str(traced.graph)  # an ONNX export sees PyTorch's own op


def test_resize_and_upsample_module_take_the_fast_path_with_the_same_values():
    x = torch.randn(4, 6, 7).requires_grad_()  # (N, h, w), as the criterion resizes masks
    out = resize(x, (12, 14))
    assert torch.equal(out, F.interpolate(x[None], size=(12, 14), mode="bilinear", align_corners=False)[0])
    out.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 4.0))
    y = torch.randn(2, 3, 4, 5).requires_grad_()
    up = BilinearUpsample2x()(y)
    assert "BilinearUpsample2x" in type(up.grad_fn).__name__
    assert torch.equal(up, torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)(y))


def _train_step(channels_last):
    torch.manual_seed(0)
    cfg = tiny_knet_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.KNET.BACKBONE_CHANNELS_LAST = channels_last
    model = build_model(cfg).train()
    inputs = [batched_input(64, 96, [0, 1, 4], seed=0), batched_input(64, 80, [2, 0], seed=1)]
    losses = model(inputs)
    sum(losses.values()).backward()
    return model, losses


def test_channels_last_backbone_gives_the_contiguous_models_losses_and_gradients():
    plain, plain_losses = _train_step(False)
    cl, cl_losses = _train_step(True)
    stem_weight = cl.backbone.bottom_up.stem.conv1.weight
    assert stem_weight.is_contiguous(memory_format=torch.channels_last) and not stem_weight.is_contiguous()
    assert plain.backbone.bottom_up.stem.conv1.weight.is_contiguous()
    features = cl.backbone_features(torch.randn(1, 3, 64, 64))
    assert all(f.is_contiguous() for f in features.values())  # the heads get the contiguous layout
    assert sorted(cl_losses) == sorted(plain_losses)
    for k in plain_losses:
        assert torch.allclose(cl_losses[k], plain_losses[k], rtol=1e-4, atol=1e-5), k
    plain_params = dict(plain.named_parameters())
    for name, p in cl.named_parameters():
        ref = plain_params[name].grad
        assert torch.allclose(p.grad, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item()), name
    # the state dict is the contiguous model's (a checkpoint loads into either)
    state = cl.state_dict()
    plain.load_state_dict(state)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in state.items())
