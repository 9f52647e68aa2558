"""The exact panoptic mode: equal to the full-resolution reference function, which equals the official code.

* ``panoptic_inference_full_resolution`` is checked against the official ``KernelIterHead.get_panoptic`` /
  ``merge_stuff_thing`` and ``KernelUpdateHead.rescale_masks`` (ZwwWayne/K-Net, read from
  ``../shared/third_party/K-Net-5e50ee5.tar.gz`` and executed on a minimal stand-in ``self``; the official
  module imports mmdet at top level, so only these methods are extracted with ``ast``);
* the default (``mode="exact"``) is checked against it pixel for pixel, segment for segment, on random,
  structured (exact ties: duplicated kernels, saturated probabilities, equal scores) and trained-like maps at
  odd sizes (1 pixel wide, not multiples of 4 or 32, up- and downscaled outputs).
"""

import ast
import os
import tarfile
import types

import pytest
import torch
from torch.nn import functional as F

import knet.modeling.postprocessing as pp
from knet.modeling.postprocessing import panoptic_inference, panoptic_inference_full_resolution

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNET_TARBALL = os.path.join(REPO, "..", "shared", "third_party", "K-Net-5e50ee5.tar.gz")
INSTANCE_OFFSET = 1000  # mmdet 2.x ``mmdet.datasets.coco_panoptic.INSTANCE_OFFSET``


# ---- inputs -------------------------------------------------------------------------------------------


def random_maps(seed, n_things=10, n_stuff=4, num_thing_classes=6, h4=24, w4=30, grid=(4, 5), amp=6.0):
    """Smooth random logits (many overlapping kernels) and random class logits."""
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


def _compare(ref, got):
    """(differing pixels, equal segments_info)."""
    return int((ref[0] != got[0]).sum()), ref[1] == got[1]


# ---- the default equals the full-resolution reference -------------------------------------------------


@pytest.mark.parametrize("maker", [random_maps, structured_maps, trained_like_maps])
def test_exact_mode_equals_full_resolution_reference(maker):
    pixels = diff_pixels = segments = diff_segments = 0
    fast_calls = exact_values = 0
    for seed in range(2):
        cls, masks, kw = maker(seed)
        for image_size, output_size in SIZES:
            # (0.0, 0.1): keeps most kernels, so that the whole argmax map shows (and ratios sit near 0.1)
            for thr, overlap in ((0.3, 0.6), (0.0, 0.1)):
                t = dict(thing_score_threshold=thr, overlap_threshold=overlap, **kw)
                ref = panoptic_inference_full_resolution(cls, masks, image_size, output_size, **t)
                pp.LAST_EXACT_STATS.clear()
                got = panoptic_inference(cls, masks, image_size, output_size, **t)
                d, same = _compare(ref, got)
                pixels += ref[0].numel()
                diff_pixels += d
                segments += len(ref[1])
                diff_segments += len(set(map(str, ref[1])) ^ set(map(str, got[1])))
                fast_calls += pp.LAST_EXACT_STATS.get("pixels", 0) == ref[0].numel()
                exact_values += pp.LAST_EXACT_STATS.get("exact_values", 0)
                assert d == 0 and same, (maker.__name__, seed, image_size, output_size, thr, overlap, d)
    print(
        f"\n{maker.__name__}: {pixels} pixels, {diff_pixels} differ; {segments} segments, {diff_segments} "
        f"differ; fast path in {fast_calls} calls, {exact_values} values reproduced exactly"
    )
    assert fast_calls >= 2 * 2 * (len(SIZES) - 1)  # all but the tiny (96 + 120 <= 128) outputs
    if maker is structured_maps:
        assert exact_values > 0  # the exact ties went through the float32 reproduction


def test_exact_mode_large_output_and_tiny_scores():
    """800 x 1216-like geometry (stride 4, 153-kernel layout shrunk to 40 kernels) and kernels whose scores
    and probabilities are tiny (relative margins)."""
    cls, masks, kw = trained_like_maps(
        7, h4=50, w4=76, n_things=30, n_stuff=10, num_thing_classes=20, present=(8, 6)
    )
    cls[25:30] = -30.0  # scores ~1e-13
    kw["thing_score_threshold"] = 0.0
    ref = panoptic_inference_full_resolution(cls, masks, (197, 301), (331, 487), **kw)
    got = panoptic_inference(cls, masks, (197, 301), (331, 487), **kw)
    assert _compare(ref, got) == (0, True)
    assert pp.LAST_EXACT_STATS["pixels"] == 331 * 487
    assert pp.LAST_EXACT_STATS["border_pixels"] < 0.25 * 331 * 487  # only borders are evaluated


# ---- the float32 reproduction of torch's bilinear kernel ------------------------------------------------


def test_fma32_is_a_single_rounding():
    g = torch.Generator().manual_seed(0)
    x, y, z = (torch.rand(100000, generator=g) for _ in range(3))
    # the float64 product is exact; rounding its float64 sum to float32 rounds once except when that sum
    # lands exactly on a float32 tie (probability ~2**-29 here)
    exact = x.double() * y.double() + z.double()
    assert torch.equal(pp._fma32(x, y, z), exact.float())
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 is halfway between two float32; a tiny addend decides, which a
    # float64 sum would lose (double rounding)
    x = torch.tensor([1.0 + 2.0**-12])
    up, down = 1.0 + 2.0**-11 + 2.0**-23, 1.0 + 2.0**-11
    for z, expected in ((2.0**-80, up), (-(2.0**-80), down), (0.0, down)):  # 0: ties to even
        assert pp._fma32(x, x, torch.tensor([z])).item() == expected


