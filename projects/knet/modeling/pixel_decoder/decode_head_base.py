"""Shared pieces of the semantic K-Net "kernel-generating" heads (FCN, PSP, ASPP, UPerNet).

In semantic K-Net (Zhang et al., NeurIPS 2021, Sec. 3.4 and 4; mmsegmentation
``mmseg/models/decode_heads/knet_head.py::IterativeDecodeHead``) a classic decode head produces the feature
map the kernels convolve (the tensor just before its classifier); its classifier ``conv_seg`` (a 1x1 conv with
bias, after ``Dropout2d(0.1)``) gives the initial logits, and ``conv_seg.weight`` (num_classes, C, 1, 1) is
the set of initial class kernels, shared by every image.

Every head here returns ``{"feat", "init_logits", "init_kernels"}`` and, in training when it owns an auxiliary
FCN head (mmseg ``auxiliary_head``, on res4, loss weight 0.4), also ``"aux_logits"``.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from fvcore.nn import weight_init
from torch import nn

__all__ = [
    "conv_norm_relu",
    "resize",
    "SemanticDecodeHeadBase",
    "decode_head_common_args",
    "check_in_features",
]


def conv_norm_relu(
    in_channels: int, out_channels: int, kernel_size: int, norm: str, dilation: int = 1
) -> Conv2d:
    """mmcv ``ConvModule`` equivalent: conv ("same" padding, no bias when normed) + norm + ReLU.

    Initialised like mmcv (Kaiming normal, fan_out, ReLU gain; zero bias), i.e. detectron2's ``c2_msra_fill``.
    """
    padding = 0 if kernel_size == 1 else dilation * (kernel_size // 2)
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=padding,
        dilation=dilation,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (mmseg's setting for every K-Net head)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def decode_head_common_args(cfg, input_shape) -> dict:
    """Constructor arguments shared by the four heads, read from the config.

    ``MODEL.KNET.NUM_CLASSES``, ``MODEL.KNET.PIXEL_DECODER.{CONV_DIM, NORM}``, ``MODEL.KNET.SEMANTIC.DROPOUT``
    and the auxiliary head (``MODEL.KNET.SEMANTIC.AUX_*``, built when ``AUX_LOSS_WEIGHT > 0``).
    """
    from .fcn_head import KNetFCNHead  # local import: fcn_head imports this module

    s = cfg.MODEL.KNET.SEMANTIC
    pd = cfg.MODEL.KNET.PIXEL_DECODER
    aux = None
    if s.AUX_LOSS_WEIGHT > 0:
        if s.AUX_IN_FEATURE not in input_shape:
            raise ValueError(
                f"MODEL.KNET.SEMANTIC.AUX_IN_FEATURE={s.AUX_IN_FEATURE!r} is not a backbone output "
                f"(available: {sorted(input_shape)}); add it to MODEL.RESNETS.OUT_FEATURES"
            )
        aux = KNetFCNHead(
            in_channels=input_shape[s.AUX_IN_FEATURE].channels,
            in_feature=s.AUX_IN_FEATURE,
            channels=s.AUX_CHANNELS,
            num_classes=cfg.MODEL.KNET.NUM_CLASSES,
            num_convs=s.AUX_NUM_CONVS,
            kernel_size=3,
            concat_input=False,
            norm=pd.NORM,
            dropout_ratio=s.DROPOUT,
            auxiliary_head=None,
        )
    return dict(
        channels=pd.CONV_DIM,
        num_classes=cfg.MODEL.KNET.NUM_CLASSES,
        norm=pd.NORM,
        dropout_ratio=s.DROPOUT,
        auxiliary_head=aux,
    )


def check_in_features(in_features, input_shape, head_name):
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(
            f"{head_name}: MODEL.KNET.PIXEL_DECODER.IN_FEATURES {list(in_features)} names {missing}, "
            "which the "
            f"backbone does not output (available: {sorted(input_shape)}); fix IN_FEATURES or "
            "MODEL.RESNETS.OUT_FEATURES"
        )


class SemanticDecodeHeadBase(nn.Module):
    """Base of the kernel-generating heads: ``Dropout2d`` + ``conv_seg`` and the optional auxiliary head.

    Subclasses implement :meth:`forward_features` (backbone features -> (B, channels, h, w)).
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        dropout_ratio: float = 0.1,
        auxiliary_head: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        # mmseg BaseDecodeHead: conv_seg is N(0, 0.01) with zero bias
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.constant_(self.conv_seg.bias, 0.0)
        self.auxiliary_head = auxiliary_head

    def forward_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, channels, h, w) -> (B, num_classes, h, w): Dropout2d then ``conv_seg``."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: backbone outputs by name, e.g. ``{"res2": (B, 256, H/4, W/4), ..., "res5": ...}``.
        Returns:
            ``feat`` (B, channels, h, w), ``init_logits`` (B, num_classes, h, w), ``init_kernels``
            (num_classes, channels, 1, 1) (the ``conv_seg`` weight itself, with its gradient) and, in training
            with an auxiliary head, ``aux_logits`` (B, num_classes, h', w').
        """
        feat = self.forward_features(features)
        out = {
            "feat": feat,
            "init_logits": self.cls_seg(feat),
            "init_kernels": self.conv_seg.weight,
        }
        if self.training and self.auxiliary_head is not None:
            out["aux_logits"] = self.auxiliary_head(features)["init_logits"]
        return out
