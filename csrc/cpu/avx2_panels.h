// The float32 forward recurrence above the row-dot loop's batches on CPUs with AVX2 and
// FMA but without AVX-512 (the fused loops' ISA): the workers of workers.h, one barrier a
// step. W_hh is packed once a call into panels of 16 units of one gate, [K = H][16]; at
// each step every worker computes its units' gates for all the step's rows, 6 rows by 16
// columns in 12 ymm accumulators, then runs the cell over its units. From kPanelFoldBatch
// rows on, W_ih is packed too and each tile adds x_t W_ih^T in the same accumulators (x
// folded), in place of oneDNN's GEMM over blocks of steps.
//
// Why: there the forward was the GEMM loop, a oneDNN GEMM call per step (an OpenMP region
// that packs W_hh again every step) and a second parallel region for the cell. On a
// 2-core Zen 3, T=100, N=64, H=512 LSTM inference, perf: oneDNN's GEMMs 76% of samples,
// libgomp's spin 7%; 0.89x torch.nn's oneDNN LSTM, whose RNN primitive packs its weights
// once.
//
// Every product sums all of k in one chain per output, in order (x's terms after h's where
// x is folded): the same sums whichever worker runs a unit, so results are bit-identical
// for any thread count. (Until this change the sums went in chunks of kChunkK, each
// chunk's sum added to the result in memory, so that a chunk of a panel, 8 KB, stayed in
// L1 over the row tiles. Whole-K tiles, the panel read from L2, were faster on the 2-core
// Zen 3: a 2-thread replica of the step's products, median GFLOP/s chunked -> whole K:
// K=512, N=64, G=2048 137-141 -> 152-155; K=1024, N=256, G=4096 108-114 -> 135; the
// backward's K=2048, N=64, G=512 129-137 -> 145; K=4096, N=256, G=1024 118-123 -> 141.
// Paired in the ops, torch.nn / fusedrnn: T=100, N=64, I=H=512 LSTM inference 0.99x ->
// 1.05x, training 0.96x -> 1.10x; T=256, N=16, I=H=768 GRU training 1.87x -> 2.22x.)
#pragma once

#include "common.h"
#include "panel_gemm.h"
#include "rowdot_loop.h"
#include "workers.h"

#include <cstdlib>
#include <cstring>
#include <vector>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// The backward's loop runs where a step's rows take at most this many bytes (N * H
// floats): above it oneDNN's per-step GEMMs were as fast or faster. Paired at T=50, N=256,
// I=H=1024 (1 MB) LSTM training, panels from 1 MB on: 5380 vs 5398 ms, then 5935 vs 5156.
constexpr int64_t kPanelRowsBytes = 256 << 10;

// The forward's loop runs up to this many bytes of a step's h rows. Paired, T=50, N=256,
// I=H=1024 (1 MB), inference, torch.nn / fusedrnn, GEMM loop -> panels (x folded): LSTM
// 0.848x -> 1.009x, GRU 0.998x -> 1.185x. (Before whole-K tiles and folded x, the panels
// were 0.95x the GEMM loop there.) Larger steps were not measured.
constexpr int64_t kPanelForwardRowsBytes = 1 << 20;

// From this batch on the forward folds x into the panels' tiles (W_ih packed as W_hh):
// each step then streams W_ih through the caches too, at 2N flops per 4 bytes of weight,
// which bounds the step at small batches; above it the whole step runs at the panels'
// rate rather than the input projection at oneDNN's GEMM's. Paired on the 2-core Zen 3,
// inference, torch.nn / fusedrnn, not folded -> folded: T=256, N=16, I=H=768 LSTM 1.19x ->
// 0.80x; T=100, I=H=512 LSTM N=32 0.99x -> 1.05x, N=64 0.96x -> 1.08x, GRU N=64 1.19x ->
// 1.43x. FUSEDRNN_CPU_PANEL_FOLD=0 / =1 turns it off / on at any batch (tests, A/B).
constexpr int64_t kPanelFoldBatch = 32;

inline bool panel_fold(int64_t N) {
  const char* env = std::getenv("FUSEDRNN_CPU_PANEL_FOLD");
  if (env && env[0]) return env[0] != '0';
  return N >= kPanelFoldBatch;
}

// True where the float32 forward (limit kPanelForwardRowsBytes) or backward
// (kPanelRowsBytes) above kRowDotBatch rows takes this loop: up to `limit` bytes of a
// step's h rows, on CPUs with AVX2 and FMA where the row-dot loop runs (rowdot_wanted: no
// AVX-512). FUSEDRNN_CPU_PANELS=0 turns it off (the GEMM loop), =1 on wherever the CPU has
// AVX2 and FMA; read at every op call (tests compare the two).
inline bool panels_wanted(int64_t N, int64_t H, int64_t limit) {
  if (N * H * int64_t(sizeof(float)) > limit) return false;
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!cpu) return false;
  const char* env = std::getenv("FUSEDRNN_CPU_PANELS");
  if (env && env[0]) return env[0] != '0';
  return rowdot_wanted();
}

