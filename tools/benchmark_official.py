#!/usr/bin/env python
"""Latency of our K-Net next to the OFFICIAL K-Net (ZwwWayne/K-Net 5e50ee5, mmdet 2.28.2), same weights, same
image (issue 13: "the ratio of our PyTorch and onnxruntime latency to the official implementation's").

Runs in ONE process under the test-only layer ``.venv-parity-mmdet`` (``tools/parity_mmdet_env.sh``: mmdet
2.x, mmcv 1.x behind ``tests/parity/mmcv1_shim.py``, the official sources as ``knet_official``; our ``knet``,
detectron2 and onnxruntime are importable there too)::

    .venv-parity-mmdet/bin/python tools/benchmark_official.py [--threads 2] [--runs 5] [--size 800x1216]

1. Official model: panoptic K-Net R-50 (``configs/det/knet/knet_s3_r50_fpn_1x_coco-panoptic.py``: 100 thing
   kernels + 53 stuff kernels, 3 update stages, its ``test_cfg``), built by mmdet's ``build_detector`` and
   initialised by its own ``init_weights`` (seed 0, no pretrained backbone); every norm layer's affine is then
   randomised and the frozen BN statistics are set from the test image, so that activations are O(1) as in a
   trained network (mmdet zero-initialises each residual block's last BN).
2. Ours: ``configs/model_zoo/knet_R50_1x_coco_panoptic_inference.yaml`` with the official state dict put
   through our converter (``knet.checkpoint.convert_state_dict``, source ``mmdet-knet``; strict load), once
   with our defaults (``MODEL.KNET.TEST.FUSE_BN`` and ``CHANNELS_LAST`` on, ``torch.inference_mode``: what
   ``tools/benchmark.py`` times as "K-Net R-50 panoptic"), once with those levers off (``torch.no_grad``, the
   official side's mode), and exported to ONNX (``knet.export``) and run by onnxruntime (``KNetONNX``).
3. Agreement: the panoptic output of each of our rows on the test image against the official one (pixels whose
   segment / category differ, segment counts), from the warm-up round.
4. The CPU heap (``knet.engine.allocator``): the official side as it ships (glibc's defaults: every large
   tensor is paged in afresh) and ours as it ships ("retain": freed memory kept for reuse, set by
   ``train_net.py`` and the demo on CPU), plus each side with the other setting ("official-retain",
   "ours-default-heap"), switched between calls, so that the comparison on the same heap is in the table too.
5. Timing: the rows take turns (official, ours, ..., official, ours, ...) so that they share the machine's
   load; median of ``--runs`` after ``--warmup`` rounds, wall and process CPU time.

What is timed, from one (H, W, 3) uint8 image to the finished panoptic map at the image's size, on both sides
(preprocessing INCLUDED on both sides): official, what ``mmdet.apis.inference_detector`` runs (the config's
test pipeline: ``MultiScaleFlipAug``/``Resize`` keep-ratio to (1333, 800), a no-op resize at 800x1216,
``Normalize``, ``Pad`` to 32, ``ImageToTensor``, ``collate``; then ``model(return_loss=False, rescale=True)``
= ``KNet.simple_test`` with ``KernelIterHead.get_panoptic``/``merge_stuff_thing``) under ``torch.no_grad``;
the pipeline part is also reported apart ("official network + post-processing only"). Ours: the HWC -> CHW
tensor and ``model([{"image", "height", "width"}])`` (normalisation and padding happen inside the model).

The image is a synthetic one (``knet.data.datasets.synthetic.render_synthetic_image``, seed 0, val image 0,
drawn at the benchmark size): no real photograph is available here. The weights are random, so the network's
own last stage is unlike a trained model's: flat, noise-like masks (about 40 % of our output's pixels lie on
a segment border there, which our exact post-processing resolves pixel by pixel) and no thing kernel above
the score threshold (which spares the official merge its per-thing work). ``--outputs trained-like`` times
the same networks with the post-processing of both sides fed the same synthetic last stage shaped like a
trained model's (``tools/benchmark.py``'s ``trained_like_logits``: stuff kernels tiling the image, confident
thing blobs, every other kernel confidently off), substituted after the network has run (the network's own
outputs are still what the "network" agreement compares). Everything goes to ``--json`` with the machine it
ran on.
"""

