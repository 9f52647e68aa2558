"""The repository's scripts (not part of the package) as modules, all imported the same way."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(relpath: str, name: str = None):
    """Import ``REPO/relpath`` (e.g. ``"tools/quickstart.py"``) as a fresh module named ``name`` (default: the
    file's stem, prefixed ``knet_script_``); the script's own folder is on ``sys.path`` while it loads, as
    when it is run."""
    path = os.path.join(REPO, relpath)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"script {path} not found")
    name = name or "knet_script_" + os.path.splitext(os.path.basename(relpath))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(folder)
    return module


def import_train_net():
    """The repository's ``train_net.py`` as a module."""
    return load_script("train_net.py", "train_net")
