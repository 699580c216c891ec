// CPU deformable im2col / col2im and the fused forward. The per-sample math is dcn_math.h
// (shared with CUDA); this file walks the tensors, splits the work over threads and picks the
// vector path (dcn_cpu_avx512.cpp) when the CPU has it.
#include "dcn_cpu.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "dcn_cpu_simd.h"
#include "dcn_math.h"
#include "thread_pool.h"

namespace vsqe {
namespace dcn {
namespace cpu {
namespace {

// Element offsets into the dense NCHW buffers of one problem.
struct Layout {
  int64_t HW, P, L;  // input plane, output plane, pixels in the range [p0, p1)
  int K, cpg;
  Layout(const Shape& s, int64_t p0, int64_t p1)
      : HW(int64_t(s.H) * s.W), P(int64_t(s.Ho) * s.Wo), L(p1 - p0), K(s.K()), cpg(s.C / s.G) {}
  // start of the dy plane of tap k, group g (dx follows P elements later)
  int64_t off(const Shape& s, int n, int g, int k) const {
    return ((int64_t(n) * s.G + g) * 2 * K + 2 * k) * P;
  }
  int64_t msk(const Shape& s, int n, int g, int k) const {
    return ((int64_t(n) * s.G + g) * K + k) * P;
  }
  int64_t plane(const Shape& s, int n, int c) const { return (int64_t(n) * s.C + c) * HW; }
};

// Calls fn(ho, wo_begin, wo_end, p) for each row segment of the pixel range [p0, p1), in
// memory order; p is the flat index of (ho, wo_begin).
template <class Fn>
void for_segments(const Shape& s, int64_t p0, int64_t p1, Fn fn) {
  for (int64_t p = p0; p < p1;) {
    const int ho = int(p / s.Wo), wb = int(p % s.Wo);
    const int we = int(std::min<int64_t>(s.Wo, wb + (p1 - p)));
    fn(ho, wb, we, p);
    p += we - wb;
  }
}

// Scalar im2col of tap k of deformable group g for pixels [a, b) of the column block
// [p0, p1): cols[c*K + k, p - p0].
template <class TI, class TO>
void im2col_tap(const TI* input, const TO* offset, const TO* mask, TI* cols, const Shape& s,
                int n, int64_t p0, int64_t p1, int64_t a, int64_t b, int g, int k) {
  using A = acc_t<TI>;
  const Layout lo(s, p0, p1);
  const int i = k / s.kw, j = k % s.kw;
  const TO* oy = offset + lo.off(s, n, g, k);
  const TO* ox = oy + lo.P;
  const TO* m = mask + lo.msk(s, n, g, k);
  for_segments(s, a, b, [&](int ho, int wb, int we, int64_t p) {
    for (int wo = wb; wo < we; ++wo) {
      const int64_t q = p + (wo - wb);
      const Taps<A> t = offset_taps<A>(s, ho, wo, i, j, A(to_acc(oy[q])), A(to_acc(ox[q])));
      const A mv = A(to_acc(m[q]));
      for (int cc = 0; cc < lo.cpg; ++cc) {
        const int c = g * lo.cpg + cc;
        const A v = sample(input + lo.plane(s, n, c), t) * mv;
        store_acc(cols + int64_t(c * lo.K + k) * lo.L + (q - p0), v);
      }
    }
  });
}

// Threads worth waking for `samples` bilinear samples: waking a sleeping worker costs
// microseconds (much more on a loaded machine), so tiny problems run on the calling thread.
int threads_for(int64_t samples, int nthreads) {
  constexpr int64_t kSamplesPerThread = 32768;
  return int(std::max<int64_t>(1, std::min<int64_t>(nthreads, samples / kSamplesPerThread)));
}

bool cpu_has_avx512() {
#if defined(VSQE_HAVE_AVX512_TU) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

// Tasks are (deformable group, tap, band of pixels): each writes disjoint column ranges and
// walks long contiguous streams. Bands are only cut when there are too few (group, tap) pairs
// to keep every thread busy (e.g. one group and a 1x1 kernel).
template <class Fn>
void for_taps(const Shape& s, int64_t p0, int64_t p1, int nthreads, Fn fn) {
  const int gk = s.G * s.K();
  const int64_t npx = p1 - p0;
  nthreads = threads_for(npx * s.C * s.K(), nthreads);
  int64_t bands = 1;
  if (nthreads > 1 && gk < 4 * nthreads) bands = (4 * nthreads + gk - 1) / gk;
  bands = std::max<int64_t>(1, std::min<int64_t>(bands, npx / 64));
  parallel_for(nthreads, int(gk * bands), [&](int t) {
    const int64_t band = t % bands;
    const int gkt = int(t / bands);
    fn(gkt / s.K(), gkt % s.K(), p0 + npx * band / bands, p0 + npx * (band + 1) / bands);
  });
}

template <class TI, class TO>
void im2col_typed(const void* input, const void* offset, const void* mask, void* cols,
                  const Shape& s, int n, int64_t p0, int64_t p1, int nthreads, bool simd) {
  auto in = static_cast<const TI*>(input);
  auto off = static_cast<const TO*>(offset);
  auto msk = static_cast<const TO*>(mask);
  auto out = static_cast<TI*>(cols);
#if defined(VSQE_HAVE_AVX512_TU)
  // The bf16 gather needs planes of at least two elements (see dcn_cpu_avx512.cpp).
  if (simd && has_avx512() && int64_t(s.H) * s.W >= 2) {
    const int64_t L = p1 - p0;
    if constexpr (std::is_same_v<TI, float> && std::is_same_v<TO, float>) {
      for_taps(s, p0, p1, nthreads, [&](int g, int k, int64_t a, int64_t b) {
        im2col_avx512_f32(in, off, msk, out, p0, L, s, n, a, b, g, k);
      });
      return;
    } else if constexpr (std::is_same_v<TI, bf16> && std::is_same_v<TO, bf16>) {
      for_taps(s, p0, p1, nthreads, [&](int g, int k, int64_t a, int64_t b) {
        im2col_avx512_bf16(in, off, msk, out, p0, L, s, n, a, b, g, k);
      });
      return;
    } else if constexpr (std::is_same_v<TI, bf16> && std::is_same_v<TO, float>) {
      for_taps(s, p0, p1, nthreads, [&](int g, int k, int64_t a, int64_t b) {
        im2col_avx512_bf16_f32off(in, off, msk, out, p0, L, s, n, a, b, g, k);
      });
      return;
    }
  }
#else
  (void)simd;
#endif
  for_taps(s, p0, p1, nthreads, [&](int g, int k, int64_t a, int64_t b) {
    im2col_tap<TI, TO>(in, off, msk, out, s, n, p0, p1, a, b, g, k);
  });
}

// Backward, pass 1: gradients of offset and mask of tap k, group g, pixels [p0, p1).
// d out/d dy = sum over the group's channels of grad_col * mask * d sample/d y, and
// d out/d mask = sum of grad_col * sample.
template <class T>
void coord_grad_tap(const T* input, const T* offset, const T* mask, const T* gcols, T* goffset,
                    T* gmask, const Shape& s, int n, int64_t p0, int64_t p1, int64_t a,
                    int64_t b, int g, int k) {
  const Layout lo(s, p0, p1);
  const int i = k / s.kw, j = k % s.kw;
  const int64_t oy_at = lo.off(s, n, g, k), m_at = lo.msk(s, n, g, k);
  for_segments(s, a, b, [&](int ho, int wb, int we, int64_t p) {
    for (int wo = wb; wo < we; ++wo) {
      const int64_t q = p + (wo - wb);
      const Taps<T> t = offset_taps<T>(s, ho, wo, i, j, offset[oy_at + q], offset[oy_at + lo.P + q]);
      const T mv = mask[m_at + q];
      T gy = 0, gx = 0, gm = 0;
      for (int cc = 0; cc < lo.cpg; ++cc) {
        const int c = g * lo.cpg + cc;
        const T gc = gcols[int64_t(c * lo.K + k) * lo.L + (q - p0)];
        T v, dy, dx;
        sample_and_coord_grad(input + lo.plane(s, n, c), t, &v, &dy, &dx);
        gm += gc * v;
        gy += gc * mv * dy;
        gx += gc * mv * dx;
      }
      goffset[oy_at + q] = gy;
      goffset[oy_at + lo.P + q] = gx;
      gmask[m_at + q] = gm;
    }
  });
}

template <class T>
struct PlaneAdd {
  T* plane;
  void operator()(int i, T v) { plane[i] += v; }
};

// Backward, pass 2: scatter grad_col * mask into input channel c through the bilinear weights.
// One task owns one whole input plane, so the accumulation needs no atomics and its order is
// fixed (results are bit-reproducible for any thread count).
template <class T>
void input_grad_channel(const T* offset, const T* mask, const T* gcols, T* ginput,
                        const Shape& s, int n, int64_t p0, int64_t p1, int c) {
  const Layout lo(s, p0, p1);
  const int g = c / lo.cpg;
  PlaneAdd<T> add{ginput + lo.plane(s, n, c)};
  for (int k = 0; k < lo.K; ++k) {
    const int i = k / s.kw, j = k % s.kw;
    const int64_t oy_at = lo.off(s, n, g, k), m_at = lo.msk(s, n, g, k);
    const T* gc = gcols + int64_t(c * lo.K + k) * lo.L - p0;  // indexed by flat pixel q
    for_segments(s, p0, p1, [&](int ho, int wb, int we, int64_t p) {
      for (int wo = wb; wo < we; ++wo) {
        const int64_t q = p + (wo - wb);
        const Taps<T> t = offset_taps<T>(s, ho, wo, i, j, offset[oy_at + q], offset[oy_at + lo.P + q]);
        scatter(t, gc[q] * mask[m_at + q], add);
      }
    });
  }
}

template <class T>
void col2im_typed(const void* input, const void* offset, const void* mask, const void* grad_cols,
                  void* grad_input, void* grad_offset, void* grad_mask, const Shape& s, int n,
                  int64_t p0, int64_t p1, int nthreads) {
  auto in = static_cast<const T*>(input);
  auto off = static_cast<const T*>(offset);
  auto msk = static_cast<const T*>(mask);
  auto gc = static_cast<const T*>(grad_cols);
  auto gin = static_cast<T*>(grad_input);
  auto goff = static_cast<T*>(grad_offset);
  auto gmsk = static_cast<T*>(grad_mask);
  for_taps(s, p0, p1, nthreads, [&](int g, int k, int64_t a, int64_t b) {
    coord_grad_tap<T>(in, off, msk, gc, goff, gmsk, s, n, p0, p1, a, b, g, k);
  });
  parallel_for(threads_for((p1 - p0) * s.C * s.K(), nthreads), s.C, [&](int c) {
    input_grad_channel<T>(off, msk, gc, gin, s, n, p0, p1, c);
  });
}

void check(const Shape& s) {
  if (s.N <= 0 || s.C <= 0 || s.H <= 0 || s.W <= 0 || s.G <= 0 || s.C % s.G != 0 ||
      s.kh <= 0 || s.kw <= 0 || s.sh <= 0 || s.sw <= 0 || s.dh <= 0 || s.dw <= 0 || s.ph < 0 ||
      s.pw < 0 || s.Ho <= 0 || s.Wo <= 0)
    throw std::invalid_argument("dcn: invalid shape");
}

void check(const Shape& s, int n, int64_t p0, int64_t p1) {
  check(s);
  if (n < 0 || n >= s.N || p0 < 0 || p1 > int64_t(s.Ho) * s.Wo || p0 >= p1)
    throw std::invalid_argument("dcn: image or pixel range out of bounds");
}

[[noreturn]] void unsupported(const char* what) {
  throw std::invalid_argument(std::string("dcn: unsupported dtype combination for ") + what);
}

#if defined(VSQE_HAVE_AVX512_TU)
// Packs weight [cout, ckg] (per conv group) into [groups][tiles][ckg][8] and bias into
// [groups][tiles][8], zero-padding the last tile of each group.
void pack_weight(const float* weight, const float* bias, int cout, int groups, int ckg,
                 std::vector<float>& wbuf, std::vector<float>& bbuf, PackedWeight& pw) {
  const int coutg = cout / groups, tiles = (coutg + 7) / 8;
  wbuf.assign(size_t(groups) * tiles * ckg * 8, 0.f);
  bbuf.assign(size_t(groups) * tiles * 8, 0.f);
  for (int gi = 0; gi < groups; ++gi)
    for (int co = 0; co < coutg; ++co) {
      const int t = gi * tiles + co / 8, r = co % 8, row = gi * coutg + co;
      for (int k = 0; k < ckg; ++k) wbuf[(size_t(t) * ckg + k) * 8 + r] = weight[size_t(row) * ckg + k];
      if (bias) bbuf[size_t(t) * 8 + r] = bias[row];
    }
  pw = PackedWeight{wbuf.data(), bbuf.data(), cout, groups, ckg, tiles, false};
}

// The transposed copy for NHWC outputs: weight [groups][ckg][ctp], bias [groups][ctp], each
// group's output channels zero-padded to ctp = a multiple of 16.
void pack_weight_nhwc(const float* weight, const float* bias, int cout, int groups, int ckg,
                      std::vector<float>& wtbuf, std::vector<float>& btbuf, PackedWeight& pw) {
  const int coutg = cout / groups, ctp = (coutg + 15) / 16 * 16;
  wtbuf.assign(size_t(groups) * ckg * ctp, 0.f);
  btbuf.assign(size_t(groups) * ctp, 0.f);
  for (int gi = 0; gi < groups; ++gi)
    for (int co = 0; co < coutg; ++co) {
      const int row = gi * coutg + co;
      for (int k = 0; k < ckg; ++k) wtbuf[(size_t(gi) * ckg + k) * ctp + co] = weight[size_t(row) * ckg + k];
      if (bias) btbuf[size_t(gi) * ctp + co] = bias[row];
    }
  pw.wt = wtbuf.data();
  pw.bt = btbuf.data();
  pw.ctp = ctp;
}

// Per-thread buffers of the fused forwards, kept between calls (no page faults per block):
// Slot 0 the columns, slot 1 a block's transposed offsets and masks (forward_om).
template <int Slot>
float* scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// The fused forwards' work split: blocks of whole 48-pixel GEMM tiles sized so that
// `floats_per_px` fp32 values per pixel take ~256 KiB (they stay in L2), at least one tile;
// fn(n, p0, p1) per block, blocks spread over the threads.
template <class Fn>
void for_blocks(const Shape& s, int64_t floats_per_px, int block_px, int64_t work, int nthreads, Fn fn) {
  const int64_t P = int64_t(s.Ho) * s.Wo;
  int64_t bpx = block_px > 0 ? block_px : (256 * 1024 / 4) / floats_per_px;
  bpx = std::max<int64_t>(48, bpx / 48 * 48);
  bpx = std::min<int64_t>(bpx, P);
  const int64_t per_image = (P + bpx - 1) / bpx;
  const int64_t tasks = per_image * s.N;
  if (tasks > INT32_MAX) throw std::invalid_argument("dcn: too many blocks");
  parallel_for(threads_for(work, nthreads), int(tasks), [&](int t) {
    const int64_t p0 = (t % per_image) * bpx;
    fn(int(t / per_image), p0, std::min(P, p0 + bpx), bpx);
  });
}
#endif

}  // namespace

bool has_avx512() {
  static const bool yes = cpu_has_avx512();
  return yes;
}

void forward(DType input_dtype, const void* input, DType offset_dtype, const void* offset,
             const void* mask, const float* weight, const float* bias, void* out,
             const Shape& s, int cout, int groups, int block_px, int nthreads) {
  check(s);
  if (groups <= 0 || cout <= 0 || s.C % groups != 0 || cout % groups != 0)
    throw std::invalid_argument("dcn: invalid groups / output channels");
#if defined(VSQE_HAVE_AVX512_TU)
  if (!has_avx512() || int64_t(s.H) * s.W < 2)
    throw std::runtime_error("dcn: the fused CPU forward needs AVX-512 (use im2col + GEMM)");
  const int ck = s.C * s.K(), ckg = ck / groups;
  std::vector<float> wbuf, bbuf;
  PackedWeight pw;
  pack_weight(weight, bias, cout, groups, ckg, wbuf, bbuf, pw);

  const int64_t P = int64_t(s.Ho) * s.Wo;
  // Outputs larger than a typical L3 share go around the cache (see store_out).
  pw.stream_out = int64_t(s.N) * cout * P * 4 > (int64_t(16) << 20);
  const DType f32 = DType::f32, b16 = DType::bf16;
  for_blocks(s, ck, block_px, P * s.N * ck, nthreads, [&](int n, int64_t p0, int64_t p1, int64_t bpx) {
    float* buf = scratch<0>(size_t(ck) * bpx);
    if (input_dtype == f32 && offset_dtype == f32)
      forward_block_avx512_f32(static_cast<const float*>(input), static_cast<const float*>(offset),
                               static_cast<const float*>(mask), pw, static_cast<float*>(out), s, n,
                               p0, p1, buf);
    else if (input_dtype == b16 && offset_dtype == b16)
      forward_block_avx512_bf16(static_cast<const bf16*>(input), static_cast<const bf16*>(offset),
                                static_cast<const bf16*>(mask), pw, static_cast<bf16*>(out), s, n,
                                p0, p1, buf);
    else if (input_dtype == b16 && offset_dtype == f32)
      forward_block_avx512_bf16_f32off(static_cast<const bf16*>(input),
                                       static_cast<const float*>(offset),
                                       static_cast<const float*>(mask), pw,
                                       static_cast<bf16*>(out), s, n, p0, p1, buf);
    else
      unsupported("forward");
  });
#else
  (void)input_dtype, (void)input, (void)offset_dtype, (void)offset, (void)mask, (void)weight;
  (void)bias, (void)out, (void)block_px, (void)nthreads;
  throw std::runtime_error("dcn: the fused CPU forward was not built for this CPU");
#endif
}

void forward_om(DType input_dtype, const void* input, DType om_dtype, const void* om, int om_channels,
                const float* weight, const float* bias, void* out, bool out_nhwc, const Shape& s,
                int cout, int groups, int block_px, int nthreads) {
  check(s);
  if (groups <= 0 || cout <= 0 || s.C % groups != 0 || cout % groups != 0)
    throw std::invalid_argument("dcn: invalid groups / output channels");
  const int64_t GK = int64_t(s.G) * s.K();
  if (om_channels < 3 * GK) throw std::invalid_argument("dcn: offset+mask tensor has fewer than 3*G*K channels");
  const bool dtypes_ok = (input_dtype == DType::f32 || input_dtype == DType::bf16) &&
                         (om_dtype == DType::f32 || om_dtype == DType::bf16);
  if (!dtypes_ok) unsupported("forward_om");
#if defined(VSQE_HAVE_AVX512_TU)
  if (!has_avx512() || int64_t(s.H) * s.W < 2 || int64_t(s.Ho) * s.Wo < 2)
    throw std::runtime_error("dcn: the fused CPU forward needs AVX-512 (use im2col + GEMM)");
  const int ck = s.C * s.K(), ckg = ck / groups;
  std::vector<float> wbuf, bbuf, wtbuf, btbuf;
  PackedWeight pw;
  pack_weight(weight, bias, cout, groups, ckg, wbuf, bbuf, pw);
  if (out_nhwc) pack_weight_nhwc(weight, bias, cout, groups, ckg, wtbuf, btbuf, pw);
  const int64_t P = int64_t(s.Ho) * s.Wo;
  pw.stream_out = !out_nhwc && int64_t(s.N) * cout * P * 4 > (int64_t(16) << 20);
  // Columns and transposed offsets/masks together stay in L2.
  for_blocks(s, ck + 3 * GK, block_px, P * s.N * ck, nthreads, [&](int n, int64_t p0, int64_t p1, int64_t bpx) {
    forward_block_om_avx512(input_dtype, input, om_dtype, om, om_channels, pw, out, out_nhwc, s, n, p0,
                            p1, scratch<0>(size_t(ck) * bpx), scratch<1>(size_t(3 * GK) * bpx));
  });
#else
  (void)input, (void)om, (void)weight, (void)bias, (void)out, (void)out_nhwc, (void)block_px;
  (void)nthreads;
  throw std::runtime_error("dcn: the fused CPU forward was not built for this CPU");
#endif
}

void im2col(DType input_dtype, const void* input, DType offset_dtype, const void* offset,
            const void* mask, void* cols, const Shape& s, int n, int64_t p0, int64_t p1,
            int nthreads, bool simd) {
  check(s, n, p0, p1);
  const auto f32 = DType::f32, b16 = DType::bf16, f64 = DType::f64;
  if (input_dtype == f32 && offset_dtype == f32)
    im2col_typed<float, float>(input, offset, mask, cols, s, n, p0, p1, nthreads, simd);
  else if (input_dtype == b16 && offset_dtype == b16)
    im2col_typed<bf16, bf16>(input, offset, mask, cols, s, n, p0, p1, nthreads, simd);
  else if (input_dtype == b16 && offset_dtype == f32)
    im2col_typed<bf16, float>(input, offset, mask, cols, s, n, p0, p1, nthreads, simd);
  else if (input_dtype == f64 && offset_dtype == f64)
    im2col_typed<double, double>(input, offset, mask, cols, s, n, p0, p1, nthreads, simd);
  else
    unsupported("im2col");
}

void col2im(DType dtype, const void* input, const void* offset, const void* mask,
            const void* grad_cols, void* grad_input, void* grad_offset, void* grad_mask,
            const Shape& s, int n, int64_t p0, int64_t p1, int nthreads) {
  check(s, n, p0, p1);
  if (dtype == DType::f32)
    col2im_typed<float>(input, offset, mask, grad_cols, grad_input, grad_offset, grad_mask, s, n,
                        p0, p1, nthreads);
  else if (dtype == DType::f64)
    col2im_typed<double>(input, offset, mask, grad_cols, grad_input, grad_offset, grad_mask, s,
                         n, p0, p1, nthreads);
  else
    unsupported("col2im");
}

}  // namespace cpu
}  // namespace dcn
}  // namespace vsqe
