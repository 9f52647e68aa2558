"""Export the K-Net inference network to ONNX (TorchScript-based exporter, ``dynamo=False``).

What is exported is the network, not the post-processing (its data-dependent segment selection, variable
output counts and Python ``segments_info`` do not export cleanly): the input is one normalised image padded
as the PyTorch model pads it, the outputs are what the post-processing of
:mod:`knet.modeling.postprocessing` / :mod:`knet.modeling.dense_inference` reads.

* panoptic / instance models: input ``image`` (1, 3, H, W) float32, H and W multiples of the model's size
  divisibility; outputs ``cls_logits`` (1, N, C) and ``mask_logits`` (1, N, H/4, W/4) of the last stage.
* semantic models: input ``image`` (1, 3, H, W) of any size (the image as it is, "whole" inference, or one
  sliding window); output ``sem_logits`` (1, C, h, w), the last stage's logits at the network's stride.

H and W are dynamic axes. Facts the runtime side needs (task, class counts, normalisation, size
divisibility) are stored as JSON in the model's metadata under the key ``knet``
(:func:`read_knet_metadata`).
"""
import contextlib
import json
import logging
import os
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..modeling.meta_arch import KNet, KNetSemantic

__all__ = [
    "KNetInferenceNetwork",
    "export_onnx",
    "read_knet_metadata",
    "knet_task",
    "compare_with_pytorch",
    "onnx_config",
    "import_onnx",
    "import_onnxruntime",
    "METADATA_KEY",
    "OPSET",
]

logger = logging.getLogger(__name__)

METADATA_KEY = "knet"
OPSET = 17  # LayerNormalization is a native op from 17 on; onnxruntime >= 1.14 runs it
_INSTALL_HINT = (
    "install the export extra: pip install 'knet-detectron2[export]' (or pip install onnx onnxruntime)"
)


def import_onnx():
    """The ``onnx`` module, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs the 'onnx' package ({e}); {_INSTALL_HINT}") from e
    return onnx


def import_onnxruntime():
    """The ``onnxruntime`` module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            f"running an exported K-Net needs the 'onnxruntime' package ({e}); {_INSTALL_HINT}"
        ) from e
    return onnxruntime


def knet_task(model: nn.Module) -> str:
    """"semantic" for a ``KNetSemantic`` model; "panoptic" (stuff kernels) or "instance" for a ``KNet``."""
    if isinstance(model, KNetSemantic):
        return "semantic"
    return "panoptic" if model.kernel_head.panoptic else "instance"


class KNetInferenceNetwork(nn.Module):
    """The exportable part of a ``KNet`` or ``KNetSemantic`` model (shares its modules; eval mode only).

    forward: image (B, 3, H, W) normalised (padded for panoptic/instance) ->
    panoptic/instance: (cls_logits (B, N, C), mask_logits (B, N, H/4, W/4));
    semantic: sem_logits (B, C, h, w).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.semantic = isinstance(model, KNetSemantic)

    def forward(self, image: torch.Tensor):
        if self.semantic:
            return self.model.stage_logits(image)
        last = self.model.kernel_head(self.model.pixel_decoder(self.model.backbone(image)))["stages"][-1]
        return last["pred_logits"], last["pred_masks"]

    @property
    def output_names(self) -> Tuple[str, ...]:
        return ("sem_logits",) if self.semantic else ("cls_logits", "mask_logits")


def _traceable_adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` written with slices, so that the exporter keeps the input size dynamic
    (its own symbolic needs static sizes). Bin i of n over a side L covers ``[floor(i L / n),
    ceil((i + 1) L / n))``, as PyTorch. x (B, C, H, W) -> (B, C, n_h, n_w)."""
    n_h, n_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if (n_h, n_w) == (1, 1):
        return x.mean(dim=(-2, -1), keepdim=True)
    H, W = x.shape[-2], x.shape[-1]
    rows = []
    for i in range(n_h):
        y0, y1 = (i * H) // n_h, ((i + 1) * H + n_h - 1) // n_h
        cols = []
        for j in range(n_w):
            x0, x1 = (j * W) // n_w, ((j + 1) * W + n_w - 1) // n_w
            cols.append(x[..., y0:y1, x0:x1].mean(dim=(-2, -1), keepdim=True))
        rows.append(torch.cat(cols, dim=-1))
    return torch.cat(rows, dim=-2)


@contextlib.contextmanager
def _exportable_ops():
    """Swap ops whose ONNX symbolic needs static sizes for traceable equivalents while exporting."""
    original = F.adaptive_avg_pool2d
    F.adaptive_avg_pool2d = _traceable_adaptive_avg_pool2d
    try:
        yield
    finally:
        F.adaptive_avg_pool2d = original


def _metadata(model: nn.Module, cfg) -> Dict:
    head = model.kernel_head
    task = knet_task(model)
    meta = {
        "format_version": 1,
        "task": task,
        "num_classes": int(cfg.MODEL.KNET.NUM_CLASSES),
        "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
        "input_format": cfg.INPUT.FORMAT,
        "size_divisibility": int(getattr(model, "size_divisibility", 1)),
        "inputs": ["image"],
        "outputs": list(KNetInferenceNetwork(model).output_names),
    }
    if task != "semantic":
        meta.update(num_thing_classes=int(head.num_thing_classes), num_proposals=int(head.num_proposals))
    return meta


def read_knet_metadata(path: str) -> Dict:
    """The ``knet`` metadata of an exported file (see the module docstring); a clear error when absent."""
    onnxruntime = import_onnxruntime()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _metadata_of_session(session, path)


