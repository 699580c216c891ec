"""Helpers for the pqf tests: the real clips in ../shared/data (override with VSQE_SHARED_DATA)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("VSQE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
CLIPS = ("city_416x240", "phone_832x480", "birds_640x360")


def data_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared clip {path} not available")
    return path


def log_rows(name: str) -> list[dict[str, str]]:
    """The encoder-log CSV (poc, slice_type, qp, bits, y_psnr)."""
    with open(data_file(name), newline="") as f:
        return list(csv.DictReader(f))


def hm_qp(poc: int) -> int:
    """HM-16.5 LDP GOP4 at QP 37 (and x265 forced to it): I 37, then 40, 39, 40, 38 by POC mod 4."""
    return 37 if poc == 0 else {1: 40, 2: 39, 3: 40, 0: 38}[poc % 4]
