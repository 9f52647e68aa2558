#!/usr/bin/env python
"""CPU inference benchmark: K-Net next to detectron2's models, PyTorch and onnxruntime, and K-Net's panoptic
post-processing alone against the reference order of operations.

Model rows (``--sizes``, default 512x768 and 800x1216; batch 1; preprocessing, network and post-processing
included, data loading excluded): K-Net R-50 panoptic vs Panoptic FPN R-50, K-Net R-50 instance vs Mask R-CNN
R-50-FPN and Cascade Mask R-CNN R-50-FPN (the paper's comparison; detectron2 model-zoo configs), each
K-Net also exported to ONNX and run by onnxruntime (``KNetONNX``), and K-Net panoptic with each speed lever
switched off (``MODEL.KNET.TEST.FUSE_BN``, ``MODEL.KNET.TEST.CHANNELS_LAST``, ``torch.inference_mode``, and
the CPU heap setting ``MODEL.KNET.CPU_RETAIN_FREED_MEMORY``: ``--malloc`` sets it for every other row).
Every model has random weights (seed 0) and sees the same random image; the detectron2 models keep all 100
detections a trained model outputs (score threshold 0; with random weights their scores would fall below the
zoo's 0.05 and leave the mask heads idle). The rows run round-robin (one run of each in turn, so that they
share the machine's load; median of ``--runs`` after ``--warmup`` rounds). Peak memory is the rise of the
process's peak resident set during the warm-up run (Linux ``VmHWM``, after returning freed heap to the
system); FLOPs are fvcore's count (one multiply-add = 1) of one inference. Wall time is what a user waits;
"CPU ms" is the process CPU time over all threads, less sensitive to other processes on the cores.

Everything goes to a JSON file (``--json``) with the machine it ran on; ``--markdown`` prints the README
table, ``--markdown-from FILE`` prints it from an earlier JSON. ``--only`` picks rows or groups (panoptic,
instance, levers, postprocessing). ``make bench`` runs it with the defaults.

Usage: ``python tools/benchmark.py [--threads 2] [--runs 3] [--sizes 512x768 800x1216]
[--only panoptic,levers] [--json output/benchmark/benchmark.json] [--markdown]``.
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNET_CONFIG = os.path.join(REPO, "configs", "coco", "panoptic-segmentation", "knet_R50_1x.yaml")
PANOPTIC_FPN_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"


def knet_model():
    """K-Net R-50 panoptic (random weights, eval mode), as the model rows build it."""
    return build_model(knet_cfg()).eval()


def panoptic_fpn_model(score_threshold=None):
    cfg = get_cfg()
    from knet.utils.model_zoo import get_config_file  # detectron2.model_zoo may need pkg_resources

    cfg.merge_from_file(get_config_file(PANOPTIC_FPN_CONFIG))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    if score_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    return build_model(cfg).eval()


def timeit(fn, runs, warmup):
    """(wall s, CPU s) of each of ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - t0, time.process_time() - c0))
    return samples


# ---------------------------------------------------------------------------------------------- model rows
KNET_INSTANCE_CONFIG = os.path.join(REPO, "configs", "coco", "instance-segmentation", "knet_R50_1x.yaml")
MASK_RCNN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
CASCADE_MASK_RCNN_CONFIG = "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"
GROUPS = ("panoptic", "instance", "levers")


def knet_cfg(config=KNET_CONFIG, *, fuse_bn=True, channels_last=True, threads=0):
    from knet import add_knet_config

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file(config)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
    cfg.MODEL.KNET.TEST.FUSE_BN = fuse_bn
    cfg.MODEL.KNET.TEST.CHANNELS_LAST = channels_last
    cfg.MODEL.KNET.ONNX.NUM_THREADS = threads
    return cfg


def zoo_model(config_path, score_threshold=0.0):
    """A detectron2 model-zoo model with random weights; ``score_threshold`` 0 keeps the
    ``TEST.DETECTIONS_PER_IMAGE`` (100) detections a trained model outputs (random box scores are below the
    zoo's 0.05, which would leave the mask head idle)."""
    from knet.utils.model_zoo import get_config_file

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(config_path))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
    return build_model(cfg).eval()


