"""Losses of semantic K-Net, as pure functions.

Zhang et al., "K-Net", NeurIPS 2021, Sec. 3.4 / 4 (ADE20K). Reference: mmsegmentation
``mmseg/models/decode_heads/knet_head.py::IterativeDecodeHead.losses`` and
``decode_head.py::BaseDecodeHead.losses``: every one of the ``1 + S`` logit maps is resized (bilinear,
``align_corners=False``) to the label size and scored by softmax cross-entropy with ignore label 255,
**averaged over all pixels including the ignored ones** (mmseg 0.x ``CrossEntropyLoss`` reduction); keys
``loss_ce_s0..s{S}``. The auxiliary FCN head's logits get the same loss times its weight (``loss_aux``). No
matching: kernel n is class n.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from .layers import resize

__all__ = ["cross_entropy_all_pixels", "semantic_losses"]


def cross_entropy_all_pixels(logits: torch.Tensor, target: torch.Tensor, ignore_value: int) -> torch.Tensor:
    """mmseg 0.x ``CrossEntropyLoss`` on a resized logit map.

    Args:
        logits: (B, C, h, w), resized bilinearly (``align_corners=False``) to the target size.
        target: (B, H, W) int64 class ids, ``ignore_value`` = no loss.
    Returns:
        scalar: the per-pixel CE summed and divided by **all** B*H*W pixels (ignored ones count in the
        denominator), computed in float32 (float64 for float64 logits).
    """
    if logits.dtype != torch.float64:
        logits = logits.float()
    logits = resize(logits, target.shape[-2:])
    loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_value, reduction="none")
    return loss.mean()


def semantic_losses(
    stage_logits: Sequence[torch.Tensor],
    aux_logits: Optional[torch.Tensor],
    targets: torch.Tensor,
    *,
    ignore_value: int,
    ce_weight: float,
    aux_weight: float,
) -> Dict[str, torch.Tensor]:
    """Losses of semantic K-Net.

    Args:
        stage_logits: the ``1 + S`` logit maps (B, C, h, w) (generating head, then each update stage).
        aux_logits: (B, C, h', w') of the auxiliary head, or None.
        targets: (B, H, W) int64 labels (padding = ``ignore_value``).
        ignore_value, ce_weight, aux_weight: see :class:`knet.modeling.options.SemanticOptions`.
    Returns:
        ``{"loss_ce_s0": ..., "loss_ce_s{S}": ..., "loss_aux": ...}`` (``loss_aux`` only with aux logits and a
        positive weight).
    """
    losses = {}
    for i, logits in enumerate(stage_logits):
        losses[f"loss_ce_s{i}"] = ce_weight * cross_entropy_all_pixels(logits, targets, ignore_value)
    if aux_logits is not None and aux_weight > 0:
        losses["loss_aux"] = aux_weight * cross_entropy_all_pixels(aux_logits, targets, ignore_value)
    return losses
