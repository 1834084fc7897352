// Helpers of the CPU layer ops: dtype dispatch, thread-pool loops, and deterministic
// reductions. The device-independent ones are in ../layer.h.
#pragma once

#include "../layer.h"
#include "block_cache.h"
#include "few_rows.h"

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>


namespace fusedrnn {

// opmath: float for float, bfloat16 and float16; double for double.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

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

// Row-major strides of a contiguous tensor of these sizes.
inline std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> st(sizes.size(), 1);
  for (int64_t i = static_cast<int64_t>(sizes.size()) - 2; i >= 0; --i)
    st[i] = st[i + 1] * sizes[i + 1];
  return st;
}

// torch_from_blob with a deleter: in torch's stable C shim from 2.11 on. The wheel targets
// 2.10's ABI, so it is declared here weak: null where the running torch lacks it. Nightlies
// of early 2026 exported a torch_from_blob with a one-argument deleter next to a
// torch_from_blob_v2 (merged into today's signature before 2.11.0): where
// torch_from_blob_v2 exists, ours is not used.
extern "C" __attribute__((weak)) AOTITorchError torch_from_blob_v2();
extern "C" __attribute__((weak)) AOTITorchError torch_from_blob(
    void* data, int64_t ndim, const int64_t* sizes_ptr, const int64_t* strides_ptr,
    int64_t storage_offset, int32_t dtype, int32_t device_type, int32_t device_index,
    AtenTensorHandle* ret, int32_t layout, const uint8_t* opaque_metadata,
    int64_t opaque_metadata_size, void (*deleter)(void* data, void* ctx), void* deleter_ctx);

// An uninitialized contiguous CPU output like `like` (device, dtype unless given) whose
// memory, when large, comes from BlockCache and goes back to it when torch frees the
// tensor; its storage cannot grow (resize_). For the forward's saved workspace, which
// glibc otherwise mapped fresh and faulted in a page at a time on every call (65 MB,
// 16,000 faults a call at T=100, N=64, H=512 LSTM training). Off/on, medians of paired
// calls in one process: that LSTM training 1.042, GRU 1.044; T=50, N=256, I=H=1024 LSTM
// 1.003 and 1.031, GRU 1.042. y and dx as well gained about 1% more at the first shape:
// left plain, so the tensors users see resize as torch.nn's do. The backward's float32
// weight gradients (and float64 / bfloat16 ones of a few rows, few_rows.h) do come from
// here: a step-by-step training loop (T=1, N=1, I=H=1024 GRU, grads set to None each
// call) fragmented glibc's heap around their 12 MB blocks, resident memory 313 MB ->
// 0.4-2.3 GB within 100-300 calls, differently every run (7 of 9 runs grew); from the
// cache it stays at 313 MB (5 of 5), at the same speed. Their storage cannot grow
// (resize_ past its size raises); in-place updates, accumulation and optimizers work
// as on torch.nn's. Plain new_empty where
// the running torch has no torch_from_blob (2.10), for small outputs and ones the cache
// could not keep (above FUSEDRNN_CPU_CACHE_MB), or with FUSEDRNN_CPU_CACHE_OUTPUTS=0
// (read per call: A/B in one process).
inline Tensor cached_empty(const Tensor& like, const std::vector<int64_t>& sizes,
                           std::optional<ScalarType> dtype = std::nullopt) {
  const ScalarType dt = dtype.value_or(like.scalar_type());
  size_t elem = 0;
  switch (dt) {
    case ScalarType::Double: elem = 8; break;
    case ScalarType::Float: elem = 4; break;
    case ScalarType::BFloat16:
    case ScalarType::Half: elem = 2; break;
    default: return empty_as(like, sizes, dt);
  }
  size_t bytes = elem;
  for (int64_t v : sizes) bytes *= size_t(v);
  const char* env = std::getenv("FUSEDRNN_CPU_CACHE_OUTPUTS");
  if (torch_from_blob == nullptr || torch_from_blob_v2 != nullptr ||
      bytes < BlockCache::kMinBytes || bytes > BlockCache::global().limit() ||
      (env && env[0] == '0')) {
    return empty_as(like, sizes, dt);
  }
  const std::vector<int64_t> strides = contiguous_strides(sizes);
  size_t capacity = 0;
  void* p = BlockCache::global().take(bytes, &capacity);
  auto give_back = [](void* data, void* ctx) {
    BlockCache::global().give(data, reinterpret_cast<uintptr_t>(ctx));
  };
  namespace d = torch::stable::detail;
  AtenTensorHandle h = nullptr;
  const AOTITorchError err = torch_from_blob(
      p, int64_t(sizes.size()), sizes.data(), strides.data(), 0, d::to<int32_t>(d::from(dt)),
      d::to<int32_t>(d::from(like.device().type())), like.device().index(), &h,
      d::to<int32_t>(d::from(torch::headeronly::Layout::Strided)), nullptr, 0, give_back,
      reinterpret_cast<void*>(uintptr_t(capacity)));
  if (err != AOTI_TORCH_SUCCESS) {
    // Not given back: a failure after torch made its data pointer has already run the
    // deleter (out of memory there), and a block cached twice would be handed out twice.
    return empty_as(like, sizes, dt);
  }
  return Tensor(h);
}

