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

from vsqe.commands.arguments import positive_int
from vsqe.errors import FramesLostError

log = logging.getLogger("vsqe.run")

_QUEUE_DEPTH = 4  # frames decoded ahead / waiting to be encoded: a few, to smooth out stalls


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _pqf_mode(text: str) -> str:
    if text in ("auto", "qp", "estimate"):
        return text
    from vsqe.pipeline.pqf_schedule import parse_every

    try:
        parse_every(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, qp, estimate or every:N (N >= 1), got {text!r}") from None
    return text


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
    m.add_argument("--tile", type=positive_int, metavar="N", help="process frames in N x N tiles (bounds memory)")
    m.add_argument("--overlap", type=int, default=64, metavar="N", help="tile overlap in pixels (default: %(default)s)")
    m.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for inference")
    m.add_argument("--segment-length", type=int, metavar="N",
                   help="recurrent models (basicvsrpp): output frames per segment (default: the model's)")
    m.add_argument("--segment-overlap", type=int, metavar="N",
                   help="recurrent models: context frames read on each side of a segment (default: the model's)")
    f = p.add_argument_group("PQF models (mfqev2; docs/mfqev2.md)")
    f.add_argument("--pqf", type=_pqf_mode, metavar="{auto,qp,estimate,every:N}",
                   help="where the peak-quality frames come from: slice-header QPs of the input (qp), the "
                        "no-reference estimator (estimate), every N-th frame (every:N, PowerVQE), or auto = qp "
                        "when the input's slice headers parse, else estimate (default: auto)")
    f.add_argument("--pqf-lookahead", type=int, metavar="N",
                   help="frames the scheduler waits for the next PQF (default: 2x the median PQF gap, at least 4)")
    f.add_argument("--pqf-weights", metavar="FILE",
                   help="weights of the PQF model (default: --weights enhance PQFs too)")
    e = p.add_argument_group("encoding")
    e.add_argument("--codec", choices=list(CODECS), help="output codec (default: from the output extension)")
    q = e.add_mutually_exclusive_group()
    q.add_argument("--crf", type=float, metavar="N", help=f"x265/x264 constant quality (default: {DEFAULT_CRF})")
    q.add_argument("--qp", type=int, metavar="N", help="x265/x264 constant QP instead of --crf")
    e.add_argument("--preset", help=f"x265/x264 preset (default: {DEFAULT_PRESET})")
    e.add_argument("--codec-opt", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="encoder option passed to FFmpeg as is (repeatable), e.g. x265-params=aq-mode=3")
    o = p.add_argument_group("run")
    o.add_argument("--frames", type=positive_int, metavar="N", help="enhance only the first N frames")
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
    from vsqe.pipeline.pqf_schedule import PqfMisaligned

    # Every check that can fail runs before the output file exists: input, output, model, encoder.
    plan = plan_output(args.output, args.codec)
    _check_model_options(args)
    reader = open_video(args.input)
    try:
        info = reader.info
        log.info("input %s: %s", args.input, info.describe())
        check_output_path(args.output, [args.input])
        enhancer = _build_enhancer(args)
        pqf = _pqf_plan(args, enhancer)
        settings = EncodeSettings(
            codec=plan.codec, crf=args.crf, qp=args.qp, preset=args.preset, options=dict(args.codec_opt)
        )
        copy_from = args.input if info.has_timestamps and info.container != "yuv4mpegpipe" else None
        total = info.frame_count
        if total is None:  # a raw Annex-B stream: count its pictures, from the PQF parse if there was one
            total = len(pqf.flags) if pqf is not None and pqf.flags is not None else _count_raw_pictures(args.input, info)
        if args.frames is not None:
            total = min(args.frames, total) if total is not None else args.frames
        quiet = getattr(args, "quiet", False)
        progress = not (args.no_progress or quiet)

        def encode(reader, pqf) -> int:
            writer = VideoWriter(plan, info, settings, copy_streams_from=copy_from)
            writer.trim_copied_streams = args.frames is not None
            with writer:  # an error inside removes the unfinished output
                return _pump(reader, enhancer, writer, total, args.frames, progress=progress, pqf=pqf)

        start = time.monotonic()
        try:
            done = encode(reader, pqf)
        except PqfMisaligned as exc:
            if args.output == "-":  # frames already went down the pipe: nothing to redo
                raise PqfMisaligned(f"{args.input}: {exc}; run again with --pqf estimate") from None
            # Rare (a decoder that drops or adds pictures): the file output was removed, so decode
            # again with flags found on the fly; this is the only case that decodes twice.
            log.warning("%s: %s; PQFs from the no-reference estimator instead (decoding again)", args.input, exc)
            reader.close()
            reader = open_video(args.input)
            done = encode(reader, _pqf_plan(args, enhancer, mode="estimate"))
        seconds = time.monotonic() - start
    finally:
        reader.close()
    if not quiet:
        where = "stdout" if args.output == "-" else args.output
        sys.stderr.write(
            f"vsqe: {done} frames in {seconds:.1f} s ({done / seconds if seconds > 0 else 0:.2f} fps) -> {where}"
            f" (backend {_backend_label(enhancer.backend)})\n"
        )
    if not reader.stats.clean:
        raise FramesLostError(
            f"{args.input}: {reader.stats.describe()}; {args.output} was written from the frames that decoded"
        )
    return 0


def _check_model_options(args: argparse.Namespace) -> None:
    """Options of one model kind given for another: one line, exit 2, before any model loads."""
    from vsqe.errors import ModelError
    from vsqe.models import get_model_spec, model_names

    spec = get_model_spec(args.model)
    # Named from the registry, so a newly registered model shows up in the message.
    kind = lambda temporal: ", ".join(n for n in model_names() if get_model_spec(n).temporal == temporal)  # noqa: E731
    given = lambda *names: [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) is not None]  # noqa: E731
    if spec.temporal != "pqf" and given("pqf", "pqf_lookahead", "pqf_weights"):
        raise ModelError(f"{', '.join(given('pqf', 'pqf_lookahead', 'pqf_weights'))}: model {args.model!r} does not use PQFs (PQF models: {kind('pqf')})")
    if spec.temporal != "recurrent" and given("segment_length", "segment_overlap"):
        raise ModelError(
            f"{', '.join(given('segment_length', 'segment_overlap'))}: model {args.model!r} is not a recurrent segment model ({kind('recurrent')})"
        )
    if args.segment_length is not None and args.segment_length < 1:
        raise ModelError(f"--segment-length must be at least 1, got {args.segment_length}")
    if args.segment_overlap is not None and args.segment_overlap < 0:
        raise ModelError(f"--segment-overlap must be at least 0, got {args.segment_overlap}")
    if args.pqf_lookahead is not None and args.pqf_lookahead < 1:
        raise ModelError(f"--pqf-lookahead must be at least 1, got {args.pqf_lookahead}")
    if args.pqf == "qp" and args.input == "-":
        raise ModelError("--pqf qp needs the input bitstream: stdin carries decoded y4m frames (use estimate or every:N)")


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
        segment_length=args.segment_length,
        segment_overlap=args.segment_overlap,
        pqf_weights=args.pqf_weights,
        pqf_lookahead=args.pqf_lookahead,
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


