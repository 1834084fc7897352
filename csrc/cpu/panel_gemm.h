// The float32 panel kernel of CPUs with AVX2 and FMA but without AVX-512: a tile of 6 rows
// by 16 columns in 12 ymm accumulators over a panel [K][16] of the right operand, each
// output one sum over k in order. The step products of avx2_panels.h's loops run on it,
// and so do, here (panel_gemm), the GEMMs around those loops: the forward's input
// projection x W_ih^T (InputProjection, common.h), the backward's dx = dG W_ih
// (times_weight) and weight gradients dG^T x, dG^T h (mm_tn).
//
// Why the GEMMs too: at the shapes of small batches the library GEMMs ran below the
// panels' rate. 2-core Zen 3, ms (torch's linear or mm / panel_gemm replica, row blocks of
// 48): [200, 256] x [256, 1024] 0.83 / 0.61-0.66, [200, 1024] x [1024, 256] 0.72 /
// 0.54-0.64, [1024, 200] x [200, 256] 0.83 / 0.53-0.69; at T=200, N=1, H=256 LSTM the
// projection was ~40% of the forward (1.2 of 3.1 ms). Larger: [1024, 768] x [768, 3072]
// 32.4 / 27.2-29.8, [1024, 2048] x [2048, 512] 12.3 / 11.3. Paired in the ops, torch.nn /
// fusedrnn, FUSEDRNN_CPU_PANEL_GEMM=0 -> 1: T=200, N=1, I=H=256 LSTM inference 1.47x ->
// 1.55x, training 1.30x -> 1.52x, GRU 4.28x -> 4.41x, 8.30x -> 9.80x; T=256, N=16,
// I=H=768 LSTM inference 1.19x -> 1.31x, GRU 1.68x -> 1.87x, GRU training 1.97x -> 2.14x;
// T=100, N=64, I=H=512 training (dx only: x is folded there) LSTM 1.09x -> 1.17x, GRU
// 1.39x -> 1.47x. The weight gradients' 1024-row chunks stay on MKL where it takes them
// (mkl_gemm_wanted): on panels they ran level or slower (T=256, N=16, I=H=768 LSTM
// training 829 -> 927 ms).
//
// Bits: a product's sums are the same whichever thread makes a panel (split by panels,
// never by k), so they do not depend on the thread count.
//
// Included at the end of common.h (InputProjection calls into it; times_weight lives here), and
// includes common.h itself; #pragma once settles the order either way.
#pragma once

#include "common.h"
#include "row_tiles.h"
#include "rowdot_loop.h"

#include <cstdlib>
#include <cstring>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

#define FUSEDRNN_AVX2 __attribute__((target("avx2,fma")))

// Units per panel: two 8-float vectors.
constexpr int64_t kAvx2Units = 16;
static_assert(kAvx2Units == kPanelColumns, "panel_backward packs W_hh by pack_column_panels");
// w [NG*H, K] (torch's layout) as panels [NG][groups][K][kAvx2Units]: panel (v, q) holds
// the rows v*H + q*16 + u, u < 16, by k; zero past H.
template <int NG>
void pack_panels(const float* w, int64_t H, int64_t K, float* out) {
  const int64_t groups = (H + kAvx2Units - 1) / kAvx2Units;
  parallel_rows(NG * groups, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t v = p / groups, q = p % groups;
      float* dst = out + p * K * kAvx2Units;
      for (int64_t u = 0; u < kAvx2Units; ++u) {
        const int64_t j = q * kAvx2Units + u;
        const float* src = w + (v * H + j) * K;
        if (j < H) {
          for (int64_t k = 0; k < K; ++k) dst[k * kAvx2Units + u] = src[k];
        } else {
          for (int64_t k = 0; k < K; ++k) dst[k * kAvx2Units + u] = 0.f;
        }
      }
    }
  });
}

// acc[r][0:16] += sum_{k < K} a[r][k] * panel[k][0:16], r < MR; kPacked: a[r][k] at
// a[0][k * MR + r] (the tile's rows packed by k).
template <int MR, bool kPacked = false>
FUSEDRNN_AVX2 inline __attribute__((always_inline)) void panel_madd(
    __m256 (&acc)[MR][2], const float* const* a, const float* panel, int64_t K) {
  // Four k a pass: without it, gcc's loop of one k (2 loads, 6 broadcasts, 12 FMAs and the
  // loop's own adds and branch) ran one Zen 3 core at 78-80 GFLOP/s of its 99 with all in
  // L1 (K=256, 6 rows), 90 with it. Same sums in the same order. Paired, torch.nn /
  // fusedrnn, without -> with: T=100, N=64, I=H=512 LSTM inference 1.08x -> 1.11x, training
  // 1.12x -> 1.16x, GRU inference 1.32x -> 1.46x, training 1.31x -> 1.41x; T=50, N=256,
  // I=H=1024 LSTM inference 0.93x -> 1.10x; T=256, N=16, I=H=768 LSTM inference 1.07x ->
  // 1.17x, GRU training level (1.94x, 1.90x).
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kAvx2Units);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kAvx2Units + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(kPacked ? a[0] + k * MR + r : a[r] + k);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
}

