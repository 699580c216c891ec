"""Opening and decoding videos: containers and raw Annex-B streams (PyAV), and y4m (our reader).

`open_video(path)` checks the input, decodes its first frame (so a bad input fails before any output
exists) and returns a `VideoReader`: `.info` describes the stream, iterating yields `VideoFrame`s in
display order, one at a time (memory does not grow with the video's length), and `.stats` counts
what could not be decoded. Damaged input never raises: it is decoded as far as possible, each
problem is logged as a warning with its frame number, and the caller decides the exit status
from `stats` once the output is written.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

import numpy as np

from vsqe.errors import FormatError, InputError
from vsqe.io.formats import (
    ColorInfo,
    PixelFormat,
    VideoFrame,
    check_frame_size,
    pixel_format_from_av,
    planes_from_av,
)
from vsqe.io.y4m import MAGIC as Y4M_MAGIC
from vsqe.io.y4m import Y4MReader

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

# Raw Annex-B elementary streams: FFmpeg must be told the format (probing them is unreliable), and
# they carry no timestamps.
RAW_STREAM_FORMATS = {
    ".264": "h264", ".h264": "h264", ".avc": "h264", ".jsv": "h264",
    ".265": "hevc", ".h265": "hevc", ".hevc": "hevc",
    ".266": "vvc", ".h266": "vvc", ".vvc": "vvc",
}
DEFAULT_FRAME_RATE = Fraction(25)
_STILL_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}
# Appended to the last access unit of a raw stream for the truncation check (no 0x00 bytes, so no
# start code or emulation-prevention pattern can appear in it).
_TAIL_PROBE = bytes(range(0x11, 0x91))


@dataclass(frozen=True)
class VideoInfo:
    path: str
    container: str  # FFmpeg demuxer name ("matroska,webm", "hevc", ...) or "yuv4mpegpipe"
    codec: str
    width: int
    height: int
    fmt: PixelFormat
    frame_rate: Fraction
    time_base: Fraction  # of the frames' pts
    frame_count: int | None  # None: unknown (raw streams, pipes)
    frame_count_exact: bool  # False: estimated from the container's duration
    color: ColorInfo
    has_timestamps: bool  # False: raw stream, pts synthesised from the frame rate

    def describe(self) -> str:
        count = "?" if self.frame_count is None else f"{'' if self.frame_count_exact else '~'}{self.frame_count}"
        rate = float(self.frame_rate)
        return (
            f"{self.codec} in {self.container}, {self.width}x{self.height} {self.fmt.av_name}, "
            f"{rate:g} fps, {count} frames, colour {self.color.describe()}"
        )


@dataclass
class DecodeStats:
    """What decoding could not deliver; `clean` is False when the output misses or damages frames."""

    decoded: int = 0
    lost: int = 0  # frames in the input that were not decoded at all
    damaged: list[int] = field(default_factory=list)  # display indices of frames decoded with errors
    errors: int = 0  # errors the decoder or demuxer reported

    @property
    def clean(self) -> bool:
        return not (self.lost or self.damaged or self.errors)

    def describe(self) -> str:
        parts = []
        if self.lost:
            parts.append(f"{self.lost} frame{'s' if self.lost != 1 else ''} lost")
        if self.damaged:
            shown = ", ".join(str(i) for i in self.damaged[:5]) + (", ..." if len(self.damaged) > 5 else "")
            parts.append(f"{len(self.damaged)} damaged (frame {shown})")
        if self.errors and not parts:
            parts.append(f"{self.errors} decode error{'s' if self.errors != 1 else ''}")
        return ", ".join(parts) if parts else "no problems"


class VideoReader:
    """Iterate once for the frames; `info` is known from the start, `stats` once iteration ends."""

    info: VideoInfo
    stats: DecodeStats

    def __init__(self, name: str) -> None:
        self._name = name
        self.stats = DecodeStats()
        self._frames: Iterator[VideoFrame] | None = None
        self._first: VideoFrame | None = None

    def _decode(self) -> Iterator[VideoFrame]:
        raise NotImplementedError

    def _start(self) -> VideoFrame:
        """Decodes the first frame: a stream that yields none is not a usable input."""
        self._frames = self._decode()
        first = next(self._frames, None)
        if first is None:
            self.close()
            raise InputError(f"{self.name}: no frame could be decoded ({self.stats.describe()})")
        self._first = first
        return first

    @property
    def name(self) -> str:
        return self._name

    def __iter__(self) -> Iterator[VideoFrame]:
        if self._frames is None or self._first is None:
            raise RuntimeError("a VideoReader can be iterated once")
        first, self._first = self._first, None
        self.stats.decoded += 1
        yield first
        for frame in self._frames:
            self.stats.decoded += 1
            yield frame

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(path: str | os.PathLike) -> VideoReader:
    """Opens a video for decoding; InputError / FormatError (one line each) when it cannot be used.

    "-" reads y4m from standard input.
    """
    if str(path) == "-":
        return _Y4MVideoReader(sys.stdin.buffer, "<stdin>", None)
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        raise InputError(f"input is a directory, not a video: {p}")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise InputError(f"cannot read input {p}: {exc.strerror or exc}") from None
    if size == 0 and p.is_file():
        raise InputError(f"input is empty (0 bytes): {p}")
    if head.startswith(Y4M_MAGIC):
        return _Y4MVideoReader(open(p, "rb"), str(p), size if p.is_file() else None)
    for magic, kind in _STILL_IMAGE_MAGIC.items():
        if head.startswith(magic):
            raise InputError(f"input is a still image ({kind}), not a video: {p}")
    if p.suffix.lower() == ".yuv":
        raise InputError(f"raw .yuv input has no header (size and format unknown); convert it to .y4m: {p}")
    return _AVReader(p, RAW_STREAM_FORMATS.get(p.suffix.lower()))


class _Y4MVideoReader(VideoReader):
    def __init__(self, f: BinaryIO, name: str, size: int | None) -> None:
        super().__init__(name)
        self._file = f
        try:
            self._reader = Y4MReader(f, name)
        except BaseException:
            self._close_file()
            raise
        h = self._reader.header
        self.info = VideoInfo(
            path=name,
            container="yuv4mpegpipe",
            codec="rawvideo",
            width=h.width,
            height=h.height,
            fmt=h.fmt,
            frame_rate=h.frame_rate,
            time_base=1 / h.frame_rate,
            frame_count=self._reader.frame_count_hint(size),
            # The reader itself notices a truncated last frame; the size-based count is for progress.
            frame_count_exact=False,
            color=h.color,
            has_timestamps=True,
        )
        self._start()

    def _decode(self) -> Iterator[VideoFrame]:
        try:
            yield from self._reader
        finally:
            self.stats.lost = self._reader.lost

    def _close_file(self) -> None:
        if self._file is not sys.stdin.buffer:
            self._file.close()

    def close(self) -> None:
        super().close()
        self._close_file()


def _first_line(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)  # FFmpeg errors: the message without "[Errno ...]"
    text = (strerror or str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _AVReader(VideoReader):
    """PyAV demux + decode of the first video stream."""

    def __init__(self, path: Path, raw_format: str | None) -> None:
        import av

        super().__init__(str(path))
        self._raw = raw_format is not None
        self._truncated_tag: int | None = None  # decode-order tag of a last picture found cut short
        self._first_color = ColorInfo()
        try:
            self._container = av.open(str(path), format=raw_format)
        except av.error.FFmpegError as exc:
            kind = f"a raw {raw_format} stream" if raw_format else "a video file FFmpeg can read"
            raise InputError(f"cannot open {path}: not {kind} ({_first_line(exc)})") from None
        try:
            self._setup(path, raw_format)
            self._start()
        except BaseException:
            self._container.close()
            raise

    def _setup(self, path: Path, raw_format: str | None) -> None:
        container = self._container
        demuxer = container.format.name
        if demuxer == "image2" or (demuxer.endswith("_pipe") and demuxer != "yuv4mpegpipe"):
            raise InputError(f"input is a still image ({demuxer}), not a video: {path}")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise InputError(f"no video stream in {path} (it holds {', '.join(kinds)})")
        stream = container.streams.video[0]
        self._stream = stream
        ctx = stream.codec_context
        if ctx is None or not ctx.is_decoder:
            raise InputError(f"{path}: no decoder for its video codec")
        known_rate = stream.average_rate or stream.guessed_rate
        if not known_rate:
            log.warning("%s: frame rate unknown; assuming %s fps", path, DEFAULT_FRAME_RATE)
        rate = Fraction(known_rate) if known_rate else DEFAULT_FRAME_RATE
        self._rate = rate
        count, exact = None, False
        # Where the stream ends in time (seconds), when only the duration is known: frames lost at
        # the end are counted from the time the decoded frames leave uncovered (_account_end).
        self._end_time: Fraction | None = None
        if stream.frames:
            count, exact = int(stream.frames), True
        elif not self._raw:
            duration = start = None
            if stream.duration and stream.time_base:
                duration = stream.duration * stream.time_base
                start = stream.start_time * stream.time_base if stream.start_time is not None else None
            elif container.duration:
                duration = Fraction(container.duration, 1_000_000)
                start = Fraction(container.start_time, 1_000_000) if container.start_time is not None else None
            if duration:
                count = round(duration * rate)
                self._start_time = start or Fraction(0)
                self._end_time = self._start_time + duration
        # An unsupported format fails here, before decoding; the first frame confirms it (_start).
        fmt = pixel_format_from_av(ctx.pix_fmt) if ctx.pix_fmt else PixelFormat("420", 8)
        self.info = VideoInfo(
            path=str(path),
            container=demuxer,
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            fmt=fmt,
            frame_rate=rate,
            time_base=1 / rate if self._raw else Fraction(stream.time_base),
            frame_count=count,
            frame_count_exact=exact,
            color=ColorInfo(),
            has_timestamps=not self._raw,
        )

    def _start(self) -> VideoFrame:
        first = super()._start()
        # The first decoded frame is the authority on format, size and colour (the codec context
        # may not know them before decoding).
        self.info = replace(
            self.info, width=first.width, height=first.height, fmt=first.fmt, color=self._first_color
        )
        return first

    # --- decoding --------------------------------------------------------------------------------

    def _decode(self) -> Iterator[VideoFrame]:
        import av

        stream = self._stream
        self._packets = 0
        self._index = 0
        self._interlaced = False
        self._last_pts: int | None = None
        self._expected_fmt: tuple[str, int, int] | None = None
        # Raw streams: a second decoder gets the same packets, the last one with bytes appended; if
        # that changes the last picture, the decoder read past the end of the data: the file was cut.
        self._shadow = av.CodecContext.create(stream.codec_context.name, "r") if self._raw else None
        if self._shadow is not None:
            self._shadow.thread_count = 1
        pending = None
        for packet in self._demux():
            if pending is not None:
                yield from self._decode_packet(pending)
            pending = packet
        if pending is not None:
            yield from self._decode_last(pending)
        else:
            yield from self._receive(None)
        self._account_end()

    def _demux(self) -> Iterator["av.Packet"]:
        import av

        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue  # PyAV's end-of-stream marker; we flush ourselves
                if self._raw:
                    # A tag the decoder carries to the frame: the packet's decode-order number.
                    packet.pts = self._packets
                    packet.dts = self._packets
                self._packets += 1
                yield packet
        except av.error.FFmpegError as exc:
            self.stats.errors += 1
            log.warning("%s: frame %d: read error, stopping here: %s", self._name, self._index, _first_line(exc))

    def _receive(self, packet: "av.Packet | None") -> list["av.VideoFrame"]:
        import av

        try:
            return self._stream.codec_context.decode(packet)
        except av.error.FFmpegError as exc:
            self.stats.errors += 1
            if packet is None:
                where = f"at the end of the stream (after frame {self._index - 1})"
            elif self._raw:
                where = f"in frame {packet.pts} (decode order)"
            else:
                where = f"near frame {self._index}"
            log.warning("%s: decode error %s: %s", self._name, where, _first_line(exc))
            return []

    def _decode_packet(self, packet: "av.Packet") -> Iterator[VideoFrame]:
        if self._shadow is not None:
            self._shadow_decode(packet)
        for frame in self._receive(packet):
            yield self._convert(frame)

    def _decode_last(self, packet: "av.Packet") -> Iterator[VideoFrame]:
        import av

        frames = self._receive(packet) + self._receive(None)
        if self._shadow is not None:
            probe = av.Packet(bytes(packet) + _TAIL_PROBE)
            probe.pts = probe.dts = packet.pts
            shadow = self._shadow_decode(probe) + self._shadow_decode(None)
            tag = packet.pts
            mine = next((f for f in frames if f.pts == tag), None)
            theirs = next((f for f in shadow if f.pts == tag), None)
            if mine is not None and (theirs is None or not _same_picture(mine, theirs)):
                self._truncated_tag = tag
        for frame in frames:
            yield self._convert(frame)

    def _shadow_decode(self, packet: "av.Packet | None") -> list["av.VideoFrame"]:
        import av

        try:
            return self._shadow.decode(packet)  # type: ignore[union-attr]
        except av.error.FFmpegError:
            return []  # the main decoder reports errors

    def _convert(self, frame: "av.VideoFrame") -> VideoFrame:
        from av.video.frame import PictureType

        key = (frame.format.name, frame.width, frame.height)
        if self._expected_fmt is None:
            self._expected_fmt = key
            self._first_color = _merge_color(ColorInfo.from_av(frame), ColorInfo.from_av(self._stream.codec_context))
        elif key != self._expected_fmt:
            was = "{1}x{2} {0}".format(*self._expected_fmt)
            raise FormatError(
                f"{self._name}: frame {self._index} changes the video from {was} to "
                f"{frame.width}x{frame.height} {frame.format.name}; streams must keep one size and format"
            )
        fmt = pixel_format_from_av(frame.format.name)
        check_frame_size(frame.width, frame.height)
        index = self._index
        self._index += 1
        if frame.interlaced_frame:
            self._interlaced = True
        if frame.is_corrupt or (self._raw and frame.pts == self._truncated_tag):
            self.stats.damaged.append(index)
            why = (
                "the stream ends inside this frame's data (file cut short?)"
                if frame.pts == self._truncated_tag and self._raw
                else "the decoder concealed errors"
            )
            log.warning("%s: frame %d is damaged: %s", self._name, index, why)
        pts = self._pts(frame, index)
        pict = PictureType(frame.pict_type).name if frame.pict_type else None
        return VideoFrame(
            planes=planes_from_av(frame, fmt),
            fmt=fmt,
            index=index,
            pts=pts,
            time_base=self.info.time_base,
            pict_type=pict,
        )

    def _pts(self, frame: "av.VideoFrame", index: int) -> int:
        if self._raw:
            return index  # time base 1/frame rate
        if frame.pts is not None:
            pts = frame.pts
        elif self._last_pts is None:
            pts = 0
        else:
            # A frame without a timestamp follows the previous one by one frame duration.
            pts = self._last_pts + max(1, round(1 / (self._rate * self.info.time_base)))
        self._last_pts = pts
        return pts

    def _account_end(self) -> None:
        """After the last frame: compare what the stream announced with what was decoded."""
        decoded = self._index
        missing = 0
        if not self._interlaced:  # field pictures come as two packets per frame
            missing = self._packets - decoded
        count = self.info.frame_count
        if count is not None and self.info.frame_count_exact:
            missing = max(missing, count - decoded)
        elif self._end_time is not None:
            # Only the duration is known: compare times, not counts (duration x average rate
            # miscounts variable frame rate). Off by one frame either way is tolerated.
            covered = self._start_time
            if self._last_pts is not None:
                covered = self._last_pts * self.info.time_base + 1 / self._rate
            uncovered = round((self._end_time - covered) * self._rate)
            if uncovered > 1:
                missing = max(missing, uncovered)
        if missing > 0:
            self.stats.lost += missing
            after = f"; frames from {decoded} on are missing" if decoded else ""
            log.warning(
                "%s: %d frame%s could not be decoded (the stream holds %d, %d decoded%s)",
                self._name,
                missing,
                "s" if missing != 1 else "",
                decoded + missing,
                decoded,
                after,
            )

    def close(self) -> None:
        super().close()
        self._container.close()


def _same_picture(a: "av.VideoFrame", b: "av.VideoFrame") -> bool:
    if (a.format.name, a.width, a.height) != (b.format.name, b.width, b.height):
        return False
    fmt = pixel_format_from_av(a.format.name)
    return all(np.array_equal(x, y) for x, y in zip(planes_from_av(a, fmt), planes_from_av(b, fmt)))


def _merge_color(frame: ColorInfo, stream: ColorInfo) -> ColorInfo:
    """The frame's colour description, filled in from the stream's where the frame leaves a gap."""
    return ColorInfo(**{k: v if v is not None else getattr(stream, k) for k, v in vars(frame).items()})
