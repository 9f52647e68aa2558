"""Pixel decoders of ``KNet`` (``KNET_PIXEL_DECODER_REGISTRY``)."""
from . import localization_fpn  # noqa: F401  (registers KNetLocalizationFPN)
