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

from ..layers import conv_norm_relu, resize
from ..registry import KNET_DECODE_HEAD_REGISTRY
from .base import DecodeHeadBase

__all__ = ["KNetPSPHead", "build_psp_modules", "pyramid_pooling"]


def build_psp_modules(
    pool_scales: Sequence[int], in_channels: int, channels: int, norm: str
) -> nn.ModuleList:
    """One 1x1 conv-norm-ReLU per pool scale (mmseg ``PPM``; the pooling is in :func:`pyramid_pooling`)."""
    if len(pool_scales) == 0:
        raise ValueError("MODEL.KNET.SEMANTIC.POOL_SCALES must not be empty")
    return nn.ModuleList(
        [conv_norm_relu(in_channels, channels, 1, norm, msra_init=True) for _ in pool_scales]
    )


def pyramid_pooling(
    x: torch.Tensor, psp_modules: nn.ModuleList, pool_scales: Sequence[int]
) -> List[torch.Tensor]:
    """(B, C_in, h, w) -> list of (B, channels, h, w): for each scale s, pool to s x s, conv, upsample."""
    outs = []
    for scale, conv in zip(pool_scales, psp_modules):
        pooled = F.adaptive_avg_pool2d(x, int(scale))
        outs.append(resize(conv(pooled), x.shape[-2:]))
    return outs


@KNET_DECODE_HEAD_REGISTRY.register()
class KNetPSPHead(DecodeHeadBase):
    """PSP kernel-generating head. State-dict leaves: ``psp_modules.{k}``, ``bottleneck``, ``conv_seg``."""

    semantic_keys = {"pool_scales": "POOL_SCALES"}

    @configurable
    def __init__(self, *, in_channels: int, in_feature: str, pool_scales: Sequence[int], norm: str, **common):
        """
        Args:
            in_channels: channels of the backbone feature ``in_feature``.
            pool_scales: the pyramid's bins per side (``MODEL.KNET.SEMANTIC.POOL_SCALES``).
            norm: detectron2 norm name of the convs.
            common: ``channels``, ``num_classes``, ``dropout_ratio`` (:class:`DecodeHeadBase`).
        """
        super().__init__(**common)
        self.in_feature = in_feature
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.psp_modules = build_psp_modules(self.pool_scales, in_channels, self.channels, norm)
        self.bottleneck = conv_norm_relu(
            in_channels + len(self.pool_scales) * self.channels, self.channels, 3, norm, msra_init=True
        )

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        outs = [x] + pyramid_pooling(x, self.psp_modules, self.pool_scales)
        return self.bottleneck(torch.cat(outs, dim=1))