// A temporary, uninitialized contiguous tensor like `like` (device, dtype) over Scratch
// memory, for buffers that die within the op: large ones then come from BlockCache rather
// than from freshly faulted pages. Views of `tensor` must not outlive it.
class ScratchTensor {
 public:
  ScratchTensor(const Tensor& like, const std::vector<int64_t>& sizes)
      : mem_(numel(sizes) * like.element_size()),
        tensor(torch::stable::from_blob(mem_.data(), sizes, contiguous_strides(sizes), like.device(),
                                        like.scalar_type())) {}

 private:
  static int64_t numel(const std::vector<int64_t>& sizes) {
    int64_t n = 1;
    for (int64_t v : sizes) n *= v;
    return n;
  }
  Scratch<char> mem_;  // declared before tensor: outlives it

 public:
  Tensor tensor;
};

// Whether a float32 GEMM of `rows` rows into `values` outputs goes to aten::mm (MKL)
// rather than oneDNN's linear: on CPUs without AVX-512, from kMklRows rows and
// kMklValues outputs (the backward's dx and weight-gradient chunks). There MKL's AVX2
// kernels ran these shapes faster, GFLOP/s on a 2-core Zen 3, oneDNN vs MKL, interleaved:
// [6400, 2048] x [2048, 512] 119 vs 126, [2048, 1024] x [1024, 512] 122 vs 138, [4096,
// 768] x [768, 3072] 109 vs 120, [12800, 4096] x [4096, 1024] 121 vs 136; training,
// paired against torch.nn: T=100, N=64, H=512 LSTM 0.91x -> 1.08x, GRU 1.15x -> 1.26x;
// T=50, N=256, H=1024 LSTM 0.94x -> 1.06x, GRU 0.96x -> 1.05x. Not the per-step products
// ([256, 1024] x [1024, 4096]: oneDNN 127, MKL 105) nor the forward's input projection
// (T=100, N=64, H=512 LSTM inference 224 ms on oneDNN, 234 on MKL). Not with AVX-512:
// there MKL's float32 GEMM ran at 40-50% of oneDNN's (an AMD Zen 4; see linear()). Small
// results stay on oneDNN: MKL splits K across threads where the result is small (other
// bits on another thread count; weight_grad.h).
constexpr int64_t kMklRows = 1024;
constexpr int64_t kMklValues = 1 << 18;

inline bool mkl_gemm_wanted(int64_t rows, int64_t values) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  const char* env = std::getenv("FUSEDRNN_CPU_MKL");  // 0 / 1: off / on at any ISA (tests)
  const bool on = env && env[0] ? env[0] != '0' : !avx512;
  return on && rows >= kMklRows && values >= kMklValues;
}

