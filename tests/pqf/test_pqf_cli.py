"""`vsqe pqf`: table, CSV, plot, PSNR with --ref, fallback, and one-line errors."""
from __future__ import annotations

import csv

from pqf_data import data_file, join_nals, split_nals

from vsqe.cli import main


def test_table_csv_plot_and_psnr(tmp_path, capsys) -> None:
    stream = data_file("city_416x240_hm_ldp_qp37.hevc")
    ref = data_file("city_416x240.y4m")
    out_csv, out_png = tmp_path / "f.csv", tmp_path / "f.png"
    assert main(["pqf", str(stream), "--ref", str(ref), "--csv", str(out_csv), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["frame", "poc", "type", "qp", "nal", "tid", "bits", "pqf", "psnr"]
    assert "PQFs from qp (radius 2): [0, 4, 8, 12, 16, 20, 24, 28]" in text
    assert "mean Y-PSNR 27.7549 dB" in text  # the HM log's average
    rows = list(csv.DictReader(open(out_csv)))
    assert [int(r["qp"]) for r in rows[:5]] == [37, 40, 39, 40, 38]
    assert [r["pqf"] for r in rows[:5]] == ["1", "0", "0", "0", "1"]
    assert abs(float(rows[0]["psnr"]) - 28.7135) < 1e-3
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_qp_falls_back_to_frame_sizes(tmp_path, capsys) -> None:
    src = data_file("city_416x240_hm_ldp_qp37.hevc")
    nals = split_nals(src.read_bytes())
    bad = tmp_path / "noparams.hevc"
    bad.write_bytes(join_nals([n for n in nals if (n[0] >> 1) & 0x3F not in (32, 33, 34)]))
    assert main(["pqf", str(bad), "--fallback", "bits"]) == 3  # table written, but the input is damaged
    cap = capsys.readouterr()
    assert "PQFs from bits" in cap.out and "[0, 4, 8, 12, 16, 20, 24, 28]" in cap.out
    assert "QP unknown for 30 of 30 frames" in cap.err
    assert "picture 0 (decode order)" in cap.err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys) -> None:
    assert main(["pqf", str(tmp_path / "missing.hevc")]) == 2
    (tmp_path / "empty.266").write_bytes(b"")
    assert main(["pqf", str(tmp_path / "empty.266")]) == 2
    (tmp_path / "text.bin").write_bytes(b"hello world\n" * 10)
    assert main(["pqf", str(tmp_path / "text.bin")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("vsqe: error: ") for line in err)
    assert "no such file" in err[0] and "empty" in err[1] and "not a raw" in err[2]
