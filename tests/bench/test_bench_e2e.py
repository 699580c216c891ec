"""`vsqe bench --end-to-end`, the bench-only backends and `--accuracy` run and report every column.

Speed is a benchmark, not a test: only that the rows are there and the numbers are numbers.
"""
from __future__ import annotations

from pathlib import Path


def _rows(stdout: str, size: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines()
            if line.startswith("| ") and f"| {size} |" in line]


def test_end_to_end_and_ort_rows(vsqe_cli, shared_data: Path, tmp_path: Path):
    md = tmp_path / "bench.md"
    result = vsqe_cli("bench", "--size", "64x64", "--quick", "--repeats", "1", "--warmup", "0",
                      "--backend", "reference,ort-fp32", "--end-to-end", "--frames", "6", "--e2e-warmup", "1",
                      "--threads", "1", "--data", shared_data, "--markdown", md, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout, "64x64")
    model_rows, e2e_rows = rows[:2], rows[2:]
    assert [r[0] for r in model_rows] == ["reference", "ort-fp32"]
    assert float(model_rows[1][7]) < 1e-4  # ORT's DeformConv computes what ours does
    assert [r[0] for r in e2e_rows] == ["reference", "ort-fp32"]
    for r in e2e_rows:
        assert int(r[2]) == 6 and float(r[4]) > 0 and r[5].endswith("%") and float(r[7]) > 0 and float(r[9]) > 0
    assert "end-to-end `vsqe run`" in md.read_text()


def test_torch_compile_row(vsqe_cli):
    result = vsqe_cli("bench", "--size", "40x24", "--quick", "--repeats", "1", "--warmup", "0",
                      "--backend", "reference,torch-compile-fp32", "--threads", "1", timeout=600)
    assert result.returncode == 0, result.stderr
    row = _rows(result.stdout, "40x24")[1]
    assert row[0] == "torch-compile-fp32"
    # Compiles here; where it cannot, the row says why in one line instead of failing the run.
    assert float(row[7]) < 1e-4 or row[2].startswith("failed: ")


def test_accuracy_check(vsqe_cli, shared_data: Path):
    result = vsqe_cli("bench", "--accuracy", "--allow-untrained", "--clips", "city_416x240", "--frames", "2",
                      "--backend", "torch-bf16", "--threads", "1", "--data", shared_data, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout, "torch-fp32") + _rows(result.stdout, "torch-bf16")
    assert [r[1] for r in rows] == ["torch-fp32", "torch-bf16"]
    assert all(r[0] == "city_416x240" and r[2] == "2" for r in rows)
    assert abs(float(rows[1][4])) < 0.1 and rows[1][6] in ("yes", "**NO**")


def test_accuracy_check_of_a_pqf_model(vsqe_cli, shared_data: Path):
    """MFQEv2-Y with its shipped weights: PQFs from the stream's slice QPs, as `vsqe run` finds them
    (the accuracy check once asked the decoded frames for QPs and stopped at frame 0)."""
    result = vsqe_cli("bench", "--accuracy", "--model", "mfqev2-y", "--clips", "city_416x240", "--frames", "5",
                      "--backend", "torch-bf16", "--threads", "1", "--data", shared_data, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout, "torch-fp32") + _rows(result.stdout, "torch-bf16")
    assert [r[1] for r in rows] == ["torch-fp32", "torch-bf16"]
    assert float(rows[0][3]) > 0.1  # the trained networks gain on the first frames of the HM city stream
    assert "Weights: " in result.stdout and "mfqev2_y_qp37.safetensors + " in result.stdout and "untrained" not in result.stdout
    assert abs(float(rows[1][4])) < 0.1


def test_unknown_bench_backend_is_one_line(vsqe_cli):
    result = vsqe_cli("bench", "--backend", "nope", "--size", "40x24", "--quick")
    assert result.returncode == 2
    assert "unknown bench backend 'nope'" in result.stderr and "Traceback" not in result.stderr
