// Batch-1 steps of the float32 fused forward with the input projection of later steps
// interleaved in the same instruction stream (fused_forward's `overlap`).
//
// Why: at batch 1 a step's product h_{t-1} W_hh^T reads the worker's slice of W_hh from
// L2 once per step (512 KB a core at H=256 LSTM on two cores) and is bound by the L2->L1
// fill, 32 bytes a cycle on Zen 4, while its FMA units idle half the time; x W_ih^T, made
// ahead for a block of steps (own_xg), is bound by the FMA units instead. Run one after
// the other they add up; interleaved, each k of the recurrent product carries FMAs of the
// projection, which reads W_ih once per kRows steps. One-core replica of a step's work
// (8 blocks of 64 columns, K=256, 3000 steps, 2-core Zen 4, us a step): recurrent product
// alone 4.67, then the projection of one row 7.29, interleaved 6.20 (tiles of 5 rows x 4
// vectors), 5.76 (10 rows x 2 vectors), 5.69 (12 x 2); the same with both cores running.
//
// Sums: each recurrent output and each projection output is one running sum over k in
// order in chunks of kChunkK, the order of tile_product and chunk_done: the same bits as
// the unfolded own_xg products, whichever worker makes a piece and wherever the pieces
// are cut (a piece stores its raw accumulators; the next continues them).
#pragma once

#include "packed_weights.h"
#include "tiles.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// FUSEDRNN_CPU_OVERLAP=0 turns the interleaving off (benchmarks, tests).
inline bool overlap_wanted() {
  const char* env = std::getenv("FUSEDRNN_CPU_OVERLAP");
  return !(env && env[0] == '0');
}

// The projection tile: kRows rows (steps) x kVectors of a block's NA gate vectors, its
// accumulators with the recurrent product's NA in registers (LSTM 20 + 4, GRU 21 + 3 of
// the 32 zmm). One projection k goes with kPairK recurrent k: equal FMA counts.
template <int NA>
struct OverlapTile;
template <>
struct OverlapTile<4> {
  static constexpr int kRows = 10, kVectors = 2;
};
template <>
struct OverlapTile<3> {
  static constexpr int kRows = 7, kVectors = 3;
};

// The projection tile's raw sums xa into rows out[r] (gate XS::at[v0 + v] at out[r] + that
// gate * H), stored (first) or added, lanes in mask; then zeroed: a finished kChunkK chunk.
template <int RR, int XV, typename XS>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void xg_flush(
    __m512 (&xa)[RR][XV], float* const* out, int64_t H, int v0, __mmask16 mask, bool first) {
#pragma GCC unroll 12
  for (int r = 0; r < RR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < XV; ++v) {
      float* p = out[r] + XS::at[v0 + v] * H;
      const __m512 sum = first ? xa[r][v] : _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), xa[r][v]);
      _mm512_mask_storeu_ps(p, mask, sum);
      xa[r][v] = _mm512_setzero_ps();
    }
  }
}

// xg_flush where the projection has just reached the end of a chunk (xk, not yet flushed).
template <int RR, int XV, typename XS>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void xg_flush_at(
    __m512 (&xa)[RR][XV], int64_t xk, int64_t& flushed, int64_t I, float* const* out,
    int64_t H, int v0, __mmask16 mask) {
  if (xk == flushed || (xk % kChunkK != 0 && xk != I)) return;
  xg_flush<RR, XV, XS>(xa, out, H, v0, mask, xk <= kChunkK);
  flushed = xk;
}

