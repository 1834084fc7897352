// The fused backward recurrence on AVX-512 (float32): per step the recurrent product
// dG_{t'} W_hh, the cell's backward, and, every chunk of about kChunkK rows, the weight
// and bias gradients of the chunk's rows and its input gradient dx. Run by the workers of
// recurrence.h, one barrier per step.
//
// Why the weight gradients are in the loop: as GEMMs after it they needed every step's
// dG, a [T*N, G] buffer (52 MB at the fastrnns shape) that the allocator maps fresh and
// page-faults in on every call, plus a copy of the previous states and a pass for the
// bias; oneDNN ran the two transposed products at about 340 GFLOP/s. In the loop, dG
// lives in a ring of a few steps that stays in cache, and each worker adds the rows of
// dW_ih, dW_hh and db of the units it ran at the chunk's last step, a block's chunks in
// order: no sums across workers, so results stay bit-identical for any thread count.
#pragma once

#include "column_panels.h"
#include "recurrence.h"

#include <cmath>
#include <vector>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// Rows of dW per weight-gradient tile.
constexpr int64_t kTileUnits = 6;

// chunk_done's store of a first chunk, for a weight gradient that is one chunk: past the
// caches (non-temporal) where a vector is whole and 64-byte aligned, the gradient written
// once and not read again in this call.
template <int MR, int NV>
FUSEDRNN_AVX512 inline __attribute__((always_inline)) void stream_done(
    __m512 (&acc)[MR][NV], float* const* c, const __mmask16* masks) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* p = c[r] + v * kUnits;
      if (masks[v] == 0xFFFF && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
        _mm512_stream_ps(p, acc[r][v]);
      } else {
        _mm512_mask_storeu_ps(p, masks[v], acc[r][v]);
      }
    }
  }
}

// The weight-gradient tile: for MR rows i of dW and NV vectors of columns q (4, fewer in
// a tail block),
// c[i*ldc + q*kUnits + u] = (first ? 0 : c) + sum_{k < K} a[k*kTileUnits + i] * b[k*kBackUnits + q*kUnits + u],
// lanes in masks[q]. a[k*kTileUnits + i]: dG (or dX) of row k for the tile's unit i; b is
// the panel of the same rows' x (or h_{t-1}) columns, [K][kBackUnits]. k runs in chunks of kChunkK, each chunk's sums added
// to c, as in the forward; with `stream` (one chunk, `first`) stored by stream_done.
template <int MR, int NV>
FUSEDRNN_AVX512 void outer_tile(const float* a, const float* b, int64_t K,
                                float* c, int64_t ldc, const __mmask16* masks, bool first,
                                bool stream = false) {
  __m512 acc[MR][NV];
  float* cr[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    cr[i] = c + i * ldc;
#pragma GCC unroll 4
    for (int q = 0; q < NV; ++q) acc[i][q] = _mm512_setzero_ps();
  }
  // The sums this tile adds to, fetched while the products run (they come from L3).
  if (!first) {
    for (int i = 0; i < MR; ++i)
      for (int q = 0; q < NV; ++q) _mm_prefetch(reinterpret_cast<const char*>(cr[i] + q * kUnits), _MM_HINT_T0);
  }
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    for (int64_t k = k0; k < std::min(K, k0 + kChunkK); ++k) {
      const float* ak = a + k * kTileUnits;
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) bv[q] = _mm512_load_ps(b + k * kBackUnits + q * kUnits);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 av = _mm512_set1_ps(ak[i]);
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) acc[i][q] = _mm512_fmadd_ps(av, bv[q], acc[i][q]);
      }
    }
    if (stream) {
      stream_done<MR, NV>(acc, cr, masks);
    } else {
      chunk_done<MR, NV>(acc, cr, kUnits, masks, first);
    }
  }
}

template <int NV, int MR = 6>
FUSEDRNN_AVX512 void outer_rows(int rows, const float* a, const float* b,
                                int64_t K, float* c, int64_t ldc, const __mmask16* masks,
                                bool first, bool stream = false) {
  if constexpr (MR > 1) {
    if (rows < MR) return outer_rows<NV, MR - 1>(rows, a, b, K, c, ldc, masks, first, stream);
  }
  outer_tile<MR, NV>(a, b, K, c, ldc, masks, first, stream);
}