@pytest.mark.parametrize(
    "cells,image_size,output_size",
    [((24, 30), (93, 118), (186, 236)), ((13, 40), (49, 157), (301, 1)), ((9, 35), (33, 139), (29, 211))],
)
def test_reference_values_are_bit_identical_to_interpolate(cells, image_size, output_size):
    device = torch.device("cpu")
    fused_index = pp._source_index_rounding(device)
    arithmetic = pp._bilinear_arithmetic(device, fused_index)
    assert fused_index is not None and arithmetic is not None, "torch's bilinear CPU kernel could not be read"
    probs = torch.rand(5, *cells, generator=torch.Generator().manual_seed(1))
    ref = pp._rescale_probs(probs, image_size, output_size, 4)
    plan = pp._exact_plan(cells, 4, image_size, output_size, fused_index)
    ys, xs = torch.meshgrid(torch.arange(output_size[0]), torch.arange(output_size[1]), indexing="ij")
    for k in range(5):
        ks = torch.full((ys.numel(),), k)
        got = pp._reference_values(probs, plan, ys.flatten(), xs.flatten(), ks, arithmetic)
        assert torch.equal(got, ref[k].flatten())


# ---- the reference function equals the official code -----------------------------------------------------


def _official_methods():
    """``get_panoptic``, ``merge_stuff_thing`` (kernel_iter_head.py) and ``rescale_masks``
    (kernel_update_head.py) of the official K-Net, compiled from the tarball's sources."""
    if not os.path.exists(KNET_TARBALL):
        pytest.skip(f"reference sources missing: {os.path.normpath(KNET_TARBALL)} (ZwwWayne/K-Net snapshot)")
    wanted = {
        "K-Net-5e50ee5/knet/det/kernel_iter_head.py": (
            "KernelIterHead",
            {"get_panoptic", "merge_stuff_thing"},
        ),
        "K-Net-5e50ee5/knet/det/kernel_update_head.py": ("KernelUpdateHead", {"rescale_masks"}),
    }
    functions = {}
    with tarfile.open(KNET_TARBALL) as tar:
        for member, (cls_name, names) in wanted.items():
            tree = ast.parse(tar.extractfile(member).read().decode())
            cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
            defs = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in names]
            assert {d.name for d in defs} == names, member
            namespace = {"torch": torch, "F": F, "INSTANCE_OFFSET": INSTANCE_OFFSET}
            exec(compile(ast.Module(body=defs, type_ignores=[]), member, "exec"), namespace)
            functions.update({name: namespace[name] for name in names})
    return functions


def _official_panoptic(functions, cls_probs, mask_logits, image_size, output_size, stride, num_proposals,
                       num_thing_classes, thing_thr, overlap_thr):
    num_stuff = cls_probs.shape[1] - num_thing_classes
    head = types.SimpleNamespace()
    head.rescale_masks = types.MethodType(functions["rescale_masks"], head)
    self = types.SimpleNamespace(
        num_proposals=num_proposals,
        num_thing_classes=num_thing_classes,
        num_stuff_classes=num_stuff,
        num_classes=num_thing_classes + num_stuff,
        mask_head=[head],
    )
    self.merge_stuff_thing = types.MethodType(functions["merge_stuff_thing"], self)
    get_panoptic = types.MethodType(functions["get_panoptic"], self)
    img_meta = {
        "img_shape": (*image_size, 3),
        "batch_input_shape": (stride * mask_logits.shape[-2], stride * mask_logits.shape[-1]),
        "ori_shape": (*output_size, 3),
    }
    test_cfg = types.SimpleNamespace(
        merge_stuff_thing=types.SimpleNamespace(overlap_thr=overlap_thr, instance_score_thr=thing_thr)
    )
    return torch.as_tensor(get_panoptic(cls_probs, mask_logits, test_cfg, img_meta)["pan_results"])


@pytest.mark.parametrize("maker", [random_maps, structured_maps, trained_like_maps])
def test_full_resolution_reference_equals_official_get_panoptic(maker):
    functions = _official_methods()
    for seed in range(2):
        cls, masks, kw = maker(seed)
        num_classes = cls.shape[1]
        for image_size, output_size in SIZES[:4]:
            for thr, overlap in ((0.3, 0.6), (0.0, 0.1)):
                official = _official_panoptic(
                    functions, cls.sigmoid(), masks, image_size, output_size, 4, kw["num_proposals"],
                    kw["num_thing_classes"], thr, overlap,
                )
                pan, info = panoptic_inference_full_resolution(
                    cls, masks, image_size, output_size, thing_score_threshold=thr, overlap_threshold=overlap,
                    **kw,
                )
                void = official == num_classes
                assert torch.equal(void, pan == 0)
                # official id = label + rank * INSTANCE_OFFSET (rank from 0); ours = rank + 1
                rank, label = official // INSTANCE_OFFSET, official % INSTANCE_OFFSET
                assert torch.equal(torch.where(void, 0, rank + 1).int(), pan)
                cat = {s["id"]: s["category_id"] for s in info}
                assert all(cat[int(i)] == int(l) for i, l in zip(pan[~void], label[~void]))
                ids, counts = official[~void].unique(return_counts=True)
                areas = sorted((s["id"], int((pan == s["id"]).sum())) for s in info)
                assert sorted((int(i) // INSTANCE_OFFSET + 1, int(c)) for i, c in zip(ids, counts)) == areas
                assert all(s["isthing"] == (s["category_id"] < kw["num_thing_classes"]) for s in info)
