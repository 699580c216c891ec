"""The machine's own peaks: matmul and 3x3-conv throughput in fp32 and bf16 (AMX where present).

Percentages in the benchmark are relative to these, measured in the same run, so a number means
the same on every machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import median
from typing import Callable

import torch


def time_median(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of `fn` in seconds after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


@dataclass(frozen=True)
class Peaks:
    matmul_fp32: float  # GFLOP/s
    matmul_bf16: float
    conv_fp32: float
    conv_bf16: float


@torch.inference_mode()
def measure_peaks(quick: bool = False) -> Peaks:
    n = 1024 if quick else 2048
    reps = 3 if quick else 7

    def mm_rate(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        return 2 * n**3 / time_median(lambda: torch.mm(a, b), 2, reps) / 1e9

    def conv_rate(dtype: torch.dtype) -> float:
        # STDF's QE-net shape: 48 -> 48 channels, 3x3, at 416x240; channels_last is what keeps
        # oneDNN on its AMX (bf16) / brgemm (fp32) kernels.
        h, w = (120, 208) if quick else (240, 416)
        x = torch.randn(1, 48, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(48, 48, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
        return 2 * 48 * 48 * 9 * h * w / time_median(lambda: conv(x), 2, reps) / 1e9

    return Peaks(
        matmul_fp32=mm_rate(torch.float32),
        matmul_bf16=mm_rate(torch.bfloat16),
        conv_fp32=conv_rate(torch.float32),
        conv_bf16=conv_rate(torch.bfloat16),
    )
