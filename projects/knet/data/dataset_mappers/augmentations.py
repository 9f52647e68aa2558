"""Augmentations of mmsegmentation's ADE20K recipe, as detectron2 ``Augmentation``/``Transform`` objects.

They draw their random parameters from ``np.random`` in ``get_transform`` (the detectron2 convention,
seeded per data-loader worker) and return a deterministic ``Transform``. Behaviour follows mmsegmentation 0.x
``mmseg/datasets/pipelines/transforms.py`` (``Resize`` with ``ratio_range`` + ``keep_ratio``, and
``PhotoMetricDistortion``), which the K-Net semantic configs use (K-Net, Zhang et al., NeurIPS 2021, Sec. 4).
"""
from typing import Optional, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform
from PIL import Image

__all__ = ["RatioRangeResize", "PhotometricDistortion", "PhotometricDistortionTransform"]


class RatioRangeResize(T.Augmentation):
    """Resize keeping the aspect ratio into a random multiple of a (long, short) scale.

    A ratio ``r ~ U[low, high]`` scales ``scale = (long, short)`` to ``(int(long * r), int(short * r))``;
    the image is then scaled by ``min(long' / max(h, w), short' / min(h, w))`` (mmcv ``rescale_size``),
    rounding to nearest.
    """

    def __init__(self, scale: Tuple[int, int] = (2048, 512), ratio_range: Tuple[float, float] = (0.5, 2.0),
                 interp=Image.BILINEAR):
        super().__init__()
        if len(scale) != 2 or len(ratio_range) != 2 or ratio_range[0] > ratio_range[1] or ratio_range[0] <= 0:
            raise ValueError(f"RatioRangeResize needs scale=(long, short) and 0 < low <= high ratio_range, "
                             f"got "
                             f"scale={scale}, ratio_range={ratio_range}")
        self._init(locals())

    def get_output_shape(self, h: int, w: int, ratio: float) -> Tuple[int, int]:
        long_edge, short_edge = int(max(self.scale) * ratio), int(min(self.scale) * ratio)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))

    def get_transform(self, image):
        h, w = image.shape[:2]
        low, high = self.ratio_range
        ratio = np.random.random_sample() * (high - low) + low
        new_h, new_w = self.get_output_shape(h, w, ratio)
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


def _affine_clip(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotometricDistortionTransform(Transform):
    """Brightness shift, contrast scale (before or after the HSV steps), saturation scale and hue shift.

    A parameter set to None skips its step. Labels and coordinates are unchanged.
    """

    def __init__(self, brightness_delta: Optional[float] = None, contrast_alpha: Optional[float] = None,
                 contrast_first: bool = True, saturation_alpha: Optional[float] = None,
                 hue_delta: Optional[int] = None, image_format: str = "RGB"):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"PhotometricDistortion supports INPUT.FORMAT 'RGB' or 'BGR', got {image_format!r}"
            )
        self._set_attributes(locals())

    def _to_hsv(self, img):
        return cv2.cvtColor(img, cv2.COLOR_RGB2HSV if self.image_format == "RGB" else cv2.COLOR_BGR2HSV)

    def _from_hsv(self, img):
        return cv2.cvtColor(img, cv2.COLOR_HSV2RGB if self.image_format == "RGB" else cv2.COLOR_HSV2BGR)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8:
            raise TypeError(f"PhotometricDistortion expects uint8 images, got {img.dtype}")
        if self.brightness_delta is not None:
            img = _affine_clip(img, beta=self.brightness_delta)
        if self.contrast_first and self.contrast_alpha is not None:
            img = _affine_clip(img, alpha=self.contrast_alpha)
        if self.saturation_alpha is not None:
            hsv = self._to_hsv(np.ascontiguousarray(img))
            hsv[..., 1] = _affine_clip(hsv[..., 1], alpha=self.saturation_alpha)
            img = self._from_hsv(hsv)
        if self.hue_delta is not None:
            hsv = self._to_hsv(np.ascontiguousarray(img))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + self.hue_delta) % 180
            img = self._from_hsv(hsv)
        if not self.contrast_first and self.contrast_alpha is not None:
            img = _affine_clip(img, alpha=self.contrast_alpha)
        return img

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        raise NotImplementedError("PhotometricDistortionTransform is not invertible")


class PhotometricDistortion(T.Augmentation):
    """mmseg ``PhotoMetricDistortion``: each step applied with probability 1/2, contrast first or last
    (1/2 each).

    Random draws happen in mmseg's order: brightness (coin, delta ~ U[-d, d]), mode (contrast first?),
    [contrast], saturation (coin, alpha), hue (coin, integer delta in [-h, h)), [contrast].
    """

    def __init__(self, brightness_delta: float = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18, image_format: str = "RGB"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        brightness = None
        if np.random.randint(2):
            brightness = float(np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(np.random.randint(2))
        contrast = None

        def draw_contrast():
            if np.random.randint(2):
                return float(np.random.uniform(*self.contrast_range))
            return None

        if contrast_first:
            contrast = draw_contrast()
        saturation = float(np.random.uniform(*self.saturation_range)) if np.random.randint(2) else None
        hue = int(np.random.randint(-self.hue_delta, self.hue_delta)) if np.random.randint(2) else None
        if not contrast_first:
            contrast = draw_contrast()
        return PhotometricDistortionTransform(brightness, contrast, contrast_first, saturation, hue,
                                              self.image_format)
