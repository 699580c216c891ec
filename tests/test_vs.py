"""The VapourSynth filter: formats, request order, identity with `vsqe run`, and the vspipe | x265 pipe."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

vs = pytest.importorskip("vapoursynth", reason="VapourSynth is not installed (make setup installs it)")

import vsqe.vs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
core = vs.core

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared test clips not found at {SHARED}")


def _source(path: Path, frames: int | None = None) -> vs.VideoNode:
    clip = core.bs.VideoSource(source=str(path))
    return clip[:frames] if frames else clip


def _y_planes(clip: vs.VideoNode, order: list[int]) -> dict[int, np.ndarray]:
    return {n: np.array(clip.get_frame(n)[0], copy=True) for n in order}


@pytest.fixture(scope="module")
def city_clip() -> vs.VideoNode:
    return _source(SHARED / "city_416x240_hm_ldp_qp37.hevc", frames=10)


def test_same_format_size_length_and_properties(city_clip):
    out = vsqe.vs.enhance(city_clip, allow_untrained=True)
    assert (out.format.name, out.width, out.height, out.num_frames) == ("YUV420P8", 416, 240, 10)
    src, enh = city_clip.get_frame(4), out.get_frame(4)
    assert dict(src.props) == dict(enh.props)
    # Y changes, chroma passes through untouched.
    assert not np.array_equal(np.asarray(src[0]), np.asarray(enh[0]))
    for p in (1, 2):
        assert np.array_equal(np.asarray(src[p]), np.asarray(enh[p]))


def test_request_order_does_not_change_the_output(city_clip):
    out = vsqe.vs.enhance(city_clip, allow_untrained=True)
    forward = _y_planes(out, list(range(10)))
    # A fresh node so no frame comes from VapourSynth's cache.
    out2 = vsqe.vs.enhance(city_clip, allow_untrained=True)
    backward = _y_planes(out2, list(range(9, -1, -1)))
    order = list(range(10))
    random.Random(7).shuffle(order)
    out3 = vsqe.vs.enhance(city_clip, allow_untrained=True)
    shuffled = _y_planes(out3, order)
    for n in range(10):
        assert np.array_equal(forward[n], backward[n]), n
        assert np.array_equal(forward[n], shuffled[n]), n


def test_frames_equal_vsqe_run_bit_for_bit(tmp_path: Path):
    src = SHARED / "city_416x240_hm_ldp_qp37.hevc"
    out_y4m = tmp_path / "run.y4m"
    subprocess.run(
        [sys.executable, "-m", "vsqe", "run", str(src), str(out_y4m), "--frames", "8", "--allow-untrained", "--no-progress"],
        check=True,
        capture_output=True,
    )
    from vsqe.io.decode import open_video

    with open_video(out_y4m) as reader:
        cli_frames = [f.planes[0] for f in reader]
    clip = _source(src, frames=8)
    out = vsqe.vs.enhance(clip, allow_untrained=True)
    assert len(cli_frames) == out.num_frames == 8
    for n in [7, 0, 3, 5, 1, 2, 6, 4]:
        assert np.array_equal(np.asarray(out.get_frame(n)[0]), cli_frames[n]), n


@pytest.mark.parametrize("fmt", ["YUV420P10", "YUV420P16", "GRAY8", "GRAY16"])
def test_supported_formats(city_clip, fmt):
    clip = core.resize.Point(city_clip[:7], format=getattr(vs, fmt))
    out = vsqe.vs.enhance(clip, allow_untrained=True)
    assert out.format.id == getattr(vs, fmt)
    assert np.asarray(out.get_frame(3)[0]).shape == (240, 416)


def test_bad_input_raises_vs_error_at_evaluation_time(city_clip, tmp_path: Path):
    with pytest.raises(vs.Error, match=r"does not take YUV444P8; supported: YUV420P8"):
        vsqe.vs.enhance(core.resize.Point(city_clip, format=vs.YUV444P8), allow_untrained=True)
    with pytest.raises(vs.Error, match="unknown backend 'nope'"):
        vsqe.vs.enhance(city_clip, backend="nope", allow_untrained=True)
    with pytest.raises(vs.Error, match="checkpoint not found"):
        vsqe.vs.enhance(city_clip, weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(vs.Error, match="unknown model"):
        vsqe.vs.enhance(city_clip, model="nope")
    variable = core.std.Splice([city_clip[:4], core.resize.Point(city_clip[4:], width=208, height=120)], mismatch=True)
    with pytest.raises(vs.Error, match="variable-format or variable-size"):
        vsqe.vs.enhance(variable, allow_untrained=True)


def test_clip_shorter_than_the_window_replicates_its_edge_frames(city_clip):
    """One rule for every front end: 3 frames with STDF's 7-frame window, as `vsqe run` streams it."""
    from vsqe.io.formats import PixelFormat, VideoFrame
    from vsqe.pipeline.enhancer import Enhancer

    short = city_clip[:3]
    out = vsqe.vs.enhance(short, allow_untrained=True)
    assert out.num_frames == 3
    fmt = PixelFormat("420", 8)
    frames = [VideoFrame([np.array(short.get_frame(n)[p], copy=True) for p in range(3)], fmt, index=n) for n in range(3)]
    streamed = list(Enhancer("stdf", require_weights=False).enhance_stream(iter(frames)))
    for n in (2, 0, 1):
        assert np.array_equal(np.asarray(out.get_frame(n)[0]), streamed[n].planes[0]), n


