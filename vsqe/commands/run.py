"""`vsqe run IN OUT`: decode -> enhance -> encode.

Three stages run at once: a thread decodes ahead (bounded queue), the main thread runs the model,
a thread encodes behind it (bounded queue). The output appears only when complete (encode.py);
frames the input could not deliver make the exit status 3 after the output is written.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time

from vsqe.errors import FramesLostError

log = logging.getLogger("vsqe.run")

_QUEUE_DEPTH = 4  # frames decoded ahead / waiting to be encoded: a few, to smooth out stalls


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    from vsqe.io.encode import CODECS, DEFAULT_CRF, DEFAULT_PRESET

    p = subparsers.add_parser(
        "run",
        help="enhance a video: decode, run a model, encode",
        description=(
            "Enhance a decoded video with a learned QE model and write the result.\n"
            "Inputs: .mkv .mp4 .mov, raw .264/.265/.266 (.h264 .hevc .vvc ...) streams, .y4m, or - (y4m on stdin).\n"
            "Outputs by extension: .mkv (x265, x264, ffv1) .mp4/.mov (x265, x264) .hevc/.265 (x265)\n"
            ".264 (x264) .y4m .yuv, or - (y4m on stdout)."
        ),
    )
    p.add_argument("input", help="the video to enhance")
    p.add_argument("output", help="where to write the enhanced video (replaced only when complete)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="stdf", help="registered model name (default: %(default)s)")
    m.add_argument("--weights", metavar="FILE", help="checkpoint to load (default: the model's shipped weights)")
    m.add_argument("--backend", default="auto", help="inference backend (default: %(default)s)")
    m.add_argument("--allow-untrained", action="store_true",
                   help="run with random weights when the model has no trained default (tests and demos only)")
    m.add_argument("--tile", type=_positive, metavar="N", help="process frames in N x N tiles (bounds memory)")
    m.add_argument("--overlap", type=int, default=64, metavar="N", help="tile overlap in pixels (default: %(default)s)")
    m.add_argument("--threads", type=_positive, metavar="N", help="CPU threads for inference")
    e = p.add_argument_group("encoding")
    e.add_argument("--codec", choices=list(CODECS), help="output codec (default: from the output extension)")
    q = e.add_mutually_exclusive_group()
    q.add_argument("--crf", type=float, metavar="N", help=f"x265/x264 constant quality (default: {DEFAULT_CRF})")
    q.add_argument("--qp", type=int, metavar="N", help="x265/x264 constant QP instead of --crf")
    e.add_argument("--preset", help=f"x265/x264 preset (default: {DEFAULT_PRESET})")
    e.add_argument("--codec-opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="encoder option passed to FFmpeg as is (repeatable), e.g. x265-params=aq-mode=3")
    o = p.add_argument_group("run")
    o.add_argument("--frames", type=_positive, metavar="N", help="enhance only the first N frames")
    o.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    # The decode and encode threads run beside inference: OpenMP workers that spin-wait between
    # torch ops (libgomp's default) take the cores they need. Measured on 2 cores (64x64 and
    # 416x240, docs/reliability.md): 1.6 -> 12.8 fps and 0.51 -> 0.84 fps with passive waiting.
    # Read when torch loads its OpenMP runtime, so only before the first `import torch`; a value
    # the user set is kept.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from vsqe.io.decode import open_video
    from vsqe.io.encode import EncodeSettings, VideoWriter, check_output_path, plan_output

    # Every check that can fail runs before the output file exists: input, output, model, encoder.
    plan = plan_output(args.output, args.codec)
    reader = open_video(args.input)
    try:
        info = reader.info
        log.info("input %s: %s", args.input, info.describe())
        check_output_path(args.output, [args.input])
        enhancer = _build_enhancer(args)
        settings = EncodeSettings(
            codec=plan.codec, crf=args.crf, qp=args.qp, preset=args.preset, options=dict(args.codec_opt)
        )
        copy_from = args.input if info.has_timestamps and info.container != "yuv4mpegpipe" else None
        writer = VideoWriter(plan, info, settings, copy_streams_from=copy_from)
        writer.trim_copied_streams = args.frames is not None
        total = info.frame_count
        if args.frames is not None:
            total = min(args.frames, total) if total is not None else args.frames
        quiet = getattr(args, "quiet", False)
        start = time.monotonic()
        with writer:
            done = _pump(reader, enhancer, writer, total, args.frames, progress=not (args.no_progress or quiet))
        seconds = time.monotonic() - start
    finally:
        reader.close()
    if not quiet:
        where = "stdout" if args.output == "-" else args.output
        sys.stderr.write(
            f"vsqe: {done} frames in {seconds:.1f} s ({done / seconds if seconds > 0 else 0:.2f} fps) -> {where}\n"
        )
    if not reader.stats.clean:
        raise FramesLostError(
            f"{args.input}: {reader.stats.describe()}; {args.output} was written from the frames that decoded"
        )
    return 0


def _build_enhancer(args: argparse.Namespace):
    from vsqe.pipeline.enhancer import Enhancer

    enhancer = Enhancer(
        model=args.model,
        weights=args.weights,
        backend=args.backend,
        tile=args.tile,
        overlap=args.overlap,
        threads=args.threads,
        require_weights=not args.allow_untrained,
    )
    if enhancer.weights_path is None:
        log.warning(
            "MODEL %r HAS NO TRAINED WEIGHTS: running with RANDOM weights (--allow-untrained); "
            "the output is NOT an enhancement",
            args.model,
        )
    else:
        log.info("model %s, weights %s, backend %s", args.model, enhancer.weights_path, enhancer.backend.name)
    return enhancer


def _pump(reader, enhancer, writer, total: int | None, limit: int | None, progress: bool) -> int:
    """Runs the three stages; returns the number of frames written."""
    from vsqe.io.threads import ReadAhead, WriteBehind
    from vsqe.progress import Progress

    frames = reader if limit is None else itertools.islice(reader, limit)
    source = ReadAhead(frames, depth=_QUEUE_DEPTH, name="vsqe-decode")
    sink = WriteBehind(writer.write, depth=_QUEUE_DEPTH, name="vsqe-encode")
    bar = Progress(total, enabled=progress)
    try:
        for frame in enhancer.enhance_stream(source):
            sink.put(frame)
            bar.update()
        sink.finish()
    finally:
        # On success both threads have ended; on any error or Ctrl-C they are stopped here, and the
        # writer's context manager then removes the unfinished output.
        sink.close()
        source.close()
        bar.close()
    return writer.frames_written
