#!/usr/bin/env python
"""Train and evaluate K-Net with detectron2 (a thin launcher: everything else lives in ``knet``).

    python train_net.py --config-file CONFIG.yaml [--num-gpus N] [--resume] [KEY VALUE ...]
    python train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS model.pth

Arguments are detectron2's ``default_argument_parser``; ``--num-gpus``, ``--num-machines``, ``--machine-rank``
and ``--dist-url`` go to ``detectron2.engine.launch`` unchanged (multi-node: run the same command on every
machine with its own ``--machine-rank`` and a shared ``--dist-url tcp://HOST:PORT``).

CPU only: on a machine without CUDA, ``--num-gpus N`` starts N CPU processes that train with
DistributedDataParallel over gloo (``MODEL.DEVICE`` falls back to ``cpu``; give ``MODEL.DEVICE cpu`` to say so
explicitly). Evaluation shards the test set over the processes and gathers the results.
"""
import logging
import os
import sys

import torch
from detectron2.engine import default_argument_parser, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import knet  # noqa: F401  (registers the model, datasets and mappers)
from knet.checkpoint.checkpointer import KNetCheckpointer
from knet.data.metadata import DatasetMetadataError
from knet.engine import KNetConfigError, Trainer, load_config, preflight, setup

logger = logging.getLogger("knet.train_net")


def _limit_cpu_threads(cfg):
    """N CPU processes on one machine share its cores: give each an equal share of intra-op threads."""
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))


def main(args):
    cfg = setup(args)
    _limit_cpu_threads(cfg)
    if args.eval_only:
        preflight(cfg, eval_only=True)  # Trainer(cfg) runs it for training
        model = Trainer.build_model(cfg)
        KNetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks([hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))])
    return trainer.train()


def invoke_main(argv=None):
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:  # the config and the datasets, once, before any process is started
        preflight(load_config(args.config_file, args.opts), eval_only=args.eval_only)
    except (KNetConfigError, DatasetMetadataError) as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main(sys.argv[1:])
