"""Cropping and resizing of stride-4 maps, aligned as the reference."""

import torch

from knet.modeling.postprocessing import crop_to_image, nearest_cells, upsample_probs


def test_crop_and_alignment():
    # image 20 x 30 padded to 32 x 32 -> mask grid 8 x 8, cropped to 5 x 8 cells
    probs = torch.zeros(1, 8, 8)
    assert crop_to_image(probs, (20, 30), 4).shape == (1, 5, 8)
    rows, cols = nearest_cells((20, 30), (40, 60), (5, 8), 4)
    assert rows.tolist() == [i // 8 for i in range(40)] and cols.tolist() == [j // 8 for j in range(60)]
    # a cell block maps onto the matching pixels after bilinear upsampling
    m = torch.zeros(1, 5, 8)
    m[0, 1:3, 2:4] = 1.0
    up = upsample_probs(m, (20, 30), (40, 60), 4)
    assert up.shape == (1, 40, 60)
    assert (up[0, 12:20, 20:28] > 0.99).all() and (up[0, :4] == 0).all() and (up[0, 28:] == 0).all()
    # odd output sizes: exactly the requested size
    assert upsample_probs(m, (19, 29), (37, 55), 4).shape == (1, 37, 55)
