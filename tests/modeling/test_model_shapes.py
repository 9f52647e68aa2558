"""Shapes through every stage, the updator quirk, the positional encoding, the backbone settings, empty and
half-empty ground truth, and the build-time checks of K-Net (panoptic / instance)."""

import dataclasses
import math

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone, build_model
from support.models import batched_input, knet_kernel_head, tiny_knet_cfg

from knet.modeling.backbone.resnet_fpn import FrozenStatsBatchNorm2d
from knet.modeling.kernel_head.kernel_updator import KernelUpdator
from knet.modeling.pixel_decoder.positional_encoding import sine_positional_encoding

SIZES = [(67, 91), (45, 77)]  # odd, different: padded to 96 x 96


@pytest.fixture(scope="module")
def panoptic_model():
    torch.manual_seed(0)
    return build_model(tiny_knet_cfg(num_classes=5, num_thing_classes=3, num_proposals=8))


def test_shapes_through_every_stage(panoptic_model):
    model = panoptic_model.train()
    inputs = [batched_input(h, w, [0, 3], seed=i) for i, (h, w) in enumerate(SIZES)]
    images = model.preprocess_image(inputs)
    assert images.tensor.shape == (2, 3, 96, 96)
    assert images.image_sizes == SIZES
    feats = model.backbone(images.tensor)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "p2": (2, 32, 24, 24),
        "p3": (2, 32, 12, 12),
        "p4": (2, 32, 6, 6),
        "p5": (2, 32, 3, 3),
    }
    dec = model.pixel_decoder(feats)
    assert dec["loc_feat"].shape == dec["sem_feat"].shape == (2, 32, 12, 12)  # stride 8

    head = model.kernel_head
    x, kernels, masks, thing_masks, seg_logits = head.initial_kernels(dec)
    assert x.shape == (2, 32, 12, 12)
    assert kernels.shape == (2, 8 + 2, 32, 1, 1)  # 8 thing kernels + 2 stuff kernels
    assert masks.shape == (2, 10, 12, 12) and thing_masks.shape == (2, 8, 12, 12)
    assert seg_logits.shape == (2, 5, 12, 12)
    # stuff kernels are the conv_seg rows of the stuff classes, stuff masks its stuff logits
    assert torch.equal(kernels[0, 8:], head.conv_seg.weight[3:])
    assert torch.equal(masks[:, 8:], seg_logits[:, 3:])
    for stage in head.update_heads:
        cls, masks, kernels = stage(x, kernels, masks)
        assert (
            cls.shape == (2, 10, 5) and masks.shape == (2, 10, 12, 12) and kernels.shape == (2, 10, 32, 1, 1)
        )

    out = head(dec)
    assert out["init_masks"].shape == (2, 8, 24, 24) and out["seg_logits"].shape == (2, 5, 24, 24)
    assert len(out["stages"]) == 3
    for stage in out["stages"]:
        assert stage["pred_logits"].shape == (2, 10, 5) and stage["pred_masks"].shape == (2, 10, 24, 24)

    model.eval()
    with torch.no_grad():
        out = head(dec)
    assert out["init_masks"] is None and [s["pred_masks"] is None for s in out["stages"]] == [
        True,
        True,
        False,
    ]


def test_stride4_pixel_decoder_option():
    """``PIXEL_DECODER.OUTPUT_STRIDE 4`` with ``MASK_UPSAMPLE_STRIDE 1``: the same parameters (names and
    shapes), the features and every stage's masks at stride 4, losses that train, outputs at the input
    size."""
    torch.manual_seed(0)
    cfg8 = tiny_knet_cfg(num_classes=5, num_thing_classes=3, num_proposals=8)
    cfg4 = cfg8.clone()
    cfg4.MODEL.KNET.PIXEL_DECODER.OUTPUT_STRIDE = 4
    cfg4.MODEL.KNET.MASK_UPSAMPLE_STRIDE = 1
    model8, model4 = build_model(cfg8), build_model(cfg4)
    assert {k: v.shape for k, v in model8.state_dict().items()} == {
        k: v.shape for k, v in model4.state_dict().items()}
    model4.load_state_dict(model8.state_dict())
    model4.train()
    inputs = [batched_input(h, w, [0, 3], seed=i) for i, (h, w) in enumerate(SIZES)]
    images = model4.preprocess_image(inputs)
    dec = model4.pixel_decoder(model4.backbone(images.tensor))
    assert dec["loc_feat"].shape == dec["sem_feat"].shape == (2, 32, 24, 24)  # stride 4
    out = model4.kernel_head(dec)
    assert out["init_masks"].shape == (2, 8, 24, 24)
    assert all(s["pred_masks"].shape == (2, 10, 24, 24) for s in out["stages"])
    losses = model4(inputs)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model4.pixel_decoder.convs_all_levels[0].conv0.weight.grad.abs().sum() > 0
    model4.eval()
    with torch.no_grad():
        res = model4([batched_input(67, 91, seed=0)])[0]
    assert res["panoptic_seg"][0].shape == (67, 91) and res["sem_seg"].shape == (5, 67, 91)
    cfg4.MODEL.KNET.PIXEL_DECODER.OUTPUT_STRIDE = 16
    with pytest.raises(ValueError, match="OUTPUT_STRIDE must be 4 or 8"):
        build_model(cfg4)


