"""Small synthetic datasets written and registered for a test module."""
from detectron2.config import get_cfg

from knet import add_knet_config
from knet.data.datasets import ensure_synthetic_dataset, register_knet_synthetic

TASKS = ("panoptic", "instance", "sem_seg")


def register_small_synthetic(tmp_path_factory, prefix: str, *, seed: int, num_train: int, num_val: int,
                             image_size: int = 64) -> dict:
    """Write a synthetic dataset of ``num_train`` / ``num_val`` images of ``image_size`` px into a fresh
    temporary folder, register it as ``{prefix}_{task}_{split}``, and return the training split's name of each
    task (``"panoptic"``, ``"instance"``, ``"sem_seg"``)."""
    root = ensure_synthetic_dataset(str(tmp_path_factory.mktemp(prefix) / "knet_synthetic"), seed=seed,
                                    num_train=num_train, num_val=num_val, image_size=image_size)
    register_knet_synthetic(root, prefix=prefix)
    return {t: f"{prefix}_{t}_train" for t in TASKS}


def mapper_cfg(mapper: str, dataset: str):
    """A config for building the K-Net mapper ``mapper`` on the synthetic split ``dataset`` (11 classes, 6 of
    them things; small sizes for fast tests)."""
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.MODEL.KNET.NUM_CLASSES = 11
    cfg.MODEL.KNET.NUM_THING_CLASSES = 6
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.DATASET_MAPPER_NAME = mapper
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.MIN_SIZE_TEST = 80
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.INPUT.IMAGE_SIZE = 96
    cfg.INPUT.SEMANTIC.SCALE = (256, 64)
    cfg.INPUT.SEMANTIC.CROP_SIZE = (48, 48)
    return cfg
