"""`vsqe bench`: model-only frames/s per backend and size, against the machine's measured peaks.

A benchmark, not a test: the numbers go to stdout (and to a markdown file with --markdown), with
the command that made them.
"""
from __future__ import annotations

import argparse
import shlex
import sys

DEFAULT_SIZES = "416x240,832x480,1280x720,1920x1080"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="model throughput per backend and size vs the machine's peaks and the reference path",
        description=(
            "Frames/s (median of --repeats after --warmup), GFLOP/s from the model's FLOP count, the\n"
            "percentage of this machine's measured bf16 and fp32 conv peaks, and the speed-up over the\n"
            "reference path (eager fp32 with torchvision's deform_conv2d)."
        ),
    )
    p.add_argument("--model", default="stdf")
    p.add_argument("--backend", default="reference,torch-fp32,torch-bf16",
                   help="comma-separated backends; 'reference' = eager fp32 + torchvision DCN")
    p.add_argument("--size", default=DEFAULT_SIZES, help=f"comma-separated WxH (default {DEFAULT_SIZES})")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--weights", metavar="FILE", help="weights to load (speed does not depend on them)")
    p.add_argument("--quick", action="store_true", help="smaller peak measurements (for tests)")
    p.add_argument("--markdown", metavar="FILE", help="append the result table to this markdown file")
    p.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from vsqe.bench.peaks import measure_peaks
    from vsqe.bench.run import benchmark, format_markdown

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    sizes = [s.strip() for s in args.size.split(",") if s.strip()]
    peaks = measure_peaks(quick=args.quick)
    rows = benchmark(args.model, backends, sizes, peaks, repeats=args.repeats, warmup=args.warmup, weights=args.weights)
    command = "vsqe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = format_markdown(args.model, rows, peaks, command)
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0
