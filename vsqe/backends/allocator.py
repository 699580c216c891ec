"""Keep freed memory in the process (glibc malloc), so inference does not page-fault every frame.

PyTorch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold (128 KiB,
rising to at most 32 MiB) with a fresh mmap and unmaps them on free, and trims the heap top back
to the OS; a feature map of STDF at 832x480 is 13-51 MB, so every layer of every frame gets new
pages and pays a page fault per 4 KiB on first touch. Measured on the 2-core dev VM (STDF-Y,
torch-bf16, model-only): 1.71 -> 2.95 frames/s at 832x480 and 10.3 -> 10.6 at 416x240 with
mmap off and trimming off (docs/benchmarks.md). The pattern of sizes repeats every frame, so the
heap reaches its peak in the first frames and is reused from then on (RSS stays flat; the
benchmarks' RSS-growth column checks it).

Process-wide and only on glibc; `VSQE_MALLOC=default` leaves malloc alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Serves every allocation from the heap (no per-block mmap) and never trims it. Idempotent;
    returns whether the setting is in effect (False off glibc or with VSQE_MALLOC=default)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("VSQE_MALLOC", "").strip().lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success.
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
    if ok:
        log.debug("malloc: mmap off, no trimming (freed memory is reused, not returned)")
    _applied = ok
    return ok
