"""The kernel-generating decode heads of semantic K-Net (FCN / PSP / ASPP / UPerNet, mmseg decode heads):
outputs, initial kernels and logits, the pyramid pooling; the auxiliary FCN head."""
import pytest
import torch
from support.semantic import HEAD_NAMES, NUM_CLASSES, tiny_aux, tiny_backbone, tiny_decode_head

from knet.modeling.decode_head.psp_head import pyramid_pooling


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_generating_head_outputs(name):
    torch.manual_seed(0)
    bb = tiny_backbone(32 if name == "uper" else 8).eval()
    head = tiny_decode_head(name)
    with torch.no_grad():
        feats = bb(torch.randn(2, 3, 64, 64))
        head.train()
        out_train = head(feats)
        head.eval()
        out = head(feats)
    hw = (16, 16) if name == "uper" else (8, 8)  # UPerNet: stride 4; the others: stride 8
    assert out["feat"].shape == (2, 32) + hw
    assert out["init_logits"].shape == (2, NUM_CLASSES) + hw
    assert out["init_kernels"] is head.conv_seg.weight
    assert out["init_kernels"].shape == (NUM_CLASSES, 32, 1, 1)
    # the initial logits are conv_seg(feat) (dropout is off in eval): kernel n convolved with feat, + bias
    manual = torch.einsum("nc,bchw->bnhw", head.conv_seg.weight[:, :, 0, 0], out["feat"])
    torch.testing.assert_close(out["init_logits"], manual + head.conv_seg.bias.view(1, -1, 1, 1))
    assert set(out) == set(out_train) == {"feat", "init_logits", "init_kernels"}  # the aux head is separate
    aux = tiny_aux().train()  # the auxiliary FCN head of KNetSemantic, on res4
    with torch.no_grad():
        aux_logits = aux(feats)["init_logits"]
    aux_hw = (4, 4) if name == "uper" else (8, 8)  # res4: stride 16 undilated, 8 dilated
    assert aux_logits.shape == (2, NUM_CLASSES) + aux_hw


def test_psp_pyramid_branch_values():
    """The 1x1 bin of the pyramid is the conv of the global mean, broadcast back over the map."""
    torch.manual_seed(0)
    head = tiny_decode_head("psp").eval()
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        outs = pyramid_pooling(x, head.psp_modules, head.pool_scales)
        expected = head.psp_modules[0](x.mean(dim=(2, 3), keepdim=True))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8)] * 4
    torch.testing.assert_close(outs[0], expected.expand(1, 32, 8, 8))
