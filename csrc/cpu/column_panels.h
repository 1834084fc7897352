// The backward's products with a weight's columns (fused_backward.h): dG W_hh and
// dX W_ih by blocks of kBackUnits columns, from column panels packed once a call
// (ColumnPanels) or, for a weight the loop reads once, from the weight in place.
#pragma once

#include "recurrence.h"

#include <type_traits>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// Units per block of the backward loop: four vectors.
constexpr int64_t kBackUnits = 4 * kUnits;

// Lane masks of the four vectors of columns [c0, min(C, c0 + kBackUnits)).
inline void block_masks(int64_t c0, int64_t C, __mmask16* masks) {
  for (int v = 0; v < 4; ++v) {
    const int64_t u = std::clamp<int64_t>(C - c0 - v * kUnits, 0, kUnits);
    masks[v] = static_cast<__mmask16>((1u << u) - 1u);
  }
}

// The vectors of a block that hold columns: 4, or fewer in a tail block (masks[v] == 0
// from the first empty one on). The backward's tiles run a tail block by its own vectors:
// with all four, the empty ones' FMAs cost as much as full ones (H=144 ran as 192
// columns). Same sums in the same order, the same bits. Paired on the 2-core Zen 4,
// backward op ms, four vectors -> a tail's own: T=200, N=16, LSTM H=144 18.33 -> 13.44,
// H=160 18.24 -> 15.26, H=176 20.85 -> 19.48, GRU H=144 14.17 -> 10.37; H=128 (no tail)
// level.
inline int block_vectors(const __mmask16* masks) {
  int nv = 0;
  while (nv < 4 && masks[nv] != 0) ++nv;
  return nv;
}

