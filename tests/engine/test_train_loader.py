"""The resumable training data order: the sampler restarts where it stopped, and each sample is mapped with
its own seed without touching the caller's generators."""
import itertools
import random

import numpy as np
import torch

from knet.engine import KNetResumableTrainingSampler, SeededMapDataset


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumable_sampler_restarts_where_it_stopped():
    full = _take(KNetResumableTrainingSampler(5, seed=3), 40)
    assert sorted(i for i, _ in full[:5]) == list(range(5))  # each epoch is a permutation
    for start in (1, 7, 12, 25):
        assert _take(KNetResumableTrainingSampler(5, seed=3, start=start), 40 - start) == full[start:]
    seeds = [s for _, s in full]
    assert len(set(seeds)) == len(seeds)  # every position gets its own augmentation seed
    assert _take(KNetResumableTrainingSampler(5, seed=4), 40) != full


def test_seeded_map_dataset_is_reproducible_and_restores_rng():
    def mapper(d):
        return d["v"], np.random.rand(), random.random(), torch.rand(1).item()

    ds = SeededMapDataset([{"v": i} for i in range(3)], mapper)
    np.random.seed(1)
    state = np.random.get_state()[1].copy()
    a = ds[(2, 1234)]
    assert np.array_equal(np.random.get_state()[1], state)  # caller's generator untouched
    np.random.rand(5)
    torch.rand(3)
    assert ds[(2, 1234)] == a and ds[(2, 99)] != a and a[0] == 2
    # the mapper's torch draws come from the CPU generator seeded with the item's seed, as torch.manual_seed
    assert a[3] == torch.rand(1, generator=torch.Generator().manual_seed(1234)).item()