// One block of a step: the recurrent product of row a with the panel bh over all K terms,
// into c as tile_product and chunk_done make it (gates gs apart, lanes in mask; none
// where K is 0), with the projection tile of rows xr and the panel columns bx (vector v0
// of the block, I terms, output rows out, lanes in xmask) over [xk0, xk1), its raw sums
// continued from and left in xacc [RR][XV][kUnits], a finished chunk flushed to out. One
// projection k rides along kPairK recurrent k while both last; then the rest of either.
template <int NA, typename HS, typename XS, int RR, int XV>
FUSEDRNN_AVX512 void overlap_block(const float* a, const float* bh, int64_t K, float* c,
                                   int64_t gs, __mmask16 mask, const float* const* xr,
                                   const float* bx, int64_t I, int64_t xk0, int64_t xk1,
                                   float* xacc, float* const* out, int64_t H, int v0,
                                   __mmask16 xmask) {
  constexpr int kPairK = std::max(1, RR * XV / NA);
  __m512 acc[1][NA];
  __m512 xa[RR][XV];
  const float* rows[RR];  // locals: the loop's loads are not reloaded through xr
  const float* arow[1] = {a};
#pragma GCC unroll 12
  for (int r = 0; r < RR; ++r) {
    rows[r] = xr[r];
#pragma GCC unroll 4
    for (int v = 0; v < XV; ++v) xa[r][v] = _mm512_loadu_ps(xacc + (r * XV + v) * kUnits);
  }
  float* cr[1] = {c};
  __mmask16 masks[NA];
  for (int v = 0; v < NA; ++v) masks[v] = mask;
  int64_t xk = xk0, flushed = xk0;
  // A chunk of the projection ends at a multiple of kChunkK or at I: its sums go to out.
  auto x_end = [&] { return std::min(xk1, (xk / kChunkK + 1) * kChunkK); };
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t k1 = std::min(K, k0 + kChunkK);
#pragma GCC unroll 4
    for (int v = 0; v < NA; ++v) acc[0][v] = _mm512_setzero_ps();
    int64_t rk = k0;
    while (true) {
      const int64_t xe = x_end();
      for (; rk + kPairK <= k1 && xk < xe; rk += kPairK, ++xk) {
#pragma GCC unroll 12
        for (int i = 0; i < kPairK; ++i) tile_k<1, NA, HS>(acc, arow, bh, rk + i);
        tile_k<RR, XV, FirstSlots<XV>, NA>(xa, rows, bx, xk);
      }
      xg_flush_at<RR, XV, XS>(xa, xk, flushed, I, out, H, v0, xmask);
      if (xk < xe || xk == xk1) break;  // the recurrent chunk's end, or the projection's
    }
    for (; rk < k1; ++rk) tile_k<1, NA, HS>(acc, arow, bh, rk);
    bool first = k0 == 0;
    chunk_done<1, NA>(acc, cr, gs, masks, first);
  }
  while (xk < xk1) {
    for (const int64_t xe = x_end(); xk < xe; ++xk) {
      tile_k<RR, XV, FirstSlots<XV>, NA>(xa, rows, bx, xk);
    }
    xg_flush_at<RR, XV, XS>(xa, xk, flushed, I, out, H, v0, xmask);
  }
#pragma GCC unroll 12
  for (int r = 0; r < RR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < XV; ++v) _mm512_storeu_ps(xacc + (r * XV + v) * kUnits, xa[r][v]);
  }
}

// x W_ih^T of batch-1 steps, kRows steps (a group) at a time, in a ring of two groups: the
// workers make group c+1 in pieces that ride along their recurrent products of group c's
// steps (block), each for the blocks it owns at the first step (its even share, the
// Balancer's first split), and finish what is left at the group's last step (finish);
// group 0 at step 0, before the step's products (start). A step's row is read by its cell
// (row). xrow[s]: the row of x of step s in run order; packed_x: W_ih's panels, packed.
// An item is a block's kVectors vectors for the group's rows, in kPieces pieces: with
// I = H, a group's items take as many pieces as the group has recurrent blocks.
template <int NA, typename HS, typename XS>
class XgPipeline {
 public:
  using Tile = OverlapTile<NA>;
  static constexpr int RR = Tile::kRows, XV = Tile::kVectors;
  static constexpr int kGroups = NA / XV;  // vector groups a block
  static constexpr int kPairK = std::max(1, RR * XV / NA);
  static_assert(NA % XV == 0);

