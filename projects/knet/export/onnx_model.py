"""``KNetONNX``: a meta-architecture that runs an exported K-Net network with onnxruntime.

Switch a config to it with ``MODEL.META_ARCHITECTURE KNetONNX MODEL.KNET.ONNX.MODEL model.onnx
MODEL.WEIGHTS ""`` (``tools/export_model.py`` writes a config that says so next to the .onnx file). It
takes and returns what ``KNet`` does (detectron2 input dicts in, ``panoptic_seg`` / ``instances`` /
``sem_seg`` out), so ``demo/demo.py`` and ``train_net.py --eval-only`` work unchanged: the preprocessing
(normalise, pad) and the post-processing (the public functions of :mod:`knet.modeling.postprocessing` and
:func:`knet.modeling.dense_inference.semantic_probabilities`) run in PyTorch on CPU, the network in
onnxruntime.
``MODEL.DEVICE`` does not apply: onnxruntime's execution providers are ``MODEL.KNET.ONNX.PROVIDERS``.
"""
import logging
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from ..modeling.dense_inference import semantic_probabilities
from ..modeling.meta_arch import postprocess_image
from ..modeling.options import PostprocessOptions, SemanticOptions
from .onnx_export import _metadata_of_session, import_onnxruntime

__all__ = ["KNetONNX", "create_session"]

logger = logging.getLogger(__name__)


def create_session(path: str, providers=("CPUExecutionProvider",), num_threads: int = 0):
    """An onnxruntime ``InferenceSession`` for ``path`` (``num_threads`` intra-op threads; 0 = default)."""
    onnxruntime = import_onnxruntime()
    if not path:
        raise ValueError(
            "MODEL.KNET.ONNX.MODEL is empty: set it to the .onnx file written by tools/export_model.py"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.KNET.ONNX.MODEL = {path!r}: no such file; export one with "
            "python tools/export_model.py --config-file CFG --output model.onnx MODEL.WEIGHTS weights.pth"
        )
    options = onnxruntime.SessionOptions()
    if num_threads > 0:
        options.intra_op_num_threads = int(num_threads)
    available = onnxruntime.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(
            f"MODEL.KNET.ONNX.PROVIDERS asks for {missing}, which this onnxruntime does not have "
            f"(available: {available})"
        )
    return onnxruntime.InferenceSession(path, sess_options=options, providers=list(providers))


def _check_metadata(meta: Dict, cfg, path: str) -> None:
    """The exported model must be the one the config describes (class counts, normalisation)."""
    k = cfg.MODEL.KNET
    checks = [("MODEL.KNET.NUM_CLASSES", k.NUM_CLASSES, meta.get("num_classes"))]
    if meta.get("task") != "semantic":
        checks += [
            ("MODEL.KNET.NUM_THING_CLASSES", k.NUM_THING_CLASSES, meta.get("num_thing_classes")),
            ("MODEL.KNET.NUM_PROPOSALS", k.NUM_PROPOSALS, meta.get("num_proposals")),
        ]
    checks += [
        ("MODEL.PIXEL_MEAN", [round(float(v), 6) for v in cfg.MODEL.PIXEL_MEAN],
         [round(float(v), 6) for v in meta.get("pixel_mean", [])]),
        ("MODEL.PIXEL_STD", [round(float(v), 6) for v in cfg.MODEL.PIXEL_STD],
         [round(float(v), 6) for v in meta.get("pixel_std", [])]),
        ("INPUT.FORMAT", cfg.INPUT.FORMAT, meta.get("input_format")),
    ]
    for key, ours, theirs in checks:
        if ours != theirs:
            raise ValueError(
                f"{key} = {ours} but the exported model {path} was made with {theirs}: use the config the "
                "model was exported with (tools/export_model.py writes it next to the .onnx file)"
            )


