"""Trainer pieces: optimizer groups (backbone lr x0.25, AdamW/SGD), full-model gradient clipping, config and
metadata errors, the resumable sampler and seeded mapping, and the CPU mixed-precision step."""
import itertools
import logging
import os
import random
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage
from torch import nn

from knet.config import add_knet_config
from knet.engine import (
    KNetAMPTrainer,
    KNetConfigError,
    KNetMetadataError,
    KNetResumableTrainingSampler,
    SeededMapDataset,
    build_knet_optimizer,
    check_dataset_metadata,
    load_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Toy(nn.Module):
    """A stand-in with the K-Net top-level layout: ``backbone.*`` and head modules."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.kernel_head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.backbone_like_name = nn.Linear(4, 2)  # not under "backbone.": no multiplier

    def forward(self, batch):
        x = torch.stack([b["x"] for b in batch])
        y = self.backbone(x).mean((2, 3))
        return {"loss": self.backbone_like_name(self.kernel_head(y)).pow(2).mean()}


def _cfg(**solver):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def _group_of(optimizer):
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_optimizer_groups_backbone_multiplier_adamw():
    model = _Toy()
    opt = build_knet_optimizer(_cfg(), model)
    assert isinstance(opt, torch.optim.AdamW)
    groups = _group_of(opt)
    assert len(groups) == len(list(model.parameters()))  # every trainable parameter, once
    for name, p in model.named_parameters():
        g = groups[id(p)]
        expected_lr = 0.25e-4 if name.startswith("backbone.") else 1e-4
        assert g["lr"] == pytest.approx(expected_lr), name
        is_norm = name.startswith(("backbone.1.", "kernel_head.1."))
        assert g["weight_decay"] == pytest.approx(0.0 if is_norm else 0.05), name


def test_optimizer_sgd_and_bad_name():
    opt = build_knet_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), _Toy())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_knet_optimizer(_cfg(OPTIMIZER="LAMB"), _Toy())


def _set_grads(model, scale):
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return [p.grad.clone() for p in model.parameters()]


def test_full_model_gradient_clipping():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    model = _Toy()
    opt = build_knet_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and "FullModel" in type(opt).__name__
    before = _set_grads(model, 10.0)
    total_before = torch.linalg.vector_norm(torch.stack([g.norm() for g in before]))
    assert total_before > 10
    opt.step()
    after = [p.grad for p in model.parameters()]
    total_after = torch.linalg.vector_norm(torch.stack([g.norm() for g in after]))
    assert total_after == pytest.approx(1.0, rel=1e-4)
    # one factor for the whole model (per-parameter clipping would scale each tensor differently)
    factors = torch.stack([(a.norm() / b.norm()) for a, b in zip(after, before)])
    assert torch.allclose(factors, factors[0].expand_as(factors), rtol=1e-5)

    # small gradients are left alone
    before = _set_grads(model, 1e-4)
    opt.step()
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))


def test_per_parameter_clipping_still_available():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = _Toy()
    opt = build_knet_optimizer(cfg, model)
    _set_grads(model, 10.0)
    opt.step()
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 0.5
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_knet_optimizer(cfg, model)


# ------------------------------------------------------------------ config errors
def test_wrong_config_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  KNET:\n    NUM_PROPOSAL: 10\n")
    with pytest.raises(KNetConfigError) as e:
        load_config(str(bad))
    msg = str(e.value)
    assert "MODEL.KNET.NUM_PROPOSAL" in msg and str(bad) in msg and "MODEL.KNET.NUM_PROPOSALS" in msg

    with pytest.raises(KNetConfigError) as e:
        load_config("", ["SOLVER.BASE_LRR", "0.1"])
    assert "SOLVER.BASE_LRR" in str(e.value) and "command-line" in str(e.value)
    with pytest.raises(KNetConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(KNetConfigError, match="odd number"):
        load_config("", ["SOLVER.BASE_LR"])
    cfg = load_config("", ["SOLVER.BASE_LR", "0.5"])
    assert cfg.SOLVER.BASE_LR == 0.5


def test_train_net_wrong_key_fails_before_anything_runs(tmp_path, capsys):
    sys.path.insert(0, REPO)
    try:
        import train_net
    finally:
        sys.path.remove(REPO)
    out = tmp_path / "never_created"
    with pytest.raises(SystemExit) as e:
        train_net.invoke_main(["--config-file", "", "OUTPUT_DIR", str(out), "MODEL.KNET.HIDEN_DIM", "8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MODEL.KNET.HIDEN_DIM" in err and "MODEL.KNET.HIDDEN_DIM" in err
    assert not out.exists()


# ------------------------------------------------------------------ metadata checks
def _register(**meta):
    name = f"knet_test_trainer_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(**meta)
    return name


def test_missing_metadata_fails_clearly():
    cfg = _cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_semantic"
    cfg.DATASETS.TRAIN = (_register(stuff_classes=["a", "b"], evaluator_type="sem_seg"),)
    cfg.DATASETS.TEST = ()
    with pytest.raises(KNetMetadataError) as e:
        check_dataset_metadata(cfg)
    assert cfg.DATASETS.TRAIN[0] in str(e.value) and "'ignore_label'" in str(e.value)

    cfg.DATASETS.TRAIN = (_register(stuff_classes=["a", "b"], ignore_label=255, evaluator_type="sem_seg"),)
    check_dataset_metadata(cfg)  # complete: no error
    cfg.DATASETS.TEST = (_register(evaluator_type="sem_seg", ignore_label=255),)
    with pytest.raises(KNetMetadataError) as e:
        check_dataset_metadata(cfg)
    assert cfg.DATASETS.TEST[0] in str(e.value) and "'stuff_classes'" in str(e.value)

    cfg.DATASETS.TEST = ("knet_never_registered_val",)
    with pytest.raises(KNetMetadataError, match="knet_never_registered_val"):
        check_dataset_metadata(cfg)

    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptik"
    with pytest.raises(KNetConfigError, match="knet_panoptik.*knet_panoptic"):
        check_dataset_metadata(cfg)


# ------------------------------------------------------------------ resumable data order
def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumable_sampler_restarts_where_it_stopped():
    full = _take(KNetResumableTrainingSampler(5, seed=3), 40)
    assert sorted(i for i, _ in full[:5]) == list(range(5))  # each epoch is a permutation
    for start in (1, 7, 12, 25):
        assert _take(KNetResumableTrainingSampler(5, seed=3, start=start), 40 - start) == full[start:]
    seeds = [s for _, s in full]
    assert len(set(seeds)) == len(seeds)  # every position gets its own augmentation seed
    assert _take(KNetResumableTrainingSampler(5, seed=4), 40) != full


def test_seeded_map_dataset_is_reproducible_and_restores_rng():
    def mapper(d):
        return d["v"], np.random.rand(), random.random(), torch.rand(1).item()

    ds = SeededMapDataset([{"v": i} for i in range(3)], mapper)
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    a = ds[(2, 1234)]
    assert np.array_equal(np.random.get_state()[1], state)  # caller's generator untouched
    np.random.rand(5)
    torch.rand(3)
    assert ds[(2, 1234)] == a and ds[(2, 99)] != a and a[0] == 2


# ------------------------------------------------------------------ mixed precision on CPU
def test_amp_trainer_runs_bf16_autocast_on_cpu():
    model = _Toy()
    seen = []
    model.kernel_head[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loader = iter([[{"x": torch.randn(3, 8, 8)} for _ in range(2)] for _ in range(2)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = KNetAMPTrainer(model, loader, opt)
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0):
        trainer.run_step()
    assert trainer.grad_scaler is None and seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------ test-time augmentation dispatch
def test_tta_only_for_semantic_datasets(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    from knet.engine import Trainer
    from knet.test_time_augmentation import KNetSemanticTTA

    sem = _register(evaluator_type="sem_seg", stuff_classes=["a", "b"], ignore_label=255)
    pan = _register(evaluator_type="coco_panoptic_seg", panoptic_json="p.json", panoptic_root="p",
                    thing_dataset_id_to_contiguous_id={1: 0}, stuff_dataset_id_to_contiguous_id={1: 0, 2: 1})
    cfg = _cfg()
    cfg.DATASETS.TEST = (sem, pan)
    cfg.OUTPUT_DIR = "/tmp/unused"
    calls = []

    def fake_test_one(cfg_, model, name, evaluator):
        calls.append((name, model, evaluator))
        return {"sem_seg" if name == sem else "panoptic_seg": {"metric": 1.0}}

    monkeypatch.setattr(Trainer, "_test_one", classmethod(lambda cls, *a: fake_test_one(*a)))
    model = _Toy()
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
