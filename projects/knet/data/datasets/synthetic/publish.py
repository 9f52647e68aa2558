"""Validation and atomic, lazy publication of the synthetic dataset: the completion marker's checks, an
inter-process lock, generation into a temporary folder and a rename into place."""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from typing import Optional, Tuple

from .generate import generate_synthetic_dataset
from .layout import GENERATOR_VERSION, MARKER_NAME, default_parameters, default_synthetic_root, normalize_size

__all__ = ["check_synthetic_dataset", "ensure_synthetic_dataset"]

logger = logging.getLogger(__name__)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_synthetic_dataset(
    root: str,
    *,
    seed: Optional[int] = None,
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    image_size=None,
    verify_checksums: bool = True,
) -> Tuple[bool, str]:
    """Whether ``root`` holds a complete dataset of this generator version (and of the given parameters).

    Parameters left as None accept whatever the marker says. Returns ``(ok, reason)``; reason says what is
    wrong (missing marker, unreadable marker, other version/parameters, missing/truncated/modified file).
    """
    marker_path = os.path.join(root, MARKER_NAME)
    if not os.path.isdir(root):
        return False, "the folder does not exist"
    if not os.path.isfile(marker_path):
        return False, f"it has no completion marker {MARKER_NAME} (interrupted or half-written)"
    try:
        with open(marker_path, "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
        files = marker["files"]
        if len(files) != marker["num_files"]:
            return False, f"{MARKER_NAME} lists {len(files)} files but says {marker['num_files']}"
    except (ValueError, KeyError, TypeError) as e:
        return False, f"its completion marker {MARKER_NAME} is unreadable ({e})"
    if marker.get("version") != GENERATOR_VERSION:
        return False, f"it was written by generator version {marker.get('version')}, not {GENERATOR_VERSION}"
    wanted = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(normalize_size(image_size)) if image_size is not None else None,
    }
    for key, value in wanted.items():
        if value is not None and marker.get(key) != value:
            return False, f"it has {key}={marker.get(key)}, but {key}={value} was asked for"
    for rel, rec in files.items():
        path = os.path.join(root, *rel.split("/"))
        if not os.path.isfile(path):
            return False, f"file {rel} is missing"
        if os.path.getsize(path) != rec["size"]:
            return False, f"file {rel} has {os.path.getsize(path)} bytes instead of {rec['size']}"
        if verify_checksums and _sha256_file(path) != rec["sha256"]:
            return False, f"file {rel} does not match its sha256 checksum"
    return True, "complete"


def _read_marker_params(root: str) -> dict:
    """seed / sizes recorded in the marker of ``root`` ({} when there is no readable marker)."""
    try:
        with open(os.path.join(root, MARKER_NAME), "rb") as f:
            marker = json.loads(f.read().decode("utf-8"))
        out = {k: int(marker[k]) for k in ("seed", "num_train", "num_val")}
        out["image_size"] = normalize_size(marker["image_size"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """An inter-process lock (``fcntl.flock``) so that parallel workers generate the dataset only once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, the rename below still keeps a half-written dataset invisible
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_synthetic_dataset(
    root: Optional[str] = None,
    *,
    seed: Optional[int] = None,
    num_train: Optional[int] = None,
    num_val: Optional[int] = None,
    image_size=None,
    force: bool = False,
    progress: bool = False,
    verify_checksums: bool = True,
) -> str:
    """Return the dataset root, generating the dataset first when it is missing or not valid.

    Args:
        root: the dataset folder (default :func:`default_synthetic_root`,
            ``$DETECTRON2_DATASETS/knet_synthetic``).
        seed, num_train, num_val, image_size: the wanted dataset; None accepts any complete dataset already
            there and uses the defaults (0, 400, 50, 256) when one has to be generated.
        force: regenerate even when a valid dataset exists.
        progress: show a tqdm progress bar while generating.
        verify_checksums: check every file against the sha256 in the marker (else only presence and sizes).

    The dataset is generated into a temporary folder beside ``root`` and renamed into place once its
    completion marker is written, so an interrupted generation never looks complete; a folder that fails
    :func:`check_synthetic_dataset` is removed and regenerated with a warning saying why.
    """
    root = os.path.abspath(root if root is not None else default_synthetic_root())
    wanted = dict(seed=seed, num_train=num_train, num_val=num_val, image_size=image_size)
    # Fast path without the lock (nothing is written, so a read-only complete dataset works).
    if not force and check_synthetic_dataset(root, verify_checksums=verify_checksums, **wanted)[0]:
        return root
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(os.path.join(parent, f".{name}.lock")):
        if not force:
            # again under the lock: another process may have generated it meanwhile
            ok, reason = check_synthetic_dataset(root, verify_checksums=verify_checksums, **wanted)
            if ok:
                return root
            if os.path.exists(root):
                logger.warning(
                    f"K-Net synthetic dataset at {root} is not valid: {reason}. "
                    f"Removing it and regenerating."
                )
        elif os.path.exists(root):
            logger.info(f"Regenerating the K-Net synthetic dataset at {root} (forced).")
        # Leftovers of interrupted generations (we hold the lock, so nobody else is writing them).
        for entry in os.listdir(parent):
            if entry.startswith(f".{name}.tmp-") or entry.startswith(f".{name}.old-"):
                logger.warning(
                    f"Removing the leftover of an interrupted generation: {os.path.join(parent, entry)}"
                )
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)

        # Parameters not asked for: those of the folder's marker when it is readable, else the defaults.
        previous = _read_marker_params(root)
        defaults = default_parameters()
        params = {key: previous.get(key, defaults[key]) if v is None else v for key, v in wanted.items()}
        params.update({key: int(params[key]) for key in ("seed", "num_train", "num_val")})
        tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        logger.info(
            f"Generating the K-Net synthetic dataset into {root} "
            f"({params['num_train']} train + {params['num_val']} val images, seed {params['seed']}) ..."
        )
        start = time.perf_counter()
        try:
            generate_synthetic_dataset(tmp, progress=progress, **params)
            if os.path.exists(root):
                old = os.path.join(parent, f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.rename(root, old)
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info(f"K-Net synthetic dataset ready at {root} ({time.perf_counter() - start:.1f} s).")
    return root
