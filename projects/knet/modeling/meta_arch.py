"""The K-Net meta-architecture (Zhang et al., "K-Net: Towards Unified Image Segmentation", NeurIPS 2021).

backbone -> pixel decoder -> kernel head (initial kernels + update stages) -> criterion (training) or
post-processing (inference). Reference: ``ZwwWayne/K-Net:knet/det/knet.py`` (``KNet``, a mmdet two-stage
detector with the kernel head as "rpn_head" and the update stages as "roi_head").

Semantic seam: a kernel head whose class sets ``is_semantic = True`` (the ADE20K models) is run by
:func:`knet.modeling.semantic_forward.semantic_forward`, which gets the model's modules and returns the loss
dict in training and the list of per-image outputs at inference. No criterion is built here for such heads
(``model.criterion`` is None).
"""

import math
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..data.metadata import check_dataset_metadata
from .criterion import KNetCriterion, prepare_targets
from .fuse import enable_bn_folding
from .postprocessing import (
    instance_inference,
    panoptic_inference,
    resolve_panoptic_mode,
    semantic_inference,
)
from .registry import build_kernel_head, build_pixel_decoder
from .semantic_forward import semantic_forward

__all__ = ["KNet", "check_dataset_metadata"]


def knet_test_cfg(cfg) -> dict:
    """The post-processing options read from ``MODEL.KNET.TEST`` (the ``test_cfg`` of :class:`KNet` and of the
    onnxruntime-backed ``KNetONNX``); the panoptic mode is validated here, so a wrong value fails at build."""
    t = cfg.MODEL.KNET.TEST
    return {
        "max_per_image": t.MAX_PER_IMAGE,
        "mask_threshold": t.MASK_THRESHOLD,
        "instance_score_threshold": t.INSTANCE_SCORE_THRESHOLD,
        "thing_score_threshold": t.PANOPTIC_THING_SCORE_THRESHOLD,
        "overlap_threshold": t.OVERLAP_THRESHOLD,
        "soft_boundaries": t.SOFT_BOUNDARIES,
        "panoptic_mode": resolve_panoptic_mode(t.PANOPTIC_MODE, t.SOFT_BOUNDARIES),
    }


def postprocess_image(cls_logits, masks, image_size, out_size, *, stride: int, num_proposals: int,
                      num_thing_classes: int, test_cfg: dict, panoptic_on: bool, instance_on: bool,
                      semantic_on: bool) -> Dict:
    """The requested outputs of one image (shared by :class:`KNet` and the onnxruntime ``KNetONNX``).

    Args:
        cls_logits: (N, C) class logits of the last stage; masks: (N, h_pad/stride, w_pad/stride) mask logits.
        image_size: (h, w) of the image inside the padding; out_size: (H, W) of the outputs.
        test_cfg: as built by :func:`knet_test_cfg`.
    Returns:
        dict with "panoptic_seg", "instances" and/or "sem_seg" (detectron2's output format).
    """
    cfg, P, T = test_cfg, num_proposals, num_thing_classes
    result = {}
    if panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            cls_logits, masks, image_size, out_size, num_proposals=P, num_thing_classes=T, stride=stride,
            thing_score_threshold=cfg.get("thing_score_threshold", 0.3),
            overlap_threshold=cfg.get("overlap_threshold", 0.6),
            mask_threshold=cfg.get("mask_threshold", 0.5), mode=cfg.get("panoptic_mode", "exact"),
            soft_boundaries=cfg.get("soft_boundaries", False),
        )
    if instance_on:
        result["instances"] = instance_inference(
            cls_logits[:P, :T], masks[:P], image_size, out_size, stride=stride,
            max_per_image=cfg.get("max_per_image", 100), mask_threshold=cfg.get("mask_threshold", 0.5),
            score_threshold=cfg.get("instance_score_threshold", 0.0),
        )
    if semantic_on:
        result["sem_seg"] = semantic_inference(
            cls_logits, masks, image_size, out_size, num_proposals=P, num_thing_classes=T, stride=stride
        )
    return result


