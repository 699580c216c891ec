"""`vsqe eval --ref REF --dist D [--enh E]`: per-frame PSNR, ΔPSNR, CSV and plot.

The report goes to stdout (it is what the user asked for); warnings and errors go to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from vsqe.commands.arguments import positive_int
from vsqe.errors import FramesLostError

log = logging.getLogger("vsqe.eval")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="PSNR of compressed / enhanced video against a reference",
        description=(
            "Per-frame Y/U/V PSNR of --dist (and --enh) against --ref, their means and the gain\n"
            "(delta = enh - dist). Peak 2^bitdepth - 1 of the reference; a 10-bit stream against\n"
            "an 8-bit reference is rounded to 8 bits first, (v + 2) >> 2. Any input vsqe decodes."
        ),
    )
    p.add_argument("--ref", required=True, metavar="FILE", help="the reference (usually the raw .y4m)")
    p.add_argument("--dist", required=True, metavar="FILE", help="the compressed (decoded) video")
    p.add_argument("--enh", metavar="FILE", help="the enhanced video")
    p.add_argument("--csv", metavar="FILE", help="write one row per frame here")
    p.add_argument("--plot", metavar="FILE.png", help="write the per-frame Y-PSNR curves here")
    p.add_argument("--frames", type=positive_int, metavar="N", help="compare only the first N frames")
    p.set_defaults(handler=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    from vsqe.eval.report import EvalReport, score_frames
    from vsqe.io.decode import open_video
    from vsqe.io.encode import check_output_path

    inputs = [args.ref, args.dist] + ([args.enh] if args.enh else [])
    for out in (args.csv, args.plot):
        if out:
            check_output_path(out, inputs)
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(open_video(path)) for path in inputs]
        ref = readers[0]
        report = EvalReport(args.ref, args.dist, args.enh, ref.info.fmt.bit_depth)
        report.frames.extend(
            score_frames(
                readers[0],
                readers[1],
                readers[2] if args.enh else None,
                names=(args.ref, args.dist, args.enh),
                limit=args.frames,
            )
        )
    sys.stdout.write(report.summary() + "\n")
    sys.stdout.flush()
    if args.csv:
        report.write_csv(args.csv)
    if args.plot:
        from vsqe.eval.plot import plot_psnr

        plot_psnr(report, args.plot)
    problems = [f"{path}: {r.stats.describe()}" for path, r in zip(inputs, readers) if not r.stats.clean]
    if problems:
        raise FramesLostError("; ".join(problems) + " (the scores include what was decoded)")
    return 0
