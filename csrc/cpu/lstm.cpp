// CPU LSTM layer ops: one layer, one direction, the whole sequence.
// Forward: xg = x @ W_ih^T for all T in one GEMM; per step hg = h @ W_hh^T, then one
// fused pass (bias, gates, state update, output, saved activations).
// Backward: per step one fused pass and dh = dgates @ W_hh; after the loop dx, dW_ih,
// dW_hh as three large GEMMs and the bias gradient as a fixed-order reduction.
#include "common.h"
#include "../cells.h"

namespace fusedrnn {
namespace {

// Workspace per step and row: i, f, g, o (activated), then c. In opmath.
constexpr int64_t kLSTMSaved = 5;

// The per-unit kernels take one row's pointers as __restrict parameters: gcc honours
// restrict on parameters (not on locals loaded from a struct), and needs it to
// vectorize these loops.

// xg, hg: the row's x_t @ W_ih^T and h_prev @ W_hh^T [4H]; b = b_ih + b_hh [4H];
// c: cell state [H], updated in place; y: h_t [H]; w: saved i, f, g, o, c [5H].
template <typename scalar_t, typename acc_t>
FUSEDRNN_CPU_CLONES void lstm_forward_units(
    const scalar_t* __restrict xg, const scalar_t* __restrict hg, const acc_t* __restrict b,
    acc_t* __restrict c, scalar_t* __restrict y, acc_t* __restrict w, int64_t H, int64_t j0,
    int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const auto f = LSTMCell<acc_t>::forward(
        acc_t(xg[j]) + acc_t(hg[j]) + b[j], acc_t(xg[H + j]) + acc_t(hg[H + j]) + b[H + j],
        acc_t(xg[2 * H + j]) + acc_t(hg[2 * H + j]) + b[2 * H + j],
        acc_t(xg[3 * H + j]) + acc_t(hg[3 * H + j]) + b[3 * H + j], c[j]);
    w[j] = f.i;
    w[H + j] = f.f;
    w[2 * H + j] = f.g;
    w[3 * H + j] = f.o;
    w[4 * H + j] = f.c;
    c[j] = f.c;
    y[j] = static_cast<scalar_t>(f.h);
  }
}

// gy: grad of y_t [H]; dh: grad of h_t from later steps [H]; w: saved [5H];
// cp: c_{t-1} [H]; dc: grad of c_t in, of c_{t-1} out [H]; dg: gate grads [4H].
template <typename scalar_t, typename acc_t>
FUSEDRNN_CPU_CLONES void lstm_backward_units(
    const scalar_t* __restrict gy, const scalar_t* __restrict dh, const acc_t* __restrict w,
    const acc_t* __restrict cp, acc_t* __restrict dc, scalar_t* __restrict dg, int64_t H,
    int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const auto b = LSTMCell<acc_t>::backward(w[j], w[H + j], w[2 * H + j], w[3 * H + j],
                                             w[4 * H + j], cp[j], acc_t(gy[j]) + acc_t(dh[j]),
                                             dc[j]);
    dg[j] = static_cast<scalar_t>(b.di);
    dg[H + j] = static_cast<scalar_t>(b.df);
    dg[2 * H + j] = static_cast<scalar_t>(b.dg);
    dg[3 * H + j] = static_cast<scalar_t>(b.do_);
    dc[j] = b.dc_prev;
  }
}

template <typename scalar_t>
void lstm_forward_impl(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                       const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                       const Tensor& h0, const Tensor& c0, bool reverse, Tensor& y,
                       Tensor& h_n, Tensor& c_n, Tensor& ws) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2), H = w_hh.size(1), G = 4 * H;

  Tensor xg = empty_as(x, {T * N, G});
  if (T * N > 0) mm_out(torch::stable::reshape(x, {T * N, I}), t(w_ih), xg);
  const std::vector<acc_t> b_i = bias_vector<scalar_t>(b_ih, G);
  const std::vector<acc_t> b_h = bias_vector<scalar_t>(b_hh, G);
  std::vector<acc_t> bias(G);
  for (int64_t k = 0; k < G; ++k) bias[k] = b_i[k] + b_h[k];

  std::vector<acc_t> c(N * H);
  {
    Tensor c0c = torch::stable::contiguous(c0);
    const scalar_t* p = c0c.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < N * H; ++k) c[k] = static_cast<acc_t>(p[k]);
  }
  Tensor hg = empty_as(x, {N, G});
  const Tensor w_hh_t = t(w_hh);
  Tensor h_prev = torch::stable::contiguous(h0);

  const scalar_t* hg_p = hg.const_data_ptr<scalar_t>();
  const scalar_t* xg_p = xg.const_data_ptr<scalar_t>();
  scalar_t* y_p = y.mutable_data_ptr<scalar_t>();
  acc_t* ws_p = ws.mutable_data_ptr<acc_t>();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t tt = reverse ? T - 1 - s : s;
    mm_out(h_prev, w_hh_t, hg);
    const scalar_t* xg_t = xg_p + tt * N * G;
    scalar_t* y_t = y_p + tt * N * H;
    acc_t* ws_t = ws_p + tt * N * kLSTMSaved * H;
    for_each_unit_chunk(N, H, [&](int64_t n, int64_t j0, int64_t j1) {
      lstm_forward_units(xg_t + n * G, hg_p + n * G, bias.data(), c.data() + n * H,
                         y_t + n * H, ws_t + n * kLSTMSaved * H, H, j0, j1);
    });
    h_prev = torch::stable::select(y, 0, tt);
  }
  torch::stable::copy_(h_n, h_prev);
  scalar_t* cn_p = c_n.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k) cn_p[k] = static_cast<scalar_t>(c[k]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_in, const Tensor& w_ih, const Tensor& w_hh,
    std::optional<Tensor> b_ih, std::optional<Tensor> b_hh, const Tensor& h0,
    const Tensor& c0, bool reverse) {
  check_layer_args(x_in, w_ih, w_hh, b_ih, b_hh, h0, 4);
  check_cpu_input(c0, "c0", x_in.scalar_type(), 2);
  check_shape(c0, "c0", {x_in.size(1), w_hh.size(1)});
  const Tensor x = torch::stable::contiguous(x_in);
  const int64_t T = x.size(0), N = x.size(1), H = w_hh.size(1);
  const ScalarType dt = x.scalar_type();
  Tensor y = empty_as(x, {T, N, H});
  Tensor h_n = empty_as(x, {N, H});
  Tensor c_n = empty_as(x, {N, H});
  Tensor ws = empty_as(x, {T, N, kLSTMSaved * H}, opmath_type(dt));
  dispatch_floating(dt, "lstm_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    lstm_forward_impl<scalar_t>(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, y, h_n, c_n, ws);
  });
  return {y, h_n, c_n, ws};
}

