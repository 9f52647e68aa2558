"""What the K-Net meta-architectures (``KNet``, ``KNetSemantic``) share: input normalisation, the batch size
divisibility, the backbone's memory format and BatchNorm folding at inference."""
import math
from typing import Dict

import torch
from torch import nn

from ..fuse import enable_bn_folding

__all__ = ["KNetMetaArchBase"]


class KNetMetaArchBase(nn.Module):
    """Base of the K-Net meta-architectures. A subclass assigns its modules, then calls :meth:`setup_inputs`
    (last: BatchNorm folding looks at every module); its ``from_config`` adds :meth:`input_args`."""

    def setup_inputs(
        self,
        *,
        pixel_mean,
        pixel_std,
        size_divisibility: int,
        fuse_bn: bool,
        channels_last: bool,
        fuse_eval_bn: bool,
        backbone_channels_last: bool = False,
    ) -> None:
        """
        Args:
            pixel_mean, pixel_std: per-channel normalisation of the input images (in the input format);
                non-persistent (3, 1, 1) float32 buffers that also give the model's device.
            size_divisibility: batches are padded to a multiple of this.
            fuse_bn: at inference (eval mode) fold running-statistics BatchNorm into the preceding convs
                (:func:`knet.modeling.fuse.enable_bn_folding`; training and the state dict are unchanged).
            channels_last: with ``fuse_bn``, the folded convs run in channels-last memory format.
            fuse_eval_bn: with ``fuse_bn``, also fold trainable BatchNorm while in eval mode.
            backbone_channels_last: the backbone's weights (now) and inputs (in :meth:`backbone_features`) in
                channels-last memory format.
        """
        mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (pixel_mean, pixel_std))
        self.register_buffer("pixel_mean", mean, False)
        self.register_buffer("pixel_std", std, False)
        self.size_divisibility = size_divisibility
        self.backbone_channels_last = backbone_channels_last
        if backbone_channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if fuse_bn:
            enable_bn_folding(self, channels_last=channels_last, eval_batch_norm=fuse_eval_bn)

    @staticmethod
    def input_args(cfg, backbone: nn.Module) -> dict:
        """The arguments of :meth:`setup_inputs` from ``MODEL.PIXEL_{MEAN,STD}``, ``MODEL.KNET.TEST.{FUSE_BN,
        CHANNELS_LAST, FUSE_EVAL_BN}``, ``MODEL.KNET.BACKBONE_CHANNELS_LAST`` and the size divisibility: the
        backbone's (at least 1) and ``INPUT.SIZE_DIVISIBILITY`` when positive (their least common
        multiple)."""
        size_div = max(getattr(backbone, "size_divisibility", 0), 1)
        if cfg.INPUT.SIZE_DIVISIBILITY > 0:
            size_div = math.lcm(size_div, cfg.INPUT.SIZE_DIVISIBILITY)
        t = cfg.MODEL.KNET.TEST
        return {
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": size_div,
            "fuse_bn": t.FUSE_BN,
            "channels_last": t.CHANNELS_LAST,
            "fuse_eval_bn": t.FUSE_EVAL_BN,
            "backbone_channels_last": cfg.MODEL.KNET.BACKBONE_CHANNELS_LAST,
        }

    def backbone_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``self.backbone(images)``; with ``backbone_channels_last`` the backbone reads the (B, 3, H, W)
        batch in channels-last memory format and its features are returned contiguous. On CPU (oneDNN) most
        of a small ResNet's convolutions are faster in that layout, forward and backward (a ResNet-10 with its
        FPN: 0.88x the time), while PyTorch's GroupNorm, which the heads use, is slower in it, so the heads
        keep the contiguous one. The values are those of the contiguous model up to float rounding."""
        if not self.backbone_channels_last:
            return self.backbone(images)
        features = self.backbone(images.contiguous(memory_format=torch.channels_last))
        return {k: v.contiguous() for k, v in features.items()}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 image in ``INPUT.FORMAT`` -> float32 normalised, on the model's device."""
        return (image.to(self.device) - self.pixel_mean) / self.pixel_std
