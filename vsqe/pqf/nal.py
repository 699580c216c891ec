"""Streaming Annex-B byte-stream reader (H.264 Annex B, H.265 Annex B, H.266 Annex B).

NAL units are delimited by the start code prefix 0x000001 (a leading zero_byte makes it four
bytes); trailing_zero_8bits are stripped. The reader works over a file in fixed-size chunks, so
memory is bounded by the chunk size plus `keep` bytes of the NAL unit being assembled: only the
first `keep` bytes of each NAL unit are kept (headers live there), its full size is counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

START_CODE = b"\x00\x00\x01"
DEFAULT_KEEP = 1 << 16  # bytes of each NAL unit kept: parameter sets and headers fit easily
DEFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class NalUnit:
    offset: int  # byte offset of the first NAL byte (after the start code) in the stream
    size: int  # full size in bytes (the escaped payload including the NAL header)
    data: bytes  # the first min(size, keep) bytes, still escaped

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.size


def unescape(data: bytes) -> bytes:
    """Remove emulation_prevention_three_byte (7.3.1 / 7.4.2): 0x000003 -> 0x0000.

    bytes.replace scans left to right without overlap, exactly like the spec's parser: after a
    0x000003 match the search restarts behind the 0x03, so 00 00 03 00 00 03 loses both 03s.
    """
    if b"\x00\x00\x03" not in data:
        return data
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


def iter_nal_units(
    stream: BinaryIO, keep: int = DEFAULT_KEEP, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[NalUnit]:
    """Yield the NAL units of an Annex-B byte stream in order. Bytes before the first start code
    (garbage, a partial unit) are skipped."""
    buf = bytearray()
    buf_offset = 0  # stream offset of buf[0]
    nal_start: int | None = None  # stream offset of the current NAL's first byte
    nal_head = bytearray()  # kept prefix of the current NAL (bytes that already left buf)
    nal_size = 0  # bytes of the current NAL that already left buf
    eof = False

    def finish(end: int) -> NalUnit | None:
        """Close the current NAL at stream offset `end` (exclusive), buf holding [.., end)."""
        nonlocal nal_head, nal_size
        assert nal_start is not None
        tail = bytes(buf[: end - buf_offset])
        size = nal_size + len(tail)
        if len(nal_head) < keep:
            nal_head += tail[: keep - len(nal_head)]
        head = bytes(nal_head)
        # Trailing zero bytes belong to the next start code or to trailing_zero_8bits.
        strip = 0
        if size == len(head):
            stripped = head.rstrip(b"\x00")
            strip = len(head) - len(stripped)
            head = stripped
        else:
            # Count trailing zeros in the tail (the unkept part); rare: only matters for size.
            strip = len(tail) - len(tail.rstrip(b"\x00"))
        nal_head = bytearray()
        nal_size = 0
        size -= strip
        if size <= 0:
            return None
        return NalUnit(nal_start, size, head)

    while True:
        if not eof:
            chunk = stream.read(chunk_size)
            if not chunk:
                eof = True
            else:
                buf += chunk
        search_from = 0
        while True:
            idx = buf.find(START_CODE, search_from)
            if idx < 0:
                break
            if nal_start is not None:
                unit = finish(buf_offset + idx)
                if unit is not None:
                    yield unit
            nal_start = buf_offset + idx + 3
            del buf[: idx + 3]
            buf_offset += idx + 3
            search_from = 0
        if eof:
            if nal_start is not None:
                unit = finish(buf_offset + len(buf))
                if unit is not None:
                    yield unit
            return
        # Keep the last two bytes: they may start a start code completed by the next chunk.
        movable = len(buf) - 2
        if movable > 0:
            if nal_start is not None:
                moved = buf[:movable]
                if len(nal_head) < keep:
                    nal_head += moved[: keep - len(nal_head)]
                nal_size += movable
            del buf[:movable]
            buf_offset += movable
