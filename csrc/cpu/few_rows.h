// Products of a few rows (at most kFewRows) with a weight, read in place: the T=1 step of
// decoders and RL policies, and the GEMM loop's per-step products at batch 1-4. There a
// product is a matrix-vector one: each weight element is used R times, so the weight's
// read bounds it, and the library GEMMs (MKL for float64, oneDNN for bfloat16) first
// pack or reorder the weight (one more pass over it) and run on one core below some
// size. Here both cores read their share of the weight once:
//   dot_block:   out[r, g] = sum_k a[r, k] w[g, k]   (x W^T: the forward's)
//   axpy_block:  out[r, k] = sum_g a[r, g] w[g, k]   (dG W: the backward's dx, dh)
//   outer_block: out[g, k] = sum_r a[r, g] b[r, k]   (dG^T x: weight gradients)
// float64 in 8-double vectors; bfloat16 by pairs (the *_pairs kernels) in float.
// Storage float64 or bfloat16; sums in double for float64, float for bfloat16. Each sum
// runs in a fixed order whatever the thread count (split by outputs, never by k): bits
// are the same for any number of threads.
#pragma once

#include "../layer.h"

#include <torch/headeronly/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FUSEDRNN_HAVE_FEW_ROWS 1
#define FUSEDRNN_AVX512_BW __attribute__((target("avx512f,avx512bw,avx512vl")))
#else
#define FUSEDRNN_HAVE_FEW_ROWS 0
#endif