// Whether the ops compute 16-bit storage (bfloat16, float16) on float32 copies: on CPUs
// with AVX2 and FMA but no AVX-512, which have no 16-bit products. There aten::mm, the
// GEMM loop's product for these dtypes, ran bfloat16 at ~1 GFLOP/s for many rows (a
// 2-core Zen 3; see bench.py's _peak_size) and ~16 GFLOP/s for a row at a time (a
// bandwidth-bound product); torch.nn's bfloat16 LSTM ran at ~14, while the float32 loops
// run at 100-140. The copies cost a pass over x, the weights and the outputs per call: the
// backward takes them at any size, the forward from kUpcastForwardRows rows (T x N) on.
// Paired on that Zen 3, I=H=1024, ms, 16-bit vs copies: LSTM inference T=1, N=1 1.44 vs
// 3.56, N=4 4.74 vs 6.33, N=6 6.20 vs 6.19, N=8 8.29 vs 6.55, T=8, N=1 9.08 vs 8.23; GRU
// N=4 3.19 vs 2.97, N=6 4.64 vs 4.08; training (copies both ways) T=1, N=1 LSTM 44.3 vs
// 14.8, GRU 36.6 vs 14.5. The float32 loops keep h in float from step to step (torch.nn
// rounds it to 16 bits each step): the results lie nearer the float64 reference than
// torch.nn's. The saved workspace is float either way, the same layout.
// FUSEDRNN_CPU_UPCAST=0 / 1: off / on at any ISA and size (tests, A/B).
constexpr int64_t kUpcastForwardRows = 8;

inline bool upcast_16bit(ScalarType dt, int64_t forward_rows = -1) {
  if (dt != ScalarType::BFloat16 && dt != ScalarType::Half) return false;
  const char* env = std::getenv("FUSEDRNN_CPU_UPCAST");
  if (env && env[0]) return env[0] != '0';
  return few_rows_isa() == FewRowsIsa::kAvx2 &&
         (forward_rows < 0 || forward_rows >= kUpcastForwardRows);
}

// t as float32, a contiguous copy in cached memory (cached_empty: weights of 16 MB in
// bfloat16 make 32 MB copies, which glibc would map and fault in afresh every call), and
// the same for an optional tensor.
inline Tensor to_float(const Tensor& t) {
  if (t.scalar_type() == ScalarType::Float) return t;
  std::vector<int64_t> sizes(t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) sizes[d] = t.size(d);
  Tensor out = cached_empty(t, sizes, ScalarType::Float);
  torch::stable::copy_(out, t);
  return out;
}
inline std::optional<Tensor> to_float(const std::optional<Tensor>& t) {
  return t ? std::optional<Tensor>(to_float(*t)) : std::nullopt;
}

// Rows up to which products take the few-row loops (few_rows.h), the weight read in
// place: kFewRows, and on CPUs with AVX2 and no AVX-512 kFewRowsInPasses (there, at 5-7
// and 9-11 rows, oneDNN's and MKL's float32 GEMMs had other bits on 1 and 2 threads).
inline int64_t few_rows_most() {
  return few_rows_isa() == FewRowsIsa::kAvx2 ? kFewRowsInPasses : kFewRows;
}

// out = a @ b (out contiguous): up to few_rows_most() rows on the few-row loops where they
// take the case, else aten::mm.
inline void few_rows_into(const Tensor& a, const Tensor& b, Tensor& out) {
  if (a.size(0) <= few_rows_most() && few_rows_mm(a, b, out, few_rows_most())) return;
  mm_out(a, b, out);
}

