#!/usr/bin/env python
"""Where mask AP is lost: every detection and every ground-truth thing sorted into one kind of outcome.

COCO's AP says how much is lost, not where. This script reads the instance predictions that detectron2's
``COCOEvaluator`` writes (``OUTPUT_DIR/inference/coco_instances_results.json``) and the dataset's COCO
instances JSON, and, in the spirit of TIDE (Bolya et al., ECCV 2020; simplified to one IoU, 0.5), reports:

* detections (those scoring at least ``--score``, taken image by image in score order): **tp** (right
  class, mask IoU >= 0.5 with a thing not yet taken), **dup** (the same, with a thing already taken by a
  higher score), **cls** (IoU >= 0.5 with a thing of another class), **loc** (right class, 0.1 <= IoU < 0.5),
  **cls+loc** (another class, 0.1 <= IoU < 0.5), **bg** (IoU < 0.1 with every thing);
* ground-truth things by COCO size (small < 32^2 px, medium < 96^2, large): how many a detection found
  (tp), and how many any prediction covers at IoU >= 0.5 whatever its class and score (the mask exists, the
  class or the score fails);
* the mask IoU of the true positives (mean, share >= 0.75 and >= 0.85: what AP75 and above ask for).

::

    .venv/bin/python tools/experiments/instance_errors.py \
        --gt datasets/knet_synthetic/annotations/instances_val.json \
        --pred output/quickstart/train/inference/coco_instances_results.json [--score 0.3]
"""
import argparse
import collections
import contextlib
import io
import json
import sys
from typing import Dict, List, Sequence

import numpy as np

KINDS = ("tp", "dup", "cls", "loc", "cls+loc", "bg")
SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))


def size_name(area: float) -> str:
    """COCO's area range of an object of ``area`` pixels."""
    return next(name for name, lo, hi in SIZES if lo <= area < hi)


def classify_image(gt_classes: Sequence[int], det_classes: Sequence[int], det_scores: Sequence[float],
                   ious: np.ndarray, score_threshold: float) -> Dict[str, object]:
    """One image's outcome.

    Args:
        gt_classes: (G,) class of each ground-truth thing.
        det_classes, det_scores: (D,) class and score of each detection.
        ious: (D, G) mask IoU of every detection with every thing.
        score_threshold: detections scoring below it are ignored (``found`` and ``kinds``), not ``covered``.
    Returns:
        ``kinds``: (D',) outcome of every detection kept, in score order (one of :data:`KINDS`);
        ``found``: (G,) bool, a true positive took the thing; ``covered``: (G,) bool, some detection (any
        class, any score) has IoU >= 0.5 with it; ``tp_ious``: IoU of each true positive.
    """
    gt_classes = np.asarray(gt_classes, dtype=np.int64)
    det_classes = np.asarray(det_classes, dtype=np.int64)
    det_scores = np.asarray(det_scores, dtype=np.float64)
    ious = np.asarray(ious, dtype=np.float64).reshape(len(det_classes), len(gt_classes))
    found = np.zeros(len(gt_classes), dtype=bool)
    covered = (ious >= 0.5).any(axis=0)  # all False when there is no detection
    kinds: List[str] = []
    tp_ious: List[float] = []
    for d in np.argsort(-det_scores, kind="stable"):
        if det_scores[d] < score_threshold:
            continue
        row = ious[d]
        same = gt_classes == det_classes[d]
        if not len(row) or row.max() < 0.1:
            kinds.append("bg")
            continue
        best_same = int(np.where(same, row, -1.0).argmax()) if same.any() else -1
        if best_same >= 0 and row[best_same] >= 0.5:
            # a free thing of the right class at IoU >= 0.5 makes it a true positive, else a duplicate
            free = same & ~found & (row >= 0.5)
            if free.any():
                g = int(np.where(free, row, -1.0).argmax())
                found[g] = True
                tp_ious.append(float(row[g]))
                kinds.append("tp")
            else:
                kinds.append("dup")
        elif row.max() >= 0.5:
            kinds.append("cls")
        elif best_same >= 0 and row[best_same] >= 0.1:
            kinds.append("loc")
        else:
            kinds.append("cls+loc")
    return {"kinds": kinds, "found": found, "covered": covered, "tp_ious": tp_ious}


def summarize(gt_json: dict, predictions: List[dict], score_threshold: float) -> dict:
    """Counts over a dataset: ``gt_json`` a COCO instances dict, ``predictions`` COCO results with RLE
    ``segmentation``. Crowd annotations are left out."""
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = gt_json
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    by_image = collections.defaultdict(list)
    for p in predictions:
        by_image[p["image_id"]].append(p)
    kinds = collections.Counter()
    per_size = {name: collections.Counter() for name, _, _ in SIZES}
    tp_ious: List[float] = []
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        dets = by_image.get(image_id, [])
        gt_rles = [coco.annToRLE(a) for a in anns]
        if dets and anns:
            ious = np.asarray(mask_util.iou([d["segmentation"] for d in dets], gt_rles, [0] * len(anns)))
        else:
            ious = np.zeros((len(dets), len(anns)))
        out = classify_image([a["category_id"] for a in anns], [d["category_id"] for d in dets],
                             [d["score"] for d in dets], ious, score_threshold)
        kinds.update(out["kinds"])
        tp_ious.extend(out["tp_ious"])
        for a, f, c in zip(anns, out["found"], out["covered"]):
            s = per_size[size_name(a["area"])]
            s["things"] += 1
            s["found"] += int(f)
            s["covered"] += int(c)
    t = np.asarray(tp_ious)
    return {
        "score_threshold": score_threshold,
        "detections": {k: kinds.get(k, 0) for k in KINDS},
        "things": {k: dict(v) for k, v in per_size.items() if v["things"]},
        "tp_iou": {
            "mean": float(t.mean()) if len(t) else 0.0,
            "ge_0.75": float((t >= 0.75).mean()) if len(t) else 0.0,
            "ge_0.85": float((t >= 0.85).mean()) if len(t) else 0.0,
        },
    }


def format_summary(s: dict) -> str:
    d = s["detections"]
    lines = [f"detections scoring >= {s['score_threshold']}: " + ", ".join(f"{k} {d[k]}" for k in KINDS)]
    for name, v in s["things"].items():
        n = v["things"]
        lines.append(f"{name} things: {n}; found {v['found']} ({100 * v['found'] / n:.0f} %), covered at IoU "
                     f"0.5 by some prediction {v['covered']} ({100 * v['covered'] / n:.0f} %)")
    t = s["tp_iou"]
    lines.append(f"true positives' mask IoU: mean {t['mean']:.3f}, >= 0.75: {100 * t['ge_0.75']:.0f} %, "
                 f">= 0.85: {100 * t['ge_0.85']:.0f} %")
    return "\n".join(lines)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        sys.exit(f"instance_errors: cannot read {path}: {e.strerror}. Pass --gt the dataset's COCO instances "
                 "JSON and --pred OUTPUT_DIR/inference/coco_instances_results.json of an evaluated run.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", required=True, help="COCO instances JSON of the evaluated split")
    p.add_argument("--pred", required=True, help="coco_instances_results.json written by COCOEvaluator")
    p.add_argument("--score", type=float, default=0.3, help="detections below this score are ignored")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    gt, preds = (_read_json(path) for path in (args.gt, args.pred))
    s = summarize(gt, preds, args.score)
    print(json.dumps(s) if args.json else format_summary(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
