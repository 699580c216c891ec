"""Every slice QP of the shared streams equals the one FFmpeg's own header parser derives."""
from __future__ import annotations

import pytest
from pqf_data import CLIPS, data_file
from trace_oracle import slice_qps

from vsqe.pqf.stream import read_pictures


@pytest.mark.parametrize("suffix,codec", [("hm_ldp_qp37.hevc", "hevc"), ("x265_ldp_qp37.hevc", "hevc"),
                                          ("x264_qp37.264", "h264"), ("vvenc_ldp_qp37.266", "vvc")])
@pytest.mark.parametrize("clip", CLIPS)
def test_slice_qps_match_ffmpeg_trace_headers(clip: str, suffix: str, codec: str) -> None:
    path = data_file(f"{clip}_{suffix}")
    expected = slice_qps(str(path), codec)
    assert len(expected) == 30
    assert [q for p in read_pictures(path) for q in p.slice_qps] == expected
