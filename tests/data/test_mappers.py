"""K-Net dataset mappers on tiny synthetic files: fields, dtypes, shapes, padding, class ids, errors."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image
from support.synthetic import mapper_cfg as make_cfg
from support.synthetic import register_small_synthetic

import knet  # noqa: F401
from knet import add_knet_config
from knet.data.dataset_mappers import (
    KNET_MAPPER_REGISTRY,
    DatasetMetadataError,
    KNetInstanceDatasetMapper,
    KNetPanopticDatasetMapper,
    KNetSemanticDatasetMapper,
    PhotometricDistortion,
    PhotometricDistortionTransform,
    RatioRangeResize,
    build_mapper,
)
from knet.data.dataset_mappers.panoptic_mapper import read_panoptic_png
from knet.data.dataset_mappers.utils import (
    LabelAugInput,
    apply_label_transform,
    is_identity_resize,
    transform_masks,
)

PREFIX = "knet_synthetic_mappertest"
LSJ_PAD = [128, 128, 128]  # detectron2 FixedSizeCrop's pad_value, as Mask2Former's LSJ mappers use it


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return register_small_synthetic(tmp_path_factory, PREFIX, seed=11, num_train=6, num_val=2)


def _rgb2id(path):
    a = np.asarray(Image.open(path)).astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def _expected_segments(rec):
    """(masks (K, H, W), contiguous classes) of the record's panoptic PNG."""
    ids = _rgb2id(rec["pan_seg_file_name"])
    segs = rec["segments_info"]
    return np.stack([ids == s["id"] for s in segs]), np.array([s["category_id"] for s in segs])


def test_registry_holds_the_five_mappers():
    assert {"knet_panoptic", "knet_instance", "knet_semantic", "knet_panoptic_lsj",
            "knet_instance_lsj"} <= {k for k, _ in KNET_MAPPER_REGISTRY}


def test_panoptic_mapper_without_augmentation_reproduces_the_png(names):
    mapper = KNetPanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255)
    for rec in DatasetCatalog.get(names["panoptic"]):
        out = mapper(rec)
        masks, classes = _expected_segments(rec)
        inst = out["instances"]
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
        assert inst.gt_classes.dtype == torch.int64 and inst.gt_masks.dtype == torch.bool
        assert inst.gt_masks.shape == (len(classes), 64, 64)  # every segment, things and stuff
        assert np.array_equal(inst.gt_masks.numpy(), masks)
        assert np.array_equal(inst.gt_classes.numpy(), classes)
        assert (classes[[s["isthing"] for s in rec["segments_info"]]] < 6).all()
        sem = np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64)
        assert out["sem_seg"].dtype == torch.int64 and np.array_equal(out["sem_seg"].numpy(), sem)
        assert (out["height"], out["width"]) == (64, 64)
        img = np.asarray(Image.open(rec["file_name"]).convert("RGB"))
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), img)


@pytest.mark.parametrize("mapper_name", ["knet_panoptic", "knet_panoptic_lsj"])
def test_panoptic_mappers_with_augmentation_stay_consistent(names, mapper_name):
    cfg = make_cfg(mapper_name, names["panoptic"])
    mapper = build_mapper(cfg, True)
    for seed, rec in enumerate(DatasetCatalog.get(names["panoptic"])):
        np.random.seed(seed)
        out = mapper(rec)
        h, w = out["image"].shape[1:]
        assert (h, w) == (96, 96)
        inst, sem = out["instances"], out["sem_seg"].numpy()
        masks, classes = inst.gt_masks.numpy(), inst.gt_classes.numpy()
        assert masks.shape[1:] == (96, 96) and sem.shape == (96, 96)
        assert masks.any(axis=(1, 2)).all()  # no empty instance
        assert masks.sum(0).max() <= 1  # panoptic segments never overlap
        for m, c in zip(masks, classes):
            assert (sem[m] == c).all()
        covered = masks.any(0)
        assert (sem[~covered] == 255).all() and (sem[covered] != 255).all()
        # the classes come from the record's segments and the semantic map equals the PNG's, transformed
        _, rec_classes = _expected_segments(rec)
        assert set(classes.tolist()) <= set(rec_classes.tolist())
        if mapper_name == "knet_panoptic":
            assert sorted(classes.tolist()) == sorted(rec_classes.tolist())


