"""Optimizer groups of real K-Net models: the backbone learning-rate multiplier reaches exactly the
parameters the official one reaches.

Official det recipe (ZwwWayne/K-Net ``configs/det/_base_/schedules/schedule_1x.py``):
``paramwise_cfg.custom_keys={'backbone': dict(lr_mult=0.25)}``; mmcv 1.x matches a custom key as a substring
of the parameter name and the official FPN is ``neck.*``, so only the bottom-up network (ResNet / Swin) trains
at 0.25x and the FPN at the base rate. mmsegmentation's K-Net configs (``configs/knet/knet-s3_*``) set no
learning-rate multiplier at all. Models are built from the shipped configs with random weights (no download).
"""
import os

import pytest
import torch
from detectron2.modeling import build_model
from support.scripts import REPO

from knet.engine import build_knet_optimizer, load_config
from knet.engine.optimizer import backbone_trunk, get_knet_optimizer_params

COCO_PANOPTIC_R50 = "configs/coco/panoptic-segmentation/knet_R50_1x.yaml"
COCO_PANOPTIC_SWINL = "configs/coco/panoptic-segmentation/knet_swinL_ms3x.yaml"
ADE20K_UPERNET_R50 = "configs/ade20k/semantic-segmentation/knet_upernet_R50.yaml"

# Official parameter counts of the K-Net heads (tests/test_param_counts.py): kernel-generating head incl. the
# localization FPN (133 classes) + 3 update heads.
HEADS_133 = 4_456_325 + 3 * 2_076_037
FPN_R50 = 3_344_384  # fpn_lateral2..5 + fpn_output2..5 over (256, 512, 1024, 2048) -> 256


def _model(config, *opts):
    cfg = load_config(os.path.join(REPO, config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _lr_by_name(model, optimizer):
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: lr_of[id(p)] for n, p in model.named_parameters() if id(p) in lr_of}


def _split(lrs, base_lr, multiplier):
    """Names at the base rate / at ``multiplier`` x base; fails on any other rate."""
    full = {n for n, lr in lrs.items() if lr == pytest.approx(base_lr, rel=1e-12)}
    slow = {n for n, lr in lrs.items() if lr == pytest.approx(base_lr * multiplier, rel=1e-12)}
    assert full.isdisjoint(slow) and full | slow == set(lrs), sorted(set(lrs) - full - slow)[:5]
    return full, slow


def _numel(model, names):
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def test_coco_panoptic_r50_fpn_gets_base_lr_trunk_quarter():
    cfg, model = _model(COCO_PANOPTIC_R50)
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.25
    opt = build_knet_optimizer(cfg, model)
    lrs = _lr_by_name(model, opt)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(lrs) == trainable  # every trainable parameter once, frozen stem + res2 not at all
    full, slow = _split(lrs, cfg.SOLVER.BASE_LR, 0.25)

    assert slow == {n for n in trainable if n.startswith("backbone.bottom_up.")}
    assert all(n.startswith(("backbone.bottom_up.res3.", "backbone.bottom_up.res4.",
                             "backbone.bottom_up.res5.")) for n in slow)
    fpn = {n for n in full if n.startswith("backbone.fpn_")}
    rest = {n for n in trainable if n.startswith("backbone.") and not n.startswith("backbone.bottom_up.")}
    assert fpn == rest
    assert len(fpn) == 16 and _numel(model, fpn) == FPN_R50  # 8 convs, weight + bias each, at the base rate
    # R-50 res3-res5 (4 + 6 + 3 bottlenecks, conv weights + BN affine): 126 tensors, 23,282,688 parameters
    assert len(slow) == 126 and _numel(model, slow) == 23_282_688
    assert _numel(model, full) == FPN_R50 + HEADS_133 and len(full) == 184


def test_swin_fpn_trunk_is_the_swin_not_the_fpn():
    # the Swin-L panoptic config with a narrow, shallow Swin (same structure, builds in well under a second)
    cfg, model = _model(
        COCO_PANOPTIC_SWINL,
        "MODEL.KNET.SWIN.EMBED_DIM", "32", "MODEL.KNET.SWIN.DEPTHS", "[2, 2, 2, 2]",
        "MODEL.KNET.SWIN.NUM_HEADS", "[1, 2, 4, 8]",
    )
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.25
    opt = build_knet_optimizer(cfg, model)
    lrs = _lr_by_name(model, opt)
    assert set(lrs) == {n for n, _ in model.named_parameters()}  # nothing frozen
    full, slow = _split(lrs, cfg.SOLVER.BASE_LR, 0.25)
    assert slow == {n for n in lrs if n.startswith("backbone.bottom_up.")}
    assert any(".relative_position_bias_table" in n for n in slow)
    assert "backbone.bottom_up.norm3.weight" in slow
    fpn = {n for n in full if n.startswith("backbone.")}
    assert all(n.startswith("backbone.fpn_") for n in fpn) and len(fpn) == 16
    # laterals 1x1 over (32, 64, 128, 256) -> 256, outputs 3x3 256 -> 256, all with bias
    fpn_expected = (32 + 64 + 128 + 256) * 256 + 4 * 256 + 4 * (256 * 256 * 9 + 256)
    assert _numel(model, fpn) == fpn_expected == 2_484_224
    assert _numel(model, full) == fpn_expected + HEADS_133
    assert _numel(model, slow) == sum(p.numel() for p in model.backbone.bottom_up.parameters())
    assert backbone_trunk(model) is model.backbone.bottom_up


def test_semantic_model_lr_as_mmseg():
    """mmseg's K-Net configs have no lr multiplier: with the shipped config every parameter trains at the
    base rate. The semantic backbone has no FPN inside (the UPerNet head is ``pixel_decoder.*``), so a
    multiplier, if set, reaches exactly ``backbone.*``."""
    cfg, model = _model(ADE20K_UPERNET_R50)
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0
    lrs = _lr_by_name(model, build_knet_optimizer(cfg, model))
    assert set(lrs) == {n for n, _ in model.named_parameters()}
    assert set(lrs.values()) == {cfg.SOLVER.BASE_LR}

    groups = get_knet_optimizer_params(
        model, base_lr=1.0, weight_decay=0.0, weight_decay_norm=0.0, backbone_multiplier=0.25
    )
    slow = {id(p) for g in groups if g["lr"] == 0.25 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in slow}
    assert names == {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    # ResNetV1c-50: ResNet-50 without its fc and 7x7 stem (9,536) + the deep stem (28,768)
    assert _numel(model, names) == 23_508_032 - 9_536 + 28_768 == 23_527_264
    assert backbone_trunk(model) is model.backbone


def test_multiplier_without_backbone_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="SOLVER.BACKBONE_MULTIPLIER"):
        get_knet_optimizer_params(
            model, base_lr=1.0, weight_decay=0.0, weight_decay_norm=0.0, backbone_multiplier=0.25
        )
    groups = get_knet_optimizer_params(
        model, base_lr=1.0, weight_decay=0.0, weight_decay_norm=0.0, backbone_multiplier=1.0
    )
    assert [g["lr"] for g in groups] == [1.0]
