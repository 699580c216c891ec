// Plain description of one deformable-convolution problem, shared by the CPU and CUDA APIs
// (and by the TensorRT plugin). No torch, no CUDA: just sizes.
#pragma once

// __host__ __device__ under nvcc, nothing for the host compiler.
#if !defined(VSQE_HOST_DEVICE)
#if defined(__CUDACC__)
#define VSQE_HOST_DEVICE __host__ __device__
#else
#define VSQE_HOST_DEVICE
#endif
#endif

#include <cstdint>

namespace vsqe {
namespace dcn {

// bfloat16 held as its raw bits, so host code needs no bf16 type of its own.
struct bf16 {
  uint16_t bits;
};

// Tensors are dense and contiguous (NCHW):
//   input  [N, C, H, W]
//   offset [N, 2*G*kh*kw, Ho, Wo], channel g*2*K + 2*k + {0: dy, 1: dx}, k = i*kw + j
//   mask   [N, G*kh*kw, Ho, Wo],   channel g*K + k   (already passed through a sigmoid)
//   cols   [C*kh*kw, L] for a range of output pixels [p0, p0 + L), p = ho*Wo + wo:
//          row c*K + k, column p - p0 (the im2col matrix; output = weight[Cout, C*K] @ cols)
// The C input channels form G contiguous deformable groups of C/G channels each.
struct Shape {
  int N, C, H, W;  // input
  int G;           // deformable (offset) groups; C % G == 0
  int kh, kw;      // kernel size
  int sh, sw;      // stride
  int ph, pw;      // zero padding
  int dh, dw;      // dilation
  int Ho, Wo;      // output size (computed by the caller with the usual conv formula)

  VSQE_HOST_DEVICE int K() const { return kh * kw; }
  VSQE_HOST_DEVICE int channels_per_group() const { return C / G; }
};

// Storage types understood by the kernels (the Python side maps torch dtypes onto these).
enum class DType : int { f32 = 0, bf16 = 1, f64 = 2, f16 = 3 };

}  // namespace dcn
}  // namespace vsqe