// The columns v*H + j of K rows g, for the units [j0, j1) of every gate v, by tiles of
// kTileUnits units, [gate][tile][K][kTileUnits], in buf (grown as needed): a weight-
// gradient tile reads its k-th terms in one piece. Read in place from g's rows, G floats
// apart (a multiple of 4 KB at H = 256, 512, 1024...), a tile's K lines fell in one L1
// set. Paired, T=100, N=64, H=512 LSTM backward, best of 4 runs in 6 alternations: 247,
// 255, 269 -> 236, 241, 254 ms.
inline const float* unit_tiles(int64_t K, const float* const* g, int64_t gates, int64_t H,
                               int64_t j0, int64_t j1, std::vector<float>& buf) {
  const int64_t tiles = (j1 - j0 + kTileUnits - 1) / kTileUnits;
  if (static_cast<int64_t>(buf.size()) < gates * tiles * K * kTileUnits) {
    buf.resize(gates * tiles * K * kTileUnits);
  }
  for (int64_t v = 0; v < gates; ++v) {
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t u0 = j0 + i * kTileUnits, m = std::min(kTileUnits, j1 - u0);
      float* dst = buf.data() + (v * tiles + i) * K * kTileUnits;
      if (m == kTileUnits) {  // a fixed size: two moves, not a memcpy call each
        for (int64_t k = 0; k < K; ++k) {
          std::memcpy(dst + k * kTileUnits, g[k] + v * H + u0, kTileUnits * sizeof(float));
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          std::memcpy(dst + k * kTileUnits, g[k] + v * H + u0, m * sizeof(float));
        }
      }
    }
  }
  return buf.data();
}

// The columns of K rows src[k] (C floats each) by blocks of kBackUnits columns,
// [block][K][kBackUnits], zero past C, in buf (grown as needed): the panels of
// weight_update, made once per chunk for all of a worker's units. (Each of its unit
// blocks had copied them again: 16 MB a step per worker at T=50, N=256, I=H=1024.)
FUSEDRNN_AVX512 inline const float* source_panels(int64_t K, const float* const* src, int64_t C,
                                                  std::vector<float>& buf) {
  const int64_t blocks = (C + kBackUnits - 1) / kBackUnits;
  if (static_cast<int64_t>(buf.size()) < blocks * K * kBackUnits + 16) {
    buf.resize(blocks * K * kBackUnits + 16);
  }
  float* out = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  for (int64_t b = 0; b < blocks; ++b) {
    __mmask16 masks[4];
    block_masks(b * kBackUnits, C, masks);
    float* panel = out + b * K * kBackUnits;
    for (int64_t k = 0; k < K; ++k) {
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        _mm512_store_ps(panel + k * kBackUnits + q * kUnits,
                        _mm512_maskz_loadu_ps(masks[q], src[k] + b * kBackUnits + q * kUnits));
      }
    }
  }
  return out;
}