// c[r][0:16] = sum_{k < K} a[r][k] * panel[k][0:16], r < MR; where x is not null, plus
// sum_{k < I} x[r][k] * x_panel[k][0:16] (the folded input product, in the same chains,
// after h's terms).
template <int MR, bool kPacked = false>
FUSEDRNN_AVX2 void panel_tile(const float* const* a, const float* panel, int64_t K,
                              float* const* c, const float* const* x, const float* x_panel,
                              int64_t I) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  panel_madd<MR, kPacked>(acc, a, panel, K);
  if (x != nullptr) panel_madd<MR, kPacked>(acc, x, x_panel, I);
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(c[r], acc[r][0]);
    _mm256_storeu_ps(c[r] + 8, acc[r][1]);
  }
}

// panel_tile for the rows left (1..kAvx2Rows).
template <int MR = kAvx2Rows, bool kPacked = false>
inline void panel_rows(int rows, const float* const* a, const float* panel, int64_t K,
                       float* const* c, const float* const* x = nullptr,
                       const float* x_panel = nullptr, int64_t I = 0) {
  if constexpr (MR > 1) {
    if (rows < MR) return panel_rows<MR - 1, kPacked>(rows, a, panel, K, c, x, x_panel, I);
  }
  panel_tile<MR, kPacked>(a, panel, K, c, x, x_panel, I);
}

// out[k * rows + r] = a[r][k] for k < K, r < rows: a tile's rows packed by k, read by the
// kPacked kernels as one stream.
inline void pack_tile_rows(int rows, const float* const* a, int64_t K, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* src = a[r];
    for (int64_t k = 0; k < K; ++k) out[k * rows + r] = src[k];
  }
}

// The depth (floats a row: H + I, x folded) from which the panel forward packs a step's
// tile rows (pack_tile_rows) before its products: there a tile's 6 rows (48 KB at 2048)
// outgrow L1 alongside the panel, and their 6 streams ran slower than one packed stream,
// by more than the packing costs (each worker packs all the step's rows for itself, a
// copy as large as them in its L2). Paired inference, torch.nn / fusedrnn, in place ->
// packed, K = I + H = 2048 (x folded): T=50, N=256, I=H=1024 LSTM 1.145x -> 1.220x,
// 1.030x -> 1.101x, 1.043x -> 1.165x, but 1.112x -> 1.101x once; GRU 1.200x -> 1.310x;
// N=128 LSTM 1.055x -> 1.111x, GRU 1.302x -> 1.353x; N=64 LSTM 0.981x -> 1.135x, 1.092x
// -> 1.106x, 1.038x -> 1.086x, GRU 1.281x -> 1.291x. Not in the backward: there, K = G =
// 2048, T=100, N=64, I=H=512 LSTM training went 1.182x -> 1.161x and 1.180x -> 1.149x.
// Below 2048: N=32, I=1024, H=512 LSTM 1.084x -> 1.102x; K = 1024, T=100, N=64, I=H=512
// LSTM 1.102x -> 1.137x, GRU 1.554x -> 1.456x and 1.550x -> 1.323x; N=256, I=H=512 GRU
// 1.254x -> 1.243x. FUSEDRNN_CPU_PANEL_PACK=0 / 1: off / on at any depth (tests, A/B;
// read at every call).
constexpr int64_t kPanelPackDepth = 2048;

inline bool panel_pack(int64_t K) {
  const char* env = std::getenv("FUSEDRNN_CPU_PANEL_PACK");
  if (env && env[0]) return env[0] != '0';
  return K >= kPanelPackDepth;
}

// Rows of a row block in panel_gemm: a block's rows of the left operand, about
// kPanelGemmBlockBytes, stay in L2 while the worker's panels pass over them; 12 to 48 rows.
// Replica, 2-core Zen 3, ms at 12 / 24 / 48 rows: [6400, 2048] x [2048, 512] 74.7-84.4 /
// 81.7-85.0 / 84.8-85.0; [4096, 3072] x [3072, 768] 120 / 135 / 130 (18 rows: 124);
// [2048, 1024] x [1024, 512] 13.4 / 13.6 / 13.8; at K=256 level.
constexpr int64_t kPanelGemmBlockBytes = 96 << 10;