class BenchRow:
    """One benchmarked model: ``build()`` returns an eval-mode model taking detectron2 input dicts."""

    def __init__(self, key, label, group, backend, build, grad_mode="inference_mode", flops_from=None,
                 heap=None):
        self.key, self.label, self.group, self.backend = key, label, group, backend
        self.build, self.grad_mode = build, grad_mode
        self.heap = heap  # "retain" / "default": this row's CPU heap setting (None: --malloc's)
        self.flops_from = flops_from  # key of the PyTorch row whose FLOPs this row shares (same network)
        self.model = None
        self.roundtrip = None


def _onnx_model(config, workdir, threads, key):
    """Export the K-Net of ``config`` (random weights, seed 0) and load it as KNetONNX."""
    from knet.export.onnx_export import compare_with_pytorch, export_onnx, onnx_config

    cfg = knet_cfg(config, threads=threads)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = os.path.join(workdir, f"{key}.onnx")
    export_onnx(model, cfg, path, sample_size=(320, 480))
    onnx_model = build_model(onnx_config(cfg, path)).eval()
    onnx_model.roundtrip = compare_with_pytorch(model, path, sizes=[(320, 480)])
    return onnx_model


def benchmark_rows(args, workdir):
    """Every row, in table order (see ``--only``)."""

    def knet(config, **kw):
        def build():
            from knet.modeling.fuse import prepare_folded_parameters

            torch.manual_seed(0)
            model = build_model(knet_cfg(config, **kw)).eval()
            # made once at the first inference otherwise; kept next to the weights like them
            model.folded_weights_mb = prepare_folded_parameters(model) / 2**20
            return model

        return build

    panoptic = "K-Net R-50 panoptic (153 kernels, 3 stages)"
    instance = "K-Net R-50 instance (100 kernels, 3 stages)"
    rows = [
        BenchRow("knet-panoptic", panoptic, "panoptic", "PyTorch", knet(KNET_CONFIG)),
        BenchRow("knet-panoptic-ort", panoptic, "panoptic", "onnxruntime",
                 lambda: _onnx_model(KNET_CONFIG, workdir, args.threads, "knet_panoptic"),
                 flops_from="knet-panoptic"),
        BenchRow("panoptic-fpn", "Panoptic FPN R-50 (100 detections)", "panoptic", "PyTorch",
                 lambda: zoo_model(PANOPTIC_FPN_CONFIG)),
        BenchRow("knet-instance", instance, "instance", "PyTorch", knet(KNET_INSTANCE_CONFIG)),
        BenchRow("knet-instance-ort", instance, "instance", "onnxruntime",
                 lambda: _onnx_model(KNET_INSTANCE_CONFIG, workdir, args.threads, "knet_instance"),
                 flops_from="knet-instance"),
        BenchRow("mask-rcnn", "Mask R-CNN R-50-FPN (100 detections)", "instance", "PyTorch",
                 lambda: zoo_model(MASK_RCNN_CONFIG)),
        BenchRow("cascade-mask-rcnn", "Cascade Mask R-CNN R-50-FPN (100 detections)", "instance", "PyTorch",
                 lambda: zoo_model(CASCADE_MASK_RCNN_CONFIG)),
        # the speed levers of K-Net panoptic, each switched off in turn (compare with knet-panoptic)
        BenchRow("knet-panoptic-no-channels-last", "K-Net panoptic: BN folded, no channels-last", "levers",
                 "PyTorch", knet(KNET_CONFIG, channels_last=False), flops_from="knet-panoptic"),
        BenchRow("knet-panoptic-no-fold", "K-Net panoptic: no BN folding, no channels-last", "levers",
                 "PyTorch", knet(KNET_CONFIG, fuse_bn=False, channels_last=False),
                 flops_from="knet-panoptic"),
        BenchRow("knet-panoptic-no-levers", "K-Net panoptic: none of them, torch.no_grad", "levers",
                 "PyTorch", knet(KNET_CONFIG, fuse_bn=False, channels_last=False), grad_mode="no_grad",
                 flops_from="knet-panoptic"),
        BenchRow("knet-panoptic-default-heap", "K-Net panoptic: glibc's default heap (freed memory returned)",
                 "levers", "PyTorch", knet(KNET_CONFIG), flops_from="knet-panoptic", heap="default"),
    ]
    from knet.engine import heap_setting_supported

    if not heap_setting_supported():  # glibc's heap cannot be set here: no row without the setting
        rows = [r for r in rows if r.heap is None]
    if args.only:
        wanted = set(args.only)
        unknown = wanted - {r.key for r in rows} - set(GROUPS) - {"postprocessing"}
        if unknown:
            raise SystemExit(
                f"benchmark.py: --only {','.join(sorted(unknown))}: unknown; choose among the rows "
                f"{', '.join(r.key for r in rows)}, the groups {', '.join(GROUPS)} or postprocessing"
            )
        rows = [r for r in rows if r.key in wanted or r.group in wanted]
    return rows