// Whether a forward of T steps repays packing W_hh [G, H] into panels: from 2 steps, from
// 3 where W_hh passes 16 MB (out of L3, packing costs about a step's products). Paired,
// T=1, N=16, H=2048 LSTM inference: GEMM loop 17.7 ms, panels 24.6; T=2 30.6 / 34.6; T=3
// and 4 level; T=2, H=512: 3.21 / 2.77.
inline bool panels_pay(int64_t T, int64_t G, int64_t H) {
  return T >= (G * H * int64_t(sizeof(float)) > (16 << 20) ? 3 : 2);
}

// Whether a backward of T steps of N rows repays packing W_hh into column panels: from 3
// steps of 2 rows or more. At one row the GEMM loop's per-step dh = dG W_hh reads W_hh in
// place (few_rows.h) as fast as the panels do, without the packing. Backward op ms on a
// 2-core Zen 3, GEMM loop vs panels (H = I): N=1, H=1024 GRU T=1 2.9 vs 6.9, T=4 4.5 vs
// 7.4, T=8 18.4 vs 21.6, T=50 29.5 vs 31.1, LSTM T=1 3.8 vs 9.2; N=16, H=1024 GRU T=2 22.4
// vs 24.3, T=3 31.3 vs 30.1, T=4 34.8 vs 32.6; N=8, H=512 LSTM T=2 7.5 vs 8.0, T=3 7.5 vs
// 7.6, T=4 9.0 vs 8.8; T=50, H=1024 GRU N=2 72.6 vs 62.9, N=4 88.7 vs 72.2.
inline bool panel_backward_pays(int64_t T, int64_t N) { return T >= 3 && N >= 2; }

// Rows a block of the panel forward's step (0: all the step's rows in one): the worker
// runs a block's row tiles over all its panels, then the next block's. Blocks of
// panel_gemm_block_rows (24 rows at a depth I + H of 1024) where a step's rows, N of depth
// floats, take at most kPanelBlockStepBytes, and not where they are packed (panel_pack).
// A row's sums are the same in any block: the bits do not change.
//
// Measured, not modelled: paired in one process, ms, whole step -> blocks (2-core Zen 3,
// float32, x folded): T=100, N=64, I=H=512 LSTM inference 182.5 -> 176.2, 197.9 -> 191.6,
// once 205.6 -> 209.2; training 617.6 -> 590.8; GRU inference 158.5 -> 146.1; the 2-layer
// bidirectional N=32 LSTM inference 501.4 -> 480.7. Sweep of LSTM inference at N=64: 12 /
// 18 / 24 rows 169.7 / 167.4 / 163.5 against 176.2 whole; 2 blocks of 32 level (184.7 vs
// 184.8). Larger steps ran slower in blocks: T=50, N=256, I=H=512 LSTM inference 345.5 ->
// 370.3 (24 rows), 409.3 (48); N=128, I=H=768 386.2 -> 483.4 (12), 449.6 (24); packed
// rows, N=256, I=H=1024, 12-row blocks 1387 -> 2182. FUSEDRNN_CPU_PANEL_BLOCK=n sets n
// rows at any size of unpacked rows (0: the whole step) for tests and A/B; read at every
// call.
constexpr int64_t kPanelBlockStepBytes = 256 << 10;

inline int64_t panel_block_rows(int64_t N, int64_t depth, bool packed) {
  if (packed) return 0;  // the rows were packed tile by tile for the whole step
  const char* env = std::getenv("FUSEDRNN_CPU_PANEL_BLOCK");
  if (env && env[0]) return std::max<int64_t>(0, std::atoll(env));
  if (N * depth * int64_t(sizeof(float)) > kPanelBlockStepBytes) return 0;
  return panel_gemm_block_rows(depth);
}

