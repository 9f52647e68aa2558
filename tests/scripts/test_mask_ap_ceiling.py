"""tools/experiments/mask_ap_ceiling.py: the input geometry of detectron2's test-time resize, masks rebuilt
through K-Net's output path (exact at stride 1, lossy on a coarse grid), the fitted grids lowering the
training loss, and the COCO AP of the perfect detections."""
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from support.scripts import load_script


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/experiments/mask_ap_ceiling.py")


def _disc(size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


@pytest.fixture(scope="module")
def gt_json(tmp_path_factory):
    """Two 64x64 images: two discs and a square, one small disc; categories 1 and 2."""
    size = 64
    square = np.pad(np.ones((14, 14), np.uint8), ((35, 15), (30, 20)))
    things = {1: [(1, _disc(size, 20, 20, 9)), (2, square)],
              2: [(1, _disc(size, 40, 30, 4))]}
    images, anns = [], []
    for image_id, objs in things.items():
        images.append({"id": image_id, "height": size, "width": size, "file_name": f"{image_id}.png"})
        for category, m in objs:
            rle = mask_util.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category, "iscrowd": 0,
                         "segmentation": rle, "area": float(m.sum()),
                         "bbox": [float(v) for v in mask_util.toBbox(rle)]})
    path = tmp_path_factory.mktemp("ceiling") / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]}))
    return str(path)


def test_input_geometry_follows_the_test_resize(tool):
    # the quickstart: 256x256 images tested at 192 px: a 24x24 grid at stride 8
    assert tool.input_geometry(256, 256, 192, 512, 32, 8) == {
        "resized": (192, 192), "padded": (192, 192), "grid": (24, 24), "stride": 8}
    # landscape: short side 192, the long side scaled alike
    assert tool.input_geometry(480, 640, 192, 512, 32, 8) == {
        "resized": (192, 256), "padded": (192, 256), "grid": (24, 32), "stride": 8}
    # capped by the long side, then padded up to the divisibility
    assert tool.input_geometry(100, 400, 200, 400, 32, 4) == {
        "resized": (100, 400), "padded": (128, 416), "grid": (32, 104), "stride": 4}
    with pytest.raises(ValueError, match="--stride 8"):
        tool.input_geometry(60, 60, 60, 512, 4, 8)  # padded to 60: not a multiple of 8


def test_stride_one_rebuilds_every_mask_exactly(tool, gt_json):
    # a grid as fine as the image: the area coverage is the mask, so the output path gives it back
    r = tool.ceiling(gt_json, input_size=64, stride=1, upsample=1, mode="area", divisibility=1)
    assert r["things"] == 3
    assert r["mean_iou"] == pytest.approx(1.0)
    assert r["AP"] == pytest.approx(100.0)


def test_a_coarse_grid_loses_small_things_first(tool, gt_json):
    r = tool.ceiling(gt_json, input_size=64, stride=8, upsample=2, mode="area", divisibility=32)
    assert 0.5 < r["mean_iou"] < 0.99
    assert r["AP"] < 100.0
    geometry = tool.input_geometry(64, 64, 64, 512, 32, 8)
    with open(gt_json) as f:
        anns = json.load(f)["annotations"]
    masks = torch.from_numpy(np.stack([mask_util.decode(a["segmentation"]) for a in anns]).astype(np.float32))
    rebuilt = tool.masks_from_logits(tool.area_logits(masks, geometry), geometry, 2, (64, 64))
    iou = ((rebuilt & masks.bool()).flatten(1).sum(1) / (rebuilt | masks.bool()).flatten(1).sum(1)).tolist()
    assert iou[2] < min(iou[:2])  # the 9-px disc loses most


def test_fitting_lowers_the_training_loss(tool, gt_json):
    _, dice_loss, mask_bce_loss, _, _ = tool._knet()
    geometry = tool.input_geometry(64, 64, 64, 512, 32, 8)
    with open(gt_json) as f:
        anns = json.load(f)["annotations"]
    masks = torch.from_numpy(np.stack([mask_util.decode(a["segmentation"]) for a in anns]).astype(np.float32))
    targets = tool.training_targets(masks, geometry, 2)
    assert targets.shape == (3, 16, 16) and 0 <= targets.min() and targets.max() <= 1

    def loss(z):
        up = torch.nn.functional.interpolate(z[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
        return (mask_bce_loss(up, targets) + 4 * dice_loss(up, targets)).item()

    start = tool.area_logits(masks, geometry)
    fitted = tool.fitted_logits(masks, geometry, 2, steps=60)
    assert fitted.shape == start.shape == (3, 8, 8)
    assert loss(fitted) < 0.8 * loss(start)


def test_the_command_line(tool, gt_json, tmp_path, capsys):
    out = tmp_path / "r.json"
    results = tool.main(["--gt", gt_json, "--input-size", "64", "--stride", "8", "4", "--mode", "area",
                         "--json", str(out)])
    assert [(r["stride"], r["upsample"]) for r in results] == [(8, 2), (4, 1)]
    assert json.loads(out.read_text()) == results
    assert "stride 8 (x2), area" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="does not exist"):
        tool.main(["--gt", str(tmp_path / "missing.json")])


def test_bad_settings_are_named(tool, gt_json):
    with pytest.raises(ValueError, match="--upsample 3 must divide the feature stride 8"):
        tool.ceiling(gt_json, input_size=64, stride=8, upsample=3, mode="fitted")
    with pytest.raises(ValueError, match="mode must be one of"):
        tool.ceiling(gt_json, input_size=64, stride=8, upsample=2, mode="exact")
