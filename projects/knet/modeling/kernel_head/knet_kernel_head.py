"""K-Net's kernel head for instance and panoptic segmentation: initial kernels and the update stages.

Zhang et al., "K-Net", NeurIPS 2021, §3.1-3.3. Reference code: ``ZwwWayne/K-Net:knet/det/kernel_head.py``
(``ConvKernelHead``, the initial kernels and masks; "rpn_head" in the official checkpoints) and
``knet/det/kernel_iter_head.py`` (``KernelIterHead``, the update stages; "roi_head"). The localization FPN
that the reference nests inside ``ConvKernelHead`` is the separate pixel decoder here
(:class:`knet.modeling.pixel_decoder.localization_fpn.KNetLocalizationFPN`). Official file:
``knet/det/kernel_head.py`` (``ConvKernelHead``).
"""

import math
from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn

from ..layers import conv_norm_relu, upsample_bilinear
from ..registry import KNET_KERNEL_HEAD_REGISTRY
from .kernel_update_head import assemble_group_features, build_update_stages, update_head_args

__all__ = ["KNetKernelHead"]


def _conv1x1_stack(num_convs, channels, norm):
    """``num_convs`` x (1x1 conv without bias, norm, ReLU); leaf names ``{i}.weight``, ``{i}.norm.*``."""
    return nn.ModuleList([conv_norm_relu(channels, channels, 1, norm) for _ in range(num_convs)])


