// Per-sample math of the modulated deformable convolution (DCNv2), shared by host and device.
//
// Everything here is written once and compiled both by the host compiler (CPU kernels) and by
// nvcc (CUDA kernels), so the CPU tests exercise the exact arithmetic the GPU runs.
//
// Sampling rule (identical to torchvision.ops.deform_conv2d and mmcv ModulatedDeformConv2d):
// a sample at (y, x) contributes only if -1 < y < H and -1 < x < W; each of its four
// bilinear corners contributes only if it lies inside the image (zero padding).
#pragma once

#include <cstdint>

#include "dcn_types.h"  // VSQE_HOST_DEVICE

#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace vsqe {
namespace dcn {

// Accumulation type: fp32 for every 16/32-bit storage type, fp64 for double.
template <class T>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};
template <class T>
using acc_t = typename acc_type<T>::type;

// ---- scalar conversions -------------------------------------------------------------------

VSQE_HOST_DEVICE inline float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

VSQE_HOST_DEVICE inline uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

VSQE_HOST_DEVICE inline float to_acc(float v) { return v; }
VSQE_HOST_DEVICE inline double to_acc(double v) { return v; }
VSQE_HOST_DEVICE inline float to_acc(bf16 v) { return bits_to_float(uint32_t(v.bits) << 16); }

// Round to nearest even, as torch does; NaN stays a (quiet) NaN.
VSQE_HOST_DEVICE inline bf16 float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x0040u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

VSQE_HOST_DEVICE inline void store_acc(float* p, float v) { *p = v; }
VSQE_HOST_DEVICE inline void store_acc(double* p, double v) { *p = v; }
VSQE_HOST_DEVICE inline void store_acc(bf16* p, float v) { *p = float_to_bf16(v); }

#if defined(__CUDACC__)
VSQE_HOST_DEVICE inline float to_acc(__half v) { return __half2float(v); }
VSQE_HOST_DEVICE inline void store_acc(__half* p, float v) { *p = __float2half_rn(v); }
#endif

VSQE_HOST_DEVICE inline float floor_(float v) {
#if defined(__CUDA_ARCH__)
  return floorf(v);
#else
  return std::floor(v);
#endif
}
VSQE_HOST_DEVICE inline double floor_(double v) {
#if defined(__CUDA_ARCH__)
  return ::floor(v);
#else
  return std::floor(v);
#endif
}

// ---- bilinear taps ------------------------------------------------------------------------

// The four corners of one sample and their bilinear weights. Corners that fall outside the
// image (and all corners of a sample outside (-1, H) x (-1, W)) get weight 0 and valid=false,
// so callers never read or write them.
// Corner order: 0 = (y0, x0), 1 = (y0, x0+1), 2 = (y0+1, x0), 3 = (y0+1, x0+1).
template <class A>
struct Taps {
  int idx[4];      // y*W + x of each corner inside one H x W plane
  A w[4];          // bilinear weight of each corner (0 when invalid)
  bool valid[4];   // corner inside the image
  A ly, lx;        // fractional position inside the cell (for coordinate gradients)
  bool inside;     // sample inside (-1, H) x (-1, W)
};

