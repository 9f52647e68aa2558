"""The pure parts of tools/benchmark_official.py (the official-vs-ours latency run itself needs
.venv-parity-mmdet and minutes of CPU: it is a tool, not a test)."""
import numpy as np
import pytest

from support.scripts import load_script

OFFSET = 1000  # mmdet's INSTANCE_OFFSET
VOID = 133


@pytest.fixture(scope="module")
def bench():
    return load_script("tools/benchmark_official.py")


def test_official_encoding_maps_ids_to_rank_and_category(bench):
    seg = np.array([[0, 1, 1], [2, 2, 3]], dtype=np.int32)
    info = [{"id": 1, "category_id": 85}, {"id": 2, "category_id": 3}, {"id": 3, "category_id": 3}]
    out = bench.official_encoding(seg, info, VOID, OFFSET)
    expected = np.array([[VOID, 85, 85], [3 + OFFSET, 3 + OFFSET, 3 + 2 * OFFSET]])
    np.testing.assert_array_equal(out, expected)


def test_compare_panoptic_counts_differences(bench):
    official = np.array([[VOID, 85], [3 + OFFSET, 3 + OFFSET]])
    same = bench.compare_panoptic(official.copy(), official, OFFSET)
    assert same["equal"] and same["pixels_differing"] == 0 and same["segments_official"] == 3
    ours = official.copy()
    ours[0, 0] = 85  # other category
    ours[1, 1] = 3 + 2 * OFFSET  # same category, other segment
    diff = bench.compare_panoptic(ours, official, OFFSET)
    assert not diff["equal"]
    assert diff["pixels_differing"] == 2 and diff["pixels_with_other_category"] == 1
    wrong_shape = bench.compare_panoptic(ours[:1], official, OFFSET)
    assert wrong_shape["equal"] is False and wrong_shape["shape_ours"] == [1, 2]


def test_summarise_segments(bench):
    official = np.array([[VOID, 85], [3 + OFFSET, 7]])
    assert bench.summarise_segments(official, VOID, OFFSET, 80) == {
        "segments": 3, "thing_segments": 2, "stuff_segments": 1, "void_pixels": 1}


def test_summarise_times_ratios_and_pipeline(bench):
    samples = {
        "official": [(4.0, 8.0, 0.1), (6.0, 10.0, 0.3), (5.0, 9.0, 0.2)],
        "ours": [(2.0, 4.0, None), (3.0, 5.0, None), (2.0, 4.5, None)],
        "ours-ort": [],
    }
    t = bench.summarise_times(samples)
    assert "ours-ort" not in t
    assert t["official"]["wall_ms_median"] == pytest.approx(5000)
    assert t["official"]["pipeline_ms_median"] == pytest.approx(200)
    assert t["official"]["network_ms_median"] == pytest.approx(4800)
    assert t["ours"]["wall_ms_median"] == pytest.approx(2000) and "pipeline_ms_median" not in t["ours"]
    assert t["ours"]["speedup_wall"] == pytest.approx(2.5)  # of the medians
    assert t["ours"]["speedup_cpu"] == pytest.approx(2.0)
    assert t["official"]["speedup_wall"] == pytest.approx(1.0)
    # per round: 4/2, 6/3, 5/2 -> median 2
    assert t["ours"]["speedup_wall_paired"] == pytest.approx(2.0)
    table = bench.format_table(t, {"ours": {"pixels_differing": 7}})
    assert "2.50" in table and "2.00" in table and " 7" in table and "pipeline 200 ms" in table


def test_time_round_robin_interleaves_and_drops_warmup(bench):
    calls = []

    def make(key):
        def predict(image):
            calls.append(key)
            return key + image
        return predict

    predictors = {"a": (make("a"), "!"), "b": (make("b"), "?")}
    seen = []
    samples, first = bench.time_round_robin(predictors, rounds=3, warmup=1, on_round=lambda s: seen.append(1))
    assert calls == ["a", "b"] * 3
    assert first == {"a": "a!", "b": "b?"}
    assert {k: len(v) for k, v in samples.items()} == {"a": 2, "b": 2}
    assert len(seen) == 2


