"""Writing the output: x265 / x264 / FFV1 through PyAV, or y4m / raw planes.

The output is written to a temporary file beside the target (same folder, so the final rename is
atomic) and renamed when complete; any failure, Ctrl-C or SIGTERM removes it, so a failed run
leaves the output folder as it was. Frame rate, per-frame pts, colour description and bit depth are
taken from the input; audio and subtitle streams of a container input are copied packet by packet,
interleaved with the video by time.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from vsqe.errors import FormatError, OutputError
from vsqe.io.atomic import default_mode, same_file, write_error
from vsqe.io.formats import ColorInfo, PixelFormat, VideoFrame, planes_to_av
from vsqe.io.raw import RawWriter
from vsqe.io.y4m import Y4MWriter

if TYPE_CHECKING:
    import av

    from vsqe.io.decode import VideoInfo

log = logging.getLogger(__name__)

# --codec name -> FFmpeg encoder (None: written by vsqe itself).
CODECS: dict[str, str | None] = {"x265": "libx265", "x264": "libx264", "ffv1": "ffv1", "y4m": None, "raw": None}
# Output extension -> (muxer, codecs it can hold; the first is the default).
CONTAINERS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    ".mkv": ("matroska", ("x265", "x264", "ffv1")),
    ".mp4": ("mp4", ("x265", "x264")),
    ".mov": ("mov", ("x265", "x264")),
    ".hevc": ("hevc", ("x265",)), ".h265": ("hevc", ("x265",)), ".265": ("hevc", ("x265",)),
    ".264": ("h264", ("x264",)), ".h264": ("h264", ("x264",)),
    ".y4m": (None, ("y4m",)),
    ".yuv": (None, ("raw",)),
}
# Near-transparent defaults: the output is the product, not an intermediate to squeeze.
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
# Streams other than video that MP4/MOV accept when copied (Matroska takes any).
_MP4_COPYABLE = {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac", "mov_text"}


@dataclass(frozen=True)
class EncodeSettings:
    codec: str | None = None  # a key of CODECS; None: the output extension's default
    crf: float | None = None
    qp: int | None = None
    preset: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # passed to the encoder as is


@dataclass(frozen=True)
class OutputPlan:
    path: str  # "-" for standard output
    codec: str  # a key of CODECS
    muxer: str | None  # None for y4m / raw

    @property
    def encoder(self) -> str | None:
        return CODECS[self.codec]


def plan_output(path: str | os.PathLike, codec: str | None = None) -> OutputPlan:
    """Checks the extension / --codec combination; FormatError names what would work."""
    text = str(path)
    if text == "-":
        if codec not in (None, "y4m"):
            raise FormatError(f"standard output takes y4m only (got --codec {codec})")
        return OutputPlan("-", "y4m", None)
    ext = Path(text).suffix.lower()
    if ext not in CONTAINERS:
        raise FormatError(f"unknown output extension {ext or '(none)'!r} (known: {', '.join(CONTAINERS)})")
    muxer, codecs = CONTAINERS[ext]
    if codec is None:
        codec = codecs[0]
    if codec not in CODECS:
        raise FormatError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if codec not in codecs:
        raise FormatError(f"a {ext} output cannot hold {codec} (it takes: {', '.join(codecs)})")
    return OutputPlan(text, codec, muxer)


def check_output_path(path: str | os.PathLike, inputs: list[str | os.PathLike]) -> None:
    """Refuses an output that is an input (same path or same file), or whose folder is unusable."""
    if str(path) == "-":
        return
    out = Path(path)
    folder = out.resolve().parent
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if out.is_dir():
        raise OutputError(f"output is a directory: {out}")
    for inp in inputs:
        if str(inp) == "-":
            continue
        if same_file(out, inp):
            raise OutputError(f"refusing to overwrite the input {inp}: choose another output name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")


class VideoWriter:
    """Context manager: `with VideoWriter(...) as w: w.write(frame)`; complete or nothing."""

    def __init__(
        self,
        plan: OutputPlan,
        info: "VideoInfo",
        settings: EncodeSettings | None = None,
        copy_streams_from: str | None = None,
    ) -> None:
        self.plan = plan
        self.info = info
        self.settings = settings or EncodeSettings()
        self.copy_streams_from = copy_streams_from
        # With --frames the copied streams stop at the last video frame; else they are kept whole.
        self.trim_copied_streams = False
        self.frames_written = 0
        self._tmp: str | None = None
        self._file: BinaryIO | None = None
        self._sink: Y4MWriter | RawWriter | None = None
        self._container: "av.container.OutputContainer | None" = None
        self._stream: "av.VideoStream | None" = None
        self._copier: _StreamCopier | None = None
        self._last_pts: int | None = None
        self._end_time: Fraction | None = None

    # --- opening ---------------------------------------------------------------------------------

    def __enter__(self) -> "VideoWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def open(self) -> None:
        info = self.info
        if self.plan.path == "-":
            self._file = sys.stdout.buffer
            self._sink = Y4MWriter(self._file, info.width, info.height, info.fmt, info.frame_rate, info.color)
            return
        target = Path(self.plan.path)
        try:
            fd, self._tmp = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=f".vsqe-tmp{target.suffix}", dir=target.resolve().parent
            )
            os.close(fd)
        except OSError as exc:
            raise OutputError(f"cannot create the output in {target.resolve().parent}: {exc.strerror or exc}") from None
        try:
            if self.plan.codec in ("y4m", "raw"):
                self._open_planar()
            else:
                self._open_av()
        except BaseException:
            self.abort()
            raise

    def _open_planar(self) -> None:
        info = self.info
        if self.copy_streams_from and _has_other_streams(self.copy_streams_from):
            log.warning("%s holds video only: audio and subtitles of the input are not copied", self.plan.path)
        self._file = open(self._tmp, "wb")  # type: ignore[arg-type]
        if self.plan.codec == "y4m":
            self._sink = Y4MWriter(self._file, info.width, info.height, info.fmt, info.frame_rate, info.color)
        else:
            self._sink = RawWriter(self._file, info.fmt, info.width, info.height)

    def _open_av(self) -> None:
        import av

        info = self.info
        plan = self.plan
        try:
            self._container = av.open(self._tmp, "w", format=plan.muxer)
        except (av.error.FFmpegError, OSError) as exc:
            raise write_error(plan.path, exc) from None
        stream = self._container.add_stream(plan.encoder, rate=info.frame_rate)
        _check_encoder_format(plan.encoder, info.fmt)  # type: ignore[arg-type]
        _check_encoder_size(plan.codec, info.fmt, info.width, info.height)
        stream.width = info.width
        stream.height = info.height
        stream.pix_fmt = info.fmt.av_name
        # The input's time base, so input pts are copied unchanged (the muxer may rescale them).
        stream.time_base = info.time_base
        ctx = stream.codec_context
        ctx.time_base = info.time_base
        ctx.framerate = info.frame_rate
        colour = info.color.av_values()
        for attr in ("color_range", "colorspace", "color_primaries", "color_trc"):
            setattr(ctx, attr, colour[attr])
        ctx.chroma_sample_location = colour["chroma_location"]
        if plan.muxer in ("mp4", "mov") and plan.codec == "x265":
            ctx.codec_tag = "hvc1"  # what Apple players require for HEVC in MP4
        stream.options = self._encoder_options()
        try:
            # Open the encoder now, not at the first frame: settings it refuses (a bad preset or
            # --codec-opt) fail before any frame is decoded or enhanced.
            ctx.open()
        except av.error.FFmpegError as exc:
            text = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()[0]
            raise FormatError(
                f"encoder {plan.encoder} refuses the settings {stream.options}: {text} "
                "(check --preset, --crf, --qp and --codec-opt)"
            ) from None
        self._stream = stream
        self._colour = colour
        if self.copy_streams_from and plan.muxer in ("matroska", "mp4", "mov"):
            self._copier = _StreamCopier(self.copy_streams_from, self._container, plan.muxer)
        elif self.copy_streams_from and _has_other_streams(self.copy_streams_from):
            log.warning("a raw %s stream holds video only: audio and subtitles are not copied", plan.muxer)

    def _encoder_options(self) -> dict[str, str]:
        s = self.settings
        codec = self.plan.codec
        if codec == "ffv1":
            if s.crf is not None or s.qp is not None or s.preset is not None:
                raise FormatError("ffv1 is lossless: --crf, --qp and --preset do not apply")
            # Level 3: sliced, multithreaded, with per-slice CRCs (archival-safe).
            return {"level": "3", "slicecrc": "1", **s.options}
        if s.crf is not None and s.qp is not None:
            raise FormatError("give --crf or --qp, not both")
        opts = {"preset": s.preset or DEFAULT_PRESET}
        if s.qp is not None:
            opts["qp"] = str(s.qp)
        else:
            opts["crf"] = str(s.crf if s.crf is not None else DEFAULT_CRF)
        if codec == "x265":
            # x265 prints its banner and statistics on stderr by itself; keep only its errors.
            params = "log-level=error"
            if "x265-params" in s.options:
                params += ":" + s.options["x265-params"]
            opts["x265-params"] = params
        return {**s.options, **opts}

    # --- writing ---------------------------------------------------------------------------------

    def write(self, frame: VideoFrame) -> None:
        info = self.info
        if (frame.width, frame.height, frame.fmt) != (info.width, info.height, info.fmt):
            raise FormatError(
                f"frame {frame.index} is {frame.width}x{frame.height} {frame.fmt.av_name}; the output is "
                f"{info.width}x{info.height} {info.fmt.av_name}"
            )
        try:
            if self._sink is not None:
                self._sink.write(frame)
            else:
                self._encode(frame)
        except BrokenPipeError:
            raise  # stdout's reader went away: not a write failure of ours (the CLI exits quietly)
        except (OSError, *_av_errors()) as exc:
            raise write_error(self.plan.path, exc) from None
        self.frames_written += 1

    def _encode(self, frame: VideoFrame) -> None:
        out = planes_to_av(frame.planes, frame.fmt)
        pts, time_base = self._frame_pts(frame)
        out.pts = pts
        out.time_base = time_base
        for attr in ("color_range", "colorspace", "color_primaries", "color_trc", "chroma_location"):
            setattr(out, attr, self._colour[attr])
        self._end_time = (pts + 1 / (self.info.frame_rate * time_base)) * time_base
        if self._copier is not None:
            self._copier.copy_until(pts * time_base)
        for packet in self._stream.encode(out):  # type: ignore[union-attr]
            self._container.mux(packet)  # type: ignore[union-attr]

    def _frame_pts(self, frame: VideoFrame) -> tuple[int, Fraction]:
        time_base = frame.time_base or self.info.time_base
        pts = frame.pts if frame.pts is not None else frame.index
        if self._last_pts is not None and pts <= self._last_pts:
            # Encoders need increasing timestamps; a broken input must not stop the run.
            step = max(1, round(1 / (self.info.frame_rate * time_base)))
            log.warning("frame %d: timestamp %d does not increase; using %d", frame.index, pts, self._last_pts + step)
            pts = self._last_pts + step
        self._last_pts = pts
        return pts, time_base

    # --- closing ---------------------------------------------------------------------------------

    def finish(self) -> None:
        """Flushes, closes and moves the temporary file into place."""
        try:
            if self._container is not None:
                for packet in self._stream.encode(None):  # type: ignore[union-attr]
                    self._container.mux(packet)
                if self._copier is not None:
                    self._copier.copy_rest(self._end_time if self.trim_copied_streams else None)
                    self._copier.close()
                    self._copier = None
                self._container.close()
                self._container = None
            if self._file is not None and self._file is not sys.stdout.buffer:
                self._file.close()
                self._file = None
            elif self._file is not None:
                self._file.flush()
            if self._tmp is not None:
                os.chmod(self._tmp, default_mode())  # mkstemp made it 0600
                os.replace(self._tmp, self.plan.path)
                self._tmp = None
        except (OSError, *_av_errors()) as exc:
            self.abort()
            raise write_error(self.plan.path, exc) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Closes everything and removes the temporary file; safe to call more than once."""
        for close in (
            lambda: self._copier and self._copier.close(),
            lambda: self._container and self._container.close(),
            lambda: self._file and self._file is not sys.stdout.buffer and self._file.close(),
        ):
            try:
                close()
            except Exception:  # noqa: BLE001 - cleanup must go on; the original error is what matters
                pass
        self._copier = self._container = self._file = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError,)


