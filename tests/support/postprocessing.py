"""Inputs and options of the post-processing tests (tests/modeling/postprocessing/).

* :func:`panoptic_options`, :func:`instance_options`, :func:`panoptic_rules`: the keyword arguments of the
  post-processing functions with ``MODEL.KNET.TEST``'s defaults (read from ``add_knet_config``, their one
  place), overridable;
* :func:`random_maps`, :func:`structured_maps`, :func:`trained_like_maps`, :func:`near_tie_maps`: class and
  stride-4 mask logits with the structures the exact panoptic mode must survive, and :data:`SIZES`, the
  (image size, output size) pairs of a 96 x 120 padded input they are checked at.
"""

import functools
import math

import torch
from detectron2.config import get_cfg
from torch.nn import functional as F

from knet import add_knet_config
from knet.modeling.postprocessing import PanopticRules

STRIDE = 4  # of K-Net's mask logits


@functools.lru_cache(maxsize=1)
def _test_defaults():
    cfg = get_cfg()
    add_knet_config(cfg)
    return cfg.MODEL.KNET.TEST


PANOPTIC_KEYS = dict(thing_score_threshold="PANOPTIC_THING_SCORE_THRESHOLD",
                     overlap_threshold="OVERLAP_THRESHOLD", mask_threshold="MASK_THRESHOLD",
                     mode="PANOPTIC_MODE", soft_boundaries="SOFT_BOUNDARIES")
INSTANCE_KEYS = dict(max_per_image="MAX_PER_IMAGE", mask_threshold="MASK_THRESHOLD",
                     score_threshold="INSTANCE_SCORE_THRESHOLD")


def _options(keys, overrides):
    t = _test_defaults()
    return {"stride": STRIDE, **{name: t[key] for name, key in keys.items()}, **overrides}


def panoptic_options(**overrides):
    """Keyword options of ``panoptic_inference`` (``stride``, thresholds, ``mode``, ``soft_boundaries``)."""
    return _options(PANOPTIC_KEYS, overrides)


def instance_options(**overrides):
    """Keyword options of ``instance_inference``."""
    return _options(INSTANCE_KEYS, overrides)


def panoptic_rules(num_proposals, num_thing_classes, **overrides) -> PanopticRules:
    """The :class:`PanopticRules` of :func:`panoptic_options` (for ``panoptic_inference_full_resolution``)."""
    o = panoptic_options(**overrides)
    del o["mode"], o["soft_boundaries"]
    return PanopticRules(num_proposals=num_proposals, num_thing_classes=num_thing_classes, **o)


# (image size inside the 96 x 120 padded input, output size): identity, up, down, odd, 1 pixel wide / tall
SIZES = [
    ((96, 120), (96, 120)),
    ((93, 118), (186, 236)),
    ((93, 118), (61, 300)),
    ((89, 117), (250, 1)),
    ((90, 101), (1, 333)),
    ((95, 119), (157, 203)),
    ((77, 113), (517, 731)),
]


def random_maps(seed, n_things=10, n_stuff=4, num_thing_classes=6, h4=24, w4=30, grid=(4, 5), amp=6.0):
    """Smooth random logits (many overlapping kernels) and random class logits. Returns cls (N, C),
    masks (N, h4, w4) and the ``num_proposals`` / ``num_thing_classes`` keywords."""
    g = torch.Generator().manual_seed(seed)
    n = n_things + n_stuff
    cls = torch.randn(n, num_thing_classes + n_stuff, generator=g) * 3
    masks = F.interpolate(torch.randn(1, n, *grid, generator=g) * amp, (h4, w4), mode="bilinear")[0]
    return cls, masks, dict(num_proposals=n_things, num_thing_classes=num_thing_classes)


def structured_maps(seed, h4=24, w4=30):
    """Blocks with exact ties: a duplicated kernel (same logits, same score), saturated probabilities
    (sigmoid = 1.0) under equal scores, a kernel whose overlap ratio sits near the threshold."""
    g = torch.Generator().manual_seed(seed)
    n_things, n_stuff, T = 8, 3, 5
    n = n_things + n_stuff
    cls = torch.full((n, T + n_stuff), -6.0)
    masks = torch.full((n, h4, w4), -9.0)
    y, x = torch.meshgrid(torch.arange(h4).float(), torch.arange(w4).float(), indexing="ij")
    for j in range(n_stuff):  # vertical stuff bands with soft edges
        lo, hi = j * w4 / n_stuff, (j + 1) * w4 / n_stuff
        masks[n_things + j] = (torch.minimum(x - lo + 0.5, hi - 0.5 - x) * 3).clamp(-12, 12)
        cls[n_things + j, T + j] = 2.0
    for k in range(4):  # thing blocks
        y0, x0 = torch.randint(0, h4 - 6, (2,), generator=g).tolist()
        masks[k] = -9.0
        masks[k, y0 : y0 + 6, x0 : x0 + 8] = 20.0  # saturated: sigmoid(20) == 1.0 in float32
        cls[k, k % T] = 1.5
    masks[4] = masks[0]  # a duplicate of kernel 0: every value ties, the lower index wins
    cls[4] = cls[0]
    masks[5] = masks[1].roll(3, 1)  # saturated overlap with kernel 1 under the same score
    cls[5] = cls[1]
    masks[6] = masks[2].roll(2, 0) * 0.3  # a weak kernel mostly hidden by kernel 2 (overlap test)
    cls[6, 3] = 2.5
    return cls, masks, dict(num_proposals=n_things, num_thing_classes=T)


