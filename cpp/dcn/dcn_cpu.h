// CPU kernels of the modulated deformable convolution, on plain buffers.
//
// Two ways to run the forward:
//   * forward(): fused and native. Each thread takes a block of output pixels, samples its
//     columns into a small buffer that stays in L2 (deformable im2col) and multiplies them by
//     the weight right away (an AVX-512 fp32 GEMM), writing the output block. One call per
//     frame, no column matrix in memory. Needs AVX-512 (has_avx512()).
//   * im2col() + a GEMM done by the caller (torch's matmul): the portable path (any CPU, f64),
//     also used by the backward.
// The backward keeps that split: the caller forms grad_cols = weight^T @ grad_out and
// grad_weight = grad_out @ cols^T; col2im() turns grad_cols into the gradients of input, offset
// and mask.
//
// All buffers are dense and contiguous, laid out as described in dcn_types.h. im2col/col2im
// work on one image `n` and one range of output pixels [p0, p1) (p = ho*Wo + wo) per call, so
// the caller can keep the columns small and bound memory at large frame sizes.
#pragma once

#include <cstdint>

#include "dcn_types.h"

namespace vsqe {
namespace dcn {
namespace cpu {

// Fused forward: out[N, Cout, Ho, Wo] = deform_conv(input, offset, mask, weight) + bias.
//   weight [Cout, (C/groups)*K] fp32; bias [Cout] fp32 or nullptr; out has the input's dtype.
// (input, offset) dtypes: (f32, f32), (bf16, bf16), (bf16, f32); mask has the offset's dtype.
// Sampling and GEMM accumulate in fp32; bf16 output is rounded once at the end.
// block_px: output pixels per task (0 = automatic, about 256 KiB of columns).
// Throws std::runtime_error when the CPU lacks AVX-512.
void forward(DType input_dtype, const void* input, DType offset_dtype, const void* offset,
             const void* mask, const float* weight, const float* bias, void* out,
             const Shape& s, int cout, int groups, int block_px, int nthreads);

// Fused forward with offsets and modulation LOGITS in one channels-last tensor, as a conv that
// predicts them writes it (om [N, Ho, Wo, om_channels]: offsets at channels [0, 2*G*K) in the
// offset layout above, mask logits at [2*G*K, 3*G*K), mask = sigmoid(logit); further channels
// are ignored). Saves the NHWC->NCHW reorders and the separate sigmoid pass of the unfused
// path. out: [N, Cout, Ho, Wo], or [N, Ho, Wo, Cout] with out_nhwc. input/out: f32 or bf16
// (the same); om: f32 or bf16. Same sampling and accumulation as forward(); the sigmoid is a
// vector e^x within about 2 ulp of libm's.
void forward_om(DType input_dtype, const void* input, DType om_dtype, const void* om, int om_channels,
                const float* weight, const float* bias, void* out, bool out_nhwc, const Shape& s,
                int cout, int groups, int block_px, int nthreads);

// cols[c*K + k, p - p0] = mask * bilinear(input[n, c], y, x)  for p in [p0, p1).
// (input, offset) dtypes: (f32, f32), (bf16, bf16), (bf16, f32), (f64, f64).
// `mask` has the offset's dtype; `cols` has the input's dtype.
// simd=false forces the portable scalar path (which is the shared dcn_math.h code); with
// simd=true the AVX-512 path is used where the CPU has it and the dtypes allow.
void im2col(DType input_dtype, const void* input, DType offset_dtype, const void* offset,
            const void* mask, void* cols, const Shape& s, int n, int64_t p0, int64_t p1,
            int nthreads, bool simd);

// Backward of im2col for output pixels [p0, p1) of image n; every buffer has dtype f32 or f64.
//   grad_cols   [C*K, p1 - p0]        gradient of the loss w.r.t. the columns
//   grad_input  [N, C, H, W]          ACCUMULATED into (zero it once before the first range)
//   grad_offset [N, 2*G*K, Ho, Wo]    pixels [p0, p1) of image n are written
//   grad_mask   [N, G*K, Ho, Wo]      pixels [p0, p1) of image n are written
// Deterministic: no two threads ever add into the same element.
void col2im(DType dtype, const void* input, const void* offset, const void* mask,
            const void* grad_cols, void* grad_input, void* grad_offset, void* grad_mask,
            const Shape& s, int n, int64_t p0, int64_t p1, int nthreads);

// Whether this CPU runs the AVX-512 paths (fused forward, vector im2col).
bool has_avx512();

}  // namespace cpu
}  // namespace dcn
}  // namespace vsqe
