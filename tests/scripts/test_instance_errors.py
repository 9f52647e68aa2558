"""tools/experiments/instance_errors.py: each detection gets exactly one outcome (true positive, duplicate,
wrong class, poor mask, both, background) in score order, things are counted by COCO size as found or only
covered, and the command line reads COCO JSON files and reports a missing one by name."""
import json

import numpy as np
import pytest
from support.scripts import load_script


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/experiments/instance_errors.py")


def test_every_kind_of_detection(tool):
    gt_classes = [1, 2]
    # detections: 0 finds thing 0; 1 the same thing again, lower score; 2 covers thing 1 with class 1;
    # 3 has class 2 but only IoU 0.3 with thing 1; 4 class 1, IoU 0.2 with thing 1 only; 5 nothing;
    # 6 scores below the threshold
    det_classes = [1, 1, 1, 2, 1, 2, 2]
    det_scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1]
    ious = np.array([[0.8, 0.0], [0.6, 0.0], [0.0, 0.7], [0.0, 0.3], [0.0, 0.2], [0.05, 0.05],
                     [0.0, 0.9]])
    out = tool.classify_image(gt_classes, det_classes, det_scores, ious, score_threshold=0.3)
    assert out["kinds"] == ["tp", "dup", "cls", "loc", "cls+loc", "bg"]
    assert out["found"].tolist() == [True, False]
    assert out["covered"].tolist() == [True, True]  # detection 6 covers thing 1, whatever its score
    assert out["tp_ious"] == [0.8]


def test_score_order_decides_the_true_positive(tool):
    # the lower-scoring detection overlaps more, but the higher one comes first and takes the thing
    out = tool.classify_image([3], [3, 3], [0.2, 0.9], np.array([[0.95], [0.55]]), score_threshold=0.0)
    assert out["kinds"] == ["tp", "dup"] and out["tp_ious"] == [0.55]
    # two things of the class: the second detection takes the one still free
    out = tool.classify_image([3, 3], [3, 3], [0.9, 0.8], np.array([[0.9, 0.6], [0.8, 0.7]]),
                              score_threshold=0.0)
    assert out["kinds"] == ["tp", "tp"] and out["tp_ious"] == [0.9, 0.7]
    empty = tool.classify_image([1], [], [], np.zeros((0, 1)), 0.3)
    assert empty["kinds"] == [] and empty["found"].tolist() == [False]
    assert empty["covered"].tolist() == [False]


def test_size_names_follow_coco(tool):
    names = [tool.size_name(a) for a in (0, 1023, 1024, 9215, 9216)]
    assert names == ["small", "small", "medium", "medium", "large"]


def _rle(mask):
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def test_command_line_on_coco_files(tool, tmp_path, capsys):
    small, medium = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    small[2:12, 2:12] = True  # 100 px
    medium[20:60, 20:60] = True  # 1,600 px
    gt = {
        "images": [{"id": 1, "height": 64, "width": 64}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(small), "area": 100,
             "iscrowd": 0, "bbox": [2, 2, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _rle(medium), "area": 1600,
             "iscrowd": 0, "bbox": [20, 20, 40, 40]},
            # a crowd region is left out: neither a thing to find nor one that the small prediction covers
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": _rle(small), "area": 100,
             "iscrowd": 1, "bbox": [2, 2, 10, 10]},
        ],
    }
    shifted = np.zeros((64, 64), bool)
    shifted[24:60, 20:60] = True  # IoU 0.9 with the medium thing
    preds = [
        {"image_id": 1, "category_id": 2, "segmentation": _rle(shifted), "score": 0.8},
        {"image_id": 1, "category_id": 2, "segmentation": _rle(small), "score": 0.1},  # wrong class
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    args = ["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"), "--json"]
    assert tool.main(args) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["detections"] == {"tp": 1, "dup": 0, "cls": 0, "loc": 0, "cls+loc": 0, "bg": 0}
    assert s["things"] == {"small": {"things": 1, "found": 0, "covered": 1},
                           "medium": {"things": 1, "found": 1, "covered": 1}}
    assert s["tp_iou"]["mean"] == pytest.approx(0.9)
    with pytest.raises(SystemExit, match="missing.json"):
        tool.main(["--gt", str(tmp_path / "missing.json"), "--pred", str(tmp_path / "pred.json")])