import argparse
import importlib
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_CONFIG = "configs/det/knet/knet_s3_r50_fpn_1x_coco-panoptic.py"  # inside the official sources
OUR_CONFIG = os.path.join(REPO, "configs", "model_zoo", "knet_R50_1x_coco_panoptic_inference.yaml")
OFFICIAL_MODULES = ("det.knet", "det.kernel_head", "det.kernel_iter_head", "det.kernel_update_head",
                    "det.semantic_fpn_wrapper", "kernel_updator", "det.mask_hungarian_assigner",
                    "det.mask_pseudo_sampler")
ROWS = ("official", "official-retain", "ours-plain", "ours-default-heap", "ours", "ours-ort")
# the CPU heap of each row (knet.engine.allocator): as each side ships ("official": glibc's default; ours:
# "retain", set by train_net.py and the demo on CPU), and each side with the other setting
HEAPS = {"official": "default", "official-retain": "retain", "ours-plain": "default",
         "ours-default-heap": "default", "ours": "retain", "ours-ort": "retain"}
HEAP_ROWS = ("official-retain", "ours-default-heap")
LABELS = {
    "official": "official K-Net (mmdet 2.28.2), torch.no_grad",
    "official-retain": "official, CPU heap 'retain' (freed memory kept)",
    "ours-default-heap": "ours, defaults but glibc's default CPU heap",
    "ours-plain": "ours, FUSE_BN off, CHANNELS_LAST off, torch.no_grad",
    "ours": "ours, defaults (FUSE_BN, CHANNELS_LAST, inference_mode)",
    "ours-ort": "ours exported to ONNX, onnxruntime",
}


def _load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_helpers():
    """``tools/benchmark.py`` (its ``knet_cfg`` and ``machine_info``), imported by path."""
    return _load_by_path("knet_tools_benchmark", os.path.join(REPO, "tools", "benchmark.py"))


