"""The semantic-segmentation path of the ``KNet`` meta-architecture: losses and inference.

Zhang et al., "K-Net", NeurIPS 2021, Sec. 3.4 / 4 (ADE20K). Reference: mmsegmentation
``mmseg/models/decode_heads/knet_head.py::IterativeDecodeHead.losses``,
``decode_head.py::BaseDecodeHead.losses`` and ``mmseg/models/segmentors/encoder_decoder.py::{whole_inference,
slide_inference, inference}``.

* Input: images are normalised first and only then padded, with 0, at the bottom/right: in training up to
  ``train_pad_size`` (``INPUT.SEMANTIC.CROP_SIZE``) and to a multiple of ``size_divisibility``, the labels
  alike with the ignore value (mmseg 1.x ``SegDataPreProcessor`` with ``size=crop_size, pad_val=0,
  seg_pad_val=255``, ``mmseg/models/data_preprocessor.py`` + ``mmseg/models/utils/wrappers.py::stack_batch``;
  mmseg 0.x ``Normalize`` then ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)`` in
  ``configs/_base_/datasets/ade20k.py``). The padded pixels are thus exactly 0 after normalisation.
* Training: every one of the ``1 + S`` logit maps is resized (bilinear, ``align_corners=False``) to the label
  size and scored by softmax cross-entropy with ignore label 255, **averaged over all pixels including the
  ignored ones** (mmseg 0.x ``CrossEntropyLoss`` reduction); keys ``loss_ce_s0..s{S}``. The auxiliary FCN
  head's logits get the same loss times 0.4 (``loss_aux``). No matching: kernel n is class n.
* Inference: the last stage's logits are resized to the network input, then to the original image size, and
  turned into probabilities with a softmax over classes; the output is detectron2's ``{"sem_seg": (C, H,
  W)}``. "whole" runs each image as it is (no padding, as mmseg's ``whole_inference``); "slide" runs windows
  of ``crop_size`` every ``stride`` pixels (an image smaller than the window is one window, the whole image)
  and averages the overlapping logits (mmseg ``slide_inference``).

The meta-architecture delegates to :func:`semantic_forward` when its kernel head has ``is_semantic = True``.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "SemanticOptions",
    "normalize_and_pad",
    "cross_entropy_all_pixels",
    "semantic_losses",
    "whole_inference",
    "slide_inference",
    "semantic_inference",
    "semantic_forward",
]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SemanticOptions:
    """Options of the semantic path (from ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``, ``MODEL.KNET.SEMANTIC.*`` and
    ``MODEL.KNET.TEST.{SEMANTIC_MODE, SLIDE_CROP_SIZE, SLIDE_STRIDE}``, ``INPUT.SEMANTIC.CROP_SIZE``).

    ``train_pad_size``: (h, w) every training batch is padded up to (None: only to the largest image)."""

    ignore_value: int = 255
    ce_weight: float = 1.0
    aux_weight: float = 0.4
    test_mode: str = "whole"
    crop_size: Tuple[int, int] = (512, 512)
    stride: Tuple[int, int] = (341, 341)
    train_pad_size: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        if self.test_mode not in ("whole", "slide"):
            raise ValueError(
                f"MODEL.KNET.TEST.SEMANTIC_MODE must be 'whole' or 'slide', got {self.test_mode!r}"
            )
        self.crop_size = _pair(self.crop_size, "MODEL.KNET.TEST.SLIDE_CROP_SIZE")
        self.stride = _pair(self.stride, "MODEL.KNET.TEST.SLIDE_STRIDE")
        if self.train_pad_size is not None:
            self.train_pad_size = _pair(self.train_pad_size, "INPUT.SEMANTIC.CROP_SIZE")

    @classmethod
    def from_config(cls, cfg) -> "SemanticOptions":
        s = cfg.MODEL.KNET.SEMANTIC
        t = cfg.MODEL.KNET.TEST
        return cls(
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            ce_weight=s.CE_WEIGHT,
            aux_weight=s.AUX_LOSS_WEIGHT,
            test_mode=t.SEMANTIC_MODE,
            crop_size=tuple(t.SLIDE_CROP_SIZE),
            stride=tuple(t.SLIDE_STRIDE),
            train_pad_size=_train_pad_size(cfg),
        )


def _train_pad_size(cfg) -> Optional[Tuple[int, int]]:
    sem = cfg.INPUT.get("SEMANTIC", None)
    crop = None if sem is None else sem.get("CROP_SIZE", None)
    if crop is None:
        return None
    return _pair(tuple(crop) if isinstance(crop, (list, tuple)) else crop, "INPUT.SEMANTIC.CROP_SIZE")


def _pair(value, key) -> Tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{key} must be two positive integers (h, w), got {value!r}")
    return value


def _ceil_to(value: int, divisor: int) -> int:
    return value if divisor <= 1 else -(-value // divisor) * divisor


def normalize_and_pad(
    images: Sequence[torch.Tensor],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    labels: Optional[Sequence[torch.Tensor]] = None,
    *,
    min_size: Optional[Tuple[int, int]] = None,
    size_divisibility: int = 0,
    ignore_value: int = 255,
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


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------ losses
def cross_entropy_all_pixels(
    logits: torch.Tensor, target: torch.Tensor, ignore_value: int = 255
) -> torch.Tensor:
    """mmseg 0.x ``CrossEntropyLoss`` on a resized logit map.

    Args:
        logits: (B, C, h, w), resized bilinearly (``align_corners=False``) to the target size.
        target: (B, H, W) int64 class ids, ``ignore_value`` = no loss.
    Returns:
        scalar: the per-pixel CE summed and divided by **all** B*H*W pixels (ignored ones count in the
        denominator), computed in float32 (float64 for float64 logits).
    """
    if logits.dtype != torch.float64:
        logits = logits.float()
    logits = _resize(logits, target.shape[-2:])
    loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_value, reduction="none")
    return loss.mean()


def semantic_losses(
    stage_logits: Sequence[torch.Tensor],
    aux_logits: Optional[torch.Tensor],
    targets: torch.Tensor,
    *,
    ignore_value: int = 255,
    ce_weight: float = 1.0,
    aux_weight: float = 0.4,
) -> Dict[str, torch.Tensor]:
    """Losses of semantic K-Net.

    Args:
        stage_logits: the ``1 + S`` logit maps (B, C, h, w) (generating head, then each update stage).
        aux_logits: (B, C, h', w') of the auxiliary head, or None.
        targets: (B, H, W) int64 labels (padding = ``ignore_value``).
    Returns:
        ``{"loss_ce_s0": ..., "loss_ce_s{S}": ..., "loss_aux": ...}`` (``loss_aux`` only with aux logits and a
        positive weight).
    """
    losses = {}
    for i, logits in enumerate(stage_logits):
        losses[f"loss_ce_s{i}"] = ce_weight * cross_entropy_all_pixels(logits, targets, ignore_value)
    if aux_logits is not None and aux_weight > 0:
        losses["loss_aux"] = aux_weight * cross_entropy_all_pixels(aux_logits, targets, ignore_value)
    return losses


# --------------------------------------------------------------------------------------------- inference
def whole_inference(logits_fn: LogitsFn, image: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w) normalised image -> (1, C, h, w) logits: the network on the image as it is, resized
    back."""
    return _resize(logits_fn(image), image.shape[-2:])


