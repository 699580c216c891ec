"""Decoding the real clips (HEVC by HM and x265, VVC 10-bit, H.264, y4m), bad inputs, damaged streams."""
from __future__ import annotations

import gc
import logging
import weakref
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vsqe.errors import FormatError, InputError
from vsqe.io.decode import open_video

CITY_STREAMS = [
    ("city_416x240_hm_ldp_qp37.hevc", "hevc", 8),
    ("city_416x240_x265_ldp_qp37.hevc", "hevc", 8),
    ("city_416x240_vvenc_ldp_qp37.266", "vvc", 10),
    ("city_416x240_x264_qp37.264", "h264", 8),
    ("city_416x240.y4m", "rawvideo", 8),
]


@pytest.mark.parametrize("name,codec,depth", CITY_STREAMS)
def test_decodes_every_stream_type(shared_file, name: str, codec: str, depth: int) -> None:
    with open_video(shared_file(name)) as reader:
        info = reader.info
        assert (info.width, info.height, info.codec) == (416, 240, codec)
        assert info.fmt.chroma == "420" and info.fmt.bit_depth == depth
        assert info.frame_rate == 25
        frames = list(reader)
    assert len(frames) == 30 and reader.stats.clean
    assert [f.index for f in frames] == list(range(30))
    # Raw streams get pts synthesised from the frame rate; y4m counts frames.
    assert [f.pts for f in frames] == list(range(30)) and frames[0].time_base == Fraction(1, 25)
    y, u, v = frames[0].planes
    assert y.shape == (240, 416) and u.shape == v.shape == (120, 208)
    assert y.dtype == (np.uint16 if depth > 8 else np.uint8)
    if codec != "rawvideo":
        assert frames[0].pict_type == "I" and {f.pict_type for f in frames[1:]} == {"P"}


def test_planes_are_views_of_the_decoded_frame(shared_file) -> None:
    with open_video(shared_file("city_416x240_hm_ldp_qp37.hevc")) as reader:
        frame = next(iter(reader))
    # No copy: the luma plane is a cropped view of the decoder's padded buffer.
    assert not frame.planes[0].flags.owndata and not frame.planes[0].flags.c_contiguous


def test_ten_bit_samples_use_the_range(shared_file) -> None:
    with open_video(shared_file("city_416x240_vvenc_ldp_qp37.266")) as reader:
        y = next(iter(reader)).planes[0]
    assert y.max() > 255 and y.max() <= 1023


def test_streaming_does_not_keep_frames(shared_file) -> None:
    with open_video(shared_file("city_416x240_x264_qp37.264")) as reader:
        it = iter(reader)
        first = weakref.ref(next(it))
        for _ in it:
            pass
        gc.collect()
        assert first() is None


def test_y4m_colour_and_chroma_siting(shared_file) -> None:
    with open_video(shared_file("city_416x240.y4m")) as reader:
        assert reader.info.color.range == "tv" and reader.info.color.chroma_location == "left"
        assert reader.info.frame_count == 30


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "png", "png_named_mkv", "audio_only"])
def test_bad_inputs_raise_one_line_input_error(bad_inputs, kind: str) -> None:
    path = bad_inputs[kind]
    with pytest.raises(InputError) as err:
        open_video(path)
    message = str(err.value)
    assert "\n" not in message and str(path.name) in message


def test_unsupported_pixel_format_names_it(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv410p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24").reformat(format="yuv410p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(FormatError, match=r"'yuv410p'.*supported: .*yuv420p10le"):
        open_video(path)


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_truncated_hevc_decodes_what_it_can_and_names_the_frame(shared_file, tmp_path, caplog) -> None:
    cut = _cut(shared_file("city_416x240_hm_ldp_qp37.hevc"), tmp_path / "cut.hevc", 0.5)
    with caplog.at_level(logging.WARNING), open_video(cut) as reader:
        frames = list(reader)
    # The cut lands inside frame 4: frames 0-3 are whole, frame 4 is decoded but damaged.
    assert len(frames) == 5 and reader.stats.damaged == [4] and not reader.stats.clean
    assert "frame 4" in caplog.text


@pytest.mark.parametrize(
    "name,fraction", [("city_416x240_x264_qp37.264", 0.75), ("city_416x240_vvenc_ldp_qp37.266", 0.75)]
)
def test_truncated_streams_are_reported(shared_file, tmp_path, name: str, fraction: float) -> None:
    cut = _cut(shared_file(name), tmp_path / ("cut" + Path(name).suffix), fraction)
    with open_video(cut) as reader:
        frames = list(reader)
    assert 0 < len(frames) < 30 and not reader.stats.clean


def test_complete_streams_pass_the_truncation_check(shared_data: Path) -> None:
    # The check must not cry wolf: every intact shared stream decodes clean.
    for path in sorted(shared_data.glob("*_qp37.*")):
        if path.suffix in (".hevc", ".266", ".264"):
            with open_video(path) as reader:
                assert sum(1 for _ in reader) == 30 and reader.stats.clean, path.name


def test_corrupt_middle_counts_lost_frames(shared_file, tmp_path, caplog) -> None:
    data = bytearray(shared_file("city_416x240_hm_ldp_qp37.hevc").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = b"\x55" * 400
    path = tmp_path / "corrupt.hevc"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), open_video(path) as reader:
        frames = list(reader)
    assert reader.stats.lost > 0 and f"frames from {len(frames)} on" in caplog.text


def test_truncated_y4m_drops_the_partial_frame(shared_file, tmp_path, caplog) -> None:
    src = shared_file("city_416x240.y4m")
    cut = _cut(src, tmp_path / "cut.y4m", 0.5)
    with caplog.at_level(logging.WARNING), open_video(cut) as reader:
        frames = list(reader)
    assert len(frames) == 14 and reader.stats.lost == 1
    assert "frame 14 is truncated" in caplog.text
