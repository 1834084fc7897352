// The register-blocked AVX-512 micro-kernels of the fused loops: MR rows times a packed
// weight panel of 16-unit vectors, accumulated in zmm registers over a chunk of k and
// added to the partial sums in memory (recurrence.h and fused_backward.h drive them).
#pragma once

#include "common.h"

#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define FUSEDRNN_HAVE_FUSED 1
#define FUSEDRNN_AVX512 __attribute__((target("avx512f")))
#define FUSEDRNN_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))
#else
#define FUSEDRNN_HAVE_FUSED 0
#endif

namespace fusedrnn {

// Hidden units per block: one 16-float vector per gate.
constexpr int64_t kUnits = 16;

#if FUSEDRNN_HAVE_FUSED

// Which accumulators a product adds into: Slots<0, 1, 3> sends the three gates of a
// packed panel to accumulators 0, 1 and 3.
template <int... V>
struct Slots {
  static constexpr int size = sizeof...(V);
  static constexpr int at[size] = {V...};
};

// The k loops run in chunks of this many terms; each chunk's sums start from zero and
// are added to the partial result in c. A float dot product's rounding error grows with
// the length of its running sum: summed whole, x W_ih^T + h W_hh^T over I + H terms erred
// twice as much as torch.nn's GEMMs (tests/test_accuracy.py).
constexpr int64_t kChunkK = 128;

// acc[r][S::at[i]] += sum_{k0 <= k < k1} a[r][k] * b[k, i*kUnits : (i+1)*kUnits], MR rows.
template <int MR, int NA, typename S, bool kAhead = false>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void tile_product(
    __m512 (&acc)[MR][NA], const float* const* a, const float* b, int64_t k0, int64_t k1) {
  constexpr int NV = S::size;
  for (int64_t k = k0; k < k1; ++k) {
    if constexpr (kAhead) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(b + ((k + kChunkK) * NV + v) * kUnits), _MM_HINT_T1);
      }
    }
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + (k * NV + v) * kUnits);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r][k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][S::at[v]] = _mm512_fmadd_ps(av, bv[v], acc[r][S::at[v]]);
    }
  }
}


// c[r][v*ldv] = acc[r][v] (the first chunk) or c + acc, lanes in masks[v]; acc = 0.
template <int MR, int NA>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void chunk_done(
    __m512 (&acc)[MR][NA], float* const* c, int64_t ldv, const __mmask16* masks, bool& first) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NA; ++v) {
      float* p = c[r] + v * ldv;
      const __m512 sum =
          first ? acc[r][v] : _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], p), acc[r][v]);
      _mm512_mask_storeu_ps(p, masks[v], sum);
      acc[r][v] = _mm512_setzero_ps();
    }
  }
  first = false;
}

// The bfloat16 form of tile_product, on pairs p of consecutive k (a row's elements 2p and
// 2p+1, in the low and high half of 32 bits) and a kPairs panel: vdpbf16ps adds both
// products to each float accumulator. kTail: the pair holds only k = 2p (K odd).
template <int MR, int NA, typename S, bool kTail>
FUSEDRNN_AVX512_BF16 inline __attribute__((always_inline)) void tile_pairs(
    __m512 (&acc)[MR][NA], const uint16_t* const* a, const uint16_t* b, int64_t p0, int64_t p1) {
  constexpr int NV = S::size;
  for (int64_t p = p0; p < p1; ++p) {
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + (p * NV + v) * 2 * kUnits);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      uint32_t pair = a[r][2 * p];
      if constexpr (!kTail) std::memcpy(&pair, a[r] + 2 * p, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        acc[r][S::at[v]] = _mm512_dpbf16_ps(acc[r][S::at[v]], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
  }
}

// tile_pairs over the pairs of columns [k0, k1) (k0 even) of rows with K columns.
template <int MR, int NA, typename S>
FUSEDRNN_AVX512_BF16 inline void chunk_pairs(__m512 (&acc)[MR][NA], const uint16_t* const* a,
                                             const uint16_t* b, int64_t K, int64_t k0,
                                             int64_t k1) {
  const int64_t full = K / 2, p0 = k0 / 2, p1 = (k1 + 1) / 2;
  tile_pairs<MR, NA, S, false>(acc, a, b, p0, std::min(p1, full));
  if (p1 > full) tile_pairs<MR, NA, S, true>(acc, a, b, full, p1);
}

// Rows per micro-kernel call: MR*NA = 24 of the 32 zmm registers hold accumulators.
template <int NA>
constexpr int kTileRows = 24 / NA;

// One chunk [k0, k1) of the products of `rows` (1..kTileRows) rows a with the panel b
// (K columns in all; float, or bf16 pairs for uint16_t), for one block of kUnits units:
// c[r*ldc + v*H + u] = acc[r][v] if `first` (every accumulator, products or not), else
// c + acc. Called chunk by chunk for every row tile, the chunk's 32 KB of panel stays in
// L1 across the tiles (whole-K tiles streamed a block's 256 KB panel from L2 per tile).
template <int NA, typename S, typename in_t, int MR = kTileRows<NA>>
FUSEDRNN_AVX512 void chunk_rows(int rows, const in_t* const* a, const in_t* b, int64_t K,
                                int64_t k0, int64_t k1, float* c, int64_t ldc, int64_t H,
                                __mmask16 mask, bool first, bool lead = false) {
  if constexpr (MR > 1) {
    if (rows < MR) {
      return chunk_rows<NA, S, in_t, MR - 1>(rows, a, b, K, k0, k1, c, ldc, H, mask, first, lead);
    }
  }
  __m512 acc[MR][NA];
  __mmask16 masks[NA];
  float* cr[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    cr[r] = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NA; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int v = 0; v < NA; ++v) masks[v] = mask;
  if constexpr (std::is_same_v<in_t, float>) {
    if (lead) {
      tile_product<MR, NA, S, true>(acc, a, b, k0, k1);
    } else {
      tile_product<MR, NA, S>(acc, a, b, k0, k1);
    }
  } else {
    chunk_pairs<MR, NA, S>(acc, a, b, K, k0, k1);
  }
  chunk_done<MR, NA>(acc, cr, H, masks, first);
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