def slide_inference(
    logits_fn: LogitsFn, image: torch.Tensor, crop_size: Tuple[int, int], stride: Tuple[int, int]
) -> torch.Tensor:
    """Sliding-window logits, as mmseg ``EncoderDecoder.slide_inference``.

    Windows of ``crop_size`` = (h_crop, w_crop) start every ``stride`` pixels; the last window of a row/column
    is shifted back to end at the border; a side shorter than the window gives one window of that side's
    length (so an image smaller than the window is run whole). The logits of every window are resized to the
    window, summed into place and divided by the number of windows covering each pixel.

    Args:
        image: (B, 3, h, w) normalised images.
    Returns:
        (B, C, h, w) logits.
    """
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    _, _, h_img, w_img = image.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = None
    count = image.new_zeros((1, 1, h_img, w_img))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * h_stride + h_crop, h_img)
            x2 = min(wi * w_stride + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_logits = _resize(logits_fn(image[:, :, y1:y2, x1:x2]), (y2 - y1, x2 - x1))
            if preds is None:
                preds = crop_logits.new_zeros((image.shape[0], crop_logits.shape[1], h_img, w_img))
            preds[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def semantic_inference(
    logits_fn: LogitsFn,
    images: Sequence[torch.Tensor],
    output_sizes: Sequence[Tuple[int, int]],
    *,
    mode: str = "whole",
    crop_size: Tuple[int, int] = (512, 512),
    stride: Tuple[int, int] = (341, 341),
) -> List[Dict[str, torch.Tensor]]:
    """Per-image semantic probabilities.

    Args:
        logits_fn: (1, 3, h, w) normalised image -> (1, C, h', w') last-stage logits.
        images: normalised (3, h, w) images (unpadded).
        output_sizes: (height, width) of each original image.
        mode: "whole" or "slide".
    Returns:
        one ``{"sem_seg": (C, height, width)}`` per image: softmax over classes of the logits resized to the
        network input and then to the original size.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"MODEL.KNET.TEST.SEMANTIC_MODE must be 'whole' or 'slide', got {mode!r}")
    results = []
    for image, out_size in zip(images, output_sizes):
        x = image.unsqueeze(0)
        if mode == "whole":
            logits = whole_inference(logits_fn, x)
        else:
            logits = slide_inference(logits_fn, x, crop_size, stride)
        logits = _resize(logits, tuple(int(s) for s in out_size))
        results.append({"sem_seg": logits[0].softmax(dim=0)})
    return results


# ----------------------------------------------------------------------------------------- the full path
def semantic_forward(
    batched_inputs: List[dict],
    *,
    backbone,
    pixel_decoder,
    kernel_head,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int = 32,
    options: Optional[SemanticOptions] = None,
):
    """``KNet.forward`` for a semantic kernel head (``kernel_head.is_semantic``).

    Args:
        batched_inputs: detectron2 dicts with ``image`` (3, H, W) uint8 and, in training, ``sem_seg`` (H, W)
            int64 (255 = ignore); ``height``/``width`` give the output size at inference.
        backbone, pixel_decoder, kernel_head: the model's modules; the training mode is ``kernel_head``'s.
        pixel_mean, pixel_std: (3, 1, 1) tensors on the model's device.
        size_divisibility: training batches are padded (see :func:`normalize_and_pad`: to at least
            ``options.train_pad_size``, then) to a multiple of it, images with 0 after normalisation, labels
            with the ignore value.
        options: defaults to ``kernel_head.semantic_options``.
    Returns:
        training: the loss dict of :func:`semantic_losses`; inference: a list of ``{"sem_seg": (C, H, W)}``.
    """
    options = options or getattr(kernel_head, "semantic_options", None) or SemanticOptions()
    device = pixel_mean.device

    def logits_fn(x: torch.Tensor):
        dec = pixel_decoder(backbone(x))
        return kernel_head(dec["feat"], dec["init_kernels"], dec["init_logits"])

    if kernel_head.training:
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError(
                "semantic K-Net training needs 'sem_seg' in every input dict; use a semantic mapper "
                "(INPUT.DATASET_MAPPER_NAME 'knet_semantic') on a dataset with sem_seg_file_name"
            )
        batch, targets = normalize_and_pad(
            [x["image"].to(device) for x in batched_inputs],
            pixel_mean,
            pixel_std,
            [x["sem_seg"].to(device) for x in batched_inputs],
            min_size=options.train_pad_size,
            size_divisibility=size_divisibility,
            ignore_value=options.ignore_value,
        )
        dec = pixel_decoder(backbone(batch))
        stage_logits = kernel_head(dec["feat"], dec["init_kernels"], dec["init_logits"])
        return semantic_losses(
            stage_logits,
            dec.get("aux_logits"),
            targets,
            ignore_value=options.ignore_value,
            ce_weight=options.ce_weight,
            aux_weight=options.aux_weight,
        )

    images = [(x["image"].to(device) - pixel_mean) / pixel_std for x in batched_inputs]
    output_sizes = [
        (x.get("height", img.shape[-2]), x.get("width", img.shape[-1]))
        for x, img in zip(batched_inputs, images)
    ]
    return semantic_inference(
        logits_fn,
        images,
        output_sizes,
        mode=options.test_mode,
        crop_size=options.crop_size,
        stride=options.stride,
    )
