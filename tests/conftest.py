"""Shared fixtures: the real clips in ../shared/data (override with VSQE_SHARED_DATA) and samples/.

Tests that need a clip ask for `shared_data` (or `shared_file(name)`); when the folder is missing
they are skipped with the path in the reason, and the session header says so up front.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("VSQE_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLES = REPO / "samples"


def pytest_report_header(config: pytest.Config) -> str:
    state = "found" if SHARED_DATA.is_dir() else "MISSING: tests that need real clips will be skipped"
    return f"vsqe shared test clips: {SHARED_DATA} ({state})"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test clips not found at {SHARED_DATA} (set VSQE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file(shared_data: Path):
    def get(name: str) -> Path:
        path = shared_data / name
        if not path.is_file():
            pytest.skip(f"shared test clip {path} not found")
        return path

    return get


def _run_vsqe(*args: str | os.PathLike, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, "-m", "vsqe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="session")
def vsqe_cli():
    """Runs `python -m vsqe ARGS` as a user would (a subprocess); stdout and stderr as text."""
    return _run_vsqe


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    """Inputs that are not videos, by kind; all in a folder of their own."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.mkv").write_bytes(b"")
    (folder / "text.mkv").write_text("not a video\n" * 20)
    png = folder / "still.png"
    av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").to_image().save(png)
    (folder / "png_named.mkv").write_bytes(png.read_bytes())
    audio = folder / "audio_only.mka"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("flac", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return {
        "missing": folder / "missing.mkv",
        "directory": folder,
        "empty": folder / "empty.mkv",
        "text": folder / "text.mkv",
        "png": png,
        "png_named_mkv": folder / "png_named.mkv",
        "audio_only": audio,
    }


@pytest.fixture
def single_thread():
    """Narrow networks run faster on one thread (no OpenMP barriers), and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
