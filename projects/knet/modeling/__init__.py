"""K-Net modeling: importing this module registers every model component (backbones, pixel decoders, decode
heads, kernel heads and the ``KNet`` / ``KNetSemantic`` meta-architectures)."""
from . import backbone, decode_head, kernel_head, pixel_decoder  # noqa: F401  (register the components)
from .meta_arch import KNet, KNetSemantic  # noqa: F401  (register the meta-architectures)
from .registry import (  # noqa: F401
    KNET_DECODE_HEAD_REGISTRY,
    KNET_KERNEL_HEAD_REGISTRY,
    KNET_PIXEL_DECODER_REGISTRY,
    KNET_SEMANTIC_KERNEL_HEAD_REGISTRY,
    build_decode_head,
    build_kernel_head,
    build_pixel_decoder,
    build_semantic_kernel_head,
)
