"""Training-step parity with the reference semantic K-Net of mmsegmentation 1.2.2 (issue 10).

Only run by ``make parity`` (``-m parity``), in ``.venv-parity`` (``tools/parity_env.sh``), like
``tests/parity/test_parity_mmseg.py``, with the helpers of ``tests/support/parity.py``.

For the FCN and UPerNet variants, from the same weights (the reference model with mmseg's initialisation,
the start of a real training run, converted by our converter ``knet.checkpoint`` source ``mmseg-knet``) and
the same files:

* data: two ADE20K-format images of different sizes (64x32 and 64x24; the second is padded to the 64x32
  crop) with raw ADE20K labels (0 = "other", 1..150), written as ``ADEChallengeData2016``. The reference reads
  them with mmseg's own ``ADE20KDataset`` and the training pipeline of its config
  (``configs/_base_/datasets/ade20k.py``: ``LoadAnnotations(reduce_zero_label=True)``, ``RandomResize``,
  ``RandomCrop(cat_max_ratio=0.75)``, ``RandomFlip``, ``PhotoMetricDistortion``, ``PackSegInputs``) and its
  ``SegDataPreProcessor`` (normalise, then pad to the crop size with 0 / 255). We read them with
  ``tools/prepare_ade20k_sem_seg.py``'s label conversion, the detectron2 ``load_sem_seg`` registration and our
  ``knet_semantic`` mapper; the model normalises and pads. Random steps are made no-ops on both sides: the
  resize scale is (64, 32) with ratio 1 (scale factor exactly 1 for both images), the crop is the 32x64 crop
  size (never smaller than the images), flip probability 0, no photometric distortion; dropout is switched
  off (``eval()``) in both models, the only random op left in their forward passes.
* the loss terms: the 4 decode stages (``decode.loss_ce.s{0..3}`` / ``loss_ce_s{0..3}``) and the auxiliary
  head (``aux.loss_ce`` / ``loss_aux``, weight 0.4) at every step, within 1e-5 relative;
* the optimizer set-up, each built from its own config (mmengine ``build_optim_wrapper`` +
  ``param_scheduler`` of ``configs/knet/knet-s3_*``; our ``Trainer.build_optimizer`` /
  ``build_lr_scheduler`` of ``configs/ade20k/semantic-segmentation/``): every parameter is optimised with
  the same learning rate and weight decay (the reference has one group: AdamW lr 1e-4, weight decay 5e-4 on
  everything, betas/eps defaults), the same learning rate at each of the 5 steps (linear warm-up from 1e-3),
  the same gradient-norm clipping (max norm 1 over the whole model);
* after step 1: the clipped gradients, and the gradient norm before clipping;
* after 5 steps: every parameter and BN statistic (the reference's converted back to our names).

Everything runs in float64, so that float32 rounding (amplified by the soft-mask kernel updates) cannot hide
a difference. (The inference test's randomised weights are not used here: from them the UPerNet training is
chaotic at this size, the two sides' float64 rounding differences of 3e-11 growing to 7e-6 in the losses
within 5 steps; mapping errors are that test's job.) With the first-step learning rate of the warm-up
(1e-7), an update is ~1e-7 per step, so the weights are compared both absolutely and through their *updates*
(weights after minus before), relative to the largest update of the module: a wrong gradient, group or
clipping changes the updates by far more than 1e-5 of their size. Set
``KNET_PARITY_TRAIN_REPORT=<file.json>`` to get the numbers as JSON.
"""

import copy
import json
import os

import numpy as np
import pytest
import torch

from support.parity import REPO as ROOT
from support.parity import mmseg_modules, syncbn_to_bn
from support.scripts import load_script

pytestmark = pytest.mark.parity

REL_TOL = 1e-5
# (h, w), both sides' crop / pad size: small (a float64 R-50 step takes seconds on one CPU core), a multiple
# of 32 as the real 512 / 640 crops (our models also round the batch up to INPUT.SIZE_DIVISIBILITY; mmseg
# does not)
CROP = (32, 64)
SCALE = (64, 32)  # (long, short) edge bounds of the resize: factor exactly 1 for both images
IMAGES = {"ADE_train_00000001": (32, 64), "ADE_train_00000002": (24, 64)}  # name: (h, w); the 2nd is padded
STEPS = 5
HEADS = {
    # head: (mmseg config, our config)
    "FCN": ("knet-s3_r50-d8_fcn_8xb2-adamw-80k_ade20k-512x512.py", "knet_fcn_R50.yaml"),
    "UPerNet": ("knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py", "knet_upernet_R50.yaml"),
}
LOSS_KEYS = {  # ours: reference (mmseg EncoderDecoder log keys)
    "loss_ce_s0": "decode.loss_ce.s0",
    "loss_ce_s1": "decode.loss_ce.s1",
    "loss_ce_s2": "decode.loss_ce.s2",
    "loss_ce_s3": "decode.loss_ce.s3",
    "loss_aux": "aux.loss_ce",
}
RESULTS = {}