def test_initial_kernels_add_binary_mask_sum():
    """K0 = init_kernels.weight + sum of x under sigmoid(M0) > 0.5 (a sum, not a mean)."""
    torch.manual_seed(1)
    head = knet_kernel_head(
        in_channels=32,
        num_proposals=4,
        num_classes=3,
        num_thing_classes=3,
        num_heads=4,
        feedforward_channels=16,
        num_stages=1,
    )
    feats = {"loc_feat": torch.randn(1, 32, 5, 6), "sem_feat": torch.randn(1, 32, 5, 6)}
    x, kernels, masks, thing_masks, _ = head.initial_kernels(feats)
    assert kernels.shape == (1, 4, 32, 1, 1)  # instance model: no stuff kernels
    for n in range(4):
        sel = thing_masks[0, n] > 0
        expected = head.init_kernels.weight[n, :, 0, 0] + x[0][:, sel].sum(dim=1)
        assert torch.allclose(kernels[0, n, :, 0, 0], expected, atol=1e-5)


def test_updator_channel_halves():
    """A 256-wide updator in a 512-wide head updates the two channel halves independently (mmseg
    ``KernelUpdator``)."""
    torch.manual_seed(0)
    upd = KernelUpdator(256, 256, 256)
    feat, kern = torch.randn(2, 3, 512), torch.randn(2, 3, 1, 512)
    out = upd(feat, kern)
    assert out.shape == (2, 3, 1, 512)
    lo = upd(feat[..., :256], kern[..., :256])
    hi = upd(feat[..., 256:], kern[..., 256:])
    assert torch.allclose(out, torch.cat([lo, hi], dim=-1), atol=1e-6)


def test_updator_formula():
    """Gated update, written out with the paper's phi/psi on a small example."""
    torch.manual_seed(0)
    upd = KernelUpdator(8, 8, 8)
    for p in upd.parameters():  # non-trivial LayerNorm affine
        torch.nn.init.normal_(p)
    f, k = torch.randn(5, 8), torch.randn(5, 1, 8)
    ln = torch.nn.functional.layer_norm
    p_in, p_out = upd.dynamic_layer(f).split(8, dim=-1)
    i_in, i_out = upd.input_layer(k[:, 0]).split(8, dim=-1)
    g = p_in * i_in

    def norm(m, v):
        return ln(v, (8,), m.weight, m.bias)

    gate_k = torch.sigmoid(norm(upd.input_norm_in, upd.input_gate(g)))
    gate_f = torch.sigmoid(norm(upd.norm_in, upd.update_gate(g)))
    new = gate_f * norm(upd.norm_out, p_out) + gate_k * norm(upd.input_norm_out, i_out)
    expected = torch.relu(norm(upd.fc_norm, upd.fc_layer(new)))
    assert torch.allclose(upd(f, k)[:, 0], expected, atol=1e-5)


def test_sine_positional_encoding_values():
    """mmdet SinePositionalEncoding(num_feats, normalize=True): offset 0, positions from 1, y first."""
    B, H, W, F = 2, 3, 5, 4
    pe = sine_positional_encoding(B, H, W, F)
    assert pe.shape == (B, 2 * F, H, W)
    r, c = 1, 3  # 0-based cell -> positions 2 and 4
    y = 2 / (3 + 1e-6) * 2 * math.pi
    x = 4 / (5 + 1e-6) * 2 * math.pi
    t0, t1 = 1.0, 10000 ** (2 / F)
    expected = [
        math.sin(y / t0),
        math.cos(y / t0),
        math.sin(y / t1),
        math.cos(y / t1),
        math.sin(x / t0),
        math.cos(x / t0),
        math.sin(x / t1),
        math.cos(x / t1),
    ]
    assert torch.allclose(pe[1, :, r, c], torch.tensor(expected), atol=1e-5)
    # the last row/column normalise to 2*pi (no -0.5 offset)
    assert torch.allclose(pe[0, 0, -1, 0], torch.tensor(math.sin(2 * math.pi / (1 + 1e-6 / 3))), atol=1e-5)


