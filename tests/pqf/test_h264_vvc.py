"""H.264 and VVC slice-header QP/POC against the encoders' settings and logs."""
from __future__ import annotations

import pytest
from pqf_data import CLIPS, data_file, log_rows

from vsqe.pqf.stream import display_pictures, read_pictures


@pytest.mark.parametrize("clip", CLIPS)
def test_vvenc_stream_matches_encoder_log(clip: str) -> None:
    pics = display_pictures(read_pictures(data_file(f"{clip}_vvenc_ldp_qp37.266")))
    rows = log_rows(f"{clip}_vvenc_ldp_qp37.csv")
    assert len(pics) == len(rows) == 30
    for pic, row in zip(pics, rows):
        assert (pic.poc, pic.slice_type, pic.qp) == (int(row["poc"]), row["slice_type"], int(row["qp"]))
        assert not pic.warnings
    assert pics[0].nal_type_name == "IDR_N_LP"


@pytest.mark.parametrize("clip", CLIPS)
def test_x264_constant_qp_stream(clip: str) -> None:
    # x264 --qp 37 keeps P at 37 and lowers I by 6*log2(ipratio 1.4) = 2.9 -> 34.
    pics = display_pictures(read_pictures(data_file(f"{clip}_x264_qp37.264")))
    assert len(pics) == 30
    assert [p.qp for p in pics] == [34] + [37] * 29
    assert [p.slice_type for p in pics] == ["I"] + ["P"] * 29
    assert [p.poc for p in pics] == [2 * i for i in range(30)]  # POC type 2: 2 * frame_num
    assert pics[0].nal_type_name == "IDR"
