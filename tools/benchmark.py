#!/usr/bin/env python
"""CPU inference latency of K-Net R-50 panoptic next to detectron2's Panoptic FPN R-50, and of K-Net's
panoptic post-processing alone against the reference order of operations.

Both models are built with random weights in this process and timed on the same random image with the same
number of threads, one run of each in turn (median of ``--runs`` after ``--warmup`` rounds, ``torch.no_grad``,
batch size 1, model post-processing included, data loading excluded).

Wall time is what a user waits; "CPU ms" is the process CPU time over all threads (median), which is less
sensitive to other processes competing for the cores.

Caveat: with random weights Panoptic FPN's box head scores fall below its 0.05 test threshold, so its mask
head sees almost no detection; the row "score threshold 0" forces the 100 detections a trained model
typically outputs. K-Net always runs its full path (it has no data-dependent cascade).

Usage: ``python tools/benchmark.py [--threads N] [--runs 5] [--height 512 --width 768]`` (``make bench``).
"""

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNET_CONFIG = os.path.join(REPO, "configs", "coco", "panoptic-segmentation", "knet_R50_1x.yaml")
PANOPTIC_FPN_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"


def knet_model():
    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(KNET_CONFIG)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
    return build_model(cfg).eval()


def panoptic_fpn_model(score_threshold=None):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(PANOPTIC_FPN_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    if score_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    return build_model(cfg).eval()


def timeit(fn, runs, warmup):
    """(wall s, CPU s) of each of ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - t0, time.process_time() - c0))
    return samples


def model_rows(args, image, knet):
    """Time the models round-robin (one run of each in turn) so that they see the same machine load."""
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    torch.manual_seed(0)
    models = [
        ("K-Net R-50 panoptic (153 kernels, 3 stages)", knet),
        ("Panoptic FPN R-50 (detectron2 model zoo)", panoptic_fpn_model()),
        ("Panoptic FPN R-50, score threshold 0 (100 dets)", panoptic_fpn_model(0.0)),
    ]
    times = {name: [] for name, _ in models}
    with torch.no_grad():
        for r in range(args.warmup + args.runs):
            for name, model in models:
                t0, c0 = time.perf_counter(), time.process_time()
                model(inputs)
                if r >= args.warmup:
                    times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return [_row(name, t) for name, t in times.items()]


def _row(name, samples):
    """(name, median wall s, best wall s, median CPU s) from (wall, cpu) samples."""
    wall = [w for w, _ in samples]
    return name, statistics.median(wall), min(wall), statistics.median(c for _, c in samples)


def postprocessing_rows(args, image, model):
    """Time the panoptic post-processing alone on the last-stage outputs of K-Net for ``image``."""
    from knet.modeling.postprocessing import panoptic_inference, panoptic_inference_full_resolution

    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        out = model.kernel_head(model.pixel_decoder(model.backbone(images.tensor)))["stages"][-1]
    cls, masks = out["pred_logits"][0], out["pred_masks"][0]
    # a trained model's masks are confident; sharpen the random logits so that segments exist
    masks = masks * (8.0 / masks.abs().amax().clamp(min=1e-6))
    image_size = images.image_sizes[0]
    kw = dict(
        num_proposals=model.kernel_head.num_proposals,
        num_thing_classes=model.kernel_head.num_thing_classes,
        thing_score_threshold=0.0,
    )
    rows = []
    for out_size in [tuple(image_size), (2 * image_size[0], 2 * image_size[1])]:
        variants = [
            (
                "decide at stride 4, bool upsampling (default)",
                lambda: panoptic_inference(cls, masks, image_size, out_size, **kw),
            ),
            (
                "decide at stride 4, soft boundaries",
                lambda: panoptic_inference(cls, masks, image_size, out_size, soft_boundaries=True, **kw),
            ),
            (
                "reference order: upsample all 153 masks first",
                lambda: panoptic_inference_full_resolution(cls, masks, image_size, out_size, **kw),
            ),
        ]
        for name, fn in variants:
            rows.append(_row(f"{name} -> {out_size[0]}x{out_size[1]}", timeit(fn, args.post_runs, 1)))
    return rows


def print_table(title, rows):
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"{'':{width}}  {'median ms':>10}  {'best ms':>9}  {'CPU ms':>9}")
    for name, med, best, cpu in rows:
        print(f"{name:{width}}  {med * 1e3:10.1f}  {best * 1e3:9.1f}  {cpu * 1e3:9.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each model (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first")
    parser.add_argument("--post-runs", type=int, default=5, help="timed runs of each post-processing variant")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--skip-models", action="store_true", help="only time the post-processing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    image = torch.randint(
        0, 256, (3, args.height, args.width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    print(
        f"torch {torch.__version__}, {args.threads} CPU thread(s), input {args.height}x{args.width}, "
        f"median of {args.runs} runs after {args.warmup} warm-up run(s), random weights"
    )
    torch.manual_seed(0)
    knet = knet_model()
    if not args.skip_models:
        print_table(
            "End-to-end inference latency (preprocessing, network, post-processing), batch 1",
            model_rows(args, image, knet),
        )
    print_table(
        "K-Net panoptic post-processing alone (153 kernels, 133 classes)",
        postprocessing_rows(args, image, knet),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