// The forward recurrence over steps [0, T) in run order, as rowdot_forward (its cell
// callback and its hg rows, here of gate stride hs = groups * 16), for any batch. At step
// s each worker computes hg[n][v*hs + j] = W_hh[v*H + j] . h_{t-1}[n] for the step's rows
// n and its units' groups, panel by panel (a panel, H * 64 bytes, stays in L2 over the
// row tiles), then cell(s, n, j0, j1, hg_row, hs, xg_row).
// Where x2 [R, I] is given (x folded; w_ih [NG*H, I]), each gate's tile adds
// W_ih[v*H + j] . x_t[n] and the cell gets a null xg_row; with split_last (GRU) the last
// gate's x product goes to a slot of its own, hg[n][NG*hs + j], as the fused loop's
// folded GRU has it.
template <int NG, typename Cell>
void panel_forward(const Steps& st, bool reverse, int64_t H, const float* w_hh, const float* h0,
                   float* y, float* h_n, InputProjection& xg, const Cell& cell,
                   const float* x2 = nullptr, int64_t I = 0, const float* w_ih = nullptr,
                   bool split_last = false) {
  const bool fold = x2 != nullptr;
  const int64_t N = st.N, groups = (H + kAvx2Units - 1) / kAvx2Units;
  const int64_t hs = groups * kAvx2Units, G = (NG + (fold && split_last)) * hs;
  auto tt = [&](int64_t s) { return reverse ? st.T - 1 - s : s; };
  const Scratch<float> panels(NG * groups * H * kAvx2Units), hg(N * G);
  const Scratch<float> x_panels(fold ? NG * groups * I * kAvx2Units : 0);
  pack_panels<NG>(w_hh, H, H, panels.data());
  if (fold) pack_panels<NG>(w_ih, H, I, x_panels.data());
  const int64_t workers = step_workers(groups, N * NG * H * (H + (fold ? I : 0)));
  // each worker's copy of the step's rows, tile by tile: h's H, then x's I (panel_pack)
  const int64_t depth = H + (fold ? I : 0);
  const bool pack = panel_pack(depth);
  std::vector<Scratch<float>> packed;
  for (int64_t w = 0; pack && w < workers; ++w) packed.emplace_back(N * depth);
  auto units = [&](int64_t w) {
    return std::pair<int64_t, int64_t>{groups * w / workers, groups * (w + 1) / workers};
  };
  const int64_t block_rows = panel_block_rows(N, depth, pack);
  auto step = [&](int64_t w, int64_t s, const float* xg_s) {
    const int64_t t = tt(s), B = st.batch[t];
    const int64_t keep = st.carried(t, reverse), p = st.prev(t, reverse);
    const auto [q0, q1] = units(w);
    if (q1 <= q0) return;
    auto h_row = [&](int64_t n) { return n < keep ? y + (st.offset[p] + n) * H : h0 + n * H; };
    auto x_row = [&](int64_t n) { return x2 + (st.offset[t] + n) * I; };
    if (pack) {
      for_row_tiles(B, [&](int64_t n0, int rows) {
        const float* a[kAvx2Rows];
        float* out = packed[w].data() + n0 * depth;
        for (int r = 0; r < rows; ++r) a[r] = h_row(n0 + r);
        pack_tile_rows(rows, a, H, out);
        if (!fold) return;
        for (int r = 0; r < rows; ++r) a[r] = x_row(n0 + r);
        pack_tile_rows(rows, a, I, out + H * rows);
      });
    }
    const int64_t rb = block_rows > 0 ? block_rows : B;
    for (int64_t b0 = 0; b0 < B; b0 += rb) {
      const int64_t b1 = std::min(B, b0 + rb);
      for (int64_t v = 0; v < NG; ++v) {
        const bool apart = fold && split_last && v == NG - 1;
        for (int64_t q = q0; q < q1; ++q) {
          const float* panel = panels.data() + (v * groups + q) * H * kAvx2Units;
          const float* xp = fold ? x_panels.data() + (v * groups + q) * I * kAvx2Units : nullptr;
          for_row_tiles(b1 - b0, [&](int64_t i0, int rows) {
            const int64_t n0 = b0 + i0;
            const float* a[kAvx2Rows];
            const float* xr[kAvx2Rows];
            float* c[kAvx2Rows];
            for (int r = 0; r < rows; ++r) {
              c[r] = hg.data() + (n0 + r) * G + v * hs + q * kAvx2Units;
            }
            if (pack) {
              a[0] = packed[w].data() + n0 * depth;
              xr[0] = a[0] + H * rows;
            } else {
              for (int r = 0; r < rows; ++r) {
                a[r] = h_row(n0 + r);
                xr[r] = fold ? x_row(n0 + r) : nullptr;
              }
            }
            auto product = [&](const float* const* ar, const float* pa, int64_t K,
                               const float* const* xa) {
              if (pack) return panel_rows<kAvx2Rows, true>(rows, ar, pa, K, c, xa, xp, I);
              panel_rows(rows, ar, pa, K, c, xa, xp, I);
            };
            product(a, panel, H, fold && !apart ? xr : nullptr);
            if (apart) {  // GRU's W_in x, apart from W_hn h: into slot NG
              for (int r = 0; r < rows; ++r) c[r] += (NG - v) * hs;
              product(xr, xp, I, nullptr);
            }
          });
        }
      }
    }
    const int64_t j0 = q0 * kAvx2Units, j1 = std::min(H, q1 * kAvx2Units);
    for (int64_t n = 0; n < B; ++n) {
      cell(s, n, j0, j1, hg.data() + n * G, hs, fold ? nullptr : xg_s + n * NG * H);
    }
  };
  if (fold) {
    run_steps(
        workers, 0, st.T, [&](int64_t w, int64_t s) { step(w, s, nullptr); },
        [](int64_t, int64_t) {});
  } else {
    projected_steps(st, workers, xg, step);
  }
  copy_final_states(st, reverse, H, y, h_n);
}