@META_ARCH_REGISTRY.register()
class KNetONNX(nn.Module):
    """K-Net inference through onnxruntime (see the module docstring). Inference only.

    Returns per image, at its ``height``/``width``: ``panoptic_seg``, ``instances`` and ``sem_seg`` as
    :class:`knet.modeling.meta_arch.KNet` (switched by ``MODEL.KNET.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON``);
    semantic models return ``sem_seg`` (C, H, W) probabilities as
    :class:`knet.modeling.meta_arch.KNetSemantic`.
    """

    @configurable
    def __init__(
        self,
        *,
        session,
        metadata: Dict,
        pixel_mean,
        pixel_std,
        postprocess: PostprocessOptions,
        semantic_options: SemanticOptions,
    ):
        """
        Args:
            session: an onnxruntime ``InferenceSession`` of a file written by ``tools/export_model.py``.
            metadata: its ``knet`` metadata (task, class counts, size divisibility).
            pixel_mean, pixel_std: per-channel normalisation (as the exported model's).
            postprocess: the outputs and thresholds, as for ``KNet`` (panoptic / instance models).
            semantic_options: test mode and sliding window, as for ``KNetSemantic`` (semantic models).
        """
        super().__init__()
        self.session = session
        self.metadata = dict(metadata)
        self.task = self.metadata["task"]
        self.input_name = session.get_inputs()[0].name
        mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (pixel_mean, pixel_std))
        self.register_buffer("pixel_mean", mean, False)
        self.register_buffer("pixel_std", std, False)
        self.size_divisibility = max(int(self.metadata.get("size_divisibility", 1)), 1)
        self.postprocess = postprocess
        self.semantic_options = semantic_options
        if self.task == "instance" and postprocess.panoptic_on:
            raise ValueError(
                "MODEL.KNET.TEST.PANOPTIC_ON is True but the exported model is an instance model (no stuff "
                "kernels); set MODEL.KNET.TEST.PANOPTIC_ON False"
            )

    @classmethod
    def from_config(cls, cfg):
        o = cfg.MODEL.KNET.ONNX
        if cfg.MODEL.WEIGHTS:
            raise ValueError(
                f"MODEL.WEIGHTS = {cfg.MODEL.WEIGHTS!r} is not used by KNetONNX (the weights are inside "
                f"MODEL.KNET.ONNX.MODEL = {o.MODEL!r}); set MODEL.WEIGHTS \"\""
            )
        session = create_session(o.MODEL, tuple(o.PROVIDERS), o.NUM_THREADS)
        meta = _metadata_of_session(session, o.MODEL)
        _check_metadata(meta, cfg, o.MODEL)
        return {
            "session": session,
            "metadata": meta,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "postprocess": PostprocessOptions.from_config(cfg),
            "semantic_options": SemanticOptions.from_config(cfg),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def run_network(self, image: torch.Tensor):
        """One normalised (1, 3, H, W) image through onnxruntime -> the network's outputs as CPU tensors."""
        array = np.ascontiguousarray(image.detach().cpu().float().numpy())
        return [torch.from_numpy(out) for out in self.session.run(None, {self.input_name: array})]

    def forward(self, batched_inputs: List[Dict]):
        """detectron2 input dicts (``image`` uint8 (3, H, W) in ``INPUT.FORMAT``, ``height``/``width``) ->
        one output dict per image (see the class docstring)."""
        if self.training:
            raise RuntimeError(
                "KNetONNX runs an exported ONNX network and cannot be trained; train with "
                "MODEL.META_ARCHITECTURE KNet (KNetSemantic for semantic models)"
            )
        mean, std = self.pixel_mean.cpu(), self.pixel_std.cpu()
        images = [(x["image"].cpu().float() - mean) / std for x in batched_inputs]
        if self.task == "semantic":
            o = self.semantic_options
            sizes = [
                (x.get("height", i.shape[-2]), x.get("width", i.shape[-1]))
                for x, i in zip(batched_inputs, images)
            ]
            return semantic_probabilities(
                lambda crop: self.run_network(crop)[0],
                images,
                sizes,
                mode=o.test_mode,
                crop_size=o.crop_size,
                stride=o.stride,
            )
        # padded as KNet pads a batch (to the largest image), then run one image at a time
        padded = ImageList.from_tensors(images, self.size_divisibility)
        results = []
        for i, x in enumerate(batched_inputs):
            cls_logits, masks = self.run_network(padded.tensor[i : i + 1])
            stride = padded.tensor.shape[-2] // masks.shape[-2]
            results.append(self._postprocess(cls_logits[0], masks[0], padded.image_sizes[i], stride, x))
        return results

    def _postprocess(self, cls_logits, masks, image_size, stride: int, x: Dict) -> Dict:
        """The post-processing of ``KNet`` for one image: (N, C) class logits, (N, h, w) stride-``stride``
        mask logits of the padded input, ``image_size`` (h, w) of the image inside the padding."""
        meta = self.metadata
        out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
        return postprocess_image(
            cls_logits, masks, image_size, out_size, stride=stride, num_proposals=meta["num_proposals"],
            num_thing_classes=meta["num_thing_classes"], options=self.postprocess,
        )
