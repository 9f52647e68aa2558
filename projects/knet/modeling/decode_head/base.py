"""The base of semantic K-Net's "kernel-generating" decode heads (FCN, PSP, ASPP, UPerNet).

In semantic K-Net (Zhang et al., NeurIPS 2021, Sec. 3.4 and 4; mmsegmentation
``mmseg/models/decode_heads/knet_head.py::IterativeDecodeHead``) a classic decode head produces the feature
map the kernels convolve (the tensor just before its classifier); its classifier ``conv_seg`` (a 1x1 conv with
bias, after ``Dropout2d(0.1)``) gives the initial logits, and ``conv_seg.weight`` (num_classes, C, 1, 1) is
the set of initial class kernels, shared by every image. Every head returns ``{"feat", "init_logits",
"init_kernels"}`` (``KNET_DECODE_HEAD_REGISTRY``'s interface).

The config reading shared by the heads is here (:meth:`DecodeHeadBase.from_config`): the width, norm and
inputs (``MODEL.KNET.PIXEL_DECODER.{CONV_DIM, NORM, IN_FEATURES}``), the classes and the dropout; each head
names its own options in :attr:`DecodeHeadBase.semantic_keys`.
"""
from typing import Dict, Sequence

import torch
from torch import nn

__all__ = ["DecodeHeadBase", "check_in_features"]


def check_in_features(in_features: Sequence[str], input_shape, head_name: str) -> None:
    """A ValueError naming ``MODEL.KNET.PIXEL_DECODER.IN_FEATURES`` when the backbone lacks a feature."""
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(
            f"{head_name}: MODEL.KNET.PIXEL_DECODER.IN_FEATURES {list(in_features)} names {missing}, which "
            f"the backbone does not output (available: {sorted(input_shape)}); fix IN_FEATURES or "
            "MODEL.RESNETS.OUT_FEATURES"
        )


class DecodeHeadBase(nn.Module):
    """``Dropout2d`` + ``conv_seg`` (mmseg ``BaseDecodeHead.cls_seg``) and the shared config reading.

    Subclasses implement :meth:`forward_features` (backbone features -> (B, channels, h, w)) and list their
    own options in :attr:`semantic_keys` (multi-input heads also override :meth:`input_args`). Their
    constructors take ``norm`` and pass ``channels``, ``num_classes`` and ``dropout_ratio`` on to this class.
    """

    def __init__(self, *, channels: int, num_classes: int, dropout_ratio: float):
        """
        Args:
            channels: width of the feature the kernels convolve.
            num_classes: one class kernel (``conv_seg`` row) per class.
            dropout_ratio: ``Dropout2d`` before ``conv_seg`` (0: none).
        """
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        # mmseg BaseDecodeHead: conv_seg is N(0, 0.01) with zero bias
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.constant_(self.conv_seg.bias, 0.0)

    #: the head's own constructor arguments read from ``MODEL.KNET.SEMANTIC``: {argument: key}
    semantic_keys: Dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES)
        check_in_features(in_features, input_shape, cls.__name__)
        pd, s = cfg.MODEL.KNET.PIXEL_DECODER, cfg.MODEL.KNET.SEMANTIC
        return dict(
            channels=pd.CONV_DIM,
            num_classes=cfg.MODEL.KNET.NUM_CLASSES,
            norm=pd.NORM,
            dropout_ratio=s.DROPOUT,
            **cls.input_args(input_shape, in_features),
            **{arg: s[key] for arg, key in cls.semantic_keys.items()},
        )

    @classmethod
    def input_args(cls, input_shape, in_features: Sequence[str]) -> dict:
        """The constructor arguments naming the head's inputs: by default the last of ``in_features`` as
        ``in_feature`` with its ``in_channels`` (the single-input FCN / PSP / ASPP heads read res5)."""
        return dict(in_channels=input_shape[in_features[-1]].channels, in_feature=in_features[-1])

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
            ``feat`` (B, channels, h, w), ``init_logits`` (B, num_classes, h, w) and ``init_kernels``
            (num_classes, channels, 1, 1) (the ``conv_seg`` weight itself, with its gradient).
        """
        feat = self.forward_features(features)
        return {"feat": feat, "init_logits": self.cls_seg(feat), "init_kernels": self.conv_seg.weight}
