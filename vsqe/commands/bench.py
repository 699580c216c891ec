"""`vsqe bench`: model-only frames/s per backend and size, against the machine's measured peaks;
with --end-to-end the real `vsqe run` path beside it; with --accuracy the ΔPSNR check instead.

A benchmark, not a test: the numbers go to stdout (and to a markdown file with --markdown), with
the command that made them.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from vsqe.commands.arguments import positive_int

DEFAULT_SIZES = "416x240,832x480,1280x720,1920x1080"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="model throughput per backend and size vs the machine's peaks and the reference path",
        description=(
            "Frames/s (median of --repeats after --warmup), GFLOP/s from the model's FLOP count, the\n"
            "percentage of this machine's measured bf16 and fp32 conv peaks, and the speed-up over the\n"
            "reference path (eager fp32 with torchvision's deform_conv2d).\n"
            "Bench-only backends (compared, not offered by `vsqe run`): ort-fp32 (ONNX Runtime CPU on the\n"
            "exported graph), torch-compile-fp32 and torch-compile-bf16 (torch.compile, inductor)."
        ),
    )
    p.add_argument("--model", default="stdf")
    p.add_argument("--backend", default="reference,torch-fp32,torch-bf16",
                   help="comma-separated backends; 'reference' = eager fp32 + torchvision DCN; bench-only: "
                        "ort-fp32, torch-compile-fp32, torch-compile-bf16")
    p.add_argument("--size", default=DEFAULT_SIZES, help=f"comma-separated WxH (default {DEFAULT_SIZES})")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for inference (default: torch's)")
    p.add_argument("--weights", metavar="FILE", help="weights to load (speed does not depend on them)")
    p.add_argument("--quick", action="store_true", help="smaller peak measurements (for tests)")
    p.add_argument("--markdown", metavar="FILE", help="append the result table to this markdown file")
    e = p.add_argument_group("end to end and accuracy")
    e.add_argument("--end-to-end", action="store_true",
                   help="also time `vsqe run` in process (decode, model, x265 encode) on a real QP37 stream of "
                        "each size, with its peak RSS")
    e.add_argument("--frames", type=positive_int, metavar="N",
                   help="frames per end-to-end run (default 30; sizes other than 416x240 and 832x480 get a stream "
                        "of N frames made from phone_832x480.y4m) and per accuracy clip (default: all)")
    e.add_argument("--e2e-warmup", type=int, default=3, metavar="N",
                   help="end-to-end frames left out of the steady-state rate (default: %(default)s)")
    e.add_argument("--accuracy", action="store_true",
                   help="instead of timing: ΔPSNR of each backend minus ΔPSNR of torch-fp32 on the dev clips "
                        "(the HM QP37 streams against their .y4m), bound 0.02 dB; needs --weights")
    e.add_argument("--clips", default="city_416x240,phone_832x480,birds_640x360",
                   help="dev clips for --accuracy (default: %(default)s)")
    e.add_argument("--data", metavar="DIR", help="folder of the shared clips (default: ../shared/data or $VSQE_SHARED_DATA)")
    e.add_argument("--allow-untrained", action="store_true",
                   help="--accuracy with random weights when --weights is not given (tests only)")
    p.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    # `vsqe run` waits passively between OpenMP regions (commands/run.py) so its decode and encode
    # threads get the cores; the end-to-end rows must measure that same setting, and the
    # model-only rows beside them too, or the ratio compares two configurations. Read only when
    # torch loads, so before the first import of torch; a value the user set is kept.
    if args.end_to_end and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vsqe.bench.backends import check_names

    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    check_names(backends)
    command = "vsqe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = _accuracy(args, backends, command) if args.accuracy else _throughput(args, backends, command)
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


def _throughput(args: argparse.Namespace, backends: list[str], command: str) -> str:
    from pathlib import Path

    from vsqe.bench.peaks import measure_peaks
    from vsqe.bench.run import E2EOptions, benchmark, format_markdown

    sizes = [s.strip() for s in args.size.split(",") if s.strip()]
    e2e = None
    if args.end_to_end:
        e2e = E2EOptions(frames=args.frames or 30, warmup=args.e2e_warmup,
                         data_dir=Path(args.data) if args.data else None)
    peaks = measure_peaks(quick=args.quick)
    rows, e2e_rows = benchmark(args.model, backends, sizes, peaks, repeats=args.repeats, warmup=args.warmup,
                               weights=args.weights, threads=args.threads, end_to_end=e2e)
    return format_markdown(args.model, rows, peaks, command, e2e_rows)


def _accuracy(args: argparse.Namespace, backends: list[str], command: str) -> str:
    from pathlib import Path

    from vsqe.bench.accuracy import check_accuracy, format_accuracy
    from vsqe.bench.backends import make_enhancer
    from vsqe.bench.e2e import default_data_dir

    require = not args.allow_untrained
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    data_dir = Path(args.data) if args.data else default_data_dir()
    rows = check_accuracy(
        args.model, args.weights, backends, data_dir, clips, args.frames,
        lambda name: make_enhancer(args.model, args.weights, name, args.threads, require_weights=require),
    )
    return format_accuracy(args.model, args.weights, rows, command)
