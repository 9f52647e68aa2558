"""K-Net (Zhang, Pang, Chen, Loy, NeurIPS 2021) as a detectron2 add-on.

``import knet`` registers everything the package defines: the ``KNet`` meta-architecture, backbones,
pixel decoders, kernel heads, dataset mappers and datasets.
"""
from .config import add_knet_config
from . import modeling  # noqa: F401  (registers modules)
from . import data  # noqa: F401  (registers mappers and datasets)
from . import export  # noqa: F401  (registers KNetONNX; onnx/onnxruntime are imported only when used)

__all__ = ["add_knet_config"]
