"""``--source mmdet-knet``: the official K-Net detection checkpoints (ResNet-50/101, R-101-DCN) fill the
models built from our configs exactly (every checkpoint tensor lands on a model tensor of the same shape and
every model tensor is filled), with the official parameter counts, and load through ``KNetCheckpointer``.

The official layouts come from :mod:`support.official_layouts` (names and shapes, written independently of
:mod:`knet.checkpoint`).
"""
import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from support.conversion_targets import assert_fills_exactly, det_cfg, meta_state_dict
from support.official_layouts import official_mmdet_knet

from knet.checkpoint import convert_checkpoint, convert_state_dict, save_checkpoint
from knet.checkpoint.checkpointer import KNetCheckpointer


@pytest.mark.parametrize(
    "backbone,depth,num_classes,n_in,n_mapped",
    [("r50", 50, 133, 502, 449), ("r50", 50, 80, 502, 449), ("r101", 101, 133, 808, 704)],
    ids=["R50-panoptic", "R50-instance", "R101-panoptic"],
)
def test_official_det_checkpoint_fills_model(backbone, depth, num_classes, n_in, n_mapped):
    ckpt = official_mmdet_knet(backbone, num_classes)
    target = meta_state_dict(det_cfg(depth, num_classes))
    result = convert_checkpoint(ckpt, "mmdet-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (n_in, n_mapped, n_in - n_mapped)
    assert set(s.dropped_by_reason()) == {"BatchNorm step counter (num_batches_tracked)"}
    assert s.mapped["neck"] == 16 and s.mapped["pixel_decoder"] == 27 and s.mapped["kernel_head"] == 141
    assert s.dropped_top_level == ["meta"]
    assert result.metadata["classes"] == [f"class{i}" for i in range(num_classes)]
    assert result.metadata["num_classes"] == num_classes
    # the official parameter counts, from the converted tensors (learnable leaves only)
    sd = result.state_dict
    per_stage = sum(v.numel() for k, v in sd.items() if k.startswith("kernel_head.update_heads.0."))
    assert per_stage == {80: 2_062_416, 133: 2_076_037}[num_classes]
    fpn = sum(v.numel() for k, v in sd.items() if k.startswith("backbone.fpn_"))
    assert fpn == 3_344_384
    rpn = sum(
        v.numel()
        for k, v in sd.items()
        if k.startswith(("pixel_decoder.", "kernel_head.")) and ".update_heads." not in k
    )
    assert rpn == {80: 4_442_704, 133: 4_456_325}[num_classes]
    # a few renames spelled out
    assert "backbone.bottom_up.res5.2.conv3.norm.running_var" in sd
    assert "kernel_head.update_heads.2.ffn.linear2.bias" in sd
    assert "kernel_head.update_heads.1.attention.in_proj_weight" in sd
    assert "pixel_decoder.convs_all_levels.3.conv2.norm.weight" in sd


def test_official_det_checkpoint_loads_through_knet_checkpointer(tmp_path):
    """The converted file loads as MODEL.WEIGHTS does: zero missing, zero unexpected, zero wrong shapes."""
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get("KNet")(det_cfg(50, 133))
    model = model.to_empty(device="cpu")  # uninitialised: every value must come from the file
    ckpt = official_mmdet_knet("r50", 133, device="cpu")
    result = convert_checkpoint(ckpt, "mmdet-knet", model.state_dict())
    sd_in, out = ckpt["state_dict"], result.state_dict
    pairs = {
        "backbone.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.layer3.0.downsample.1.running_mean": "backbone.bottom_up.res4.0.shortcut.norm.running_mean",
        "neck.fpn_convs.3.conv.bias": "backbone.fpn_output5.bias",
        "rpn_head.localization_fpn.aux_convs.0.gn.bias": "pixel_decoder.aux_convs.0.norm.bias",
        "rpn_head.loc_convs.0.conv.weight": "kernel_head.loc_convs.0.weight",
        "roi_head.mask_head.2.kernel_update_conv.dynamic_layer.weight": (
            "kernel_head.update_heads.2.kernel_update_conv.dynamic_layer.weight"
        ),
        "roi_head.mask_head.0.attention.attn.out_proj.weight": (
            "kernel_head.update_heads.0.attention.out_proj.weight"
        ),
        "roi_head.mask_head.1.feat_transform.conv.weight": "kernel_head.update_heads.1.feat_transform.weight",
    }
    for src, dst in pairs.items():
        assert torch.equal(sd_in[src], out[dst]), (src, dst)
    path = tmp_path / "knet_r50_panoptic.safetensors"
    save_checkpoint(result.to_checkpoint(), path)
    incompatible = KNetCheckpointer(model)._load_model(KNetCheckpointer(model)._load_file(str(path)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    sd = model.state_dict()
    assert torch.equal(
        sd["kernel_head.init_kernels.weight"], result.state_dict["kernel_head.init_kernels.weight"]
    )
    assert torch.equal(
        sd["backbone.bottom_up.res3.1.conv2.norm.running_var"],
        result.state_dict["backbone.bottom_up.res3.1.conv2.norm.running_var"],
    )


def test_r101_dcn_names_match_detectron2_deformable_resnet():
    """R-101-DCN at the naming level (detectron2's deformable conv is a compiled op we do not have): the
    converted backbone names and shapes equal those of detectron2's ResNet with DEFORM_ON_PER_STAGE c3-c5."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = det_cfg(101, 133)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = False
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
    with torch.device("meta"):
        bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    target_bb = {"backbone.bottom_up." + k: v for k, v in bottom_up.state_dict().items()}
    converted, summary = convert_state_dict(official_mmdet_knet("r101_dcn")["state_dict"], "mmdet-knet")
    conv_bb = {k: v for k, v in converted.items() if k.startswith("backbone.bottom_up.")}
    assert_fills_exactly(conv_bb, target_bb)
    offsets = [k for k in converted if k.endswith("conv2_offset.weight")]
    assert len(offsets) == 4 + 23 + 3  # every block of res3-res5
    assert tuple(converted["backbone.bottom_up.res4.7.conv2_offset.weight"].shape) == (18, 256, 3, 3)
    assert not any(k.startswith("backbone.bottom_up.res2.") and "offset" in k for k in converted)
    assert (summary.num_input_keys, summary.num_mapped, summary.num_dropped) == (868, 764, 104)
