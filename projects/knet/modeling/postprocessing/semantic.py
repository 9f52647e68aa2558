"""Per-class scores of a panoptic/instance K-Net. Not part of the reference, which has no semantic output
for these models; the semantic K-Net models (ADE20K) have their own inference in the semantic
meta-architecture."""

import torch

from .resize import Size, crop_to_image, upsample_probs

__all__ = ["semantic_inference"]


def semantic_inference(cls_logits: torch.Tensor, mask_logits: torch.Tensor, image_size: Size,
                       output_size: Size, *, num_proposals: int, num_thing_classes: int,
                       stride: int) -> torch.Tensor:
    """``sem[c] = sum_k w[k, c] * prob_k`` with ``w`` the class probabilities of the thing kernels on the
    thing classes and, for the stuff kernel of class c, its own probability for c. Computed at stride
    ``stride`` and resized bilinearly.

    Args:
        cls_logits: (N, C) logits of all kernels (``num_proposals`` thing kernels, then one per stuff class).
        mask_logits: (N, h, w) mask logits at stride ``stride`` of the padded input.
        image_size, output_size: (h, w) of the resized input and (H, W) of the output.
    Returns:
        (C, H, W) float scores (argmax over dim 0 gives the semantic map).
    """
    P, T = num_proposals, num_thing_classes
    cls_probs = cls_logits.float().sigmoid()
    weights = torch.zeros_like(cls_probs)
    weights[:P, :T] = cls_probs[:P, :T]
    S = cls_probs.shape[0] - P
    if S > 0:
        j = torch.arange(S, device=cls_probs.device)
        weights[P + j, T + j] = cls_probs[P + j, T + j]
    probs = crop_to_image(mask_logits, image_size, stride).float().sigmoid()
    sem = torch.einsum("nc,nhw->chw", weights, probs)
    return upsample_probs(sem, image_size, output_size, stride)