def test_same_heap_ratios(bench):
    """Each row is also compared with the official row on the same CPU heap: "ours" (retain) with
    "official-retain", "ours-default-heap" with "official" (glibc's default)."""
    samples = {
        "official": [(8.0, 16.0, 0.1), (8.0, 16.0, 0.1)],
        "official-retain": [(5.0, 10.0, 0.1), (6.0, 10.0, 0.1)],
        "ours-default-heap": [(4.0, 8.0, None), (4.0, 8.0, None)],
        "ours": [(2.5, 5.0, None), (3.0, 5.0, None)],
    }
    t = bench.summarise_times(samples)
    assert t["ours"]["speedup_wall"] == pytest.approx(8.0 / 2.75)  # to the official row as it ships
    assert t["ours"]["speedup_wall_paired_same_heap"] == pytest.approx(2.0)  # 5/2.5, 6/3
    assert t["ours"]["speedup_cpu_same_heap"] == pytest.approx(2.0)
    assert t["ours-default-heap"]["speedup_wall_same_heap"] == pytest.approx(2.0)
    assert t["official-retain"]["speedup_wall_same_heap"] == pytest.approx(1.0)
    table = bench.format_table(t, {})
    assert "retain" in table and "default" in table


def test_time_round_robin_sets_each_rows_heap_before_timing(bench):
    log = []

    class Heap:
        def use(self, mode):
            log.append(("heap", mode))

    def make(key):
        def predict(image):
            log.append(("call", key))
        return predict

    predictors = {"a": (make("a"), None), "b": (make("b"), None)}
    bench.time_round_robin(predictors, rounds=2, warmup=1, heaps={"a": "default", "b": "retain"}, heap=Heap())
    assert log == [("heap", "default"), ("call", "a"), ("heap", "retain"), ("call", "b")] * 2


def _options(**kw):
    from knet.modeling.options import PostprocessOptions

    base = dict(panoptic_on=True, instance_on=False, semantic_on=False, max_per_image=100, mask_threshold=0.5,
                instance_score_threshold=0.3, thing_score_threshold=0.3, overlap_threshold=0.6,
                soft_boundaries=False, panoptic_mode="exact")
    base.update(kw)
    return PostprocessOptions(**base)


def test_our_panoptic_inputs_substitutes_the_last_stage_and_is_removed(bench):
    """``--outputs trained-like`` on our side: the panoptic post-processing that ``postprocess_image`` runs
    (KNet's and KNetONNX's) gets the replacement, not the network's outputs; removal restores it."""
    import torch

    from knet.modeling.meta_arch import knet as meta_arch

    helpers = bench.bench_helpers()
    cls, masks = bench.trained_like_outputs(helpers, (120, 190))
    assert cls.shape == (153, 133) and masks.shape == (153, 32, 48)  # padded to 128 x 192, stride 4
    kw = dict(stride=4, num_proposals=100, num_thing_classes=80, options=_options())
    noise = (torch.randn(153, 133), torch.randn(153, 32, 48))
    own = meta_arch.postprocess_image(*noise, (120, 190), (120, 190), **kw)["panoptic_seg"]
    expected = meta_arch.postprocess_image(cls, masks, (120, 190), (120, 190), **kw)["panoptic_seg"]
    assert len(expected[1]) > len(own[1])  # trained-like outputs give more segments than noise
    original = meta_arch.panoptic_inference
    hook = bench.OurPanopticInputs((cls, masks))
    try:
        got = meta_arch.postprocess_image(*noise, (120, 190), (120, 190), **kw)["panoptic_seg"]
        assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
        message = r"our network gave class \(153, 133\) / masks \(153, 30, 48\)"
        with pytest.raises(RuntimeError, match=message):
            meta_arch.postprocess_image(noise[0], noise[1][:, :30], (120, 190), (120, 190), **kw)
    finally:
        hook.remove()
    assert meta_arch.panoptic_inference is original
    again = meta_arch.postprocess_image(*noise, (120, 190), (120, 190), **kw)["panoptic_seg"]
    assert torch.equal(again[0], own[0])


def test_official_hook_keeps_network_inputs_and_passes_the_replacement(bench):
    import torch

    class RoiHead:
        def get_panoptic(self, cls_scores, mask_preds, test_cfg, img_meta):
            return cls_scores, mask_preds

    head = RoiHead()
    net = (torch.rand(5, 3), torch.randn(5, 4, 4))
    recorder = bench.FirstPanopticInputs(head)
    assert head.get_panoptic(*net, None, None)[0] is net[0]  # no replacement: passed through
    replacement = (torch.rand(5, 3), torch.randn(5, 4, 4))
    recorder.replace = replacement
    out = head.get_panoptic(torch.rand(5, 3), torch.randn(5, 4, 4), None, None)
    assert out[0] is replacement[0] and out[1] is replacement[1]
    assert torch.equal(recorder.inputs[0], net[0])  # what the network gave first is what is kept
    with pytest.raises(RuntimeError, match="official network"):
        head.get_panoptic(torch.rand(6, 3), torch.randn(6, 4, 4), None, None)
    recorder.remove()
    assert head.get_panoptic(*net, None, None)[0] is net[0]
