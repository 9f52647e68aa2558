"""``setup(args)``: the config of a ``train_net.py`` process, with detectron2's run set-up."""
from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .allocator import apply_cpu_allocator_config
from .config_loader import load_config
from .devices import use_cpu_without_cuda

__all__ = ["setup"]


def setup(args) -> CfgNode:
    """:func:`~.config_loader.load_config` from ``args.config_file`` and ``args.opts``, on a machine without
    CUDA with ``MODEL.DEVICE`` ``cpu`` (:func:`~.devices.use_cpu_without_cuda`), frozen; then detectron2's
    ``default_setup`` (output dir, logs, config backup, ``SEED``) and the ``knet`` logger; on the CPU, the
    heap setting ``MODEL.KNET.CPU_RETAIN_FREED_MEMORY`` (:func:`~.allocator.apply_cpu_allocator_config`).
    Command-line arguments are not changed."""
    cfg = load_config(getattr(args, "config_file", ""), getattr(args, "opts", None))
    use_cpu_without_cuda(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="knet")
    apply_cpu_allocator_config(cfg)
    return cfg
