"""K-Net training engine: ``Trainer`` (a detectron2 ``DefaultTrainer``), the optimizer, the resumable train
loader, mixed precision on CUDA and CPU, config loading and pre-flight checks."""
from .optimizer import add_full_model_gradient_clipping, build_knet_optimizer, get_knet_optimizer_params
from .setup import KNetConfigError, KNetMetadataError, check_dataset_metadata, load_config, setup
from .train_loader import KNetResumableTrainingSampler, SeededMapDataset, build_knet_train_loader
from .train_loop import KNetAMPTrainer
from .trainer import Trainer, create_knet_ddp_model

__all__ = [
    "Trainer",
    "create_knet_ddp_model",
    "KNetAMPTrainer",
    "build_knet_optimizer",
    "get_knet_optimizer_params",
    "add_full_model_gradient_clipping",
    "KNetResumableTrainingSampler",
    "SeededMapDataset",
    "build_knet_train_loader",
    "KNetConfigError",
    "KNetMetadataError",
    "load_config",
    "setup",
    "check_dataset_metadata",
]
