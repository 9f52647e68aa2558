"""torch's bilinear resize (``align_corners=False``) read and reproduced, for the exact panoptic mode.

The exact mode needs, per output pixel, which stride-4 cells the reference's two resizes
(:func:`~.resize.rescale_probs`) combine and with which weights (:func:`axis_support`), and at a few
near-tied pixels the reference's float32 value bit for bit (:func:`reference_values`). How torch rounds
the source index and whether its compiled kernel contracts multiply-adds depends on the build and device, so
both are read once per device from torch itself (:func:`source_index_rounding`, :func:`bilinear_arithmetic`).
"""

import functools
from typing import Dict, Optional, Tuple

import torch
from torch.nn import functional as F

from .resize import rescale_probs

__all__ = [
    "axis_weights",
    "axis_support",
    "source_index_rounding",
    "bilinear_arithmetic",
    "fma32",
    "exact_plan",
    "reference_values",
]


def axis_weights(n_in: int, n_out: int, fused: bool):
    """Source indices and float32 weights of one axis of torch's bilinear resize (``align_corners=False``,
    output size given): ``src = max(n_in / n_out * (i + 0.5) - 0.5, 0)``, ``i0 = min(floor(src), n_in-1)``,
    ``i1 = i0 + (i0 < n_in - 1)``, ``l1 = clamp(src - i0, 0, 1)``, ``l0 = 1 - l1``; a copy when the sizes are
    equal. ``fused``: ``src`` rounded once (a fused multiply-add, as torch's AVX2 CPU kernels and CUDA compute
    it) instead of twice.

    Returns:
        i0, i1 (n_out,) int64 and l0, l1 (n_out,) float32, on the CPU.
    """
    if n_in == n_out:
        i = torch.arange(n_out)
        return i, i, torch.ones(n_out), torch.zeros(n_out)
    scale = torch.tensor(float(n_in), dtype=torch.float32) / torch.tensor(float(n_out), dtype=torch.float32)
    d = torch.arange(n_out, dtype=torch.float32) + 0.5  # exact
    if fused:  # the float64 product of two float32 is exact, the -0.5 too: one rounding to float32
        src = (scale.double() * d.double() - 0.5).float()
    else:
        src = scale * d - 0.5
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    l1 = (src - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).long()
    return i0, i1, 1 - l1, l1


def _device_key(device: torch.device) -> Tuple[str, int]:
    return device.type, -1 if device.index is None else device.index


_ROUNDING_CACHE: Dict[Tuple[str, int], Optional[bool]] = {}


def source_index_rounding(device: torch.device) -> Optional[bool]:
    """Whether ``F.interpolate(mode="bilinear")`` on ``device`` rounds the source index once (True) or twice
    (False), read once per device from the weights it applies to one-hot inputs; None when neither matches
    (the exact mode then runs the reference)."""
    key = _device_key(device)
    if key not in _ROUNDING_CACHE:
        found = None
        for fused in (True, False):
            ok = True
            for n_in, n_out in ((61, 797), (797, 613), (301, 1216)):  # H + W > 128: torch's generic kernel
                eye = torch.eye(n_in, device=device)[None, :, None, :]
                got = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False)[0, :, 0].cpu()
                i0, i1, l0, l1 = axis_weights(n_in, n_out, fused)
                x = torch.arange(n_out)
                inner = i0 != i1
                ok &= bool((got[i0, x] == l0)[inner].all()) and bool((got[i1, x] == l1)[inner].all())
            if ok:
                found = fused
                break
        _ROUNDING_CACHE[key] = found
    return _ROUNDING_CACHE[key]


