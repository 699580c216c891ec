"""PSNR against the encoders' own logs: the protocol (per-frame PSNR, frame average, 10-bit output
rounded to the 8-bit reference) must reproduce every figure in ../shared/data/psnr.txt."""
from __future__ import annotations

import re

import numpy as np
import pytest

from vsqe.errors import InputError
from vsqe.eval.psnr import PSNR_CAP_DB
from vsqe.eval.report import EvalReport, score_frames
from vsqe.io.decode import open_video
from vsqe.io.formats import convert_bit_depth


def _figures(shared_data) -> list[tuple[str, float]]:
    path = shared_data / "psnr.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = []
    for line in path.read_text().splitlines():
        m = re.match(r"^(\S+)\s+Y-PSNR\s+([\d.]+) dB over 30 frames", line)
        if m:
            rows.append((m.group(1), float(m.group(2))))
    return rows


def _report(ref, dist, enh=None, limit=None) -> EvalReport:
    readers = [open_video(p) for p in (ref, dist, enh) if p is not None]
    try:
        report = EvalReport(str(ref), str(dist), str(enh) if enh else None, readers[0].info.fmt.bit_depth)
        report.frames.extend(score_frames(*readers[:2], readers[2] if enh else None, limit=limit))
    finally:
        for r in readers:
            r.close()
    return report


def test_hm_city_matches_the_hm_log(shared_file) -> None:
    report = _report(shared_file("city_416x240.y4m"), shared_file("city_416x240_hm_ldp_qp37.hevc"))
    assert len(report.frames) == 30
    assert report.mean_dist()[0] == pytest.approx(27.7549, abs=0.0005)


def test_every_figure_in_psnr_txt(shared_data) -> None:
    for stream, want in _figures(shared_data):
        clip = "_".join(stream.split("_")[:2])
        report = _report(shared_data / f"{clip}.y4m", shared_data / stream)
        assert len(report.frames) == 30
        assert report.mean_dist()[0] == pytest.approx(want, abs=0.0005), stream


def test_ten_bit_is_rounded_to_the_reference_depth() -> None:
    ten = np.array([[0, 1, 2, 3, 1021, 1022, 1023]], np.uint16)
    assert convert_bit_depth(ten, 10, 8).tolist() == [[0, 0, 1, 1, 255, 255, 255]]
    assert convert_bit_depth(np.array([[255]], np.uint8), 8, 10).tolist() == [[1020]]


def test_enhanced_gain_and_frame_types(shared_file) -> None:
    ref = shared_file("city_416x240.y4m")
    report = _report(ref, shared_file("city_416x240_hm_ldp_qp37.hevc"), shared_file("city_416x240_x264_qp37.264"))
    assert report.delta_y() == pytest.approx(28.3079 - 27.7549, abs=0.001)
    types = report.by_type()
    assert [len(types["I"]), len(types["P"])] == [1, 29]
    text = report.summary()
    assert "27.7549" in text and "28.3079" in text and "+0.5530" in text


def test_identical_frames_are_capped_and_noted(shared_file) -> None:
    ref = shared_file("city_416x240.y4m")
    report = _report(ref, ref, limit=2)
    assert report.mean_dist() == (PSNR_CAP_DB,) * 3 and "capped at 100 dB" in report.summary()


def test_frame_count_mismatch_is_an_error(shared_file, tmp_path) -> None:
    data = shared_file("city_416x240_hm_ldp_qp37.hevc").read_bytes()
    cut = tmp_path / "cut.hevc"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="frame counts differ"):
        _report(shared_file("city_416x240.y4m"), cut)


def test_frames_limit(shared_file) -> None:
    report = _report(shared_file("city_416x240.y4m"), shared_file("city_416x240_x264_qp37.264"), limit=4)
    assert [f.index for f in report.frames] == [0, 1, 2, 3]
