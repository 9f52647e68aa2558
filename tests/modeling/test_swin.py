"""The dense-prediction Swin Transformer backbone (``KNetSwinTransformer``) and its UPerNet model."""
import pytest
import torch
from support.semantic import count, image, labels, tiny_semantic_cfg


def _expected_swin(embed, depths, heads, ws=7):
    """Swin parameters from the layer shapes (dense variant: no classifier, one LayerNorm per output)."""
    n = 3 * 16 * embed + embed + 2 * embed  # 4x4 patch embedding + its LayerNorm
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = embed * 2**i
        block = 2 * d + (3 * d * d + 3 * d) + (2 * ws - 1) ** 2 * h + (d * d + d) + 2 * d
        block += (4 * d * d + 4 * d) + (4 * d * d + d)
        n += depth * block + 2 * d  # blocks + output norm
        if i < len(depths) - 1:
            n += 2 * 4 * d + 4 * d * 2 * d  # patch merging: LayerNorm(4d) + Linear(4d, 2d, no bias)
    return n


def test_swin_parameter_counts():
    from knet.modeling.backbone.swin import KNetSwinTransformer

    tiny = KNetSwinTransformer()
    assert count(tiny) == _expected_swin(96, (2, 2, 6, 2), (3, 6, 12, 24)) == 27_520_698
    with torch.device("meta"):  # Swin-L: count without allocating 195M parameters
        large = KNetSwinTransformer(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
    assert count(large) == _expected_swin(192, (2, 2, 18, 2), (6, 12, 24, 48)) == 194_998_164
    keys = tiny.state_dict().keys()  # the original Swin names (knet.checkpoint.swin converts to them)
    for k in ("patch_embed.proj.weight", "layers.0.blocks.1.attn.relative_position_bias_table",
              "layers.2.blocks.5.mlp.fc2.bias", "layers.2.downsample.reduction.weight", "norm3.bias"):
        assert k in keys, k
    assert "layers.3.downsample.reduction.weight" not in keys


def test_swin_output_shapes_for_odd_sizes():
    from knet.modeling.backbone.swin import KNetSwinTransformer

    torch.manual_seed(0)
    m = KNetSwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.1)
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 70, 90))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 16, 18, 23), "res3": (2, 32, 9, 12), "res4": (2, 64, 5, 6), "res5": (2, 128, 3, 3)}
    assert {k: (s.channels, s.stride) for k, s in m.output_shape().items()} == {
        "res2": (16, 4), "res3": (32, 8), "res4": (64, 16), "res5": (128, 32)}


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_attends_within_its_windows_only(shift):
    """Perturbing one token changes only the tokens of its (shifted) window."""
    from knet.modeling.backbone.swin import BasicLayer, SwinTransformerBlock

    torch.manual_seed(0)
    blk = SwinTransformerBlock(8, 2, window_size=7, shift_size=shift).eval()
    layer = BasicLayer(8, 2, 2, 7, 4.0, True, [0.0, 0.0], downsample=False)
    H = W = 14
    mask = layer.shifted_window_mask(H, W, torch.device("cpu"))
    x = torch.randn(1, H * W, 8)
    y = x.clone()
    y[0, 0] += 5.0 * torch.randn(8)  # token (0, 0) (not a constant shift: LayerNorm would remove it)
    with torch.no_grad():
        changed = (blk(x, H, W, mask) - blk(y, H, W, mask)).abs().sum(-1).view(H, W) > 1e-6
    expected = torch.zeros(H, W, dtype=torch.bool)
    if shift == 0:
        expected[:7, :7] = True  # the top-left window
    else:
        # rolled by -3: token (0, 0) sits at (11, 11) of the rolled map, in the window [7:14) x [7:14), region
        # rows/cols [11:14); those rolled positions are the original rows/cols 0..2
        expected[:3, :3] = True
    assert torch.equal(changed, expected)


def test_swin_upernet_from_config_trains_and_infers():
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = tiny_semantic_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_knet_swin_backbone"
    cfg.MODEL.KNET.SWIN.EMBED_DIM = 16
    cfg.MODEL.KNET.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.KNET.SWIN.NUM_HEADS = [1, 2, 2, 4]
    model = build_model(cfg).train()
    assert type(model.backbone).__name__ == "KNetSwinTransformer"
    batch = [{"image": image(64, 64, i), "sem_seg": labels(64, 64, i) % 11} for i in range(2)]
    losses = model(batch)
    assert sorted(losses) == ["loss_aux", "loss_ce_s0", "loss_ce_s1", "loss_ce_s2", "loss_ce_s3"]
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        assert model([{"image": image(50, 70)}])[0]["sem_seg"].shape == (11, 50, 70)
