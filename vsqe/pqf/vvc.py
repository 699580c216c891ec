"""H.266/VVC: SPS, PPS, picture header and slice header up to the QP delta, and POC.

SliceQpY = 26 + pps_init_qp_minus26 + (ph_qp_delta when pps_qp_delta_info_in_ph_flag, else
sh_qp_delta), equation 138 of ITU-T H.266 (04/2022) 7.4.9. Everything the picture header
(7.3.2.8) and the slice header (7.3.7.1) read before that delta is parsed exactly: sub-picture
and slice layout (7.3.2.4 / 7.3.2.5 with the derivations of 6.5.1), ALF/LMCS/scaling APS ids,
virtual boundaries, partition overrides, reference picture lists (7.3.9 / 7.3.10), collocated
picture and pred_weight_table (7.3.8). The SPS is read up to sps_virtual_boundaries (nothing
after it reaches the headers, except the range extension's flags that follow the QP delta).
Base layer only. POC follows 8.3.1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from vsqe.pqf.bitreader import BitReader, ParseError
from vsqe.pqf.nal import NalUnit, unescape
from vsqe.pqf.picture import PictureInfo, poc_msb

# Table 5 NAL unit types.
NAL_NAMES = {
    0: "TRAIL", 1: "STSA", 2: "RADL", 3: "RASL", 7: "IDR_W_RADL", 8: "IDR_N_LP", 9: "CRA", 10: "GDR",
    12: "OPI", 13: "DCI", 14: "VPS", 15: "SPS", 16: "PPS", 17: "PREFIX_APS", 18: "SUFFIX_APS", 19: "PH",
    20: "AUD", 21: "EOS", 22: "EOB", 23: "PREFIX_SEI", 24: "SUFFIX_SEI", 25: "FD",
}
IDR_W_RADL, IDR_N_LP, CRA, GDR = 7, 8, 9, 10
SPS_NUT, PPS_NUT, PH_NUT, AUD_NUT, EOS_NUT = 15, 16, 19, 20, 21
SLICE_TYPES = {0: "B", 1: "P", 2: "I"}
B_SLICE, P_SLICE, I_SLICE = 0, 1, 2
SLICE_HEADER_BYTES = 4096


def nal_name(t: int) -> str:
    return NAL_NAMES.get(t, f"RSV_{t}" if t < 28 else f"UNSPEC_{t}")


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0


# --- 7.3.3 profile_tier_level and 7.3.3.2 general_constraints_info ----------------------------------
def skip_profile_tier_level(r: BitReader, profile_tier_present: bool, max_sublayers_minus1: int) -> None:
    if profile_tier_present:
        r.skip(7 + 1)  # general_profile_idc, general_tier_flag
    r.skip(8 + 1 + 1)  # general_level_idc, ptl_frame_only_constraint_flag, ptl_multilayer_enabled_flag
    if profile_tier_present:
        if r.flag():  # gci_present_flag
            # 63 flags and the multi-bit idc fields (4 + 2 + 2 bits): 71 bits in total.
            r.skip(71)
            r.skip(r.u(8))  # gci_num_additional_bits and the bits themselves
        r.align_zero()  # gci_alignment_zero_bit
    present = [r.flag() for _ in range(max_sublayers_minus1)]  # ptl_sublayer_level_present_flag
    r.align_zero()  # ptl_reserved_zero_bit
    r.skip(8 * sum(present))  # sublayer_level_idc
    if profile_tier_present:
        r.skip(32 * r.u(8))  # ptl_num_sub_profiles, general_sub_profile_idc


# --- 7.3.10 ref_pic_list_struct -----------------------------------------------------------------------
@dataclass
class RefPicListStruct:
    num_ref_entries: int
    ltrp_in_header: bool
    num_ltrp_entries: int


def parse_ref_pic_list_struct(r: BitReader, sps: "Sps", list_idx: int, rpls_idx: int) -> RefPicListStruct:
    num_entries = r.ue(29)  # num_ref_entries
    ltrp_in_header = True
    if sps.long_term_ref_pics and rpls_idx < sps.num_ref_pic_lists[list_idx] and num_entries > 0:
        ltrp_in_header = r.flag()
    num_ltrp = 0
    for i in range(num_entries):
        inter_layer = r.flag() if sps.inter_layer_prediction else False
        if not inter_layer:
            st = r.flag() if sps.long_term_ref_pics else True  # st_ref_pic_flag
            if st:
                abs_delta = r.ue(1 << 15)  # abs_delta_poc_st
                if not ((sps.weighted_pred or sps.weighted_bipred) and i != 0):
                    abs_delta += 1  # AbsDeltaPocSt (7.4.11)
                if abs_delta > 0:
                    r.skip(1)  # strp_entry_sign_flag
            else:
                num_ltrp += 1
                if not ltrp_in_header:
                    r.skip(sps.log2_max_poc_lsb)  # rpls_poc_lsb_lt
        else:
            r.ue()  # ilrp_idx
    return RefPicListStruct(num_entries, ltrp_in_header, num_ltrp)


# --- 7.3.2.4 seq_parameter_set_rbsp (up to the virtual boundaries) ----------------------------------
@dataclass
class Sps:
    sps_id: int
    chroma_format_idc: int
    log2_ctu: int
    width: int
    height: int
    subpic_info_present: bool = False
    num_subpics: int = 1
    subpic_rects: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h in CTUs
    subpic_id_len: int = 0
    subpic_id_mapping_explicit: bool = False
    subpic_ids: list[int] = field(default_factory=list)
    log2_max_poc_lsb: int = 4
    poc_msb_cycle: bool = False
    poc_msb_cycle_len: int = 0
    extra_ph_bits: int = 0  # number of present ph_extra_bit
    extra_sh_bits: int = 0
    partition_constraints_override: bool = False
    qtbtt_dual_tree_intra: bool = False
    transform_skip: bool = False
    joint_cbcr: bool = False
    sao: bool = False
    alf: bool = False
    ccalf: bool = False
    lmcs: bool = False
    weighted_pred: bool = False
    weighted_bipred: bool = False
    long_term_ref_pics: bool = False
    inter_layer_prediction: bool = False
    idr_rpl_present: bool = False
    num_ref_pic_lists: list[int] = field(default_factory=lambda: [0, 0])
    rpl_structs: list[list[RefPicListStruct]] = field(default_factory=lambda: [[], []])
    temporal_mvp: bool = False
    bdof_control_in_ph: bool = False
    dmvr_control_in_ph: bool = False
    mmvd_fullpel_only: bool = False
    prof_control_in_ph: bool = False
    explicit_scaling_list: bool = False
    virtual_boundaries_enabled: bool = False
    virtual_boundaries_present: bool = False
    dep_quant: bool = False
    sign_data_hiding: bool = False


def parse_sps(rbsp: bytes) -> Sps:
    r = BitReader(rbsp)
    r.skip(16)  # NAL header
    sps_id = r.u(4)
    vps_id = r.u(4)
    max_sublayers_minus1 = r.u(3)
    chroma = r.u(2)
    log2_ctu = r.u(2) + 5
    ctb = 1 << log2_ctu
    ptl_dpb_hrd = r.flag()
    if ptl_dpb_hrd:
        skip_profile_tier_level(r, True, max_sublayers_minus1)
    r.skip(1)  # sps_gdr_enabled_flag
    if r.flag():  # sps_ref_pic_resampling_enabled_flag
        r.skip(1)  # sps_res_change_in_clvs_allowed_flag
    width = r.ue(1 << 16)
    height = r.ue(1 << 16)
    if width == 0 or height == 0:  # 7.4.3.4: a non-zero multiple of MinCbSizeY
        raise ParseError(f"SPS picture size {width}x{height}")
    s = Sps(sps_id, chroma, log2_ctu, width, height)
    if r.flag():  # sps_conformance_window_flag
        for _ in range(4):
            r.ue()
    w_ctbs = (width + ctb - 1) >> log2_ctu
    h_ctbs = (height + ctb - 1) >> log2_ctu
    s.subpic_info_present = r.flag()
    s.subpic_rects = [(0, 0, w_ctbs, h_ctbs)]
    if s.subpic_info_present:
        num_minus1 = r.ue(599)
        s.num_subpics = num_minus1 + 1
        if num_minus1 > 0:
            independent = r.flag()
            same_size = r.flag()
            wlen, hlen = _ceil_log2(w_ctbs), _ceil_log2(h_ctbs)
            rects: list[tuple[int, int, int, int]] = []
            for i in range(num_minus1 + 1):
                if not same_size or i == 0:
                    x = r.u(wlen) if i > 0 and width > ctb else 0
                    y = r.u(hlen) if i > 0 and height > ctb else 0
                    if i < num_minus1 and width > ctb:
                        w = r.u(wlen) + 1
                    else:
                        w = w_ctbs - x
                    if i < num_minus1 and height > ctb:
                        h = r.u(hlen) + 1
                    else:
                        h = h_ctbs - y
                else:
                    w0, h0 = rects[0][2], rects[0][3]
                    cols = max(1, (w_ctbs + w0 - 1) // w0)
                    x, y, w, h = (i % cols) * w0, (i // cols) * h0, w0, h0
                rects.append((x, y, w, h))
                if not independent:
                    r.skip(2)  # sps_subpic_treated_as_pic_flag, sps_loop_filter_across_subpic_enabled_flag
            s.subpic_rects = rects
        s.subpic_id_len = r.ue(15) + 1
        s.subpic_id_mapping_explicit = r.flag()
        if s.subpic_id_mapping_explicit:
            if r.flag():  # sps_subpic_id_mapping_present_flag
                s.subpic_ids = [r.u(s.subpic_id_len) for _ in range(s.num_subpics)]
    bit_depth_minus8 = r.ue(8)
    r.skip(2)  # sps_entropy_coding_sync_enabled_flag, sps_entry_point_offsets_present_flag
    s.log2_max_poc_lsb = r.u(4) + 4
    s.poc_msb_cycle = r.flag()
    if s.poc_msb_cycle:
        s.poc_msb_cycle_len = r.ue(32) + 1
    n = r.u(2)  # sps_num_extra_ph_bytes
    s.extra_ph_bits = sum(r.u(1) for _ in range(8 * n))
    n = r.u(2)  # sps_num_extra_sh_bytes
    s.extra_sh_bits = sum(r.u(1) for _ in range(8 * n))
    if ptl_dpb_hrd:
        sublayer_dpb = r.flag() if max_sublayers_minus1 > 0 else False
        for _ in range(0 if sublayer_dpb else max_sublayers_minus1, max_sublayers_minus1 + 1):
            r.ue()  # dpb_max_dec_pic_buffering_minus1
            r.ue()  # dpb_max_num_reorder_pics
            r.ue()  # dpb_max_latency_increase_plus1
    r.ue()  # sps_log2_min_luma_coding_block_size_minus2
    s.partition_constraints_override = r.flag()
    r.ue()  # sps_log2_diff_min_qt_min_cb_intra_slice_luma
    if r.ue() != 0:  # sps_max_mtt_hierarchy_depth_intra_slice_luma
        r.ue()
        r.ue()
    if chroma != 0:
        s.qtbtt_dual_tree_intra = r.flag()
    if s.qtbtt_dual_tree_intra:
        r.ue()
        if r.ue() != 0:  # sps_max_mtt_hierarchy_depth_intra_slice_chroma
            r.ue()
            r.ue()
    r.ue()  # sps_log2_diff_min_qt_min_cb_inter_slice
    if r.ue() != 0:  # sps_max_mtt_hierarchy_depth_inter_slice
        r.ue()
        r.ue()
    luma_tx_64 = r.flag() if ctb > 32 else False
    s.transform_skip = r.flag()
    if s.transform_skip:
        r.ue()  # sps_log2_transform_skip_max_size_minus2
        r.skip(1)  # sps_bdpcm_enabled_flag
    if r.flag():  # sps_mts_enabled_flag
        r.skip(2)
    lfnst = r.flag()
    if chroma != 0:
        s.joint_cbcr = r.flag()
        same_table = r.flag()
        for _ in range(1 if same_table else (3 if s.joint_cbcr else 2)):
            r.se()  # sps_qp_table_start_minus26
            for _ in range(r.ue(36) + 1):  # sps_num_points_in_qp_table_minus1
                r.ue()
                r.ue()
    s.sao = r.flag()
    s.alf = r.flag()
    if s.alf and chroma != 0:
        s.ccalf = r.flag()
    s.lmcs = r.flag()
    s.weighted_pred = r.flag()
    s.weighted_bipred = r.flag()
    s.long_term_ref_pics = r.flag()
    if vps_id > 0:
        s.inter_layer_prediction = r.flag()
    s.idr_rpl_present = r.flag()
    rpl1_same = r.flag()
    for i in range(1 if rpl1_same else 2):
        s.num_ref_pic_lists[i] = r.ue(64)
        s.rpl_structs[i] = [parse_ref_pic_list_struct(r, s, i, j) for j in range(s.num_ref_pic_lists[i])]
    if rpl1_same:
        s.num_ref_pic_lists[1] = s.num_ref_pic_lists[0]
        s.rpl_structs[1] = list(s.rpl_structs[0])
    r.skip(1)  # sps_ref_wraparound_enabled_flag
    s.temporal_mvp = r.flag()
    if s.temporal_mvp:
        r.skip(1)  # sps_sbtmvp_enabled_flag
    amvr = r.flag()
    if r.flag():  # sps_bdof_enabled_flag
        s.bdof_control_in_ph = r.flag()
    r.skip(1)  # sps_smvd_enabled_flag
    if r.flag():  # sps_dmvr_enabled_flag
        s.dmvr_control_in_ph = r.flag()
    if r.flag():  # sps_mmvd_enabled_flag
        s.mmvd_fullpel_only = r.flag()
    max_merge = 6 - r.ue(5)
    r.skip(1)  # sps_sbt_enabled_flag
    if r.flag():  # sps_affine_enabled_flag
        r.ue()  # sps_five_minus_max_num_subblock_merge_cand
        r.skip(1)  # sps_6param_affine_enabled_flag
        if amvr:
            r.skip(1)  # sps_affine_amvr_enabled_flag
        if r.flag():  # sps_affine_prof_enabled_flag
            s.prof_control_in_ph = r.flag()
    r.skip(2)  # sps_bcw_enabled_flag, sps_ciip_enabled_flag
    if max_merge >= 2:
        if r.flag() and max_merge >= 3:  # sps_gpm_enabled_flag
            r.ue()
    r.ue()  # sps_log2_parallel_merge_level_minus2
    r.skip(3)  # sps_isp_enabled_flag, sps_mrl_enabled_flag, sps_mip_enabled_flag
    if chroma != 0:
        r.skip(1)  # sps_cclm_enabled_flag
    if chroma == 1:
        r.skip(2)  # sps_chroma_horizontal/vertical_collocated_flag
    palette = r.flag()
    act = r.flag() if chroma == 3 and not luma_tx_64 else False
    if s.transform_skip or palette:
        r.ue()  # sps_min_qp_prime_ts
    if r.flag():  # sps_ibc_enabled_flag
        r.ue()
    if r.flag():  # sps_ladf_enabled_flag
        n = r.u(2) + 1
        r.se()
        for _ in range(n):
            r.se()
            r.ue()
    s.explicit_scaling_list = r.flag()
    if lfnst and s.explicit_scaling_list:
        r.skip(1)  # sps_scaling_matrix_for_lfnst_disabled_flag
    if act and s.explicit_scaling_list:
        if not r.flag():  # sps_scaling_matrix_for_alternative_colour_space_disabled_flag
            pass
        else:
            r.skip(1)  # sps_scaling_matrix_designated_colour_space_flag
    s.dep_quant = r.flag()
    s.sign_data_hiding = r.flag()
    s.virtual_boundaries_enabled = r.flag()
    if s.virtual_boundaries_enabled:
        s.virtual_boundaries_present = r.flag()
        if s.virtual_boundaries_present:
            for _ in range(2):  # vertical, then horizontal
                for _ in range(r.ue(3)):
                    r.ue()
    del bit_depth_minus8
    return s


# --- 7.3.2.5 pic_parameter_set_rbsp -------------------------------------------------------------------
@dataclass
class Pps:
    pps_id: int
    sps_id: int
    output_flag_present: bool = False
    no_pic_partition: bool = True
    num_tiles: int = 1
    rect_slice: bool = True
    num_slices_in_subpic: list[int] = field(default_factory=lambda: [1])
    subpic_id_val: list[int] = field(default_factory=lambda: [0])
    cabac_init_present: bool = False
    num_ref_idx_default: tuple[int, int] = (1, 1)
    rpl1_idx_present: bool = False
    weighted_pred: bool = False
    weighted_bipred: bool = False
    init_qp: int = 26
    cu_qp_delta: bool = False
    chroma_tool_offsets: bool = False
    cu_chroma_qp_offset_list: bool = False
    deblocking_disabled: bool = False
    dbf_info_in_ph: bool = False
    rpl_info_in_ph: bool = False
    sao_info_in_ph: bool = False
    alf_info_in_ph: bool = False
    wp_info_in_ph: bool = False
    qp_delta_info_in_ph: bool = False
    picture_header_extension: bool = False


def _tile_sizes(r: BitReader, total: int, num_exp: int) -> list[int]:
    """6.5.1: explicit sizes, then the last one repeated, then the remainder."""
    sizes = [r.ue(total - 1) + 1 for _ in range(num_exp)]
    remaining = total - sum(sizes)
    if remaining < 0:
        raise ParseError("tile sizes exceed the picture")
    uniform = sizes[-1]
    while remaining >= uniform:
        sizes.append(uniform)
        remaining -= uniform
    if remaining > 0:
        sizes.append(remaining)
    return sizes


def parse_pps(rbsp: bytes, spss: dict[int, Sps]) -> Pps:
    r = BitReader(rbsp)
    r.skip(16)
    p = Pps(r.u(6), r.u(4))
    sps = spss.get(p.sps_id)
    if sps is None:
        raise ParseError(f"PPS {p.pps_id} refers to SPS {p.sps_id}, which the stream has not sent")
    r.skip(1)  # pps_mixed_nalu_types_in_pic_flag
    width = r.ue(1 << 16)
    height = r.ue(1 << 16)
    if r.flag():  # pps_conformance_window_flag
        for _ in range(4):
            r.ue()
    if r.flag():  # pps_scaling_window_explicit_signalling_flag
        for _ in range(4):
            r.se()
    p.output_flag_present = r.flag()
    p.no_pic_partition = r.flag()
    subpic_mapping_present = r.flag()
    pps_subpic_ids: list[int] = []
    if subpic_mapping_present:
        n = r.ue(599) + 1 if not p.no_pic_partition else 1
        id_len = r.ue(15) + 1
        pps_subpic_ids = [r.u(id_len) for _ in range(n)]
    # SubpicIdVal (7.4.3.5).
    if sps.subpic_id_mapping_explicit:
        source = pps_subpic_ids if subpic_mapping_present else sps.subpic_ids
        p.subpic_id_val = list(source[: sps.num_subpics])
    else:
        p.subpic_id_val = list(range(sps.num_subpics))
    p.num_slices_in_subpic = [1] * sps.num_subpics
    if not p.no_pic_partition:
        log2_ctu = r.u(2) + 5
        if log2_ctu != sps.log2_ctu:
            raise ParseError("pps_log2_ctu_size_minus5 differs from the SPS")
        ctb = 1 << log2_ctu
        w_ctbs = (width + ctb - 1) >> log2_ctu
        h_ctbs = (height + ctb - 1) >> log2_ctu
        num_exp_cols = r.ue(w_ctbs - 1) + 1
        num_exp_rows = r.ue(h_ctbs - 1) + 1
        col_widths = _tile_sizes(r, w_ctbs, num_exp_cols)
        row_heights = _tile_sizes(r, h_ctbs, num_exp_rows)
        n_cols, n_rows = len(col_widths), len(row_heights)
        p.num_tiles = n_cols * n_rows
        if p.num_tiles > 1:
            r.skip(1)  # pps_loop_filter_across_tiles_enabled_flag
            p.rect_slice = r.flag()
        single_slice_per_subpic = r.flag() if p.rect_slice else True
        num_slices_minus1 = 0
        if p.rect_slice and not single_slice_per_subpic:
            num_slices_minus1 = r.ue(599)
            tile_idx_delta_present = r.flag() if num_slices_minus1 > 1 else False
            col_x = [sum(col_widths[:i]) for i in range(n_cols)]
            row_y = [sum(row_heights[:i]) for i in range(n_rows)]
            widths = [0] * (num_slices_minus1 + 1)
            heights = [0] * (num_slices_minus1 + 1)
            top_left: list[tuple[int, int]] = [(0, 0)] * (num_slices_minus1 + 1)  # CTU x, y
            tile_idx = 0
            i = 0
            while i < num_slices_minus1:
                tile_x, tile_y = tile_idx % n_cols, tile_idx // n_cols
                if tile_y >= n_rows:
                    raise ParseError("slice layout leaves the picture")
                if tile_x != n_cols - 1:
                    widths[i] = r.ue(n_cols - 1)
                if tile_y != n_rows - 1 and (tile_idx_delta_present or tile_x == 0):
                    heights[i] = r.ue(n_rows - 1)
                elif tile_y != n_rows - 1 and i > 0:
                    heights[i] = heights[i - 1]
                ctu_x, ctu_y = col_x[tile_x], row_y[tile_y]
                top_left[i] = (ctu_x, ctu_y)
                if widths[i] == 0 and heights[i] == 0 and row_heights[tile_y] > 1:
                    num_exp_slices = r.ue(row_heights[tile_y] - 1)
                    if num_exp_slices:
                        exp = [r.ue(row_heights[tile_y] - 1) + 1 for _ in range(num_exp_slices)]
                        remaining = row_heights[tile_y] - sum(exp)
                        if remaining < 0:
                            raise ParseError("slice heights exceed the tile")
                        slice_heights = list(exp)
                        uniform = exp[-1]
                        while remaining >= uniform:
                            slice_heights.append(uniform)
                            remaining -= uniform
                        if remaining > 0:
                            slice_heights.append(remaining)
                        if i + len(slice_heights) - 1 > num_slices_minus1:
                            raise ParseError("more slices in a tile than in the picture")
                        y = ctu_y
                        for j, hgt in enumerate(slice_heights):
                            top_left[i + j] = (ctu_x, y)
                            y += hgt
                        i += len(slice_heights) - 1
                if tile_idx_delta_present and i < num_slices_minus1:
                    tile_idx += r.se(p.num_tiles)  # pps_tile_idx_delta_val
                elif not tile_idx_delta_present:
                    tile_idx += widths[i] + 1
                    if tile_idx % n_cols == 0:
                        tile_idx += heights[i] * n_cols
                i += 1
            if i == num_slices_minus1:
                tile_x, tile_y = tile_idx % n_cols, tile_idx // n_cols
                if tile_y >= n_rows or tile_idx < 0:
                    raise ParseError("slice layout leaves the picture")
                top_left[i] = (col_x[tile_x], row_y[tile_y])
            # NumSlicesInSubpic: slices whose top-left CTU lies in the sub-picture (7.4.3.5).
            p.num_slices_in_subpic = [
                sum(1 for (x, y) in top_left if sx <= x < sx + sw and sy <= y < sy + sh)
                for (sx, sy, sw, sh) in sps.subpic_rects
            ]
        if not p.rect_slice or single_slice_per_subpic or num_slices_minus1 > 0:
            r.skip(1)  # pps_loop_filter_across_slices_enabled_flag
    p.cabac_init_present = r.flag()
    p.num_ref_idx_default = (r.ue(14) + 1, r.ue(14) + 1)
    p.rpl1_idx_present = r.flag()
    p.weighted_pred = r.flag()
    p.weighted_bipred = r.flag()
    if r.flag():  # pps_ref_wraparound_enabled_flag
        r.ue()
    p.init_qp = 26 + r.se(26 + 6 * 8)
    p.cu_qp_delta = r.flag()
    chroma_tool_offsets = p.chroma_tool_offsets = r.flag()
    if chroma_tool_offsets:
        r.se()  # pps_cb_qp_offset
        r.se()  # pps_cr_qp_offset
        joint = r.flag()
        if joint:
            r.se()
        r.skip(1)  # pps_slice_chroma_qp_offsets_present_flag
        p.cu_chroma_qp_offset_list = r.flag()
        if p.cu_chroma_qp_offset_list:
            for _ in range(r.ue(5) + 1):
                r.se()
                r.se()
                if joint:
                    r.se()
    if r.flag():  # pps_deblocking_filter_control_present_flag
        override = r.flag()
        disabled = p.deblocking_disabled = r.flag()
        if not p.no_pic_partition and override:
            p.dbf_info_in_ph = r.flag()
        if not disabled:
            for _ in range(6 if chroma_tool_offsets else 2):
                r.se()
    if not p.no_pic_partition:
        p.rpl_info_in_ph = r.flag()
        p.sao_info_in_ph = r.flag()
        p.alf_info_in_ph = r.flag()
        if (p.weighted_pred or p.weighted_bipred) and p.rpl_info_in_ph:
            p.wp_info_in_ph = r.flag()
        p.qp_delta_info_in_ph = r.flag()
    p.picture_header_extension = r.flag()
    return p


# --- 7.3.9 ref_pic_lists ----------------------------------------------------------------------------
def parse_ref_pic_lists(r: BitReader, sps: Sps, pps: Pps) -> list[RefPicListStruct]:
    lists: list[RefPicListStruct] = []
    sps_flag = [False, False]
    rpl_idx = [0, 0]
    for i in range(2):
        n = sps.num_ref_pic_lists[i]
        if n > 0 and (i == 0 or pps.rpl1_idx_present):
            sps_flag[i] = r.flag()  # rpl_sps_flag
        elif n == 0:
            sps_flag[i] = False
        else:
            sps_flag[i] = sps_flag[0]
        if sps_flag[i]:
            if n > 1 and (i == 0 or pps.rpl1_idx_present):
                rpl_idx[i] = r.u(_ceil_log2(n))
            elif n == 1:
                rpl_idx[i] = 0
            else:
                rpl_idx[i] = rpl_idx[0]
            if rpl_idx[i] >= n:
                raise ParseError(f"rpl_idx {rpl_idx[i]} out of range")
            rpl = sps.rpl_structs[i][rpl_idx[i]]
        else:
            rpl = parse_ref_pic_list_struct(r, sps, i, n)
        for _ in range(rpl.num_ltrp_entries):
            if rpl.ltrp_in_header:
                r.skip(sps.log2_max_poc_lsb)  # poc_lsb_lt
            if r.flag():  # delta_poc_msb_cycle_present_flag
                r.ue()
        lists.append(rpl)
    return lists


# --- 7.3.8 pred_weight_table ------------------------------------------------------------------------
def skip_pred_weight_table(r: BitReader, sps: Sps, pps: Pps, lists: list[RefPicListStruct],
                           active: tuple[int, int]) -> None:
    r.ue()  # luma_log2_weight_denom
    if sps.chroma_format_idc != 0:
        r.se()  # delta_chroma_log2_weight_denom
    n0 = r.ue(15) if pps.wp_info_in_ph else active[0]  # num_l0_weights
    if not pps.weighted_bipred or (pps.wp_info_in_ph and lists[1].num_ref_entries == 0):
        n1 = 0
    elif pps.wp_info_in_ph:
        n1 = -1  # read below, after the l0 weights
    else:
        n1 = active[1]
    for pass_ in range(2):
        n = n0 if pass_ == 0 else n1
        if pass_ == 1 and n == -1:
            n = r.ue(15)  # num_l1_weights
        luma = [r.flag() for _ in range(n)]
        chroma = [r.flag() for _ in range(n)] if sps.chroma_format_idc != 0 else [False] * n
        for i in range(n):
            if luma[i]:
                r.se()
                r.se()
            if chroma[i]:
                for _ in range(4):
                    r.se()


# --- 7.3.2.8 picture_header_structure up to ph_qp_delta ---------------------------------------------
@dataclass
class PictureHeader:
    pps: Pps
    sps: Sps
    gdr_or_irap: bool
    non_ref: bool
    inter_allowed: bool
    poc_lsb: int
    poc_msb_cycle_val: int | None = None
    recovery_poc_cnt: int | None = None  # GDR pictures only
    output: bool = True
    lmcs: bool = False
    explicit_scaling_list: bool = False
    temporal_mvp: bool = False
    ref_lists: list[RefPicListStruct] | None = None
    qp_delta: int | None = None


def _skip_alf_ids(r: BitReader, sps: Sps) -> None:
    """The ALF APS ids shared by the PH (ph_alf_*) and the slice header (sh_alf_*)."""
    r.skip(3 * r.u(3))  # num_alf_aps_ids_luma, alf_aps_id_luma
    cb = cr = False
    if sps.chroma_format_idc != 0:
        cb, cr = r.flag(), r.flag()
    if cb or cr:
        r.skip(3)  # alf_aps_id_chroma
    if sps.ccalf:
        if r.flag():
            r.skip(3)  # alf_cc_cb_aps_id
        if r.flag():
            r.skip(3)  # alf_cc_cr_aps_id


def parse_picture_header(r: BitReader, spss: dict[int, Sps], pps_of: "PpsStore") -> PictureHeader:
    gdr_or_irap = r.flag()
    non_ref = r.flag()
    gdr = r.flag() if gdr_or_irap else False
    inter_allowed = r.flag()
    intra_allowed = r.flag() if inter_allowed else True
    pps_id = r.ue(63)
    pps, sps = pps_of.get(pps_id, spss)
    ph = PictureHeader(pps, sps, gdr_or_irap, non_ref, inter_allowed, r.u(sps.log2_max_poc_lsb))
    if gdr:
        ph.recovery_poc_cnt = r.ue(1 << 16)  # ph_recovery_poc_cnt
    r.skip(sps.extra_ph_bits)  # ph_extra_bit
    if sps.poc_msb_cycle:
        if r.flag():  # ph_poc_msb_cycle_present_flag
            ph.poc_msb_cycle_val = r.u(sps.poc_msb_cycle_len)
    if sps.alf and pps.alf_info_in_ph:
        if r.flag():  # ph_alf_enabled_flag
            _skip_alf_ids(r, sps)
    if sps.lmcs:
        ph.lmcs = r.flag()
        if ph.lmcs:
            r.skip(2)  # ph_lmcs_aps_id
            if sps.chroma_format_idc != 0:
                r.skip(1)  # ph_chroma_residual_scale_flag
    if sps.explicit_scaling_list:
        ph.explicit_scaling_list = r.flag()
        if ph.explicit_scaling_list:
            r.skip(3)  # ph_scaling_list_aps_id
    if sps.virtual_boundaries_enabled and not sps.virtual_boundaries_present:
        if r.flag():  # ph_virtual_boundaries_present_flag
            for _ in range(2):
                for _ in range(r.ue(3)):
                    r.ue()
    if pps.output_flag_present and not non_ref:
        ph.output = r.flag()
    if pps.rpl_info_in_ph:
        ph.ref_lists = parse_ref_pic_lists(r, sps, pps)
    override = r.flag() if sps.partition_constraints_override else False
    if intra_allowed:
        if override:
            r.ue()  # ph_log2_diff_min_qt_min_cb_intra_slice_luma
            if r.ue() != 0:  # ph_max_mtt_hierarchy_depth_intra_slice_luma
                r.ue()
                r.ue()
            if sps.qtbtt_dual_tree_intra:
                r.ue()
                if r.ue() != 0:  # ph_max_mtt_hierarchy_depth_intra_slice_chroma
                    r.ue()
                    r.ue()
        if pps.cu_qp_delta:
            r.ue()  # ph_cu_qp_delta_subdiv_intra_slice
        if pps.cu_chroma_qp_offset_list:
            r.ue()  # ph_cu_chroma_qp_offset_subdiv_intra_slice
    if inter_allowed:
        if override:
            r.ue()  # ph_log2_diff_min_qt_min_cb_inter_slice
            if r.ue() != 0:  # ph_max_mtt_hierarchy_depth_inter_slice
                r.ue()
                r.ue()
        if pps.cu_qp_delta:
            r.ue()  # ph_cu_qp_delta_subdiv_inter_slice
        if pps.cu_chroma_qp_offset_list:
            r.ue()  # ph_cu_chroma_qp_offset_subdiv_inter_slice
        if sps.temporal_mvp:
            ph.temporal_mvp = r.flag()
            if ph.temporal_mvp and pps.rpl_info_in_ph:
                assert ph.ref_lists is not None
                l0, l1 = ph.ref_lists[0].num_ref_entries, ph.ref_lists[1].num_ref_entries
                from_l0 = r.flag() if l1 > 0 else True  # ph_collocated_from_l0_flag
                if (from_l0 and l0 > 1) or (not from_l0 and l1 > 1):
                    r.ue()  # ph_collocated_ref_idx
        if sps.mmvd_fullpel_only:
            r.skip(1)  # ph_mmvd_fullpel_only_flag
        if not pps.rpl_info_in_ph or (ph.ref_lists is not None and ph.ref_lists[1].num_ref_entries > 0):
            r.skip(1)  # ph_mvd_l1_zero_flag
            if sps.bdof_control_in_ph:
                r.skip(1)  # ph_bdof_disabled_flag
            if sps.dmvr_control_in_ph:
                r.skip(1)  # ph_dmvr_disabled_flag
        if sps.prof_control_in_ph:
            r.skip(1)  # ph_prof_disabled_flag
        if (pps.weighted_pred or pps.weighted_bipred) and pps.wp_info_in_ph:
            assert ph.ref_lists is not None
            skip_pred_weight_table(r, sps, pps, ph.ref_lists, (0, 0))
    if pps.qp_delta_info_in_ph:
        ph.qp_delta = r.se(26 + 6 * 8 + 63)
    # The rest matters when the PH sits in the slice header: the slice syntax follows it.
    if sps.joint_cbcr:
        r.skip(1)  # ph_joint_cbcr_sign_flag
    if sps.sao and pps.sao_info_in_ph:
        r.skip(1)  # ph_sao_luma_enabled_flag
        if sps.chroma_format_idc != 0:
            r.skip(1)  # ph_sao_chroma_enabled_flag
    if pps.dbf_info_in_ph:
        if r.flag():  # ph_deblocking_params_present_flag
            # Not present, ph_deblocking_filter_disabled_flag is 0 when the PPS disables the
            # filter (the PH re-enables it with its own offsets), 7.4.3.8.
            disabled = r.flag() if not pps.deblocking_disabled else False
            if not disabled:
                for _ in range(6 if pps.chroma_tool_offsets else 2):
                    r.se()
    if pps.picture_header_extension:
        r.skip(8 * r.ue(256))  # ph_extension_length, ph_extension_data_byte
    return ph


class PpsStore:
    """PPS NAL units are kept escaped-free and parsed against the SPS active when referenced
    (a VVC PPS depends on its SPS, which may arrive or change after the PPS)."""

    def __init__(self) -> None:
        self.raw: dict[int, bytes] = {}
        self._parsed: dict[int, tuple[bytes, Sps, Pps]] = {}

    def add(self, rbsp: bytes) -> None:
        if len(rbsp) >= 3:
            self.raw[rbsp[2] >> 2] = rbsp  # pps_pic_parameter_set_id: the first 6 bits

    def get(self, pps_id: int, spss: dict[int, Sps]) -> tuple[Pps, Sps]:
        raw = self.raw.get(pps_id)
        if raw is None:
            raise ParseError(f"picture refers to PPS {pps_id}, which the stream has not sent")
        sps_id = ((raw[2] & 3) << 2) | (raw[3] >> 6) if len(raw) > 3 else -1
        sps = spss.get(sps_id)
        if sps is None:
            raise ParseError(f"PPS {pps_id} refers to SPS {sps_id}, which the stream has not sent")
        cached = self._parsed.get(pps_id)
        if cached is not None and cached[0] is raw and cached[1] is sps:
            return cached[2], sps
        pps = parse_pps(raw, spss)
        self._parsed[pps_id] = (raw, sps, pps)
        return pps, sps


# --- 7.3.7.1 slice_header up to sh_qp_delta ---------------------------------------------------------
def parse_slice_header(r: BitReader, nal_type: int, ph: PictureHeader | None, spss: dict[int, Sps],
                       ppss: PpsStore) -> tuple[PictureHeader, int, int]:
    """Returns (the picture header in force, slice type, SliceQpY)."""
    if r.flag():  # sh_picture_header_in_slice_header_flag
        ph = parse_picture_header(r, spss, ppss)
        in_sh = True
    else:
        in_sh = False
        if ph is None:
            raise ParseError("slice without a picture header")
    sps, pps = ph.sps, ph.pps
    subpic_idx = 0
    if sps.subpic_info_present:
        sub_id = r.u(sps.subpic_id_len)
        if sub_id in pps.subpic_id_val:
            subpic_idx = pps.subpic_id_val.index(sub_id)
        else:
            raise ParseError(f"sh_subpic_id {sub_id} is not a sub-picture of the PPS")
    num_slices = pps.num_slices_in_subpic[subpic_idx] if subpic_idx < len(pps.num_slices_in_subpic) else 1
    address = 0
    if pps.rect_slice and num_slices > 1:
        address = r.u(_ceil_log2(num_slices))
    elif not pps.rect_slice and pps.num_tiles > 1:
        address = r.u(_ceil_log2(pps.num_tiles))
    r.skip(sps.extra_sh_bits)  # sh_extra_bit
    if not pps.rect_slice and pps.num_tiles - address > 1:
        r.ue()  # sh_num_tiles_in_slice_minus1
    slice_type = r.ue(2) if ph.inter_allowed else I_SLICE
    if nal_type in (IDR_W_RADL, IDR_N_LP, CRA, GDR):
        r.skip(1)  # sh_no_output_of_prior_pics_flag
    if sps.alf and not pps.alf_info_in_ph:
        if r.flag():  # sh_alf_enabled_flag
            _skip_alf_ids(r, sps)
    if ph.lmcs and not in_sh:
        r.skip(1)  # sh_lmcs_used_flag
    if ph.explicit_scaling_list and not in_sh:
        r.skip(1)  # sh_explicit_scaling_list_used_flag
    if not pps.rpl_info_in_ph and (nal_type not in (IDR_W_RADL, IDR_N_LP) or sps.idr_rpl_present):
        lists = parse_ref_pic_lists(r, sps, pps)
    elif ph.ref_lists is not None:
        lists = ph.ref_lists
    else:
        lists = [RefPicListStruct(0, True, 0), RefPicListStruct(0, True, 0)]
    e0, e1 = lists[0].num_ref_entries, lists[1].num_ref_entries
    override = True
    minus1 = [0, 0]
    if (slice_type != I_SLICE and e0 > 1) or (slice_type == B_SLICE and e1 > 1):
        override = r.flag()  # sh_num_ref_idx_active_override_flag
        if override:
            for i in range(2 if slice_type == B_SLICE else 1):
                if (e0, e1)[i] > 1:
                    minus1[i] = r.ue(14)
    active = [0, 0]
    for i in range(2):
        if slice_type == B_SLICE or (slice_type == P_SLICE and i == 0):
            if override:
                active[i] = minus1[i] + 1
            else:
                active[i] = min((e0, e1)[i], pps.num_ref_idx_default[i])
    if slice_type != I_SLICE:
        if pps.cabac_init_present:
            r.skip(1)  # sh_cabac_init_flag
        if ph.temporal_mvp and not pps.rpl_info_in_ph:
            from_l0 = r.flag() if slice_type == B_SLICE else True  # sh_collocated_from_l0_flag
            if (from_l0 and active[0] > 1) or (not from_l0 and active[1] > 1):
                r.ue()  # sh_collocated_ref_idx
        if not pps.wp_info_in_ph and (
            (pps.weighted_pred and slice_type == P_SLICE) or (pps.weighted_bipred and slice_type == B_SLICE)
        ):
            skip_pred_weight_table(r, sps, pps, lists, (active[0], active[1]))
    if pps.qp_delta_info_in_ph:
        assert ph.qp_delta is not None
        qp = pps.init_qp + ph.qp_delta
    else:
        qp = pps.init_qp + r.se(26 + 6 * 8 + 63)  # sh_qp_delta
    if not -6 * 8 <= qp <= 63:  # 7.4.8 / 7.4.9: -QpBdOffset..63 (QpBdOffset <= 48 at 16 bits)
        raise ParseError(f"SliceQpY {qp} out of range")
    return ph, slice_type, qp


class VvcParser:
    """Feed NAL units in stream order; yields PictureInfo records as pictures complete."""

    codec = "vvc"

    def __init__(self) -> None:
        self.spss: dict[int, Sps] = {}
        self.ppss = PpsStore()
        self._ph: PictureHeader | None = None
        self._ph_error: str | None = None
        self._pic: PictureInfo | None = None
        self._pic_has_slice = False
        self._count = 0
        self._cvs = -1
        self._first_picture = True
        self._after_eos = False
        self._prev_tid0_poc: int | None = None
        self._skip_rasl = False
        self._recovery_poc: int | None = None  # until the recovery point of a starting GDR

    def push(self, nal: NalUnit) -> Iterator[PictureInfo]:
        if len(nal.data) < 2:
            return
        h0, h1 = nal.data[0], nal.data[1]
        if h0 & 0x80:
            return
        layer_id = h0 & 0x3F
        nal_type = h1 >> 3
        tid = (h1 & 7) - 1
        if layer_id != 0 or tid < 0:
            return
        if nal_type <= 11:
            if nal_type in (4, 5, 6, 11):
                return  # reserved VCL types
            yield from self._slice(nal, nal_type, tid)
        elif nal_type == SPS_NUT:
            try:
                sps = parse_sps(unescape(nal.data))
                self.spss[sps.sps_id] = sps
            except ParseError:
                pass
        elif nal_type == PPS_NUT:
            self.ppss.add(unescape(nal.data))
        elif nal_type == PH_NUT:
            yield from self.flush()
            self._start_picture(tid)
            self._ph, self._ph_error = None, None
            try:
                r = BitReader(unescape(nal.data))
                r.skip(16)
                self._ph = parse_picture_header(r, self.spss, self.ppss)
            except ParseError as exc:
                self._ph_error = str(exc)
        elif nal_type in (AUD_NUT, EOS_NUT):
            yield from self.flush()
            if nal_type == EOS_NUT:
                self._after_eos = True

    def flush(self) -> Iterator[PictureInfo]:
        if self._pic is not None:
            pic, self._pic = self._pic, None
            yield pic

    def _start_picture(self, tid: int) -> None:
        self._pic = PictureInfo(self._count, self.codec, -1, "?", tid)
        self._pic_has_slice = False
        self._count += 1

    def _slice(self, nal: NalUnit, nal_type: int, tid: int) -> Iterator[PictureInfo]:
        ph_in_sh = len(nal.data) > 2 and bool(nal.data[2] & 0x80)
        if ph_in_sh or self._pic is None:
            yield from self.flush()
            self._start_picture(tid)
            self._ph, self._ph_error = None, None
        pic = self._pic
        assert pic is not None
        pic.bits += nal.size * 8
        first = not self._pic_has_slice
        if first:
            self._pic_has_slice = True
            pic.nal_type, pic.nal_type_name, pic.temporal_id = nal_type, nal_name(nal_type), tid
            self._begin_cvs(pic, nal_type)
        result = None
        error = self._ph_error or ""
        if self._ph_error is None or ph_in_sh:
            for limit in (SLICE_HEADER_BYTES, None):
                data = nal.data if limit is None else nal.data[:limit]
                try:
                    r = BitReader(unescape(data))
                    r.skip(16)
                    result = parse_slice_header(r, nal_type, self._ph, self.spss, self.ppss)
                    break
                except ParseError as exc:
                    error = str(exc)
                    if limit is None or len(nal.data) <= limit:
                        break
        if result is None:
            pic.warn(f"{nal_name(nal_type)} slice header unreadable ({error}); QP unknown")
            return
        ph, slice_type, qp = result
        self._ph = ph
        pic.add_slice(SLICE_TYPES[slice_type], qp)
        if first:
            self._set_poc(pic, ph, nal_type, tid)

    def _begin_cvs(self, pic: PictureInfo, nal_type: int) -> None:
        irap = nal_type in (IDR_W_RADL, IDR_N_LP, CRA, GDR)
        self._no_output_before_recovery = False
        if irap:
            nobr = nal_type in (IDR_W_RADL, IDR_N_LP) or self._first_picture or self._after_eos
            self._no_output_before_recovery = nobr
            if nobr:
                self._cvs += 1
            self._skip_rasl = nobr and nal_type == CRA
        elif self._first_picture:
            self._cvs += 1
            pic.warn("the stream does not start with an IRAP or GDR picture")
        if nal_type == 3 and self._skip_rasl:
            pic.output = False  # RASL of a CRA that starts decoding: not output (8.1.1)
        pic.cvs = self._cvs
        self._first_picture = False
        self._after_eos = False

    def _set_poc(self, pic: PictureInfo, ph: PictureHeader, nal_type: int, tid: int) -> None:
        """8.3.1 decoding process for picture order count."""
        max_lsb = 1 << ph.sps.log2_max_poc_lsb
        lsb = ph.poc_lsb
        if ph.poc_msb_cycle_val is not None:
            msb = ph.poc_msb_cycle_val * max_lsb
        elif self._no_output_before_recovery:
            msb = 0
        elif self._prev_tid0_poc is None:
            msb = 0
            pic.warn("no previous TemporalId-0 picture; POC MSB assumed 0")
        else:
            msb = poc_msb(lsb, self._prev_tid0_poc, max_lsb)
        pic.poc = msb + lsb
        if not ph.output:
            pic.output = False
        # 8.1.1 / C.5.2.2: a CLVS that starts with a GDR picture outputs nothing before the
        # recovery point (PictureOutputFlag 0 while POC < RpPicOrderCntVal).
        if nal_type in (IDR_W_RADL, IDR_N_LP, CRA, GDR):  # a new association
            self._recovery_poc = None
            if nal_type == GDR and self._no_output_before_recovery and ph.recovery_poc_cnt is not None:
                self._recovery_poc = pic.poc + ph.recovery_poc_cnt
        if self._recovery_poc is not None and pic.poc < self._recovery_poc:
            pic.output = False
        if tid == 0 and nal_type not in (2, 3):  # not RADL or RASL
            self._prev_tid0_poc = pic.poc
