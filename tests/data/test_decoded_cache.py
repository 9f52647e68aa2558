"""The decoded-file cache of the training mappers (``DATALOADER.DECODED_CACHE_MB``): its bound and eviction,
and mappers that give the same samples with it as without it while decoding each file once."""
import copy

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from support.synthetic import mapper_cfg, register_small_synthetic
from support.toy import solver_cfg

import knet  # noqa: F401
from knet.data.dataset_mappers import base as base_module
from knet.data.dataset_mappers import build_mapper
from knet.data.dataset_mappers import panoptic_mapper as panoptic_module
from knet.data.dataset_mappers.decoded_cache import DecodedCache
from knet.engine import KNetConfigError, preflight

PREFIX = "knet_synthetic_cachetest"
MB = 2**20


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    return register_small_synthetic(tmp_path_factory, PREFIX, seed=3, num_train=5, num_val=1)


def _loader(log, key, nbytes=MB):
    def load():
        log.append(key)
        return np.zeros(nbytes, np.uint8), key
    return load


def test_cache_is_bounded_least_recently_used_and_read_only():
    cache, log = DecodedCache(2.5), []
    a = cache.get("a", _loader(log, "a"))
    assert cache.get("a", _loader(log, "a")) is a and log == ["a"]  # a hit: the same (read-only) value
    assert not a[0].flags.writeable and a[1] == "a"
    with pytest.raises(ValueError):
        a[0][0] = 1
    cache.get("b", _loader(log, "b"))
    cache.get("a", _loader(log, "a"))  # "a" is now the most recently used
    cache.get("c", _loader(log, "c"))  # 3 MB > 2.5 MB: "b" goes
    assert len(cache) == 2 and cache.nbytes == 2 * MB and log == ["a", "b", "c"]
    cache.get("a", _loader(log, "a"))
    cache.get("b", _loader(log, "b"))
    assert log == ["a", "b", "c", "b"] and (cache.hits, cache.misses) == (3, 4)
    big = cache.get("big", _loader(log, "big", 3 * MB))  # larger than the whole cache: returned, not kept
    assert big[0].flags.writeable and "big" not in cache._items and cache.nbytes == 2 * MB


def test_cache_off_loads_every_time_and_keeps_nothing_of_a_failed_load():
    off, log = DecodedCache(0), []
    for _ in range(3):
        assert off.get("a", _loader(log, "a"))[0].flags.writeable
    assert log == ["a"] * 3 and len(off) == 0

    def broken():
        raise OSError("cannot read x.png")
    on = DecodedCache(1)
    for _ in range(2):
        with pytest.raises(OSError, match="x.png"):
            on.get("x", broken)
    assert len(on) == 0 and on.misses == 2
    for bad in (-1, "64", True):
        with pytest.raises(ValueError, match="DATALOADER.DECODED_CACHE_MB"):
            DecodedCache(bad)


def _count_decodes(monkeypatch):
    """Count the files the mappers decode (images through detectron2's reader, panoptic PNGs)."""
    counts = {"image": 0, "panoptic": 0}
    read_image, read_png = base_module.utils.read_image, panoptic_module.read_panoptic_png

    def counted_image(*args, **kwargs):
        counts["image"] += 1
        return read_image(*args, **kwargs)

    def counted_png(*args, **kwargs):
        counts["panoptic"] += 1
        return read_png(*args, **kwargs)
    monkeypatch.setattr(base_module.utils, "read_image", counted_image)
    monkeypatch.setattr(panoptic_module, "read_panoptic_png", counted_png)
    return counts


def _epochs(mapper, records, epochs=2):
    out = []
    for epoch in range(epochs):
        for i, record in enumerate(records):
            np.random.seed(100 * epoch + i)
            torch.manual_seed(100 * epoch + i)
            out.append(mapper(copy.deepcopy(record)))
    return out


