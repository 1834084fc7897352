// The fused recurrence on AVX-512, forward and backward: the step's GEMM and the cell's
// pointwise pass in one loop, run by workers that stay alive across the steps. Float
// math; float32 storage at any batch, 16-bit storage forward at small batches.
//
// Why: the GEMM loop pays, per step, one oneDNN GEMM call (dispatcher, primitive lookup,
// an OpenMP fork/join: about 16 us at batch 1), a second fork/join for the pointwise
// pass, and a round trip of the gates through memory. Here each worker owns a set of
// blocks of hidden units: it computes all gates of its units for the step's rows with
// a register-blocked micro-kernel, applies the cell while those gates are in L1, and
// meets the other workers at one barrier per step (waits.h). A worker's slice of the weights
// stays the same from step to step (the Balancer of workers.h moves a block only when
// the cores' measured rates call for it), so it stays in that core's cache.
//
// Every output element is one dot product over k in a fixed order, whatever the number of
// workers: results are bit-identical for any thread count.
#pragma once

#include "common.h"
#include "tiles.h"
#include "packed_weights.h"
#include "workers.h"
#include "loop_choice.h"
#include "overlap.h"

#include <cstdlib>
#include <optional>


namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// k per pass of the AMX products over a block's row tiles: 128 k of the block's weights
// (NA*4 KB) are read from L1 by every row tile.
constexpr int64_t kAmxChunkK = 128;

// The forward's grouped order (whole_k_tiles false) takes a block's rows in groups of up
// to kGroupRows: for each k chunk, all the group's row tiles, so the chunk of panel
// (kChunkK x 64 floats, 32 KB) is read from L1 by every tile rather than streamed from L2
// by each. Paired timings on a 2-core
// Sapphire Rapids, LSTM inference: T=100, N=64, H=512 124 -> 112 ms and T=256, N=16,
// H=768 259 -> 246 ms. (The backward's groups are smaller past kGroupRowsBytes of rows;
// see backward_group_rows.)
constexpr int64_t kGroupRows = 48;

// The backward's row groups shrink to four tiles past this many bytes of rows.
constexpr int64_t kGroupRowsBytes = 1 << 20;

// Blocks per call of the cell in the forward loop (64 units).
constexpr int64_t kCellBlocks = 4;

// The cell of row n prefetches its units' x W_ih^T of row n + kXgAhead (unfolded loops):
// the rows come from oneDNN's GEMM over a block of steps (4 MB at 1024 rows of 4H = 2048
// bfloat16), out of L2 by the time the cell reads them, and the cell stalled on them.
// Paired, bfloat16 inference: T=100, N=64, H=512 LSTM 61.0 -> 56.1 ms, GRU 41.3 -> 37.0;
// T=256, N=16, H=768 LSTM 118 -> 113 ms; float32 and batch 1 level. 4 rows ahead vs 2:
// 1.7% and 3% faster (T=100, N=64, LSTM and GRU).
constexpr int64_t kXgAhead = 4;

// Rows of x per block of steps whose x W_ih^T the workers make in the unfolded float32
// forward (own_xg), each worker its own units' columns at the block's first step, with
// the micro-kernel of the folded products: one parallel region for the whole sequence
// instead of one more per block for oneDNN's GEMM, and a worker's columns are still in its
// L2 when its cell reads them. Op time, oneDNN's GEMM -> own_xg, medians of alternations
// in one process on the 2-core Sapphire Rapids: T=200, N=1, H=256 LSTM 1847 -> 1770 us,
// GRU 2037 -> 1985 us; T=256, N=16, H=768 LSTM 228 -> 213 ms, GRU 163 -> 149 ms;
// T=100, N=32, H=512 LSTM 77 -> 68 ms, GRU 53.2 -> 51.8 ms. 128 rows read level with
// 256, 1024 rows 10% slower (T=256, N=16: the block's columns outgrew L2).
constexpr int64_t kOwnXgRows = 256;