// a @ w^T for w [M,K] contiguous (torch's weight layout). Float32 goes through oneDNN's
// matmul (mkldnn::_linear_pointwise, the op torch.compile's CPU backend uses), which on
// the AVX-512 AMD CPU of our benchmarks runs the RNN's GEMM shapes 2-2.5x faster than
// torch.mm's MKL path (435 vs 172 GFLOP/s at 64x512x2048, benchmarks/README.md). Other
// dtypes, and torch builds without that op, use aten::mm (bfloat16 already reaches oneDNN
// there). The op is probed once; a build that lacks it logs one error and falls back.
//
// A few rows go to the few-row loops (few_rows_into).
inline Tensor linear(const Tensor& a, const Tensor& w) {
  if (a.size(0) <= few_rows_most() && a.numel() > 0 &&
      few_rows_dot_available(a.scalar_type())) {
    Tensor out = empty_as(a, {a.size(0), w.size(0)});
    if (few_rows_mm(a, t(w), out, few_rows_most())) return out;
  }
  static bool have_onednn = true;
  if (have_onednn && a.scalar_type() == ScalarType::Float && a.numel() > 0) {
    using torch::stable::detail::from;
    std::array<StableIValue, 6> stack{from(a), from(w), from(std::nullopt),
                                      from(std::string("none")),
                                      from(std::vector<int64_t>{}), from(std::nullopt)};
    if (torch_call_dispatcher("mkldnn::_linear_pointwise", "", stack.data(),
                              TORCH_ABI_VERSION) == AOTI_TORCH_SUCCESS)
      return torch::stable::detail::to<Tensor>(stack[0]);
    have_onednn = false;
  }
  return mm(a, t(w));
}

// The weight argument of times_right() that makes times_right(a, right_weight(v, rows)) =
// a @ v, for v [K, C] (the backward's dG W_ih and dG W_hh) and `rows` rows of a in all: up
// to kInPlaceRows rows, t(v) itself, which times_right() multiplies in place (few_rows.h's
// loops up to kFewRows rows, else aten::mm); above, a transposed copy (oneDNN's float32 linear
// takes a contiguous [C, K]; MKL's float64 mm ran faster on it too: backward ms, in place
// vs copy, T=256, N=16, H=768 GRU 830 vs 689; T=100, N=64, H=512 LSTM 725 vs 678). For a
// few rows the copy is most of the call: T=1, N=1, I=H=1024 float64 LSTM backward 83.0 ms
// with it, 33.7 without; float32 GRU on a 2-core Zen 3, training, 24.9 ms with it, 13.0
// without (the copy is torch's transpose at ~3.5 GB/s: 7 ms for W_ih). On that Zen 3,
// float32 GRU training, T=64, N=1, I=H=1024 (dh per step in place too): 50.9 ms in place,
// 60.7 with the copies. (Between 64 and 1584 rows the crossover was not measured.)
constexpr int64_t kInPlaceRows = 64;

inline Tensor right_weight(const Tensor& v, int64_t rows) {
  return rows > kInPlaceRows ? torch::stable::contiguous(t(v)) : t(v);
}

// a @ v for w = right_weight(v, rows): linear(a, w) on the copy; on the view t(v) the
// few-row loops or aten::mm, reading v as it is (oneDNN's linear would copy it again).
inline Tensor times_right(const Tensor& a, const Tensor& w) {
  if (w.is_contiguous()) return linear(a, w);
  const Tensor v = t(w);
  const char* env = std::getenv("FUSEDRNN_CPU_FEW_ROWS_PASSES");  // A/B, tests: rows
  const int64_t most = env && env[0] ? std::atol(env) : few_rows_most();
  if (a.size(0) <= most && a.numel() > 0 && few_rows_available(a.scalar_type())) {
    Tensor out = empty_as(a, {a.size(0), v.size(1)});
    if (few_rows_mm(a, v, out, most)) return out;
  }
  return mm(a, v);
}

// The float32 panel GEMMs of CPUs with AVX2 and no AVX-512 (panel_gemm.h, included at the
// end of this file, with times_weight: the backward's dx).
inline bool panel_gemm_isa();
inline bool panel_gemm_wanted(int64_t rows);
inline void panel_linear(const Tensor& a, const Tensor& w, float* packed, bool packed_ready,
                         Tensor& out);
inline int64_t panel_floats(int64_t P, int64_t K);