template <class A>
VSQE_HOST_DEVICE inline Taps<A> bilinear_taps(A y, A x, int H, int W) {
  Taps<A> t;
  // Every comparison with NaN is false, so NaN coordinates count as outside.
  t.inside = (y > A(-1)) && (y < A(H)) && (x > A(-1)) && (x < A(W));
  if (!t.inside) {
    for (int i = 0; i < 4; ++i) {
      t.idx[i] = 0;
      t.w[i] = A(0);
      t.valid[i] = false;
    }
    t.ly = t.lx = A(0);
    return t;
  }
  const A yf = floor_(y), xf = floor_(x);
  const int y0 = int(yf), x0 = int(xf);
  const int y1 = y0 + 1, x1 = x0 + 1;
  t.ly = y - yf;
  t.lx = x - xf;
  const A hy = A(1) - t.ly, hx = A(1) - t.lx;
  const bool vy0 = y0 >= 0, vy1 = y1 <= H - 1, vx0 = x0 >= 0, vx1 = x1 <= W - 1;
  t.valid[0] = vy0 && vx0;
  t.valid[1] = vy0 && vx1;
  t.valid[2] = vy1 && vx0;
  t.valid[3] = vy1 && vx1;
  t.idx[0] = y0 * W + x0;
  t.idx[1] = t.idx[0] + 1;
  t.idx[2] = t.idx[0] + W;
  t.idx[3] = t.idx[2] + 1;
  t.w[0] = t.valid[0] ? hy * hx : A(0);
  t.w[1] = t.valid[1] ? hy * t.lx : A(0);
  t.w[2] = t.valid[2] ? t.ly * hx : A(0);
  t.w[3] = t.valid[3] ? t.ly * t.lx : A(0);
  return t;
}

// Corner values of one plane (0 for invalid corners).
template <class T, class A>
VSQE_HOST_DEVICE inline void corner_values(const T* plane, const Taps<A>& t, A v[4]) {
  for (int i = 0; i < 4; ++i) v[i] = t.valid[i] ? A(to_acc(plane[t.idx[i]])) : A(0);
}

// Bilinear sample of one H x W plane.
template <class T, class A>
VSQE_HOST_DEVICE inline A sample(const T* plane, const Taps<A>& t) {
  A v[4];
  corner_values(plane, t, v);
  return t.w[0] * v[0] + t.w[1] * v[1] + t.w[2] * v[2] + t.w[3] * v[3];
}

// Sample value and its derivatives with respect to the sample coordinates y and x.
// Outside (-1, H) x (-1, W) the sample is identically 0, so are the derivatives.
template <class T, class A>
VSQE_HOST_DEVICE inline void sample_and_coord_grad(const T* plane, const Taps<A>& t, A* val,
                                                   A* d_dy, A* d_dx) {
  A v[4];
  corner_values(plane, t, v);
  *val = t.w[0] * v[0] + t.w[1] * v[1] + t.w[2] * v[2] + t.w[3] * v[3];
  if (!t.inside) {
    *d_dy = *d_dx = A(0);
    return;
  }
  *d_dy = (A(1) - t.lx) * (v[2] - v[0]) + t.lx * (v[3] - v[1]);
  *d_dx = (A(1) - t.ly) * (v[1] - v[0]) + t.ly * (v[3] - v[2]);
}

// Gradient of a sample with respect to the input plane: adds g * w_i to each valid corner.
// `add(index, value)` does the accumulation (plain += on the CPU, atomicAdd on the GPU).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class A, class Add>
VSQE_HOST_DEVICE inline void scatter(const Taps<A>& t, A g, Add& add) {
  for (int i = 0; i < 4; ++i)
    if (t.valid[i]) add(t.idx[i], g * t.w[i]);
}

// Sampling coordinate (along one axis) of kernel tap `tap` for output position `o`, before
// the learned offset is added.
VSQE_HOST_DEVICE inline int base_pos(int o, int tap, int stride, int pad, int dil) {
  return o * stride - pad + tap * dil;
}

// Bilinear taps of kernel tap (i, j) for output pixel (ho, wo), displaced by its learned
// offset (dy, dx): the one sample position rule of every pass (CPU and CUDA, forward and
// backward), so they cannot drift apart.
template <class A>
VSQE_HOST_DEVICE inline Taps<A> offset_taps(const Shape& s, int ho, int wo, int i, int j, A dy, A dx) {
  const A y = A(base_pos(ho, i, s.sh, s.ph, s.dh)) + dy;
  const A x = A(base_pos(wo, j, s.sw, s.pw, s.dw)) + dx;
  return bilinear_taps<A>(y, x, s.H, s.W);
}

}  // namespace dcn
}  // namespace vsqe
