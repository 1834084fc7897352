// Helpers shared by the CPU layer ops: dtype dispatch, torch GEMMs through the
// stable dispatcher, and a deterministic column reduction.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace fusedrnn {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

// opmath: float for float, bfloat16 and float16; double for double.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline ScalarType opmath_type(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// Calls f(scalar_t{}) for the storage types torch.nn accepts on the CPU.
template <typename F>
void dispatch_floating(ScalarType t, const char* name, F&& f) {
  switch (t) {
    case ScalarType::Float: f(float{}); break;
    case ScalarType::Double: f(double{}); break;
    case ScalarType::BFloat16: f(c10::BFloat16{}); break;
    case ScalarType::Half: f(c10::Half{}); break;
    default: STD_TORCH_CHECK(false, name, ": unsupported dtype");
  }
}

// out = a @ b, through torch's GEMM (MKL / oneDNN) on the calling thread pool.
inline void mm_out(const Tensor& a, const Tensor& b, Tensor& out) {
  std::array<StableIValue, 3> stack{
      torch::stable::detail::from(a), torch::stable::detail::from(b),
      torch::stable::detail::from(out)};
  STD_TORCH_CHECK(
      torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION) ==
          AOTI_TORCH_SUCCESS,
      "fusedrnn: aten::mm.out failed");
  // The op returns `out` again: take ownership of that handle so it is released.
  (void)torch::stable::detail::to<Tensor>(stack[0]);
}

// A view of `a` that autograd does not track. The ops have no autograd kernel (autograd
// lives in LSTMFunction / GRUFunction); when they are called directly on tensors that
// require grad (an exported program, say), the GEMMs inside must not see those flags:
// aten::mm.out refuses out= with inputs that require grad.
inline Tensor detach(const Tensor& a) {
  std::array<StableIValue, 1> stack{torch::stable::detail::from(a)};
  STD_TORCH_CHECK(
      torch_call_dispatcher("aten::detach", "", stack.data(), TORCH_ABI_VERSION) ==
          AOTI_TORCH_SUCCESS,
      "fusedrnn: aten::detach failed");
  return torch::stable::detail::to<Tensor>(stack[0]);
}

inline std::optional<Tensor> detach(const std::optional<Tensor>& a) {
  return a ? std::optional<Tensor>(detach(*a)) : std::nullopt;
}

inline Tensor mm(const Tensor& a, const Tensor& b) {
  Tensor out = torch::stable::new_empty(a, {a.size(0), b.size(1)});
  mm_out(a, b, out);
  return out;
}

inline Tensor t(const Tensor& a) { return torch::stable::transpose(a, 0, 1); }

inline Tensor empty_as(const Tensor& like, std::vector<int64_t> sizes,
                       std::optional<ScalarType> dtype = std::nullopt) {
  return torch::stable::new_empty(like, sizes, dtype);
}

// Pointwise loops run over (batch, unit) pairs; below this many pairs a step runs
// on the calling thread (a thread-pool wake-up costs more than the work).
constexpr int64_t kPointwiseGrain = 2048;
// A task is one row's units [j0, j1) of at most this many: long enough to vectorize.
constexpr int64_t kUnitChunk = 256;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// Per-unit loops are compiled for AVX-512, AVX2+FMA and baseline x86-64 and picked
// at load time (ifunc): one wheel, fast everywhere, no -march=native.
#define FUSEDRNN_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSEDRNN_CPU_CLONES
#endif

template <typename F>
void parallel_rows(int64_t n, int64_t grain, const F& f) {
  if (n <= grain) {
    f(int64_t{0}, n);
  } else {
    torch::stable::parallel_for(0, n, grain, f);
  }
}

// Rows per GEMM when a weight gradient sums over all T*N rows (see mm_tn).
constexpr int64_t kReduceChunk = 256;

// a^T @ b for a [K,M], b [K,P]: the weight gradients, which reduce over K = T*N rows.
// In float, one GEMM accumulates all K terms in float; here the rows are cut into
// chunks of kReduceChunk whose products are summed in double, so the error grows with
// the chunk, not with T*N. The extra adds cost M*P per chunk against 2*M*P*kReduceChunk
// flops. Other dtypes: float64 needs none of it, and 16-bit GEMMs already accumulate
// in float inside one call (chunk outputs would each be rounded to 16 bits).
inline Tensor mm_tn(const Tensor& a_in, const Tensor& b_in) {
  Tensor a = a_in, b = b_in;  // narrow takes non-const handles
  const int64_t K = a.size(0), M = a.size(1), P = b.size(1);
  if (a.scalar_type() != ScalarType::Float || K <= kReduceChunk) return mm(t(a), b);
  Tensor part = empty_as(a, {M, P});
  std::vector<double> acc(M * P, 0.0);
  for (int64_t k0 = 0; k0 < K; k0 += kReduceChunk) {
    const int64_t kc = std::min(kReduceChunk, K - k0);
    mm_out(t(torch::stable::narrow(a, 0, k0, kc)), torch::stable::narrow(b, 0, k0, kc), part);
    const float* p = part.const_data_ptr<float>();
    parallel_rows(M * P, 1 << 14, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) acc[i] += p[i];
    });
  }
  Tensor out = empty_as(a, {M, P});
  float* o = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < M * P; ++i) o[i] = static_cast<float>(acc[i]);
  return out;
}

