"""ASPP head (DeepLabv3) as a K-Net kernel-generating head.

Mirrors mmsegmentation ``mmseg/models/decode_heads/aspp_head.py::{ASPPModule, ASPPHead}`` (Chen et al., 2017,
"Rethinking Atrous Convolution"): an image-pooling branch (global average pool, 1x1 conv-norm-ReLU
``image_pool``, bilinear upsample), and one branch per dilation in (1, 12, 24, 36) (``aspp_modules.{k}``: 1x1
conv for dilation 1, 3x3 dilated conv otherwise), concatenated in that order and fused by a 3x3 conv-norm-ReLU
(``bottleneck``). K-Net + DeepLabv3 (mmseg ``configs/knet/knet-s3_r50-d8_deeplabv3_*``) uses 512 channels on
res5 of the dilated (OS8) ResNetV1c-50.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..layers import conv_norm_relu, resize
from ..registry import KNET_DECODE_HEAD_REGISTRY
from .base import DecodeHeadBase

__all__ = ["KNetASPPHead"]


@KNET_DECODE_HEAD_REGISTRY.register()
class KNetASPPHead(DecodeHeadBase):
    """ASPP kernel-generating head. State-dict leaves: ``image_pool``, ``aspp_modules.{k}``, ``bottleneck``,
    ``conv_seg``."""

    semantic_keys = {"dilations": "ASPP_DILATIONS"}

    @configurable
    def __init__(self, *, in_channels: int, in_feature: str, dilations: Sequence[int], norm: str, **common):
        """
        Args:
            in_channels: channels of the backbone feature ``in_feature``.
            dilations: one branch per dilation (``MODEL.KNET.SEMANTIC.ASPP_DILATIONS``; 1 = a 1x1 conv).
            norm: detectron2 norm name of the convs.
            common: ``channels``, ``num_classes``, ``dropout_ratio`` (:class:`DecodeHeadBase`).
        """
        super().__init__(**common)
        if len(dilations) == 0:
            raise ValueError("MODEL.KNET.SEMANTIC.ASPP_DILATIONS must not be empty")
        channels = self.channels
        self.in_feature = in_feature
        self.dilations = tuple(int(d) for d in dilations)
        self.image_pool = conv_norm_relu(in_channels, channels, 1, norm, msra_init=True)
        self.aspp_modules = nn.ModuleList(
            [
                conv_norm_relu(in_channels, channels, 1 if d == 1 else 3, norm, dilation=d, msra_init=True)
                for d in self.dilations
            ]
        )
        fused = (len(self.dilations) + 1) * channels
        self.bottleneck = conv_norm_relu(fused, channels, 3, norm, msra_init=True)

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1))
        outs = [resize(pooled, x.shape[-2:])] + [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))
