"""K-Net dataset mappers, registered in ``KNET_MAPPER_REGISTRY`` and chosen by ``INPUT.DATASET_MAPPER_NAME``:
``knet_panoptic``, ``knet_instance``, ``knet_semantic``, ``knet_panoptic_lsj``, ``knet_instance_lsj``."""
from .augmentations import PhotometricDistortion, PhotometricDistortionTransform, RatioRangeResize
from .instance_lsj_mapper import KNetInstanceLSJDatasetMapper
from .instance_mapper import KNetInstanceDatasetMapper
from .panoptic_lsj_mapper import KNetPanopticLSJDatasetMapper
from .panoptic_mapper import KNetPanopticDatasetMapper
from .registry import KNET_MAPPER_REGISTRY, build_mapper
from .semantic_mapper import KNetSemanticDatasetMapper
from .utils import DatasetMetadataError

__all__ = [
    "KNET_MAPPER_REGISTRY",
    "build_mapper",
    "DatasetMetadataError",
    "RatioRangeResize",
    "PhotometricDistortion",
    "PhotometricDistortionTransform",
    "KNetPanopticDatasetMapper",
    "KNetPanopticLSJDatasetMapper",
    "KNetInstanceDatasetMapper",
    "KNetInstanceLSJDatasetMapper",
    "KNetSemanticDatasetMapper",
]
