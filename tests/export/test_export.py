"""ONNX export (knet.export, tools/export_model.py) and the onnxruntime-backed KNetONNX meta-architecture.

Needs the optional export extra; `make test` installs it (dev extra). Without onnx/onnxruntime the module is
skipped with a message saying so."""
import json
import os

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from support.models import batched_input, register_tiny_synthetic, tiny_knet_cfg
from support.scripts import REPO, load_script

from knet.engine import load_config
from knet.export.onnx_export import compare_with_pytorch, export_onnx, onnx_config

_HOW = "pip install .[export] (the dev extra has it)"
onnx = pytest.importorskip("onnx", reason=f"onnx is not installed: {_HOW}")
pytest.importorskip("onnxruntime", reason=f"onnxruntime is not installed: {_HOW}")

TINY_PANOPTIC = os.path.join(REPO, "tests", "configs", "knet_tiny_panoptic.yaml")
TINY_SEMANTIC = os.path.join(REPO, "configs", "synthetic", "knet_upernet_semantic_tiny.yaml")


def _randomize_norms(model, seed=0):
    """Non-trivial BatchNorm statistics, so that the folded convolutions differ from the raw ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d":
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def _det_cfg(task):
    if task == "panoptic":
        cfg = tiny_knet_cfg(num_classes=5, num_thing_classes=3, instance_on=True, semantic_on=True)
    else:
        cfg = tiny_knet_cfg(num_classes=3, num_thing_classes=3, panoptic_on=False, semantic_on=False)
    cfg.MODEL.KNET.TEST.PANOPTIC_THING_SCORE_THRESHOLD = 0.0  # random weights: keep thing segments
    return cfg


def _semantic_cfg():
    cfg = load_config(TINY_SEMANTIC, ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])
    cfg.defrost()
    return cfg


def _build(cfg, seed=0, randomize_norms=True):
    torch.manual_seed(seed)
    model = build_model(cfg)
    if randomize_norms:
        _randomize_norms(model, seed)
    return model.eval()


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_export_roundtrip(task, tmp_path):
    cfg = _semantic_cfg() if task == "semantic" else _det_cfg(task)
    # semantic: the random UPerNet's logits reach ~250 with random BatchNorm statistics, and a few pixels
    # are then float32 ties between two classes; with the initial statistics they are well separated
    model = _build(cfg, randomize_norms=task != "semantic")
    path = str(tmp_path / f"{task}.onnx")
    meta = export_onnx(model, cfg, path, sample_size=(64, 96))
    assert meta["task"] == task
    onnx.checker.check_model(path)  # also run by export_onnx
    loaded = onnx.load(path)
    assert json.loads({p.key: p.value for p in loaded.metadata_props}["knet"])["task"] == task
    dims = [d.dim_param or d.dim_value for d in loaded.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == ["height", "width"]  # dynamic image size

    # the network: the same logits at the traced size and at other sizes
    sizes = [(64, 96), (96, 64), (128, 160)] + ([(70, 90)] if task == "semantic" else [])
    stats = compare_with_pytorch(model, path, sizes=sizes)
    for name, s in stats.items():
        # float32 rounding (the PyTorch model itself differs from its float64 run by the same order)
        assert s["max_abs_value"] > 0.1 and s["max_abs_diff"] < 2e-4 * max(1.0, s["max_abs_value"]), (name, s)

    # the finished results: identical label maps through KNetONNX
    onnx_model = build_model(onnx_config(cfg, path)).eval()
    assert type(onnx_model).__name__ == "KNetONNX"
    inputs = [batched_input(70, 90, seed=4, out_size=(140, 180)), batched_input(64, 64, seed=5)]
    for x in inputs:
        x.pop("instances")
    with torch.no_grad():
        ours, theirs = model(inputs), onnx_model(inputs)
    for a, b in zip(ours, theirs):
        assert sorted(a) == sorted(b)
        if "panoptic_seg" in a:
            assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
            assert [(s["id"], s["category_id"]) for s in a["panoptic_seg"][1]] == [
                (s["id"], s["category_id"]) for s in b["panoptic_seg"][1]
            ]
            assert len(a["panoptic_seg"][1]) > 0
        if "instances" in a:
            ia, ib = a["instances"], b["instances"]
            assert len(ia) == len(ib) > 0
            assert torch.equal(ia.pred_classes, ib.pred_classes)
            assert torch.equal(ia.pred_masks, ib.pred_masks)
            assert (ia.scores - ib.scores).abs().max().item() < 1e-5
        if "sem_seg" in a:
            assert a["sem_seg"].shape == b["sem_seg"].shape
            assert torch.equal(a["sem_seg"].argmax(0), b["sem_seg"].argmax(0))
            # probabilities: logits up to ~180 differ by float32 rounding (~1e-2), i.e. < 1e-2 after softmax
            assert (a["sem_seg"] - b["sem_seg"]).abs().max().item() < 1e-2


def test_knet_onnx_config_errors(tmp_path):
    cfg = _det_cfg("panoptic")
    path = str(tmp_path / "m.onnx")
    export_onnx(_build(cfg), cfg, path, sample_size=(64, 64))

    missing = onnx_config(cfg, str(tmp_path / "nothing.onnx"))
    with pytest.raises(FileNotFoundError, match="MODEL.KNET.ONNX.MODEL"):
        build_model(missing)
    with_weights = onnx_config(cfg, path)
    with_weights.MODEL.WEIGHTS = "model.pth"
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        build_model(with_weights)
    wrong = onnx_config(cfg, path)
    wrong.MODEL.KNET.NUM_CLASSES = 7
    with pytest.raises(ValueError, match="MODEL.KNET.NUM_CLASSES = 7"):
        build_model(wrong)
    model = build_model(onnx_config(cfg, path))
    with pytest.raises(RuntimeError, match="cannot be trained"):
        model.train()([batched_input(64, 64)])


def test_export_tool_and_eval_only_on_the_exported_model(tmp_path, train_net, capsys):
    """tools/export_model.py writes the .onnx and its KNetONNX config; --eval-only on that config gives the
    PyTorch model's metrics."""
    prefix = register_tiny_synthetic(tmp_path / "data", "knet_test_export", num_train=1, num_val=2)
    data = ["DATASETS.TRAIN", f"('{prefix}_panoptic_train',)", "DATASETS.TEST", f"('{prefix}_panoptic_val',)",
            "MODEL.KNET.TEST.PANOPTIC_THING_SCORE_THRESHOLD", "0.0"]
    cfg = load_config(TINY_PANOPTIC, data)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": _build(cfg).state_dict()}, weights)

    tool = load_script("tools/export_model.py")
    onnx_path = tmp_path / "out" / "model.onnx"
    assert tool.main(["--config-file", TINY_PANOPTIC, "--output", str(onnx_path), "--sample-size", "64", "64",
                      "MODEL.WEIGHTS", weights] + data) == 0
    printed = capsys.readouterr().out
    assert "onnx.checker passed" in printed and "mask_logits" in printed
    yaml_path = tmp_path / "out" / "model.yaml"
    assert onnx_path.is_file() and yaml_path.is_file()

    results = {}
    for name, config, opts in [
        ("torch", TINY_PANOPTIC, ["MODEL.WEIGHTS", weights] + data),
        ("onnx", str(yaml_path), []),
    ]:
        out = tmp_path / name
        args = default_argument_parser().parse_args(
            ["--config-file", config, "--eval-only", "OUTPUT_DIR", str(out)] + opts
        )
        train_net.main(args)
        results[name] = json.loads((out / "last_eval_results.json").read_text())
    assert results["torch"]["panoptic_seg"] == results["onnx"]["panoptic_seg"]
    assert results["torch"]["sem_seg"] == results["onnx"]["sem_seg"]

    # the demo runs on the exported model with the written config
    import cv2
    import numpy as np

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    demo = load_script("demo/demo.py")
    drawn = tmp_path / "drawn.png"
    assert demo.main(["--config-file", str(yaml_path), "--input", str(image), "--output", str(drawn),
                      "--task", "panoptic", "--confidence-threshold", "0"]) == 0
    assert cv2.imread(str(drawn)).shape == (70, 90, 3)