@KNET_KERNEL_HEAD_REGISTRY.register()
class KNetKernelHead(nn.Module):
    """Initial kernels and masks, then ``num_stages`` :class:`KernelUpdateHead` stages.

    * ``loc_convs`` / ``seg_convs`` refine the localization / semantic features of the pixel decoder
      (F_loc, F_sem, stride 8).
    * ``init_kernels`` (1x1 conv, no bias, N(0, 1)) gives the initial thing masks
      ``M0 = init_kernels(F_loc)``.
    * ``conv_seg`` (1x1 conv with bias, one output per class, sigmoid) gives the semantic logits on F_sem.
    * The shared feature of the update stages is ``x = F_sem + F_loc``.
    * Initial thing kernels: ``init_kernels.weight`` plus the sum of x under the binarised M0
      (``sigmoid > 0.5``).
    * Panoptic (``num_classes > num_thing_classes``): the stuff kernels are the ``conv_seg.weight`` rows of
      the stuff classes, and the stuff rows of the semantic logits are their initial masks (bias included,
      no assembled-feature term).
    * Every stage returns class logits, new stride-8 masks and new kernels; masks are upsampled x
      ``mask_upsample_stride`` (bilinear) for every stage in training, for the last stage at inference.

    Thing kernels come first (``0..num_proposals-1``), then the stuff kernels in class order.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_proposals: int,
        num_classes: int,
        num_thing_classes: int,
        num_stages: int,
        num_loc_convs: int,
        num_seg_convs: int,
        norm: str,
        conv_kernel_size: int,
        mask_upsample_stride: int,
        **update_args,
    ):
        """
        Args:
            in_channels (int): channels of the pixel-decoder features and of the kernels (256).
            num_proposals (int): learned thing kernels (100).
            num_classes (int): classes predicted (133 panoptic, 80 instance).
            num_thing_classes (int): the first ``num_thing_classes`` classes are things; the rest (if any)
                are stuff classes, each with its own kernel.
            num_stages (int): update stages, each with its own weights (3).
            num_loc_convs, num_seg_convs (int): 1x1 conv-norm-ReLU layers on F_loc / F_sem (1).
            norm (str): norm of those convs ("GN" = GroupNorm(32)).
            conv_kernel_size (int): K of the kernels (1).
            mask_upsample_stride (int): upsampling factor of the stage masks for losses and output (2).
            update_args: the other :class:`KernelUpdateHead` arguments (``num_heads``,
                ``feedforward_channels``, ``num_cls_fcs``, ``num_mask_fcs``, ``dropout``,
                ``hard_mask_threshold``, ``updator_channels``).
        """
        super().__init__()
        if not 0 < num_thing_classes <= num_classes:
            raise ValueError(
                f"KNetKernelHead: need 0 < MODEL.KNET.NUM_THING_CLASSES ({num_thing_classes}) <= "
                f"MODEL.KNET.NUM_CLASSES ({num_classes})"
            )
        self.in_channels = in_channels
        self.num_proposals = num_proposals
        self.num_classes = num_classes
        self.num_thing_classes = num_thing_classes
        self.num_stuff_classes = num_classes - num_thing_classes
        self.conv_kernel_size = conv_kernel_size
        self.mask_upsample_stride = mask_upsample_stride

        self.loc_convs = _conv1x1_stack(num_loc_convs, in_channels, norm)
        self.seg_convs = _conv1x1_stack(num_seg_convs, in_channels, norm)
        self.init_kernels = nn.Conv2d(
            in_channels, num_proposals, conv_kernel_size, padding=conv_kernel_size // 2, bias=False
        )
        self.conv_seg = nn.Conv2d(in_channels, num_classes, 1)
        self.update_heads = build_update_stages(
            num_stages,
            in_channels=in_channels,
            num_classes=num_classes,
            conv_kernel_size=conv_kernel_size,
            mask_mode="hard",
            xavier_init=True,  # official KernelIterHead.init_weights -> KernelUpdateHead.init_weights
            **update_args,
        )
        self.reset_parameters()

    def reset_parameters(self):
        """As the official ``ConvKernelHead.init_weights`` (ZwwWayne/K-Net ``knet/det/kernel_head.py``) with
        the det configs' ``conv_normal_init=True``, ``feat_downsample_stride=2``,
        ``xavier_init_kernel=False``, ``kernel_init_std=1``: loc/seg convs N(0, 0.01) (zero bias if any; their
        GroupNorms keep weight 1 / bias 0, mmcv ``ConvModule.init_weights``); ``init_kernels`` N(0, 1);
        ``conv_seg`` N(0, 0.01) with bias -log((1 - 0.01) / 0.01) (mmcv ``bias_init_with_prob(0.01)``, sigmoid
        focal loss). The update heads initialise themselves (:meth:`KernelUpdateHead.reset_parameters`,
        ``xavier_init=True``)."""
        for conv in list(self.loc_convs) + list(self.seg_convs):
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.normal_(self.init_kernels.weight, std=1.0)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.constant_(self.conv_seg.bias, -math.log((1 - 0.01) / 0.01))

    @classmethod
    def from_config(cls, cfg):
        k = cfg.MODEL.KNET
        return {
            "in_channels": k.HIDDEN_DIM,
            "num_proposals": k.NUM_PROPOSALS,
            "num_classes": k.NUM_CLASSES,
            "num_thing_classes": k.NUM_THING_CLASSES,
            "num_stages": k.NUM_STAGES,
            "num_loc_convs": k.KERNEL_HEAD.NUM_LOC_CONVS,
            "num_seg_convs": k.KERNEL_HEAD.NUM_SEG_CONVS,
            "norm": k.KERNEL_HEAD.NORM,
            "conv_kernel_size": k.CONV_KERNEL_SIZE,
            "mask_upsample_stride": k.MASK_UPSAMPLE_STRIDE,
            "num_cls_fcs": k.NUM_CLS_FCS,
            "hard_mask_threshold": k.HARD_MASK_THRESHOLD,
            **update_head_args(cfg),
        }

    @property
    def panoptic(self) -> bool:
        """True when the head has stuff kernels (``num_classes > num_thing_classes``)."""
        return self.num_stuff_classes > 0

    def upsample(self, masks: torch.Tensor) -> torch.Tensor:
        """x ``mask_upsample_stride`` bilinear (align_corners=False), e.g. stride 8 -> stride 4."""
        if self.mask_upsample_stride == 1:
            return masks
        s = self.mask_upsample_stride
        return upsample_bilinear(masks, (s * masks.shape[-2], s * masks.shape[-1]))

    def initial_kernels(self, features: Dict[str, torch.Tensor]):
        """
        Returns:
            x: shared feature (B, C, H, W) (stride 8);
            kernels: (B, N, C, K, K) with N = num_proposals (+ stuff classes if panoptic);
            masks: initial mask logits (B, N, H, W);
            thing_masks: the initial thing mask logits (B, num_proposals, H, W);
            seg_logits: semantic logits (B, num_classes, H, W).
        """
        loc = features["loc_feat"]
        for conv in self.loc_convs:
            loc = conv(loc)
        sem = features["sem_feat"]
        for conv in self.seg_convs:
            sem = conv(sem)
        thing_masks = self.init_kernels(loc)
        seg_logits = self.conv_seg(sem)
        x = sem + loc
        B = x.shape[0]

        binary = thing_masks.sigmoid() > 0.5
        assembled = assemble_group_features(binary, x)  # a sum over pixels (reference use_binary=True)
        kernels = self.init_kernels.weight[None] + assembled[..., None, None]  # (B, N, C, K, K)
        masks = thing_masks
        if self.panoptic:
            stuff = self.conv_seg.weight[self.num_thing_classes :]  # (S, C, 1, 1)
            if self.conv_kernel_size != 1:
                raise ValueError(
                    "KNetKernelHead: panoptic stuff kernels need MODEL.KNET.CONV_KERNEL_SIZE = 1"
                )
            kernels = torch.cat([kernels, stuff[None].expand(B, -1, -1, -1, -1)], dim=1)
            masks = torch.cat([thing_masks, seg_logits[:, self.num_thing_classes :]], dim=1)
        return x, kernels, masks, thing_masks, seg_logits

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, object]:
        """
        Args:
            features: pixel-decoder output, "loc_feat" and "sem_feat", each (B, C, H, W) at stride 8.

        Returns:
            dict with
            * "init_masks": initial thing mask logits (B, num_proposals, sH, sW), upsampled x s
              (s = ``mask_upsample_stride``);
            * "seg_logits": semantic logits (B, num_classes, sH, sW), upsampled;
              (both only in training; None at inference)
            * "stages": one dict per stage with "pred_logits" (B, N, num_classes) and "pred_masks"
              (B, N, sH, sW) (at inference "pred_masks" is None except for the last stage).
        """
        x, kernels, masks, thing_masks, seg_logits = self.initial_kernels(features)
        stages = []
        last = len(self.update_heads) - 1
        for s, head in enumerate(self.update_heads):
            cls_logits, masks, kernels = head(x, kernels, masks)
            scaled = self.upsample(masks) if (self.training or s == last) else None
            stages.append({"pred_logits": cls_logits, "pred_masks": scaled})
        return {
            "init_masks": self.upsample(thing_masks) if self.training else None,
            "seg_logits": self.upsample(seg_logits) if self.training else None,
            "stages": stages,
        }
