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
    semantic = "ade20k" in os.path.basename(path) or "semantic" in path
    assert cfg.MODEL.META_ARCHITECTURE == ("KNetSemantic" if semantic else "KNet")


def test_registries_are_prefixed():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    from knet.modeling import (
        KNET_DECODE_HEAD_REGISTRY,
        KNET_KERNEL_HEAD_REGISTRY,
        KNET_PIXEL_DECODER_REGISTRY,
        KNET_SEMANTIC_KERNEL_HEAD_REGISTRY,
    )

    assert "KNet" in META_ARCH_REGISTRY and "KNetSemantic" in META_ARCH_REGISTRY
    registries = [KNET_PIXEL_DECODER_REGISTRY, KNET_KERNEL_HEAD_REGISTRY, KNET_DECODE_HEAD_REGISTRY,
                  KNET_SEMANTIC_KERNEL_HEAD_REGISTRY]
    names = [n for r in registries for n, _ in r]
    assert names and all(n.startswith("KNet") for n in names)
    assert all(n.startswith("build_knet_") for n, _ in BACKBONE_REGISTRY if "knet" in n)


# ------------------------------------------------------------------------------- the ADE20K recipes
def _semantic_configs():
    return sorted(glob.glob(os.path.join(REPO, "configs", "ade20k", "semantic-segmentation", "knet_*.yaml")))


def test_ade20k_configs_load_with_the_recipe():
    files = _semantic_configs()
    assert len(files) == 4
    heads = {}
    for f in files:
        cfg = _cfg()
        cfg.merge_from_file(f)
        k = cfg.MODEL.KNET
        heads[os.path.basename(f)] = (k.SEMANTIC.DECODE_HEAD_NAME, k.RESNET_V1C.OUT_STRIDE)
        s = cfg.SOLVER
        assert (s.BASE_LR, s.WEIGHT_DECAY, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS) == (
            1e-4, 5e-4, 80000, (60000, 72000), 1000)
        assert (s.IMS_PER_BATCH, s.REFERENCE_WORLD_SIZE, s.CLIP_GRADIENTS.CLIP_VALUE) == (16, 8, 1.0)
        assert cfg.MODEL.KNET.NUM_CLASSES == 150 and cfg.INPUT.DATASET_MAPPER_NAME == "knet_semantic"
    assert heads == {
        "knet_deeplabv3_R50.yaml": ("KNetASPPHead", 8),
        "knet_fcn_R50.yaml": ("KNetFCNHead", 8),
        "knet_psp_R50.yaml": ("KNetPSPHead", 8),
        "knet_upernet_R50.yaml": ("KNetUPerHead", 32),
    }


def test_swin_configs_load():
    got = {}
    pattern = os.path.join(REPO, "configs", "ade20k", "semantic-segmentation", "swin", "*.yaml")
    for f in sorted(glob.glob(pattern)):
        cfg = _cfg()
        cfg.merge_from_file(f)
        s = cfg.MODEL.KNET.SWIN
        assert cfg.MODEL.BACKBONE.NAME == "build_knet_swin_backbone" and cfg.SOLVER.BASE_LR == 6e-5
        crop = tuple(cfg.INPUT.SEMANTIC.CROP_SIZE)
        got[os.path.basename(f)] = (s.EMBED_DIM, tuple(s.DEPTHS), s.DROP_PATH_RATE, crop)
    assert got == {
        "knet_upernet_swin_large_512.yaml": (192, (2, 2, 18, 2), 0.3, (512, 512)),
        "knet_upernet_swin_large_640.yaml": (192, (2, 2, 18, 2), 0.4, (640, 640)),
        "knet_upernet_swin_tiny.yaml": (96, (2, 2, 6, 2), 0.3, (512, 512)),
    }