@META_ARCH_REGISTRY.register()
class KNet(nn.Module):
    """K-Net for instance, panoptic (and, through the semantic seam, semantic) segmentation.

    Training returns the loss dict of :class:`KNetCriterion`. Inference returns, per image and at its
    original ``height``/``width``: ``"panoptic_seg"`` (int32 id map, segments_info), ``"instances"``
    (``pred_masks`` bool, ``scores``, ``pred_classes``, ``pred_boxes``) and ``"sem_seg"`` (C, H, W), each
    switched on by ``MODEL.KNET.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        kernel_head: nn.Module,
        criterion: nn.Module,
        pixel_mean,
        pixel_std,
        size_divisibility: int = 32,
        panoptic_on: bool = True,
        instance_on: bool = False,
        semantic_on: bool = False,
        test_cfg: Dict = None,
        fuse_bn: bool = False,
        channels_last: bool = False,
        fuse_eval_bn: bool = False,
    ):
        """
        Args:
            backbone: a detectron2 ``Backbone``.
            pixel_decoder: maps the backbone features to {"loc_feat", "sem_feat"}.
            kernel_head: e.g. :class:`KNetKernelHead`.
            criterion: :class:`KNetCriterion` (None for semantic kernel heads).
            pixel_mean, pixel_std: per-channel normalisation of the input images (in the input format).
            size_divisibility: the batch is padded to a multiple of this.
            panoptic_on, instance_on, semantic_on: which outputs inference produces.
            test_cfg: post-processing options: "max_per_image", "mask_threshold", "instance_score_threshold",
                "thing_score_threshold", "overlap_threshold", "soft_boundaries", "panoptic_mode".
            fuse_bn: at inference (eval mode) fold running-statistics BatchNorm into the preceding convs
                (:func:`knet.modeling.fuse.enable_bn_folding`; training and the state dict are unchanged).
            channels_last: with ``fuse_bn``, the folded convs run in channels-last memory format.
            fuse_eval_bn: with ``fuse_bn``, also fold trainable BatchNorm while in eval mode.
        """
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.kernel_head = kernel_head
        self.criterion = criterion
        mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (pixel_mean, pixel_std))
        self.register_buffer("pixel_mean", mean, False)
        self.register_buffer("pixel_std", std, False)
        self.size_divisibility = size_divisibility
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.semantic_on = semantic_on
        self.test_cfg = dict(test_cfg or {})
        if fuse_bn:
            enable_bn_folding(self, channels_last=channels_last, eval_batch_norm=fuse_eval_bn)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
        kernel_head = build_kernel_head(cfg)
        semantic = bool(getattr(kernel_head, "is_semantic", False))
        check_dataset_metadata(cfg, semantic=semantic)
        k = cfg.MODEL.KNET
        if not semantic and k.PIXEL_DECODER.CONV_DIM != k.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.KNET.PIXEL_DECODER.CONV_DIM ({k.PIXEL_DECODER.CONV_DIM}) must equal "
                f"MODEL.KNET.HIDDEN_DIM ({k.HIDDEN_DIM}): the kernels convolve the pixel decoder's features"
            )
        size_div = max(getattr(backbone, "size_divisibility", 0), 1)
        if cfg.INPUT.SIZE_DIVISIBILITY > 0:
            size_div = math.lcm(size_div, cfg.INPUT.SIZE_DIVISIBILITY)
        t = k.TEST
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "kernel_head": kernel_head,
            "criterion": None if semantic else KNetCriterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": size_div,
            "panoptic_on": t.PANOPTIC_ON,
            "instance_on": t.INSTANCE_ON,
            "semantic_on": t.SEMANTIC_ON,
            "test_cfg": knet_test_cfg(cfg),
            "fuse_bn": t.FUSE_BN,
            "channels_last": t.CHANNELS_LAST,
            "fuse_eval_bn": t.FUSE_EVAL_BN,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise ``image`` (uint8 (3, H, W) in ``INPUT.FORMAT``) and pad the batch with 0 (after
        normalisation, as mmdet's Normalize-then-Pad) to a multiple of ``size_divisibility``."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 dicts (docs/architecture.md): ``image``; ``instances`` in training;
                ``height``/``width`` (output size) at inference.

        Returns:
            training: dict of weighted losses; inference: one dict per image (see the class docstring).
        """
        if getattr(self.kernel_head, "is_semantic", False):
            return semantic_forward(
                batched_inputs,
                backbone=self.backbone,
                pixel_decoder=self.pixel_decoder,
                kernel_head=self.kernel_head,
                pixel_mean=self.pixel_mean,
                pixel_std=self.pixel_std,
                size_divisibility=self.size_divisibility,
            )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.kernel_head(self.pixel_decoder(features))
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise ValueError(
                    "KNet training needs 'instances' in every input dict (see docs/architecture.md)"
                )
            gt = [x["instances"].to(self.device) for x in batched_inputs]
            targets = prepare_targets(
                gt,
                images.tensor.shape[-2:],
                outputs["init_masks"].shape[-2:],
                self.kernel_head.num_thing_classes,
                self.kernel_head.panoptic,
            )
            return self.criterion(outputs, targets)
        return self.inference(outputs["stages"][-1], images, batched_inputs)

    def inference(self, last_stage: Dict[str, torch.Tensor], images: ImageList, batched_inputs: List[Dict]):
        """Post-process the last stage's class logits (B, N, C) and stride-4 mask logits (B, N, h, w), in
        float32 (autocast off)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._postprocess(last_stage, images, batched_inputs)

    def _postprocess(self, last_stage, images, batched_inputs):
        cls_logits, masks = last_stage["pred_logits"], last_stage["pred_masks"]
        stride = images.tensor.shape[-2] // masks.shape[-2]
        P, T = self.kernel_head.num_proposals, self.kernel_head.num_thing_classes
        cfg = self.test_cfg
        results = []
        for i, x in enumerate(batched_inputs):
            image_size = images.image_sizes[i]
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            result = postprocess_image(
                cls_logits[i], masks[i], image_size, out_size, stride=stride, num_proposals=P,
                num_thing_classes=T, test_cfg=cfg, panoptic_on=self.panoptic_on, instance_on=self.instance_on,
                semantic_on=self.semantic_on,
            )
            results.append(result)
        return results
