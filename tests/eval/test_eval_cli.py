"""`vsqe eval` as a user runs it: the report on stdout, CSV and PNG files, one-line errors."""
from __future__ import annotations

import csv

from vsqe.cli import main


def test_eval_report_csv_and_plot(vsqe_cli, shared_file, tmp_path) -> None:
    ref = shared_file("city_416x240.y4m")
    result = vsqe_cli(
        "eval", "--ref", ref, "--dist", shared_file("city_416x240_hm_ldp_qp37.hevc"),
        "--enh", shared_file("city_416x240_vvenc_ldp_qp37.266"),
        "--csv", tmp_path / "r.csv", "--plot", tmp_path / "r.png",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    dist = next(line for line in lines if line.startswith("dist"))
    enh = next(line for line in lines if line.startswith("enh"))
    assert dist.split()[1] == "27.7549" and enh.split()[1] == "26.4414"  # the HM and vvenc logs' figures
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and rows[0]["type"] == "I"
    assert set(rows[0]) >= {"frame", "dist_y", "dist_u", "dist_v", "enh_y", "delta_y"}
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_mismatch_is_one_line(capsys, shared_file, tmp_path) -> None:
    data = shared_file("city_416x240_x264_qp37.264").read_bytes()
    cut = tmp_path / "cut.264"
    cut.write_bytes(data[: len(data) // 2])
    code = main(["eval", "--ref", str(shared_file("city_416x240.y4m")), "--dist", str(cut)])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("vsqe: error:")]
    assert code == 2 and len(errors) == 1 and "frame counts differ" in errors[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_eval_missing_input(capsys, tmp_path) -> None:
    code = main(["eval", "--ref", str(tmp_path / "nope.y4m"), "--dist", str(tmp_path / "x.hevc")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"vsqe: error: input not found: {tmp_path / 'nope.y4m'}\n"
