// The register-blocked AVX-512 micro-kernels of the fused loops: MR rows times a packed
// weight panel of 16-unit vectors, accumulated in zmm registers over a chunk of k and
// added to the partial sums in memory (recurrence.h and fused_backward.h drive them).
#pragma once

#include "common.h"

#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define FUSEDRNN_HAVE_FUSED 1
#define FUSEDRNN_AVX512 __attribute__((target("avx512f")))
#define FUSEDRNN_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))
#else
#define FUSEDRNN_HAVE_FUSED 0
#endif

#if FUSEDRNN_HAVE_FUSED && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define FUSEDRNN_HAVE_AMX 1
#define FUSEDRNN_AMX __attribute__((target("amx-tile,amx-bf16")))
#else
#define FUSEDRNN_HAVE_AMX 0
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

// Slots<0, 1, ..., N-1>.
template <typename Seq>
struct SlotsOf;
template <int... V>
struct SlotsOf<std::integer_sequence<int, V...>> {
  using type = Slots<V...>;
};
template <int N>
using FirstSlots = typename SlotsOf<std::make_integer_sequence<int, N>>::type;

// The k loops run in chunks of this many terms; each chunk's sums start from zero and
// are added to the partial result in c. A float dot product's rounding error grows with
// the length of its running sum: summed whole, x W_ih^T + h W_hh^T over I + H terms erred
// twice as much as torch.nn's GEMMs (tests/test_accuracy.py).
constexpr int64_t kChunkK = 128;

// The chunk of the bf16 products (kPairs): their rows and sums are bf16-rounded around
// float sums whose error is far below it, and a chunk's fixed cost (its partial sums
// loaded, added and stored) weighs twice as much at vdpbf16ps's doubled rate. Paired on
// a 2-core Zen 4, bfloat16 inference, chunks of 128 -> 512: T=100, N=64, H=512 LSTM
// 72.3/77.6 -> 68.1/66.1 ms (0.91x -> 0.98x torch.nn), GRU 56.2/55.9 -> 51.5/53.2 ms;
// T=256, N=16, H=768 LSTM 110.2/103.4 -> 98.6/99.6 ms; T=50, N=256, H=1024 LSTM 594 ->
// 545 ms. 1024 and whole rows were level with 512.
constexpr int64_t kPairsChunkK = 512;

// Memory a micro-kernel call fetches into L2 as it runs, one cache line per k, from p up to
// end (p advances): the next chunk of the panel, which its first row tile would otherwise
// wait for. A worker's panels pass its core's L2 once a step where the weights outgrow it
// (4 MB a core at T=100, N=64, H=512 LSTM, folded), so they come from L3. Gains, paired
// in the ops: recurrence.h (forward), fused_backward.h (dG W products).
struct Prefetch {
  const char* p = nullptr;
  const char* end = nullptr;
};

// Products of fewer rows prefetch nothing: there the panel loads themselves are the bound,
// and the prefetches took load slots. Paired at T=200, N=1, H=256: forward GRU inference
// ratio 2.93x -> 3.05x, LSTM 1.35x -> 1.46x (medians of 4 alternated runs); backward,
// medians of 150 alternations, LSTM 5.17 -> 4.88 ms, GRU 3.17 -> 3.12 ms.
constexpr int64_t kPrefetchRows = 8;

// acc[r][S::at[i]] += a[r][k] * b[k*kStride*kUnits + i*kUnits ...], i < S::size: one k of
// an MR-row tile, over a panel whose rows hold kStride vectors.
template <int MR, int NA, typename S, int kStride = S::size>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void tile_k(__m512 (&acc)[MR][NA],
                                                                 const float* const* a,
                                                                 const float* b, int64_t k) {
  constexpr int NV = S::size;
  __m512 bv[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + (k * kStride + v) * kUnits);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    const __m512 av = _mm512_set1_ps(a[r][k]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][S::at[v]] = _mm512_fmadd_ps(av, bv[v], acc[r][S::at[v]]);
  }
}

