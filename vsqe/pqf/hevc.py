"""H.265/HEVC: parameter sets and slice segment headers up to slice_qp_delta, and POC.

SliceQpY = 26 + init_qp_minus26 (PPS, 7.3.2.3.1) + slice_qp_delta (slice segment header,
7.3.6.1), equation 7-54. Everything the slice header reads before slice_qp_delta is parsed
exactly (ITU-T H.265 (v4+) clause 7.3), including short-term RPS prediction (7.3.7 / 7.4.8),
long-term pictures, ref_pic_lists_modification (7.3.6.2) and pred_weight_table (7.3.6.3).
Only the base layer (nuh_layer_id 0) is reported. POC follows 8.3.1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from vsqe.pqf.bitreader import BitReader, ParseError
from vsqe.pqf.nal import NalUnit, unescape
from vsqe.pqf.picture import PictureInfo, poc_msb

# Table 7-1 NAL unit types.
NAL_NAMES = {
    0: "TRAIL_N", 1: "TRAIL_R", 2: "TSA_N", 3: "TSA_R", 4: "STSA_N", 5: "STSA_R",
    6: "RADL_N", 7: "RADL_R", 8: "RASL_N", 9: "RASL_R",
    16: "BLA_W_LP", 17: "BLA_W_RADL", 18: "BLA_N_LP", 19: "IDR_W_RADL", 20: "IDR_N_LP", 21: "CRA_NUT",
    32: "VPS", 33: "SPS", 34: "PPS", 35: "AUD", 36: "EOS", 37: "EOB", 38: "FD", 39: "SEI_PREFIX", 40: "SEI_SUFFIX",
}
VPS_NUT, SPS_NUT, PPS_NUT, AUD_NUT, EOS_NUT = 32, 33, 34, 35, 36
SLICE_TYPES = {0: "B", 1: "P", 2: "I"}
B_SLICE, P_SLICE, I_SLICE = 0, 1, 2
SLICE_HEADER_BYTES = 4096  # escaped bytes of a slice NAL unescaped for the first attempt


def nal_name(t: int) -> str:
    return NAL_NAMES.get(t, f"RSV_{t}" if t < 48 else f"UNSPEC_{t}")


def is_irap(t: int) -> bool:
    return 16 <= t <= 23


def is_idr(t: int) -> bool:
    return t in (19, 20)


def is_sub_layer_non_ref(t: int) -> bool:
    return t <= 14 and t % 2 == 0


# --- 7.3.3 profile_tier_level -------------------------------------------------------------------
def skip_profile_tier_level(r: BitReader, profile_present: bool, max_sub_layers_minus1: int) -> None:
    if profile_present:
        r.skip(2 + 1 + 5 + 32 + 4 + 43 + 1)  # general profile space .. general_inbld/reserved
    r.skip(8)  # general_level_idc
    sub_profile = []
    sub_level = []
    for _ in range(max_sub_layers_minus1):
        sub_profile.append(r.flag())
        sub_level.append(r.flag())
    if max_sub_layers_minus1 > 0:
        r.skip(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for i in range(max_sub_layers_minus1):
        if sub_profile[i]:
            r.skip(88)
        if sub_level[i]:
            r.skip(8)


# --- 7.3.4 scaling_list_data ----------------------------------------------------------------------
def skip_scaling_list_data(r: BitReader) -> None:
    for size_id in range(4):
        step = 3 if size_id == 3 else 1
        for _matrix_id in range(0, 6, step):
            if not r.flag():  # scaling_list_pred_mode_flag
                r.ue()  # scaling_list_pred_matrix_id_delta
            else:
                coef_num = min(64, 1 << (4 + (size_id << 1)))
                if size_id > 1:
                    r.se()  # scaling_list_dc_coef_minus8
                for _ in range(coef_num):
                    r.se()  # scaling_list_delta_coef


# --- E.2.2 / E.2.3 hrd_parameters ------------------------------------------------------------------
def _skip_sub_layer_hrd(r: BitReader, cpb_cnt: int, sub_pic: bool) -> None:
    for _ in range(cpb_cnt):
        r.ue()  # bit_rate_value_minus1
        r.ue()  # cpb_size_value_minus1
        if sub_pic:
            r.ue()  # cpb_size_du_value_minus1
            r.ue()  # bit_rate_du_value_minus1
        r.skip(1)  # cbr_flag


def skip_hrd_parameters(r: BitReader, common_inf: bool, max_sub_layers_minus1: int) -> None:
    nal_hrd = vcl_hrd = sub_pic = False
    if common_inf:
        nal_hrd = r.flag()
        vcl_hrd = r.flag()
        if nal_hrd or vcl_hrd:
            sub_pic = r.flag()
            if sub_pic:
                r.skip(8 + 5 + 1 + 5)
            r.skip(4 + 4)  # bit_rate_scale, cpb_size_scale
            if sub_pic:
                r.skip(4)
            r.skip(5 + 5 + 5)
    for _ in range(max_sub_layers_minus1 + 1):
        fixed_general = r.flag()
        fixed_within_cvs = True if fixed_general else r.flag()
        low_delay = False
        if fixed_within_cvs:
            r.ue()  # elemental_duration_in_tc_minus1
        else:
            low_delay = r.flag()
        cpb_cnt = 1
        if not low_delay:
            cpb_cnt = r.ue(31) + 1
        if nal_hrd:
            _skip_sub_layer_hrd(r, cpb_cnt, sub_pic)
        if vcl_hrd:
            _skip_sub_layer_hrd(r, cpb_cnt, sub_pic)


# --- E.2.1 vui_parameters ---------------------------------------------------------------------------
def skip_vui(r: BitReader, max_sub_layers_minus1: int) -> None:
    if r.flag():  # aspect_ratio_info_present_flag
        if r.u(8) == 255:
            r.skip(32)
    if r.flag():  # overscan_info_present_flag
        r.skip(1)
    if r.flag():  # video_signal_type_present_flag
        r.skip(3 + 1)
        if r.flag():
            r.skip(24)
    if r.flag():  # chroma_loc_info_present_flag
        r.ue()
        r.ue()
    r.skip(3)  # neutral_chroma_indication, field_seq, frame_field_info_present
    if r.flag():  # default_display_window_flag
        for _ in range(4):
            r.ue()
    if r.flag():  # vui_timing_info_present_flag
        r.skip(64)
        if r.flag():  # vui_poc_proportional_to_timing_flag
            r.ue()
        if r.flag():  # vui_hrd_parameters_present_flag
            skip_hrd_parameters(r, True, max_sub_layers_minus1)
    if r.flag():  # bitstream_restriction_flag
        r.skip(3)
        for _ in range(5):
            r.ue()


# --- 7.3.7 st_ref_pic_set and its semantics 7.4.8 ---------------------------------------------------
@dataclass
class ShortTermRps:
    delta_s0: list[int] = field(default_factory=list)  # DeltaPocS0 (negative)
    used_s0: list[bool] = field(default_factory=list)
    delta_s1: list[int] = field(default_factory=list)  # DeltaPocS1 (positive)
    used_s1: list[bool] = field(default_factory=list)

    @property
    def num_delta_pocs(self) -> int:
        return len(self.delta_s0) + len(self.delta_s1)

    @property
    def num_used(self) -> int:
        return sum(self.used_s0) + sum(self.used_s1)


def parse_st_ref_pic_set(r: BitReader, idx: int, num_sets: int, sets: list[ShortTermRps]) -> ShortTermRps:
    inter = r.flag() if idx != 0 else False  # inter_ref_pic_set_prediction_flag
    rps = ShortTermRps()
    if inter:
        delta_idx = r.ue() + 1 if idx == num_sets else 1  # delta_idx_minus1 (slice header only)
        ref_idx = idx - delta_idx
        if ref_idx < 0 or ref_idx >= len(sets):
            raise ParseError(f"st_ref_pic_set {idx} predicts from missing set {ref_idx}")
        ref = sets[ref_idx]
        sign = r.u(1)
        delta_rps = (1 - 2 * sign) * (r.ue(1 << 15) + 1)
        used_by_curr: list[bool] = []
        use_delta: list[bool] = []
        for _ in range(ref.num_delta_pocs + 1):
            used = r.flag()
            used_by_curr.append(used)
            use_delta.append(True if used else r.flag())
        n_neg = len(ref.delta_s0)
        n_pos = len(ref.delta_s1)
        # Equation 7-61.
        for j in range(n_pos - 1, -1, -1):
            d = ref.delta_s1[j] + delta_rps
            if d < 0 and use_delta[n_neg + j]:
                rps.delta_s0.append(d)
                rps.used_s0.append(used_by_curr[n_neg + j])
        if delta_rps < 0 and use_delta[ref.num_delta_pocs]:
            rps.delta_s0.append(delta_rps)
            rps.used_s0.append(used_by_curr[ref.num_delta_pocs])
        for j in range(n_neg):
            d = ref.delta_s0[j] + delta_rps
            if d < 0 and use_delta[j]:
                rps.delta_s0.append(d)
                rps.used_s0.append(used_by_curr[j])
        # Equation 7-62.
        for j in range(n_neg - 1, -1, -1):
            d = ref.delta_s0[j] + delta_rps
            if d > 0 and use_delta[j]:
                rps.delta_s1.append(d)
                rps.used_s1.append(used_by_curr[j])
        if delta_rps > 0 and use_delta[ref.num_delta_pocs]:
            rps.delta_s1.append(delta_rps)
            rps.used_s1.append(used_by_curr[ref.num_delta_pocs])
        for j in range(n_pos):
            d = ref.delta_s1[j] + delta_rps
            if d > 0 and use_delta[n_neg + j]:
                rps.delta_s1.append(d)
                rps.used_s1.append(used_by_curr[n_neg + j])
    else:
        num_negative = r.ue(16)
        num_positive = r.ue(16)
        poc = 0
        for _ in range(num_negative):
            poc -= r.ue(1 << 15) + 1
            rps.delta_s0.append(poc)
            rps.used_s0.append(r.flag())
        poc = 0
        for _ in range(num_positive):
            poc += r.ue(1 << 15) + 1
            rps.delta_s1.append(poc)
            rps.used_s1.append(r.flag())
    if rps.num_delta_pocs > 16:
        raise ParseError(f"st_ref_pic_set {idx} has {rps.num_delta_pocs} pictures")
    return rps


# --- 7.3.2.2 seq_parameter_set_rbsp -----------------------------------------------------------------
@dataclass
class Sps:
    sps_id: int
    chroma_format_idc: int
    separate_colour_plane: bool
    width: int
    height: int
    log2_max_poc_lsb: int
    pic_size_in_ctbs: int
    st_rps: list[ShortTermRps]
    long_term_present: bool
    lt_used_by_curr: list[bool]
    temporal_mvp: bool
    sao: bool
    motion_vector_resolution_control_idc: int = 0

    @property
    def chroma_array_type(self) -> int:
        return 0 if self.separate_colour_plane else self.chroma_format_idc


def parse_sps(rbsp: bytes) -> Sps:
    r = BitReader(rbsp)
    r.skip(16)  # NAL header
    r.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = r.u(3)
    r.skip(1)  # sps_temporal_id_nesting_flag
    skip_profile_tier_level(r, True, max_sub_layers_minus1)
    sps_id = r.ue(15)
    chroma_format_idc = r.ue(3)
    separate = r.flag() if chroma_format_idc == 3 else False
    width = r.ue()
    height = r.ue()
    if r.flag():  # conformance_window_flag
        for _ in range(4):
            r.ue()
    r.ue()  # bit_depth_luma_minus8
    r.ue()  # bit_depth_chroma_minus8
    log2_max_poc_lsb = r.ue(12) + 4
    ordering_all = r.flag()  # sps_sub_layer_ordering_info_present_flag
    for _ in range(0 if ordering_all else max_sub_layers_minus1, max_sub_layers_minus1 + 1):
        r.ue()
        r.ue()
        r.ue()
    log2_min_cb = r.ue(3) + 3
    log2_ctb = log2_min_cb + r.ue(3)
    r.ue()  # log2_min_luma_transform_block_size_minus2
    r.ue()  # log2_diff_max_min_luma_transform_block_size
    r.ue()  # max_transform_hierarchy_depth_inter
    r.ue()  # max_transform_hierarchy_depth_intra
    if r.flag():  # scaling_list_enabled_flag
        if r.flag():  # sps_scaling_list_data_present_flag
            skip_scaling_list_data(r)
    r.skip(1)  # amp_enabled_flag
    sao = r.flag()
    if r.flag():  # pcm_enabled_flag
        r.skip(8)
        r.ue()
        r.ue()
        r.skip(1)
    num_st = r.ue(64)
    st_rps: list[ShortTermRps] = []
    for i in range(num_st):
        st_rps.append(parse_st_ref_pic_set(r, i, num_st, st_rps))
    long_term = r.flag()
    lt_used: list[bool] = []
    if long_term:
        for _ in range(r.ue(32)):
            r.skip(log2_max_poc_lsb)  # lt_ref_pic_poc_lsb_sps
            lt_used.append(r.flag())
    temporal_mvp = r.flag()
    r.skip(1)  # strong_intra_smoothing_enabled_flag
    ctb = 1 << log2_ctb
    sps = Sps(
        sps_id, chroma_format_idc, separate, width, height, log2_max_poc_lsb,
        ((width + ctb - 1) // ctb) * ((height + ctb - 1) // ctb),
        st_rps, long_term, lt_used, temporal_mvp, sao,
    )
    # Only the SCC extension (after the VUI) changes the slice header before slice_qp_delta
    # (use_integer_mv_flag). A VUI we cannot parse leaves it at its default, 0.
    try:
        if r.flag():  # vui_parameters_present_flag
            skip_vui(r, max_sub_layers_minus1)
        if r.flag():  # sps_extension_present_flag
            range_ext, multilayer_ext, ext_3d, scc_ext = r.flag(), r.flag(), r.flag(), r.flag()
            r.skip(4)
            if range_ext:
                r.skip(9)  # 7.3.2.2.2
            if multilayer_ext:
                r.skip(1)  # inter_view_mv_vert_constraint_flag
            if scc_ext and not ext_3d:  # the 3D extension is not parsed
                r.skip(1)  # sps_curr_pic_ref_enabled_flag
                if r.flag():  # palette_mode_enabled_flag
                    r.ue()
                    r.ue()
                    if r.flag():
                        n = r.ue() + 1
                        comps = 1 if chroma_format_idc == 0 else 3
                        # sps_palette_predictor_initializer: bit depths unknown here; stop.
                        if n * comps:
                            raise ParseError("palette initialisers not parsed")
                sps.motion_vector_resolution_control_idc = r.u(2)
    except ParseError:
        pass
    return sps


# --- 7.3.2.3 pic_parameter_set_rbsp -----------------------------------------------------------------
@dataclass
class Pps:
    pps_id: int
    sps_id: int
    dependent_slice_segments: bool
    output_flag_present: bool
    num_extra_slice_header_bits: int
    cabac_init_present: bool
    num_ref_idx_l0_default: int
    num_ref_idx_l1_default: int
    init_qp: int  # 26 + init_qp_minus26
    weighted_pred: bool
    weighted_bipred: bool
    lists_modification_present: bool
    curr_pic_ref: bool = False  # pps_curr_pic_ref_enabled_flag (SCC)


def parse_pps(rbsp: bytes) -> Pps:
    r = BitReader(rbsp)
    r.skip(16)
    pps_id = r.ue(63)
    sps_id = r.ue(15)
    dependent = r.flag()
    output_flag_present = r.flag()
    extra_bits = r.u(3)
    r.skip(1)  # sign_data_hiding_enabled_flag
    cabac_init_present = r.flag()
    l0 = r.ue(14) + 1
    l1 = r.ue(14) + 1
    init_qp = 26 + r.se(26 + 6 * 8)
    pps = Pps(pps_id, sps_id, dependent, output_flag_present, extra_bits, cabac_init_present,
              l0, l1, init_qp, False, False, False)
    r.skip(1)  # constrained_intra_pred_flag
    transform_skip = r.flag()
    if r.flag():  # cu_qp_delta_enabled_flag
        r.ue()
    r.se()  # pps_cb_qp_offset
    r.se()  # pps_cr_qp_offset
    r.skip(1)  # pps_slice_chroma_qp_offsets_present_flag
    pps.weighted_pred = r.flag()
    pps.weighted_bipred = r.flag()
    r.skip(1)  # transquant_bypass_enabled_flag
    tiles = r.flag()
    r.skip(1)  # entropy_coding_sync_enabled_flag
    if tiles:
        cols = r.ue() + 1
        rows = r.ue() + 1
        if not r.flag():  # uniform_spacing_flag
            for _ in range(cols - 1):
                r.ue()
            for _ in range(rows - 1):
                r.ue()
        r.skip(1)  # loop_filter_across_tiles_enabled_flag
    r.skip(1)  # pps_loop_filter_across_slices_enabled_flag
    if r.flag():  # deblocking_filter_control_present_flag
        r.skip(1)  # deblocking_filter_override_enabled_flag
        if not r.flag():  # pps_deblocking_filter_disabled_flag
            r.se()
            r.se()
    if r.flag():  # pps_scaling_list_data_present_flag
        skip_scaling_list_data(r)
    pps.lists_modification_present = r.flag()
    # log2_parallel_merge_level_minus2, slice_segment_header_extension_present_flag and the
    # extensions follow; only the SCC extension matters for the slice header (curr_pic_ref).
    try:
        r.ue()
        r.skip(1)
        if r.flag():  # pps_extension_present_flag
            range_ext, multilayer_ext, ext_3d, scc_ext = r.flag(), r.flag(), r.flag(), r.flag()
            r.skip(4)
            if range_ext:  # 7.3.2.3.2
                if transform_skip:
                    r.ue()
                r.skip(1)  # cross_component_prediction_enabled_flag
                if r.flag():  # chroma_qp_offset_list_enabled_flag
                    r.ue()
                    for _ in range(r.ue(5) + 1):
                        r.se()
                        r.se()
                r.ue()
                r.ue()
            if scc_ext and not (multilayer_ext or ext_3d):
                pps.curr_pic_ref = r.flag()
    except ParseError:
        pass
    return pps


# --- the stream parser --------------------------------------------------------------------------------
@dataclass
class _SliceInfo:
    first_in_pic: bool
    slice_type: int | None = None
    qp: int | None = None
    poc_lsb: int = 0
    dependent: bool = False
    output: bool = True
    log2_max_poc_lsb: int = 4


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0


def parse_slice_header(r: BitReader, nal_type: int, spss: dict[int, Sps], ppss: dict[int, Pps]) -> _SliceInfo:
    """7.3.6.1 slice_segment_header up to slice_qp_delta. `r` is positioned after the NAL header.

    Raises ParseError when a parameter set is missing or the data ends early; the caller has
    already read first_slice_segment_in_pic_flag if it needs picture boundaries regardless.
    """
    first = r.flag()
    info = _SliceInfo(first)
    if 16 <= nal_type <= 23:
        r.skip(1)  # no_output_of_prior_pics_flag
    pps_id = r.ue(63)
    pps = ppss.get(pps_id)
    if pps is None:
        raise ParseError(f"slice refers to PPS {pps_id}, which the stream has not sent")
    sps = spss.get(pps.sps_id)
    if sps is None:
        raise ParseError(f"PPS {pps_id} refers to SPS {pps.sps_id}, which the stream has not sent")
    info.log2_max_poc_lsb = sps.log2_max_poc_lsb
    if not first:
        if pps.dependent_slice_segments:
            info.dependent = r.flag()
        r.skip(_ceil_log2(sps.pic_size_in_ctbs))  # slice_segment_address
    if info.dependent:
        return info  # QP and type come from the preceding independent slice segment
    r.skip(pps.num_extra_slice_header_bits)  # slice_reserved_flag
    slice_type = r.ue(2)
    info.slice_type = slice_type
    if pps.output_flag_present:
        info.output = r.flag()
    if sps.separate_colour_plane:
        r.skip(2)  # colour_plane_id
    slice_temporal_mvp = False
    num_pic_total_curr = 0
    if not is_idr(nal_type):
        info.poc_lsb = r.u(sps.log2_max_poc_lsb)
        if not r.flag():  # short_term_ref_pic_set_sps_flag
            rps = parse_st_ref_pic_set(r, len(sps.st_rps), len(sps.st_rps), sps.st_rps)
        else:
            idx = r.u(_ceil_log2(len(sps.st_rps))) if len(sps.st_rps) > 1 else 0
            if idx >= len(sps.st_rps):
                raise ParseError(f"short_term_ref_pic_set_idx {idx} out of range")
            rps = sps.st_rps[idx]
        num_pic_total_curr = rps.num_used
        if sps.long_term_present:
            num_lt_sps = r.ue(32) if sps.lt_used_by_curr else 0
            num_lt_pics = r.ue(32)
            for i in range(num_lt_sps + num_lt_pics):
                if i < num_lt_sps:
                    lt_idx = r.u(_ceil_log2(len(sps.lt_used_by_curr))) if len(sps.lt_used_by_curr) > 1 else 0
                    if lt_idx >= len(sps.lt_used_by_curr):
                        raise ParseError(f"lt_idx_sps {lt_idx} out of range")
                    used = sps.lt_used_by_curr[lt_idx]
                else:
                    r.skip(sps.log2_max_poc_lsb)  # poc_lsb_lt
                    used = r.flag()
                num_pic_total_curr += used
                if r.flag():  # delta_poc_msb_present_flag
                    r.ue()
        if sps.temporal_mvp:
            slice_temporal_mvp = r.flag()
    if pps.curr_pic_ref:
        num_pic_total_curr += 1
    if sps.sao:
        r.skip(1)  # slice_sao_luma_flag
        if sps.chroma_array_type != 0:
            r.skip(1)  # slice_sao_chroma_flag
    if slice_type in (P_SLICE, B_SLICE):
        l0, l1 = pps.num_ref_idx_l0_default, pps.num_ref_idx_l1_default
        if r.flag():  # num_ref_idx_active_override_flag
            l0 = r.ue(14) + 1
            if slice_type == B_SLICE:
                l1 = r.ue(14) + 1
        if slice_type != B_SLICE:
            l1 = 0
        if pps.lists_modification_present and num_pic_total_curr > 1:  # 7.3.6.2
            bits = _ceil_log2(num_pic_total_curr)
            if r.flag():
                r.skip(bits * l0)
            if slice_type == B_SLICE and r.flag():
                r.skip(bits * l1)
        if slice_type == B_SLICE:
            r.skip(1)  # mvd_l1_zero_flag
        if pps.cabac_init_present:
            r.skip(1)  # cabac_init_flag
        if slice_temporal_mvp:
            from_l0 = r.flag() if slice_type == B_SLICE else True
            if (from_l0 and l0 > 1) or (not from_l0 and l1 > 1):
                r.ue()  # collocated_ref_idx
        if (pps.weighted_pred and slice_type == P_SLICE) or (pps.weighted_bipred and slice_type == B_SLICE):
            if pps.curr_pic_ref:
                raise ParseError("pred_weight_table with the current picture as reference is not parsed")
            skip_pred_weight_table(r, sps.chroma_array_type, l0, l1)
        r.ue()  # five_minus_max_num_merge_cand
        if sps.motion_vector_resolution_control_idc == 2:
            r.skip(1)  # use_integer_mv_flag
    info.qp = pps.init_qp + r.se(26 + 6 * 8)  # slice_qp_delta
    if not -6 * 8 <= info.qp <= 51:  # 7.4.7.1: -QpBdOffsetY..51 (QpBdOffsetY <= 48 at 16 bits)
        raise ParseError(f"SliceQpY {info.qp} out of range")
    return info


def skip_pred_weight_table(r: BitReader, chroma_array_type: int, l0: int, l1: int) -> None:
    """7.3.6.3; single layer without SCC: every entry has a luma/chroma weight flag."""
    r.ue()  # luma_log2_weight_denom
    if chroma_array_type != 0:
        r.se()  # delta_chroma_log2_weight_denom
    for n in (l0, l1):
        if n == 0:
            continue
        luma = [r.flag() for _ in range(n)]
        chroma = [r.flag() for _ in range(n)] if chroma_array_type != 0 else [False] * n
        for i in range(n):
            if luma[i]:
                r.se()
                r.se()
            if chroma[i]:
                for _ in range(4):
                    r.se()


class HevcParser:
    """Feed NAL units in stream order; yields PictureInfo records as pictures complete."""

    codec = "hevc"

    def __init__(self) -> None:
        self.spss: dict[int, Sps] = {}
        self.ppss: dict[int, Pps] = {}
        self._bad_sps: dict[int, str] = {}
        self._pic: PictureInfo | None = None
        self._count = 0
        self._cvs = -1
        self._first_picture = True
        self._after_eos = False
        self._prev_tid0_poc: int | None = None
        self._skip_rasl = False  # RASL pictures of a CRA that starts the decoding are dropped

    def push(self, nal: NalUnit) -> Iterator[PictureInfo]:
        if len(nal.data) < 2:
            return
        h0, h1 = nal.data[0], nal.data[1]
        if h0 & 0x80:
            return  # forbidden_zero_bit set: corrupt unit
        nal_type = (h0 >> 1) & 0x3F
        layer_id = ((h0 & 1) << 5) | (h1 >> 3)
        tid = (h1 & 7) - 1
        if layer_id != 0 or tid < 0:
            return
        if nal_type < 32:
            if nal_type > 21:
                return  # reserved VCL types: skipped like a decoder does
            yield from self._slice(nal, nal_type, tid)
        elif nal_type == SPS_NUT:
            self._param(nal, "SPS")
        elif nal_type == PPS_NUT:
            self._param(nal, "PPS")
        elif nal_type == EOS_NUT:
            yield from self.flush()
            self._after_eos = True

    def flush(self) -> Iterator[PictureInfo]:
        if self._pic is not None:
            pic, self._pic = self._pic, None
            yield pic

    def _param(self, nal: NalUnit, kind: str) -> None:
        try:
            if kind == "SPS":
                sps = parse_sps(unescape(nal.data))
                self.spss[sps.sps_id] = sps
            else:
                pps = parse_pps(unescape(nal.data))
                self.ppss[pps.pps_id] = pps
        except ParseError:
            # An unreadable set stays unknown; slices that need it report "QP unknown".
            pass

    def _slice(self, nal: NalUnit, nal_type: int, tid: int) -> Iterator[PictureInfo]:
        first = bool(nal.data[2] & 0x80) if len(nal.data) > 2 else False
        if first or self._pic is None:
            yield from self.flush()
            self._start_picture(nal_type, tid)
        pic = self._pic
        assert pic is not None
        pic.bits += nal.size * 8
        info: _SliceInfo | None = None
        error = ""
        for limit in (SLICE_HEADER_BYTES, None):
            data = nal.data if limit is None else nal.data[:limit]
            try:
                r = BitReader(unescape(data))
                r.skip(16)
                info = parse_slice_header(r, nal_type, self.spss, self.ppss)
                break
            except ParseError as exc:
                error = str(exc)
                if limit is None or len(nal.data) <= limit:
                    break
        if info is None:
            pic.warn(f"{pic.nal_type_name} slice header unreadable ({error}); QP unknown")
            return
        if info.dependent:
            return
        pic.add_slice(SLICE_TYPES.get(info.slice_type) if info.slice_type is not None else None, info.qp)
        if info.first_in_pic and pic.poc is None:
            self._set_poc(pic, nal_type, tid, info)

    def _start_picture(self, nal_type: int, tid: int) -> None:
        pic = PictureInfo(self._count, self.codec, nal_type, nal_name(nal_type), tid)
        self._count += 1
        no_rasl_output = False
        if is_irap(nal_type):
            no_rasl_output = is_idr(nal_type) or 16 <= nal_type <= 18 or self._first_picture or self._after_eos
            if no_rasl_output:
                self._cvs += 1
            self._skip_rasl = no_rasl_output and nal_type == 21
        elif self._first_picture:
            self._cvs += 1
            pic.warn("the stream does not start with an IRAP picture")
        if nal_type in (8, 9) and self._skip_rasl:
            pic.output = False  # 8.1.3: RASL of a CRA with NoRaslOutputFlag 1 is not output
        pic.cvs = self._cvs
        self._no_rasl_output = no_rasl_output
        self._first_picture = False
        self._after_eos = False
        self._pic = pic

    def _set_poc(self, pic: PictureInfo, nal_type: int, tid: int, info: _SliceInfo) -> None:
        """8.3.1 decoding process for picture order count."""
        max_lsb = 1 << info.log2_max_poc_lsb
        lsb = info.poc_lsb
        if is_irap(nal_type) and self._no_rasl_output:
            msb = 0
        elif self._prev_tid0_poc is None:
            msb = 0
            pic.warn("no previous TemporalId-0 picture; POC MSB assumed 0")
        else:
            msb = poc_msb(lsb, self._prev_tid0_poc, max_lsb)
        pic.poc = msb + lsb
        if not info.output:
            pic.output = False
        if tid == 0 and not (6 <= nal_type <= 9) and not is_sub_layer_non_ref(nal_type):
            self._prev_tid0_poc = pic.poc