template <typename scalar_t>
void lstm_backward_impl(const Tensor& gy, const Tensor& ghn, const Tensor& gcn,
                        const Tensor& c0, const Tensor& w_hh, const Tensor& ws, bool reverse,
                        Tensor& dgates, Tensor& dh0, Tensor& dc0) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t T = gy.size(0), N = gy.size(1), H = w_hh.size(1), G = 4 * H;

  std::vector<acc_t> dc(N * H), c_first(N * H);
  {
    const scalar_t* p = gcn.const_data_ptr<scalar_t>();
    const scalar_t* q = c0.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < N * H; ++k) {
      dc[k] = static_cast<acc_t>(p[k]);
      c_first[k] = static_cast<acc_t>(q[k]);
    }
  }
  Tensor dh_rec = empty_as(gy, {N, H});
  const scalar_t* gy_p = gy.const_data_ptr<scalar_t>();
  const acc_t* ws_p = ws.const_data_ptr<acc_t>();
  scalar_t* dg_p = dgates.mutable_data_ptr<scalar_t>();
  const scalar_t* dh_p = ghn.const_data_ptr<scalar_t>();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t tt = reverse ? s : T - 1 - s;
    const bool first_step = reverse ? tt == T - 1 : tt == 0;
    const scalar_t* gy_t = gy_p + tt * N * H;
    const acc_t* ws_t = ws_p + tt * N * kLSTMSaved * H;
    // c_{t-1}: c0, or the c saved by the previous step (rows of stride 5H).
    const acc_t* cp_t = first_step ? c_first.data()
                                   : ws_p + (reverse ? tt + 1 : tt - 1) * N * kLSTMSaved * H + 4 * H;
    const int64_t cp_stride = first_step ? H : kLSTMSaved * H;
    scalar_t* dg_t = dg_p + tt * N * G;
    for_each_unit_chunk(N, H, [&](int64_t n, int64_t j0, int64_t j1) {
      lstm_backward_units(gy_t + n * H, dh_p + n * H, ws_t + n * kLSTMSaved * H,
                          cp_t + n * cp_stride, dc.data() + n * H, dg_t + n * G, H, j0, j1);
    });
    mm_out(torch::stable::select(dgates, 0, tt), w_hh, dh_rec);
    dh_p = dh_rec.const_data_ptr<scalar_t>();
  }
  torch::stable::copy_(dh0, T > 0 ? dh_rec : ghn);
  scalar_t* dc0_p = dc0.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k) dc0_p[k] = static_cast<scalar_t>(dc[k]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& x_in,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& h0, const Tensor& c0_in,
    const Tensor& y, const Tensor& ws, bool reverse) {
  const int64_t T = x_in.size(0), N = x_in.size(1), I = x_in.size(2), H = w_hh.size(1);
  const int64_t G = 4 * H;
  const ScalarType dt = x_in.scalar_type();
  check_cpu_input(grad_y, "grad_y", dt, 3);
  check_shape(grad_y, "grad_y", {T, N, H});
  check_shape(ws, "workspace", {T, N, kLSTMSaved * H});
  const Tensor x = torch::stable::contiguous(x_in);
  const Tensor gy = torch::stable::contiguous(grad_y);
  const Tensor ghn = torch::stable::contiguous(grad_h_n);
  const Tensor gcn = torch::stable::contiguous(grad_c_n);
  const Tensor c0 = torch::stable::contiguous(c0_in);
  const Tensor wsc = torch::stable::contiguous(ws);

  Tensor dgates = empty_as(x, {T, N, G});
  Tensor dh0 = empty_as(x, {N, H});
  Tensor dc0 = empty_as(x, {N, H});
  Tensor db = empty_as(x, {G});
  dispatch_floating(dt, "lstm_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    lstm_backward_impl<scalar_t>(gy, ghn, gcn, c0, w_hh, wsc, reverse, dgates, dh0, dc0);
    column_sum<scalar_t>(dgates.const_data_ptr<scalar_t>(), T * N, G,
                         db.mutable_data_ptr<scalar_t>());
  });
  const Tensor dg2 = torch::stable::reshape(dgates, {T * N, G});
  Tensor dx = torch::stable::reshape(mm(dg2, w_ih), {T, N, I});
  Tensor dw_ih = mm_tn(dg2, torch::stable::reshape(x, {T * N, I}));
  const Tensor hp = previous_states(y, h0, reverse);
  Tensor dw_hh = mm_tn(dg2, torch::stable::reshape(hp, {T * N, H}));
  return {dx, dh0, dc0, dw_ih, dw_hh, db};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_forward", TORCH_BOX(&lstm_forward));
  m.impl("lstm_backward", TORCH_BOX(&lstm_backward));
}

}  // namespace fusedrnn
