"""The K-Net meta-architectures (registered in detectron2's ``META_ARCH_REGISTRY``): :class:`KNet`
(instance / panoptic) and :class:`KNetSemantic` (semantic, the ADE20K models)."""
from .knet import KNet, postprocess_image
from .knet_semantic import KNetSemantic, normalize_and_pad

__all__ = ["KNet", "KNetSemantic", "postprocess_image", "normalize_and_pad"]
