"""``knet_instance_lsj``: the COCO instance mapper with large-scale jitter.

Flip, ``ResizeScale(MIN_SCALE..MAX_SCALE)`` of an ``IMAGE_SIZE`` square, ``FixedSizeCrop(IMAGE_SIZE)``,
padding to exactly ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (as Mask2Former's
``coco_instance_new_baseline_dataset_mapper.py``).
"""
from .instance_mapper import KNetInstanceDatasetMapper
from .panoptic_lsj_mapper import build_lsj_augmentation, lsj_pad_value
from .registry import KNET_MAPPER_REGISTRY

__all__ = ["KNetInstanceLSJDatasetMapper"]


@KNET_MAPPER_REGISTRY.register_as("knet_instance_lsj")
class KNetInstanceLSJDatasetMapper(KNetInstanceDatasetMapper):
    """:class:`KNetInstanceDatasetMapper` with large-scale jitter; training outputs are
    IMAGE_SIZE x IMAGE_SIZE
    (padding: image = pixel mean, masks = False); instances cropped away entirely are dropped."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_lsj_augmentation(cfg, is_train)
        if is_train:
            ret["pad_size"] = (cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE)
            ret["image_pad_value"] = lsj_pad_value(cfg)
        return ret