def trained_like_maps(seed, h4=24, w4=30, n_things=20, n_stuff=6, num_thing_classes=10, present=(5, 4)):
    """The structure of a trained model: a few stuff kernels tiling the image with confident logits, a few
    confident thing blobs (overlapping), every other kernel confidently off."""
    g = torch.Generator().manual_seed(seed)
    n = n_things + n_stuff
    C = num_thing_classes + n_stuff
    cls = torch.full((n, C), -6.0) + torch.randn(n, C, generator=g) * 0.3
    masks = -8.0 + torch.randn(n, h4, w4, generator=g) * 0.5
    y, x = torch.meshgrid(torch.arange(h4).float(), torch.arange(w4).float(), indexing="ij")
    k_stuff = torch.randperm(n_stuff, generator=g)[: present[1]].tolist()
    fields = F.interpolate(torch.randn(1, len(k_stuff), 3, 4, generator=g), (h4, w4), mode="bicubic")[0]
    for i, k in enumerate(k_stuff):
        others = torch.cat([fields[:i], fields[i + 1 :]]).amax(0)
        masks[n_things + k] = ((fields[i] - others) * 30).clamp(-12, 12)
        cls[n_things + k, num_thing_classes + k] = 1.0 + 3.0 * float(torch.rand((), generator=g))
    for t in torch.randperm(n_things, generator=g)[: present[0]].tolist():
        cy, cx, ry, rx = torch.rand(4, generator=g).tolist()
        ry, rx = 0.08 + 0.25 * ry, 0.08 + 0.25 * rx
        d = torch.sqrt(((y / h4 - cy) / ry) ** 2 + ((x / w4 - cx) / rx) ** 2) - 1
        masks[t] = (-d * 3 * min(ry * h4, rx * w4)).clamp(-12, 12)
        label = int(torch.randint(num_thing_classes, (1,), generator=g))
        cls[t, label] = 0.5 + 3 * float(torch.rand((), generator=g))
    return cls, masks, dict(num_proposals=n_things, num_thing_classes=num_thing_classes)


def near_tie_maps(seed, h4=24, w4=30):
    """Adversarial near-ties for the exact mode's pruning rules: kernels within float32 rounding of each
    other (not bit-identical) over whole blocks, a third kernel just below two tied ones (the candidates'
    bound), scores differing in the last bits, probabilities at and around 0.5 (the mask threshold: logits 0
    and +-1e-7) on large areas, so that the overlap ratios depend on them; and a majority of unused kernels
    (bounded by their peak, not compared per cell), one of which wins a zone where every other is ~0."""
    g = torch.Generator().manual_seed(seed)
    n_things, n_stuff, T = 20, 3, 5
    n = n_things + n_stuff
    cls = torch.full((n, T + n_stuff), -6.0)
    base = F.interpolate(torch.randn(1, 3, 4, 5, generator=g) * 4, (h4, w4), mode="bilinear")[0]
    masks = torch.full((n, h4, w4), -9.0)
    for j in range(n_stuff):  # stuff tiles the image: argmax of smooth fields
        masks[n_things + j] = (base[j] - base.amax(0) + 0.5) * 6
        cls[n_things + j, T + j] = 1.0
    masks[0] = base[0] * 2
    cls[0, 0] = 2.0
    eps = 1e-6 * torch.randn(h4, w4, generator=g)
    masks[1] = masks[0] + eps  # within rounding of kernel 0 at every cell (some bit-identical)
    cls[1] = cls[0]
    masks[2] = masks[0] - 1e-5  # just below kernels 0 and 1: the third of their cells
    cls[2] = cls[0]
    masks[3] = masks[0]
    cls[3, 1] = float(torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)))  # a score 1 ulp above
    masks[4] = torch.where(base[1] > 0, 0.0, -9.0)  # probability exactly 0.5 on a large area
    cls[4, 2] = 3.0
    masks[5] = torch.where(base[2] > 0, 1e-7, -1e-7)  # probabilities within 3e-8 of 0.5
    cls[5, 3] = 3.0
    masks[6] = masks[4] + 1e-7 * torch.randn(h4, w4, generator=g)
    cls[6, 4] = 3.0
    zone = (slice(h4 // 3, h4 // 3 + 5), slice(w4 // 2, w4 // 2 + 6))
    masks[(slice(None),) + zone] = -30.0  # every kernel ~1e-13 there, except an unused one
    masks[(12,) + zone] = -2.0
    return cls, masks, dict(num_proposals=n_things, num_thing_classes=T)


BIG = 8.0  # logit of a confident cell


def logit(p):
    return math.log(p / (1 - p))


def block_masks(n, h, w, boxes):
    """(n, h, w) logits: +BIG inside each (y0, y1, x0, x1) box of ``boxes`` {kernel: box}, -BIG elsewhere."""
    m = torch.full((n, h, w), -BIG)
    for k, (y0, y1, x0, x1) in boxes.items():
        m[k, y0:y1, x0:x1] = BIG
    return m


def panoptic_case():
    """P = 3 thing kernels, 2 stuff kernels; T = 2 thing classes, C = 4; 6 x 8 mask cells (24 x 32 input)."""
    cls = torch.full((5, 4), -10.0)
    cls[0, 1] = logit(0.9)  # thing, class 1, score 0.9: top-left
    cls[1, 0] = logit(0.29)  # thing below the 0.3 threshold
    cls[2, 0] = logit(0.8)  # thing, half hidden by kernel 0 (keeps 3 of 6 cells) -> overlap test fails
    cls[3, 2] = logit(0.05)  # stuff class 2, low score but stuff has no threshold
    cls[4, 3] = logit(0.5)  # stuff class 3, its mask is empty
    masks = block_masks(5, 6, 8, {0: (0, 3, 0, 4), 1: (3, 6, 0, 4), 2: (0, 3, 3, 5), 3: (0, 6, 4, 8)})
    return cls, masks
