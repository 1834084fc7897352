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

  const scalar_t* xg_p = xg.const_data_ptr<scalar_t>();
  const scalar_t* hg_p = hg.const_data_ptr<scalar_t>();
  scalar_t* y_p = y.mutable_data_ptr<scalar_t>();
  acc_t* ws_p = ws.mutable_data_ptr<acc_t>();
  const acc_t* b_p = bias.data();
  acc_t* c_p = c.data();

  for (int64_t s = 0; s < T; ++s) {
    const int64_t tt = reverse ? T - 1 - s : s;
    mm_out(h_prev, w_hh_t, hg);
    const scalar_t* xg_t = xg_p + tt * N * G;
    scalar_t* y_t = y_p + tt * N * H;
    acc_t* ws_t = ws_p + tt * N * kLSTMSaved * H;
    parallel_rows(N * H, kPointwiseGrain, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t n = e / H, j = e % H;
        const scalar_t* xr = xg_t + n * G;
        const scalar_t* hr = hg_p + n * G;
        acc_t pre[4];
        for (int k = 0; k < 4; ++k) {
          const int64_t q = k * H + j;
          pre[k] = static_cast<acc_t>(xr[q]) + static_cast<acc_t>(hr[q]) + b_p[q];
        }
        const auto f = LSTMCell<acc_t>::forward(pre[0], pre[1], pre[2], pre[3], c_p[e]);
        acc_t* w = ws_t + n * kLSTMSaved * H + j;
        w[0] = f.i; w[H] = f.f; w[2 * H] = f.g; w[3 * H] = f.o; w[4 * H] = f.c;
        c_p[e] = f.c;
        y_t[n * H + j] = static_cast<scalar_t>(f.h);
      }
    });
    h_prev = torch::stable::select(y, 0, tt);
  }
  torch::stable::copy_(h_n, h_prev);
  scalar_t* cn_p = c_n.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k) cn_p[k] = static_cast<scalar_t>(c_p[k]);
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
  const scalar_t* dh_in = ghn.const_data_ptr<scalar_t>();
  acc_t* dc_p = dc.data();

  for (int64_t s = 0; s < T; ++s) {
    const int64_t tt = reverse ? s : T - 1 - s;
    const bool first_step = reverse ? tt == T - 1 : tt == 0;
    const acc_t* ws_t = ws_p + tt * N * kLSTMSaved * H;
    const acc_t* ws_prev = first_step ? nullptr : ws_p + (reverse ? tt + 1 : tt - 1) * N * kLSTMSaved * H;
    const scalar_t* gy_t = gy_p + tt * N * H;
    scalar_t* dg_t = dg_p + tt * N * G;
    parallel_rows(N * H, kPointwiseGrain, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t n = e / H, j = e % H;
        const acc_t* w = ws_t + n * kLSTMSaved * H + j;
        const acc_t c_prev = ws_prev ? ws_prev[n * kLSTMSaved * H + 4 * H + j] : c_first[e];
        const acc_t dh = static_cast<acc_t>(gy_t[e]) + static_cast<acc_t>(dh_in[e]);
        const auto b =
            LSTMCell<acc_t>::backward(w[0], w[H], w[2 * H], w[3 * H], w[4 * H], c_prev, dh, dc_p[e]);
        scalar_t* d = dg_t + n * G + j;
        d[0] = static_cast<scalar_t>(b.di);
        d[H] = static_cast<scalar_t>(b.df);
        d[2 * H] = static_cast<scalar_t>(b.dg);
        d[3 * H] = static_cast<scalar_t>(b.do_);
        dc_p[e] = b.dc_prev;
      }
    });
    mm_out(torch::stable::select(dgates, 0, tt), w_hh, dh_rec);
    dh_in = dh_rec.const_data_ptr<scalar_t>();
  }
  torch::stable::copy_(dh0, T > 0 ? dh_rec : ghn);
  scalar_t* dc0_p = dc0.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k) dc0_p[k] = static_cast<scalar_t>(dc_p[k]);
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
  Tensor dw_ih = mm(t(dg2), torch::stable::reshape(x, {T * N, I}));
  const Tensor hp = previous_states(y, h0, reverse);
  Tensor dw_hh = mm(t(dg2), torch::stable::reshape(hp, {T * N, H}));
  return {dx, dh0, dc0, dw_ih, dw_hh, db};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_forward", TORCH_BOX(&lstm_forward));
  m.impl("lstm_backward", TORCH_BOX(&lstm_backward));
}

}  // namespace fusedrnn
