"""The target models of the converter tests: K-Net configs at the official widths, their state dicts built on
the "meta" device (names and shapes, no memory, no init time), and the exact-fill check."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY
from support.scripts import REPO

from knet import add_knet_config

__all__ = ["RGB_MEAN", "RGB_STD", "det_cfg", "sem_cfg", "pan_cfg", "meta_state_dict", "assert_fills_exactly"]

SEM_CFG_DIR = os.path.join(REPO, "configs", "ade20k", "semantic-segmentation")
PAN_CFG_DIR = os.path.join(REPO, "configs", "coco", "panoptic-segmentation")
RGB_MEAN = [123.675, 116.28, 103.53]
RGB_STD = [58.395, 57.12, 57.375]


def det_cfg(depth=50, num_classes=133, input_format="RGB"):
    """The official det model settings at full width."""
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "KNet"
    cfg.MODEL.PIXEL_MEAN = RGB_MEAN if input_format == "RGB" else RGB_MEAN[::-1]
    cfg.MODEL.PIXEL_STD = RGB_STD if input_format == "RGB" else RGB_STD[::-1]
    cfg.INPUT.FORMAT = input_format
    cfg.MODEL.BACKBONE.NAME = "build_knet_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "KNetFrozenStatsBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.KNET.NUM_CLASSES = num_classes
    cfg.MODEL.KNET.NUM_THING_CLASSES = 80
    cfg.MODEL.KNET.TEST.PANOPTIC_ON = num_classes > 80
    cfg.MODEL.KNET.TEST.INSTANCE_ON = num_classes == 80
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def sem_cfg(name, *opts):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(SEM_CFG_DIR, name))
    # SyncBN needs a process group; BN has the same parameters and buffers
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "BN", "MODEL.KNET.PIXEL_DECODER.NORM", "BN", *opts])
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def pan_cfg(name, *opts):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(PAN_CFG_DIR, name))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def meta_state_dict(cfg):
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return model.state_dict()


def assert_fills_exactly(converted, target):
    """Same names and shapes. BatchNorm's ``num_batches_tracked`` counters are dropped by the converter; a
    state dict without them loads strictly (``_NormBase`` fills them with 0), see the end-to-end test."""
    target = {k: v for k, v in target.items() if not k.endswith("num_batches_tracked")}
    unexpected = sorted(set(converted) - set(target))
    missing = sorted(set(target) - set(converted))
    assert not unexpected and not missing, f"unexpected: {unexpected[:5]}, missing: {missing[:5]}"
    bad = [k for k in target if tuple(converted[k].shape) != tuple(target[k].shape)]
    assert not bad, bad[:5]
