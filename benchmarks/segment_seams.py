"""The cost of segmenting a recurrent model (BasicVSR++): Y-PSNR of segmented output against
whole-clip output on the dev clips, per (L, O), and the largest per-frame difference at a
segment boundary (issue 7's target: within 0.05 dB). Prints docs/basicvsrpp.md's table 3 rows.

  python benchmarks/segment_seams.py --model basicvsrpp-y [--weights FILE] [--frames 30] \
      [--configs 10:0,10:4,15:4,15:8,24:8,30:6] [--clips city_416x240,phone_832x480,birds_640x360]

"whole" is one segment holding the clip (L = frames, O = 0). Frames are the HM QP37 dev
streams in ../shared/data, against their raw .y4m; fp32 backend.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from vsqe.eval.psnr import psnr
from vsqe.io.decode import open_video
from vsqe.pipeline.enhancer import Enhancer
from vsqe.pipeline.segments import SegmentPlan

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def per_frame_y_psnr(outs, refs) -> list[float]:
    return [psnr(r.planes[0], o.planes[0], 255) for o, r in zip(outs, refs)]


def boundary_frames(plan: SegmentPlan, frames: int) -> set[int]:
    """The output frames on either side of each segment boundary."""
    edges = set()
    for seg in plan.segments(frames)[1:]:
        edges |= {seg.out_start - 1, seg.out_start}
    return edges


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/segment_seams.py")
    p.add_argument("--model", default="basicvsrpp-y")
    p.add_argument("--weights", help="default: the model's shipped weights")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--configs", default="10:0,10:4,15:4,15:8,24:8,30:6", help="L:O pairs")
    p.add_argument("--clips", default="city_416x240,phone_832x480,birds_640x360")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    configs = [tuple(int(v) for v in c.split(":")) for c in a.configs.split(",") if c]
    enh = Enhancer(a.model, weights=a.weights, backend="torch-fp32", threads=a.threads)
    print(f"model {a.model}, weights {enh.weights_path}, {a.frames} frames, torch-fp32, {a.threads} threads")
    print("| clip | L | O | frames run / out | Y-PSNR | ΔPSNR | vs whole clip | max \\|Δ\\| at a boundary | max \\|Δ\\| any frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for clip in a.clips.split(","):
        refs = list(itertools.islice(open_video(DATA / f"{clip}.y4m"), a.frames))
        lq = list(itertools.islice(open_video(DATA / f"{clip}_hm_ldp_qp37.hevc"), a.frames))
        n = min(len(refs), len(lq))
        refs, lq = refs[:n], lq[:n]
        base = sum(per_frame_y_psnr(lq, refs)) / n
        whole = None
        for length, overlap in [(n, 0), *configs]:
            plan = SegmentPlan(length, overlap)
            enh.segment_plan = plan
            values = per_frame_y_psnr(list(enh.enhance_stream(iter(lq))), refs)
            mean = sum(values) / n
            if whole is None:
                whole = values
            diffs = [abs(v - w) for v, w in zip(values, whole)]
            edges = boundary_frames(plan, n)
            at_edge = max((diffs[i] for i in edges), default=0.0)
            cost = sum(s.num_inputs for s in plan.segments(n)) / n
            label = "whole" if length >= n else str(length)
            print(f"| {clip} | {label} | {overlap} | {cost:.2f} | {mean:.3f} | {mean - base:+.4f} | "
                  f"{mean - sum(whole) / n:+.4f} | {at_edge:.4f} | {max(diffs):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