@pytest.mark.skipif(shutil.which("x265") is None, reason="Debian's x265 is not installed (make setup installs it)")
def test_vspipe_into_x265(tmp_path: Path):
    """The documented pipeline: vspipe -c y4m samples/enhance.vpy - | x265 --y4m - -o out.hevc."""
    vspipe = Path(sys.executable).with_name("vspipe")
    src = tmp_path / "city8.y4m"
    _write_y4m_head(SHARED / "city_416x240.y4m", src, frames=8)
    hevc = tmp_path / "out.hevc"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    pipe = subprocess.Popen(
        [str(vspipe), "-c", "y4m", str(REPO / "samples" / "enhance.vpy"), "-", "-a", f"input={src}", "-a", "allow_untrained=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    enc = subprocess.run(
        ["x265", "--y4m", "-", "--lossless", "--preset", "ultrafast", "-o", str(hevc)],
        stdin=pipe.stdout,
        capture_output=True,
    )
    pipe.stdout.close()
    assert pipe.wait() == 0, pipe.stderr.read().decode()
    assert enc.returncode == 0, enc.stderr.decode()
    from vsqe.eval.psnr import psnr
    from vsqe.io.decode import open_video

    with open_video(hevc) as r:
        encoded = [f.planes[0] for f in r]
    enhanced = vsqe.vs.enhance(_source(src), allow_untrained=True)
    assert len(encoded) == enhanced.num_frames == 8
    with open_video(src) as r:
        ref = [f.planes[0] for f in r]
    # x265 --lossless: what came through the pipe is exactly what the filter returns.
    for n in range(8):
        assert np.array_equal(encoded[n], np.asarray(enhanced.get_frame(n)[0])), n
    direct = np.mean([psnr(ref[n], np.asarray(enhanced.get_frame(n)[0]), 255) for n in range(8)])
    piped = np.mean([psnr(ref[n], encoded[n], 255) for n in range(8)])
    assert direct == piped, (direct, piped)


def test_vspipe_takes_paths_relative_to_where_it_was_started(tmp_path: Path):
    """vspipe runs a script from the script's folder; enhance.vpy resolves `-a input=` and
    `-a weights=` against the folder the command was typed in (the shell's PWD)."""
    vspipe = Path(sys.executable).with_name("vspipe")
    _write_y4m_head(SHARED / "city_416x240.y4m", tmp_path / "city2.y4m", frames=2)
    env = dict(os.environ, PYTHONPATH=str(REPO), PWD=str(tmp_path))
    run = subprocess.run(
        [str(vspipe), "-c", "y4m", str(REPO / "samples" / "enhance.vpy"), "out.y4m", "-a", "input=city2.y4m",
         "-a", "allow_untrained=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.y4m").stat().st_size > 2 * 416 * 240
    missing = subprocess.run(
        [str(vspipe), "-c", "y4m", str(REPO / "samples" / "enhance.vpy"), "-", "-a", "input=nope.hevc"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode != 0 and f"input not found: {tmp_path / 'nope.hevc'}" in missing.stderr


def _write_y4m_head(src: Path, dst: Path, frames: int) -> None:
    """Copies the first `frames` frames of a y4m file (C420, 8-bit)."""
    data = src.read_bytes()
    header_end = data.index(b"\n") + 1
    header = data[:header_end].decode()
    width = int(next(t[1:] for t in header.split() if t.startswith("W")))
    height = int(next(t[1:] for t in header.split() if t.startswith("H")))
    frame_bytes = len(b"FRAME\n") + width * height * 3 // 2
    dst.write_bytes(data[: header_end + frames * frame_bytes])
