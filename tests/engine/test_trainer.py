"""``Trainer``: test-time augmentation only for semantic datasets; the random generators' states travel with
the checkpoint through ``RandomStateHook``."""
import logging
import random
import uuid

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from support.toy import ToyModel, solver_cfg

from knet.engine import RandomStateHook, Trainer


def _register(**meta):
    name = f"knet_test_trainer_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(**meta)
    return name


def test_tta_only_for_semantic_datasets(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    from knet.test_time_augmentation import KNetSemanticTTA

    sem = _register(evaluator_type="sem_seg", stuff_classes=["a", "b"], ignore_label=255)
    pan = _register(evaluator_type="coco_panoptic_seg", panoptic_json="p.json", panoptic_root="p",
                    thing_dataset_id_to_contiguous_id={1: 0}, stuff_dataset_id_to_contiguous_id={1: 0, 2: 1})
    cfg = solver_cfg()
    cfg.DATASETS.TEST = (sem, pan)
    cfg.OUTPUT_DIR = "/tmp/unused"
    calls = []

    def fake_test_one(cfg_, model, name, evaluator):
        calls.append((name, model, evaluator))
        return {"sem_seg" if name == sem else "panoptic_seg": {"metric": 1.0}}

    monkeypatch.setattr(Trainer, "_test_one", classmethod(lambda cls, *a: fake_test_one(*a)))
    model = ToyModel()
    trainer_logger = logging.getLogger("knet.engine.trainer")  # "knet" may not propagate (setup_logger)
    trainer_logger.addHandler(caplog.handler)
    try:
        res = Trainer.test_with_TTA(cfg, model)
    finally:
        trainer_logger.removeHandler(caplog.handler)
    assert set(res) == {"sem_seg_TTA", "panoptic_seg"}
    assert isinstance(calls[0][1], KNetSemanticTTA) and calls[0][1].model is model
    assert calls[1][1] is model  # panoptic: evaluated without TTA ...
    messages = [r.getMessage() for r in caplog.records]
    assert any("only supported for semantic" in m and pan in m for m in messages)


def test_random_state_hook_restores_every_generator():
    hook = RandomStateHook()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = hook.state_dict()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    hook.load_state_dict(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert all(isinstance(v, (int, float, torch.Tensor)) for v in (state["torch"], state["numpy"][1]))
