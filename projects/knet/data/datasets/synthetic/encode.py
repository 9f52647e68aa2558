"""One rendered sample in the formats detectron2 reads: JPEG image, COCO panoptic PNG, semantic label PNG and
the COCO panoptic / instance annotations."""

import io
import json
from typing import Dict

import numpy as np
from PIL import Image

from .classes import IGNORE_LABEL

__all__ = ["encode_sample", "dump_json"]


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


def encode_sample(image, segment_map, segments, image_id: int, file_stem: str):
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


def dump_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=False, separators=(",", ":")).encode("utf-8")
