"""Swin backbones: the patch-merging reorder (numerically), the mmdet/mmseg and ImageNet Swin layouts, the
semantic UPerNet models (``backbone.*``) and the panoptic Swin-L + FPN (``backbone.bottom_up.*``)."""
import re

import pytest
import torch
import torch.nn.functional as F
from support.conversion_targets import assert_fills_exactly, meta_state_dict, pan_cfg, sem_cfg
from support.official_layouts import (
    Layout,
    mm_swin_layout,
    official_mmdet_knet,
    official_mmseg_knet,
    official_swin_imagenet,
)

from knet.checkpoint import convert_checkpoint, convert_state_dict
from knet.checkpoint.swin import permute_norm, permute_reduction, unpermute_norm, unpermute_reduction


def _patch_merge_original(x, norm_w, norm_b, red):
    """Swin's PatchMerging (original repo): concat x0 (even rows, even cols), x1 (odd, even), x2 (even, odd),
    x3 (odd, odd) -> LN -> Linear. x: (B, H, W, d)."""
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return F.linear(F.layer_norm(cat, cat.shape[-1:], norm_w, norm_b), red)


def _patch_merge_mm(x, norm_w, norm_b, red):
    """mmdet/mmseg PatchMerging: nn.Unfold(2, stride 2) order (channel-major, then kernel position) -> LN ->
    Linear."""
    B, H, W, d = x.shape
    cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, L, d*4)
    return F.linear(F.layer_norm(cols, cols.shape[-1:], norm_w, norm_b), red).reshape(B, H // 2, W // 2, -1)


def test_swin_patch_merging_unpermute_is_numerically_exact():
    torch.manual_seed(0)
    d = 6
    x = torch.randn(2, 4, 6, d)
    red_mm, nw_mm, nb_mm = torch.randn(2 * d, 4 * d), torch.rand(4 * d) + 0.5, torch.randn(4 * d)
    ref = _patch_merge_mm(x, nw_mm, nb_mm, red_mm)
    ours = _patch_merge_original(x, unpermute_norm(nw_mm), unpermute_norm(nb_mm), unpermute_reduction(red_mm))
    assert torch.allclose(ours, ref, atol=1e-5)
    assert not torch.allclose(_patch_merge_original(x, nw_mm, nb_mm, red_mm), ref, atol=1e-3)  # order matters
    w = torch.randn(2 * d, 4 * d)
    assert torch.equal(permute_reduction(unpermute_reduction(w)), w)
    assert torch.equal(permute_norm(unpermute_norm(w[0])), w[0])


def test_swin_l_det_and_imagenet_names():
    converted, s = convert_state_dict(official_mmdet_knet("swin_l")["state_dict"], "mmdet-knet")
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (541, 541, 0)
    names = set(converted)
    assert "backbone.bottom_up.layers.2.blocks.17.attn.qkv.weight" in names
    assert "backbone.bottom_up.layers.1.downsample.reduction.weight" in names
    assert "backbone.bottom_up.patch_embed.proj.weight" in names and "backbone.bottom_up.norm3.bias" in names
    assert "backbone.bottom_up.layers.0.blocks.0.mlp.fc2.weight" in names
    assert not any(
        "w_msa" in k or "ffn.layers" in k or "stages." in k for k in names if k.startswith("backbone")
    )
    assert sum(k.endswith("reduction.weight") for k in names) == 3
    assert [k for k, _ in s.transformed] == [k for k in converted if ".downsample." in k]

    imnet, s2 = convert_state_dict(official_swin_imagenet()["model"], "swin")
    assert (s2.num_input_keys, s2.num_mapped, s2.num_dropped) == (364, 349, 15)
    reasons = s2.dropped_by_reason()
    assert reasons["ImageNet classifier"] == 2 and sum("attention mask" in r for r in reasons) == 1
    # the ImageNet weights fill exactly the K-Net Swin-L backbone, except the per-output norms it adds
    det_bb = {k for k in converted if k.startswith("backbone.bottom_up.")}
    assert det_bb - set(imnet) == {
        f"backbone.bottom_up.norm{i}.{w}" for i in range(4) for w in ("weight", "bias")
    }
    assert set(imnet) <= det_bb


@pytest.mark.parametrize(
    "config,backbone,n_in,n_mapped,n_backbone",
    [
        ("swin/knet_upernet_swin_tiny.yaml", "swin_t", 388, 363, 177),
        ("swin/knet_upernet_swin_large_512.yaml", "swin_l", 556, 519, 333),
        ("swin/knet_upernet_swin_large_640.yaml", "swin_l", 556, 519, 333),
    ],
)
def test_mmseg_swin_upernet_checkpoint_fills_model(config, backbone, n_in, n_mapped, n_backbone):
    """mmseg K-Net UPerNet Swin-T / Swin-L: every checkpoint tensor lands in the model built from our Swin
    configs and every model tensor is filled; the semantic Swin lives at ``backbone.*`` (no FPN)."""
    target = meta_state_dict(sem_cfg(config))
    result = convert_checkpoint(official_mmseg_knet("uper", backbone), "mmseg-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (n_in, n_mapped, n_in - n_mapped)
    n_blocks = {"swin_t": 12, "swin_l": 24}[backbone]
    assert s.dropped_by_reason() == {
        "BatchNorm step counter (num_batches_tracked)": 13,
        "relative_position_index buffer (recomputed from the window size)": n_blocks,
    }
    assert s.mapped == {"backbone": n_backbone, "pixel_decoder": 62, "kernel_head": 117, "auxiliary_head": 7}
    sd = result.state_dict
    assert not any(k.startswith("backbone.bottom_up.") for k in sd)
    last = {"swin_t": "layers.2.blocks.5", "swin_l": "layers.2.blocks.17"}[backbone]
    assert f"backbone.{last}.attn.relative_position_bias_table" in sd
    leaves = ("norm.weight", "norm.bias", "reduction.weight")
    assert [k for k, _ in s.transformed] == [
        f"backbone.layers.{i}.downsample.{leaf}" for i in range(3) for leaf in leaves
    ]
    embed = {"swin_t": 96, "swin_l": 192}[backbone]
    assert tuple(sd["pixel_decoder.lateral_convs.0.weight"].shape) == (512, embed, 1, 1)
    assert tuple(sd["auxiliary_head.convs.0.weight"].shape) == (256, 4 * embed, 3, 3)


def test_official_swin_l_panoptic_checkpoint_fills_swin_fpn_model():
    """The official K-Net Swin-L panoptic checkpoint (mmdet Swin + FPN) fills the model of
    configs/coco/panoptic-segmentation/knet_swinL_ms3x.yaml: Swin under ``backbone.bottom_up.``, the FPN as
    detectron2's ``fpn_lateral{2..5}`` / ``fpn_output{2..5}`` (no P6)."""
    cfg = pan_cfg("knet_swinL_ms3x.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_knet_swin_fpn_backbone"
    target = meta_state_dict(cfg)
    result = convert_checkpoint(official_mmdet_knet("swin_l", 133), "mmdet-knet", target)
    assert_fills_exactly(result.state_dict, target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (541, 517, 24)
    assert s.mapped == {"backbone": 333, "neck": 16, "pixel_decoder": 27, "kernel_head": 141}
    sd = result.state_dict
    assert {k.split(".")[1] for k in sd if k.startswith("backbone.")} == {
        "bottom_up", *(f"fpn_{kind}{lvl}" for kind in ("lateral", "output") for lvl in range(2, 6))
    }
    for lvl, c in zip(range(2, 6), (192, 384, 768, 1536)):
        assert tuple(sd[f"backbone.fpn_lateral{lvl}.weight"].shape) == (256, c, 1, 1)
    table = "backbone.bottom_up.layers.3.blocks.1.attn.relative_position_bias_table"
    assert tuple(sd[table].shape) == (169, 48)
    assert tuple(sd["backbone.bottom_up.layers.2.downsample.reduction.weight"].shape) == (1536, 3072)


@pytest.mark.parametrize(
    "where,embed,depths,heads,classes,n_in,n_mapped",
    [
        ("semantic Swin-T", 96, (2, 2, 6, 2), (3, 6, 12, 24), 1000, 190, 169),
        ("panoptic Swin-L", 192, (2, 2, 18, 2), (6, 12, 24, 48), 21841, 364, 325),
    ],
)
def test_swin_imagenet_weights_fill_swin_backbones(where, embed, depths, heads, classes, n_in, n_mapped):
    """``--source swin``: the official ImageNet weights fill our Swin backbone wherever the model has it
    (``backbone.*`` in the semantic models, ``backbone.bottom_up.*`` under the FPN): every backbone tensor but
    the new per-output norms ``norm0..3``; the rest of the model keeps its initialisation."""
    if where == "semantic Swin-T":
        cfg, prefix = sem_cfg("swin/knet_upernet_swin_tiny.yaml"), "backbone."
    else:
        cfg, prefix = pan_cfg("knet_swinL_ms3x.yaml"), "backbone.bottom_up."
    target = meta_state_dict(cfg)
    ckpt = official_swin_imagenet(embed, depths, heads)
    ckpt["model"]["head.weight"] = torch.empty(classes, embed * 8, device="meta")
    ckpt["model"]["head.bias"] = torch.empty(classes, device="meta")
    result = convert_checkpoint(ckpt, "swin", target)
    s = result.summary
    assert (s.num_input_keys, s.num_mapped) == (n_in, n_mapped)
    norms = {f"{prefix}norm{i}.{w}" for i in range(4) for w in ("weight", "bias")}
    swin_keys = {k for k in target if k.startswith(prefix) and not k.startswith("backbone.fpn_")}
    assert set(result.state_dict) == swin_keys - norms
    assert all(tuple(v.shape) == tuple(target[k].shape) for k, v in result.state_dict.items())
    assert norms <= set(s.left_to_model)
    assert not any(k.startswith(prefix) for k in set(s.left_to_model) - norms)
    reason = "relative_position_index buffer (recomputed from the window size)"
    assert s.dropped_by_reason()[reason] == sum(depths)


def _tiny_swin(window=3):
    from knet.modeling.backbone.swin import KNetSwinTransformer

    torch.manual_seed(0)
    return KNetSwinTransformer(
        embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=window, drop_path_rate=0.0
    ).eval()


def test_swin_conversion_fills_real_backbone_and_patch_merging_is_numerically_right():
    """A real-valued mmseg-layout Swin (tiny sizes) converted into our ``KNetSwinTransformer``: it loads
    strictly, copies the other tensors unchanged, and our PatchMerging modules with the converted weights
    compute what mmseg's ``nn.Unfold`` patch merging computes with the original ones. mmseg's ImageNet
    re-export of the same weights (``--source swin``, mmseg naming) converts to the same tensors."""
    model = _tiny_swin()
    embed, depths, heads = 8, (2, 2, 2, 2), (1, 2, 2, 4)
    L = Layout("cpu")
    mm_swin_layout(L, "backbone.", embed, depths, heads, window=3)
    gen = torch.Generator().manual_seed(1)
    for k, v in L.sd.items():  # LayerNorm scales in [0.5, 1.5], everything else N(0, 1): no order hides
        if v.is_floating_point() and "norm" in k:
            v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
        elif v.is_floating_point():
            v.copy_(torch.randn(v.shape, generator=gen))
    mm = L.sd
    target = {"backbone." + k: v for k, v in model.state_dict().items()}
    converted, summary = convert_state_dict(mm, "mmseg-knet", target)
    assert set(converted) == set(target)
    assert summary.num_dropped == sum(depths)  # the relative_position_index buffers
    model.load_state_dict({k[len("backbone."):]: v for k, v in converted.items()}, strict=True)
    for ours_t, key in [
        (model.layers[1].blocks[1].attn.qkv.weight, "stages.1.blocks.1.attn.w_msa.qkv.weight"),
        (model.layers[3].blocks[0].mlp.fc1.bias, "stages.3.blocks.0.ffn.layers.0.0.bias"),
        (model.layers[2].blocks[1].attn.relative_position_bias_table,
         "stages.2.blocks.1.attn.w_msa.relative_position_bias_table"),
        (model.patch_embed.proj.weight, "patch_embed.projection.weight"),
        (model.norm2.bias, "norm2.bias"),
    ]:
        assert torch.equal(ours_t, mm["backbone." + key]), key

    with torch.no_grad():
        for i in range(3):
            d = embed * 2**i
            xi = torch.randn(2, 6, 10, d, generator=gen)
            p = f"backbone.stages.{i}.downsample."
            ref = _patch_merge_mm(xi, mm[p + "norm.weight"], mm[p + "norm.bias"], mm[p + "reduction.weight"])
            ours = model.layers[i].downsample(xi.reshape(2, 60, d), 6, 10).reshape(2, 3, 5, 2 * d)
            assert torch.allclose(ours, ref, atol=1e-5), (i, (ours - ref).abs().max())
            # without the reorder the same weights give something else
            raw = _patch_merge_original(
                xi, mm[p + "norm.weight"], mm[p + "norm.bias"], mm[p + "reduction.weight"]
            )
            assert (raw - ref).abs().max() > 0.1
        out = model(torch.randn(2, 3, 24, 40, generator=gen))
    shapes = [tuple(out[f"res{i}"].shape) for i in range(2, 6)]
    assert shapes == [(2, 8, 6, 10), (2, 16, 3, 5), (2, 32, 2, 3), (2, 64, 1, 2)]

    # mmseg's ImageNet re-export (tools/model_converters/swin2mmseg.py): no prefix, no per-output norms, the
    # classifier's final norm and the attention masks kept
    imnet = {k[len("backbone."):]: v for k, v in mm.items() if not re.match(r"backbone\.norm\d", k)}
    imnet["norm.weight"], imnet["norm.bias"] = torch.ones(8 * embed), torch.zeros(8 * embed)
    imnet["stages.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)
    res = convert_checkpoint(imnet, "swin", target)
    norms = {f"backbone.norm{i}.{w}" for i in range(4) for w in ("weight", "bias")}
    assert set(res.state_dict) == set(target) - norms and set(res.summary.left_to_model) == norms
    assert all(torch.equal(res.state_dict[k], converted[k]) for k in res.state_dict)
    assert {r for _, r in res.summary.dropped} >= {
        "final norm of the classifier (dense-prediction Swin has norm0..norm3)",
        "shifted-window attention mask (depends on the input size; recomputed)",
    }
