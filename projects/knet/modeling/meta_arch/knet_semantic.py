"""``KNetSemantic``: the semantic-segmentation meta-architecture of K-Net (the ADE20K models).

Zhang et al., "K-Net", NeurIPS 2021, Sec. 3.4 / 4. Reference: mmsegmentation
``mmseg/models/segmentors/encoder_decoder.py::EncoderDecoder`` with the ``IterativeDecodeHead`` of
``mmseg/models/decode_heads/knet_head.py`` (configs ``configs/knet/*``). As detectron2 splits
``SemanticSegmentor`` from ``PanopticFPN``, this class is separate from :class:`KNet` (instance / panoptic):

backbone -> decode head (FCN / PSP / ASPP / UPerNet, ``MODEL.KNET.SEMANTIC.DECODE_HEAD_NAME``: the feature,
the initial logits and the class kernels ``conv_seg.weight``) -> semantic kernel head (the update stages,
``MODEL.KNET.KERNEL_HEAD.NAME``) -> :func:`knet.modeling.semantic_losses.semantic_losses` (training, with the
auxiliary FCN head ``auxiliary_head`` on ``MODEL.KNET.SEMANTIC.AUX_IN_FEATURE``) or
:func:`knet.modeling.dense_inference.semantic_probabilities` (inference).

Input: images are normalised first and only then padded, with 0, at the bottom/right: in training up to
``INPUT.SEMANTIC.CROP_SIZE`` and to a multiple of the size divisibility, the labels alike with the ignore
value (mmseg 1.x ``SegDataPreProcessor`` with ``size=crop_size, pad_val=0, seg_pad_val=255``,
``mmseg/models/data_preprocessor.py`` + ``mmseg/models/utils/wrappers.py::stack_batch``; mmseg 0.x
``Normalize`` then ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``). At inference each image is
normalised and run unpadded ("whole") or by windows ("slide").
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from ...data.metadata import check_dataset_metadata
from ..decode_head.fcn_head import build_auxiliary_head
from ..dense_inference import semantic_probabilities
from ..options import SemanticOptions
from ..registry import build_decode_head, build_semantic_kernel_head, check_knet_semantic_components
from ..semantic_losses import semantic_losses
from .common import KNetMetaArchBase

__all__ = ["KNetSemantic", "normalize_and_pad"]


def _ceil_to(value: int, divisor: int) -> int:
    return value if divisor <= 1 else -(-value // divisor) * divisor


def normalize_and_pad(
    images: Sequence[torch.Tensor],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    labels: Optional[Sequence[torch.Tensor]],
    *,
    min_size: Optional[Tuple[int, int]],
    size_divisibility: int,
    ignore_value: int,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Normalise, then pad a training batch: mmseg 1.x ``SegDataPreProcessor.forward`` + ``stack_batch``.

    Args:
        images: B uint8 (or float) (3, h_i, w_i) images on the model's device.
        pixel_mean, pixel_std: (3, 1, 1).
        labels: B int (h'_i, w'_i) label maps, or None; a label map may be larger than its image (a mapper
            that pads labels only), the image is then padded to it.
        min_size: (H, W) the batch is padded up to at least (mmseg ``size=crop_size``), or None.
        size_divisibility: the batch size is then rounded up to a multiple of it (0 or 1: no rounding).
        ignore_value: label padding (mmseg ``seg_pad_val``).
    Returns:
        (B, 3, H, W) float32 normalised images padded at the bottom/right with exactly 0, and (B, H, W) int64
        labels padded with ``ignore_value`` (None without labels). H (W) is the largest image or label
        height (width), at least ``min_size``, rounded up to ``size_divisibility``.
    """
    sizes = [tuple(x.shape[-2:]) for x in images] + [tuple(y.shape[-2:]) for y in labels or ()]
    if min_size is not None:
        sizes.append(tuple(min_size))
    height = _ceil_to(max(s[0] for s in sizes), size_divisibility)
    width = _ceil_to(max(s[1] for s in sizes), size_divisibility)
    out = pixel_mean.new_zeros((len(images), images[0].shape[0], height, width))
    for i, x in enumerate(images):
        out[i, :, : x.shape[-2], : x.shape[-1]] = (x.to(out) - pixel_mean) / pixel_std
    if labels is None:
        return out, None
    targets = torch.full((len(labels), height, width), ignore_value, dtype=torch.int64, device=out.device)
    for i, y in enumerate(labels):
        targets[i, : y.shape[-2], : y.shape[-1]] = y.to(targets)
    return out, targets


