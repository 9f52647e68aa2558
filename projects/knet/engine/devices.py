"""Devices: the CPU fallback of ``MODEL.DEVICE``, a model's device type, and DistributedDataParallel for CPU
as well as CUDA models."""
import logging

import torch
from detectron2.config import CfgNode
from detectron2.engine import create_ddp_model
from detectron2.utils import comm

__all__ = ["use_cpu_without_cuda", "model_device_type", "create_knet_ddp_model"]

logger = logging.getLogger(__name__)


def use_cpu_without_cuda(cfg: CfgNode) -> None:
    """On a machine without CUDA, switch a ``cuda`` ``MODEL.DEVICE`` of the (unfrozen) ``cfg`` to ``cpu``,
    with a warning."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is '%s' but CUDA is not available: using 'cpu'.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"


def model_device_type(model: torch.nn.Module) -> str:
    """``"cuda"`` or ``"cpu"``: the device type of the model's first parameter (CPU when it has none)."""
    for p in model.parameters():
        return p.device.type
    return "cpu"


def create_knet_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` (the model itself when there is one process), with
    ``device_ids=None`` for CPU models (detectron2 passes ``[local_rank]``, which CPU modules reject)."""
    if comm.get_world_size() > 1 and model_device_type(model) != "cuda":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)
