#!/usr/bin/env python
"""How well do a trained K-Net panoptic model's features and thing kernels tell the thing classes apart?

For each checkpoint, on the first ``--train-images`` images of ``DATASETS.TRAIN[0]`` and the first
``--val-images`` of ``DATASETS.TEST[0]`` (registered panoptic datasets; test-time resize of the config):

* **linear probes**: every ground-truth thing is described by the mean of a feature map inside its mask, a
  softmax regression over the thing classes is fitted on the training things (L-BFGS, standardised
  inputs, a small L2 penalty) and scored on the validation things. Two features: ``x``, the kernel head's
  input (the feature the thing kernels pool, stride 8) and ``fpn``, the backbone's FPN outputs (the means of
  every level, concatenated). A probe says whether the classes are *linearly* readable from a feature
  (Alain & Bengio, 2016), whatever the heads learnt;
* **thing kernels**: each validation thing is matched to the thing kernel whose last-stage mask (stride 8,
  logit > 0) has the highest IoU with it; "matched" means IoU >= 0.5. For the matched kernels, per update
  stage: the accuracy of the top thing class and the mean top thing score, and at the last stage the mean
  score of the right class.

The probe's accuracy bounds what the kernels can learn from that feature; the two together separate "the
features cannot tell the shapes apart" from "the heads do not read them". docs/quickstart_experiments.md
has the measurements (diagnoses 1 and 3)::

    .venv/bin/python tools/experiments/probe_features.py --config-file output/run/config.yaml \\
        --weights output/run/model_0000599.pth output/run/model_final.pth
    # the second dataset: add --register tools/experiments/other_dataset.py

Prints one line per checkpoint; ``--out FILE`` also appends one JSON line per checkpoint.
"""
import argparse
import json
import os
import runpy
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _path in (os.path.join(_REPO, "projects"), _REPO):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def mask_weights(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Area-resample masks to a feature map's size.

    Args:
        masks: (K, h, w) bool or float masks at image resolution (the padded model input).
        size: (H, W) of the feature map.
    Returns:
        (K, H, W) float: the fraction of each feature cell covered by each mask.
    """
    return F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0]


def pool_in_masks(feature: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``feature`` (C, H, W) inside each soft mask of ``weights`` (K, H, W) -> (K, C): the kernels'
    own group-feature sum (``assemble_group_features``) divided by the mask area. Empty masks give zeros."""
    from knet.modeling.kernel_head.kernel_update_head import assemble_group_features

    total = weights.sum((-2, -1)).clamp(min=1e-6)
    return assemble_group_features(weights[None], feature[None])[0] / total[:, None]


def fit_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                     num_classes: int, l2: float = 1e-3, max_iter: int = 200) -> float:
    """Accuracy on ``val`` of a softmax regression fitted on ``train`` (inputs (N, D), labels (N,) in
    [0, num_classes)); inputs are standardised with the training statistics."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    tx, vx = (train_x - mean) / std, (val_x - mean) / std
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(train_x.shape[1], num_classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    optim = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optim.zero_grad()
        loss = F.cross_entropy(tx @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optim.step(closure)
    with torch.no_grad():
        return float(((vx @ weight + bias).argmax(1) == val_y).float().mean())


def match_to_kernels(kernel_masks: torch.Tensor, gt_masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For every ground-truth mask the kernel mask of highest IoU.

    Args:
        kernel_masks: (P, H, W) bool; gt_masks: (K, H, W) bool.
    Returns:
        (index (K,) int64 into P, iou (K,) float).
    """
    k = kernel_masks.flatten(1).float()
    g = gt_masks.flatten(1).float()
    inter = g @ k.T
    union = g.sum(1, keepdim=True) + k.sum(1)[None] - inter
    iou = inter / union.clamp(min=1)
    best, index = iou.max(1)
    return index, best


def _thing_segments(record: dict) -> List[Tuple[int, int]]:
    """(segment id, contiguous class) of the thing segments of a detectron2 panoptic record."""
    return [(s["id"], s["category_id"]) for s in record["segments_info"] if s["isthing"]]


