// The float64 panel kernel of CPUs with AVX2 and FMA but without AVX-512: panel_gemm.h's
// float32 kernel in doubles. A tile of 6 rows by 8 columns in 12 ymm accumulators over a
// panel [K][8] of the weight, each output one sum over k in order. The GEMM loop's float64
// step products run on it there (StepWeight): the forward's h W_hh^T and the backward's
// dG W_hh, the weight packed once a call.
//
// Why: they were aten::mm's (MKL's dgemm), a call a step, and float64 ran level with
// torch.nn's own GEMM loop: one grid round on the 2-core Zen 3 read T=100, N=32, I=H=512,
// 2 layers, bidirectional, inference 1.02x (LSTM) and 1.06x (GRU). Paired, fusedrnn ms,
// aten::mm -> panels (2-core Zen 3, float64 inference): that shape's LSTM 1144 -> 984;
// T=100, N=64, I=H=512 LSTM 471 -> 430; T=256, N=16, I=H=768 LSTM 724 -> 549; T=50, N=256,
// I=H=1024 LSTM 3220 -> 2926. Each worker runs all the step's rows over one panel, then the
// next: in row blocks of ~96 KB (panel_gemm's order; the projection on panels too) N=256
// ran 4539 ms (the weights, 34 MB, streamed once a block), N=16 705. Not the input
// projection (blocks of 1024 rows): on the panels too, N=16, H=768 ran 650 ms against 549
// (rows in blocks of 96 KB), 681-710 against 669 (blocks of 256 KB to whole).
//
// Bits: split by panels, never by k: the same bits for any thread count.
#pragma once

#include "common.h"
#include "row_tiles.h"

#include <cstdlib>
#include <cstring>
#include <memory>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// Columns per float64 panel: two 4-double vectors.
constexpr int64_t kF64Units = 8;

inline int64_t panel_f64_size(int64_t P, int64_t K) {
  return (P + kF64Units - 1) / kF64Units * kF64Units * K;
}

// w [P, K] (torch's weight layout) as panels [ceil(P / 8)][K][8]: panel q holds the rows
// q*8 + u, u < 8, by k; zero past P. On every core.
inline void pack_panels_f64(const double* w, int64_t P, int64_t K, double* out) {
  parallel_rows((P + kF64Units - 1) / kF64Units, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      double* dst = out + q * K * kF64Units;
      for (int64_t u = 0; u < kF64Units; ++u) {
        const int64_t j = q * kF64Units + u;
        for (int64_t k = 0; k < K; ++k) dst[k * kF64Units + u] = j < P ? w[j * K + k] : 0.0;
      }
    }
  });
}

// c[r][0:8] = sum_{k < K} a[r][k] * panel[k][0:8], r < MR; four k a pass (as panel_madd).
template <int MR>
__attribute__((target("avx2,fma"))) void panel_tile_f64(const double* const* a,
                                                        const double* panel, int64_t K,
                                                        double* const* c) {
  __m256d acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_pd();
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const __m256d b0 = _mm256_loadu_pd(panel + k * kF64Units);
    const __m256d b1 = _mm256_loadu_pd(panel + k * kF64Units + 4);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256d av = _mm256_broadcast_sd(a[r] + k);
      acc[r][0] = _mm256_fmadd_pd(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_pd(av, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_pd(c[r], acc[r][0]);
    _mm256_storeu_pd(c[r] + 4, acc[r][1]);
  }
}

// panel_tile_f64 for the rows left (1..kAvx2Rows).
template <int MR = kAvx2Rows>
inline void panel_rows_f64(int rows, const double* const* a, const double* panel, int64_t K,
                           double* const* c) {
  if constexpr (MR > 1) {
    if (rows < MR) return panel_rows_f64<MR - 1>(rows, a, panel, K, c);
  }
  panel_tile_f64<MR>(a, panel, K, c);
}

// c[m, 0:P] = sum_{k < K} a[m, k] * w[0:P, k] for m < M, w as panels (pack_panels_f64).
// Rows of a lie lda doubles apart, rows of c ldc apart. Threads split the panels; each runs
// all M rows over a panel, then the next.
inline void panel_gemm_f64(const double* a, int64_t lda, int64_t M, int64_t K,
                           const double* panels, int64_t P, double* c, int64_t ldc) {
  parallel_rows((P + kF64Units - 1) / kF64Units, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t cols = std::min(kF64Units, P - q * kF64Units);
      for_row_tiles(M, [&](int64_t m, int rows) {
        edge_tile<double, kF64Units>(a, lda, m, rows, q, cols, c, ldc,
                                     [&](int n, const double* const* ar, double* const* cr) {
                                       panel_rows_f64(n, ar, panels + q * K * kF64Units, K, cr);
                                     });
      });
    }
  });
}

// Whether a float64 product of `rows` rows takes panel_gemm_f64: where float32's take
// panel_gemm (AVX2 and FMA, no AVX-512; past the few-row loops' rows).
// FUSEDRNN_CPU_PANEL_F64=0 / 1 turns it off / on wherever the CPU has AVX2 and FMA (tests,
// A/B; read at every call).
inline bool panel_f64_wanted(int64_t rows) {
  static const bool cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!cpu || rows <= few_rows_most()) return false;
  const char* env = std::getenv("FUSEDRNN_CPU_PANEL_F64");
  if (env && env[0]) return env[0] != '0';
  return panel_gemm_isa();
}

// w (float64 [P, K]) packed as panels, at the first call that wants them.
class PanelsF64 {
 public:
  const double* get(const Tensor& w) {
    if (!panels_) {
      const Tensor wc = torch::stable::contiguous(w);
      panels_ = std::make_unique<Scratch<double>>(panel_f64_size(w.size(0), w.size(1)));
      pack_panels_f64(wc.const_data_ptr<double>(), w.size(0), w.size(1), panels_->data());
    }
    return panels_->data();
  }

 private:
  std::unique_ptr<Scratch<double>> panels_;
};

// a @ w^T (a [M, K] with unit column stride, float64) into out [M, P] (contiguous).
inline void panel_linear_f64(const Tensor& a, const Tensor& w, PanelsF64& panels, Tensor& out) {
  panel_gemm_f64(a.const_data_ptr<double>(), a.stride(0), a.size(0), a.size(1), panels.get(w),
                 w.size(0), out.mutable_data_ptr<double>(), w.size(0));
}

#else

inline bool panel_f64_wanted(int64_t) { return false; }
class PanelsF64 {};
inline void panel_linear_f64(const Tensor&, const Tensor&, PanelsF64&, Tensor&) {}

#endif  // FUSEDRNN_HAVE_FUSED

// a @ w^T for a step loop's rows, w fixed for the loop: float64 on the panels where
// panel_f64_wanted (w packed at the first such step), else linear(a, w), or with `right`
// times_right(a, w) (w = right_weight(v, rows): a @ v).
class StepWeight {
 public:
  explicit StepWeight(const Tensor& w, bool right = false) : w_(w), right_(right) {}
  Tensor operator()(const Tensor& a) {
    if (a.scalar_type() != ScalarType::Double || a.numel() == 0 || !panel_f64_wanted(a.size(0)))
      return right_ ? times_right(a, w_) : linear(a, w_);
    Tensor out = empty_as(a, {a.size(0), w_.size(0)});
    panel_linear_f64(a, w_, panels_, out);
    return out;
  }

 private:
  Tensor w_;
  bool right_;
  PanelsF64 panels_;
};

}  // namespace fusedrnn
