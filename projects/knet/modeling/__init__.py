"""K-Net modeling: importing this module registers every model component."""
from .registry import (  # noqa: F401
    KNET_KERNEL_HEAD_REGISTRY,
    KNET_PIXEL_DECODER_REGISTRY,
    build_kernel_head,
    build_pixel_decoder,
)
