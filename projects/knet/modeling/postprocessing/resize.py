"""Resizing of stride-4 maps to the output, as the reference aligns them.

The reference (``ZwwWayne/K-Net:knet/det/kernel_update_head.py``, ``rescale_masks``) resizes the masks
bilinearly (``align_corners=False``) from stride 4 to the padded input, crops them to the resized image and
resizes them to the original size. :func:`rescale_probs` is that two-step resize; :func:`upsample_probs` is a
one-step resize of the cropped cells with the same alignment (instance and semantic outputs, soft mode).
"""

import math
from typing import Tuple

import torch
from torch.nn import functional as F

__all__ = ["Size", "crop_to_image", "upsample_probs", "rescale_probs", "nearest_cells", "cell_coverage"]

Size = Tuple[int, int]  # (height, width)


def crop_to_image(maps: torch.Tensor, image_size: Size, stride: int) -> torch.Tensor:
    """(..., h_pad/stride, w_pad/stride) -> (..., ceil(h/stride), ceil(w/stride)): the cells that cover the
    (h, w) = ``image_size`` image area."""
    hc, wc = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    return maps[..., :hc, :wc]


def upsample_probs(maps: torch.Tensor, image_size: Size, output_size: Size, stride: int,
                   chunk: int = 16) -> torch.Tensor:
    """Bilinear (``align_corners=False``) resize of cropped cells (K, hc, wc) to (K, H, W) = ``output_size``,
    a cell standing for ``stride`` x ``stride`` pixels of the (h, w) = ``image_size`` image. ``chunk`` maps
    at a time, to bound memory."""
    H, W = output_size
    if maps.shape[0] == 0:
        return maps.new_zeros((0, H, W))
    scale = (stride * H / image_size[0], stride * W / image_size[1])
    out = []
    for part in maps.split(chunk):
        up = F.interpolate(
            part[None], scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )
        up = up[..., :H, :W]
        if up.shape[-2] < H or up.shape[-1] < W:  # float rounding of the output size
            up = F.pad(up, (0, W - up.shape[-1], 0, H - up.shape[-2]), mode="replicate")
        out.append(up[0])
    return torch.cat(out)


def rescale_probs(probs: torch.Tensor, image_size, output_size, stride: int) -> torch.Tensor:
    """The reference's ``KernelUpdateHead.rescale_masks`` on probabilities: (n, h4, w4) -> (n, H, W).
    Bilinear (``align_corners=False``) to the padded input ``stride * (h4, w4)``, crop to ``image_size``,
    bilinear to ``output_size``."""
    h4, w4 = probs.shape[-2:]
    x = F.interpolate(probs[None], size=(h4 * stride, w4 * stride), mode="bilinear", align_corners=False)
    x = x[..., : image_size[0], : image_size[1]]
    return F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)[0]


def nearest_cells(image_size, output_size, num_cells, stride: int, device=None):
    """The cell of every output pixel centre, per axis: ``floor((y + 0.5) * h / (H * stride))`` clamped to
    the ``num_cells`` = (hc, wc) cropped grid. Returns rows (H,) and cols (W,), int64."""
    idx = []
    for n_out, n_img, n_cells in zip(output_size, image_size, num_cells):
        pos = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_img / (n_out * stride))
        idx.append(pos.floor().long().clamp_(0, n_cells - 1))
    return idx[0], idx[1]


def cell_coverage(image_size, num_cells, stride: int, device=None) -> torch.Tensor:
    """(hc, wc) fraction of every cropped cell inside the (h, w) image: 1, except on the last row / column
    when h or w is not a multiple of ``stride``. The pixel area a cell stands for."""
    fractions = []
    for n_img, n_cells in zip(image_size, num_cells):
        start = torch.arange(n_cells, device=device, dtype=torch.float32) * stride
        fractions.append(((n_img - start).clamp(0, stride)) / stride)
    return fractions[0][:, None] * fractions[1][None, :]
