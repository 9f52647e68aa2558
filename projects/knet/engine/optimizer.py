"""K-Net optimizer: detectron2 parameter groups, a backbone-trunk learning-rate multiplier, AdamW or SGD, and
full-model gradient-norm clipping.

Official recipe (ZwwWayne/K-Net ``configs/det/_base_/schedules/schedule_1x.py``): AdamW, lr 1e-4, weight decay
0.05, ``paramwise_cfg.custom_keys={'backbone': lr_mult 0.25}``, ``grad_clip max_norm=1`` over all parameters
at once. Full-model clipping follows the idea of Mask2Former's ``train_net.py::Trainer.build_optimizer``
(one norm over every parameter instead of detectron2's per-parameter clipping).

Which parameters get ``SOLVER.BACKBONE_MULTIPLIER``: mmcv 1.x's ``DefaultOptimizerConstructor`` applies a
custom key to every parameter whose name contains it. In the official det model the FPN is the top-level
``neck.*``, so ``'backbone'`` reaches only the bottom-up network (ResNet, ResNet-DCN or Swin) and the FPN
trains at the base rate. In detectron2 the FPN is the backbone module itself, with the bottom-up network as
its ``bottom_up`` submodule. The rule here is therefore structural, not a name match: the multiplier applies
to the parameters of the *trunk* of ``model.backbone`` (:func:`backbone_trunk`), which is
``backbone.bottom_up`` when the backbone wraps one (detectron2's ``FPN`` convention, used by
``build_knet_resnet_fpn_backbone`` and ``build_knet_swin_fpn_backbone``) and the whole backbone otherwise
(the semantic models' ResNetV1c / Swin, whose decode head is ``pixel_decoder.*``). mmsegmentation's K-Net
configs (``configs/knet/knet-s3_*``) set no learning-rate multiplier; our ADE20K configs keep
``BACKBONE_MULTIPLIER: 1.0``, so every semantic parameter trains at the base rate, as there.
"""
import logging
from typing import Any, Dict, List, Type

import torch
from detectron2.solver.build import (
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)

__all__ = [
    "backbone_trunk",
    "get_knet_optimizer_params",
    "add_full_model_gradient_clipping",
    "build_knet_optimizer",
]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel``/``DataParallel`` wrapper (``model.module``)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def backbone_trunk(model: torch.nn.Module):
    """The sub-network of ``model.backbone`` that the backbone learning-rate multiplier applies to.

    ``backbone.bottom_up`` when the backbone wraps a bottom-up network (detectron2's ``FPN``: the official
    ``custom_keys={'backbone': ...}`` never reaches the official ``neck.*``, see the module docstring), else
    the whole ``backbone``; ``None`` for a model without a ``backbone`` attribute.
    """
    backbone = getattr(_unwrap(model), "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        return None
    bottom_up = getattr(backbone, "bottom_up", None)
    return bottom_up if isinstance(bottom_up, torch.nn.Module) else backbone


def get_knet_optimizer_params(
    model: torch.nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    backbone_multiplier: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias=None,
) -> List[Dict[str, Any]]:
    """detectron2's ``get_default_optimizer_params`` with the learning rate of every parameter of the backbone
    trunk (:func:`backbone_trunk`: ``backbone.bottom_up`` under an FPN, else ``backbone``) multiplied by
    ``backbone_multiplier``; the FPN and the heads keep the base rate.

    detectron2 v0.6 keys ``overrides`` by the parameter's own name (``weight``/``bias``) and has no
    ``lr_factor_func``, so the multiplier is applied on the per-parameter groups afterwards; the groups are
    then merged again with ``reduce_param_groups``.

    Returns:
        list of param-group dicts, each with ``params``, ``lr`` and ``weight_decay``.
    """
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
    )
    trunk = backbone_trunk(model)
    if trunk is None and backbone_multiplier != 1.0:
        raise ValueError(
            f"SOLVER.BACKBONE_MULTIPLIER = {backbone_multiplier} but {type(model).__name__} has no "
            "`backbone` module to apply it to: set SOLVER.BACKBONE_MULTIPLIER to 1.0"
        )
    backbone_ids = {id(p) for p in trunk.parameters()} if trunk is not None else set()
    per_param = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            h = dict(hyper)
            if id(p) in backbone_ids:
                h["lr"] = h["lr"] * backbone_multiplier
            per_param.append({"params": [p], **h})
    return reduce_param_groups(per_param)


def add_full_model_gradient_clipping(
    optim_cls: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """Return a subclass of ``optim_cls`` whose ``step`` first rescales all gradients so that their joint
    ``norm_type``-norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_`` over every parameter of
    every group at once). Under a ``GradScaler``, ``step`` runs after unscaling: the norm is the true one."""

    class _FullModelGradientClipping(optim_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    _FullModelGradientClipping.__name__ = optim_cls.__name__ + "WithFullModelGradientClipping"
    _FullModelGradientClipping.__qualname__ = _FullModelGradientClipping.__name__
    return _FullModelGradientClipping


def _all_on_cpu(param_groups) -> bool:
    """Whether every parameter is a floating-point CPU tensor: there AdamW runs its fused kernel (one call for
    all tensors instead of a dozen small ops per tensor; the same update, about 5x faster for the quickstart's
    244 tensors, 4 % of a training step). On CUDA, torch already picks its multi-tensor kernel, and a
    ``GradScaler`` would hand a fused optimizer still-scaled gradients, which the full-model clipping must not
    see."""
    params = [p for g in param_groups for p in g["params"]]
    return bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)


def build_knet_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer from ``SOLVER.*``.

    Reads ``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD"), ``BASE_LR``, ``WEIGHT_DECAY``, ``WEIGHT_DECAY_NORM``,
    ``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``, ``BACKBONE_MULTIPLIER``, ``MOMENTUM``/``NESTEROV`` (SGD) and
    ``CLIP_GRADIENTS`` (``CLIP_TYPE`` "full_model" → one norm over the whole model; "value"/"norm" →
    detectron2's per-parameter clipping).
    """
    solver = cfg.SOLVER
    params = get_knet_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    name = solver.OPTIMIZER.upper()
    if name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {"fused": True} if _all_on_cpu(params) else {}
    elif name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER = '{solver.OPTIMIZER}' is not supported: use 'ADAMW' or 'SGD'.")

    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optim_cls = add_full_model_gradient_clipping(optim_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        if clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm"):
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = '{clip.CLIP_TYPE}' is not supported: use 'full_model', "
                "'norm' or 'value'."
            )
        optim_cls = maybe_add_gradient_clipping(cfg, optim_cls)
    optimizer = optim_cls(params, lr=solver.BASE_LR, **kwargs)
    logger.info(
        f"Optimizer {type(optimizer).__name__}: base lr {solver.BASE_LR}, "
        f"backbone trunk lr x{solver.BACKBONE_MULTIPLIER},"
        f" {len(optimizer.param_groups)} param groups"
    )
    return optimizer
