"""Predict and draw K-Net outputs on images and videos (used by ``demo/demo.py``).

Built on detectron2's ``DefaultPredictor`` (resize, format, no-grad forward) and ``Visualizer``. Unlike the
Mask2Former-family demos, ``confidence_threshold`` really filters what is drawn:

* instance: detections scoring below it are not drawn;
* panoptic: thing segments scoring below it are dropped (their pixels become unlabeled); stuff is kept;
* semantic: pixels whose top class probability is below it are left undrawn.
"""
import logging
from typing import Optional, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine.defaults import DefaultPredictor
from detectron2.structures import BitMasks, Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..checkpoint.checkpointer import KNetCheckpointer

__all__ = [
    "TASKS",
    "KNetPredictor",
    "VisualizationDemo",
    "filter_instances",
    "filter_panoptic",
    "filter_sem_seg",
]

logger = logging.getLogger(__name__)

TASKS = ("panoptic", "instance", "semantic")
_OUTPUT_KEY = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}
_UNLABELED = 255  # semantic pixels left undrawn (Visualizer.draw_sem_seg skips labels >= len(stuff_classes))


def filter_instances(instances: Instances, threshold: float) -> Instances:
    """Keep the detections with ``scores >= threshold``."""
    return instances[instances.scores >= threshold]


def _without_boxes(instances: Instances) -> Instances:
    """K-Net is box-free: draw masks with their labels at the masks, not (derived) boxes."""
    fields = {k: v for k, v in instances.get_fields().items() if k != "pred_boxes"}
    return Instances(instances.image_size, **fields)


def _with_boxes(instances: Instances) -> Instances:
    """detectron2's ``VideoVisualizer`` tracks colours by box overlap: give it the masks' bounding boxes."""
    if not instances.has("pred_boxes") and instances.has("pred_masks"):
        instances.pred_boxes = BitMasks(instances.pred_masks).get_bounding_boxes()
    return instances


def filter_panoptic(panoptic_seg: torch.Tensor, segments_info, threshold: float, void_id: int = 0):
    """Drop the thing segments whose ``score`` is below ``threshold``.

    Args:
        panoptic_seg: (H, W) int segment ids.
        segments_info: list of dicts with ``id``, ``category_id``, ``isthing`` and (things) ``score``.
        threshold: minimum score of a thing segment.
        void_id: the id given to the pixels of dropped segments (not in ``segments_info``).

    Returns:
        (panoptic_seg (H, W) with dropped pixels set to ``void_id``, the kept ``segments_info``). Segments
        without a ``score`` are kept.
    """
    kept, dropped = [], []
    for s in segments_info:
        if s.get("isthing", False) and s.get("score", 1.0) < threshold:
            dropped.append(s["id"])
        else:
            kept.append(dict(s))
    if dropped:
        panoptic_seg = panoptic_seg.clone()
        panoptic_seg[torch.isin(panoptic_seg, torch.as_tensor(dropped, dtype=panoptic_seg.dtype))] = void_id
    return panoptic_seg, kept


def filter_sem_seg(sem_seg: torch.Tensor, threshold: float) -> torch.Tensor:
    """(C, H, W) per-class scores → (H, W) int64 labels, with ``255`` where the top probability is below
    ``threshold``. Scores outside [0, 1] are treated as logits (softmax over C)."""
    probs = sem_seg.float()
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        probs = probs.softmax(dim=0)
    top, labels = probs.max(dim=0)
    labels = labels.to(torch.int64)
    labels[top < threshold] = _UNLABELED
    return labels


def _drawing_metadata(metadata, num_thing_classes: int):
    """The Visualizer indexes ``stuff_classes`` with the contiguous id of every class (detectron2's standard
    panoptic convention: ``stuff_classes`` lists all classes). When a dataset lists only its stuff classes
    (contiguous ids ``T..C-1``), draw with ``thing_classes + stuff_classes`` instead."""
    things = list(metadata.get("thing_classes", []) or [])
    stuff = list(metadata.get("stuff_classes", []) or [])
    if things and stuff and len(things) == num_thing_classes and stuff[: len(things)] != things:
        name = f"__knet_demo_{metadata.name}"
        meta = MetadataCatalog.get(name)
        if meta.get("stuff_classes", None) is None:
            colors = list(metadata.get("thing_colors", []) or [])
            colors += list(metadata.get("stuff_colors", []) or [])
            fields = {"thing_classes": things, "stuff_classes": things + stuff}
            if len(colors) == len(things) + len(stuff):
                fields.update(thing_colors=colors[: len(things)], stuff_colors=colors)
            meta.set(**fields)
        return meta
    return metadata


class KNetPredictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` whose weights are loaded with ``KNetCheckpointer`` (safe loading,
    official K-Net checkpoint conversion) instead of ``DetectionCheckpointer``."""

    def __init__(self, cfg):
        weights = cfg.MODEL.WEIGHTS
        no_weights = cfg.clone()
        no_weights.defrost()
        no_weights.MODEL.WEIGHTS = ""
        super().__init__(no_weights)
        self.cfg = cfg.clone()
        if weights:
            KNetCheckpointer(self.model).load(weights)
        else:
            logger.warning("MODEL.WEIGHTS is empty: the model has random weights.")


class VisualizationDemo:
    """Run K-Net on BGR images / video frames and draw one task's output.

    Args:
        cfg: the config (``DATASETS.TEST[0]`` names the metadata used for class names and colours).
        task: "panoptic", "instance" or "semantic".
        confidence_threshold: see the module docstring.
        instance_mode: detectron2 ``ColorMode`` of the drawing.
    """

    def __init__(self, cfg, task: str = "panoptic", confidence_threshold: float = 0.5,
                 instance_mode=ColorMode.IMAGE):
        if task not in TASKS:
            raise ValueError(f"Unknown task '{task}': expected one of {', '.join(TASKS)}.")
        self.task = task
        self.confidence_threshold = float(confidence_threshold)
        self.instance_mode = instance_mode
        self.cpu_device = torch.device("cpu")
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        num_things = cfg.MODEL.KNET.NUM_THING_CLASSES if hasattr(cfg.MODEL, "KNET") else 0
        self.metadata = _drawing_metadata(MetadataCatalog.get(name), num_things)
        self.predictor = KNetPredictor(cfg)

    def _filtered(self, predictions: dict):
        key = _OUTPUT_KEY[self.task]
        if key not in predictions:
            raise KeyError(
                f"The model returned {sorted(predictions)} but task '{self.task}' needs '{key}': enable it "
                "with "
                f"MODEL.KNET.TEST.{self.task.upper()}_ON True (demo.py sets it from --task)."
            )
        out = predictions[key]
        if self.task == "instance":
            return filter_instances(out.to(self.cpu_device), self.confidence_threshold)
        if self.task == "panoptic":
            panoptic_seg, segments_info = out
            return filter_panoptic(panoptic_seg.to(self.cpu_device), segments_info, self.confidence_threshold)
        return filter_sem_seg(out.to(self.cpu_device), self.confidence_threshold)

    def run_on_image(self, image: np.ndarray) -> Tuple[dict, object, object]:
        """
        Args:
            image: (H, W, 3) uint8 BGR image (``cv2.imread`` / ``read_image(format="BGR")``).

        Returns:
            (predictions of the model, what was drawn after thresholding (``Instances``,
            ``(panoptic_seg, segments_info)`` or (H, W) labels), the ``VisImage`` of size (H, W)).
        """
        predictions = self.predictor(image)
        drawn = self._filtered(predictions)
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=self.instance_mode)
        if self.task == "instance":
            vis = visualizer.draw_instance_predictions(predictions=_without_boxes(drawn))
        elif self.task == "panoptic":
            vis = visualizer.draw_panoptic_seg(drawn[0], drawn[1])
        else:
            vis = visualizer.draw_sem_seg(drawn)
        return predictions, drawn, vis

    def run_on_video(self, video, max_frames: Optional[int] = None):
        """Yield the drawn frames (BGR uint8) of a ``cv2.VideoCapture``."""
        video_visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        count = 0
        while video.isOpened() and (max_frames is None or count < max_frames):
            ok, frame = video.read()
            if not ok:
                break
            count += 1
            drawn = self._filtered(self.predictor(frame))
            rgb = frame[:, :, ::-1]
            if self.task == "instance":
                vis = video_visualizer.draw_instance_predictions(rgb, _with_boxes(drawn))
            elif self.task == "panoptic":
                vis = video_visualizer.draw_panoptic_seg_predictions(rgb, drawn[0], drawn[1])
            else:
                vis = video_visualizer.draw_sem_seg(rgb, drawn)
            yield np.ascontiguousarray(vis.get_image()[:, :, ::-1])
