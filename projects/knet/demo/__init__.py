"""K-Net demo helpers: ``VisualizationDemo`` (predict + draw with a working confidence threshold)."""
from .predictor import *  # noqa: F401,F403  (the public names are listed in predictor.__all__)
from .predictor import __all__  # noqa: F401
