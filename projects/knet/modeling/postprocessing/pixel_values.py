"""Resized probabilities of the exact panoptic mode at sparse (pixel, kernel) pairs.

Every value the reference compares at an output pixel is a combination of at most 3 x 3 stride-4 cells
(:func:`~.bilinear.axis_support`). :class:`PixelValues` evaluates that combination in float64 from the
cells (within 6e-7 of the reference's float32 value, see :mod:`.panoptic_exact`), and, where two kernels are
closer than that, the reference's own float32 value (:func:`~.bilinear.reference_values`, or the reference's
resized maps of the few kernels concerned where the arithmetic could not be read on this device).
"""

from typing import Dict, List

import torch

from .bilinear import bilinear_arithmetic, exact_plan, reference_values
from .resize import rescale_probs

__all__ = ["PixelValues"]


class PixelValues:
    """Values at (ys, xs, ks) triples, each (M,) int64 (output row, output column, kernel).

    Args:
        probs: (N, h4, w4) float32 probabilities (the whole map, as the reference).
        scores: (N,) kernel scores.
        rows, cols: :func:`~.bilinear.axis_support` of each axis.
        fused_index: :func:`~.bilinear.source_index_rounding` of the device.
    """

    def __init__(self, probs, scores, image_size, output_size, stride, rows, cols, fused_index):
        self.probs, self.scores = probs, scores
        self.image_size, self.output_size, self.stride = image_size, output_size, stride
        N, h4, w4 = probs.shape
        self.flat, self.plane, self.w4 = probs.reshape(-1), h4 * w4, w4
        k3 = torch.arange(3, device=probs.device)
        # the cells lo .. lo + 2 of every output row / column (clamped; their weights are 0 beyond the span)
        self.row_cells = (rows[0][:, None] + k3).clamp(max=h4 - 1)  # (H, 3)
        self.col_cells = (cols[0][:, None] + k3).clamp(max=w4 - 1)  # (W, 3)
        self.row_w, self.col_w = rows[2], cols[2]
        self.fused_index = fused_index
        self.exact: Dict[int, torch.Tensor] = {}
        self.stats = {"argmax_pairs": 0, "argmax_all_kernels": 0, "exact_kernels": 0, "exact_counts": 0,
                      "exact_values": 0}

    def blocks(self, ys, xs):
        """The 3 x 3 cells ``lo + (i, j)`` read for the pixels (ys, xs) (U,): their offsets in a kernel's
        plane (U, 9) int64 and their weights (U, 9) float64 (0 outside the support)."""
        offsets = (self.row_cells[ys] * self.w4)[:, :, None] + self.col_cells[xs][:, None, :]
        weights = self.row_w[ys][:, :, None] * self.col_w[xs][:, None, :]
        return offsets.view(-1, 9), weights.view(-1, 9)

    def support(self, offsets, ks) -> torch.Tensor:
        """(M, 9) float32 cell values of kernels ks (M,) at the block ``offsets`` (M, 9)."""
        return self.flat[ks[:, None] * self.plane + offsets]

    def probs_from(self, offsets, weights, ks) -> torch.Tensor:
        """(M,) float64 resized probabilities of kernels ks at the blocks (offsets, weights) (M, 9): the exact
        combination of the reference's float32 inputs and weights, up to float64 rounding."""
        return (self.support(offsets, ks).double() * weights).sum(1)

    def values_from(self, offsets, weights, ks) -> torch.Tensor:
        """(M,) float64 score x resized probability (see :meth:`probs_from`)."""
        return self.scores[ks].double() * self.probs_from(offsets, weights, ks)

    def probs_at(self, ys, xs, ks) -> torch.Tensor:
        """:meth:`probs_from` at the pixels (ys, xs) (M,)."""
        return self.probs_from(*self.blocks(ys, xs), ks)

    def values_at(self, ys, xs, ks) -> torch.Tensor:
        """:meth:`values_from` at the pixels (ys, xs) (M,)."""
        return self.values_from(*self.blocks(ys, xs), ks)

    def reference_at(self, ys, xs, ks) -> torch.Tensor:
        """(M,) float32: the reference's resized probabilities, reproduced operation by operation where that
        was verified on this device, else read from its resized maps."""
        self.stats["exact_values"] += len(ys)
        arithmetic = bilinear_arithmetic(self.probs.device, self.fused_index)
        if arithmetic is not None:
            shape = self.probs.shape[1:]
            plan = exact_plan(shape, self.stride, self.image_size, self.output_size, self.fused_index)
            return reference_values(self.probs, plan, ys, xs, ks, arithmetic)
        out = torch.empty(len(ys), dtype=self.probs.dtype, device=self.probs.device)
        maps = self.reference_maps(ks.unique().tolist())
        for k, m in maps.items():
            sel = ks == k
            out[sel] = m[ys[sel], xs[sel]]
        return out

    def reference_maps(self, kernels: List[int]) -> Dict[int, torch.Tensor]:
        """The reference's float32 resized probability maps (H, W) of ``kernels``, computed by the same torch
        calls on a subset of the channels (per element the same arithmetic as long as torch's generic
        bilinear kernel runs, hence never 3 channels), cached."""
        todo = [k for k in dict.fromkeys(kernels) if k not in self.exact]
        if todo:
            sel = todo + ([todo[0]] if len(todo) == 3 else [])
            maps = rescale_probs(self.probs[sel], self.image_size, self.output_size, self.stride)
            for k, m in zip(todo, maps):
                self.exact[k] = m
            self.stats["exact_kernels"] += len(todo)
        return {k: self.exact[k] for k in kernels}