inline int64_t panel_gemm_block_rows(int64_t K) {
  const int64_t rows = kPanelGemmBlockBytes / (std::max<int64_t>(K, 1) * int64_t(sizeof(float)));
  return std::clamp<int64_t>(rows / kAvx2Rows * kAvx2Rows, 12, 48);
}

// f(m, rows, q, cols) for every tile of an [M, P] product: `rows` rows from m, panel q's
// `cols` columns (16 but in the last panel). Threads split the panels; each runs its
// panels over row blocks of panel_gemm_block_rows(K) rows.
template <typename F>
void for_panel_tiles(int64_t M, int64_t K, int64_t P, const F& f) {
  const int64_t np = (P + kAvx2Units - 1) / kAvx2Units, mb = panel_gemm_block_rows(K);
  parallel_rows(np, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t m0 = 0; m0 < M; m0 += mb) {
      const int64_t m1 = std::min(M, m0 + mb);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t cols = std::min(kAvx2Units, P - q * kAvx2Units);
        for_row_tiles(m1 - m0, [&](int64_t i0, int rows) { f(m0 + i0, rows, q, cols); });
      }
    }
  });
}

// One tile of a product into c: tile(rows, a_rows, c_rows) for the rows [m, m + rows) of
// a (lda apart) and panel q's `cols` columns (Units but in the last panel, whose tile goes
// through a buffer, its first cols columns then copied into c, ldc apart). For the
// float32 and float64 (panel_f64.h) kernels.
template <typename T, int64_t Units, typename Tile>
inline void edge_tile(const T* a, int64_t lda, int64_t m, int rows, int64_t q, int64_t cols,
                      T* c, int64_t ldc, const Tile& tile) {
  alignas(32) T part[kAvx2Rows][Units];  // the last panel's tile, past P
  const T* ar[kAvx2Rows];
  T* cr[kAvx2Rows];
  for (int r = 0; r < rows; ++r) {
    ar[r] = a + (m + r) * lda;
    cr[r] = cols == Units ? c + (m + r) * ldc + q * Units : part[r];
  }
  tile(rows, ar, cr);
  if (cols < Units) {
    for (int r = 0; r < rows; ++r)
      std::memcpy(c + (m + r) * ldc + q * Units, part[r], cols * sizeof(T));
  }
}

// c[m, 0:P] = sum_{k < K} a[m, k] * b[k, 0:P] for m < M, with b as panels
// [ceil(P / 16)][K][16] (pack_panels<1> of b^T, pack_column_panels of b; zero past P).
// Rows of a lie lda floats apart, rows of c ldc apart.
inline void panel_gemm(const float* a, int64_t lda, int64_t M, int64_t K, const float* panels,
                       int64_t P, float* c, int64_t ldc) {
  for_panel_tiles(M, K, P, [&](int64_t m, int rows, int64_t q, int64_t cols) {
    edge_tile<float, kAvx2Units>(a, lda, m, rows, q, cols, c, ldc,
                                 [&](int n, const float* const* ar, float* const* cr) {
                                   panel_rows(n, ar, panels + q * K * kAvx2Units, K, cr);
                                 });
  });
}

// out[m, 0:P] = sum_k at[m, k] * b[k, 0:P] for m < M: at [M, K] (a weight gradient's dG,
// transposed) rows lda floats apart, b as column panels [ceil(P / 16)][K][16]; k in chunks
// of `chunk`, each chunk summed in float (one chain an output, in order), the chunks' sums
// added in double in order (mm_tn's rule, weight_grad.h), in the tile's own doubles: no
// [M, P] float product a chunk, no pass adding it into a double [M, P]. (Against chunk by
// chunk panel_gemm products added as oneDNN's were, T=200, N=1, I=H=256 training, paired
// with the panel GEMMs off: LSTM -14.0% -> -15.3%, GRU -15.3% -> -17.7%.)
inline void panel_gemm_tn(const float* at, int64_t lda, int64_t M, int64_t K, int64_t chunk,
                          const float* panels, int64_t P, float* out, int64_t ldo) {
  for_panel_tiles(M, K, P, [&](int64_t m, int rows, int64_t q, int64_t cols) {
    alignas(32) float part[kAvx2Rows][kAvx2Units];
    double sum[kAvx2Rows][kAvx2Units];
    const float* ar[kAvx2Rows];
    float* cr[kAvx2Rows];
    for (int r = 0; r < rows; ++r) cr[r] = part[r];
    for (int64_t k0 = 0; k0 < K; k0 += chunk) {
      const int64_t kc = std::min(chunk, K - k0);
      for (int r = 0; r < rows; ++r) ar[r] = at + (m + r) * lda + k0;
      panel_rows(rows, ar, panels + (q * K + k0) * kAvx2Units, kc, cr);
      for (int r = 0; r < rows; ++r)
        for (int64_t u = 0; u < kAvx2Units; ++u)
          sum[r][u] = k0 == 0 ? double(part[r][u]) : sum[r][u] + double(part[r][u]);
    }
    for (int r = 0; r < rows; ++r) {
      float* o = out + (m + r) * ldo + q * kAvx2Units;
      for (int64_t u = 0; u < cols; ++u) o[u] = static_cast<float>(sum[r][u]);
    }
  });
}

