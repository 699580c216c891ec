"""Faults while writing: disk full, the output folder removed midway, SIGINT/SIGTERM.

Whatever happens, the output folder ends as it was (no temporary file, no half output), the exit
status says why (2 disk/folder, 130 Ctrl-C, 143 SIGTERM), stderr holds one error line and no
traceback, and the input is untouched (hash before == after). The disk-full cases mount a tiny
tmpfs (root only; skipped otherwise -- tests/test_cli.py covers RLIMIT_FSIZE for everyone).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from badinput_corpus import _city_frames, _crop, encode, write_y4m  # noqa: E402

from vsqe.cli import main  # noqa: E402
from vsqe.io.formats import PixelFormat  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
UNTRAINED = ("--allow-untrained", "--no-progress")


@pytest.fixture(scope="module")
def small(tmp_path_factory, shared_file) -> dict[str, Path]:
    """A 96x64 crop of the city clip: 8 frames as y4m and HEVC, 30 frames as y4m (for signals)."""
    folder = tmp_path_factory.mktemp("faults")
    frames = [_crop(f) for f in _city_frames(shared_file("city_416x240.y4m"), 30)]
    return {
        "y4m": write_y4m(folder / "small.y4m", frames[:8], PixelFormat("420", 8)),
        "long": write_y4m(folder / "long.y4m", frames, PixelFormat("420", 8)),
        "hevc": encode(folder / "small.hevc", frames[:8], "libx265", muxer="hevc"),
        "ref": shared_file("city_416x240.y4m"),
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("vsqe: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0]


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


# --- disk full ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path):
    """A 16 KiB tmpfs: writes past it fail with ENOSPC, as on a full disk."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "fs"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> None:
    """Fills the file system up to its last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("output,extra", [("o.y4m", ()), ("o.mkv", ("--codec", "ffv1"))])
def test_run_on_a_full_disk_leaves_nothing(small, tiny_fs, capsys, output, extra) -> None:
    before = _sha(small["y4m"])
    code, err = _cli(capsys, "run", small["y4m"], tiny_fs / output, *UNTRAINED, *extra)
    assert code == 2 and f"disk full while writing {tiny_fs / output}; nothing was kept" in _one_error(err)
    assert os.listdir(tiny_fs) == []
    assert _sha(small["y4m"]) == before


@pytest.mark.parametrize("what", ["eval-csv", "eval-plot", "pqf-csv", "pqf-plot"])
def test_reports_on_a_full_disk_leave_nothing(small, tiny_fs, capsys, what) -> None:
    _fill(tiny_fs)
    command, kind = what.split("-")
    out = tiny_fs / ("f.csv" if kind == "csv" else "f.png")
    if command == "eval":
        args = ["eval", "--ref", small["y4m"], "--dist", small["hevc"], f"--{kind}", out]
    else:
        args = ["pqf", small["hevc"], f"--{kind}", out]
    code, err = _cli(capsys, *args)
    assert code == 2 and "disk full while writing" in _one_error(err)
    assert os.listdir(tiny_fs) == ["filler"]  # no half-written report, no temporary file


# --- the output folder disappears ------------------------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _start(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vsqe", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), preexec_fn=_sigint_default, **kwargs)

def _sigint_default() -> None:
    """preexec_fn of children a test interrupts: a test run started in the background by a
    non-interactive shell inherits SIGINT *ignored*, and a Python child keeps ignoring it (it then
    finishes normally and the test fails for a reason that is not vsqe's)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)



def _wait_for_temporary(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(".vsqe-tmp" in n for n in os.listdir(folder)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never opened its output"
        time.sleep(0.02)


def test_output_folder_removed_midway(small, tmp_path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    before = _sha(small["long"])
    proc = _start(["run", small["long"], folder / "o.y4m", *UNTRAINED, "--frames", "3"])
    _wait_for_temporary(folder, proc)
    shutil.rmtree(folder)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    assert "o.y4m" in _one_error(err)
    assert not folder.exists() and os.listdir(tmp_path) == []  # nothing recreated, nothing stray
    assert _sha(small["long"]) == before


# --- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code,stdin", [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)])
def test_signal_removes_the_output_and_keeps_the_input(small, tmp_path, sig, code, stdin) -> None:
    """SIGTERM with a file input and a y4m output; Ctrl-C with y4m on stdin and an .mkv output
    (tests/test_cli.py covers file -> .mkv for both signals)."""
    folder = tmp_path / "out"
    folder.mkdir()
    src = small["long"]
    before = _sha(src)
    if stdin:
        with open(src, "rb") as f:
            proc = _start(["run", "-", folder / "o.mkv", *UNTRAINED, "--preset", "ultrafast"], stdin=f)
    else:
        proc = _start(["run", src, folder / "o.y4m", *UNTRAINED])
    _wait_for_temporary(folder, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert ("terminated" if sig == signal.SIGTERM else "interrupted") in _one_error(err)
    assert os.listdir(folder) == []
    assert _sha(src) == before