def test_backbone_frozen_stages_and_bn():
    cfg = tiny_knet_cfg()
    backbone = build_backbone(cfg)
    body = backbone.bottom_up
    assert all(not p.requires_grad for p in body.stem.parameters())
    assert all(not p.requires_grad for p in body.res2.parameters())
    bn = body.res3[0].conv1.norm
    assert isinstance(bn, FrozenStatsBatchNorm2d) and bn.weight.requires_grad
    assert "num_batches_tracked" not in bn.state_dict()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    before = bn.running_mean.clone()
    backbone.train()
    x = torch.randn(2, bn.num_features, 5, 5) * 3 + 1
    y = bn(x)
    assert torch.equal(bn.running_mean, before)  # statistics never updated
    expected = (x - before[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    assert torch.allclose(y, expected * bn.weight[:, None, None] + bn.bias[:, None, None], atol=1e-5)


def test_deformable_backbone_needs_no_compiled_ops():
    """DCN stages use torchvision's deformable conv (tests/test_deform_conv.py checks its values)."""
    cfg = tiny_knet_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    backbone = build_backbone(cfg)
    assert type(backbone.bottom_up.res4[0]).__name__ == "DeformBottleneckBlock"
    out = backbone(torch.randn(1, 3, 64, 64))
    assert out["p5"].shape == (1, cfg.MODEL.FPN.OUT_CHANNELS, 2, 2)
    cfg.MODEL.RESNETS.DEPTH = 18
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE.*DEPTH 50, 101 or 152"):
        build_backbone(cfg)


def _loss_check(model, inputs):
    model.train()
    losses = model(inputs)
    assert all(torch.isfinite(v).item() for v in losses.values()), losses
    sum(losses.values()).backward()
    return losses


def test_empty_and_half_empty_gt_panoptic(panoptic_model):
    model = panoptic_model
    empty = [batched_input(h, w, [], seed=i) for i, (h, w) in enumerate(SIZES)]
    losses = _loss_check(model, empty)
    expected_keys = {"loss_rpn_mask", "loss_rpn_dice", "loss_rpn_rank", "loss_rpn_seg"} | {
        f"s{s}_loss_{k}" for s in range(3) for k in ("cls", "mask", "dice", "rank")
    }
    assert set(losses) == expected_keys
    assert losses["s0_loss_mask"].item() == 0 and losses["s0_loss_cls"].item() > 0
    half = [batched_input(67, 91, [1, 4], seed=0), batched_input(45, 77, [], seed=1)]
    losses = _loss_check(model, half)
    assert losses["s2_loss_mask"].item() > 0
    stuff_only = [batched_input(67, 91, [3], seed=0), batched_input(45, 77, [4, 4], seed=1)]
    _loss_check(model, stuff_only)


def test_empty_gt_instance_model():
    torch.manual_seed(0)
    model = build_model(tiny_knet_cfg(num_classes=3, num_thing_classes=3))
    losses = _loss_check(model, [batched_input(45, 77, [], seed=0), batched_input(33, 41, [0, 2], seed=1)])
    assert "s0_loss_rank" not in losses and "loss_rpn_rank" not in losses


def test_inference_outputs(panoptic_model):
    model = panoptic_model.eval()
    inputs = [batched_input(67, 91, seed=0, out_size=(134, 181)), batched_input(45, 77, seed=1)]
    with torch.no_grad():
        results = model(inputs)
    for res, (H, W) in zip(results, [(134, 181), (45, 77)]):
        pan, info = res["panoptic_seg"]
        assert pan.shape == (H, W) and pan.dtype == torch.int32
        assert set(pan.unique().tolist()) - {0} == {s["id"] for s in info}
        for s in info:
            assert s["isthing"] == (s["category_id"] < 3)
            assert set(s) == {"id", "category_id", "isthing", "score", "area"}
            assert s["area"] == int((pan == s["id"]).sum())
        inst = res["instances"]
        assert inst.image_size == (H, W) and inst.pred_masks.dtype == torch.bool
        assert inst.pred_masks.shape[1:] == (H, W) and len(inst) == 8 * 3  # top-100 of 8 x 3 pairs
        assert inst.pred_classes.max() < 3 and inst.pred_boxes.tensor.shape == (len(inst), 4)
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])
        assert res["sem_seg"].shape == (5, H, W)


