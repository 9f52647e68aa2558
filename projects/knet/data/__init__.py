"""K-Net data: importing this module registers the dataset mappers and the datasets."""
from . import dataset_mappers  # noqa: F401  (registers the mappers in KNET_MAPPER_REGISTRY)
from . import datasets  # noqa: F401  (registers the knet_synthetic_* datasets)
from .dataset_mappers import KNET_MAPPER_REGISTRY, build_mapper  # noqa: F401
from .datasets import ensure_synthetic_dataset  # noqa: F401