def test_panoptic_mapper_transforms_labels_like_the_semantic_png(names):
    rec = DatasetCatalog.get(names["panoptic"])[1]
    augs = [T.Resize((90, 70)), T.RandomFlip(prob=1.0)]
    out = KNetPanopticDatasetMapper(True, augmentations=augs, image_format="RGB")(rec)
    sem_png = np.asarray(Image.open(rec["sem_seg_file_name"]))
    tfm = T.AugmentationList(augs)(T.AugInput(np.zeros((64, 64, 3), np.uint8)))
    assert np.array_equal(out["sem_seg"].numpy(), tfm.apply_segmentation(sem_png).astype(np.int64))
    assert out["image"].shape == (3, 90, 70)


def test_lsj_pads_small_scales_and_crops_large_ones(names):
    cases = (("knet_panoptic_lsj", names["panoptic"]), ("knet_instance_lsj", names["instance"]))
    for mapper_name, dataset in cases:
        cfg = make_cfg(mapper_name, dataset)
        cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 0.25  # 64 px image -> 24 px, padded to 96
        cfg.INPUT.RANDOM_FLIP = "none"
        rec = DatasetCatalog.get(dataset)[2]
        out = build_mapper(cfg, True)(rec)
        img = out["image"].permute(1, 2, 0).numpy()
        assert img.shape == (96, 96, 3)
        pad = np.array(LSJ_PAD, np.uint8)
        assert (img[24:] == pad).all() and (img[:, 24:] == pad).all()
        masks = out["instances"].gt_masks.numpy()
        assert masks.shape[1:] == (96, 96) and not masks[:, 24:].any() and not masks[:, :, 24:].any()
        assert len(masks) > 0
        if "sem_seg" in out:
            sem = out["sem_seg"].numpy()
            assert (sem[24:] == 255).all() and (sem[:24, :24] != 255).all()

        cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 2.0  # 64 px image -> 192 px, cropped to 96
        np.random.seed(0)
        out = build_mapper(cfg, True)(rec)
        assert out["image"].shape == (3, 96, 96) and out["instances"].gt_masks.shape[1:] == (96, 96)


def _window_offset(big, small):
    """(y, x) of the windows of ``big`` (H, W, C) equal to ``small`` (h, w, C)."""
    h, w = small.shape[:2]
    return [(y, x) for y in range(big.shape[0] - h + 1) for x in range(big.shape[1] - w + 1)
            if np.array_equal(big[y:y + h, x:x + w], small)]


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_input_crop_is_taken_at_the_images_own_scale(names, task):
    """detectron2's ``INPUT.CROP`` (crop first, then the shortest-edge resize): an absolute 40 x 40 crop with
    ``MIN_SIZE_TRAIN`` 40 is a window of the 64 x 64 image at its own scale, its targets the same window."""
    cfg = make_cfg(f"knet_{task}", names[task])
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [40, 40]
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = build_mapper(cfg, True)
    assert isinstance(mapper.augmentations.augs[0], T.RandomCrop)
    pan = {r["image_id"]: r for r in DatasetCatalog.get(names["panoptic"])}
    offsets = set()
    for seed, rec in enumerate(DatasetCatalog.get(names[task])):
        np.random.seed(seed)
        out = mapper(rec)
        img = np.asarray(Image.open(rec["file_name"]).convert("RGB"))
        crop = out["image"].permute(1, 2, 0).numpy()
        assert crop.shape == (40, 40, 3)
        (y, x), = _window_offset(img, crop)
        offsets.add((y, x))
        masks, classes = _expected_segments(pan[rec["image_id"]])
        if task == "instance":
            masks, classes = masks[classes < 6], classes[classes < 6]
        window = masks[:, y:y + 40, x:x + 40]
        keep = window.any(axis=(1, 2))
        assert np.array_equal(out["instances"].gt_masks.numpy(), window[keep])
        assert np.array_equal(out["instances"].gt_classes.numpy(), classes[keep])
    assert len(offsets) > 1  # a random window, not a fixed one

    cfg.INPUT.CROP.ENABLED = False
    assert not any(isinstance(a, T.RandomCrop) for a in build_mapper(cfg, True).augmentations.augs)


