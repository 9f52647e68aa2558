"""Targets and losses of K-Net for instance and panoptic segmentation.

Reference: ``ZwwWayne/K-Net:knet/det/knet.py`` (target preparation), ``knet/det/kernel_head.py`` (the
kernel-head or "rpn" losses), ``knet/det/kernel_iter_head.py`` (which predictions each stage is matched
with) and ``knet/det/kernel_update_head.py`` (per-stage targets and losses). Paper Sec. 3.3 (training with
bipartite matching).

Loss keys: ``loss_rpn_mask``, ``loss_rpn_dice``, ``loss_rpn_seg`` (+ ``loss_rpn_rank`` for panoptic) and for
every stage s ``s{s}_loss_cls``, ``s{s}_loss_mask``, ``s{s}_loss_dice`` (+ ``s{s}_loss_rank``). All are
already multiplied by their weights; the total loss is their sum.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from .layers import resize
from .losses import dice_loss, mask_bce_loss, rank_loss, rank_targets, sigmoid_focal_loss
from .matcher import KNetHungarianMatcher

__all__ = ["prepare_targets", "KNetCriterion"]


def _as_mask_tensor(gt_masks) -> torch.Tensor:
    """Bool tensor (N, H, W) from a tensor or a detectron2 ``BitMasks``."""
    if hasattr(gt_masks, "tensor"):
        gt_masks = gt_masks.tensor
    if not torch.is_tensor(gt_masks):
        raise TypeError(
            f"K-Net expects instances.gt_masks as a bool tensor or BitMasks (see docs/architecture.md), "
            f"got {type(gt_masks).__name__}; convert polygons to bitmasks in the dataset mapper"
        )
    return gt_masks


def prepare_targets(
    gt_instances: Sequence,
    pad_size: Tuple[int, int],
    out_size: Tuple[int, int],
    num_thing_classes: int,
    panoptic: bool,
) -> List[Dict[str, torch.Tensor]]:
    """Soft mask targets at the prediction resolution (official ``KernelUpdateHead.get_targets``).

    Each image's masks are zero-padded to the batch size ``pad_size`` = (H, W), then bilinearly resized
    (align_corners=False) to ``out_size`` (H/4, W/4), giving soft targets in [0, 1]. Things are the segments
    with ``gt_classes < num_thing_classes``; for panoptic models the others are stuff, merged per class
    (the reference builds one binary map per stuff class from the semantic map).

    Args:
        gt_instances: per image an ``Instances`` with ``gt_classes`` (M,) int64 and ``gt_masks`` (M, h, w)
            bool tensor (or BitMasks) at the image's (unpadded) size.

    Returns:
        per image a dict: "labels" (M_t,) int64 and "masks" (M_t, *out_size) float for the things;
        "stuff_labels" (S,) int64 sorted and "stuff_masks" (S, *out_size) float (S = 0 if not panoptic).
    """
    pad_h, pad_w = pad_size
    per_image, planes = [], []  # (thing labels, stuff labels) per image; the masks of all images, in order
    for inst in gt_instances:
        classes = inst.gt_classes.to(torch.int64)
        masks = _as_mask_tensor(inst.gt_masks).to(classes.device)
        if masks.dtype != torch.bool:
            masks = masks.to(torch.float32)
        h, w = masks.shape[-2:]
        if h > pad_h or w > pad_w:
            raise ValueError(f"gt_masks of size {(h, w)} are larger than the padded batch {pad_size}")
        is_thing = classes < num_thing_classes
        thing_masks, thing_labels = masks[is_thing], classes[is_thing]
        if panoptic:
            stuff_labels = torch.unique(classes[~is_thing])  # sorted
            stuff_masks = (
                torch.stack([masks[classes == c].amax(dim=0) for c in stuff_labels])
                if len(stuff_labels)
                else masks.new_zeros((0, h, w))
            )
        else:
            stuff_labels = classes.new_zeros((0,))
            stuff_masks = masks.new_zeros((0, h, w))
        per_image.append((thing_labels, stuff_labels))
        planes += [_pad_to(thing_masks, pad_size), _pad_to(stuff_masks, pad_size)]
    # one resize for all masks of the batch: each plane is resized on its own, as per image
    resized = _resize_targets(torch.cat(planes), tuple(out_size)) if planes else None
    targets, start = [], 0
    for thing_labels, stuff_labels in per_image:
        m, s = len(thing_labels), len(stuff_labels)
        targets.append(
            {
                "labels": thing_labels,
                "masks": resized[start:start + m],
                "stuff_labels": stuff_labels,
                "stuff_masks": resized[start + m:start + m + s],
            }
        )
        start += m + s
    return targets


def _pad_to(masks: torch.Tensor, size) -> torch.Tensor:
    """(M, h, w) masks zero-padded at the bottom and right to (M, *size); no copy when they have that size."""
    h, w = masks.shape[-2:]
    return masks if (h, w) == tuple(size) else F.pad(masks, (0, size[1] - w, 0, size[0] - h))


def _resize_targets(masks: torch.Tensor, size) -> torch.Tensor:
    """(M, H, W) bool or float masks -> (M, *size) float32, bilinearly resized (align_corners=False).

    Binary masks shrunk by an integer factor f take a shortcut with the same result, bit for bit: bilinear
    sampling then reads output pixel d at source coordinate f d + (f - 1) / 2, which for an even f lies
    half-way between pixels f d + f/2 - 1 and f d + f/2 (weights 1/2 each) and for an odd f on pixel
    f d + (f - 1)/2, in each dimension. An output value is then the mean of 4 (or 1, or 2) binary pixels, a
    multiple of 1/4 that float32 holds exactly whatever the order of the sums. The shortcut reads those pixels
    only, where ``F.interpolate`` first needs the whole float32 copy of the masks (the quickstart: 192x192 to
    48x48; PyTorch's CPU kernel, ``upsample_bilinear2d`` with ``align_corners=False``, weighs as described).
    """
    H, W = masks.shape[-2:]
    h, w = size
    if masks.dtype != torch.bool or masks.shape[0] == 0 or H % h or W % w:
        return resize(masks.to(torch.float32), size)
    row_taps, col_taps = _taps(H // h, h), _taps(W // w, w)
    total = sum(masks[:, rows, cols].to(torch.uint8) for rows in row_taps for cols in col_taps)
    return total.to(torch.float32) * (1.0 / (len(row_taps) * len(col_taps)))


def _taps(factor: int, n: int):
    """The source slices (one, or two for an even factor) that bilinear sampling averages when it shrinks a
    dimension by ``factor`` to ``n`` pixels (see :func:`_resize_targets`)."""
    if factor == 1:
        return [slice(0, n)]
    centre = (factor - 1) // 2
    if factor % 2:
        return [slice(centre, centre + factor * n, factor)]
    return [slice(centre, centre + factor * n, factor), slice(centre + 1, centre + 1 + factor * n, factor)]


def _reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over processes (mmdet ``reduce_mean``), using detectron2's comm for the world size."""
    world = comm.get_world_size()
    if world == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world


Assignment = Tuple[torch.Tensor, torch.Tensor]  # (kernel indices, gt indices) of one image


def _matched(targets, assignments):
    """The matched pairs of all images: batch index (K,), kernel index (K,), label (K,) and mask target
    (K, H, W) of each pair, images in order (K = the number of pairs in the batch)."""
    batch = torch.cat([torch.full_like(rows, b) for b, (rows, _) in enumerate(assignments)])
    rows = torch.cat([rows for rows, _ in assignments])
    labels = torch.cat([t["labels"][cols] for t, (_, cols) in zip(targets, assignments)])
    masks = torch.cat([t["masks"][cols] for t, (_, cols) in zip(targets, assignments)])
    return batch, rows, labels, masks


class KNetCriterion(nn.Module):
    """Matches kernels to ground truth and computes the kernel-head and per-stage losses.

    Matching (official ``KernelIterHead``, ``post_assign=False``): the kernel-head losses and stage 0 use the
    initial
    thing masks (detached, x2) without class cost; stage s > 0 uses stage s-1's detached masks and class
    logits. Only the ``num_proposals`` thing kernels and the thing class columns take part; the stuff
    kernels of a panoptic model have fixed targets. Stage 0 reuses the kernel-head assignment, which the
    reference computes twice from identical inputs.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: KNetHungarianMatcher,
        num_classes: int,
        num_thing_classes: int,
        num_proposals: int,
        cls_weight: float = 2.0,
        mask_weight: float = 1.0,
        dice_weight: float = 4.0,
        rank_weight: float = 0.1,
        seg_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        """
        Args:
            matcher: the Hungarian matcher.
            num_classes, num_thing_classes, num_proposals: as in the kernel head; the model is panoptic
                when ``num_classes > num_thing_classes``.
            cls_weight, mask_weight, dice_weight: focal / BCE / dice weights of every stage (2, 1, 4); the
                kernel-head mask and dice losses use the same mask and dice weights.
            rank_weight: rank-loss weight, used by panoptic models only (0.1; 0 disables).
            seg_weight: weight of the kernel head's semantic focal loss (1).
        """
        super().__init__()
        self.matcher = matcher
        self.num_classes = num_classes
        self.num_thing_classes = num_thing_classes
        self.num_proposals = num_proposals
        self.panoptic = num_classes > num_thing_classes
        self.cls_weight = cls_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.rank_weight = rank_weight if self.panoptic else 0.0
        self.seg_weight = seg_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg):
        k = cfg.MODEL.KNET
        return {
            "matcher": KNetHungarianMatcher(cfg),
            "num_classes": k.NUM_CLASSES,
            "num_thing_classes": k.NUM_THING_CLASSES,
            "num_proposals": k.NUM_PROPOSALS,
            "cls_weight": k.LOSS.CLS_WEIGHT,
            "mask_weight": k.LOSS.MASK_WEIGHT,
            "dice_weight": k.LOSS.DICE_WEIGHT,
            "rank_weight": k.LOSS.RANK_WEIGHT,
            "seg_weight": k.LOSS.SEG_WEIGHT,
            "focal_alpha": k.LOSS.FOCAL_ALPHA,
            "focal_gamma": k.LOSS.FOCAL_GAMMA,
        }

    # ------------------------------------------------------------------ matching
    def match(
        self,
        mask_logits: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        cls_logits: Optional[torch.Tensor] = None,
    ) -> List[Assignment]:
        """Per-image assignment of the thing kernels. mask_logits (B, >=P, H, W); cls_logits (B, >=P, C)."""
        P, T = self.num_proposals, self.num_thing_classes
        cls = None if cls_logits is None else cls_logits[:, :P, :T].detach()
        return self.matcher.match_batch(
            mask_logits[:, :P].detach(), [t["masks"] for t in targets], cls, [t["labels"] for t in targets]
        )

    # ------------------------------------------------------------------ targets
    def stage_targets(self, targets, assignments, num_kernels: int, mask_size):
        """Labels, per-class label weights, mask targets and the positive flags of all kernels.

        Returns:
            labels (B, N) int64 (``num_classes`` = background), label_weights (B, N, C), mask_targets
            (B, N, H, W), positive (B, N) bool. Panoptic: thing rows get weight 0 on the stuff columns; the
            stuff kernel of class c is positive when c is in the image and its weight row is one-hot on c.
        """
        B, N, C = len(targets), num_kernels, self.num_classes
        P, T = self.num_proposals, self.num_thing_classes
        ref = targets[0]["masks"]
        labels = torch.full((B, N), C, dtype=torch.int64, device=ref.device)
        weights = ref.new_ones((B, N, C))
        mask_targets = ref.new_zeros((B, N, *mask_size))
        positive = torch.zeros((B, N), dtype=torch.bool, device=ref.device)
        batch, rows, gt_labels, gt_masks = _matched(targets, assignments)
        labels[batch, rows] = gt_labels
        mask_targets[batch, rows] = gt_masks
        positive[batch, rows] = True
        if self.panoptic and N > P:
            weights[:, :P, T:] = 0
            weights[:, P:] = 0
            stuff = torch.arange(N - P, device=ref.device)
            weights[:, P + stuff, T + stuff] = 1
            batch = torch.cat([torch.full_like(t["stuff_labels"], b) for b, t in enumerate(targets)])
            stuff_labels = torch.cat([t["stuff_labels"] for t in targets])
            rows = P + (stuff_labels - T)
            labels[batch, rows] = stuff_labels
            mask_targets[batch, rows] = torch.cat([t["stuff_masks"] for t in targets])
            positive[batch, rows] = True
        return labels, weights, mask_targets, positive

    def seg_targets(self, targets, assignments, size) -> torch.Tensor:
        """(B, H, W) int64 semantic targets of the kernel head: background (``num_classes``), then stuff
        pixels (any non-zero soft target) in class order, then matched things in kernel order."""
        out = []
        for t, (rows, cols) in zip(targets, assignments):
            seg = torch.full(tuple(size), self.num_classes, dtype=torch.int64, device=t["masks"].device)
            for label, mask in zip(t["stuff_labels"], t["stuff_masks"]):
                seg[mask > 0] = label
            order = torch.argsort(rows)
            for g in cols[order]:
                seg[t["masks"][g] > 0] = t["labels"][g]
            out.append(seg)
        return torch.stack(out)

    # ------------------------------------------------------------------ losses
    def _mask_losses(self, masks, mask_targets, positive, name) -> Dict[str, torch.Tensor]:
        """BCE and dice over the positive kernels (rank over all kernels); ``name`` formats the keys."""
        losses = {}
        if positive.any():
            pos_logits, pos_targets = masks[positive], mask_targets[positive]
            losses[name.format("mask")] = self.mask_weight * mask_bce_loss(pos_logits, pos_targets)
            losses[name.format("dice")] = self.dice_weight * dice_loss(pos_logits, pos_targets)
            if self.rank_weight:
                losses[name.format("rank")] = self.rank_weight * rank_loss(
                    masks, rank_targets(mask_targets, positive)
                )
        else:
            zero = masks.sum() * 0
            losses[name.format("mask")] = zero
            losses[name.format("dice")] = zero
            if self.rank_weight:
                losses[name.format("rank")] = zero
        return losses

    def kernel_head_losses(self, init_masks, seg_logits, targets, assignments) -> Dict[str, torch.Tensor]:
        """Losses of the initial thing masks (B, P, H, W) and of the semantic logits (B, C, H, W)."""
        B, P, H, W = init_masks.shape
        positive = torch.zeros((B, P), dtype=torch.bool, device=init_masks.device)
        mask_targets = init_masks.new_zeros((B, P, H, W), dtype=torch.float32)
        batch, rows, _, gt_masks = _matched(targets, assignments)
        positive[batch, rows] = True
        mask_targets[batch, rows] = gt_masks
        losses = self._mask_losses(init_masks, mask_targets, positive, "loss_rpn_{}")
        seg_t = self.seg_targets(targets, assignments, (H, W)).flatten()
        C = seg_logits.shape[1]
        flat = seg_logits.permute(0, 2, 3, 1).reshape(-1, C)
        num_dense_pos = (seg_t < C).sum().clamp(min=1).float()
        losses["loss_rpn_seg"] = self.seg_weight * sigmoid_focal_loss(
            flat, seg_t, None, num_dense_pos, self.focal_alpha, self.focal_gamma
        )
        return losses

    def stage_losses(self, stage: Dict[str, torch.Tensor], targets, assignments, prefix):
        """Focal class, BCE, dice (and rank) losses of one stage."""
        cls_logits, masks = stage["pred_logits"], stage["pred_masks"]
        B, N, C = cls_logits.shape
        labels, weights, mask_targets, positive = self.stage_targets(
            targets, assignments, N, masks.shape[-2:]
        )
        avg_factor = _reduce_mean(positive.sum().float()).clamp(min=1.0)  # positives, averaged over processes
        loss_cls = sigmoid_focal_loss(
            cls_logits.reshape(B * N, C),
            labels.flatten(),
            weights.reshape(B * N, C),
            avg_factor,
            self.focal_alpha,
            self.focal_gamma,
        )
        losses = {prefix + "loss_cls": self.cls_weight * loss_cls}
        losses.update(self._mask_losses(masks, mask_targets, positive, prefix + "loss_{}"))
        return losses

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the kernel head's training output ("init_masks" (B, P, H, W), "seg_logits"
                (B, C, H, W), "stages": list of {"pred_logits" (B, N, C), "pred_masks" (B, N, H, W)}).
            targets: :func:`prepare_targets` output at (H, W).

        Returns:
            dict of weighted scalar losses.
        """
        init_masks = outputs["init_masks"]
        assignments = self.match(init_masks, targets)
        losses = self.kernel_head_losses(init_masks, outputs["seg_logits"], targets, assignments)
        prev = None
        for s, stage in enumerate(outputs["stages"]):
            if prev is not None:  # stage 0 reuses the kernel-head assignment (same inputs, no class cost)
                assignments = self.match(prev["pred_masks"], targets, prev["pred_logits"])
            losses.update(self.stage_losses(stage, targets, assignments, f"s{s}_"))
            prev = stage
        return losses
