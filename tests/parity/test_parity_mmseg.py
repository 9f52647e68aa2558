"""Parity with the reference semantic K-Net of mmsegmentation 1.2.2
(``mmseg/models/decode_heads/knet_head.py``).

Only run by ``make parity`` (``-m parity``), in the separate environment ``.venv-parity`` made by
``tools/parity_env.sh`` (mmsegmentation + mmcv-lite + mmengine, which are not runtime requirements).

For each kernel-generating head (FCN, PSP, ASPP = DeepLabv3, UPerNet) the reference model is built from
mmseg's own published config (``configs/knet/knet-s3_r50-d8_*``; SyncBN -> BN for a single CPU process, no
pretrained download), given random weights (mmseg's initialisation, then BN affines, LayerNorms and biases
randomised so that a wrong mapping cannot hide behind an identity, and BN statistics calibrated on random
images so that activations keep a trained model's O(1) scale), and its state dict is converted with
our converter into the model built from our config (``configs/ade20k/semantic-segmentation/``). Both run on
the same normalised input and every stage's logits are compared: the generating head's (stage 0) and the three
kernel-update stages', plus the auxiliary head's. In float64 the maximum absolute difference must be <= 1e-4
(it is ~1e-12: the same function); in float32 <= 1e-4 times the largest logit (float32 rounding, amplified by
the softmax-weighted mask pooling of the three stages, reaches ~1e-5 of the logit scale). Set
``KNET_PARITY_REPORT=<file.json>`` to get the numbers as JSON.
"""

import json
import os

import pytest
import torch
from support.parity import REPO, mmseg_modules, syncbn_to_bn

pytestmark = pytest.mark.parity

ROOT = REPO
TOL = 1e-4
HEADS = {
    # head: (mmseg config, our config, input size (h, w))
    "FCN": ("knet-s3_r50-d8_fcn_8xb2-adamw-80k_ade20k-512x512.py", "knet_fcn_R50.yaml", (96, 128)),
    "PSP": ("knet-s3_r50-d8_pspnet_8xb2-adamw-80k_ade20k-512x512.py", "knet_psp_R50.yaml", (96, 128)),
    "ASPP": (
        "knet-s3_r50-d8_deeplabv3_8xb2-adamw-80k_ade20k-512x512.py",
        "knet_deeplabv3_R50.yaml",
        (96, 128),
    ),
    "UPerNet": (
        "knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py",
        "knet_upernet_R50.yaml",
        (96, 128),
    ),
}
RESULTS = {}


@pytest.fixture(scope="module")
def mm():
    """mmseg's modules, imported behind the test-only ``mmcv.ops`` shim; skip with the reason if absent."""
    return mmseg_modules()


@torch.no_grad()
def _randomise(model, gen):
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        elif isinstance(m, torch.nn.LayerNorm):
            m.weight.copy_(torch.rand(m.normalized_shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.normalized_shape, generator=gen) * 0.1)
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
        if name.endswith("kernel_generate_head.conv_seg") or name.endswith("auxiliary_head.conv_seg"):
            # N(0, 0.01) makes near-uniform soft masks; larger kernels make the mask-pooling step matter
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.05)