// The float32 forward recurrence of CPUs without AVX-512, tensors given: the row-dot loop
// (rowdot) or panel_forward, x folded into its tiles from kPanelFoldBatch rows
// (panel_fold; split_last: GRU's slot for W_in x). x2 [R, I], w_ih [NG*H, I],
// w_hh [NG*H, H], h0 [N, H]; y, h_n as rowdot_forward.
template <int NG, typename Cell>
void avx2_forward(bool rowdot, bool split_last, const Steps& st, bool reverse, const Tensor& x2,
                  const Tensor& w_ih, const Tensor& w_hh, const Tensor& h0, float* y,
                  float* h_n, InputProjection& xg, const Cell& cell) {
  const int64_t H = w_hh.size(1);
  const Tensor w_hh_c = torch::stable::contiguous(w_hh), h0_c = torch::stable::contiguous(h0);
  const float* w = w_hh_c.const_data_ptr<float>();
  const float* h0_p = h0_c.const_data_ptr<float>();
  if (rowdot) return rowdot_forward<NG>(st, reverse, H, w, h0_p, y, h_n, xg, cell);
  if (!panel_fold(st.N)) return panel_forward<NG>(st, reverse, H, w, h0_p, y, h_n, xg, cell);
  const Tensor w_ih_c = torch::stable::contiguous(w_ih), x2_c = torch::stable::contiguous(x2);
  panel_forward<NG>(st, reverse, H, w, h0_p, y, h_n, xg, cell, x2_c.const_data_ptr<float>(),
                    x2.size(1), w_ih_c.const_data_ptr<float>(), split_last);
}

// The GEMM loop's backward recurrence above the row-dot loop's batches (rowdot_backward's
// contract: cell(s, j0, j1) for a worker's units of all the step's rows, then, once every
// worker has finished step s, dh[n, j] = dG[offset + n] . W_hh[:, j] for the step's rows n
// and the worker's units), the products by panels of 16 columns of W_hh packed once a
// call, 6 rows a tile, k over all G rows in order. A worker's
// units are the same at the product and at the cell, so one barrier a step.
template <typename Cell>
void panel_backward(const Steps& st, bool reverse, int64_t G, int64_t H, const float* w_hh,
                    const float* dG, float* dh, const Cell& cell) {
  auto tt = [&](int64_t s) { return reverse ? s : st.T - 1 - s; };
  const int64_t groups = (H + kAvx2Units - 1) / kAvx2Units, hs = groups * kAvx2Units;
  const Scratch<float> panels(groups * G * kAvx2Units), dhp(st.N * hs);
  pack_column_panels(w_hh, G, H, panels.data());
  const int64_t workers = step_workers(groups, st.N * G * H);
  run_steps(
      workers, 0, st.T + 1,
      [&](int64_t w, int64_t s) {
        const int64_t q0 = groups * w / workers, q1 = groups * (w + 1) / workers;
        if (q1 <= q0) return;
        const int64_t j0 = q0 * kAvx2Units, j1 = std::min(H, q1 * kAvx2Units);
        if (s > 0) {
          const int64_t t = tt(s - 1), B = st.batch[t];
          for (int64_t q = q0; q < q1; ++q) {
            const float* panel = panels.data() + q * G * kAvx2Units;
            for_row_tiles(B, [&](int64_t n0, int rows) {
              const float* a[kAvx2Rows];
              float* c[kAvx2Rows];
              for (int r = 0; r < rows; ++r) {
                a[r] = dG + (st.offset[t] + n0 + r) * G;
                c[r] = dhp.data() + (n0 + r) * hs + q * kAvx2Units;
              }
              panel_rows(rows, a, panel, G, c);
            });
          }
          for (int64_t n = 0; n < B; ++n) {
            std::memcpy(dh + n * H + j0, dhp.data() + n * hs + j0, (j1 - j0) * sizeof(float));
          }
        }
        if (s < st.T) cell(s, j0, j1);
      },
      [](int64_t, int64_t) {});
}

// The GEMM loop's float32 backward recurrence on workers: rowdot_backward (rowdot) or
// panel_backward, with the same arguments.
template <typename Cell>
void with_backward_loop(bool rowdot, const Steps& st, bool reverse, int64_t G, int64_t H,
                        const float* w_hh, const float* dG, float* dh, const Cell& cell) {
  if (rowdot) return rowdot_backward(st, reverse, G, H, w_hh, dG, dh, cell);
  panel_backward(st, reverse, G, H, w_hh, dG, dh, cell);
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
