"""FCN head as a K-Net kernel-generating head, and the auxiliary head of every semantic model.

Mirrors mmsegmentation ``mmseg/models/decode_heads/fcn_head.py::FCNHead`` (Long et al., CVPR 2015):
``num_convs`` conv-norm-ReLU layers (``convs.{i}``), optionally ``conv_cat`` over ``[input, convs(input)]``,
then Dropout2d and ``conv_seg``. K-Net + FCN (mmseg ``configs/knet/knet-s3_r50-d8_fcn_*``) uses 2 convs of 512
channels with ``concat_input=True`` on res5; the auxiliary head (mmseg ``auxiliary_head``, loss weight 0.4)
uses 1 conv of 256 channels on res4 without concatenation.
"""
from typing import Dict, Optional

import torch
from detectron2.config import configurable
from torch import nn

from ..layers import conv_norm_relu
from ..registry import KNET_DECODE_HEAD_REGISTRY
from .base import DecodeHeadBase

__all__ = ["KNetFCNHead", "build_auxiliary_head"]


@KNET_DECODE_HEAD_REGISTRY.register()
class KNetFCNHead(DecodeHeadBase):
    """FCN kernel-generating head. State-dict leaves: ``convs.{i}``, ``conv_cat``, ``conv_seg`` (each conv a
    detectron2 ``Conv2d`` with ``.norm``)."""

    semantic_keys = {
        "num_convs": "FCN_NUM_CONVS",
        "kernel_size": "FCN_KERNEL_SIZE",
        "concat_input": "FCN_CONCAT_INPUT",
    }

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        in_feature: str,
        num_convs: int,
        kernel_size: int,
        concat_input: bool,
        norm: str,
        **common,
    ):
        """
        Args:
            in_channels: channels of the backbone feature ``in_feature``.
            num_convs: conv-norm-ReLU layers; 0 means identity (then ``in_channels`` must equal ``channels``).
            kernel_size: of those convs (and of ``conv_cat``).
            concat_input: add ``conv_cat`` over the concatenation of the input and the convs' output.
            norm: detectron2 norm name of the convs.
            common: ``channels``, ``num_classes``, ``dropout_ratio`` (:class:`DecodeHeadBase`).
        """
        super().__init__(**common)
        channels = self.channels
        if num_convs < 0:
            raise ValueError(f"MODEL.KNET.SEMANTIC.FCN_NUM_CONVS must be >= 0, got {num_convs}")
        if num_convs == 0 and in_channels != channels:
            raise ValueError(
                f"KNetFCNHead with 0 convs needs in_channels == channels (got {in_channels} != {channels})"
            )
        self.in_feature = in_feature
        self.concat_input = concat_input
        layers = [
            conv_norm_relu(in_channels if i == 0 else channels, channels, kernel_size, norm, msra_init=True)
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        if concat_input:
            cat_channels = in_channels + channels
            self.conv_cat = conv_norm_relu(cat_channels, channels, kernel_size, norm, msra_init=True)

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.in_feature]
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out


def build_auxiliary_head(cfg, input_shape) -> Optional[KNetFCNHead]:
    """The auxiliary FCN head of ``KNetSemantic`` (mmseg ``auxiliary_head``), from
    ``MODEL.KNET.SEMANTIC.{AUX_IN_FEATURE, AUX_CHANNELS, AUX_NUM_CONVS, DROPOUT}`` and
    ``MODEL.KNET.PIXEL_DECODER.NORM`` (3x3 convs, no concatenation); None when
    ``MODEL.KNET.SEMANTIC.AUX_LOSS_WEIGHT`` is 0."""
    s = cfg.MODEL.KNET.SEMANTIC
    if s.AUX_LOSS_WEIGHT <= 0:
        return None
    if s.AUX_IN_FEATURE not in input_shape:
        raise ValueError(
            f"MODEL.KNET.SEMANTIC.AUX_IN_FEATURE={s.AUX_IN_FEATURE!r} is not a backbone output "
            f"(available: {sorted(input_shape)}); add it to MODEL.RESNETS.OUT_FEATURES"
        )
    return KNetFCNHead(
        in_channels=input_shape[s.AUX_IN_FEATURE].channels,
        in_feature=s.AUX_IN_FEATURE,
        channels=s.AUX_CHANNELS,
        num_classes=cfg.MODEL.KNET.NUM_CLASSES,
        num_convs=s.AUX_NUM_CONVS,
        kernel_size=3,
        concat_input=False,
        norm=cfg.MODEL.KNET.PIXEL_DECODER.NORM,
        dropout_ratio=s.DROPOUT,
    )
