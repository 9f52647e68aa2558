"""``RandomStateHook``: the global random generators' states in the checkpoint, for bit-exact resume."""
import random

import numpy as np
import torch
from detectron2.engine import HookBase

__all__ = ["RandomStateHook"]


class RandomStateHook(HookBase):
    """Saves the states of Python's, numpy's and torch's global generators with every checkpoint (detectron2
    collects hooks' ``state_dict`` into the trainer's) and restores them on resume, so that a resumed run
    draws the same numbers as an uninterrupted one. The states are tensors and ints (loadable by
    ``torch.load(weights_only=True)``)."""

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(state["torch"])
