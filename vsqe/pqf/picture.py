"""What the slice-header parsers report per coded picture, and the common picture assembly."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

log = logging.getLogger("vsqe.pqf")

SLICE_TYPE_RANK = {"I": 0, "P": 1, "B": 2}


@dataclass
class PictureInfo:
    """One coded picture (all its slices), in decode order."""

    decode_index: int
    codec: str  # "h264", "hevc", "vvc"
    nal_type: int  # of the first VCL NAL unit of the picture
    nal_type_name: str
    temporal_id: int = 0
    slice_type: str | None = None  # "I", "P" or "B": the highest of its slices (B > P > I)
    qp: int | None = None  # SliceQpY of the first slice (26 + init_qp_minus26 + slice/ph delta)
    slice_qps: list[int] = field(default_factory=list)
    poc: int | None = None  # PicOrderCntVal (H.264: min(TopFieldOrderCnt, BottomFieldOrderCnt))
    cvs: int = 0  # index of the coded video sequence (starts at IDR / IRAP with NoRaslOutputFlag)
    output: bool = True  # False: pic_output_flag 0, or a RASL picture the decoder skips
    bits: int = 0  # size of its VCL NAL units in bits (escaped, as in the stream)
    display_index: int | None = None  # index of the frame the decoder outputs for it
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        text = f"picture {self.decode_index} (decode order): {message}"
        self.warnings.append(text)
        log.warning(text)

    def add_slice(self, slice_type: str | None, qp: int | None) -> None:
        if slice_type is not None:
            if self.slice_type is None or SLICE_TYPE_RANK[slice_type] > SLICE_TYPE_RANK[self.slice_type]:
                self.slice_type = slice_type
        if qp is not None:
            if not self.slice_qps:
                self.qp = qp
            self.slice_qps.append(qp)


def poc_msb(lsb: int, prev_tid0_poc: int, max_lsb: int) -> int:
    """POC MSB from the previous TemporalId-0 picture's POC (H.265 8.3.1, H.266 8.3.1: same rule)."""
    prev_lsb = prev_tid0_poc & (max_lsb - 1)
    prev_msb = prev_tid0_poc - prev_lsb
    if lsb < prev_lsb and prev_lsb - lsb >= max_lsb // 2:
        return prev_msb + max_lsb
    if lsb > prev_lsb and lsb - prev_lsb > max_lsb // 2:
        return prev_msb - max_lsb
    return prev_msb


def assign_display_order(pictures: Iterable[PictureInfo], max_reorder: int = 16) -> Iterator[PictureInfo]:
    """Give every output picture its decoder output index, yielding pictures in display order.

    Emulates the DPB "bumping" output process (H.264 C.4.5.3, H.265 C.5.2.2, H.266 C.5.2.2):
    within a coded video sequence pictures leave in increasing POC once more than `max_reorder`
    wait (16 bounds every conforming stream's sps_max_num_reorder_pics), and a new CVS first
    flushes the previous one. Memory: at most max_reorder + 1 records. Pictures whose POC is
    unknown keep their decode position (they are output as soon as they arrive in the queue).
    Non-output pictures (output=False) are yielded too, with display_index None, in decode order.
    """
    waiting: list[PictureInfo] = []
    next_index = 0
    cvs: int | None = None

    def pop_first() -> PictureInfo:
        nonlocal next_index
        # Smallest POC; unknown POCs sort by arrival (decode) order against their neighbours.
        best = 0
        for i in range(1, len(waiting)):
            a, b = waiting[i], waiting[best]
            if a.poc is not None and b.poc is not None and a.poc < b.poc:
                best = i
        pic = waiting.pop(best)
        pic.display_index = next_index
        next_index += 1
        return pic

    for pic in pictures:
        if cvs is not None and pic.cvs != cvs:
            while waiting:
                yield pop_first()
        cvs = pic.cvs
        if not pic.output:
            pic.display_index = None
            yield pic
            continue
        if pic.poc is None:
            # Without a POC we cannot reorder: output everything before it, then it.
            while waiting:
                yield pop_first()
        waiting.append(pic)
        while len(waiting) > max_reorder:
            yield pop_first()
    while waiting:
        yield pop_first()
