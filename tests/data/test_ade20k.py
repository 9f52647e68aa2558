"""ADE20K: label conversion and dataset registration."""
import os

import numpy as np


def test_ade20k_label_conversion():
    from knet.data.datasets.register_ade20k import convert_ade20k_label

    lab = np.array([[0, 1, 150], [151, 2, 0]], dtype=np.uint8)
    out = convert_ade20k_label(lab)
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 0, 149], [255, 1, 255]]


def test_ade20k_registration_metadata():
    from detectron2.data import MetadataCatalog

    from knet.data.datasets.register_ade20k import check_ade20k_metadata

    for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
        check_ade20k_metadata(name)
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == 150 and meta.ignore_label == 255
        split = {"train": "training", "val": "validation"}[name.split("_")[-1]]
        assert meta.sem_seg_root.endswith(os.path.join("annotations_detectron2", split))
