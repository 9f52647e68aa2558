"""PSP head (pyramid pooling) as a K-Net kernel-generating head.

Mirrors mmsegmentation ``mmseg/models/decode_heads/psp_head.py::{PPM, PSPHead}`` (Zhao et al., CVPR 2017): for
every pool scale s in (1, 2, 3, 6), adaptive average pooling to s x s, a 1x1 conv-norm-ReLU
(``psp_modules.{k}``) and a bilinear upsample (``align_corners=False``) back to the input size; the input and
the 4 branches are concatenated and fused by a 3x3 conv-norm-ReLU (``bottleneck``). K-Net + PSPNet (mmseg
``configs/knet/knet-s3_r50-d8_pspnet_*``) runs it with 512 channels on res5 of the dilated (OS8) ResNetV1c-50.
"""
from typing import Dict, List, Sequence

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

__all__ = ["KNetPSPHead", "build_psp_modules", "pyramid_pooling"]


def build_psp_modules(
    pool_scales: Sequence[int], in_channels: int, channels: int, norm: str
) -> nn.ModuleList:
    """One 1x1 conv-norm-ReLU per pool scale (mmseg ``PPM``; the pooling is in :func:`pyramid_pooling`)."""
    if len(pool_scales) == 0:
        raise ValueError("MODEL.KNET.SEMANTIC.POOL_SCALES must not be empty")
    return nn.ModuleList([conv_norm_relu(in_channels, channels, 1, norm) for _ in pool_scales])


def pyramid_pooling(
    x: torch.Tensor, psp_modules: nn.ModuleList, pool_scales: Sequence[int]
) -> List[torch.Tensor]:
    """(B, C_in, h, w) -> list of (B, channels, h, w): for each scale s, pool to s x s, conv, upsample."""
    outs = []
    for scale, conv in zip(pool_scales, psp_modules):
        pooled = F.adaptive_avg_pool2d(x, int(scale))
        outs.append(resize(conv(pooled), x.shape[-2:]))
    return outs


@KNET_PIXEL_DECODER_REGISTRY.register()
class KNetPSPHead(SemanticDecodeHeadBase):
    """PSP kernel-generating head. State-dict leaves: ``psp_modules.{k}``, ``bottleneck``, ``conv_seg``,
    ``auxiliary_head.*``."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        in_feature: str,
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
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
        self.in_feature = in_feature
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.psp_modules = build_psp_modules(self.pool_scales, in_channels, channels, norm)
        self.bottleneck = conv_norm_relu(in_channels + len(self.pool_scales) * channels, channels, 3, norm)

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features = cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES
        check_in_features(in_features, input_shape, "KNetPSPHead")
        feature = in_features[-1]
        return dict(
            in_channels=input_shape[feature].channels,
            in_feature=feature,
            pool_scales=cfg.MODEL.KNET.SEMANTIC.POOL_SCALES,
            **decode_head_common_args(cfg, input_shape),
        )

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        outs = [x] + pyramid_pooling(x, self.psp_modules, self.pool_scales)
        return self.bottleneck(torch.cat(outs, dim=1))
