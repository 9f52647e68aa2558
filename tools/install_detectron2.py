#!/usr/bin/env python
"""Install detectron2 v0.6 (pure Python, no compiled ops) into the running interpreter.

detectron2 is not published on the Python package index. Its official v0.6 Python sources are, as the
source distribution ``pb1-detectron2==0.6`` (the v0.6 tag minus the C++ sources). This script

1. does nothing when an importable ``detectron2`` is already installed (for example one built from
   source with its CUDA ops): that installation is used untouched;
2. otherwise reuses a wheel it built before (cached under ``$KNET_CACHE``, default ``~/.cache/knet``);
3. otherwise downloads the sdist, applies the small, documented set of rewrites below, builds a
   wheel without the C++ extension, caches it and installs it.

The rewrites (each is printed with the files it touched):

* ``from detectron2 import _C`` becomes an import that, when the compiled module is missing, binds a
  stand-in which raises a clear ``RuntimeError`` only when a compiled op is actually called
  (deformable / rotated ops, the fast COCO evaluator). Importing ``detectron2.layers`` keeps working.
* numpy aliases removed in numpy 1.24 (``np.bool``, ``np.int``, ``np.float``, ``np.str``, ``np.object``)
  become the builtins they always aliased.
* Pillow 10 removed ``Image.LINEAR``; it is ``Image.BILINEAR`` (the same filter).
* ``engine.launch`` uses the gloo backend and skips the CUDA device set-up when there is no GPU, as
  later detectron2 releases do, so multi-process training also works on CPU.
* ``engine.launch`` destroys its process group when the worker returns (otherwise gloo's threads can
  abort the exiting process).
* the model-zoo yaml files are shipped in the wheel (v0.6's setup.py globbed them relative to the
  working directory, so a wheel built elsewhere had none).
* ``model_zoo`` locates its bundled configs next to its own file instead of through
  ``pkg_resources`` (removed from current setuptools).
* metadata: the distribution is named ``detectron2``; the obsolete pins ``black==21.4b2``,
  ``iopath<0.1.10``, ``fvcore<0.1.6`` and the caffe2-only ``future``/``pydot`` are dropped; no C++
  extension is built.

Run it with the interpreter of the environment to install into:
``.venv/bin/python tools/install_detectron2.py``.
"""
import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"
# Bump when the rewrites change, so that a stale cached wheel is never reused.
PATCH_VERSION = "2"
LOCAL_VERSION = f"0.6+knetcpu{PATCH_VERSION}"

MISSING_C_MODULE = '''\
"""Stand-in for detectron2's compiled ``_C`` module (added by knet's tools/install_detectron2.py)."""


class _MissingCompiledOps:
    def __getattr__(self, name):
        raise RuntimeError(
            f"detectron2 was installed without its C++ extension; the compiled op '{name}' is not "
            "available. Build detectron2 from source with its C++/CUDA ops "
            "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html) to use it, or pick a "
            "config that does not need it."
        )


MISSING_C = _MissingCompiledOps()
'''

C_IMPORT = "from detectron2 import _C\n"
C_IMPORT_LAZY = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # knet-compat: built without the C++ extension\n"
    "    from detectron2._missing_c import MISSING_C as _C\n"
)

LAUNCH_OLD_ASSERT = (
    '    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n'
)
LAUNCH_NEW_ASSERT = "    has_gpu = torch.cuda.is_available()  # knet-compat: gloo on CPU\n"
LAUNCH_OLD_BACKEND = 'backend="NCCL",'
LAUNCH_NEW_BACKEND = 'backend="NCCL" if has_gpu else "GLOO",'
LAUNCH_OLD_DEVICE = (
    "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
    "    torch.cuda.set_device(local_rank)\n"
)
LAUNCH_NEW_DEVICE = (
    "    if has_gpu:\n"
    "        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
    "        torch.cuda.set_device(local_rank)\n"
)

LAUNCH_OLD_MAIN = "    comm.synchronize()\n\n    main_func(*args)\n"
LAUNCH_NEW_MAIN = (
    "    comm.synchronize()\n\n    main_func(*args)\n"
    "    dist.destroy_process_group()  # knet-compat: join gloo's threads before the process exits\n"
)

SETUP_OLD_PACKAGE_DATA = 'package_data={"detectron2.model_zoo": get_model_zoo_configs()},'
SETUP_NEW_PACKAGE_DATA = 'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},'

ZOO_OLD = """    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )"""
ZOO_NEW = """    cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)  # knet-compat"""

NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?!_)")

DROPPED_REQUIREMENTS = {
    '"black==21.4b2",': "obsolete formatter pin, only used to pretty-print LazyConfig files",
    '"future",  # used by caffe2': "caffe2 only",
    '"pydot",  # used to save caffe2 SVGs': "caffe2 only",
}
RELAXED_REQUIREMENTS = {
    '"fvcore>=0.1.5,<0.1.6",': '"fvcore>=0.1.5",',
    '"iopath>=0.1.7,<0.1.10",': '"iopath>=0.1.7",',
}


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def cache_dir():
    return os.path.expanduser(os.environ.get("KNET_CACHE", "~/.cache/knet"))


def _replace(path, old, new, what, changes, count=1):
    with open(path) as f:
        text = f.read()
    if old not in text:
        raise RuntimeError(f"{path}: expected text for '{what}' not found; is this detectron2 v0.6?")
    text = text.replace(old, new, count)
    with open(path, "w") as f:
        f.write(text)
    changes.setdefault(what, []).append(path)