// The input projection x @ W_ih^T, a block of about kBlockRows rows (whole steps) at a
// time as the step loop reaches it. The [R, G] product never exists whole: each block is
// still in cache when its steps read it, and no buffer is so large (52 MB at the fastrnns
// shape) that the allocator maps it fresh, page fault by page fault, on every call.
class InputProjection {
 public:
  static constexpr int64_t kBlockRows = 1024;

  InputProjection(const Steps& st, const Tensor& x2, const Tensor& w_ih, bool reverse)
      : st_(st), x2_(x2), w_ih_(w_ih), reverse_(reverse) {}

  // One past the last step of the block that holds step s (computing that block).
  int64_t block_end(int64_t s) {
    step(s);
    return end_;
  }

  // Row 0 of step number s (in the order the loop runs them) of x @ W_ih^T, [batch, G].
  const void* step(int64_t s) {
    if (s >= end_) {
      int64_t rows_ = 0, e = s;
      while (e < st_.T && (e == s || rows_ + st_.batch[tt(e)] <= kBlockRows))
        rows_ += st_.batch[tt(e++)];
      // The block's steps hold consecutive rows of x2: ascending t forward, descending
      // in reverse, so the lowest row belongs to the block's first (forward) or last step.
      r0_ = st_.offset[reverse_ ? tt(e - 1) : tt(s)];
      if (x2_.scalar_type() == ScalarType::Float && panel_gemm_wanted(rows_)) {
        // W_ih packed at the first block, the blocks into one buffer
        if (!packed_) packed_ = std::make_unique<Scratch<float>>(panel_floats(w_ih_.size(0), w_ih_.size(1)));
        if (!buf_ || buf_->tensor.size(0) < rows_) {
          buf_ = std::make_unique<ScratchTensor>(x2_, std::vector<int64_t>{rows_, w_ih_.size(0)});
        }
        block_ = rows(buf_->tensor, 0, rows_);
        panel_linear(rows(x2_, r0_, rows_), w_ih_, packed_->data(), packed_ready_, block_);
        packed_ready_ = true;
      } else if (x2_.scalar_type() == ScalarType::Float) {
        block_ = linear(rows(x2_, r0_, rows_), w_ih_);
      } else {
        // Into one Scratch buffer for every block (aten::mm.out, the GEMM that linear
        // calls for these dtypes): a fresh [rows, G] tensor a block was faulted in anew
        // each time, ~6,000 faults a call at T=256, N=16, H=768 in bfloat16.
        if (!buf_ || buf_->tensor.size(0) < rows_) {
          buf_ = std::make_unique<ScratchTensor>(x2_, std::vector<int64_t>{rows_, w_ih_.size(0)});
        }
        block_ = rows(buf_->tensor, 0, rows_);
        const Tensor x_rows = rows(x2_, r0_, rows_);
        few_rows_into(x_rows, t(w_ih_), block_);
      }
      end_ = e;
    }
    return static_cast<const char*>(block_.const_data_ptr()) +
           (st_.offset[tt(s)] - r0_) * block_.size(1) * block_.element_size();
  }

 private:
  int64_t tt(int64_t s) const { return reverse_ ? st_.T - 1 - s : s; }
  const Steps& st_;
  Tensor x2_, w_ih_;
  bool reverse_;
  int64_t end_ = 0, r0_ = 0;
  std::unique_ptr<ScratchTensor> buf_;
  std::unique_ptr<Scratch<float>> packed_;  // W_ih as panels (panel_gemm_wanted)
  bool packed_ready_ = false;
  Tensor block_ = Tensor();  // after buf_: may view it, so released first
};

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

// f(std::bool_constant<a>{}, std::bool_constant<b>{}): two run-time flags as template
// arguments of a per-unit kernel, so that its loop has no branch.
template <typename F>
void with_flags(bool a, bool b, const F& f) {
  if (a) {
    b ? f(std::true_type{}, std::true_type{}) : f(std::true_type{}, std::false_type{});
  } else {
    b ? f(std::false_type{}, std::true_type{}) : f(std::false_type{}, std::false_type{});
  }
}

