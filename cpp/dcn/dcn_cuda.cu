// CUDA deformable im2col / col2im. The per-sample math is dcn_math.h, the same code the CPU
// kernels run; this file only maps threads onto (image, group, tap, pixel).
#include <cuda_fp16.h>

#include <cstdint>

#include "dcn_cuda.h"
#include "dcn_math.h"

namespace vsqe {
namespace dcn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Grid size for a grid-stride loop over `total` items: enough blocks to fill any current GPU,
// capped so a 1080p batch does not launch millions of blocks.
inline unsigned blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return unsigned(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

// Sampling coordinates of item (n, g, k, p) and the offset/mask element indices it reads.
struct Item {
  int64_t n;
  int g, k, ho, wo;
  int64_t oy_at, m_at;  // element index of dy in offset and of the mask value
};

__device__ inline Item decode(int64_t t, const Shape& s, int n0) {
  const int64_t P = int64_t(s.Ho) * s.Wo;
  const int K = s.K();
  Item it;
  const int64_t p = t % P;
  int64_t r = t / P;
  it.k = int(r % K);
  r /= K;
  it.g = int(r % s.G);
  it.n = n0 + r / s.G;
  it.ho = int(p / s.Wo);
  it.wo = int(p % s.Wo);
  it.oy_at = ((it.n * s.G + it.g) * 2 * K + 2 * it.k) * P + p;
  it.m_at = ((it.n * s.G + it.g) * K + it.k) * P + p;
  return it;
}

template <class A, class TO>
__device__ inline Taps<A> taps_of(const Item& it, const TO* offset, const Shape& s) {
  const int64_t P = int64_t(s.Ho) * s.Wo;
  return offset_taps<A>(s, it.ho, it.wo, it.k / s.kw, it.k % s.kw, A(to_acc(offset[it.oy_at])),
                        A(to_acc(offset[it.oy_at + P])));
}

// One thread per (image, deformable group, tap, output pixel); it fills that column entry for
// every channel of the group, reusing the bilinear taps.
template <class TI, class TO>
__global__ void im2col_kernel(const TI* __restrict__ input, const TO* __restrict__ offset,
                              const TO* __restrict__ mask, TI* __restrict__ cols, Shape s, int n0,
                              int nb) {
  using A = acc_t<TI>;
  const int64_t P = int64_t(s.Ho) * s.Wo, HW = int64_t(s.H) * s.W;
  const int K = s.K(), cpg = s.C / s.G;
  const int64_t total = int64_t(nb) * s.G * K * P;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const Item it = decode(t, s, n0);
    const Taps<A> taps = taps_of<A>(it, offset, s);
    const A mv = A(to_acc(mask[it.m_at]));
    const int64_t p = t % P;
    for (int cc = 0; cc < cpg; ++cc) {
      const int c = it.g * cpg + cc;
      const A v = sample(input + (it.n * s.C + c) * HW, taps) * mv;
      store_acc(cols + ((it.n - n0) * s.C * K + int64_t(c) * K + it.k) * P + p, v);
    }
  }
}

template <class T>
struct AtomicAdd {
  T* plane;
  __device__ void operator()(int i, T v) const { atomicAdd(plane + i, v); }
};

// One thread per (image, deformable group, tap, output pixel): the offset and mask gradients of
// that item (sums over the group's channels) and its scatter into the input gradient.
template <class T>
__global__ void col2im_kernel(const T* __restrict__ input, const T* __restrict__ offset,
                              const T* __restrict__ mask, const T* __restrict__ grad_cols,
                              T* grad_input, T* __restrict__ grad_offset,
                              T* __restrict__ grad_mask, Shape s, int n0, int nb) {
  const int64_t P = int64_t(s.Ho) * s.Wo, HW = int64_t(s.H) * s.W;
  const int K = s.K(), cpg = s.C / s.G;
  const int64_t total = int64_t(nb) * s.G * K * P;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const Item it = decode(t, s, n0);
    const Taps<T> taps = taps_of<T>(it, offset, s);
    const T mv = mask[it.m_at];
    const int64_t p = t % P;
    T gy = 0, gx = 0, gm = 0;
    for (int cc = 0; cc < cpg; ++cc) {
      const int c = it.g * cpg + cc;
      const int64_t plane = (it.n * s.C + c) * HW;
      const T gc = grad_cols[((it.n - n0) * s.C * K + int64_t(c) * K + it.k) * P + p];
      T v, dy, dx;
      sample_and_coord_grad(input + plane, taps, &v, &dy, &dx);
      gm += gc * v;
      gy += gc * mv * dy;
      gx += gc * mv * dx;
      AtomicAdd<T> add{grad_input + plane};
      scatter(taps, gc * mv, add);
    }
    grad_offset[it.oy_at] = gy;
    grad_offset[it.oy_at + P] = gx;
    grad_mask[it.m_at] = gm;
  }
}

