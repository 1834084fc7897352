// Products of a few rows (at most kFewRows) with a weight, read in place: the T=1 step of
// decoders and RL policies, and the GEMM loop's per-step products at batch 1-4. There a
// product is a matrix-vector one: each weight element is used R times, so the weight's
// read bounds it, and the library GEMMs (MKL for float64, oneDNN for bfloat16) first
// pack or reorder the weight (one more pass over it) and run on one core below some
// size. Here both cores read their share of the weight once:
//   dot_block:   out[r, g] = sum_k a[r, k] w[g, k]   (x W^T: the forward's)
//   axpy_block:  out[r, k] = sum_g a[r, g] w[g, k]   (dG W: the backward's dx, dh)
//   outer_block: out[g, k] = sum_r a[r, g] b[r, k]   (dG^T x: weight gradients)
// float64 in 8-double vectors; bfloat16 by pairs (the *_pairs kernels) in float: both in
// few_rows_kernels.h (AVX-512; the AVX2 kernels in few_rows_kernels_ymm.h); here the
// choice, the threads' split and the tensors.
// Storage float64 or bfloat16; sums in double for float64, float for bfloat16. Each sum
// runs in a fixed order whatever the thread count (split by outputs, never by k): bits
// are the same for any number of threads.
#pragma once

#include "../layer.h"

#include <torch/headeronly/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include "few_rows_kernels.h"
#include "few_rows_kernels_ymm.h"
#define FUSEDRNN_HAVE_FEW_ROWS 1
#else
#define FUSEDRNN_HAVE_FEW_ROWS 0
#endif

