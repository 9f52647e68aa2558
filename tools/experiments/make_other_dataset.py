#!/usr/bin/env python
"""Generate a second small synthetic panoptic dataset ("knet_other"), unlike the project's own synthetic set.

    python tools/experiments/make_other_dataset.py --root datasets/knet_other
    python tools/experiments/make_other_dataset.py --root DIR --seed 123 --num-train 320 --num-val 60 \
        --size 224

It checks that a training recipe is not fitted to ``tools/generate_synthetic.py``'s data: other shapes,
other textures, another image size, stuff regions split by wavy lines instead of noise blobs, and things with
a random flat colour and no class-typical surface pattern (the outline is the only cue to a thing's class).

* 3 stuff classes covering the background (1-3 regions per image): wood grain, woven fabric, speckled
  concrete;
* 4 thing classes: heart, crescent, arrow, hexagon frame (a hexagonal outline ring); 1-6 per image, 20-80 px
  (at 224 px), random position, rotation and colour; later things are drawn on top of earlier ones.

Segments with fewer than 30 visible pixels become void (id 0). Written in the COCO panoptic format::

    DIR/images/{train,val}/000001.jpg     RGB images
    DIR/panoptic_{train,val}/000001.png   panoptic PNGs (segment id = R + 256 G + 256^2 B, 0 = void)
    DIR/panoptic_{train,val}.json         COCO panoptic JSON (images, annotations, categories)
    DIR/instances_{train,val}.json        COCO instances JSON of the things (RLE masks): for mask AP

Category ids: things 1-4, stuff 11-13; segment id = category_id * 1000 + k (k = 1, 2, ... per thing category,
0 for stuff). Deterministic given --seed (each image draws from its own generator seeded by (seed, split,
index)). The annotations are encoded by the synthetic dataset's ``encode_sample`` (package ``knet``). Register
the result with ``tools/experiments/other_dataset.py``.
"""
import argparse
import colorsys
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from knet.data.datasets.synthetic.encode import dump_json, encode_sample

THING_CATEGORIES = [
    {"id": 1, "name": "heart", "supercategory": "shape", "isthing": 1, "color": [230, 25, 75]},
    {"id": 2, "name": "crescent", "supercategory": "shape", "isthing": 1, "color": [255, 200, 20]},
    {"id": 3, "name": "arrow", "supercategory": "shape", "isthing": 1, "color": [0, 130, 200]},
    {"id": 4, "name": "hexagon_frame", "supercategory": "shape", "isthing": 1, "color": [60, 180, 75]},
]
STUFF_CATEGORIES = [
    {"id": 11, "name": "wood", "supercategory": "material", "isthing": 0, "color": [150, 100, 50]},
    {"id": 12, "name": "fabric", "supercategory": "material", "isthing": 0, "color": [70, 90, 160]},
    {"id": 13, "name": "concrete", "supercategory": "material", "isthing": 0, "color": [160, 160, 160]},
]
CATEGORIES = THING_CATEGORIES + STUFF_CATEGORIES
SPLITS = ("train", "val")
MIN_AREA = 30  # segments with fewer visible pixels become void
MIN_THING_PX, MAX_THING_PX = 20.0, 80.0  # a thing's extent at 224x224 (scaled with --size)
_SPLIT_CODE = {"train": 0, "val": 1}


