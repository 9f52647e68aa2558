"""UPerNet head as a K-Net kernel-generating head.

Mirrors mmsegmentation ``mmseg/models/decode_heads/uper_head.py::UPerHead`` (Xiao et al., ECCV 2018): a PSP
module on the last level (``psp_modules.{k}`` + ``bottleneck``) becomes the top lateral; the other levels get
1x1 conv-norm-ReLU laterals (``lateral_convs.{i}``); a top-down pathway adds each upsampled coarser lateral;
each non-top level goes through a 3x3 conv-norm-ReLU (``fpn_convs.{i}``); all levels are upsampled to the
finest (stride 4) and concatenated, then fused by a 3x3 conv-norm-ReLU (``fpn_bottleneck``). All resizes are
bilinear with ``align_corners=False``. K-Net + UPerNet (mmseg ``configs/knet/knet-s3_r50-d8_upernet_*``) uses
512 channels on res2..res5 of the undilated (OS32) ResNetV1c-50; the kernels then convolve a stride-4 map.
"""
from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from torch import nn

from ..layers import conv_norm_relu, resize
from ..registry import KNET_DECODE_HEAD_REGISTRY
from .base import DecodeHeadBase
from .psp_head import build_psp_modules, pyramid_pooling

__all__ = ["KNetUPerHead"]


@KNET_DECODE_HEAD_REGISTRY.register()
class KNetUPerHead(DecodeHeadBase):
    """UPerNet kernel-generating head. State-dict leaves: ``psp_modules.{k}``, ``bottleneck``,
    ``lateral_convs.{i}``, ``fpn_convs.{i}``, ``fpn_bottleneck``, ``conv_seg``."""

    semantic_keys = {"pool_scales": "POOL_SCALES"}

    @configurable
    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        in_features: Sequence[str],
        pool_scales: Sequence[int],
        norm: str,
        **common,
    ):
        """
        Args:
            in_channels, in_features: the backbone levels, finest first (e.g. res2..res5).
            pool_scales: the pyramid's bins per side on the coarsest level
                (``MODEL.KNET.SEMANTIC.POOL_SCALES``).
            norm: detectron2 norm name of the convs.
            common: ``channels``, ``num_classes``, ``dropout_ratio`` (:class:`DecodeHeadBase`).
        """
        super().__init__(**common)
        if len(in_features) != len(in_channels) or len(in_features) < 2:
            raise ValueError(
                "KNetUPerHead needs at least 2 input levels (MODEL.KNET.PIXEL_DECODER.IN_FEATURES, finest "
                f"first), got {list(in_features)}"
            )
        channels = self.channels
        self.in_features = list(in_features)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.psp_modules = build_psp_modules(self.pool_scales, in_channels[-1], channels, norm)
        psp_in = in_channels[-1] + len(self.pool_scales) * channels
        self.bottleneck = conv_norm_relu(psp_in, channels, 3, norm, msra_init=True)
        self.lateral_convs = nn.ModuleList(
            [conv_norm_relu(c, channels, 1, norm, msra_init=True) for c in in_channels[:-1]]
        )
        self.fpn_convs = nn.ModuleList(
            [conv_norm_relu(channels, channels, 3, norm, msra_init=True) for _ in in_channels[:-1]]
        )
        self.fpn_bottleneck = conv_norm_relu(len(in_channels) * channels, channels, 3, norm, msra_init=True)

    @classmethod
    def input_args(cls, input_shape, in_features):
        in_features = sorted(in_features, key=lambda f: input_shape[f].stride)
        return dict(in_channels=[input_shape[f].channels for f in in_features], in_features=in_features)

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        inputs: List[torch.Tensor] = [features[f] for f in self.in_features]
        top = inputs[-1]
        psp = self.bottleneck(torch.cat([top] + pyramid_pooling(top, self.psp_modules, self.pool_scales), 1))
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1])] + [psp]
        # top-down pathway (not in place: autograd-safe)
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [resize(o, size) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))
