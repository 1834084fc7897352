// The few-row loops' kernels (few_rows.h drives them): AVX-512 for float64 in 8-double
// vectors and bfloat16 by pairs in float (AVX2's: few_rows_kernels_ymm.h). Raw pointers,
// one thread's share of the outputs each.
#pragma once

#include <torch/headeronly/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <immintrin.h>

#define FUSEDRNN_AVX512_BW __attribute__((target("avx512f,avx512bw,avx512vl")))

namespace fusedrnn {

namespace few_rows_detail {

// Rows the kernels take at most (few_rows.h's kFewRows; with_rows instantiates R = 1..4).
constexpr int kMaxRows = 4;

// float64: 8-double vectors, lanes m of n.
FUSEDRNN_AVX512_BW inline __mmask8 lanes8(int64_t n) {
  return n >= 8 ? __mmask8(0xFF) : __mmask8((1u << n) - 1u);
}

// Rows of w per pass of dot_block: 4 dot products per row of a at once.
constexpr int kDotRows = 4;

// out[r * ldo + g] = sum_k a[r * lda + k] * w[g * ldw + k] for r < R, g in [g0, g1): each
// sum over k in lanes (k mod 8), then the lanes in _mm512_reduce_add_pd's order.
template <int R>
FUSEDRNN_AVX512_BW void dot_block(const double* a, int64_t lda, const double* w, int64_t ldw,
                                  int64_t K, int64_t g0, int64_t g1, double* out, int64_t ldo) {
  for (int64_t g = g0; g < g1; g += kDotRows) {
    const double* wr[kDotRows];
    for (int b = 0; b < kDotRows; ++b) wr[b] = w + std::min(g + b, g1 - 1) * ldw;  // pad: repeat
    __m512d acc[kDotRows][R];
#pragma GCC unroll 4
    for (int b = 0; b < kDotRows; ++b)
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[b][r] = _mm512_setzero_pd();
    for (int64_t k = 0; k < K; k += 8) {
      const __mmask8 m = lanes8(K - k);
      __m512d av[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) av[r] = _mm512_maskz_loadu_pd(m, a + r * lda + k);
#pragma GCC unroll 4
      for (int b = 0; b < kDotRows; ++b) {
        const __m512d wv = _mm512_maskz_loadu_pd(m, wr[b] + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[b][r] = _mm512_fmadd_pd(av[r], wv, acc[b][r]);
      }
    }
    const int64_t nb = std::min<int64_t>(kDotRows, g1 - g);
    for (int64_t b = 0; b < nb; ++b)
      for (int r = 0; r < R; ++r) out[r * ldo + g + b] = _mm512_reduce_add_pd(acc[b][r]);
  }
}

// Vectors of columns a pass of axpy_block holds in registers, and rows of w per pass.
constexpr int kAxpyVectors = 4;
constexpr int kAxpyRows = 8;

// out[r * ldo + k] = sum_g a[r * lda + g] * w[g * ldw + k] for r < R, k in [k0, k1): each
// sum over g in ascending order (one FMA a g), kept in buf [R, k1 - k0] between passes of
// kAxpyRows rows of w.
template <int R>
FUSEDRNN_AVX512_BW void axpy_block(const double* a, int64_t lda, const double* w, int64_t ldw,
                                   int64_t G, int64_t k0, int64_t k1, double* out, int64_t ldo,
                                   double* buf) {
  constexpr int64_t kStep = kAxpyVectors * 8;
  const int64_t C = k1 - k0;
  for (int64_t g0 = 0; g0 < G; g0 += kAxpyRows) {
    const int64_t gn = std::min<int64_t>(kAxpyRows, G - g0);
    const bool last = g0 + kAxpyRows >= G;
    for (int64_t c = 0; c < C; c += kStep) {
      __mmask8 m[kAxpyVectors];
      __m512d acc[R][kAxpyVectors];
#pragma GCC unroll 4
      for (int v = 0; v < kAxpyVectors; ++v) {
        m[v] = lanes8(std::max<int64_t>(0, C - c - v * 8));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[r][v] = g0 == 0 ? _mm512_setzero_pd()
                              : _mm512_maskz_loadu_pd(m[v], buf + r * C + c + v * 8);
        }
      }
      for (int64_t b = 0; b < gn; ++b) {
        const double* row = w + (g0 + b) * ldw + k0 + c;
        __m512d wv[kAxpyVectors];
#pragma GCC unroll 4
        for (int v = 0; v < kAxpyVectors; ++v) wv[v] = _mm512_maskz_loadu_pd(m[v], row + v * 8);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m512d s = _mm512_set1_pd(a[r * lda + g0 + b]);
#pragma GCC unroll 4
          for (int v = 0; v < kAxpyVectors; ++v) acc[r][v] = _mm512_fmadd_pd(s, wv[v], acc[r][v]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < kAxpyVectors; ++v) {
          double* p = last ? out + r * ldo + k0 + c + v * 8 : buf + r * C + c + v * 8;
          _mm512_mask_storeu_pd(p, m[v], acc[r][v]);
        }
    }
  }
}

// out[g * ldo + k] = sum_r a[r * lda + g] * b[r * ldb + k] for g in [g0, g1), k < K: r in
// ascending order (a product, then one FMA a row). Non-temporal stores where `stream`
// (out and ldo aligned to 64 bytes; the tail of a row plain).
FUSEDRNN_AVX512_BW inline void outer_block(const double* a, int64_t lda, const double* b,
                                           int64_t ldb, int64_t R, int64_t K, int64_t g0,
                                           int64_t g1, double* out, int64_t ldo, bool stream) {
  for (int64_t g = g0; g < g1; ++g) {
    __m512d coef[kMaxRows];
    for (int64_t r = 0; r < R; ++r) coef[r] = _mm512_set1_pd(a[r * lda + g]);
    double* o = out + g * ldo;
    for (int64_t k = 0; k < K; k += 8) {
      const __mmask8 m = lanes8(K - k);
      __m512d acc = _mm512_mul_pd(coef[0], _mm512_maskz_loadu_pd(m, b + k));
      for (int64_t r = 1; r < R; ++r)
        acc = _mm512_fmadd_pd(coef[r], _mm512_maskz_loadu_pd(m, b + r * ldb + k), acc);
      if (stream && k + 8 <= K) {
        _mm512_stream_pd(o + k, acc);
      } else {
        _mm512_mask_storeu_pd(o + k, m, acc);
      }
    }
  }
  if (stream) _mm_sfence();
}

// v's 16 floats rounded to bfloat16 (nearest even; NaN to 0x7FC0, as c10's conversion),
// each in the low half of its 32-bit lane.
FUSEDRNN_AVX512_BW inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                               _mm512_set1_epi32(0x7FC0));
}


// bfloat16 by pairs: 32 values a load, their even elements (shifted up) and odd ones
// (masked) as two float vectors, no cross-lane widening. A dot product's lanes then hold
// k = 32i + 2l and 32i + 2l + 1 (lane l), the two added in that order; outputs over
// columns are kept the same way (even and odd columns apart) and put back in order when
// rounded (even | odd << 16).
using BF16 = c10::BFloat16;

FUSEDRNN_AVX512_BW inline __mmask32 pair_lanes(int64_t n) {
  return n >= 32 ? __mmask32(~0u) : __mmask32((1u << n) - 1u);
}
FUSEDRNN_AVX512_BW inline __m512i load_pairs(const BF16* p, __mmask32 m) {
  return _mm512_maskz_loadu_epi16(m, p);
}
FUSEDRNN_AVX512_BW inline __m512 even(__m512i v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
FUSEDRNN_AVX512_BW inline __m512 odd(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xFFFF0000u))));
}
// 32 bfloat16 values in order from their even and odd elements' floats.
FUSEDRNN_AVX512_BW inline void store_pairs(BF16* p, __m512 e, __m512 o, __mmask32 m,
                                           bool stream) {
  const __m512i v = _mm512_or_si512(bf16_bits(e), _mm512_slli_epi32(bf16_bits(o), 16));
  if (stream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
  } else {
    _mm512_mask_storeu_epi16(p, m, v);
  }
}

