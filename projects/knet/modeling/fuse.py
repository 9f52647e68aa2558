"""Fold inference-time BatchNorm into the preceding convolution.

At inference a BatchNorm that normalises with its running statistics is an affine map per channel,
``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so ``norm(conv(x))`` equals one convolution with the
weight ``w * s`` and the bias ``(b - mean) * s + beta`` (``s = gamma / sqrt(var + eps)`` per output channel).
Folding saves one pass over every activation of the backbone (and of BN-normed heads).

Which norms fold: detectron2's ``FrozenBatchNorm2d`` and ``FrozenStatsBatchNorm2d`` (always running
statistics: the backbones of the panoptic / instance models) and, with ``eval_batch_norm``, also
``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` / detectron2's ``NaiveSyncBatchNorm`` while in eval mode with
running statistics (the semantic models). GroupNorm and LayerNorm depend on the input and never fold.
Folding changes float rounding (float32: ~1e-5 relative on the first logits, which the kernel update stages
can amplify ~10x); the mmsegmentation parity check (``make parity``) compares with the reference's unfolded
arithmetic, which is why eval-mode BatchNorm is not folded by default (``MODEL.KNET.TEST.FUSE_EVAL_BN``).

The switch is model-level and reversible: :func:`enable_bn_folding` turns every foldable detectron2
``Conv2d`` into a :class:`BNFoldedConv2d`, which behaves exactly like ``Conv2d`` in training mode and, in eval
mode, convolves with the folded weight and bias. The folded tensors are a cache derived from the parameters
(never in the state dict): they are recomputed whenever a source tensor changed (loading a checkpoint after
``model.eval()``, as detectron2's ``DefaultPredictor`` does, is safe). ``MODEL.KNET.TEST.FUSE_BN`` applies
it to the K-Net meta-architecture.
"""

from typing import Optional, Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

from .backbone.resnet_fpn import FrozenStatsBatchNorm2d

__all__ = [
    "fold_batch_norm",
    "BNFoldedConv2d",
    "enable_bn_folding",
    "disable_bn_folding",
    "is_foldable_norm",
    "prepare_folded_parameters",
]


def fold_batch_norm(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: Optional[torch.Tensor],
    beta: Optional[torch.Tensor],
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The convolution equal to ``batch_norm(conv(x, weight, bias))`` with running statistics.

    Args:
        weight: (O, I, kh, kw) convolution weight; bias: (O,) or None.
        running_mean, running_var: (O,) statistics; gamma, beta: (O,) affine parameters or None (identity).
        eps: the norm's epsilon.
    Returns:
        (weight (O, I, kh, kw), bias (O,)) in the dtype of ``weight``; computed in float64 (float32 on devices
        without it) and rounded once.
    """
    dtype = torch.float64 if weight.device.type in ("cpu", "cuda") else torch.float32
    scale = (running_var.to(dtype) + eps).rsqrt()
    if gamma is not None:
        scale = scale * gamma.to(dtype)
    shift = -running_mean.to(dtype) if bias is None else bias.to(dtype) - running_mean.to(dtype)
    new_bias = shift * scale
    if beta is not None:
        new_bias = new_bias + beta.to(dtype)
    new_weight = weight.to(dtype) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def is_foldable_norm(norm: Optional[nn.Module], eval_batch_norm: bool = False) -> bool:
    """True for the frozen norms and, with ``eval_batch_norm``, the BatchNorms that may normalise with
    running statistics (see the module docstring); whether those do is decided at each forward
    (:meth:`BNFoldedConv2d.uses_running_stats`)."""
    if isinstance(norm, (FrozenBatchNorm2d, FrozenStatsBatchNorm2d)):
        return True
    if eval_batch_norm and isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return norm.running_mean is not None and norm.running_var is not None
    return False


def _source_tensors(conv: Conv2d):
    norm = conv.norm
    gamma = getattr(norm, "weight", None)
    beta = getattr(norm, "bias", None)
    return conv.weight, conv.bias, norm.running_mean, norm.running_var, gamma, beta


def _fingerprint(tensors) -> tuple:
    """Identity + in-place version of every tensor: any load, copy_ or optimizer step changes it."""
    return tuple(
        None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors
    )


class BNFoldedConv2d(Conv2d):
    """detectron2 ``Conv2d`` whose norm is folded into it in eval mode (see the module docstring).

    Same parameters, buffers and state-dict names as the ``Conv2d`` it replaces; instances are made by
    :func:`enable_bn_folding`, not constructed directly."""

    _knet_folded: Optional[Tuple[tuple, torch.Tensor, torch.Tensor]] = None
    _knet_channels_last: bool = False  # folded 4-D weights in channels-last memory format

    def uses_running_stats(self) -> bool:
        """True when ``self.norm`` normalises with its running statistics in this mode."""
        norm = self.norm
        if isinstance(norm, (FrozenBatchNorm2d, FrozenStatsBatchNorm2d)):
            return True
        return not self.training and not norm.training and norm.track_running_stats

    def folded_parameters(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the folded convolution, recomputed only when a source tensor changed."""
        sources = _source_tensors(self)
        key = _fingerprint(sources)
        cached = self._knet_folded
        if cached is None or cached[0] != key:
            # plain tensors (not inference tensors) without autograd history, whatever mode we are called in
            with torch.inference_mode(False), torch.no_grad():
                weight, bias = fold_batch_norm(*sources[:4], sources[4], sources[5], self.norm.eps)
                if self._knet_channels_last:
                    weight = weight.contiguous(memory_format=torch.channels_last)
            cached = self._knet_folded = (key, weight, bias)
        return cached[1], cached[2]

    def forward(self, x):
        if self.training or not self.uses_running_stats():
            return super().forward(x)
        weight, bias = self.folded_parameters()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def enable_bn_folding(model: nn.Module, channels_last: bool = False, eval_batch_norm: bool = False) -> int:
    """Make every detectron2 ``Conv2d`` of ``model`` whose ``norm`` is a foldable BatchNorm
    (:func:`is_foldable_norm`) a :class:`BNFoldedConv2d` (in place; training behaviour and state dict
    unchanged). With ``channels_last``
    the folded weights are kept in channels-last memory format, so that the convolutions (and the layers
    after them, which follow their input's format) run channels-last at inference. Returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is Conv2d and is_foldable_norm(module.norm, eval_batch_norm):
            module.__class__ = BNFoldedConv2d
        if isinstance(module, BNFoldedConv2d):
            if module._knet_channels_last != channels_last:
                module._knet_channels_last = channels_last
                module.__dict__.pop("_knet_folded", None)
            count += 1
    return count


def disable_bn_folding(model: nn.Module) -> int:
    """Undo :func:`enable_bn_folding` (drops the folded caches). Returns how many convs were restored."""
    count = 0
    for module in model.modules():
        if type(module) is BNFoldedConv2d:
            module.__dict__.pop("_knet_folded", None)
            module.__class__ = Conv2d
            count += 1
    return count


def prepare_folded_parameters(model: nn.Module) -> int:
    """Compute the folded weights of every :class:`BNFoldedConv2d` of ``model`` now, instead of at its first
    eval-mode forward (e.g. before timing or measuring memory). They are kept next to the parameters: about
    the size of the folded convs' weights (94 MB for a ResNet-50). Returns their size in bytes."""
    total = 0
    for module in model.modules():
        if isinstance(module, BNFoldedConv2d):
            weight, bias = module.folded_parameters()
            total += weight.numel() * weight.element_size() + bias.numel() * bias.element_size()
    return total
