"""A resumable, reproducible training data loader built from detectron2's pieces.

detectron2's ``TrainingSampler`` restarts its stream at the first index when a run is resumed, and the
augmentations draw from per-worker random generators seeded at start-up; a resumed run therefore sees other
data than an uninterrupted one. Here the sampler produces the same infinite shuffled stream as
``TrainingSampler`` (one ``torch.randperm`` per epoch from a fixed seed), can start at any position, and
attaches to every item a seed derived from ``(seed, position in the global stream)``; the mapper runs with
the global generators (``random``, ``numpy``, ``torch``) seeded from it. The data of iteration ``i`` then
depends only on ``(SEED, i)``, not on the number of dataloader workers or on whether the run was resumed.

Exact when ``DATALOADER.ASPECT_RATIO_GROUPING`` is off or all images share one orientation (with grouping, an
iteration may consume more items than its batch size).

Bad data files (:mod:`knet.data.robust`): the mapper is wrapped in a ``RobustMapper``; a sample whose files
cannot be read is replaced by the next one (deterministically, so resume stays exact) and its
``(file, reason)`` travels with the batch to the main process, where :class:`SkippedSamplesLoader` collects it
and :class:`BadDataHook` counts it over all processes, logs it with the training metrics
(``data/skipped_samples``, ``data/bad_files``) and stops the run when more than
``DATALOADER.MAX_SKIPPED_FRACTION`` of the dataset's files are bad.
"""
import itertools
import logging
import random
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from ..data.robust import SKIPPED_KEY, RobustMapper

__all__ = [
    "KNetResumableTrainingSampler",
    "SeededMapDataset",
    "SkippedSamplesLoader",
    "BadDataHook",
    "BadDataLimitError",
    "build_knet_train_loader",
]

logger = logging.getLogger(__name__)


def _item_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the item at ``position`` of the global stream of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0] & 0x7FFFFFFF)


