"""The exact mode's reading and reproduction of torch's bilinear resize (weights, float32 arithmetic)."""

import pytest
import torch

from knet.modeling.postprocessing.bilinear import (
    bilinear_arithmetic,
    exact_plan,
    fma32,
    reference_values,
    source_index_rounding,
)
from knet.modeling.postprocessing.resize import rescale_probs


def test_fma32_is_a_single_rounding():
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.rand(100000, generator=g) for _ in range(3))
    # the float64 product is exact; rounding its float64 sum to float32 rounds once except when that sum
    # lands exactly on a float32 tie (probability ~2**-29 here)
    exact = x.double() * y.double() + z.double()
    assert torch.equal(fma32(x, y, z), exact.float())
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 is halfway between two float32; a tiny addend decides, which a
    # float64 sum would lose (double rounding)
    x = torch.tensor([1.0 + 2.0**-12])
    up, down = 1.0 + 2.0**-11 + 2.0**-23, 1.0 + 2.0**-11
    for z, expected in ((2.0**-80, up), (-(2.0**-80), down), (0.0, down)):  # 0: ties to even
        assert fma32(x, x, torch.tensor([z])).item() == expected


@pytest.mark.parametrize(
    "cells,image_size,output_size",
    [((24, 30), (93, 118), (186, 236)), ((13, 40), (49, 157), (301, 1)), ((9, 35), (33, 139), (29, 211))],
)
def test_reference_values_are_bit_identical_to_interpolate(cells, image_size, output_size):
    device = torch.device("cpu")
    fused_index = source_index_rounding(device)
    arithmetic = bilinear_arithmetic(device, fused_index)
    assert fused_index is not None and arithmetic is not None, "torch's bilinear CPU kernel could not be read"
    probs = torch.rand(5, *cells, generator=torch.Generator().manual_seed(1))
    ref = rescale_probs(probs, image_size, output_size, 4)
    plan = exact_plan(cells, 4, image_size, output_size, fused_index)
    ys, xs = torch.meshgrid(torch.arange(output_size[0]), torch.arange(output_size[1]), indexing="ij")
    for k in range(5):
        ks = torch.full((ys.numel(),), k)
        got = reference_values(probs, plan, ys.flatten(), xs.flatten(), ks, arithmetic)
        assert torch.equal(got, ref[k].flatten())
