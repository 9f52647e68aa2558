"""ResNet + FPN (P2-P5) backbone with the settings of the official K-Net det models.

Reference: ``ZwwWayne/K-Net:configs/det/_base_/models/knet_s3_r50_fpn*.py``: mmdet
``ResNet(style='pytorch', frozen_stages=1, norm_cfg=BN(requires_grad=True), norm_eval=True)`` and
``FPN(start_level=0, add_extra_convs='on_input', num_outs=4)``, i.e. no P6. Built from detectron2's own
``ResNet`` and ``FPN`` so the state-dict names are detectron2's.

Config: ``MODEL.BACKBONE.NAME: build_knet_resnet_fpn_backbone``, ``MODEL.RESNETS.DEPTH``
(10/18/34/50/101/152), ``MODEL.RESNETS.STRIDE_IN_1X1: False`` (torchvision weights),
``MODEL.BACKBONE.FREEZE_AT: 2`` (stem + res2), ``MODEL.RESNETS.NORM: "KNetFrozenStatsBN"`` (batch statistics
frozen, affine trainable) and
``MODEL.RESNETS.DEFORM_ON_PER_STAGE: [False, True, True, True]`` for the DCN models (mmcv ``DCN`` = v1:
``DEFORM_MODULATED: False``), whose deformable convs are :mod:`knet.modeling.backbone.deform_conv`'s
(torchvision's kernels; no compiled detectron2 op needed).
"""

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    ResNet,
    build_resnet_backbone,
)
from torch import nn
from torch.nn import functional as F

from ..layers import max_pool2d
from .deform_conv import DeformBottleneckBlock

__all__ = ["FrozenStatsBatchNorm2d", "KNetBasicStem", "build_knet_resnet_fpn_backbone", "FROZEN_STATS_BN"]

FROZEN_STATS_BN = "KNetFrozenStatsBN"  # value of MODEL.RESNETS.NORM selecting FrozenStatsBatchNorm2d


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (never updates them), while its affine
    weight and bias stay trainable: mmdet's ``norm_eval=True`` with ``requires_grad=True``, independent of
    ``model.train()``. Has no ``num_batches_tracked`` buffer (dropped when loading)."""

    _version = 2

    def __init__(self, num_features, eps=1e-5):
        super().__init__(num_features, eps=eps)
        self.num_batches_tracked = None  # never counted

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        nn.Module._load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every plain ``nn.BatchNorm2d`` in ``module`` (in place where possible) by this class,
        copying its parameters and statistics. Frozen (``FrozenBatchNorm2d``) layers are left alone."""
        if type(module) is nn.BatchNorm2d:
            new = cls(module.num_features, eps=module.eps)
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
                new.running_mean.copy_(module.running_mean)
                new.running_var.copy_(module.running_var)
            return new
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def _build_deformable_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ``build_resnet_backbone`` for a config with ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``, with
    this package's :class:`~knet.modeling.backbone.deform_conv.DeformBottleneckBlock` (torchvision's
    deformable conv: CPU and CUDA, no compiled detectron2 op) in the deformable stages. Same stages, names,
    strides, dilation and freezing as detectron2's builder (``detectron2/modeling/backbone/resnet.py``)."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in (50, 101, 152):
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE = {list(r.DEFORM_ON_PER_STAGE)} needs a bottleneck ResNet "
            f"(MODEL.RESNETS.DEPTH 50, 101 or 152), got DEPTH {r.DEPTH}; set DEFORM_ON_PER_STAGE to all "
            "False."
        )
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}.")
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[r.DEPTH]
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_ch, out_ch, mid_ch = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, n in enumerate(blocks):
        dilation = r.RES5_DILATION if idx == 3 else 1
        first_stride = 1 if idx == 0 or (idx == 3 and dilation == 2) else 2
        kwargs = dict(
            num_blocks=n, stride_per_block=[first_stride] + [1] * (n - 1), in_channels=in_ch,
            out_channels=out_ch, norm=r.NORM, bottleneck_channels=mid_ch, stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=dilation, num_groups=r.NUM_GROUPS,
        )
        if r.DEFORM_ON_PER_STAGE[idx]:
            kwargs.update(block_class=DeformBottleneckBlock, deform_modulated=r.DEFORM_MODULATED,
                          deform_num_groups=r.DEFORM_NUM_GROUPS)
        else:
            kwargs.update(block_class=BottleneckBlock)
        stages.append(ResNet.make_stage(**kwargs))
        in_ch, out_ch, mid_ch = out_ch, out_ch * 2, mid_ch * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


class KNetBasicStem(BasicStem):
    """detectron2's ``BasicStem`` (7x7/2 conv, ReLU, 3x3/2 max-pool) with the pool through
    :func:`knet.modeling.layers.max_pool2d`: the same output and gradient, about 3x faster on CPU, where
    PyTorch's contiguous max-pool cost a training step of the synthetic quickstart 16 ms. No state of its own:
    weights and checkpoints are ``BasicStem``'s."""

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _use_knet_stem(bottom_up: ResNet) -> None:
    """Give a detectron2 ``BasicStem`` the faster pool of :class:`KNetBasicStem` (its class only: the module
    keeps its weights, frozen state and checkpoint names)."""
    if type(bottom_up.stem) is BasicStem:
        bottom_up.stem.__class__ = KNetBasicStem


