// AVX-512 kernels: deformable im2col (16 output pixels at a time) and the fused forward
// (im2col of a pixel block into an L2-sized fp32 buffer, then an fp32 GEMM micro-kernel).
//
// The sampling follows the same rule and arithmetic order as the scalar path (dcn_math.h):
//   y = (ho*sh - ph + i*dh) + dy,  x = (wo*sw - pw + j*dw) + dx
//   sample inside (-1, H) x (-1, W); each corner read only if inside the image;
//   value = (hy*hx*v00 + hy*lx*v01 + ly*hx*v10 + ly*lx*v11) * mask
// Invalid corners are masked out of the gathers, so they are never read.
//
// Compiled with -mavx512f/bw/vl/dq -mfma; everything but the entry points has internal linkage
// and no shared inline code (standard library included) is used here: see dcn_cpu_simd.h.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "dcn_cpu_simd.h"

namespace vsqe {
namespace dcn {
namespace cpu {
namespace {

// How far ahead the offset and mask streams are prefetched (8 cache lines; tuned on 416x240).
constexpr int kPrefetchBytes = 512;

// Lane mask for the first `left` of 16 lanes.
inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1u);
}

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

inline __m512 load16(const bf16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }


// fp32 -> bf16, round to nearest even, NaN -> quiet NaN (same as float_to_bf16 in dcn_math.h).
inline void store16(bf16* p, __m512 v, __mmask16 m) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb);
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
}

// Output stores of the GEMM. With `stream`, full aligned vectors bypass the cache: a large output
// is written once and not read back here, and streaming saves the read-for-ownership traffic
// (measured 20-25 % faster at 832x480). Small outputs stay cached for the next layer.
inline void store_out(float* p, __m512 v, __mmask16 m, bool stream) {
  if (stream && m == __mmask16(0xffff) && (reinterpret_cast<uintptr_t>(p) & 63) == 0)
    _mm512_stream_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, m, v);
}

inline void store_out(bf16* p, __m512 v, __mmask16 m, bool stream) {
  if (stream && m == __mmask16(0xffff) && (reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    alignas(32) bf16 tmp[16];
    store16(tmp, v, m);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp)));
  } else {
    store16(p, v, m);
  }
}

// Plane values at idx for the lanes in m, 0 elsewhere.
inline __m512 gather(const float* plane, __m512i idx, __mmask16 m) {
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, plane, 4);
}

// bf16 has no 16-bit gather: gather the 32-bit word that ENDS at element idx and keep its high
// half, so no lane reads past the end of the plane; element 0 instead takes the low half of the
// word starting at it (this needs planes of at least 2 elements; the caller checks).
inline __m512 gather(const bf16* plane, __m512i idx, __mmask16 m) {
  const __m512i zero = _mm512_setzero_si512();
  const __mmask16 pos = _mm512_mask_cmpgt_epi32_mask(m, idx, zero);
  const __m512i at = _mm512_mask_sub_epi32(idx, pos, idx, _mm512_set1_epi32(1));
  const __m512i w = _mm512_mask_i32gather_epi32(zero, m, at, plane, 2);
  const __m512i lo = _mm512_slli_epi32(w, 16);
  const __m512i hi = _mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u)));
  return _mm512_castsi512_ps(_mm512_mask_blend_epi32(pos, lo, hi));
}

// Both horizontal neighbours of one row for 16 lanes: v0 = plane[idx], v1 = plane[idx + 1], for
// the lanes in m (0 elsewhere). One 64-bit load per lane fetches the pair, so this needs half
// the gathered elements of four 32-bit gathers; gathers are the bottleneck of the sampling.
inline void gather_pair(const float* plane, __m512i idx, __mmask16 m, __m512& v0, __m512& v1) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i a = _mm512_mask_i32gather_epi64(zero, __mmask8(m), _mm512_castsi512_si256(idx),
                                                plane, 4);
  const __m512i b = _mm512_mask_i32gather_epi64(zero, __mmask8(m >> 8),
                                                _mm512_extracti64x4_epi64(idx, 1), plane, 4);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  v0 = _mm512_castsi512_ps(_mm512_permutex2var_epi32(a, even, b));
  v1 = _mm512_castsi512_ps(_mm512_permutex2var_epi32(a, odd, b));
}