// acc[r][S::at[i]] += sum_{k0 <= k < k1} a[r][k] * b[k, i*kUnits : (i+1)*kUnits], MR rows;
// the panel's rows hold kStride vectors.
template <int MR, int NA, typename S, int kStride = S::size>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void tile_product(
    __m512 (&acc)[MR][NA], const float* const* a, const float* b, int64_t k0, int64_t k1,
    Prefetch& pf) {
  constexpr int NV = S::size;
  // pf.end and the row pointers in locals: read through pf and a, gcc reloaded both every
  // k (3 loads more per k at batch 1, GRU's three panel loads) and could not split the
  // loop into its prefetching and plain forms. Same sums in the same order. Op time,
  // T=200, N=1, H=256, 7 alternations of the two builds: GRU 1462/1739/1927/1755 ->
  // 1358/1740/1267/1357 us (and 1954/2077/1870 -> 1403/1661/1407); LSTM level (medians
  // 2031 vs 1994 us in 5).
  const char* pp = pf.p;
  const char* const pend = pf.end;
  const float* ar[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) ar[r] = a[r];
  for (int64_t k = k0; k < k1; ++k) {
    if (pp < pend) {
      _mm_prefetch(pp, _MM_HINT_T1);
      pp += 64;
    }
    tile_k<MR, NA, S, kStride>(acc, ar, b, k);
  }
  pf.p = pp;
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
  const uint16_t* ar[MR];  // locals, as in tile_product
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) ar[r] = a[r];
  // The sums in a local copy: on acc itself (the caller's array, by reference, in a
  // function gcc did not inline) every vdpbf16ps was followed by a store, as the row
  // loads (memcpy) may alias it; the loop ran at 36% of the bf16 peak on a 2-core Zen 4.
  __m512 sums[MR][NA];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NA; ++v) sums[r][v] = acc[r][v];
  }
  for (int64_t p = p0; p < p1; ++p) {
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + (p * NV + v) * 2 * kUnits);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      uint32_t pair = ar[r][2 * p];
      if constexpr (!kTail) std::memcpy(&pair, ar[r] + 2 * p, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        sums[r][S::at[v]] = _mm512_dpbf16_ps(sums[r][S::at[v]], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NA; ++v) acc[r][v] = sums[r][v];
  }
}

// tile_pairs over the pairs of columns [k0, k1) (k0 even) of rows with K columns.
template <int MR, int NA, typename S>
FUSEDRNN_AVX512_BF16 inline __attribute__((always_inline)) void chunk_pairs(__m512 (&acc)[MR][NA], const uint16_t* const* a,
                                             const uint16_t* b, int64_t K, int64_t k0,
                                             int64_t k1) {
  const int64_t full = K / 2, p0 = k0 / 2, p1 = (k1 + 1) / 2;
  tile_pairs<MR, NA, S, false>(acc, a, b, p0, std::min(p1, full));
  if (p1 > full) tile_pairs<MR, NA, S, true>(acc, a, b, full, p1);
}

// Rows per micro-kernel call: MR*NA = 24 of the 32 zmm registers hold accumulators.
template <int NA>
constexpr int kTileRows = 24 / NA;

// The rows of the next row tile, `left` rows to go, tiles of up to MR rows: a remainder
// of fewer than MR/2 rows joins the tile before it and the two split evenly (32 rows in
// 6-row tiles: 6, 6, 6, 6, 4, 4, not ..., 6, 2). A 2-row tile makes 8 FMAs a k for four
// panel loads, where whole-K tiles stream the panel from L2 (whole_k_tiles) that rate
// bounds it. Each row's sums are its own whatever its tile: the same bits. Zen 4, T=100,
// N=32, I=H=512 LSTM inference, alternated processes: float32 63.7/65.7/64.2/64.7 ->
// 62.7/62.8/62.7/64.4 ms, bfloat16 33.6/33.7/33.8/33.9 -> 33.4/33.4/33.4/33.5; backward
// level (142.8/138.1/144.3 vs 139.4/142.6/141.8 ms).
inline int64_t tile_rows(int64_t left, int64_t MR) {
  if (left > MR && left < MR + MR / 2) return (left + 1) / 2;
  return std::min(left, MR);
}

// The columns [k0, k1) of the products of `rows` (1..kTileRows) rows a with the panel b
// (K columns in all; float, or bf16 pairs for uint16_t), for one block of kUnits units,
// by chunks of kChunkK (kPairsChunkK) from k0: for each, c[r*ldc + v*H + u] = acc[r][v]
// if `first` and the chunk is the call's first (every accumulator, products or not),
// else c + acc. Called for one chunk at a time, every row tile of a group in turn (the
// chunk's 32 KB of panel stays in L1 across them), or for the whole K (whole_k_tiles).
// A row tile's start: sums zero, row r's outputs at c + r*ldc, every gate's lanes in mask.
template <int MR, int NA>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void tile_begin(
    __m512 (&acc)[MR][NA], float* (&cr)[MR], __mmask16 (&masks)[NA], float* c, int64_t ldc,
    __mmask16 mask) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    cr[r] = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NA; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int v = 0; v < NA; ++v) masks[v] = mask;
}

