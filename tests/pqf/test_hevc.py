"""HEVC slice-header QP/POC against the HM encoder logs and the x265 qpfile."""
from __future__ import annotations

import pytest

from pqf_data import CLIPS, data_file, hm_qp, log_rows
from vsqe.pqf.stream import display_pictures, read_pictures


@pytest.mark.parametrize("clip", CLIPS)
def test_hm_stream_matches_encoder_log(clip: str) -> None:
    pics = display_pictures(read_pictures(data_file(f"{clip}_hm_ldp_qp37.hevc")))
    rows = log_rows(f"{clip}_hm_ldp_qp37.csv")
    assert len(pics) == len(rows) == 30
    for i, (pic, row) in enumerate(zip(pics, rows)):
        assert pic.display_index == i
        assert (pic.poc, pic.slice_type, pic.qp) == (int(row["poc"]), row["slice_type"], int(row["qp"])), i
        assert pic.temporal_id == 0 and not pic.warnings
    assert pics[0].nal_type_name == "IDR_W_RADL"
    assert all(p.nal_type_name == "TRAIL_R" for p in pics[1:])


@pytest.mark.parametrize("clip", CLIPS)
def test_x265_stream_matches_qpfile(clip: str) -> None:
    pics = display_pictures(read_pictures(data_file(f"{clip}_x265_ldp_qp37.hevc")))
    assert len(pics) == 30
    for i, pic in enumerate(pics):
        assert (pic.poc, pic.qp, pic.slice_type) == (i, hm_qp(i), "I" if i == 0 else "P")