// One chunk's share of a weight gradient, for the units [j0, j1) of every gate v:
// dw[v*H + j, :C] (+)= sum_k g[k][v*H + j] * src[k][:C] (first: = instead of +=) and,
// with db, db[v*H + j] += sum_k g[k][v*H + j] in double, over the chunk's K rows; packed:
// the same g columns by unit_tiles; panels: the src rows by source_panels.
FUSEDRNN_AVX512 inline void weight_update(int64_t K, const float* const* g, const float* packed,
                                          const float* panels, int64_t C, int64_t gates,
                                          int64_t H, int64_t j0, int64_t j1, float* dw,
                                          double* db, bool first, bool stream = false) {
  const int64_t tiles = (j1 - j0 + kTileUnits - 1) / kTileUnits;
  stream = stream && first && K <= kChunkK;
  for (int64_t c0 = 0; c0 < C; c0 += kBackUnits) {
    __mmask16 masks[4];
    block_masks(c0, C, masks);
    const int nv = block_vectors(masks);
    const float* panel = panels + c0 * K;
    for (int64_t v = 0; v < gates; ++v) {
      for (int64_t i0 = j0; i0 < j1; i0 += kTileUnits) {
        const int m = static_cast<int>(std::min<int64_t>(kTileUnits, j1 - i0));
        const float* a = packed + (v * tiles + (i0 - j0) / kTileUnits) * K * kTileUnits;
        float* out = dw + (v * H + i0) * C + c0;
        with_vectors(nv, [&](auto q) {
          outer_rows<decltype(q)::value>(m, a, panel, K, out, C, masks, first, stream);
        });
      }
    }
  }
  if (stream) _mm_sfence();
  if (db == nullptr) return;
  // Each unit's column sum over k in order, in double: 8 units a vector (it ran scalar,
  // through the stack: 3% of a GRU backward at T=50, N=256, H=1024).
  __mmask16 masks[4];
  block_masks(j0, j1, masks);
  for (int64_t v = 0; v < gates; ++v) {
    __m512d sum[8];
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) sum[q] = _mm512_setzero_pd();
    for (int64_t k = 0; k < K; ++k) {
      const float* row = g[k] + v * H + j0;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const __m512 r = _mm512_maskz_loadu_ps(masks[q], row + q * kUnits);
        const __m256 lo = _mm512_castps512_ps256(r);
        const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r), 1));
        sum[2 * q] = _mm512_add_pd(sum[2 * q], _mm512_cvtps_pd(lo));
        sum[2 * q + 1] = _mm512_add_pd(sum[2 * q + 1], _mm512_cvtps_pd(hi));
      }
    }
    alignas(64) double total[kBackUnits];
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) _mm512_store_pd(total + 8 * q, sum[q]);
    for (int64_t j = j0; j < j1; ++j) db[v * H + j] += total[j - j0];
  }
}

// The dx blocks' split among the workers of fused_backward: contiguous ranges in worker
// order, chosen so that each worker's modelled work a row, with the recurrent units of
// the Balancer's first (even) split, comes closest to an equal share: recurrent units
// cost their columns of dG W_hh and their rows of dW_hh and dW_ih, a dx block its
// columns of dX W_ih (multiply-adds a row, below): a worker with fewer recurrent columns
// runs its share of the chunk's dx while the other finishes its step. By block counts
// alone, H=192 (three 64-unit blocks each of W_hh and W_ih) gave worker 1 two of each and
// worker 0 one: twice the work; now worker 0 takes the three dx blocks. Paired on the
// 2-core Zen 4, backward op ms, by block counts -> modelled (before the tiles ran tail
// blocks by their own vectors): T=200, N=16, LSTM H=160 27.99 -> 25.29, H=176 23.51 ->
// 20.72, H=192 26.12 -> 21.53, GRU H=160 16.31 -> 14.55, H=192 20.43 -> 16.99; T=100,
// N=16, H=320 LSTM 31.45 -> 27.94; T=200, N=1, H=192 LSTM 2.31 -> 2.04; T=100, N=64,
// H=512 (an even split either way) level. With tail blocks run by their vectors, the
// model's cut against its neighbour: H=144 13.58 vs 13.71, H=160 16.39 vs 17.46, H=176
// 19.47 vs 18.61 (the model 4% off there). Which worker computes a dx column does not
// change its sums. Returns the workers+1 cut points over [0, xblocks].
inline std::vector<int64_t> dx_split(int64_t pieces, int64_t H, int64_t xblocks, int64_t I,
                                     int64_t gates, int64_t workers) {
  const double G = double(gates * H);
  auto vectors = [](int64_t C) { return double((C + kUnits - 1) / kUnits * kUnits); };
  // The tiles run whole 16-column vectors: a worker's recurrent units cost their vectors'
  // columns of dG W_hh (G each) and units*gates*(I+H) of weight-gradient rows, I and H
  // padded to whole vectors; a dx block its vectors' columns times G.
  const double per_unit = double(gates) * (vectors(I) + vectors(H));
  std::vector<double> rec_done(workers + 1, 0.0), x_done(xblocks + 1, 0.0);
  for (int64_t w = 0; w < workers; ++w) {
    const int64_t u = std::min(H, pieces * (w + 1) / workers * kUnits) -
                      std::min(H, pieces * w / workers * kUnits);
    rec_done[w + 1] = rec_done[w] + vectors(u) * G + per_unit * double(u);
  }
  for (int64_t b = 0; b < xblocks; ++b) {
    x_done[b + 1] = x_done[b] + vectors(std::min(I, (b + 1) * kBackUnits) - b * kBackUnits) * G;
  }
  const double total = rec_done[workers] + x_done[xblocks];
  std::vector<int64_t> cut(workers + 1, xblocks);
  cut[0] = 0;
  for (int64_t w = 0; w + 1 < workers; ++w) {
    // The cut after worker w: the work of workers 0..w nearest (w+1)/workers of the total.
    const double target = total * double(w + 1) / double(workers);
    int64_t best = cut[w];
    for (int64_t c = cut[w]; c <= xblocks; ++c) {
      if (std::abs(rec_done[w + 1] + x_done[c] - target) <
          std::abs(rec_done[w + 1] + x_done[best] - target))
        best = c;
    }
    cut[w + 1] = best;
  }
  return cut;
}

