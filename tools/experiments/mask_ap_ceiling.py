#!/usr/bin/env python
"""The mask AP a mask resolution allows: a perfect recognizer whose masks pass through K-Net's output path.

K-Net predicts each mask as a grid of logits at the feature stride (8 in the official configs: 24 x 24 cells
for a 192-px input), upsamples it bilinearly (``MODEL.KNET.MASK_UPSAMPLE_STRIDE``, then to the image) and
thresholds the probability at 0.5 (``ZwwWayne/K-Net:knet/det/kernel_update_head.py``, ``rescale_masks`` /
``get_seg_masks``). On small images that grid, not the recognition, can bound mask AP. This script measures
the bound: every ground-truth thing of a COCO instances JSON becomes one detection of its own class with score
1 (no misses, no false positives, a perfect ranking), whose mask is rebuilt from a logit grid through the
project's own post-processing (``knet.modeling.postprocessing.resize``). Two grids per thing:

* ``area``: the logit of the thing's area coverage of each cell (what a model that outputs its coverage
  probability would predict);
* ``fitted``: logits fitted by the training losses (the mask BCE and the squared dice of
  ``knet.modeling.losses``, ``MODEL.KNET.LOSS.MASK_WEIGHT`` / ``DICE_WEIGHT``) against the soft targets of
  ``knet.modeling.criterion.prepare_targets`` (Adam, ``--steps`` steps): what training drives a grid towards.

COCO's AP of these detections (pycocotools, as detectron2's ``COCOEvaluator``) is the ceiling; the distance
from a trained model's AP to it is what recognition, ranking and training time lose. Results:
docs/quickstart_experiments.md (diagnosis 5)::

    .venv/bin/python tools/experiments/mask_ap_ceiling.py \
        --gt datasets/knet_synthetic/annotations/instances_val.json --input-size 192 --stride 8 4
"""
import argparse
import collections
import contextlib
import io
import json
import math
import os
import sys
from typing import Dict, Tuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = ("area", "fitted")


def _knet():
    if os.path.join(REPO, "projects") not in sys.path:  # run from a checkout without installing the package
        sys.path.insert(0, os.path.join(REPO, "projects"))
    from knet.modeling.layers import resize
    from knet.modeling.losses import dice_loss, mask_bce_loss
    from knet.modeling.postprocessing.resize import crop_to_image, upsample_probs

    return resize, dice_loss, mask_bce_loss, crop_to_image, upsample_probs


