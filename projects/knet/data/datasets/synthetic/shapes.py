"""The thing shapes of the synthetic dataset: contours of unit shapes, their rasterisation at a random pose
and colour, and the class-typical surface pattern drawn on them."""

import colorsys
from typing import List, Tuple

import cv2
import numpy as np

from .classes import THING_CLASSES

__all__ = ["draw_thing"]

_PATTERN_PERIOD = 9.0  # pixels per period of the things' surface pattern at 256x256
_PATTERN_CONTRAST = 0.5  # the pattern scales the shape's brightness by 1 +- this


def _regular_polygon(n: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _unit_shape(rng, cls: int) -> List[np.ndarray]:
    """Contours (list of (V, 2) arrays in a unit frame); a second contour is a hole (the ring)."""
    name = THING_CLASSES[cls]
    if name == "disc":
        return [_regular_polygon(72)]
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.85]
    if name == "triangle":
        return [_regular_polygon(3, phase=-np.pi / 2)]
    if name == "star":
        outer = _regular_polygon(5, 1.0, -np.pi / 2)
        inner = _regular_polygon(5, rng.uniform(0.38, 0.5), -np.pi / 2 + np.pi / 5)
        return [np.stack([outer, inner], axis=1).reshape(-1, 2)]
    if name == "ring":
        return [_regular_polygon(72), _regular_polygon(72, rng.uniform(0.45, 0.65))]
    if name == "cross":
        a = rng.uniform(0.25, 0.38)
        pts = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
        return [np.array(pts, dtype=np.float64)]
    raise AssertionError(name)


def draw_thing(rng, cls: int, h: int, w: int) -> Tuple[np.ndarray, Tuple[slice, slice], np.ndarray]:
    """Rasterise one thing: returns (mask (h, w) bool, bbox slices, texture of the bbox (bh, bw, 3)
    float32)."""
    side = min(h, w)
    diameter = side * np.exp(rng.uniform(np.log(0.08), np.log(0.45)))
    aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.0 / 0.6)))
    radii = np.array([np.sqrt(aspect), 1.0 / np.sqrt(aspect)]) * diameter / 2
    angle = rng.uniform(0, 2 * np.pi)
    center = np.array([rng.uniform(0.08, 0.92) * w, rng.uniform(0.08, 0.92) * h])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    contours = [(c * radii) @ rot.T + center for c in _unit_shape(rng, cls)]
    mask = np.zeros((h, w), np.uint8)
    # 4 fractional bits: sub-pixel vertex positions, exact and deterministic integer rasterisation.
    cv2.fillPoly(mask, [np.round(contours[0] * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    if len(contours) > 1:  # hole
        cv2.fillPoly(mask, [np.round(contours[1] * 16).astype(np.int32)], 0, lineType=cv2.LINE_8, shift=4)

    x0, y0 = np.clip(np.floor(contours[0].min(0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(contours[0].max(0)).astype(int) + 2, 0, [w, h])
    box = (slice(y0, y1), slice(x0, x1))

    # Random saturated colour, a linear shading across the shape and a little grain: never a flat fill.
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)
    color = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    grad = ((xx - center[0]) * np.cos(phi) + (yy - center[1]) * np.sin(phi)) / max(radii.max(), 1.0)
    shade = 1.0 + 0.18 * np.clip(grad, -1.0, 1.0)[..., None]
    # A high-contrast surface pattern typical of the class, in the shape's own frame and at a fixed physical
    # scale (a period of _PATTERN_PERIOD pixels at 256x256), as real objects have class-typical texture as
    # well as shape; the colour stays random.
    period = _PATTERN_PERIOD * side / 256.0
    u = ((xx - center[0]) * np.cos(angle) + (yy - center[1]) * np.sin(angle)) / period
    v = (-(xx - center[0]) * np.sin(angle) + (yy - center[1]) * np.cos(angle)) / period
    shade = shade * (1.0 + _PATTERN_CONTRAST * _thing_pattern(cls, u, v))[..., None]
    tex = color.reshape(1, 1, 3) * shade + 5.0 * rng.standard_normal((y1 - y0, x1 - x0, 1)).astype(np.float32)
    return mask.astype(bool), box, tex


def _thing_pattern(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Class-typical surface pattern in [-1, 1] over the shape's coordinates (u, v) in pattern periods."""
    k = 2 * np.pi
    patterns = [
        lambda: np.cos(k * np.hypot(u, v)),  # disc: concentric bands
        lambda: np.sign(np.cos(k * u)),  # square: stripes
        lambda: np.sign(np.cos(k * u) * np.cos(k * v)),  # triangle: checks
        lambda: np.where(np.cos(k * u) * np.cos(k * v) > 0.5, 1.0, -1.0),  # star: bright dots on dark
        lambda: np.cos(2 * np.arctan2(v, u) * 6),  # ring: radial spokes
        # cross: a grid of bright lines
        lambda: np.where((np.abs(np.sin(k * u)) < 0.35) | (np.abs(np.sin(k * v)) < 0.35), 1.0, -1.0),
    ]
    return patterns[cls % len(patterns)]().astype(np.float32)