_LAST_CONV = {BasicBlock: "conv2", BottleneckBlock: "conv3", DeformBottleneckBlock: "conv3"}  # before the add


def _zero_init_residual(bottom_up: ResNet) -> None:
    """Set the weight of the last norm layer of every residual block to 0, so each block starts as the
    identity (Goyal et al., "Accurate, Large Minibatch SGD", 2017, sec. 5.1; torchvision's ``resnet``
    ``zero_init_residual``). For ResNets trained from scratch (``MODEL.KNET.ZERO_INIT_RESIDUAL``); frozen
    norms are left alone."""
    for block in bottom_up.modules():
        if type(block) in _LAST_CONV:
            norm = getattr(block, _LAST_CONV[type(block)]).norm  # detectron2 Conv2d: None without a norm
            if isinstance(norm, nn.BatchNorm2d | nn.GroupNorm) and norm.affine:
                nn.init.zeros_(norm.weight)


def _drop_frozen_bn_counters(module: nn.Module) -> None:
    """Remove the ``num_batches_tracked`` counter from detectron2's ``FrozenBatchNorm2d`` layers.

    detectron2 main's ``FrozenBatchNorm2d.convert_frozen_batchnorm`` (used by ``ResNet.freeze``) carries the
    BatchNorm's counter over as a buffer; v0.6's has none. A frozen layer never counts, so the counter is
    dropped: the model has the same state-dict names on both versions, converted official checkpoints (which
    carry no counters, see :mod:`knet.checkpoint.resnet`) load with nothing missing, and checkpoints move
    between the versions. Feature-detected (a no-op on v0.6)."""
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d) and getattr(m, "num_batches_tracked", None) is not None:
            m.num_batches_tracked = None


def build_knet_fpn(cfg, bottom_up) -> FPN:
    """detectron2 ``FPN`` over ``MODEL.FPN.IN_FEATURES`` of ``bottom_up`` with **no** top block (the official
    neck has ``num_outs`` = number of inputs, so no P6); convs initialised xavier-uniform with zero bias, as
    mmdet's FPN (ZwwWayne/K-Net ``configs/det/_base_/models/knet_s3_r50_fpn.py``)."""
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=None,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    for name, m in backbone.named_modules():
        if name.startswith("fpn_") and isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return backbone


# BasicBlocks per stage of the basic-block ResNets built here. 18 and 34 are He et al.'s (CVPR 2016, Table 1);
# 10 (one block per stage, the same stem and widths) is not in that table nor in detectron2's builder.
_BASIC_BLOCKS_PER_STAGE = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def _build_narrow_basic_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet-10, or ResNet-18/34 whose ``MODEL.RESNETS.RES2_OUT_CHANNELS`` is not 64 (detectron2's builder
    insists on 64 and has no depth 10). Used by the CPU-sized synthetic configs; the stages are detectron2's
    ``BasicBlock`` stages."""
    r = cfg.MODEL.RESNETS
    blocks = _BASIC_BLOCKS_PER_STAGE[r.DEPTH]
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages, in_ch, out_ch = [], r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    for i, n in enumerate(blocks):
        first_stride = 1 if i == 0 else 2
        stages.append(ResNet.make_stage(BasicBlock, n, stride_per_block=[first_stride] + [1] * (n - 1),
                                        in_channels=in_ch, out_channels=out_ch, norm=r.NORM))
        in_ch, out_ch = out_ch, out_ch * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_knet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """detectron2 ResNet (bottom_up) + FPN over ``MODEL.FPN.IN_FEATURES`` with **no** top block (outputs
    p2-p5 for res2-res5). With ``MODEL.RESNETS.NORM = "KNetFrozenStatsBN"`` the not-frozen stages use
    :class:`FrozenStatsBatchNorm2d`; any other value is passed to detectron2 unchanged. The FPN convs are
    initialised xavier-uniform with zero bias (mmdet's FPN default). ``MODEL.KNET.ZERO_INIT_RESIDUAL`` starts
    every residual block of the ResNet as the identity (for training from scratch; off by default)."""
    frozen_stats = cfg.MODEL.RESNETS.NORM == FROZEN_STATS_BN
    if frozen_stats:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.RESNETS.NORM = "BN"  # built as BN, converted below after the frozen stages took FrozenBN
    r = cfg.MODEL.RESNETS
    narrow = r.DEPTH == 10 or (r.DEPTH in (18, 34) and r.RES2_OUT_CHANNELS != 64)
    if any(r.DEFORM_ON_PER_STAGE):
        bottom_up = _build_deformable_resnet(cfg, input_shape)
    else:
        bottom_up = (_build_narrow_basic_resnet if narrow else build_resnet_backbone)(cfg, input_shape)
    _use_knet_stem(bottom_up)
    if cfg.MODEL.KNET.ZERO_INIT_RESIDUAL:
        _zero_init_residual(bottom_up)
    _drop_frozen_bn_counters(bottom_up)
    if frozen_stats:
        FrozenStatsBatchNorm2d.convert(bottom_up)
    return build_knet_fpn(cfg, bottom_up)
