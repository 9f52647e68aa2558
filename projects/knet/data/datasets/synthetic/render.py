"""One synthetic image and its segments, a pure function of ``(seed, split, index, image_size)``."""

from typing import Optional

import numpy as np

from .classes import NUM_THING_CLASSES, STUFF_CLASSES
from .layout import DEFAULT_IMAGE_SIZE, normalize_size
from .shapes import draw_thing
from .textures import STUFF_TEXTURES, smooth_noise

__all__ = ["THINGS_PER_IMAGE", "render_synthetic_image"]

_SPLIT_CODE = {"train": 0, "val": 1}
# How many things an image holds (inclusive range; one image in ten holds none). Training scenes are denser
# than validation ones: more labelled things per training image teach the thing classes in fewer iterations
# (docs/quickstart_experiments.md rows 86-87), while the validation images stay those of generator version 3.
THINGS_PER_IMAGE = {"train": (4, 10), "val": (1, 8)}


def render_synthetic_image(
    seed: int,
    split: str,
    index: int,
    image_size=DEFAULT_IMAGE_SIZE,
    *,
    min_visible_area: Optional[int] = None,
):
    """Draw one image, a pure function of its arguments.

    Args:
        seed: dataset seed; split: "train" or "val"; index: 0-based image index within the split;
        image_size: int (square) or (height, width).
        min_visible_area: things with fewer visible pixels become void (default ``max(4, 4e-4 * H * W)``).

    Returns:
        image: (H, W, 3) uint8 RGB;
        segment_map: (H, W) int32, 0 = void, k >= 1 = ``segments[k - 1]``;
        segments: list of dicts ``{"category_id": contiguous id, "isthing": bool}`` (stuff first, then things
        in drawing order; every listed segment has at least one pixel).
    """
    h, w = normalize_size(image_size)
    s = min(h, w) / 256.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))
    if min_visible_area is None:
        min_visible_area = max(4, int(round(4e-4 * h * w)))

    # Stuff: argmax over one smooth noise field per chosen class; the finer octave makes the borders wobble.
    n_stuff = int(rng.integers(2, 5))
    stuff = rng.choice(len(STUFF_CLASSES), size=n_stuff, replace=False)
    fields = np.stack(
        [smooth_noise(rng, h, w, (3, 3)) + 0.3 * smooth_noise(rng, h, w, (12, 12)) for _ in range(n_stuff)]
    )
    region = np.argmax(fields, axis=0)
    image = np.zeros((h, w, 3), np.float32)
    segment_map = np.zeros((h, w), np.int32)
    segments = []
    for k, cls in enumerate(stuff):
        sel = region == k
        tex = STUFF_TEXTURES[cls](rng, h, w, s)
        image[sel] = tex[sel]
        if sel.any():
            segments.append({"category_id": NUM_THING_CLASSES + int(cls), "isthing": False})
            segment_map[sel] = len(segments)

    # Things: none in one image out of ten, otherwise THINGS_PER_IMAGE[split], later ones drawn on top.
    low, high = THINGS_PER_IMAGE[split]
    n_things = 0 if index % 10 == 0 else int(rng.integers(low, high + 1))
    for _ in range(n_things):
        cls = int(rng.integers(0, NUM_THING_CLASSES))
        mask, box, tex = draw_thing(rng, cls, h, w)
        sub = mask[box]
        image[box][sub] = tex[sub]
        segments.append({"category_id": cls, "isthing": True})
        segment_map[mask] = len(segments)

    # Drop invisible segments, turn tiny thing fragments into void, renumber 1..K.
    areas = np.bincount(segment_map.ravel(), minlength=len(segments) + 1)
    lut = np.zeros(len(segments) + 1, np.int32)
    kept = []
    for k, seg in enumerate(segments, start=1):
        if areas[k] == 0 or (seg["isthing"] and areas[k] < min_visible_area):
            continue
        kept.append(seg)
        lut[k] = len(kept)
    segment_map = lut[segment_map]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), segment_map, kept
