"""Bad streams never crash the parsers: unknown QPs come back with a warning naming the picture."""
from __future__ import annotations

import io
import random

import pytest
from pqf_data import data_file, join_nals, split_nals

from vsqe.errors import InputError
from vsqe.pqf.nal import iter_nal_units, unescape
from vsqe.pqf.stream import display_pictures, read_pictures

STREAMS = ("city_416x240_hm_ldp_qp37.hevc", "city_416x240_x264_qp37.264", "city_416x240_vvenc_ldp_qp37.266")


def _is_param_set(codec_suffix: str, nal: bytes) -> bool:
    if codec_suffix == ".hevc":
        return ((nal[0] >> 1) & 0x3F) in (32, 33, 34)
    if codec_suffix == ".264":
        return nal[0] & 0x1F in (7, 8)
    return (nal[1] >> 3) in (14, 15, 16)


@pytest.mark.parametrize("name", STREAMS)
def test_missing_parameter_sets_give_unknown_qp_per_frame(name: str, tmp_path, caplog) -> None:
    src = data_file(name)
    nals = [n for n in split_nals(src.read_bytes()) if not _is_param_set(src.suffix, n)]
    cut = tmp_path / f"noparams{src.suffix}"
    cut.write_bytes(join_nals(nals))
    pics = read_pictures(cut)
    assert len(pics) == 30  # picture boundaries are still found without any parameter set
    assert all(p.qp is None and p.poc is None for p in pics)
    assert all(len(p.warnings) == 1 and f"picture {p.decode_index} " in p.warnings[0] for p in pics)
    assert "has not sent" in pics[0].warnings[0]
    assert any("picture 29 (decode order)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", STREAMS)
def test_truncated_stream(name: str, tmp_path) -> None:
    data = data_file(name).read_bytes()
    nals = split_nals(data)
    last = nals[-1]
    # The last slice keeps its NAL header and two bytes: its slice header is cut short.
    cut = tmp_path / f"cut{data_file(name).suffix}"
    cut.write_bytes(join_nals(nals[:-1] + [last[:4]]))
    pics = display_pictures(read_pictures(cut))
    assert len(pics) == 30
    assert all(p.qp is not None for p in pics[:-1])
    assert pics[-1].qp is None and pics[-1].warnings


@pytest.mark.parametrize("name", STREAMS)
def test_garbage_and_unknown_nal_units_are_skipped(name: str, tmp_path) -> None:
    src = data_file(name)
    nals = split_nals(src.read_bytes())
    junk = bytes(random.Random(7).getrandbits(8) for _ in range(300)).replace(b"\x00\x00", b"\x00\x01")
    unknown = {".hevc": b"\x60\x01\xaa\xbb", ".264": b"\x17\xaa\xbb", ".266": b"\x00\xd1\xaa\xbb"}[src.suffix]
    mixed = [nals[0], unknown] + nals[1:10] + [unknown] + nals[10:]
    bad = tmp_path / f"junk{src.suffix}"
    bad.write_bytes(junk + join_nals(mixed))
    ref = [(p.poc, p.qp) for p in display_pictures(read_pictures(src))]
    assert [(p.poc, p.qp) for p in display_pictures(read_pictures(bad))] == ref


@pytest.mark.parametrize("name", STREAMS)
def test_random_corruption_never_raises(name: str, tmp_path) -> None:
    data = bytearray(data_file(name).read_bytes())
    rng = random.Random(name)
    for trial in range(12):
        bad = bytearray(data)
        for _ in range(20):
            pos = rng.randrange(len(bad))
            bad[pos] = rng.randrange(256)
        path = tmp_path / f"c{trial}{data_file(name).suffix}"
        path.write_bytes(bytes(bad[: rng.randrange(len(bad) // 2, len(bad))]))
        try:
            pics = read_pictures(path)
        except InputError:
            continue
        assert all(isinstance(p.qp, (int, type(None))) for p in pics)


def test_pure_garbage_is_an_input_error(tmp_path) -> None:
    bad = tmp_path / "noise.hevc"
    bad.write_bytes(bytes(random.Random(3).getrandbits(8) | 1 for _ in range(5000)))
    with pytest.raises(InputError, match="no coded pictures"):
        read_pictures(bad)


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_pictures(tmp_path / "nope.hevc")
    (tmp_path / "empty.hevc").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_pictures(tmp_path / "empty.hevc")


def test_streaming_reader_is_chunk_independent() -> None:
    data = data_file("city_416x240_hm_ldp_qp37.hevc").read_bytes()
    whole = [(n.offset, n.size, n.data) for n in iter_nal_units(io.BytesIO(data))]
    small = [(n.offset, n.size, n.data) for n in iter_nal_units(io.BytesIO(data), chunk_size=7)]
    assert whole == small and len(whole) == 33  # VPS, SPS, PPS + 30 slices
    kept = list(iter_nal_units(io.BytesIO(data), keep=64, chunk_size=1000))
    assert [(n.offset, n.size) for n in kept] == [(o, s) for o, s, _ in whole]
    assert all(n.data == d[:64] for n, (_, _, d) in zip(kept, whole))


def test_unescape() -> None:
    assert unescape(b"\x00\x00\x03\x01") == b"\x00\x00\x01"
    assert unescape(b"\x00\x00\x03\x00\x00\x03\x02") == b"\x00\x00\x00\x00\x02"
    assert unescape(b"\x01\x00\x03\x00") == b"\x01\x00\x03\x00"
