"""Small layers shared by the K-Net heads: the conv-norm-ReLU block and the bilinear resize.

Both follow the reference implementations' conventions: mmcv ``ConvModule`` (conv without bias when a norm
follows, then norm, then ReLU; used by ZwwWayne/K-Net ``knet/det/semantic_fpn_wrapper.py`` and
``knet/det/kernel_head.py`` and by every mmsegmentation decode head) and mmseg's ``resize`` with
``align_corners=False`` (``mmseg/models/utils/wrappers.py``).
"""
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init

__all__ = ["conv_norm_relu", "resize"]


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
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