def _check_encoder_format(encoder: str, fmt: PixelFormat) -> None:
    import av

    supported = [f.name for f in av.codec.Codec(encoder, "w").video_formats or []]
    if supported and fmt.av_name not in supported:
        raise FormatError(
            f"encoder {encoder} cannot write {fmt.av_name} (it takes {', '.join(supported[:12])}); "
            "try --codec ffv1 or a .y4m output"
        )


def _check_encoder_size(codec: str, fmt: PixelFormat, width: int, height: int) -> None:
    """x264 and x265 need the luma size to be a multiple of the chroma subsampling (even width and
    height for 4:2:0); checked here so the refusal comes before any work, in one line."""
    if codec not in ("x264", "x265"):
        return
    sx, sy = fmt.chroma_shift()
    if width % (1 << sx) or height % (1 << sy):
        need = "even width and height" if sx and sy else "an even width"
        raise FormatError(
            f"{codec} cannot encode {width}x{height} {fmt.av_name}: it needs {need}; "
            "write .y4m, .yuv or --codec ffv1 (.mkv) instead, or crop to an even size"
        )


def _has_other_streams(path: str) -> bool:
    import av

    try:
        with av.open(path) as c:
            return any(s.type in ("audio", "subtitle") for s in c.streams)
    except (av.error.FFmpegError, OSError):
        return False


