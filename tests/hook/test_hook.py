"""libvsqe_hook (cpp/hook) with cpp/hook/test_hook.c standing in for HM.

The pictures are the first frames of the shared HM stream (city_416x240_hm_ldp_qp37.hevc), decoded
with vsqe.io and cut to a 96x64 window, so the untrained STDF runs in seconds on two cores. Its
per-frame QPs come from the encoder's CSV. test_hook copies them into HM-like buffers (int16 Pel,
80/40-sample margins full of a sentinel, strides in samples) and drives the library as HM would.

- post: the pulled pictures equal `vsqe run --allow-untrained` on the same frames bit for bit.
  Margins are untouched, pushes do not write, and the pictures ready after n pushes are n - delay.
- in-loop, at a 10-bit internal depth: the pictures are filtered in place within 10 bits, and each
  one equals the model run on the causal window written out here by hand (the past half is the
  previously filtered pictures, the future half is the current picture).
- errors: the failure contract, checked in C by the same test_hook process (--errors).
- Python host: the library loaded with ctypes into this (already running) interpreter.
"""
from __future__ import annotations

import csv
import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vsqe import hook
from vsqe.io.decode import open_video
from vsqe.io.formats import PixelFormat, VideoFrame

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hooklib  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "cpp" / "hook" / "test_hook.c"
STREAM = "city_416x240_hm_ldp_qp37.hevc"
FRAMES = 8
WIDTH, HEIGHT = 96, 64
X0, Y0 = 160, 88  # the window's top-left corner in the 416x240 picture (even: 4:2:0)
RADIUS = 3  # STDF


# --- building -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library() -> Path:
    return hooklib.library_path()


