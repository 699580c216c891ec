// CUDA deformable im2col / col2im. The per-sample math is dcn_math.h, the same code the CPU
// kernels run; this file only maps threads onto (image, group, tap, pixel).
#include <cuda_fp16.h>

#include <climits>
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
// I is the index type: int32_t whenever every buffer's element count fits (index_fits), since
// 64-bit integer division is a long emulated sequence on GPUs and decode() does five of them per
// item: measured on an H100 (STDF's DCN, 416x240), the im2col ran at the same speed in fp32 and
// fp16, bound by this arithmetic rather than by memory.
template <class I>
struct Item {
  I n;
  int g, k, ho, wo;
  I p;
  I oy_at, m_at;  // element index of dy in offset and of the mask value
};

template <class I>
__device__ inline Item<I> decode(I t, const Shape& s, int n0) {
  const I P = I(s.Ho) * s.Wo;
  const int K = s.K();
  Item<I> it;
  it.p = t % P;
  I r = t / P;
  it.k = int(r % K);
  r /= K;
  it.g = int(r % s.G);
  it.n = n0 + r / s.G;
  it.ho = int(it.p / s.Wo);
  it.wo = int(it.p - I(it.ho) * s.Wo);
  it.oy_at = ((it.n * s.G + it.g) * 2 * K + 2 * it.k) * P + it.p;
  it.m_at = ((it.n * s.G + it.g) * K + it.k) * P + it.p;
  return it;
}

template <class A, class TO, class I>
__device__ inline Taps<A> taps_of(const Item<I>& it, const TO* offset, const Shape& s) {
  const I P = I(s.Ho) * s.Wo;
  return offset_taps<A>(s, it.ho, it.wo, it.k / s.kw, it.k % s.kw, A(to_acc(offset[it.oy_at])),
                        A(to_acc(offset[it.oy_at + P])));
}

// Whether every element index of this call (input, offset, mask, columns, input gradient) and
// the item count fit in int32_t.
inline bool index_fits(const Shape& s, int nb) {
  const int64_t P = int64_t(s.Ho) * s.Wo, HW = int64_t(s.H) * s.W, K = s.K();
  const int64_t most[] = {int64_t(s.N) * s.C * HW, int64_t(s.N) * s.G * 2 * K * P,
                          int64_t(nb) * s.C * K * P, int64_t(s.N) * s.G * K * P};
  int64_t m = 0;
  for (int64_t v : most) m = v > m ? v : m;
  // + one grid stride of headroom: the loop variable may step past `total` before it stops.
  return m + int64_t(65536) * kThreads < int64_t(INT32_MAX);
}

// One thread per (image, deformable group, tap, output pixel); it fills that column entry for
// every channel of the group, reusing the bilinear taps.
template <class TI, class TO, class I>
__global__ void im2col_kernel(const TI* __restrict__ input, const TO* __restrict__ offset,
                              const TO* __restrict__ mask, TI* __restrict__ cols, Shape s, int n0,
                              int nb) {
  using A = acc_t<TI>;
  const I P = I(s.Ho) * s.Wo, HW = I(s.H) * s.W;
  const int K = s.K(), cpg = s.C / s.G;
  const I total = I(nb) * s.G * K * P;
  for (I t = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); t < total;
       t += I(gridDim.x) * I(blockDim.x)) {
    const Item<I> it = decode<I>(t, s, n0);
    const Taps<A> taps = taps_of<A>(it, offset, s);
    const A mv = A(to_acc(mask[it.m_at]));
    for (int cc = 0; cc < cpg; ++cc) {
      const int c = it.g * cpg + cc;
      const A v = sample(input + (it.n * s.C + c) * HW, taps) * mv;
      store_acc(cols + ((it.n - n0) * s.C * K + I(c) * K + it.k) * P + it.p, v);
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
template <class T, class I>
__global__ void col2im_kernel(const T* __restrict__ input, const T* __restrict__ offset,
                              const T* __restrict__ mask, const T* __restrict__ grad_cols,
                              T* grad_input, T* __restrict__ grad_offset,
                              T* __restrict__ grad_mask, Shape s, int n0, int nb) {
  const I P = I(s.Ho) * s.Wo, HW = I(s.H) * s.W;
  const int K = s.K(), cpg = s.C / s.G;
  const I total = I(nb) * s.G * K * P;
  for (I t = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); t < total;
       t += I(gridDim.x) * I(blockDim.x)) {
    const Item<I> it = decode<I>(t, s, n0);
    const Taps<T> taps = taps_of<T>(it, offset, s);
    const T mv = mask[it.m_at];
    T gy = 0, gx = 0, gm = 0;
    for (int cc = 0; cc < cpg; ++cc) {
      const int c = it.g * cpg + cc;
      const I plane = (it.n * s.C + c) * HW;
      const T gc = grad_cols[((it.n - n0) * s.C * K + I(c) * K + it.k) * P + it.p];
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
  const auto* in = static_cast<const TI*>(input);
  const auto* off = static_cast<const TO*>(offset);
  const auto* msk = static_cast<const TO*>(mask);
  if (index_fits(s, nb))
    im2col_kernel<TI, TO, int32_t><<<blocks_for(total), kThreads, 0, stream>>>(
        in, off, msk, static_cast<TI*>(cols), s, n0, nb);
  else
    im2col_kernel<TI, TO, int64_t><<<blocks_for(total), kThreads, 0, stream>>>(
        in, off, msk, static_cast<TI*>(cols), s, n0, nb);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_col2im(const void* input, const void* offset, const void* mask,
                          const void* grad_cols, void* grad_input, void* grad_offset,
                          void* grad_mask, const Shape& s, int n0, int nb, cudaStream_t stream) {
  const int64_t total = int64_t(nb) * s.G * s.K() * s.Ho * s.Wo;
  const auto* in = static_cast<const T*>(input);
  const auto* off = static_cast<const T*>(offset);
  const auto* msk = static_cast<const T*>(mask);
  const auto* gc = static_cast<const T*>(grad_cols);
  auto* gi = static_cast<T*>(grad_input);
  auto* go = static_cast<T*>(grad_offset);
  auto* gm = static_cast<T*>(grad_mask);
  if (index_fits(s, nb))
    col2im_kernel<T, int32_t><<<blocks_for(total), kThreads, 0, stream>>>(in, off, msk, gc, gi, go, gm, s, n0, nb);
  else
    col2im_kernel<T, int64_t><<<blocks_for(total), kThreads, 0, stream>>>(in, off, msk, gc, gi, go, gm, s, n0, nb);
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
