// The GEMM loop's weight gradients dW = a^T @ b (a [K, M], b [K, P]: dG and the layer
// input or h_{t-1}, K = T*N rows): bfloat16 on AMX tiles or vdpbf16ps (amx.h), else in
// chunks of kReduceChunk rows, each chunk one GEMM, the chunks summed in double.
#pragma once

#include "amx.h"

namespace fusedrnn {

// Rows per GEMM when a weight gradient sums over all T*N rows (see mm_tn). 1024 rows
// keep the GEMM near its peak while the error stays below a single full-K GEMM's
// (tests/test_accuracy.py).
constexpr int64_t kReduceChunk = 1024;
// Rows per GEMM when the whole sum is at most kReduceChunk rows, or the result at most
// kSmallResult values (see mm_tn).
constexpr int64_t kShortChunk = 128;
// Results up to this many values take kShortChunk rows per GEMM at any K: their chunks'
// double adds are cheap, and oneDNN's AVX2 GEMM sums K in one float chain. On a 2-core Zen 3
// (no AVX-512) the 1024-row chunks erred 2.6x torch.nn's in LSTM's dW_hh at T=100, N=64,
// H=7 (tests/test_accuracy.py: 6400 rows into a [28, 7] result); AVX-512's kernels passed.
constexpr int64_t kSmallResult = 1 << 16;

// acc[i] = p[i] (first) or acc[i] + p[i], in double; with out, also out[i] = float(acc[i]),
// for i in [i0, i1). Vectorized (clones); it ran in SSE2 before.
FUSEDRNN_CPU_CLONES static void accumulate_chunk(const float* p, double* acc, float* out,
                                                 bool first, int64_t i0, int64_t i1) {
  if (first) {
    for (int64_t i = i0; i < i1; ++i) acc[i] = p[i];
  } else {
    for (int64_t i = i0; i < i1; ++i) acc[i] += p[i];
  }
  if (out != nullptr)
    for (int64_t i = i0; i < i1; ++i) out[i] = static_cast<float>(acc[i]);
}

// dst[c * ld + r] = src[r * ls + c] for r < rows and c in [c0, c1); 32 destination rows at
// a time, each written in order. The portable path.
FUSEDRNN_CPU_CLONES static void transpose_scalar(const float* src, int64_t ls, int64_t rows,
                                                 int64_t c0, int64_t c1, float* dst,
                                                 int64_t ld) {
  for (int64_t b0 = c0; b0 < c1; b0 += 32) {
    const int64_t b1 = std::min(c1, b0 + 32);
    for (int64_t r0 = 0; r0 < rows; r0 += 32) {
      const int64_t r1 = std::min(rows, r0 + 32);
      for (int64_t c = b0; c < b1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * ld + r] = src[r * ls + c];
    }
  }
}

#if FUSEDRNN_HAVE_FUSED
// d[c * ld + r] = s[r * ls + c] for an 8 x 8 block, in ymm registers.
__attribute__((target("avx2"))) inline void transpose8(const float* s, int64_t ls, float* d,
                                                       int64_t ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ls);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(d + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(d + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// transpose_scalar's contract, whole B x B blocks by Block (in registers), the edges
// element by element. The blocks are calls into their ISA's code: the loops here are
// plain C++.
template <int B, void (*Block)(const float*, int64_t, float*, int64_t)>
void transpose_by_blocks(const float* src, int64_t ls, int64_t rows, int64_t c0, int64_t c1,
                         float* dst, int64_t ld) {
  const int64_t rows_b = rows / B * B;
  int64_t b0 = c0;
  for (; b0 + B <= c1; b0 += B) {
    for (int64_t r0 = 0; r0 < rows_b; r0 += B)
      Block(src + r0 * ls + b0, ls, dst + b0 * ld + r0, ld);
    for (int64_t c = b0; c < b0 + B; ++c)
      for (int64_t r = rows_b; r < rows; ++r) dst[c * ld + r] = src[r * ls + c];
  }
  if (b0 < c1) transpose_scalar(src, ls, rows, b0, c1, dst, ld);
}
#endif

// out [cols, rows] = rows [r0, r0 + rows) of the contiguous float matrix m [*, cols],
// transposed, on every core (threads split out's rows).
inline void transpose_rows(const Tensor& m, int64_t r0, int64_t rows, Tensor& out) {
  const int64_t cols = m.size(1);
  const float* src = m.const_data_ptr<float>() + r0 * cols;
  float* dst = out.mutable_data_ptr<float>();
#if FUSEDRNN_HAVE_FUSED
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  static const bool avx2 = __builtin_cpu_supports("avx2");
#endif
  parallel_rows((cols + 15) / 16, rows * 16 >= 4096 ? 1 : cols, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * 16, c1 = std::min(cols, b1 * 16);
#if FUSEDRNN_HAVE_FUSED
    // 16 x 16 blocks on AVX-512 (4 ms -> 1 ms a [1024, 3072] chunk on one core), 8 x 8 on
    // AVX2 (the scalar form took 6.7% of a T=100, N=64, H=512 LSTM training call's samples
    // on a 2-core Zen 3).
    if (avx512) return transpose_by_blocks<16, transpose16>(src, cols, rows, c0, c1, dst, rows);
    if (avx2) return transpose_by_blocks<8, transpose8>(src, cols, rows, c0, c1, dst, rows);
#endif
    transpose_scalar(src, cols, rows, c0, c1, dst, rows);
  });
}

// a^T @ b for a [K,M], b [K,P] in float: one GEMM accumulates all K terms in float; here
// the rows are cut into chunks of kReduceChunk whose products are summed in double, so
// the error grows with the chunk, not with T*N. The extra adds cost M*P per chunk against
// 2*M*P*kReduceChunk flops. float64 needs none of it. 16-bit operands are widened to float
// and take the float path: oneDNN's 16-bit GEMM (AMX on Sapphire Rapids) splits K across
// threads for some shapes, so its sums changed with the thread count.
//
// Each chunk's product is oneDNN's linear on the chunk's two operands, transposed into
// buffers that every chunk reuses. Given the transposed views, linear made its own
// contiguous copies through torch's slower transpose and allocated every chunk's result
// afresh; with the result summed in SSE2 on one core, a weight gradient took 824 ms at
// T=50, N=256, H=1024 (the GEMMs alone: ~390 ms). MKL's GEMM takes the views as they are,
// but splits K across its threads where M*P is small (1024 rows into a [768, 40] result:
// other bits with 2 threads than with 1), inside a parallel region too. On CPUs without
// AVX-512, 1024-row chunks into results of 256K values or more go to MKL on the views
// (mkl_gemm_wanted, common.h): faster there, and no transposes.
inline Tensor mm_tn(const Tensor& a, const Tensor& b) {
  const int64_t K = a.size(0), M = a.size(1), P = b.size(1);
  if (a.scalar_type() == ScalarType::Double) return mm(t(a), b);
  if (a.scalar_type() != ScalarType::Float) {
    Tensor af = empty_as(a, {K, M}, ScalarType::Float), bf = empty_as(b, {K, P}, ScalarType::Float);
    torch::stable::copy_(af, a);
    torch::stable::copy_(bf, b);
    Tensor out = empty_as(a, {M, P});
    torch::stable::copy_(out, mm_tn(af, bf));
    return out;
  }
  // Short sums: one oneDNN GEMM (MKL's sgemm took 12% of a batch-1 training step). Up to
  // 1024 rows, chunks of 128: MKL's one GEMM there split K across threads (1000 rows into
  // a [28, 7] result) and erred 2.6x torch.nn's in GRU's dW_hh at T=50, N=16, H=129
  // (tests/test_accuracy.py); in 256-row oneDNN chunks 2.2x; in 128-row chunks within 2x.
  const int64_t chunk = K <= kReduceChunk || M * P <= kSmallResult ? kShortChunk : kReduceChunk;
  // MKL (mkl_gemm_wanted) multiplies each chunk's transposed view as it is; panel_gemm
  // (panel_gemm_isa) a's transposed chunk by b's chunk packed by columns.
  const bool mkl = mkl_gemm_wanted(chunk, M * P);
  const bool panel = !mkl && panel_gemm_isa();
  if (K <= kShortChunk && !panel) return linear(t(a), t(b));
  const Tensor ac = torch::stable::contiguous(a), bc = torch::stable::contiguous(b);
  if (panel) {  // a transposed whole, b packed whole, the chunks' doubles in the tiles
    const ScratchTensor at(a, {M, K});
    Tensor at_t = at.tensor;
    transpose_rows(ac, 0, K, at_t);
    const Scratch<float> packed(panel_floats(P, K));
    pack_column_panels(bc.const_data_ptr<float>(), K, P, packed.data());
    Tensor out = empty_as(a, {M, P});
    panel_gemm_tn(at_t.const_data_ptr<float>(), K, M, K, chunk, packed.data(), P,
                  out.mutable_data_ptr<float>(), P);
    return out;
  }
  // the first chunk writes every value: block-cache memory, neither zeroed nor faulted in
  // afresh (a std::vector was both: 2 MB at T=200, N=1, H=256 LSTM's dW_hh, each call)
  const Scratch<double> acc(M * P);
  Tensor out = empty_as(a, {M, P});
  float* o = out.mutable_data_ptr<float>();
  Tensor at_buf, bt_buf;
  for (int64_t k0 = 0; k0 < K; k0 += chunk) {
    const int64_t kc = std::min(chunk, K - k0);
    Tensor part;  // [M,P] = a_c^T @ b_c
    if (mkl) {
      part = mm(t(rows(ac, k0, kc)), rows(bc, k0, kc));
    } else {
      if (k0 == 0 || kc != at_buf.size(1)) {
        at_buf = empty_as(a, {M, kc});
        bt_buf = empty_as(a, {P, kc});
      }
      transpose_rows(ac, k0, kc, at_buf);
      transpose_rows(bc, k0, kc, bt_buf);
      part = linear(at_buf, bt_buf);
    }
    const float* p = part.const_data_ptr<float>();
    const bool first = k0 == 0, last = k0 + kc >= K;
    parallel_rows(M * P, 1 << 14, [&](int64_t i0, int64_t i1) {
      accumulate_chunk(p, acc.data(), last ? o : nullptr, first, i0, i1);
    });
  }
  return out;
}

// Whether a weight gradient a^T @ b runs on bf16 products (amx.h): bfloat16, rows, and
// AMX (amx_usable) or AVX512-BF16 (bf16_dot_available). Widened to float instead, the
// sums ran at the float rate: T=100, N=64, H=512 bfloat16 LSTM backward 256 ms on the
// vdpbf16ps kernel 161 ms, on a 2-core Zen 4.
inline bool bf16_weight_grad(const Tensor& a) {
#if FUSEDRNN_HAVE_AMX
  return a.scalar_type() == ScalarType::BFloat16 && a.size(0) > 0 && bf16_weight_grad_products();
#else
  (void)a;
  return false;
#endif
}

// A weight gradient a^T @ b (a [K, M], b [K, P], contiguous): on bf16 products where
// bf16_weight_grad(a), else mm_tn.
// a^T @ b of a few rows (few_rows.h) into an output from BlockCache (cached_empty).
inline std::optional<Tensor> few_rows_grad(const Tensor& a, const Tensor& b) {
  if (!few_rows_tn_takes(a, b)) return std::nullopt;
  Tensor out = cached_empty(a, {a.size(1), b.size(1)});
  few_rows_tn(a, b, out);
  return out;
}

inline Tensor weight_grad(const Tensor& a, const Tensor& b) {
  if (std::optional<Tensor> few = few_rows_grad(a, b)) return *few;
#if FUSEDRNN_HAVE_AMX
  if (bf16_weight_grad(a)) {
    return weight_grad_amx(torch::stable::contiguous(a), torch::stable::contiguous(b));
  }
#endif
  return mm_tn(a, b);
}

// The two weight gradients a^T @ b1 and a^T @ b2 of one a (LSTM's dW_ih and dW_hh, both
// of dG): on bf16 products, a is transposed once for both.
inline std::pair<Tensor, Tensor> weight_grads(const Tensor& a, const Tensor& b1,
                                              const Tensor& b2) {
  if (few_rows_tn_takes(a, b1) && few_rows_tn_takes(a, b2)) {
    return {*few_rows_grad(a, b1), *few_rows_grad(a, b2)};
  }
#if FUSEDRNN_HAVE_AMX
  if (bf16_weight_grad(a)) {
    const AmxLhs lhs(torch::stable::contiguous(a));
    return {weight_grad_amx(lhs, torch::stable::contiguous(b1)),
            weight_grad_amx(lhs, torch::stable::contiguous(b2))};
  }
#endif
  return {mm_tn(a, b1), mm_tn(a, b2)};
}

}  // namespace fusedrnn