namespace fusedrnn {

// Rows up to which the products take these loops. At 4 rows a weight element feeds 4
// FMAs: still far below the FMA peak at memory's pace. Paired on the 2-core Zen 4 (ms,
// these loops vs MKL / oneDNN through the same op): GRU forward T=1, N=1, I=H=1024
// float64 1.89 vs 3.31 (the 48 MB of weights at 26.7 GB/s vs 15.2), bfloat16 0.18-0.21
// vs 0.47-0.57 (from L3, 59-69 GB/s; 0.29-0.33 with bf16 widened by vpmovzxwd instead of
// by pairs); layer inference, GRU float64 T=1, N=4, I=H=1024 3.34 vs 5.62, T=16, N=4,
// I=H=512 4.99 vs 5.38, N=2 3.56 vs 4.30; training T=1, N=4, I=H=1024 LSTM float64 32.5 vs
// 37.0, GRU bfloat16 3.68 vs 6.07 (these loops ran first after torch.nn's call in each
// alternation, the slot that reads slower). Not float32: against oneDNN's products, in an
// order-balanced alternation, inference ms, T=1, N=1, I=H=1024 GRU 0.786 vs 0.718, LSTM
// 1.58 vs 1.61; N=4, I=H=512 GRU 0.337 vs 0.335, LSTM 0.701 vs 0.706; T=4, N=1, I=H=1024
// GRU 1.80 vs 1.96; I=H=256 0.110 vs 0.110: no consistent gain.
constexpr int64_t kFewRows = 4;

#if FUSEDRNN_HAVE_FEW_ROWS

namespace few_rows_detail {

// The vector of a storage type's sums: 8 doubles (float64), 16 floats (bfloat16's buffers).
template <typename S>
struct Vec {
  using A = float;
  using R = __m512;
  using M = __mmask16;
  static constexpr int L = 16;
};
template <>
struct Vec<double> {
  using A = double;
  using R = __m512d;
  using M = __mmask8;
  static constexpr int L = 8;
};

template <typename S>
FUSEDRNN_AVX512_BW inline typename Vec<S>::M lanes(int64_t n) {
  return n >= Vec<S>::L ? static_cast<typename Vec<S>::M>(~0u)
                        : static_cast<typename Vec<S>::M>((1u << n) - 1u);
}

FUSEDRNN_AVX512_BW inline __m512d load(const double* p, __mmask8 m) {
  return _mm512_maskz_loadu_pd(m, p);
}

FUSEDRNN_AVX512_BW inline __m512d fma(__m512d a, __m512d b, __m512d c) {
  return _mm512_fmadd_pd(a, b, c);
}
FUSEDRNN_AVX512_BW inline __m512d mul(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
FUSEDRNN_AVX512_BW inline __m512d splat(double v) { return _mm512_set1_pd(v); }
template <typename V>
FUSEDRNN_AVX512_BW inline V zero() {
  if constexpr (std::is_same_v<V, __m512>) {
    return _mm512_setzero_ps();
  } else {
    return _mm512_setzero_pd();
  }
}
FUSEDRNN_AVX512_BW inline double lanes_sum(__m512d v) { return _mm512_reduce_add_pd(v); }

// Stores v's lanes m to p; non-temporal (p aligned, all lanes) where `stream`.
FUSEDRNN_AVX512_BW inline void store(double* p, __m512d v, __mmask8 m, bool stream) {
  if (stream) {
    _mm512_stream_pd(p, v);
  } else {
    _mm512_mask_storeu_pd(p, m, v);
  }
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

template <typename S>
inline typename Vec<S>::A widen(S v) {
  return static_cast<typename Vec<S>::A>(v);
}

// Rows of w per pass of dot_block: 4 dot products per row of a at once.
constexpr int kDotRows = 4;

// out[r * ldo + g] = sum_k a[r * lda + k] * w[g * ldw + k] for r < R, g in [g0, g1): each
// sum over k in lanes (k mod L), then the lanes in _mm512_reduce_add's order.
template <typename S, int R>
FUSEDRNN_AVX512_BW void dot_block(const S* a, int64_t lda, const S* w, int64_t ldw, int64_t K,
                                  int64_t g0, int64_t g1, S* out, int64_t ldo) {
  using V = Vec<S>;
  using Reg = typename V::R;
  for (int64_t g = g0; g < g1; g += kDotRows) {
    const S* wr[kDotRows];
    for (int b = 0; b < kDotRows; ++b) wr[b] = w + std::min(g + b, g1 - 1) * ldw;  // pad: repeat
    Reg acc[kDotRows][R];
#pragma GCC unroll 4
    for (int b = 0; b < kDotRows; ++b)
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[b][r] = zero<Reg>();
    for (int64_t k = 0; k < K; k += V::L) {
      const auto m = lanes<S>(K - k);
      Reg av[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) av[r] = load(a + r * lda + k, m);
#pragma GCC unroll 4
      for (int b = 0; b < kDotRows; ++b) {
        const Reg wv = load(wr[b] + k, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[b][r] = fma(av[r], wv, acc[b][r]);
      }
    }
    const int64_t nb = std::min<int64_t>(kDotRows, g1 - g);
    for (int64_t b = 0; b < nb; ++b)
      for (int r = 0; r < R; ++r) out[r * ldo + g + b] = static_cast<S>(lanes_sum(acc[b][r]));
  }
}

// Vectors of columns a pass of axpy_block holds in registers, and rows of w per pass.
constexpr int kAxpyVectors = 4;
constexpr int kAxpyRows = 8;

// out[r * ldo + k] = sum_g a[r * lda + g] * w[g * ldw + k] for r < R, k in [k0, k1): each
// sum over g in ascending order (one FMA a g), kept in acc_buf between passes of kAxpyRows
// rows of w.
template <typename S, int R>
FUSEDRNN_AVX512_BW void axpy_block(const S* a, int64_t lda, const S* w, int64_t ldw, int64_t G,
                                   int64_t k0, int64_t k1, S* out, int64_t ldo,
                                   typename Vec<S>::A* buf) {
  using V = Vec<S>;
  using A = typename V::A;
  using Reg = typename V::R;
  constexpr int64_t kStep = kAxpyVectors * V::L;
  const int64_t C = k1 - k0;
  for (int64_t g0 = 0; g0 < G; g0 += kAxpyRows) {
    const int64_t gn = std::min<int64_t>(kAxpyRows, G - g0);
    A coef[kAxpyRows][R];
    for (int64_t b = 0; b < gn; ++b)
      for (int r = 0; r < R; ++r) coef[b][r] = widen(a[r * lda + g0 + b]);
    for (int64_t c = 0; c < C; c += kStep) {
      typename V::M m[kAxpyVectors];
      Reg acc[R][kAxpyVectors];
#pragma GCC unroll 4
      for (int v = 0; v < kAxpyVectors; ++v) {
        m[v] = lanes<S>(std::max<int64_t>(0, C - c - v * V::L));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[r][v] = g0 == 0 ? zero<Reg>() : load(buf + r * C + c + v * V::L, m[v]);
        }
      }
      for (int64_t b = 0; b < gn; ++b) {
        const S* row = w + (g0 + b) * ldw + k0 + c;
        Reg wv[kAxpyVectors];
#pragma GCC unroll 4
        for (int v = 0; v < kAxpyVectors; ++v) wv[v] = load(row + v * V::L, m[v]);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const Reg s = splat(coef[b][r]);
#pragma GCC unroll 4
          for (int v = 0; v < kAxpyVectors; ++v) acc[r][v] = fma(s, wv[v], acc[r][v]);
        }
      }
      const bool last = g0 + kAxpyRows >= G;
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < kAxpyVectors; ++v) {
          if (last) {
            store(out + r * ldo + k0 + c + v * V::L, acc[r][v], m[v], false);
          } else {
            store(buf + r * C + c + v * V::L, acc[r][v], m[v], false);
          }
        }
    }
  }
}

// out[g * ldo + k] = sum_r a[r * lda + g] * b[r * ldb + k] for g in [g0, g1), k < K: r in
// ascending order (a product, then one FMA a row). Non-temporal stores where `stream`
// (out and ldo aligned to 64 bytes; the tail of a row plain).
template <typename S>
FUSEDRNN_AVX512_BW void outer_block(const S* a, int64_t lda, const S* b, int64_t ldb, int64_t R,
                                    int64_t K, int64_t g0, int64_t g1, S* out, int64_t ldo,
                                    bool stream) {
  using V = Vec<S>;
  using A = typename V::A;
  using Reg = typename V::R;
  const auto full = lanes<S>(V::L);
  for (int64_t g = g0; g < g1; ++g) {
    A coef[kFewRows];
    for (int64_t r = 0; r < R; ++r) coef[r] = widen(a[r * lda + g]);
    S* o = out + g * ldo;
    int64_t k = 0;
    for (; k + V::L <= K; k += V::L) {
      Reg acc = mul(splat(coef[0]), load(b + k, full));
      for (int64_t r = 1; r < R; ++r) acc = fma(splat(coef[r]), load(b + r * ldb + k, full), acc);
      store(o + k, acc, full, stream);
    }
    if (k < K) {
      const auto m = lanes<S>(K - k);
      Reg acc = mul(splat(coef[0]), load(b + k, m));
      for (int64_t r = 1; r < R; ++r) acc = fma(splat(coef[r]), load(b + r * ldb + k, m), acc);
      store(o + k, acc, m, false);
    }
  }
  if (stream) _mm_sfence();
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
    __m512 coef[kFewRows];
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

template <typename F>
void with_rows(int64_t R, const F& f) {
  switch (R) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// Splits [0, n) into at most one range a thread, each of at least `grain` (whole units of
// `align`), and runs f on them.
template <typename F>
void split(int64_t n, int64_t grain, int64_t align, const F& f) {
  const int64_t units = (n + align - 1) / align;
  const int64_t g = std::max<int64_t>(1, (grain + align - 1) / align);
  auto body = [&](int64_t u0, int64_t u1) { f(u0 * align, std::min(n, u1 * align)); };
  if (units <= g) {
    body(0, units);
  } else {
    torch::stable::parallel_for(0, units, g, body);
  }
}

// Weight elements a thread reads at least: below, the thread pool's wake-up costs more.
constexpr int64_t kGrainValues = 1 << 15;

}  // namespace few_rows_detail

// Whether the few-row loops run: an x86-64 CPU with AVX-512F/BW/VL, float64 or bfloat16
// storage (float32: see kFewRows). FUSEDRNN_CPU_FEW_ROWS=0 turns them off (tests, A/B).
inline bool few_rows_available(ScalarType dt) {
  static const bool cpu = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  const char* env = std::getenv("FUSEDRNN_CPU_FEW_ROWS");
  if (env && env[0] == '0') return false;
  return cpu && (dt == ScalarType::Double || dt == ScalarType::BFloat16);
}

// out = a @ b for a [R, K] (rows contiguous), R <= kFewRows, out [R, M] contiguous: b = t(W)
// of W [M, K] with contiguous rows (x W^T), or b [K, M] with contiguous rows (dG W).
// False (nothing written) where these loops do not take the case.
inline bool few_rows_mm(const Tensor& a, const Tensor& b, Tensor& out) {
  namespace d = few_rows_detail;
  const ScalarType dt = a.scalar_type();
  const int64_t R = a.size(0), K = a.size(1), M = b.size(1);
  if (R < 1 || R > kFewRows || K == 0 || M == 0 || !few_rows_available(dt)) return false;
  if (b.scalar_type() != dt || out.scalar_type() != dt || a.stride(1) != 1 ||
      !out.is_contiguous())
    return false;
  const bool transposed = b.stride(0) == 1, plain = b.stride(1) == 1;
  if (!transposed && !plain) return false;
  const int64_t lda = a.stride(0);
  auto run = [&](auto tag) {
    using S = decltype(tag);
    const S* ap = static_cast<const S*>(a.const_data_ptr());
    const S* wp = static_cast<const S*>(b.const_data_ptr());
    S* op = static_cast<S*>(out.mutable_data_ptr());
    d::with_rows(R, [&](auto rc) {
      constexpr int kR = decltype(rc)::value;
      constexpr bool kPairs = std::is_same_v<S, c10::BFloat16>;
      if (transposed) {  // W [M, K] at ld b.stride(1): out[r, g] = a[r, :] . W[g, :]
        const int64_t ldw = b.stride(1);
        d::split(M, std::max<int64_t>(8, d::kGrainValues / std::max<int64_t>(K, 1)), 8,
                 [&](int64_t g0, int64_t g1) {
                   if constexpr (kPairs) {
                     d::dot_block_pairs<kR>(ap, lda, wp, ldw, K, g0, g1, op, M);
                   } else {
                     d::dot_block<S, kR>(ap, lda, wp, ldw, K, g0, g1, op, M);
                   }
                 });
      } else {  // W = b [K, M] at ld b.stride(0): out[r, k'] = sum_g a[r, g] W[g, k']
        const int64_t ldw = b.stride(0);
        d::split(M, std::max<int64_t>(32, d::kGrainValues / std::max<int64_t>(K, 1)), 32,
                 [&](int64_t k0, int64_t k1) {
                   std::vector<typename d::Vec<S>::A> buf(kR * ((k1 - k0 + 31) / 32 * 32));
                   if constexpr (kPairs) {
                     d::axpy_block_pairs<kR>(ap, lda, wp, ldw, K, k0, k1, op, M, buf.data());
                   } else {
                     d::axpy_block<S, kR>(ap, lda, wp, ldw, K, k0, k1, op, M, buf.data());
                   }
                 });
      }
    });
  };
  switch (dt) {
    case ScalarType::Double: run(double{}); break;
    default: run(c10::BFloat16{}); break;
  }
  return true;
}

// Whether few_rows_tn takes a^T @ b: a [R, G], b [R, K] (rows contiguous), R <= kFewRows.
inline bool few_rows_tn_takes(const Tensor& a, const Tensor& b) {
  const int64_t R = a.size(0);
  return R >= 1 && R <= kFewRows && a.size(1) > 0 && b.size(1) > 0 &&
         few_rows_available(a.scalar_type()) && b.scalar_type() == a.scalar_type() &&
         a.stride(1) == 1 && b.stride(1) == 1;
}

// out = a^T @ b (out [G, K] contiguous) where few_rows_tn_takes(a, b), with non-temporal
// stores from kFewRowsStreamBytes on (each element stored once, not read back: plain
// stores would read every line in and evict the weights).
constexpr int64_t kFewRowsStreamBytes = 1 << 20;

inline void few_rows_tn(const Tensor& a, const Tensor& b, Tensor& out) {
  namespace d = few_rows_detail;
  const ScalarType dt = a.scalar_type();
  const int64_t R = a.size(0), G = a.size(1), K = b.size(1);
  const int64_t es = out.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 64 == 0 &&
                       (K * es) % 64 == 0;
  const bool stream = aligned && G * K * es >= kFewRowsStreamBytes;
  auto run = [&](auto tag) {
    using S = decltype(tag);
    const S* ap = static_cast<const S*>(a.const_data_ptr());
    const S* bp = static_cast<const S*>(b.const_data_ptr());
    S* op = static_cast<S*>(out.mutable_data_ptr());
    d::split(G, std::max<int64_t>(1, d::kGrainValues / K), 1, [&](int64_t g0, int64_t g1) {
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        d::outer_block_pairs(ap, a.stride(0), bp, b.stride(0), R, K, g0, g1, op, K, stream);
      } else {
        d::outer_block<S>(ap, a.stride(0), bp, b.stride(0), R, K, g0, g1, op, K, stream);
      }
    });
  };
  switch (dt) {
    case ScalarType::Double: run(double{}); break;
    default: run(c10::BFloat16{}); break;
  }
}

#else

inline bool few_rows_mm(const Tensor&, const Tensor&, Tensor&) { return false; }
inline bool few_rows_tn_takes(const Tensor&, const Tensor&) { return false; }
inline void few_rows_tn(const Tensor&, const Tensor&, Tensor&) {}

#endif  // FUSEDRNN_HAVE_FEW_ROWS

}  // namespace fusedrnn
