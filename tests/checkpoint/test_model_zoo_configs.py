"""Every model-zoo inference config: RGB with the recipe's normalisation, the reported number as
``TEST.EXPECTED_RESULTS``, listed in docs/MODEL_ZOO.md, and the official layout of its checkpoint fills its
model exactly."""
import os

import pytest
from detectron2.config import get_cfg
from support.conversion_targets import assert_fills_exactly, meta_state_dict
from support.official_layouts import official_mmdet_knet, official_mmseg_knet
from support.scripts import REPO

from knet import add_knet_config
from knet.checkpoint import check_normalization, convert_checkpoint

_DET, _SEG = official_mmdet_knet, official_mmseg_knet
_SOURCE = {_DET: "mmdet-knet", _SEG: "mmseg-knet"}
_AP, _PQ, _MIOU = ("segm", "AP"), ("panoptic_seg", "PQ"), ("sem_seg", "mIoU")
# configs/model_zoo/<stem>_inference.yaml -> (official layout: builder and its arguments, None for R-101-DCN;
# the expected result; its cell in docs/MODEL_ZOO.md)
_ROWS = {
    "knet_R50_1x_coco_instance": ((_DET, "r50", 80), [*_AP, 34.0], "| 34.0 |"),
    "knet_R101_dcn_ms3x_coco_instance": (None, [*_AP, 40.5], "| 40.5 |"),
    "knet_R50_1x_coco_panoptic": ((_DET, "r50", 133), [*_PQ, 44.3], "| 44.3 |"),
    "knet_R50_ms3x_coco_panoptic": ((_DET, "r50", 133), [*_PQ, 47.1], "| 47.1 |"),
    "knet_R101_ms3x_coco_panoptic": ((_DET, "r101", 133), [*_PQ, 48.4], "| 48.4 |"),
    "knet_R101_dcn_ms3x_coco_panoptic": (None, [*_PQ, 49.6], "| 49.6 |"),
    "knet_fcn_R50_ade20k": ((_SEG, "fcn"), [*_MIOU, 43.60], "| 43.60 (45.12) |"),
    "knet_psp_R50_ade20k": ((_SEG, "psp"), [*_MIOU, 44.18], "| 44.18 (45.58) |"),
    "knet_deeplabv3_R50_ade20k": ((_SEG, "aspp"), [*_MIOU, 45.06], "| 45.06 (46.11) |"),
    "knet_upernet_R50_ade20k": ((_SEG, "uper"), [*_MIOU, 43.45], "| 43.45 (44.07) |"),
    "knet_upernet_swinT_ade20k": ((_SEG, "uper", "swin_t"), [*_MIOU, 45.84], "| 45.84 (46.27) |"),
    "knet_upernet_swinL_512_ade20k": ((_SEG, "uper", "swin_l"), [*_MIOU, 52.05], "| 52.05 (53.24) |"),
    "knet_upernet_swinL_640_ade20k": ((_SEG, "uper", "swin_l"), [*_MIOU, 52.21], "| 52.21 (53.34) |"),
    "knet_swinL_ms3x_coco_panoptic": ((_DET, "swin_l", 133), [*_PQ, 54.6], "| 54.6 |"),
}
MODEL_ZOO = {f"{stem}_inference.yaml": row for stem, row in _ROWS.items()}


def test_every_model_zoo_config_is_checked():
    assert sorted(os.listdir(os.path.join(REPO, "configs", "model_zoo"))) == sorted(MODEL_ZOO)


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_model_zoo_config(name):
    """Each inference config: RGB with the recipe's normalisation, the reported number as EXPECTED_RESULTS,
    listed in docs/MODEL_ZOO.md with that number, and the official layout of its checkpoint fills its model
    exactly.
    """
    layout, expected, doc_cell = MODEL_ZOO[name]
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "model_zoo", name))
    assert cfg.INPUT.FORMAT == "RGB"
    check_normalization(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, "RGB")
    assert [list(r)[:3] for r in cfg.TEST.EXPECTED_RESULTS] == [expected]
    assert cfg.MODEL.WEIGHTS == "weights/" + name.replace("_inference.yaml", ".pth")
    with open(os.path.join(REPO, "docs", "MODEL_ZOO.md")) as f:
        rows = [line for line in f if f"configs/model_zoo/{name})" in line]
    assert len(rows) == 1 and doc_cell in rows[0], rows
    if layout is None:  # R-101-DCN: detectron2's deformable conv is compiled; see the naming-level DCN test
        assert list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) == [False, True, True, True]
        assert not cfg.MODEL.RESNETS.DEFORM_MODULATED and cfg.MODEL.RESNETS.DEPTH == 101
        return
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "BN"] if "SyncBN" in cfg.MODEL.RESNETS.NORM else [])
    target = meta_state_dict(cfg)
    builder, *args = layout
    result = convert_checkpoint(builder(*args), _SOURCE[builder], target)
    assert_fills_exactly(result.state_dict, target)
    assert result.summary.num_mapped > 300