  // (XS::size == NA: fused_forward's own_xg.)
  XgPipeline(int64_t T, int64_t H, int64_t I, int64_t workers, std::vector<const float*> xrow,
             const PackedWeights<float, false>& packed_x)
      : T_(T), H_(H), I_(I), G_(NA * H), blocks_(packed_x.blocks()), workers_(workers),
        piece_(piece_length(H, I)), xrow_(std::move(xrow)), px_(packed_x),
        ring_(2 * RR * NA * H), cursors_(workers) {}

  const float* row(int64_t s) const { return ring_.data() + ((s / RR) % 2 * RR + s % RR) * G_; }

  // Step s of worker w, before its products: group 0 at step 0; a group's first step
  // opens the cursor on the next group.
  void start(int64_t w, int64_t s) {
    Cursor& q = cursors_[w];
    if (s == 0) {
      q = Cursor{0, 0, 0, true};
      finish_group(q, w);
    }
    if (s % RR == 0) q = Cursor{s / RR + 1, 0, 0, (s / RR + 1) * RR < T_};
  }

  // The recurrent product of row a with block b's panel bh into c (see overlap_block),
  // carrying the next piece of worker w's projection work.
  void block(int64_t w, const float* a, const float* bh, float* c, int64_t gs, __mmask16 mask) {
    run(cursors_[w], w, a, bh, H_, c, gs, mask);
  }

  // The end of worker w's step s: at a group's last step, what is left of the next group.
  void finish(int64_t w, int64_t s) {
    if (s % RR == RR - 1 || s == T_ - 1) finish_group(cursors_[w], w);
  }

 private:
  struct alignas(64) Cursor {
    int64_t group = 0, item = 0, k = 0;
    bool active = false;
    float acc[RR * XV * kUnits] = {};
  };

  // I split into the pieces of as many blocks as its k take at kPairK recurrent k each.
  static int64_t piece_length(int64_t H, int64_t I) {
    const int64_t pieces = std::max<int64_t>(1, (I * kPairK + H - 1) / H);
    return (I + pieces - 1) / pieces;
  }

  int64_t first_block(int64_t w) const { return blocks_ * w / workers_; }
  int64_t items(int64_t w) const { return (first_block(w + 1) - first_block(w)) * kGroups; }

  // One block's recurrent product (K terms; none: K = 0) with the cursor's next piece.
  void run(Cursor& q, int64_t w, const float* a, const float* bh, int64_t K, float* c,
           int64_t gs, __mmask16 mask) {
    const float* rows[RR] = {};
    float* out[RR] = {};
    const float* bx = nullptr;
    int64_t xk1 = q.k, v0 = 0;
    __mmask16 xmask = 0;
    if (q.active) {
      const int64_t b = first_block(w) + q.item / kGroups;
      const int64_t j0 = b * kUnits, j1 = std::min(H_, j0 + kUnits);
      v0 = q.item % kGroups * XV;
      bx = px_.block(b) + v0 * kUnits;
      xmask = static_cast<__mmask16>((1u << (j1 - j0)) - 1u);
      for (int r = 0; r < RR; ++r) {
        rows[r] = xrow_[std::min(T_ - 1, q.group * RR + r)];
        out[r] = ring_.data() + (q.group % 2 * RR + r) * G_ + j0;
      }
      xk1 = K > 0 ? std::min(I_, q.k + piece_) : I_;
    }
    overlap_block<NA, HS, XS, RR, XV>(a, bh, K, c, gs, mask, rows, bx, I_, q.k, xk1, q.acc, out,
                                      H_, static_cast<int>(v0), xmask);
    if (!q.active) return;
    q.k = xk1;
    if (q.k == I_) {  // the item's sums are in the ring (overlap_block flushed them)
      q.k = 0;
      if (++q.item == items(w)) q.active = false;
    }
  }

  void finish_group(Cursor& q, int64_t w) {
    while (q.active) run(q, w, nullptr, nullptr, 0, nullptr, 0, 0);
  }

  int64_t T_, H_, I_, G_, blocks_, workers_, piece_;
  std::vector<const float*> xrow_;
  const PackedWeights<float, false>& px_;
  Scratch<float> ring_;
  std::vector<Cursor> cursors_;
};

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
