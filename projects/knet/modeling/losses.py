"""K-Net's loss functions as pure functions, with the reductions of the official code.

Reference: ``ZwwWayne/K-Net:knet/det/kernel_update_head.py`` / ``kernel_head.py`` (``loss``) with mmdet 2.x
``FocalLoss(use_sigmoid=True)``, ``CrossEntropyLoss(use_sigmoid=True)`` (mask BCE), ``CrossEntropyLoss``
(rank loss, ``avg_non_ignore=False``) and the first-commit ``knet/det/dice_loss.py`` (squared-denominator
dice). Paper Sec. 3.3, Eq. (7)-(8). The loss weights are applied by the criterion.
"""

from typing import Optional

import torch
from torch.nn import functional as F

__all__ = [
    "sigmoid_focal_loss",
    "mask_bce_loss",
    "dice_loss",
    "rank_loss",
    "rank_targets",
    "RANK_IGNORE",
]

RANK_IGNORE = -1  # rank-loss target of pixels no positive target covers (the reference uses 255)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    avg_factor: Optional[float] = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017) with per-element weights, summed, divided by ``avg_factor``.

    Args:
        logits: (P, C) class logits (no background logit).
        labels: (P,) int64 in [0, C]; C means background (all-zero one-hot target).
        weights: None, (P,) per-row or (P, C) per-element weights (the panoptic label weights).
        avg_factor: divisor of the weighted sum; None means the number of elements P * C (a plain mean).
        alpha, gamma: focal parameters.

    Returns:
        scalar: ``sum(w * FL) / avg_factor`` with, for target t and p = sigmoid(logit),
        FL = -alpha t (1-p)^gamma log p - (1-alpha) (1-t) p^gamma log(1-p).
    """
    num_classes = logits.shape[1]
    logits = logits.float()
    target = F.one_hot(labels.clamp(0, num_classes), num_classes + 1)[:, :num_classes].to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = (1 - p) * target + p * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    loss = ce * alpha_t * pt.pow(gamma)
    if weights is not None:
        weights = weights.to(loss.dtype)
        loss = loss * (weights[:, None] if weights.dim() == 1 else weights)
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / avg_factor


def mask_bce_loss(mask_logits: torch.Tensor, mask_targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits against soft targets, mean over all P x H x W elements.

    Args:
        mask_logits: (P, H, W) logits of the positive kernels.
        mask_targets: (P, H, W) targets in [0, 1].
    """
    return F.binary_cross_entropy_with_logits(mask_logits.float(), mask_targets.float(), reduction="mean")


def dice_loss(mask_logits: torch.Tensor, mask_targets: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """V-Net "squared" dice loss, mean over masks.

    Args:
        mask_logits: (P, H, W) logits; p = sigmoid(logits).
        mask_targets: (P, H, W) targets in [0, 1].
        eps: added to each squared sum of the denominator.

    Returns:
        scalar: mean_i [1 - 2 sum(p t) / (sum(p^2) + eps + sum(t^2) + eps)]; 0 for P = 0.
    """
    p = mask_logits.float().sigmoid().flatten(1)
    t = mask_targets.float().flatten(1)
    num = 2 * (p * t).sum(1)
    den = (p * p).sum(1) + eps + (t * t).sum(1) + eps
    loss = 1 - num / den
    return loss.mean() if loss.numel() else loss.sum()


def rank_targets(mask_targets: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per-pixel index of the covering positive kernel, for the rank loss.

    A pixel gets the largest index j of a positive kernel whose target is non-zero there (the reference
    visits the positives in increasing order, so later ones overwrite earlier ones); :data:`RANK_IGNORE`
    where no positive covers it.

    Args:
        mask_targets: (B, N, H, W) targets of all kernels (ignored where not positive).
        positive: (B, N) bool.

    Returns:
        (B, H, W) int64.
    """
    B, N = positive.shape
    covered = (mask_targets > 0) & positive[:, :, None, None]
    # 1 + the kernel index where covered, 0 elsewhere, in the narrowest integer type that holds N (the
    # maximum over kernels reads 4-8x less memory than in int64); minus 1 gives RANK_IGNORE where none covers
    dtype = torch.uint8 if N < 256 else torch.int16 if N < 2 ** 15 else torch.int64
    rank = torch.arange(1, N + 1, device=mask_targets.device, dtype=dtype).view(1, N, 1, 1)
    return (covered * rank).amax(dim=1).to(torch.int64) - 1  # RANK_IGNORE is -1


def rank_loss(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the kernel dimension, averaged over *all* pixels, ignored ones included
    (mmdet 2.x ``CrossEntropyLoss`` with ``ignore_index`` and ``avg_non_ignore=False``).

    Args:
        mask_logits: (B, N, H, W) mask logits (the N kernels are the classes of each pixel).
        targets: (B, H, W) int64 kernel index, or :data:`RANK_IGNORE`.

    Returns:
        scalar: sum over non-ignored pixels of -log softmax_N(logits)[target] / (B H W).
    """
    loss = F.cross_entropy(mask_logits.float(), targets, ignore_index=RANK_IGNORE, reduction="sum")
    return loss / max(targets.numel(), 1)