// Whether float32 GEMMs (of `rows` rows) take panel_gemm: on CPUs with AVX2 and FMA but no
// AVX-512 (few_rows_isa), past the few-row loops' rows. FUSEDRNN_CPU_PANEL_GEMM=0 / 1
// turns it off / on wherever the CPU has AVX2 and FMA (tests, A/B; read at every call).
inline bool panel_gemm_isa() {
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!cpu) return false;
  const char* env = std::getenv("FUSEDRNN_CPU_PANEL_GEMM");
  if (env && env[0]) return env[0] != '0';
  return few_rows_isa() == FewRowsIsa::kAvx2;
}
inline bool panel_gemm_wanted(int64_t rows) { return rows > few_rows_most() && panel_gemm_isa(); }

// Floats of the panels of a [P, K] or [K, P] operand: ceil(P / 16) * 16 * K.
inline int64_t panel_floats(int64_t P, int64_t K) {
  return (P + kAvx2Units - 1) / kAvx2Units * kAvx2Units * K;
}

// a @ w^T (a [M, K] with unit column stride, w [P, K] contiguous, float32) into out [M, P]
// (contiguous), w packed into `packed` (pack_panels<1>, panel_floats(P, K)) unless
// `packed_ready`.
inline void panel_linear(const Tensor& a, const Tensor& w, float* packed, bool packed_ready,
                         Tensor& out) {
  const int64_t M = a.size(0), K = a.size(1), P = w.size(0);
  if (!packed_ready) pack_panels<1>(w.const_data_ptr<float>(), P, K, packed);
  panel_gemm(a.const_data_ptr<float>(), a.stride(0), M, K, packed, P,
             out.mutable_data_ptr<float>(), P);
}

// a @ v (a [M, K] with unit column stride, v [K, P] contiguous, float32) as a new [M, P]
// tensor: v packed by columns.
inline Tensor panel_times(const Tensor& a, const Tensor& v) {
  const int64_t M = a.size(0), K = a.size(1), P = v.size(1);
  const Scratch<float> packed(panel_floats(P, K));
  pack_column_panels(v.const_data_ptr<float>(), K, P, packed.data());
  Tensor out = empty_as(a, {M, P});
  panel_gemm(a.const_data_ptr<float>(), a.stride(0), M, K, packed.data(), P,
             out.mutable_data_ptr<float>(), P);
  return out;
}

#else

inline bool panel_gemm_isa() { return false; }
inline bool panel_gemm_wanted(int64_t) { return false; }
inline void panel_linear(const Tensor&, const Tensor&, float*, bool, Tensor&) {}
inline Tensor panel_times(const Tensor& a, const Tensor&) { return a; }
inline int64_t panel_floats(int64_t, int64_t) { return 0; }
inline void panel_gemm(const float*, int64_t, int64_t, int64_t, const float*, int64_t, float*,
                       int64_t) {}
inline void pack_column_panels(const float*, int64_t, int64_t, float*) {}
inline void panel_gemm_tn(const float*, int64_t, int64_t, int64_t, int64_t, const float*,
                          int64_t, float*, int64_t) {}

#endif  // FUSEDRNN_HAVE_FUSED

// a @ v for v [K, C] contiguous (the backward's dx = dG W_ih): float32 on panel_gemm where
// panel_gemm_wanted, else on MKL where mkl_gemm_wanted (reading v as it is), else
// times_right(a, right_weight(v, rows of a)).
inline Tensor times_weight(const Tensor& a, const Tensor& v) {
  if (a.scalar_type() == ScalarType::Float && a.numel() > 0) {
    if (panel_gemm_wanted(a.size(0))) return panel_times(torch::stable::contiguous(a), v);
    if (mkl_gemm_wanted(a.size(0), a.size(0) * v.size(1))) return mm(a, v);
  }
  return times_right(a, right_weight(v, a.size(0)));
}

}  // namespace fusedrnn
