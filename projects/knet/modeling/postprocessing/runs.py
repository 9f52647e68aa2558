"""Output rows (columns) grouped in runs that read the same stride-4 cells, for the exact panoptic mode.

Along each axis, the output indices whose bilinear support (:func:`~.bilinear.axis_support`) is the same
form one run (the supports never decrease, so a run is a range of indices). A row run and a column run make a
rectangle of pixels that reads one block of at most 3 x 3 cells: what holds on every cell of the block holds
at every pixel of the rectangle, decided once for all of them (:func:`uniform_over_runs`,
:func:`support_counts`).
"""

from typing import NamedTuple

import torch

__all__ = ["AxisRuns", "axis_runs", "uniform_over_runs", "rect_pixels", "support_counts"]


class AxisRuns(NamedTuple):
    """The output indices of one axis grouped in runs that read the same cells (each (R,) int64, except
    ``run_of`` (n_out,)): cells ``lo .. lo + span - 1``, output indices ``start .. start + length - 1``."""

    lo: torch.Tensor
    span: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    run_of: torch.Tensor


def axis_runs(lo: torch.Tensor, span: torch.Tensor) -> AxisRuns:
    """Runs of the (n_out,) supports ``lo``, ``span`` (both non-decreasing along the axis, hence each
    support is one run)."""
    code = lo * 3 + span - 1
    codes, run_of, length = torch.unique_consecutive(code, return_inverse=True, return_counts=True)
    return AxisRuns(codes // 3, codes % 3 + 1, length.cumsum(0) - length, length, run_of)


def uniform_over_runs(key: torch.Tensor, runs: AxisRuns, dim: int) -> torch.Tensor:
    """Along ``dim`` (cells -> runs): the key of a run's first cell where all its cells have that key, else
    -1 (keys are >= 0, or -1 for "undecided"). (..., n_cells, ...) -> (..., R, ...)."""
    n = key.shape[dim]
    windows, same = [key], None  # windows[t]: the common key of cells c .. c + t, else -1
    for t in (1, 2):
        head = key.narrow(dim, 0, max(n - t, 0))
        equal = head == key.narrow(dim, t, max(n - t, 0))
        same = equal if same is None else same.narrow(dim, 0, max(n - t, 0)) & equal
        pad_shape = list(key.shape)
        pad_shape[dim] = min(t, n)
        windows.append(torch.cat([torch.where(same, head, -1), key.new_full(pad_shape, -1)], dim))
    return torch.cat(windows, dim).index_select(dim, runs.lo + n * (runs.span - 1))


def rect_pixels(rect_rows, rect_cols, rows: AxisRuns, cols: AxisRuns):
    """The output pixels of the rectangles (row run ``rect_rows``, column run ``rect_cols``), each (M,).
    Returns ys, xs and the rectangle of every pixel, each (U,) int64."""
    device = rect_rows.device
    n_r, n_c = rows.length[rect_rows], cols.length[rect_cols]
    count = n_r * n_c
    rect = torch.repeat_interleave(torch.arange(len(count), device=device), count)
    offset = torch.arange(len(rect), device=device) - (count.cumsum(0) - count)[rect]
    width = n_c[rect]
    return rows.start[rect_rows][rect] + offset // width, cols.start[rect_cols][rect] + offset % width, rect


def support_counts(cells: torch.Tensor, rows: AxisRuns, cols: AxisRuns) -> torch.Tensor:
    """Number of output pixels whose whole support is True in ``cells`` (K, hc, wc) bool: windows of 1-3
    cells per axis (slices, no gathers), weighted by the pixels of the runs they stand for. Returns (K,)
    float64 (exact integers)."""
    K, hc, wc = cells.shape
    total = torch.zeros(K, dtype=torch.float64, device=cells.device)
    per_span = []
    for runs, n in ((rows, hc), (cols, wc)):  # output rows (columns) of each (first cell, span)
        per_span.append([
            torch.bincount(runs.lo[runs.span == t], weights=runs.length[runs.span == t].double(), minlength=n)
            for t in (1, 2, 3)
        ])
    in_rows = cells
    for t in (1, 2, 3):  # in_rows[:, r]: rows r .. r + t - 1 all True
        if t > 1:
            in_rows = in_rows[:, :-1] & cells[:, t - 1 :]
        row_w = per_span[0][t - 1][: hc - t + 1]
        if not row_w.any():
            continue
        in_both = in_rows
        for s in (1, 2, 3):
            if s > 1:
                in_both = in_both[:, :, :-1] & in_rows[:, :, s - 1 :]
            col_w = per_span[1][s - 1][: wc - s + 1]
            if col_w.any():  # float32 holds these integer sums exactly (< 2**24 per row)
                total += (in_both.float() @ col_w.float()).double() @ row_w
    return total