// bf16: a pair is one 32-bit word.
inline void gather_pair(const bf16* plane, __m512i idx, __mmask16 m, __m512& v0, __m512& v1) {
  const __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, plane, 2);
  v0 = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  v1 = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u))));
}

// Columns of tap k, deformable group g, output pixels [p0, p1) of image n into
// cols[c*K + k, p - c0] (row length L; [p0, p1) lies inside [c0, c0 + L)). The range is walked row by row in memory order,
// so every stream (dy, dx, mask, each channel's column row) is one contiguous run the hardware
// prefetcher can follow.
// off_n / mask_n are image n's offset and mask planes: channel ch, pixel p at
// [ch * cstride + p - porigin] (the dense NCHW tensors: cstride = Ho*Wo, porigin = 0; a block's
// transposed copy in the fused offset+mask forward: cstride = block length, porigin = block start).
template <class TI, class TO, class TC>
void tap_pixels(const TI* input, const TO* off_n, const TO* mask_n, int64_t cstride, int64_t porigin,
                TC* cols, int64_t c0, int64_t L, const Shape& s, int n, int64_t p0, int64_t p1, int g,
                int k) {
  const int K = s.kh * s.kw, cpg = s.C / s.G;
  const int64_t HW = int64_t(s.H) * s.W;
  const int i = k / s.kw, j = k % s.kw;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 minus1 = _mm512_set1_ps(-1.f), one = _mm512_set1_ps(1.f);
  const __m512 Hf = _mm512_set1_ps(float(s.H)), Wf = _mm512_set1_ps(float(s.W));
  const __m512i Wi = _mm512_set1_epi32(s.W), zero = _mm512_setzero_si512();
  const __m512i Hm1 = _mm512_set1_epi32(s.H - 1), Wm1 = _mm512_set1_epi32(s.W - 1);
  const __m512i one_i = _mm512_set1_epi32(1), minus1_i = _mm512_set1_epi32(-1);
  const __m512i Wm2 = _mm512_set1_epi32(s.W - 2);
  const __m512i sw = _mm512_set1_epi32(s.sw);
  const bool paired = s.W >= 2;  // the pair loads need rows of two or more pixels
  const __m512i bx0 = _mm512_set1_epi32(-s.pw + j * s.dw);
  const TO* oy_k = off_n + (int64_t(g) * 2 * K + 2 * k) * cstride;
  const TO* mk_k = mask_n + (int64_t(g) * K + k) * cstride;
  const TI* planes = input + (int64_t(n) * s.C + int64_t(g) * cpg) * HW;
  TC* out_gk = cols + (int64_t(g) * cpg * K + k) * L;  // channel cc of the group: + cc*K*L

  for (int64_t p = p0; p < p1;) {
    const int ho = int(p / s.Wo), wo_begin = int(p % s.Wo);
    const int wo_end = (p1 - p) < int64_t(s.Wo - wo_begin) ? wo_begin + int(p1 - p) : s.Wo;
    // Row pointers, indexed by wo.
    const TO* oy = oy_k + (p - porigin - wo_begin);
    const TO* ox = oy + cstride;
    const TO* mk = mk_k + (p - porigin - wo_begin);
    TC* out = out_gk + (p - c0 - wo_begin);
    const __m512 by = _mm512_set1_ps(float(ho * s.sh - s.ph + i * s.dh));

    for (int wo = wo_begin; wo < wo_end; wo += 16) {
      const __mmask16 tail = lanes(wo_end - wo);
      // Software prefetch of the three input streams: measured 2x faster on the target CPU at
      // 416x240 (the hardware prefetcher alone leaves each 16-pixel step waiting on DRAM).
      _mm_prefetch(reinterpret_cast<const char*>(oy + wo) + kPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ox + wo) + kPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(mk + wo) + kPrefetchBytes, _MM_HINT_T0);
      const __m512 dy = load16(oy + wo, tail), dx = load16(ox + wo, tail);
      const __m512 mv = load16(mk + wo, tail);
      const __m512i bxi = _mm512_add_epi32(
          _mm512_mullo_epi32(_mm512_add_epi32(_mm512_set1_epi32(wo), lane), sw), bx0);
      const __m512 y = _mm512_add_ps(by, dy);
      const __m512 x = _mm512_add_ps(_mm512_cvtepi32_ps(bxi), dx);

      __mmask16 inside = _mm512_mask_cmp_ps_mask(tail, y, minus1, _CMP_GT_OQ);
      inside = _mm512_mask_cmp_ps_mask(inside, y, Hf, _CMP_LT_OQ);
      inside = _mm512_mask_cmp_ps_mask(inside, x, minus1, _CMP_GT_OQ);
      inside = _mm512_mask_cmp_ps_mask(inside, x, Wf, _CMP_LT_OQ);

      if (inside == 0) {  // common near borders with large offsets: nothing to gather
        for (int cc = 0; cc < cpg; ++cc)
          store16(out + int64_t(cc) * K * L + wo, _mm512_setzero_ps(), tail);
        continue;
      }

      const __m512 yf = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      const __m512 xf = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      const __m512 ly = _mm512_sub_ps(y, yf), lx = _mm512_sub_ps(x, xf);
      const __m512 hy = _mm512_sub_ps(one, ly), hx = _mm512_sub_ps(one, lx);
      const __m512i y0 = _mm512_cvttps_epi32(yf), x0 = _mm512_cvttps_epi32(xf);

      const __mmask16 vy0 = _mm512_mask_cmpge_epi32_mask(inside, y0, zero);
      const __mmask16 vy1 = _mm512_mask_cmplt_epi32_mask(inside, y0, Hm1);
      const __mmask16 vx0 = _mm512_cmpge_epi32_mask(x0, zero);
      const __mmask16 vx1 = _mm512_cmplt_epi32_mask(x0, Wm1);
      const __mmask16 m00 = vy0 & vx0, m01 = vy0 & vx1, m10 = vy1 & vx0, m11 = vy1 & vx1;

      const __m512i i00 = _mm512_add_epi32(_mm512_mullo_epi32(y0, Wi), x0);
      const __m512i i01 = _mm512_add_epi32(i00, one_i);
      const __m512i i10 = _mm512_add_epi32(i00, Wi);
      const __m512i i11 = _mm512_add_epi32(i10, one_i);
      const __m512 w00 = _mm512_mul_ps(hy, hx), w01 = _mm512_mul_ps(hy, lx);
      const __m512 w10 = _mm512_mul_ps(ly, hx), w11 = _mm512_mul_ps(ly, lx);

      if (paired) {
        // Read each row's pair starting at xa = clamp(x0, 0, W-2), always inside the row; at
        // x0 = -1 the wanted right neighbour is then the pair's first element, at x0 = W-1 the
        // wanted left one is its second. Invalid corners are zeroed afterwards.
        const __m512i xa = _mm512_min_epi32(_mm512_max_epi32(x0, zero), Wm2);
        const __mmask16 at_left = _mm512_cmpeq_epi32_mask(x0, minus1_i);
        const __mmask16 at_right = _mm512_cmpeq_epi32_mask(x0, Wm1);
        const __m512i r0 = _mm512_add_epi32(_mm512_mullo_epi32(y0, Wi), xa);
        const __m512i r1 = _mm512_add_epi32(r0, Wi);
        for (int cc = 0; cc < cpg; ++cc) {
          const TI* plane = planes + int64_t(cc) * HW;
          __m512 a0, a1, b0, b1;
          gather_pair(plane, r0, vy0, a0, a1);
          gather_pair(plane, r1, vy1, b0, b1);
          const __m512 v00 = _mm512_maskz_mov_ps(vx0, _mm512_mask_blend_ps(at_right, a0, a1));
          const __m512 v01 = _mm512_maskz_mov_ps(vx1, _mm512_mask_blend_ps(at_left, a1, a0));
          const __m512 v10 = _mm512_maskz_mov_ps(vx0, _mm512_mask_blend_ps(at_right, b0, b1));
          const __m512 v11 = _mm512_maskz_mov_ps(vx1, _mm512_mask_blend_ps(at_left, b1, b0));
          __m512 v = _mm512_mul_ps(w00, v00);
          v = _mm512_fmadd_ps(w01, v01, v);
          v = _mm512_fmadd_ps(w10, v10, v);
          v = _mm512_fmadd_ps(w11, v11, v);
          store16(out + int64_t(cc) * K * L + wo, _mm512_mul_ps(v, mv), tail);
        }
        continue;
      }
      for (int cc = 0; cc < cpg; ++cc) {
        const TI* plane = planes + int64_t(cc) * HW;
        __m512 v = _mm512_mul_ps(w00, gather(plane, i00, m00));
        v = _mm512_fmadd_ps(w01, gather(plane, i01, m01), v);
        v = _mm512_fmadd_ps(w10, gather(plane, i10, m10), v);
        v = _mm512_fmadd_ps(w11, gather(plane, i11, m11), v);
        store16(out + int64_t(cc) * K * L + wo, _mm512_mul_ps(v, mv), tail);
      }
    }
    p += wo_end - wo_begin;
  }
}

