"""``Trainer``: detectron2's ``DefaultTrainer`` with K-Net's builders.

Differences from ``DefaultTrainer`` (detectron2 v0.6 and main, ``detectron2/engine/defaults.py``):

* model, optimizer, mappers, evaluators and checkpointer come from the package (``build_knet_optimizer``,
  ``KNET_MAPPER_REGISTRY``, ``knet.evaluation.build_evaluator``, ``KNetCheckpointer``), and the datasets are
  checked before anything is built (:func:`knet.engine.preflight.preflight`);
* the training loop comes from :meth:`Trainer.build_train_loop`: ``DistributedDataParallel`` also wraps CPU
  models (``device_ids=None``), so ``--num-gpus N`` on a machine without GPU trains with N CPU processes
  (gloo), and ``SOLVER.AMP.ENABLED`` uses :class:`KNetAMPTrainer` (float16 on CUDA, bfloat16 on CPU).
  ``DefaultTrainer.__init__`` hard-codes ``create_ddp_model`` (GPU device ids) and ``AMPTrainer`` (CUDA
  only), so the constructor is K-Net's; it keeps the loop in ``train_loop``, which ``DefaultTrainer``'s own
  methods read under the name ``_trainer`` (a read-only property here: no attribute of detectron2 is
  written);
* checkpoints hold the loop's state (optimizer, grad scaler), which v0.6's ``DefaultTrainer`` leaves out,
  and the random generators' states (:class:`~.rng_state.RandomStateHook`); the training data loader
  restarts at the resumed iteration (:mod:`knet.engine.train_loader`): a resumed run ends with the weights
  of an uninterrupted one. The loader is restarted with ``SimpleTrainer.reset_data_loader`` where
  detectron2 has it (main); on v0.6 a new loop is built around the new loader (``_v06_rebuild_loop``);
* ``test`` writes ``last_eval_results.json``; ``test_with_TTA`` uses the semantic TTA wrapper for semantic
  datasets and evaluates the others without TTA.
"""
import functools
import json
import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint.checkpointer import KNetCheckpointer
from ..checkpoint.io import atomic_write
from ..data.dataset_mappers.registry import build_mapper
from ..data.robust import RobustMapper
from ..evaluation.build import build_evaluator, resolve_evaluator_type
from ..evaluation.coverage import SkipBadInputs, as_knet_evaluators
from ..test_time_augmentation import KNetSemanticTTA
from .devices import create_knet_ddp_model
from .mixed_precision import KNetAMPTrainer
from .optimizer import build_knet_optimizer
from .preflight import preflight
from .rng_state import RandomStateHook
from .train_loader import BadDataHook, build_knet_train_loader

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


LAST_EVAL_RESULTS = "last_eval_results.json"

# detectron2 v0.6's DefaultTrainer leaves the loop's state (optimizer, grad scaler) out of its checkpoints;
# later versions save it under "_trainer" themselves, as K-Net does on v0.6.
_V06_LOOP_STATE_NOT_SAVED = "state_dict" not in vars(DefaultTrainer)


