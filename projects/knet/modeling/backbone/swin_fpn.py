"""Swin Transformer + FPN (P2-P5) backbone of the official K-Net Swin-L panoptic model.

Reference: ``ZwwWayne/K-Net:configs/det/knet/knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic.py``
mmdet ``SwinTransformer(embed_dims=192, depths=[2,2,18,2], num_heads=[6,12,24,48],
window_size=7, drop_path_rate=0.2, patch_norm=True, out_indices=(0,1,2,3))`` under the det model's
``FPN(in_channels=[192, 384, 768, 1536], out_channels=256, num_outs=4)``, i.e. P2-P5 and no extra level.
The bottom-up network is :class:`~knet.modeling.backbone.swin.KNetSwinTransformer` (original Swin parameter
names) and the FPN is detectron2's, so the state-dict names are
``backbone.bottom_up.{patch_embed,layers,norm0..3}.*`` and ``backbone.fpn_lateral{2..5}`` /
``backbone.fpn_output{2..5}``, the names ``knet.checkpoint`` converts the official checkpoint
(``--source mmdet-knet``) and the ImageNet Swin weights (``--source swin``) to.

Config: ``MODEL.BACKBONE.NAME: build_knet_swin_fpn_backbone``, the Swin shape in ``MODEL.KNET.SWIN.*``,
``MODEL.RESNETS.OUT_FEATURES`` and ``MODEL.FPN.IN_FEATURES`` = ``res2..res5``. Nothing is frozen (mmdet's
``frozen_stages=-1``), so ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.RESNETS.NORM`` do not apply.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN

from .resnet_fpn import build_knet_fpn
from .swin import build_knet_swin_backbone

__all__ = ["build_knet_swin_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_knet_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """:class:`KNetSwinTransformer` (``bottom_up``) + detectron2 ``FPN`` over ``MODEL.FPN.IN_FEATURES`` with
    **no** top block: outputs ``p2..p5`` (strides 4-32, ``MODEL.FPN.OUT_CHANNELS`` each). The FPN convs are
    initialised xavier-uniform with zero bias (mmdet's FPN default)."""
    bottom_up = build_knet_swin_backbone(cfg, input_shape)
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} asks for {missing}, which the Swin "
            "backbone does not output (MODEL.RESNETS.OUT_FEATURES = "
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)}); list them in MODEL.RESNETS.OUT_FEATURES"
        )
    return build_knet_fpn(cfg, bottom_up)
