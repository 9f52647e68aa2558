"""K-Net inference post-processing as pure functions, one image at a time.

Reference: ``ZwwWayne/K-Net:knet/det/kernel_iter_head.py`` (``simple_test``, ``get_panoptic``,
``merge_stuff_thing``) and ``knet/det/kernel_update_head.py`` (``rescale_masks``, ``get_seg_masks``). The
reference applies the sigmoid at stride 4, resizes *all* masks bilinearly to the padded input size, crops them
to the resized image and resizes them to the original size, and only then decides.

One concern per module:

* :mod:`.panoptic`: :func:`panoptic_inference` (one entry, ``MODEL.KNET.TEST.PANOPTIC_MODE``) and
  :func:`resolve_panoptic_mode`;
* :mod:`.fusion`: the fusion rules every panoptic mode shares (kernel scores, ``merge_stuff_thing``'s
  decisions, segments_info);
* :mod:`.reference`: :func:`panoptic_inference_full_resolution`, the reference order itself;
* :mod:`.panoptic_exact` (default mode), with :mod:`.bilinear` (torch's bilinear resize read and reproduced),
  :mod:`.runs` (output pixels grouped by the cells they read) and :mod:`.pixel_values` (values at sparse
  pixels): the reference's result pixel for pixel, evaluating only pixels near borders;
* :mod:`.approximate`: the opt-in modes deciding on the stride-4 cells;
* :mod:`.instance`: :func:`instance_inference` (top-k (kernel, class) pairs, only their maps resized);
* :mod:`.semantic`: :func:`semantic_inference` (per-class scores; the reference has none for these models);
* :mod:`.resize`: cropping and resizing of stride-4 maps, as the reference aligns them.
"""

from .fusion import PanopticRules, kernel_scores
from .instance import instance_inference
from .panoptic import PANOPTIC_MODES, panoptic_inference, resolve_panoptic_mode
from .panoptic_exact import LAST_EXACT_STATS
from .reference import panoptic_inference_full_resolution
from .resize import cell_coverage, crop_to_image, nearest_cells, upsample_probs
from .semantic import semantic_inference

__all__ = [
    "PANOPTIC_MODES",
    "LAST_EXACT_STATS",
    "PanopticRules",
    "resolve_panoptic_mode",
    "panoptic_inference",
    "panoptic_inference_full_resolution",
    "instance_inference",
    "semantic_inference",
    "kernel_scores",
    "crop_to_image",
    "upsample_probs",
    "nearest_cells",
    "cell_coverage",
]