@pytest.fixture(scope="module")
def mm():
    """mmseg's modules, imported behind the test-only ``mmcv.ops`` shim; skip with the reason if absent."""
    return mmseg_modules()


# ------------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    """An ADEChallengeData2016 folder with 2 training images (JPEG) and raw labels (PNG, 0 = other)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ade_parity")
    base = root / "ADEChallengeData2016"
    rng = np.random.RandomState(7)
    for split_dir in ("images/training", "annotations/training"):
        (base / split_dir).mkdir(parents=True)
    for name, (h, w) in IMAGES.items():
        # smooth colour fields (as photographs: JPEG keeps them close), labels in 4x4 blocks of classes 0..150
        low = rng.rand(h // 8 + 1, w // 8 + 1, 3) * 255
        img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BILINEAR))
        img = np.clip(img.astype(np.float64) + rng.randn(h, w, 3) * 12, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(base / "images/training" / f"{name}.jpg", quality=95)
        blocks = rng.randint(0, 151, (h // 4, w // 4))
        blocks[rng.rand(*blocks.shape) < 0.5] = rng.randint(1, 151, 4)[0]  # one dominant class
        blocks[0, :3] = 0  # "other": ignored after reduce_zero_label
        label = np.kron(blocks, np.ones((4, 4), np.int64)).astype(np.uint8)
        Image.fromarray(label).save(base / "annotations/training" / f"{name}.png")
    # our preparation step (README: tools/prepare_ade20k_sem_seg.py): 0 -> 255, k -> k - 1
    prep = load_script("tools/prepare_ade20k_sem_seg.py")
    n = prep.convert_split(str(base / "annotations/training"), str(base / "annotations_detectron2/training"))
    assert n == len(IMAGES)
    return base


def _reference_batch(mmseg, cfg, base):
    """The reference's training batch: its ADE20KDataset + train pipeline (random steps made no-ops)."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    pipeline = []
    for step in copy.deepcopy(cfg.train_dataloader.dataset.pipeline):
        kind = step["type"]
        if kind == "RandomResize":
            step.update(scale=SCALE, ratio_range=(1.0, 1.0))
        elif kind == "RandomCrop":
            step.update(crop_size=CROP)
        elif kind == "RandomFlip":
            step.update(prob=0.0)
        elif kind == "PhotoMetricDistortion":
            continue
        pipeline.append(step)
    kinds = [s["type"] for s in pipeline]
    assert kinds == ["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop", "RandomFlip",
                     "PackSegInputs"], kinds
    dataset = DATASETS.build(
        dict(
            type=cfg.train_dataloader.dataset.type,
            data_root=str(base),
            data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
            pipeline=pipeline,
        )
    )
    assert len(dataset) == len(IMAGES)
    samples = [dataset[i] for i in range(len(dataset))]
    names = [os.path.splitext(os.path.basename(s["data_samples"].img_path))[0] for s in samples]
    assert names == sorted(IMAGES), names
    for s, name in zip(samples, names):
        assert tuple(s["inputs"].shape[1:]) == IMAGES[name]  # no resize, no crop
    return pseudo_collate(samples)


def _register_ours(base):
    """Register the folder as our README says (converted labels, detectron2 ``load_sem_seg``)."""
    import uuid

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_sem_seg
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    name = f"knet_parity_ade20k_train_{uuid.uuid4().hex[:6]}"
    image_dir, gt_dir = str(base / "images/training"), str(base / "annotations_detectron2/training")
    DatasetCatalog.register(name, lambda: load_sem_seg(gt_dir, image_dir, gt_ext="png", image_ext="jpg"))
    MetadataCatalog.get(name).set(
        stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:], ignore_label=255, evaluator_type="sem_seg",
        image_root=image_dir, sem_seg_root=gt_dir,
    )
    return name


# ----------------------------------------------------------------------------------------------- models
def _reference(mmseg, config_name):
    cfg = mmseg["Config"].fromfile(os.path.join(mmseg["config_dir"], config_name))
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    syncbn_to_bn(model_cfg)
    model_cfg["pretrained"] = None
    model_cfg["data_preprocessor"]["size"] = CROP
    model = mmseg["MODELS"].build(model_cfg)
    model.init_weights()  # mmseg's initialisation, the real start of training (the backbone aside)
    return cfg, model


def _our_cfg(config_name, dataset):
    from detectron2.config import get_cfg

    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "ade20k", "semantic-segmentation", config_name))
    cfg.merge_from_list([
        "MODEL.RESNETS.NORM", "BN", "MODEL.KNET.PIXEL_DECODER.NORM", "BN", "MODEL.DEVICE", "cpu",
        "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (),
        "INPUT.SEMANTIC.SCALE", SCALE, "INPUT.SEMANTIC.RATIO_RANGE", (1.0, 1.0),
        "INPUT.SEMANTIC.CROP_SIZE", CROP, "INPUT.SEMANTIC.PHOTOMETRIC", False, "INPUT.RANDOM_FLIP", "none",
    ])
    return cfg


def _warmup_lrs(cfg, steps):
    """The learning rates of the first ``steps`` iterations under our scheduler built from ``cfg``."""
    from knet.engine import Trainer

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = Trainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _no_dropout(model):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()
    return model


def _convert(state_dict, ours_sd):
    """Reference-named tensors -> our names (the converter under test; shapes checked against ours)."""
    from knet.checkpoint import convert_checkpoint

    result = convert_checkpoint({"state_dict": state_dict}, "mmseg-knet", ours_sd, where="mmseg parity")
    return result.state_dict


def _head(name):
    """The module a parameter belongs to, for the per-head report (our names)."""
    if name.startswith("auxiliary_head."):
        return "auxiliary_head"
    if name.startswith("kernel_head.update_heads."):
        return "kernel_update_head." + name.split(".")[2]
    return name.split(".")[0]  # backbone, pixel_decoder (kernel-generating head)


def _wrap_step(optimizer, record):
    """Record the gradients that ``optimizer.step`` receives (instance-level, after the schedulers)."""
    step = optimizer.step

    def recording_step(*args, **kwargs):
        if "grads" not in record:
            record["grads"] = {
                id(p): p.grad.detach().clone()
                for g in optimizer.param_groups for p in g["params"] if p.grad is not None
            }
        return step(*args, **kwargs)

    optimizer.step = recording_step


# -------------------------------------------------------------------------------------------- the check
def _train_reference(model, cfg, data):
    """5 steps of mmseg's own training step (``BaseModel.train_step``: data preprocessor, loss, parse_losses,
    ``OptimWrapper.update_params`` = backward, clip, step, zero_grad), the schedulers stepped after each
    iteration (mmengine ``ParamSchedulerHook.after_train_iter``)."""
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optim_wrapper)) for s in cfg.param_scheduler]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optim_wrapper.optimizer.param_groups]
    param_lr = {
        n: (g["lr"], g["weight_decay"])
        for g in optim_wrapper.optimizer.param_groups
        for n, p in model.named_parameters() if any(p is q for q in g["params"])
    }
    record, losses, lrs = {}, [], []
    _wrap_step(optim_wrapper.optimizer, record)
    hub = MessageHub.get_current_instance()
    for it in range(STEPS):
        lrs.append(sorted({g["lr"] for g in optim_wrapper.optimizer.param_groups}))
        log_vars = model.train_step(copy.deepcopy(data), optim_wrapper)
        losses.append({k: log_vars[v].item() for k, v in LOSS_KEYS.items()})
        if it == 0:
            record["grad_norm"] = hub.get_scalar("train/grad_norm").current()
        for s in schedulers:
            s.step()
    return {"groups": groups, "param_lr": param_lr, "losses": losses, "lrs": lrs, **record}


def _train_ours(model, cfg, batch):
    """5 steps of our training loop (detectron2 ``SimpleTrainer.run_step``: loss dict, zero_grad, backward,
    ``optimizer.step`` with full-model clipping), the scheduler stepped after each iteration (detectron2's
    ``LRScheduler`` hook)."""
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    from knet.engine import Trainer

    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    ids = {id(p): n for n, p in model.named_parameters()}
    param_lr = {ids[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    record, losses, lrs = {}, [], []
    _wrap_step(optimizer, record)
    loop = SimpleTrainer(model, iter(lambda: copy.deepcopy(batch), None), optimizer)
    _no_dropout(model)  # SimpleTrainer's constructor calls model.train()
    with EventStorage(0) as storage:
        for it in range(STEPS):
            lrs.append(sorted({g["lr"] for g in optimizer.param_groups}))
            storage.iter = it
            loop.iter = it
            loop.run_step()
            losses.append({k: storage.history(k).latest() for k in LOSS_KEYS})
            scheduler.step()
    grads = record.pop("grads")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    coef = min(1.0, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE / (norm.item() + 1e-6))  # clip_grad_norm_'s factor
    clipped = {ids[i]: g * coef for i, g in grads.items()}
    return {"groups": groups, "param_lr": param_lr, "losses": losses, "lrs": lrs, "grads": clipped,
            "grad_norm": norm.item()}


def final_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _max_rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


@pytest.mark.parametrize("head", list(HEADS))
def test_semantic_training_steps_match_mmseg(mm, ade_root, head):  # noqa: F811 (the fixture)
    from knet.data.dataset_mappers import build_mapper
    from knet.engine import Trainer
    from detectron2.data import DatasetCatalog

    mm_config, our_config = HEADS[head]
    torch.manual_seed(4321)
    ref_cfg, ref = _reference(mm, mm_config)
    dataset = _register_ours(ade_root)
    cfg = _our_cfg(our_config, dataset)
    # The warm-up: the official K-Net (ZwwWayne/K-Net configs/seg/_base_/schedules/schedule_adamw_80k.py, mmcv
    # 1.x LrUpdaterHook) and our configs raise the factor from 1e-3 to 1 over 1000 iterations; mmseg 1.x's
    # ``LinearLR(begin=0, end=1000)`` reaches 1 at iteration 999 (mmengine ``total_iters = end - begin - 1``).
    # The first learning rate is the same; for the 5 compared steps our side takes mmseg 1.x's warm-up length.
    official = _warmup_lrs(cfg, STEPS)
    assert official == pytest.approx([1e-4 * (1e-3 + 0.999 * t / 1000) for t in range(STEPS)], rel=1e-12)
    cfg.defrost()
    cfg.SOLVER.WARMUP_ITERS = 999
    ours = Trainer.build_model(cfg)
    ours_sd = ours.state_dict()
    init = {k: v.clone() for k, v in _convert(ref.state_dict(), ours_sd).items()}
    ours.load_state_dict(init, strict=True)
    ref.double()
    ours.double()
    init = {k: v.double() if v.is_floating_point() else v for k, v in init.items()}

    # the two batches: each side's own files -> pipeline
    ref_data = _reference_batch(mm, ref_cfg, ade_root)
    mapper = build_mapper(cfg, True)
    records = sorted(DatasetCatalog.get(dataset), key=lambda r: r["file_name"])
    batch = [mapper(r) for r in records]
    for d, img, s in zip(batch, ref_data["inputs"], ref_data["data_samples"]):
        # same pixels (reference: BGR uint8 from cv2; ours: RGB uint8) and labels, before normalisation
        assert torch.equal(d["image"], img.flip(0))
        assert torch.equal(d["sem_seg"], s.gt_sem_seg.data[0].long())
    assert (batch[1]["sem_seg"] == 255).any() and (batch[1]["sem_seg"] != 255).any()

    res_ours = _train_ours(_no_dropout(ours), cfg, batch)
    res_ref = _train_reference(_no_dropout(ref), ref_cfg, ref_data)

    report = RESULTS.setdefault(head, {})
    # --- losses, every step
    worst = {k: max(_max_rel(o[k], r[k]) for o, r in zip(res_ours["losses"], res_ref["losses"]))
             for k in LOSS_KEYS}
    report["loss_max_rel_diff"] = worst
    report["loss_rel_diff_per_step"] = [
        max(_max_rel(o[k], r[k]) for k in LOSS_KEYS) for o, r in zip(res_ours["losses"], res_ref["losses"])
    ]
    report["losses_step1"] = res_ref["losses"][0]
    print(f"\n[parity-train] {head} losses: max rel diff {worst}")
    for k, v in worst.items():
        assert v <= REL_TOL, f"{head} {k}: relative difference {v:.2e} (ours {res_ours['losses']}, " \
                             f"mmseg {res_ref['losses']})"

    # --- optimizer groups and learning rates
    ref_groups = res_ref["groups"]
    assert len(ref_groups) == 1, "mmseg's K-Net configs have no paramwise_cfg: one group"
    for g in res_ours["groups"]:
        for key in ("betas", "eps", "amsgrad", "weight_decay"):
            assert g[key] == ref_groups[0][key], (key, g[key], ref_groups[0][key])
    assert len(res_ours["param_lr"]) == len(res_ref["param_lr"]) == sum(1 for _ in ours.parameters())
    ref_sd = ref.state_dict()  # buffers as they are, every parameter filled with its lr / weight decay
    lr_ref = dict(ref_sd, **{n: torch.full(p.shape, res_ref["param_lr"][n][0], dtype=torch.float64)
                             for n, p in ref.named_parameters()})
    wd_ref = dict(ref_sd, **{n: torch.full(p.shape, res_ref["param_lr"][n][1], dtype=torch.float64)
                             for n, p in ref.named_parameters()})
    for ref_values, k in ((_convert(lr_ref, ours_sd), 0), (_convert(wd_ref, ours_sd), 1)):
        for n in res_ours["param_lr"]:
            assert torch.all(ref_values[n] == res_ours["param_lr"][n][k]), (n, k, res_ours["param_lr"][n])
    report["first_step_lr"] = {"ours": res_ours["lrs"][0], "mmseg": res_ref["lrs"][0]}
    report["param_groups"] = {"ours": len(res_ours["groups"]), "mmseg": len(ref_groups)}
    for a, b in zip(res_ours["lrs"], res_ref["lrs"]):
        assert len(a) == len(b) == 1 and _max_rel(a[0], b[0]) < 1e-12, (res_ours["lrs"], res_ref["lrs"])
    assert abs(res_ours["lrs"][0][0] - 1e-7) < 1e-20 and res_ours["lrs"][0][0] == official[0]  # 1e-4 x 1e-3

    # --- gradients of step 1 (clipped) and the norm before clipping
    ref_grads = _convert(dict(ref_sd, **{n: res_ref["grads"][id(p)] for n, p in ref.named_parameters()}),
                         ours_sd)
    report["grad_norm"] = {"ours": res_ours["grad_norm"], "mmseg": res_ref["grad_norm"]}
    assert _max_rel(res_ours["grad_norm"], res_ref["grad_norm"]) <= REL_TOL
    no_grad = sorted(set(final_names(ours)) - set(res_ours["grads"]))
    assert not no_grad, f"{head}: parameters without a gradient in our model: {no_grad[:10]}"
    grad_diff = {}
    for n, g in res_ours["grads"].items():
        h = _head(n)
        d = (g - ref_grads[n]).abs().max().item()
        s = ref_grads[n].abs().max().item()
        prev = grad_diff.get(h, (0.0, 0.0))
        grad_diff[h] = (max(prev[0], d), max(prev[1], s))
    report["grad_rel_diff"] = {h: d / s for h, (d, s) in grad_diff.items()}

    # --- weights (and BN statistics) after the steps
    final_ref = _convert({k: v for k, v in ref.state_dict().items()}, ours_sd)
    final = ours.state_dict()
    param_names = {n for n, _ in ours.named_parameters()}
    per_head = {}  # (head, "weights" | "bn_stats") -> (max |ours - mmseg|, max |update|)
    worst_tensors = []
    for n, w in final.items():
        if not w.is_floating_point():  # num_batches_tracked (not converted): the steps taken
            assert w.item() == STEPS, (n, w)
            continue
        key = (_head(n), "weights" if n in param_names else "bn_stats")
        diff = (w - final_ref[n]).abs().max().item()
        upd = (final_ref[n] - init[n]).abs().max().item()
        prev = per_head.get(key, (0.0, 0.0))
        per_head[key] = (max(prev[0], diff), max(prev[1], upd))
        worst_tensors.append((diff / max(upd, 1e-300), n))
    report["worst_tensors"] = sorted(worst_tensors, reverse=True)[:5]
    report["weight_max_abs_diff"] = {f"{h}/{kind}": d for (h, kind), (d, _) in per_head.items()}
    report["update_rel_diff"] = {f"{h}/{kind}": d / u for (h, kind), (d, u) in per_head.items()}
    print(f"\n[parity-train] {head}: " + json.dumps(report, indent=None, default=float))
    for h, (d, s) in grad_diff.items():
        assert s > 0, f"{head} {h}: no gradient reaches this module"
        assert d <= REL_TOL * s, f"{head} {h}: step-1 gradients differ by {d:.2e} (largest {s:.2e})"
    for (h, kind), (d, u) in per_head.items():
        assert u > 0, f"{head} {h} {kind}: not updated in {STEPS} steps"
        assert d <= REL_TOL * u, f"{head} {h} {kind}: differ by {d:.2e} after {STEPS} steps (update {u:.2e})"

    out_file = os.environ.get("KNET_PARITY_TRAIN_REPORT")
    if out_file:
        with open(out_file, "w") as f:
            json.dump(RESULTS, f, indent=1, default=float)
