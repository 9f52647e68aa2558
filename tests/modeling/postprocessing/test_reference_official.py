"""The full-resolution reference function equals the official code: ``KernelIterHead.get_panoptic`` /
``merge_stuff_thing`` and ``KernelUpdateHead.rescale_masks`` (ZwwWayne/K-Net, read from
``../shared/third_party/K-Net-5e50ee5.tar.gz`` and executed on a minimal stand-in ``self``; the official
module imports mmdet at top level, so only these methods are extracted with ``ast``), including the two-step
resize."""

import ast
import os
import tarfile
import types

import pytest
import torch
from support.postprocessing import SIZES, panoptic_rules, random_maps, structured_maps, trained_like_maps
from torch.nn import functional as F

from knet.modeling.postprocessing import panoptic_inference_full_resolution

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KNET_TARBALL = os.path.join(REPO, "..", "shared", "third_party", "K-Net-5e50ee5.tar.gz")
INSTANCE_OFFSET = 1000  # mmdet 2.x ``mmdet.datasets.coco_panoptic.INSTANCE_OFFSET``


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
                rules = panoptic_rules(**kw, thing_score_threshold=thr, overlap_threshold=overlap)
                pan, info = panoptic_inference_full_resolution(cls, masks, image_size, output_size, rules)
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