template <int NA, typename S, int MR>
FUSEDRNN_AVX512_BF16 void chunk_rows_pairs(const uint16_t* const* a, const uint16_t* b,
                                           int64_t K, int64_t k0, int64_t k1, float* c,
                                           int64_t ldc, int64_t H, __mmask16 mask, bool first);

template <int NA, typename S, typename in_t, int MR = kTileRows<NA>>
FUSEDRNN_AVX512 void chunk_rows(int rows, const in_t* const* a, const in_t* b, int64_t K,
                                int64_t k0, int64_t k1, float* c, int64_t ldc, int64_t H,
                                __mmask16 mask, bool first, Prefetch& pf) {
  if constexpr (MR > 1) {
    if (rows < MR) {
      return chunk_rows<NA, S, in_t, MR - 1>(rows, a, b, K, k0, k1, c, ldc, H, mask, first, pf);
    }
  }
  if constexpr (!std::is_same_v<in_t, float>) {
    return chunk_rows_pairs<NA, S, MR>(a, b, K, k0, k1, c, ldc, H, mask, first);
  } else {
    __m512 acc[MR][NA];
    __mmask16 masks[NA];
    float* cr[MR];
    tile_begin<MR, NA>(acc, cr, masks, c, ldc, mask);
    for (int64_t c0 = k0; c0 < k1; c0 += kChunkK) {
      tile_product<MR, NA, S>(acc, a, b, c0, std::min(k1, c0 + kChunkK), pf);
      chunk_done<MR, NA>(acc, cr, H, masks, first);
    }
  }
}

// chunk_rows of bf16 pairs, in a function of the bf16 target so that the pair tiles
// inline and the sums stay in registers from zero to chunk_done (called from chunk_rows,
// whose avx512f target could not inline them, the sums went through the stack: zeroed
// there, copied in and out of every chunk_pairs call; 5% of a T=100, N=64, H=512 bf16
// LSTM inference's samples sat in chunk_rows, against 68% in the pair tiles).
template <int NA, typename S, int MR>
FUSEDRNN_AVX512_BF16 void chunk_rows_pairs(const uint16_t* const* a, const uint16_t* b,
                                           int64_t K, int64_t k0, int64_t k1, float* c,
                                           int64_t ldc, int64_t H, __mmask16 mask, bool first) {
  __m512 acc[MR][NA];
  __mmask16 masks[NA];
  float* cr[MR];
  tile_begin<MR, NA>(acc, cr, masks, c, ldc, mask);
  for (int64_t c0 = k0; c0 < k1; c0 += kPairsChunkK) {
    chunk_pairs<MR, NA, S>(acc, a, b, K, c0, std::min(k1, c0 + kPairsChunkK));
    chunk_done<MR, NA>(acc, cr, H, masks, first);
  }
}

// One 16 x 16 block, d[i * ld + j] = s[j * ls + i], in registers: unpack pairs, shuffle
// quads, then two rounds of 128-bit lane shuffles.
FUSEDRNN_AVX512 inline void transpose16(const float* s, int64_t ls, float* d, int64_t ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(s + i * ls);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(d + i * ld, r[i]);
}

#endif  // FUSEDRNN_HAVE_FUSED

// True where the CPU has AMX-BF16 (Sapphire Rapids and later): CPUID.(7,0):EDX bit 22.
// oneDNN's bfloat16 GEMMs run on its tiles there, at several times the vector units' rate.
inline bool amx_bf16_available() {
#if FUSEDRNN_HAVE_FUSED
  static const bool amx = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1u);
  }();
  return amx;
#else
  return false;
#endif
}

#if FUSEDRNN_HAVE_AMX

// True where the AMX kernels run (bfloat16 weight gradients, amx.h; the forward's
// recurrent products, amx_gates): the CPU has AMX-BF16 and Linux granted this
// process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), unless
// FUSEDRNN_CPU_AMX=0 (tests of the float path that other CPUs run).
inline bool amx_usable() {
  static const bool granted = [] {
    constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return amx_bf16_available() &&
           syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  const char* env = std::getenv("FUSEDRNN_CPU_AMX");
  return granted && !(env && env[0] == '0');
}

inline int64_t round32(int64_t n) { return (n + 31) / 32 * 32; }

// The tile layout every tile uses: 16 rows of 64 bytes (C: 16 floats; A: 32 bf16 of k;
// B: 16 pairs of k for 16 columns). Tiles 0-3 accumulate a 32x32 block of C, 4-5 hold A,
// 6-7 hold B.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) {
      colsb[i] = 64;
      rows[i] = 16;
    }
  }
};

