"""add_knet_config adds its keys; every shipped yaml merges; registration happens at `import knet`."""
import glob
import os

import pytest
from detectron2.config import get_cfg

import knet
from knet import add_knet_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def _cfg():
    cfg = get_cfg()
    add_knet_config(cfg)
    return cfg


def test_keys_exist_with_official_defaults():
    cfg = _cfg()
    k = cfg.MODEL.KNET
    assert (k.NUM_PROPOSALS, k.NUM_STAGES, k.HIDDEN_DIM, k.NUM_HEADS, k.FFN_DIM) == (100, 3, 256, 8, 2048)
    loss = k.LOSS
    assert (loss.CLS_WEIGHT, loss.MASK_WEIGHT, loss.DICE_WEIGHT, loss.RANK_WEIGHT) == (2.0, 1.0, 4.0, 0.1)
    assert (k.MATCHER.COST_CLASS, k.MATCHER.COST_MASK, k.MATCHER.COST_DICE) == (2.0, 1.0, 4.0)
    assert (k.TEST.PANOPTIC_THING_SCORE_THRESHOLD, k.TEST.OVERLAP_THRESHOLD) == (0.3, 0.6)
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.25 and cfg.SOLVER.OPTIMIZER == "ADAMW"


def test_add_knet_config_is_idempotent():
    cfg = _cfg()
    cfg.MODEL.KNET.NUM_PROPOSALS = 7
    add_knet_config(cfg)
    assert cfg.MODEL.KNET.NUM_PROPOSALS == 7


def test_merge_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  KNET:\n    NUM_PROPOSALS: 50\n    TEST:\n      OVERLAP_THRESHOLD: 0.7\n")
    cfg = _cfg()
    cfg.merge_from_file(str(path))
    assert cfg.MODEL.KNET.NUM_PROPOSALS == 50 and cfg.MODEL.KNET.TEST.OVERLAP_THRESHOLD == 0.7


def test_wrong_key_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  KNET:\n    NUM_PROPOSAL: 50\n")
    with pytest.raises(KeyError, match="NUM_PROPOSAL"):
        _cfg().merge_from_file(str(path))


def test_every_key_has_a_comment():
    """One-line comment on every key assignment in config.py."""
    src = open(knet.config.__file__).read().splitlines()
    missing = [
        line for line in src
        if ("= " in line and line.strip().split("=")[0].strip().split(".")[-1].isupper()
            and "CN()" not in line and "#" not in line)
    ]
    assert missing == []


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_shipped_configs_merge(path):
    cfg = _cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE == "KNet"


def test_registries_are_prefixed():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    from knet.modeling import KNET_KERNEL_HEAD_REGISTRY, KNET_PIXEL_DECODER_REGISTRY

    assert "KNet" in META_ARCH_REGISTRY
    names = [n for n, _ in KNET_PIXEL_DECODER_REGISTRY] + [n for n, _ in KNET_KERNEL_HEAD_REGISTRY]
    assert names and all(n.startswith("KNet") for n in names)
    assert all(n.startswith("build_knet_") for n, _ in BACKBONE_REGISTRY if "knet" in n)
