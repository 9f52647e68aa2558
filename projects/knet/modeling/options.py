"""Typed inference and loss options of the K-Net meta-architectures, read from the config.

Every default lives in :mod:`knet.config` (``add_knet_config``); these objects only carry the values and
validate them, so a wrong value fails when the model is built.

* :class:`PostprocessOptions`: ``MODEL.KNET.TEST.*`` of ``KNet`` and of the onnxruntime-backed ``KNetONNX``
  (official ``test_cfg`` of ZwwWayne/K-Net ``configs/det/_base_/models/knet_s3_r50_fpn*.py``).
* :class:`SemanticOptions`: the losses and inference mode of ``KNetSemantic`` and ``KNetONNX`` for semantic
  models (mmsegmentation ``configs/knet/*``: ``loss_decode``, ``auxiliary_head.loss_decode``, ``test_cfg``).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from .postprocessing import resolve_panoptic_mode

__all__ = ["PostprocessOptions", "SemanticOptions"]


@dataclass(frozen=True)
class PostprocessOptions:
    """Which outputs ``KNet`` produces and how (``MODEL.KNET.TEST``)."""

    panoptic_on: bool  # PANOPTIC_ON
    instance_on: bool  # INSTANCE_ON
    semantic_on: bool  # SEMANTIC_ON
    max_per_image: int  # MAX_PER_IMAGE
    mask_threshold: float  # MASK_THRESHOLD
    instance_score_threshold: float  # INSTANCE_SCORE_THRESHOLD
    thing_score_threshold: float  # PANOPTIC_THING_SCORE_THRESHOLD
    overlap_threshold: float  # OVERLAP_THRESHOLD
    soft_boundaries: bool  # SOFT_BOUNDARIES
    panoptic_mode: str  # PANOPTIC_MODE, resolved with SOFT_BOUNDARIES (a wrong value fails here)

    @classmethod
    def from_config(cls, cfg) -> "PostprocessOptions":
        t = cfg.MODEL.KNET.TEST
        return cls(
            panoptic_on=t.PANOPTIC_ON,
            instance_on=t.INSTANCE_ON,
            semantic_on=t.SEMANTIC_ON,
            max_per_image=t.MAX_PER_IMAGE,
            mask_threshold=t.MASK_THRESHOLD,
            instance_score_threshold=t.INSTANCE_SCORE_THRESHOLD,
            thing_score_threshold=t.PANOPTIC_THING_SCORE_THRESHOLD,
            overlap_threshold=t.OVERLAP_THRESHOLD,
            soft_boundaries=t.SOFT_BOUNDARIES,
            panoptic_mode=resolve_panoptic_mode(t.PANOPTIC_MODE, t.SOFT_BOUNDARIES),
        )


@dataclass
class SemanticOptions:
    """Losses and inference of semantic K-Net (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``,
    ``MODEL.KNET.SEMANTIC.{CE_WEIGHT, AUX_LOSS_WEIGHT}``, ``MODEL.KNET.TEST.{SEMANTIC_MODE, SLIDE_CROP_SIZE,
    SLIDE_STRIDE}``, ``INPUT.SEMANTIC.CROP_SIZE``).

    ``train_pad_size``: (h, w) every training batch is padded up to (None: only to the largest image)."""

    ignore_value: int
    ce_weight: float
    aux_weight: float
    test_mode: str
    crop_size: Tuple[int, int]
    stride: Tuple[int, int]
    train_pad_size: Optional[Tuple[int, int]]

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
    crop = cfg.INPUT.SEMANTIC.CROP_SIZE
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
