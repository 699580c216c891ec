"""The bad-input cases that reach the HM hook, through its public C ABI (libvsqe_hook via ctypes).

HM hands the hook decoded pictures, not bitstreams: the corpus cases that apply are the picture
formats (huge, odd sizes, 4:2:2/4:4:4, 10-bit), streams shorter than the window, and bad
checkpoints. Each must give a negative status and a one-line vsqe_hook_last_error() (never an
abort, never a Python traceback), or -- where `vsqe run` enhances -- the same picture `vsqe run`
gives (a 1-frame stream: its frame replicated through the window). tests/hook covers the call
contract itself (null pointers, strides, call order, closed handles).
"""
from __future__ import annotations

import ctypes
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vsqe import hook
from vsqe.io.formats import PixelFormat, VideoFrame

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hook"))
import hooklib  # noqa: E402


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    return hooklib.bind(hooklib.library_path())


def _open(lib, width: int, height: int, *, chroma: int = 1, bit_depth: int = 8, weights: str | None = None,
          mode: int = hook.MODE_POST) -> tuple[int, ctypes.c_void_p, str]:
    cfg = hooklib.Config()
    lib.vsqe_hook_config_init(ctypes.byref(cfg))
    cfg.model, cfg.width, cfg.height, cfg.chroma_format, cfg.bit_depth, cfg.mode = b"stdf", width, height, chroma, bit_depth, mode
    cfg.allow_untrained = 1
    if weights is not None:
        cfg.weights = weights.encode()
    h = ctypes.c_void_p()
    status = lib.vsqe_hook_open(ctypes.byref(cfg), ctypes.byref(h))
    return status, h, lib.vsqe_hook_last_error(None).decode()


def _assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


@pytest.mark.parametrize("width,height,chroma,text", [
    (60000, 60000, 1, "not supported (1 to 16384 per side)"),  # refused before any allocation
    (16384, 16384, 1, "too large"),  # within the per-side limit, over 8192x8192 pixels in all
    (417, 241, 1, "not a whole number of 4:2:0 chroma samples"),
    (417, 241, 2, "not a whole number of 4:2:2 chroma samples"),
])
def test_open_refuses_sizes(lib, width, height, chroma, text) -> None:
    status, h, message = _open(lib, width, height, chroma=chroma)
    assert status == hook.E_FORMAT and not h.value
    _assert_one_line(message)
    assert text in message


def _picture(planes: list[np.ndarray], poc: int) -> hooklib.Picture:
    pic = hooklib.Picture()
    for c, p in enumerate(planes):
        pic.planes[c] = p.ctypes.data
        pic.strides[c] = p.shape[1]
    pic.poc, pic.slice_qp, pic.slice_type = poc, 37, 2 if poc == 0 else 1
    return pic


@pytest.mark.parametrize("width,height,chroma,depth,frames", [
    (45, 29, 3, 8, 1),    # odd size in 4:4:4, a 1-picture stream
    (32, 16, 2, 10, 2),   # 4:2:2 10-bit, a 2-picture stream
])
def test_short_streams_and_formats_equal_vsqe_run(lib, width, height, chroma, depth, frames) -> None:
    """Post mode: push, flush, pull. A stream shorter than the 7-frame window is enhanced with
    replicated borders, exactly as `vsqe run` enhances a 1- or 2-frame video."""
    from vsqe.pipeline.enhancer import Enhancer
    from vsqe.pipeline.window import window_indices

    status, h, message = _open(lib, width, height, chroma=chroma, bit_depth=depth)
    assert status == hook.OK, message
    try:
        fmt = PixelFormat(hook.CHROMA_FORMATS[chroma], depth)
        rng = np.random.default_rng(depth)
        pictures = [[rng.integers(0, fmt.peak + 1, shape).astype(np.int16) for shape in fmt.plane_shapes(width, height)]
                    for _ in range(frames)]
        for poc, planes in enumerate(pictures):
            assert lib.vsqe_hook_push(h, ctypes.byref(_picture(planes, poc))) == hook.OK, lib.vsqe_hook_last_error(h)
        assert lib.vsqe_hook_flush(h) == hook.OK, lib.vsqe_hook_last_error(h)
        outs = []
        for _ in range(frames):
            out = [np.zeros_like(p) for p in pictures[0]]
            got = ctypes.c_int()
            assert lib.vsqe_hook_pull(h, ctypes.byref(_picture(out, 0)), ctypes.byref(got)) == hook.OK
            assert got.value == 1
            outs.append(out)
    finally:
        assert lib.vsqe_hook_close(h) == hook.OK
    frames_in = [VideoFrame([p.astype(fmt.dtype) for p in planes], fmt, index=i) for i, planes in enumerate(pictures)]
    enhancer = Enhancer("stdf", require_weights=False)
    for n, out in enumerate(outs):
        want = enhancer.enhance_window([frames_in[i] for i in window_indices(n, 3, frames)])
        assert np.array_equal(out[0], want.planes[0].astype(np.int16)), n
        assert all(np.array_equal(out[c], pictures[n][c]) for c in (1, 2))  # chroma passes through


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints_are_refused_in_one_line(lib, tmp_path: Path) -> None:
    from vsqe.models import get_model_spec

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, evil)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps({"w": _RunsCode(str(marker))}, protocol=2))
    state = {k: torch.zeros(v.shape) for k, v in get_model_spec("stdf").build().state_dict().items()}
    state["qenet.out_conv.weight"].view(-1)[0] = float("inf")
    nan = tmp_path / "inf.pt"
    torch.save(state, nan)
    other = tmp_path / "rgb.pt"
    torch.save(get_model_spec("stdf-rgb").build().state_dict(), other)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(other.read_bytes()[:5000])
    for path, text in [(evil, "refusing checkpoint"), (legacy, "checkpoint"), (nan, "NaN or Inf"),
                       (other, "does not fit model 'stdf'"), (cut, "truncated or not a checkpoint")]:
        status, h, message = _open(lib, 32, 32, weights=str(path))
        assert status == hook.E_MODEL and not h.value, (path.name, message)
        _assert_one_line(message)
        assert text in message, message
    assert not marker.exists(), "unpickling ran the payload"
