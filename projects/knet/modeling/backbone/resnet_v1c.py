"""Deep-stem ResNet ("ResNetV1c") of the semantic K-Net models, as a detectron2 backbone.

The semantic K-Net models (Zhang et al., NeurIPS 2021, Sec. 4; mmsegmentation ``configs/knet/*``) use
mmsegmentation's ``ResNetV1c`` (``mmseg/models/backbones/resnet.py``): the 7x7 stem is replaced by three 3x3
convs (C/2, C/2, C, each with norm + ReLU, the first with stride 2) followed by a 3x3/2 max-pool, and the
bottleneck blocks put their stride on the 3x3 conv ("pytorch" style). The FCN/PSP/DeepLabv3 heads run it at
output stride 8 (strides 1, 2, 1, 1 and dilations 1, 1, 2, 4); with ``contract_dilation`` the first block of
a dilated stage uses half the dilation (``mmseg/models/utils/res_layer.py::ResLayer``). UPerNet uses it
undilated (output stride 32). Normalisation is trainable BatchNorm ("BN", or "SyncBN" in multi-process
training; mmseg ``norm_eval=False``).

The modules are detectron2's own: the stem is ``DeepLabStem`` (``detectron2.projects.deeplab``), the stages
are ``BottleneckBlock``s assembled by ``ResNet.make_stage`` and the model is detectron2's ``ResNet``, so the
state-dict names are ``backbone.stem.conv{1,2,3}.{weight,norm.*}``,
``backbone.res{2..5}.{b}.conv{1,2,3}.{weight,norm.*}`` and ``backbone.res{2..5}.0.shortcut.{weight,norm.*}``.
"""
from typing import List, Sequence, Tuple

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet

__all__ = ["build_knet_resnet_v1c_backbone", "resnet_v1c_strides_dilations", "make_resnet_v1c"]

_BLOCKS_PER_DEPTH = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _deeplab_stem_class():
    try:
        from detectron2.projects.deeplab.resnet import DeepLabStem
    except ImportError as e:  # pragma: no cover - depends on how detectron2 was installed
        raise ImportError(
            "build_knet_resnet_v1c_backbone needs detectron2.projects.deeplab (DeepLabStem); install "
            "detectron2 with its projects (tools/install_detectron2.py does)"
        ) from e
    return DeepLabStem


def resnet_v1c_strides_dilations(out_stride: int) -> Tuple[List[int], List[int]]:
    """Per-stage (res2..res5) strides and dilations of mmseg's ResNetV1c for an output stride.

    8 -> strides (1, 2, 1, 1), dilations (1, 1, 2, 4) (the "-d8" models); 16 -> (1, 2, 2, 1), (1, 1, 1, 2);
    32 -> (1, 2, 2, 2), (1, 1, 1, 1) (UPerNet).
    """
    table = {
        8: ([1, 2, 1, 1], [1, 1, 2, 4]),
        16: ([1, 2, 2, 1], [1, 1, 1, 2]),
        32: ([1, 2, 2, 2], [1, 1, 1, 1]),
    }
    if out_stride not in table:
        raise ValueError(
            f"MODEL.KNET.RESNET_V1C.OUT_STRIDE must be one of 8, 16, 32; got {out_stride!r}"
        )
    strides, dilations = table[out_stride]
    return list(strides), list(dilations)


def make_resnet_v1c(
    *,
    depth: int = 50,
    in_channels: int = 3,
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    width_per_group: int = 64,
    num_groups: int = 1,
    norm: str = "BN",
    out_stride: int = 8,
    contract_dilation: bool = True,
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    freeze_at: int = 0,
) -> ResNet:
    """Build a deep-stem ResNet (detectron2 ``ResNet``) with mmseg ResNetV1c's layout.

    Args:
        depth: 18, 34, 50, 101 or 152 (18/34 use ``BasicBlock`` and only support ``out_stride=32``).
        stem_out_channels: output channels of the deep stem; its first two convs have half as many.
        res2_out_channels: output channels of res2 (256 for R-50, 64 for R-18/34); doubled at every stage.
        width_per_group, num_groups: the bottleneck width is ``num_groups * width_per_group`` at res2.
        norm: any :func:`detectron2.layers.get_norm` name ("BN", "SyncBN", "GN", ...).
        out_stride: 8 (dilated), 16 or 32 (undilated), see :func:`resnet_v1c_strides_dilations`.
        contract_dilation: the first block of a stage with dilation d > 1 uses d // 2 (mmseg).
    Returns:
        a ``ResNet`` whose ``forward`` maps (B, 3, H, W) to ``{name: (B, C_name, H/s, W/s)}``.
    """
    if depth not in _BLOCKS_PER_DEPTH:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_DEPTH)}; got {depth!r}")
    strides, dilations = resnet_v1c_strides_dilations(out_stride)
    if depth in (18, 34) and out_stride != 32:
        raise ValueError(
            "ResNetV1c-18/34 (BasicBlock) has no dilated variant here: set MODEL.KNET.RESNET_V1C.OUT_STRIDE "
            f"to 32 or use MODEL.RESNETS.DEPTH >= 50 (got depth {depth}, out stride {out_stride})"
        )
    stem = _deeplab_stem_class()(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)

    num_blocks = _BLOCKS_PER_DEPTH[depth]
    stages = []
    in_ch = stem_out_channels
    out_ch = res2_out_channels
    bottleneck_ch = num_groups * width_per_group
    for idx in range(4):
        n = num_blocks[idx]
        d = dilations[idx]
        first_d = d // 2 if (contract_dilation and d > 1) else d
        kwargs = dict(
            num_blocks=n,
            in_channels=in_ch,
            out_channels=out_ch,
            stride_per_block=[strides[idx]] + [1] * (n - 1),
            norm=norm,
        )
        if depth >= 50:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_ch,
                num_groups=num_groups,
                stride_in_1x1=False,  # "pytorch" style: the stride sits on the 3x3 conv
                dilation_per_block=[first_d] + [d] * (n - 1),
            )
        else:
            kwargs.update(block_class=BasicBlock)
        stages.append(ResNet.make_stage(**kwargs))
        in_ch = out_ch
        out_ch *= 2
        bottleneck_ch *= 2
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)


@BACKBONE_REGISTRY.register()
def build_knet_resnet_v1c_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Deep-stem ResNet from the config (``MODEL.RESNETS.*`` and ``MODEL.KNET.RESNET_V1C.*``).

    Reads ``MODEL.RESNETS.{DEPTH, NORM, OUT_FEATURES, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, WIDTH_PER_GROUP,
    NUM_GROUPS}``, ``MODEL.BACKBONE.FREEZE_AT`` (0 in the semantic recipe: everything trains) and
    ``MODEL.KNET.RESNET_V1C.{OUT_STRIDE, CONTRACT_DILATION}``.
    """
    r = cfg.MODEL.RESNETS
    v = cfg.MODEL.KNET.RESNET_V1C
    return make_resnet_v1c(
        depth=r.DEPTH,
        in_channels=input_shape.channels,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        width_per_group=r.WIDTH_PER_GROUP,
        num_groups=r.NUM_GROUPS,
        norm=r.NORM,
        out_stride=v.OUT_STRIDE,
        contract_dilation=v.CONTRACT_DILATION,
        out_features=r.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
