"""``knet_instance_lsj``: the COCO instance mapper with large-scale jitter.

Flip, ``ResizeScale(MIN_SCALE..MAX_SCALE)`` of an ``IMAGE_SIZE`` square, ``FixedSizeCrop(IMAGE_SIZE)``,
padding to exactly ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (as Mask2Former's
``coco_instance_new_baseline_dataset_mapper.py``).
"""
from .instance_mapper import KNetInstanceDatasetMapper
from .panoptic_lsj_mapper import with_lsj
from .registry import KNET_MAPPER_REGISTRY

__all__ = ["KNetInstanceLSJDatasetMapper"]


@KNET_MAPPER_REGISTRY.register_as("knet_instance_lsj")
class KNetInstanceLSJDatasetMapper(KNetInstanceDatasetMapper):
    """:class:`KNetInstanceDatasetMapper` with large-scale jitter; training outputs are
    IMAGE_SIZE x IMAGE_SIZE
    (padding: image = 128 before normalisation, masks = False); instances cropped away entirely are
    dropped."""

    USES_INPUT_CROP = False  # crops to INPUT.IMAGE_SIZE itself

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return with_lsj(super().from_config(cfg, is_train), cfg, is_train)