# ---------------------------------------------------------------------------------------------- official side
def import_official():
    """mmdet / mmcv 1.x with the official K-Net modules registered; returns (mmcv, path of the sources).

    mmdet 2.28.2 registers modules of its own under some of the official K-Net's names (MaskHungarianAssigner,
    MaskPseudoSampler, ...); the official ones must win, so they are registered with ``force``."""
    missing = [m for m in ("mmdet", "knet_official") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"benchmark_official.py: {', '.join(missing)} not importable; run it with "
            ".venv-parity-mmdet/bin/python (made by tools/parity_mmdet_env.sh, which needs "
            "../shared/third_party/K-Net-5e50ee5.tar.gz)"
        )
    sys.path.insert(0, os.path.join(REPO, "tests"))  # the shim imports its sibling as ``parity.mmcv_shim``
    from parity.mmcv1_shim import install_mmcv1_ops_shim

    install_mmcv1_ops_shim()
    import knet_official
    import mmcv
    import mmdet.models  # noqa: F401
    from mmcv.utils import Registry

    register = Registry._register_module

    def force_official(self, module, module_name=None, force=False):
        return register(self, module, module_name, force or module.__module__.startswith("knet_official."))

    Registry._register_module = force_official
    try:
        for name in OFFICIAL_MODULES:
            importlib.import_module("knet_official." + name)
    finally:
        Registry._register_module = register
    from mmdet.utils import get_root_logger

    get_root_logger()  # created once at INFO; ``KNet.__init__`` would print the whole model through it
    for name in ("mmcv", "mmdet"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mmcv, os.path.dirname(os.path.realpath(list(knet_official.__path__)[0]))


def official_config(mmcv, src):
    """The official panoptic R-50 config, without a pretrained backbone (random weights)."""
    cfg = mmcv.Config.fromfile(os.path.join(src, OFFICIAL_CONFIG), import_custom_modules=False)
    cfg.pop("custom_imports", None)
    cfg.model.backbone.init_cfg = None
    cfg.model.pretrained = None
    return cfg


class OfficialPredictor:
    """The official single-image test path, split into its pipeline and its network call (the body of
    ``mmdet.apis.inference_detector`` for an ndarray on CPU)."""

    def __init__(self, cfg, model):
        from mmdet.datasets import replace_ImageToTensor
        from mmdet.datasets.pipelines import Compose

        pipeline = [dict(type="LoadImageFromWebcam")] + list(cfg.data.test.pipeline[1:])
        self.pipeline = Compose(replace_ImageToTensor(pipeline))
        self.model = model
        self.last_pipeline_s = None

    def prepare(self, image_bgr):
        from mmcv.parallel import collate

        data = collate([self.pipeline(dict(img=image_bgr))], samples_per_gpu=1)
        data["img_metas"] = [m.data[0] for m in data["img_metas"]]
        data["img"] = [t.data[0] if hasattr(t, "data") else t for t in data["img"]]
        return data

    def __call__(self, image_bgr):
        t0 = time.perf_counter()
        data = self.prepare(image_bgr)
        self.last_pipeline_s = time.perf_counter() - t0
        with torch.no_grad():
            return self.model(return_loss=False, rescale=True, **data)


def randomise_affines(model, seed):
    """Random affine (weight in [0.5, 1.5], bias ~ N(0, 0.1)) for every BN / GN / LN, in place."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norms) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def set_bn_statistics(model, images):
    """Every BatchNorm's running mean / variance := those of ``images`` (N, 3, H, W) through the backbone."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: after one batch, exactly its statistics
            bn.train()
        model.backbone(images)
        for bn in bns:
            bn.momentum = 0.1
            bn.eval()


def build_official(mmcv, src, image_bgr, seed=0):
    """(official config, eval-mode official model, its predictor)."""
    from mmdet.models import build_detector

    cfg = official_config(mmcv, src)
    torch.manual_seed(seed)
    model = build_detector(cfg.model)
    model.init_weights()
    randomise_affines(model, seed + 1)
    predictor = OfficialPredictor(cfg, model)
    set_bn_statistics(model, predictor.prepare(image_bgr)["img"][0])
    model.cfg = cfg
    return cfg, model.eval(), predictor


# ---------------------------------------------------------------------------------------------- our side
def build_ours(helpers, official_model, *, fuse_bn, channels_last, threads):
    """(cfg, our eval-mode K-Net holding the official weights through our converter, conversion summary)."""
    from detectron2.modeling import build_model

    from knet.checkpoint import convert_state_dict

    cfg = helpers.knet_cfg(OUR_CONFIG, fuse_bn=fuse_bn, channels_last=channels_last, threads=threads)
    model = build_model(cfg).eval()
    converted, summary = convert_state_dict(
        dict(official_model.state_dict()), "mmdet-knet", model.state_dict(), where="the official model"
    )
    model.load_state_dict(converted, strict=True)
    return cfg, model, summary


def build_onnx(cfg, model, workdir):
    """Our model exported (knet.export) and loaded as ``KNetONNX``; (model, PyTorch-vs-ORT network diff)."""
    from detectron2.modeling import build_model

    from knet.export.onnx_export import compare_with_pytorch, export_onnx, onnx_config

    path = os.path.join(workdir, "knet_panoptic_official_weights.onnx")
    export_onnx(model, cfg, path, sample_size=(320, 480))
    roundtrip = compare_with_pytorch(model, path, sizes=[(320, 480)])
    return build_model(onnx_config(cfg, path)).eval(), roundtrip


class OurPredictor:
    """``model([{"image", "height", "width"}])`` from an (H, W, 3) RGB uint8 array, in ``grad_mode``."""

    def __init__(self, model, grad_mode):
        self.model, self.grad_mode = model, grad_mode

    def __call__(self, image_rgb):
        context = torch.inference_mode() if self.grad_mode == "inference_mode" else torch.no_grad()
        with context:
            image = torch.as_tensor(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))
            h, w = image_rgb.shape[:2]
            return self.model([{"image": image, "height": h, "width": w}])


