"""Tiny semantic K-Net models, inputs and configs for CPU tests (shared by the semantic model tests)."""
import dataclasses
import os

import torch
from detectron2.config import get_cfg
from torch import nn

from knet import add_knet_config
from knet.modeling.backbone.resnet_v1c import make_resnet_v1c
from knet.modeling.decode_head.aspp_head import KNetASPPHead
from knet.modeling.decode_head.fcn_head import KNetFCNHead
from knet.modeling.decode_head.psp_head import KNetPSPHead
from knet.modeling.decode_head.uper_head import KNetUPerHead
from knet.modeling.kernel_head.semantic_kernel_head import KNetSemanticKernelHead
from knet.modeling.meta_arch import KNetSemantic
from knet.modeling.options import SemanticOptions

from support.models import RGB_MEAN, RGB_STD

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_SEMANTIC_CONFIG = os.path.join(REPO, "configs", "synthetic", "knet_upernet_semantic_tiny.yaml")
NUM_CLASSES = 5
HEAD_NAMES = ["fcn", "psp", "aspp", "uper"]


def count(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def conv_bn_count(cin, cout, k):
    """Parameters of a bias-free k x k conv followed by a BatchNorm."""
    return cin * cout * k * k + 2 * cout


def semantic_options(**overrides) -> SemanticOptions:
    """The config defaults (``add_knet_config``) with no training pad size, changed by ``overrides``."""
    cfg = get_cfg()
    add_knet_config(cfg)
    return dataclasses.replace(SemanticOptions.from_config(cfg), train_pad_size=None, **overrides)


def tiny_backbone(out_stride=8):
    """A deep-stem ResNetV1c-50 with channels res2..res5 = 32, 64, 128, 256."""
    return make_resnet_v1c(
        depth=50, stem_out_channels=16, res2_out_channels=32, width_per_group=8, norm="BN",
        out_stride=out_stride,
    )


def tiny_aux():
    """The auxiliary FCN head on res4 of :func:`tiny_backbone`."""
    return KNetFCNHead(
        in_channels=128, in_feature="res4", channels=16, num_classes=NUM_CLASSES, num_convs=1, kernel_size=3,
        concat_input=False, norm="BN", dropout_ratio=0.1,
    )


def tiny_decode_head(name, channels=32):
    """One of the four decode heads ("fcn", "psp", "aspp", "uper") on :func:`tiny_backbone`."""
    common = dict(channels=channels, num_classes=NUM_CLASSES, norm="BN", dropout_ratio=0.1)
    if name == "fcn":
        return KNetFCNHead(in_channels=256, in_feature="res5", num_convs=2, kernel_size=3, concat_input=True,
                           **common)
    if name == "psp":
        return KNetPSPHead(in_channels=256, in_feature="res5", pool_scales=(1, 2, 3, 6), **common)
    if name == "aspp":
        return KNetASPPHead(in_channels=256, in_feature="res5", dilations=(1, 2, 3, 4), **common)
    return KNetUPerHead(in_channels=[32, 64, 128, 256], in_features=["res2", "res3", "res4", "res5"],
                        pool_scales=(1, 2, 3, 6), **common)


def tiny_semantic_knet(head="fcn", options=None, channels=32, updator=16) -> KNetSemantic:
    """A :class:`KNetSemantic` of tiny modules (seeded: the same weights on every call)."""
    torch.manual_seed(0)
    backbone = tiny_backbone(32 if head == "uper" else 8)
    aux = tiny_aux()
    decode_head = tiny_decode_head(head, channels)
    kernel_head = KNetSemanticKernelHead(
        in_channels=channels, num_stages=3, updator_channels=updator, num_heads=4, feedforward_channels=64,
    )
    return KNetSemantic(
        backbone=backbone, decode_head=decode_head, kernel_head=kernel_head, auxiliary_head=aux,
        options=options or semantic_options(), pixel_mean=RGB_MEAN, pixel_std=RGB_STD, size_divisibility=32,
        fuse_bn=False, channels_last=False, fuse_eval_bn=False,
    )


def image(h, w, seed=0):
    """A random uint8 (3, h, w) image."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def labels(h, w, seed=0):
    """Random (h, w) labels in [0, NUM_CLASSES) with the top quarter ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, NUM_CLASSES, (h, w), generator=g)
    lab[: h // 4] = 255
    return lab


def tiny_semantic_cfg(head="KNetUPerHead"):
    """``configs/synthetic/knet_upernet_semantic_tiny.yaml`` on CPU with the decode head ``head``."""
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(TINY_SEMANTIC_CONFIG)
    cfg.MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME = head
    if head != "KNetUPerHead":
        cfg.MODEL.KNET.PIXEL_DECODER.IN_FEATURES = ["res5"]
    cfg.MODEL.DEVICE = "cpu"
    return cfg
