"""Deformable convolution on ``torchvision.ops.deform_conv2d`` (CPU and CUDA kernels, no compiled detectron2
op), with detectron2's module and parameter names, and the ResNet block that uses it.

The official K-Net R-101-DCN models (ZwwWayne/K-Net
``configs/det/knet/knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco{,-panoptic}.py``: ``dcn=dict(type='DCN',
deform_groups=1, fallback_on_stride=False)``, ``stage_with_dcn=(False, True, True, True)``) use mmcv's ``DCN``
= ``DeformConv2dPack``: deformable convolution **v1** (Dai et al., "Deformable Convolutional Networks", ICCV
2017), no modulation mask, on the 3x3 conv of every block of res3-res5; its offsets come from a plain conv
``conv_offset`` (bias, zero-initialised) on the block's input to that conv, with the conv's stride, padding
and dilation. mmcv's ``DCNv2`` (modulated, Zhu et al., "Deformable ConvNets v2", CVPR 2019) is not used by
K-Net; it is supported here too (``MODEL.RESNETS.DEFORM_MODULATED``) for detectron2 configs that ask for it.

Semantics, checked against a direct bilinear-sampling computation in
``tests/modeling/test_deform_conv.py``: output position ``p`` of kernel tap ``k = i * kw + j`` samples the
input at ``p * stride - padding + (i, j) * dilation + (offset[2k], offset[2k + 1])`` (row, column; per offset
group a block of ``2 * kh * kw`` channels),
bilinearly, with zeros outside the image; the modulated variant multiplies each sample by ``mask[k]``. This is
the layout of mmcv's kernel (``mmcv/ops/csrc/common/cuda/deform_conv_cuda_kernel.cuh``,
``deformable_im2col_gpu_kernel``), of detectron2's
(``detectron2/layers/csrc/deformable/deform_conv_cuda_kernel.cu``, same MSRA origin) and of torchvision's
(``torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp``), so converted official weights give the official
offsets' meaning.

Names (so that the converted official R-101-DCN checkpoints load unchanged, see
:mod:`knet.checkpoint.resnet`): :class:`DeformConv` / :class:`ModulatedDeformConv` have detectron2's
``weight`` (out, in / groups, kh, kw), optional ``bias`` and ``norm`` (``detectron2/layers/deform_conv.py``);
:class:`DeformBottleneckBlock` has detectron2's ``conv1``, ``conv2_offset``, ``conv2``, ``conv3``,
``shortcut`` (``detectron2/modeling/backbone/resnet.py``, ``DeformBottleneckBlock``). detectron2's own classes
need its compiled ops on GPU (and, in detectron2 main without them, cannot even be constructed), which is why
these exist.
"""

from typing import Optional

import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
import fvcore.nn.weight_init as weight_init
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "DeformBottleneckBlock"]


