#!/usr/bin/env python
"""The quickstart: K-Net end to end on the embedded synthetic dataset, on CPU, in minutes.

1. generates the synthetic dataset under $DETECTRON2_DATASETS (default ``datasets/``) when missing;
2. trains K-Net panoptic through ``train_net.py`` (detectron2's trainer, ETA logging);
3. evaluates with detectron2's evaluators (PQ/SQ/RQ, mask AP, mIoU) at the end of training;
4. renders predictions for a few validation images next to their ground truth (PNG);
5. writes the metrics as JSON and prints where everything is.

Usage: ``make quickstart`` (or ``.venv/bin/python tools/quickstart.py [--config-file ...] [KEY VALUE ...]``).
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The float32 recipe: the ResNet-18 recipe with a narrower ResNet-10, the iterations its cheaper step buys and
# 192x192 training windows at the images' own scale (whole images at test).
DEFAULT_CONFIG = os.path.join(REPO, "configs", "synthetic", "knet_panoptic_R10.yaml")
# The ResNet-18 recipe in bfloat16 with 1.4x its iterations, for CPUs with AMX units (see its header).
BF16_CONFIG = os.path.join(REPO, "configs", "synthetic", "knet_panoptic_R18_bf16.yaml")
# Targets of the quickstart on the synthetic validation split (issue 4).
TARGETS = {"PQ": 60.0, "mask AP": 50.0, "mIoU": 80.0}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=None,
                   help="training config (synthetic panoptic); default: chosen by --precision")
    p.add_argument("--precision", choices=("auto", "float32", "bf16"), default="auto",
                   help="without --config-file: knet_panoptic_R10.yaml (float32, 1,650 iterations, 192-px "
                        "crops) or knet_panoptic_R18_bf16.yaml (bf16, 1,750 iterations); auto: bf16 where "
                        "the CPU has AMX units (amx_bf16); not with --config-file")
    p.add_argument("--output", default=os.path.join(REPO, "output", "quickstart"), help="output folder")
    p.add_argument("--num-vis", type=int, default=6, help="validation images to render")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args()


def cpu_has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU lists the ``amx_bf16`` flag (Linux ``/proc/cpuinfo``; False where it cannot be
    read)."""
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.partition(":")[2].split() for line in lines)


def choose_config(config_file, precision: str, has_amx_bf16: bool) -> str:
    """The training config: ``config_file`` when given, else the bf16 recipe for ``precision`` "bf16" (or
    "auto" on a CPU with AMX units, the only CPUs where it was measured to pay), else the float32 one."""
    if config_file:
        return config_file
    if precision == "bf16" or (precision == "auto" and has_amx_bf16):
        return BF16_CONFIG
    return DEFAULT_CONFIG


def summarize(results):
    """Pick the headline numbers out of detectron2's nested evaluation results."""
    flat = {}
    for task, metrics in results.items():
        for name, value in metrics.items():
            flat[f"{task}/{name}"] = value
    pick = {
        "PQ": "panoptic_seg/PQ", "SQ": "panoptic_seg/SQ", "RQ": "panoptic_seg/RQ",
        "PQ_th": "panoptic_seg/PQ_th", "SQ_th": "panoptic_seg/SQ_th", "RQ_th": "panoptic_seg/RQ_th",
        "PQ_st": "panoptic_seg/PQ_st", "SQ_st": "panoptic_seg/SQ_st", "RQ_st": "panoptic_seg/RQ_st",
        "mask AP": "segm/AP", "mask AP50": "segm/AP50", "mIoU": "sem_seg/mIoU", "pixel acc": "sem_seg/pACC",
    }
    return {k: flat[v] for k, v in pick.items() if v in flat}


def _draw_segments(rgb, meta, seg, segments, scale=2.0, font=6):
    """Draw a panoptic segmentation (ids `seg` (H, W); `segments`: dicts with "id", "category_id",
    "isthing" and optionally "score") on `rgb`, upscaled by `scale`: one colour per class (the same on both
    panels), a white outline, and a label on each segment: the class name, and for predictions the score."""
    import numpy as np
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(rgb, meta, scale=scale)
    vis._default_font_size = font  # detectron2 picks ~3 pt for a 256-pixel image: unreadable
    names, colors = meta.stuff_classes, meta.stuff_colors  # contiguous ids index both (things first)
    for s in sorted(segments, key=lambda s: s["isthing"]):  # stuff underneath, things on top
        mask = (seg == s["id"]).astype(np.uint8)
        if not mask.any():
            continue
        text = names[s["category_id"]]
        if "score" in s:
            text += f" {100 * s['score']:.0f}%"
        color = [c / 255 for c in colors[s["category_id"]]]
        vis.draw_binary_mask(mask, color=color, edge_color=(1.0, 1.0, 1.0), text=text, alpha=0.45)
    return vis.get_output().get_image()


