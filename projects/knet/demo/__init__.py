"""K-Net demo helpers: ``VisualizationDemo`` (predict + draw with a working confidence threshold)."""
from .predictor import (  # noqa: F401
    TASKS,
    KNetPredictor,
    VisualizationDemo,
    filter_instances,
    filter_panoptic,
    filter_sem_seg,
)

__all__ = [
    "TASKS",
    "KNetPredictor",
    "VisualizationDemo",
    "filter_instances",
    "filter_panoptic",
    "filter_sem_seg",
]
