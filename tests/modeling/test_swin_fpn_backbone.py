"""``build_knet_swin_fpn_backbone``: the panoptic Swin + FPN backbone (detectron2 FPN names, P2-P5)."""
import pytest
import torch
from support.conversion_targets import pan_cfg


def test_swin_fpn_backbone_outputs_p2_to_p5():
    """``build_knet_swin_fpn_backbone`` on a tiny Swin: detectron2 FPN names, P2-P5 only (no P6), strides
    4-32."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    cfg = pan_cfg(
        "knet_swinL_ms3x.yaml",
        "MODEL.KNET.SWIN.EMBED_DIM", "8",
        "MODEL.KNET.SWIN.DEPTHS", "[2, 2, 2, 2]",
        "MODEL.KNET.SWIN.NUM_HEADS", "[1, 2, 2, 4]",
        "MODEL.KNET.SWIN.WINDOW_SIZE", "3",
        "MODEL.FPN.OUT_CHANNELS", "16",
    )
    torch.manual_seed(0)
    bb = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3)).eval()
    names = {k.split(".")[0] for k in bb.state_dict()}
    assert names == {"bottom_up", *(f"fpn_{t}{lvl}" for t in ("lateral", "output") for lvl in range(2, 6))}
    assert bb.size_divisibility == 32
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        f"p{lvl}": (16, 2**lvl) for lvl in range(2, 6)
    }
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{lvl}": (1, 16, 64 >> lvl, 96 >> lvl) for lvl in range(2, 6)
    }
    assert all(torch.isfinite(v).all() and v.std() > 0 for v in out.values())
    bad = pan_cfg("knet_swinL_ms3x.yaml", "MODEL.RESNETS.OUT_FEATURES", '["res3", "res4", "res5"]')
    with pytest.raises(ValueError, match=r"MODEL.FPN.IN_FEATURES .*MODEL.RESNETS.OUT_FEATURES"):
        with torch.device("meta"):
            BACKBONE_REGISTRY.get(bad.MODEL.BACKBONE.NAME)(bad, ShapeSpec(channels=3))