// The gradients the backward loop writes, contiguous float: dx [R, I]; dh0 [N, H], the
// recurrent part (dG at a row's first step times W_hh); dw_ih [G, I], dw_hh [G, H]; and,
// added to in double, db_x and db_h [G]: the column sums of dX and of dG (db_h null when
// dX is dG).
struct BackwardGrads {
  float *dx, *dh0, *dw_ih, *dw_hh;
  double *db_x, *db_h;
};

// The backward recurrence over steps in backward run order (s; t = T-1-s forward, s in
// reverse). At step s, for the step's rows n < B and each block [j0, j1) of kBackUnits
// units: rec[n, j] = dG_{t'}[n] . W_hh[:, j], the gradient reaching h_t through the step
// t' run just before (rows t' also ran), or ghn[n, j] for rows whose last step is t; then
// cell(s, n, j0, j1, rec_row, dg_row, dx_row) runs the cell's backward, which writes the
// columns g*H + j of its units of row n of dG_t into dg_row and of dX_t into dx_row (dX,
// the gradient of x W_ih^T, is dG for LSTM, GRU's dG without the reset gate's split; with
// split false the two rows are one). Rows of t' that step t does not continue start at t'
// (packed, reverse): their dG . W_hh goes to dh0, as every row's does after the last step.
// Steps run in chunks of at least kChunkK rows; at a chunk's last step each worker adds
// the chunk's share of dW_ih (dX^T x), dW_hh (dG^T h_{t-1}) and the biases for its units,
// and at the next step the workers compute the chunk's dx = dX W_ih by column blocks.
// dG and dX live in a ring of (longest chunk + 2) steps. Every sum has a fixed order.
// x [R, I], y [R, H], h0 [N, H], w_ih [G, I], w_hh [G, H], ghn [N, H], all contiguous.
template <typename Cell>
void fused_backward(const Steps& st, bool reverse, int64_t gates, int64_t H, int64_t I,
                    const float* x, const float* y, const float* h0, const float* w_ih,
                    const float* w_hh, const float* ghn, bool split, const BackwardGrads& out,
                    const Cell& cell) {
  const int64_t N = st.N, T = st.T, G = gates * H;
  auto tt = [&](int64_t s) { return reverse ? s : T - 1 - s; };
  // row0[s]: the first row of step s in run order. A step that closes a chunk has
  // opens[s] = the chunk's first step, others -1.
  std::vector<int64_t> row0(T + 1, 0), opens(T, -1);
  for (int64_t s = 0; s < T; ++s) row0[s + 1] = row0[s] + st.batch[tt(s)];
  int64_t longest = 1;
  for (int64_t s = 0; s < T;) {
    const int64_t s0 = s;
    while (s < T && row0[s] - row0[s0] < kChunkK) ++s;
    opens[s - 1] = s0;
    longest = std::max(longest, s - s0);
  }
  // Another worker may be writing step s+1 while this one reads the chunk closed at s-1.
  const int64_t slots = longest + 2;
  const Scratch ring((split ? 2 : 1) * slots * N * G);
  float* const dx_ring = ring.data() + (split ? slots * N * G : 0);
  // Per row in run order: its x and h_{t-1} rows, its dG and dX ring rows, its dx row.
  std::vector<const float*> xs(st.R), hs(st.R);
  std::vector<float*> gs(st.R), gxs(st.R), dxs(st.R);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = tt(s), keep = st.carried(t, reverse), p = st.prev(t, reverse);
    for (int64_t n = 0; n < st.batch[t]; ++n) {
      const int64_t k = row0[s] + n, r = st.offset[t] + n, slot = (s % slots) * N + n;
      xs[k] = x + r * I;
      hs[k] = n < keep ? y + (st.offset[p] + n) * H : h0 + n * H;
      gs[k] = ring.data() + slot * G;
      gxs[k] = dx_ring + slot * G;
      dxs[k] = out.dx + r * I;
    }
  }
  const Scratch rec(N * H);
  int64_t chunks = 0;
  for (int64_t s = 0; s < T; ++s) chunks += opens[s] >= 0;
  const ColumnPanels wh(w_hh, G, H, panels_in_place(T)), wi(w_ih, G, I, panels_in_place(chunks));
  const bool stream = stream_weight_grads(chunks, G * (I + H));
  // The recurrent units are handed out by pieces of kUnits (a worker's range cut at the
  // panels' block boundaries, each part run by its own vectors); dx by blocks. By whole
  // 64-unit blocks, H=64 had put all of dG W_hh and the weight gradients on one worker
  // and only dx on the other. The same sums in the same order (outputs and gradients
  // compared bit for bit with the block form, 1 and 2 threads). Paired on the 2-core Zen
  // 4, backward op ms, blocks -> pieces: T=200, N=16, LSTM H=64 4.54 -> 3.26, H=96 6.99 ->
  // 5.94, GRU H=64 3.51 -> 2.75; H=144 and the named shapes (T=100, N=64, H=512 LSTM and
  // GRU; T=200, N=1, H=256; T=50, N=16, H=768) level.
  const int64_t pieces = (H + kUnits - 1) / kUnits, xblocks = wi.blocks;
  const int64_t workers = step_workers(pieces + xblocks, N * G * (H + I));
  // dx rows are written a step after their own (see Prefault).
  const Prefault prefault(
      T, [&](int64_t s) { return st.offset[tt(s)]; }, [&](int64_t s) { return st.batch[tt(s)]; },
      {{out.dx, I * int64_t(sizeof(float))}});
  // The recurrent blocks move between workers step by step (Balancer); the dx blocks stay,
  // split to even out the work the Balancer's first split leaves (dx_split).
  Balancer balancer(pieces, workers);
  const std::vector<int64_t> xcut = dx_split(pieces, H, xblocks, I, gates, workers);
  // A worker's recurrent units [j0, j1) and dx blocks [x0, x1).
  auto share_of = [&](int64_t wk) {
    const auto [p0, p1] = balancer.range(wk);
    return std::array<int64_t, 4>{p0 * kUnits, std::min(H, p1 * kUnits), xcut[wk], xcut[wk + 1]};
  };
  // chunk[s]: the number of the chunk step s closes. applied[p]: how many chunks piece p's
  // weight gradients hold. A piece's chunks are added in order even when consecutive
  // chunks close at consecutive steps and the piece moves between them: the next owner
  // waits for the previous owner's update.
  std::vector<int64_t> chunk(T, -1);
  for (int64_t s = 0, c = 0; s < T; ++s) {
    if (opens[s] >= 0) chunk[s] = c++;
  }
  const std::unique_ptr<std::atomic<int64_t>[]> applied(new std::atomic<int64_t>[pieces]);
  for (int64_t p = 0; p < pieces; ++p) applied[p].store(0, std::memory_order_relaxed);
  Waits waits;  // the step barrier's and those on applied
  run_steps(
      workers, 0, T + 1,
      [&](int64_t wk, int64_t s) {
        const auto [j0, j1, x0, x1] = share_of(wk);
        if (s < T) prefault.at_step(s, wk, workers);
        if (s == 0) {  // (first read at step 1 and at a chunk's end: after the barrier)
          wh.pack_rows(G * wk / workers, G * (wk + 1) / workers);
          wi.pack_rows(G * wk / workers, G * (wk + 1) / workers);
        }
        const int64_t B = s < T ? st.batch[tt(s)] : 0;
        const int64_t kept = s > 0 ? std::min(B, st.batch[tt(s - 1)]) : 0;
        if (s > 0) {  // dG of the step before times W_hh: this step's rec, or dh0 rows
          auto a_row = [&](int64_t n) -> const float* { return gs[row0[s - 1] + n]; };
          auto out_row = [&](int64_t n) { return n < kept ? rec.data() + n * H : out.dh0 + n * H; };
          rows_times_columns(st.batch[tt(s - 1)], a_row, out_row, wh, j0, j1);
        }
        if (s < T && j1 > j0) {
          for (int64_t n = 0; n < B; ++n) {
            const int64_t k = row0[s] + n;
            cell(s, n, j0, j1, n < kept ? rec.data() + n * H : ghn + n * H, gs[k], gxs[k]);
          }
        }
      },
      // After its share of step s, while the others finish theirs: the weight gradients
      // of the chunk step s closed (this worker's units: its own columns of dG and dX),
      // and the dx of the chunk step s-1 closed (whole dX rows, all finished at step s-1).
      [&](int64_t wk, int64_t s) {
        const auto [j0, j1, x0, x1] = share_of(wk);
        if (s < T && opens[s] >= 0 && j1 > j0) {
          const int64_t k0 = row0[opens[s]], K = row0[s + 1] - k0;
          const bool first = opens[s] == 0;
          thread_local std::vector<float> tiles_x, tiles_h, panels_x, panels_h;
          const float* sx = source_panels(K, xs.data() + k0, I, panels_x);
          const float* sh = source_panels(K, hs.data() + k0, H, panels_h);
          // By parts of at most kBackUnits units, cut at block boundaries (weight_update's
          // bias sums take one block's vectors).
          for (int64_t q0 = j0; q0 < j1;) {
            const int64_t q1 = std::min(j1, (q0 / kBackUnits + 1) * kBackUnits);
            for (int64_t p = q0 / kUnits; p < (q1 + kUnits - 1) / kUnits; ++p) {
              waits.until([&] { return applied[p].load(std::memory_order_acquire) >= chunk[s]; });
            }
            const float* px = unit_tiles(K, gxs.data() + k0, gates, H, q0, q1, tiles_x);
            const float* ph = split ? unit_tiles(K, gs.data() + k0, gates, H, q0, q1, tiles_h) : px;
            weight_update(K, gxs.data() + k0, px, sx, I, gates, H, q0, q1, out.dw_ih, out.db_x,
                          first, stream);
            weight_update(K, gs.data() + k0, ph, sh, H, gates, H, q0, q1, out.dw_hh, out.db_h,
                          first, stream);
            for (int64_t p = q0 / kUnits; p < (q1 + kUnits - 1) / kUnits; ++p) {
              applied[p].store(chunk[s] + 1, std::memory_order_seq_cst);
            }
            waits.notify();
            q0 = q1;
          }
        }
        if (s > 0 && opens[s - 1] >= 0) {
          const int64_t k0 = row0[opens[s - 1]];
          auto a_row = [&](int64_t i) -> const float* { return gxs[k0 + i]; };
          auto out_row = [&](int64_t i) { return dxs[k0 + i]; };
          rows_times_blocks(row0[s] - k0, a_row, out_row, wi, x0, x1);
        }
      },
      &balancer, &waits);
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
