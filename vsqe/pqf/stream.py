"""Per-picture QP, POC, type and temporal id of a raw H.264 / HEVC / VVC (Annex-B) stream.

    pictures = read_pictures("clip.hevc")        # decode order, display_index filled in
    for p in sorted(pictures, key=lambda p: p.display_index or 0): ...

Streaming: `iter_pictures` reads the file in chunks and yields pictures in decode order;
`iter_display_order` re-orders them with a bounded window. Nothing here raises on bad stream
content: unreadable pictures come back with qp=None and a warning naming the picture.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from vsqe.errors import FormatError, InputError
from vsqe.pqf.nal import NalUnit, iter_nal_units
from vsqe.pqf.picture import PictureInfo, assign_display_order

CODEC_BY_SUFFIX = {
    ".264": "h264", ".h264": "h264", ".avc": "h264", ".jsv": "h264",
    ".265": "hevc", ".h265": "hevc", ".hevc": "hevc",
    ".266": "vvc", ".h266": "vvc", ".vvc": "vvc",
}


class CodecParser(Protocol):
    codec: str

    def push(self, nal: NalUnit) -> Iterator[PictureInfo]: ...

    def flush(self) -> Iterator[PictureInfo]: ...


def make_parser(codec: str) -> CodecParser:
    if codec == "h264":
        from vsqe.pqf.h264 import H264Parser

        return H264Parser()
    if codec == "hevc":
        from vsqe.pqf.hevc import HevcParser

        return HevcParser()
    if codec == "vvc":
        from vsqe.pqf.vvc import VvcParser

        return VvcParser()
    raise FormatError(f"unknown codec {codec!r} (h264, hevc, vvc)")


def sniff_codec(head: bytes) -> str | None:
    """Guess the codec from the first NAL units: each codec's parameter-set headers differ."""
    votes = {"h264": 0, "hevc": 0, "vvc": 0}
    import io

    for nal in iter_nal_units(io.BytesIO(head), keep=4):
        d = nal.data
        if len(d) < 2:
            continue
        if d[0] & 0x80:
            continue
        # H.264 SPS/PPS/AUD/IDR: nal_ref_idc + type 7, 8, 9, 5.
        if d[0] & 0x1F in (7, 8) and (d[0] >> 5) > 0 or d[0] == 0x09:
            votes["h264"] += 1
        # HEVC VPS/SPS/PPS/AUD: type 32..35 in bits 1..6, layer 0, tid 1.
        if ((d[0] >> 1) & 0x3F) in (32, 33, 34, 35) and d[1] == 0x01 and d[0] & 1 == 0:
            votes["hevc"] += 1
        # VVC: second byte = type << 3 | tid+1 with types 14 (VPS), 15 (SPS), 16 (PPS), 19 (PH), 20 (AUD).
        if d[0] == 0x00 and (d[1] >> 3) in (14, 15, 16, 19, 20) and d[1] & 7 == 1:
            votes["vvc"] += 1
    best = max(votes, key=lambda k: votes[k])
    return best if votes[best] > 0 else None


def detect_codec(path: str | os.PathLike) -> str:
    """The codec of a raw stream (by suffix, else by its first NAL units), or "container:<codec>"
    for an H.264/HEVC/VVC track in a container PyAV can demux (mp4, mkv, ts, ...)."""
    p = Path(path)
    codec = CODEC_BY_SUFFIX.get(p.suffix.lower())
    if codec:
        return codec
    with open(p, "rb") as f:
        codec = sniff_codec(f.read(1 << 16))
    if codec is not None:
        return codec
    inner = _container_codec(p)
    if inner is None:
        raise FormatError(f"{p}: not a raw H.264/HEVC/VVC Annex-B stream (no parameter sets found)"
                          " nor a container with such a video track")
    return "container:" + inner


_BSF = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb", "vvc": "vvc_mp4toannexb"}


def _container_codec(path: Path) -> str | None:
    try:
        import av

        with av.open(str(path)) as c:
            if not c.streams.video:
                return None
            name = c.streams.video[0].codec_context.name
    except Exception:  # noqa: BLE001 - anything PyAV cannot open is simply not a container
        return None
    return name if name in _BSF else None


def _container_nal_units(path: Path, codec: str) -> Iterator[NalUnit]:
    """NAL units of the first video track of a container, converted to Annex B packet by
    packet (parameter sets from the sample description are inserted by the bitstream filter)."""
    import io

    import av
    from av.bitstream import BitStreamFilterContext

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            bsf = BitStreamFilterContext(_BSF[codec], stream)
            for packet in c.demux(stream):
                for out in bsf.filter(packet if packet.size else None):
                    yield from iter_nal_units(io.BytesIO(bytes(out)))
    except av.FFmpegError as exc:
        raise InputError(f"{path}: cannot demux ({exc})") from None


def _open_input(path: str | os.PathLike) -> BinaryIO:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a video stream")
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None
    if p.stat().st_size == 0:
        f.close()
        raise InputError(f"{p}: empty file")
    return f


def iter_pictures(path: str | os.PathLike, codec: str | None = None) -> Iterator[PictureInfo]:
    """Pictures in decode order (display_index not yet set)."""
    with _open_input(path):
        pass  # the one-line errors for missing, unreadable and empty files
    codec = codec or detect_codec(path)
    if codec.startswith("container:"):
        codec = codec.split(":", 1)[1]
        parser = make_parser(codec)
        for nal in _container_nal_units(Path(path), codec):
            yield from parser.push(nal)
        yield from parser.flush()
        return
    parser = make_parser(codec)
    with _open_input(path) as f:
        for nal in iter_nal_units(f):
            yield from parser.push(nal)
        yield from parser.flush()


def iter_display_order(path: str | os.PathLike, codec: str | None = None) -> Iterator[PictureInfo]:
    """Pictures in the order the decoder outputs them, display_index set (non-output pictures
    come through with display_index None)."""
    return assign_display_order(iter_pictures(path, codec))


def read_pictures(path: str | os.PathLike, codec: str | None = None) -> list[PictureInfo]:
    """All pictures in decode order, with display_index filled in."""
    pictures = list(iter_pictures(path, codec))
    for _ in assign_display_order(pictures):
        pass
    if not pictures:
        raise InputError(f"{path}: no coded pictures found")
    return pictures


def display_pictures(pictures: list[PictureInfo]) -> list[PictureInfo]:
    """The output pictures sorted by display_index."""
    shown = [p for p in pictures if p.display_index is not None]
    return sorted(shown, key=lambda p: p.display_index)  # type: ignore[arg-type,return-value]
