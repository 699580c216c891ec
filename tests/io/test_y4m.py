"""y4m reader and writer: every layout and depth round-trips; bad headers and cut files are caught."""
from __future__ import annotations

import io
import logging
from fractions import Fraction

import numpy as np
import pytest

from vsqe.errors import FormatError, InputError
from vsqe.io.formats import ColorInfo, PixelFormat, VideoFrame
from vsqe.io.y4m import Y4MReader, Y4MWriter


def _random_frame(fmt: PixelFormat, width: int, height: int, index: int, rng: np.random.Generator) -> VideoFrame:
    planes = [rng.integers(0, fmt.peak + 1, size=shape, dtype=np.uint32).astype(fmt.dtype)
              for shape in fmt.plane_shapes(width, height)]
    return VideoFrame(planes=planes, fmt=fmt, index=index)


@pytest.mark.parametrize(
    "fmt,tag",
    [
        (PixelFormat("420", 8), "C420mpeg2"),
        (PixelFormat("420", 10), "C420p10"),
        (PixelFormat("420", 16), "C420p16"),
        (PixelFormat("422", 8), "C422"),
        (PixelFormat("444", 10), "C444p10"),
        (PixelFormat("400", 8), "Cmono"),
        (PixelFormat("400", 16), "Cmono16"),
    ],
)
def test_round_trip(fmt: PixelFormat, tag: str) -> None:
    rng = np.random.default_rng(0)
    width, height = 18, 10  # odd chroma sizes are rounded up
    frames = [_random_frame(fmt, width, height, i, rng) for i in range(3)]
    buf = io.BytesIO()
    writer = Y4MWriter(buf, width, height, fmt, Fraction(30000, 1001), ColorInfo(range="tv", chroma_location="left"))
    for f in frames:
        writer.write(f)
    header = buf.getvalue().split(b"\n", 1)[0].decode()
    assert header.startswith("YUV4MPEG2 W18 H10 F30000:1001") and tag in header.split()
    reader = Y4MReader(io.BytesIO(buf.getvalue()))
    assert reader.header.fmt == fmt and reader.header.frame_rate == Fraction(30000, 1001)
    assert reader.header.color.range == "tv"
    back = list(reader)
    assert len(back) == 3 and reader.lost == 0
    for a, b in zip(frames, back):
        assert all(np.array_equal(x, y) for x, y in zip(a.planes, b.planes))
        assert [p.shape for p in b.planes] == fmt.plane_shapes(width, height)


@pytest.mark.parametrize(
    "header,error",
    [
        (b"RIFF1234\n", InputError),
        (b"YUV4MPEG2 H240 F25:1\n", InputError),
        (b"YUV4MPEG2 W416 H240 F25:0\n", InputError),
        (b"YUV4MPEG2 W416 H240 F25:1 C411\n", FormatError),
        (b"YUV4MPEG2 W416 H240 F25:1 C420p20\n", FormatError),
        (b"YUV4MPEG2 W416 H240" + b" Xjunk" * 2000, InputError),  # no newline
        (b"", InputError),
    ],
)
def test_bad_headers_give_one_line(header: bytes, error: type) -> None:
    with pytest.raises(error) as exc:
        Y4MReader(io.BytesIO(header + b"FRAME\n"), "bad.y4m")
    assert "\n" not in str(exc.value)


def test_missing_colour_tag_means_420jpeg() -> None:
    reader = Y4MReader(io.BytesIO(b"YUV4MPEG2 W4 H2 F25:1\n"))
    assert reader.header.fmt == PixelFormat("420", 8) and reader.header.color.chroma_location == "center"


def test_truncated_and_garbled_frames(caplog) -> None:
    fmt = PixelFormat("420", 8)
    buf = io.BytesIO()
    writer = Y4MWriter(buf, 4, 2, fmt, Fraction(25))
    rng = np.random.default_rng(1)
    for i in range(2):
        writer.write(_random_frame(fmt, 4, 2, i, rng))
    data = buf.getvalue()
    with caplog.at_level(logging.WARNING):
        cut = Y4MReader(io.BytesIO(data[:-3]), "cut.y4m")
        assert len(list(cut)) == 1 and cut.lost == 1
        garbled = Y4MReader(io.BytesIO(data[:-18] + b"JUNK\n" + b"x" * 12), "junk.y4m")
        assert len(list(garbled)) == 1 and garbled.lost == 1
    assert "cut.y4m: frame 1 is truncated (9 of 12 bytes)" in caplog.text
    assert "junk.y4m: frame 1: bad frame header" in caplog.text


def test_frame_parameters_are_skipped() -> None:
    payload = bytes(range(12))
    reader = Y4MReader(io.BytesIO(b"YUV4MPEG2 W4 H2 F25:1 C420jpeg\nFRAME Ixyz\n" + payload))
    (frame,) = list(reader)
    assert frame.planes[0].tobytes() == payload[:8]


def test_writer_refuses_another_size() -> None:
    fmt = PixelFormat("420", 8)
    writer = Y4MWriter(io.BytesIO(), 4, 2, fmt, Fraction(25))
    with pytest.raises(FormatError):
        writer.write(_random_frame(fmt, 6, 2, 0, np.random.default_rng(2)))