def collect(model, records: Sequence[dict], cfg) -> Dict[str, object]:
    """Run ``model`` (eval mode) on ``records``; returns the pooled features ("x", "fpn": (N, D)), the labels
    (N,) of the N ground-truth things, and per thing its kernel statistics (None when unmatched, else
    (correct per stage, top score per stage, score of the right class at the last stage))."""
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T
    from panopticapi.utils import rgb2id

    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    head = model.kernel_head
    P, TC = head.num_proposals, head.num_thing_classes
    pooled_x, pooled_fpn, labels, stats = [], [], [], []
    for record in records:
        image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        pan = rgb2id(utils.read_image(record["pan_seg_file_name"], "RGB"))
        things = _thing_segments(record)
        if not things:
            continue
        transform = resize.get_transform(image)
        image = transform.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        images = model.preprocess_image([{"image": tensor}])
        masks = torch.stack([torch.from_numpy(pan == sid) for sid, _ in things])
        masks = mask_weights(masks, image.shape[:2])
        pad_h, pad_w = images.tensor.shape[-2:]
        masks = F.pad(masks, (0, pad_w - masks.shape[-1], 0, pad_h - masks.shape[-2]))
        with torch.no_grad():
            features = model.backbone(images.tensor)
            x, kernels, kmasks, _, _ = head.initial_kernels(model.pixel_decoder(features))
            scores = []
            for stage in head.update_heads:
                cls_logits, kmasks, kernels = stage(x, kernels, kmasks)
                scores.append(cls_logits[0, :P, :TC].float().sigmoid())
        wx = mask_weights(masks, x.shape[-2:])
        pooled_x.append(pool_in_masks(x[0], wx))
        fpn = [pool_in_masks(f[0], mask_weights(masks, f.shape[-2:])) for _, f in sorted(features.items())]
        pooled_fpn.append(torch.cat(fpn, dim=1))
        labels.extend(c for _, c in things)
        index, iou = match_to_kernels(kmasks[0, :P] > 0, wx > 0.5)
        for j, (_, c) in enumerate(things):
            if iou[j] < 0.5:
                stats.append(None)
                continue
            per_stage = [s[index[j]] for s in scores]
            stats.append(([int(s.argmax()) == c for s in per_stage], [float(s.max()) for s in per_stage],
                          float(per_stage[-1][c])))
    return {"x": torch.cat(pooled_x), "fpn": torch.cat(pooled_fpn), "labels": torch.tensor(labels),
            "kernels": stats}


def summarize(train: dict, val: dict, num_thing_classes: int) -> Dict[str, object]:
    """The probe accuracies and the kernel statistics of :func:`collect`'s outputs (fractions in %)."""
    out = {
        f"probe_{name}": 100 * fit_linear_probe(train[name], train["labels"], val[name], val["labels"],
                                                num_thing_classes)
        for name in ("x", "fpn")
    }
    matched = [s for s in val["kernels"] if s is not None]
    out["things"], out["matched"] = len(val["kernels"]), len(matched)
    if matched:
        stages = len(matched[0][0])
        out["accuracy"] = [100 * float(np.mean([m[0][s] for m in matched])) for s in range(stages)]
        out["top_score"] = [float(np.mean([m[1][s] for m in matched])) for s in range(stages)]
        out["right_class_score"] = float(np.mean([m[2] for m in matched]))
    return out


def format_line(name: str, r: dict) -> str:
    line = (f"{name}: probe x {r['probe_x']:.0f} %, fpn {r['probe_fpn']:.0f} % | "
            f"matched {r['matched']}/{r['things']}")
    if r["matched"]:
        acc = "/".join(f"{a:.0f}" for a in r["accuracy"])
        top = "/".join(f"{t:.2f}" for t in r["top_score"])
        line += f", accuracy per stage {acc} %, top score {top}"
        line += f", right-class score {r['right_class_score']:.2f}"
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the run's config (OUTPUT_DIR/config.yaml)")
    parser.add_argument("--weights", nargs="+", required=True, help="checkpoints to probe")
    parser.add_argument("--register", help="a Python file that registers the datasets (other_dataset.py)")
    parser.add_argument("--train-images", type=int, default=100, help="training images to fit the probes on")
    parser.add_argument("--val-images", type=int, default=50, help="validation images they are scored on")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--out", help="append one JSON line per checkpoint to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.register:
        runpy.run_path(args.register)

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    import knet  # noqa: F401  (registers the model and the synthetic datasets)
    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(args.opts))
    records = {split: DatasetCatalog.get(names[0])[:n] for split, names, n in (
        ("train", cfg.DATASETS.TRAIN, args.train_images), ("val", cfg.DATASETS.TEST, args.val_images))}
    for split, recs in records.items():
        if not recs or "pan_seg_file_name" not in recs[0]:
            raise SystemExit(f"probe_features: the {split} dataset of {args.config_file} has no panoptic "
                             "records (pan_seg_file_name, segments_info); give a panoptic dataset")
    model = build_model(cfg).eval()
    for weights in args.weights:
        DetectionCheckpointer(model).load(weights)
        result = summarize(collect(model, records["train"], cfg), collect(model, records["val"], cfg),
                           model.kernel_head.num_thing_classes)
        print(format_line(weights, result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"weights": weights, **result}) + "\n")


if __name__ == "__main__":
    main()
