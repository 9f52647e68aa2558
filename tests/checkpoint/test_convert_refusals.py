"""The converter refuses, with a message naming the file and the keys, any checkpoint that does not fit the
source layout or the target model: nothing is returned, so nothing can be written."""
import pytest
import torch
from support.conversion_targets import det_cfg, meta_state_dict, sem_cfg
from support.official_layouts import official_mmdet_knet, official_mmseg_knet

from knet.checkpoint import CheckpointMismatchError, convert_checkpoint


def test_refuses_unknown_key():
    ckpt = official_mmdet_knet("r50", 133)
    ckpt["state_dict"]["roi_head.mask_head.0.extra_layer.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointMismatchError, match=r"roi_head\.mask_head\.0\.extra_layer\.weight") as e:
        convert_checkpoint(ckpt, "mmdet-knet", meta_state_dict(det_cfg(50, 133)), where="bad.pth")
    assert "bad.pth" in str(e.value) and "Nothing was converted" in str(e.value)


def test_refuses_wrong_source():
    with pytest.raises(CheckpointMismatchError, match="do not belong to a 'mmseg-knet' checkpoint"):
        convert_checkpoint(official_mmdet_knet("r50", 80), "mmseg-knet")


def test_refuses_wrong_class_count():
    with pytest.raises(
        CheckpointMismatchError, match=r"predicts 133 classes .* has 80 \(MODEL.KNET.NUM_CLASSES"
    ):
        convert_checkpoint(official_mmdet_knet("r50", 133), "mmdet-knet", meta_state_dict(det_cfg(50, 80)))


def test_refuses_leftover_keys_r101_into_r50():
    with pytest.raises(
        CheckpointMismatchError, match=r"have no place in the model:\s+backbone\.bottom_up\.res4\.6"
    ):
        convert_checkpoint(official_mmdet_knet("r101", 133), "mmdet-knet", meta_state_dict(det_cfg(50, 133)))


def test_refuses_missing_and_shape_mismatch():
    ckpt = official_mmdet_knet("r50", 133)
    del ckpt["state_dict"]["roi_head.mask_head.1.fc_mask.bias"]
    with pytest.raises(
        CheckpointMismatchError, match=r"not in the checkpoint:\s+kernel_head\.update_heads\.1\.fc_mask"
    ):
        convert_checkpoint(ckpt, "mmdet-knet", meta_state_dict(det_cfg(50, 133)))
    # the official-code UPerNet is 256 wide, the mmseg one (our config) 512
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        convert_checkpoint(
            official_mmseg_knet("uper", C=256),
            "mmseg-knet",
            meta_state_dict(sem_cfg("knet_upernet_R50.yaml")),
        )


def test_refuses_non_checkpoint():
    with pytest.raises(CheckpointMismatchError, match="no state dict found"):
        convert_checkpoint({"meta": {}, "epoch": 3}, "mmdet-knet")