def _proc_status_kb(field):
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status, in kB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss():
    """Return freed heap to the system and restart the peak-RSS counter (Linux); True when it worked."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Heap:
    """The process's CPU heap setting (``knet.engine.allocator``), switched per row. Back to "retain" after a
    "default" row, the heap is first grown to the process's peak resident set (minus what is resident now) and
    freed (kept), so that the next row does not pay the page faults of regrowing it."""

    def __init__(self, mode):
        self.mode = None
        self.use(mode)

    def use(self, mode):
        from knet.engine import restore_default_malloc, retain_freed_memory

        if mode == self.mode:
            return
        if mode == "retain":
            peak, now = _proc_status_kb("VmHWM"), _proc_status_kb("VmRSS")
            if retain_freed_memory() and peak and now and peak > now:
                torch.empty((peak - now) * 1024, dtype=torch.uint8).fill_(0)
        else:
            restore_default_malloc()
        self.mode = mode


def _grad_context(mode):
    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def _flatten_tensors(obj, out):
    from detectron2.structures import Boxes, Instances

    if torch.is_tensor(obj):
        out.append(obj)
    elif isinstance(obj, Instances):
        for v in obj.get_fields().values():
            _flatten_tensors(v, out)
    elif isinstance(obj, Boxes):
        out.append(obj.tensor)
    elif isinstance(obj, dict):
        for v in obj.values():
            _flatten_tensors(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _flatten_tensors(v, out)
    return out


def count_gmacs(model, image):
    """fvcore's count (one multiply-add = one "flop") of one inference, in G: K-Net's network (its
    post-processing has no convolution or matrix product; the tracer cannot follow its Python sizes), a
    detectron2 model end to end."""
    from fvcore.nn import FlopCountAnalysis

    h, w = image.shape[-2:]
    if type(model).__name__ in ("KNet", "KNetSemantic"):
        from knet.export.onnx_export import KNetInferenceNetwork

        images = model.preprocess_image([{"image": image}])
        with torch.no_grad():
            analysis = FlopCountAnalysis(KNetInferenceNetwork(model).eval(), (images.tensor,))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return analysis.total() / 1e9

    class _Traced(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return tuple(_flatten_tensors(self.inner([{"image": x, "height": h, "width": w}]), []))

    with torch.no_grad():
        analysis = FlopCountAnalysis(_Traced(model).eval(), (image,))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return analysis.total() / 1e9


def run_model_rows(args, rows, sizes, on_size_done=None):
    """Time the rows round-robin (one run of each in turn, so that they see the same machine load) at each
    size; peak memory is taken on each row's warm-up run, FLOPs with fvcore. Returns result dicts."""
    results = []
    heap = _Heap(args.malloc)
    total = len(sizes) * (args.warmup + args.runs) * len(rows)
    done = 0
    for h, w in sizes:
        generator = torch.Generator().manual_seed(0)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        inputs = [{"image": image, "height": h, "width": w}]
        samples = {r.key: [] for r in rows}
        peak = {}
        for rnd in range(args.warmup + args.runs):
            for row in rows:
                done += 1
                phase = "warm-up" if rnd < args.warmup else f"run {rnd - args.warmup + 1}/{args.runs}"
                print(f"[bench {done}/{total}] {h}x{w} {phase}: {row.key}", file=sys.stderr, flush=True)
                heap.use(row.heap or args.malloc)
                measure_memory = rnd == 0 and _reset_peak_rss()
                before = _proc_status_kb("VmRSS") if measure_memory else None
                with _grad_context(row.grad_mode):
                    t0, c0 = time.perf_counter(), time.process_time()
                    row.model(inputs)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if before is not None:
                    peak[row.key] = (_proc_status_kb("VmHWM") - before) / 1024
                if rnd >= args.warmup:
                    samples[row.key].append((wall, cpu))
        for row in rows:
            wall = [s[0] for s in samples[row.key]]
            results.append(
                {
                    "key": row.key,
                    "label": row.label,
                    "group": row.group,
                    "backend": row.backend,
                    "grad_mode": row.grad_mode if row.backend == "PyTorch" else None,
                    "heap": row.heap or args.malloc,
                    "size": f"{h}x{w}",
                    "latency_ms_median": 1e3 * statistics.median(wall),
                    "latency_ms_min": 1e3 * min(wall),
                    "latency_ms_all": [1e3 * s for s in wall],
                    "cpu_ms_median": 1e3 * statistics.median(s[1] for s in samples[row.key]),
                    "peak_rss_increase_mb": peak.get(row.key),
                    "gmacs": None,
                    "onnx_roundtrip": getattr(row.model, "roundtrip", None),
                    "folded_weights_mb": getattr(row.model, "folded_weights_mb", None),
                }
            )
        heap.use(args.malloc)
        if on_size_done is not None:
            on_size_done(results)
    if not args.no_flops:  # after every timing, so that a failure here loses none of them
        for h, w in sizes:
            image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
            gmacs = {}
            for row in rows:
                if row.flops_from is None:
                    print(f"[bench] {h}x{w} FLOPs (fvcore): {row.key}", file=sys.stderr, flush=True)
                    try:
                        gmacs[row.key] = count_gmacs(row.model, image)
                    except Exception as e:  # a model the tracer cannot follow: no figure, say why
                        print(f"[bench] FLOPs of {row.key} failed: {type(e).__name__}: {e}", file=sys.stderr)
            for r in results:
                if r["size"] == f"{h}x{w}":
                    source = next(x.flops_from for x in rows if x.key == r["key"])
                    r["gmacs"] = gmacs.get(r["key"], gmacs.get(source))
    return results


