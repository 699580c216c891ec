// Internal: the AVX-512 kernels, compiled in their own translation unit with AVX-512 flags and
// only called after a runtime CPU check, so the module still loads on CPUs without AVX-512.
// That TU must not instantiate any inline or template code shared with other TUs (the linker
// could keep its AVX-512 copy for everyone), hence this header includes only plain structs and
// the threading stays in dcn_cpu.cpp.
#pragma once

#include <cstdint>

#include "dcn_types.h"

namespace vsqe {
namespace dcn {
namespace cpu {

#if defined(VSQE_HAVE_AVX512_TU)

// Columns of tap k of deformable group g (all channels of the group) for output pixels
// [p0, p1) of image n, exactly like the scalar path: cols[c*K + k, p - c0], row length L
// ([p0, p1) lies inside [c0, c0 + L), so several calls can fill bands of one column matrix).
// One function per supported (input, offset) dtype pair; mask has the offset's dtype and cols
// the input's.
void im2col_avx512_f32(const float* input, const float* offset, const float* mask, float* cols,
                       int64_t c0, int64_t L, const Shape& s, int n, int64_t p0, int64_t p1, int g, int k);
void im2col_avx512_bf16(const bf16* input, const bf16* offset, const bf16* mask, bf16* cols,
                        int64_t c0, int64_t L, const Shape& s, int n, int64_t p0, int64_t p1, int g, int k);
void im2col_avx512_bf16_f32off(const bf16* input, const float* offset, const float* mask,
                               bf16* cols, int64_t c0, int64_t L, const Shape& s, int n,
                               int64_t p0, int64_t p1, int g, int k);

// Weight packed for the GEMM micro-kernel: per conv group, per tile of 8 output channels,
// [CK/groups][8] fp32 (zero rows pad the last tile); bias likewise [tiles][8] (zeros if none).
// For an NHWC output the weight is also held transposed, per conv group [ckg][ctp] with the
// group's output channels padded to ctp (a multiple of 16), and the bias as [groups][ctp]
// (wt / bt are null when no NHWC output is asked for).
struct PackedWeight {
  const float* w;
  const float* b;
  int cout, groups, ckg, tiles_per_group;  // ckg = (C/groups)*K
  bool stream_out;  // write the output with streaming (cache-bypassing) stores
  const float* wt = nullptr;
  const float* bt = nullptr;
  int ctp = 0;
};

// Fused forward of output pixels [p0, p1) of image n: fp32 columns into `scratch`
// (C*K*(p1-p0) floats), then out[n, :, p0:p1] = W @ cols + b.
void forward_block_avx512_f32(const float* input, const float* offset, const float* mask,
                              const PackedWeight& w, float* out, const Shape& s, int n,
                              int64_t p0, int64_t p1, float* scratch);
void forward_block_avx512_bf16(const bf16* input, const bf16* offset, const bf16* mask,
                               const PackedWeight& w, bf16* out, const Shape& s, int n,
                               int64_t p0, int64_t p1, float* scratch);
void forward_block_avx512_bf16_f32off(const bf16* input, const float* offset, const float* mask,
                                      const PackedWeight& w, bf16* out, const Shape& s, int n,
                                      int64_t p0, int64_t p1, float* scratch);

// Fused forward of output pixels [p0, p1) of image n with offsets and mask LOGITS read from one
// NHWC buffer om[n, p, c] of om_channels channels (offsets c < 2GK, logits at [2GK, 3GK)):
// the block's values go transposed, sigmoid applied, to om_scratch (3GK*(p1-p0) floats), then
// as forward_block_*; out is NCHW, or NHWC (out[n, p, co]) with out_nhwc and a w with wt/bt.
// input and out: f32 or bf16 (the same); om: f32 or bf16.
void forward_block_om_avx512(DType input_dtype, const void* input, DType om_dtype, const void* om,
                             int om_channels, const PackedWeight& w, void* out, bool out_nhwc,
                             const Shape& s, int n, int64_t p0, int64_t p1, float* scratch,
                             float* om_scratch);

#endif

}  // namespace cpu
}  // namespace dcn
}  // namespace vsqe
