from . import semantic_kernel_head  # noqa: F401  (registers KNetSemanticKernelHead)
from . import knet_kernel_head  # noqa: F401  (registers KNetKernelHead)
