"""``check_dataset_metadata``: one error class naming the dataset, the key and the fix, for a dataset that is
not registered, lacks a key its mapper or evaluator reads, or disagrees with the model's class counts."""
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from support.toy import solver_cfg

from knet.data.metadata import DatasetMetadataError, check_dataset_metadata


def _register(**meta):
    name = f"knet_test_metadata_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(**meta)
    return name


def _cfg():
    cfg = solver_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_semantic"
    cfg.MODEL.KNET.NUM_CLASSES = 2
    return cfg


def test_missing_metadata_fails_clearly():
    cfg = _cfg()
    cfg.DATASETS.TRAIN = (_register(stuff_classes=["a", "b"], evaluator_type="sem_seg"),)
    cfg.DATASETS.TEST = ()
    with pytest.raises(DatasetMetadataError) as e:
        check_dataset_metadata(cfg, strict=True)
    assert cfg.DATASETS.TRAIN[0] in str(e.value) and "'ignore_label'" in str(e.value)
    assert "knet_semantic" in str(e.value) and "MetadataCatalog.get(" in str(e.value)

    cfg.DATASETS.TRAIN = (_register(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg"),)
    check_dataset_metadata(cfg, strict=True)  # complete: no error
    cfg.DATASETS.TEST = (_register(evaluator_type="sem_seg", ignore_label=255),)
    with pytest.raises(DatasetMetadataError) as e:
        check_dataset_metadata(cfg, strict=True)
    assert cfg.DATASETS.TEST[0] in str(e.value) and "'stuff_classes'" in str(e.value)

    cfg.DATASETS.TEST = ("knet_never_registered_val",)
    with pytest.raises(DatasetMetadataError, match="knet_never_registered_val.*not registered"):
        check_dataset_metadata(cfg, strict=True)
    check_dataset_metadata(cfg)  # not strict (the model's): unregistered datasets are skipped


def test_class_counts_and_ignore_label_agreement():
    cfg = _cfg()
    cfg.MODEL.KNET.NUM_CLASSES = 3
    cfg.DATASETS.TRAIN = (_register(stuff_classes=["a", "b"], ignore_label=255),)
    with pytest.raises(DatasetMetadataError, match=r"NUM_CLASSES = 3.*'knet_test_metadata_\w+'.* to 2"):
        check_dataset_metadata(cfg)
    cfg.MODEL.KNET.NUM_CLASSES = 2
    cfg.DATASETS.TRAIN += (_register(stuff_classes=["a", "b"], ignore_label=0),)
    check_dataset_metadata(cfg)  # not strict: the counts agree
    with pytest.raises(DatasetMetadataError, match="disagree on the metadata 'ignore_label'"):
        check_dataset_metadata(cfg, strict=True)
