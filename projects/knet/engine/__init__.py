"""K-Net training engine: ``Trainer`` (a detectron2 ``DefaultTrainer``), the optimizer, the resumable train
loader, the mixed-precision step on CUDA and CPU, devices, the CPU heap setting, config loading, the run
set-up and the pre-flight.

Checkpointing is :mod:`knet.checkpoint`; the dataset-metadata check is :mod:`knet.data.metadata`.
"""
from .allocator import (
    apply_cpu_allocator_config,
    heap_setting_supported,
    restore_default_malloc,
    retain_freed_memory,
)
from .config_loader import KNetConfigError, load_config
from .devices import create_knet_ddp_model, model_device_type, use_cpu_without_cuda
from .mixed_precision import KNetAMPTrainer
from .optimizer import add_full_model_gradient_clipping, build_knet_optimizer, get_knet_optimizer_params
from .preflight import preflight
from .rng_state import RandomStateHook
from .setup import setup
from .train_loader import KNetResumableTrainingSampler, SeededMapDataset, build_knet_train_loader
from .trainer import Trainer

__all__ = [
    "Trainer",
    "KNetAMPTrainer",
    "RandomStateHook",
    "build_knet_optimizer",
    "get_knet_optimizer_params",
    "add_full_model_gradient_clipping",
    "KNetResumableTrainingSampler",
    "SeededMapDataset",
    "build_knet_train_loader",
    "KNetConfigError",
    "load_config",
    "setup",
    "preflight",
    "create_knet_ddp_model",
    "model_device_type",
    "use_cpu_without_cuda",
    "apply_cpu_allocator_config",
    "heap_setting_supported",
    "retain_freed_memory",
    "restore_default_malloc",
]
