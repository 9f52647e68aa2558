"""Initialisation of the K-Net heads against the reference ``init_weights`` chains (docs/architecture.md,
"Initialisation audit").

det: ZwwWayne/K-Net ``KernelIterHead.init_weights`` -> ``KernelUpdateHead.init_weights`` (xavier-uniform on
every >= 2-dim parameter, focal prior on ``fc_cls.bias``), ``ConvKernelHead.init_weights`` (N(0, 0.01) convs,
N(0, 1) ``init_kernels``, prior on ``conv_seg.bias``), ``SemanticFPNWrapper.init_weights`` (N(0, 0.01));
mmcv ``ConvModule`` (Kaiming fan_out, zero bias; norms 1 / 0). semantic: mmsegmentation never calls
``KernelUpdateHead.init_weights`` (the heads sit in a ``ModuleList``), so PyTorch's construction defaults
stay, with ``feat_transform`` as an mmcv ``ConvModule``.
Standard deviations are checked within a few percent (the tensors hold 10^4-10^6 values).
"""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec

from support.models import knet_kernel_head

from knet.modeling.kernel_head.kernel_update_head import KernelUpdateHead
from knet.modeling.kernel_head.semantic_kernel_head import KNetSemanticKernelHead
from knet.modeling.pixel_decoder.localization_fpn import KNetLocalizationFPN

PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # mmcv bias_init_with_prob(0.01) = -4.59512


@torch.no_grad()
def _std_close(t, expected, rel):
    assert t.float().std().item() == pytest.approx(expected, rel=rel), (t.shape, expected)
    assert abs(t.float().mean().item()) < 0.05 * expected + 1e-6


def _xavier_uniform(w):
    fan_out, fan_in = w.shape[0], w[0].numel()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert w.abs().max().item() <= bound + 1e-7
    _std_close(w, bound / math.sqrt(3), rel=0.04)


def _torch_linear_default(w):
    """PyTorch's ``nn.Linear`` / ``nn.Conv2d`` default (kaiming-uniform a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(w.shape[1] if w.dim() == 2 else w[0].numel())
    assert w.abs().max().item() <= bound + 1e-7
    _std_close(w, bound / math.sqrt(3), rel=0.06)


def _kaiming_normal_fan_out(w):
    fan_out = w.shape[0] * w[0, 0].numel()
    _std_close(w, math.sqrt(2.0 / fan_out), rel=0.03)


def _layer_norms_default(module):
    norms = [m for m in module.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert norms
    for m in norms:
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.fixture(scope="module")
def det_head():
    torch.manual_seed(0)
    return knet_kernel_head(in_channels=256, num_proposals=100, num_classes=133, num_thing_classes=80)


def test_det_update_head_as_official_init_weights(det_head):
    for head in det_head.update_heads:
        assert head.xavier_init
        assert torch.all(head.feat_transform.bias == 0)  # ConvModule bias init; PyTorch's default is not 0
        assert torch.allclose(head.fc_cls.bias, torch.full_like(head.fc_cls.bias, PRIOR_BIAS))
        assert torch.all(head.attention.in_proj_bias == 0) and torch.all(head.attention.out_proj.bias == 0)
        _layer_norms_default(head)
    head = det_head.update_heads[0]
    for w in (head.feat_transform.weight, head.attention.in_proj_weight, head.attention.out_proj.weight,
              head.ffn.linear1.weight, head.ffn.linear2.weight, head.kernel_update_conv.dynamic_layer.weight,
              head.cls_fcs[0].weight, head.fc_cls.weight, head.mask_fcs[0].weight, head.fc_mask.weight):
        _xavier_uniform(w)
    # 1-dim parameters keep their construction values: the Linear biases PyTorch's U(+-1/sqrt(fan_in))
    for lin in (head.kernel_update_conv.dynamic_layer, head.kernel_update_conv.input_layer,
                head.ffn.linear1, head.fc_mask):
        bound = 1.0 / math.sqrt(lin.in_features)
        assert lin.bias.abs().max().item() <= bound and lin.bias.std().item() > 0.4 * bound


def test_det_kernel_head_as_official_conv_kernel_head(det_head):
    _std_close(det_head.init_kernels.weight, 1.0, rel=0.03)  # kernel_init_std=1
    _std_close(det_head.conv_seg.weight, 0.01, rel=0.05)
    assert torch.allclose(det_head.conv_seg.bias, torch.full_like(det_head.conv_seg.bias, PRIOR_BIAS))
    for conv in list(det_head.loc_convs) + list(det_head.seg_convs):
        _std_close(conv.weight, 0.01, rel=0.03)  # conv_normal_init
        assert conv.bias is None  # GN follows (ConvModule bias='auto')
        assert torch.all(conv.norm.weight == 1) and torch.all(conv.norm.bias == 0)


def test_localization_fpn_as_official_semantic_fpn_wrapper():
    torch.manual_seed(0)
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}
    fpn = KNetLocalizationFPN(shapes, conv_dim=256, norm="GN")
    convs = [m for m in fpn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 1 + 2 + 3 + 2
    for conv in convs:
        _std_close(conv.weight, 0.01, rel=0.03)
    _layer_norms_default(fpn)
    fpn_no_norm = KNetLocalizationFPN(shapes, conv_dim=64, norm="")
    biases = [m.bias for m in fpn_no_norm.modules() if isinstance(m, torch.nn.Conv2d)]
    assert biases and all(b is not None and torch.all(b == 0) for b in biases)


def test_semantic_update_heads_keep_construction_init_as_mmseg():
    torch.manual_seed(0)
    kernel_head = KNetSemanticKernelHead(in_channels=512, num_stages=3, updator_channels=256)
    for head in kernel_head.update_heads:
        assert not head.xavier_init
        assert torch.all(head.feat_transform.bias == 0)
        _kaiming_normal_fan_out(head.feat_transform.weight)  # mmcv ConvModule: std sqrt(2 / 512)
        assert torch.all(head.attention.in_proj_bias == 0) and torch.all(head.attention.out_proj.bias == 0)
        _layer_norms_default(head)
    head = kernel_head.update_heads[0]
    _xavier_uniform(head.attention.in_proj_weight)  # nn.MultiheadAttention's own reset
    for w in (head.attention.out_proj.weight, head.ffn.linear1.weight, head.ffn.linear2.weight,
              head.kernel_update_conv.dynamic_layer.weight, head.mask_fcs[0].weight, head.fc_mask.weight):
        _torch_linear_default(w)  # not xavier: std 1/sqrt(3 fan_in), e.g. 0.0255 for fc_mask (xavier: 0.0442)


def test_xavier_flag_is_what_differs():
    torch.manual_seed(0)
    det = KernelUpdateHead(in_channels=256, num_classes=0, mask_mode="soft", xavier_init=True)
    sem = KernelUpdateHead(in_channels=256, num_classes=0, mask_mode="soft", xavier_init=False)
    _xavier_uniform(det.fc_mask.weight)
    _torch_linear_default(sem.fc_mask.weight)
    _xavier_uniform(det.feat_transform.weight)
    _kaiming_normal_fan_out(sem.feat_transform.weight)