@torch.no_grad()
def _calibrate_bn(model, x):
    """Set every BN's running statistics to those of ``x``'s activations (one training-mode pass with a
    cumulative average), so that activations stay O(1) through the 50 random layers, as in a trained model."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    feats = model.extract_feat(x)
    model.decode_head(feats)
    model.auxiliary_head(feats)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def _reference_model(mm, config_name, gen, size):
    cfg = mm["Config"].fromfile(os.path.join(mm["config_dir"], config_name))
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    syncbn_to_bn(model_cfg)
    model_cfg["pretrained"] = None
    model = mm["MODELS"].build(model_cfg)
    model.init_weights()
    _randomise(model, gen)
    _calibrate_bn(model, torch.randn(4, 3, *size, generator=gen))
    return model.eval()


def _our_model(config_name):
    from detectron2.config import get_cfg
    from detectron2.modeling import META_ARCH_REGISTRY

    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "ade20k", "semantic-segmentation", config_name))
    cfg.merge_from_list(
        ["MODEL.RESNETS.NORM", "BN", "MODEL.KNET.PIXEL_DECODER.NORM", "BN", "MODEL.DEVICE", "cpu"]
    )
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return model.to_empty(device="cpu")  # every value comes from the converted reference weights


@torch.no_grad()
def _reference_stages(model, x):
    feats = model.extract_feat(x)
    head = model.decode_head
    head.training = True  # the flag only: IterativeDecodeHead then returns every stage; children stay in eval
    try:
        stages = head(feats)
    finally:
        head.training = False
    return list(stages), model.auxiliary_head(feats)


@torch.no_grad()
def _our_stages(model, x):
    feats = model.backbone(x)
    out = model.pixel_decoder(feats)
    kernel_head = model.kernel_head
    kernel_head.training = True  # the flag only, as above: return [init, stage 1, ..., stage S]
    try:
        stages = kernel_head(out["feat"], out["init_kernels"], out["init_logits"])
    finally:
        kernel_head.training = False
    return list(stages), model.auxiliary_head(feats)["init_logits"]


@pytest.mark.parametrize("head", list(HEADS))
def test_semantic_knet_matches_mmseg(mm, head):
    from knet.checkpoint import convert_checkpoint

    mm_config, our_config, (h, w) = HEADS[head]
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)
    ref = _reference_model(mm, mm_config, gen, (h, w))
    ours = _our_model(our_config)
    result = convert_checkpoint(
        {"state_dict": ref.state_dict()}, "mmseg-knet", ours.state_dict(), where=f"mmseg {mm_config}"
    )
    ours.load_state_dict(result.state_dict, strict=True)
    ours.eval()

    x = torch.randn(2, 3, h, w, generator=gen)
    RESULTS[head] = {"mapped": result.summary.num_mapped, "dropped": result.summary.num_dropped}
    for dtype in (torch.float64, torch.float32):
        ref.to(dtype)
        ours.to(dtype)
        ref_stages, ref_aux = _reference_stages(ref, x.to(dtype))
        our_stages, our_aux = _our_stages(ours, x.to(dtype))
        assert len(ref_stages) == len(our_stages) == 4
        diffs = {}
        for s, (a, b) in enumerate(zip(ref_stages, our_stages)):
            assert a.shape == b.shape, (s, a.shape, b.shape)
            diffs[f"stage{s}"] = (a - b).abs().max().item()
        assert ref_aux.shape == our_aux.shape
        diffs["aux"] = (ref_aux - our_aux).abs().max().item()
        scale = max(t.abs().max().item() for t in ref_stages)
        name = str(dtype).replace("torch.", "")
        RESULTS[head][name] = {"max_abs_diff": diffs, "max_abs_logit": scale}
        RESULTS[head]["logit_shape"] = list(ref_stages[-1].shape)
        print(
            f"\n[parity] {head} {name}: "
            + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
            + f" (max |logit| {scale:.1f}, logits {list(ref_stages[-1].shape)})"
        )
        # a wrong mapping or algorithm gives differences of the order of the logits themselves
        assert scale > 1.0, "degenerate test: the logits are all ~0"
        # the stages must differ from each other, otherwise the update heads would not be exercised
        assert (ref_stages[3] - ref_stages[0]).abs().max().item() > 0.1 * scale
        # float64: the two implementations compute the same function (differences ~1e-12 where equal);
        # float32: the same up to rounding, which the 3 soft-mask stages amplify to ~1e-5 of the logit scale
        tol = TOL if dtype == torch.float64 else TOL * scale
        for k, v in diffs.items():
            assert v <= tol, f"{head} {name} {k}: max abs difference {v:.3e} > {tol:.1e}"
    out_file = os.environ.get("KNET_PARITY_REPORT")
    if out_file:
        with open(out_file, "w") as f:
            json.dump(RESULTS, f, indent=1)
