"""What every K-Net mapper shares: its attributes, the arguments it reads from the config, the test-time path
and the first training steps (copy the record, read and check the image)."""
import copy
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .decoded_cache import DecodedCache
from .utils import map_test_image

__all__ = ["KNetDatasetMapperBase", "build_resize_augmentation"]


def build_resize_augmentation(cfg, is_train: bool) -> List:
    """The augmentations of detectron2's ``DatasetMapper`` (``detectron2/data/dataset_mapper.py``,
    ``from_config``): shortest-edge resize (``INPUT.MIN_SIZE_*``/``MAX_SIZE_*``) and, in training, flip per
    ``INPUT.RANDOM_FLIP``, with ``INPUT.CROP`` (``T.RandomCrop(CROP.TYPE, CROP.SIZE)``) inserted first when
    ``INPUT.CROP.ENABLED``: the crop is taken in the image's own pixels, then resized. An ``"absolute"``
    crop of ``MIN_SIZE_TRAIN`` x ``MIN_SIZE_TRAIN`` (a single size) is thus a window at the image's own
    scale (its resize is the identity; an image smaller than the crop keeps its size in that dimension and
    is then resized); ``MIN_SIZE_TEST`` 0 tests whole images at that scale."""
    augs = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augs


class KNetDatasetMapperBase:
    """Base of the registered K-Net mappers (each keeps its own ``@configurable __init__`` and
    ``from_config``).

    ``USES_INPUT_CROP``: whether the mapper applies ``INPUT.CROP`` (the pre-flight refuses ``CROP.ENABLED``
    with a mapper that would silently ignore it); ``USES_COPY_PASTE``: the same for ``INPUT.COPY_PASTE_PROB``.

    Subclasses call ``super().__init__(...)`` from their ``__init__`` and implement :meth:`map_train`; calling
    the mapper runs :func:`~.utils.map_test_image` at test time, else copies the record, reads the image in
    ``image_format``, checks its size against the record and hands both to :meth:`map_train`.
    """

    USES_INPUT_CROP = False
    USES_COPY_PASTE = False

    def __init__(self, is_train: bool, *, augmentations: List, image_format: str,
                 pad_size: Optional[Tuple[int, int]] = None, image_pad_value=0,
                 decoded_cache_mb: float = 0.0):
        """
        Args:
            is_train: training (targets) or test mode (image only).
            augmentations: detectron2 augmentations (applied to the image and its targets).
            image_format: ``INPUT.FORMAT``.
            pad_size: (h, w) to pad the training outputs to after augmentation (None: no padding).
            image_pad_value: image padding value (scalar or per channel).
            decoded_cache_mb: MB of decoded training files kept in memory (``DATALOADER.DECODED_CACHE_MB``,
                :class:`~.decoded_cache.DecodedCache`; 0: off).
        """
        self.is_train = is_train
        self.decoded_cache = DecodedCache(decoded_cache_mb)
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.pad_size = tuple(pad_size) if pad_size is not None else None
        self.image_pad_value = image_pad_value
        mode = "training" if is_train else "inference"
        logging.getLogger(type(self).__module__).info(
            f"[{type(self).__name__}] augmentations in {mode}: {augmentations}"
        )

    @staticmethod
    def common_config(cfg, is_train: bool) -> Dict:
        """The ``from_config`` arguments every mapper reads the same way (``INPUT.FORMAT``; in training
        ``DATALOADER.DECODED_CACHE_MB``)."""
        cache_mb = cfg.DATALOADER.DECODED_CACHE_MB if is_train else 0.0
        return {"is_train": is_train, "image_format": cfg.INPUT.FORMAT, "decoded_cache_mb": cache_mb}

    def __call__(self, dataset_dict: Dict) -> Dict:
        if not self.is_train:
            return map_test_image(dataset_dict, self.augmentations, self.image_format)
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.read_image(dataset_dict["file_name"])
        utils.check_image_size(dataset_dict, image)
        return self.map_train(dataset_dict, image)

    def augment(self, aug_input: T.AugInput, cache_key=None) -> None:
        """Apply the mapper's augmentations to ``aug_input`` in place (``T.AugmentationList`` semantics).

        When the list starts with a shortest-edge resize and the decoded cache is on, that resize's output
        depends only on the record and the size drawn; with one training size (the CPU recipes' single
        ``INPUT.MIN_SIZE_TRAIN``) it is the same every epoch. It is then kept in the cache under
        ``cache_key`` (which must name everything ``aug_input`` was read from) and the size drawn, and a
        record is resized once instead of every time it is drawn. The resize is still drawn by the
        augmentation itself, so the random stream and every sample stay the same bit for bit.
        """
        augs = self.augmentations.augs
        cacheable = (cache_key is not None and self.decoded_cache.max_bytes > 0 and len(augs) > 0
                     and isinstance(augs[0], T.ResizeShortestEdge) and aug_input.boxes is None)
        if not cacheable:
            self.augmentations(aug_input)
            return
        tfm = augs[0].get_transform(aug_input.image)  # the draw ``augs[0](aug_input)`` would make
        if isinstance(tfm, T.ResizeTransform):
            def resize():
                aug_input.transform(tfm)
                return aug_input.image, aug_input.sem_seg
            key = ("resized", cache_key, tfm.h, tfm.w, tfm.new_h, tfm.new_w, tfm.interp)
            aug_input.image, aug_input.sem_seg = self.decoded_cache.get(key, resize)
        else:
            aug_input.transform(tfm)
        for aug in augs[1:]:
            aug(aug_input)

    def read_image(self, file_name: str) -> np.ndarray:
        """A training image (H, W, C) in ``image_format`` (``detectron2.data.detection_utils.read_image``),
        through the decoded cache (read-only when it comes from there)."""
        return self.decoded_cache.get(("image", file_name, self.image_format),
                                      lambda: utils.read_image(file_name, format=self.image_format))

    def map_train(self, dataset_dict: Dict, image: np.ndarray) -> Dict:
        """Training targets of one record (a private copy) whose image (H, W, C) uint8 is already read."""
        raise NotImplementedError
