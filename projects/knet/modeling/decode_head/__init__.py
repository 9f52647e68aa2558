"""Kernel-generating decode heads of ``KNetSemantic`` (``KNET_DECODE_HEAD_REGISTRY``)."""
from . import aspp_head, fcn_head, psp_head, uper_head  # noqa: F401  (register the heads)
