"""A procedural segmentation dataset ("knet_synthetic") in the formats detectron2 reads.

No real dataset can be downloaded on our machines, so this module draws one: every image is a partition of
the canvas into large irregular "stuff" regions, each filled with its own noisy texture, with "thing"
shapes of random colour, scale, aspect and rotation drawn on top (later shapes occlude earlier ones), each
with a high-contrast surface pattern typical of its class (bands, stripes, checks, dots, spokes, a grid).
Everything is a pure function of ``(seed, split, index, image_size)`` drawn with numpy's ``Generator``,
so the same seed gives byte-identical files and another seed different ones.

Classes (contiguous ids: things first, then stuff, the detectron2 panoptic convention):

====  ==========  =====  ==========
 id   name        kind   dataset id
====  ==========  =====  ==========
 0    disc        thing  1
 1    square      thing  2
 2    triangle    thing  3
 3    star        thing  4
 4    ring        thing  5
 5    cross       thing  6
 6    sky         stuff  7
 7    grass       stuff  8
 8    sand        stuff  9
 9    water       stuff  10
 10   brick       stuff  11
====  ==========  =====  ==========

Folder layout (``root`` is ``$DETECTRON2_DATASETS/knet_synthetic``, ``DETECTRON2_DATASETS`` defaults to
``datasets``)::

    root/
      images/{train,val}/000001.jpg          RGB images (JPEG, quality 95, no chroma subsampling)
      panoptic/{train,val}/000001.png        COCO panoptic PNG, segment id = R + 256 G + 256^2 B, 0 = void
      semantic/{train,val}/000001.png        8-bit label PNG: contiguous ids 0..10 (things first), 255 = void
      annotations/panoptic_{train,val}.json  COCO panoptic JSON (images, annotations/segments_info,
                                             categories)
      annotations/instances_{train,val}.json COCO instances JSON (compressed RLE masks, iscrowd 0, bbox, area)
      COMPLETE.json                          completion marker, written last (version, seed, sizes, checksums)

Semantics of the labels:
  * the visible (occluded) masks are the ground truth: a thing drawn later hides what lies below, and a ring's
    hole shows the background; the three annotation files describe exactly the same pixels;
  * a thing whose visible part is smaller than ``min_visible_area`` pixels is "void" (panoptic id 0,
    semantic 255, absent from the instance JSON), so tiny slivers never become ground-truth instances;
  * one image in ten (the images whose 0-based index is a multiple of 10) contains no thing at all.

The dataset is written atomically by :func:`ensure_synthetic_dataset`: it is generated into a temporary folder
beside ``root``, ``COMPLETE.json`` (with the generator version, the seed, the sizes and the size and sha256 of
every file) is written last, and the folder is then renamed into place. A folder without a valid marker
(interrupted, corrupt, half-written, older generator version, other sizes than asked for) is removed and
regenerated, with a log line saying why.
"""

import colorsys
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "GENERATOR_VERSION",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "THING_COLORS",
    "STUFF_COLORS",
    "MARKER_NAME",
    "SPLITS",
    "synthetic_categories",
    "default_synthetic_root",
    "synthetic_paths",
    "render_synthetic_image",
    "generate_synthetic_dataset",
    "check_synthetic_dataset",
    "ensure_synthetic_dataset",
]

logger = logging.getLogger(__name__)

# Bump whenever the drawing or the file formats change: an existing dataset of another version is regenerated.
GENERATOR_VERSION = 3  # 2: class-typical surface patterns on the things; 3: high-contrast, fixed-scale ones
_PATTERN_PERIOD = 9.0  # pixels per period of the things' surface pattern at 256x256
_PATTERN_CONTRAST = 0.5  # the pattern scales the shape's brightness by 1 +- this
MARKER_NAME = "COMPLETE.json"
SPLITS = ("train", "val")
DEFAULT_SEED = 0
DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 50
DEFAULT_IMAGE_SIZE = 256