class DeformConv(nn.Module):
    """Deformable convolution v1: ``forward(x, offset)``.

    Args (as detectron2's ``DeformConv``):
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as ``nn.Conv2d``.
        deformable_groups: number of offset groups (the input channels are split into this many groups, each
            with its own offsets); ``offset`` has ``2 * deformable_groups * kh * kw`` channels.
        bias: learnable bias (detectron2's ResNet uses none: a norm follows).
        norm: a module applied after the convolution (``conv.norm``), or None.
        activation: a callable applied last, or None.
    """

    modulated = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__()
        name = type(self).__name__
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                f"groups ({groups})."
            )
        if deformable_groups < 1 or in_channels % deformable_groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) must be divisible by deformable_groups "
                f"({deformable_groups}, MODEL.RESNETS.DEFORM_NUM_GROUPS)."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    @property
    def num_offset_channels(self) -> int:
        """``2 * deformable_groups * kh * kw``: the channels ``offset`` must have."""
        return 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]

    def _output_size(self, x: torch.Tensor):
        size = [x.shape[0], self.out_channels]
        for d in range(2):
            k = self.dilation[d] * (self.kernel_size[d] - 1) + 1
            size.append((x.shape[d + 2] + 2 * self.padding[d] - k) // self.stride[d] + 1)
        return size

    def _check(self, x, offset, mask):
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        out_hw = self._output_size(x)[2:]
        want = [x.shape[0], self.num_offset_channels, *out_hw]
        if list(offset.shape) != want:
            raise ValueError(f"{name}: offset must have shape {want} (2 * deformable_groups * kh * kw "
                             f"channels at the output size), got {list(offset.shape)}.")
        if mask is not None:
            want_mask = [x.shape[0], self.num_offset_channels // 2, *out_hw]
            if list(mask.shape) != want_mask:
                raise ValueError(f"{name}: mask must have shape {want_mask}, got {list(mask.shape)}.")

    def _deform(self, x, offset, mask=None):
        self._check(x, offset, mask)
        if x.numel() == 0:  # an empty batch: torchvision's kernel needs at least one image
            return x.new_zeros(self._output_size(x)) + 0.0 * self.weight.sum()
        # A NaN offset samples zero in mmcv's and detectron2's kernels (their inside-the-image test is false
        # for NaN); torchvision's kernel would index memory with it and crash the process: send it outside.
        offset = offset.masked_fill(torch.isnan(offset), float("-inf"))
        args = [x, offset, self.weight, self.bias, mask]
        low_precision = x.dtype not in (torch.float32, torch.float64)
        if low_precision or torch.is_autocast_enabled(x.device.type):
            # torchvision's CPU kernel has no bfloat16/float16 and no CPU autocast rule: compute in float32
            # (as torchvision's CUDA autocast rule does) and return the input's dtype
            args = [None if a is None else a.float() for a in args]
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = self._call(*args)
            return out.to(x.dtype)
        return self._call(*args)

    def _call(self, x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def _post(self, x):
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self._post(self._deform(x, offset))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )


class ModulatedDeformConv(DeformConv):
    """Modulated deformable convolution (v2): ``forward(x, offset, mask)``, ``mask`` with
    ``deformable_groups * kh * kw`` channels (already in [0, 1]: the caller applies the sigmoid). detectron2's
    ``ModulatedDeformConv`` has a bias by default; so does this."""

    modulated = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 deformable_groups=1, bias=True, norm=None, activation=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deformable_groups, bias, norm, activation)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._post(self._deform(x, offset, mask))


class DeformBottleneckBlock(CNNBlockBase):
    """detectron2's ``DeformBottleneckBlock`` (same arguments, submodules and initialisation) with
    :class:`DeformConv` / :class:`ModulatedDeformConv`: 1x1 -> deformable 3x3 (offsets, and for the modulated
    variant a sigmoid mask, from ``conv2_offset``, a zero-initialised 3x3 conv with bias on the 1x1's output)
    -> 1x1, plus the shortcut. mmdet's ``Bottleneck`` with ``dcn=dict(type='DCN')`` (mmdet
    ``models/backbones/resnet.py``) computes the same with the offset conv named ``conv2.conv_offset``.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        bottleneck_channels,
        stride=1,
        num_groups=1,
        norm="BN",
        stride_in_1x1=False,
        dilation=1,
        deform_modulated=False,
        deform_num_groups=1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        op = ModulatedDeformConv if deform_modulated else DeformConv
        taps = 9  # 3x3 kernel
        offset_channels = (3 if deform_modulated else 2) * taps * deform_num_groups
        self.conv2_offset = Conv2d(bottleneck_channels, offset_channels, kernel_size=3, stride=stride_3x3,
                                   padding=dilation, dilation=dilation)
        self.conv2 = op(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
                        padding=dilation, bias=False, groups=num_groups, dilation=dilation,
                        deformable_groups=deform_num_groups, norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        if self.deform_modulated:
            # detectron2 and mmcv (ModulatedDeformConv2dPack) split the 27 channels the same way
            dy_dx_a, dy_dx_b, mask = torch.chunk(self.conv2_offset(out), 3, dim=1)
            out = self.conv2(out, torch.cat((dy_dx_a, dy_dx_b), dim=1), mask.sigmoid())
        else:
            out = self.conv2(out, self.conv2_offset(out))
        out = F.relu_(out)
        out = self.conv3(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)