def _titled(panel, title):
    """Put `title` in a white strip above `panel` (RGB uint8)."""
    import cv2
    import numpy as np

    strip = np.full((28, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def render(cfg, weights, out_dir, num):
    """Draw the ground truth (left) and K-Net's panoptic prediction (right) for `num` val images, 2x upscaled,
    with class names on every segment and the class score on every predicted one."""
    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from panopticapi.utils import rgb2id
    from tqdm import tqdm

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    threshold = cfg.MODEL.KNET.TEST.PANOPTIC_THING_SCORE_THRESHOLD
    paths = []
    os.makedirs(out_dir, exist_ok=True)
    for d in tqdm(DatasetCatalog.get(name)[:num], desc="rendering", unit="img"):
        bgr = cv2.imread(d["file_name"])
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        gt_seg = rgb2id(cv2.imread(d["pan_seg_file_name"])[:, :, ::-1].astype(np.uint32))
        gt = _draw_segments(rgb, meta, gt_seg, d["segments_info"])
        with torch.no_grad():
            pred = predictor(bgr)  # DefaultPredictor takes BGR and converts to INPUT.FORMAT
        seg, info = pred["panoptic_seg"]
        drawn = _draw_segments(rgb, meta, seg.cpu().numpy(), info)
        n_gt = sum(s["isthing"] for s in d["segments_info"])
        n_pred = sum(s["isthing"] for s in info)
        gt = _titled(gt, f"ground truth ({n_gt} things)")
        drawn = _titled(drawn, f"K-Net ({n_pred} things scoring >= {threshold:.2f})")
        pad = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(out_dir, stem + "_gt_vs_pred.png")
        cv2.imwrite(path, np.concatenate([gt, pad, drawn], axis=1)[:, :, ::-1])
        paths.append(path)
    return paths


def main():
    args = parse_args()
    t0 = time.time()
    from knet.checkpoint.io import atomic_write
    from knet.data.datasets.register_synthetic import ensure_synthetic_dataset
    from knet.engine import KNetConfigError, load_config

    if args.config_file and args.precision != "auto":
        sys.exit("quickstart.py: error: give --config-file or --precision, not both (--precision picks one "
                 "of the two shipped synthetic configs)")
    auto = args.config_file is None and args.precision == "auto"
    args.config_file = choose_config(args.config_file, args.precision, auto and cpu_has_amx_bf16())
    print(f"[quickstart] config: {os.path.relpath(args.config_file, REPO)}"
          + (" (this CPU has AMX units: bf16, 1.4x the iterations; --precision float32 to opt out)"
             if auto and args.config_file == BF16_CONFIG else ""), flush=True)
    try:  # a wrong config fails here, in seconds, not after the dataset is generated
        cfg = load_config(args.config_file, args.opts)
    except KNetConfigError as e:
        sys.exit(f"quickstart.py: error: {e}")

    root = ensure_synthetic_dataset(progress=True)
    t_data = time.time() - t0
    print(f"[quickstart] synthetic dataset ready at {root} ({t_data:.0f} s)", flush=True)

    train_dir = os.path.join(args.output, "train")
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", args.config_file,
           "OUTPUT_DIR", train_dir, *args.opts]
    print("[quickstart] $ " + " ".join(cmd), flush=True)
    t1 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    t_train = time.time() - t1

    with open(os.path.join(train_dir, "last_eval_results.json")) as f:
        results = json.load(f)
    t2 = time.time()
    weights = os.path.join(train_dir, "model_final.pth")
    vis = render(cfg, weights, os.path.join(args.output, "vis"), args.num_vis)
    t_vis = time.time() - t2

    headline = summarize(results)
    report = {
        "config": os.path.relpath(args.config_file, REPO),
        "metrics": headline,
        "targets": TARGETS,
        "targets_met": {k: headline.get(k, float("nan")) >= v for k, v in TARGETS.items()},
        "seconds": {"data": round(t_data, 1), "train_and_eval": round(t_train, 1), "render": round(t_vis, 1),
                    "total": round(time.time() - t0, 1)},
        "all_results": results,
    }
    metrics_path = os.path.join(args.output, "metrics.json")
    with atomic_write(metrics_path, "w") as f:
        json.dump(report, f, indent=2)

    print("\n[quickstart] K-Net panoptic on the synthetic validation split:")
    for k, v in headline.items():
        target = f"   (target >= {TARGETS[k]:.0f})" if k in TARGETS else ""
        print(f"  {k:>10}: {v:6.2f}{target}")
    print(f"\n[quickstart] metrics: {metrics_path}")
    print(f"[quickstart] model:   {os.path.join(train_dir, 'model_final.pth')}")
    print(f"[quickstart] logs:    {os.path.join(train_dir, 'log.txt')}")
    where = os.path.dirname(vis[0]) if vis else "-"
    print(f"[quickstart] renders: {where} ({len(vis)} PNG, ground truth | prediction)")
    print(f"[quickstart] total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
