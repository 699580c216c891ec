"""Model-only throughput per backend and size, against the measured peaks and the reference path;
with --end-to-end, the real `vsqe run` path beside it (e2e.py).

The reference is what the papers' code runs: eager fp32 with torchvision's deform_conv2d.
Backends that fail to build or run (torch.compile on a machine without a compiler, ...) become a
row saying why, so one failure does not lose the rest of a long run.
"""
from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vsqe.backends.allocator import keep_freed_memory
from vsqe.bench.backends import REFERENCE, dcn_for, dcn_implementation, make_backend, make_enhancer, one_line, reset_module
from vsqe.bench.e2e import EndToEnd, default_data_dir, run_end_to_end, stream_for_size
from vsqe.bench.flops import count_flops
from vsqe.bench.peaks import Peaks, time_median
from vsqe.models import build_model
from vsqe.pipeline.tiles import pad_to, round_up

# Kept importable from here: older code and tests use vsqe.bench.run.dcn_implementation.
__all__ = ["REFERENCE", "BenchRow", "E2ERow", "E2EOptions", "benchmark", "dcn_implementation", "format_markdown"]


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
    setup_s: float = 0.0  # backend build + first call (export, OpenVINO/inductor compilation)
    error: str | None = None  # one line: why this backend could not be measured


@dataclass
class E2ERow:
    backend: str
    size: str
    model_fps: float | None
    result: EndToEnd | None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.result is None or not self.model_fps:
            return None
        return self.result.fps / self.model_fps


@dataclass
class E2EOptions:
    frames: int | None = 30  # frames per run (the shared streams have 30)
    warmup: int = 3  # frames left out of the steady-state rate
    data_dir: Path | None = None


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _failed(name: str, size: str, exc: BaseException) -> BenchRow:
    return BenchRow(name, size, 0.0, 0.0, 0.0, 0.0, None, None, _peak_rss_mb(), error=one_line(exc))


def _measure(name: str, module: torch.nn.Module, model_name: str, x: torch.Tensor, warmup: int,
             repeats: int, threads: int | None) -> tuple[torch.Tensor, float, float]:
    """(first output, median seconds per frame, setup seconds) of one backend at one size."""
    with dcn_implementation(dcn_for(name)):
        start = time.perf_counter()
        backend = make_backend(name, module, model_name, threads)
        out = backend(x)
        setup = time.perf_counter() - start
        seconds = time_median(lambda: backend(x), warmup, repeats)
    return out, seconds, setup


def benchmark(
    model_name: str,
    backends: list[str],
    sizes: list[str],
    peaks: Peaks,
    repeats: int = 5,
    warmup: int = 2,
    weights: str | None = None,
    threads: int | None = None,
    end_to_end: E2EOptions | None = None,
) -> tuple[list[BenchRow], list[E2ERow]]:
    # Every row (reference and bench-only backends too) under the allocator setting vsqe run uses.
    keep_freed_memory()
    module, spec, _ = build_model(model_name, weights, require_weights=False)
    rows: list[BenchRow] = []
    e2e_rows: list[E2ERow] = []
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="vsqe-bench-") as tmp:
        for size in sizes:
            width, height = parse_size(size)
            ph, pw = round_up(height, spec.size_multiple), round_up(width, spec.size_multiple)
            channels = 1 if spec.color == "y" else 3
            x = pad_to(torch.rand(1, spec.window, channels, height, width), ph, pw)
            flops = count_flops(module, x)
            fp32_out = None
            ref_fps = None
            size_rows: list[BenchRow] = []
            for name in backends:
                try:
                    out, seconds, setup = _measure(name, module, model_name, x, warmup, repeats, threads)
                except Exception as exc:  # noqa: BLE001 - recorded as the row's result
                    size_rows.append(_failed(name, size, exc))
                    continue
                finally:
                    # Leave the model in its fp32 NCHW form for the next backend.
                    module = reset_module(module)
                if name == REFERENCE:
                    fp32_out, ref_fps = out, 1 / seconds
                diff = None if fp32_out is None or name == REFERENCE else float((out - fp32_out).abs().max())
                rate = flops / seconds / 1e9
                size_rows.append(
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
                        setup_s=setup,
                    )
                )
            rows.extend(size_rows)
            if end_to_end is not None:
                model_fps = {r.backend: r.fps for r in size_rows if r.error is None}
                e2e_rows.extend(_end_to_end(model_name, weights, backends, width, height, size, model_fps,
                                            end_to_end, Path(tmp), threads))
    return rows, e2e_rows


