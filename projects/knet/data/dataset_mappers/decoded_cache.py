"""A bounded in-memory cache of decoded training files (``DATALOADER.DECODED_CACHE_MB``).

On a small dataset trained for many epochs, decoding the same PNGs again and again is a large share of what a
training step waits for on a few CPU cores: with copy-paste the panoptic mapper needs 7.0 CPU-ms per 256-px
training image, 2.5 with this cache (3.8 and 1.3 without copy-paste; docs/quickstart_experiments.md). The
cache keeps what a mapper decoded (and, for the panoptic mapper with one training size, the image and segment
map resized to it: ``KNetDatasetMapperBase.augment``), up to a size in MB, least recently used first out.
Values are stored read-only, so a mapper that wrote into one would fail loudly instead of corrupting later
samples; reads give the same arrays as computing them again, so training is unchanged bit for bit. Each
data-loader process has its own.
"""
from collections import OrderedDict
from typing import Callable, Hashable, Tuple

import numpy as np

__all__ = ["DecodedCache"]


def _arrays(value) -> Tuple[np.ndarray, ...]:
    return tuple(v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, np.ndarray))


class DecodedCache:
    """Least-recently-used cache of arrays (or tuples holding arrays) bounded by their total ``nbytes``."""

    def __init__(self, max_mb: float = 0.0):
        """
        Args:
            max_mb: the most megabytes (2**20 bytes) of arrays kept; 0 turns the cache off (every ``get``
                calls its loader).
        """
        if isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or max_mb < 0:
            raise ValueError(f"DATALOADER.DECODED_CACHE_MB must be a number >= 0 (0: off), got {max_mb!r}.")
        self.max_bytes = int(max_mb * 2**20)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: "OrderedDict[Hashable, tuple]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, load: Callable[[], object]):
        """The cached value of ``key``, else ``load()``, kept (read-only) if it fits. Exceptions of ``load``
        propagate and nothing is kept."""
        if self.max_bytes <= 0:
            return load()
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]
        self.misses += 1
        value = load()
        arrays = _arrays(value)
        size = sum(a.nbytes for a in arrays)
        if size > self.max_bytes:
            return value
        for a in arrays:
            a.flags.writeable = False
        self._items[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.nbytes -= evicted
        return value
