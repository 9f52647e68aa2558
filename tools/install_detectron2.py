#!/usr/bin/env python
"""Install detectron2 (pure Python, no compiled ops) into the running interpreter.

detectron2 is not published on the Python package index. Its official v0.6 Python sources are, as the
source distribution ``pb1-detectron2==0.6`` (the v0.6 tag minus the C++ sources). This script

1. does nothing when an importable ``detectron2`` is already installed (for example one built from
   source with its CUDA ops): that installation is used untouched (``--force`` installs anyway);
2. otherwise reuses a wheel it built before (cached under ``$KNET_CACHE``, default ``~/.cache/knet``);
3. otherwise downloads the sdist, applies the small, documented set of rewrites below, builds a
   wheel without the C++ extension, caches it and installs it.

``--source ARCHIVE`` builds from a local detectron2 source archive (or folder) instead of the v0.6 sdist:
``tools/d2main_env.sh`` uses it to install detectron2 main (``../shared/third_party/detectron2-*.tar.gz``)
into the test-only layer ``.venv-d2main``. The rewrites are the same; each is applied where its pattern is
found, and one that the tree already has upstream (detectron2 main launches with gloo on CPU, for example)
is reported as such instead of failing.

The rewrites (each is printed with the files it touched):

* ``from detectron2 import _C`` becomes an import that, when the compiled module is missing, binds a
  stand-in which raises a clear ``RuntimeError`` only when a compiled op is actually called
  (deformable / rotated ops, the fast COCO evaluator). Importing ``detectron2.layers`` keeps working.
  detectron2 main also calls some ops as ``torch.ops.detectron2.<op>`` (registered by loading ``_C``):
  those calls go through the same stand-in (the real op when ``_C`` exists).
* numpy aliases removed in numpy 1.24 (``np.bool``, ``np.int``, ``np.float``, ``np.str``, ``np.object``)
  become the builtins they always aliased.
* Pillow 10 removed ``Image.LINEAR``; it is ``Image.BILINEAR`` (the same filter).
* ``engine.launch`` uses the gloo backend and skips the CUDA device set-up when there is no GPU, as
  later detectron2 releases do, so multi-process training also works on CPU.
* ``engine.launch`` destroys its process group when the worker returns (otherwise gloo's threads can
  abort the exiting process).
* the model-zoo yaml files are shipped in the wheel (v0.6's setup.py globbed them relative to the
  working directory, so a wheel built elsewhere had none; a GitHub tree such as main's keeps them in the
  top-level ``configs/``, which is copied into the package).
* ``model_zoo`` locates its bundled configs next to its own file instead of through
  ``pkg_resources`` (removed from current setuptools).
* metadata: the distribution is named ``detectron2``; the obsolete pins ``black==21.4b2``,
  ``iopath<0.1.10``, ``fvcore<0.1.6`` and the caffe2-only ``future``/``pydot`` are dropped (main's
  unpinned ``black``, only used to pretty-print LazyConfig files, too); no C++ extension is built.

Run it with the interpreter of the environment to install into:
``.venv/bin/python tools/install_detectron2.py``.
"""
import argparse
import glob
import hashlib
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
PATCH_VERSION = "3"

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


class _TorchOpsDetectron2:
    """``torch.ops.detectron2`` when the compiled library is there (loading ``_C`` registers the ops),
    else the clear error above."""

    def __getattr__(self, name):
        try:
            from detectron2 import _C  # noqa: F401
        except ImportError:
            return getattr(MISSING_C, name)
        import torch

        return getattr(torch.ops.detectron2, name)