def _backend_label(backend) -> str:
    """The backend that ran: auto's concrete choice(s), e.g. 'openvino-bf16 (auto)'."""
    chosen = getattr(backend, "chosen", None)
    if chosen is None:
        return backend.name
    return f"{'+'.join(chosen) or 'none'} (auto)"


class _PqfPlan:
    """Where `vsqe run` gets the PQF flags of the frames it decodes: a list made up front from
    slice-header QPs (checked against the decoded frames while streaming), an endless rule
    (every:N), or a per-frame score found as the frames arrive (the estimator)."""

    def __init__(self, flags: list[bool] | None, lookahead: int, source: str, score=None, flags_iter=None) -> None:
        self.flags = flags
        self.flags_iter = flags_iter
        self.lookahead = lookahead
        self.source = source
        self.score = score


def _pqf_plan(args: argparse.Namespace, enhancer, mode: str | None = None) -> _PqfPlan | None:
    """The input is decoded once, by the run itself: slice QPs come from a header-only parse, the
    fixed rule needs no frames, and the estimator scores each frame as it streams past."""
    if enhancer.spec.temporal != "pqf":
        return None
    from vsqe.pipeline import pqf_schedule as ps

    mode = mode or args.pqf or "auto"
    if mode.startswith("every:"):
        period = ps.parse_every(mode)
        endless = (i % period == 0 for i in itertools.count())
        return _with_lookahead(args, enhancer, _PqfPlan(None, ps.every_lookahead(period), f"every {period}", flags_iter=endless))
    if args.input == "-":
        log.warning("stdin: no bitstream to read slice QPs from; PQFs from the no-reference estimator")
    elif mode in ("auto", "qp"):
        try:
            qps = ps.bitstream_qps(args.input, args.frames)
            return _with_lookahead(args, enhancer, _PqfPlan(ps.qp_flags(qps), 0, "slice QPs"))
        except ps.PqfUnavailable as exc:
            log.warning("%s; PQFs from the no-reference estimator instead", exc)
    return _with_lookahead(args, enhancer, _PqfPlan(None, ps.DEFAULT_STREAM_LOOKAHEAD, "estimate", _estimate_score))