# ---------------------------------------------------------------------------------------------------- noise
def smooth_noise(rng, h, w, cells):
    """Zero-mean, roughly unit-variance smooth field (h, w) float32: a Gaussian grid resized bicubically."""
    gh, gw = (cells, cells) if np.isscalar(cells) else cells
    coarse = rng.standard_normal((gh + 1, gw + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _rgb(color):
    return np.asarray(color, dtype=np.float32).reshape(1, 1, 3)


def _rotated(h, w, angle):
    """Image coordinates rotated by ``angle``: (u, v) arrays (h, w) float32."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xx * c + yy * s, -xx * s + yy * c


# ------------------------------------------------------------------------------------------ stuff textures
def texture_wood(rng, h, w, s):
    """Wood grain: warped growth rings (light/dark bands) seen from the side, fine streaks along the grain."""
    u, v = _rotated(h, w, rng.uniform(0, np.pi))
    centre = rng.uniform(-1.5, 1.5) * h  # the log's axis lies outside the image: long, gently curved bands
    warp = 12.0 * s * smooth_noise(rng, h, w, (3, 3)) + 4.0 * s * smooth_noise(rng, h, w, (8, 2))
    r = np.sqrt((v - centre) ** 2 + (0.15 * u) ** 2) + warp
    period = rng.uniform(7.0, 11.0) * s
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * r / period)
    rings = rings ** 3  # thin dark late-wood lines on wide light early-wood
    light = _rgb([200, 150, 95]) + rng.uniform(-15, 15, 3).astype(np.float32)
    dark = _rgb([115, 70, 35]) + rng.uniform(-10, 10, 3).astype(np.float32)
    img = light + (dark - light) * rings[..., None]
    streaks = np.sin(2 * np.pi * v / (1.7 * s) + 3.0 * smooth_noise(rng, h, w, (2, 24)))
    img = img * (1.0 + 0.06 * streaks[..., None])
    return img + 4.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def texture_fabric(rng, h, w, s):
    """Woven fabric: a plain weave of two thread colours (warp over weft, then weft over warp), with fuzz."""
    u, v = _rotated(h, w, rng.uniform(-0.3, 0.3) + rng.integers(0, 2) * np.pi / 2)
    p = rng.uniform(4.5, 6.5) * s  # thread pitch
    iu, iv = np.floor(u / p), np.floor(v / p)
    fu, fv = u / p - iu, v / p - iv  # position inside the cell, [0, 1)
    warp_on_top = ((iu + iv) % 2) == 0
    # Each thread is brightest in its middle and dark at its edges (a rounded thread); gaps between threads.
    profile_u = np.sin(np.pi * fu) ** 0.7
    profile_v = np.sin(np.pi * fv) ** 0.7
    hue = rng.uniform(0, 1)
    warp_col = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.8))) * 255
    weft_col = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(-0.08, 0.08)) % 1, 0.15, 0.9)) * 255
    col = np.where(warp_on_top[..., None], _rgb(warp_col), _rgb(weft_col))
    shade = np.where(warp_on_top, profile_u, profile_v)[..., None]
    img = col * (0.45 + 0.55 * shade)
    img = img * (1.0 + 0.05 * smooth_noise(rng, h, w, (6, 6)))[..., None]
    return img + 6.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def texture_concrete(rng, h, w, s):
    """Speckled concrete: grey with soft blotches, fine grain, dark pores and light aggregate specks."""
    grey = rng.uniform(135, 175)
    base = _rgb([grey, grey, grey]) + rng.uniform(-6, 6, 3).astype(np.float32)
    blotch = 12.0 * smooth_noise(rng, h, w, (5, 5)) + 6.0 * smooth_noise(rng, h, w, (14, 14))
    img = base + blotch[..., None] + 9.0 * rng.standard_normal((h, w, 1)).astype(np.float32)
    dark = rng.random((h, w)) < 0.025
    dark |= np.roll(dark, 1, axis=0) & (rng.random((h, w)) < 0.5)  # some 2-pixel pores
    light = rng.random((h, w)) < 0.02
    img = np.where(dark[..., None], img - rng.uniform(55, 80), img)
    img = np.where(light[..., None], img + rng.uniform(35, 55), img)
    return img


STUFF_TEXTURES = [texture_wood, texture_fabric, texture_concrete]


# ------------------------------------------------------------------------------------------- stuff layout
def _wavy_side(rng, h, w):
    """Pixels on one side of a random wavy line through the middle of the image: (h, w) bool."""
    py, px = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = (xx - px) * np.cos(theta) + (yy - py) * np.sin(theta)  # signed distance to the straight line
    t = -(xx - px) * np.sin(theta) + (yy - py) * np.cos(theta)  # position along it
    side = min(h, w)
    for _ in range(int(rng.integers(2, 4))):  # a few sinusoidal wiggles
        amp = rng.uniform(0.02, 0.07) * side
        wavelength = rng.uniform(0.25, 0.9) * side
        d = d + amp * np.sin(2 * np.pi * t / wavelength + rng.uniform(0, 2 * np.pi))
    return d > 0


def stuff_layout(rng, h, w, n_regions):
    """Split the image into ``n_regions`` (1-3) regions by wavy lines: (h, w) int region index."""
    region = np.zeros((h, w), np.int32)
    min_area = 0.12 * h * w
    for k in range(1, n_regions):
        for _ in range(20):  # retry until both parts are large enough
            parent = int(np.argmax(np.bincount(region.ravel(), minlength=k)))  # split the largest region
            new = _wavy_side(rng, h, w) & (region == parent)
            if min_area <= new.sum() <= (region == parent).sum() - min_area:
                break
        region[new] = k
    return region


# --------------------------------------------------------------------------------------------- thing shapes
def _regular_polygon(n, radius=1.0, phase=0.0, vertices=None):
    a = phase + 2 * np.pi * np.arange(vertices or n) / (vertices or n)
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def unit_shape(rng, name):
    """Contours of a unit shape (extent about [-1, 1]^2): [outer, hole, ...], each (V, 2) (x, y down)."""
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # lobes up, point down
        pts = np.stack([x, y - 2.5], axis=1) / 16.5  # centred: y in [-14.5, 14.5]
        return [pts]
    if name == "crescent":  # a disc minus an overlapping, offset disc that pokes out of it
        r2 = rng.uniform(0.72, 0.9)
        offset = rng.uniform(0.38, 0.55)
        return [_regular_polygon(72), _regular_polygon(72, r2) + np.array([offset, -0.05])]
    if name == "arrow":
        shaft = rng.uniform(0.22, 0.36) / 2
        head_w = rng.uniform(0.75, 0.95)
        head_l = rng.uniform(0.6, 0.85)
        x0, xh = -1.0, 1.0 - head_l
        pts = [(x0, -shaft), (xh, -shaft), (xh, -head_w), (1.0, 0.0), (xh, head_w), (xh, shaft), (x0, shaft)]
        return [np.array(pts, dtype=np.float64)]
    if name == "hexagon_frame":  # a hexagonal outline ring
        inner = rng.uniform(0.55, 0.72)
        return [_regular_polygon(6), _regular_polygon(6, inner)]
    raise ValueError(name)


def draw_thing(rng, cls, h, w):
    """Rasterise one thing of class index ``cls``: (mask (h, w) bool, colour image (h, w, 3) float32)."""
    scale = min(h, w) / 224.0
    extent = np.exp(rng.uniform(np.log(MIN_THING_PX), np.log(MAX_THING_PX))) * scale
    aspect = np.exp(rng.uniform(np.log(0.85), np.log(1.0 / 0.85)))
    radii = np.array([np.sqrt(aspect), 1.0 / np.sqrt(aspect)]) * extent / 2
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h])
    contours = [(c * radii) @ rot.T + centre for c in unit_shape(rng, THING_CATEGORIES[cls]["name"])]

    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in contours[0]], fill=1)
    for hole in contours[1:]:
        draw.polygon([tuple(p) for p in hole], fill=0)
    mask = np.asarray(canvas, dtype=bool)

    # A random flat colour with a mild linear shading and grain, the same for every class.
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.35, 1.0), rng.uniform(0.35, 1.0)
    color = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = ((xx - centre[0]) * np.cos(phi) + (yy - centre[1]) * np.sin(phi)) / max(extent / 2, 1.0)
    shade = 1.0 + 0.12 * np.clip(grad, -1.0, 1.0)[..., None]
    img = _rgb(color) * shade + 3.0 * rng.standard_normal((h, w, 1)).astype(np.float32)
    return mask, img


# -------------------------------------------------------------------------------------------------- images
def render_image(seed, split, index, size):
    """One image, a pure function of its arguments.

    Returns (image (H, W, 3) uint8, segment map (H, W) int32 with 0 = void and k = the k-th segment, the
    segments [{"category_id": dataset id - 1, "isthing"}]) as ``encode_sample`` takes them."""
    h = w = int(size)
    s = size / 224.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))

    n_regions = int(rng.integers(1, 4))
    region = stuff_layout(rng, h, w, n_regions)
    stuff = rng.choice(len(STUFF_CATEGORIES), size=n_regions, replace=False)
    image = np.zeros((h, w, 3), np.float32)
    segments = []  # (category_id, isthing), index k -> label k + 1 in ``label``
    label = np.zeros((h, w), np.int32)
    for k, cls in enumerate(stuff):
        sel = region == k
        image[sel] = STUFF_TEXTURES[cls](rng, h, w, s)[sel]
        segments.append((STUFF_CATEGORIES[cls]["id"], False))
        label[sel] = len(segments)

    for _ in range(int(rng.integers(1, 7))):
        cls = int(rng.integers(0, len(THING_CATEGORIES)))
        mask, tex = draw_thing(rng, cls, h, w)
        image[mask] = tex[mask]
        segments.append((THING_CATEGORIES[cls]["id"], True))
        label[mask] = len(segments)

    # Segments with fewer than MIN_AREA visible pixels become void (label 0); the others are renumbered 1..N.
    areas = np.bincount(label.ravel(), minlength=len(segments) + 1)
    keep = [k for k in range(1, len(segments) + 1) if areas[k] >= MIN_AREA]
    relabel = np.zeros(len(segments) + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    # encode_sample takes 0-based category indices and writes index + 1 as the dataset id: pass id - 1.
    kept = [{"category_id": segments[k - 1][0] - 1, "isthing": segments[k - 1][1]} for k in keep]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), relabel[label], kept


def write_split(root, split, num_images, seed, size):
    """Write the images, panoptic PNGs and JSON of one split; returns (images, thing instances)."""
    image_dir = os.path.join(root, "images", split)
    pan_dir = os.path.join(root, f"panoptic_{split}")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(pan_dir, exist_ok=True)
    images, annotations, instances = [], [], []
    for index in range(num_images):
        stem = f"{index + 1:06d}"
        files, pan_ann, things = encode_sample(*render_image(seed, split, index, size), index + 1, stem)
        # encode_sample's semantic PNG is not written (no mIoU for this dataset)
        for name, folder in ((f"images/{{split}}/{stem}.jpg", image_dir),
                             (f"panoptic/{{split}}/{stem}.png", pan_dir)):
            with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
                f.write(files[name])
        images.append({"id": index + 1, "file_name": stem + ".jpg", "height": size, "width": size})
        annotations.append(pan_ann)
        instances += [dict(a, id=len(instances) + i) for i, a in enumerate(things, start=1)]
    doc = {
        "info": {"description": "knet_other synthetic panoptic dataset", "seed": seed, "split": split},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    inst_doc = {"info": doc["info"], "images": images, "annotations": instances,
                "categories": THING_CATEGORIES}
    for name, content in ((f"instances_{split}.json", inst_doc), (f"panoptic_{split}.json", doc)):
        tmp = os.path.join(root, f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(dump_json(content))
        os.replace(tmp, os.path.join(root, name))  # the panoptic JSON last: it lists finished files
    return len(images), len(instances)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="dataset folder (created; existing files overwritten)")
    parser.add_argument("--seed", type=int, default=123, help="generator seed (default %(default)s)")
    parser.add_argument("--num-train", type=int, default=320, help="training images (default %(default)s)")
    parser.add_argument("--num-val", type=int, default=60, help="validation images (default %(default)s)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default %(default)s)")
    args = parser.parse_args(argv)
    if args.size < 64:
        parser.error("--size must be at least 64")
    if args.num_train < 0 or args.num_val < 0:
        parser.error("--num-train and --num-val must not be negative")

    start = time.perf_counter()
    counts = {
        split: write_split(args.root, split, n, args.seed, args.size)
        for split, n in zip(SPLITS, (args.num_train, args.num_val))
    }
    summary = ", ".join(f"{split}: {n} images / {t} thing instances" for split, (n, t) in counts.items())
    print(f"knet_other dataset at {args.root} ({args.size}x{args.size}, seed {args.seed}): {summary} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