// out[co0 + r, px] (r < rows) = b[r] + sum_k wp[k][r] * cols[k, px] for px in [0, L):
// an 8-channel x 48-pixel register tile (24 accumulators), the pixel tile outermost so its
// columns (48 x ckg floats) stay in L1 across all channel tiles.
template <class TO>
void gemm_block(const PackedWeight& w, int gi, const float* cols, int64_t L, TO* out,
                int64_t out_stride) {
  const int ckg = w.ckg, coutg = w.cout / w.groups;
  for (int64_t px = 0; px < L; px += 48) {
    const __mmask16 m0 = lanes(L - px), m1 = lanes(L - px - 16), m2 = lanes(L - px - 32);
    for (int t = 0; t < w.tiles_per_group; ++t) {
      const int tile = gi * w.tiles_per_group + t;
      const float* wp = w.w + int64_t(tile) * ckg * 8;
      const float* bp = w.b + tile * 8;
      const int rows = coutg - t * 8 < 8 ? coutg - t * 8 : 8;
#define VSQE_ACC(r)                                   \
  __m512 a##r##0 = _mm512_set1_ps(bp[r]);             \
  __m512 a##r##1 = a##r##0, a##r##2 = a##r##0;
      VSQE_ACC(0) VSQE_ACC(1) VSQE_ACC(2) VSQE_ACC(3)
      VSQE_ACC(4) VSQE_ACC(5) VSQE_ACC(6) VSQE_ACC(7)
#undef VSQE_ACC
      const float* c = cols + px;
      const float* wk = wp;
      for (int kk = 0; kk < ckg; ++kk, c += L, wk += 8) {
        const __m512 c0 = _mm512_maskz_loadu_ps(m0, c);
        const __m512 c1 = _mm512_maskz_loadu_ps(m1, c + 16);
        const __m512 c2 = _mm512_maskz_loadu_ps(m2, c + 32);
#define VSQE_FMA(r)                                 \
  {                                                 \
    const __m512 wv = _mm512_set1_ps(wk[r]);        \
    a##r##0 = _mm512_fmadd_ps(wv, c0, a##r##0);     \
    a##r##1 = _mm512_fmadd_ps(wv, c1, a##r##1);     \
    a##r##2 = _mm512_fmadd_ps(wv, c2, a##r##2);     \
  }
        VSQE_FMA(0) VSQE_FMA(1) VSQE_FMA(2) VSQE_FMA(3)
        VSQE_FMA(4) VSQE_FMA(5) VSQE_FMA(6) VSQE_FMA(7)
#undef VSQE_FMA
      }
      TO* o = out + int64_t(gi * coutg + t * 8) * out_stride + px;
#define VSQE_STORE(r)                                    \
  if (r < rows) {                                        \
    store_out(o + r * out_stride, a##r##0, m0, w.stream_out);       \
    store_out(o + r * out_stride + 16, a##r##1, m1, w.stream_out);  \
    store_out(o + r * out_stride + 32, a##r##2, m2, w.stream_out);  \
  }
      VSQE_STORE(0) VSQE_STORE(1) VSQE_STORE(2) VSQE_STORE(3)
      VSQE_STORE(4) VSQE_STORE(5) VSQE_STORE(6) VSQE_STORE(7)
#undef VSQE_STORE
    }
  }
}

// tap_pixels on the dense NCHW offset [N, 2GK, Ho, Wo] and mask [N, GK, Ho, Wo] tensors.
template <class TI, class TO, class TC>
void tap_pixels_dense(const TI* input, const TO* offset, const TO* mask, TC* cols, int64_t c0,
                      int64_t L, const Shape& s, int n, int64_t p0, int64_t p1, int g, int k) {
  const int64_t P = int64_t(s.Ho) * s.Wo, GK = int64_t(s.G) * s.kh * s.kw;
  tap_pixels(input, offset + n * 2 * GK * P, mask + n * GK * P, P, 0, cols, c0, L, s, n, p0, p1, g, k);
}

template <class TI, class TO>
void forward_block(const TI* input, const TO* offset, const TO* mask, const PackedWeight& w,
                   TI* out, const Shape& s, int n, int64_t p0, int64_t p1, float* scratch) {
  const int K = s.kh * s.kw;
  const int64_t L = p1 - p0, P = int64_t(s.Ho) * s.Wo;
  for (int g = 0; g < s.G; ++g)
    for (int k = 0; k < K; ++k)
      tap_pixels_dense<TI, TO, float>(input, offset, mask, scratch, p0, L, s, n, p0, p1, g, k);
  TI* out_n = out + int64_t(n) * w.cout * P + p0;
  for (int gi = 0; gi < w.groups; ++gi)
    gemm_block(w, gi, scratch + int64_t(gi) * w.ckg * L, L, out_n, P);
  if (w.stream_out) _mm_sfence();  // order the streaming stores before the task is reported done
}

// ---- the fused offset+mask forward: offsets and mask logits from one NHWC tensor -------------

// e^x for 16 lanes: x = n ln2 + r, |r| <= ln2/2, e^r by Cephes' expf polynomial (about 1 ulp),
// scaled by 2^n with scalef (which also gives 0 / inf beyond the float range).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.f)), _mm512_set1_ps(100.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// Transposes r[i][c] -> r[c][i] for a 16 x 16 float tile in registers: four butterfly stages,
// stage b swapping bit b of the row index with bit b of the column index (one two-source
// permute per row).
inline void transpose16x16(__m512 r[16]) {
  for (int b = 1; b < 16; b <<= 1) {
    alignas(64) int lo[16], hi[16];
    for (int c = 0; c < 16; ++c) {
      lo[c] = (c & b) ? 16 + (c - b) : c;  // row i (bit b clear): own column, or row j's c - b
      hi[c] = (c & b) ? 16 + c : c + b;    // row j (bit b set): row i's c + b, or own column
    }
    const __m512i ilo = _mm512_load_si512(lo), ihi = _mm512_load_si512(hi);
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512 a = r[i], c = r[i + b];
      r[i] = _mm512_permutex2var_ps(a, ilo, c);
      r[i + b] = _mm512_permutex2var_ps(a, ihi, c);
    }
  }
}

// Block [p0, p1) of image n's offsets and mask logits, om[(n*P + p) * C + c] (c < nOff:
// offsets, then mask logits up to nAll), into fp32 planes t[c * L + p - p0] with the sigmoid
// applied to the mask: the layout tap_pixels reads. Tiles of 16 pixels x 16 channels: 16
// contiguous loads (one pixel's channels each), a register transpose, 16 stores (one channel's
// pixels each).
template <class TO>
void transpose_om(const TO* om, int64_t C, int64_t nOff, int64_t nAll, float* t, const Shape& s,
                  int n, int64_t p0, int64_t p1) {
  const int64_t L = p1 - p0, P = int64_t(s.Ho) * s.Wo;
  const TO* base = om + (int64_t(n) * P + p0) * C;
  for (int64_t q = 0; q < L; q += 16) {
    const int npx = L - q < 16 ? int(L - q) : 16;
    const __mmask16 pm = lanes(npx);
    for (int64_t c0 = 0; c0 < nAll; c0 += 16) {
      const int nch = nAll - c0 < 16 ? int(nAll - c0) : 16;
      const __mmask16 cm = lanes(nch);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < npx ? load16(base + (q + i) * C + c0, cm) : _mm512_setzero_ps();
      transpose16x16(r);
      for (int j = 0; j < nch; ++j) {
        const __m512 v = c0 + j >= nOff ? sigmoid16(r[j]) : r[j];
        _mm512_mask_storeu_ps(t + (c0 + j) * L + q, pm, v);
      }
    }
  }
}

// out[p, gi*coutg + co] = b + sum_k cols[k, p] * w[k, co] for 6 pixels (or `npx` < 6) starting
// at column px of the block: 6 pixels x up to 64 channels in 24 named accumulators (GCC keeps
// an array of vectors in memory, storing it on every iteration), for an NHWC output
// (channels_last) that the next convolution reads without a reorder.
template <class TO>
void gemm_pixels_nhwc(const PackedWeight& w, int gi, const float* cols, int64_t L, int64_t px,
                      int npx, TO* out_px) {
  const int ckg = w.ckg, coutg = w.cout / w.groups, ctp = w.ctp;
  for (int cv0 = 0; cv0 < coutg; cv0 += 64) {
    const __mmask16 k0 = lanes(coutg - cv0), k1 = lanes(coutg - cv0 - 16);
    const __mmask16 k2 = lanes(coutg - cv0 - 32), k3 = lanes(coutg - cv0 - 48);
    const float* bt = w.bt + int64_t(gi) * ctp + cv0;
    const __m512 b0 = _mm512_maskz_loadu_ps(k0, bt), b1 = _mm512_maskz_loadu_ps(k1, bt + 16);
    const __m512 b2 = _mm512_maskz_loadu_ps(k2, bt + 32), b3 = _mm512_maskz_loadu_ps(k3, bt + 48);
#define VSQE_ACC(i) __m512 a##i##0 = b0, a##i##1 = b1, a##i##2 = b2, a##i##3 = b3;
    VSQE_ACC(0) VSQE_ACC(1) VSQE_ACC(2) VSQE_ACC(3) VSQE_ACC(4) VSQE_ACC(5)
#undef VSQE_ACC
    const float* c = cols + px;
    const float* wk = w.wt + int64_t(gi) * ckg * ctp + cv0;
    // Pixels past npx read column 0 of the pixel group (always inside the block) and are not stored.
    const int o1 = npx > 1 ? 1 : 0, o2 = npx > 2 ? 2 : 0, o3 = npx > 3 ? 3 : 0;
    const int o4 = npx > 4 ? 4 : 0, o5 = npx > 5 ? 5 : 0;
    for (int kk = 0; kk < ckg; ++kk, c += L, wk += ctp) {
      const __m512 w0 = _mm512_maskz_loadu_ps(k0, wk), w1 = _mm512_maskz_loadu_ps(k1, wk + 16);
      const __m512 w2 = _mm512_maskz_loadu_ps(k2, wk + 32), w3 = _mm512_maskz_loadu_ps(k3, wk + 48);
#define VSQE_FMA(i, off)                           \
  {                                                \
    const __m512 x = _mm512_set1_ps(c[off]);       \
    a##i##0 = _mm512_fmadd_ps(w0, x, a##i##0);     \
    a##i##1 = _mm512_fmadd_ps(w1, x, a##i##1);     \
    a##i##2 = _mm512_fmadd_ps(w2, x, a##i##2);     \
    a##i##3 = _mm512_fmadd_ps(w3, x, a##i##3);     \
  }
      VSQE_FMA(0, 0) VSQE_FMA(1, o1) VSQE_FMA(2, o2) VSQE_FMA(3, o3) VSQE_FMA(4, o4) VSQE_FMA(5, o5)
#undef VSQE_FMA
    }
    TO* o = out_px + gi * coutg + cv0;
#define VSQE_STORE(i)                                     \
  if (i < npx) {                                          \
    TO* oi = o + int64_t(i) * w.cout;                     \
    if (k0) store16(oi, a##i##0, k0);                     \
    if (k1) store16(oi + 16, a##i##1, k1);                \
    if (k2) store16(oi + 32, a##i##2, k2);                \
    if (k3) store16(oi + 48, a##i##3, k3);                \
  }
    VSQE_STORE(0) VSQE_STORE(1) VSQE_STORE(2) VSQE_STORE(3) VSQE_STORE(4) VSQE_STORE(5)
#undef VSQE_STORE
  }
}

template <class TO>
void gemm_block_nhwc(const PackedWeight& w, int gi, const float* cols, int64_t L, TO* out_block) {
  for (int64_t px = 0; px < L; px += 6) {
    const int npx = L - px < 6 ? int(L - px) : 6;
    gemm_pixels_nhwc(w, gi, cols, L, px, npx, out_block + px * w.cout);
  }
}

template <class TI, class TO>
void forward_block_om(const TI* input, const TO* om, int om_channels, const PackedWeight& w, TI* out,
                      bool out_nhwc, const Shape& s, int n, int64_t p0, int64_t p1, float* scratch,
                      float* om_scratch) {
  const int K = s.kh * s.kw;
  const int64_t L = p1 - p0, P = int64_t(s.Ho) * s.Wo, GK = int64_t(s.G) * K;
  transpose_om(om, om_channels, 2 * GK, 3 * GK, om_scratch, s, n, p0, p1);
  for (int g = 0; g < s.G; ++g)
    for (int k = 0; k < K; ++k)
      tap_pixels<TI, float, float>(input, om_scratch, om_scratch + 2 * GK * L, L, p0, scratch, p0, L, s,
                                   n, p0, p1, g, k);
  if (out_nhwc) {
    TI* out_block = out + (int64_t(n) * P + p0) * w.cout;
    for (int gi = 0; gi < w.groups; ++gi) gemm_block_nhwc(w, gi, scratch + int64_t(gi) * w.ckg * L, L, out_block);
    return;
  }
  TI* out_n = out + int64_t(n) * w.cout * P + p0;
  for (int gi = 0; gi < w.groups; ++gi)
    gemm_block(w, gi, scratch + int64_t(gi) * w.ckg * L, L, out_n, P);
  if (w.stream_out) _mm_sfence();
}

}  // namespace

void im2col_avx512_f32(const float* input, const float* offset, const float* mask, float* cols, int64_t c0, int64_t L,
                       const Shape& s, int n, int64_t p0, int64_t p1, int g, int k) {
  tap_pixels_dense(input, offset, mask, cols, c0, L, s, n, p0, p1, g, k);
}

void im2col_avx512_bf16(const bf16* input, const bf16* offset, const bf16* mask, bf16* cols, int64_t c0, int64_t L,
                        const Shape& s, int n, int64_t p0, int64_t p1, int g, int k) {
  tap_pixels_dense(input, offset, mask, cols, c0, L, s, n, p0, p1, g, k);
}

void im2col_avx512_bf16_f32off(const bf16* input, const float* offset, const float* mask,
                               bf16* cols, int64_t c0, int64_t L, const Shape& s, int n, int64_t p0, int64_t p1, int g,
                               int k) {
  tap_pixels_dense(input, offset, mask, cols, c0, L, s, n, p0, p1, g, k);
}

void forward_block_avx512_f32(const float* input, const float* offset, const float* mask,
                              const PackedWeight& w, float* out, const Shape& s, int n,
                              int64_t p0, int64_t p1, float* scratch) {
  forward_block(input, offset, mask, w, out, s, n, p0, p1, scratch);
}

void forward_block_avx512_bf16(const bf16* input, const bf16* offset, const bf16* mask,
                               const PackedWeight& w, bf16* out, const Shape& s, int n,
                               int64_t p0, int64_t p1, float* scratch) {
  forward_block(input, offset, mask, w, out, s, n, p0, p1, scratch);
}

void forward_block_avx512_bf16_f32off(const bf16* input, const float* offset, const float* mask,
                                      const PackedWeight& w, bf16* out, const Shape& s, int n,
                                      int64_t p0, int64_t p1, float* scratch) {
  forward_block(input, offset, mask, w, out, s, n, p0, p1, scratch);
}

void forward_block_om_avx512(DType input_dtype, const void* input, DType om_dtype, const void* om,
                             int om_channels, const PackedWeight& w, void* out, bool out_nhwc,
                             const Shape& s, int n, int64_t p0, int64_t p1, float* scratch,
                             float* om_scratch) {
  const bool in_f32 = input_dtype == DType::f32, om_f32 = om_dtype == DType::f32;
  if (in_f32 && om_f32)
    forward_block_om(static_cast<const float*>(input), static_cast<const float*>(om), om_channels, w,
                     static_cast<float*>(out), out_nhwc, s, n, p0, p1, scratch, om_scratch);
  else if (in_f32)
    forward_block_om(static_cast<const float*>(input), static_cast<const bf16*>(om), om_channels, w,
                     static_cast<float*>(out), out_nhwc, s, n, p0, p1, scratch, om_scratch);
  else if (om_f32)
    forward_block_om(static_cast<const bf16*>(input), static_cast<const float*>(om), om_channels, w,
                     static_cast<bf16*>(out), out_nhwc, s, n, p0, p1, scratch, om_scratch);
  else
    forward_block_om(static_cast<const bf16*>(input), static_cast<const bf16*>(om), om_channels, w,
                     static_cast<bf16*>(out), out_nhwc, s, n, p0, p1, scratch, om_scratch);
}

}  // namespace cpu
}  // namespace dcn
}  // namespace vsqe
