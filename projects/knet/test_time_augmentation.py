"""Multi-scale + flip test-time augmentation for semantic K-Net.

The paper's multi-scale ADE20K numbers (mmsegmentation ``configs/knet/README.md``, "mIoU (ms+flip)") come from
mmseg's ``MultiScaleFlipAug`` with ``img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]`` and ``flip=True`` around
the test scale (2048, 512), and ``EncoderDecoder.aug_test``: every augmented view is run, its logits are
resized to the original image and turned into probabilities by a softmax, flipped views are flipped back, and
the probability maps are averaged (mmseg ``EncoderDecoder.aug_test``).

:class:`KNetSemanticTTA` wraps a semantic model (``KNetSemantic``, or any model that returns detectron2's
``{"sem_seg": (C, H, W)}`` probabilities at the input's ``height``/``width``). Like detectron2's
``DatasetMapperTTA`` it augments the image the test mapper produced: for a ratio r the image is resized
(keeping its aspect ratio, bilinear) so that its short side is ``r * INPUT.MIN_SIZE_TEST`` and its long side
at most ``r * INPUT.MAX_SIZE_TEST``. Enabled in the trainer by ``TEST.AUG.ENABLED``; ratios in
``TEST.AUG.RATIOS``, flip in ``TEST.AUG.FLIP``.
"""
import copy
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data.transforms import ResizeShortestEdge, ResizeTransform
from torch import nn

__all__ = ["KNetSemanticTTA", "semantic_tta_views"]


def semantic_tta_views(
    dataset_dict: dict, ratios: Sequence[float], min_size: int, max_size: int, flip: bool
) -> List[dict]:
    """The augmented copies of one input dict.

    Args:
        dataset_dict: a model input with ``image`` (3, h, w) uint8 (``height``/``width`` default to h, w).
        ratios: scale ratios r; the view is resized so its short side is ``r * min_size`` and its long side at
            most ``r * max_size`` (detectron2 ``ResizeShortestEdge.get_output_shape`` rounding).
        flip: also add the horizontally flipped copy of every scale.
    Returns:
        dicts with the augmented ``image``, the original ``height``/``width`` and ``flipped`` (bool), ordered
        ratio by ratio (unflipped first).
    """
    image = dataset_dict["image"]
    h, w = image.shape[-2:]
    base = {k: v for k, v in dataset_dict.items() if k != "image"}
    base.setdefault("height", int(h))
    base.setdefault("width", int(w))
    np_image = image.permute(1, 2, 0).cpu().numpy()
    views = []
    for r in ratios:
        newh, neww = ResizeShortestEdge.get_output_shape(h, w, int(min_size * r), int(max_size * r))
        resized = ResizeTransform(h, w, newh, neww).apply_image(np_image)
        scaled = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        for flipped in ([False, True] if flip else [False]):
            view = copy.copy(base)
            view["image"] = torch.flip(scaled, dims=[2]) if flipped else scaled
            view["flipped"] = flipped
            views.append(view)
    return views


class KNetSemanticTTA(nn.Module):
    """Average of the softmax maps of a semantic model over scales and flips (mmseg ``aug_test``)."""

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        ratios: Sequence[float],
        min_size: int,
        max_size: int,
        flip: bool,
    ):
        """
        Args:
            model: a ``KNetSemantic`` (returns ``{"sem_seg": (C, H, W)}`` probabilities per input).
            ratios: ``TEST.AUG.RATIOS``.
            min_size, max_size: ``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST`` (the scale of ratio 1.0).
            flip: ``TEST.AUG.FLIP``.
        """
        super().__init__()
        if len(ratios) == 0:
            raise ValueError("TEST.AUG.RATIOS must list at least one ratio")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.model = model
        self.ratios = [float(r) for r in ratios]
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @classmethod
    def from_config(cls, cfg, model):
        min_size = cfg.INPUT.MIN_SIZE_TEST
        if isinstance(min_size, (list, tuple)):
            min_size = min_size[0]
        return dict(
            model=model,
            ratios=cfg.TEST.AUG.RATIOS,
            min_size=min_size,
            max_size=cfg.INPUT.MAX_SIZE_TEST,
            flip=cfg.TEST.AUG.FLIP,
        )

    @torch.no_grad()
    def forward(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """One ``{"sem_seg": (C, height, width)}`` per input: the mean of the views' probability maps."""
        was_training = self.model.training
        self.model.eval()
        try:
            return [self._inference_one(x) for x in batched_inputs]
        finally:
            self.model.train(was_training)

    def _inference_one(self, dataset_dict: dict) -> Dict[str, torch.Tensor]:
        total = None
        views = semantic_tta_views(dataset_dict, self.ratios, self.min_size, self.max_size, self.flip)
        for view in views:
            flipped = view.pop("flipped")
            prob = self.model([view])[0]["sem_seg"]
            if flipped:
                prob = torch.flip(prob, dims=[2])
            total = prob if total is None else total + prob
        return {"sem_seg": total / len(views)}