def _jsonable(obj):
    """Nested evaluation results (OrderedDicts of numpy/python numbers) as plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj.item() if hasattr(obj, "item") else obj


class Trainer(DefaultTrainer):
    """K-Net trainer (see the module docstring). Use as ``DefaultTrainer``::

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        preflight(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.train_loop = self.build_train_loop(cfg, model, self.build_train_loader(cfg), optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = KNetCheckpointer(self.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @property
    def _trainer(self):
        """``DefaultTrainer``'s name for the loop (read by its ``run_step``, its ``model``/``optimizer``/
        ``data_loader`` properties and, after v0.6, its ``state_dict``): :attr:`train_loop`."""
        return self.train_loop

    @classmethod
    def build_train_loop(cls, cfg, model, data_loader, optimizer) -> SimpleTrainer:
        """The loop that runs one training step: ``SimpleTrainer``, or :class:`KNetAMPTrainer` with
        ``SOLVER.AMP.ENABLED``, around the model in ``DistributedDataParallel`` when there are several
        processes (:func:`~.devices.create_knet_ddp_model`: CPU models too)."""
        model = create_knet_ddp_model(model, broadcast_buffers=False)
        loop_cls = KNetAMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        return loop_cls(model, data_loader, optimizer)

    # ---------------------------------------------------------------- checkpoint and resume
    def resume_or_load(self, resume=True):
        """As ``DefaultTrainer.resume_or_load``; when resuming at iteration ``i > 0`` the training loader is
        rebuilt to start at the data of iteration ``i``."""
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            build = functools.partial(self.build_train_loader, self.cfg, start_iter=self.start_iter)
            if hasattr(self.train_loop, "reset_data_loader"):
                # detectron2 after v0.6 (main): the supported reset; the iterator is made on first use
                self.train_loop.reset_data_loader(build)
            else:
                self._v06_rebuild_loop(build())

    def _v06_rebuild_loop(self, data_loader):
        """detectron2 v0.6 workaround, to delete with v0.6 support: v0.6's ``SimpleTrainer`` takes the
        iterator of its data loader in its constructor and has no way to replace it, so a new loop of the same
        class is built around ``data_loader``, with the same model and optimizer (and the AMP loop's grad
        scaler, whose state was just loaded)."""
        old = self.train_loop
        kwargs = {"grad_scaler": old.grad_scaler} if isinstance(old, KNetAMPTrainer) else {}
        self.train_loop = type(old)(old.model, data_loader, old.optimizer, **kwargs)

    def state_dict(self):
        ret = super().state_dict()
        if _V06_LOOP_STATE_NOT_SAVED:
            ret["_trainer"] = self.train_loop.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if _V06_LOOP_STATE_NOT_SAVED and "_trainer" in state_dict:
            self.train_loop.load_state_dict(state_dict["_trainer"])

    # ---------------------------------------------------------------- builders
    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        logging.getLogger(__name__).info(f"Model ({n_params / 1e6:.2f} M parameters):\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_knet_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """The K-Net mapper (``INPUT.DATASET_MAPPER_NAME``) over ``DATASETS.TRAIN``, starting at the data of
        iteration ``start_iter``. The dicts are loaded before the mapper is built, as detectron2 does (its
        loaders complete some metadata the mappers read)."""
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        return build_knet_train_loader(cfg, build_mapper(cfg, True), start_iter=start_iter, dataset=dicts)

    def build_hooks(self):
        """detectron2's hooks, preceded by :class:`BadDataHook` (counts the samples skipped for bad data
        files; first, so that the checkpoint of a step includes its skips) and :class:`RandomStateHook`
        (the generators' states in every checkpoint)."""
        hooks = [BadDataHook(self.cfg.DATALOADER.MAX_SKIPPED_FRACTION), RandomStateHook()]
        return hooks + super().build_hooks()

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with the K-Net mapper in a ``RobustMapper``: an image with bad data files
        becomes a placeholder that ``test`` leaves out of the metrics, naming the file."""
        return build_detection_test_loader(cfg, dataset_name, mapper=RobustMapper(build_mapper(cfg, False)))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, plus ``OUTPUT_DIR/last_eval_results.json`` (written atomically by the main
        process; after training it holds the final evaluation). Images with bad data files are left out, named
        in the log and counted in every task's ``num_images``/``num_skipped_images``
        (:mod:`knet.evaluation.coverage`)."""
        if evaluators is not None:
            names = list(cfg.DATASETS.TEST)
            evaluators = [evaluators] if isinstance(evaluators, DatasetEvaluator) else evaluators
            evaluators = [as_knet_evaluators(e, names[i] if i < len(names) else "")
                          for i, e in enumerate(evaluators)]
        model = model if isinstance(model, SkipBadInputs) else SkipBadInputs(model)
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR and isinstance(results, dict):
            with atomic_write(os.path.join(cfg.OUTPUT_DIR, LAST_EVAL_RESULTS), "w") as f:
                json.dump(_jsonable(results), f, indent=2)
        return results

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate ``DATASETS.TEST`` with test-time augmentation (``TEST.AUG``). Only semantic segmentation
        has a TTA (``knet.test_time_augmentation.KNetSemanticTTA``: multi-scale + flip, logits averaged);
        panoptic and instance datasets are evaluated without it (logged). Result keys get a ``_TTA`` suffix
        for the datasets that used TTA."""
        results = OrderedDict()
        for name in cfg.DATASETS.TEST:
            if resolve_evaluator_type(name) == "sem_seg":
                logger.info(f"Running inference with test-time augmentation on '{name}' ...")
                tta_model = KNetSemanticTTA(cfg, model)
                evaluator = cls.build_evaluator(
                    cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
                )
                res = cls._test_one(cfg, tta_model, name, evaluator)
                results.update((k + "_TTA", v) for k, v in res.items())
            else:
                logger.warning(
                    f"Test-time augmentation is only supported for semantic segmentation; '{name}' "
                    f"(evaluator_type '{resolve_evaluator_type(name)}') is evaluated without it."
                )
                results.update(cls._test_one(cfg, model, name, cls.build_evaluator(cfg, name)))
        return results

    @classmethod
    def _test_one(cls, cfg, model, dataset_name, evaluator):
        """``DefaultTrainer.test`` on one dataset of a cloned config; returns ``{task: metrics}``."""
        one = cfg.clone()
        one.defrost()
        one.DATASETS.TEST = (dataset_name,)
        res = cls.test(one, model, [evaluator])
        return res if isinstance(res, dict) else {}