def test_inference_valid_empty_outputs(panoptic_model):
    model = panoptic_model.eval()
    saved = model.postprocess
    # no probability reaches the mask threshold: no segment has a (>= threshold) area, none is kept
    model.postprocess = dataclasses.replace(saved, instance_score_threshold=1.01, mask_threshold=1.01)
    try:
        with torch.no_grad():
            res = model([batched_input(45, 77, seed=1)])[0]
    finally:
        model.postprocess = saved
    pan, info = res["panoptic_seg"]
    assert info == [] and pan.shape == (45, 77) and int(pan.abs().sum()) == 0
    inst = res["instances"]
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 45, 77) and inst.pred_boxes.tensor.shape == (0, 4)


def test_metadata_mismatch_names_key_and_dataset():
    name = "knet_test_meta_mismatch"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(thing_classes=["a", "b"], stuff_classes=["a", "b", "c", "d", "e"])
    cfg = tiny_knet_cfg(num_classes=5, num_thing_classes=3)
    cfg.DATASETS.TRAIN = (name,)
    with pytest.raises(ValueError, match=r"NUM_THING_CLASSES.*knet_test_meta_mismatch"):
        build_model(cfg)
    cfg = tiny_knet_cfg(num_classes=6, num_thing_classes=2)
    cfg.DATASETS.TEST = (name,)
    with pytest.raises(ValueError, match=r"MODEL.KNET.NUM_CLASSES.*knet_test_meta_mismatch"):
        build_model(cfg)


def test_metadata_of_builtin_coco_datasets_accepted():
    """detectron2's standard panoptic metadata lists all 133 classes in thing_classes and stuff_classes; the
    thing count comes from thing_dataset_id_to_contiguous_id (80)."""
    cfg = tiny_knet_cfg(num_classes=133, num_thing_classes=80, num_stages=1)
    cfg.DATASETS.TRAIN = ("coco_2017_train_panoptic",)
    build_model(cfg)
    cfg = tiny_knet_cfg(num_classes=80, num_thing_classes=80, num_stages=1)
    cfg.DATASETS.TEST = ("coco_2017_val",)
    build_model(cfg)
    cfg = tiny_knet_cfg(num_classes=134, num_thing_classes=80, num_stages=1)
    cfg.DATASETS.TRAIN = ("coco_2017_train_panoptic",)
    with pytest.raises(ValueError, match=r"MODEL.KNET.NUM_CLASSES.*coco_2017_train_panoptic"):
        build_model(cfg)


def test_autocast_bf16_cpu(panoptic_model):
    """Mixed precision: finite float32 losses (matcher and losses run in float32), float32 outputs."""
    model = panoptic_model.train()
    inputs = [batched_input(h, w, [0, 1, 3], seed=i) for i, (h, w) in enumerate(SIZES)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(inputs)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        res = model(inputs[:1])[0]
    assert res["sem_seg"].dtype == torch.float32 and res["instances"].scores.dtype == torch.float32


def test_configurable_explicit_arguments(panoptic_model):
    """KNet built from explicit modules equals the cfg-built one (both @configurable paths)."""
    from knet.modeling.meta_arch import KNet

    ref = panoptic_model.eval()
    model = KNet(
        backbone=ref.backbone,
        pixel_decoder=ref.pixel_decoder,
        kernel_head=ref.kernel_head,
        criterion=ref.criterion,
        pixel_mean=ref.pixel_mean.flatten().tolist(),
        pixel_std=ref.pixel_std.flatten().tolist(),
        size_divisibility=32,
        postprocess=dataclasses.replace(
            ref.postprocess, panoptic_on=True, instance_on=False, semantic_on=False
        ),
        fuse_bn=False,
        channels_last=False,
        fuse_eval_bn=False,
    ).eval()
    inputs = [batched_input(45, 77, seed=3)]
    with torch.no_grad():
        a, b = ref(inputs)[0], model(inputs)[0]
    assert set(b) == {"panoptic_seg"}
    assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
    assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
