"""K-Net modeling: importing this module registers every model component."""
from . import backbone, kernel_head, pixel_decoder  # noqa: F401  (register backbones, decoders, heads)
from .meta_arch import KNet  # noqa: F401  (registers the KNet meta-architecture)
from .registry import (  # noqa: F401
    KNET_KERNEL_HEAD_REGISTRY,
    KNET_PIXEL_DECODER_REGISTRY,
    build_kernel_head,
    build_pixel_decoder,
)