THING_CLASSES = ["disc", "square", "triangle", "star", "ring", "cross"]
STUFF_CLASSES = ["sky", "grass", "sand", "water", "brick"]
# Visualisation colours (RGB); the things are drawn with random colours, these only serve the Visualizer.
THING_COLORS = [[220, 20, 60], [0, 130, 200], [255, 180, 0], [145, 30, 180], [60, 180, 75], [240, 50, 230]]
STUFF_COLORS = [[135, 206, 235], [34, 139, 34], [210, 180, 140], [0, 105, 148], [178, 34, 34]]
NUM_THING_CLASSES = len(THING_CLASSES)
NUM_CLASSES = len(THING_CLASSES) + len(STUFF_CLASSES)
IGNORE_LABEL = 255
_SPLIT_CODE = {"train": 0, "val": 1}


def synthetic_categories() -> List[dict]:
    """COCO panoptic categories: dataset ids 1..6 are things, 7..11 stuff (contiguous id = dataset id - 1)."""
    cats = []
    for i, (name, color) in enumerate(zip(THING_CLASSES, THING_COLORS)):
        cats.append({"id": i + 1, "name": name, "supercategory": "shape", "isthing": 1, "color": color})
    for i, (name, color) in enumerate(zip(STUFF_CLASSES, STUFF_COLORS)):
        cats.append(
            {
                "id": NUM_THING_CLASSES + i + 1,
                "name": name,
                "supercategory": "texture",
                "isthing": 0,
                "color": color,
            }
        )
    return cats


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/knet_synthetic`` (``DETECTRON2_DATASETS`` defaults to ``datasets``)."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "knet_synthetic")


