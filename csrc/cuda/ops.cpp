// CUDA layer ops: the same four ops as csrc/cpu/, registered for the CUDA dispatch key.
// The structure follows the CPU path: one GEMM x @ W_ih^T for all steps; per step the
// recurrent GEMM over the step's active rows (cuBLAS through aten::mm.out, so it honours
// torch's TF32 matmul flag), then one fused kernel (kernels.h). Backward mirrors it, and
// the input and weight gradients are large GEMMs after the loop. Everything is queued on
// torch's current stream of x's device: no private streams, no host synchronization, so
// the ops can be captured in a CUDA graph.
#include <Python.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "../layer.h"
#include "kernels.h"

namespace fusedrnn {
namespace {

using cuda::DType;

constexpr int64_t kLSTMSaved = 5;  // workspace per row and unit: i, f, g, o, c
constexpr int64_t kGRUSaved = 4;   // r, z, n, hn

cudaStream_t current_stream(const Tensor& x) {
  void* s = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(x.get_device_index(), &s));
  return static_cast<cudaStream_t>(s);
}

DType dtype_of(const Tensor& x) {
  switch (x.scalar_type()) {
    case ScalarType::Float: return DType::Float;
    case ScalarType::Double: return DType::Double;
    case ScalarType::Half: return DType::Half;
    case ScalarType::BFloat16: return DType::BFloat16;
    default: STD_TORCH_CHECK(false, "fusedrnn: unsupported dtype on CUDA");
  }
  return DType::Float;
}

void check_launch(cudaError_t e) {
  STD_TORCH_CHECK(e == cudaSuccess, "fusedrnn: CUDA kernel launch failed: ", cudaGetErrorString(e));
}

void check_cuda_input(const Tensor& t, const char* what, const Tensor& like, int64_t dim) {
  STD_TORCH_CHECK(t.is_cuda(), "fusedrnn: ", what, " must be a CUDA tensor");
  check_input(t, what, like, dim);
}

// The backward ops read raw pointers of every input: each must be a CUDA tensor on x's
// device with the right dtype and size (a host pointer would fault the whole context).
void check_saved(const Tensor& t, const char* what, const Tensor& x, int64_t numel,
                 ScalarType dtype) {
  STD_TORCH_CHECK(t.device() == x.device(), "fusedrnn: ", what, " must be on the device of x");
  STD_TORCH_CHECK(t.scalar_type() == dtype, "fusedrnn: ", what, " has the wrong dtype");
  STD_TORCH_CHECK(t.numel() == numel, "fusedrnn: ", what, " has ", t.numel(),
                  " elements, expected ", numel);
}

// Pointer to element `offset` of a contiguous tensor (nullptr for an absent one).
void* at(const Tensor& t, int64_t offset = 0) {
  return static_cast<char*>(t.data_ptr()) + offset * t.element_size();
}
const void* at(const std::optional<Tensor>& t) { return t ? t->data_ptr() : nullptr; }

// A fresh contiguous tensor of `dtype` holding src's values (converted).
Tensor copy_as(const Tensor& src, ScalarType dtype) {
  Tensor out = torch::stable::new_empty(src, {src.size(0), src.size(1)}, dtype);
  torch::stable::copy_(out, src);
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_a, const Tensor& w_ih_a, const Tensor& w_hh_a, std::optional<Tensor> b_ih_a,
    std::optional<Tensor> b_hh_a, std::optional<Tensor> w_hr_a, const Tensor& h0_a,
    const Tensor& c0_a, std::optional<Tensor> batch_sizes, bool reverse, bool save) {
  const Tensor x_in = detach(x_a), w_ih = detach(w_ih_a), w_hh = detach(w_hh_a);
  const Tensor h0 = detach(h0_a), c0 = detach(c0_a);
  const std::optional<Tensor> b_ih = detach(b_ih_a), b_hh = detach(b_hh_a), w_hr = detach(w_hr_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_ih.size(0) / 4, P = w_hh.size(1), G = 4 * H;
  check_cuda_input(x_in, "x", x_in, x_in.dim());
  check_layer_args(x_in, w_ih, w_hh, b_ih, b_hh, h0, 4, H, st);
  check_input(c0, "c0", x_in, 2);
  check_shape(c0, "c0", {st.N, H});
  if (w_hr) {
    check_input(*w_hr, "w_hr", x_in, 2);
    check_shape(*w_hr, "w_hr", {P, H});
  } else {
    STD_TORCH_CHECK(P == H, "fusedrnn: w_hh must be [4H, H] without w_hr");
  }
  torch::stable::accelerator::DeviceGuard guard(x_in.get_device_index());
  const cudaStream_t stream = current_stream(x_in);
  const DType dt = dtype_of(x_in);
  const ScalarType acc = opmath_type(x_in.scalar_type());

  const Tensor x = torch::stable::contiguous(x_in);
  const Tensor x2 = torch::stable::reshape(x, {st.R, x.size(x.dim() - 1)});
  const std::optional<Tensor> bi = b_ih ? std::optional(torch::stable::contiguous(*b_ih)) : b_ih;
  const std::optional<Tensor> bh = b_hh ? std::optional(torch::stable::contiguous(*b_hh)) : b_hh;
  Tensor y2 = empty_as(x, {st.R, P});
  Tensor h_n = empty_as(x, {st.N, P});
  Tensor c_n = empty_as(x, {st.N, H});
  // save=false: one step's rows of scratch, rewritten every step, and an empty result.
  Tensor ws2 = empty_as(x, {save ? st.R : st.N, kLSTMSaved * H}, acc);

  Tensor xg = empty_as(x2, {st.R, G});
  if (st.R > 0) mm_out(x2, t(w_ih), xg);
  Tensor c = copy_as(c0, acc);                     // running cell state, opmath
  Tensor h = copy_as(h0, x.scalar_type());         // running h [N,P], the GEMM's input
  Tensor hg = empty_as(x2, {st.N, G});
  Tensor m = empty_as(x2, {w_hr ? st.N : 0, H});   // o * tanh(c) before the projection
  const Tensor w_hh_t = t(w_hh);
  const std::optional<Tensor> w_hr_t = w_hr ? std::optional(t(*w_hr)) : std::nullopt;
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? st.T - 1 - s : s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    Tensor hg_b = head(hg, B);
    mm_out(head(h, B), w_hh_t, hg_b);
    cuda::LSTMForwardStep p{at(xg, off * G), at(hg), at(bi), at(bh), at(c),
                            w_hr ? at(m) : at(y2, off * P), w_hr ? nullptr : at(h),
                            at(ws2, save ? off * kLSTMSaved * H : 0), B, H};
    check_launch(cuda::lstm_forward_step(dt, p, stream));
    if (w_hr) {
      Tensor y_b = rows(y2, off, B), h_b = head(h, B);
      mm_out(head(m, B), *w_hr_t, y_b);
      torch::stable::copy_(h_b, y_b);
    }
  }
  torch::stable::copy_(h_n, h);
  torch::stable::copy_(c_n, c);
  if (!save) ws2 = empty_as(x, {0}, acc);
  if (st.packed || !save) {
    return {st.packed ? y2 : torch::stable::reshape(y2, {st.T, st.N, P}), h_n, c_n, ws2};
  }
  return {torch::stable::reshape(y2, {st.T, st.N, P}), h_n, c_n,
          torch::stable::reshape(ws2, {st.T, st.N, kLSTMSaved * H})};
}

// db[j] = sum over rows of g[:, j], deterministic (kernels.h).
Tensor bias_grad(const Tensor& g, cudaStream_t stream) {
  const int64_t R = g.size(0), G = g.size(1);
  Tensor out = empty_as(g, {G});
  Tensor partial = empty_as(g, {cuda::column_sum_chunks(R), G}, ScalarType::Double);
  check_launch(cuda::column_sum(dtype_of(g), g.data_ptr(), R, G,
                                static_cast<double*>(partial.data_ptr()), out.data_ptr(), stream));
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y_a, const Tensor& grad_h_n_a, const Tensor& grad_c_n_a, const Tensor& x_a,
    const Tensor& w_ih_a, const Tensor& w_hh_a, std::optional<Tensor> w_hr_a, const Tensor& h0_a,
    const Tensor& c0_a, const Tensor& y_a, const Tensor& ws, std::optional<Tensor> batch_sizes,
    bool reverse) {
  const Tensor grad_y = detach(grad_y_a), grad_h_n = detach(grad_h_n_a);
  const Tensor grad_c_n = detach(grad_c_n_a), x_in = detach(x_a), w_ih = detach(w_ih_a);
  const Tensor w_hh = detach(w_hh_a), h0 = detach(h0_a), c0 = detach(c0_a), y = detach(y_a);
  const std::optional<Tensor> w_hr = detach(w_hr_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_ih.size(0) / 4, P = w_hh.size(1), G = 4 * H;
  const int64_t I = x_in.size(x_in.dim() - 1);
  check_cuda_input(x_in, "x", x_in, x_in.dim());
  check_input(grad_y, "grad_y", x_in, x_in.dim());
  STD_TORCH_CHECK(grad_y.numel() == st.R * P && y.numel() == st.R * P,
                  "fusedrnn: grad_y and y must have the shape of y");
  const ScalarType dtx = x_in.scalar_type();
  check_saved(grad_h_n, "grad_h_n", x_in, st.N * P, dtx);
  check_saved(grad_c_n, "grad_c_n", x_in, st.N * H, dtx);
  check_saved(w_ih, "w_ih", x_in, G * I, dtx);
  check_saved(w_hh, "w_hh", x_in, G * P, dtx);
  check_saved(h0, "h0", x_in, st.N * P, dtx);
  check_saved(c0, "c0", x_in, st.N * H, dtx);
  check_saved(y, "y", x_in, st.R * P, dtx);
  check_saved(ws, "workspace", x_in, st.R * kLSTMSaved * H, opmath_type(dtx));
  if (w_hr) check_saved(*w_hr, "w_hr", x_in, P * H, dtx);
  torch::stable::accelerator::DeviceGuard guard(x_in.get_device_index());
  const cudaStream_t stream = current_stream(x_in);
  const DType dt = dtype_of(x_in);
  const ScalarType acc = opmath_type(x_in.scalar_type());

  const Tensor x2 = torch::stable::reshape(torch::stable::contiguous(x_in), {st.R, I});
  const Tensor gy2 = torch::stable::reshape(torch::stable::contiguous(grad_y), {st.R, P});
  const Tensor y2 = torch::stable::reshape(torch::stable::contiguous(y), {st.R, P});
  const Tensor ws2 = torch::stable::reshape(torch::stable::contiguous(ws), {st.R, kLSTMSaved * H});
  const Tensor h0c = torch::stable::contiguous(h0);
  Tensor dc = copy_as(grad_c_n, acc);            // grad of c, carried back per row
  const Tensor c0a = copy_as(c0, acc);
  Tensor dh = copy_as(grad_h_n, x2.scalar_type());  // grad of h from later steps [N,P]
  Tensor dm = empty_as(x2, {w_hr ? st.N : 0, H});

  Tensor dgates = empty_as(x2, {st.R, G});
  Tensor hp = empty_as(x2, {st.R, P});                // h_prev of every row, for dW_hh
  Tensor dh_all = empty_as(x2, {w_hr ? st.R : 0, P});  // grad of every step's h, for dW_hr
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? s : st.T - 1 - s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    const int64_t keep = st.carried(tt, reverse), p = st.prev(tt, reverse);
    // The cell's dh is gy + dh without projections; with them, dm = (gy + dh) @ W_hr.
    const void* a = at(gy2, off * P);
    const void* b = at(dh);
    if (w_hr) {
      check_launch(cuda::add(dt, at(gy2, off * P), at(dh), nullptr, at(dh_all, off * P), B * P,
                             stream));
      Tensor dm_b = head(dm, B);
      mm_out(rows(dh_all, off, B), *w_hr, dm_b);
      a = at(dm);
      b = nullptr;
    }
    cuda::LSTMBackwardStep q{a, b, at(ws2, off * kLSTMSaved * H),
                             keep > 0 ? at(ws2, st.offset[p] * kLSTMSaved * H) : nullptr,
                             at(c0a), at(dc), at(dgates, off * G),
                             keep > 0 ? at(y2, st.offset[p] * P) : nullptr, at(h0c),
                             at(hp, off * P), B, H, P, keep};
    check_launch(cuda::lstm_backward_step(dt, q, stream));
    Tensor dh_b = head(dh, B);
    mm_out(rows(dgates, off, B), w_hh, dh_b);
  }
  Tensor dh0 = empty_as(x2, {st.N, P});
  Tensor dc0 = empty_as(x2, {st.N, H});
  torch::stable::copy_(dh0, dh);
  torch::stable::copy_(dc0, dc);
  Tensor db = bias_grad(dgates, stream);
  Tensor dw_hr = empty_as(x2, {0});
  if (w_hr) {
    Tensor m = empty_as(x2, {st.R, H});
    check_launch(cuda::lstm_projection_inputs(dt, at(ws2), at(m), st.R, H, stream));
    dw_hr = mm(t(dh_all), m);
  }
  Tensor dx = torch::stable::reshape(mm(dgates, w_ih), x_in.dim() == 3
                                                           ? std::vector<int64_t>{st.T, st.N, I}
                                                           : std::vector<int64_t>{st.R, I});
  Tensor dw_ih = mm(t(dgates), x2);
  Tensor dw_hh = mm(t(dgates), hp);
  return {dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x_a, const Tensor& w_ih_a, const Tensor& w_hh_a, std::optional<Tensor> b_ih_a,
    std::optional<Tensor> b_hh_a, const Tensor& h0_a, std::optional<Tensor> batch_sizes,
    bool reverse, bool save) {
  const Tensor x_in = detach(x_a), w_ih = detach(w_ih_a), w_hh = detach(w_hh_a);
  const Tensor h0 = detach(h0_a);
  const std::optional<Tensor> b_ih = detach(b_ih_a), b_hh = detach(b_hh_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_hh.size(1), G = 3 * H;
  check_cuda_input(x_in, "x", x_in, x_in.dim());
  check_layer_args(x_in, w_ih, w_hh, b_ih, b_hh, h0, 3, H, st);
  torch::stable::accelerator::DeviceGuard guard(x_in.get_device_index());
  const cudaStream_t stream = current_stream(x_in);
  const DType dt = dtype_of(x_in);
  const ScalarType acc = opmath_type(x_in.scalar_type());

  const Tensor x = torch::stable::contiguous(x_in);
  const Tensor x2 = torch::stable::reshape(x, {st.R, x.size(x.dim() - 1)});
  const std::optional<Tensor> bi = b_ih ? std::optional(torch::stable::contiguous(*b_ih)) : b_ih;
  const std::optional<Tensor> bh = b_hh ? std::optional(torch::stable::contiguous(*b_hh)) : b_hh;
  Tensor y2 = empty_as(x, {st.R, H});
  Tensor h_n = empty_as(x, {st.N, H});
  Tensor ws2 = empty_as(x, {save ? st.R : st.N, kGRUSaved * H}, acc);

  Tensor xg = empty_as(x2, {st.R, G});
  if (st.R > 0) mm_out(x2, t(w_ih), xg);
  Tensor ha = copy_as(h0, acc);              // the running state in opmath
  Tensor h = copy_as(h0, x.scalar_type());   // and its rounding, the GEMM's input
  Tensor hg = empty_as(x2, {st.N, G});
  const Tensor w_hh_t = t(w_hh);
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? st.T - 1 - s : s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    Tensor hg_b = head(hg, B);
    mm_out(head(h, B), w_hh_t, hg_b);
    cuda::GRUForwardStep p{at(xg, off * G), at(hg), at(bi), at(bh), at(ha), at(y2, off * H),
                           at(h), at(ws2, save ? off * kGRUSaved * H : 0), B, H};
    check_launch(cuda::gru_forward_step(dt, p, stream));
  }
  torch::stable::copy_(h_n, h);
  if (!save) ws2 = empty_as(x, {0}, acc);
  if (st.packed || !save) {
    return {st.packed ? y2 : torch::stable::reshape(y2, {st.T, st.N, H}), h_n, ws2};
  }
  return {torch::stable::reshape(y2, {st.T, st.N, H}), h_n,
          torch::stable::reshape(ws2, {st.T, st.N, kGRUSaved * H})};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y_a, const Tensor& grad_h_n_a, const Tensor& x_a, const Tensor& w_ih_a,
    const Tensor& w_hh_a, const Tensor& h0_a, const Tensor& y_a, const Tensor& ws,
    std::optional<Tensor> batch_sizes, bool reverse) {
  const Tensor grad_y = detach(grad_y_a), grad_h_n = detach(grad_h_n_a), x_in = detach(x_a);
  const Tensor w_ih = detach(w_ih_a), w_hh = detach(w_hh_a), h0 = detach(h0_a);
  const Tensor y = detach(y_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_hh.size(1), G = 3 * H, I = x_in.size(x_in.dim() - 1);
  check_cuda_input(x_in, "x", x_in, x_in.dim());
  check_input(grad_y, "grad_y", x_in, x_in.dim());
  STD_TORCH_CHECK(grad_y.numel() == st.R * H && y.numel() == st.R * H,
                  "fusedrnn: grad_y and y must have the shape of y");
  const ScalarType dtx = x_in.scalar_type();
  check_saved(grad_h_n, "grad_h_n", x_in, st.N * H, dtx);
  check_saved(w_ih, "w_ih", x_in, G * I, dtx);
  check_saved(w_hh, "w_hh", x_in, G * H, dtx);
  check_saved(h0, "h0", x_in, st.N * H, dtx);
  check_saved(y, "y", x_in, st.R * H, dtx);
  check_saved(ws, "workspace", x_in, st.R * kGRUSaved * H, opmath_type(dtx));
  torch::stable::accelerator::DeviceGuard guard(x_in.get_device_index());
  const cudaStream_t stream = current_stream(x_in);
  const DType dt = dtype_of(x_in);
  const ScalarType acc = opmath_type(x_in.scalar_type());

  const Tensor x2 = torch::stable::reshape(torch::stable::contiguous(x_in), {st.R, I});
  const Tensor gy2 = torch::stable::reshape(torch::stable::contiguous(grad_y), {st.R, H});
  const Tensor y2 = torch::stable::reshape(torch::stable::contiguous(y), {st.R, H});
  const Tensor ws2 = torch::stable::reshape(torch::stable::contiguous(ws), {st.R, kGRUSaved * H});
  const Tensor h0c = torch::stable::contiguous(h0);
  // Per row: dh carries dgh @ W_hh (grad_h_n before a row's last step), dd carries dh * z,
  // the part of dh_prev that bypasses W_hh.
  Tensor dh = copy_as(grad_h_n, x2.scalar_type());
  Tensor dd = torch::stable::new_zeros(x2, {st.N, H}, acc);
  Tensor dgi = empty_as(x2, {st.R, G});
  Tensor dgh = empty_as(x2, {st.R, G});
  Tensor hp = empty_as(x2, {st.R, H});
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? s : st.T - 1 - s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    const int64_t keep = st.carried(tt, reverse), p = st.prev(tt, reverse);
    cuda::GRUBackwardStep q{at(gy2, off * H), at(dh), at(ws2, off * kGRUSaved * H), at(dd),
                            at(dgi, off * G), at(dgh, off * G),
                            keep > 0 ? at(y2, st.offset[p] * H) : nullptr, at(h0c),
                            at(hp, off * H), B, H, keep};
    check_launch(cuda::gru_backward_step(dt, q, stream));
    Tensor dh_b = head(dh, B);
    mm_out(rows(dgh, off, B), w_hh, dh_b);
  }
  Tensor dh0 = empty_as(x2, {st.N, H});
  check_launch(cuda::add(dt, at(dh), nullptr, at(dd), at(dh0), st.N * H, stream));
  Tensor db_ih = bias_grad(dgi, stream);
  Tensor db_hh = bias_grad(dgh, stream);
  Tensor dx = torch::stable::reshape(mm(dgi, w_ih), x_in.dim() == 3
                                                        ? std::vector<int64_t>{st.T, st.N, I}
                                                        : std::vector<int64_t>{st.R, I});
  Tensor dw_ih = mm(t(dgi), x2);
  Tensor dw_hh = mm(t(dgh), hp);
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

extern "C" {
// fusedrnn._C_cuda: an empty Python module whose import runs the registration below.
PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

STABLE_TORCH_LIBRARY_IMPL(fusedrnn, CUDA, m) {
  m.impl("lstm_forward", TORCH_BOX(&lstm_forward));
  m.impl("lstm_backward", TORCH_BOX(&lstm_backward));
  m.impl("gru_forward", TORCH_BOX(&gru_forward));
  m.impl("gru_backward", TORCH_BOX(&gru_backward));
}

}  // namespace fusedrnn