def test_identity_resize_is_skipped_and_changes_nothing(names, monkeypatch):
    """The resize after an absolute crop of the one training size keeps the window's size: the panoptic
    mapper skips PIL's round trip (which returns the pixels unchanged), and its samples stay the same bit for
    bit as with detectron2's own resize."""
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)
    label = rng.randint(0, 300, (30, 40)).astype(np.int64)
    same, other = T.ResizeTransform(30, 40, 30, 40), T.ResizeTransform(30, 40, 31, 40)
    assert is_identity_resize(same, image) and not is_identity_resize(other, image)
    assert not is_identity_resize(same, image.astype(np.float32))
    assert np.array_equal(same.apply_image(image), image)  # what makes the skip exact
    assert np.array_equal(apply_label_transform(same, label), label)

    cfg = make_cfg("knet_panoptic", names["panoptic"])
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [40, 40]
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.COPY_PASTE_PROB = 1.0
    mapper = build_mapper(cfg, True)
    mapper.set_paste_pool(DatasetCatalog.get(names["panoptic"]))

    def samples():
        out = []
        for seed, rec in enumerate(DatasetCatalog.get(names["panoptic"])):
            np.random.seed(seed)
            out.append(mapper(rec))
        return out

    resized = []
    original = T.ResizeTransform.apply_image

    def counting(self, img, interp=None):
        resized.append(img.shape)
        return original(self, img, interp)

    monkeypatch.setattr(T.ResizeTransform, "apply_image", counting)
    skipped = samples()
    assert resized == []  # every resize was the identity, and none ran
    monkeypatch.setattr(LabelAugInput, "transform", T.AugInput.transform)  # detectron2's: resize every time
    full = samples()
    assert len(resized) >= 2 * len(full)  # the target's and the copy-paste source's
    for a, b in zip(skipped, full):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
        assert torch.equal(a["instances"].gt_masks, b["instances"].gt_masks)
        assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)


def test_instance_mapper_matches_panoptic_things(names):
    pan = {r["image_id"]: r for r in DatasetCatalog.get(names["panoptic"])}
    mapper = KNetInstanceDatasetMapper(True, augmentations=[], image_format="RGB")
    n = 0
    for rec in DatasetCatalog.get(names["instance"]):
        out = mapper(rec)
        masks, classes = _expected_segments(pan[rec["image_id"]])
        things = classes < 6
        inst = out["instances"]
        assert inst.gt_classes.dtype == torch.int64 and inst.gt_masks.dtype == torch.bool
        assert np.array_equal(inst.gt_masks.numpy(), masks[things])
        assert np.array_equal(inst.gt_classes.numpy(), classes[things])
        assert "sem_seg" not in out and "annotations" not in out
        n += len(inst)
    assert n > 0

    cfg = make_cfg("knet_instance", names["instance"])
    np.random.seed(3)
    out = build_mapper(cfg, True)(DatasetCatalog.get(names["instance"])[1])
    assert out["image"].shape == (3, 96, 96) and out["instances"].gt_masks.shape[1:] == (96, 96)