// ... and only while W_ih (gates*H x I floats) takes at most this many bytes: its packed
// copy, which own_xg reads for every block of steps, costs a pass over W_ih more than
// oneDNN's GEMM, which reads W_ih in place. Paired on the 2-core Zen 4 (inference, us,
// oneDNN's GEMM vs own_xg, medians of alternations): I=H=1024 LSTM (16 MB) T=1, N=1 1882
// vs 2637, T=16, N=4 7778 vs 8819, T=64, N=16 88352 vs 95612; GRU (12 MB) T=64, N=16
// 65093 vs 70447 (own_xg 6-14% slower at every T in 1..64, N in 1..16); I=H=768 LSTM (9
// MB) T=256, N=16 193457 vs 190972, GRU (6.75 MB) 147613 vs 142246 (own_xg ahead at the
// small-batch shape); I=H=512 own_xg 0-20% ahead.
constexpr int64_t kOwnXgWeightBytes = 10 << 20;

// f(std::bool_constant<pairs>{}) for bfloat16 storage, f(std::false_type{}) otherwise:
// fused_forward's kPairs, chosen at run time (bf16_dot_available).
template <typename scalar_t, typename F>
void with_pairs(bool pairs, const F& f) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (pairs) return f(std::true_type{});
  }
  f(std::false_type{});
}