template <int R>
FUSEDRNN_AVX512_BW void dot_block_pairs(const BF16* a, int64_t lda, const BF16* w, int64_t ldw,
                                        int64_t K, int64_t g0, int64_t g1, BF16* out,
                                        int64_t ldo) {
  constexpr int GB = R == 1 ? 8 : 4;
  for (int64_t g = g0; g < g1; g += GB) {
    const BF16* wr[GB];
    for (int b = 0; b < GB; ++b) wr[b] = w + std::min<int64_t>(g + b, g1 - 1) * ldw;
    __m512 acc[GB][R];
#pragma GCC unroll 8
    for (int b = 0; b < GB; ++b)
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[b][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
      const __mmask32 m = pair_lanes(K - k);
      __m512 ae[R], ao[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512i v = load_pairs(a + r * lda + k, m);
        ae[r] = even(v);
        ao[r] = odd(v);
      }
#pragma GCC unroll 8
      for (int b = 0; b < GB; ++b) {
        const __m512i v = load_pairs(wr[b] + k, m);
        const __m512 we = even(v), wo = odd(v);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[b][r] = _mm512_fmadd_ps(ae[r], we, acc[b][r]);
          acc[b][r] = _mm512_fmadd_ps(ao[r], wo, acc[b][r]);
        }
      }
    }
    const int64_t nb = std::min<int64_t>(GB, g1 - g);
    for (int64_t b = 0; b < nb; ++b)
      for (int r = 0; r < R; ++r) out[r * ldo + g + b] = BF16(_mm512_reduce_add_ps(acc[b][r]));
  }
}

