"""``tools/convert_knet_checkpoint.py`` end to end: converts, prints the summary, writes atomically; a
mismatching config is refused and writes nothing."""
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from support.conversion_targets import sem_cfg
from support.official_layouts import official_mmseg_knet
from support.scripts import REPO, load_script

from knet.checkpoint import load_checkpoint


def test_convert_tool_end_to_end(tmp_path):
    """tools/convert_knet_checkpoint.py on a real-valued mmseg FCN checkpoint: converts, prints the summary,
    writes atomically; a mismatching config is refused and writes nothing."""
    ckpt = official_mmseg_knet("fcn", device="cpu")
    src = tmp_path / "knet_fcn.pth"
    torch.save(ckpt, src)
    cfg_file = os.path.join(REPO, "configs", "model_zoo", "knet_fcn_R50_ade20k_inference.yaml")
    out = tmp_path / "converted.safetensors"
    tool = os.path.join(REPO, "tools", "convert_knet_checkpoint.py")
    opts = ["MODEL.RESNETS.NORM", "BN", "MODEL.KNET.PIXEL_DECODER.NORM", "BN"]
    run = subprocess.run(
        [
            sys.executable,
            tool,
            "--source",
            "mmseg-knet",
            "--config-file",
            cfg_file,
            "--input",
            str(src),
            "--output",
            str(out),
            *opts,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"mapped: 416 tensors", run.stdout) and "59 x BatchNorm step counter" in run.stdout
    loaded = load_checkpoint(out)
    assert loaded["meta"]["classes"][:1] == ["c0"] and loaded["meta"]["source"] == "mmseg-knet"
    assert torch.equal(
        loaded["model"]["kernel_head.update_heads.0.ffn.linear1.weight"],
        ckpt["state_dict"]["decode_head.kernel_update_head.0.ffn.layers.0.0.weight"],
    )
    # it loads strictly into the model built from that config (BatchNorm counters restart at 0)
    cfg = sem_cfg("knet_fcn_R50.yaml")
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    model = model.to_empty(device="cpu")  # uninitialised memory: every value must come from the file
    model.load_state_dict(loaded["model"], strict=True)
    assert torch.equal(
        model.pixel_decoder.conv_cat.norm.running_var,
        ckpt["state_dict"]["decode_head.kernel_generate_head.conv_cat.bn.running_var"],
    )
    bad_out = tmp_path / "bad.pth"
    cli = load_script("tools/convert_knet_checkpoint.py")
    with pytest.raises(SystemExit) as e:
        cli.main(
            [
                "--source",
                "mmseg-knet",
                "--config-file",
                os.path.join(REPO, "configs", "model_zoo", "knet_psp_R50_ade20k_inference.yaml"),
                "--input",
                str(src),
                "--output",
                str(bad_out),
                *opts,
            ]
        )
    assert "does not fit the model" in str(e.value.code)
    assert not bad_out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "converted.safetensors",
        "knet_fcn.pth",
    ]
