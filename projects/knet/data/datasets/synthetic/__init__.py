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
  * one image in ten (the images whose 0-based index is a multiple of 10) contains no thing at all; the others
    hold 4-10 things in training and 1-8 in validation (``render.THINGS_PER_IMAGE``: denser training scenes
    teach the thing classes in fewer iterations).

The dataset is written atomically by :func:`ensure_synthetic_dataset`: it is generated into a temporary folder
beside ``root``, ``COMPLETE.json`` (with the generator version, the seed, the sizes and the size and sha256 of
every file) is written last, and the folder is then renamed into place. A folder without a valid marker
(interrupted, corrupt, half-written, older generator version, other sizes than asked for) is removed and
regenerated, with a log line saying why.

Modules: :mod:`.classes` (class table), :mod:`.layout` (folder layout, marker, defaults), :mod:`.textures` and
:mod:`.shapes` (drawing), :mod:`.render` (one image), :mod:`.encode` (file formats), :mod:`.generate` (the
whole dataset into a folder), :mod:`.publish` (validation, lock, atomic publication).
"""

from .classes import (
    IGNORE_LABEL,
    NUM_CLASSES,
    NUM_THING_CLASSES,
    STUFF_CLASSES,
    STUFF_COLORS,
    THING_CLASSES,
    THING_COLORS,
    synthetic_categories,
)
from .generate import generate_synthetic_dataset
from .layout import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    MARKER_NAME,
    SPLITS,
    default_synthetic_root,
    synthetic_paths,
)
from .publish import check_synthetic_dataset, ensure_synthetic_dataset
from .render import render_synthetic_image

__all__ = [
    "GENERATOR_VERSION",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "THING_COLORS",
    "STUFF_COLORS",
    "NUM_THING_CLASSES",
    "NUM_CLASSES",
    "IGNORE_LABEL",
    "MARKER_NAME",
    "SPLITS",
    "DEFAULT_SEED",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "DEFAULT_IMAGE_SIZE",
    "synthetic_categories",
    "default_synthetic_root",
    "synthetic_paths",
    "render_synthetic_image",
    "generate_synthetic_dataset",
    "check_synthetic_dataset",
    "ensure_synthetic_dataset",
]
