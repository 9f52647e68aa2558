"""BatchNorm folding at inference (knet.modeling.fuse, MODEL.KNET.TEST.FUSE_BN / CHANNELS_LAST)."""
import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from support.models import batched_input, tiny_knet_cfg
from torch import nn
from torch.nn import functional as F

from knet.modeling.backbone.resnet_fpn import FrozenStatsBatchNorm2d
from knet.modeling.fuse import BNFoldedConv2d, disable_bn_folding, enable_bn_folding, fold_batch_norm


def _randomize_norms(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh models have 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def _tiny(fuse_bn, channels_last=False, **kw):
    cfg = tiny_knet_cfg(**kw)
    cfg.MODEL.KNET.TEST.FUSE_BN = fuse_bn
    cfg.MODEL.KNET.TEST.CHANNELS_LAST = channels_last
    torch.manual_seed(0)
    return build_model(cfg)


def _last_stage(model, inputs):
    """(class logits, stride-4 mask logits) of the last stage at inference."""
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        out = model.kernel_head(model.pixel_decoder(model.backbone(images.tensor)))["stages"][-1]
    return out["pred_logits"], out["pred_masks"]


@pytest.mark.parametrize("bias", [False, True])
def test_fold_batch_norm_equals_conv_then_bn(bias):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64) if bias else None
    mean = torch.randn(6, generator=g, dtype=torch.float64)
    var = torch.rand(6, generator=g, dtype=torch.float64)
    gamma = torch.randn(6, generator=g, dtype=torch.float64)
    beta = torch.randn(6, generator=g, dtype=torch.float64)
    x = torch.randn(2, 4, 9, 7, generator=g, dtype=torch.float64)
    expected = F.batch_norm(F.conv2d(x, w, b, padding=1), mean, var, gamma, beta, training=False, eps=1e-3)
    fw, fb = fold_batch_norm(w, b, mean, var, gamma, beta, 1e-3)
    got = F.conv2d(x, fw, fb, padding=1)
    assert (got - expected).abs().max().item() < 1e-12
    assert fw.shape == w.shape and fb.shape == (6,)


def test_fuse_switch_and_state_dict():
    fused, plain = _tiny(True), _tiny(False)
    n = sum(isinstance(m, BNFoldedConv2d) for m in fused.modules())
    # stem (FrozenBN), res2 (FrozenBN), res3-res5 (FrozenStatsBN) convs and shortcuts
    assert n == 1 + 4 + 3 * 5
    assert not any(isinstance(m, BNFoldedConv2d) for m in plain.modules())
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert any(isinstance(m.norm, FrozenStatsBatchNorm2d) for m in fused.modules() if isinstance(m, Conv2d))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_inference_matches_unfused(channels_last):
    plain = _tiny(False).eval()
    _randomize_norms(plain)
    fused = copy.deepcopy(plain)
    assert enable_bn_folding(fused, channels_last=channels_last) == 20
    fused.eval()
    inputs = [batched_input(64, 96, seed=3)]
    cls_a, masks_a = _last_stage(plain, inputs)
    cls_b, masks_b = _last_stage(fused, inputs)
    assert (cls_a - cls_b).abs().max().item() < 1e-4
    assert (masks_a - masks_b).abs().max().item() < 1e-3 * max(1.0, masks_a.abs().max().item())
    with torch.no_grad():
        out_a, out_b = plain(inputs)[0], fused(inputs)[0]
    assert torch.equal(out_a["panoptic_seg"][0], out_b["panoptic_seg"][0])
    assert torch.equal(out_a["sem_seg"].argmax(0), out_b["sem_seg"].argmax(0))
    conv = next(m for m in fused.modules() if isinstance(m, BNFoldedConv2d) and m.kernel_size == (3, 3))
    weight, _ = conv.folded_parameters()
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_training_is_unchanged_and_folding_follows_new_weights():
    plain = _tiny(False)
    _randomize_norms(plain)
    fused = copy.deepcopy(plain)
    enable_bn_folding(fused)
    inputs = [batched_input(64, 64, classes=(0, 3), seed=5)]
    plain.train(), fused.train()
    torch.manual_seed(0)
    losses_a = plain(inputs)
    torch.manual_seed(0)
    losses_b = fused(inputs)
    assert losses_a.keys() == losses_b.keys()
    for k in losses_a:
        assert torch.equal(losses_a[k], losses_b[k]), k

    fused.eval()
    _last_stage(fused, inputs)  # fills the folded caches
    _randomize_norms(plain, seed=9)  # new statistics, loaded after eval() as DefaultPredictor does
    fused.load_state_dict(plain.state_dict())
    plain.eval()
    cls_a, masks_a = _last_stage(plain, inputs)
    cls_b, masks_b = _last_stage(fused, inputs)
    assert (cls_a - cls_b).abs().max().item() < 1e-4
    assert (masks_a - masks_b).abs().max().item() < 1e-3 * max(1.0, masks_a.abs().max().item())

    assert disable_bn_folding(fused) == 20
    assert not any(isinstance(m, BNFoldedConv2d) for m in fused.modules())


def test_plain_batchnorm_folds_only_in_eval():
    conv = Conv2d(3, 5, 3, padding=1, bias=False, norm=nn.BatchNorm2d(5))
    _randomize_norms(conv)
    ref = copy.deepcopy(conv)
    assert enable_bn_folding(conv) == 0  # trainable BatchNorm: only on request
    assert enable_bn_folding(conv, eval_batch_norm=True) == 1
    x = torch.randn(2, 3, 8, 8)
    conv.train(), ref.train()
    assert torch.equal(conv(x), ref(x))  # batch statistics: nothing folded
    assert torch.equal(conv.norm.running_mean, ref.norm.running_mean)  # both updated the same way
    conv.eval(), ref.eval()
    with torch.no_grad():
        assert (conv(x) - ref(x)).abs().max().item() < 1e-5
    assert conv._knet_folded is not None