def patch_sources(src):
    """Apply the compatibility rewrites to an extracted detectron2 v0.6 source tree. Returns a summary."""
    changes = {}
    pkg = os.path.join(src, "detectron2")
    with open(os.path.join(pkg, "_missing_c.py"), "w") as f:
        f.write(MISSING_C_MODULE)
    changes["added detectron2/_missing_c.py (clear error for compiled ops)"] = ["detectron2/_missing_c.py"]

    for path in sorted(glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True)):
        with open(path) as f:
            text = f.read()
        new = text
        if C_IMPORT in new:
            new = new.replace(C_IMPORT, C_IMPORT_LAZY)
            changes.setdefault("lazy error for missing compiled _C", []).append(os.path.relpath(path, src))
        new2 = NUMPY_ALIAS.sub(lambda m: m.group(1), new)
        if new2 != new:
            changes.setdefault("numpy aliases np.bool/int/float/str/object -> builtins", []).append(
                os.path.relpath(path, src)
            )
        new3 = new2.replace("Image.LINEAR", "Image.BILINEAR")
        if new3 != new2:
            changes.setdefault("Pillow Image.LINEAR -> Image.BILINEAR", []).append(os.path.relpath(path, src))
        if new3 != text:
            with open(path, "w") as f:
                f.write(new3)

    launch = os.path.join(pkg, "engine", "launch.py")
    zoo = os.path.join(pkg, "model_zoo", "model_zoo.py")
    setup_py = os.path.join(src, "setup.py")
    gloo = "engine.launch: gloo backend without GPU"
    edits = [
        (launch, LAUNCH_OLD_ASSERT, LAUNCH_NEW_ASSERT, gloo),
        (launch, LAUNCH_OLD_BACKEND, LAUNCH_NEW_BACKEND, gloo),
        (launch, LAUNCH_OLD_DEVICE, LAUNCH_NEW_DEVICE, gloo),
        (launch, LAUNCH_OLD_MAIN, LAUNCH_NEW_MAIN, "engine.launch: destroy the process group at exit"),
        (zoo, ZOO_OLD, ZOO_NEW, "model_zoo: no pkg_resources"),
        (zoo, "import pkg_resources\n", "", "model_zoo: no pkg_resources"),
        (setup_py, 'name="pb1-detectron2",', 'name="detectron2",', "setup.py: metadata"),
        (setup_py, "version=get_version(),", f'version="{LOCAL_VERSION}",', "setup.py: metadata"),
        (setup_py, SETUP_OLD_PACKAGE_DATA, SETUP_NEW_PACKAGE_DATA, "setup.py: ship model-zoo configs"),
        (setup_py, "ext_modules=get_extensions(),", "ext_modules=[],", "setup.py: no C++ extension"),
    ]
    for path, old, new, what in edits:
        _replace(path, old, new, what, changes)
    for old in DROPPED_REQUIREMENTS:
        _replace(setup_py, old, "", "setup.py: drop obsolete requirements", changes)
    for old, new in RELAXED_REQUIREMENTS.items():
        _replace(setup_py, old, new, "setup.py: relax obsolete pins", changes)
    for stale in glob.glob(os.path.join(src, "*.egg-info")):
        shutil.rmtree(stale)
    return {what: [os.path.relpath(p, src) if os.path.isabs(p) else p for p in files]
            for what, files in changes.items()}


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    log("$ " + " ".join(cmd))
    subprocess.check_call(cmd)


def build_wheel(out_dir):
    with tempfile.TemporaryDirectory(prefix="knet-d2-") as tmp:
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", tmp, SDIST)
        (archive,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [p for p in glob.glob(os.path.join(tmp, "*")) if os.path.isdir(p)]
        for what, files in patch_sources(src).items():
            log(f"rewrote: {what}: {len(files)} file(s): {', '.join(sorted(set(files))[:6])}"
                + (" ..." if len(set(files)) > 6 else ""))
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", tmp, src)
        (wheel,) = glob.glob(os.path.join(tmp, "detectron2-*.whl"))
        os.makedirs(out_dir, exist_ok=True)
        dest = os.path.join(out_dir, os.path.basename(wheel))
        shutil.copy(wheel, dest + ".part")
        os.replace(dest + ".part", dest)  # atomic: a half-copied wheel is never reused
        return dest


def installed_detectron2():
    spec = importlib.util.find_spec("detectron2")
    return None if spec is None else os.path.dirname(spec.origin)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 is importable")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached wheel")
    args = parser.parse_args()

    where = installed_detectron2()
    if where and not args.force:
        log(f"using the detectron2 already installed at {where} (left untouched)")
        return
    wheel_dir = os.path.join(cache_dir(), f"detectron2-wheel-p{PATCH_VERSION}")
    wheels = glob.glob(os.path.join(wheel_dir, "detectron2-*.whl"))
    if wheels and not args.rebuild:
        wheel = wheels[0]
        log(f"reusing cached wheel {wheel}")
    else:
        wheel = build_wheel(wheel_dir)
        log(f"built and cached {wheel}")
    pip("install", "--force-reinstall" if args.force else "--upgrade", "--no-deps", wheel)
    # Dependencies separately, so that an already satisfied requirement is never reinstalled.
    pip("install", "-q", wheel)


if __name__ == "__main__":
    main()