template <class TI, class TO>
cudaError_t launch_im2col(const void* input, const void* offset, const void* mask, void* cols,
                          const Shape& s, int n0, int nb, cudaStream_t stream) {
  const int64_t total = int64_t(nb) * s.G * s.K() * s.Ho * s.Wo;
  im2col_kernel<TI, TO><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const TI*>(input), static_cast<const TO*>(offset),
      static_cast<const TO*>(mask), static_cast<TI*>(cols), s, n0, nb);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_col2im(const void* input, const void* offset, const void* mask,
                          const void* grad_cols, void* grad_input, void* grad_offset,
                          void* grad_mask, const Shape& s, int n0, int nb, cudaStream_t stream) {
  const int64_t total = int64_t(nb) * s.G * s.K() * s.Ho * s.Wo;
  col2im_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(input), static_cast<const T*>(offset), static_cast<const T*>(mask),
      static_cast<const T*>(grad_cols), static_cast<T*>(grad_input),
      static_cast<T*>(grad_offset), static_cast<T*>(grad_mask), s, n0, nb);
  return cudaGetLastError();
}

bool valid(const Shape& s, int n0, int nb) {
  return s.N > 0 && s.C > 0 && s.H > 0 && s.W > 0 && s.G > 0 && s.C % s.G == 0 && s.kh > 0 &&
         s.kw > 0 && s.sh > 0 && s.sw > 0 && s.dh > 0 && s.dw > 0 && s.ph >= 0 && s.pw >= 0 &&
         s.Ho > 0 && s.Wo > 0 && n0 >= 0 && nb > 0 && n0 + nb <= s.N;
}

}  // namespace

cudaError_t im2col(DType input_dtype, const void* input, DType offset_dtype, const void* offset,
                   const void* mask, void* cols, const Shape& s, int n0, int nb,
                   cudaStream_t stream) {
  if (!valid(s, n0, nb)) return cudaErrorInvalidValue;
  using D = DType;
  const D di = input_dtype, dof = offset_dtype;
  if (di == D::f32 && dof == D::f32)
    return launch_im2col<float, float>(input, offset, mask, cols, s, n0, nb, stream);
  if (di == D::f16 && dof == D::f16)
    return launch_im2col<__half, __half>(input, offset, mask, cols, s, n0, nb, stream);
  if (di == D::f16 && dof == D::f32)
    return launch_im2col<__half, float>(input, offset, mask, cols, s, n0, nb, stream);
  if (di == D::bf16 && dof == D::bf16)
    return launch_im2col<bf16, bf16>(input, offset, mask, cols, s, n0, nb, stream);
  if (di == D::bf16 && dof == D::f32)
    return launch_im2col<bf16, float>(input, offset, mask, cols, s, n0, nb, stream);
  if (di == D::f64 && dof == D::f64)
    return launch_im2col<double, double>(input, offset, mask, cols, s, n0, nb, stream);
  return cudaErrorInvalidValue;
}

cudaError_t col2im(DType dtype, const void* input, const void* offset, const void* mask,
                   const void* grad_cols, void* grad_input, void* grad_offset, void* grad_mask,
                   const Shape& s, int n0, int nb, cudaStream_t stream) {
  if (!valid(s, n0, nb)) return cudaErrorInvalidValue;
  if (dtype == DType::f32)
    return launch_col2im<float>(input, offset, mask, grad_cols, grad_input, grad_offset,
                                grad_mask, s, n0, nb, stream);
  if (dtype == DType::f64)
    return launch_col2im<double>(input, offset, mask, grad_cols, grad_input, grad_offset,
                                 grad_mask, s, n0, nb, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace dcn
}  // namespace vsqe
