"""PQF rule on the encoders' logs, and the peak rule's plateau/edge behaviour."""
from __future__ import annotations

import pytest
from pqf_data import CLIPS, data_file, log_rows

from vsqe.pqf.detect import indices, peak_flags, pqfs_from_psnr, pqfs_from_qp, precision_recall
from vsqe.pqf.stream import display_pictures, read_pictures


@pytest.mark.parametrize("clip", CLIPS)
def test_hm_ldp_pqfs_are_the_qp38_frames_and_the_i_frame(clip: str) -> None:
    pics = display_pictures(read_pictures(data_file(f"{clip}_hm_ldp_qp37.hevc")))
    assert indices(pqfs_from_qp([p.qp for p in pics])) == [0, 4, 8, 12, 16, 20, 24, 28]


@pytest.mark.parametrize("clip", CLIPS)
def test_vvenc_pqfs_are_the_gop8_frames(clip: str) -> None:
    pics = display_pictures(read_pictures(data_file(f"{clip}_vvenc_ldp_qp37.266")))
    assert indices(pqfs_from_qp([p.qp for p in pics])) == [0, 8, 16, 24]


def test_psnr_labels_agree_with_qp_on_hm_city() -> None:
    rows = log_rows("city_416x240_hm_ldp_qp37.csv")
    psnr_flags = pqfs_from_psnr([float(r["y_psnr"]) for r in rows])
    qp_flags = pqfs_from_qp([int(r["qp"]) for r in rows])
    assert precision_recall(qp_flags, psnr_flags) == (1.0, 1.0)


def test_peak_rule_plateaus_and_edges() -> None:
    assert indices(peak_flags([1, 3, 3, 1])) == [1]  # a plateau counts once, at its first frame
    assert indices(peak_flags([3, 1, 2])) == [0, 2]  # the ends compare with their one neighbour
    assert indices(peak_flags([2, 2, 2])) == [0]
    assert indices(peak_flags([1, 3, 1, 3, 1], radius=1)) == [1, 3]
    assert indices(peak_flags([1, 3, 2, 4, 1], radius=2)) == [3]
    assert indices(peak_flags([])) == []
    assert indices(pqfs_from_qp([40, 39, 40, 38, 40], radius=1)) == [1, 3]
    assert indices(pqfs_from_qp([37, 40, 39, 40, 38, 40])) == [0, 4]
    with pytest.raises(ValueError, match="unknown"):
        pqfs_from_qp([37, None, 40])
