"""``--source mmseg-knet``: mmsegmentation's K-Net checkpoints (FCN / PSP / DeepLabv3 / UPerNet on R-50-D8,
UPerNet on Swin) fill the semantic models built from our configs; the auxiliary head is optional."""
import pytest
from support.conversion_targets import assert_fills_exactly, meta_state_dict, sem_cfg
from support.official_layouts import official_mmseg_knet

from knet.checkpoint import convert_checkpoint, convert_state_dict


@pytest.mark.parametrize(
    "head,config,n_in,n_mapped",
    [
        ("fcn", "knet_fcn_R50.yaml", 475, 416),
        ("psp", "knet_psp_R50.yaml", 487, 426),
        ("aspp", "knet_deeplabv3_R50.yaml", 493, 431),
        ("uper", "knet_upernet_R50.yaml", 529, 461),
    ],
)
def test_official_mmseg_checkpoint_fills_model(head, config, n_in, n_mapped):
    target = meta_state_dict(sem_cfg(config))
    result = convert_checkpoint(official_mmseg_knet(head), "mmseg-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (n_in, n_mapped, n_in - n_mapped)
    assert s.mapped["auxiliary_head"] == 7 and s.mapped["kernel_head"] == 117
    assert result.metadata["classes"][:2] == ["c0", "c1"] and result.metadata["num_classes"] == 150
    per_stage = sum(
        v.numel() for k, v in result.state_dict.items() if k.startswith("kernel_head.update_heads.1.")
    )
    assert per_stage == 4_403_968  # official count: a 512-wide seg update head with the 256-wide updator


def test_mmseg_auxiliary_head_dropped_when_model_has_none():
    target = meta_state_dict(sem_cfg("knet_psp_R50.yaml", "MODEL.KNET.SEMANTIC.AUX_LOSS_WEIGHT", "0.0"))
    assert not any("auxiliary_head" in k for k in target)
    result = convert_checkpoint(official_mmseg_knet("psp"), "mmseg-knet", target)
    assert_fills_exactly(result.state_dict, target)
    assert sum("auxiliary FCN head" in r for _, r in result.summary.dropped) == 7


def test_mmseg_swin_upernet_names():
    for backbone, n_in, n_mapped in [("swin_t", 388, 375), ("swin_l", 556, 543)]:
        converted, s = convert_state_dict(official_mmseg_knet("uper", backbone)["state_dict"], "mmseg-knet")
        assert (s.num_input_keys, s.num_mapped) == (n_in, n_mapped)
        assert "backbone.layers.3.blocks.1.attn.proj.bias" in converted
        assert "pixel_decoder.fpn_bottleneck.norm.running_var" in converted
