"""The detectron2 that tools/install_detectron2.py installs works on current numpy, Pillow and torch."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.scripts import REPO, load_script


@pytest.mark.parametrize(
    "module",
    [
        "detectron2.modeling",
        "detectron2.data",
        "detectron2.evaluation",
        "detectron2.engine",
        "detectron2.checkpoint",
        "detectron2.utils.visualizer",
        "detectron2.layers",
        "detectron2.model_zoo",
        "detectron2.projects.deeplab",
    ],
)
def test_modules_import(module):
    assert importlib.import_module(module).__name__ == module


def test_extent_transform_default_interpolation():
    # v0.6 used Image.LINEAR as the default, which Pillow 10 removed.
    from detectron2.data.transforms import ExtentTransform

    img = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    out = ExtentTransform(src_rect=(0, 0, 30, 20), output_size=(10, 15)).apply_image(img)
    assert out.shape == (10, 15, 3)
    # a bilinear downscale of a ramp keeps its range and its ordering along rows
    assert out[..., 0].astype(int).mean() > 0 and out[-1, 0, 0] > out[0, 0, 0]


def test_numpy_aliases_rewritten():
    # SemSegEvaluator used np.int / np.float; BitMasks polygon code used np.bool.
    from detectron2.structures.masks import polygons_to_bitmask

    mask = polygons_to_bitmask([np.array([0, 0, 4, 0, 4, 4, 0, 4], dtype=float)], 6, 6)
    assert mask.dtype == bool and mask.sum() > 0


def test_model_zoo_config_path_without_pkg_resources():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    assert os.path.isfile(path)


def test_compiled_op_raises_clear_error_but_layers_import():
    import detectron2.layers  # noqa: F401  (import must work without _C)
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    try:
        import detectron2._C  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("this detectron2 has its compiled ops (built from source)")
    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match="installed without its C\\+\\+ extension.*box_iou_rotated"):
        pairwise_iou_rotated(boxes, boxes)


def _make_tiny_coco(tmp_path):
    from pycocotools import mask as mask_util

    m = np.zeros((8, 8), dtype=np.uint8, order="F")
    m[2:6, 2:6] = 1
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode()
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "area": 16,
             "bbox": [2, 2, 4, 4], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_evaluators_construct_on_registered_dataset(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator

    name = "knet_test_tiny_for_evaluators"
    json_file = _make_tiny_coco(tmp_path)
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(
            name, lambda: [{"file_name": "a.png", "sem_seg_file_name": "a_sem.png", "image_id": 1}]
        )
    MetadataCatalog.get(name).set(
        json_file=json_file, thing_classes=["thing"], stuff_classes=["thing", "bg"], ignore_label=255,
        thing_dataset_id_to_contiguous_id={1: 0}, stuff_dataset_id_to_contiguous_id={1: 0, 2: 1},
        panoptic_root=str(tmp_path), panoptic_json=json_file, evaluator_type="coco_panoptic_seg",
    )
    coco = COCOEvaluator(
        name, tasks=("segm",), distributed=False, output_dir=str(tmp_path), use_fast_impl=False
    )
    assert coco._coco_api.getImgIds() == [1]
    sem = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path))
    assert sem._num_classes == 2 and sem._ignore_label == 255
    pan = COCOPanopticEvaluator(name, output_dir=str(tmp_path))
    assert pan._thing_contiguous_id_to_dataset_id == {0: 1}


def _allreduce_worker(out_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    t = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(t)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(f"{comm.get_world_size()} {t.item()}")


def test_launch_two_cpu_processes_allreduce(tmp_path):
    from detectron2.engine import launch

    launch(_allreduce_worker, 2, dist_url="auto", args=(str(tmp_path),))
    for rank in range(2):
        world, total = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert int(world) == 2 and float(total) == 3.0  # 1 + 2


def test_installer_keeps_an_existing_detectron2():
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "install_detectron2.py")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "already installed" in out and "left untouched" in out


def test_installer_rewrites_are_idempotent_and_reported(tmp_path):
    """Apply the rewrites to a miniature tree with the patterns they target; a second pass changes nothing."""
    inst = _installer()
    pkg = tmp_path / "detectron2"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "model_zoo").mkdir()
    (pkg / "layers").mkdir()
    (pkg / "__init__.py").write_text('__version__ = "0.6"\n')
    (pkg / "layers" / "ops.py").write_text(
        "from detectron2 import _C\nx = np.int(3) + np.float32(1)\ny = np.bool_\ninterp = Image.LINEAR\n"
    )
    (pkg / "engine" / "launch.py").write_text(
        inst.LAUNCH_OLD_ASSERT + "    x = dict(" + inst.LAUNCH_OLD_BACKEND + ")\n" + inst.LAUNCH_OLD_DEVICE
        + inst.LAUNCH_OLD_MAIN
    )
    (pkg / "model_zoo" / "model_zoo.py").write_text("import pkg_resources\n" + inst.ZOO_OLD + "\n")
    setup_lines = ['name="pb1-detectron2",', inst.SETUP_OLD_PACKAGE_DATA, "version=get_version(),"]
    setup_lines += ["ext_modules=get_extensions(),"]
    setup_lines += list(inst.DROPPED_REQUIREMENTS) + list(inst.RELAXED_REQUIREMENTS)
    (tmp_path / "setup.py").write_text("\n".join(setup_lines) + "\n")

    changes = inst.patch_sources(str(tmp_path))
    ops = (pkg / "layers" / "ops.py").read_text()
    assert "np.int(" not in ops and "int(3)" in ops and "np.float32" in ops and "np.bool_" in ops
    assert "Image.BILINEAR" in ops and "MISSING_C" in ops
    launch = (pkg / "engine" / "launch.py").read_text()
    assert '"GLOO"' in launch and "if has_gpu:" in launch and "destroy_process_group" in launch
    assert "pkg_resources" not in (pkg / "model_zoo" / "model_zoo.py").read_text()
    setup = (tmp_path / "setup.py").read_text()
    assert 'name="detectron2"' in setup and "black" not in setup and "<0.1.10" not in setup
    assert 'version="0.6+knetcpu' in setup
    assert any("numpy" in k for k in changes) and any("Pillow" in k for k in changes)
    # second pass over already rewritten sources: the source rewrites find nothing left to change
    again = {}
    for path in [pkg / "layers" / "ops.py"]:
        text = path.read_text()
        assert inst.NUMPY_ALIAS.sub(lambda m: m.group(1), text) == text
        assert inst.C_IMPORT not in text.replace(inst.C_IMPORT_LAZY, "")
    assert again == {}


def _installer():
    return load_script("tools/install_detectron2.py")


def _tree_text(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_installer_rewrites_a_detectron2_main_tree(tmp_path):
    """A miniature of detectron2 main (commit 02b5c4e): ``_C`` imported inside a ``try``, ops called as
    ``torch.ops.detectron2.<op>``, gloo launch already upstream, configs at the top of the tree. Each rewrite
    applies where its pattern is, upstream fixes are reported, and a second pass changes nothing."""
    inst = _installer()
    pkg = tmp_path / "detectron2"
    for sub in ("engine", "model_zoo", "layers", "evaluation"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.6"\n')
    (pkg / "layers" / "deform_conv.py").write_text(
        "import torch\n\nclass DeformConv:\n    pass\n\n\n"
        "try:\n    from detectron2 import _C\nexcept ImportError:\n"
        "    DeformConv = None  # placeholder class\n"
    )
    (pkg / "layers" / "rotated_boxes.py").write_text(
        "# header\nfrom __future__ import absolute_import\nimport torch\n\n\ndef iou(a, b):\n"
        "    return torch.ops.detectron2.box_iou_rotated(a, b)\n"
    )
    (pkg / "evaluation" / "fast_eval_api.py").write_text("import copy\n\nfrom detectron2 import _C\n")
    (pkg / "engine" / "launch.py").write_text(
        "    has_gpu = torch.cuda.is_available()\n    x = dict(" + inst.UPSTREAM_GLOO + ")\n"
        + inst.LAUNCH_OLD_MAIN
    )
    (pkg / "model_zoo" / "model_zoo.py").write_text("import pkg_resources\n" + inst.ZOO_OLD + "\n")
    (tmp_path / "configs" / "COCO").mkdir(parents=True)
    (tmp_path / "configs" / "COCO" / "a.yaml").write_text("MODEL: {}\n")
    setup_lines = ['name="detectron2",', inst.SETUP_OLD_PACKAGE_DATA, "version=get_version(),",
                   "ext_modules=get_extensions(),", *inst.RELAXED_REQUIREMENTS, "install_requires=[",
                   '        "black",', '        "packaging",', "],",
                   "extras_require={", '"black==22.3.0",', "}"]
    (tmp_path / "setup.py").write_text("\n".join(setup_lines) + "\n")

    changes = inst.patch_sources(str(tmp_path), "g02b5c4e")
    deform = (pkg / "layers" / "deform_conv.py").read_text()
    compile(deform, "deform_conv.py", "exec")  # still valid Python
    assert "    try:\n        from detectron2 import _C\n    except ImportError:  # knet-compat" in deform
    rotated = (pkg / "layers" / "rotated_boxes.py").read_text()
    compile(rotated, "rotated_boxes.py", "exec")
    assert "torch.ops.detectron2" not in rotated and "_knet_torch_ops.box_iou_rotated(a, b)" in rotated
    assert rotated.index("from __future__") < rotated.index("import TORCH_OPS")  # __future__ stays first
    assert "MISSING_C as _C" in (pkg / "evaluation" / "fast_eval_api.py").read_text()
    launch = (pkg / "engine" / "launch.py").read_text()
    assert launch.count("destroy_process_group") == 1 and "knet-compat: gloo" not in launch
    assert "pkg_resources" not in (pkg / "model_zoo" / "model_zoo.py").read_text()
    assert (pkg / "model_zoo" / "configs" / "COCO" / "a.yaml").is_file()
    setup = (tmp_path / "setup.py").read_text()
    assert '        "black",' not in setup and '"black==22.3.0",' in setup and '"packaging",' in setup
    assert 'version="0.6+g02b5c4e.knetcpu' in setup and "ext_modules=[]," in setup
    assert "engine.launch: gloo backend without GPU (already upstream, not rewritten)" in changes
    assert "setup.py: metadata (already upstream, not rewritten)" in changes

    before = _tree_text(tmp_path)
    again = inst.patch_sources(str(tmp_path), "g02b5c4e")
    assert _tree_text(tmp_path) == before
    assert not [k for k in again if "already" not in k and not k.startswith("added ")]


def test_installer_refuses_what_is_not_a_detectron2_tree(tmp_path):
    inst = _installer()
    with pytest.raises(RuntimeError, match="not a detectron2 source tree"):
        inst.patch_sources(str(tmp_path))
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "install_detectron2.py"), "--source",
         str(tmp_path / "nope")],
        capture_output=True, text=True,
    )
    assert out.returncode == 2 and "--source" in out.stderr and "no such file or folder" in out.stderr


def test_subprocesses_import_the_same_detectron2():
    """Tests spawn train_net.py, the demo and worker processes with sys.executable: they must get this
    process's detectron2 (in the test-only layer .venv-d2main: main, not .venv's v0.6)."""
    import detectron2

    out = subprocess.run(
        [sys.executable, "-c", "import os, detectron2; print(os.path.realpath(detectron2.__file__))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    assert out == os.path.realpath(detectron2.__file__)


def test_model_zoo_config_found_when_model_zoo_does_not_import(monkeypatch):
    """knet.utils.model_zoo.get_config_file (used by tools/benchmark.py) works where
    ``import detectron2.model_zoo`` fails (pkg_resources missing) and gives detectron2's own answer."""
    import detectron2
    from detectron2 import model_zoo

    from knet.utils.model_zoo import get_config_file

    name = "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"
    expected = model_zoo.get_config_file(name)
    assert get_config_file(name) == expected
    monkeypatch.delattr(detectron2, "model_zoo")
    for mod in ("detectron2.model_zoo", "detectron2.model_zoo.model_zoo"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import` raises ImportError
    with pytest.raises(ImportError):
        from detectron2 import model_zoo as _  # noqa: F401
    assert os.path.samefile(get_config_file(name), expected)
    with pytest.raises(RuntimeError, match="not found in detectron2's model zoo.*does not import"):
        get_config_file("COCO-PanopticSegmentation/no_such_config.yaml")


def test_d2main_layer_explains_a_missing_archive(tmp_path):
    """tools/d2main_env.sh (make test-d2main) needs ../shared/third_party/detectron2-<commit>.tar.gz;
    without it it says what is missing and builds nothing."""
    env = dict(os.environ, KNET_SHARED=str(tmp_path / "no-shared"), D2MAIN_VENV=str(tmp_path / "layer"))
    out = subprocess.run(["bash", os.path.join(REPO, "tools", "d2main_env.sh")], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "detectron2-<commit>.tar.gz" in out.stderr and "KNET_SHARED" in out.stderr
    assert not (tmp_path / "layer").exists()