namespace fusedrnn {

// Rows up to which the products take these loops. At 4 rows a weight element feeds 4
// FMAs: still far below the FMA peak at memory's pace. Paired on the 2-core Zen 4 (ms,
// these loops vs MKL / oneDNN through the same op): GRU forward T=1, N=1, I=H=1024
// float64 1.89 vs 3.31 (the 48 MB of weights at 26.7 GB/s vs 15.2), bfloat16 0.18-0.21
// vs 0.47-0.57 (from L3, 59-69 GB/s; 0.29-0.33 with bf16 widened by vpmovzxwd instead of
// by pairs); layer inference, GRU float64 T=1, N=4, I=H=1024 3.34 vs 5.62, T=16, N=4,
// I=H=512 4.99 vs 5.38, N=2 3.56 vs 4.30; training T=1, N=4, I=H=1024 LSTM float64 32.5 vs
// 37.0, GRU bfloat16 3.68 vs 6.07 (these loops ran first after torch.nn's call in each
// alternation, the slot that reads slower). Not float32: against oneDNN's products, in an
// order-balanced alternation, inference ms, T=1, N=1, I=H=1024 GRU 0.786 vs 0.718, LSTM
// 1.58 vs 1.61; N=4, I=H=512 GRU 0.337 vs 0.335, LSTM 0.701 vs 0.706; T=4, N=1, I=H=1024
// GRU 1.80 vs 1.96; I=H=256 0.110 vs 0.110: no consistent gain.
constexpr int64_t kFewRows = 4;

// Rows up to which times_right's dG W (the backward's dx, and dh in the GEMM loop) takes
// few_rows_mm in passes of up to 4 rows, on CPUs with AVX2 and no AVX-512: past 4 rows
// MKL copied all of W (12 MB at I=H=1024 GRU: perf, mkl_blas_def_sgemm_scopy) for each
// product. Paired on a 2-core Zen 3, training, ms, up to 4 rows vs up to 12
// (FUSEDRNN_CPU_FEW_ROWS_PASSES), N=1, I=H=1024: LSTM T=5 15.5 vs 13.8, T=8 24.5 vs 18.7,
// T=12 29.9 vs 30.3; GRU T=5 11.8 vs 11.3, T=8 13.5 vs 13.6, T=12 19.9 vs 18.8; GRU T=2,
// N=4, I=H=512 4.82 vs 4.47; LSTM T=3, N=3, I=H=256 2.68 vs 2.73. Three passes (9-12
// rows) were no faster than MKL, but there MKL's sums (and oneDNN's, at 5-7 and 9-11 rows:
// both split each product differently on 1 and 2 threads, tests/test_few_rows_and_mkl.py) had
// other bits for another thread count: up to 12. The forward's input projection of up to
// 12 rows (InputProjection, common.h) takes the same loop, for the same reason.
constexpr int64_t kFewRowsInPasses = 12;

#if FUSEDRNN_HAVE_FEW_ROWS

namespace few_rows_detail {

static_assert(kFewRows <= kMaxRows, "few_rows_kernels.h takes at most kMaxRows rows");

template <typename F>
void with_rows(int64_t R, const F& f) {
  switch (R) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

// Splits [0, n) into at most one range a thread, each of at least `grain` (whole units of
// `align`), and runs f on them.
template <typename F>
void split(int64_t n, int64_t grain, int64_t align, const F& f) {
  const int64_t units = (n + align - 1) / align;
  const int64_t g = std::max<int64_t>(1, (grain + align - 1) / align);
  auto body = [&](int64_t u0, int64_t u1) { f(u0 * align, std::min(n, u1 * align)); };
  if (units <= g) {
    body(0, units);
  } else {
    torch::stable::parallel_for(0, units, g, body);
  }
}

// Weight elements a thread reads at least: below, the thread pool's wake-up costs more.
constexpr int64_t kGrainValues = 1 << 15;

}  // namespace few_rows_detail

// The few-row loops' ISA: AVX-512F/BW/VL (float64, bfloat16), else AVX2 and FMA (float32,
// float64), else none.
enum class FewRowsIsa { kNone, kAvx2, kAvx512 };

inline FewRowsIsa few_rows_isa() {
  static const FewRowsIsa isa = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
      return FewRowsIsa::kAvx512;
    if (!__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
      return FewRowsIsa::kAvx2;
    return FewRowsIsa::kNone;
  }();
  return isa;
}

// Whether the few-row loops run: float64 or bfloat16 storage on an x86-64 CPU with
// AVX-512F/BW/VL; float32 and float64 on one with AVX2 and FMA but no AVX-512 (float32 with
// AVX-512: see kFewRows). FUSEDRNN_CPU_FEW_ROWS=0 turns them off (tests, A/B).
inline bool few_rows_available(ScalarType dt) {
  const char* env = std::getenv("FUSEDRNN_CPU_FEW_ROWS");
  if (env && env[0] == '0') return false;
  switch (few_rows_isa()) {
    case FewRowsIsa::kAvx512: return dt == ScalarType::Double || dt == ScalarType::BFloat16;
    case FewRowsIsa::kAvx2: return dt == ScalarType::Float || dt == ScalarType::Double;
    default: return false;
  }
}

// Whether few_rows_mm takes x W^T (a transposed b, the dot loop) in `dt`: where
// few_rows_available, and bfloat16 on CPUs with AVX2 and no AVX-512 too (dot_block_ymm on
// widened loads): there the GEMM loop's forward products below kUpcastForwardRows rows
// (common.h) are bfloat16's, and aten::mm read them at ~16 GFLOP/s.
inline bool few_rows_dot_available(ScalarType dt) {
  if (few_rows_available(dt)) return true;
  const char* env = std::getenv("FUSEDRNN_CPU_FEW_ROWS");
  return !(env && env[0] == '0') && dt == ScalarType::BFloat16 &&
         few_rows_isa() == FewRowsIsa::kAvx2;
}

// out = a @ b for a [R, K] (rows contiguous), R <= kFewRows, out [R, M] contiguous: b = t(W)
// of W [M, K] with contiguous rows (x W^T), or b [K, M] with contiguous rows (dG W).
// False (nothing written) where these loops do not take the case.
inline bool few_rows_mm(const Tensor& a, const Tensor& b, Tensor& out,
                        int64_t max_rows = kFewRows) {
  namespace d = few_rows_detail;
  const ScalarType dt = a.scalar_type();
  const int64_t R = a.size(0), K = a.size(1), M = b.size(1);
  if (few_rows_isa() != FewRowsIsa::kAvx2) max_rows = kFewRows;
  if (R < 1 || R > max_rows || K == 0 || M == 0 || !few_rows_dot_available(dt)) return false;
  if (b.scalar_type() != dt || out.scalar_type() != dt || a.stride(1) != 1 ||
      !out.is_contiguous())
    return false;
  const bool transposed = b.stride(0) == 1, plain = b.stride(1) == 1;
  if (!transposed && !plain) return false;
  if (!transposed && !few_rows_available(dt)) return false;
  const int64_t lda = a.stride(0);
  auto run = [&](auto tag) {
    using S = decltype(tag);
    const S* a0 = static_cast<const S*>(a.const_data_ptr());
    const S* wp = static_cast<const S*>(b.const_data_ptr());
    S* o0 = static_cast<S*>(out.mutable_data_ptr());
    // the axpy's sums between passes: double for float64, else float
    using Acc = std::conditional_t<std::is_same_v<S, double>, double, float>;
    for (int64_t r0 = 0; r0 < R; r0 += kFewRows) {  // passes of up to 4 rows
    const S* ap = a0 + r0 * lda;
    S* op = o0 + r0 * M;
    d::with_rows(std::min<int64_t>(kFewRows, R - r0), [&](auto rc) {
      constexpr int kR = decltype(rc)::value;
      constexpr bool kPairs = std::is_same_v<S, c10::BFloat16>;
      // ymm kernels: float32 always, float64 and bfloat16 (x W^T only) without AVX-512
      const bool ymm = std::is_same_v<S, float> || few_rows_isa() == FewRowsIsa::kAvx2;
      if (transposed) {  // W [M, K] at ld b.stride(1): out[r, g] = a[r, :] . W[g, :]
        const int64_t ldw = b.stride(1);
        d::split(M, std::max<int64_t>(8, d::kGrainValues / std::max<int64_t>(K, 1)), 8,
                 [&](int64_t g0, int64_t g1) {
                   if constexpr (kPairs) {
                     if (ymm) {
                       d::dot_block_ymm<kR>(ap, lda, wp, ldw, K, g0, g1, op, M);
                     } else {
                       d::dot_block_pairs<kR>(ap, lda, wp, ldw, K, g0, g1, op, M);
                     }
                   } else if (ymm) {
                     d::dot_block_ymm<kR>(ap, lda, wp, ldw, K, g0, g1, op, M);
                   } else if constexpr (std::is_same_v<S, double>) {
                     d::dot_block<kR>(ap, lda, wp, ldw, K, g0, g1, op, M);
                   }
                 });
      } else {  // W = b [K, M] at ld b.stride(0): out[r, k'] = sum_g a[r, g] W[g, k']
        const int64_t ldw = b.stride(0);
        d::split(M, std::max<int64_t>(32, d::kGrainValues / std::max<int64_t>(K, 1)), 32,
                 [&](int64_t k0, int64_t k1) {
                   std::vector<Acc> buf(
                       kR * ((k1 - k0 + 31) / 32 * 32));
                   if constexpr (kPairs) {
                     d::axpy_block_pairs<kR>(ap, lda, wp, ldw, K, k0, k1, op, M, buf.data());
                   } else if (ymm) {
                     d::axpy_block_ymm<kR>(ap, lda, wp, ldw, K, k0, k1, op, M, buf.data());
                   } else if constexpr (std::is_same_v<S, double>) {
                     d::axpy_block<kR>(ap, lda, wp, ldw, K, k0, k1, op, M, buf.data());
                   }
                 });
      }
    });
    }
  };
  switch (dt) {
    case ScalarType::Double: run(double{}); break;
    case ScalarType::Float: run(float{}); break;
    default: run(c10::BFloat16{}); break;
  }
  return true;
}

// Rows up to which few_rows_tn takes the weight gradients a^T @ b on the ymm loop (CPUs
// with AVX2 and no AVX-512; kFewRows elsewhere). Past 4 rows they went to MKL, which
// packed dG and wrote the gradients into fresh pages (the backward op at T=5, N=1,
// I=H=1024 GRU: 11.2 ms against 3.1 at T=4). Paired on a 2-core Zen 3, training, ms, N=1,
// I=H=1024, up to 4 rows vs up to 16: GRU T=5 16.2 vs 11.2, T=8 17.3 vs 13.3, T=12 21.2
// vs 19.9, T=16 28.2 vs 29.3; LSTM T=5 16.2 vs 15.1, T=8 21.6 vs 18.2, T=12 28.5 vs 25.2,
// T=16 36.0 vs 42.1; GRU T=2, N=4, I=H=512 6.60 vs 4.32. So up to 12.
constexpr int64_t kFewRowsTnYmm = few_rows_detail::kMaxRowsTnYmm;

// Whether few_rows_tn takes a^T @ b: a [R, G], b [R, K] (rows contiguous), R <= kFewRows
// (kFewRowsTnYmm where the ymm loop runs).
inline bool few_rows_tn_takes(const Tensor& a, const Tensor& b) {
  const int64_t R = a.size(0);
  int64_t most = kFewRows;
  if (few_rows_isa() == FewRowsIsa::kAvx2) {
    const char* env = std::getenv("FUSEDRNN_CPU_FEW_ROWS_TN");  // A/B, tests: rows, 1..12
    most = env && env[0] ? std::clamp<int64_t>(std::atol(env), 1, kFewRowsTnYmm)
                         : kFewRowsTnYmm;
  }
  return R >= 1 && R <= most && a.size(1) > 0 && b.size(1) > 0 &&
         few_rows_available(a.scalar_type()) && b.scalar_type() == a.scalar_type() &&
         a.stride(1) == 1 && b.stride(1) == 1;
}

// out = a^T @ b (out [G, K] contiguous) where few_rows_tn_takes(a, b), with non-temporal
// stores from kFewRowsStreamBytes on (each element stored once, not read back: plain
// stores would read every line in and evict the weights).
constexpr int64_t kFewRowsStreamBytes = 1 << 20;

inline void few_rows_tn(const Tensor& a, const Tensor& b, Tensor& out) {
  namespace d = few_rows_detail;
  const ScalarType dt = a.scalar_type();
  const int64_t R = a.size(0), G = a.size(1), K = b.size(1);
  const int64_t es = out.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(out.const_data_ptr()) % 64 == 0 &&
                       (K * es) % 64 == 0;
  const bool stream = aligned && G * K * es >= kFewRowsStreamBytes;
  auto run = [&](auto tag) {
    using S = decltype(tag);
    const S* ap = static_cast<const S*>(a.const_data_ptr());
    const S* bp = static_cast<const S*>(b.const_data_ptr());
    S* op = static_cast<S*>(out.mutable_data_ptr());
    d::split(G, std::max<int64_t>(1, d::kGrainValues / K), 1, [&](int64_t g0, int64_t g1) {
      if constexpr (std::is_same_v<S, c10::BFloat16>) {
        d::outer_block_pairs(ap, a.stride(0), bp, b.stride(0), R, K, g0, g1, op, K, stream);
      } else if (std::is_same_v<S, float> || few_rows_isa() == FewRowsIsa::kAvx2) {
        d::outer_block_ymm(ap, a.stride(0), bp, b.stride(0), R, K, g0, g1, op, K, stream);
      } else if constexpr (std::is_same_v<S, double>) {
        d::outer_block(ap, a.stride(0), bp, b.stride(0), R, K, g0, g1, op, K, stream);
      }
    });
  };
  switch (dt) {
    case ScalarType::Double: run(double{}); break;
    case ScalarType::Float: run(float{}); break;
    default: run(c10::BFloat16{}); break;
  }
}

#else

inline bool few_rows_mm(const Tensor&, const Tensor&, Tensor&, int64_t = 0) { return false; }
inline bool few_rows_tn_takes(const Tensor&, const Tensor&) { return false; }
inline void few_rows_tn(const Tensor&, const Tensor&, Tensor&) {}

#endif  // FUSEDRNN_HAVE_FEW_ROWS

}  // namespace fusedrnn