class KNetResumableTrainingSampler(Sampler):
    """Infinite stream of ``(dataset_index, item_seed)`` keys for this rank.

    The global stream is ``shuffle(range(size)) + shuffle(range(size)) + ...`` (as detectron2's
    ``TrainingSampler``); rank ``r`` of ``w`` takes positions ``start + r, start + r + w, ...``.

    Args:
        size: number of items in the dataset.
        seed: seed of the shuffle and of the per-item seeds; must be the same on every rank.
        shuffle: shuffle every epoch (else ``range(size)`` repeated).
        start: first position of the global stream (``start_iter * total_batch_size`` when resuming).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, start: int = 0):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"KNetResumableTrainingSampler(size=) expects a positive int, got {size!r}.")
        self._size = size
        self._seed = int(seed)
        self._shuffle = shuffle
        self._start = int(start)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def _global_indices(self, first_epoch: int) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        for _ in range(first_epoch if self._shuffle else 0):  # skip whole epochs: one randperm each
            torch.randperm(self._size, generator=g)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        first_epoch, offset = divmod(self._start, self._size)
        position = self._start + self._rank
        stream = self._global_indices(first_epoch)
        for idx in itertools.islice(stream, offset + self._rank, None, self._world_size):
            yield idx, _item_seed(self._seed, position)
            position += self._world_size


class SeededMapDataset(Dataset):
    """Map-style dataset over a list of dataset dicts whose keys are ``(index, seed)``: the mapper runs with
    ``random``, ``numpy`` and ``torch`` seeded from ``seed``; the caller's generator states are restored.

    A mapper returning ``None`` (a skipped item) is retried on the following indices, each with a seed derived
    from the original one, so the replacement is reproducible too. With a mapper that has ``map_or_skip``
    (``RobustMapper``), the ``(file, reason)`` of the skipped items is stored in the returned dict under
    ``knet.data.robust.SKIPPED_KEY``.
    """

    def __init__(self, dataset_dicts, mapper, max_retries: int = 10):
        self._dicts = dataset_dicts
        self._mapper = mapper
        self._max_retries = max_retries

    def __len__(self):
        return len(self._dicts)

    def _map_seeded(self, index: int, seed: int):
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            random.seed(seed)
            np.random.seed(seed)
            # the CPU generator only: torch.manual_seed would also queue a lazy seeding of every accelerator
            # backend, each recording a formatted stack trace (0.6 ms per item, a sixth of a mapper's time)
            torch.random.default_generator.manual_seed(seed)
            map_or_skip = getattr(self._mapper, "map_or_skip", None)
            if map_or_skip is not None:
                return map_or_skip(self._dicts[index])
            return self._mapper(self._dicts[index]), None
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def __getitem__(self, key):
        index, seed = key
        skipped = []
        for attempt in range(self._max_retries + 1):
            cur = (index + attempt) % len(self._dicts)
            data, skip = self._map_seeded(cur, seed if attempt == 0 else _item_seed(seed, attempt))
            if data is not None:
                if skipped:  # travels with the batch to the main process (BadDataHook)
                    data[SKIPPED_KEY] = skipped
                return data
            if skip is not None:  # a bad file (RobustMapper has warned, naming it)
                skipped.append(skip.as_tuple())
            else:
                name = self._dicts[cur].get("file_name")
                logger.warning(f"The mapper skipped item {cur} ({name}); trying the next one.")
        listed = "".join(f"\n  {f}: {r}" for f, r in skipped)
        raise RuntimeError(
            f"The training mapper returned None for {self._max_retries + 1} consecutive items starting at "
            f"index {index}: check the dataset and INPUT.DATASET_MAPPER_NAME (tools/check_dataset.py scans "
            f"the files).{listed}"
        )


class SkippedSamplesLoader:
    """Iterates a training data loader and removes the skip records (``SKIPPED_KEY``) from every batch,
    keeping them (in order) until :meth:`pop_skipped` is called. Other attributes are the wrapped loader's.

    Args:
        loader: an iterable of batches (lists of dicts).
        dataset_size: number of records of the training set (the base of ``DATALOADER.MAX_SKIPPED_FRACTION``).
    """

    def __init__(self, loader, dataset_size: int):
        self.loader = loader
        self.dataset_size = int(dataset_size)
        self._pending: List[Tuple[str, str]] = []

    def __iter__(self):
        for batch in self.loader:
            for data in batch:
                records = data.pop(SKIPPED_KEY, None) if isinstance(data, dict) else None
                if records:
                    self._pending.extend((str(f), str(r)) for f, r in records)
            yield batch

    def pop_skipped(self) -> List[Tuple[str, str]]:
        """The ``(file, reason)`` of the samples skipped in the batches yielded since the last call."""
        out, self._pending = self._pending, []
        return out

    def __getattr__(self, name):
        if name == "loader":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


class BadDataLimitError(RuntimeError):
    """Training stopped: more files of the training set are bad than ``DATALOADER.MAX_SKIPPED_FRACTION``
    allows."""


def _check_max_skipped_fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"DATALOADER.MAX_SKIPPED_FRACTION must be a number in [0, 1] (the fraction of the training set "
            f"whose files may be bad before training stops; 1 never stops), got {value!r}."
        )
    return float(value)


def bad_data_limit_message(bad_files: Dict[str, str], dataset_size: int, max_fraction: float) -> str:
    listed = "".join(f"\n  {f}: {r}" for f, r in sorted(bad_files.items()))
    return (
        f"Training stopped: {len(bad_files)} of the {dataset_size} training samples have bad data files, "
        f"more than DATALOADER.MAX_SKIPPED_FRACTION = {max_fraction:g} allows "
        f"({int(max_fraction * dataset_size)}). "
        "Fix or remove these files (tools/check_dataset.py --config-file CFG lists every bad file of the "
        "train and test sets), or raise DATALOADER.MAX_SKIPPED_FRACTION, then continue with --resume:"
        f"{listed}"
    )


class BadDataHook(HookBase):
    """Counts the training samples skipped for bad data files over all processes, logs the counts with the
    training metrics (``data/skipped_samples``: every skip so far, ``data/bad_files``: distinct bad files)
    and raises :class:`BadDataLimitError`, listing the files, when more than ``max_fraction`` of the training
    set's samples have bad files.

    Every process gathers the skip records of all processes at every step, so all of them hold the same
    counts and stop at the same iteration. The counts are part of the checkpoint (``state_dict``), so a
    resumed run continues them. Register it before the checkpointer, so a checkpoint includes the step's
    skips (``Trainer.build_hooks`` puts it first).

    Args:
        max_fraction: ``DATALOADER.MAX_SKIPPED_FRACTION``, in [0, 1].
    """

    def __init__(self, max_fraction: float):
        self.max_fraction = _check_max_skipped_fraction(max_fraction)
        self.num_skipped = 0
        self.bad_files: Dict[str, str] = {}

    def _loader(self):
        inner = getattr(self.trainer, "_trainer", self.trainer)
        return getattr(inner, "data_loader", None)

    def after_step(self):
        loader = self._loader()
        pop = getattr(loader, "pop_skipped", None)
        local = pop() if pop is not None else []
        gathered = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        new = [rec for records in gathered for rec in records]
        for file_name, reason in new:
            self.num_skipped += 1
            self.bad_files.setdefault(file_name, reason)
        storage = self.trainer.storage
        storage.put_scalar("data/skipped_samples", self.num_skipped, smoothing_hint=False)
        storage.put_scalar("data/bad_files", len(self.bad_files), smoothing_hint=False)
        if not new:
            return
        size = getattr(loader, "dataset_size", None)
        if comm.is_main_process():
            logger.warning(
                f"Iteration {self.trainer.iter}: {len(new)} sample(s) skipped for bad data files "
                f"({self.num_skipped} so far, {len(self.bad_files)} distinct file(s)"
                + (f" of {size} samples)." if size else ").")
            )
        if size and len(self.bad_files) > self.max_fraction * size:
            raise BadDataLimitError(bad_data_limit_message(self.bad_files, size, self.max_fraction))

    def state_dict(self):
        return {"num_skipped": self.num_skipped, "bad_files": dict(self.bad_files)}

    def load_state_dict(self, state_dict):
        self.num_skipped = int(state_dict.get("num_skipped", 0))
        self.bad_files = {str(k): str(v) for k, v in state_dict.get("bad_files", {}).items()}


def build_knet_train_loader(cfg, mapper, start_iter: int = 0, seed: Optional[int] = None, dataset=None):
    """detectron2's ``build_detection_train_loader`` over a :class:`SeededMapDataset` and a
    :class:`KNetResumableTrainingSampler` that starts at iteration ``start_iter``.

    Args:
        cfg: reads ``DATASETS.TRAIN``, ``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH`` and ``SEED``.
        mapper: the training mapper (callable on one dataset dict); one with ``set_paste_pool`` (copy-paste)
            receives the training records as its pool of sources.
        start_iter: first iteration the loader feeds (the position ``start_iter * IMS_PER_BATCH`` of the
            global stream).
        seed: overrides the seed; by default ``cfg.SEED`` when >= 0, else a random seed shared by all ranks.
        dataset: the list of dataset dicts (default: ``get_detection_dataset_dicts(DATASETS.TRAIN)``).

    Returns:
        a :class:`SkippedSamplesLoader` (an iterable of batches); the mapper runs inside a ``RobustMapper``,
        so samples with bad data files are skipped and reported (see the module docstring).
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN = '{cfg.DATALOADER.SAMPLER_TRAIN}' is not supported by the K-Net "
            "trainer: use 'TrainingSampler'."
        )
    dicts = dataset
    if dicts is None:
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:  # panoptic records: the official rule (>= 1 thing segment)
        from ..data.datasets.filters import filter_panoptic_images_without_things

        dicts = filter_panoptic_images_without_things(dicts)
    set_pool = getattr(mapper, "set_paste_pool", None)
    if set_pool is not None:  # copy-paste draws its sources from the same (filtered) records
        set_pool(dicts)
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = KNetResumableTrainingSampler(
        len(dicts), seed=seed, shuffle=True, start=start_iter * cfg.SOLVER.IMS_PER_BATCH
    )
    loader = build_detection_train_loader(
        SeededMapDataset(dicts, RobustMapper(mapper, is_train=True)),
        mapper=None,  # SeededMapDataset maps
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    return SkippedSamplesLoader(loader, len(dicts))
