"""Deployment: ONNX export of the K-Net inference network and an onnxruntime-backed meta-architecture.

``export_onnx`` (used by ``tools/export_model.py``) writes the network (normalised, padded image in; class
logits and stride-4 mask logits, or the semantic logits, out) with a dynamic image size; ``KNetONNX``
(``MODEL.META_ARCHITECTURE: KNetONNX`` + ``MODEL.KNET.ONNX.MODEL``) runs such a file with onnxruntime and
applies the PyTorch model's post-processing, so ``demo/demo.py`` and ``train_net.py --eval-only`` run it
unchanged. onnx and onnxruntime are optional (``pip install .[export]``); they are imported when used.
"""
from .onnx_export import KNetInferenceNetwork, export_onnx, read_knet_metadata  # noqa: F401
from .onnx_model import KNetONNX  # noqa: F401  (registers the KNetONNX meta-architecture)

__all__ = ["KNetInferenceNetwork", "KNetONNX", "export_onnx", "read_knet_metadata"]
