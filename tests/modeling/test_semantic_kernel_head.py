"""The kernel head of semantic K-Net (``KNetSemanticKernelHead``) and the channel-halves updator of its
512-wide heads (mmseg ``KernelUpdator``)."""
import torch
from support.semantic import NUM_CLASSES
from torch import nn

from knet.modeling.kernel_head.kernel_updator import KernelUpdator
from knet.modeling.kernel_head.semantic_kernel_head import KNetSemanticKernelHead


def test_half_split_updator_equals_per_half_application():
    torch.manual_seed(0)
    upd = KernelUpdator(256, 256, 256)
    for p in upd.parameters():  # non-trivial LayerNorm affine parameters too
        nn.init.normal_(p, std=0.2)
    feat = torch.randn(2, 7, 512)
    kern = torch.randn(2, 7, 1, 512)
    out = upd(feat, kern)
    halves = torch.cat([upd(feat[..., :256], kern[..., :256]), upd(feat[..., 256:], kern[..., 256:])], dim=-1)
    assert out.shape == (2, 7, 1, 512)
    torch.testing.assert_close(out, halves, rtol=1e-5, atol=1e-5)
    # a mixed pairing (half 0 of the feature with half 1 of the kernel) gives something else
    crossed = upd(feat[..., :256], kern[..., 256:])
    assert not torch.allclose(crossed, out[..., :256], atol=1e-3)


def test_semantic_kernel_head_stages():
    torch.manual_seed(0)
    kh = KNetSemanticKernelHead(in_channels=32, updator_channels=16, num_heads=4, feedforward_channels=64)
    assert all(h.mask_mode == "soft" and h.fc_cls is None for h in kh.update_heads)
    feat = torch.randn(2, 32, 6, 7)
    kernels = torch.randn(NUM_CLASSES, 32, 1, 1, requires_grad=True)
    logits = torch.randn(2, NUM_CLASSES, 6, 7)
    kh.train()
    maps = kh(feat, kernels, logits)
    assert len(maps) == 4 and maps[0] is logits
    assert all(m.shape == (2, NUM_CLASSES, 6, 7) for m in maps)
    maps[-1].sum().backward()
    assert kernels.grad is not None and kernels.grad.abs().sum() > 0  # the class kernels are refined
    kh.eval()
    with torch.no_grad():
        last = kh(feat, kernels, logits)
    torch.testing.assert_close(last, maps[-1].detach())
