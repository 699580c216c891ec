"""Fuzz targets: the slice-header/QP parsers (vsqe/pqf) and the y4m reader.

Each target takes arbitrary bytes and must return normally or raise only its documented errors:

* pqf_<codec>: Annex-B bytes -> NAL units -> the codec's parser -> display order. The parsers
  document that bad stream content never raises (an unreadable slice gives qp=None and a
  warning), so *any* exception is a bug. `sniff_codec` runs on the same bytes.
* y4m: bytes -> `Y4MReader` -> frames. InputError and FormatError (one line each) are the
  documented refusals; anything else is a bug, and so is a frame whose planes do not have the
  header's shape.

Every target must also finish quickly and in bounded memory (the fuzzer enforces -timeout and
-rss_limit_mb). They need nothing but vsqe, so tests/fuzz replays committed crashers without
atheris. `python fuzz/fuzz.py TARGET ...` runs one under atheris (coverage-guided, libFuzzer).
"""
from __future__ import annotations

import io

from vsqe.errors import FormatError, InputError
from vsqe.io.y4m import Y4MReader
from vsqe.pqf.nal import iter_nal_units
from vsqe.pqf.picture import assign_display_order
from vsqe.pqf.stream import make_parser, sniff_codec

MAX_FRAMES = 4  # y4m: frames read per input (each may be up to the size limit)


def pqf(codec: str, data: bytes) -> int:
    sniff_codec(data[: 1 << 16])
    parser = make_parser(codec)

    def pictures():
        for nal in iter_nal_units(io.BytesIO(data), chunk_size=4096):
            yield from parser.push(nal)
        yield from parser.flush()

    count = 0
    for pic in assign_display_order(pictures()):
        count += 1
        assert pic.qp is None or -48 <= pic.qp <= 63, pic.qp  # SliceQpY range (16-bit: -48; VVC: 63)
    return count


def pqf_h264(data: bytes) -> int:
    return pqf("h264", data)


def pqf_hevc(data: bytes) -> int:
    return pqf("hevc", data)


def pqf_vvc(data: bytes) -> int:
    return pqf("vvc", data)


def y4m(data: bytes) -> int:
    try:
        reader = Y4MReader(io.BytesIO(data), "fuzz.y4m")
    except (InputError, FormatError) as exc:
        assert "\n" not in str(exc)
        return 0
    h = reader.header
    shapes = h.fmt.plane_shapes(h.width, h.height)
    count = 0
    for frame in reader:
        assert [p.shape for p in frame.planes] == shapes
        count += 1
        if count >= MAX_FRAMES:
            break
    return count


TARGETS = {"pqf_h264": pqf_h264, "pqf_hevc": pqf_hevc, "pqf_vvc": pqf_vvc, "y4m": y4m}
