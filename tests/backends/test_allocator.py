"""backends/allocator.py: malloc keeps freed memory for inference (glibc), opt-out by env."""
from __future__ import annotations

import subprocess
import sys

import pytest

ALLOCATOR_CHECK = """
import ctypes, os, sys
from vsqe.backends.allocator import keep_freed_memory
first = keep_freed_memory()
assert keep_freed_memory() is first  # idempotent
if first:
    # With mmap off, a 64 MiB block comes from the heap: freeing it must not return the pages,
    # so the next allocation of that size reuses them without growing RSS again.
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    p = libc.malloc(64 << 20); ctypes.memset(p, 1, 64 << 20); libc.free(p)
    after_free = rss()
    q = libc.malloc(64 << 20); ctypes.memset(q, 1, 64 << 20)
    grew = rss() - after_free
    libc.free(q)
    assert grew < (8 << 20), grew
print(first)
"""


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_CHECK], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_keeps_freed_memory_on_glibc():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc tuning is Linux-only")
    assert _run({"VSQE_MALLOC": ""}) == "True"


def test_opt_out_leaves_malloc_alone():
    assert _run({"VSQE_MALLOC": "default"}) == "False"
