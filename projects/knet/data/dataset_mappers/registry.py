"""``KNET_MAPPER_REGISTRY`` and ``build_mapper``: the data recipe is chosen by
``INPUT.DATASET_MAPPER_NAME``."""
from detectron2.utils.registry import Registry

__all__ = ["KNET_MAPPER_REGISTRY", "build_mapper"]


class _MapperRegistry(Registry):
    """A registry whose entries are registered under an explicit lower-case name (``knet_panoptic``)."""

    def register_as(self, name: str):
        if not name.startswith("knet_"):
            raise ValueError(f"K-Net mapper names must start with 'knet_', got {name!r}")

        def deco(cls):
            self._do_register(name, cls)
            cls.MAPPER_NAME = name
            return cls

        return deco


KNET_MAPPER_REGISTRY = _MapperRegistry("KNET_MAPPER")
KNET_MAPPER_REGISTRY.__doc__ = """
Dataset mappers of K-Net: each turns one detectron2 dataset dict into the model input of the data contract
(docs/architecture.md): ``image`` uint8 (3, H, W), ``height``/``width``, and in training ``instances``
(``gt_classes`` int64, ``gt_masks`` bool (N, H, W)) and/or ``sem_seg`` int64 (H, W) with 255 = ignore.
Each entry is a ``@configurable`` class called as ``cls(cfg, is_train)``.
"""


def build_mapper(cfg, is_train: bool = True):
    """Build the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` (train or test mode).

    In training, the metadata of every dataset in ``cfg.DATASETS.TRAIN`` is checked first: a missing key fails
    here, naming the key and the dataset.
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in KNET_MAPPER_REGISTRY:
        available = ", ".join(sorted(k for k, _ in KNET_MAPPER_REGISTRY))
        raise KeyError(f"cfg.INPUT.DATASET_MAPPER_NAME={name!r} is not a registered K-Net mapper; "
                       f"choose one of: {available}")
    return KNET_MAPPER_REGISTRY.get(name)(cfg, is_train)
