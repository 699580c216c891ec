"""`vsqe bench --accuracy`: ΔPSNR of each backend against ΔPSNR of the fp32 path, on the dev clips.

Issue 4's bound: a fast path may replace fp32 only if its ΔPSNR differs by less than 0.02 dB.
Each clip's HM QP37 stream is enhanced frame by frame with the same Enhancer as `vsqe run`
(outputs kept at the stream's bit depth, as a lossless .y4m output would hold them) and scored
against the raw .y4m with the functions of `vsqe eval` (vsqe/eval/report.py). The max abs
difference of the output planes from fp32's, in code values, is reported beside it.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsqe.errors import InputError

DEV_CLIPS = ("city_416x240", "phone_832x480", "birds_640x360")
FP32 = "torch-fp32"
BOUND_DB = 0.02  # issue 4


@dataclass
class AccuracyRow:
    """One backend on one clip; `weights`: the files it ran (shipped defaults included, the PQF
    network's after a "+"), "" for random weights."""

    clip: str
    backend: str
    frames: int
    delta_psnr: float  # Y, dB: enhanced - compressed
    vs_fp32: float | None  # delta_psnr - fp32's delta_psnr (None for fp32 itself)
    max_abs_levels: int | None  # max |out - fp32 out| over the luma planes, in code values
    weights: str = ""

    @property
    def within_bound(self) -> bool | None:
        return None if self.vs_fp32 is None else abs(self.vs_fp32) < BOUND_DB


def clip_paths(data_dir: Path, clip: str) -> tuple[Path, Path]:
    ref, dist = data_dir / f"{clip}.y4m", data_dir / f"{clip}_hm_ldp_qp37.hevc"
    for path in (ref, dist):
        if not path.is_file():
            raise InputError(f"{path}: dev clip not found (set --data or VSQE_SHARED_DATA)")
    return ref, dist


def enhance_clip(enhancer, dist: Path, frames: int | None) -> list:
    """The enhanced frames of `dist` (at most `frames`), as `vsqe run` makes them: PQF models
    with PQFs from the stream's slice QPs and their look-ahead (`vsqe run --pqf qp`)."""
    from vsqe.io.decode import open_video

    with open_video(str(dist)) as reader:
        source = itertools.islice(reader, frames)
        if enhancer.spec.temporal != "pqf":
            return list(enhancer.enhance_stream(source))
        from vsqe.pipeline.pqf_schedule import bitstream_qps, default_lookahead, qp_flags

        flags = qp_flags(bitstream_qps(str(dist), frames))
        enhancer.pqf_lookahead = default_lookahead(flags)
        return list(enhancer.enhance_pqf_stream(source, flags))


def score_clip(ref: Path, dist: Path, enhanced: list, frames: int | None) -> float:
    """ΔPSNR (Y) of the enhanced frames, by `vsqe eval`'s code."""
    from vsqe.eval.report import EvalReport, score_frames
    from vsqe.io.decode import open_video

    with contextlib.ExitStack() as stack:
        ref_reader = stack.enter_context(open_video(str(ref)))
        dist_reader = stack.enter_context(open_video(str(dist)))
        report = EvalReport(str(ref), str(dist), "enhanced", ref_reader.info.fmt.bit_depth)
        report.frames.extend(
            score_frames(ref_reader, dist_reader, enhanced, names=(str(ref), str(dist), "enhanced"),
                         limit=len(enhanced) if frames is not None else None)
        )
    delta = report.delta_y()
    assert delta is not None  # an enhanced stream was given
    return delta


def max_abs_levels(a: list, b: list) -> int:
    return max(
        int(np.abs(x.planes[0].astype(np.int64) - y.planes[0].astype(np.int64)).max()) for x, y in zip(a, b)
    )


def check_accuracy(
    model: str,
    weights: str | None,
    backends: list[str],
    data_dir: Path,
    clips: list[str],
    frames: int | None,
    make_enhancer,
) -> list[AccuracyRow]:
    """fp32 first on each clip, then every other backend against it.

    `make_enhancer(name)` builds the Enhancer for a bench backend (commands/bench.py), and
    returns it with the context (DCN implementation) to run it in."""
    order = [FP32] + [b for b in backends if b != FP32]
    rows: list[AccuracyRow] = []
    for clip in clips:
        ref, dist = clip_paths(data_dir, clip)
        base: list | None = None
        base_delta = 0.0
        for name in order:
            enhancer, context = make_enhancer(name)
            with context:
                enhanced = enhance_clip(enhancer, dist, frames)
            delta = score_clip(ref, dist, enhanced, frames)
            loaded = " + ".join(str(w) for w in (enhancer.weights_path, getattr(enhancer, "pqf_weights_path", None)) if w)
            if base is None:
                base, base_delta = enhanced, delta
                rows.append(AccuracyRow(clip, name, len(enhanced), delta, None, None, loaded))
            else:
                rows.append(AccuracyRow(clip, name, len(enhanced), delta, delta - base_delta,
                                        max_abs_levels(enhanced, base), loaded))
    return rows


def format_accuracy(model: str, weights: str | None, rows: list[AccuracyRow], command: str) -> str:
    loaded = rows[0].weights if rows else (weights or "")
    lines = [
        f"### {model}: accuracy of the fast paths (ΔPSNR against fp32's)",
        "",
        f"Command: `{command}`  ",
        f"Weights: {loaded or 'untrained (random, --allow-untrained): the figures say nothing about quality'}  ",
        f"Bound (issue 4): |ΔPSNR(backend) − ΔPSNR(fp32)| < {BOUND_DB} dB",
        "",
        "| clip | backend | frames | ΔPSNR Y dB | − fp32 dB | max abs diff (levels) | within bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = "–" if r.vs_fp32 is None else f"{r.vs_fp32:+.4f}"
        diff = "–" if r.max_abs_levels is None else str(r.max_abs_levels)
        ok = "–" if r.within_bound is None else ("yes" if r.within_bound else "**NO**")
        lines.append(f"| {r.clip} | {r.backend} | {r.frames} | {r.delta_psnr:+.4f} | {vs} | {diff} | {ok} |")
    return "\n".join(lines) + "\n"