TORCH_OPS = _TorchOpsDetectron2()
'''

C_IMPORT = "from detectron2 import _C\n"
C_IMPORT_LAZY = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # knet-compat: built without the C++ extension\n"
    "    from detectron2._missing_c import MISSING_C as _C\n"
)
# ``from detectron2 import _C`` at any indentation (detectron2 main imports it inside a ``try`` in
# layers/deform_conv.py), unless it already is the first line of C_IMPORT_LAZY.
C_IMPORT_RE = re.compile(
    r"^([ \t]*)from detectron2 import _C[ \t]*\n(?![ \t]*except ImportError:  # knet-compat)", re.M
)
# detectron2 main: ops called through the namespace that loading ``_C`` registers.
TORCH_OPS_CALL = "torch.ops.detectron2."
TORCH_OPS_NEW = "_knet_torch_ops."
TORCH_OPS_IMPORT = (
    "from detectron2._missing_c import TORCH_OPS as _knet_torch_ops  # knet-compat: compiled ops, lazily\n"
)
FIRST_IMPORT_RE = re.compile(r"^(import |from (?!__future__ ))", re.M)

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
# detectron2 main's runtime requirement (the pinned "black==22.3.0" of its dev extra stays).
DROPPED_REQUIREMENTS_MAIN = {
    '        "black",\n': "formatter, only used to pretty-print LazyConfig files",
}
# Present in a tree that already has the fix upstream (then the rewrite is skipped, and reported).
UPSTREAM_GLOO = 'backend="NCCL" if has_gpu else "GLOO",'
UPSTREAM_NAME = 'name="detectron2",'
RELAXED_REQUIREMENTS = {
    '"fvcore>=0.1.5,<0.1.6",': '"fvcore>=0.1.5",',
    '"iopath>=0.1.7,<0.1.10",': '"iopath>=0.1.7",',
}


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def cache_dir():
    return os.path.expanduser(os.environ.get("KNET_CACHE", "~/.cache/knet"))


def _replace(path, old, new, what, changes, count=1, upstream=None):
    """Replace ``old`` by ``new`` in ``path``. When ``old`` is absent: if ``upstream`` (a text showing that
    the tree already has the fix) is present, record ``what`` as already upstream; else fail."""
    with open(path) as f:
        text = f.read()
    if old not in text and upstream is not None and upstream in text:
        changes.setdefault(f"{what} (already upstream, not rewritten)", []).append(path)
        return
    if new and new in text:  # rewritten before (a second pass changes nothing)
        changes.setdefault(f"{what} (already in the sources, not rewritten)", []).append(path)
        return
    if old not in text:
        raise RuntimeError(
            f"{path}: expected text for '{what}' not found; is this a detectron2 source tree (v0.6 or main)?"
        )
    text = text.replace(old, new, count)
    with open(path, "w") as f:
        f.write(text)
    changes.setdefault(what, []).append(path)


def _lazy_c_import(match):
    indent = match.group(1)
    return "".join(indent + line + "\n" for line in C_IMPORT_LAZY.splitlines())


def _route_torch_ops(text):
    """``torch.ops.detectron2.<op>`` -> the ``TORCH_OPS`` stand-in, imported before the first import."""
    if TORCH_OPS_CALL not in text:
        return text
    text = text.replace(TORCH_OPS_CALL, TORCH_OPS_NEW)
    m = FIRST_IMPORT_RE.search(text)
    at = m.start() if m else 0
    return text[:at] + TORCH_OPS_IMPORT + text[at:]


def rewrite_source_text(text):
    """The per-file source rewrites. Returns ``(new text, [descriptions of what changed])``."""
    done = []
    new = C_IMPORT_RE.sub(_lazy_c_import, text)
    if new != text:
        done.append("lazy error for missing compiled _C")
    new2 = _route_torch_ops(new)
    if new2 != new:
        done.append("torch.ops.detectron2 calls: same lazy error without the compiled library")
    new3 = NUMPY_ALIAS.sub(lambda m: m.group(1), new2)
    if new3 != new2:
        done.append("numpy aliases np.bool/int/float/str/object -> builtins")
    new4 = new3.replace("Image.LINEAR", "Image.BILINEAR")
    if new4 != new3:
        done.append("Pillow Image.LINEAR -> Image.BILINEAR")
    return new4, done


def patch_sources(src, tag=None):
    """Apply the compatibility rewrites to an extracted detectron2 source tree (v0.6 or main). ``tag``: the
    source's tag in the local version (:func:`local_version`). Returns a summary ``{what: [files]}``."""
    changes = {}
    pkg = os.path.join(src, "detectron2")
    if not os.path.isfile(os.path.join(pkg, "__init__.py")):
        raise RuntimeError(f"{src}: no detectron2/__init__.py; not a detectron2 source tree")
    with open(os.path.join(pkg, "_missing_c.py"), "w") as f:
        f.write(MISSING_C_MODULE)
    changes["added detectron2/_missing_c.py (clear error for compiled ops)"] = ["detectron2/_missing_c.py"]

    for path in sorted(glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True)):
        with open(path) as f:
            text = f.read()
        new, done = rewrite_source_text(text)
        for what in done:
            changes.setdefault(what, []).append(os.path.relpath(path, src))
        if new != text:
            with open(path, "w") as f:
                f.write(new)

    launch = os.path.join(pkg, "engine", "launch.py")
    zoo = os.path.join(pkg, "model_zoo", "model_zoo.py")
    setup_py = os.path.join(src, "setup.py")
    gloo = "engine.launch: gloo backend without GPU"
    edits = [
        (launch, LAUNCH_OLD_ASSERT, LAUNCH_NEW_ASSERT, gloo, UPSTREAM_GLOO),
        (launch, LAUNCH_OLD_BACKEND, LAUNCH_NEW_BACKEND, gloo, UPSTREAM_GLOO),
        (launch, LAUNCH_OLD_DEVICE, LAUNCH_NEW_DEVICE, gloo, UPSTREAM_GLOO),
        (launch, LAUNCH_OLD_MAIN, LAUNCH_NEW_MAIN, "engine.launch: destroy the process group at exit", None),
        (zoo, ZOO_OLD, ZOO_NEW, "model_zoo: no pkg_resources", None),
        (zoo, "import pkg_resources\n", "", "model_zoo: no pkg_resources", ZOO_NEW),
        (setup_py, 'name="pb1-detectron2",', 'name="detectron2",', "setup.py: metadata", UPSTREAM_NAME),
        (setup_py, "version=get_version(),", f'version="{local_version(src, tag)}",', "setup.py: metadata",
         None),
        (setup_py, SETUP_OLD_PACKAGE_DATA, SETUP_NEW_PACKAGE_DATA, "setup.py: ship model-zoo configs", None),
        (setup_py, "ext_modules=get_extensions(),", "ext_modules=[],", "setup.py: no C++ extension", None),
    ]
    for path, old, new, what, upstream in edits:
        _replace(path, old, new, what, changes, upstream=upstream)
    with open(setup_py) as f:
        setup_text = f.read()
    dropped = {**DROPPED_REQUIREMENTS, **DROPPED_REQUIREMENTS_MAIN}
    present = [old for old in dropped if old in setup_text]
    if not present and "black" in setup_text.split("extras_require")[0]:
        raise RuntimeError(f"{setup_py}: unknown requirement list; is this a detectron2 source tree?")
    for old in present:
        _replace(setup_py, old, "", "setup.py: drop obsolete requirements", changes)
    for old, new in RELAXED_REQUIREMENTS.items():
        _replace(setup_py, old, new, "setup.py: relax obsolete pins", changes)
    zoo_configs = os.path.join(pkg, "model_zoo", "configs")
    if not os.path.isdir(zoo_configs) and os.path.isdir(os.path.join(src, "configs")):
        # a GitHub tree (detectron2 main) keeps them at the top; its setup.py linked them in at build time
        shutil.copytree(os.path.join(src, "configs"), zoo_configs)
        changes["model-zoo configs copied into detectron2/model_zoo/configs"] = ["configs"]
    for stale in glob.glob(os.path.join(src, "*.egg-info")):
        shutil.rmtree(stale)
    return {what: [os.path.relpath(p, src) if os.path.isabs(p) else p for p in files]
            for what, files in changes.items()}


def source_tag(archive):
    """A short tag for a local source archive or folder: the commit in a ``detectron2-<hex>`` name, else the
    first 8 hex digits of the archive's sha256."""
    name = os.path.basename(os.path.normpath(archive))
    m = re.fullmatch(r"detectron2-([0-9a-f]{7,40})(\.tar\.gz|\.tgz|\.tar)?", name)
    if m:
        return "g" + m.group(1)[:7]
    if os.path.isdir(archive):
        return "dir" + hashlib.sha256(os.path.abspath(archive).encode()).hexdigest()[:8]
    with open(archive, "rb") as f:
        return "s" + hashlib.sha256(f.read()).hexdigest()[:8]


def local_version(src, tag=None):
    """``<detectron2 __version__>+knetcpu<PATCH_VERSION>`` (v0.6 sdist: ``0.6+knetcpu3``), with the source's
    ``tag`` for a local archive (``0.6+g02b5c4e.knetcpu3``: detectron2 main still says 0.6)."""
    with open(os.path.join(src, "detectron2", "__init__.py")) as f:
        m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", f.read(), re.M)
    base = m.group(1) if m else "0.6"
    return f"{base}+{tag}.knetcpu{PATCH_VERSION}" if tag else f"{base}+knetcpu{PATCH_VERSION}"


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    log("$ " + " ".join(cmd))
    subprocess.check_call(cmd)


def _extract(archive, dest):
    """The source folder of a ``.tar.gz`` sdist / GitHub archive (a folder is used as it is, copied)."""
    if os.path.isdir(archive):
        src = os.path.join(dest, "src")
        shutil.copytree(archive, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.so"))
        return src
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (src,) = [p for p in glob.glob(os.path.join(dest, "*")) if os.path.isdir(p)]
    return src


def build_wheel(out_dir, source=None):
    """Build the patched wheel into ``out_dir``: from the ``pb1-detectron2==0.6`` sdist, or from ``source``
    (a local detectron2 source archive or folder). Returns the wheel's path."""
    with tempfile.TemporaryDirectory(prefix="knet-d2-") as tmp:
        if source is None:
            pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", tmp, SDIST)
            (archive,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
            tag = None
        else:
            archive, tag = source, source_tag(source)
        src = _extract(archive, os.path.join(tmp, "x"))
        for what, files in patch_sources(src, tag).items():
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
    parser.add_argument(
        "--source", metavar="ARCHIVE",
        help="build from this detectron2 source archive (.tar.gz) or folder instead of the v0.6 sdist, e.g. "
        "../shared/third_party/detectron2-02b5c4e.tar.gz (detectron2 main)",
    )
    args = parser.parse_args()
    if args.source is not None and not os.path.exists(args.source):
        parser.error(f"--source {args.source}: no such file or folder")

    where = installed_detectron2()
    if where and not args.force:
        log(f"using the detectron2 already installed at {where} (left untouched)")
        return
    sub = ""
    if args.source is not None:  # keyed by this script too: a development tree never reuses a stale wheel
        with open(os.path.abspath(__file__), "rb") as f:
            sub = f"-{source_tag(args.source)}-{hashlib.sha256(f.read()).hexdigest()[:8]}"
    wheel_dir = os.path.join(cache_dir(), f"detectron2-wheel-p{PATCH_VERSION}{sub}")
    wheels = glob.glob(os.path.join(wheel_dir, "detectron2-*.whl"))
    if wheels and not args.rebuild:
        wheel = wheels[0]
        log(f"reusing cached wheel {wheel}")
    else:
        wheel = build_wheel(wheel_dir, args.source)
        log(f"built and cached {wheel}")
    # --force: pip leaves a detectron2 of another environment (the base of a layered one) in place.
    pip("install", "--force-reinstall" if args.force else "--upgrade", "--no-deps", wheel)
    # Dependencies separately, so that an already satisfied requirement is never reinstalled.
    pip("install", "-q", wheel)


if __name__ == "__main__":
    main()
