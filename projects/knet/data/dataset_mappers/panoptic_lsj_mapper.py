"""``knet_panoptic_lsj``: the COCO panoptic mapper with large-scale jitter.

Flip, ``ResizeScale(MIN_SCALE..MAX_SCALE)`` of an ``IMAGE_SIZE`` square, ``FixedSizeCrop(IMAGE_SIZE)``, then
padding to exactly ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (the "new baseline" recipe of Mask2Former's
``coco_panoptic_new_baseline_dataset_mapper.py``, following Ghiasi et al., "Simple Copy-Paste", CVPR 2021).
"""
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .panoptic_mapper import KNetPanopticDatasetMapper
from .registry import KNET_MAPPER_REGISTRY

__all__ = ["KNetPanopticLSJDatasetMapper", "build_lsj_augmentation"]


def build_lsj_augmentation(cfg, is_train: bool):
    """Large-scale jitter in training (flip per ``INPUT.RANDOM_FLIP``, random scale, fixed-size crop without
    padding: the mapper pads itself); the shortest-edge test resize otherwise."""
    if not is_train:
        return utils.build_augmentation(cfg, False)
    size = cfg.INPUT.IMAGE_SIZE
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    augs += [
        T.ResizeScale(min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE, target_height=size,
                      target_width=size),
        T.FixedSizeCrop(crop_size=(size, size), pad=False),
    ]
    return augs


# The LSJ recipe pads the uint8 image with 128 before normalisation: detectron2's ``T.FixedSizeCrop``
# (``pad_value=128.0``, ``seg_pad_value=255``; ``detectron2/data/transforms/augmentation_impl.py``), as used
# unchanged by Mask2Former's ``coco_{panoptic,instance}_new_baseline_dataset_mapper.py::build_transform_gen``
# and detectron2's ``configs/new_baselines/*_LSJ.py``. (The official K-Net has no LSJ recipe; the non-LSJ
# mappers pad nothing and the model pads the normalised batch with 0, as mmdet 2.x ``Normalize`` + ``Pad``.)
LSJ_IMAGE_PAD_VALUE = 128


def lsj_pad_value(cfg):
    """Image padding of the LSJ recipe: 128 in every channel, before normalisation (see above)."""
    return LSJ_IMAGE_PAD_VALUE


def with_lsj(mapper_args: dict, cfg, is_train: bool) -> dict:
    """Turn a mapper's ``from_config`` arguments into its large-scale-jitter variant: LSJ augmentations and,
    in training, padding to ``INPUT.IMAGE_SIZE`` (image: 128, before normalisation)."""
    mapper_args["augmentations"] = build_lsj_augmentation(cfg, is_train)
    if is_train:
        mapper_args["pad_size"] = (cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE)
        mapper_args["image_pad_value"] = lsj_pad_value(cfg)
    return mapper_args


@KNET_MAPPER_REGISTRY.register_as("knet_panoptic_lsj")
class KNetPanopticLSJDatasetMapper(KNetPanopticDatasetMapper):
    """:class:`KNetPanopticDatasetMapper` with large-scale jitter; training outputs are
    IMAGE_SIZE x IMAGE_SIZE
    (padding: image = 128 before normalisation, masks = False, sem_seg = ignore_label)."""

    USES_INPUT_CROP = False  # crops to INPUT.IMAGE_SIZE itself

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return with_lsj(super().from_config(cfg, is_train), cfg, is_train)
