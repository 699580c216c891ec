"""A training run killed with SIGKILL resumes from its last checkpoint.

tests/train/test_trainer.py covers an exact resume after a clean stop and a corrupt checkpoint;
here the process is killed for real (kill -9, no handler runs, possibly in the middle of writing
a checkpoint) and `vsqe train --resume` must continue from the last complete checkpoint, on a
tiny dataset (one photo -> an 8-frame 128x128 x265 clip). Slow (two training processes, ~25 s
of CPU): run with VSQE_SLOW_TESTS=1, as `make longrun` does.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not os.environ.get("VSQE_SLOW_TESTS"), reason="slow: set VSQE_SLOW_TESTS=1 (make longrun)")


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory, shared_file) -> Path:
    if shutil.which("x265") is None:
        pytest.skip("x265 not installed (apt-get install -y x265)")
    from PIL import Image

    from vsqe.data.build import BuildConfig, build_dataset
    from vsqe.io.decode import open_video

    root = tmp_path_factory.mktemp("killdata")
    src = root / "src"
    src.mkdir()
    with open_video(shared_file("city_416x240.y4m")) as reader:
        y = next(iter(reader)).planes[0].astype(np.float32)
    rgb = np.stack([y, np.roll(y, 3, 0), np.roll(y, 5, 1)], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(src / "street.png")
    cfg = BuildConfig(out=root / "pairs", codecs=("x265-ldp",), clip_frames=8, sizes=((128, 128),),
                      clips_per_photo=1, min_size=32, min_photo_pixels=0, log=lambda m: None)
    build_dataset([src], cfg)
    return root / "pairs"


def _train(data: Path, out: Path, iters: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vsqe", "train", "--data", str(data), "--out", str(out), "--iters", str(iters),
            "--batch", "2", "--patch", "32", "--warmup", "2", "--threads", "1", "--precision", "fp32",
            "--x264-weight", "0", "--val-every", "0", "--val-full-every", "0", "--log-every", "1",
            "--ckpt-minutes", "0", *extra]  # --ckpt-minutes 0: a checkpoint after every iteration


def test_sigkill_then_resume_continues_from_the_last_checkpoint(tiny_pairs, tmp_path) -> None:
    from vsqe.train.trainer import load_checkpoint

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(_train(tiny_pairs, out, 10_000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    seen = 0
    deadline = time.monotonic() + 600
    for line in proc.stdout:  # type: ignore[union-attr]
        if m := re.match(r"it (\d+) ", line):
            seen = int(m.group(1))
        if seen >= 4:  # a few checkpoints written, more being written
            break
        assert time.monotonic() < deadline, "training never got going"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    last = load_checkpoint(out / "last.pt")  # complete and verified (sha256), whenever the kill came
    killed_at = last["iteration"]
    assert killed_at >= 3

    done = subprocess.run(_train(tiny_pairs, out, killed_at + 2, "--resume"), capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming from {out / 'last.pt'} at iteration {killed_at}" in done.stdout
    assert "Traceback" not in done.stderr
    assert load_checkpoint(out / "last.pt")["iteration"] == killed_at + 2


def test_resume_after_a_kill_inside_the_checkpoint_rotation(tiny_pairs, tmp_path) -> None:
    """The state a kill between `os.replace(last, prev)` and the end of save_checkpoint leaves."""
    from vsqe.train.trainer import Trainer, TrainConfig

    out = tmp_path / "run"
    subprocess.run(_train(tiny_pairs, out, 3), check=True, capture_output=True, timeout=600,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.replace(out / "last.pt", out / "prev.pt")
    (out / "last.pt.tmp").write_bytes((out / "prev.pt").read_bytes()[:1000])  # the half-written new one
    cfg = TrainConfig(data=str(tiny_pairs), out=str(out), iters=5, batch=2, patch=32, warmup=2, threads=1,
                      val_every=0, val_full_every=0, log_every=1, codec_weights={"x265-ldp": 1.0})
    trainer = Trainer(cfg, resume=True, log=lambda m: None)
    assert trainer.iteration == 3  # resumed from prev.pt, not restarted from 0
