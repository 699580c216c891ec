"""Inputs the fuzzers (fuzz/, `make fuzz`) found, replayed on every `make test`.

tests/fuzz/crashers/TARGET/* are run through fuzz/targets.py's TARGET (no atheris needed): each
must now pass, i.e. raise nothing but the target's documented errors. A new crasher goes in the
folder (tiny: libFuzzer reduces them), with its fix and, below, a test of the behaviour it now has.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "fuzz"))
import targets  # noqa: E402

CRASHERS = Path(__file__).resolve().parent / "crashers"
INPUTS = sorted(p for p in CRASHERS.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", INPUTS, ids=[f"{p.parent.name}/{p.name}" for p in INPUTS])
def test_crasher_passes(path: Path) -> None:
    target = targets.TARGETS[path.parent.name]
    start = time.monotonic()
    target(path.read_bytes())
    assert time.monotonic() - start < 10  # the fuzzers' -timeout


def test_out_of_range_slice_qp_is_unknown_not_74() -> None:
    """pqf_hevc crasher: slice_qp_delta took SliceQpY to 74 (valid: -QpBdOffsetY..51); the
    picture now has qp=None and a warning, like any unreadable slice header."""
    from vsqe.pqf.stream import read_pictures

    pics = read_pictures(CRASHERS / "pqf_hevc" / "slice_qp_74.hevc")
    assert [p.qp for p in pics] == [40, 39, None, 40]
    assert "SliceQpY 74 out of range" in pics[2].warnings[0]


def test_a_huge_y4m_header_costs_only_the_bytes_present() -> None:
    """A y4m header at the size limit (8192x8192 4:4:4 16-bit: 402 MB a frame) over 100 bytes of
    data is read with a 1 MiB buffer, not a 402 MB one, and reported as one truncated frame."""
    import io
    import tracemalloc

    from vsqe.io.y4m import Y4MReader

    reader = Y4MReader(io.BytesIO(b"YUV4MPEG2 W8192 H8192 F25:1 C444p16\nFRAME\n" + bytes(100)))
    tracemalloc.start()
    try:
        assert list(reader) == [] and reader.lost == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_vvc_sps_with_zero_width_is_skipped() -> None:
    """pqf_vvc crasher (12 bytes): an SPS with sps_pic_width_max_in_luma_samples 0 and
    sub-pictures of one size divided by a zero sub-picture width (ZeroDivisionError). The SPS is
    now an unreadable parameter set: skipped like any other."""
    import io

    from vsqe.pqf.nal import iter_nal_units
    from vsqe.pqf.stream import make_parser

    parser = make_parser("vvc")
    data = (CRASHERS / "pqf_vvc" / "sps_zero_width.266").read_bytes()
    assert [p for nal in iter_nal_units(io.BytesIO(data)) for p in parser.push(nal)] == []
    assert parser.spss == {}
