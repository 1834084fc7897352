// The small-batch float32 recurrences for CPUs without AVX-512: the workers of workers.h
// (one barrier a step). Forward, each computes its units' gates as dot products of
// h_{t-1} with the rows of W_hh read in place, then the cell; backward, the cell's
// backward for its units, then its units' share of dG W_hh from W_hh's column panels
// (rowdot_backward; the weight gradients and dx stay the GEMM loop's GEMMs after the
// loop). Portable C++ whose vector sums the compiler vectorizes for each ISA
// (FUSEDRNN_CPU_CLONES: AVX-512, AVX2, baseline x86-64).
//
// Why: without AVX-512 the layer ops ran the per-step GEMM loop, which pays a oneDNN GEMM
// call (dispatcher, an OpenMP region) and tensor views every step: ~36 us a step at T=200,
// N=1, H=256 LSTM, 0.47x torch.nn's oneDNN LSTM (measured on the 2-core Zen 4 with the
// fused loop off). At small batches a step reads W_hh once whatever the batch, so the
// dot products run at the memory's pace without the panels of the AVX-512 loop.
//
// Every dot product sums k in a fixed order (16 lanes, then the lanes in order), whatever
// the number of workers: results are bit-identical for any thread count.
#pragma once

#include "common.h"
#include "workers.h"

#include <cstdlib>
#include <cstring>
#include <vector>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// Batches up to this many rows take the row-dot loop where it runs (rowdot_wanted): its
// dot products read W_hh once per row, so a step's cost grows with the batch, while the
// GEMM loop's GEMMs reuse it across rows. GEMM loop / row-dot loop time on the 2-core Zen
// 4 (T=64, the fused loop off, inference): N=4 1.70x (H=256 LSTM), 1.15x (512), 1.03x
// (768), GRU 1.90x, 1.17x, 1.04x; N=8 1.27x, 0.88x, 0.81x (GRU 1.30x, 0.88x, 0.81x); N=16
// 0.70x-1.01x.
constexpr int64_t kRowDotBatch = 4;

// True where the float32 forward takes the row-dot loop at small batches: by default on
// CPUs without AVX-512F; FUSEDRNN_CPU_ROWDOT=1 turns it on elsewhere (tests and
// benchmarks, with FUSEDRNN_CPU_FUSED=0), =0 off.
inline bool rowdot_wanted() {
  const char* env = std::getenv("FUSEDRNN_CPU_ROWDOT");
  if (env && env[0]) return env[0] != '0';
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return !avx512;
}

// The backward's recurrence (rowdot_backward) reads W_hh by columns, a row segment of each
// of its G rows per group of 32 columns: where W_hh outgrows the caches that stride is
// slower than oneDNN's GEMMs. Backward ms, GEMM loop vs row-dot, 2-core Zen 4: T=200,
// N=1, H=256 LSTM 8.41 vs 4.49, GRU 7.20 vs 3.10; T=100, N=2, H=768 (LSTM W_hh 9 MB) 52.9
// vs 43.9, GRU 37.2 vs 32.9; N=1, H=1024 (16 MB, GRU 12 MB) 42.7 vs 64.2, GRU 32.4 vs
// 45.5; N=4, H=512 36.5 vs 37.3, GRU 23.9 vs 26.6; N=4, H=256 10.9 vs 7.7.
constexpr int64_t kRowDotBackBatch = 2;
constexpr int64_t kRowDotBackWeightBytes = 10 << 20;

inline bool rowdot_backward_wanted(int64_t N, int64_t G, int64_t H) {
  return N <= kRowDotBackBatch && G * H * int64_t(sizeof(float)) <= kRowDotBackWeightBytes &&
         rowdot_wanted();
}

constexpr int kDotLanes = 16;

// The lanes of one dot product summed in a fixed order.
inline float lanes_sum(const float* s) {
  float t[kDotLanes / 2];
  for (int l = 0; l < kDotLanes / 2; ++l) t[l] = s[l] + s[l + kDotLanes / 2];
  for (int w = kDotLanes / 4; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) t[l] = t[l] + t[l + w];
  return t[0];
}

// 8 floats in the compiler's vector extension: one ymm on AVX2 (the CPUs this loop is
// for) and AVX-512, two xmm on baseline x86-64 (the clones of FUSEDRNN_CPU_CLONES). A dot
// product's 16 partial sums are two of them (16-float vectors left gcc's AVX2 clone
// spilling its accumulators).
typedef float Lanes __attribute__((vector_size(kDotLanes / 2 * sizeof(float))));

