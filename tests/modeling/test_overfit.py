"""K-Net memorises two synthetic panoptic images (PQ >= 90 on them) within a few hundred CPU iterations.

Slow (about a minute on 2 cores): run with ``make test-slow`` or ``pytest -m slow tests/test_overfit.py``.
"""

import time

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from support.models import tiny_knet_cfg

# classes: 0 "box" (thing), 1 "disc" (thing), 2 "sky" (stuff), 3 "ground" (stuff)
COLORS = {0: (220, 40, 40), 1: (40, 200, 60), 2: (70, 110, 230), 3: (150, 120, 60)}
H, W = 64, 96


def draw_image(things, horizon, seed):
    """things: list of (class, kind, params). Returns the uint8 image (3, H, W), segment ids and classes."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((H, W), dtype=np.int64)
    classes = [2, 3]  # segment 0 = sky, 1 = ground
    seg[horizon:] = 1
    yy, xx = np.mgrid[:H, :W]
    for cls, kind, p in things:
        if kind == "box":
            y0, y1, x0, x1 = p
            m = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
        else:
            cy, cx, r = p
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        seg[m] = len(classes)
        classes.append(cls)
    img = np.zeros((H, W, 3), dtype=np.float32)
    for k, c in enumerate(classes):
        img[seg == k] = COLORS[c]
    img += rng.normal(0, 12, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), seg, classes


def make_dataset():
    specs = [
        ([(0, "box", (10, 30, 8, 36)), (1, "disc", (44, 64, 12)), (0, "box", (36, 58, 20, 40))], 28, 0),
        ([(1, "disc", (18, 30, 11)), (0, "box", (34, 60, 52, 88)), (1, "disc", (46, 22, 10))], 32, 1),
    ]
    data = []
    for things, horizon, seed in specs:
        image, seg, classes = draw_image(things, horizon, seed)
        inst = Instances((H, W))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = torch.from_numpy(np.stack([seg == k for k in range(len(classes))]))
        data.append(
            {"image": image, "height": H, "width": W, "instances": inst, "seg": seg, "classes": classes}
        )
    return data


def panoptic_quality(pred, info, seg, classes, num_classes=4):
    """PQ (COCO definition, no void handling needed) of one prediction against the drawn ground truth.

    Returns per-class (sum IoU of TP, TP, FP, FN)."""
    stats = np.zeros((num_classes, 4))
    gt_segments = [(classes[k], seg == k) for k in range(len(classes))]
    pred = pred.cpu().numpy()
    pred_segments = [(s["category_id"], pred == s["id"]) for s in info]
    matched_pred = set()
    for gcls, gmask in gt_segments:
        hit = False
        for j, (pcls, pmask) in enumerate(pred_segments):
            if pcls != gcls or j in matched_pred:
                continue
            iou = (gmask & pmask).sum() / max((gmask | pmask).sum(), 1)
            if iou > 0.5:
                stats[gcls, 0] += iou
                stats[gcls, 1] += 1
                matched_pred.add(j)
                hit = True
                break
        if not hit:
            stats[gcls, 3] += 1
    for j, (pcls, _) in enumerate(pred_segments):
        if j not in matched_pred:
            stats[pcls, 2] += 1
    return stats


def pq_of(stats):
    pqs = []
    for iou, tp, fp, fn in stats:
        if tp + fp + fn > 0:
            pqs.append(iou / (tp + 0.5 * fp + 0.5 * fn))
    return 100 * float(np.mean(pqs))


@pytest.mark.slow
def test_overfit_two_synthetic_images():
    torch.manual_seed(0)
    cfg = tiny_knet_cfg(
        num_classes=4,
        num_thing_classes=2,
        num_proposals=10,
        hidden_dim=64,
        ffn_dim=128,
        instance_on=False,
        semantic_on=False,
    )
    model = build_model(cfg)
    data = make_dataset()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    start = time.time()
    history = []
    max_iter, pq = 400, 0.0
    for it in range(1, max_iter + 1):
        model.train()
        losses = model([{k: d[k] for k in ("image", "height", "width", "instances")} for d in data])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # full-model gradient clipping, as the official recipe
        optimizer.step()
        if it % 50 == 0:
            model.eval()
            with torch.no_grad():
                outputs = model([{"image": d["image"], "height": H, "width": W} for d in data])
            stats = sum(
                panoptic_quality(*o["panoptic_seg"], d["seg"], d["classes"]) for o, d in zip(outputs, data)
            )
            pq = pq_of(stats)
            history.append((it, round(float(total), 3), round(pq, 1)))
            if pq >= 90:
                break
    elapsed = time.time() - start
    print(f"overfit: PQ {pq:.1f} after {it} iterations in {elapsed:.0f} s; (iteration, loss, PQ): {history}")
    assert pq >= 90, history
