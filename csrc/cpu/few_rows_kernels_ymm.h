// The few-row loops' AVX2 kernels, for CPUs without AVX-512 (few_rows.h drives them):
// float32 and float64, and bfloat16's dot loop on widened loads. Raw pointers, one
// thread's share of the outputs each.
#pragma once

#include "few_rows_kernels.h"

#include <torch/headeronly/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

namespace fusedrnn {

namespace few_rows_detail {

// Rows outer_block_ymm takes at most (the weight gradients; few_rows.h's kFewRowsTnYmm).
constexpr int kMaxRowsTnYmm = 12;

// float32 and float64 in AVX2 ymm vectors, for CPUs without AVX-512 (few_rows_available):
// the same three loops, in the same orders, summed in the storage type. Ymm<S> holds what
// differs between the two: lanes, loads and stores (masked: the first n lanes), reduce.
#define FUSEDRNN_AVX2_FMA __attribute__((target("avx2,fma")))

template <typename S>
struct Ymm;

template <>
struct Ymm<float> {
  using V = __m256;
  using M = __m256i;
  static constexpr int64_t L = 8;
  FUSEDRNN_AVX2_FMA static M lanes(int64_t n) {
    const int m = static_cast<int>(std::min<int64_t>(std::max<int64_t>(n, 0), L));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  FUSEDRNN_AVX2_FMA static V zero() { return _mm256_setzero_ps(); }
  FUSEDRNN_AVX2_FMA static V set1(float v) { return _mm256_set1_ps(v); }
  FUSEDRNN_AVX2_FMA static V load(const float* p) { return _mm256_loadu_ps(p); }
  FUSEDRNN_AVX2_FMA static V load(const float* p, M m) { return _mm256_maskload_ps(p, m); }
  FUSEDRNN_AVX2_FMA static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  FUSEDRNN_AVX2_FMA static void store(float* p, V v, M m) { _mm256_maskstore_ps(p, m, v); }
  FUSEDRNN_AVX2_FMA static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
  FUSEDRNN_AVX2_FMA static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  FUSEDRNN_AVX2_FMA static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // lanes (0+4, 1+5, 2+6, 3+7), then pairs, then the two
  FUSEDRNN_AVX2_FMA static float reduce(V v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};

template <>
struct Ymm<double> {
  using V = __m256d;
  using M = __m256i;
  static constexpr int64_t L = 4;
  FUSEDRNN_AVX2_FMA static M lanes(int64_t n) {
    const int64_t m = std::min<int64_t>(std::max<int64_t>(n, 0), L);
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  FUSEDRNN_AVX2_FMA static V zero() { return _mm256_setzero_pd(); }
  FUSEDRNN_AVX2_FMA static V set1(double v) { return _mm256_set1_pd(v); }
  FUSEDRNN_AVX2_FMA static V load(const double* p) { return _mm256_loadu_pd(p); }
  FUSEDRNN_AVX2_FMA static V load(const double* p, M m) { return _mm256_maskload_pd(p, m); }
  FUSEDRNN_AVX2_FMA static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  FUSEDRNN_AVX2_FMA static void store(double* p, V v, M m) { _mm256_maskstore_pd(p, m, v); }
  FUSEDRNN_AVX2_FMA static void stream(double* p, V v) { _mm256_stream_pd(p, v); }
  FUSEDRNN_AVX2_FMA static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  FUSEDRNN_AVX2_FMA static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  // lanes (0+2, 1+3), then the two
  FUSEDRNN_AVX2_FMA static double reduce(V v) {
    __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    q = _mm_add_sd(q, _mm_unpackhi_pd(q, q));
    return _mm_cvtsd_f64(q);
  }
};

// bfloat16 storage, float lanes: loads widen 8 values (a 16-byte load, zero-extended, shifted
// into the high half), the last partial vector through a zeroed copy (AVX2 has no 16-bit
// masked load). Only dot_block_ymm takes it (the forward's x W^T and h W_hh^T; the backward
// of 16-bit storage runs on float copies there, upcast_16bit in common.h); its sums are
// float, each rounded to bfloat16 once when stored.
template <>
struct Ymm<c10::BFloat16> {
  using V = __m256;
  using M = int64_t;  // lanes in use
  static constexpr int64_t L = 8;
  FUSEDRNN_AVX2_FMA static M lanes(int64_t n) { return std::min<int64_t>(std::max<int64_t>(n, 0), L); }
  FUSEDRNN_AVX2_FMA static V zero() { return _mm256_setzero_ps(); }
  FUSEDRNN_AVX2_FMA static V load(const c10::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  FUSEDRNN_AVX2_FMA static V load(const c10::BFloat16* p, M n) {
    alignas(16) c10::BFloat16 tmp[L] = {};
    std::memcpy(tmp, p, n * sizeof(c10::BFloat16));
    return load(tmp);
  }
  FUSEDRNN_AVX2_FMA static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  FUSEDRNN_AVX2_FMA static float reduce(V v) { return Ymm<float>::reduce(v); }
};

// The dot loop's software prefetch: while it reads its group of rows, the next group's
// rows, one line of each next row for each line it reads of the current one, the lines
// spread over the vectors of a line. On the 2-core Zen 3, ms, medians of 100-150
// order-balanced calls of two 8 MB products (both threads), weights from DRAM / from L3:
// - bfloat16, 1 row: this 0.65-0.76 / 0.33; none 0.83-0.90 / 0.37; 128 values ahead in
//   each row (what the loop did before) 0.97-1.07 / 0.38-0.48; the next rows at a line's
//   first vector 0.71-0.77 / 0.34; the next group in address order 0.78-0.87 / 0.26-0.28.
//   2 rows: 0.73 vs none 0.97; 3 rows: 1.04 vs 1.50; 4 rows: 1.44 vs 1.83.
// - float32 (double), from DRAM: 3 or 4 rows (2 weight rows a pass) 1.46-1.95 vs none
//   1.80-2.15 (2.90-3.03 vs 3.14-3.27); but 1 row 1.32 vs 1.19 (2.18 vs 1.82), 2 rows
//   1.38 vs 1.31 (2.46 vs 2.26): there the loop reads 4-8 lines a vector step, and the
//   hardware prefetchers kept up. So bfloat16 always, else 2 weight rows a pass only.
template <int GB, typename S>
FUSEDRNN_AVX2_FMA inline void prefetch_next_rows(const S* const (&next)[GB], int64_t k) {
  constexpr int64_t kLine = 64 / sizeof(S), kVecs = kLine / Ymm<S>::L;  // vectors a line
  constexpr int64_t kRows = GB >= kVecs ? GB / kVecs : 1;  // rows a vector
  const int64_t j = (k / Ymm<S>::L) % kVecs, k0 = k - k % kLine;
  if (j * kRows < GB) {
#pragma GCC unroll 4
    for (int64_t p = 0; p < kRows; ++p)
      _mm_prefetch(reinterpret_cast<const char*>(next[j * kRows + p] + k0), _MM_HINT_T0);
  }
}

// dot_block in ymm vectors: out[r * ldo + g] = sum_k a[r * lda + k] * w[g * ldw + k], each
// sum in lanes (k mod L), then reduce. 8 / R rows of w a pass (at least 2): at most 16
// accumulators. The whole vectors in one loop and the masked tail after it, each
// accumulator named by constants only: with the tail's loads in the loop (bfloat16's
// through a stack copy) and the reduce indexed by a run-time count, GCC kept the
// accumulators on the stack, a store (and, for bfloat16, a load) a FMA.
template <int R, typename S>
FUSEDRNN_AVX2_FMA void dot_block_ymm(const S* a, int64_t lda, const S* w, int64_t ldw,
                                     int64_t K, int64_t g0, int64_t g1, S* out, int64_t ldo) {
  using Y = Ymm<S>;
  constexpr int GB = R == 1 ? 8 : R == 2 ? 4 : 2;
  const int64_t Kv = K / Y::L * Y::L;
  for (int64_t g = g0; g < g1; g += GB) {
    const S* wr[GB];
    const S* next[GB];
    for (int b = 0; b < GB; ++b) {
      wr[b] = w + std::min<int64_t>(g + b, g1 - 1) * ldw;
      next[b] = w + std::min<int64_t>(g + GB + b, g1 - 1) * ldw;
    }
    typename Y::V acc[GB][R];
#pragma GCC unroll 8
    for (int b = 0; b < GB; ++b)
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[b][r] = Y::zero();
    for (int64_t k = 0; k < Kv; k += Y::L) {
      typename Y::V av[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) av[r] = Y::load(a + r * lda + k);
      if constexpr (std::is_same_v<S, c10::BFloat16> || GB == 2)
        prefetch_next_rows<GB>(next, k);
#pragma GCC unroll 8
      for (int b = 0; b < GB; ++b) {
        const typename Y::V wv = Y::load(wr[b] + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[b][r] = Y::fma(av[r], wv, acc[b][r]);
      }
    }
    if (Kv < K) {
      const typename Y::M m = Y::lanes(K - Kv);
      typename Y::V av[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) av[r] = Y::load(a + r * lda + Kv, m);
#pragma GCC unroll 8
      for (int b = 0; b < GB; ++b) {
        const typename Y::V wv = Y::load(wr[b] + Kv, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[b][r] = Y::fma(av[r], wv, acc[b][r]);
      }
    }
    const int64_t nb = std::min<int64_t>(GB, g1 - g);
#pragma GCC unroll 8
    for (int b = 0; b < GB; ++b) {
      if (b < nb) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) out[r * ldo + g + b] = Y::reduce(acc[b][r]);
      }
    }
  }
}

// axpy_block in ymm vectors: out[r * ldo + k] = sum_g a[r * lda + g] * w[g * ldw + k] for
// r < R, k in [k0, k1), each sum over g in ascending order (one FMA a g), kept in buf [R,
// Cb] (Cb: k1 - k0 up to a multiple of 32) between passes of kAxpyRows rows of w. 4
// vectors of columns a pass up to 2 rows, 2 from 3: at most 8 accumulators.
template <int R, typename S>
FUSEDRNN_AVX2_FMA void axpy_block_ymm(const S* a, int64_t lda, const S* w, int64_t ldw,
                                      int64_t G, int64_t k0, int64_t k1, S* out, int64_t ldo,
                                      S* buf) {
  using Y = Ymm<S>;
  constexpr int V = R <= 2 ? 4 : 2;
  constexpr int64_t kStep = V * Y::L;
  const int64_t C = k1 - k0, Cb = (C + 31) / 32 * 32;
  for (int64_t g0 = 0; g0 < G; g0 += kAxpyRows) {
    const int64_t gn = std::min<int64_t>(kAxpyRows, G - g0);
    const bool first = g0 == 0, last = g0 + kAxpyRows >= G;
    for (int64_t c = 0; c < C; c += kStep) {
      typename Y::M m[V];
      typename Y::V acc[R][V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        m[v] = Y::lanes(C - c - v * Y::L);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          acc[r][v] = first ? Y::zero() : Y::load(buf + r * Cb + c + v * Y::L);
      }
      const bool full = c + kStep <= C;
      for (int64_t b = 0; b < gn; ++b) {
        const S* row = w + (g0 + b) * ldw + k0 + c;
        typename Y::V wv[V];
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v)
          wv[v] = full ? Y::load(row + v * Y::L) : Y::load(row + v * Y::L, m[v]);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const typename Y::V sv = Y::set1(a[r * lda + g0 + b]);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) acc[r][v] = Y::fma(sv, wv[v], acc[r][v]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          if (last) {
            Y::store(out + r * ldo + k0 + c + v * Y::L, acc[r][v], m[v]);
          } else {
            Y::store(buf + r * Cb + c + v * Y::L, acc[r][v]);
          }
        }
    }
  }
}

// outer_block in ymm vectors: out[g * ldo + k] = sum_r a[r * lda + g] * b[r * ldb + k], r
// in ascending order (a product, then one FMA a row). Non-temporal stores where `stream`
// (out and ldo aligned to 32 bytes; the tail of a row masked).
template <typename S>
FUSEDRNN_AVX2_FMA void outer_block_ymm(const S* a, int64_t lda, const S* b, int64_t ldb,
                                       int64_t R, int64_t K, int64_t g0, int64_t g1, S* out,
                                       int64_t ldo, bool stream) {
  using Y = Ymm<S>;
  const int64_t Kv = K / Y::L * Y::L;
  const typename Y::M tail = Y::lanes(K - Kv);
  for (int64_t g = g0; g < g1; ++g) {
    typename Y::V coef[kMaxRowsTnYmm];
    for (int64_t r = 0; r < R; ++r) coef[r] = Y::set1(a[r * lda + g]);
    S* o = out + g * ldo;
    for (int64_t k = 0; k < K; k += Y::L) {
      const bool full = k < Kv;
      typename Y::V acc = Y::mul(coef[0], full ? Y::load(b + k) : Y::load(b + k, tail));
      for (int64_t r = 1; r < R; ++r) {
        const S* p = b + r * ldb + k;
        acc = Y::fma(coef[r], full ? Y::load(p) : Y::load(p, tail), acc);
      }
      if (!full) {
        Y::store(o + k, acc, tail);
      } else if (stream) {
        Y::stream(o + k, acc);
      } else {
        Y::store(o + k, acc);
      }
    }
  }
  if (stream) _mm_sfence();
}

}  // namespace few_rows_detail

}  // namespace fusedrnn