def test_panoptic_mapper_reads_segments_in_json_order_and_rejects_unlisted_ids(tmp_path):
    """Segment ids far apart and listed out of order, a void region and a crowd: each segment's mask is its
    id's pixels, in ``segments_info`` order; an id the JSON does not list fails naming the PNG and the id."""
    ids = np.zeros((12, 16), np.int64)
    ids[:, 4:8] = 70000  # needs all three channels
    ids[:6, 8:] = 3
    ids[6:, 8:] = 1234
    ids[:3, :2] = 9  # crowd
    pan = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(pan).save(str(tmp_path / "pan.png"))
    Image.fromarray(np.full((12, 16, 3), 50, np.uint8)).save(str(tmp_path / "img.png"))
    segs = [{"id": 1234, "category_id": 7, "iscrowd": 0}, {"id": 3, "category_id": 2, "iscrowd": 0},
            {"id": 70000, "category_id": 0, "iscrowd": 0}, {"id": 9, "category_id": 1, "iscrowd": 1},
            {"id": 55, "category_id": 4, "iscrowd": 0}]  # listed, but no pixel: no mask
    rec = {"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": str(tmp_path / "pan.png"),
           "height": 12, "width": 16, "image_id": 1, "segments_info": segs}
    mapper = KNetPanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255)
    out = mapper(rec)
    assert out["instances"].gt_classes.tolist() == [7, 2, 0]
    assert np.array_equal(out["instances"].gt_masks.numpy(), np.stack([ids == 1234, ids == 3, ids == 70000]))
    sem = out["sem_seg"].numpy()
    assert (sem[ids == 0] == 255).all() and (sem[ids == 9] == 255).all() and (sem[ids == 3] == 2).all()
    # id 0 is void even when a (malformed) annotation lists it: same masks and semantic map
    rec["segments_info"] = segs + [{"id": 0, "category_id": 5, "iscrowd": 0}]
    out0 = mapper(rec)
    assert out0["instances"].gt_classes.tolist() == [7, 2, 0]
    assert np.array_equal(out0["instances"].gt_masks.numpy(), out["instances"].gt_masks.numpy())
    assert np.array_equal(out0["sem_seg"].numpy(), sem)
    rec["segments_info"] = segs[:2] + segs[3:]  # 70000 no longer listed
    with pytest.raises(ValueError, match=r"pan\.png contains segment id 70000"):
        mapper(rec)
    rec["segments_info"] = []
    with pytest.raises(ValueError, match="segment id 3,"):
        mapper(rec)


