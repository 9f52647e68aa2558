"""``tools/quickstart.py`` and ``tools/convert_knet_checkpoint.py`` read configs with
``knet.engine.load_config``: a wrong key stops them at once with the key and the closest valid one named.
The quickstart's summary picks the headline numbers out of detectron2's nested results."""
import os
import sys

import pytest
from support.scripts import REPO, load_script

CONFIG = os.path.join(REPO, "configs", "synthetic", "knet_panoptic_R10.yaml")  # the float32 quickstart recipe
R18 = os.path.join(REPO, "configs", "synthetic", "knet_panoptic_R18.yaml")  # the recipe both are built on


def test_quickstart_wrong_key_fails_before_generating_data(monkeypatch, tmp_path):
    quickstart = load_script("tools/quickstart.py")
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--config-file", CONFIG, "--output", str(tmp_path),
                                      "MODEL.KNET.HIDEN_DIM", "8"])
    with pytest.raises(SystemExit) as e:
        quickstart.main()
    assert "MODEL.KNET.HIDEN_DIM" in str(e.value.code) and "MODEL.KNET.HIDDEN_DIM" in str(e.value.code)
    assert os.listdir(tmp_path) == []


def test_quickstart_summary_picks_headline_numbers():
    summarize = load_script("tools/quickstart.py").summarize
    results = {"panoptic_seg": {"PQ": 61.0, "SQ": 80.0, "PQ_th": 55.0}, "segm": {"AP": 52.0, "AP50": 70.0},
               "sem_seg": {"mIoU": 85.0, "pACC": 95.0}, "other": {"x": 1.0}}
    assert summarize(results) == {"PQ": 61.0, "SQ": 80.0, "PQ_th": 55.0, "mask AP": 52.0, "mask AP50": 70.0,
                                  "mIoU": 85.0, "pixel acc": 95.0}


def test_quickstart_picks_bf16_recipe_only_on_amx_cpus(tmp_path):
    quickstart = load_script("tools/quickstart.py")
    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\nbugs\t\t: amx_bf16\n")
    assert quickstart.cpu_has_amx_bf16(str(amx)) is True
    assert quickstart.cpu_has_amx_bf16(str(plain)) is False  # avx512_bf16 alone was not measured to pay
    assert quickstart.cpu_has_amx_bf16(str(tmp_path / "missing")) is False
    choose = quickstart.choose_config
    assert choose(None, "auto", True) == quickstart.BF16_CONFIG
    assert choose(None, "auto", False) == CONFIG
    assert choose(None, "float32", True) == CONFIG and choose(None, "bf16", False) == quickstart.BF16_CONFIG
    assert choose("mine.yaml", "bf16", True) == "mine.yaml"


def test_quickstart_refuses_config_file_with_precision(monkeypatch, tmp_path):
    quickstart = load_script("tools/quickstart.py")
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--config-file", CONFIG, "--precision", "bf16",
                                      "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        quickstart.main()
    assert "--config-file or --precision, not both" in str(e.value.code)
    assert os.listdir(tmp_path) == []


def test_recipes_are_the_resnet18_one_with_their_precision_trunk_iterations_and_input():
    from knet.engine import load_config

    quickstart = load_script("tools/quickstart.py")
    r18 = load_config(R18, [])
    fp32 = load_config(quickstart.DEFAULT_CONFIG, [])
    bf16 = load_config(quickstart.BF16_CONFIG, [])
    assert not r18.SOLVER.AMP.ENABLED and not fp32.SOLVER.AMP.ENABLED and bf16.SOLVER.AMP.ENABLED
    assert (r18.MODEL.RESNETS.DEPTH, fp32.MODEL.RESNETS.DEPTH, bf16.MODEL.RESNETS.DEPTH) == (18, 10, 18)
    assert (r18.SOLVER.MAX_ITER, tuple(r18.SOLVER.STEPS)) == (1250, (1000, 1188))
    assert (fp32.MODEL.RESNETS.STEM_OUT_CHANNELS, fp32.MODEL.RESNETS.RES2_OUT_CHANNELS) == (24, 24)
    assert (fp32.SOLVER.MAX_ITER, tuple(fp32.SOLVER.STEPS)) == (1650, (1320, 1568))
    # the float32 backbone runs in channels-last layout; the bf16 recipe as it was measured
    assert fp32.MODEL.KNET.BACKBONE_CHANNELS_LAST and not bf16.MODEL.KNET.BACKBONE_CHANNELS_LAST
    # float32 trains on 192x192 windows at the images' own scale (the resize to 192 px is then the identity)
    # and tests whole images unresized; the ResNet-18 and bf16 recipes resize whole images to 192 px
    assert fp32.INPUT.CROP.ENABLED and fp32.INPUT.CROP.TYPE == "absolute"
    (size,) = fp32.INPUT.MIN_SIZE_TRAIN  # one training size, the crop's: the resize after the crop is a no-op
    assert tuple(fp32.INPUT.CROP.SIZE) == (size, size) == (192, 192)
    assert fp32.INPUT.MIN_SIZE_TEST == 0 and r18.INPUT.MIN_SIZE_TEST == bf16.INPUT.MIN_SIZE_TEST == 192
    assert not r18.INPUT.CROP.ENABLED and not bf16.INPUT.CROP.ENABLED
    assert (bf16.SOLVER.MAX_ITER, tuple(bf16.SOLVER.STEPS)) == (1750, (1400, 1662))
    for cfg in (r18, fp32, bf16):  # x0.1 at 80 % and 95 % of the run
        n = cfg.SOLVER.MAX_ITER
        assert tuple(cfg.SOLVER.STEPS) == (round(0.8 * n), round(0.95 * n))
    fp32.defrost()
    fp32.MODEL.RESNETS.DEPTH = 18
    fp32.MODEL.RESNETS.STEM_OUT_CHANNELS = fp32.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
    fp32.INPUT.CROP, fp32.INPUT.MIN_SIZE_TEST = r18.INPUT.CROP.clone(), r18.INPUT.MIN_SIZE_TEST
    fp32.MODEL.KNET.BACKBONE_CHANNELS_LAST = False  # a memory layout: the same model
    for cfg in (fp32, bf16):  # nothing else differs from the ResNet-18 recipe
        for key in ("MODEL", "INPUT", "DATASETS", "SEED"):
            assert cfg[key] == r18[key], key
        for key in ("BASE_LR", "IMS_PER_BATCH", "OPTIMIZER", "WARMUP_ITERS", "CLIP_GRADIENTS"):
            assert cfg.SOLVER[key] == r18.SOLVER[key], key


def test_convert_wrong_key_is_named(tmp_path):
    convert = load_script("tools/convert_knet_checkpoint.py")
    weights = tmp_path / "in.pth"
    weights.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        convert.main(["--source", "mmdet-knet", "--config-file", CONFIG, "--input", str(weights),
                      "--output", str(tmp_path / "out.pth"), "MODEL.KNET.HIDEN_DIM", "8"])
    assert "MODEL.KNET.HIDEN_DIM" in str(e.value.code) and "MODEL.KNET.HIDDEN_DIM" in str(e.value.code)
    assert not (tmp_path / "out.pth").exists()