def _metadata_of_session(session, path: str) -> Dict:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(
            f"{path} has no '{METADATA_KEY}' metadata: it was not written by tools/export_model.py; export "
            "the model with it (python tools/export_model.py --config-file CFG --output model.onnx "
            "MODEL.WEIGHTS ...)"
        )
    return json.loads(props[METADATA_KEY])


def _sample_input(model: nn.Module, size: Optional[Sequence[int]]) -> torch.Tensor:
    """A random normalised (1, 3, H, W) input; H, W rounded up to the size divisibility."""
    div = max(int(getattr(model, "size_divisibility", 1)), 1)
    h, w = size if size is not None else (320, 480)
    h, w = -(-int(h) // div) * div, -(-int(w) // div) * div
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, h, w, generator=g).to(model.pixel_mean.device)


def export_onnx(
    model: nn.Module,
    cfg,
    output: str,
    *,
    sample_size: Optional[Sequence[int]] = None,
    opset: int = OPSET,
    check: bool = True,
) -> Dict:
    """Export a ``KNet`` model's inference network to ``output`` (.onnx).

    Args:
        model: a ``KNet`` (any device; exported in eval mode, with BatchNorm folded when
            ``MODEL.KNET.TEST.FUSE_BN`` is on).
        cfg: its config (class counts, normalisation and input format go into the metadata).
        output: the file to write (its folder is created).
        sample_size: (H, W) of the tracing input (rounded up to the size divisibility); any size works at run
            time.
        opset: ONNX opset.
        check: run ``onnx.checker.check_model`` on the written file.
    Returns:
        the metadata written (a dict, see the module docstring).
    """
    onnx = import_onnx()
    if not isinstance(model, (KNet, KNetSemantic)):
        raise TypeError(
            f"export_onnx exports the KNet and KNetSemantic meta-architectures, got {type(model).__name__} "
            "(MODEL.META_ARCHITECTURE must be 'KNet' or 'KNetSemantic')"
        )
    was_training = model.training
    model.eval()
    network = KNetInferenceNetwork(model).eval()
    sample = _sample_input(model, sample_size)
    names = network.output_names
    dynamic = {"image": {2: "height", 3: "width"}}
    if network.semantic:
        dynamic["sem_logits"] = {2: "out_height", 3: "out_width"}
    else:
        dynamic["cls_logits"] = {}
        dynamic["mask_logits"] = {2: "mask_height", 3: "mask_width"}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    try:
        with torch.no_grad():
            network(sample)  # fills the folded-BatchNorm caches, so the graph holds plain constants
            with _exportable_ops(), warnings.catch_warnings():
                # Python shape checks are evaluated once while tracing; each of them holds for any size
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
                torch.onnx.export(
                    network,
                    (sample,),
                    output,
                    dynamo=False,
                    input_names=["image"],
                    output_names=list(names),
                    dynamic_axes=dynamic,
                    opset_version=opset,
                    do_constant_folding=True,
                )
    finally:
        model.train(was_training)
    meta = _metadata(model, cfg)
    proto = onnx.load(output)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name = "knet-detectron2"
    onnx.save(proto, output)
    if check:
        onnx.checker.check_model(output)
    logger.info(f"Exported the {meta['task']} K-Net network to {output} (opset {opset})")
    return meta


def compare_with_pytorch(
    model: nn.Module, path: str, sizes: Sequence[Sequence[int]] = ((320, 480),)
) -> Dict:
    """Run the PyTorch network and the exported file (onnxruntime, CPU) on the same random normalised
    images of each (H, W) in ``sizes`` (rounded up to the size divisibility for panoptic/instance models).

    Returns:
        {output name: {"max_abs_diff": largest |PyTorch - onnxruntime|, "max_abs_value": largest |PyTorch|}}
        over all sizes (floats; float32 rounding grows with the value range).
    """
    onnxruntime = import_onnxruntime()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    network = KNetInferenceNetwork(model).eval()
    stats = {name: {"max_abs_diff": 0.0, "max_abs_value": 0.0} for name in network.output_names}
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(0)
    try:
        for size in sizes:
            if network.semantic:
                image = torch.randn(1, 3, *size, generator=g)
            else:
                image = _sample_input(model, size)
            with torch.no_grad():
                ours = network(image.to(model.pixel_mean.device))
            ours = (ours,) if torch.is_tensor(ours) else ours
            theirs = session.run(None, {"image": image.cpu().numpy()})
            for name, a, b in zip(network.output_names, ours, theirs):
                if tuple(a.shape) != tuple(b.shape):
                    raise AssertionError(
                        f"{name}: PyTorch {tuple(a.shape)} vs ONNX {tuple(b.shape)} at {size}"
                    )
                a = a.float().cpu()
                entry = stats[name]
                diff = (a - torch.from_numpy(b)).abs().max().item()
                entry["max_abs_diff"] = max(entry["max_abs_diff"], diff)
                entry["max_abs_value"] = max(entry["max_abs_value"], a.abs().max().item())
    finally:
        model.train(was_training)
    return stats


def onnx_config(cfg, onnx_path: str):
    """A copy of ``cfg`` that runs ``onnx_path`` with ``KNetONNX`` (the switch: ``MODEL.META_ARCHITECTURE
    KNetONNX``, ``MODEL.KNET.ONNX.MODEL`` the file, ``MODEL.WEIGHTS`` empty)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "KNetONNX"
    cfg.MODEL.KNET.ONNX.MODEL = os.path.abspath(onnx_path)
    cfg.MODEL.WEIGHTS = ""
    return cfg