class _StreamCopier:
    """Copies the audio and subtitle packets of the input into the output, interleaved by time.

    A second demuxer over the input supplies them; `copy_until(t)` is called before each video
    frame, so the muxer never has to buffer more than about one frame's worth.
    """

    def __init__(self, source: str, output: "av.container.OutputContainer", muxer: str) -> None:
        import av

        self._input = av.open(source)
        self._output = output
        self._map = {}
        for stream in self._input.streams:
            if stream.type not in ("audio", "subtitle"):
                continue
            codec = stream.codec_context.name if stream.codec_context else stream.codec.name
            if muxer in ("mp4", "mov") and codec not in _MP4_COPYABLE:
                log.warning("input stream #%d (%s %s) cannot go into .%s; not copied", stream.index, stream.type, codec, muxer)
                continue
            try:
                self._map[stream.index] = output.add_stream_from_template(stream)
            except (ValueError, av.error.FFmpegError) as exc:
                log.warning("input stream #%d (%s %s) cannot be copied: %s", stream.index, stream.type, codec, exc)
        self._packets: Iterator["av.Packet"] | None = (
            iter(self._input.demux([self._input.streams[i] for i in self._map])) if self._map else None
        )
        self._next: "av.Packet | None" = None
        self.copied = 0

    def _peek(self) -> "av.Packet | None":
        while self._next is None and self._packets is not None:
            packet = next(self._packets, None)
            if packet is None:
                self._packets = None
            elif packet.size:  # skip PyAV's empty end-of-stream packets
                self._next = packet
        return self._next

    def _time(self, packet: "av.Packet") -> Fraction | None:
        ts = packet.pts if packet.pts is not None else packet.dts
        return None if ts is None or packet.time_base is None else ts * packet.time_base

    def copy_until(self, t: Fraction | None) -> None:
        """Copies every packet that starts before time t (seconds); all of them for None."""
        while (packet := self._peek()) is not None:
            when = self._time(packet)
            if t is not None and when is not None and when >= t:
                return
            self._next = None
            packet.stream = self._map[packet.stream.index]
            self._output.mux(packet)
            self.copied += 1

    def copy_rest(self, end: Fraction | None) -> None:
        self.copy_until(end)
        if end is not None:
            self._packets = None  # drop what lies after the last video frame
            self._next = None

    def close(self) -> None:
        self._input.close()
