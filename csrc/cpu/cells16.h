// The per-unit forward loops of lstm.cpp and gru.cpp on 16 units at a time (cells16 of
// ../cells.h) on AVX-512 CPUs for float opmath with float or bfloat16 storage, or 8
// (cells8) on AVX2 CPUs with float storage: the loops, their loads and stores, and the
// switch.
#pragma once

#include "common.h"
#include "../cells.h"

#include <cstdlib>
#include <cstring>

namespace fusedrnn {

#if FUSEDRNN_HAVE_CELLS16

// CPUs with AVX-512 F, BW, VL and DQ.
inline bool cells16_cpu() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return cpu;
}

// True where the forward cells run 16 units at a time: cells16_cpu(). With
// FUSEDRNN_CPU_CELLS16=0, the scalar loops (vectorized by gcc); read at every op call
// (tests compare the two).
inline bool cells16_on() {
  const char* env = std::getenv("FUSEDRNN_CPU_CELLS16");
  return cells16_cpu() && !(env && env[0] == '0');
}

// Storage types the 16-unit loops take.
template <typename T>
constexpr bool kCells16Storage = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;

// Lanes [0, left) of 16.
inline __mmask16 lanes16(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// 16 values (lanes in m, others 0) as floats.
FUSEDRNN_CELLS16 __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
FUSEDRNN_CELLS16 __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m256i u = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(u), 16));
}

// The lanes in m of v; bfloat16 rounded to nearest even, NaN as 0x7FC0: c10::BFloat16's
// conversion.
FUSEDRNN_CELLS16 void store16(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
FUSEDRNN_CELLS16 void store16(c10::BFloat16* p, __mmask16 m, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i hi = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  hi = _mm512_mask_mov_epi32(hi, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(hi));
}

// lstm.cpp's lstm_forward_scalar on 16 units at a time: float opmath and float hg (xg,
// y: float or bfloat16 storage).
template <bool kXg, bool kSave, typename scalar_t>
FUSEDRNN_CELLS16_TARGET void lstm_forward_units16(const scalar_t* xg, const float* hg, int64_t hs,
                                                  const float* b, float* c, scalar_t* y,
                                                  float* w, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 16) {
    const __mmask16 m = lanes16(j1 - j);
    __m512 pre[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m512 p = load16(hg + v * hs + j, m);
      if constexpr (kXg) p = _mm512_add_ps(load16(xg + v * H + j, m), p);
      pre[v] = _mm512_add_ps(p, load16(b + v * H + j, m));
    }
    const cells16::LSTM f(pre[0], pre[1], pre[2], pre[3], load16(c + j, m));
    if constexpr (kSave) {
      store16(w + j, m, f.i);
      store16(w + H + j, m, f.f);
      store16(w + 2 * H + j, m, f.g);
      store16(w + 3 * H + j, m, f.o);
      store16(w + 4 * H + j, m, f.c);
    }
    store16(c + j, m, f.c);
    store16(y + j, m, f.h);
  }
}

// gru.cpp's gru_forward_scalar on 16 units at a time: float opmath and float hg.
template <bool kXg, bool kSave, typename scalar_t, typename xn_t>
FUSEDRNN_CELLS16_TARGET void gru_forward_units16(const scalar_t* xg, const xn_t* xn,
                                                 const float* hg, int64_t hs, const float* bi,
                                                 const float* bh, float* h, scalar_t* y,
                                                 float* w, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 16) {
    const __mmask16 m = lanes16(j1 - j);
    const __m512 hn = _mm512_add_ps(load16(hg + 2 * hs + j, m), load16(bh + 2 * H + j, m));
    __m512 pre[2];
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      __m512 p = load16(hg + v * hs + j, m);
      if constexpr (kXg) p = _mm512_add_ps(load16(xg + v * H + j, m), p);
      pre[v] = _mm512_add_ps(_mm512_add_ps(p, load16(bi + v * H + j, m)), load16(bh + v * H + j, m));
    }
    const __m512 xnb = _mm512_add_ps(load16(xn + j, m), load16(bi + 2 * H + j, m));
    const cells16::GRU f(pre[0], pre[1], xnb, hn, load16(h + j, m));
    if constexpr (kSave) {
      store16(w + j, m, f.r);
      store16(w + H + j, m, f.z);
      store16(w + 2 * H + j, m, f.n);
      store16(w + 3 * H + j, m, hn);
    }
    store16(h + j, m, f.h);
    store16(y + j, m, f.h);
  }
}

