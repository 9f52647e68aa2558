from . import resnet_v1c  # noqa: F401  (registers build_knet_resnet_v1c_backbone)
from . import resnet_fpn  # noqa: F401  (registers build_knet_resnet_fpn_backbone)
from . import swin  # noqa: F401  (registers build_knet_swin_backbone)
from . import swin_fpn  # noqa: F401  (registers build_knet_swin_fpn_backbone)