def synthetic_paths(root: str, split: str) -> Dict[str, str]:
    """Where the files of ``split`` live under ``root`` (pure path arithmetic, touches no disk)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown synthetic split {split!r}; expected one of {SPLITS}")
    return {
        "image_root": os.path.join(root, "images", split),
        "panoptic_root": os.path.join(root, "panoptic", split),
        "sem_seg_root": os.path.join(root, "semantic", split),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


# --------------------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, grid: Tuple[int, int]) -> np.ndarray:
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
    clouds = np.clip(_smooth_noise(rng, h, w, (6, 6)) - 0.2, 0.0, 1.0)[..., None]
    img = base * (1.0 - 0.7 * clouds) + 245.0 * 0.7 * clouds
    return img + 3.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def _texture_grass(rng, h, w, s):
    """Green with vertical blade streaks and strong grain."""
    streak_cols = max(8, int(round(64 * s)))
    streaks = _smooth_noise(rng, h, w, (4, streak_cols))[..., None]
    base = _rgb([55, 135, 45]) + rng.uniform(-10, 10, 3).astype(np.float32)
    img = base + streaks * _rgb([10, 28, 8])
    return img + 10.0 * rng.standard_normal((h, w, 1)).astype(np.float32)


def _texture_sand(rng, h, w, s):
    """Beige, fine per-pixel speckle and sparse dark grains, soft dunes."""
    base = _rgb([212, 186, 138]) + rng.uniform(-10, 10, 3).astype(np.float32)
    dunes = _smooth_noise(rng, h, w, (5, 5))[..., None] * 10.0
    img = base + dunes + 14.0 * rng.standard_normal((h, w, 1)).astype(np.float32)
    grains = (rng.random((h, w)) < 0.03)[..., None]
    return np.where(grains, img - 60.0, img)


def _texture_water(rng, h, w, s):
    """Dark teal with oriented, noise-warped waves."""
    theta = rng.uniform(0, np.pi)
    wavelength = rng.uniform(9, 15) * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / wavelength)
    warp = 2.5 * _smooth_noise(rng, h, w, (5, 5))
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


_STUFF_TEXTURES = [_texture_sky, _texture_grass, _texture_sand, _texture_water, _texture_brick]
assert len(_STUFF_TEXTURES) == len(STUFF_CLASSES)


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


def _draw_thing(rng, cls: int, h: int, w: int) -> Tuple[np.ndarray, Tuple[slice, slice], np.ndarray]:
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


def _normalize_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        h, w = (int(v) for v in image_size)
    if h < 16 or w < 16:
        raise ValueError(f"Synthetic image size must be at least 16x16, got {h}x{w}")
    return h, w


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
    h, w = _normalize_size(image_size)
    s = min(h, w) / 256.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))
    if min_visible_area is None:
        min_visible_area = max(4, int(round(4e-4 * h * w)))

    # Stuff: argmax over one smooth noise field per chosen class; the finer octave makes the borders wobble.
    n_stuff = int(rng.integers(2, 5))
    stuff = rng.choice(len(STUFF_CLASSES), size=n_stuff, replace=False)
    fields = np.stack(
        [_smooth_noise(rng, h, w, (3, 3)) + 0.3 * _smooth_noise(rng, h, w, (12, 12)) for _ in range(n_stuff)]
    )
    region = np.argmax(fields, axis=0)
    image = np.zeros((h, w, 3), np.float32)
    segment_map = np.zeros((h, w), np.int32)
    segments = []
    for k, cls in enumerate(stuff):
        sel = region == k
        tex = _STUFF_TEXTURES[cls](rng, h, w, s)
        image[sel] = tex[sel]
        if sel.any():
            segments.append({"category_id": NUM_THING_CLASSES + int(cls), "isthing": False})
            segment_map[sel] = len(segments)

    # Things: none in one image out of ten, otherwise 1..8, later ones drawn on top.
    n_things = 0 if index % 10 == 0 else int(rng.integers(1, 9))
    for _ in range(n_things):
        cls = int(rng.integers(0, NUM_THING_CLASSES))
        mask, box, tex = _draw_thing(rng, cls, h, w)
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


# --------------------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------------------
def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _encode_jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _segment_id(category_id: int, count: int) -> int:
    """Panoptic segment id: dataset category id * 1000 + instance number (0 for stuff)."""
    return (category_id + 1) * 1000 + count


def _encode_sample(image, segment_map, segments, image_id: int, file_stem: str):
    """Turn one rendered sample into (files {relative name: bytes}, panoptic annotation, instance
    annotations)."""
    from panopticapi.utils import id2rgb
    from pycocotools import mask as mask_util

    h, w = segment_map.shape
    counts: Dict[int, int] = {}
    pan_ids = np.zeros(len(segments) + 1, np.int64)
    sem_lut = np.full(len(segments) + 1, IGNORE_LABEL, np.uint8)
    segments_info, instances = [], []
    for k, seg in enumerate(segments, start=1):
        cat = seg["category_id"]
        counts[cat] = counts.get(cat, 0) + (1 if seg["isthing"] else 0)
        pan_ids[k] = _segment_id(cat, counts[cat] if seg["isthing"] else 0)
        sem_lut[k] = cat
        mask = segment_map == k
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        bbox = [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]
        area = int(mask.sum())
        segments_info.append(
            {"id": int(pan_ids[k]), "category_id": cat + 1, "iscrowd": 0, "bbox": bbox, "area": area}
        )
        if seg["isthing"]:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            instances.append(
                {
                    "image_id": image_id,
                    "category_id": cat + 1,
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    files = {
        f"images/{{split}}/{file_stem}.jpg": _encode_jpeg(image),
        f"panoptic/{{split}}/{file_stem}.png": _encode_png(id2rgb(pan_ids[segment_map])),
        f"semantic/{{split}}/{file_stem}.png": _encode_png(sem_lut[segment_map]),
    }
    pan_ann = {"image_id": image_id, "file_name": f"{file_stem}.png", "segments_info": segments_info}
    return files, pan_ann, instances


def _dump_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=False, separators=(",", ":")).encode("utf-8")


def generate_synthetic_dataset(
    out_dir: str,
    *,
    seed: int = DEFAULT_SEED,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size=DEFAULT_IMAGE_SIZE,
    progress: bool = False,
) -> dict:
    """Write the whole dataset into ``out_dir`` (not atomic: use :func:`ensure_synthetic_dataset`).

    The completion marker ``COMPLETE.json`` is written last. Returns the marker's content.
    """
    h, w = _normalize_size(image_size)
    sizes = {"train": int(num_train), "val": int(num_val)}
    for split, n in sizes.items():
        if n < 1:
            raise ValueError(f"The synthetic {split} split needs at least one image, got num_{split}={n}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(sizes.values()), desc="knet_synthetic", unit="img", dynamic_ncols=True)

    records: Dict[str, dict] = {}

    def write(rel: str, data: bytes):
        path = os.path.join(out_dir, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        records[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    categories = synthetic_categories()
    for split in SPLITS:
        images, pan_anns, inst_anns = [], [], []
        for index in range(sizes[split]):
            image_id = index + 1
            stem = f"{image_id:06d}"
            image, segment_map, segments = render_synthetic_image(seed, split, index, (h, w))
            files, pan_ann, instances = _encode_sample(image, segment_map, segments, image_id, stem)
            for rel, data in files.items():
                write(rel.format(split=split), data)
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
            pan_anns.append(pan_ann)
            for ann in instances:
                ann["id"] = len(inst_anns) + 1
                inst_anns.append(ann)
            if bar is not None:
                bar.update(1)
        info = {
            "description": f"K-Net synthetic segmentation dataset ({split})",
            "version": GENERATOR_VERSION,
            "seed": int(seed),
        }
        write(
            f"annotations/panoptic_{split}.json",
            _dump_json({"info": info, "images": images, "annotations": pan_anns, "categories": categories}),
        )
        thing_cats = [{k: c[k] for k in ("id", "name", "supercategory")} for c in categories if c["isthing"]]
        write(
            f"annotations/instances_{split}.json",
            _dump_json({"info": info, "images": images, "annotations": inst_anns, "categories": thing_cats}),
        )
    if bar is not None:
        bar.close()

    marker = {
        "generator": "knet.data.datasets.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_train": sizes["train"],
        "num_val": sizes["val"],
        "image_size": [h, w],
        "num_files": len(records),
        "files": dict(sorted(records.items())),
    }
    marker_path = os.path.join(out_dir, MARKER_NAME)
    with open(marker_path, "wb") as f:
        f.write(json.dumps(marker, indent=1).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return marker


# --------------------------------------------------------------------------------------------------------------
# Validation and atomic, lazy generation
# --------------------------------------------------------------------------------------------------------------
def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_synthetic_dataset(
    root: str,
    *,
    seed: Optional[int] = None,
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    image_size=None,
    verify_checksums: bool = True,
) -> Tuple[bool, str]:
    """Whether ``root`` holds a complete dataset of this generator version (and of the given parameters).

    Parameters left as None accept whatever the marker says. Returns ``(ok, reason)``; reason says what is
    wrong (missing marker, unreadable marker, other version/parameters, missing/truncated/modified file).
    """
    marker_path = os.path.join(root, MARKER_NAME)
    if not os.path.isdir(root):
        return False, "the folder does not exist"
    if not os.path.isfile(marker_path):
        return False, f"it has no completion marker {MARKER_NAME} (interrupted or half-written)"
    try:
        with open(marker_path, "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
        files = marker["files"]
        if len(files) != marker["num_files"]:
            return False, f"{MARKER_NAME} lists {len(files)} files but says {marker['num_files']}"
    except (ValueError, KeyError, TypeError) as e:
        return False, f"its completion marker {MARKER_NAME} is unreadable ({e})"
    if marker.get("version") != GENERATOR_VERSION:
        return False, f"it was written by generator version {marker.get('version')}, not {GENERATOR_VERSION}"
    wanted = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(_normalize_size(image_size)) if image_size is not None else None,
    }
    for key, value in wanted.items():
        if value is not None and marker.get(key) != value:
            return False, f"it has {key}={marker.get(key)}, but {key}={value} was asked for"
    for rel, rec in files.items():
        path = os.path.join(root, *rel.split("/"))
        if not os.path.isfile(path):
            return False, f"file {rel} is missing"
        if os.path.getsize(path) != rec["size"]:
            return False, f"file {rel} has {os.path.getsize(path)} bytes instead of {rec['size']}"
        if verify_checksums and _sha256_file(path) != rec["sha256"]:
            return False, f"file {rel} does not match its sha256 checksum"
    return True, "complete"


def _read_marker_params(root: str) -> dict:
    """seed / sizes recorded in the marker of ``root`` ({} when there is no readable marker)."""
    try:
        with open(os.path.join(root, MARKER_NAME), "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
        out = {k: int(marker[k]) for k in ("seed", "num_train", "num_val")}
        out["image_size"] = _normalize_size(marker["image_size"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """An inter-process lock (``fcntl.flock``) so that parallel workers generate the dataset only once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, the rename below still keeps a half-written dataset invisible
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_synthetic_dataset(
    root: Optional[str] = None,
    *,
    seed: Optional[int] = None,
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    image_size=None,
    force: bool = False,
    progress: bool = False,
    verify_checksums: bool = True,
) -> str:
    """Return the dataset root, generating the dataset first when it is missing or not valid.

    Args:
        root: the dataset folder (default :func:`default_synthetic_root`,
            ``$DETECTRON2_DATASETS/knet_synthetic``).
        seed, num_train, num_val, image_size: the wanted dataset; None accepts any complete dataset already
            there and uses the defaults (0, 400, 50, 256) when one has to be generated.
        force: regenerate even when a valid dataset exists.
        progress: show a tqdm progress bar while generating.
        verify_checksums: check every file against the sha256 in the marker (else only presence and sizes).

    The dataset is generated into a temporary folder beside ``root`` and renamed into place once its
    completion marker is written, so an interrupted generation never looks complete; a folder that fails
    :func:`check_synthetic_dataset` is removed and regenerated with a warning saying why.
    """
    root = os.path.abspath(root if root is not None else default_synthetic_root())
    wanted = dict(seed=seed, num_train=num_train, num_val=num_val, image_size=image_size)
    # Fast path without the lock (nothing is written, so a read-only complete dataset works).
    if not force and check_synthetic_dataset(root, verify_checksums=verify_checksums, **wanted)[0]:
        return root
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(os.path.join(parent, f".{name}.lock")):
        if not force:
            # again under the lock: another process may have generated it meanwhile
            ok, reason = check_synthetic_dataset(root, verify_checksums=verify_checksums, **wanted)
            if ok:
                return root
            if os.path.exists(root):
                logger.warning(
                    f"K-Net synthetic dataset at {root} is not valid: {reason}. "
                    f"Removing it and regenerating."
                )
        elif os.path.exists(root):
            logger.info(f"Regenerating the K-Net synthetic dataset at {root} (forced).")
        # Leftovers of interrupted generations (we hold the lock, so nobody else is writing them).
        for entry in os.listdir(parent):
            if entry.startswith(f".{name}.tmp-") or entry.startswith(f".{name}.old-"):
                logger.warning(
                    f"Removing the leftover of an interrupted generation: {os.path.join(parent, entry)}"
                )
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)

        # Parameters not asked for: those of the folder's marker when it is readable, else the defaults.
        previous = _read_marker_params(root)
        params = {
            "seed": int(seed) if seed is not None else previous.get("seed", DEFAULT_SEED),
            "num_train": (
                int(num_train) if num_train is not None else previous.get("num_train", DEFAULT_NUM_TRAIN)
            ),
            "num_val": int(num_val) if num_val is not None else previous.get("num_val", DEFAULT_NUM_VAL),
            "image_size": (
                image_size if image_size is not None else previous.get("image_size", DEFAULT_IMAGE_SIZE)
            ),
        }
        tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        logger.info(
            f"Generating the K-Net synthetic dataset into {root} "
            f"({params['num_train']} train + {params['num_val']} val images, seed {params['seed']}) ..."
        )
        start = time.perf_counter()
        try:
            generate_synthetic_dataset(tmp, progress=progress, **params)
            if os.path.exists(root):
                old = os.path.join(parent, f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.rename(root, old)
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info(f"K-Net synthetic dataset ready at {root} ({time.perf_counter() - start:.1f} s).")
    return root
