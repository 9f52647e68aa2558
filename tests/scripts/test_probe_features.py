"""tools/experiments/probe_features.py: features are pooled inside masks as the mean over covered cells, the
linear probe reads what is linearly separable and not what is not, kernels are matched to the ground truth by
IoU, and the whole tool runs on a registered panoptic dataset with a checkpoint and writes its JSON line."""
import json

import pytest
import torch
from support.models import register_tiny_synthetic, tiny_knet_cfg
from support.scripts import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("tools/experiments/probe_features.py")


def test_pool_in_masks_is_the_mean_inside_each_mask(probe):
    feature = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # exactly the cells (0..1, 0..1) at stride 2
    masks[1, :, 4:] = True  # the right half
    weights = probe.mask_weights(masks, (4, 4))
    assert weights.shape == (3, 4, 4) and float(weights[0, :2, :2].min()) == 1.0
    assert float(weights[0].sum()) == 4
    pooled = probe.pool_in_masks(feature, weights)
    assert torch.allclose(pooled[0], feature[:, :2, :2].mean((-2, -1)))
    assert torch.allclose(pooled[1], feature[:, :, 2:].mean((-2, -1)))
    assert torch.equal(pooled[2], torch.zeros(2))  # an empty mask
    half = torch.zeros(1, 8, 8)
    half[0, 0, 0] = 1.0  # a quarter of one cell
    assert float(probe.mask_weights(half, (4, 4))[0, 0, 0]) == 0.25


def test_linear_probe_reads_separable_classes_and_not_noise(probe):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y_train, y_val = torch.arange(200) % 4, torch.arange(100) % 4
    x_train = centers[y_train] + torch.randn(200, 16, generator=g)
    x_val = centers[y_val] + torch.randn(100, 16, generator=g)
    assert probe.fit_linear_probe(x_train, y_train, x_val, y_val, 4) == 1.0
    noise_train, noise_val = torch.randn(200, 16, generator=g), torch.randn(100, 16, generator=g)
    assert probe.fit_linear_probe(noise_train, y_train, noise_val, y_val, 4) < 0.45  # chance: 0.25


def test_match_to_kernels_picks_the_highest_iou(probe):
    kernels = torch.zeros(3, 4, 4, dtype=torch.bool)
    kernels[0, :2, :2] = True
    kernels[1, :, :] = True
    kernels[2, 2:, 2:] = True
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[0, :2, :2] = True  # kernel 0 exactly (IoU 1), kernel 1 covers it (IoU 4/16)
    gt[1, 2:, 1:] = True  # 6 cells: kernel 2 has 4 of them (IoU 4/6), kernel 1 6/16
    index, iou = probe.match_to_kernels(kernels, gt)
    assert index.tolist() == [0, 2]
    assert torch.allclose(iou, torch.tensor([1.0, 4 / 6]))


def test_probe_features_runs_on_a_registered_dataset(probe, tmp_path, one_thread):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    prefix = register_tiny_synthetic(tmp_path, "knet_probe", num_train=4, num_val=3)
    cfg = tiny_knet_cfg(num_classes=11, num_thing_classes=6)
    cfg.DATASETS.TRAIN = (f"{prefix}_panoptic_train",)
    cfg.DATASETS.TEST = (f"{prefix}_panoptic_val",)
    cfg.INPUT.MIN_SIZE_TEST = 64
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = tmp_path / "model.pth"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")

    val = probe.collect(model, DatasetCatalog.get(cfg.DATASETS.TEST[0]), cfg)
    n_things = sum(s["isthing"] for r in DatasetCatalog.get(cfg.DATASETS.TEST[0]) for s in r["segments_info"])
    assert n_things > 0 and val["labels"].shape == (n_things,) and len(val["kernels"]) == n_things
    assert val["x"].shape == (n_things, 32) and val["fpn"].shape == (n_things, 4 * 32)
    assert int(val["labels"].max()) < 6

    out = tmp_path / "probe.jsonl"
    probe.main(["--config-file", str(config), "--weights", str(weights), "--out", str(out)])
    line = json.loads(out.read_text())
    assert line["weights"] == str(weights) and line["things"] == n_things
    assert 0 <= line["probe_x"] <= 100 and 0 <= line["probe_fpn"] <= 100 and 0 <= line["matched"] <= n_things
