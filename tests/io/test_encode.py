"""Writing outputs: every codec/container, pts, bit depth, atomic temp-file handling, refusals."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from vsqe.errors import FormatError, OutputError
from vsqe.io.decode import open_video
from vsqe.io.encode import EncodeSettings, VideoWriter, check_output_path, plan_output
from vsqe.io.formats import PixelFormat

FAST = EncodeSettings(preset="ultrafast")


def _write(src: Path, out: Path, codec: str | None, settings: EncodeSettings, frames: int = 4):
    with open_video(src) as reader:
        written = []
        with VideoWriter(plan_output(out, codec), reader.info, settings) as writer:
            for frame in itertools.islice(reader, frames):
                written.append((frame.pts * frame.time_base, [p.copy() for p in frame.planes]))
                writer.write(frame)
    return written


@pytest.mark.parametrize(
    "name,codec,settings,lossless",
    [
        ("a.mkv", None, FAST, False),  # x265
        ("b.mp4", "x264", FAST, False),
        ("c.mkv", "ffv1", EncodeSettings(), True),
        ("d.y4m", None, EncodeSettings(), True),
        ("e.hevc", None, FAST, False),
    ],
)
@pytest.mark.parametrize("clip,depth", [("city_416x240.y4m", 8), ("city_416x240_vvenc_ldp_qp37.266", 10)])
def test_round_trip(shared_file, tmp_path, name, codec, settings, lossless, clip, depth) -> None:
    out = tmp_path / name
    written = _write(shared_file(clip), out, codec, settings)
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary file left behind
    with open_video(out) as reader:
        assert reader.info.fmt == PixelFormat("420", depth)  # 10-bit in, 10-bit out
        back = list(reader)
    assert len(back) == len(written)
    for (t, planes), frame in zip(written, back):
        assert abs(frame.pts * frame.time_base - t) < 1e-3
        if lossless:
            assert all(np.array_equal(a, b) for a, b in zip(planes, frame.planes))
        else:
            assert np.abs(planes[0].astype(int) - frame.planes[0].astype(int)).mean() < 2 ** (depth - 8) * 3


def test_raw_yuv_is_planes_only(shared_file, tmp_path) -> None:
    out = tmp_path / "f.yuv"
    _write(shared_file("city_416x240.y4m"), out, None, EncodeSettings(), frames=3)
    assert out.stat().st_size == 3 * 416 * 240 * 3 // 2


def test_failure_inside_the_block_leaves_nothing(shared_file, tmp_path) -> None:
    with open_video(shared_file("city_416x240.y4m")) as reader:
        with pytest.raises(RuntimeError):
            with VideoWriter(plan_output(tmp_path / "x.mkv"), reader.info, FAST) as writer:
                writer.write(next(iter(reader)))
                raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name,codec,message",
    [
        ("x.avi", None, "unknown output extension '.avi'"),
        ("x.mp4", "ffv1", "cannot hold ffv1"),
        ("x.mkv", "y4m", "cannot hold y4m"),
        ("x.264", "x265", "cannot hold x265"),
        ("-", "x264", "standard output takes y4m only"),
    ],
)
def test_plan_refuses_impossible_combinations(name, codec, message) -> None:
    with pytest.raises(FormatError, match=message):
        plan_output(name, codec)


def test_ffv1_refuses_lossy_settings(shared_file, tmp_path) -> None:
    with open_video(shared_file("city_416x240.y4m")) as reader:
        with pytest.raises(FormatError, match="lossless"):
            VideoWriter(plan_output(tmp_path / "x.mkv", "ffv1"), reader.info, EncodeSettings(crf=10)).open()
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite_the_input(tmp_path) -> None:
    src = tmp_path / "in.mkv"
    src.write_bytes(b"x")
    link = tmp_path / "hard.mkv"
    os.link(src, link)
    sym = tmp_path / "sym.mkv"
    sym.symlink_to(src)
    for out in (src, tmp_path / "." / "in.mkv", link, sym):
        with pytest.raises(OutputError, match="refusing to overwrite the input"):
            check_output_path(out, [src])


def test_refuses_a_missing_folder(tmp_path) -> None:
    with pytest.raises(OutputError, match="output folder does not exist"):
        check_output_path(tmp_path / "nope" / "out.mkv", [])
