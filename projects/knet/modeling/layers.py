"""Small layers shared by the K-Net modules: the conv-norm-ReLU block, the bilinear resize (with a faster
gradient for the x2 upsampling on CPU) and a max-pool that is faster on CPU.

Both follow the reference implementations' conventions: mmcv ``ConvModule`` (conv without bias when a norm
follows, then norm, then ReLU; used by ZwwWayne/K-Net ``knet/det/semantic_fpn_wrapper.py`` and
``knet/det/kernel_head.py`` and by every mmsegmentation decode head) and mmseg's ``resize`` with
``align_corners=False`` (``mmseg/models/utils/wrappers.py``).
"""
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init

__all__ = ["BilinearUpsample2x", "conv_norm_relu", "max_pool2d", "resize", "upsample_bilinear"]


def conv_norm_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: str,
    *,
    stride: int = 1,
    dilation: int = 1,
    msra_init: bool = False,
) -> Conv2d:
    """mmcv ``ConvModule`` (``bias='auto'``, ReLU): a detectron2 ``Conv2d`` with "same" padding
    (``dilation * (kernel_size // 2)``), a bias only without a norm, ``.norm`` and a ReLU activation.

    Args:
        norm: detectron2 norm name ("" for none, "BN", "GN", ...).
        msra_init: initialise like mmcv's ``ConvModule.init_weights`` (Kaiming normal, fan_out, ReLU gain;
            zero bias), i.e. detectron2's ``c2_msra_fill`` (the mmseg decode heads); otherwise PyTorch's
            default (the caller re-initialises, as the K-Net localisation FPN and kernel head do).
    """
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    if msra_init:
        weight_init.c2_msra_fill(conv)
    return conv


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``) of the last two dims of x (..., h, w) to ``size`` (H, W);
    x itself when it already has that size. Works on (B, C, h, w) and on (N, h, w) (an empty N gives an empty
    (0, H, W))."""
    size = tuple(size)  # no int(): traced sizes stay dynamic in an ONNX export
    if tuple(x.shape[-2:]) == size:
        return x
    if x.dim() == 3:
        if x.shape[0] == 0:
            return x.new_zeros((0, *size))
        return upsample_bilinear(x[None], size)[0]
    return upsample_bilinear(x, size)


def upsample_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` of a (B, C, h, w) map. The x2
    upsampling of a float32 CPU map (``size == (2h, 2w)``) keeps that forward, bit for bit, and takes its
    gradient from :class:`_BilinearUpsample2x`, about 4-7x faster than PyTorch's CPU kernel; everything
    else (other sizes, devices and dtypes, mixed precision, traced or scripted graphs) is ``F.interpolate``
    itself."""
    if (
        not (torch.jit.is_tracing() or torch.jit.is_scripting() or _is_compiling())
        and not _autocast_enabled("cpu")  # the bf16 recipes keep the gradient they were measured with
        and x.dim() == 4
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.requires_grad
        and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])
    ):
        return _BilinearUpsample2x.apply(x)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BilinearUpsample2x(torch.nn.Module):
    """``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)`` through :func:`upsample_bilinear`
    (the same output; a faster gradient on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_bilinear(x, (2 * x.shape[-2], 2 * x.shape[-1]))


class _BilinearUpsample2x(torch.autograd.Function):
    """x2 bilinear upsampling (``align_corners=False``) whose gradient is one depthwise convolution.

    Along one axis, output ``2i`` samples the input at ``i - 1/4`` and output ``2i + 1`` at ``i + 1/4``
    (source index ``(o + 1/2) / 2 - 1/2``, clamped at 0 and at the last pixel), so input ``i`` receives
    ``3/4 (g[2i] + g[2i+1]) + 1/4 (g[2i-1] + g[2i+2])`` of the output gradient g, where the clamping at the
    borders reads ``g[-1] = g[0]`` and ``g[2n] = g[2n-1]``: a replicate-padded g convolved with
    ``[1/4, 3/4, 3/4, 1/4]`` at stride 2, and in 2-D with its outer product. PyTorch's CPU backward scatters
    each output pixel into four inputs instead, 7x the time of the forward (three (8, 29, 24, 24) mask maps
    of a training step: 2.7 ms each, against 0.4 here). The gradient is the same sum in another order: equal
    to float32 rounding (``tests/modeling/test_cpu_fast_paths.py``), not bit for bit.
    """

    @staticmethod
    def forward(ctx, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, grad):
        channels = grad.shape[1]
        taps = grad.new_tensor([0.25, 0.75, 0.75, 0.25])
        weight = (taps[:, None] * taps[None, :]).expand(channels, 1, 4, 4)
        # depthwise in the channels-last layout: 2-3x faster than contiguous on CPU
        padded = F.pad(grad.contiguous(memory_format=torch.channels_last), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(padded, weight, stride=2, groups=channels).contiguous()


class _ChannelsLastMaxPool2d(torch.autograd.Function):
    """``F.max_pool2d`` computed in the channels-last layout and differentiated in the contiguous one.

    On CPU, PyTorch's contiguous (NCHW) max-pool forward is several times slower than its channels-last one
    (a ResNet stem's 3x3/2 pool of a (8, 32, 96, 96) map: 16 against 4 ms with two threads), while its
    backward is the faster of the two. Both kernels take the first maximum of a window and return the
    window's flat ``h * w`` index whatever the layout, so the result and the gradient are those of
    ``F.max_pool2d``, bit for bit.
    """

    @staticmethod
    def forward(ctx, x, kernel_size: int, stride: int, padding: int):
        y, indices = F.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel_size, stride, padding
        )
        ctx.save_for_backward(x, indices)
        ctx.pool_args = (kernel_size, stride, padding)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        k, s, p = ctx.pool_args
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, [k, k], [s, s], [p, p], [1, 1], False, indices.contiguous()
        )
        return grad_x, None, None, None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return device_type == "cpu" and torch.is_autocast_cpu_enabled()


def _is_compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def max_pool2d(x: torch.Tensor, kernel_size: int, stride: int, padding: int = 0) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding)`` of a (B, C, H, W) map: the same values and gradient,
    about 3x faster on CPU (forward + backward of a ResNet stem's pool: 6.5 against 20 ms, two threads; see
    :class:`_ChannelsLastMaxPool2d`). Other devices, channels-last inputs and traced or scripted graphs (ONNX
    export) take ``F.max_pool2d`` itself."""
    if (
        x.device.type != "cpu"
        or x.dim() != 4
        or not x.is_contiguous()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or _is_compiling()
    ):
        return F.max_pool2d(x, kernel_size, stride, padding)
    return _ChannelsLastMaxPool2d.apply(x, kernel_size, stride, padding)