def test_instance_mapper_polygons_crowd_and_empty(tmp_path):
    img = np.full((40, 50, 3), 90, np.uint8)
    path = str(tmp_path / "img.png")
    Image.fromarray(img).save(path)
    from pycocotools import mask as mask_util

    rle_mask = np.zeros((40, 50), np.uint8)
    rle_mask[5:15, 30:45] = 1
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    annos = [
        {"segmentation": [[2, 2, 20, 2, 20, 20, 2, 20]], "category_id": 1, "iscrowd": 0},  # polygon
        {"segmentation": rle, "category_id": 4, "iscrowd": 0},  # compressed RLE
        {"segmentation": [[0, 0, 40, 0, 40, 30]], "category_id": 2, "iscrowd": 1},  # crowd: dropped
        {"segmentation": [[1, 1, 2, 2]], "category_id": 3, "iscrowd": 0},  # degenerate: empty, dropped
        {"segmentation": [[100, 100, 120, 100, 120, 120]], "category_id": 5, "iscrowd": 0},  # outside: empty
    ]
    rec = {"file_name": path, "height": 40, "width": 50, "image_id": 1, "annotations": annos}
    out = KNetInstanceDatasetMapper(True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB")(rec)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [1, 4]
    masks = inst.gt_masks.numpy()
    assert masks.shape == (2, 40, 50)
    assert np.array_equal(masks[1], rle_mask[:, ::-1].astype(bool))
    assert masks[0][:, 30:48].any() and not masks[0][:, :29].any()  # flipped polygon
    # an annotation without segmentation is a clear error naming the file
    rec["annotations"] = [{"category_id": 1, "iscrowd": 0, "bbox": [0, 0, 5, 5]}]
    with pytest.raises(ValueError, match="img.png"):
        KNetInstanceDatasetMapper(True, augmentations=[], image_format="RGB")(rec)


def test_semantic_mapper_crops_without_padding(names):
    cfg = make_cfg("knet_semantic", names["sem_seg"])
    cfg.INPUT.SEMANTIC.PHOTOMETRIC = False
    mapper = build_mapper(cfg, True)
    recs = DatasetCatalog.get(names["sem_seg"])
    for seed, rec in enumerate(recs):
        np.random.seed(seed)
        out = mapper(rec)
        sem = out["sem_seg"]
        assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
        assert sem.dtype == torch.int64 and sem.shape == out["image"].shape[1:]
        assert max(sem.shape) <= 48  # the 48 px crop
        assert set(sem.unique().tolist()) <= set(range(11)) | {255}
        assert "instances" not in out

    # scale 0.5 * (128, 32) -> 64 px image * 0.25 = 16 px: smaller than the crop, left unpadded (the model
    # pads after normalisation, see test_semantic_padding_is_zero_after_normalisation)
    cfg.INPUT.SEMANTIC.SCALE = (128, 32)
    cfg.INPUT.SEMANTIC.RATIO_RANGE = (0.5, 0.5)
    out = build_mapper(cfg, True)(recs[1])
    assert out["image"].shape == (3, 16, 16) and out["sem_seg"].shape == (16, 16)
    assert (out["sem_seg"] != 255).all()


def test_normalize_and_pad_pads_with_zero_and_ignore():
    from knet.modeling.meta_arch import normalize_and_pad

    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
              for h, w in ((20, 30), (37, 9))]
    labels = [torch.randint(0, 5, img.shape[1:], generator=gen) for img in images]
    labels[1] = torch.cat([labels[1], torch.full((3, 9), 255)])  # a label map already padded by its mapper
    batch, targets = normalize_and_pad(
        images, mean, std, labels, min_size=(24, 32), size_divisibility=8, ignore_value=255
    )
    assert batch.shape == (2, 3, 40, 32) and batch.dtype == torch.float32  # max(37 + 3, 24) -> 40, 32
    assert targets.shape == (2, 40, 32) and targets.dtype == torch.int64
    for i, img in enumerate(images):
        h, w = img.shape[1:]
        torch.testing.assert_close(batch[i, :, :h, :w], (img.float() - mean) / std, rtol=0, atol=0)
        assert (batch[i, :, h:] == 0).all() and (batch[i, :, :, w:] == 0).all()
        lh, lw = labels[i].shape
        assert torch.equal(targets[i, :lh, :lw], labels[i])
        assert (targets[i, lh:] == 255).all() and (targets[i, :, lw:] == 255).all()
    # no labels, no sizes: the max
    images64 = normalize_and_pad(
        images, mean.double(), std.double(), None, min_size=None, size_divisibility=0, ignore_value=255
    )[0]
    assert images64.shape == (2, 3, 37, 30) and images64.dtype == torch.float64


def test_semantic_padding_is_zero_after_normalisation(names):
    """Mapper + model: a padded batch reaches the backbone with exactly 0 in its padding (mmseg pads the
    normalised image with 0, to the crop size), its labels with 255, and the loss ignores the padding."""
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.merge_from_file("configs/synthetic/knet_upernet_semantic_tiny.yaml")
    cfg.DATASETS.TRAIN = (names["sem_seg"],)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.SEMANTIC.CROP_SIZE = (96, 96)  # the 64 px images (scale 1) are padded to 96
    cfg.INPUT.SEMANTIC.SCALE = (64, 64)
    cfg.INPUT.SEMANTIC.RATIO_RANGE = (1.0, 1.0)
    cfg.INPUT.SEMANTIC.PHOTOMETRIC = False
    cfg.INPUT.RANDOM_FLIP = "none"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    mapper = build_mapper(cfg, True)
    batch = [mapper(r) for r in DatasetCatalog.get(names["sem_seg"])[:2]]
    seen = {}
    hook = model.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        losses = model(batch)
    finally:
        hook.remove()
    x = seen["x"]
    assert x.shape == (2, 3, 96, 96)
    for i, d in enumerate(batch):
        h, w = d["image"].shape[1:]
        assert (h, w) == (64, 64)
        norm = (d["image"].float() - model.pixel_mean) / model.pixel_std
        torch.testing.assert_close(x[i, :, :h, :w], norm, rtol=0, atol=0)
        assert torch.count_nonzero(x[i, :, h:]) == 0 and torch.count_nonzero(x[i, :, :, w:]) == 0
    assert all(torch.isfinite(v) for v in losses.values())