def _end_to_end(model_name: str, weights: str | None, backends: list[str], width: int, height: int, size: str,
                model_fps: dict[str, float], options: E2EOptions, tmp: Path, threads: int | None) -> list[E2ERow]:
    data_dir = options.data_dir or default_data_dir()
    try:
        stream = stream_for_size(width, height, data_dir, tmp, options.frames or 30)
    except Exception as exc:  # noqa: BLE001 - every backend of this size gets the reason
        return [E2ERow(name, size, model_fps.get(name), None, one_line(exc)) for name in backends]
    rows = []
    for name in backends:
        try:
            enhancer, context = make_enhancer(model_name, weights, name, threads)
            with context:
                result = run_end_to_end(stream, tmp, enhancer, options.frames, options.warmup)
            rows.append(E2ERow(name, size, model_fps.get(name), result))
        except Exception as exc:  # noqa: BLE001 - recorded as the row's result
            rows.append(E2ERow(name, size, model_fps.get(name), None, one_line(exc)))
        finally:
            enhancer = None  # free the model and its activations before the next backend
    return rows


def machine_line() -> str:
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    malloc = "keeps freed memory" if keep_freed_memory() else "default"
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}, OMP_WAIT_POLICY={omp}, malloc {malloc}"
    )


def format_markdown(model: str, rows: list[BenchRow], peaks: Peaks, command: str,
                    e2e_rows: list[E2ERow] | None = None) -> str:
    lines = [
        f"### {model}: model-only throughput",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Measured peaks (GFLOP/s): matmul fp32 {peaks.matmul_fp32:.0f}, matmul bf16 {peaks.matmul_bf16:.0f}, "
        f"conv3x3 48->48 fp32 {peaks.conv_fp32:.0f}, bf16 {peaks.conv_bf16:.0f}",
        "",
        "| backend | size | frames/s | GFLOP/s | % bf16 conv peak | % fp32 conv peak | x reference | max abs diff vs fp32 | peak RSS MB | setup s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.backend} | {r.size} | failed: {_cell(r.error)} | | | | | | | |")
            continue
        ratio = "–" if r.vs_reference is None else f"{r.vs_reference:.2f}"
        diff = "–" if r.max_abs_diff_vs_fp32 is None else f"{r.max_abs_diff_vs_fp32:.1e}"
        lines.append(
            f"| {r.backend} | {r.size} | {r.fps:.2f} | {r.gflops:.0f} | {r.pct_bf16_conv:.0f}% | "
            f"{r.pct_fp32_conv:.0f}% | {ratio} | {diff} | {r.peak_rss_mb:.0f} | {r.setup_s:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    if e2e_rows:
        text += "\n" + format_end_to_end(model, e2e_rows)
    return text


def format_end_to_end(model: str, rows: list[E2ERow]) -> str:
    lines = [
        f"### {model}: end-to-end `vsqe run` (decode, Enhancer, x265 encode to .mkv) next to model-only",
        "",
        "Steady-state frames/s after the warm-up frames; model busy = share of that wall time spent "
        "inside the backend (decode, conversion and encode overlap with it when near 100%); "
        "model in run = frames per second of backend time during the run (tiles and CPU taken by the "
        "codec threads included); tiles = the tile size `vsqe run` picked (whole frames when –); "
        "RSS sampled every 50 ms, growth = end of run minus after warm-up.",
        "",
        "| backend | size | frames | model-only fps | end-to-end fps | e2e / model | model busy | model in run fps | tiles | peak RSS MB | RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model_fps = "–" if r.model_fps is None else f"{r.model_fps:.2f}"
        if r.result is None:
            lines.append(f"| {r.backend} | {r.size} | | {model_fps} | failed: {_cell(r.error or '')} | | | | | | |")
            continue
        e = r.result
        ratio = "–" if r.ratio is None else f"{100 * r.ratio:.0f}%"
        tile = "–" if e.tile is None else str(e.tile)
        lines.append(
            f"| {r.backend} | {r.size} | {e.frames} | {model_fps} | {e.fps:.2f} | {ratio} | {100 * e.busy:.0f}% | "
            f"{e.model_fps_in_run:.2f} | {tile} | {e.peak_rss_mb:.0f} | {e.rss_growth_mb:+.0f} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "/")