inline Lanes load_lanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// out[v*H + j] = a . w[(v*H + j)*K : +K] for the gates v < NG and units j in [j0, j1):
// the NG gate rows of a unit at once (NG independent streams), 16 partial sums each.
template <int NG>
FUSEDRNN_CPU_CLONES void row_dots(const float* __restrict a, const float* __restrict w, int64_t K,
                                  int64_t H, int64_t j0, int64_t j1, float* __restrict out) {
  const int64_t k16 = K / kDotLanes * kDotLanes;
  constexpr int kHalf = kDotLanes / 2;
  for (int64_t j = j0; j < j1; ++j) {
    const float* row[NG];
#pragma GCC unroll 4
    for (int v = 0; v < NG; ++v) row[v] = w + (v * H + j) * K;
    Lanes lo[NG], hi[NG];
#pragma GCC unroll 4
    for (int v = 0; v < NG; ++v) lo[v] = hi[v] = Lanes{};
    for (int64_t k = 0; k < k16; k += kDotLanes) {
      const Lanes a0 = load_lanes(a + k), a1 = load_lanes(a + k + kHalf);
#pragma GCC unroll 4
      for (int v = 0; v < NG; ++v) {
        lo[v] += a0 * load_lanes(row[v] + k);
        hi[v] += a1 * load_lanes(row[v] + k + kHalf);
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < NG; ++v) {
      float lanes[kDotLanes];
      std::memcpy(lanes, &lo[v], sizeof(lo[v]));
      std::memcpy(lanes + kHalf, &hi[v], sizeof(hi[v]));
      float tail = 0.f;
      for (int64_t k = k16; k < K; ++k) tail += a[k] * row[v][k];
      out[v * H + j] = lanes_sum(lanes) + tail;
    }
  }
}

// step(w, s, xg_s) for every step s in run order on `workers` workers (run_steps, one
// barrier a step), block by block of the input projection: xg_s is row 0 of step s of
// x W_ih^T (float32).
template <typename F>
void projected_steps(const Steps& st, int64_t workers, InputProjection& xg, const F& step) {
  std::vector<const float*> xg_step(st.T);
  for (int64_t s0 = 0; s0 < st.T;) {
    const int64_t s1 = xg.block_end(s0);
    for (int64_t s = s0; s < s1; ++s) xg_step[s] = static_cast<const float*>(xg.step(s));
    run_steps(
        workers, s0, s1, [&](int64_t w, int64_t s) { step(w, s, xg_step[s]); },
        [](int64_t, int64_t) {});
    s0 = s1;
  }
}

// The forward recurrence over steps [0, T) in run order (s; t = s forward, T-1-s in
// reverse), float32, x W_ih^T from xg (oneDNN's GEMM over blocks of steps). At step s each
// worker computes, for the step's rows n and its units [j0, j1), gate v of unit j into
// hg_row[v*H + j] (W_hh . h_{t-1}, no biases), then cell(s, n, j0, j1, hg_row, H, xg_row),
// as fused_forward calls it. h_{t-1} is row n of the previous step's y while that step ran
// it, else h0 (packed, reverse). Afterwards h_n[n] is row n of the last step that ran it.
// w_hh [NG*H, H], h0 [N, H], y [R, H], contiguous.
template <int NG, typename Cell>
void rowdot_forward(const Steps& st, bool reverse, int64_t H, const float* w_hh, const float* h0,
                    float* y, float* h_n, InputProjection& xg, const Cell& cell) {
  const int64_t N = st.N, G = NG * H;
  auto tt = [&](int64_t s) { return reverse ? st.T - 1 - s : s; };
  const Scratch<float> hg(N * G);
  // Workers by units, 16 at a time, as many as the step's multiply-adds take
  // (step_workers).
  const int64_t groups = (H + kDotLanes - 1) / kDotLanes;
  const int64_t workers = step_workers(groups, N * G * H);
  auto units = [&](int64_t w) {
    return std::pair<int64_t, int64_t>{std::min(H, groups * w / workers * kDotLanes),
                                       std::min(H, groups * (w + 1) / workers * kDotLanes)};
  };
  projected_steps(st, workers, xg, [&](int64_t w, int64_t s, const float* xg_s) {
    const int64_t t = tt(s), B = st.batch[t];
    const int64_t keep = st.carried(t, reverse), p = st.prev(t, reverse);
    const auto [j0, j1] = units(w);
    if (j1 <= j0) return;
    for (int64_t n = 0; n < B; ++n) {
      const float* a = n < keep ? y + (st.offset[p] + n) * H : h0 + n * H;
      float* row = hg.data() + n * G;
      row_dots<NG>(a, w_hh, H, H, j0, j1, row);
      cell(s, n, j0, j1, row, H, xg_s + n * G);
    }
  });
  copy_final_states(st, reverse, H, y, h_n);
}

// out[j] = sum_g a[g] * w[g*C + j] for the columns j in [j0, j1) of w [G, C]: 8 columns a
// vector (32 at a time), each column's sum over g in order, whichever group it falls in.
FUSEDRNN_CPU_CLONES inline void col_dots(const float* __restrict a, const float* __restrict w,
                                         int64_t G, int64_t C, int64_t j0, int64_t j1,
                                         float* __restrict out) {
  constexpr int kW = kDotLanes / 2;
  int64_t j = j0;
  for (; j + 4 * kW <= j1; j += 4 * kW) {
    Lanes acc[4] = {};
    for (int64_t g = 0; g < G; ++g) {
      const Lanes av = Lanes{} + a[g];
      const float* wr = w + g * C + j;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) acc[q] += av * load_lanes(wr + q * kW);
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) std::memcpy(out + j + q * kW, &acc[q], sizeof(acc[q]));
  }
  for (; j + kW <= j1; j += kW) {
    Lanes acc = {};
    for (int64_t g = 0; g < G; ++g) acc += (Lanes{} + a[g]) * load_lanes(w + g * C + j);
    std::memcpy(out + j, &acc, sizeof(acc));
  }
  for (; j < j1; ++j) {
    Lanes acc = {};  // lane 0 only: the same vector arithmetic as the columns above
    for (int64_t g = 0; g < G; ++g) acc += (Lanes{} + a[g]) * (Lanes{} + w[g * C + j]);
    out[j] = acc[0];
  }
}

