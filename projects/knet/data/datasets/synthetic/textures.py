"""The stuff textures of the synthetic dataset: one noisy, class-typical texture per stuff class.

Each ``texture(rng, h, w, s)`` draws an (h, w, 3) float32 RGB image from ``rng`` (``s``: the image's scale
relative to 256x256).
"""

from typing import Tuple

import cv2
import numpy as np

from .classes import STUFF_CLASSES

__all__ = ["STUFF_TEXTURES", "smooth_noise"]


def smooth_noise(rng: np.random.Generator, h: int, w: int, grid: Tuple[int, int]) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise field (h, w) float32: a (gh, gw) Gaussian grid upsampled
    bicubically."""
    coarse = rng.standard_normal(grid).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _rgb(color) -> np.ndarray:
    return np.asarray(color, dtype=np.float32).reshape(1, 1, 3)


def _texture_sky(rng, h, w, s):
    """Light blue, soft vertical gradient, white cloud blobs, faint grain."""
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    base = _rgb([110, 170, 230]) + rng.uniform(-12, 12, 3).astype(np.float32) + 50.0 * yy
    clouds = np.clip(smooth_noise(rng, h, w, (6, 6)) - 0.2, 0.0, 1.0)[..., None]
    img = base * (1.0 - 0.7 * clouds) + 245.0 * 0.7 * clouds
    return img + 3.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def _texture_grass(rng, h, w, s):
    """Green with vertical blade streaks and strong grain."""
    streak_cols = max(8, int(round(64 * s)))
    streaks = smooth_noise(rng, h, w, (4, streak_cols))[..., None]
    base = _rgb([55, 135, 45]) + rng.uniform(-10, 10, 3).astype(np.float32)
    img = base + streaks * _rgb([10, 28, 8])
    return img + 10.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def _texture_sand(rng, h, w, s):
    """Beige, fine per-pixel speckle and sparse dark grains, soft dunes."""
    base = _rgb([212, 186, 138]) + rng.uniform(-10, 10, 3).astype(np.float32)
    dunes = smooth_noise(rng, h, w, (5, 5))[..., None] * 10.0
    img = base + dunes + 14.0 * rng.standard_normal((h, w, 1)).astype(np.float32)
    grains = (rng.random((h, w)) < 0.03)[..., None]
    return np.where(grains, img - 60.0, img)


def _texture_water(rng, h, w, s):
    """Dark teal with oriented, noise-warped waves."""
    theta = rng.uniform(0, np.pi)
    wavelength = rng.uniform(9, 15) * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / wavelength)
    warp = 2.5 * smooth_noise(rng, h, w, (5, 5))
    waves = np.sin(phase + warp)[..., None]
    base = _rgb([25, 85, 125]) + rng.uniform(-8, 8, 3).astype(np.float32)
    img = base + waves * _rgb([18, 30, 30])
    return img + 5.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def _texture_brick(rng, h, w, s):
    """Red-brown bricks in offset rows, light mortar lines, per-brick tint, grain."""
    bh = max(4, int(round(rng.uniform(10, 14) * s)))
    bw = 2 * bh
    mortar = max(1, int(round(2 * s)))
    yy, xx = np.mgrid[0:h, 0:w]
    row = yy // bh
    xs = xx + (row % 2) * (bw // 2)
    col = xs // bw
    tint = rng.uniform(-25, 25, (h // bh + 2, w // bw + 3)).astype(np.float32)
    base = _rgb([165, 72, 50]) + rng.uniform(-10, 10, 3).astype(np.float32)
    img = base + tint[row, col][..., None]
    is_mortar = ((yy % bh) < mortar) | ((xs % bw) < mortar)
    img = np.where(is_mortar[..., None], _rgb([200, 195, 185]), img)
    return img + 8.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


STUFF_TEXTURES = [_texture_sky, _texture_grass, _texture_sand, _texture_water, _texture_brick]
assert len(STUFF_TEXTURES) == len(STUFF_CLASSES)