def test_semantic_crop_respects_category_area_constraint(tmp_path):
    h = w = 128
    label = np.zeros((h, w), np.uint8)
    label[:, :40] = 1  # three vertical bands: 26% of the 64x64 crop positions have one class above 75%,
    label[:, 88:] = 2  # so 10 tries (detectron2 / mmseg) find a valid crop except with probability ~1e-6
    label[:4, 60:70] = 255
    Image.fromarray(label).save(tmp_path / "label.png")
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "img.png")
    rec = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "label.png")}

    def max_ratios(cat_max_ratio):
        augs = [RatioRangeResize((128, 128), (1.0, 1.0)),
                T.RandomCrop_CategoryAreaConstraint("absolute", (64, 64), cat_max_ratio, 255)]
        mapper = KNetSemanticDatasetMapper(True, augmentations=augs, image_format="RGB")
        ratios = []
        for seed in range(40):
            np.random.seed(seed)
            sem = mapper(dict(rec))["sem_seg"].numpy()
            assert sem.shape == (64, 64)
            counts = np.bincount(sem[sem != 255].ravel())
            ratios.append(counts.max() / counts.sum())
        return np.array(ratios)

    assert (max_ratios(0.75) < 0.75).all()
    assert (max_ratios(1.0) >= 0.75).sum() >= 5  # without the constraint many crops are dominated


def test_semantic_mapper_rejects_labels_outside_the_classes(tmp_path):
    Image.fromarray(np.full((20, 20), 12, np.uint8)).save(tmp_path / "label.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "img.png")
    rec = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "label.png")}
    mapper = KNetSemanticDatasetMapper(True, augmentations=[], image_format="RGB", num_classes=11)
    with pytest.raises(ValueError, match="label.png"):
        mapper(rec)


def test_ratio_range_resize_follows_mmseg_rescale():
    aug = RatioRangeResize((2048, 512), (1.0, 1.0))
    assert aug.get_output_shape(480, 640, 1.0) == (512, 683)  # short edge bound
    assert aug.get_output_shape(100, 1000, 1.0) == (205, 2048)  # long edge bound
    assert aug.get_output_shape(480, 640, 0.5) == (256, 341)


def test_photometric_distortion_is_deterministic_given_the_rng():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (16, 16, 3)).astype(np.uint8)
    aug = PhotometricDistortion(image_format="RGB")
    outs = []
    for _ in range(2):
        np.random.seed(5)
        outs.append([aug.get_transform(img).apply_image(img.copy()) for _ in range(6)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))
    assert any(not np.array_equal(a, img) for a in outs[0])
    # single steps
    ident = PhotometricDistortionTransform(image_format="RGB")
    assert np.array_equal(ident.apply_image(img), img)
    bright = PhotometricDistortionTransform(brightness_delta=10.0, image_format="RGB").apply_image(img)
    assert np.array_equal(bright, np.clip(img.astype(int) + 10, 0, 255).astype(np.uint8))
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(PhotometricDistortionTransform(hue_delta=9).apply_segmentation(label), label)
    gray = np.full((4, 4, 3), 77, np.uint8)  # hue / saturation leave grey pixels grey
    out = PhotometricDistortionTransform(saturation_alpha=1.4, hue_delta=9).apply_image(gray)
    assert np.abs(out.astype(int) - 77).max() <= 1