def input_geometry(height: int, width: int, input_size: int, max_size: int, divisibility: int,
                   stride: int) -> Dict[str, Tuple[int, int]]:
    """Sizes an image of ``height`` x ``width`` takes in K-Net at test time.

    Returns:
        ``resized``: the network input inside the padding (detectron2's ``ResizeShortestEdge`` to
        ``input_size``, at most ``max_size``); ``padded``: the batch size (rounded up to ``divisibility``);
        ``grid``: the feature grid, ``padded / stride`` cells; ``stride``: pixels per cell.
    """
    from detectron2.data.transforms import ResizeShortestEdge

    h, w = ResizeShortestEdge.get_output_shape(height, width, input_size, max_size)
    d = max(divisibility, 1)
    ph, pw = math.ceil(h / d) * d, math.ceil(w / d) * d
    if ph % stride or pw % stride:
        raise ValueError(f"the padded input {(ph, pw)} is not a multiple of --stride {stride}; "
                         "use a --size-divisibility that is")
    return {"resized": (h, w), "padded": (ph, pw), "grid": (ph // stride, pw // stride), "stride": stride}


def _mask_stride(stride: int, upsample: int) -> int:
    """Pixels per cell of the upsampled masks (``stride / upsample``)."""
    if stride % upsample:
        raise ValueError(f"--upsample {upsample} must divide the feature stride {stride}")
    return stride // upsample


def _input_masks(masks, geometry):
    """(M, H, W) binary masks at the original size -> (M, *padded) float masks as the network sees them:
    nearest resize to the input (the mapper resizes the panoptic PNG that way), zero padding to the batch."""
    import torch.nn.functional as F

    h, w = geometry["resized"]
    ph, pw = geometry["padded"]
    m = F.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0]
    return F.pad(m, (0, pw - w, 0, ph - h))


def training_targets(masks, geometry, upsample: int):
    """(M, H, W) binary masks -> (M, gh * upsample, gw * upsample) soft targets, as training builds them:
    the input-scale masks bilinearly resized to the mask resolution (``prepare_targets``)."""
    resize = _knet()[0]
    gh, gw = geometry["grid"]
    return resize(_input_masks(masks, geometry), (gh * upsample, gw * upsample))


def area_logits(masks, geometry, eps: float = 1e-4):
    """(M, H, W) binary masks -> (M, gh, gw) logits of each cell's area coverage of the input-scale mask
    (clamped to [eps, 1 - eps])."""
    import torch
    import torch.nn.functional as F

    coverage = F.avg_pool2d(_input_masks(masks, geometry)[None], geometry["stride"])[0]
    return torch.logit(coverage.clamp(eps, 1 - eps))


def fitted_logits(masks, geometry, upsample: int, *, steps: int = 150, lr: float = 0.3,
                  mask_weight: float = 1.0, dice_weight: float = 4.0):
    """(M, H, W) binary masks -> (M, gh, gw) logits minimizing ``mask_weight`` x BCE + ``dice_weight`` x
    dice of their ``upsample``-times bilinear resize against the training targets (Adam from the area
    logits; the masks are independent, so one optimization fits them all)."""
    import torch

    resize, dice_loss, mask_bce_loss = _knet()[:3]
    targets = training_targets(masks, geometry, upsample)
    z = area_logits(masks, geometry).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    n = len(masks)
    for _ in range(steps):
        up = resize(z, targets.shape[-2:])
        # both losses average over the masks: times n, each mask's own loss, as if fitted alone
        loss = n * (mask_weight * mask_bce_loss(up, targets) + dice_weight * dice_loss(up, targets))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach()


def masks_from_logits(logits, geometry, upsample: int, output_size: Tuple[int, int], threshold: float = 0.5):
    """(M, gh, gw) logits -> (M, H, W) bool masks through K-Net's inference path: the ``upsample``-times
    bilinear resize of training, the crop to the image's cells, the bilinear resize of the probabilities to
    ``output_size``, the threshold."""
    resize, _, _, crop_to_image, upsample_probs = _knet()
    mask_stride = _mask_stride(geometry["stride"], upsample)
    gh, gw = geometry["grid"]
    up = resize(logits, (gh * upsample, gw * upsample))
    probs = crop_to_image(up, geometry["resized"], mask_stride).sigmoid()
    return upsample_probs(probs, geometry["resized"], output_size, mask_stride) > threshold


def ceiling(gt_json: str, *, input_size: int, stride: int, upsample: int, mode: str, max_size: int = 512,
            divisibility: int = 32, steps: int = 150, mask_weight: float = 1.0,
            dice_weight: float = 4.0) -> Dict[str, float]:
    """COCO mask AP (percent) of the perfect detections of ``gt_json``'s things with masks rebuilt by
    ``mode`` ("area" or "fitted") from a grid at ``stride``.

    Returns:
        dict with "AP", "AP50", "AP75", "APs", "APm", "APl" (-1 where COCO has no object of that size) and
        "mean_iou" (the rebuilt masks' mean IoU with their things) and "things".
    """
    import torch
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _mask_stride(stride, upsample)  # before any fitting
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_json)
    # the things of all images of one size are fitted together (the masks are independent)
    groups = collections.defaultdict(list)
    for image_id, img in coco.imgs.items():
        for ann in coco.imgToAnns.get(image_id, []):
            if not ann.get("iscrowd", 0):
                groups[(img["height"], img["width"])].append(ann)
    detections, ious = [], []
    for size, anns in groups.items():
        geometry = input_geometry(*size, input_size, max_size, divisibility, stride)
        gt = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]).astype(np.float32))
        if mode == "area":
            logits = area_logits(gt, geometry)
        else:
            logits = fitted_logits(gt, geometry, upsample, steps=steps, mask_weight=mask_weight,
                                   dice_weight=dice_weight)
        with torch.no_grad():
            rebuilt = masks_from_logits(logits, geometry, upsample, size)
        inter = (rebuilt & gt.bool()).flatten(1).sum(1).float()
        union = (rebuilt | gt.bool()).flatten(1).sum(1).float()
        ious += (inter / union.clamp(min=1)).tolist()
        for ann, m in zip(anns, rebuilt.numpy().astype(np.uint8)):
            rle = mask_util.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                               "segmentation": rle, "score": 1.0})
    if not detections:
        raise ValueError(f"{gt_json} has no (non-crowd) annotations to measure")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(detections), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    out = {k: (100 * v if v >= 0 else -1.0) for k, v in zip(names, evaluation.stats[:6])}
    out["mean_iou"] = float(np.mean(ious))
    out["things"] = len(ious)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", required=True, help="COCO instances JSON (e.g. the validation set's)")
    p.add_argument("--input-size", type=int, default=192, help="INPUT.MIN_SIZE_TEST (192: the quickstart)")
    p.add_argument("--max-size", type=int, default=512, help="INPUT.MAX_SIZE_TEST")
    p.add_argument("--size-divisibility", type=int, default=32, help="INPUT.SIZE_DIVISIBILITY")
    p.add_argument("--stride", type=int, nargs="+", default=[8, 4],
                   help="feature strides to measure (MODEL.KNET.PIXEL_DECODER.OUTPUT_STRIDE)")
    p.add_argument("--upsample", type=int, nargs="+", default=None,
                   help="MODEL.KNET.MASK_UPSAMPLE_STRIDE per stride (default: stride / 4, as the configs)")
    p.add_argument("--mode", choices=MODES, nargs="+", default=list(MODES))
    p.add_argument("--steps", type=int, default=150, help="Adam steps of the fitted grids")
    p.add_argument("--mask-weight", type=float, default=1.0, help="MODEL.KNET.LOSS.MASK_WEIGHT")
    p.add_argument("--dice-weight", type=float, default=4.0, help="MODEL.KNET.LOSS.DICE_WEIGHT")
    p.add_argument("--json", default=None, help="also write the results here (a JSON list)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.gt):
        sys.exit(f"mask_ap_ceiling: --gt {args.gt} does not exist (generate the dataset first, e.g. "
                 "`make quickstart` or tools/generate_synthetic.py)")
    upsample = args.upsample or [max(s // 4, 1) for s in args.stride]
    if len(upsample) != len(args.stride):
        sys.exit("mask_ap_ceiling: give one --upsample per --stride")
    import torch

    torch.manual_seed(0)
    results = []
    for stride, up in zip(args.stride, upsample):
        for mode in args.mode:
            r = ceiling(args.gt, input_size=args.input_size, stride=stride, upsample=up, mode=mode,
                        max_size=args.max_size, divisibility=args.size_divisibility, steps=args.steps,
                        mask_weight=args.mask_weight, dice_weight=args.dice_weight)
            r.update(stride=stride, upsample=up, mode=mode, input_size=args.input_size)
            results.append(r)
            print(f"input {args.input_size} px, stride {stride} (x{up}), {mode:6s}: mask AP {r['AP']:.1f} "
                  f"(AP50 {r['AP50']:.1f}, AP75 {r['AP75']:.1f}; APs {r['APs']:.1f}, APm {r['APm']:.1f}); "
                  f"mean IoU {r['mean_iou']:.3f} over {r['things']} things", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
