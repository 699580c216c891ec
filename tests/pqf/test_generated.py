"""Streams made here with libx264/libx265 (B pyramids, open GOP): display order, QP oracles."""
from __future__ import annotations

from collections import Counter

import av
import pytest
from pqf_data import decoded_types, encode, join_nals, split_nals

from vsqe.pqf.stream import display_pictures, read_pictures


def _side_data_qps(path) -> list[int]:
    """FFmpeg's H.264 encoder-parameter side data: frame 'qp' is the PPS pic_init_qp, so the
    slice QP is the per-macroblock QP (all equal with --aq-mode 0)."""
    from av.sidedata.sidedata import VideoEncParams

    qps = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.options = {"export_side_data": "venc_params"}
        for f in c.decode(s):
            sd = next(x for x in f.side_data.values() if isinstance(x, VideoEncParams))
            qps.append(Counter(sd.qp_map().ravel().tolist()).most_common(1)[0][0])
    return qps


def test_h264_b_pyramid_matches_decoder_and_side_data(tmp_path) -> None:
    path = tmp_path / "b.264"
    encode("libx264", path, options={"x264-params": "bframes=3:b-pyramid=normal:aq-mode=0:mbtree=0:weightp=2:slices=2:ref=3",
                                     "crf": "30"})
    pics = display_pictures(read_pictures(path))
    assert [p.slice_type for p in pics] == decoded_types(path)
    assert "B" in {p.slice_type for p in pics}
    assert [p.qp for p in pics] == _side_data_qps(path)
    assert [p.poc for p in pics] == sorted(p.poc for p in pics)


def test_hevc_b_pyramid_open_gop_and_rasl_after_a_cut(tmp_path) -> None:
    path = tmp_path / "og.hevc"
    encode("libx265", path, frames=30, options={
        "x265-params": "bframes=3:b-pyramid=1:open-gop=1:keyint=12:min-keyint=12:scenecut=0:log-level=error"})
    full = display_pictures(read_pictures(path))
    assert [p.slice_type for p in full] == decoded_types(path)
    assert [p.poc for p in full] == list(range(30))
    names = {p.nal_type_name for p in full}
    assert {"CRA_NUT", "RASL_N"} <= names
    # Start decoding at the first CRA: its RASL pictures are dropped by the decoder and by us.
    nals = split_nals(path.read_bytes())
    first_cra = next(i for i, n in enumerate(nals) if (n[0] >> 1) & 0x3F == 21)
    params = [n for n in nals[:first_cra] if (n[0] >> 1) & 0x3F in (32, 33, 34)]
    cut = tmp_path / "cut.hevc"
    cut.write_bytes(join_nals(params + nals[first_cra:]))
    pics = read_pictures(cut)
    shown = display_pictures(pics)
    assert any(p.nal_type_name.startswith("RASL") and not p.output for p in pics)
    assert len(shown) == len(decoded_types(cut))
    by_poc = {p.poc: p.qp for p in full}
    assert [p.qp for p in shown] == [by_poc[p.poc] for p in shown]


def test_container_input_is_demuxed_to_annex_b(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    encode("libx265", path, frames=12, container="mp4",
           options={"x265-params": "bframes=2:scenecut=0:log-level=error"})
    pics = display_pictures(read_pictures(path))
    assert len(pics) == 12 and [p.poc for p in pics] == list(range(12))
    assert [p.slice_type for p in pics] == decoded_types(path)
    assert all(p.qp is not None for p in pics)


def test_codec_is_sniffed_without_a_known_suffix(tmp_path) -> None:
    from pqf_data import data_file

    from vsqe.pqf.stream import detect_codec

    for name, codec in (("city_416x240_hm_ldp_qp37.hevc", "hevc"), ("city_416x240_x264_qp37.264", "h264"),
                        ("city_416x240_vvenc_ldp_qp37.266", "vvc")):
        copy = tmp_path / f"{codec}.bit"
        copy.write_bytes(data_file(name).read_bytes())
        assert detect_codec(copy) == codec
