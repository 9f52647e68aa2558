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

from ..registry import KNET_PIXEL_DECODER_REGISTRY
from .decode_head_base import (
    SemanticDecodeHeadBase,
    check_in_features,
    conv_norm_relu,
    decode_head_common_args,
    resize,
)

__all__ = ["KNetASPPHead"]


@KNET_PIXEL_DECODER_REGISTRY.register()
class KNetASPPHead(SemanticDecodeHeadBase):
    """ASPP kernel-generating head. State-dict leaves: ``image_pool``, ``aspp_modules.{k}``, ``bottleneck``,
    ``conv_seg``, ``auxiliary_head.*``."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        in_feature: str,
        channels: int,
        num_classes: int,
        dilations: Sequence[int] = (1, 12, 24, 36),
        norm: str = "BN",
        dropout_ratio: float = 0.1,
        auxiliary_head=None,
    ):
        super().__init__(
            channels=channels,
            num_classes=num_classes,
            dropout_ratio=dropout_ratio,
            auxiliary_head=auxiliary_head,
        )
        if len(dilations) == 0:
            raise ValueError("MODEL.KNET.SEMANTIC.ASPP_DILATIONS must not be empty")
        self.in_feature = in_feature
        self.dilations = tuple(int(d) for d in dilations)
        self.image_pool = conv_norm_relu(in_channels, channels, 1, norm)
        self.aspp_modules = nn.ModuleList(
            [
                conv_norm_relu(in_channels, channels, 1 if d == 1 else 3, norm, dilation=d)
                for d in self.dilations
            ]
        )
        self.bottleneck = conv_norm_relu((len(self.dilations) + 1) * channels, channels, 3, norm)

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features = cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES
        check_in_features(in_features, input_shape, "KNetASPPHead")
        feature = in_features[-1]
        return dict(
            in_channels=input_shape[feature].channels,
            in_feature=feature,
            dilations=cfg.MODEL.KNET.SEMANTIC.ASPP_DILATIONS,
            **decode_head_common_args(cfg, input_shape),
        )

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1))
        outs = [resize(pooled, x.shape[-2:])] + [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))