// Calls f(n, j0, j1) for every row n < N and unit chunk [j0, j1) of [0, H).
template <typename F>
void for_each_unit_chunk(int64_t N, int64_t H, const F& f) {
  const int64_t chunks = (H + kUnitChunk - 1) / kUnitChunk;
  const int64_t grain = std::max<int64_t>(1, kPointwiseGrain / std::min(H, kUnitChunk));
  parallel_rows(N * chunks, grain, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t n = k / chunks, j0 = (k % chunks) * kUnitChunk;
      f(n, j0, std::min(H, j0 + kUnitChunk));
    }
  });
}

// out[j] = sum_r m[r, j] over rows in order, accumulated in double: a bias gradient
// sums T*N terms, and float accumulation would lose ~sqrt(T*N) ulps. The order is
// fixed, so the result is bit-identical whatever the thread count (threads split
// the columns).
template <typename scalar_t>
void column_sum(const scalar_t* m, int64_t rows, int64_t cols, scalar_t* out) {
  using acc_t = double;
  constexpr int64_t kCols = 64;
  const int64_t blocks = (cols + kCols - 1) / kCols;
  parallel_rows(blocks, rows * kCols >= (1 << 16) ? 1 : blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kCols, j1 = std::min(cols, j0 + kCols);
      acc_t acc[kCols] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = m + r * cols;
        for (int64_t j = j0; j < j1; ++j) acc[j - j0] += static_cast<acc_t>(row[j]);
      }
      for (int64_t j = j0; j < j1; ++j) out[j] = static_cast<scalar_t>(acc[j - j0]);
    }
  });
}

inline void check_cpu_input(const Tensor& x, const char* what, ScalarType dtype, int64_t dim) {
  STD_TORCH_CHECK(x.is_cpu(), "fusedrnn: ", what, " must be a CPU tensor");
  STD_TORCH_CHECK(x.scalar_type() == dtype, "fusedrnn: ", what, " has the wrong dtype");
  STD_TORCH_CHECK(x.dim() == dim, "fusedrnn: ", what, " must have ", dim, " dimensions, got ",
                  x.dim());
}

inline void check_shape(const Tensor& x, const char* what, std::initializer_list<int64_t> shape) {
  int64_t d = 0;
  for (int64_t s : shape) {
    STD_TORCH_CHECK(x.size(d) == s, "fusedrnn: ", what, " has size ", x.size(d), " at dim ", d,
                    ", expected ", s);
    ++d;
  }
}

// An optional bias vector [G] in opmath, zeros when absent.
template <typename scalar_t>
std::vector<opmath_t<scalar_t>> bias_vector(const std::optional<Tensor>& b, int64_t G) {
  std::vector<opmath_t<scalar_t>> v(G, 0);
  if (b.has_value()) {
    Tensor c = torch::stable::contiguous(*b);
    const scalar_t* p = c.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < G; ++k) v[k] = static_cast<opmath_t<scalar_t>>(p[k]);
  }
  return v;
}

// The time steps of a layer. Padded input x [T,N,I] runs N rows at every step; packed
// input (a PackedSequence's data [R,I] with its batch_sizes [T]) runs the first
// batch[t] rows at step t, rows offset[t] .. offset[t] + batch[t] of the data.
// batch is non-increasing, so the rows a step runs are a prefix of the batch.
struct Steps {
  int64_t T = 0, N = 0, R = 0;  // steps, batch (rows of the states), rows of x
  bool packed = false;
  std::vector<int64_t> batch, offset;

  // The step that ran just before t (t-1 forward, t+1 reverse), or -1 for the first.
  int64_t prev(int64_t t, bool reverse) const {
    const int64_t p = reverse ? t + 1 : t - 1;
    return p >= 0 && p < T ? p : -1;
  }
  // How many of step t's rows continue a state from step prev(t); the rest start
  // from h0 / c0 (only in the reverse direction of packed input).
  int64_t carried(int64_t t, bool reverse) const {
    const int64_t p = prev(t, reverse);
    return p < 0 ? 0 : std::min(batch[t], batch[p]);
  }
};

