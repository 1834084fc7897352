// The per-unit forward loops of lstm.cpp and gru.cpp on 16 units at a time (cells16 of
// ../cells.h), for float opmath with float or bfloat16 storage on AVX-512 CPUs: loads and
// stores of 16 storage values, and the switch.
#pragma once

#include "common.h"
#include "../cells.h"

#include <cstdlib>

namespace fusedrnn {

#if FUSEDRNN_HAVE_CELLS16

// True where the forward cells run 16 units at a time: AVX-512 F, BW, VL and DQ. With
// FUSEDRNN_CPU_CELLS16=0, the scalar loops (vectorized by gcc) everywhere; read at every
// op call (tests compare the two).
inline bool cells16_on() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const char* env = std::getenv("FUSEDRNN_CPU_CELLS16");
  return cpu && !(env && env[0] == '0');
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

#else
inline bool cells16_on() { return false; }
#endif  // FUSEDRNN_HAVE_CELLS16

}  // namespace fusedrnn
