"""ImageNet backbones (``--source torchvision-resnet``, ``mmcv-resnet-v1c``): real torchvision ResNets give
torchvision's features after conversion (RGB and BGR configs), and the recipe's normalisation check."""
import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from support.conversion_targets import RGB_MEAN, RGB_STD, det_cfg, meta_state_dict, sem_cfg
from support.official_layouts import Layout, resnet_layout
from torch import nn

from knet.checkpoint import CheckpointMismatchError, check_normalization, convert_checkpoint


def _torchvision_features(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for i, name in enumerate(["layer1", "layer2", "layer3", "layer4"], start=2):
        x = getattr(tv, name)(x)
        out[f"res{i}"] = x
    return out


def _randomise_bn(module, gen):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_torchvision_resnet50_gives_torchvision_features(input_format):
    import torchvision

    gen = torch.Generator().manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        _randomise_bn(tv, gen)
    cfg = det_cfg(50, 133, input_format=input_format)
    check_normalization(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, input_format)
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get("KNet")(cfg)
    model = model.to_empty(device="cpu").eval()  # only the converted backbone runs below
    result = convert_checkpoint(
        tv.state_dict(), "torchvision-resnet", model.state_dict(), input_format=input_format
    )
    s = result.summary
    assert (s.num_input_keys, s.num_mapped, s.num_dropped) == (320, 265, 55)
    assert s.dropped_by_reason()["ImageNet classifier"] == 2
    # the rest of the model keeps its initialisation: FPN + pixel decoder + kernel head
    assert (
        all(not k.startswith("backbone.bottom_up.") for k in s.left_to_model) and len(s.left_to_model) == 184
    )
    model.load_state_dict(result.state_dict, strict=False)
    x_rgb = torch.randn(1, 3, 64, 96, generator=gen)
    x_ours = x_rgb if input_format == "RGB" else x_rgb.flip(1)
    with torch.no_grad():
        ref = _torchvision_features(tv, x_rgb)
        ours = model.backbone.bottom_up(x_ours)
    for name in ("res2", "res3", "res4", "res5"):
        assert ours[name].shape == ref[name].shape
        # activations grow to ~1e3 through 50 random layers: compare relative to their scale (float32 rounding
        # differs when the first conv's input channels are reordered)
        err = (ours[name] - ref[name]).abs().max().item()
        assert err <= 1e-5 * ref[name].abs().max().item(), (name, err)


def test_torchvision_resnet101_fills_r101_backbone():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet101(weights=None)
    target = meta_state_dict(det_cfg(101, 133))
    result = convert_checkpoint(tv.state_dict(), "torchvision-resnet", target)
    bb_target = {k for k in target if k.startswith("backbone.bottom_up.")}
    assert set(result.state_dict) == bb_target
    assert (result.summary.num_mapped, result.summary.num_dropped) == (520, 106)


def test_torchvision_resnet_refused_by_semantic_deep_stem_model():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
    with pytest.raises(CheckpointMismatchError):
        convert_checkpoint(
            tv.state_dict(),
            "torchvision-resnet",
            meta_state_dict(sem_cfg("knet_fcn_R50.yaml")),
            dst_prefix="backbone.",
        )


def test_mmcv_resnet_v1c_imagenet_fills_semantic_backbone():
    L = Layout("meta")
    resnet_layout(L, "", 50, deep_stem=True)
    L.linear("fc", 1000, 2048)
    target = meta_state_dict(sem_cfg("knet_fcn_R50.yaml"))
    result = convert_checkpoint({"state_dict": L.sd}, "mmcv-resnet-v1c", target)
    bb = {k for k in target if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    assert set(result.state_dict) == bb
    assert all(not k.startswith("backbone.") for k in result.summary.left_to_model)
    assert (result.summary.num_mapped, result.summary.num_dropped) == (275, 57)  # 55 BN counters + fc


def test_check_normalization():
    check_normalization(RGB_MEAN, RGB_STD, "RGB")
    check_normalization(RGB_MEAN[::-1], RGB_STD[::-1], "BGR")
    with pytest.raises(ValueError, match="not the normalisation"):
        check_normalization(RGB_MEAN, RGB_STD, "BGR")
    with pytest.raises(ValueError, match="not the normalisation"):
        check_normalization([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "RGB")