// f(std::integral_constant<int, nv>{}), nv in 1..4: the tiles' vector count as a template
// argument.
template <typename F>
void with_vectors(int nv, const F& f) {
  switch (nv) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

// tile_product's sums (Slots<0, ..., NV-1>: the same FMAs in the same order) over the
// first NV vectors of a block read in place from the weight: row k at b + k * ldb, lanes
// past its columns zero.
template <int MR, int NV>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void strided_product(
    __m512 (&acc)[MR][NV], const float* const* a, const float* b, int64_t ldb,
    const __mmask16* masks, int64_t k0, int64_t k1) {
  const float* ar[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) ar[r] = a[r];
  __mmask16 m[NV];
  for (int v = 0; v < NV; ++v) m[v] = masks[v];
  for (int64_t k = k0; k < k1; ++k) {
    const float* row = b + k * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(m[v], row + v * kUnits);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ar[r][k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
}

// c[r][u] = sum_k a[r][k] * b[k*ldb + u] for MR rows and the units of the first NV
// vectors of a block (NV < 4: a tail block, whose empty vectors cost nothing), lanes in
// masks[u / kUnits]; ldb = kBackUnits: a packed panel (ColumnPanels), else the weight in
// place. k runs in chunks of kChunkK. The k in [k0, k1) only, added to c unless `first`.
template <int MR, int NV>
FUSEDRNN_AVX512 void block_tile(const float* const* a, const float* b, int64_t ldb, int64_t k0,
                                int64_t k1, float* const* c, const __mmask16* masks, bool first,
                                Prefetch& pf) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = k0; k < k1; k += kChunkK) {
    // The panel's rows are [4 vectors of 16 units], the forward panels' layout with 4 gates.
    if (ldb == kBackUnits) {
      tile_product<MR, NV, FirstSlots<NV>, 4>(acc, a, b, k, std::min(k1, k + kChunkK), pf);
    } else {
      strided_product<MR, NV>(acc, a, b, ldb, masks, k, std::min(k1, k + kChunkK));
    }
    chunk_done<MR, NV>(acc, c, kUnits, masks, first);
  }
}

template <int NV, int MR = 6>
FUSEDRNN_AVX512 void block_rows(int rows, const float* const* a, const float* b, int64_t ldb,
                                int64_t k0, int64_t k1, float* const* c, const __mmask16* masks,
                                bool first, Prefetch& pf) {
  if constexpr (MR > 1) {
    if (rows < MR) return block_rows<NV, MR - 1>(rows, a, b, ldb, k0, k1, c, masks, first, pf);
  }
  block_tile<MR, NV>(a, b, ldb, k0, k1, c, masks, first, pf);
}

// Panel rows (k) per pass over the row tiles: 256 KB of panel, which stays in L2 while
// every row tile reads it (at G = 4H = 4096 a whole panel is 1 MB, a core's L2).
constexpr int64_t kPanelRows = 1024;

// w [G, C] (torch's layout) cut into column blocks, [blocks][G][kBackUnits], zero past C:
// each block one contiguous panel (read in place, the rows' 4C-byte stride cost TLB
// misses). Each worker packs a share of the rows of every block at step 0 (pack_rows).
// in_place: no copy; block b is read from w's columns (ld() = C), for a weight the loop
// reads once or twice, where the copy's read and write of all of w cost more than the
// strided reads (panels_in_place).
struct ColumnPanels {
  ColumnPanels(const float* w, int64_t G, int64_t C, bool in_place = false)
      : w_(w), G_(G), C_(C), blocks((C + kBackUnits - 1) / kBackUnits), in_place(in_place),
        data(in_place ? 0 : blocks * G * kBackUnits) {}
  // Rows [g0, g1) of every block: each row of w read once, in order. (Packed by blocks,
  // each worker read its blocks' 256-byte slice of every row, C floats apart: backward
  // time, medians of alternations, T=1, N=1, I=H=1024 (32 MB of panels) LSTM 12.9 ->
  // 12.2 ms, GRU 7.0 -> 5.3 ms; T=200, N=1, H=256 and the wide, small-batch and
  // fastrnns shapes level, 0.99-1.00.)
  FUSEDRNN_AVX512 void pack_rows(int64_t g0, int64_t g1) const {
    if (in_place) return;
    __mmask16 last[4];
    block_masks((blocks - 1) * kBackUnits, C_, last);
    for (int64_t g = g0; g < g1; ++g) {
      const float* src = w_ + g * C_;
      for (int64_t b = 0; b < blocks; ++b) {
        float* dst = start() + (b * G_ + g) * kBackUnits;
        const bool tail = b == blocks - 1;
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const __m512 v = tail ? _mm512_maskz_loadu_ps(last[q], src + b * kBackUnits + q * kUnits)
                                : _mm512_loadu_ps(src + b * kBackUnits + q * kUnits);
          _mm512_storeu_ps(dst + q * kUnits, v);
        }
      }
    }
  }
  const float* block(int64_t b) const {
    return in_place ? w_ + b * kBackUnits : start() + b * G_ * kBackUnits;
  }
  int64_t ld() const { return in_place ? C_ : kBackUnits; }
  float* start() const { return data.data(); }
  const float* w_;
  int64_t G_, C_, blocks;
  bool in_place;
  Scratch<> data;
};

// Rows per group of rows_times_panel: as in the forward (kGroupRows), each k chunk of the
// panel is read by all of a group's row tiles while it is in L1; four tiles where the
// rows are large. (One tile there had been 15% faster than 48 rows, before the panel
// prefetch; now four tiles are ahead of one: a one-core replica of the T=50, N=256,
// I=H=1024 dG W_hh product, 124 -> 140 GFLOP/s medians; in the op, block_tile's perf
// samples against the unchanged outer_tile's, LSTM 1.20/1.16 -> 1.14, GRU 1.14/1.16 ->
// 1.10/1.08.)
inline int64_t backward_group_rows(int64_t rows, int64_t K) {
  return rows * K * int64_t(sizeof(float)) > kGroupRowsBytes ? 24 : kGroupRows;
}

