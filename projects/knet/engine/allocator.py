"""The CPU heap: keep freed memory in the process instead of handing it back to the system at every free.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a block larger than the
mmap threshold (at most 32 MiB) gets pages of its own from the kernel and gives them back on ``free``; the
next tensor of that size faults every page in again, and the kernel zeroes each one. A K-Net R-50 forward
pass at 800x1216 allocates about 0.85 GB of such blocks (stride-4 feature maps of 62 MB, 153 mask maps):
about 210,000 page faults and 0.45 s of system time in a 3.1 s pass on our 2-core machine. With
:func:`retain_freed_memory` glibc serves every block from its heap and keeps what is freed for the next one,
so the pass faults only while the heap first grows. The price: the process keeps its peak heap until it exits
(``malloc_trim`` still returns it on request). This is the effect that CPU tuning guides for PyTorch get by
preloading jemalloc or tcmalloc, without a library to install.

It is a process setting, not a model's: :func:`knet.engine.setup` (``train_net.py``) and the demo apply it
for CPU runs when ``MODEL.KNET.CPU_RETAIN_FREED_MEMORY`` is on (:func:`apply_cpu_allocator_config`);
``tools/benchmark.py`` sets it per row (``--malloc``, and a row without it), as does
``tools/benchmark_official.py`` (each side as it ships, and on the other side's heap).
"""
import ctypes
import ctypes.util
import functools
import logging
import sys

from detectron2.config import CfgNode

__all__ = [
    "heap_setting_supported", "retain_freed_memory", "restore_default_malloc", "apply_cpu_allocator_config"
]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc's defaults, restored by restore_default_malloc
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): in effect, never trim on free


@functools.lru_cache(maxsize=None)
def _glibc():
    """The process's glibc, loaded once (``None`` elsewhere: macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def heap_setting_supported() -> bool:
    """Whether this process's C library is glibc, whose heap these functions set."""
    return _glibc() is not None


def retain_freed_memory() -> bool:
    """Let glibc serve every allocation from its heap (``M_MMAP_MAX`` 0) and never shrink the heap on ``free``
    (``M_TRIM_THRESHOLD`` 2^31-1), for the whole process. Returns True when applied, False where the C library
    is not glibc (nothing changes there)."""
    libc = _glibc()
    if libc is None:
        logger.debug("retain_freed_memory: not glibc, the C library's allocator is left as it is")
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def restore_default_malloc() -> bool:
    """Undo :func:`retain_freed_memory`: glibc's default values (the mmap threshold fixed at its initial
    128 KiB: glibc's raising of it as large blocks are freed stays off once set), and the retained memory
    returned to the system (``malloc_trim``). Returns True when applied."""
    libc = _glibc()
    if libc is None:
        return False
    ok = all(libc.mallopt(param, value) for param, value in (
        (_M_MMAP_MAX, _DEFAULT_MMAP_MAX), (_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)))
    libc.malloc_trim(0)
    return ok


def apply_cpu_allocator_config(cfg: CfgNode) -> bool:
    """:func:`retain_freed_memory` when ``cfg`` runs on the CPU (``MODEL.DEVICE`` "cpu") and
    ``MODEL.KNET.CPU_RETAIN_FREED_MEMORY`` is on; returns whether it was applied."""
    if not (cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.KNET.CPU_RETAIN_FREED_MEMORY):
        return False
    applied = retain_freed_memory()
    if applied:
        logger.info("CPU heap: freed memory is kept for reuse (MODEL.KNET.CPU_RETAIN_FREED_MEMORY)")
    return applied
