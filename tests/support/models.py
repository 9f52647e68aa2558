"""Small K-Net configs and inputs for CPU tests (shared by the model tests)."""

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances

from knet import add_knet_config

RGB_MEAN = [123.675, 116.28, 103.53]
RGB_STD = [58.395, 57.12, 57.375]


def tiny_knet_cfg(
    *,
    num_classes=5,
    num_thing_classes=3,
    num_proposals=8,
    hidden_dim=32,
    ffn_dim=64,
    num_heads=4,
    num_stages=3,
    depth=18,
    panoptic_on=True,
    instance_on=True,
    semantic_on=True,
):
    """A K-Net config with the official structure but tiny widths (R-18, 32 channels), on CPU, with no
    datasets. ``num_classes > num_thing_classes`` makes a panoptic model, equal an instance model."""
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.META_ARCHITECTURE = "KNet"
    cfg.MODEL.PIXEL_MEAN = RGB_MEAN
    cfg.MODEL.PIXEL_STD = RGB_STD
    cfg.MODEL.BACKBONE.NAME = "build_knet_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "KNetFrozenStatsBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = hidden_dim
    k = cfg.MODEL.KNET
    k.NUM_CLASSES = num_classes
    k.NUM_THING_CLASSES = num_thing_classes
    k.NUM_PROPOSALS = num_proposals
    k.NUM_STAGES = num_stages
    k.HIDDEN_DIM = hidden_dim
    k.UPDATOR_DIM = hidden_dim
    k.NUM_HEADS = num_heads
    k.FFN_DIM = ffn_dim
    k.PIXEL_DECODER.CONV_DIM = hidden_dim
    k.PIXEL_DECODER.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    k.TEST.PANOPTIC_ON = panoptic_on
    k.TEST.INSTANCE_ON = instance_on
    k.TEST.SEMANTIC_ON = semantic_on
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def knet_kernel_head(**overrides):
    """A :class:`KNetKernelHead` with the config defaults (``add_knet_config``: the official sizes),
    changed by ``overrides``; the updator has the head's width unless ``updator_channels`` is given."""
    from knet.modeling.kernel_head.knet_kernel_head import KNetKernelHead

    cfg = get_cfg()
    add_knet_config(cfg)
    args = KNetKernelHead.from_config(cfg)
    args["updator_channels"] = overrides.get("in_channels", args["in_channels"])
    args.update(overrides)
    return KNetKernelHead(**args)


def random_instances(height, width, classes, seed=0):
    """``Instances`` with one random rectangle mask per entry of ``classes`` (int64 contiguous ids)."""
    g = np.random.default_rng(seed)
    masks = torch.zeros((len(classes), height, width), dtype=torch.bool)
    for i in range(len(classes)):
        y0, x0 = int(g.integers(0, height - 8)), int(g.integers(0, width - 8))
        y1, x1 = int(g.integers(y0 + 4, height)), int(g.integers(x0 + 4, width))
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((height, width))
    inst.gt_classes = torch.as_tensor(list(classes), dtype=torch.int64)
    inst.gt_masks = masks
    return inst


def batched_input(height, width, classes=(), seed=0, out_size=None):
    """One detectron2 input dict: a random uint8 image and its instances."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g),
        "height": out_size[0] if out_size else height,
        "width": out_size[1] if out_size else width,
        "instances": random_instances(height, width, classes, seed),
    }
    return out


def register_tiny_synthetic(folder, stem, num_train, num_val, image_size=64):
    """Generate a tiny synthetic dataset under ``folder`` and register it under a fresh name prefix
    ``{stem}{6 hex}`` (datasets ``{prefix}_{panoptic,instance,sem_seg}_{train,val}``); returns the prefix."""
    import os
    import uuid

    from knet.data.datasets.register_synthetic import register_knet_synthetic
    from knet.data.datasets.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset(os.path.join(str(folder), "knet_synthetic"), num_train=num_train,
                                    num_val=num_val, image_size=image_size)
    prefix = f"{stem}{uuid.uuid4().hex[:6]}"
    register_knet_synthetic(root, prefix)
    return prefix