// out_row(n)[j] = a_row(n) . w[:, j] for rows n < rows and the columns j in [j0, j1) of
// block b of w (j0 a multiple of kUnits; a_row(n) has w's G entries); only the terms k in
// [kb, ke) (a whole number of kChunkK chunks from kb, added to out_row unless kb is 0).
template <typename A, typename O>
FUSEDRNN_AVX512 void rows_times_panel(int64_t rows, const A& a_row, const O& out_row,
                                      const ColumnPanels& w, int64_t b, int64_t kb,
                                      int64_t ke, int64_t j0, int64_t j1) {
  __mmask16 masks[4];
  block_masks(j0, j1, masks);
  const int nv = block_vectors(masks);
  const float* panel = w.block(b) + (j0 - b * kBackUnits);
  const int64_t group = backward_group_rows(rows, w.G_);
  for (int64_t k0 = kb; k0 < ke; k0 += kPanelRows) {
    const int64_t k1 = std::min(ke, k0 + kPanelRows);
    for (int64_t m0 = 0; m0 < rows; m0 += group) {
      const int64_t m1 = std::min(rows, m0 + group);
      for (int64_t c0 = k0; c0 < k1; c0 += kChunkK) {
        const int64_t c1 = std::min(k1, c0 + kChunkK);
        // Fetched into L2 meanwhile: the panel's next kChunkK rows (or the next block's).
        // Paired at T=100, N=64, H=512 training, backward: LSTM 405 -> 354 and 429 -> 400
        // ms, GRU 312 -> 298 ms; T=256, N=16, H=768 GRU 462 -> 435 ms, LSTM level.
        const float* next = w.block(b) + c1 * kBackUnits;
        Prefetch pf;
        if (rows >= kPrefetchRows && !w.in_place) {
          const float* end = std::min(next + kChunkK * kBackUnits, w.block(w.blocks));
          pf = {reinterpret_cast<const char*>(next), reinterpret_cast<const char*>(end)};
        }
        for (int64_t n0 = m0, rows_n = 0; n0 < m1; n0 += rows_n) {
          rows_n = tile_rows(m1 - n0, 6);
          const int m = static_cast<int>(rows_n);
          const float* ar[6];
          float* cr[6];
          for (int r = 0; r < m; ++r) {
            ar[r] = a_row(n0 + r);
            cr[r] = out_row(n0 + r) + j0;
          }
          with_vectors(nv, [&](auto v) {
            block_rows<decltype(v)::value>(m, ar, panel, w.ld(), c0, c1, cr, masks, c0 == 0, pf);
          });
        }
      }
    }
  }
}

// The products of rows_times_panel for the columns [u0, u1) (u0 a multiple of kUnits),
// cut at block boundaries: block by block from packed panels; read in place, by pieces of
// kInPlacePieceRows rows of w for all the blocks in turn, so that each row's span of the
// blocks' columns is read whole, from L2 after its first block (block by block, each
// block's 256 bytes of a row came from memory on their own, 4 KB apart at C = 1024). Each
// column's sums stay in the same order: the same bits.
constexpr int64_t kInPlacePieceRows = kChunkK;

template <typename A, typename O>
FUSEDRNN_AVX512 void rows_times_columns(int64_t rows, const A& a_row, const O& out_row,
                                        const ColumnPanels& w, int64_t u0, int64_t u1) {
  if (u1 <= u0) return;
  const int64_t b0 = u0 / kBackUnits, b1 = (u1 + kBackUnits - 1) / kBackUnits;
  auto piece = [&](int64_t b, int64_t kb, int64_t ke) {
    rows_times_panel(rows, a_row, out_row, w, b, kb, ke, std::max(u0, b * kBackUnits),
                     std::min(u1, (b + 1) * kBackUnits));
  };
  if (!w.in_place) {
    for (int64_t b = b0; b < b1; ++b) piece(b, 0, w.G_);
    return;
  }
  for (int64_t k = 0; k < w.G_; k += kInPlacePieceRows) {
    for (int64_t b = b0; b < b1; ++b) piece(b, k, std::min(w.G_, k + kInPlacePieceRows));
  }
}

// The same for the whole blocks [b0, b1).
template <typename A, typename O>
FUSEDRNN_AVX512 void rows_times_blocks(int64_t rows, const A& a_row, const O& out_row,
                                       const ColumnPanels& w, int64_t b0, int64_t b1) {
  rows_times_columns(rows, a_row, out_row, w, b0 * kBackUnits, std::min(w.C_, b1 * kBackUnits));
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
