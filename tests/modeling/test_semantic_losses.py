"""The losses of semantic K-Net (mmseg 0.x ``CrossEntropyLoss`` over all pixels, per stage, auxiliary)."""
import torch
import torch.nn.functional as F

from knet.modeling.semantic_losses import cross_entropy_all_pixels, semantic_losses


def test_cross_entropy_counts_ignored_pixels_in_the_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :3] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    logp = up.log_softmax(1)
    valid = target != 255
    picked = logp.gather(1, target.clamp(max=2).unsqueeze(1))[:, 0]
    expected = -(picked * valid).sum() / target.numel()  # ignored pixels count in the denominator
    got = cross_entropy_all_pixels(logits, target, 255)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, -(picked[valid]).mean())  # differs from the mean over valid pixels
    all_ignored = torch.full((2, 8, 8), 255)
    assert cross_entropy_all_pixels(logits, all_ignored, 255).item() == 0.0


def test_semantic_losses_keys_and_weights():
    torch.manual_seed(0)
    maps = [torch.randn(1, 3, 4, 4) for _ in range(4)]
    aux = torch.randn(1, 3, 2, 2)
    target = torch.randint(0, 3, (1, 8, 8))
    weights = dict(ignore_value=255, ce_weight=1.0, aux_weight=0.4)
    losses = semantic_losses(maps, aux, target, **weights)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    torch.testing.assert_close(losses["loss_ce_s2"], cross_entropy_all_pixels(maps[2], target, 255))
    torch.testing.assert_close(losses["loss_aux"], 0.4 * cross_entropy_all_pixels(aux, target, 255))
    assert "loss_aux" not in semantic_losses(maps, None, target, **weights)