// Columns per column panel (pack_column_panels): two 8-float vectors.
constexpr int64_t kPanelColumns = kDotLanes;

// Panels [q0, q1) of w [G, H] (W_hh, torch's layout) as column panels [G][16]: panel q at
// out + q * G * 16 holds the columns q*16 + u of every row g; zero past H.
inline void pack_column_panels(const float* w, int64_t G, int64_t H, int64_t q0, int64_t q1,
                               float* out) {
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t j0 = q * kPanelColumns, n = std::min(kPanelColumns, H - j0);
    for (int64_t g = 0; g < G; ++g) {
      float* dst = out + (q * G + g) * kPanelColumns;
      if (n == kPanelColumns) {
        std::memcpy(dst, w + g * H + j0, kPanelColumns * sizeof(float));
      } else {
        for (int64_t u = 0; u < kPanelColumns; ++u) dst[u] = u < n ? w[g * H + j0 + u] : 0.f;
      }
    }
  }
}

// All panels, on every core.
inline void pack_column_panels(const float* w, int64_t G, int64_t H, float* out) {
  const int64_t groups = (H + kPanelColumns - 1) / kPanelColumns;
  parallel_rows(groups, 1, [&](int64_t q0, int64_t q1) {
    pack_column_panels(w, G, H, q0, q1, out);
  });
}

// Steps from which the row-dot backward packs W_hh's column panels: a pack cost about two
// products in place. Replica on the 2-core Zen 3 (both threads, W_hh from memory at the
// first step), us a call, in place vs pack and panels: H=256 LSTM (1 MB) T=1 76 vs 131,
// T=4 153 vs 156, T=8 252 vs 234, T=16 398 vs 312; H=512 (4 MB) T=1 309 vs 585, T=4 712
// vs 767, T=8 1102 vs 1111, T=16 1950 vs 1494.
constexpr int64_t kPanelBackSteps = 8;

