// CUDA kernels of the modulated deformable convolution, on raw device pointers.
//
// No torch here: the same launchers serve the torch op (via bindings_cuda.cpp) and the TensorRT
// plugin (plugins/). As on the CPU, only the deformable im2col and its backward are native; the
// GEMM with the weight belongs to the caller (cuBLAS through torch.matmul, or cublasLt in the
// plugin):
//   forward:  out[n] = weight[Cout, C*K] @ cols[n] (+ bias)
//   backward: grad_cols[n] = weight^T @ grad_out[n];  grad_weight = sum_n grad_out[n] @ cols[n]^T
//
// Layouts as in dcn_types.h, for a batch slice of `nb` images starting at image n0:
//   cols, grad_cols: [nb, C*K, Ho*Wo], dense.
// All launches are asynchronous on `stream`; the return value reports launch errors only.
#pragma once

#include <cuda_runtime_api.h>

#include "dcn_types.h"

namespace vsqe {
namespace dcn {
namespace cuda {

// cols[nl, c*K + k, ho*Wo + wo] = mask * bilinear(input[n0 + nl, c], y, x).
// (input, offset) dtypes: (f32, f32), (f16, f16), (f16, f32), (bf16, bf16), (bf16, f32),
// (f64, f64); mask has the offset's dtype, cols the input's. Accumulation in fp32 (fp64 for f64).
cudaError_t im2col(DType input_dtype, const void* input, DType offset_dtype, const void* offset,
                   const void* mask, void* cols, const Shape& s, int n0, int nb,
                   cudaStream_t stream);

// Backward of im2col for images [n0, n0 + nb); every buffer has dtype f32 or f64.
//   grad_input  [N, C, H, W]       ACCUMULATED with atomicAdd (zero it before the first slice)
//   grad_offset [N, 2*G*K, Ho, Wo] and grad_mask [N, G*K, Ho, Wo]: images [n0, n0+nb) written
cudaError_t col2im(DType dtype, const void* input, const void* offset, const void* mask,
                   const void* grad_cols, void* grad_input, void* grad_offset, void* grad_mask,
                   const Shape& s, int n0, int nb, cudaStream_t stream);

}  // namespace cuda
}  // namespace dcn
}  // namespace vsqe
