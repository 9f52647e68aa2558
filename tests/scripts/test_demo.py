"""The demo: a random-weight CPU K-Net on synthetic images writes drawings of the input size, the confidence
threshold really filters what is drawn, and unreadable images are reported, skipped and make the exit
status non-zero."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from support.scripts import REPO, load_script

from knet.data.datasets.synthetic import ensure_synthetic_dataset
from knet.demo import VisualizationDemo, filter_panoptic, filter_sem_seg
from knet.engine import load_config

CONFIG = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")


@pytest.fixture(scope="module")
def demo_module():
    return load_script("demo/demo.py")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three synthetic images of different sizes (64x64, 48x80 and 72x40)."""
    root = ensure_synthetic_dataset(str(tmp_path_factory.mktemp("syn") / "knet_synthetic"), num_train=1,
                                    num_val=3, image_size=64)
    folder = tmp_path_factory.mktemp("images")
    src = sorted(os.listdir(os.path.join(root, "images", "val")))
    sizes = [(64, 64), (48, 80), (72, 40)]
    for name, (h, w) in zip(src, sizes):
        img = cv2.imread(os.path.join(root, "images", "val", name))
        cv2.imwrite(str(folder / name.replace(".jpg", ".png")), cv2.resize(img, (w, h)))
    return folder


FAST = ["MODEL.DEVICE", "cpu", "MODEL.KNET.TEST.MAX_PER_IMAGE", "10"]  # fewer masks to draw: faster


def _cfg(task):
    cfg = load_config(CONFIG, FAST)
    cfg.MODEL.KNET.TEST.PANOPTIC_ON = task == "panoptic"
    cfg.MODEL.KNET.TEST.INSTANCE_ON = task == "instance"
    cfg.MODEL.KNET.TEST.SEMANTIC_ON = task == "semantic"
    return cfg


def test_threshold_reduces_drawn_instances(images):
    torch.manual_seed(0)
    demo = VisualizationDemo(_cfg("instance"), task="instance", confidence_threshold=0.0)
    img = cv2.imread(str(sorted(images.iterdir())[1]))
    predictions, drawn_all, vis_all = demo.run_on_image(img)
    scores = predictions["instances"].scores
    assert len(drawn_all) == len(scores) > 2
    assert vis_all.get_image().shape == img.shape

    thr = float(scores.median())
    demo.confidence_threshold = thr
    _, drawn, vis = demo.run_on_image(img)
    assert len(drawn) == int((scores >= thr).sum()) < len(drawn_all)
    assert bool((drawn.scores >= thr).all())
    assert vis.get_image().shape == img.shape
    assert not np.array_equal(vis.get_image(), vis_all.get_image())  # fewer masks drawn

    demo.confidence_threshold = float(scores.max()) + 1e-3
    _, drawn_none, vis_none = demo.run_on_image(img)
    assert len(drawn_none) == 0
    assert np.array_equal(vis_none.get_image(), img[:, :, ::-1])  # nothing drawn at all


def test_semantic_threshold(images):
    demo = VisualizationDemo(_cfg("semantic"), task="semantic", confidence_threshold=0.0)
    img = cv2.imread(str(sorted(images.iterdir())[2]))
    predictions, labels, vis = demo.run_on_image(img)
    assert labels.shape == img.shape[:2] and bool((labels < 11).all())
    assert vis.get_image().shape == img.shape and not np.array_equal(vis.get_image(), img[:, :, ::-1])
    demo.confidence_threshold = 1.01  # no pixel is that sure: nothing is drawn
    _, labels, vis = demo.run_on_image(img)
    assert bool((labels == 255).all()) and np.array_equal(vis.get_image(), img[:, :, ::-1])


def test_filter_panoptic_drops_low_score_things_keeps_stuff():
    pan = torch.tensor([[1, 1, 2], [3, 3, 2], [0, 3, 4]], dtype=torch.int32)
    info = [
        {"id": 1, "category_id": 0, "isthing": True, "score": 0.9},
        {"id": 2, "category_id": 1, "isthing": True, "score": 0.2},
        {"id": 3, "category_id": 7, "isthing": False, "score": 0.1},
        {"id": 4, "category_id": 2, "isthing": True, "score": 0.5},
    ]
    out, kept = filter_panoptic(pan, info, 0.5)
    assert [s["id"] for s in kept] == [1, 3, 4]
    assert out.tolist() == [[1, 1, 0], [3, 3, 0], [0, 3, 4]]
    assert pan[0, 2] == 2  # input untouched
    out, kept = filter_panoptic(pan, info, 0.0)
    assert torch.equal(out, pan) and len(kept) == 4


def test_filter_sem_seg_leaves_uncertain_pixels_undrawn():
    probs = torch.tensor([[[0.9, 0.3]], [[0.1, 0.7]]])  # (C=2, 1, 2)
    assert filter_sem_seg(probs, 0.5).tolist() == [[0, 1]]
    assert filter_sem_seg(probs, 0.8).tolist() == [[0, 255]]
    logits = torch.tensor([[[4.0, -4.0]], [[0.0, 0.0]]])
    assert filter_sem_seg(logits, 0.9).tolist() == [[0, 1]]


def test_cli_folder_with_a_corrupt_image(demo_module, images, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out"
    code = demo_module.main([
        "--config-file", CONFIG, "--input", str(inputs), "--output", str(out), "--task", "panoptic",
        "--confidence-threshold", "0.0", "--opts", *FAST,
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert str(inputs / "broken.jpg") in err and "skipped" in err
    assert "3 of 4 images processed" in err
    written = sorted(os.listdir(out))
    assert written == sorted(p.name for p in images.iterdir())
    for name in written:
        assert cv2.imread(str(out / name)).shape == cv2.imread(str(images / name)).shape


def test_input_expansion_and_output_paths(demo_module, images, tmp_path):
    pngs = sorted(str(p) for p in images.iterdir())
    paths, problems = demo_module.expand_inputs([str(images / "*.png"), pngs[0], str(images), "nope.jpg"])
    assert paths == pngs + [pngs[0]] + pngs
    assert problems == [("nope.jpg", "no such file or folder")]
    _, problems = demo_module.expand_inputs([str(tmp_path / "*.jpg"), str(tmp_path)])
    assert [reason for _, reason in problems] == ["the pattern matches no file", "the folder holds no image"]
    # one input and an image name: that file; otherwise a folder (created) with the input's name
    assert demo_module.output_path(str(tmp_path / "a" / "x.png"), pngs[0], single=True) == str(
        tmp_path / "a" / "x.png"
    )
    out = demo_module.output_path(str(tmp_path / "b"), pngs[1], single=False)
    assert out == str(tmp_path / "b" / os.path.basename(pngs[1])) and (tmp_path / "b").is_dir()


def test_cli_video(demo_module, images, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64), True)
    frame = cv2.imread(str(sorted(images.iterdir())[0]))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    out = str(tmp_path / "clip_out.mp4")
    code = demo_module.main([
        "--config-file", CONFIG, "--video-input", video, "--output", out, "--task", "instance",
        "--confidence-threshold", "0.0", "--opts", *FAST,
    ])
    assert code == 0
    result = cv2.VideoCapture(out)
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (int(result.get(cv2.CAP_PROP_FRAME_WIDTH)), int(result.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (64, 64)