@pytest.fixture(scope="module")
def test_hook_exe(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_hook.c compiled the way docs/hm.md tells HM to link: -I, -lvsqe_hook, rpath."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc, clang) to build cpp/hook/test_hook.c")
    include = hook.include_dir()
    assert include is not None, "vsqe_hook.h was not installed beside the library"
    exe = tmp_path_factory.mktemp("hook_bin") / "test_hook"
    cmd = [cc, "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{include}", str(SOURCE),
           f"-L{library.parent}", "-lvsqe_hook", f"-Wl,-rpath,{library.parent}", "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return exe


def _run_hook(exe: Path, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    # The embedded interpreter finds this venv through VSQE_PYTHON, as documented for HM.
    env = dict(os.environ, VSQE_PYTHON=sys.prefix)
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


# --- the pictures HM would hand over ---------------------------------------------------------------


def _crop(frame: VideoFrame) -> VideoFrame:
    planes = [
        np.ascontiguousarray(p[y : y + h, x : x + w])
        for p, (x, y, w, h) in zip(
            frame.planes, [(X0, Y0, WIDTH, HEIGHT)] + [(X0 // 2, Y0 // 2, WIDTH // 2, HEIGHT // 2)] * 2
        )
    ]
    return frame.with_planes(planes)


@pytest.fixture(scope="module")
def pictures(shared_file, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("hook_pictures")
    with open_video(shared_file(STREAM)) as reader:
        frames = [_crop(f) for _, f in zip(range(FRAMES), reader)]
    with open(shared_file(STREAM.replace(".hevc", ".csv"))) as f:
        rows = list(csv.DictReader(f))[:FRAMES]
    raw = folder / "decoded.yuv"
    side = folder / "side.txt"
    y4m = folder / "decoded.y4m"
    with open(raw, "wb") as r, open(y4m, "wb") as y:
        y.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            data = b"".join(p.tobytes() for p in frame.planes)
            r.write(data)
            y.write(b"FRAME\n" + data)
    # One line per picture in decoding order (the same as POC order in this low-delay P stream).
    side.write_text("".join(f"{row['poc']} {row['qp']} {row['slice_type']} 0\n" for row in rows))
    return SimpleNamespace(frames=frames, qps=[int(r["qp"]) for r in rows], raw=raw, side=side, y4m=y4m)


def _read_raw(path: Path, bit_depth: int, count: int) -> list[list[np.ndarray]]:
    dtype = np.dtype("<u2") if bit_depth > 8 else np.dtype(np.uint8)
    shapes = PixelFormat("420", bit_depth).plane_shapes(WIDTH, HEIGHT)
    data = np.fromfile(path, dtype=dtype)
    per_frame = sum(h * w for h, w in shapes)
    assert data.size == per_frame * count, f"{path}: {data.size} samples, expected {per_frame * count}"
    out = []
    for i in range(count):
        planes, at = [], i * per_frame
        for h, w in shapes:
            planes.append(data[at : at + h * w].reshape(h, w))
            at += h * w
        out.append(planes)
    return out


# --- one test_hook run: post, in-loop, errors (the interpreter and torch start once) -----------------

INLOOP_SHIFT, INLOOP_DEPTH = 2, 10  # in-loop at a 10-bit internal depth: the 8-bit pictures times 4


@pytest.fixture(scope="module")
def hm_run(test_hook_exe, pictures, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("hook_run")
    post, inloop = folder / "post.yuv", folder / "inloop.yuv"
    result = _run_hook(test_hook_exe, pictures.raw, pictures.side, WIDTH, HEIGHT, "--post", post, "--inloop", inloop,
                       "--inloop-shift", INLOOP_SHIFT, "--errors")
    return SimpleNamespace(result=result, post=post, inloop=inloop, log=result.stdout + result.stderr)


def test_post_filter_equals_vsqe_run(hm_run, pictures, tmp_path) -> None:
    from vsqe.cli import main

    assert f"post: {FRAMES} pictures, delay {RADIUS}, margins untouched, samples within 8 bits" in hm_run.log, hm_run.log
    ref = tmp_path / "ref.y4m"
    # `vsqe run` in this process: the same command, without a third interpreter start-up.
    assert main(["run", str(pictures.y4m), str(ref), "--allow-untrained", "--no-progress", "-q"]) == 0
    with open_video(ref) as reader:
        want = [f.planes for f in reader]
    got = _read_raw(hm_run.post, 8, FRAMES)
    assert len(want) == FRAMES
    for n, (g, w) in enumerate(zip(got, want)):
        for p in range(3):
            assert np.array_equal(g[p], w[p]), f"picture {n} plane {p} differs from vsqe run"
    # The model did change luma (the comparison is not between two copies of the input).
    assert not np.array_equal(got[0][0], pictures.frames[0].planes[0])


def test_inloop_filters_in_place_with_causal_window(hm_run, pictures) -> None:
    from vsqe.pipeline.enhancer import Enhancer

    assert (
        f"inloop: {FRAMES} pictures filtered in place, margins untouched, samples within {INLOOP_DEPTH} bits"
        in hm_run.log
    ), hm_run.log
    got = _read_raw(hm_run.inloop, INLOOP_DEPTH, FRAMES)
    fmt = PixelFormat("420", INLOOP_DEPTH)
    inputs = [
        VideoFrame([p.astype(np.uint16) << INLOOP_SHIFT for p in f.planes], fmt, index=n, poc=n)
        for n, f in enumerate(pictures.frames)
    ]
    filtered = [VideoFrame(planes, fmt, index=n, poc=n) for n, planes in enumerate(got)]
    for n in range(FRAMES):  # chroma passes through a Y model
        assert np.array_equal(got[n][1], inputs[n].planes[1]) and np.array_equal(got[n][2], inputs[n].planes[2])
    assert all(int(g[0].max()) <= (1 << INLOOP_DEPTH) - 1 for g in got)

    enhancer = Enhancer("stdf", require_weights=False)
    for k in (0, 1, 5):
        cur = inputs[k]
        # Written out by hand: past half = the previously filtered pictures (the oldest repeated
        # while there are fewer than 3), future half = the current picture.
        past = [filtered[max(k - RADIUS + j, 0)] if k > 0 else cur for j in range(RADIUS)]
        want = enhancer.enhance_window([*past, cur, *[cur] * RADIUS])
        assert np.array_equal(got[k][0], want.planes[0]), f"in-loop picture {k} differs from its causal window"


def test_error_contract(hm_run) -> None:
    assert hm_run.result.returncode == 0, hm_run.log
    assert "errors: all checks passed" in hm_run.log
    assert "Traceback" not in hm_run.log


def test_inloop_causal_window_orders_by_poc_and_resets_at_idr() -> None:
    session = hook.HookSession("stdf", width=32, height=32, mode=hook.MODE_INLOOP, allow_untrained=True)
    try:
        fmt = session.fmt

        def pic(poc: int) -> VideoFrame:
            return VideoFrame([np.zeros((2, 2), np.uint8)], fmt, index=poc, poc=poc)

        # Random access, decoding order 0 8 4 2 1 3 6: for POC 5 the clip is 0 1 2 3 4 5 6 8.
        session._history = [pic(p) for p in (0, 8, 4, 2, 1, 3, 6)]
        cur = pic(5)
        assert [f.poc for f in session.causal_window(cur)] == [2, 3, 4, 5, 6, 8, 8]
        # Low delay: nothing after the current picture, so the future half replicates it.
        session._history = [pic(p) for p in (0, 1, 2, 3)]
        assert [f.poc for f in session.causal_window(pic(4))] == [1, 2, 3, 4, 4, 4, 4]
        session._history = [pic(0)]
        assert [f.poc for f in session.causal_window(pic(1))] == [0, 0, 0, 1, 1, 1, 1]
        assert session.history == 4 * RADIUS

        # Filtering for real, through the Python API the C library calls (numpy buffers here).
        planes = [np.full((32, 32), 100, np.int16), np.full((16, 16), 128, np.int16), np.full((16, 16), 128, np.int16)]
        strides = [32, 16, 16]
        session._history = []
        for poc in (0, 1, 2):
            session.filter_inloop(planes, strides, poc, 37, 1, 0)
        assert [f.poc for f in session._history] == [0, 1, 2]
        # The references kept are copies: nothing holds the caller's buffers after a call.
        assert not any(np.shares_memory(p, q) for f in session._history for p in f.planes for q in planes)
        session.filter_inloop(planes, strides, 2, 37, 1, 0)  # a POC held already: a new sequence
        assert [f.poc for f in session._history] == [2]
        session.filter_inloop(planes, strides, 3, 37, 1, 0)
        session.filter_inloop(planes, strides, 0, 37, 2, 0)  # IDR
        assert [f.poc for f in session._history] == [0]
    finally:
        session.close()


# --- failures ---------------------------------------------------------------------------------------


def test_missing_python_environment_is_an_error(test_hook_exe, tmp_path) -> None:
    env = dict(os.environ, VSQE_PYTHON=str(tmp_path / "no-venv"))
    result = subprocess.run([str(test_hook_exe), "badenv"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "badenv: all checks passed" in result.stdout
    assert f"Python not found at {tmp_path / 'no-venv'} (VSQE_PYTHON)" in result.stdout


# --- a host that already runs Python ---------------------------------------------------------------


def test_python_host_keeps_its_interpreter(library) -> None:
    from vsqe.pipeline.enhancer import Enhancer

    lib = hooklib.bind(library)
    assert lib.vsqe_hook_version() == 10100
    cfg = hooklib.Config()
    lib.vsqe_hook_config_init(ctypes.byref(cfg))
    cfg.model, cfg.width, cfg.height, cfg.mode, cfg.allow_untrained = b"no-such-model", 32, 32, hook.MODE_INLOOP, 1
    h = ctypes.c_void_p()
    assert lib.vsqe_hook_open(ctypes.byref(cfg), ctypes.byref(h)) == hook.E_MODEL
    assert b"unknown model 'no-such-model'" in lib.vsqe_hook_last_error(None)

    cfg.model = b"stdf"
    assert lib.vsqe_hook_open(ctypes.byref(cfg), ctypes.byref(h)) == hook.OK, lib.vsqe_hook_last_error(None)
    try:
        # HM-like int16 planes with margins; the sentinel must survive.
        rng = np.random.default_rng(1)
        luma = np.full((32 + 2 * 80, 32 + 2 * 80), -21846, np.int16)
        chroma = [np.full((16 + 2 * 40, 16 + 2 * 40), -21846, np.int16) for _ in range(2)]
        visible = [luma[80:112, 80:112], chroma[0][40:56, 40:56], chroma[1][40:56, 40:56]]
        for v in visible:
            v[...] = rng.integers(0, 256, v.shape)
        before = [v.copy() for v in visible]
        pic = hooklib.Picture()
        for c, (buf, v) in enumerate(zip([luma, *chroma], visible)):
            pic.planes[c] = v.ctypes.data
            pic.strides[c] = buf.shape[1]
        pic.poc, pic.slice_qp, pic.slice_type = 0, 37, 2
        assert lib.vsqe_hook_filter_inloop(h, ctypes.byref(pic)) == hook.OK, lib.vsqe_hook_last_error(h)
        fmt = PixelFormat("420", 8)
        cur = VideoFrame([b.astype(np.uint8) for b in before], fmt, index=0, poc=0)
        want = Enhancer("stdf", require_weights=False).enhance_window([cur] * (2 * RADIUS + 1))
        assert np.array_equal(visible[0], want.planes[0])
        assert np.array_equal(visible[1], before[1]) and np.array_equal(visible[2], before[2])
        for buf, m in ((luma, 80), *((c, 40) for c in chroma)):
            inner = np.zeros(buf.shape, bool)
            inner[m:-m, m:-m] = True
            assert (buf[~inner] == -21846).all()
    finally:
        assert lib.vsqe_hook_close(h) == hook.OK
    assert lib.vsqe_hook_close(h) == hook.E_CLOSED


# --- PQF models (MFQEv2) in post mode -----------------------------------------------------------


@pytest.fixture(scope="module")
def mfqev2_weights(tmp_path_factory) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "tests" / "pipeline"))
    from pqf_weights import save_random_mfqev2

    folder = tmp_path_factory.mktemp("hook_mfqev2")
    return save_random_mfqev2(folder / "non_pqf.safetensors", 1), save_random_mfqev2(folder / "pqf.safetensors", 2)


def test_mfqev2_post_filter_finds_pqfs_from_slice_qps_and_equals_vsqe_run(
    test_hook_exe, pictures, mfqev2_weights, tmp_path
) -> None:
    from vsqe.cli import main
    from vsqe.pipeline.enhancer import Enhancer
    from vsqe.pipeline.pqf_schedule import DEFAULT_STREAM_LOOKAHEAD, flag_delay, flags_every, qp_flags

    non_pqf, pqf = mfqev2_weights
    post = tmp_path / "post.yuv"
    result = _run_hook(test_hook_exe, pictures.raw, pictures.side, WIDTH, HEIGHT, "--model", "mfqev2", "--post", post,
                       "--weights", non_pqf, "--option", f"pqf_weights={pqf}", "--delay-bound")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    delay = flag_delay() + DEFAULT_STREAM_LOOKAHEAD
    assert f"post: {FRAMES} pictures, delay {delay}, margins untouched" in log, log
    assert "no PQF weights" not in log
    # The hook finds PQFs 0 and 4 in the HM log's QPs (37 40 39 40 38 40 39 40): every:4 on 8
    # frames, so `vsqe run --pqf every:4` on the same pictures is the reference.
    assert qp_flags(pictures.qps) == flags_every(FRAMES, 4)
    ref = tmp_path / "ref.y4m"
    assert main(["run", str(pictures.y4m), str(ref), "--model", "mfqev2", "--weights", str(non_pqf),
                 "--pqf-weights", str(pqf), "--pqf", "every:4", "--no-progress", "-q"]) == 0
    with open_video(ref) as reader:
        want = [f.planes for f in reader]
    got = _read_raw(post, 8, FRAMES)
    for n, (g, w) in enumerate(zip(got, want)):
        for p in range(3):
            assert np.array_equal(g[p], w[p]), f"picture {n} plane {p} differs from vsqe run"
    assert not np.array_equal(got[4][0], pictures.frames[4].planes[0])
    # And the PQF network did enhance the PQFs: frame 4 is not the non-PQF network's output.
    enh = Enhancer("mfqev2", weights=str(non_pqf))
    other = enh.enhance_pqf_triplet(pictures.frames[0], pictures.frames[4], pictures.frames[4], False)
    assert not np.array_equal(got[4][0], other.planes[0])


def test_mfqev2_delay_options_and_inloop_refusal() -> None:
    from vsqe.errors import ModelError

    session = hook.HookSession("mfqev2", width=32, height=32, allow_untrained=True, options=["pqf_lookahead=4"])
    try:
        assert session.delay == 5 + 4  # the QP rule's delay (plateau cap 4 - 1 + radius 2) + the look-ahead
    finally:
        session.close()
    with pytest.raises(ModelError, match="use post mode") as exc:
        hook.HookSession("mfqev2", width=32, height=32, mode=hook.MODE_INLOOP, allow_untrained=True)
    assert hook.error_status(exc.value)[0] == hook.E_MODEL
    with pytest.raises(hook.HookArgumentError, match="unknown option 'lookahead=4'"):
        hook.HookSession("mfqev2", width=32, height=32, allow_untrained=True, options=["lookahead=4"])
    with pytest.raises(hook.HookArgumentError, match="bad value"):
        hook.HookSession("mfqev2", width=32, height=32, allow_untrained=True, options=["pqf_lookahead=x"])
