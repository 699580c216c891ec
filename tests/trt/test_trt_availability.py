"""What `--backend trt` and `vsqe build-engine` do on a machine without TensorRT or without a GPU:
one line naming what is missing, exit status 2, no output file. Plus the build profiles.

On a machine with both, these tests skip (the GPU checks are in docs/tensorrt.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from vsqe.backends import backend_names, create_backend
from vsqe.backends.tensorrt import unavailable_reason
from vsqe.errors import BackendError
from vsqe.export.engine import gpu_missing, parse_size, tensorrt_missing

REPO = Path(__file__).resolve().parents[2]
REASON = unavailable_reason()
needs_missing = pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are both here")


def test_trt_names_registered():
    assert {"trt", "trt-fp16"} <= set(backend_names())


@needs_missing
@pytest.mark.parametrize("name", ["trt", "trt-fp16"])
def test_backend_error_names_what_is_missing(name):
    import torch

    with pytest.raises(BackendError) as info:
        create_backend(name, torch.nn.Identity())
    message = str(info.value)
    assert "\n" not in message and message.startswith("backend 'trt' needs ")
    if tensorrt_missing():
        assert "TensorRT" in message and "tensorrt" in message
    if gpu_missing():
        assert "GPU" in message
    if not tensorrt_missing():
        assert "TensorRT" not in message.split(":")[0]


@needs_missing
def test_vsqe_run_backend_trt_one_line(vsqe_cli, tmp_path):
    clip = REPO / "samples" / "city_416x240_x264_qp37.264"
    out = tmp_path / "out.mkv"
    res = vsqe_cli("run", clip, out, "--backend", "trt", "--allow-untrained", timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsqe: error: backend 'trt' needs "), res.stderr
    assert res.stdout == ""
    assert not out.exists() and not list(tmp_path.iterdir())


@needs_missing
def test_build_engine_one_line(capsys):
    from vsqe.cli import main

    rc = main(["build-engine", "--model", "stdf", "--shape", "64x48", "--allow-untrained"])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""  # stdout carries only the engine path
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsqe: error: vsqe build-engine needs "), captured.err


def test_build_engine_argument_errors(capsys):
    from vsqe.cli import main

    assert main(["build-engine", "--model", "basicvsrpp", "--min", "256x256", "--max", "512x512"]) == 2
    assert "static shapes only" in capsys.readouterr().err
    assert main(["build-engine", "--model", "stdf", "--shape", "640x480", "--min", "64x64"]) == 2
    assert "both --min and --max" in capsys.readouterr().err
    assert main(["build-engine", "--model", "stdf", "--shape", "64x64", "--min", "128x128", "--max", "256x256"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err


def test_profiles_cover_registered_models():
    from vsqe.commands.build_engine import load_profiles
    from vsqe.models import get_model_spec, model_names

    profiles = load_profiles()
    assert set(profiles) <= set(model_names())  # a model without one builds from the defaults
    assert {"stdf", "stdf-rgb", "basicvsrpp", "basicvsrpp-y"} <= set(profiles)
    for name, prof in profiles.items():
        spec = get_model_spec(name)
        assert set(prof) <= {"shape", "min", "max", "precision", "dcn", "workspace"}, name
        parse_size(prof["shape"])
        assert prof["precision"] in ("fp16", "fp32") and prof["dcn"] in ("native", "plugin")
        assert ("min" in prof) == ("max" in prof), name
        if spec.temporal == "recurrent":  # static per-step engines, any segment length
            assert "min" not in prof, name
        elif "min" in prof:
            h0, w0 = parse_size(prof["min"])
            h1, w1 = parse_size(prof["max"])
            h, w = parse_size(prof["shape"])
            assert h0 <= h <= h1 and w0 <= w <= w1, name


@needs_missing
def test_vapoursynth_backend_trt_one_line():
    vs = pytest.importorskip("vapoursynth")
    import vsqe.vs

    clip = vs.core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=8)
    with pytest.raises(vs.Error) as info:
        vsqe.vs.enhance(clip, model="stdf", backend="trt", allow_untrained=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("vsqe: backend 'trt' needs "), message