# ---------------------------------------------------------------------------------------------- agreement
class FirstPanopticInputs:
    """Wraps ``KernelIterHead.get_panoptic`` of the official model and keeps the inputs of its first call:
    the last stage's class scores (N, C) (sigmoid) and stride-4 mask logits (N, H/4, W/4). With ``replace``
    set to (class scores (N, C) sigmoid, mask logits (N, H/4, W/4)), the post-processing gets those instead
    (``--outputs trained-like``); what the network gave is still what is kept."""

    def __init__(self, roi_head):
        self.roi_head, self.fn, self.inputs = roi_head, roi_head.get_panoptic, None
        self.replace = None
        roi_head.get_panoptic = self

    def __call__(self, cls_scores, mask_preds, test_cfg, img_meta):
        if self.inputs is None:
            self.inputs = (cls_scores.detach().clone(), mask_preds.detach().clone())
        if self.replace is not None:
            cls_scores, mask_preds = _replacement(self.replace, cls_scores, mask_preds, "official")
        return self.fn(cls_scores, mask_preds, test_cfg, img_meta)

    def remove(self):
        del self.roi_head.get_panoptic  # the instance attribute over the class's method


def _replacement(replace, cls, masks, side):
    """``replace`` (class tensor, mask logits), checked against the shapes of what the network gave."""
    new_cls, new_masks = replace
    if new_cls.shape != cls.shape or new_masks.shape != masks.shape:
        raise RuntimeError(
            f"--outputs trained-like: the {side} network gave class {tuple(cls.shape)} / masks "
            f"{tuple(masks.shape)}, the replacement has {tuple(new_cls.shape)} / {tuple(new_masks.shape)}"
        )
    return new_cls, new_masks


class OurPanopticInputs:
    """The same substitution on our side (``--outputs trained-like``): wraps the ``panoptic_inference`` that
    ``knet.modeling.meta_arch.knet.postprocess_image`` calls (shared by ``KNet`` and the onnxruntime
    ``KNetONNX``), so that the panoptic post-processing gets ``replace`` = (class logits (N, C), mask logits
    (N, H/4, W/4)) instead of the network's last stage."""

    def __init__(self, replace):
        from knet.modeling.meta_arch import knet as meta_arch

        self.module, self.fn, self.replace = meta_arch, meta_arch.panoptic_inference, replace
        meta_arch.panoptic_inference = self

    def __call__(self, cls_logits, mask_logits, *args, **kwargs):
        cls_logits, mask_logits = _replacement(self.replace, cls_logits, mask_logits, "our")
        return self.fn(cls_logits, mask_logits, *args, **kwargs)

    def remove(self):
        self.module.panoptic_inference = self.fn


