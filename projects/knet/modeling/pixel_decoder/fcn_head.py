"""FCN head as a K-Net kernel-generating head (and as the auxiliary head of every semantic model).

Mirrors mmsegmentation ``mmseg/models/decode_heads/fcn_head.py::FCNHead`` (Long et al., CVPR 2015):
``num_convs`` conv-norm-ReLU layers (``convs.{i}``), optionally ``conv_cat`` over ``[input, convs(input)]``,
then Dropout2d and ``conv_seg``. K-Net + FCN (mmseg ``configs/knet/knet-s3_r50-d8_fcn_*``) uses 2 convs of 512
channels with ``concat_input=True`` on res5; the auxiliary head uses 1 conv of 256 channels on res4 without
concatenation.
"""
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from ..registry import KNET_PIXEL_DECODER_REGISTRY
from .decode_head_base import (
    SemanticDecodeHeadBase,
    check_in_features,
    conv_norm_relu,
    decode_head_common_args,
)

__all__ = ["KNetFCNHead"]


@KNET_PIXEL_DECODER_REGISTRY.register()
class KNetFCNHead(SemanticDecodeHeadBase):
    """FCN kernel-generating head. State-dict leaves: ``convs.{i}``, ``conv_cat``, ``conv_seg`` and
    ``auxiliary_head.*`` (each conv a detectron2 ``Conv2d`` with ``.norm``)."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        in_feature: str,
        channels: int,
        num_classes: int,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        norm: str = "BN",
        dropout_ratio: float = 0.1,
        auxiliary_head: Optional[nn.Module] = None,
    ):
        """
        Args:
            in_channels: channels of the backbone feature ``in_feature``.
            channels: width of the convs (the feature the kernels convolve).
            num_convs: conv-norm-ReLU layers; 0 means identity (then ``in_channels`` must equal ``channels``).
            concat_input: add ``conv_cat`` over the concatenation of the input and the convs' output.
        """
        super().__init__(
            channels=channels,
            num_classes=num_classes,
            dropout_ratio=dropout_ratio,
            auxiliary_head=auxiliary_head,
        )
        if num_convs < 0:
            raise ValueError(f"MODEL.KNET.SEMANTIC.FCN_NUM_CONVS must be >= 0, got {num_convs}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(
                f"KNetFCNHead with 0 convs needs in_channels == channels (got {in_channels} != {channels})"
            )
        self.in_feature = in_feature
        self.concat_input = concat_input
        layers = [
            conv_norm_relu(in_channels if i == 0 else channels, channels, kernel_size, norm)
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        if concat_input:
            self.conv_cat = conv_norm_relu(in_channels + channels, channels, kernel_size, norm)

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features = cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES
        check_in_features(in_features, input_shape, "KNetFCNHead")
        s = cfg.MODEL.KNET.SEMANTIC
        feature = in_features[-1]
        return dict(
            in_channels=input_shape[feature].channels,
            in_feature=feature,
            num_convs=s.FCN_NUM_CONVS,
            kernel_size=s.FCN_KERNEL_SIZE,
            concat_input=s.FCN_CONCAT_INPUT,
            **decode_head_common_args(cfg, input_shape),
        )

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out
