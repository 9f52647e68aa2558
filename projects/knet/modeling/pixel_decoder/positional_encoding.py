"""2-D sine positional encoding as used by K-Net's localization FPN.

The DETR-style encoding (Carion et al., ECCV 2020) in the variant of mmdet's ``SinePositionalEncoding``
(``mmdet/models/utils/positional_encoding.py``), which ``ZwwWayne/K-Net:knet/det/semantic_fpn_wrapper.py``
adds to P5 with ``num_feats=128, normalize=True``. Differences from Mask2Former's detectron2 port that matter
for converted checkpoints (official ``semantic_fpn_wrapper.py``, mmdet ``SinePositionalEncoding``): the
offset is 0 (not -0.5) and the encoding is computed
for the whole padded map (an all-valid mask), so it does not know where the image ends.
"""

import math

import torch

__all__ = ["sine_positional_encoding"]


def sine_positional_encoding(
    batch_size: int,
    height: int,
    width: int,
    num_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
    offset: float = 0.0,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Sine encoding of an all-valid (batch_size, height, width) grid.

    Positions are counted from 1; with ``normalize`` they become ``(p + offset) / (last + eps) * scale``.
    Divisors ``dim_t[k] = temperature ** (2 * (k // 2) / num_feats)``. Channel order: the ``num_feats``
    y channels first, then the ``num_feats`` x channels; inside each group sin and cos alternate
    (sin(p/t0), cos(p/t0), sin(p/t1), ...).

    Returns:
        Tensor (batch_size, 2 * num_feats, height, width) in ``dtype`` (computed in float32).
    """
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    if normalize:
        y = (y + offset) / (y[-1:] + eps) * scale
        x = (x + offset) / (x[-1:] + eps) * scale
    k = torch.arange(num_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)

    def encode(pos):  # (L,) -> (L, num_feats) with sin/cos interleaved
        p = pos[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # (2F, H, W)
    return pos[None].expand(batch_size, -1, -1, -1).to(dtype)