def test_exact_label_and_mask_transforms():
    rng = np.random.RandomState(1)
    wide = rng.randint(0, 70000, (30, 40)).astype(np.int64)
    tfm = T.TransformList(
        [T.ResizeTransform(30, 40, 45, 23), T.HFlipTransform(23), T.PadTransform(0, 0, 3, 2)]
    )
    out = apply_label_transform(tfm, wide)
    low = tfm.apply_segmentation((wide % 256).astype(np.uint8))
    assert out.shape == (47, 26) and out.dtype == np.int64
    assert np.array_equal(out % 256, low)
    assert set(np.unique(out).tolist()) <= set(np.unique(wide).tolist()) | {0}
    masks = rng.rand(11, 30, 40) > 0.5
    packed = transform_masks(tfm, masks)
    single = np.stack([tfm.apply_segmentation(m.astype(np.uint8)).astype(bool) for m in masks])
    assert packed.shape == (11, 47, 26) and np.array_equal(packed, single)


def test_test_mode_resizes_only(names):
    for mapper_name, key in (("knet_panoptic", "panoptic"), ("knet_instance", "instance"),
                             ("knet_semantic", "sem_seg"), ("knet_panoptic_lsj", "panoptic")):
        cfg = make_cfg(mapper_name, names[key])
        rec = DatasetCatalog.get(names[key])[0]
        out = build_mapper(cfg, False)(rec)
        assert out["image"].shape == (3, 80, 80)  # MIN_SIZE_TEST
        assert (out["height"], out["width"]) == (64, 64)
        assert "instances" not in out and "sem_seg" not in out and "annotations" not in out
        cfg.INPUT.MIN_SIZE_TEST = 0  # detectron2's "no resize": the image at its own scale, as the crops
        cfg.INPUT.CROP.ENABLED = True  # training only
        out = build_mapper(cfg, False)(rec)
        img = np.asarray(Image.open(rec["file_name"]).convert("RGB"))
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), img)


def test_missing_metadata_fails_naming_key_and_dataset():
    name = "knet_test_mapper_nometa"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(thing_classes=["a"])
    cases = (
        ("knet_semantic", "ignore_label"),
        ("knet_panoptic", "thing_dataset_id_to_contiguous_id"),
        ("knet_instance_lsj", "thing_dataset_id_to_contiguous_id"),
    )
    for mapper_name, key in cases:
        with pytest.raises(DatasetMetadataError, match=f"{name}.*{key}"):
            build_mapper(make_cfg(mapper_name, name), True)
    with pytest.raises(DatasetMetadataError, match="knet_not_registered.*not registered"):
        build_mapper(make_cfg("knet_panoptic", "knet_not_registered"), True)
    cfg = make_cfg("knet_panoptic", name)
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_nonexistent"
    with pytest.raises(KeyError, match="knet_nonexistent"):
        build_mapper(cfg, True)


def test_class_count_mismatch_fails(names):
    cfg = make_cfg("knet_panoptic", names["panoptic"])
    cfg.MODEL.KNET.NUM_THING_CLASSES = 80
    with pytest.raises(ValueError, match="NUM_THING_CLASSES"):
        build_mapper(cfg, True)
    cfg = make_cfg("knet_panoptic", names["panoptic"])
    cfg.MODEL.KNET.NUM_CLASSES = 8
    with pytest.raises(DatasetMetadataError, match="NUM_CLASSES"):
        build_mapper(cfg, True)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_read_panoptic_png_equals_detectron2_read_image(tmp_path, mode):
    from detectron2.data import detection_utils

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (7, 9))
    palette_rgb = np.array([[0, 0, 0], [1, 0, 0], [232, 3, 0], [7, 9, 1]], dtype=np.uint8)
    rgb = palette_rgb[ids]
    if mode == "P":
        img = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
        img.putpalette(palette_rgb.ravel().tolist())
    else:
        img = Image.fromarray(rgb).convert(mode)
    path = str(tmp_path / f"pan_{mode}.png")
    img.save(path)
    out = read_panoptic_png(path)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    assert np.array_equal(out, rgb)
    assert np.array_equal(out, detection_utils.read_image(path, "RGB"))
