"""Kernel head of semantic K-Net: the class kernels of the generating head refined by 3 update stages.

Zhang et al., "K-Net", NeurIPS 2021, Sec. 3.4 (semantic segmentation); reference mmsegmentation
``mmseg/models/decode_heads/knet_head.py::IterativeDecodeHead`` and ``KernelUpdateHead``.
The initial kernels are the generating head's ``conv_seg.weight`` (one per class, the same for
every image) and the initial logits its ``conv_seg`` output; each stage assembles the group features under the
*softmax over classes* of the previous logits, updates the kernels (the 256-wide updator runs on the channel
halves of a 512-wide head) and predicts new logits. There is no classifier and no matching: kernel n is class
n.
"""
from typing import List, Union

import torch
from detectron2.config import configurable
from torch import nn

from ..registry import KNET_SEMANTIC_KERNEL_HEAD_REGISTRY
from .kernel_update_head import build_update_stages, update_head_args

__all__ = ["KNetSemanticKernelHead"]


@KNET_SEMANTIC_KERNEL_HEAD_REGISTRY.register()
class KNetSemanticKernelHead(nn.Module):
    """Three semantic kernel update stages (state-dict ``kernel_head.update_heads.{s}.*``)."""

    @configurable
    def __init__(
        self, *, in_channels: int = 512, num_stages: int = 3, updator_channels: int = 256, **update_args
    ):
        """
        Args:
            in_channels: width C of the generating head's feature (512, or 256 for the official-code UPerNet).
            num_stages: update stages (3 in every released config).
            updator_channels: width of the :class:`KernelUpdator` (256 even in 512-wide heads, as in mmseg).
            update_args: the other :class:`KernelUpdateHead` arguments (``num_heads``,
                ``feedforward_channels``, ``num_mask_fcs``, ``dropout``, ``conv_kernel_size``).
        """
        super().__init__()
        self.in_channels = in_channels
        self.num_stages = num_stages
        self.update_heads = build_update_stages(
            num_stages,
            in_channels=in_channels,
            num_classes=0,
            mask_mode="soft",
            updator_channels=updator_channels,
            xavier_init=False,  # mmseg never calls KernelUpdateHead.init_weights (ModuleList)
            **update_args,
        )

    @classmethod
    def from_config(cls, cfg):
        k = cfg.MODEL.KNET
        if k.HIDDEN_DIM != k.PIXEL_DECODER.CONV_DIM:
            raise ValueError(
                f"KNetSemanticKernelHead: MODEL.KNET.HIDDEN_DIM ({k.HIDDEN_DIM}) must equal "
                f"MODEL.KNET.PIXEL_DECODER.CONV_DIM ({k.PIXEL_DECODER.CONV_DIM}), the width of the "
                "generating head's feature that the kernels convolve"
            )
        return dict(
            in_channels=k.HIDDEN_DIM,
            num_stages=k.NUM_STAGES,
            **update_head_args(cfg),
        )

    def forward(
        self, feat: torch.Tensor, init_kernels: torch.Tensor, init_logits: torch.Tensor
    ) -> Union[List[torch.Tensor], torch.Tensor]:
        """
        Args:
            feat: (B, C, h, w) feature of the generating head.
            init_kernels: (N, C, K, K) class kernels (``conv_seg.weight``), shared by the batch.
            init_logits: (B, N, h, w) logits of the generating head.
        Returns:
            training: the list of the ``1 + num_stages`` logit maps [init, stage 1, ..., stage S], each
            (B, N, h, w); inference: the last one only.
        """
        B = feat.shape[0]
        kernels = init_kernels.unsqueeze(0).expand(B, *init_kernels.shape)
        logits = init_logits
        stage_logits = [logits]
        for head in self.update_heads:
            _, logits, kernels = head(feat, kernels, logits)
            stage_logits.append(logits)
        if self.training:
            return stage_logits
        return stage_logits[-1]
