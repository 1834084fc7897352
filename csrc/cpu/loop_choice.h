// Which CPU loop a layer op runs: the fused AVX-512 loops of recurrence.h and
// fused_backward.h (float or bf16 products, or AMX tiles) or the per-step GEMM loop, by
// CPU features, dtype and size. The thresholds were measured; see each.
#pragma once

#include "common.h"
#include "tiles.h"

#include <cstdlib>
#include <type_traits>

namespace fusedrnn {

// True where the fused loop runs: an x86-64 CPU with AVX-512F, checked at run time (the
// wheel is built for baseline x86-64), unless FUSEDRNN_CPU_FUSED=0 (tests and benchmarks
// of the other loop). Elsewhere the layer ops use the GEMM loop.
inline bool fused_available() {
#if FUSEDRNN_HAVE_FUSED
  static const bool cpu = __builtin_cpu_supports("avx512f");
  const char* env = std::getenv("FUSEDRNN_CPU_FUSED");
  return cpu && !(env && env[0] == '0');
#else
  return false;
#endif
}

// True where bfloat16 storage runs the fused loop on bf16 products (vdpbf16ps,
// AVX512-BF16: Zen 4 and later, Cooper Lake, Sapphire Rapids and later). Not by default
// on AMX CPUs: there vdpbf16ps issues at half the rate of a float FMA (no gain over float
// products); bfloat16 takes the AMX products (amx_forward) and, where the tiles are off,
// the float-product fused loop at small steps and the GEMM loop above (fused_16bit;
// measured on a 2-core Sapphire Rapids: T=100, N=64, H=512 LSTM inference 0.28x -> 0.98x
// torch.nn).
// FUSEDRNN_CPU_BF16_DOT=0 / =1 turn it off / on wherever the CPU has AVX512-BF16 (tests).
inline bool bf16_dot_available() {
#if FUSEDRNN_HAVE_FUSED
  static const bool cpu = __builtin_cpu_supports("avx512bf16");
  const char* env = std::getenv("FUSEDRNN_CPU_BF16_DOT");
  const bool on = env && env[0] ? env[0] != '0' : !amx_bf16_available();
  return cpu && on && fused_available();
#else
  return false;
#endif
}

#if FUSEDRNN_HAVE_FUSED

// The forward's loop order over a block's panel (recurrence.h, panel_products). True:
// each row tile runs the whole K at once (its kChunkK chunks added in the call), the
// panel streamed from L2 by every tile. False: rows in groups of kGroupRows, and for
// each kChunkK chunk all the group's tiles, so that the chunk's 32 KB of panel is read
// from L1 by each (one call per chunk and tile). Same sums in the same order either way.
// The grouped order gained 10% on the 2-core Sapphire Rapids (recurrence.h, kGroupRows);
// on the 2-core Zen 4, whose L2 feeds a tile's panel loads as fast as its FMAs take them
// (a one-core replica: 96% of the FMA peak from L2, 93% per-chunk calls), whole-K tiles
// win, float32 inference, separate processes alternated: T=50, N=256, I=H=1024 LSTM
// 1046/1052/1036 -> 1011/1011/1013 ms, GRU 850/846/862 -> 845/815/855; T=256, N=16,
// I=H=768 LSTM 194/196/192 -> 189/187/183, GRU 149/144/149 -> 141/139/141; T=100, N=64,
// I=H=512 GRU 100/105/106 -> 97/101/101, LSTM 1% (noise); bfloat16 level to 1%. So: AMD
// CPUs take whole-K tiles (Zen 5 not measured), others the grouped order.
// FUSEDRNN_CPU_TILE_OUTER=1 / =0 picks one (tests, A/B).
// Read once per op call (the tests switch it between calls).
inline bool whole_k_tiles() {
  static const bool amd = __builtin_cpu_is("amd");
  const char* env = std::getenv("FUSEDRNN_CPU_TILE_OUTER");
  return env && env[0] ? env[0] != '0' : amd;
}

// From the batch fold_batch() returns on, the input projection is computed inside the
// step, from packed W_ih (its products made ahead, while the other workers finish the
// step), rather than over blocks of steps (oneDNN's GEMM, or the workers' own_xg). Folded,
// each step streams W_ih as well as W_hh through the cores' caches at 2N flops per 4
// bytes of weights: at small batches that read, not the FMA units, bounds the step, and
// the blocks of steps (their weights reused across up to 1024 rows) win. The crossover
// differs by CPU. Paired on the 2-core Sapphire Rapids, GEMM vs folded: T=256, N=16,
// I=H=768 LSTM inference 1.075x faster, training 1.07x, GRU inference 1.16x; T=100,
// I=H=512 N=32 1.015-1.05x; N=48 0.93x and N=64 0.95x (folding wins): 40 on AMX CPUs. On
// the 2-core Zen 4, T=100, N=32, I=H=512, 2 layers, bidirectional, inference, not folded
// -> folded: LSTM 335.8/343.2 -> 326.9/325.3 ms, GRU 263.9 -> 253.1 ms; bfloat16 (bf16
// products) LSTM 182.7 -> 170.6 ms; at T=256, N=16, H=768 float32 LSTM 191.9 -> 195.1 ms
// (not folding wins), bfloat16 98.6 -> 95.5 ms: 32 elsewhere, 16 for bf16 products. (12
// had been measured on the 2-core Zen 5 of the earlier runs, before the products were
// made ahead.)
inline int64_t fold_batch(bool pairs) {
  if (pairs) return 16;
  return amx_bf16_available() ? 40 : 32;
}

// float16 (and bfloat16 without AVX512-BF16) runs the fused loop (float products, x not
// folded) below this batch: measured
// at T=256, H=768, bfloat16, batch 16 went 0.52x -> 0.58x torch.nn (LSTM) and 1.18x ->
// 1.46x (GRU), batch 1 0.25x -> 1.18x (LSTM, H=256); larger batches keep the 16-bit
// GEMMs, whose peak is twice float's. bfloat16 with AVX512-BF16 runs it at any batch
// (bf16 products, kPairs): at T=100, N=64, H=512, LSTM inference went 0.80x -> 0.95x.
constexpr int64_t kFused16BitBatch = 32;

// On AMX CPUs with the tiles off (FUSEDRNN_CPU_AMX=0; else amx_forward) bfloat16 without
// bf16 products runs the fused loop (float products) while
// a step's recurrent product has fewer than this many multiply-adds (N*G*H), and the GEMM
// loop on oneDNN's AMX GEMMs above: their fixed cost (~45 us a step) loses to the fused
// loop at small products, and their AMX rate wins at large ones. Measured on a 2-core
// Sapphire Rapids (T=256, H=768: LSTM crosses near N=4..8, GRU near N=8; T=200, H=256:
// the fused loop still 1.3x..4x faster at N=16).
constexpr int64_t kAmxFusedMacs = 10'000'000;

// Whether 16-bit storage without bf16 products runs the fused loop (float products) for
// a step of N rows, G = gates*H columns.
template <typename scalar_t>
bool fused_16bit(int64_t N, int64_t G, int64_t H) {
  if (std::is_same_v<scalar_t, c10::BFloat16> && amx_bf16_available()) {
    return N * G * H < kAmxFusedMacs;
  }
  return N < kFused16BitBatch;
}

// bfloat16 on AMX CPUs runs the fused loop with its recurrent products on AMX tiles
// (amx_gates; x W_ih^T from oneDNN's GEMM over blocks of steps, on AMX too) while a
// step's product has at most this many multiply-adds (N*G*H), and the GEMM loop above.
// Paired on the 2-core Sapphire Rapids, inference against the loops before (float
// products below kAmxFusedMacs, oneDNN's per-step GEMMs above): T=256, N=16, H=768 LSTM
// 79.2 -> 49.2 ms (torch.nn 64.4); T=100, N=64, H=512 LSTM 36.9 -> 31.3 ms (25.9), GRU
// 42.8 -> 33.6 ms (69.1); T=200, H=256 LSTM N=8 7.22 -> 5.27 ms;
// but T=50, N=256, H=1024 (1G) LSTM 362 -> 444 ms and GRU 245 -> 266 ms.
// Below batch 8 a 16-row tile is mostly padding: at T=200, H=256 the float-product loop
// was faster at N=1 (3.05 vs 3.79 ms, paired) and level at N=4.
constexpr int64_t kAmxForwardMacs = 256'000'000;
constexpr int64_t kAmxForwardBatch = 8;

template <typename scalar_t>
bool amx_forward(int64_t N, int64_t G, int64_t H) {
#if FUSEDRNN_HAVE_AMX
  return std::is_same_v<scalar_t, c10::BFloat16> && N >= kAmxForwardBatch &&
         N * G * H <= kAmxForwardMacs && amx_usable();
#else
  (void)N, (void)G, (void)H;
  return false;
#endif
}

// float32 runs the fused loops while a step's rows (x and h_{t-1}) take at most this many
// bytes (a core's L2), and the per-step GEMM loop (oneDNN's cache-blocked GEMMs) above;
// GRU's forward up to kFusedGRURowsBytes. At T=50, N=256, I=H=1024 (2 MB of rows) the
// GEMM loop had been faster (LSTM inference 1354 vs 1215 ms); with the panel prefetch,
// hg's groups and the weight-gradient tiles the fused loops won there, paired on the
// 2-core Sapphire Rapids (median of 4 alternations, GEMM loop -> fused): LSTM inference
// 1105 -> 1022 ms, training forward 1402 -> 1320, backward 2719 -> 2582 (2758 -> 2502
// and 2627 -> 2401 in two more runs); GRU backward 2143 -> 2028 ms, but GRU's forward
// lost (training forward 880 -> 999 ms, inference level).
constexpr int64_t kFusedRowsBytes = 2 << 20;
constexpr int64_t kFusedGRURowsBytes = 1 << 20;

// Whether the GEMM loop's bfloat16 weight gradients run on bf16 products (amx.h): AMX
// tiles or vdpbf16ps. Elsewhere they are widened to float.
inline bool bf16_weight_grad_products() {
#if FUSEDRNN_HAVE_AMX
  return amx_usable() || bf16_dot_available();
#else
  return false;
#endif
}

// Below this many row-units (N*H) a bfloat16 backward whose weight gradients have bf16
// products still runs the float fused backward. Paired on a 2-core Zen 4 (vdpbf16ps), LSTM
// backward ms, fused float vs GEMM loop: T=200, H=256: N=1 4.2 vs 11.8, N=2 5.8 vs 10.2, N=4
// 10.7 vs 13.1, N=8 34.8 vs 19.0 (GRU N=8 14.8 vs 17.3); T=256, H=768: N=1 42 vs 52, N=4
// 111 vs 86, N=16 399 vs 243 (GRU N=2 44 vs 48, N=4 80 vs 66, N=16 314 vs 193).
constexpr int64_t kFusedBackward16BitUnits = 2048;

// Whether a 16-bit backward of batch N runs the float32 fused backward on float copies of
// its operands (gradients rounded back at the end) rather than the GEMM loop (16-bit
// GEMMs a step, gate gradients rounded to 16 bits): float16 always (CPU float16 GEMMs are
// slow: T=100, N=64, H=512 LSTM backward 295 ms fused vs 788), bfloat16 below
// kFusedBackward16BitUnits where its weight gradients have bf16 products, else always
// (widened to float, they ran at the float rate anyway). The caller checks that the
// rows fit (fused_rows_fit).
// Not, with bf16 products, for a few rows (R, at most kGemmLoop16BitRows) of large
// weights (G x (I + H) of kGemmLoop16BitValues or more): there the float copies of the
// weights and of their gradients cost more than the GEMM loop's whole backward. Paired on
// the 2-core Zen 4, backward ms, fused float vs GEMM loop, N=1, I=H=1024: T=1 GRU 20.0
// vs 6.0, LSTM 12.6 vs 5.8; T=2 17.0 vs 6.6, 16.0 vs 8.4; T=4 13.9 vs 3.7, 11.6 vs 6.4;
// T=16 19.7 vs 7.2, 23.0 vs 12.4. Smaller weights: I=H=256, T=1 LSTM 1.21 vs 0.61, GRU
// 0.66 vs 0.77, T=8 LSTM 1.71 vs 0.95, GRU level, T=32 the fused loop ahead (GRU 1.53 vs
// 1.67, LSTM 1.66 vs 2.10); T=1, N=4, I=H=512 GRU level, LSTM 1.98 vs 2.74.
constexpr int64_t kGemmLoop16BitRows = 16;
constexpr int64_t kGemmLoop16BitValues = 4 << 20;

inline bool fused_backward_16bit(ScalarType dt, int64_t N, int64_t H, int64_t R = 0,
                                 int64_t G = 0, int64_t I = 0) {
  if (dt == ScalarType::Half) return true;
  if (dt != ScalarType::BFloat16) return false;
  if (!bf16_weight_grad_products()) return true;
  if (R <= kGemmLoop16BitRows && G * (I + H) >= kGemmLoop16BitValues) return false;
  return N * H < kFusedBackward16BitUnits;
}

// Whether the fused backward reads a weight in place (ColumnPanels in_place: strided
// rows, masked loads) rather than packing it into column panels first, by how many
// times its loop reads it: W_hh once a step, W_ih once a chunk of kChunkK rows. The copy
// reads and writes all of the weight once more; it repays itself from kInPlaceReads + 1
// reads on. Same sums in the same order either way: the same bits.
// FUSEDRNN_CPU_PANELS=packed / =inplace picks one (tests, A/B).
constexpr int64_t kInPlaceReads = 1;

inline bool panels_in_place(int64_t reads) {
  const char* env = std::getenv("FUSEDRNN_CPU_PANELS");
  if (env && env[0] == 'p') return false;
  if (env && env[0] == 'i') return true;
  return reads <= kInPlaceReads;
}

// Whether the fused backward writes its weight gradients with non-temporal stores (past
// the caches): where the loop has one chunk of rows, so each gradient element is stored
// once and not read back, and the gradients (`values` floats) outgrow a core's L2.
// Plain stores first read each line in (read for ownership) and evict the weights the
// loop still reads. Paired, backward (then SGD's step) ms, plain -> non-temporal, 2-core
// Zen 4, T=1, N=1: I=H=1024 GRU 3.31 (1.52) -> 2.03 (1.46), LSTM 4.43 (2.07) -> 2.65
// (2.03); I=H=512 GRU 0.90 (0.29) -> 0.57 (0.35), LSTM 0.87 (0.29) -> 0.52 (0.35); I=H=256
// GRU 0.37 -> 0.23, LSTM 0.58 -> 0.36; T=1, N=4, H=512 LSTM 1.87 -> 1.31; T=8, N=8, H=512
// LSTM and T=4, N=16, H=1024 level. FUSEDRNN_CPU_STREAM=0 / =1 forces plain / streamed
// (where there is one chunk) stores (tests, A/B).
constexpr int64_t kStreamBytes = 1 << 20;

inline bool stream_weight_grads(int64_t chunks, int64_t values) {
  if (chunks != 1) return false;
  const char* env = std::getenv("FUSEDRNN_CPU_STREAM");
  if (env && env[0]) return env[0] != '0';
  return values * int64_t(sizeof(float)) >= kStreamBytes;
}

inline bool fused_rows_fit(int64_t N, int64_t I, int64_t H, int64_t limit = kFusedRowsBytes) {
  return N * (I + H) * int64_t(sizeof(float)) <= limit;
}

// Whether a float32 forward of R rows in all (T steps of N, or a packed sequence's rows)
// repays the fused loop's copy of W_hh (G x H floats) into panels: a pass that reads and
// writes all of W_hh once more than the GEMM loop, which reads it in place. The fused
// loop runs from one row per kPanelPassBytes of W_hh on. Paired on the 2-core Zen 4,
// inference, GEMM loop / fused time (below 1: the GEMM loop faster): I=H=1024 LSTM (W_hh
// 16 MB) N=1 T=1 0.55, T=4 0.88, T=8 0.93, T=16 1.04; N=4 T=1 0.87, T=2 1.06; N=16 T=1
// 0.91, T=2 1.04; GRU (12 MB) N=1 T=1 0.67, T=8 0.97, T=16 1.08; I=H=768 LSTM (9 MB) N=1
// T=1 0.51, T=4 0.94, T=8 1.00; I=H=512 LSTM (4 MB) N=1 T=1 0.74, T=2 0.93, T=4 1.07; GRU (3 MB)
// N=1 T=1 0.86, T=2 1.10; I=H=256 the fused loop ahead from T=1 (1.16-1.37). The
// backward keeps the fused loop at any T (training, fused ahead 1.3x-3.8x at T=1..16,
// N=1..16, H=512 and 1024).
constexpr int64_t kPanelPassBytes = 2 << 20;

inline bool fused_forward_pays(int64_t R, int64_t G, int64_t H) {
  return R * kPanelPassBytes >= G * H * int64_t(sizeof(float));
}

// The same for bfloat16 on bf16 products (without AMX) by steps T, not rows: oneDNN's
// bfloat16 GEMMs keep up with the fused loop's products at more rows than float32's do, so
// the GEMM loop's per-step cost grows little with the batch. Paired on the 2-core Zen 4,
// inference, GEMM loop / fused time: I=H=1024 LSTM (W_hh 8 MB in bf16) N=1 T=1 0.40, T=4
// 0.69, T=16 1.38; N=8 T=1 0.46, T=4 0.83, T=16 1.24; GRU (6 MB) N=1 T=1 0.47, T=4 0.71, T=16
// 1.45; N=8 T=1 0.52, T=4 0.84, T=16 1.22; I=H=512 LSTM N=1 T=1 0.53, T=4 0.89, T=16 1.88;
// N=8 T=1 0.59, T=4 0.96; GRU N=1 T=1 0.57, T=4 0.98; N=8 T=1 0.64, T=4 1.01.
inline bool fused_forward_pays_bf16(int64_t T, int64_t G, int64_t H) {
  return fused_forward_pays(T, G, H);
}

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
