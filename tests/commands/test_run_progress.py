"""The progress line of `vsqe run` knows the total of raw Annex-B inputs (frame count from slice headers)."""
from __future__ import annotations

import pytest

from vsqe.commands.run import _count_raw_pictures
from vsqe.io.decode import open_video


@pytest.mark.parametrize("name", ["city_416x240_hm_ldp_qp37.hevc", "city_416x240_vvenc_ldp_qp37.266",
                                  "city_416x240_x264_qp37.264"])
def test_raw_streams_get_a_total(shared_file, name):
    path = str(shared_file(name))
    with open_video(path) as reader:
        assert reader.info.frame_count is None  # the container cannot tell: the parser must
        assert _count_raw_pictures(path, reader.info) == 30


def test_cut_stream_counts_what_is_there_and_other_inputs_get_none(shared_file, tmp_path):
    data = shared_file("city_416x240_hm_ldp_qp37.hevc").read_bytes()
    cut = tmp_path / "cut.hevc"
    cut.write_bytes(data[: len(data) // 2])
    with open_video(str(cut)) as reader:
        n = _count_raw_pictures(str(cut), reader.info)
    assert n is None or 0 < n < 30
    y4m = str(shared_file("city_416x240.y4m"))
    with open_video(y4m) as reader:
        assert _count_raw_pictures(y4m, reader.info) is None  # y4m: the reader counts frames itself
