"""K-Net's own registries. Names registered here carry a ``KNet`` prefix so they never clash with
other detectron2 add-ons imported in the same process (fvcore registries reject duplicates)."""
from detectron2.utils.registry import Registry

KNET_PIXEL_DECODER_REGISTRY = Registry("KNET_PIXEL_DECODER")
KNET_PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders of K-Net: they turn backbone features into the feature maps the kernels convolve
(the semantic-FPN "localization FPN" for panoptic/instance; FCN/PSP/ASPP/UPerNet heads for semantic).
Built by ``build_pixel_decoder(cfg, input_shape)`` from ``MODEL.KNET.PIXEL_DECODER.NAME``.
"""

KNET_KERNEL_HEAD_REGISTRY = Registry("KNET_KERNEL_HEAD")
KNET_KERNEL_HEAD_REGISTRY.__doc__ = """
Kernel heads of K-Net: initial kernels plus the iterative kernel update stages.
Built by ``build_kernel_head(cfg)`` from ``MODEL.KNET.KERNEL_HEAD.NAME``.
"""


def build_pixel_decoder(cfg, input_shape):
    """Build the pixel decoder named by ``MODEL.KNET.PIXEL_DECODER.NAME``."""
    return KNET_PIXEL_DECODER_REGISTRY.get(cfg.MODEL.KNET.PIXEL_DECODER.NAME)(cfg, input_shape)


def build_kernel_head(cfg):
    """Build the kernel head named by ``MODEL.KNET.KERNEL_HEAD.NAME``."""
    return KNET_KERNEL_HEAD_REGISTRY.get(cfg.MODEL.KNET.KERNEL_HEAD.NAME)(cfg)