REFERENCE_ROW = {"panoptic": "knet-panoptic", "instance": "knet-instance", "levers": "knet-panoptic"}


def machine_info(threads):
    import platform

    info = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    try:
        import subprocess

        info["git_commit"] = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def markdown_table(report):
    """The README table of a benchmark report (the JSON written by this tool)."""
    results = report.get("models", [])
    if not results:
        return "(no model rows in this report)"
    sizes = list(dict.fromkeys(r["size"] for r in results))
    big = sizes[-1]
    by = {(r["key"], r["size"]): r for r in results}
    head = ["model", "backend"] + [f"{s.replace('x', '×')} ms" for s in sizes]
    b = big.replace("x", "×")
    head += [f"relative ({b})", f"CPU ms ({b})", f"relative CPU ({b})", f"peak mem. MB ({b})", f"GMACs ({b})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in dict.fromkeys(r["key"] for r in results):
        row = by.get((key, big)) or next(r for r in results if r["key"] == key)
        cells = [row["label"], row["backend"] + (" (no_grad)" if row.get("grad_mode") == "no_grad" else "")]
        for s in sizes:
            r = by.get((key, s))
            cells.append(f"{r['latency_ms_median']:.0f}" if r else "–")
        ref = by.get((REFERENCE_ROW[row["group"]], big))
        big_row = by.get((key, big))
        if ref and big_row:
            cells.append(f"{big_row['latency_ms_median'] / ref['latency_ms_median']:.2f}")
            cells.append(f"{big_row['cpu_ms_median']:.0f}")
            cells.append(f"{big_row['cpu_ms_median'] / ref['cpu_ms_median']:.2f}")
        else:
            cells += ["–"] * 3
        mem = big_row.get("peak_rss_increase_mb") if big_row else None
        cells.append(f"{mem:.0f}" if mem is not None else "–")
        g = big_row.get("gmacs") if big_row else None
        cells.append("–" if g is None else f"{g:.0f}" if g >= 100 else f"{g:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    m = report.get("machine", {})
    lines.append("")
    lines.append(
        f"({m.get('cpu')}, {m.get('torch_threads')} thread(s), torch {m.get('torch')}, onnxruntime "
        f"{m.get('onnxruntime')}, batch 1, random weights, median of "
        f"{report.get('settings', {}).get('runs')} "
        f"runs, CPU heap '{report.get('settings', {}).get('malloc', 'default')}'; load average "
        f"{', '.join(f'{v:.1f}' for v in m.get('load_average') or [])}; {m.get('date')}.)"
    )
    return "\n".join(lines)


def _parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: {text!r} is not HxW (e.g. 800x1216)")
    return h, w


def _row(name, samples):
    """(name, median wall s, best wall s, median CPU s) from (wall, cpu) samples."""
    wall = [w for w, _ in samples]
    return name, statistics.median(wall), min(wall), statistics.median(c for _, c in samples)


def trained_like_logits(height, width, seed=0, num_proposals=100, num_thing_classes=80, num_classes=133,
                        things=12, stuff=8):
    """Last-stage outputs with the structure of a trained K-Net (class logits (N, C), stride-4 mask logits
    (N, height/4, width/4)): a few confident stuff kernels tiling the image (argmax of smooth random fields),
    a dozen confident, partly overlapping thing blobs, every other kernel confidently off. Random weights
    give no such structure (their masks are flat noise), so the post-processing rows use these."""
    from torch.nn import functional as F

    g = torch.Generator().manual_seed(seed)
    h4, w4 = height // 4, width // 4
    n_stuff = num_classes - num_thing_classes
    n = num_proposals + n_stuff
    masks = -8.0 + 0.5 * torch.randn(n, h4, w4, generator=g)
    cls = -6.0 + 0.3 * torch.randn(n, num_classes, generator=g)
    y, x = torch.meshgrid(torch.arange(h4, dtype=torch.float32), torch.arange(w4, dtype=torch.float32),
                          indexing="ij")
    fields = F.interpolate(torch.randn(1, stuff, 4, 6, generator=g), (h4, w4), mode="bicubic")[0]
    for i, k in enumerate(torch.randperm(n_stuff, generator=g)[:stuff].tolist()):
        others = torch.cat([fields[:i], fields[i + 1:]]).amax(0)
        masks[num_proposals + k] = ((fields[i] - others) * 36).clamp(-12, 12)
        cls[num_proposals + k, num_thing_classes + k] = 1.0 + 3.0 * float(torch.rand((), generator=g))
    for t in torch.randperm(num_proposals, generator=g)[:things].tolist():
        cy, cx, ry, rx = torch.rand(4, generator=g).tolist()
        ry, rx = 0.04 + 0.2 * ry, 0.04 + 0.2 * rx
        d = torch.sqrt(((y / h4 - cy) / ry) ** 2 + ((x / w4 - cx) / rx) ** 2) - 1
        masks[t] = (-1.5 * d * min(ry * h4, rx * w4)).clamp(-12, 12)
        label = int(torch.randint(num_thing_classes, (1,), generator=g))
        cls[t, label] = 0.5 + 3.0 * float(torch.rand((), generator=g))
    return cls, masks


def postprocessing_rows(args):
    """Time K-Net's panoptic post-processing alone (153 kernels, 133 classes) at each ``--post-sizes``
    (output = input size, no padding), on :func:`trained_like_logits`: the exact default, the previous
    default (stride-4 decisions), the soft mode and the reference order; and check that the exact default
    equals the reference there."""
    from knet.modeling import postprocessing as pp

    t = knet_cfg().MODEL.KNET.TEST  # the model's options (the model-zoo config's, else add_knet_config's)
    rules = pp.PanopticRules(num_proposals=100, num_thing_classes=80, stride=4,
                             thing_score_threshold=t.PANOPTIC_THING_SCORE_THRESHOLD,
                             overlap_threshold=t.OVERLAP_THRESHOLD, mask_threshold=t.MASK_THRESHOLD)
    kw = dict(vars(rules), soft_boundaries=False)
    rows, checks = [], []
    for h, w in args.post_sizes:
        cls, masks = trained_like_logits(h, w)
        size = (h, w)
        variants = [
            (f"{t.PANOPTIC_MODE} (default)",
             lambda: pp.panoptic_inference(cls, masks, size, size, mode=t.PANOPTIC_MODE, **kw)),
            ("stride-4 decisions (previous default)",
             lambda: pp.panoptic_inference(cls, masks, size, size, mode="stride4", **kw)),
            ("stride-4 decisions, soft boundaries",
             lambda: pp.panoptic_inference(cls, masks, size, size, mode="soft", **kw)),
            ("reference order: resize all 153 masks first",
             lambda: pp.panoptic_inference_full_resolution(cls, masks, size, size, rules)),
        ]
        timed = {}
        # round-robin, so that every variant sees the same machine load
        for r in range(1 + args.post_runs):
            for name, fn in variants:
                if name.startswith("reference") and r > max(1, args.post_runs // 2):
                    continue  # the slow one: fewer runs
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                if r:
                    timed.setdefault(name, []).append((time.perf_counter() - t0, time.process_time() - c0))
        for name, _ in variants:
            rows.append(_row(f"{name} -> {h}x{w}", timed[name]))
        exact, ref = variants[0][1](), variants[-1][1]()
        stats = dict(pp.LAST_EXACT_STATS)
        checks.append(
            {
                "size": f"{h}x{w}",
                "pixels_differing_from_reference": int((exact[0] != ref[0]).sum()),
                "segments_info_equal": exact[1] == ref[1],
                "segments": len(ref[1]),
                "border_pixels_evaluated": stats.get("border_pixels"),
                "values_reproduced_in_float32": stats.get("exact_values"),
            }
        )
    return rows, checks


def print_table(title, rows):
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"{'':{width}}  {'median ms':>10}  {'best ms':>9}  {'CPU ms':>9}")
    for name, med, best, cpu in rows:
        print(f"{name:{width}}  {med * 1e3:10.1f}  {best * 1e3:9.1f}  {cpu * 1e3:9.1f}")


def _write_json(args, report, results=None):
    """Write the report (with the model results so far); a later failure keeps what was measured."""
    if not args.json:
        return
    if results is not None:
        report = dict(report, models=results)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)


def print_model_results(results):
    """The model rows as a text table, one block per size."""
    width = max(len(f"{r['label']} [{r['backend']}]") for r in results) + 11
    for size in dict.fromkeys(r["size"] for r in results):
        print(f"\nEnd-to-end inference, {size}, batch 1 (preprocessing, network, post-processing)")
        print(f"{'':{width}}  {'median ms':>10}  {'best ms':>9}  {'CPU ms':>9}  {'peak MB':>8}  {'GMACs':>7}")
        for r in (r for r in results if r["size"] == size):
            tail = ", no_grad]" if r.get("grad_mode") == "no_grad" else "]"
            name = f"{r['label']} [{r['backend']}{tail}"
            mem = "–" if r["peak_rss_increase_mb"] is None else f"{r['peak_rss_increase_mb']:.0f}"
            gmacs = "–" if r["gmacs"] is None else f"{r['gmacs']:.1f}"
            print(f"{name:{width}}  {r['latency_ms_median']:10.1f}  {r['latency_ms_min']:9.1f}  "
                  f"{r['cpu_ms_median']:9.1f}  {mem:>8}  {gmacs:>7}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each model (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first")
    parser.add_argument("--post-runs", type=int, default=5, help="timed runs of each post-processing variant")
    parser.add_argument("--sizes", type=_parse_size, nargs="+", default=[(512, 768), (800, 1216)],
                        metavar="HxW", help="input sizes of the model rows")
    parser.add_argument("--post-sizes", type=_parse_size, nargs="+", default=[(512, 768), (800, 1216)],
                        metavar="HxW", help="sizes of the post-processing rows (--only postprocessing)")
    parser.add_argument("--only", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=None,
                        help="comma-separated row keys or groups: panoptic, instance, levers, postprocessing")
    parser.add_argument("--skip-models", action="store_true", help="only time the post-processing")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP counts")
    parser.add_argument("--malloc", choices=["retain", "default"], default="retain",
                        help="CPU heap of every row (knet.engine.allocator): 'retain' keeps freed memory for "
                             "reuse (what train_net.py and the demo set on CPU), 'default' is glibc's")
    parser.add_argument("--json", default=os.path.join("output", "benchmark", "benchmark.json"),
                        help="where to write every figure and the machine info ('' to skip)")
    parser.add_argument("--markdown", action="store_true", help="also print the README table (model rows)")
    parser.add_argument("--markdown-from", metavar="JSON", help="print the README table of an earlier run")
    args = parser.parse_args(argv)
    if args.markdown_from:
        with open(args.markdown_from) as f:
            print(markdown_table(json.load(f)))
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    report = {
        "machine": machine_info(args.threads),
        "settings": {"runs": args.runs, "warmup": args.warmup, "sizes": [f"{h}x{w}" for h, w in args.sizes],
                     "batch": 1, "weights": "random (seed 0)", "device": "cpu", "malloc": args.malloc},
        "models": [],
        "postprocessing": [],
    }
    print(
        f"torch {torch.__version__}, {args.threads} CPU thread(s), median of {args.runs} runs after "
        f"{args.warmup} warm-up run(s), random weights, CPU heap '{args.malloc}'; load average "
        f"{report['machine']['load_average']}"
    )
    if not args.skip_models:
        with tempfile.TemporaryDirectory(prefix="knet_bench_") as workdir:
            rows = benchmark_rows(args, workdir)
            for i, row in enumerate(rows, 1):
                print(f"[bench] building {i}/{len(rows)}: {row.key}", file=sys.stderr, flush=True)
                row.model = row.build()
            if rows:
                partial = lambda res: _write_json(args, report, res)  # noqa: E731
                report["models"] = run_model_rows(args, rows, args.sizes, partial)
                print_model_results(report["models"])
            for row in rows:
                row.model = None
    if not args.only or "postprocessing" in args.only:
        post, checks = postprocessing_rows(args)
        title = "K-Net panoptic post-processing alone (153 kernels, 133 classes, trained-like logits)"
        print_table(title, post)
        for c in checks:
            differ = c["pixels_differing_from_reference"]
            print(f"  exact vs reference at {c['size']}: {differ} pixels differ, "
                  f"segments_info equal: {c['segments_info_equal']} ({c['segments']} segments; "
                  f"{c['border_pixels_evaluated']} border pixels evaluated)")
        report["postprocessing"] = [
            {"name": name, "median_ms": 1e3 * med, "best_ms": 1e3 * best, "cpu_ms": 1e3 * cpu}
            for name, med, best, cpu in post
        ]
        report["postprocessing_checks"] = checks
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.json:
        _write_json(args, report)
        print(f"\nbenchmark.py: wrote {args.json}")
    if args.markdown and report["models"]:
        print("\n" + markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