def fma32(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """float32 ``x * y + z`` rounded once (a fused multiply-add), for float32 tensors of one shape: the
    float64 product is exact, the float64 sum is corrected with its exact error (TwoSum) where it lands on a
    float32 tie."""
    p = x.double() * y.double()
    zd = z.double()
    s = p + zd
    bb = s - p
    err = (p - (s - bb)) + (zd - bb)
    f = s.float()
    fd = f.double()
    up = torch.nextafter(f, torch.full_like(f, float("inf")))
    down = torch.nextafter(f, torch.full_like(f, float("-inf")))
    lo = torch.where(fd < s, f, down)
    hi = torch.where(fd < s, up, f)
    tie = ((lo.double() + hi.double()) * 0.5 == s) & (err != 0)
    return torch.where(tie, torch.where(err > 0, hi, lo), f)


def _lerp32(t0, w0, t1, w1, fused: bool):
    """One level of torch's generic CPU bilinear kernel, ``t0 * w0 + t1 * w1`` in float32: with ``fused``
    the compiler's contraction ``fma(t0, w0, t1 * w1)``, else two products and a sum."""
    return fma32(t0, w0, t1 * w1) if fused else t0 * w0 + t1 * w1


_ARITHMETIC_CACHE: Dict[Tuple[str, int], Optional[bool]] = {}


def bilinear_arithmetic(device: torch.device, fused_index: bool) -> Optional[bool]:
    """Whether :func:`reference_values` reproduces ``F.interpolate`` bit for bit on ``device`` with
    contracted (True) or plain (False) multiply-adds, read once from a random two-step probe; None if
    neither (near-ties then use the reference's resized maps)."""
    key = _device_key(device)
    if key not in _ARITHMETIC_CACHE:
        g = torch.Generator().manual_seed(0)
        probs = torch.rand(4, 37, 53, generator=g).to(device)
        found = None
        for image_size, output_size in (((141, 203), (230, 317)), ((147, 211), (97, 150))):
            ref = rescale_probs(probs, image_size, output_size, 4).cpu()
            ys, xs = torch.meshgrid(torch.arange(output_size[0]), torch.arange(output_size[1]), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            ok = []
            for fused in (True, False):
                plan = exact_plan(probs.shape[1:], 4, image_size, output_size, fused_index)
                ks = [torch.full_like(ys, k) for k in range(4)]
                vals = torch.stack([reference_values(probs.cpu(), plan, ys, xs, k, fused) for k in ks])
                ok.append(bool((vals == ref.flatten(1)).all()))
            current = True if ok[0] else (False if ok[1] else None)
            found = current if image_size == (141, 203) else (found if found == current else None)
        _ARITHMETIC_CACHE[key] = found
    return _ARITHMETIC_CACHE[key]


def exact_plan(cells_hw, stride, image_size, output_size, fused_index: bool):
    """Per axis (rows, columns): the :func:`axis_weights` of step 1 (cells -> padded input) and step 2
    (crop -> output)."""
    plan = []
    for n_cells, n_img, n_out in zip(cells_hw, image_size, output_size):
        step1 = axis_weights(n_cells, stride * n_cells, fused_index)
        plan.append((step1, axis_weights(n_img, n_out, fused_index)))
    return plan


def reference_values(probs, plan, ys, xs, ks, fused: bool) -> torch.Tensor:
    """The reference's float32 resized probabilities at the pixels (ys, xs) of kernels ks (each (M,)),
    reproducing torch's generic CPU bilinear kernel operation by operation (outer level rows, inner level
    columns; see :func:`_lerp32`).

    Args:
        probs: (N, h4, w4) float32; plan: from :func:`exact_plan`.
    Returns:
        (M,) float32, on the device of ``probs``.
    """
    (r1, r2), (c1, c2) = plan
    dev = probs.device
    ys, xs, ks = ys.cpu(), xs.cpu(), ks.cpu()
    flat = probs.reshape(probs.shape[0], -1).cpu()
    w4 = probs.shape[-1]

    def q(a, b):  # step-1 value at padded-input (a, b): rows outer, columns inner
        def t(c):
            left, right = flat[ks, c * w4 + c1[0][b]], flat[ks, c * w4 + c1[1][b]]
            return _lerp32(left, c1[2][b], right, c1[3][b], fused)

        return _lerp32(t(r1[0][a]), r1[2][a], t(r1[1][a]), r1[3][a], fused)

    def t2(a):
        return _lerp32(q(a, c2[0][xs]), c2[2][xs], q(a, c2[1][xs]), c2[3][xs], fused)

    return _lerp32(t2(r2[0][ys]), r2[2][ys], t2(r2[1][ys]), r2[3][ys], fused).to(dev)


def axis_support(n_cells: int, stride: int, n_img: int, n_out: int, fused: bool, device):
    """:func:`axis_support_cpu` on ``device``."""
    return tuple(t.to(device) for t in axis_support_cpu(n_cells, stride, n_img, n_out, fused))


@functools.lru_cache(maxsize=256)
def axis_support_cpu(n_cells: int, stride: int, n_img: int, n_out: int, fused: bool):
    """The composite of the two resizes along one axis (cells -> padded input ``stride * n_cells`` -> crop
    ``n_img`` -> ``n_out``): output index i reads the cells ``lo[i] .. lo[i] + span[i] - 1`` (span <= 3)
    with the float64 products ``weights[i, k]`` of the float32 step weights (k = cell - lo; 0 for k >=
    span).

    Returns:
        lo (n_out,) int64, span (n_out,) int64 and weights (n_out, 3) float64.
    """
    c0, c1, m0, m1 = axis_weights(n_cells, stride * n_cells, fused)
    a0, a1, l0, l1 = axis_weights(n_img, n_out, fused)
    lo = c0[a0]
    span = c1[a1] - lo + 1
    if int(span.max()) > 3:
        raise AssertionError("bilinear support wider than 3 cells")
    w = torch.zeros(n_out, 3, dtype=torch.float64)
    rows = torch.arange(n_out)
    for a, lam in ((a0, l0), (a1, l1)):
        for c, mu in ((c0[a], m0[a]), (c1[a], m1[a])):
            w.index_put_((rows, c - lo), lam.double() * mu.double(), accumulate=True)
    return lo, span, w
