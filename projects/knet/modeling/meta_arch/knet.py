"""``KNet``: the instance / panoptic meta-architecture (Zhang et al., "K-Net: Towards Unified Image
Segmentation", NeurIPS 2021). The semantic (ADE20K) models are :class:`knet.modeling.meta_arch.KNetSemantic`.

backbone -> pixel decoder (``{"loc_feat", "sem_feat"}``) -> kernel head (initial kernels + update stages) ->
criterion (training) or post-processing (inference). Reference: ``ZwwWayne/K-Net:knet/det/knet.py``
(``KNet``, a mmdet two-stage detector with the kernel head as "rpn_head" and the update stages as
"roi_head").
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...data.metadata import check_dataset_metadata
from ..criterion import KNetCriterion, prepare_targets
from ..options import PostprocessOptions
from ..postprocessing import instance_inference, panoptic_inference, semantic_inference
from ..registry import build_kernel_head, build_pixel_decoder, check_knet_components
from .common import KNetMetaArchBase

__all__ = ["KNet", "postprocess_image"]


def postprocess_image(cls_logits, masks, image_size, out_size, *, stride: int, num_proposals: int,
                      num_thing_classes: int, options: PostprocessOptions) -> Dict:
    """The requested outputs of one image (shared by :class:`KNet` and the onnxruntime ``KNetONNX``).

    Args:
        cls_logits: (N, C) class logits of the last stage; masks: (N, h_pad/stride, w_pad/stride) mask logits.
        image_size: (h, w) of the image inside the padding; out_size: (H, W) of the outputs.
        options: which outputs, and their thresholds (``MODEL.KNET.TEST``).
    Returns:
        dict with "panoptic_seg", "instances" and/or "sem_seg" (detectron2's output format).
    """
    o, P, T = options, num_proposals, num_thing_classes
    result = {}
    if o.panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            cls_logits, masks, image_size, out_size, num_proposals=P, num_thing_classes=T, stride=stride,
            thing_score_threshold=o.thing_score_threshold, overlap_threshold=o.overlap_threshold,
            mask_threshold=o.mask_threshold, mode=o.panoptic_mode, soft_boundaries=o.soft_boundaries,
        )
    if o.instance_on:
        result["instances"] = instance_inference(
            cls_logits[:P, :T], masks[:P], image_size, out_size, stride=stride,
            max_per_image=o.max_per_image, mask_threshold=o.mask_threshold,
            score_threshold=o.instance_score_threshold,
        )
    if o.semantic_on:
        result["sem_seg"] = semantic_inference(
            cls_logits, masks, image_size, out_size, num_proposals=P, num_thing_classes=T, stride=stride
        )
    return result


@META_ARCH_REGISTRY.register()
class KNet(KNetMetaArchBase):
    """K-Net for instance and panoptic segmentation.

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
        postprocess: PostprocessOptions,
        **inputs,
    ):
        """
        Args:
            backbone: a detectron2 ``Backbone``.
            pixel_decoder: maps the backbone features to {"loc_feat", "sem_feat"}
                (``KNET_PIXEL_DECODER_REGISTRY``).
            kernel_head: e.g. :class:`KNetKernelHead` (``KNET_KERNEL_HEAD_REGISTRY``).
            criterion: :class:`KNetCriterion`.
            postprocess: which outputs inference produces and the post-processing thresholds.
            inputs: ``pixel_mean``, ``pixel_std``, ``size_divisibility``, ``fuse_bn``, ``channels_last``,
                ``fuse_eval_bn`` (:meth:`KNetMetaArchBase.setup_inputs`).
        """
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.kernel_head = kernel_head
        self.criterion = criterion
        self.postprocess = postprocess
        self.setup_inputs(**inputs)

    @classmethod
    def from_config(cls, cfg):
        check_knet_components(cfg)
        backbone = build_backbone(cfg)
        pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
        kernel_head = build_kernel_head(cfg)
        check_dataset_metadata(cfg, semantic=False)
        k = cfg.MODEL.KNET
        if k.PIXEL_DECODER.CONV_DIM != k.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.KNET.PIXEL_DECODER.CONV_DIM ({k.PIXEL_DECODER.CONV_DIM}) must equal "
                f"MODEL.KNET.HIDDEN_DIM ({k.HIDDEN_DIM}): the kernels convolve the pixel decoder's features"
            )
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "kernel_head": kernel_head,
            "criterion": KNetCriterion(cfg),
            "postprocess": PostprocessOptions.from_config(cfg),
            **cls.input_args(cfg, backbone),
        }

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise ``image`` (uint8 (3, H, W) in ``INPUT.FORMAT``) and pad the batch with 0 (after
        normalisation, as mmdet's Normalize-then-Pad) to a multiple of ``size_divisibility``."""
        images = [self.normalize(x["image"]) for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 dicts (docs/architecture.md): ``image``; ``instances`` in training;
                ``height``/``width`` (output size) at inference.

        Returns:
            training: dict of weighted losses; inference: one dict per image (see the class docstring).
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone_features(images.tensor)
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
        results = []
        for i, x in enumerate(batched_inputs):
            image_size = images.image_sizes[i]
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(
                postprocess_image(
                    cls_logits[i], masks[i], image_size, out_size, stride=stride, num_proposals=P,
                    num_thing_classes=T, options=self.postprocess,
                )
            )
        return results
