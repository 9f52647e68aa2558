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
DEFAULT_CONFIG = os.path.join(REPO, "configs", "synthetic", "knet_panoptic_R18.yaml")
# Targets of the quickstart on the synthetic validation split (issue 4).
TARGETS = {"PQ": 60.0, "mask AP": 50.0, "mIoU": 80.0}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="training config (synthetic panoptic)")
    p.add_argument("--output", default=os.path.join(REPO, "output", "quickstart"), help="output folder")
    p.add_argument("--num-vis", type=int, default=6, help="validation images to render")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args()


def load_cfg(config_file, opts):
    from detectron2.config import get_cfg

    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return cfg


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


def render(cfg, weights, out_dir, num):
    """Draw the ground truth (left) and K-Net's panoptic prediction (right) for `num` val images."""
    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import ColorMode, Visualizer
    from tqdm import tqdm

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    name = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(name)
    paths = []
    os.makedirs(out_dir, exist_ok=True)
    for d in tqdm(DatasetCatalog.get(name)[:num], desc="rendering", unit="img"):
        bgr = cv2.imread(d["file_name"])
        rgb = bgr[:, :, ::-1]
        gt = Visualizer(rgb, meta, instance_mode=ColorMode.IMAGE).draw_dataset_dict(d).get_image()
        with torch.no_grad():
            pred = predictor(bgr)  # DefaultPredictor takes BGR and converts to INPUT.FORMAT
        seg, info = pred["panoptic_seg"]
        vis = Visualizer(rgb, meta, instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_panoptic_seg_predictions(seg.cpu(), info).get_image()
        pad = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(out_dir, stem + "_gt_vs_pred.png")
        cv2.imwrite(path, np.concatenate([gt, pad, drawn], axis=1)[:, :, ::-1])
        paths.append(path)
    return paths


def main():
    args = parse_args()
    sys.path.insert(0, REPO)
    t0 = time.time()
    from knet.data.datasets.register_synthetic import ensure_synthetic_dataset

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
    cfg = load_cfg(args.config_file, args.opts)
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
    with open(metrics_path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(metrics_path + ".tmp", metrics_path)

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
