// Torch-side helpers shared by the CPU and CUDA layer ops: GEMMs through the stable
// dispatcher (MKL / oneDNN on the CPU, cuBLAS on the current stream on CUDA), views,
// argument checks, and the time-step bookkeeping of padded and packed input.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <vector>

namespace fusedrnn {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

// opmath: float for float, bfloat16 and float16; double for double.
inline ScalarType opmath_type(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
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

// t in `dtype`: t itself where it already has it, else a converted copy.
inline Tensor converted(const Tensor& t, ScalarType dtype) {
  if (t.scalar_type() == dtype) return t;
  std::vector<int64_t> sizes(t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) sizes[d] = t.size(d);
  Tensor out = empty_as(t, sizes, dtype);
  torch::stable::copy_(out, t);
  return out;
}

// t is on `like`'s device, has its dtype, and has `dim` dimensions.
inline void check_input(const Tensor& t, const char* what, const Tensor& like, int64_t dim) {
  STD_TORCH_CHECK(t.device() == like.device(), "fusedrnn: ", what,
                  " must be on the device of x");
  STD_TORCH_CHECK(t.scalar_type() == like.scalar_type(), "fusedrnn: ", what,
                  " has the wrong dtype");
  STD_TORCH_CHECK(t.dim() == dim, "fusedrnn: ", what, " must have ", dim, " dimensions, got ",
                  t.dim());
}

inline void check_shape(const Tensor& x, const char* what, std::initializer_list<int64_t> shape) {
  int64_t d = 0;
  for (int64_t s : shape) {
    STD_TORCH_CHECK(x.size(d) == s, "fusedrnn: ", what, " has size ", x.size(d), " at dim ", d,
                    ", expected ", s);
    ++d;
  }
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
  check_input(x, "x", x, st.packed ? 2 : 3);
  check_input(w_ih, "w_ih", x, 2);
  check_input(w_hh, "w_hh", x, 2);
  check_input(h0, "h0", x, 2);
  check_shape(w_ih, "w_ih", {gates * H, x.size(x.dim() - 1)});
  check_shape(w_hh, "w_hh", {gates * H});
  check_shape(h0, "h0", {st.N, w_hh.size(1)});
  STD_TORCH_CHECK(b_ih.has_value() == b_hh.has_value(),
                  "fusedrnn: b_ih and b_hh must both be given or both be None");
  for (const auto& b : {b_ih, b_hh}) {
    if (!b.has_value()) continue;
    check_input(*b, "bias", x, 1);
    check_shape(*b, "bias", {gates * H});
  }
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
