"""The CPU heap setting: with ``retain_freed_memory`` a freed large tensor's memory serves the next one
without page faults (counted by the kernel), glibc's default faults every page in again; the config key
applies it for CPU runs only. Each measurement runs in a fresh interpreter: the setting belongs to the whole
process."""
import os
import subprocess
import sys

import pytest
from detectron2.config import get_cfg

from knet import add_knet_config
from knet.engine import allocator

pytestmark = pytest.mark.skipif(not allocator.heap_setting_supported(),
                                reason="the heap setting exists on glibc only")

_COUNT_FAULTS = """
import resource, sys, torch
from knet.engine.allocator import restore_default_malloc, retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
elif sys.argv[1] == "restored":
    assert retain_freed_memory() and restore_default_malloc()
numel = 64 * 2**20 // 4  # 64 MiB of float32: above glibc's largest mmap threshold (32 MiB)
torch.ones(numel)  # the heap grows
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(numel)  # allocated, written, freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode):
    out = subprocess.run([sys.executable, "-c", _COUNT_FAULTS, mode], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_retained_memory_is_reused_without_page_faults():
    pages = 8 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # 8 tensors of 64 MiB, in pages
    default, retained, restored = _page_faults("default"), _page_faults("retain"), _page_faults("restored")
    assert default > 0.9 * pages  # every page of every tensor is faulted in again
    # served from the kept heap (the heap may grow once more while small blocks settle in a freed one)
    assert retained < 0.2 * pages
    assert restored > 0.9 * pages  # restore_default_malloc gives glibc's behaviour back


def _cfg(device, on=True):
    cfg = get_cfg()
    add_knet_config(cfg)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.KNET.CPU_RETAIN_FREED_MEMORY = on
    return cfg


def test_config_applies_it_on_cpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    assert allocator.apply_cpu_allocator_config(_cfg("cpu")) is True
    assert allocator.apply_cpu_allocator_config(_cfg("cpu", on=False)) is False
    assert allocator.apply_cpu_allocator_config(_cfg("cuda")) is False
    assert len(calls) == 1