def _same_samples(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"])
        assert ("sem_seg" in x) == ("sem_seg" in y)
        if "sem_seg" in x:
            assert torch.equal(x["sem_seg"], y["sem_seg"])
        if "instances" in x:
            assert torch.equal(x["instances"].gt_classes, y["instances"].gt_classes)
            assert torch.equal(x["instances"].gt_masks, y["instances"].gt_masks)


@pytest.mark.parametrize("mapper_name,task", [
    ("knet_panoptic", "panoptic"), ("knet_panoptic_lsj", "panoptic"), ("knet_instance", "instance"),
    ("knet_semantic", "sem_seg")])
def test_mappers_give_the_same_samples_with_the_cache_and_decode_each_file_once(
        names, mapper_name, task, monkeypatch):
    cfg = mapper_cfg(mapper_name, names[task])
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    if mapper_name.startswith("knet_panoptic"):
        cfg.INPUT.COPY_PASTE_PROB = 1.0  # every sample also reads a second record
    records = DatasetCatalog.get(names[task])
    mappers = {}
    for mb in (0, 64):
        cfg.DATALOADER.DECODED_CACHE_MB = mb
        mappers[mb] = build_mapper(cfg, True)
        assert mappers[mb].decoded_cache.max_bytes == mb * MB
        if hasattr(mappers[mb], "set_paste_pool"):
            mappers[mb].set_paste_pool(records)
    assert build_mapper(cfg, False).decoded_cache.max_bytes == 0  # evaluation reads through
    counts = _count_decodes(monkeypatch)
    plain = _epochs(mappers[0], records)
    uncached = dict(counts)
    cached = _epochs(mappers[64], records)
    _same_samples(plain, cached)
    decoded = {k: counts[k] - uncached[k] for k in counts}
    # without the cache every sample decodes its image (and a paste source's); with it, each file once
    assert decoded["image"] == len(records) < uncached["image"]
    if task == "panoptic":
        assert uncached["image"] == uncached["panoptic"] == 2 * 2 * len(records)
        assert decoded["panoptic"] == len(records)
    # decoded image (+ panoptic segments, + their shortest-edge resize for the panoptic mapper) per record
    per_record = {"knet_panoptic": 3, "knet_panoptic_lsj": 2}.get(mapper_name, 1)
    assert len(mappers[64].decoded_cache) == len(records) * per_record
    _same_samples(plain, _epochs(mappers[64], records))  # and no sample wrote into a cached array


def test_panoptic_mapper_resizes_each_record_once_per_size_and_gives_the_same_samples(names, monkeypatch):
    """The shortest-edge resize of the panoptic mapper comes from the cache once a record was resized to the
    size drawn; the random draws, and so every sample, are those of the uncached mapper (two sizes drawn
    per image here, so the cache holds each record at each size it was drawn at)."""
    from detectron2.data import transforms as T

    cfg = mapper_cfg("knet_panoptic", names["panoptic"])
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.COPY_PASTE_PROB = 1.0
    cfg.INPUT.MIN_SIZE_TRAIN = (80, 96)
    records = DatasetCatalog.get(names["panoptic"])
    mappers = {}
    for mb in (0, 64):
        cfg.DATALOADER.DECODED_CACHE_MB = mb
        mappers[mb] = build_mapper(cfg, True)
        mappers[mb].set_paste_pool(records)
    resized = []
    apply_image = T.ResizeTransform.apply_image

    def counted(tfm, img, interp=None):
        resized.append((tfm.h, tfm.w, tfm.new_h, tfm.new_w, img.shape[:2]))
        return apply_image(tfm, img, interp)
    monkeypatch.setattr(T.ResizeTransform, "apply_image", counted)
    plain = _epochs(mappers[0], records, epochs=4)
    uncached = len(resized)
    cached = _epochs(mappers[64], records, epochs=4)
    _same_samples(plain, cached)
    sizes = {s[2:4] for s in resized}
    assert len(sizes) == 2  # both sizes drawn
    resized_entries = [k for k in mappers[64].decoded_cache._items if k[0] == "resized"]
    # an image and its segment map per resize; uncached: every target and paste source of the 4 epochs,
    # cached: each (record, size) drawn once
    assert uncached == 2 * 2 * 4 * len(records)
    assert len(resized) - uncached == 2 * len(resized_entries) and len(resized_entries) <= 2 * len(records)
    assert {k[1][0] for k in resized_entries} == {r["file_name"] for r in records}
    assert {k[4:6] for k in resized_entries} == sizes


def test_preflight_rejects_a_bad_cache_size(names):
    cfg = solver_cfg()
    cfg.MODEL.KNET.NUM_CLASSES, cfg.MODEL.KNET.NUM_THING_CLASSES = 11, 6
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["panoptic"],), ()
    cfg.INPUT.DATASET_MAPPER_NAME = "knet_panoptic"
    cfg.DATALOADER.DECODED_CACHE_MB = -5
    with pytest.raises(KNetConfigError, match=r"DATALOADER.DECODED_CACHE_MB must be a number >= 0.*got -5"):
        preflight(cfg)
    cfg.DATALOADER.DECODED_CACHE_MB = 128
    preflight(cfg)
