"""One K-Net kernel update stage.

Zhang et al., "K-Net", NeurIPS 2021, §3.2 (group feature assembling, adaptive kernel update, kernel
interaction). Reference code: ``ZwwWayne/K-Net:knet/det/kernel_update_head.py`` (det variant, hard masks
and a classifier) and ``knet/seg/kernel_update_head.py`` = mmsegmentation ``KernelUpdateHead`` (semantic
variant: soft masks, no classifier). Initialisation: :meth:`KernelUpdateHead.reset_parameters`.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import upsample_bilinear
from .kernel_updator import KernelUpdator

__all__ = [
    "KernelUpdateHead",
    "KernelFFN",
    "assemble_group_features",
    "build_update_stages",
    "update_head_args",
]


def build_update_stages(num_stages: int, **update_args) -> nn.ModuleList:
    """``num_stages`` :class:`KernelUpdateHead` stages, each with its own weights (3 in every released
    config), built with ``update_args``."""
    if num_stages < 1:
        raise ValueError(f"MODEL.KNET.NUM_STAGES must be >= 1, got {num_stages}")
    return nn.ModuleList([KernelUpdateHead(**update_args) for _ in range(num_stages)])


def update_head_args(cfg) -> dict:
    """The :class:`KernelUpdateHead` arguments both kernel heads read from ``MODEL.KNET`` (``NUM_HEADS``,
    ``FFN_DIM``, ``NUM_MASK_FCS``, ``DROPOUT``, ``UPDATOR_DIM``)."""
    k = cfg.MODEL.KNET
    return {
        "num_heads": k.NUM_HEADS,
        "feedforward_channels": k.FFN_DIM,
        "num_mask_fcs": k.NUM_MASK_FCS,
        "dropout": k.DROPOUT,
        "updator_channels": k.UPDATOR_DIM,
    }


def assemble_group_features(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Group feature assembling: ``F^K[b, n] = sum_hw weights[b, n, h, w] * x[b, :, h, w]`` (a sum, no mean).

    Computed in float32 with autocast off: the sum runs over every pixel of the stride-8 map and can exceed
    the float16 range. weights (B, N, H, W), x (B, C, H, W) -> (B, N, C) float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(x.dtype, torch.float32)  # at least float32; a float64 model stays float64
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.einsum("bnhw,bchw->bnc", weights.to(dtype), x.to(dtype))


class KernelFFN(nn.Module):
    """``x + linear2(ReLU(linear1(x)))`` (mmcv ``FFN`` with ``num_fcs=2`` and ``add_identity=True``)."""

    def __init__(self, channels, hidden_channels, dropout=0.0):
        super().__init__()
        self.linear1 = nn.Linear(channels, hidden_channels)
        self.linear2 = nn.Linear(hidden_channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))


def _fc_stack(num_fcs, channels):
    """``num_fcs`` times Linear(C, C, no bias) - LayerNorm - ReLU, as a flat ModuleList (leaf names
    ``{3i}.weight``, ``{3i+1}.{weight,bias}``)."""
    layers = nn.ModuleList()
    for _ in range(num_fcs):
        layers.append(nn.Linear(channels, channels, bias=False))
        layers.append(nn.LayerNorm(channels))
        layers.append(nn.ReLU(inplace=True))
    return layers


class KernelUpdateHead(nn.Module):
    """One kernel update stage: feature transform, group feature assembling under the previous masks,
    :class:`KernelUpdator`, self-attention over the kernels, FFN, then class logits and new masks.

    Variants (both from the reference):

    * det (``mask_mode="hard"``, ``num_classes > 0``): the previous masks are binarised at
      ``hard_mask_threshold`` on their sigmoid; a classifier ``cls_fcs`` + ``fc_cls`` (sigmoid, no
      background logit) is built.
    * semantic (``mask_mode="soft"``, ``num_classes=0``): the gather masks are the softmax over the kernel
      dimension, there is no classifier, and ``updator_channels`` may be smaller than ``in_channels`` (the
      512-wide heads use a 256-wide updator that treats each channel half separately, as mmseg's
      ``KernelUpdator`` does).

    The group feature is an un-normalised *sum* over pixels in both variants (``einsum('bnhw,bchw->bnc')`` in
    the official ``KernelUpdateHead.forward``). The kernel
    handed to the next stage is the one after attention/FFN, not the ``fc_mask`` output.
    """

    def __init__(
        self,
        *,
        in_channels=256,
        num_classes=80,
        num_heads=8,
        feedforward_channels=2048,
        num_cls_fcs=1,
        num_mask_fcs=1,
        dropout=0.0,
        conv_kernel_size=1,
        mask_mode="hard",
        hard_mask_threshold=0.5,
        updator_channels=None,
        with_ffn=True,
        xavier_init=True,
    ):
        """
        Args:
            in_channels (int): kernel / feature width C of the head (256 det; 512 or 256 semantic).
            num_classes (int): classifier outputs (80 / 133 det); 0 builds no classifier (semantic).
            num_heads (int): heads of the kernel self-attention.
            feedforward_channels (int): FFN hidden width.
            num_cls_fcs, num_mask_fcs (int): Linear-LN-ReLU blocks before ``fc_cls`` / ``fc_mask``.
            dropout (float): dropout of the attention and the FFN (0 in every released config).
            conv_kernel_size (int): K of the dynamic K x K kernels (1 in every released config).
            mask_mode (str): "hard" (det) or "soft" (semantic) gather masks.
            hard_mask_threshold (float): sigmoid threshold of the hard gather masks.
            updator_channels (int or None): width of the :class:`KernelUpdator` (None = ``in_channels``);
                ``in_channels`` must be a multiple of it.
            with_ffn (bool): build the FFN (True in every released config).
            xavier_init (bool): initialise as the official det head's ``init_weights`` (True, det) or keep
                the construction-time initialisation that mmsegmentation's semantic head ends up with
                (False, semantic); see :meth:`reset_parameters`.
        """
        super().__init__()
        if mask_mode not in ("hard", "soft"):
            raise ValueError(f"KernelUpdateHead: mask_mode must be 'hard' or 'soft', got {mask_mode!r}")
        updator_channels = updator_channels or in_channels
        if in_channels % updator_channels != 0:
            raise ValueError(
                f"KernelUpdateHead: in_channels ({in_channels}) must be a multiple of updator_channels "
                f"({updator_channels}) (MODEL.KNET.HIDDEN_DIM / MODEL.KNET.UPDATOR_DIM)"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv_kernel_size = conv_kernel_size
        self.mask_mode = mask_mode
        self.hard_mask_threshold = hard_mask_threshold
        self.xavier_init = xavier_init
        kernel_dim = in_channels * conv_kernel_size**2

        # registration order follows the reference (official ``KernelUpdateHead.__init__``)
        self.attention = nn.MultiheadAttention(kernel_dim, num_heads, dropout=dropout)
        self.attention_norm = nn.LayerNorm(kernel_dim)
        self.kernel_update_conv = KernelUpdator(updator_channels, updator_channels, updator_channels)
        self.feat_transform = nn.Conv2d(in_channels, in_channels, 1)
        self.with_ffn = with_ffn
        if with_ffn:
            self.ffn = KernelFFN(in_channels, feedforward_channels, dropout)
            self.ffn_norm = nn.LayerNorm(in_channels)
        if num_classes > 0:
            self.cls_fcs = _fc_stack(num_cls_fcs, in_channels)
            self.fc_cls = nn.Linear(in_channels, num_classes)
        else:
            self.cls_fcs = None
            self.fc_cls = None
        self.mask_fcs = _fc_stack(num_mask_fcs, in_channels)
        self.fc_mask = nn.Linear(in_channels, in_channels)
        self.reset_parameters()

    def reset_parameters(self):
        """The initialisation the reference models train from (docs/architecture.md, "Initialisation audit").

        Common to both variants: ``feat_transform`` is an mmcv ``ConvModule`` in the reference, whose
        construction runs ``ConvModule.init_weights`` (mmcv 1.x/2.x ``mmcv/cnn/bricks/conv_module.py``):
        Kaiming-normal weight (``fan_out``, ReLU gain) and a **zero bias**. The attention, LayerNorms and
        Linears start with PyTorch's defaults (``nn.MultiheadAttention``: xavier-uniform ``in_proj_weight``,
        zero ``in_proj_bias`` / ``out_proj.bias``).

        * ``xavier_init=True`` (det): the official ``KernelIterHead.init_weights`` calls
          ``KernelUpdateHead.init_weights`` (ZwwWayne/K-Net ``knet/det/kernel_update_head.py``):
          xavier-uniform for every parameter with >= 2 dims (``feat_transform.weight`` included); 1-dim
          parameters keep their values (LN 1/0, Linear biases PyTorch-uniform, ``feat_transform.bias`` 0);
          ``fc_cls.bias`` = -log((1 - 0.01) / 0.01), mmcv ``bias_init_with_prob(0.01)`` (sigmoid focal loss).
        * ``xavier_init=False`` (semantic): in mmsegmentation (``mmseg/models/decode_heads/knet_head.py``,
          and ``knet/seg/iter_decode_head.py`` of the official code) the update heads sit in an
          ``nn.ModuleList`` of ``IterativeDecodeHead``; ``BaseModule.init_weights`` only calls
          ``init_weights`` on children that have one, which a ``ModuleList`` has not, so
          ``KernelUpdateHead.init_weights`` never runs and the construction-time values stay.
        """
        nn.init.kaiming_normal_(self.feat_transform.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.feat_transform.bias)
        if not self.xavier_init:
            return
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.fc_cls is not None:
            nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))

    @property
    def has_classifier(self):
        return self.fc_cls is not None

    def gather_masks(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) logits -> (B, N, H, W) gather weights: hard 0/1 (no gradient) or softmax over N."""
        if self.mask_mode == "hard":
            return (mask_logits.sigmoid() > self.hard_mask_threshold).to(mask_logits.dtype)
        return mask_logits.softmax(dim=1)

    def forward(self, x: torch.Tensor, kernels: torch.Tensor, prev_masks: torch.Tensor):
        """
        Args:
            x: shared feature map (B, C, H, W).
            kernels: previous kernels (B, N, C, K, K).
            prev_masks: previous mask logits (B, N, h, w); resized to (H, W) bilinearly if they differ.

        Returns:
            cls_logits (B, N, num_classes) or None (no classifier), new mask logits (B, N, H, W) and the new
            kernels (B, N, C, K, K).
        """
        B, N = kernels.shape[:2]
        x = self.feat_transform(x)
        C, H, W = x.shape[-3:]
        if prev_masks.shape[-2:] != (H, W):
            prev_masks = upsample_bilinear(prev_masks, (H, W))
        assembled = assemble_group_features(self.gather_masks(prev_masks), x)

        k = kernels.reshape(B, N, C, -1).permute(0, 1, 3, 2)  # (B, N, K*K, C)
        k = self.kernel_update_conv(assembled, k)  # (B, N, K*K, C)

        k = k.reshape(B, N, -1).transpose(0, 1)  # (N, B, K*K*C): attention across the kernels of an image
        attn = self.attention(k, k, k, need_weights=False)[0]
        k = self.attention_norm(k + attn)  # mmcv MultiheadAttention adds the residual
        k = k.transpose(0, 1).reshape(B, N, -1, C)  # (B, N, K*K, C)
        if self.with_ffn:
            k = self.ffn_norm(self.ffn(k))

        cls_logits = None
        if self.fc_cls is not None:
            cls_feat = k.sum(-2)
            for layer in self.cls_fcs:
                cls_feat = layer(cls_feat)
            cls_logits = self.fc_cls(cls_feat)

        mask_feat = k
        for layer in self.mask_fcs:
            mask_feat = layer(mask_feat)
        mask_weights = self.fc_mask(mask_feat).permute(0, 1, 3, 2)  # (B, N, C, K*K)
        masks = self.dynamic_conv(x, mask_weights)

        new_kernels = k.permute(0, 1, 3, 2).reshape(B, N, C, self.conv_kernel_size, self.conv_kernel_size)
        return cls_logits, masks, new_kernels

    def dynamic_conv(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per-image K x K convolution without bias.

        x (B, C, H, W), weights (B, N, C, K*K) -> (B, N, H, W)."""
        K = self.conv_kernel_size
        if K == 1:
            return torch.einsum("bnc,bchw->bnhw", weights[..., 0], x)
        B, N, C = weights.shape[:3]
        w = weights.reshape(B, N, C, K, K)
        return torch.cat([F.conv2d(x[i : i + 1], w[i], padding=K // 2) for i in range(B)], dim=0)