template <typename F>
void parallel_rows(int64_t n, int64_t grain, const F& f) {
  if (n <= grain) {
    f(int64_t{0}, n);
  } else {
    torch::stable::parallel_for(0, n, grain, f);
  }
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

// acc[j - j0] += m[r, j] for rows [0, rows) in order and columns [j0, j1): row by row, so
// each row's span is read in order (by 64-column blocks the reads went 4 KB apart, past
// what the prefetchers follow). Vectorized for float and bfloat16 (clones): scalar SSE2
// code took 1.5% of a float32 LSTM training step at T=50, N=256, H=1024.
template <typename scalar_t>
void column_block_sum(const scalar_t* m, int64_t rows, int64_t cols, int64_t j0, int64_t j1,
                      double* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = m + r * cols;
    for (int64_t j = j0; j < j1; ++j) acc[j - j0] += static_cast<double>(row[j]);
  }
}
template <>
FUSEDRNN_CPU_CLONES inline void column_block_sum<float>(const float* m, int64_t rows,
                                                        int64_t cols, int64_t j0, int64_t j1,
                                                        double* __restrict acc) {
  const int64_t w = j1 - j0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict row = m + r * cols + j0;
    for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(row[j]);
  }
}
template <>
FUSEDRNN_CPU_CLONES inline void column_block_sum<c10::BFloat16>(const c10::BFloat16* m,
                                                                int64_t rows, int64_t cols,
                                                                int64_t j0, int64_t j1,
                                                                double* __restrict acc) {
  const int64_t w = j1 - j0;
  for (int64_t r = 0; r < rows; ++r) {  // bits widened by hand, which the compiler vectorizes
    const uint16_t* __restrict row = reinterpret_cast<const uint16_t*>(m + r * cols + j0);
    for (int64_t j = 0; j < w; ++j) {
      const uint32_t bits = uint32_t{row[j]} << 16;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      acc[j] += static_cast<double>(f);
    }
  }
}

// out[j] = sum_r m[r, j] over rows in order, accumulated in double: a bias gradient
// sums T*N terms, and float accumulation would lose ~sqrt(T*N) ulps. The order is
// fixed, so the result is bit-identical whatever the thread count (threads split
// the columns, in spans of up to 1024: 8 KB of sums stay in L1).
template <typename scalar_t>
void column_sum(const scalar_t* m, int64_t rows, int64_t cols, scalar_t* out) {
  constexpr int64_t kCols = 64, kSpan = 1024;
  const int64_t blocks = (cols + kCols - 1) / kCols;
  parallel_rows(blocks, rows * kCols >= (1 << 16) ? 1 : blocks, [&](int64_t b0, int64_t b1) {
    alignas(64) double acc[kSpan];
    for (int64_t j0 = b0 * kCols; j0 < std::min(cols, b1 * kCols); j0 += kSpan) {
      const int64_t j1 = std::min({cols, b1 * kCols, j0 + kSpan});
      std::fill(acc, acc + (j1 - j0), 0.0);
      column_block_sum(m, rows, cols, j0, j1, acc);
      for (int64_t j = j0; j < j1; ++j) out[j] = static_cast<scalar_t>(acc[j - j0]);
    }
  });
}

inline void check_cpu_input(const Tensor& t, const char* what, const Tensor& like, int64_t dim) {
  STD_TORCH_CHECK(t.is_cpu(), "fusedrnn: ", what, " must be a CPU tensor");
  check_input(t, what, like, dim);
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

// The state each row starts its step from, for every row: hp [R,P] with hp[row of
// step t] = y[same sequence, step prev(t)] or h0. y2 [R,P] and h0 [N,P] contiguous; hp
// contiguous, y2's shape and dtype.
inline void previous_states(const Tensor& y2, const Tensor& h0, const Steps& st, bool reverse,
                            Tensor& hp) {
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
}

}  // namespace fusedrnn

#include "panel_gemm.h"  // the definitions of the panel GEMMs declared above
#include "panel_f64.h"   // float64's step products
