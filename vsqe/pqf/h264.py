"""H.264/AVC: SPS, PPS and slice headers up to slice_qp_delta, and POC (types 0, 1, 2).

SliceQPY = 26 + pic_init_qp_minus26 (PPS, 7.3.2.2) + slice_qp_delta (slice header, 7.3.3),
equation 7-30. Everything the slice header reads before slice_qp_delta is parsed exactly
(ITU-T H.264 (08/2021) clause 7.3): ref_pic_list_modification (7.3.3.1), pred_weight_table
(7.3.3.2) and dec_ref_pic_marking (7.3.3.3), whose MMCO 5 resets POC. Two fields of a
complementary pair are reported as one frame (FFmpeg outputs frames). POC follows 8.2.1.
Base layer only: MVC/SVC NAL units (14, 15, 20) are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from vsqe.pqf.bitreader import BitReader, ParseError
from vsqe.pqf.nal import NalUnit, unescape
from vsqe.pqf.picture import PictureInfo

NAL_NAMES = {
    1: "NON_IDR", 2: "PART_A", 3: "PART_B", 4: "PART_C", 5: "IDR", 6: "SEI", 7: "SPS", 8: "PPS",
    9: "AUD", 10: "EOSEQ", 11: "EOSTREAM", 12: "FILLER", 13: "SPS_EXT", 14: "PREFIX", 15: "SUBSET_SPS",
    19: "AUX", 20: "SLICE_EXT",
}
SLICE_TYPES = {0: "P", 1: "B", 2: "I", 3: "P", 4: "I"}  # SP reported as P, SI as I
P, B, I, SP, SI = 0, 1, 2, 3, 4
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
SLICE_HEADER_BYTES = 2048


def nal_name(t: int) -> str:
    return NAL_NAMES.get(t, f"TYPE_{t}")


# --- 7.3.2.1.1 seq_parameter_set_data ------------------------------------------------------------
def _skip_scaling_list(r: BitReader, size: int) -> None:
    """7.3.2.1.1.1 scaling_list()."""
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            delta = r.se(128)
            nxt = (last + delta + 256) % 256
        last = last if nxt == 0 else nxt


@dataclass
class Sps:
    sps_id: int
    chroma_format_idc: int
    separate_colour_plane: bool
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int
    delta_pic_order_always_zero: bool
    offset_for_non_ref_pic: int
    offset_for_top_to_bottom_field: int
    offset_for_ref_frame: list[int]
    frame_mbs_only: bool

    @property
    def chroma_array_type(self) -> int:
        return 0 if self.separate_colour_plane else self.chroma_format_idc


def parse_sps(rbsp: bytes) -> Sps:
    r = BitReader(rbsp)
    r.skip(8)  # NAL header
    profile_idc = r.u(8)
    r.skip(16)  # constraint_set0..5_flag, reserved_zero_2bits, level_idc
    sps_id = r.ue(31)
    chroma_format_idc, separate = 1, False
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = r.ue(3)
        if chroma_format_idc == 3:
            separate = r.flag()
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.flag():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    log2_max_frame_num = r.ue(12) + 4
    poc_type = r.ue(2)
    log2_max_poc_lsb = 0
    always_zero = False
    off_non_ref = off_t2b = 0
    off_ref: list[int] = []
    if poc_type == 0:
        log2_max_poc_lsb = r.ue(12) + 4
    elif poc_type == 1:
        always_zero = r.flag()
        off_non_ref = r.se()
        off_t2b = r.se()
        off_ref = [r.se() for _ in range(r.ue(255))]
    r.ue()  # max_num_ref_frames
    r.skip(1)  # gaps_in_frame_num_value_allowed_flag
    r.ue()  # pic_width_in_mbs_minus1
    r.ue()  # pic_height_in_map_units_minus1
    frame_mbs_only = r.flag()
    return Sps(sps_id, chroma_format_idc, separate, log2_max_frame_num, poc_type, log2_max_poc_lsb,
               always_zero, off_non_ref, off_t2b, off_ref, frame_mbs_only)


# --- 7.3.2.2 pic_parameter_set_rbsp ---------------------------------------------------------------
@dataclass
class Pps:
    pps_id: int
    sps_id: int
    entropy_coding_mode: bool
    bottom_field_pic_order_in_frame_present: bool
    num_ref_idx_l0_default: int
    num_ref_idx_l1_default: int
    weighted_pred: bool
    weighted_bipred_idc: int
    init_qp: int  # 26 + pic_init_qp_minus26
    redundant_pic_cnt_present: bool


def parse_pps(rbsp: bytes) -> Pps:
    r = BitReader(rbsp)
    r.skip(8)
    pps_id = r.ue(255)
    sps_id = r.ue(31)
    entropy = r.flag()
    bottom_field_poc = r.flag()
    num_slice_groups = r.ue(7) + 1
    if num_slice_groups > 1:
        map_type = r.ue(6)
        if map_type == 0:
            for _ in range(num_slice_groups):
                r.ue()  # run_length_minus1
        elif map_type == 2:
            for _ in range(num_slice_groups - 1):
                r.ue()  # top_left
                r.ue()  # bottom_right
        elif map_type in (3, 4, 5):
            r.skip(1)
            r.ue()
        elif map_type == 6:
            n = r.ue() + 1
            r.skip(n * (num_slice_groups - 1).bit_length())  # slice_group_id, Ceil(Log2(groups))
    l0 = r.ue(31) + 1
    l1 = r.ue(31) + 1
    weighted_pred = r.flag()
    weighted_bipred_idc = r.u(2)
    init_qp = 26 + r.se(26 + 6 * 6)
    r.se()  # pic_init_qs_minus26
    r.se()  # chroma_qp_index_offset
    r.skip(2)  # deblocking_filter_control_present_flag, constrained_intra_pred_flag
    redundant = r.flag()
    return Pps(pps_id, sps_id, entropy, bottom_field_poc, l0, l1, weighted_pred, weighted_bipred_idc,
               init_qp, redundant)


# --- 7.3.3 slice_header ---------------------------------------------------------------------------
@dataclass
class SliceHeader:
    nal_type: int
    nal_ref_idc: int
    first_mb: int
    slice_type: int = I
    pps_id: int = 0
    frame_num: int = 0
    field_pic: bool = False
    bottom_field: bool = False
    idr_pic_id: int = 0
    poc_lsb: int = 0
    delta_poc_bottom: int = 0
    delta_poc0: int = 0
    delta_poc1: int = 0
    redundant_pic_cnt: int = 0
    mmco5: bool = False
    qp: int = 0
    sps: Sps | None = None

    def same_picture(self, other: "SliceHeader") -> bool:
        """7.4.1.2.4: does this slice belong to the same primary coded picture as `other`?"""
        if (self.frame_num, self.pps_id, self.field_pic, self.bottom_field) != (
            other.frame_num, other.pps_id, other.field_pic, other.bottom_field,
        ):
            return False
        if (self.nal_ref_idc == 0) != (other.nal_ref_idc == 0):
            return False
        if (self.nal_type == 5) != (other.nal_type == 5):
            return False
        if self.nal_type == 5 and self.idr_pic_id != other.idr_pic_id:
            return False
        return (self.poc_lsb, self.delta_poc_bottom, self.delta_poc0, self.delta_poc1) == (
            other.poc_lsb, other.delta_poc_bottom, other.delta_poc0, other.delta_poc1,
        )


def _skip_ref_pic_list_modification(r: BitReader, slice_type: int) -> None:
    lists = 0 if slice_type in (I, SI) else (2 if slice_type == B else 1)
    for _ in range(lists):
        if r.flag():  # ref_pic_list_modification_flag_lX
            for _guard in range(100):
                idc = r.ue(3)
                if idc == 3:
                    break
                r.ue()  # abs_diff_pic_num_minus1 or long_term_pic_num
            else:
                raise ParseError("ref_pic_list_modification without end")


def _skip_pred_weight_table(r: BitReader, chroma_array_type: int, l0: int, l1: int) -> None:
    r.ue()  # luma_log2_weight_denom
    if chroma_array_type != 0:
        r.ue()  # chroma_log2_weight_denom
    for n in (l0, l1):
        for _ in range(n):
            if r.flag():
                r.se()
                r.se()
            if chroma_array_type != 0 and r.flag():
                for _ in range(4):
                    r.se()


def _dec_ref_pic_marking(r: BitReader, idr: bool) -> bool:
    """7.3.3.3; returns True when memory_management_control_operation 5 is present."""
    if idr:
        r.skip(2)  # no_output_of_prior_pics_flag, long_term_reference_flag
        return False
    mmco5 = False
    if r.flag():  # adaptive_ref_pic_marking_mode_flag
        for _guard in range(100):
            op = r.ue(6)
            if op == 0:
                return mmco5
            if op in (1, 3):
                r.ue()  # difference_of_pic_nums_minus1
            if op == 2:
                r.ue()  # long_term_pic_num
            if op in (3, 6):
                r.ue()  # long_term_frame_idx
            if op == 4:
                r.ue()  # max_long_term_frame_idx_plus1
            if op == 5:
                mmco5 = True
        raise ParseError("dec_ref_pic_marking without end")
    return mmco5


def parse_slice_header(rbsp: bytes, spss: dict[int, Sps], ppss: dict[int, Pps]) -> SliceHeader:
    r = BitReader(rbsp)
    header = r.u(8)
    nal_ref_idc, nal_type = (header >> 5) & 3, header & 0x1F
    h = SliceHeader(nal_type, nal_ref_idc, r.ue())
    h.slice_type = r.ue(9) % 5
    h.pps_id = r.ue(255)
    pps = ppss.get(h.pps_id)
    if pps is None:
        raise ParseError(f"slice refers to PPS {h.pps_id}, which the stream has not sent")
    sps = spss.get(pps.sps_id)
    if sps is None:
        raise ParseError(f"PPS {h.pps_id} refers to SPS {pps.sps_id}, which the stream has not sent")
    h.sps = sps
    if sps.separate_colour_plane:
        r.skip(2)  # colour_plane_id
    h.frame_num = r.u(sps.log2_max_frame_num)
    if not sps.frame_mbs_only:
        h.field_pic = r.flag()
        if h.field_pic:
            h.bottom_field = r.flag()
    idr = nal_type == 5
    if idr:
        h.idr_pic_id = r.ue(65535)
    if sps.poc_type == 0:
        h.poc_lsb = r.u(sps.log2_max_poc_lsb)
        if pps.bottom_field_pic_order_in_frame_present and not h.field_pic:
            h.delta_poc_bottom = r.se()
    if sps.poc_type == 1 and not sps.delta_pic_order_always_zero:
        h.delta_poc0 = r.se()
        if pps.bottom_field_pic_order_in_frame_present and not h.field_pic:
            h.delta_poc1 = r.se()
    if pps.redundant_pic_cnt_present:
        h.redundant_pic_cnt = r.ue(127)
    st = h.slice_type
    if st == B:
        r.skip(1)  # direct_spatial_mv_pred_flag
    l0 = l1 = 0
    if st in (P, SP, B):
        # 7.4.3: field slices infer 2 * default (num_ref_idx_default_active_minus1 * 2 + 1 + 1).
        scale = 2 if h.field_pic else 1
        l0 = pps.num_ref_idx_l0_default * scale
        l1 = pps.num_ref_idx_l1_default * scale if st == B else 0
        if r.flag():  # num_ref_idx_active_override_flag
            l0 = r.ue(31) + 1
            if st == B:
                l1 = r.ue(31) + 1
    _skip_ref_pic_list_modification(r, st)  # nal_unit_type 20/21 (MVC) never reaches here
    if (pps.weighted_pred and st in (P, SP)) or (pps.weighted_bipred_idc == 1 and st == B):
        _skip_pred_weight_table(r, sps.chroma_array_type, l0, l1)
    if nal_ref_idc != 0:
        h.mmco5 = _dec_ref_pic_marking(r, idr)
    if pps.entropy_coding_mode and st not in (I, SI):
        r.ue(2)  # cabac_init_idc
    h.qp = pps.init_qp + r.se(26 + 6 * 6)  # slice_qp_delta
    if not -6 * 6 <= h.qp <= 51:  # 7.4.3: -QpBdOffsetY..51 (QpBdOffsetY <= 36 at 14 bits)
        raise ParseError(f"SliceQPY {h.qp} out of range")
    return h


class H264Parser:
    """Feed NAL units in stream order; yields PictureInfo records (frames) as they complete."""

    codec = "h264"

    def __init__(self) -> None:
        self.spss: dict[int, Sps] = {}
        self.ppss: dict[int, Pps] = {}
        self._pic: PictureInfo | None = None
        self._pic_header: SliceHeader | None = None  # first slice of the current picture
        self._pending_field: SliceHeader | None = None  # first field waiting for its pair
        self._count = 0
        self._cvs = -1
        # POC state (8.2.1)
        self._prev_ref_msb = 0
        self._prev_ref_lsb = 0
        self._prev_frame_num = 0
        self._prev_frame_num_offset = 0
        self._prev_had_mmco5 = False
        self._prev_ref_bottom_field = False
        self._prev_ref_top_poc = 0

    def push(self, nal: NalUnit) -> Iterator[PictureInfo]:
        if not nal.data:
            return
        h0 = nal.data[0]
        if h0 & 0x80:
            return
        nal_type = h0 & 0x1F
        if nal_type in (1, 2, 5):
            yield from self._slice(nal, nal_type)
        elif nal_type == 7:
            try:
                sps = parse_sps(unescape(nal.data))
                self.spss[sps.sps_id] = sps
            except ParseError:
                pass
        elif nal_type == 8:
            try:
                pps = parse_pps(unescape(nal.data))
                self.ppss[pps.pps_id] = pps
            except ParseError:
                pass
        elif nal_type in (9, 10, 11):
            # An access unit delimiter or end of sequence/stream closes the current picture.
            yield from self._close()
            if nal_type != 9:
                self._pending_field = None

    def flush(self) -> Iterator[PictureInfo]:
        yield from self._close()

    def _close(self) -> Iterator[PictureInfo]:
        if self._pic is not None:
            pic, self._pic = self._pic, None
            yield pic

    def _slice(self, nal: NalUnit, nal_type: int) -> Iterator[PictureInfo]:
        h: SliceHeader | None = None
        error = ""
        for limit in (SLICE_HEADER_BYTES, None):
            data = nal.data if limit is None else nal.data[:limit]
            try:
                h = parse_slice_header(unescape(data), self.spss, self.ppss)
                break
            except ParseError as exc:
                error = str(exc)
                if limit is None or len(nal.data) <= limit:
                    break
        if h is not None and h.redundant_pic_cnt > 0:
            return  # redundant coded pictures are not decoded (7.4.3)
        if h is None:
            # Header unreadable: a new picture starts when first_mb_in_slice is 0.
            first_mb = _first_mb(nal.data)
            if self._pic is None or first_mb == 0:
                yield from self._close()
                self._start(nal_type, None)
            assert self._pic is not None
            self._pic.bits += nal.size * 8
            self._pic.warn(f"{nal_name(nal_type)} slice header unreadable ({error}); QP unknown")
            return
        new_picture = self._pic is None or self._pic_header is None or not h.same_picture(self._pic_header)
        if new_picture:
            pair = self._pending_field
            if pair is not None and self._pic is not None and h.field_pic and self._pic_header is not None \
                    and h.bottom_field != pair.bottom_field and h.frame_num == pair.frame_num \
                    and nal_type != 5 and (h.nal_ref_idc == 0) == (pair.nal_ref_idc == 0):
                # Second field of a complementary pair: same frame record.
                self._pending_field = None
                self._pic_header = h
                self._field_poc(h)
            else:
                yield from self._close()
                self._start(nal_type, h)
        pic = self._pic
        assert pic is not None
        pic.bits += nal.size * 8
        pic.add_slice(SLICE_TYPES[h.slice_type], h.qp)

    def _start(self, nal_type: int, h: SliceHeader | None) -> None:
        pic = PictureInfo(self._count, self.codec, nal_type, nal_name(nal_type))
        self._count += 1
        if nal_type == 5 or (h is not None and h.mmco5) or self._cvs < 0:
            self._cvs += 1  # IDR, or MMCO 5: the DPB is flushed (C.4.4), a new output period
        pic.cvs = self._cvs
        self._pic = pic
        self._pic_header = h
        self._pending_field = h if h is not None and h.field_pic else None
        if h is not None:
            pic.poc = self._poc(h)

    def _field_poc(self, h: SliceHeader) -> None:
        pic = self._pic
        assert pic is not None
        poc = self._poc(h)
        if poc is not None and pic.poc is not None:
            pic.poc = min(pic.poc, poc)

    def _poc(self, h: SliceHeader) -> int | None:
        """8.2.1: returns PicOrderCnt (frame: min of top and bottom; field: its own)."""
        sps = h.sps
        assert sps is not None
        idr = h.nal_type == 5
        max_frame_num = 1 << sps.log2_max_frame_num
        top = bottom = 0
        if sps.poc_type == 0:
            if idr:
                prev_msb, prev_lsb = 0, 0
            elif self._prev_had_mmco5:
                prev_msb = 0
                prev_lsb = 0 if self._prev_ref_bottom_field else self._prev_ref_top_poc
            else:
                prev_msb, prev_lsb = self._prev_ref_msb, self._prev_ref_lsb
            max_lsb = 1 << sps.log2_max_poc_lsb
            lsb = h.poc_lsb
            if lsb < prev_lsb and prev_lsb - lsb >= max_lsb // 2:
                msb = prev_msb + max_lsb
            elif lsb > prev_lsb and lsb - prev_lsb > max_lsb // 2:
                msb = prev_msb - max_lsb
            else:
                msb = prev_msb
            top = msb + lsb
            bottom = top + h.delta_poc_bottom if not h.field_pic else msb + lsb
            if h.nal_ref_idc != 0:
                self._prev_ref_msb, self._prev_ref_lsb = msb, lsb
        else:
            prev_offset = 0 if self._prev_had_mmco5 else self._prev_frame_num_offset
            if idr:
                offset = 0
            elif self._prev_frame_num > h.frame_num:
                offset = prev_offset + max_frame_num
            else:
                offset = prev_offset
            if sps.poc_type == 1:
                n = len(sps.offset_for_ref_frame)
                abs_frame_num = offset + h.frame_num if n else 0
                if h.nal_ref_idc == 0 and abs_frame_num > 0:
                    abs_frame_num -= 1
                expected = 0
                if abs_frame_num > 0:
                    cycle_cnt, in_cycle = divmod(abs_frame_num - 1, n)
                    expected = cycle_cnt * sum(sps.offset_for_ref_frame) + sum(sps.offset_for_ref_frame[: in_cycle + 1])
                if h.nal_ref_idc == 0:
                    expected += sps.offset_for_non_ref_pic
                if not h.field_pic:
                    top = expected + h.delta_poc0
                    bottom = top + sps.offset_for_top_to_bottom_field + h.delta_poc1
                elif not h.bottom_field:
                    top = bottom = expected + h.delta_poc0
                else:
                    top = bottom = expected + sps.offset_for_top_to_bottom_field + h.delta_poc0
            else:
                temp = 0 if idr else 2 * (offset + h.frame_num) - (1 if h.nal_ref_idc == 0 else 0)
                top = bottom = temp
            self._prev_frame_num_offset = offset
        if h.field_pic:
            poc = bottom if h.bottom_field else top
        else:
            poc = min(top, bottom)
        self._prev_frame_num = h.frame_num
        if h.mmco5:
            # 8.2.1: after MMCO 5 the picture's POCs are re-based (tempPicOrderCnt subtracted)
            # and frame_num counts as 0.
            if h.field_pic:
                top = bottom = 0
            else:
                top, bottom = top - poc, bottom - poc
            poc = 0
            self._prev_frame_num = 0
        if h.nal_ref_idc != 0:
            self._prev_had_mmco5 = h.mmco5
            self._prev_ref_bottom_field = h.field_pic and h.bottom_field
            self._prev_ref_top_poc = top
            if h.mmco5 and sps.poc_type == 0:
                self._prev_ref_msb, self._prev_ref_lsb = 0, top
        elif sps.poc_type != 0:
            self._prev_had_mmco5 = False
        return poc


def _first_mb(data: bytes) -> int | None:
    try:
        r = BitReader(unescape(data[:16]))
        r.skip(8)
        return r.ue()
    except ParseError:
        return None
