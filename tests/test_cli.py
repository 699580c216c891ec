"""`vsqe run` end to end on real clips, and its error contract.

Runs that enhance go through `python -m vsqe` in a subprocess, as a user would, with the untrained
network (--allow-untrained) and a few frames; cases that fail before any work call `vsqe.cli.main`
in-process (same code path, no interpreter start-up).
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vsqe.cli import main
from vsqe.io.decode import open_video
from vsqe.models import get_model_spec

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
UNTRAINED = ("--allow-untrained", "--no-progress")


def _frames_with_av(path: Path) -> list[av.VideoFrame]:
    """Decodes with PyAV directly (not our reader): the output must play in any FFmpeg player."""
    fmt = {".hevc": "hevc", ".264": "h264"}.get(path.suffix)
    with av.open(str(path), format=fmt) as c:
        return list(c.decode(video=0))


def _input_frames(path: Path, n: int):
    with open_video(path) as reader:
        return [f for _, f in zip(range(n), reader)]


def _assert_one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("vsqe: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- enhancing the sample streams ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sample,output,extra,depth,lossless",
    [
        ("city_416x240_hm_ldp_qp37.hevc", "out.mkv", ("--preset", "ultrafast"), 8, False),
        ("city_416x240_vvenc_ldp_qp37.266", "out.mkv", ("--codec", "ffv1"), 10, True),
        ("city_416x240_x264_qp37.264", "out.y4m", (), 8, True),
    ],
)
def test_run_enhances_sample_streams(vsqe_cli, tmp_path, sample, output, extra, depth, lossless) -> None:
    src = SAMPLES / sample
    out = tmp_path / output
    result = vsqe_cli("run", src, out, "--frames", "3", *UNTRAINED, *extra)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # --allow-untrained only matters without shipped weights: then the run must say so loudly.
    shipped = get_model_spec("stdf").default_weights_path() is not None
    assert ("RANDOM weights" in result.stderr) != shipped
    assert f"3 frames in" in result.stderr and result.stdout == ""
    assert os.listdir(tmp_path) == [output]  # no temporary file left
    played = _frames_with_av(out)
    assert len(played) == 3 and (played[0].width, played[0].height) == (416, 240)
    with open_video(out) as reader:
        assert reader.info.fmt.bit_depth == depth  # 10-bit in, 10-bit out
        got = list(reader)
    want = _input_frames(src, 3)
    assert [f.pts * f.time_base for f in got] == [f.pts * f.time_base for f in want] == [0, Fraction(1, 25), Fraction(2, 25)]
    if lossless:
        for a, b in zip(want, got):
            # A Y model leaves chroma untouched; the (untrained) network changes luma.
            assert np.array_equal(a.planes[1], b.planes[1]) and np.array_equal(a.planes[2], b.planes[2])
            assert not np.array_equal(a.planes[0], b.planes[0])


@pytest.fixture(scope="session")
def clip_with_audio(tmp_path_factory, shared_file) -> Path:
    """A 96x64, 8-frame crop of the city clip: H.264 in Matroska, BT.709 tagged, with an AAC sine."""
    path = tmp_path_factory.mktemp("clip") / "city_small_audio.mkv"
    with open_video(shared_file("city_416x240.y4m")) as reader:
        frames = [f for _, f in zip(range(8), reader)]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        video.options = {"preset": "ultrafast", "qp": "30"}
        ctx = video.codec_context
        ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1, 1  # tv, bt709 x3
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        t = np.arange(48000 * 8 // 25) / 48000
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        aframe.sample_rate, aframe.pts = 48000, 0
        packets = [*audio.encode(aframe), *audio.encode(None)]
        for i, f in enumerate(frames):
            planes = [f.planes[0][80:144, 160:256], f.planes[1][40:72, 80:128], f.planes[2][40:72, 80:128]]
            vf = av.VideoFrame(96, 64, "yuv420p")
            for src, plane in zip(planes, vf.planes):
                np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:, : src.shape[1]] = src
            vf.pts, vf.time_base = i, Fraction(1, 25)
            vf.colorspace, vf.color_range = 1, 1
            packets += video.encode(vf)
        packets += video.encode(None)
        for packet in packets:
            out.mux(packet)
    return path


def _audio_packets(path: Path) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as c:
        return [(float(p.pts * p.time_base), bytes(p)) for p in c.demux(audio=0) if p.size]


def test_audio_colour_and_pts_pass_through(vsqe_cli, clip_with_audio, tmp_path) -> None:
    out = tmp_path / "out.mkv"
    result = vsqe_cli("run", clip_with_audio, out, *UNTRAINED, "--preset", "ultrafast")
    assert result.returncode == 0, result.stderr
    assert _audio_packets(out) == _audio_packets(clip_with_audio)  # the same AAC packets, same times
    with open_video(out) as reader:
        colour = reader.info.color
        got = [f.pts * f.time_base for f in reader]
    assert (colour.range, colour.matrix, colour.primaries, colour.transfer) == ("tv", "bt709", "bt709", "bt709")
    assert got == [f.pts * f.time_base for f in _input_frames(clip_with_audio, 8)]


def test_frames_limit_trims_the_audio_too(vsqe_cli, clip_with_audio, tmp_path) -> None:
    out = tmp_path / "out.mkv"
    result = vsqe_cli("run", clip_with_audio, out, "--frames", "4", *UNTRAINED, "--preset", "ultrafast")
    assert result.returncode == 0, result.stderr
    times = [t for t, _ in _audio_packets(out)]
    assert times and max(times) < 4 / 25 and len(times) < len(_audio_packets(clip_with_audio))


def test_truncated_stream_writes_output_and_fails(vsqe_cli, tmp_path) -> None:
    data = (SAMPLES / "city_416x240_hm_ldp_qp37.hevc").read_bytes()
    cut = tmp_path / "cut.hevc"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.y4m"
    result = vsqe_cli("run", cut, out, *UNTRAINED)
    assert result.returncode == 3
    assert "frame 4 is damaged" in result.stderr
    assert "frame 4" in _assert_one_error_line(result.stderr)
    assert len(_frames_with_av(out)) == 5  # decoded frames were still enhanced and written


def test_write_failure_leaves_nothing(clip_with_audio, tmp_path) -> None:
    # A file-size limit makes writes fail the way a full disk does (EFBIG instead of ENOSPC).
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "vsqe", "run", str(clip_with_audio), str(out_dir / "o.y4m"), *UNTRAINED],
        capture_output=True, text=True, env=env, preexec_fn=limit, timeout=300,
    )
    assert result.returncode == 2
    assert "o.y4m" in _assert_one_error_line(result.stderr)
    assert os.listdir(out_dir) == []


def _sigint_default() -> None:
    """preexec_fn of children a test interrupts: a test run started in the background by a
    non-interactive shell inherits SIGINT *ignored*, and a Python child keeps ignoring it (it then
    finishes normally and the test fails for a reason that is not vsqe's)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_removes_the_unfinished_output(shared_file, tmp_path, sig, code) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsqe", "run", str(shared_file("city_416x240.y4m")), str(tmp_path / "o.mkv"),
         *UNTRAINED, "--preset", "ultrafast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_sigint_default,
    )
    deadline = time.monotonic() + 120
    while not any(".vsqe-tmp" in n for n in os.listdir(tmp_path)) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never opened its output"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    _assert_one_error_line(err)
    assert os.listdir(tmp_path) == []


