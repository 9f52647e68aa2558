"""Copy-paste of things between panoptic training images: the pure functions, the mapper, the loader's pool
and the pre-flight."""
import copy
import logging

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from support.synthetic import register_small_synthetic
from support.toy import solver_cfg

import knet  # noqa: F401
from knet import add_knet_config
from knet.data.dataset_mappers import KNetPanopticDatasetMapper, build_mapper
from knet.data.dataset_mappers.copy_paste import choose_things_to_paste, paste_segments
from knet.data.dataset_mappers.panoptic_mapper import panoptic_targets
from knet.engine import KNetConfigError, build_knet_train_loader, preflight

PREFIX = "knet_synthetic_copypastetest"
NUM_THINGS = 6


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    names = register_small_synthetic(tmp_path_factory, PREFIX, seed=5, num_train=6, num_val=1)
    return DatasetCatalog.get(names["panoptic"])


def test_paste_segments_overwrites_pixels_and_appends_segments():
    image = np.zeros((4, 5, 3), np.uint8)
    index = np.array([[1, 1, 2, 2, 2]] * 4, np.uint8)  # segment 0 (stuff, class 7) left, 1 (thing 2) right
    classes, crowd = np.array([7, 2]), np.array([False, False])
    src_image = np.full((3, 6, 3), 200, np.uint8)  # smaller in height, wider: only the 3x5 overlap is used
    src_index = np.array([[0, 3, 3, 0, 0, 1], [0, 3, 3, 2, 2, 2], [1, 1, 1, 2, 2, 2]], np.uint8)
    src_classes = np.array([8, 4, 1])  # stuff, thing 4, thing 1
    before = (image.copy(), index.copy())
    out_image, out_index, out_classes, out_crowd = paste_segments(
        image, index, classes, crowd, src_image, src_index, src_classes, np.array([1, 2]))
    assert np.array_equal(image, before[0]) and np.array_equal(index, before[1])  # inputs untouched
    expected = index.copy()
    expected[:3, :5][src_index[:3, :5] == 2] = 3  # source segment 1 -> target segment 2 (index 3)
    expected[:3, :5][src_index[:3, :5] == 3] = 4  # source segment 2 -> target segment 3 (index 4)
    assert np.array_equal(out_index, expected)
    pasted = (src_index[:3, :5] == 2) | (src_index[:3, :5] == 3)
    assert (out_image[:3, :5][pasted] == 200).all() and (out_image[:3, :5][~pasted] == 0).all()
    assert (out_image[3] == 0).all()
    assert out_classes.tolist() == [7, 2, 4, 1] and out_crowd.tolist() == [False] * 4
    # the targets: segment 1 (thing 2) lost the pasted pixels, the pasted ones are masks of their own
    gt_classes, gt_masks, sem = panoptic_targets(out_index, out_classes, out_crowd)
    assert gt_classes.tolist() == [7, 2, 4, 1]
    assert gt_masks.sum(0).max() == 1 and gt_masks[3].sum() == 4
    assert gt_masks[2].sum() == 4  # source segment 1 has 7 pixels, 3 of them beyond the target's width
    assert (sem[out_index == 3] == 4).all()


def test_a_covered_target_segment_disappears():
    index = np.array([[1, 2], [1, 1]], np.uint8)
    src_index = np.array([[0, 1], [0, 0]], np.uint8)
    _, out_index, out_classes, out_crowd = paste_segments(
        np.zeros((2, 2, 3), np.uint8), index, np.array([9, 0]), np.array([False, False]),
        np.ones((2, 2, 3), np.uint8), src_index, np.array([3]), np.array([0]))
    gt_classes, _, _ = panoptic_targets(out_index, out_classes, out_crowd)
    assert gt_classes.tolist() == [9, 3]  # the thing of class 0 is covered entirely: no target left


def test_choose_things_to_paste_only_present_non_crowd_things():
    src_index = np.array([[1, 2, 3, 4, 5]], np.uint8)  # segment 5 (index 6) is absent
    classes = np.array([0, 1, 7, 2, 3, 4])  # segment 2 is stuff
    crowd = np.array([False, False, False, True, False, False])  # segment 3 is a crowd
    seen = set()
    for seed in range(200):
        chosen = choose_things_to_paste(src_index, classes, crowd, NUM_THINGS, np.random.RandomState(seed))
        assert len(chosen) >= 1 and set(chosen.tolist()) <= {0, 1, 4}
        assert np.array_equal(chosen, np.sort(chosen))
        seen.add(tuple(chosen.tolist()))
    assert len(seen) == 7  # every non-empty subset of the three things occurs
    none = choose_things_to_paste(src_index, np.array([7, 8, 9, 7, 8, 9]), crowd, NUM_THINGS,
                                  np.random.RandomState(0))
    assert none.shape == (0,)


def _mapper(prob, pool=None):
    mapper = KNetPanopticDatasetMapper(True, augmentations=[], image_format="RGB", ignore_label=255,
                                       copy_paste_prob=prob, num_thing_classes=NUM_THINGS)
    if pool is not None:
        mapper.set_paste_pool(pool)
    return mapper


def _map(mapper, record, seed):
    np.random.seed(seed)
    return mapper(copy.deepcopy(record))


