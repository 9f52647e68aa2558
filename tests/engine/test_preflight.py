"""The pre-flight: an unknown mapper name is a config error naming the closest registered one; the datasets
are checked once per config, however many times it is asked."""
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from support.toy import solver_cfg

from knet.data.metadata import DatasetMetadataError
from knet.engine import KNetConfigError, preflight


def _register(**meta):
    name = f"knet_test_preflight_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(**meta)
    return name


def _semantic_cfg(train, test=()):
    cfg = solver_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_semantic"
    cfg.MODEL.KNET.NUM_CLASSES = 2
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), tuple(test)
    return cfg


def test_unknown_mapper_is_a_config_error():
    cfg = _semantic_cfg(_register(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg"))
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptik"
    with pytest.raises(KNetConfigError, match="knet_panoptik.*knet_panoptic"):
        preflight(cfg)


def test_input_crop_with_a_mapper_that_ignores_it_is_a_config_error():
    cfg = _semantic_cfg(_register(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg"))
    cfg.INPUT.CROP.ENABLED = True
    message = r"INPUT.CROP.ENABLED.*'knet_semantic'.*knet_instance, knet_panoptic"
    with pytest.raises(KNetConfigError, match=message):
        preflight(cfg)
    preflight(cfg, eval_only=True)  # evaluation does not crop
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptic_lsj"
    with pytest.raises(KNetConfigError, match="knet_panoptic_lsj"):
        preflight(cfg)


def test_datasets_checked_once(monkeypatch):
    from knet.data import metadata

    cfg = _semantic_cfg(_register(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg"),
                        [_register(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg")])
    checked = []
    real = metadata._check_class_counts
    monkeypatch.setattr(metadata, "_check_class_counts",
                        lambda c, name, *a: checked.append(name) or real(c, name, *a))
    preflight(cfg)
    assert checked == [cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]]
    preflight(cfg)  # the Trainer's, after train_net's
    metadata.check_dataset_metadata(cfg, test=False, strict=True)  # the training mapper's
    metadata.check_dataset_metadata(cfg, semantic=True)  # the model's
    assert len(checked) == 2
    cfg.MODEL.KNET.NUM_CLASSES = 3  # another config: checked again (and wrong)
    with pytest.raises(DatasetMetadataError, match="NUM_CLASSES = 3"):
        preflight(cfg)