inline Steps make_steps(const Tensor& x, const std::optional<Tensor>& batch_sizes) {
  Steps s;
  if (!batch_sizes.has_value()) {
    STD_TORCH_CHECK(x.dim() == 3, "fusedrnn: padded x must be [T,N,I]");
    s.T = x.size(0);
    s.N = x.size(1);
    s.R = s.T * s.N;
    for (int64_t t = 0; t < s.T; ++t) {
      s.batch.push_back(s.N);
      s.offset.push_back(t * s.N);
    }
    return s;
  }
  const Tensor& bs = *batch_sizes;
  STD_TORCH_CHECK(x.dim() == 2, "fusedrnn: packed x must be [R,I]");
  STD_TORCH_CHECK(bs.is_cpu() && bs.scalar_type() == ScalarType::Long && bs.dim() == 1,
                  "fusedrnn: batch_sizes must be a 1-D int64 CPU tensor");
  s.packed = true;
  s.T = bs.size(0);
  const Tensor bsc = torch::stable::contiguous(bs);
  const int64_t* p = bsc.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < s.T; ++t) {
    STD_TORCH_CHECK(p[t] > 0 && (t == 0 || p[t] <= p[t - 1]),
                    "fusedrnn: batch_sizes must be positive and non-increasing");
    s.batch.push_back(p[t]);
    s.offset.push_back(s.R);
    s.R += p[t];
  }
  s.N = s.T > 0 ? p[0] : 0;
  STD_TORCH_CHECK(s.R == x.size(0), "fusedrnn: batch_sizes sum to ", s.R, " but x has ",
                  x.size(0), " rows");
  return s;
}

// Checks shared by both cells' forward ops: x [T,N,I] or packed [R,I], w_ih [G,I],
// w_hh [G,P], optional biases [G], h0 [N,P]; G = gates * H.
inline void check_layer_args(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                             const std::optional<Tensor>& b_ih,
                             const std::optional<Tensor>& b_hh, const Tensor& h0,
                             int64_t gates, int64_t H, const Steps& st) {
  const ScalarType dt = x.scalar_type();
  check_cpu_input(x, "x", dt, st.packed ? 2 : 3);
  check_cpu_input(w_ih, "w_ih", dt, 2);
  check_cpu_input(w_hh, "w_hh", dt, 2);
  check_cpu_input(h0, "h0", dt, 2);
  check_shape(w_ih, "w_ih", {gates * H, x.size(x.dim() - 1)});
  check_shape(w_hh, "w_hh", {gates * H});
  check_shape(h0, "h0", {st.N, w_hh.size(1)});
  STD_TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
                  "fusedrnn: b_ih and b_hh must both be given or both be None");
  for (const auto& b : {b_ih, b_hh}) {
    if (!b.has_value()) continue;
    check_cpu_input(*b, "bias", dt, 1);
    check_shape(*b, "bias", {gates * H});
  }
}

// The state each row starts its step from, for every row: hp [R,P] with hp[row of
// step t] = y[same sequence, step prev(t)] or h0. y2 [R,P] and h0 [N,P] contiguous.
inline Tensor previous_states(const Tensor& y2, const Tensor& h0, const Steps& st,
                              bool reverse) {
  Tensor hp = torch::stable::empty_like(y2);
  const int64_t P = y2.size(1);
  const size_t row_bytes = P * y2.element_size();
  const char* y = static_cast<const char*>(y2.const_data_ptr());
  const char* h = static_cast<const char*>(h0.const_data_ptr());
  char* out = static_cast<char*>(hp.mutable_data_ptr());
  for (int64_t t = 0; t < st.T; ++t) {
    const int64_t keep = st.carried(t, reverse), p = st.prev(t, reverse);
    char* dst = out + st.offset[t] * row_bytes;
    if (keep > 0) std::memcpy(dst, y + st.offset[p] * row_bytes, keep * row_bytes);
    std::memcpy(dst + keep * row_bytes, h + keep * row_bytes, (st.batch[t] - keep) * row_bytes);
  }
  return hp;
}

// rows [0, n) of a [*, P] contiguous tensor
inline Tensor head(const Tensor& a, int64_t n) {
  Tensor m = a;
  return torch::stable::narrow(m, 0, 0, n);
}
inline Tensor rows(const Tensor& a, int64_t start, int64_t n) {
  Tensor m = a;
  return torch::stable::narrow(m, 0, start, n);
}

}  // namespace fusedrnn
