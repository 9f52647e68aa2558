from . import aspp_head, fcn_head, psp_head, uper_head  # noqa: F401  (semantic kernel-generating heads)
from . import semantic_fpn  # noqa: F401  (registers KNetSemanticFPN)
