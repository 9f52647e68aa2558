"""Write the whole synthetic dataset into a folder, completion marker last (not atomic: see
:mod:`.publish`)."""

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterator, Optional, Tuple

from .classes import synthetic_categories
from .encode import dump_json, encode_sample
from .layout import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    MARKER_NAME,
    SPLITS,
    normalize_size,
)
from .render import render_synthetic_image

__all__ = ["generate_synthetic_dataset"]


def _render_and_encode(job: Tuple[int, str, int, Tuple[int, int]]):
    """One sample, rendered and encoded: ``(files, panoptic annotation, instance annotations)``. It depends
    only on ``job`` = (seed, split, index, (h, w)), so any process gives the same bytes."""
    seed, split, index, size = job
    image, segment_map, segments = render_synthetic_image(seed, split, index, size)
    image_id = index + 1
    return encode_sample(image, segment_map, segments, image_id, f"{image_id:06d}")


def _samples(jobs, workers: int) -> Iterator:
    """:func:`_render_and_encode` over ``jobs``, in their order, on ``workers`` forked processes (in this
    one where forking is not available or ``workers`` is 1)."""
    if workers > 1 and len(jobs) > 1 and "fork" in multiprocessing.get_all_start_methods():
        # fork: the workers need nothing but numpy and PIL, already imported, and start at once
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            yield from pool.map(_render_and_encode, jobs, chunksize=8)
    else:
        yield from map(_render_and_encode, jobs)


def generate_synthetic_dataset(
    out_dir: str,
    *,
    seed: int = DEFAULT_SEED,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size=DEFAULT_IMAGE_SIZE,
    progress: bool = False,
    workers: Optional[int] = None,
) -> dict:
    """Write the whole dataset into ``out_dir`` (not atomic: use :func:`ensure_synthetic_dataset`).

    The images are rendered and encoded on ``workers`` processes (default: one per CPU core, at most 8;
    the bytes do not depend on it: each image has its own seed); the files are written by this process.
    The completion marker ``COMPLETE.json`` is written last. Returns the marker's content.
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    h, w = normalize_size(image_size)
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
        jobs = [(int(seed), split, index, (h, w)) for index in range(sizes[split])]
        for index, (files, pan_ann, instances) in enumerate(_samples(jobs, workers)):
            image_id = index + 1
            stem = f"{image_id:06d}"
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
            dump_json({"info": info, "images": images, "annotations": pan_anns, "categories": categories}),
        )
        thing_cats = [{k: c[k] for k in ("id", "name", "supercategory")} for c in categories if c["isthing"]]
        write(
            f"annotations/instances_{split}.json",
            dump_json({"info": info, "images": images, "annotations": inst_anns, "categories": thing_cats}),
        )
    if bar is not None:
        bar.close()

    marker = {
        "generator": GENERATOR_NAME,
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
