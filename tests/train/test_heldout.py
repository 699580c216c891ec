"""The held-out test set: `vsqe data build --held-out` takes only the evaluation material's real
videos (never training sources, never photos), keeps the raw clips and bitstreams in the dev
clips' layout, and `python -m vsqe.train.report --dir` measures a model on them; the training
build still refuses that material, and flat (black) frames end a video clip."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsqe.data.build import BuildConfig, build_dataset


def _video(src_y4m: Path, dst: Path, black_first: int = 0) -> Path:
    """A lossless FFV1 .mkv of a real clip (optionally with leading black frames, like a fade in)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (apt-get install -y ffmpeg)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    vf = ["-vf", f"tpad=start={black_first}:color=black"] if black_first else []
    r = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src_y4m), *vf, "-c:v", "ffv1", str(dst)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return dst


@pytest.fixture(scope="module")
def sources(tmp_path_factory, shared_data):
    if shutil.which("x265") is None or shutil.which("x264") is None:
        pytest.skip("x265/x264 not installed (apt-get install -y x265 x264)")
    root = tmp_path_factory.mktemp("heldout")
    city = shared_data / "city_416x240.y4m"
    held = _video(city, root / "src" / "opencv-doc" / "examples" / "data" / "street.mkv", black_first=3)
    _video(city, root / "src" / "some-wallpapers" / "walk.mkv")  # a training source
    Image.new("RGB", (2000, 1500), (90, 120, 30)).save(root / "src" / "opencv-doc" / "examples" / "data" / "pic.png")
    return root, held


def _cfg(out: Path, **kw) -> BuildConfig:
    return BuildConfig(out=out, codecs=("x265-ldp-hm", "x264"), clip_frames=8, clips_per_video=1, min_size=64,
                       log=lambda m: None, **kw)


def test_held_out_build_is_the_evaluation_videos_only_with_their_streams(sources):
    root, held = sources
    out = root / "test"
    m = build_dataset([root / "src"], _cfg(out, held_out=True))
    assert [c["source"] for c in m["clips"]] == [str(held)] and "test_set" in m
    clip = m["clips"][0]["id"]
    streams = out / "streams"
    assert sorted(p.name for p in streams.iterdir()) == sorted(
        [f"{clip}.y4m", f"{clip}_x265_ldp_hm_qp37.hevc", f"{clip}_x264_qp37.264"])
    # the three black frames at the start are not in the clip: it begins with the first real frame
    raw = np.load(out / m["clips"][0]["raw"])
    assert raw.std(axis=(1, 2)).min() > 2.0
    # the training build refuses the evaluation material, as before
    train = build_dataset([root / "src"], _cfg(root / "train"))
    assert [c["source"] for c in train["clips"]] == [str(root / "src" / "some-wallpapers" / "walk.mkv")]
    assert any(s["source"] == str(held) and s["reason"].startswith("held out") for s in train["skipped"])


def test_report_measures_a_model_on_a_test_set_folder(sources, tmp_path):
    from vsqe.errors import InputError
    from vsqe.train.report import main, report

    root, _ = sources
    streams = root / "test" / "streams"
    if not streams.is_dir():
        build_dataset([root / "src"], _cfg(root / "test", held_out=True))
    r = report("vsqe/weights/stdf_y_qp37.safetensors", ["x265-hm"], step=4, threads=1, folder=streams, log=lambda m: None)
    (clip,) = r["clips"]
    s = r["streams"]["x265-hm"]
    assert list(s["per_clip"]) == [clip] and s["delta_mean"] > 0  # the STDF default gains on HM-like x265
    with pytest.raises(InputError, match="no x265 stream"):
        report("vsqe/weights/stdf_y_qp37.safetensors", ["x265"], folder=streams, log=lambda m: None)
    out = tmp_path / "r.json"
    assert main(["--weights", "vsqe/weights/stdf_y_qp37.safetensors", "--dir", str(tmp_path), "--streams", "x264"]) == 2
    assert main(["--weights", "vsqe/weights/stdf_y_qp37.safetensors", "--dir", str(streams), "--streams", "x264",
                 "--step", "8", "--threads", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["folder"] == str(streams)


def test_fetch_held_out_takes_only_the_reserved_packages(tmp_path):
    from vsqe.data.debian import fetch_debian

    said = []
    assert fetch_debian(tmp_path, ["mate-backgrounds"], log=said.append, held_out=True) == []
    assert said and "only the reserved" in said[0]
    said.clear()
    assert fetch_debian(tmp_path, ["opencv-doc"], log=said.append) == []
    assert "reserved for independent evaluation" in said[0]
