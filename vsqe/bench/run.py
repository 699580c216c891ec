"""Model-only throughput per backend and size, against the measured peaks and the reference path.

The reference is what the papers' code runs: eager fp32 with torchvision's deform_conv2d.
"""
from __future__ import annotations

import contextlib
import platform
import resource
from dataclasses import dataclass
from typing import Iterator

import torch

from vsqe.backends import create_backend
from vsqe.bench.flops import count_flops
from vsqe.bench.peaks import Peaks, time_median
from vsqe.models import build_model
from vsqe.pipeline.tiles import pad_to, round_up

REFERENCE = "reference"


@dataclass
class BenchRow:
    backend: str
    size: str
    fps: float
    gflops: float  # achieved GFLOP/s
    pct_bf16_conv: float
    pct_fp32_conv: float
    vs_reference: float | None
    max_abs_diff_vs_fp32: float | None
    peak_rss_mb: float


@contextlib.contextmanager
def dcn_implementation(name: str) -> Iterator[None]:
    from vsqe.ops import dcn

    previous = dcn.get_impl()
    dcn.set_impl(name)
    try:
        yield
    finally:
        dcn.set_impl(previous)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(
    model_name: str,
    backends: list[str],
    sizes: list[str],
    peaks: Peaks,
    repeats: int = 5,
    warmup: int = 2,
    weights: str | None = None,
) -> list[BenchRow]:
    module, spec, _ = build_model(model_name, weights, require_weights=False)
    rows: list[BenchRow] = []
    torch.manual_seed(0)
    for size in sizes:
        width, height = parse_size(size)
        ph, pw = round_up(height, spec.size_multiple), round_up(width, spec.size_multiple)
        channels = 1 if spec.color == "y" else 3
        x = pad_to(torch.rand(1, spec.window, channels, height, width), ph, pw)
        flops = count_flops(module, x)
        fp32_out = None
        ref_fps = None
        for name in backends:
            impl = "torchvision" if name == REFERENCE else "native"
            backend_name = "torch-fp32" if name == REFERENCE else name
            with dcn_implementation(impl):
                backend = create_backend(backend_name, module)
                out = backend(x)
                seconds = time_median(lambda: backend(x), warmup, repeats)
            if name == REFERENCE:
                fp32_out = out
                ref_fps = 1 / seconds
            diff = None if fp32_out is None or name == REFERENCE else float((out - fp32_out).abs().max())
            rate = flops / seconds / 1e9
            rows.append(
                BenchRow(
                    backend=name,
                    size=size,
                    fps=1 / seconds,
                    gflops=rate,
                    pct_bf16_conv=100 * rate / peaks.conv_bf16,
                    pct_fp32_conv=100 * rate / peaks.conv_fp32,
                    vs_reference=None if ref_fps is None else (1 / seconds) / ref_fps,
                    max_abs_diff_vs_fp32=diff,
                    peak_rss_mb=_peak_rss_mb(),
                )
            )
            # Leave the model in its fp32 NCHW form for the next backend.
            module = module.float().to(memory_format=torch.contiguous_format)
    return rows


def machine_line() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def format_markdown(model: str, rows: list[BenchRow], peaks: Peaks, command: str) -> str:
    lines = [
        f"### {model}: model-only throughput",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Measured peaks (GFLOP/s): matmul fp32 {peaks.matmul_fp32:.0f}, matmul bf16 {peaks.matmul_bf16:.0f}, "
        f"conv3x3 48->48 fp32 {peaks.conv_fp32:.0f}, bf16 {peaks.conv_bf16:.0f}",
        "",
        "| backend | size | frames/s | GFLOP/s | % bf16 conv peak | % fp32 conv peak | x reference | max abs diff vs fp32 | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "–" if r.vs_reference is None else f"{r.vs_reference:.2f}"
        diff = "–" if r.max_abs_diff_vs_fp32 is None else f"{r.max_abs_diff_vs_fp32:.1e}"
        lines.append(
            f"| {r.backend} | {r.size} | {r.fps:.2f} | {r.gflops:.0f} | {r.pct_bf16_conv:.0f}% | "
            f"{r.pct_fp32_conv:.0f}% | {ratio} | {diff} | {r.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines) + "\n"