def test_mapper_pastes_the_things_of_the_pool(records):
    target, source = records[0], records[1]
    plain = _map(_mapper(0.0), target, 0)
    src = _map(_mapper(0.0), source, 0)
    src_things = src["instances"].gt_classes < NUM_THINGS
    assert src_things.any()
    out = _map(_mapper(1.0, [source]), target, 0)
    masks, classes = out["instances"].gt_masks.numpy(), out["instances"].gt_classes.numpy()
    sem = out["sem_seg"].numpy()
    assert masks.sum(0).max() <= 1 and masks.any(axis=(1, 2)).all()
    for m, c in zip(masks, classes):
        assert (sem[m] == c).all()
    # every pasted segment is one of the source's thing masks, whole, with its class and its pixels
    n_plain = len(plain["instances"])
    pasted = list(zip(masks[n_plain:], classes[n_plain:])) if len(masks) > n_plain else []
    assert 1 <= len(pasted) <= int(src_things.sum())
    src_masks = src["instances"].gt_masks.numpy()[src_things.numpy()]
    src_classes = src["instances"].gt_classes.numpy()[src_things.numpy()]
    for m, c in pasted:
        match = [j for j, sm in enumerate(src_masks) if np.array_equal(sm, m)]
        assert len(match) == 1 and src_classes[match[0]] == c
        image, src_image = out["image"].permute(1, 2, 0).numpy(), src["image"].permute(1, 2, 0).numpy()
        assert np.array_equal(image[m], src_image[m])
    # outside the pasted things, image and semantic map are the target's
    outside = ~np.any([m for m, _ in pasted], axis=0)
    assert np.array_equal(out["image"].numpy()[:, outside], plain["image"].numpy()[:, outside])
    assert np.array_equal(sem[outside], plain["sem_seg"].numpy()[outside])


def test_copy_paste_off_draws_nothing_and_changes_nothing(records):
    mapper = _mapper(0.0, list(records))
    for seed, rec in enumerate(records):
        np.random.seed(seed)
        out = mapper(copy.deepcopy(rec))
        state = np.random.get_state()[1].copy()
        np.random.seed(seed)
        ref = _mapper(0.0)(copy.deepcopy(rec))
        assert np.array_equal(np.random.get_state()[1], state)
        assert np.array_equal(out["image"].numpy(), ref["image"].numpy())
        assert np.array_equal(out["instances"].gt_masks.numpy(), ref["instances"].gt_masks.numpy())


def test_an_unreadable_source_is_named_and_the_sample_kept(records, caplog):
    broken = dict(copy.deepcopy(records[1]), file_name="/nonexistent/knet_copy_paste_source.jpg")
    with caplog.at_level(logging.WARNING, logger="knet.data.dataset_mappers.panoptic_mapper"):
        out = _map(_mapper(1.0, [broken]), records[0], 0)
    assert "knet_copy_paste_source.jpg" in caplog.text and "no pasted things" in caplog.text
    plain = _map(_mapper(0.0), records[0], 0)
    assert np.array_equal(out["instances"].gt_masks.numpy(), plain["instances"].gt_masks.numpy())


@pytest.mark.parametrize("mapper_name", ["knet_panoptic", "knet_panoptic_lsj"])
def test_config_key_reaches_the_mapper_and_the_loader_gives_it_its_records(records, mapper_name):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.IMAGE_SIZE = (96,), 96
    cfg.MODEL.KNET.NUM_CLASSES, cfg.MODEL.KNET.NUM_THING_CLASSES = 11, NUM_THINGS
    cfg.DATASETS.TRAIN = (f"{PREFIX}_panoptic_train",)
    cfg.INPUT.COPY_PASTE_PROB = 0.5
    cfg.DATALOADER.NUM_WORKERS, cfg.SOLVER.IMS_PER_BATCH, cfg.SEED = 0, 2, 0
    mapper = build_mapper(cfg, True)
    assert mapper.copy_paste_prob == 0.5 and mapper.num_thing_classes == NUM_THINGS
    loader = build_knet_train_loader(cfg, mapper)
    # the pool is the loader's own list: the records left by DATALOADER.FILTER_EMPTY_ANNOTATIONS
    with_things = [r["file_name"] for r in records if any(s["isthing"] for s in r["segments_info"])]
    assert len(with_things) < len(records)
    assert [r["file_name"] for r in mapper._paste_pool] == with_things
    batch = next(iter(loader))
    for data in batch:  # the training loader runs with copy-paste on: consistent targets
        masks, classes = data["instances"].gt_masks.numpy(), data["instances"].gt_classes.numpy()
        sem = data["sem_seg"].numpy()
        assert data["image"].shape[1:] == masks.shape[1:] == sem.shape == (96, 96)
        assert masks.sum(0).max() <= 1 and masks.any(axis=(1, 2)).all()
        for m, c in zip(masks, classes):
            assert (sem[m] == c).all()


def test_preflight_rejects_copy_paste_where_it_would_be_ignored(records):
    cfg = solver_cfg()
    cfg.MODEL.KNET.NUM_CLASSES, cfg.MODEL.KNET.NUM_THING_CLASSES = 11, NUM_THINGS
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (f"{PREFIX}_panoptic_train",), ()
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptic"
    cfg.INPUT.COPY_PASTE_PROB = 1.5
    with pytest.raises(KNetConfigError, match=r"INPUT.COPY_PASTE_PROB must be a number in \[0, 1\]"):
        preflight(cfg)
    cfg.INPUT.COPY_PASTE_PROB = 0.5
    preflight(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_instance"
    cfg.DATASETS.TRAIN = (f"{PREFIX}_instance_train",)
    with pytest.raises(KNetConfigError, match=r"COPY_PASTE_PROB is 0.5.*'knet_instance'.*knet_panoptic, "
                                              r"knet_panoptic_lsj"):
        preflight(cfg)
    preflight(cfg, eval_only=True)  # evaluation does not paste