@META_ARCH_REGISTRY.register()
class KNetSemantic(KNetMetaArchBase):
    """Semantic K-Net. Training returns ``{"loss_ce_s0", ..., "loss_ce_s{S}", "loss_aux"}``; inference one
    ``{"sem_seg": (C, height, width)}`` of class probabilities per image (detectron2's format).

    State dict: ``backbone.*``, ``pixel_decoder.*`` (the decode head), ``auxiliary_head.*`` (training only;
    absent when ``MODEL.KNET.SEMANTIC.AUX_LOSS_WEIGHT`` is 0), ``kernel_head.*``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        decode_head: nn.Module,
        kernel_head: nn.Module,
        auxiliary_head: Optional[nn.Module],
        options: SemanticOptions,
        **inputs,
    ):
        """
        Args:
            backbone: a detectron2 ``Backbone``.
            decode_head: a kernel-generating head of ``KNET_DECODE_HEAD_REGISTRY`` (backbone features ->
                ``{"feat", "init_logits", "init_kernels"}``); stored as ``pixel_decoder``.
            kernel_head: a head of ``KNET_SEMANTIC_KERNEL_HEAD_REGISTRY``.
            auxiliary_head: the auxiliary FCN head (its ``init_logits`` get ``loss_aux``), or None.
            options: losses, ignore value, training pad size and the inference mode.
            inputs: ``pixel_mean``, ``pixel_std``, ``size_divisibility`` (of the training batches),
                ``fuse_bn``, ``channels_last``, ``fuse_eval_bn`` (:meth:`KNetMetaArchBase.setup_inputs`).
        """
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = decode_head
        self.auxiliary_head = auxiliary_head
        self.kernel_head = kernel_head
        self.options = options
        self.setup_inputs(**inputs)

    @classmethod
    def from_config(cls, cfg):
        check_knet_semantic_components(cfg)
        check_dataset_metadata(cfg, semantic=True)
        backbone = build_backbone(cfg)
        shape = backbone.output_shape()
        # the auxiliary head is built before the decode head: the seeded initialisation of earlier releases
        # (which built it inside the decode head's config) stays the same
        auxiliary_head = build_auxiliary_head(cfg, shape)
        return {
            "backbone": backbone,
            "decode_head": build_decode_head(cfg, shape),
            "kernel_head": build_semantic_kernel_head(cfg),
            "auxiliary_head": auxiliary_head,
            "options": SemanticOptions.from_config(cfg),
            **cls.input_args(cfg, backbone),
        }

    def stage_logits(self, images: torch.Tensor):
        """(B, 3, H, W) normalised images -> the kernel head's output: in training the ``1 + S`` logit maps,
        at inference the last one (B, C, h, w)."""
        dec = self.pixel_decoder(self.backbone_features(images))
        return self.kernel_head(dec["feat"], dec["init_kernels"], dec["init_logits"])

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 dicts with ``image`` (3, H, W) uint8 and, in training, ``sem_seg``
                (H, W) int64 (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` = ignore); ``height``/``width`` give the
                output size at inference.
        Returns:
            training: the loss dict of :func:`semantic_losses`; inference: a list of
            ``{"sem_seg": (C, H, W)}``.
        """
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError(
                "semantic K-Net training needs 'sem_seg' in every input dict; use a semantic mapper "
                "(INPUT.DATASET_MAPPER_NAME 'knet_semantic') on a dataset with sem_seg_file_name"
            )
        o = self.options
        batch, targets = normalize_and_pad(
            [x["image"].to(self.device) for x in batched_inputs],
            self.pixel_mean,
            self.pixel_std,
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            min_size=o.train_pad_size,
            size_divisibility=self.size_divisibility,
            ignore_value=o.ignore_value,
        )
        features = self.backbone_features(batch)
        dec = self.pixel_decoder(features)
        aux_logits = None if self.auxiliary_head is None else self.auxiliary_head(features)["init_logits"]
        stage_logits = self.kernel_head(dec["feat"], dec["init_kernels"], dec["init_logits"])
        return semantic_losses(
            stage_logits,
            aux_logits,
            targets,
            ignore_value=o.ignore_value,
            ce_weight=o.ce_weight,
            aux_weight=o.aux_weight,
        )

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        images = [self.normalize(x["image"]) for x in batched_inputs]
        output_sizes = [
            (x.get("height", img.shape[-2]), x.get("width", img.shape[-1]))
            for x, img in zip(batched_inputs, images)
        ]
        o = self.options
        return semantic_probabilities(
            self.stage_logits, images, output_sizes, mode=o.test_mode, crop_size=o.crop_size, stride=o.stride
        )