# --- failures before any work (in-process) --------------------------------------------------------


def _run_main(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "png", "png_named_mkv", "audio_only"])
def test_bad_input_is_one_line_and_writes_nothing(capsys, bad_inputs, tmp_path, kind) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x")
    code, err = _run_main(capsys, "run", bad_inputs[kind], out_dir / "o.mkv", *UNTRAINED)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vsqe: error: ")
    assert os.listdir(out_dir) == ["keep.txt"]


def test_refuses_to_overwrite_the_input(capsys, tmp_path) -> None:
    src = tmp_path / "in.hevc"
    shutil.copy(SAMPLES / "city_416x240_hm_ldp_qp37.hevc", src)
    before = src.read_bytes()
    link = tmp_path / "link.hevc"
    link.symlink_to(src)
    for out in (src, link):
        code, err = _run_main(capsys, "run", src, out, *UNTRAINED)
        assert code == 2 and "refusing to overwrite the input" in _assert_one_error_line(err)
    assert src.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["in.hevc", "link.hevc"]


def test_missing_output_folder(capsys, tmp_path) -> None:
    code, err = _run_main(capsys, "run", SAMPLES / "city_416x240_x264_qp37.264", tmp_path / "no" / "o.mkv", *UNTRAINED)
    assert code == 2 and "output folder does not exist" in _assert_one_error_line(err)


def test_unwritable_output_folder(capsys, tmp_path) -> None:
    if os.geteuid() == 0:
        folder = Path("/proc")  # mode bits do not stop root; /proc refuses new files to anyone
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
    code, err = _run_main(capsys, "run", SAMPLES / "city_416x240_x264_qp37.264", folder / "o.mkv", *UNTRAINED)
    assert code == 2 and str(folder) in _assert_one_error_line(err)
    assert not (folder / "o.mkv").exists()


def test_unknown_model_lists_the_known_ones(capsys, tmp_path) -> None:
    code, err = _run_main(capsys, "run", SAMPLES / "city_416x240_x264_qp37.264", tmp_path / "o.mkv", "--model", "nope")
    line = _assert_one_error_line(err)
    assert code == 2 and "unknown model 'nope'" in line and "stdf" in line
    assert os.listdir(tmp_path) == []


def test_untrained_model_needs_the_flag(capsys, tmp_path) -> None:
    # stdf ships weights now; basicvsrpp does not (yet): a model without them must be refused.
    model = "stdf" if get_model_spec("stdf").default_weights_path() is None else "basicvsrpp"
    assert get_model_spec(model).default_weights_path() is None
    code, err = _run_main(capsys, "run", SAMPLES / "city_416x240_x264_qp37.264", tmp_path / "o.mkv", "--model", model)
    assert code == 2 and "--weights" in _assert_one_error_line(err)
    assert os.listdir(tmp_path) == []


def test_usage_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--crf", "10", "--qp", "20", "a.mkv", "b.mkv"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "not allowed with argument" in err


def test_help_lists_the_commands(vsqe_cli) -> None:
    result = vsqe_cli("--help")
    assert result.returncode == 0 and "run" in result.stdout and "eval" in result.stdout
