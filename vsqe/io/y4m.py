"""YUV4MPEG2 (.y4m) streaming reader and writer.

y4m is the reference format of the QE papers and of HM/vvenc test sequences: a text header line
("YUV4MPEG2 W416 H240 F25:1 Ip A1:1 C420mpeg2 XCOLORRANGE=LIMITED"), then per frame a "FRAME" line
and the planes (raw.py layout). The reader holds one frame at a time; frames are views into a
fresh buffer each, so the pipeline may keep a window of them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO, Iterator

from vsqe.errors import FormatError, InputError
from vsqe.io.formats import (
    ColorInfo,
    PixelFormat,
    VideoFrame,
    check_frame_size,
    frame_nbytes,
    pixel_format_from_y4m,
    y4m_tag_for,
)
from vsqe.io.raw import planes_from_buffer, write_planes

log = logging.getLogger(__name__)

MAGIC = b"YUV4MPEG2"
# A header or FRAME line longer than this is not y4m (guards against reading a whole binary file
# looking for a newline).
_MAX_LINE = 4096
_DEFAULT_RATE = Fraction(25)
_FIRST_READ = 1 << 20  # bytes of a frame read before the whole frame's buffer is allocated


@dataclass(frozen=True)
class Y4MHeader:
    width: int
    height: int
    fmt: PixelFormat
    frame_rate: Fraction
    interlace: str = "p"  # p, t, b, m (?: unknown); frames are processed as progressive pictures
    aspect: Fraction | None = None
    color: ColorInfo = field(default_factory=ColorInfo)
    header_bytes: int = 0  # length of the header line, newline included

    @property
    def frame_bytes(self) -> int:
        return frame_nbytes(self.fmt, self.width, self.height)


def _ratio(text: str, what: str, name: str) -> Fraction:
    try:
        num, den = (int(v) for v in text.split(":"))
        if den == 0:
            raise ValueError
        return Fraction(num, den)
    except ValueError:
        raise InputError(f"{name}: bad y4m {what} {text!r} (expected N:D)") from None


def parse_header(line: bytes, name: str) -> Y4MHeader:
    """Parses the stream header line (without its newline)."""
    if not line.startswith(MAGIC + b" ") and line != MAGIC:
        raise InputError(f"{name}: not a y4m file (no YUV4MPEG2 header)")
    try:
        tokens = line.decode("ascii").split()[1:]
    except UnicodeDecodeError:
        raise InputError(f"{name}: bad y4m header (not ASCII)") from None
    width = height = 0
    rate: Fraction | None = None
    interlace = "p"
    aspect = None
    tag = None
    color_range = None
    for token in tokens:
        key, value = token[0], token[1:]
        if key in "WH":
            if not value.isdigit():
                raise InputError(f"{name}: bad y4m header: {token!r}")
            if key == "W":
                width = int(value)
            else:
                height = int(value)
        elif key == "F":
            rate = _ratio(value, "frame rate", name)
        elif key == "I":
            interlace = value or "p"
        elif key == "A":
            aspect = _ratio(value, "aspect ratio", name) if value != "0:0" else None
        elif key == "C":
            tag = value
        elif key == "X" and value.startswith("COLORRANGE="):
            color_range = {"LIMITED": "tv", "FULL": "pc"}.get(value.split("=", 1)[1].upper())
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: bad y4m header: width and height (W, H) are required")
    try:
        check_frame_size(width, height)  # before anything is allocated for a frame
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    if rate is None or rate <= 0:
        log.warning("%s: y4m header has no frame rate; assuming %s fps", name, _DEFAULT_RATE)
        rate = _DEFAULT_RATE
    try:
        fmt, siting = pixel_format_from_y4m(tag)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    color = ColorInfo(range=color_range, chroma_location=siting)
    return Y4MHeader(width, height, fmt, rate, interlace, aspect, color, len(line) + 1)


def _read_line(f: BinaryIO) -> bytes | None:
    """One line without its newline; None at a clean end of file; b'' if cut short."""
    line = f.readline(_MAX_LINE)
    if not line:
        return None
    if not line.endswith(b"\n"):
        return b"\x00" + line  # marks "no newline": never a valid header or FRAME line
    return line[:-1]


class Y4MReader:
    """Streams the frames of a y4m file or pipe; truncated final frames are counted in `lost`."""

    def __init__(self, f: BinaryIO, name: str = "<y4m>") -> None:
        self._f = f
        self.name = name
        first = _read_line(f)
        if first is None:
            raise InputError(f"{name}: input is empty")
        if first.startswith(b"\x00"):
            raise InputError(f"{name}: not a y4m file (no header line)")
        self.header = parse_header(first, name)
        self.lost = 0  # frames that were announced (a FRAME line or bytes) but could not be read

    def _read_into(self, buffer: bytearray | memoryview) -> int:
        """Fills `buffer` as far as the input goes (readinto on a pipe may return less before
        the end: keep reading); returns the bytes read."""
        view = memoryview(buffer)
        got = 0
        while got < len(view):
            more = self._f.readinto(view[got:])
            if not more:
                break
            got += more
        return got

    def frame_count_hint(self, file_size: int | None) -> int | None:
        """Frames in a regular file of `file_size` bytes with plain 'FRAME' lines (the usual)."""
        if file_size is None:
            return None
        per_frame = len(b"FRAME\n") + self.header.frame_bytes
        return max(0, file_size - self.header.header_bytes) // per_frame

    def __iter__(self) -> Iterator[VideoFrame]:
        h = self.header
        time_base = 1 / h.frame_rate
        index = 0
        while True:
            line = _read_line(self._f)
            if line is None:
                return
            if not line.startswith(b"FRAME"):
                # Garbage where a frame should start: nothing after it can be trusted.
                self.lost += 1
                log.warning("%s: frame %d: bad frame header %r; stopping here", self.name, index, line[:16])
                return
            # The first MiB first: a header that promises a huge frame over a few bytes of data
            # (a cut or hostile file) costs what is there, not what the header claims.
            buffer = bytearray(min(h.frame_bytes, _FIRST_READ))
            got = self._read_into(buffer)
            if got == len(buffer) < h.frame_bytes:
                whole = bytearray(h.frame_bytes)
                whole[:got] = buffer
                buffer = whole
                got += self._read_into(memoryview(buffer)[got:])
            if got < h.frame_bytes:
                self.lost += 1
                log.warning(
                    "%s: frame %d is truncated (%d of %d bytes); dropped", self.name, index, got, h.frame_bytes
                )
                return
            yield VideoFrame(
                planes=planes_from_buffer(buffer, h.fmt, h.width, h.height),
                fmt=h.fmt,
                index=index,
                pts=index,
                time_base=time_base,
            )
            index += 1


class Y4MWriter:
    """Writes frames of one size and format as y4m; the header is written at once."""

    def __init__(
        self,
        f: BinaryIO,
        width: int,
        height: int,
        fmt: PixelFormat,
        frame_rate: Fraction,
        color: ColorInfo | None = None,
    ) -> None:
        self._f = f
        self.width = width
        self.height = height
        self.fmt = fmt
        self.frame_rate = Fraction(frame_rate)
        self.color = color or ColorInfo()
        self._f.write(self.header_line())

    def header_line(self) -> bytes:
        rate = self.frame_rate
        parts = [
            "YUV4MPEG2",
            f"W{self.width}",
            f"H{self.height}",
            f"F{rate.numerator}:{rate.denominator}",
            "Ip",
            "A1:1",
            f"C{y4m_tag_for(self.fmt, self.color.chroma_location)}",
        ]
        if self.color.range in ("tv", "pc"):
            parts.append("XCOLORRANGE=" + ("LIMITED" if self.color.range == "tv" else "FULL"))
        return (" ".join(parts) + "\n").encode("ascii")

    def write(self, frame: VideoFrame) -> None:
        if (frame.width, frame.height) != (self.width, self.height) or frame.fmt != self.fmt:
            raise FormatError(
                f"frame {frame.index} is {frame.width}x{frame.height} {frame.fmt.av_name}; the y4m stream is "
                f"{self.width}x{self.height} {self.fmt.av_name}"
            )
        self._f.write(b"FRAME\n")
        write_planes(self._f, frame.planes, self.fmt)