// axpy_block by pairs: kPairVectors loads of 32 columns a pass; buf holds each 32 columns'
// sums as 16 even then 16 odd.
constexpr int kPairVectors = 2;

template <int R>
FUSEDRNN_AVX512_BW void axpy_block_pairs(const BF16* a, int64_t lda, const BF16* w, int64_t ldw,
                                         int64_t G, int64_t k0, int64_t k1, BF16* out,
                                         int64_t ldo, float* buf) {
  constexpr int64_t kStep = kPairVectors * 32;
  const int64_t C = k1 - k0, Cb = (C + 31) / 32 * 32;
  for (int64_t g0 = 0; g0 < G; g0 += kAxpyRows) {
    const int64_t gn = std::min<int64_t>(kAxpyRows, G - g0);
    float coef[kAxpyRows][R];
    for (int64_t b = 0; b < gn; ++b)
      for (int r = 0; r < R; ++r) coef[b][r] = float(a[r * lda + g0 + b]);
    const bool first = g0 == 0, last = g0 + kAxpyRows >= G;
    for (int64_t c = 0; c < C; c += kStep) {
      __mmask32 m[kPairVectors];
      __m512 acc[R][kPairVectors][2];
#pragma GCC unroll 2
      for (int v = 0; v < kPairVectors; ++v) {
        m[v] = pair_lanes(std::max<int64_t>(0, C - c - v * 32));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          float* bp = buf + r * Cb + c + v * 32;
          const bool in = !first && c + v * 32 < C;
          acc[r][v][0] = in ? _mm512_loadu_ps(bp) : _mm512_setzero_ps();
          acc[r][v][1] = in ? _mm512_loadu_ps(bp + 16) : _mm512_setzero_ps();
        }
      }
      for (int64_t b = 0; b < gn; ++b) {
        const BF16* row = w + (g0 + b) * ldw + k0 + c;
        __m512 we[kPairVectors], wo[kPairVectors];
#pragma GCC unroll 2
        for (int v = 0; v < kPairVectors; ++v) {
          const __m512i x = load_pairs(row + v * 32, m[v]);
          we[v] = even(x);
          wo[v] = odd(x);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m512 s = _mm512_set1_ps(coef[b][r]);
#pragma GCC unroll 2
          for (int v = 0; v < kPairVectors; ++v) {
            acc[r][v][0] = _mm512_fmadd_ps(s, we[v], acc[r][v][0]);
            acc[r][v][1] = _mm512_fmadd_ps(s, wo[v], acc[r][v][1]);
          }
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < kPairVectors; ++v) {
          if (c + v * 32 >= C) continue;
          if (last) {
            store_pairs(out + r * ldo + k0 + c + v * 32, acc[r][v][0], acc[r][v][1], m[v], false);
          } else {
            float* bp = buf + r * Cb + c + v * 32;
            _mm512_storeu_ps(bp, acc[r][v][0]);
            _mm512_storeu_ps(bp + 16, acc[r][v][1]);
          }
        }
    }
  }
}

// outer_block by pairs.
FUSEDRNN_AVX512_BW inline void outer_block_pairs(const BF16* a, int64_t lda, const BF16* b,
                                                 int64_t ldb, int64_t R, int64_t K, int64_t g0,
                                                 int64_t g1, BF16* out, int64_t ldo,
                                                 bool stream) {
  for (int64_t g = g0; g < g1; ++g) {
    __m512 coef[kMaxRows];
    for (int64_t r = 0; r < R; ++r) coef[r] = _mm512_set1_ps(float(a[r * lda + g]));
    BF16* o = out + g * ldo;
    for (int64_t k = 0; k < K; k += 32) {
      const __mmask32 m = pair_lanes(K - k);
      __m512i v = load_pairs(b + k, m);
      __m512 e = _mm512_mul_ps(coef[0], even(v)), od = _mm512_mul_ps(coef[0], odd(v));
      for (int64_t r = 1; r < R; ++r) {
        v = load_pairs(b + r * ldb + k, m);
        e = _mm512_fmadd_ps(coef[r], even(v), e);
        od = _mm512_fmadd_ps(coef[r], odd(v), od);
      }
      store_pairs(o + k, e, od, m, stream && k + 32 <= K);
    }
  }
  if (stream) _mm_sfence();
}

}  // namespace few_rows_detail

}  // namespace fusedrnn
