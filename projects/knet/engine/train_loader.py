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
"""
import itertools
import logging
import random
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

__all__ = ["KNetResumableTrainingSampler", "SeededMapDataset", "build_knet_train_loader"]

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
    from the original one, so the replacement is reproducible too.
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
            torch.manual_seed(seed)
            return self._mapper(self._dicts[index])
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def __getitem__(self, key):
        index, seed = key
        for attempt in range(self._max_retries + 1):
            cur = (index + attempt) % len(self._dicts)
            data = self._map_seeded(cur, seed if attempt == 0 else _item_seed(seed, attempt))
            if data is not None:
                return data
            name = self._dicts[cur].get("file_name")
            logger.warning(f"The mapper skipped item {cur} ({name}); trying the next one.")
        raise RuntimeError(
            f"The training mapper returned None for {self._max_retries + 1} consecutive items starting at "
            f"index {index}: check the dataset and INPUT.DATASET_MAPPER_NAME."
        )


def build_knet_train_loader(cfg, mapper, start_iter: int = 0, seed: Optional[int] = None, dataset=None):
    """detectron2's ``build_detection_train_loader`` over a :class:`SeededMapDataset` and a
    :class:`KNetResumableTrainingSampler` that starts at iteration ``start_iter``.

    Args:
        cfg: reads ``DATASETS.TRAIN``, ``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH`` and ``SEED``.
        mapper: the training mapper (callable on one dataset dict).
        start_iter: first iteration the loader feeds (the position ``start_iter * IMS_PER_BATCH`` of the
            global stream).
        seed: overrides the seed; by default ``cfg.SEED`` when >= 0, else a random seed shared by all ranks.
        dataset: the list of dataset dicts (default: ``get_detection_dataset_dicts(DATASETS.TRAIN)``).
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
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = KNetResumableTrainingSampler(
        len(dicts), seed=seed, shuffle=True, start=start_iter * cfg.SOLVER.IMS_PER_BATCH
    )
    return build_detection_train_loader(
        SeededMapDataset(dicts, mapper),
        mapper=None,  # SeededMapDataset maps
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