// out[c] = sum_g a[g] * W[g, q*16 + c] for the NP * 16 columns of the column panels q ..
// q + NP - 1 (pack_column_panels): NP contiguous streams, 2 NP vector sums, each column's
// sum over g in order (one multiply-add a g).
//
// Why panels, and up to 4 of them: the backward's dh = dG W_hh reads W_hh by columns. In
// place, 32 columns (4 vector sums) a pass, each pass read a 128-byte segment of every
// row, rows 1 KB apart at H=256. On the 2-core Zen 3, a T=200, N=1, H=256 LSTM step's
// products (1 MB of W_hh, 2 threads, median of 400 alternations of 20 steps), us a step:
// in place, 4 sums 16.4, 8 sums 14.8, 8 sums with the rows 8 ahead prefetched 12.7; from
// panels, 8 sums 10.2 (G=768: 12.2 -> 7.5; G=2048, H=512: 84.2 -> 59.5). The sums are the
// same, in the same order, as col_dots's, except past the last multiple of 8 columns,
// where col_dots's scalar tail rounds the product before the add.
template <int NP>
FUSEDRNN_CPU_CLONES void panel_col_dots(const float* __restrict a,
                                        const float* __restrict panels, int64_t G, int64_t q,
                                        float* __restrict out) {
  constexpr int64_t kHalf = kDotLanes / 2;
  const float* p[NP];
#pragma GCC unroll 4
  for (int i = 0; i < NP; ++i) p[i] = panels + (q + i) * G * kPanelColumns;
  Lanes acc[2 * NP] = {};
  for (int64_t g = 0; g < G; ++g) {
    const Lanes av = Lanes{} + a[g];
#pragma GCC unroll 4
    for (int i = 0; i < NP; ++i) {
      acc[2 * i] += av * load_lanes(p[i] + g * kPanelColumns);
      acc[2 * i + 1] += av * load_lanes(p[i] + g * kPanelColumns + kHalf);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < 2 * NP; ++v) std::memcpy(out + v * kHalf, &acc[v], sizeof(acc[v]));
}

// out[j] = sum_g a[g] * W[g, j] for the columns j in [q0 * 16, min(H, q1 * 16)) of W
// [G, H] from its column panels: 4 panels at a time.
inline void panels_col_dots(const float* a, const float* panels, int64_t G, int64_t H,
                            int64_t q0, int64_t q1, float* out) {
  float buf[4 * kPanelColumns];
  for (int64_t q = q0; q < q1; q += 4) {
    const int64_t np = std::min<int64_t>(4, q1 - q);
    switch (np) {
      case 1: panel_col_dots<1>(a, panels, G, q, buf); break;
      case 2: panel_col_dots<2>(a, panels, G, q, buf); break;
      case 3: panel_col_dots<3>(a, panels, G, q, buf); break;
      default: panel_col_dots<4>(a, panels, G, q, buf); break;
    }
    const int64_t j0 = q * kPanelColumns, j1 = std::min(H, (q + np) * kPanelColumns);
    std::memcpy(out + j0, buf, (j1 - j0) * sizeof(float));
  }
}

// The GEMM loop's backward recurrence on the row-dot loop's workers (float32, batches up to
// kRowDotBatch): for each step s in backward order (t = T-1-s forward, s in reverse),
// cell(s, j0, j1) for the worker's units of all the step's rows (it reads dh's and writes
// dG's columns of those units), then, once every worker has finished step s, dh[n, j] =
// dG[offset + n] . W_hh[:, j] for the step's rows n and the worker's units, from W_hh's
// column panels (panels_col_dots; W_hh in place below kPanelBackSteps steps). dG [R, G]
// (the gate gradients that reach W_hh), dh [N, H] (grad_h_n on entry), w_hh [G, H]. Each
// column's sum runs over g in order: bit-identical for any thread count.
template <typename Cell>
void rowdot_backward(const Steps& st, bool reverse, int64_t G, int64_t H, const float* w_hh,
                     const float* dG, float* dh, const Cell& cell) {
  auto tt = [&](int64_t s) { return reverse ? s : st.T - 1 - s; };
  const int64_t groups = (H + kPanelColumns - 1) / kPanelColumns;
  const int64_t workers = step_workers(groups, st.N * G * H);
  // W_hh's column panels from kPanelBackSteps steps on, each worker packing its own at
  // step 0 (before its first product, after step 0's barrier); else W_hh in place
  const bool packed = st.T >= kPanelBackSteps;
  const Scratch<float> panels(packed ? groups * G * kPanelColumns : 0);
  run_steps(
      workers, 0, st.T + 1,
      [&](int64_t w, int64_t s) {
        const int64_t q0 = groups * w / workers, q1 = groups * (w + 1) / workers;
        const int64_t j0 = std::min(H, q0 * kPanelColumns), j1 = std::min(H, q1 * kPanelColumns);
        if (j1 <= j0) return;
        if (s == 0 && packed) pack_column_panels(w_hh, G, H, q0, q1, panels.data());
        if (s > 0) {
          const int64_t t = tt(s - 1);
          for (int64_t n = 0; n < st.batch[t]; ++n) {
            const float* a = dG + (st.offset[t] + n) * G;
            if (packed) {
              panels_col_dots(a, panels.data(), G, H, q0, q1, dh + n * H);
            } else {
              col_dots(a, w_hh, G, H, j0, j1, dh + n * H);
            }
          }
        }
        if (s < st.T) cell(s, j0, j1);
      },
      [](int64_t, int64_t) {});
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
