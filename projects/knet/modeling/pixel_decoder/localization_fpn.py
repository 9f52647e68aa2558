"""The "localization FPN" of K-Net for panoptic and instance segmentation.

Reference: ``ZwwWayne/K-Net:knet/det/semantic_fpn_wrapper.py`` (``SemanticFPNWrapper``, a Panoptic-FPN style
semantic head, Kirillov et al. CVPR 2019) with the settings of
``configs/det/_base_/models/knet_s3_r50_fpn*.py``: ``start_level=0, end_level=3, upsample_times=2``,
sine positional encoding on P5, GN(32), ReLU, sum fusion, one ``conv_pred`` and one ``aux_convs`` output
(official ``knet/det/semantic_fpn_wrapper.py``).
"""

from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from ..layers import BilinearUpsample2x, conv_norm_relu
from ..registry import KNET_PIXEL_DECODER_REGISTRY
from .positional_encoding import sine_positional_encoding

__all__ = ["KNetLocalizationFPN"]


@KNET_PIXEL_DECODER_REGISTRY.register()
class KNetLocalizationFPN(nn.Module):
    """Fuses FPN levels at stride 8 (or 4) and returns the localization and semantic features of K-Net.

    Level 0 (P2, stride 4): one 3x3 conv with stride 2. Level 1 (P3): one 3x3 conv. Level i >= 2: i 3x3
    convs, each but the last followed by a bilinear x2 upsample (align_corners=False). Before its convs, the
    last level (P5) gets the sine positional encoding of its padded map added. The per-level maps are summed;
    ``conv_pred`` (1x1 conv-GN-ReLU) gives the localization feature, ``aux_convs.0`` (the same) the
    semantic feature. With ``output_stride`` 4 (our option for small images, not an official setting; use it
    with ``MODEL.KNET.MASK_UPSAMPLE_STRIDE 1``) level 0's conv keeps stride 1 and every conv of the other
    levels is followed by an upsample, so the maps are fused at stride 4, with the same parameters.
    State-dict names: ``convs_all_levels.{i}.conv{j}.{weight,norm.*}``,
    ``conv_pred.*``, ``aux_convs.0.*``.
    """

    @configurable
    def __init__(
        self, input_shape: Dict[str, ShapeSpec], *, conv_dim=256, norm="GN", positional_encoding=True,
        output_stride=8,
    ):
        """
        Args:
            input_shape: the backbone features to read, in order from the finest (stride 4) to the
                coarsest (at least 2 levels; the official model reads P2-P5). Each must have a stride twice
                the previous one, and the first must be stride 4 so that the output is stride 8.
            conv_dim (int): channels of every conv (256).
            norm (str): detectron2 norm name of the convs ("GN" = GroupNorm(32), the official choice).
            positional_encoding (bool): add the sine encoding to the coarsest level (official: True).
            output_stride (int): 8 (the official configs) or 4 (finer masks, for small images).
        """
        super().__init__()
        self.in_features = list(input_shape.keys())
        if len(self.in_features) < 2:
            raise ValueError(
                "KNetLocalizationFPN needs at least 2 input levels (MODEL.KNET.PIXEL_DECODER.IN_FEATURES)"
            )
        strides = [input_shape[f].stride for f in self.in_features]
        for a, b in zip(strides, strides[1:]):
            if b != 2 * a:
                raise ValueError(
                    f"KNetLocalizationFPN: MODEL.KNET.PIXEL_DECODER.IN_FEATURES {self.in_features} must have "
                    "strides "
                    f"doubling from level to level, got {strides}"
                )
        if output_stride not in (4, 8):
            raise ValueError(
                f"MODEL.KNET.PIXEL_DECODER.OUTPUT_STRIDE must be 4 or 8, got {output_stride}"
            )
        self.common_stride = output_stride
        self.positional_encoding = positional_encoding
        channels = [input_shape[f].channels for f in self.in_features]
        if positional_encoding and channels[-1] % 2 != 0:
            raise ValueError(
                f"KNetLocalizationFPN: the positional encoding needs an even width, got {channels[-1]}"
            )

        self.convs_all_levels = nn.ModuleList()
        for i, in_ch in enumerate(channels):
            level = nn.Sequential()
            if i == 0:
                level.add_module(
                    "conv0", conv_norm_relu(in_ch, conv_dim, 3, norm, stride=2 if output_stride == 8 else 1)
                )
            else:
                for j in range(i):
                    conv = conv_norm_relu(in_ch if j == 0 else conv_dim, conv_dim, 3, norm)
                    level.add_module(f"conv{j}", conv)
                    if j < i - 1 or output_stride == 4:
                        level.add_module(f"upsample{j}", BilinearUpsample2x())
            self.convs_all_levels.append(level)
        self.conv_pred = conv_norm_relu(conv_dim, conv_dim, 1, norm)
        self.aux_convs = nn.ModuleList([conv_norm_relu(conv_dim, conv_dim, 1, norm)])
        self.out_channels = conv_dim
        self.reset_parameters()

    def reset_parameters(self):
        """Every conv N(0, 0.01), bias 0 (ZwwWayne/K-Net ``knet/det/semantic_fpn_wrapper.py``,
        ``SemanticFPNWrapper.init_weights``); the norms keep weight 1 / bias 0 (mmcv
        ``ConvModule.init_weights`` and PyTorch's default agree)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        dec = cfg.MODEL.KNET.PIXEL_DECODER
        missing = [f for f in dec.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.KNET.PIXEL_DECODER.IN_FEATURES names {missing}, which the backbone does not output "
                f"(it has {sorted(input_shape)})"
            )
        return {
            "input_shape": {f: input_shape[f] for f in dec.IN_FEATURES},
            "conv_dim": dec.CONV_DIM,
            "norm": dec.NORM,
            "output_stride": dec.OUTPUT_STRIDE,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: backbone features by name, (B, C_i, H_i, W_i) with H_0 = 2 * H_1 = ... (padded input).

        Returns:
            dict with "loc_feat" and "sem_feat", each (B, conv_dim, H_1, W_1) at stride 8 (or (B, conv_dim,
            H_0, W_0) at stride 4 with ``output_stride`` 4).
        """
        fused = None
        last = len(self.in_features) - 1
        for i, name in enumerate(self.in_features):
            x = features[name]
            if i == last and self.positional_encoding:
                B, C, H, W = x.shape
                x = x + sine_positional_encoding(B, H, W, C // 2, device=x.device, dtype=x.dtype)
            y = self.convs_all_levels[i](x)
            fused = y if fused is None else fused + y
        return {"loc_feat": self.conv_pred(fused), "sem_feat": self.aux_convs[0](fused)}