#else
inline bool cells16_on() { return false; }
#endif  // FUSEDRNN_HAVE_CELLS16

#if FUSEDRNN_HAVE_CELLS8

// True where the forward cells run 8 units at a time: AVX2 and FMA on CPUs without the
// AVX-512 of cells16_on (there FUSEDRNN_CPU_CELLS16=0 still means the scalar loops).
// FUSEDRNN_CPU_CELLS8=0: the scalar loops; read at every op call.
inline bool cells8_on() {
  static const bool cpu =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !cells16_cpu();
  const char* env = std::getenv("FUSEDRNN_CPU_CELLS8");
  return cpu && !(env && env[0] == '0');
}

// 8 floats, or the first `left` of them where left < 8 (the others 0): a row's last units.
FUSEDRNN_CELLS8_TARGET inline __m256 load8(const float* p, int64_t left) {
  if (left >= 8) return _mm256_loadu_ps(p);
  float t[8] = {};
  std::memcpy(t, p, left * sizeof(float));
  return _mm256_loadu_ps(t);
}

// The first min(left, 8) lanes of v.
FUSEDRNN_CELLS8_TARGET inline void store8(float* p, int64_t left, __m256 v) {
  if (left >= 8) return _mm256_storeu_ps(p, v);
  float t[8];
  _mm256_storeu_ps(t, v);
  std::memcpy(p, t, left * sizeof(float));
}

// lstm_forward_units16 on 8 units at a time (cells8), float storage only: on CPUs without
// AVX-512, bfloat16 storage takes the GEMM loop, whose gates are bfloat16.
template <bool kXg, bool kSave>
FUSEDRNN_CELLS8_TARGET void lstm_forward_units8(const float* xg, const float* hg, int64_t hs,
                                                const float* b, float* c, float* y, float* w,
                                                int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 8) {
    const int64_t m = j1 - j;
    __m256 pre[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m256 p = load8(hg + v * hs + j, m);
      if constexpr (kXg) p = _mm256_add_ps(load8(xg + v * H + j, m), p);
      pre[v] = _mm256_add_ps(p, load8(b + v * H + j, m));
    }
    const cells8::LSTM f(pre[0], pre[1], pre[2], pre[3], load8(c + j, m));
    if constexpr (kSave) {
      store8(w + j, m, f.i);
      store8(w + H + j, m, f.f);
      store8(w + 2 * H + j, m, f.g);
      store8(w + 3 * H + j, m, f.o);
      store8(w + 4 * H + j, m, f.c);
    }
    store8(c + j, m, f.c);
    store8(y + j, m, f.h);
  }
}

// gru_forward_units16 on 8 units at a time (cells8), float storage only (as
// lstm_forward_units8).
template <bool kXg, bool kSave>
FUSEDRNN_CELLS8_TARGET void gru_forward_units8(const float* xg, const float* xn,
                                               const float* hg, int64_t hs, const float* bi,
                                               const float* bh, float* h, float* y,
                                               float* w, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 8) {
    const int64_t m = j1 - j;
    const __m256 hn = _mm256_add_ps(load8(hg + 2 * hs + j, m), load8(bh + 2 * H + j, m));
    __m256 pre[2];
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      __m256 p = load8(hg + v * hs + j, m);
      if constexpr (kXg) p = _mm256_add_ps(load8(xg + v * H + j, m), p);
      pre[v] = _mm256_add_ps(_mm256_add_ps(p, load8(bi + v * H + j, m)), load8(bh + v * H + j, m));
    }
    const __m256 xnb = _mm256_add_ps(load8(xn + j, m), load8(bi + 2 * H + j, m));
    const cells8::GRU f(pre[0], pre[1], xnb, hn, load8(h + j, m));
    if constexpr (kSave) {
      store8(w + j, m, f.r);
      store8(w + H + j, m, f.z);
      store8(w + 2 * H + j, m, f.n);
      store8(w + 3 * H + j, m, hn);
    }
    store8(h + j, m, f.h);
    store8(y + j, m, f.h);
  }
}

#else
inline bool cells8_on() { return false; }
#endif  // FUSEDRNN_HAVE_CELLS8

// Lanes of the forward cells' vector loops on this CPU: 16 (cells16_on), 8 (cells8_on), or
// 0 for the scalar loops (which gcc vectorizes).
inline int cell_lanes() { return cells16_on() ? 16 : (cells8_on() ? 8 : 0); }

}  // namespace fusedrnn