def _with_lookahead(args: argparse.Namespace, enhancer, plan: _PqfPlan) -> _PqfPlan:
    from vsqe.pipeline.pqf_schedule import default_lookahead

    if args.pqf_lookahead is not None:
        plan.lookahead = args.pqf_lookahead
    elif plan.flags is not None:
        plan.lookahead = default_lookahead(plan.flags)
    enhancer.pqf_lookahead = plan.lookahead
    if plan.flags is not None:
        pqfs = [i for i, f in enumerate(plan.flags) if f]
        shown = ", ".join(map(str, pqfs[:12])) + (", ..." if len(pqfs) > 12 else "")
        log.info("PQFs from %s: %d of %d frames [%s], look-ahead %d", plan.source, len(pqfs), len(plan.flags), shown, plan.lookahead)
    else:
        log.info("PQFs from %s, found as the frames stream in, look-ahead %d", plan.source, plan.lookahead)
    return plan


def _estimate_score(frame) -> float:
    from vsqe.pqf.estimator import frame_score

    return frame_score(frame.planes[0].astype("float64") / frame.fmt.peak)


def _count_raw_pictures(path: str, info) -> int | None:
    """Output pictures of a raw H.264/HEVC/VVC file, from slice headers only (no decoding), so the
    progress line of an Annex-B input has a total and an ETA. None when it cannot tell (a pipe,
    another format, a stream our parser does not read): the line then shows no ETA."""
    if info.container not in ("h264", "hevc", "vvc") or not os.path.isfile(path):
        return None
    from vsqe.errors import VsqeError
    from vsqe.pqf.stream import display_pictures, read_pictures

    try:
        return len(display_pictures(read_pictures(path))) or None
    except (VsqeError, OSError, ValueError):
        return None


def _pump(reader, enhancer, writer, total: int | None, limit: int | None, progress: bool, pqf=None) -> int:
    """Runs the three stages; returns the number of frames written."""
    from vsqe import signals
    from vsqe.io.threads import ReadAhead, WriteBehind
    from vsqe.progress import Progress

    frames = reader if limit is None else itertools.islice(reader, limit)
    source = ReadAhead(frames, depth=_QUEUE_DEPTH, name="vsqe-decode")
    sink = WriteBehind(writer.write, depth=_QUEUE_DEPTH, name="vsqe-encode")
    bar = Progress(total, enabled=progress)
    try:
        if pqf is None:
            stream = enhancer.enhance_stream(source)
        else:
            flags = pqf.flags if pqf.flags is not None else pqf.flags_iter
            stream = enhancer.enhance_stream(source, pqf_flags=flags, pqf_score=pqf.score)
        with signals.deferred():  # a signal stops the run at the next frame (vsqe/signals.py says why)
            for frame in stream:
                signals.check()
                sink.put(frame)
                bar.update()
            signals.check()
            sink.finish()
    finally:
        # On success both threads have ended; on any error or Ctrl-C they are stopped here, and the
        # writer's context manager then removes the unfinished output.
        sink.close()
        source.close()
        bar.close()
    return writer.frames_written