def trained_like_outputs(helpers, size, size_divisibility=32):
    """(class logits (153, 133), mask logits (153, H/4, W/4)) of the padded image: the structure of a trained
    K-Net's last stage (``tools/benchmark.py``'s ``trained_like_logits``: stuff kernels tiling the image, a
    dozen confident thing blobs, every other kernel confidently off)."""
    h, w = (-(-v // size_divisibility) * size_divisibility for v in size)
    return helpers.trained_like_logits(h, w)


def network_difference(model, image_rgb, official_inputs):
    """Largest |ours - official| of the last stage's class scores (sigmoid) and mask logits on the image."""
    from knet.export.onnx_export import KNetInferenceNetwork

    cls_off, masks_off = official_inputs
    with torch.no_grad():
        image = torch.as_tensor(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))
        images = model.preprocess_image([{"image": image}]).tensor
        cls, masks = KNetInferenceNetwork(model).eval()(images)
    if masks[0].shape != masks_off.shape:
        return {"mask_shape_ours": list(masks[0].shape), "mask_shape_official": list(masks_off.shape)}
    return {"cls_score_max_abs_diff": float((cls[0].sigmoid() - cls_off).abs().max()),
            "mask_logit_max_abs_diff": float((masks[0] - masks_off).abs().max()),
            "mask_logit_max_abs_value": float(masks_off.abs().max())}


def official_encoding(panoptic_seg, segments_info, void_label, offset):
    """Our (H, W) segment-id map + segments_info -> the official ``pan_results`` encoding (category +
    rank * ``offset``, ``void_label`` for void; rank = the segment's order, ids count from 1 in score order
    on our side, from 0 on the official side)."""
    seg = np.asarray(panoptic_seg, dtype=np.int64)
    out = np.full(seg.shape, void_label, dtype=np.int64)
    for info in segments_info:
        out[seg == info["id"]] = info["category_id"] + (info["id"] - 1) * offset
    return out


def compare_panoptic(ours, official, offset):
    """Pixel agreement of two official-encoded panoptic maps (H, W)."""
    if ours.shape != official.shape:
        return {"shape_ours": list(ours.shape), "shape_official": list(official.shape), "equal": False}
    n = ours.size
    return {
        "pixels": int(n),
        "pixels_differing": int((ours != official).sum()),
        "pixels_with_other_category": int(((ours % offset) != (official % offset)).sum()),
        "segments_ours": int(len(np.unique(ours))),
        "segments_official": int(len(np.unique(official))),
        "equal": bool((ours == official).all()),
    }


def summarise_segments(official_map, void_label, offset, num_thing_classes):
    """Counts of the official output: things, stuff, void pixels."""
    ids = [int(v) for v in np.unique(official_map) if v != void_label]
    things = sum(1 for v in ids if v % offset < num_thing_classes)
    return {"segments": len(ids), "thing_segments": things, "stuff_segments": len(ids) - things,
            "void_pixels": int((official_map == void_label).sum())}


# ---------------------------------------------------------------------------------------------- timing
def time_round_robin(predictors, rounds, warmup, on_round=None, heaps=None, heap=None):
    """Call every predictor once per round, in turn; returns {key: [(wall s, CPU s, extra)]} of the rounds
    after ``warmup`` and the warm-up outputs {key: output} (of the first round). ``heaps`` {key: "retain" /
    "default"}: the CPU heap set (by ``heap.use``, untimed) before each call of that row."""
    samples = {k: [] for k in predictors}
    first = {}
    total = rounds * len(predictors)
    for r in range(rounds):
        for i, (key, (predict, image)) in enumerate(predictors.items()):
            phase = "warm-up" if r < warmup else f"run {r - warmup + 1}/{rounds - warmup}"
            print(f"[bench-official {r * len(predictors) + i + 1}/{total}] {phase}: {key}", file=sys.stderr,
                  flush=True)
            if heaps:
                heap.use(heaps[key])
            t0, c0 = time.perf_counter(), time.process_time()
            out = predict(image)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if r == 0:
                first[key] = out
            if r >= warmup:
                samples[key].append((wall, cpu, getattr(predict, "last_pipeline_s", None)))
        if on_round is not None and r >= warmup:
            on_round(samples)
    return samples, first


def summarise_times(samples):
    """{key: {"wall_ms_median", "wall_ms_all", "cpu_ms_median", ...}}; ratios to the official row: of the
    medians (wall and CPU) and ``speedup_wall_paired``, the median over rounds of official / row wall time of
    the same round (the two ran back to back, so a burst of load on the machine hits both)."""
    out = {}
    for key, runs in samples.items():
        if not runs:
            continue
        wall = [1e3 * s[0] for s in runs]
        entry = {"label": LABELS[key], "wall_ms_median": statistics.median(wall), "wall_ms_min": min(wall),
                 "wall_ms_all": wall, "cpu_ms_median": statistics.median(1e3 * s[1] for s in runs)}
        if runs[0][2] is not None:
            pipe = [1e3 * s[2] for s in runs]
            entry["pipeline_ms_median"] = statistics.median(pipe)
            entry["network_ms_median"] = statistics.median(w - p for w, p in zip(wall, pipe))
        out[key] = entry

    def ratios(ref, entry, suffix):
        entry["speedup_wall" + suffix] = ref["wall_ms_median"] / entry["wall_ms_median"]
        entry["speedup_cpu" + suffix] = ref["cpu_ms_median"] / entry["cpu_ms_median"]
        pairs = zip(ref["wall_ms_all"], entry["wall_ms_all"])
        entry["speedup_wall_paired" + suffix] = statistics.median(o / w for o, w in pairs)

    for key, entry in out.items():
        if "official" in out:
            ratios(out["official"], entry, "")
        same = "official" if HEAPS[key] == "default" else "official-retain"  # the official row on this heap
        if same in out:
            ratios(out[same], entry, "_same_heap")
    return out


def format_table(times, agreement):
    head = (f"{'row':58}  {'heap':>7}  {'median ms':>10}  {'min ms':>9}  {'CPU ms':>9}  "
            f"{'official/row':>12}  "
            f"{'paired':>6}  {'CPU ratio':>9}  {'same heap: paired':>17}  {'CPU':>5}  "
            f"{'pixels != official':>18}")
    lines = [head]
    for key in ROWS:
        t = times.get(key)
        if t is None:
            continue
        a = agreement.get(key, {})
        agree = "–" if key == "official" else str(a.get("pixels_differing", "?"))
        same = t.get("speedup_wall_paired_same_heap")
        same_cpu = t.get("speedup_cpu_same_heap")
        lines.append(f"{t['label']:58}  {HEAPS[key]:>7}  {t['wall_ms_median']:10.0f}  "
                     f"{t['wall_ms_min']:9.0f}  {t['cpu_ms_median']:9.0f}  "
                     f"{t.get('speedup_wall', 1.0):12.2f}  "
                     f"{t.get('speedup_wall_paired', 1.0):6.2f}  "
                     f"{t.get('speedup_cpu', 1.0):9.2f}  {'–' if same is None else f'{same:.2f}':>17}  "
                     f"{'–' if same_cpu is None else f'{same_cpu:.2f}':>5}  {agree:>18}")
    off = times.get("official")
    if off and "network_ms_median" in off:
        lines.append(f"(official: its test pipeline {off['pipeline_ms_median']:.0f} ms of the median, "
                     f"network + post-processing {off['network_ms_median']:.0f} ms)")
    return "\n".join(lines)


def test_image(size):
    """(H, W, 3) uint8 RGB: synthetic val image 0 of seed 0, drawn at ``size``."""
    from knet.data.datasets.synthetic import render_synthetic_image

    return np.ascontiguousarray(render_synthetic_image(0, "val", 0, image_size=size)[0])


def main(argv=None):
    helpers = bench_helpers()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime CPU threads")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (the first one is also "
                        "the agreement check)")
    parser.add_argument("--size", type=helpers._parse_size, default=(800, 1216), metavar="HxW",
                        help="image size")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows among {', '.join(ROWS)} (official is always timed)")
    parser.add_argument("--outputs", choices=("network", "trained-like"), default="network",
                        help="what the panoptic post-processing of both sides gets: 'network', the random "
                        "network's own last stage (noise-like masks, no thing above the score threshold); "
                        "'trained-like', the same synthetic last stage with a trained model's structure on "
                        "both sides (tools/benchmark.py's trained_like_logits), substituted after the "
                        "network has run: the network is timed as before, the post-processing on outputs "
                        "like a trained model's")
    parser.add_argument("--json", default=None,
                        help="where to write every figure and the machine info (default: "
                        "output/benchmark/official_vs_ours[_trained_like].json)")
    args = parser.parse_args(argv)
    if args.json is None:
        suffix = "" if args.outputs == "network" else "_" + args.outputs.replace("-", "_")
        args.json = os.path.join("output", "benchmark", f"official_vs_ours{suffix}.json")
    rows = ["official"] + [r for r in (v.strip() for v in args.rows.split(",")) if r and r != "official"]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"benchmark_official.py: --rows {','.join(sorted(unknown))}: unknown; choose among "
                         f"{', '.join(ROWS)}")
    if args.warmup < 1:
        raise SystemExit("benchmark_official.py: --warmup must be >= 1 (the first round is the agreement "
                         "check)")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    mmcv, src = import_official()
    import knet
    from knet.engine import heap_setting_supported
    from mmdet.datasets.coco_panoptic import INSTANCE_OFFSET

    if not heap_setting_supported():  # the heap rows need glibc's mallopt
        rows = [r for r in rows if r not in HEAP_ROWS]
    heap = helpers._Heap("default")

    report = {"machine": helpers.machine_info(args.threads),
              "settings": {"size": f"{args.size[0]}x{args.size[1]}", "threads": args.threads,
                           "runs": args.runs, "warmup": args.warmup, "batch": 1, "device": "cpu",
                           "order": "round-robin", "knet_package": os.path.dirname(knet.__file__),
                           "heaps": {k: HEAPS[k] for k in rows},
                           "weights": "official init_weights (seed 0), random norm affines, BN statistics "
                                      "of the test image; converted for ours",
                           "image": "synthetic (render_synthetic_image seed 0, val 0) drawn at the size",
                           "preprocessing": "included on both sides (official: its test pipeline; ours: "
                                            "normalisation/padding inside the model)",
                           "outputs": args.outputs}}
    image_rgb = test_image(args.size)
    image_bgr = np.ascontiguousarray(image_rgb[..., ::-1])  # mmcv's loaders give BGR; its Normalize flips
    print(f"[bench-official] building the official model ({src})", file=sys.stderr, flush=True)
    off_cfg, official, official_predict = build_official(mmcv, src, image_bgr)
    predictors = {"official": (official_predict, image_bgr)}
    if "official-retain" in rows:
        predictors["official-retain"] = (official_predict, image_bgr)
    conversion, networks = {}, {}
    with tempfile.TemporaryDirectory(prefix="knet_bench_official_") as workdir:
        for key in (k for k in rows[1:] if k != "official-retain"):
            print(f"[bench-official] building {key}", file=sys.stderr, flush=True)
            plain = key == "ours-plain"
            cfg, model, summary = build_ours(helpers, official, fuse_bn=not plain, channels_last=not plain,
                                             threads=args.threads)
            conversion = {"source_keys": summary.num_input_keys, "mapped": summary.mapped,
                          "dropped": len(summary.dropped), "target_keys": len(model.state_dict())}
            if key != "ours-ort":
                networks[key] = model
            if key == "ours-ort":
                model, report["onnx_roundtrip"] = build_onnx(cfg, model, workdir)
                report["onnxruntime_threads"] = args.threads
            predictors[key] = (OurPredictor(model, "no_grad" if plain else "inference_mode"), image_rgb)
        report["conversion"] = conversion

        def write(samples):
            report["times"] = summarise_times(samples)
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

        recorder, ours_hook = FirstPanopticInputs(official.roi_head), None
        if args.outputs == "trained-like":
            cls_logits, mask_logits = trained_like_outputs(helpers, args.size)
            recorder.replace = (cls_logits.sigmoid(), mask_logits)  # the official side takes probabilities
            ours_hook = OurPanopticInputs((cls_logits, mask_logits))
        predictors = {k: predictors[k] for k in rows}  # table order
        try:
            samples, first = time_round_robin(predictors, args.warmup + args.runs, args.warmup,
                                              on_round=write, heaps=HEAPS, heap=heap)
        finally:
            heap.use("default")
            recorder.remove()
            if ours_hook is not None:
                ours_hook.remove()
    void = official.roi_head.num_classes
    reference = np.asarray(first["official"][0]["pan_results"])
    things = official.roi_head.num_thing_classes
    agreement = {"official": summarise_segments(reference, void, INSTANCE_OFFSET, things)}
    for key in rows[1:]:
        if key == "official-retain":
            encoded = np.asarray(first[key][0]["pan_results"])
            agreement[key] = compare_panoptic(encoded, reference, INSTANCE_OFFSET)
            continue
        seg, info = first[key][0]["panoptic_seg"]
        encoded = official_encoding(seg.cpu().numpy(), info, void, INSTANCE_OFFSET)
        agreement[key] = compare_panoptic(encoded, reference, INSTANCE_OFFSET)
        if key in networks:
            agreement[key]["network"] = network_difference(networks[key], image_rgb, recorder.inputs)
    report["agreement"] = agreement
    report["official_test_cfg"] = off_cfg.model.test_cfg.to_dict()
    report["machine"]["load_average_end"] = list(os.getloadavg())
    write(samples)
    m = report["machine"]
    print(f"\nK-Net R-50 panoptic (153 kernels, 3 stages), {report['settings']['size']}, batch 1, CPU, "
          f"{args.threads} threads, median of {args.runs} round-robin runs after {args.warmup} warm-up; "
          "preprocessing included on both sides; post-processing of "
          + ("the network's own outputs" if args.outputs == "network"
             else "trained-like outputs (the same on both sides, substituted after the network)"))
    print(format_table(report["times"], agreement))
    print(f"official output: {agreement['official']}")
    for key in rows[1:]:
        print(f"agreement {key} vs official: {agreement[key]}")
    if "onnx_roundtrip" in report:
        print(f"ONNX network vs PyTorch (320x480): {report['onnx_roundtrip']}")
    print(f"({m['cpu']}, torch {m['torch']}, onnxruntime {m.get('onnxruntime')}, load average "
          f"{m['load_average']} -> {m['load_average_end']}; {m['date']})")
    print(f"benchmark_official.py: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
