"""Swin Transformer backbone (dense-prediction variant) for the K-Net + UPerNet Swin-T / Swin-L models.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021. The semantic
K-Net Swin models (mmsegmentation ``configs/knet/knet-s3_swin-{t,l}_upernet_*``) use the
dense-prediction form of Swin: 4x4 patch embedding with LayerNorm, no absolute position embedding, 4 stages of
(shifted-)window attention blocks with relative position bias, patch merging between stages, and one LayerNorm
per output stage (``norm{i}``); inputs of any size are padded to the patch size and to the window size inside
each block. Reference implementations read: microsoft/Swin-Transformer-Semantic-Segmentation
``mmseg/models/backbones/swin_transformer.py`` and mmsegmentation ``mmseg/models/backbones/swin.py``; the
parameter names here are the original repository's (``patch_embed.proj``, ``layers.{i}.blocks.{j}.attn.qkv``,
``layers.{i}.downsample.reduction``, ``norm{i}``, ...), the names :mod:`knet.checkpoint.swin` converts to.

The backbone outputs ``res2..res5`` (strides 4, 8, 16, 32; channels C, 2C, 4C, 8C) like the ResNets, so the
UPerNet head and the auxiliary head (on ``res4``) are unchanged.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["KNetSwinTransformer", "build_knet_swin_backbone", "window_partition", "window_reverse"]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``ws`` -> (B * H/ws * W/ws, ws, ws, C) windows, row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    B = windows.shape[0] // ((H // ws) * (W // ws))
    x = windows.view(B, H // ws, W // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples with probability ``p`` and rescale the kept ones by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        ).flatten(1)  # (2, ws*ws)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (N, N, 2)
        index = rel[..., 0] * (2 * window_size - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        """x: (B * nW, N, C) window tokens; mask: (nW, N, N) additive (0 / -100) or None."""
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)  # (Bw, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(Bw // nW, nW, self.num_heads, N, N) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(Bw, self.num_heads, N, N)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(Bw, N, C)
        return self.proj(out)


class SwinTransformerBlock(nn.Module):
    """LN - (shifted-)window attention - residual - LN - MLP - residual; pads to window multiples."""

    def __init__(
        self, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int, attn_mask) -> torch.Tensor:
        """x: (B, H*W, C); attn_mask: (nW, ws*ws, ws*ws) for the padded size (used when shifted)."""
        B, L, C = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        else:
            attn_mask = None
        windows = self.attn(window_partition(x, ws).reshape(-1, ws * ws, C), attn_mask)
        x = window_reverse(windows.reshape(-1, ws, ws, C), ws, Hp, Wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :H, :W, :].reshape(B, H * W, C)
        x = shortcut + drop_path(x, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order: (0,0), (1,0), (0,1), (1,1)) -> LN(4C) -> Linear(4C, 2C, no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular and shifted windows, then patch merging."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, drop_paths, downsample):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, mlp_ratio, qkv_bias,
                    drop_paths[i],
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def shifted_window_mask(self, H: int, W: int, device) -> torch.Tensor:
        """(nW, ws*ws, ws*ws) additive mask: -100 between tokens of different regions of the rolled map."""
        ws, s = self.window_size, self.shift_size
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        regions = torch.zeros((1, Hp, Wp, 1), device=device)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                regions[:, hs, wsl, :] = cnt
                cnt += 1
        win = window_partition(regions, ws).reshape(-1, ws * ws)
        diff = win.unsqueeze(1) - win.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x: torch.Tensor, H: int, W: int):
        """Returns (stage output (B, H*W, C), H, W, next-stage input, its H, W)."""
        mask = self.shifted_window_mask(H, W, x.device)
        for blk in self.blocks:
            x = blk(x, H, W, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class KNetSwinTransformer(Backbone):
    """Swin Transformer as a detectron2 ``Backbone`` with outputs ``res2..res5`` (module docstring)."""

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.3,
        patch_norm: bool = True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"MODEL.KNET.SWIN.DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} differ in length"
            )
        self.num_layers = len(depths)
        names = [f"res{i + 2}" for i in range(self.num_layers)]
        bad = [f for f in out_features if f not in names]
        if bad:
            raise ValueError(f"MODEL.RESNETS.OUT_FEATURES {list(out_features)}: Swin outputs only {names}")
        self._out_features = list(out_features)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=4, stride=4)
        self.patch_embed.norm = nn.LayerNorm(embed_dim) if patch_norm else None
        n = sum(depths)
        dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # linear, 0 -> rate
        self.layers = nn.ModuleList()
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        for i in range(self.num_layers):
            self.layers.append(
                BasicLayer(
                    self.num_features[i], depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                    dpr[sum(depths[:i]): sum(depths[: i + 1])], downsample=i < self.num_layers - 1,
                )
            )
        for i, name in enumerate(names):
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._out_feature_strides = {name: 4 * 2**i for i, name in enumerate(names)}
        self._out_feature_channels = {name: self.num_features[i] for i, name in enumerate(names)}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self):
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }

    def forward(self, x: torch.Tensor):
        """(B, 3, H, W) -> ``{res_k: (B, C_k, ceil(H / s_k), ceil(W / s_k))}``."""
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (4 - W % 4) % 4, 0, (4 - H % 4) % 4))
        x = self.patch_embed.proj(x)
        Wh, Ww = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
        outs = {}
        for i, layer in enumerate(self.layers):
            out, H_o, W_o, x, Wh, Ww = layer(x, Wh, Ww)
            name = f"res{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outs[name] = out.view(-1, H_o, W_o, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
        return outs


def _swin_args(cfg) -> dict:
    s = cfg.MODEL.KNET.SWIN
    return dict(
        embed_dim=s.EMBED_DIM,
        depths=tuple(s.DEPTHS),
        num_heads=tuple(s.NUM_HEADS),
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_path_rate=s.DROP_PATH_RATE,
        patch_norm=s.PATCH_NORM,
        out_features=tuple(cfg.MODEL.RESNETS.OUT_FEATURES),
    )


@BACKBONE_REGISTRY.register()
def build_knet_swin_backbone(cfg, input_shape: ShapeSpec) -> KNetSwinTransformer:
    """Swin from ``MODEL.KNET.SWIN.*``; the outputs are ``MODEL.RESNETS.OUT_FEATURES`` (``res2..res5``)."""
    return KNetSwinTransformer(in_chans=input_shape.channels, **_swin_args(cfg))