// The forward recurrence over steps [0, T) in run order (s; t = s forward, T-1-s in
// reverse). At step s, for the step's rows n < B and each unit block [j0, j1): the NA
// accumulators of row n are computed into hg (no biases; see hg_at), then
// cell(s, n, j0, j1, hg_row, hs, xg_row) runs the cell, gate v of unit j at
// hg_row[v*hs + j]. ws [R, ws_width] (or null) is the saved workspace the cell writes,
// for Prefault. kPairs (bfloat16 storage): bf16
// products of the rows in place (tile_pairs), float sums. With `fold` (the caller's choice:
// float32 or kPairs, batches of fold_batch() or more) the products with x are in hg (gate g of W_ih into accumulator XS::at[g]) and xg_row is
// a row of zeros; below, xg_row is the row's x_t W_ih^T [gates*H] from the oneDNN GEMM
// over a block of steps (xg). W_hh's gate g goes into accumulator HS::at[g]. h_{t-1} is
// row n of the previous step's y while that step ran it, else h0 (packed reverse).
// Afterwards h_n[n] is row n of the last step that ran it. x [R, I],
// w_ih [gates*H, I], w_hh [gates*H, H], h0 [N, H], y [R, H], all contiguous.
template <int NA, typename XS, typename HS, bool kPairs, typename scalar_t, typename Cell>
void fused_forward(const Steps& st, bool reverse, int64_t H, const scalar_t* x, int64_t I,
                   const scalar_t* w_ih, const scalar_t* w_hh, const scalar_t* h0, scalar_t* y,
                   scalar_t* h_n, InputProjection& xg, bool fold, bool amx, float* ws, int64_t ws_width,
                   const Cell& cell) {
  static_assert(XS::size == HS::size);
  static_assert(!kPairs || std::is_same_v<scalar_t, c10::BFloat16>);
  // Rows enter the products as float (float32) or in place as bf16 (kPairs). Other
  // 16-bit storage: h_{t-1} is read from float copies of the rounded y rows (two
  // buffers, by step parity), h0 from a float copy; x is never folded in.
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  constexpr bool kInPlace = kFloat || kPairs;
  using in_t = std::conditional_t<kPairs, uint16_t, float>;
  STD_TORCH_CHECK(kInPlace || !fold, "fusedrnn: float16 does not fold the input projection");
  STD_TORCH_CHECK(!amx || (kPairs && !fold && NA == HS::size),
                  "fusedrnn: the AMX products take bf16 pairs, unfolded");
  const int64_t N = st.N, G = HS::size * H;
  auto tt = [&](int64_t s) { return reverse ? st.T - 1 - s : s; };
  // Unfolded float32: x W_ih^T made by the workers themselves (own_xg), each for its own
  // units, a block of steps at a time (see kOwnXgRows), rather than by oneDNN's GEMM.
  const bool own_xg = kFloat && XS::size == NA && !fold && !amx &&
                      XS::size * H * I * int64_t(sizeof(float)) <= kOwnXgWeightBytes;
  // Batch 1: the projection rides along the recurrent products (overlap.h), from two
  // groups of steps (below, group 0's projection alone and the last group's padding rows
  // cost more than the overlap saves: T=1, 5, 20 at H=256 LSTM, 1.19x, 1.07x, 0.96x the time).
  const bool overlap = own_xg && N == 1 && st.T >= 2 * OverlapTile<NA>::kRows && overlap_wanted();
  const PackedWeights<scalar_t, kPairs> packed_h(w_hh, HS::size, H, H, amx ? 32 : 2);
  const PackedWeights<scalar_t, kPairs> packed_x(w_ih, XS::size, H, fold || own_xg ? I : 0);
  // own_xg: xrows[s] = the rows [lo, hi) of x of the block of steps that starts at step s
  // ({0, 0} where none starts), at most kOwnXgRows (or one step's); xg_buf [rows, G].
  const bool own_blocks = own_xg && !overlap;
  std::vector<std::pair<int64_t, int64_t>> xrows(own_blocks ? st.T : 0);
  int64_t xg_rows = 0;
  for (int64_t s = 0; s < (own_blocks ? st.T : 0);) {
    int64_t lo = st.offset[tt(s)], hi = lo + st.batch[tt(s)];
    const int64_t s0 = s++;
    for (; s < st.T && hi - lo + st.batch[tt(s)] <= kOwnXgRows; ++s) {
      lo = std::min(lo, st.offset[tt(s)]);
      hi = std::max(hi, st.offset[tt(s)] + st.batch[tt(s)]);
    }
    xrows[s0] = {lo, hi};
    xg_rows = std::max(xg_rows, hi - lo);
  }
  const Scratch<float> xg_buf(xg_rows * G);
  // hg by groups of kCellBlocks blocks, [group][Np rows][NA][kCellUnits] (Np: N, or with
  // AMX rows up to a multiple of 16, as a tile stores 16 rows), groups a cache line more
  // than Np rows apart: a row tile's accumulators are kCellUnits floats apart (gates) and
  // NA*kCellUnits (rows). In rows of NA*H floats the gates were 4H bytes apart, a multiple
  // of 2 KB, and a tile's 24 vectors fell in a few L1 sets. Paired, T=100, N=64, H=512
  // LSTM inference ratio to torch.nn, median of 8 alternated runs: 1.015x -> 1.032x (4
  // runs before: 1.01-1.03x -> 1.06-1.07x; training 0.93-1.00x -> 1.02-1.05x). Groups
  // Np rows apart, 16 KB at batch 1, had cost 2-3% there: hence the extra line.
  constexpr int64_t kCellUnits = kCellBlocks * kUnits, ldh = NA * kCellUnits;
  const int64_t Np = amx ? (N + 15) / 16 * 16 : N, group_stride = Np * ldh + kUnits;
  const Scratch hg((packed_h.blocks() + kCellBlocks - 1) / kCellBlocks * group_stride);
  // Row n of block b's columns in hg.
  auto hg_at = [&](int64_t n, int64_t b) {
    return hg.data() + b / kCellBlocks * group_stride + n * ldh + b % kCellBlocks * kUnits;
  };
  std::vector<float> h_float(kInPlace ? 0 : 3 * N * H);  // h0, then the two step buffers
  for (int64_t k = 0; k < (kInPlace ? 0 : N * H); ++k) h_float[k] = static_cast<float>(h0[k]);
  const std::vector<scalar_t> zeros(fold ? G : 0, scalar_t(0));
  std::vector<const scalar_t*> xg_step(st.T, zeros.data());
  if constexpr (kFloat) {
    for (int64_t s = 0, lo = 0; s < (own_blocks ? st.T : 0); ++s) {
      if (xrows[s].second > 0) lo = xrows[s].first;
      xg_step[s] = xg_buf.data() + (st.offset[tt(s)] - lo) * G;
    }
  }
  // Workers by the step's multiply-adds (step_workers).
  const int64_t per_step = N * G * (H + (fold ? I : 0));
  const int64_t workers = step_workers(packed_h.blocks(), per_step);
  const int64_t xg_ld = fold ? 0 : G;
  std::optional<XgPipeline<NA, HS, XS>> pipe;
  if constexpr (kFloat) {
    if (overlap) {
      std::vector<const float*> xrow(st.T);
      for (int64_t s = 0; s < st.T; ++s) xrow[s] = x + st.offset[tt(s)] * I;
      pipe.emplace(st.T, H, I, workers, std::move(xrow), packed_x);
      for (int64_t s = 0; s < st.T; ++s) xg_step[s] = pipe->row(s);
    }
  }
  std::vector<std::pair<void*, int64_t>> outputs{{y, H * int64_t(sizeof(scalar_t))}};
  if (ws != nullptr) outputs.push_back({ws, ws_width * int64_t(sizeof(float))});
  const Prefault prefault(
      st.T, [&](int64_t s) { return st.offset[tt(s)]; },
      [&](int64_t s) { return st.batch[tt(s)]; }, std::move(outputs));
  // Row n of h_{t-1} at step s, and the float copy step s writes (16-bit storage).
  auto h_prev = [&](int64_t s, int64_t n, int64_t keep, int64_t p) -> const in_t* {
    if constexpr (kInPlace) {
      return reinterpret_cast<const in_t*>(n < keep ? y + (st.offset[p] + n) * H : h0 + n * H);
    } else {
      return h_float.data() + (n < keep ? (1 + (s - 1) % 2) * N * H : 0) + n * H;
    }
  };
  // The products of rows [0, B) (row(n)) with block b's panel of x (of_x) or of h_{t-1},
  // into out(n) (row n's first unit; rows ldc apart, gates gs apart): whole-K row tiles,
  // or by groups of up to kGroupRows rows, for each k chunk all the group's row tiles
  // (whole_k_tiles). The first chunk stores (where `first`), every later chunk adds, so
  // each output sums its chunks in one order.
  const bool whole_k = whole_k_tiles();
  auto panel_products = [&](int64_t B, int64_t b, auto slots, bool of_x, bool first0,
                            const auto& row, const auto& out, int64_t ldc, int64_t gs) {
    using S = decltype(slots);
    const int64_t j0 = b * kUnits, j1 = std::min(H, j0 + kUnits);
    const __mmask16 mask = static_cast<__mmask16>((1u << (j1 - j0)) - 1u);
    const int64_t K = of_x ? I : H;
    const in_t* panel = of_x ? packed_x.block(b) : packed_h.block(b);
    const in_t* panels_end = (of_x ? packed_x : packed_h).block(packed_h.blocks());
    // Whole-K tiles are the same loop with one group of all rows and one span of all K
    // (chunk_rows adds the chunks inside the call).
    const int64_t group = whole_k ? B : kGroupRows;
    const int64_t span = whole_k ? K : kPairs ? kPairsChunkK : kChunkK;
    for (int64_t m0 = 0; m0 < B; m0 += group) {
      const int64_t m1 = std::min(B, m0 + group);
      bool first = first0;
      for (int64_t k0 = 0; k0 < K; k0 += span) {
        const int64_t k1 = std::min(K, k0 + span);
        // Float: the panel rows after the span (at the last, the next block's first) are
        // fetched into L2 meanwhile. Paired at T=100, N=64, H=512 inference: LSTM 151.5
        // -> 146.4 ms, GRU 115.1 -> 111.7; T=256, N=16, H=768 LSTM 235.8 -> 217.6 ms.
        Prefetch pf;
        if (!kPairs && B >= kPrefetchRows) {
          const in_t* next = panel + k1 * S::size * kUnits;
          const in_t* end = std::min(panels_end, next + kChunkK * S::size * kUnits);
          pf = {reinterpret_cast<const char*>(next), reinterpret_cast<const char*>(end)};
        }
        for (int64_t n0 = m0, rows = 0; n0 < m1; n0 += rows) {
          rows = tile_rows(m1 - n0, kTileRows<NA>);
          const in_t* a[kTileRows<NA>];
          for (int r = 0; r < rows; ++r) a[r] = row(n0 + r);
          chunk_rows<NA, S, in_t>(static_cast<int>(rows), a, panel, K, k0, k1, out(n0), ldc, gs,
                                  mask, first, pf);
        }
        first = false;
      }
    }
  };
  // The products of step s's rows with block b's panel of x (of_x) or of h_{t-1}, into
  // the block's columns of hg. The x products (or, unfolded, the h products) come first.
  auto products = [&](int64_t s, int64_t b, auto slots, bool of_x) {
    const int64_t t = tt(s), off = st.offset[t];
    const int64_t keep = st.carried(t, reverse), p = st.prev(t, reverse);
    panel_products(
        st.batch[t], b, slots, of_x, of_x || !fold,
        [&](int64_t n) -> const in_t* {
          if (!of_x) return h_prev(s, n, keep, p);
          if constexpr (kInPlace) return reinterpret_cast<const in_t*>(x + (off + n) * I);
          return nullptr;  // 16-bit storage never folds x
        },
        [&](int64_t n) { return hg_at(n, b); }, ldh, kCellUnits);
  };
  // own_xg: block b's columns of x W_ih^T for the block of steps that starts at step s.
  auto own_xg_block = [&](int64_t s, int64_t b) {
    if constexpr (kFloat) {
      const auto [lo, hi] = xrows[s];
      panel_products(
          hi - lo, b, XS{}, true, true, [&](int64_t n) { return x + (lo + n) * I; },
          [&](int64_t n) { return xg_buf.data() + n * G + b * kUnits; }, G, H);
    }
  };
  // AMX (amx): the recurrent products of a step by tiles of 16 rows. A tile of rows of
  // h_{t-1} is read in place when its 16 rows are consecutive rows of one array and H is
  // a multiple of 32; otherwise (the last, partial tile; rows from y and h0; other H)
  // the worker copies it, zero-padded to 16 rows of Kp, into its stage at the step's start.
  const int64_t Kp = (H + 31) / 32 * 32;
  const Scratch<uint16_t> stage(amx ? Np * Kp * workers : 0);
  const Scratch<float> parts(amx ? Np * NA * kUnits * workers : 0);
  auto in_place = [&](int64_t s, int64_t n0) {
    const int64_t t = tt(s), B = st.batch[t], keep = st.carried(t, reverse);
    return H % 32 == 0 && n0 + 16 <= B && (n0 + 16 <= keep || n0 >= keep);
  };
  auto stage_rows = [&](int64_t w, int64_t s) {
    const int64_t t = tt(s), B = st.batch[t];
    const int64_t keep = st.carried(t, reverse), p = st.prev(t, reverse);
    uint16_t* dst = stage.data() + w * Np * Kp;
    for (int64_t n0 = 0; n0 < B; n0 += 16) {
      if (in_place(s, n0)) continue;
      for (int64_t n = n0; n < n0 + 16; ++n) {
        uint16_t* row = dst + n * Kp;
        int64_t k = 0;
        if (n < B) {
          std::memcpy(row, h_prev(s, n, keep, p), H * sizeof(uint16_t));
          k = H;
        }
        std::fill(row + k, row + Kp, uint16_t{0});
      }
    }
  };
  auto amx_products = [&](int64_t w, int64_t s, int64_t b) {
#if FUSEDRNN_HAVE_AMX
    if constexpr (kPairs && (NA == 3 || NA == 4)) {
      const int64_t t = tt(s), B = st.batch[t];
      const int64_t keep = st.carried(t, reverse), p = st.prev(t, reverse);
      const int64_t j0 = b * kUnits, j1 = std::min(H, j0 + kUnits);
      const uint16_t* staged = stage.data() + w * Np * Kp;
      const uint16_t* panel = packed_h.block(b);
      const bool whole = j1 - j0 == kUnits;
      // Partial sums between k chunks in the worker's compact [row tile][gate][16][16]
      // buffer (hg's rows, 4H floats apart, would share L1 sets); the last chunk writes
      // hg, or, for a last block with units past H, the buffer, copied below.
      float* partial = parts.data() + w * Np * NA * kUnits;
      // For each k chunk, all row tiles: the chunk's weights stay in L1 across the tiles.
      for (int64_t k0 = 0; k0 < Kp; k0 += kAmxChunkK) {
        const int64_t k1 = std::min(Kp, k0 + kAmxChunkK);
        for (int64_t n0 = 0; n0 < B; n0 += 16) {
          const bool direct = in_place(s, n0);
          const uint16_t* a = direct ? h_prev(s, n0, keep, p) : staged + n0 * Kp;
          const GateTiles mine{partial + n0 * NA * kUnits, kUnits, 16 * kUnits};
          const GateTiles out = k1 == Kp && whole ? GateTiles{hg_at(n0, b), ldh, kCellUnits} : mine;
          amx_gates<NA>(a, direct ? H : Kp, panel, k0, k1, k0 == 0 ? nullptr : &mine, out);
        }
      }
      if (!whole) {
        for (int64_t n = 0; n < B; ++n) {
          for (int64_t v = 0; v < NA; ++v) {
            std::memcpy(hg_at(n, b) + v * kCellUnits,
                        partial + ((n / 16 * NA + v) * 16 + n % 16) * kUnits,
                        (j1 - j0) * sizeof(float));
          }
        }
      }
    }
#else
    (void)w, (void)s, (void)b;
#endif
  };
  // overlap: step s's product of its row of h_{t-1} with block b's panel, carrying a piece
  // of the projection of a later group of steps.
  auto overlap_products = [&](int64_t w, int64_t s, int64_t b) {
    if constexpr (kFloat) {
      const int64_t t = tt(s), keep = st.carried(t, reverse), p = st.prev(t, reverse);
      const int64_t j0 = b * kUnits, j1 = std::min(H, j0 + kUnits);
      pipe->block(w, h_prev(s, 0, keep, p), packed_h.block(b), hg_at(0, b), kCellUnits,
                  static_cast<__mmask16>((1u << (j1 - j0)) - 1u));
    } else {
      (void)w, (void)s, (void)b;
    }
  };
  Balancer balancer(packed_h.blocks(), workers);
  // Odd steps run a worker's blocks last to first (zigzag): where its panels outgrow its
  // L2 (bfloat16 W_hh at T=256, N=16, H=768: 2.36 MB a core), a step in one order
  // evicts each panel before the next step reads it again, while the reverse order starts
  // with those still in L2. Results are the same bits (blocks are independent).
  // FUSEDRNN_CPU_ZIGZAG=0: one order (tests, benchmarks).
  const char* zigzag_env = std::getenv("FUSEDRNN_CPU_ZIGZAG");
  const bool zigzag = !(zigzag_env && zigzag_env[0] == '0');
  for (int64_t s0 = 0; s0 < st.T;) {
    int64_t s1 = st.T;
    if (!fold && !own_xg) {  // the input projection of the next block of steps, as one GEMM
      s1 = xg.block_end(s0);
      for (int64_t s = s0; s < s1; ++s) xg_step[s] = static_cast<const scalar_t*>(xg.step(s));
    }
    // Worker w's blocks at this step: their columns of hg are its own while it runs them.
    auto blocks_of = [&](int64_t w) { return balancer.range(w); };
    run_steps(
        workers, s0, s1,
        [&](int64_t w, int64_t s) {
          const int64_t t = tt(s), B = st.batch[t], off = st.offset[t];
          const auto [b0, b1] = blocks_of(w);
          prefault.at_step(s, w, workers);
#if FUSEDRNN_HAVE_AMX
          if (amx) {
            amx_begin();
            stage_rows(w, s);
          }
#endif
          if (s == 0) {
            for (int64_t b = b0; b < b1; ++b) {
              packed_h.pack(b);
              if (fold || own_xg) packed_x.pack(b);
            }
          }
          if (own_blocks && xrows[s].second > 0) {
            for (int64_t b = b0; b < b1; ++b) own_xg_block(s, b);
          }
          if (overlap) pipe->start(w, s);
          // Folded, the x products of a step are made ahead (below), except the first's
          // and those of blocks this worker did not run the step before.
          if (fold) {
            const auto [p0, p1] = balancer.range(w, -1);
            for (int64_t b = b0; b < b1; ++b) {
              if (s == s0 || b < p0 || b >= p1) products(s, b, XS{}, true);
            }
          }
          // The cell runs per group of kCellBlocks blocks, over all the step's rows: longer
          // vector loops, a quarter of the calls; the group's gates are still in L2.
          // (groups of hg: a worker's first and last may be partial)
          const bool back = zigzag && s % 2 == 1;
          const int64_t first = b0 / kCellBlocks;
          const int64_t groups = b1 > b0 ? (b1 - 1) / kCellBlocks - first + 1 : 0;
          for (int64_t gi = 0; gi < groups; ++gi) {
            const int64_t g = first + (back ? groups - 1 - gi : gi);
            const int64_t g0 = std::max(b0, g * kCellBlocks);
            const int64_t g1 = std::min(b1, (g + 1) * kCellBlocks);
            for (int64_t i = 0; i < g1 - g0; ++i) {
              const int64_t b = back ? g1 - 1 - i : g0 + i;
              if (amx) {
                amx_products(w, s, b);
              } else if (overlap) {
                overlap_products(w, s, b);
              } else {
                products(s, b, HS{}, false);
              }
            }
            const int64_t j0 = g0 * kUnits, j1 = std::min(H, g1 * kUnits);
            for (int64_t n = 0; n < B; ++n) {
              if (!fold && n + kXgAhead < B) {
                const char* ahead =
                    reinterpret_cast<const char*>(xg_step[s] + (n + kXgAhead) * xg_ld);
                for (int64_t v = 0; v < HS::size; ++v) {
                  for (int64_t j = j0; j < j1; j += 64 / int64_t(sizeof(scalar_t))) {
                    _mm_prefetch(ahead + (v * H + j) * int64_t(sizeof(scalar_t)), _MM_HINT_T0);
                  }
                }
              }
              // The cell reads gate v of unit j at hg_row[v * kCellUnits + j].
              const float* hg_row = hg_at(n, g0) - j0;
              cell(s, n, j0, j1, hg_row, kCellUnits, xg_step[s] + n * xg_ld);
              if constexpr (!kInPlace) {
                float* next = h_float.data() + (1 + s % 2) * N * H + n * H;
                const scalar_t* yn = y + (off + n) * H;
                for (int64_t j = j0; j < j1; ++j) next[j] = static_cast<float>(yn[j]);
              }
            }
          }
          if (overlap) pipe->finish(w, s);
#if FUSEDRNN_HAVE_AMX
          if (amx) amx_end();
#endif
        },
        [&](int64_t w, int64_t s) {
          // The next step's x products need only x: made while the others finish step s,
          // for the blocks this worker runs at both steps (another worker may still be
          // running step s's cell on a block that moves here).
          if (!fold || s + 1 >= s1) return;
          const auto [b0, b1] = blocks_of(w);
          const auto [n0, n1] = balancer.range(w, 1);
          for (int64_t b = std::max(b0, n0); b < std::min(b1, n1); ++b) {
            products(s + 1, b, XS{}, true);
          }
        },
        &balancer);
    s0 = s1;
  }
  copy_final_states(st, reverse, H, y, h_n);
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