// One k step of amx_gates: row tile TA (4 or 5; the tile intrinsics take literal
// numbers), the NA gates' weights through tiles 6 and 7.
#define FUSEDRNN_AMX_KSTEP(TA, a, b)        \
  do {                                      \
    _tile_loadd(TA, a, lda_b);              \
    _tile_loadd(6, b, ldb);                 \
    _tile_dpbf16ps(0, TA, 6);               \
    _tile_loadd(7, (b) + 2 * kUnits, ldb);  \
    _tile_dpbf16ps(1, TA, 7);               \
    _tile_loadd(6, (b) + 4 * kUnits, ldb);  \
    _tile_dpbf16ps(2, TA, 6);               \
    if constexpr (NA == 4) {                \
      _tile_loadd(7, (b) + 6 * kUnits, ldb); \
      _tile_dpbf16ps(3, TA, 7);             \
    }                                       \
  } while (0)

// Where amx_gates reads or writes its NA tiles of float sums: gate v's 16 rows at
// p + v*gate, ld floats apart.
struct GateTiles {
  float* p;
  int64_t ld, gate;
};

// AMX for the forward's recurrent products: all NA gates of one block of kUnits units for
// 16 rows, over k in [k0, k1): out_v = in_v (zero without in) + sum_k a[r*lda + k] *
// W_v[k][u] in float, on tiles 0..NA-1. a: 16 rows of bf16 (zero past K); panel: a kPairs
// PackedWeights block with k padded to a multiple of 32 (zero past K), pairs of k for the
// NA gates' 16 units, [Kp/2][NA*kUnits][2], so gate v's 16 pair rows of a k step are a B
// tile with a stride of NA*64 bytes. The row tile (tile 4) feeds the NA products of a k
// step (tiles 4 and 5 in turn, tiles 6 and 7 the gates' weights). The sums pass between k ranges as
// float, unrounded: the result is the same for any split of k. Needs amx_begin() on the
// calling thread.
template <int NA>
FUSEDRNN_AMX inline void amx_gates(const uint16_t* a, int64_t lda, const uint16_t* panel,
                                   int64_t k0, int64_t k1, const GateTiles* in,
                                   const GateTiles& out) {
  static_assert(NA == 3 || NA == 4);
  const int64_t ldb = NA * kUnits * 2 * int64_t(sizeof(uint16_t));
  const int64_t lda_b = lda * int64_t(sizeof(uint16_t));
  if (in == nullptr) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    if constexpr (NA == 4) _tile_zero(3);
  } else {
    const int64_t ld = in->ld * int64_t(sizeof(float));
    _tile_loadd(0, in->p, ld);
    _tile_loadd(1, in->p + in->gate, ld);
    _tile_loadd(2, in->p + 2 * in->gate, ld);
    if constexpr (NA == 4) _tile_loadd(3, in->p + 3 * in->gate, ld);
  }
  // k steps alternate between row tiles 4 and 5, and the gates' weights between tiles 6
  // and 7: a tile is reloaded two products after the one that read it (tiles are not
  // renamed; reloading the tile the last product reads waits for that product).
  int64_t k = k0;
  for (; k + 64 <= k1; k += 64) {
    FUSEDRNN_AMX_KSTEP(4, a + k, panel + (k / 2) * NA * kUnits * 2);
    FUSEDRNN_AMX_KSTEP(5, a + k + 32, panel + (k / 2 + 16) * NA * kUnits * 2);
  }
  if (k < k1) FUSEDRNN_AMX_KSTEP(4, a + k, panel + (k / 2) * NA * kUnits * 2);
  const int64_t ld = out.ld * int64_t(sizeof(float));
  _tile_stored(0, out.p, ld);
  _tile_stored(1, out.p + out.gate, ld);
  _tile_stored(2, out.p + 2 * out.gate, ld);
  if constexpr (NA == 4) _tile_stored(3, out.p + 3 * out.gate, ld);
}

// Tile configuration on the calling thread (every tile 16 rows of 64 bytes), and release.
FUSEDRNN_AMX inline void amx_begin() {
  static const TileConfig cfg;  // in memory whole: a local one lost its stores (gcc 12)
  _tile_loadconfig(&cfg);
}
FUSEDRNN_AMX inline void amx_end() { _tile_release(); }

#endif  // FUSEDRNN_HAVE_AMX

}  // namespace fusedrnn
