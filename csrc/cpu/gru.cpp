// CPU GRU layer ops: one layer, one direction, the whole sequence. Same structure as
// lstm.cpp. W_hn h + b_hn is kept apart from W_in x + b_in for the reset gate, so
// the recurrent GEMM's gradient (dgh) differs from the input GEMM's (dgi) in the n block.
#include "common.h"
#include "../cells.h"

namespace fusedrnn {
namespace {

// Workspace per step and row: r, z, n, and hn = W_hn h + b_hn. In opmath.
constexpr int64_t kGRUSaved = 4;

// Per-unit kernels over one row, pointers as __restrict parameters (see lstm.cpp).

// xg, hg: the row's x_t @ W_ih^T and h_prev @ W_hh^T [3H]; bi, bh: biases [3H];
// h: running state [H], updated in place; y: h_t [H]; w: saved r, z, n, hn [4H].
template <typename scalar_t, typename acc_t>
FUSEDRNN_CPU_CLONES void gru_forward_units(
    const scalar_t* __restrict xg, const scalar_t* __restrict hg, const acc_t* __restrict bi,
    const acc_t* __restrict bh, acc_t* __restrict h, scalar_t* __restrict y,
    acc_t* __restrict w, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const acc_t hn = acc_t(hg[2 * H + j]) + bh[2 * H + j];
    const auto f = GRUCell<acc_t>::forward(
        acc_t(xg[j]) + acc_t(hg[j]) + bi[j] + bh[j],
        acc_t(xg[H + j]) + acc_t(hg[H + j]) + bi[H + j] + bh[H + j],
        acc_t(xg[2 * H + j]) + bi[2 * H + j], hn, h[j]);
    w[j] = f.r;
    w[H + j] = f.z;
    w[2 * H + j] = f.n;
    w[3 * H + j] = hn;
    h[j] = f.h;
    y[j] = static_cast<scalar_t>(f.h);
  }
}

// gy: grad of y_t [H]; rec: dgh_{t+1} @ W_hh [H]; hp: h_{t-1} [H]; w: saved [4H];
// dd: dh_{t+1} * z_{t+1} in, dh_t * z_t out [H]; dgi, dgh: gate grads [3H].
template <typename scalar_t, typename acc_t>
FUSEDRNN_CPU_CLONES void gru_backward_units(
    const scalar_t* __restrict gy, const scalar_t* __restrict rec,
    const scalar_t* __restrict hp, const acc_t* __restrict w, acc_t* __restrict dd,
    scalar_t* __restrict dgi, scalar_t* __restrict dgh, int64_t H, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    const acc_t dh = acc_t(gy[j]) + dd[j] + acc_t(rec[j]);
    const auto b = GRUCell<acc_t>::backward(w[j], w[H + j], w[2 * H + j], w[3 * H + j],
                                            acc_t(hp[j]), dh);
    dgi[j] = dgh[j] = static_cast<scalar_t>(b.dr);
    dgi[H + j] = dgh[H + j] = static_cast<scalar_t>(b.dz);
    dgi[2 * H + j] = static_cast<scalar_t>(b.dn);
    dgh[2 * H + j] = static_cast<scalar_t>(b.dhn);
    dd[j] = b.dh_prev_direct;
  }
}

template <typename scalar_t>
void gru_forward_impl(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                      const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                      const Tensor& h0, bool reverse, Tensor& y, Tensor& h_n, Tensor& ws) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t T = x.size(0), N = x.size(1), I = x.size(2), H = w_hh.size(1), G = 3 * H;

  Tensor xg = empty_as(x, {T * N, G});
  if (T * N > 0) mm_out(torch::stable::reshape(x, {T * N, I}), t(w_ih), xg);
  const std::vector<acc_t> b_i = bias_vector<scalar_t>(b_ih, G);
  const std::vector<acc_t> b_h = bias_vector<scalar_t>(b_hh, G);

  // The running state in opmath; y holds its rounding to the storage type.
  std::vector<acc_t> h(N * H);
  Tensor h_prev = torch::stable::contiguous(h0);
  {
    const scalar_t* p = h_prev.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < N * H; ++k) h[k] = static_cast<acc_t>(p[k]);
  }
  Tensor hg = empty_as(x, {N, G});
  const Tensor w_hh_t = t(w_hh);

  const scalar_t* hg_p = hg.const_data_ptr<scalar_t>();
  const scalar_t* xg_p = xg.const_data_ptr<scalar_t>();
  scalar_t* y_p = y.mutable_data_ptr<scalar_t>();
  acc_t* ws_p = ws.mutable_data_ptr<acc_t>();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t tt = reverse ? T - 1 - s : s;
    mm_out(h_prev, w_hh_t, hg);
    const scalar_t* xg_t = xg_p + tt * N * G;
    scalar_t* y_t = y_p + tt * N * H;
    acc_t* ws_t = ws_p + tt * N * kGRUSaved * H;
    for_each_unit_chunk(N, H, [&](int64_t n, int64_t j0, int64_t j1) {
      gru_forward_units(xg_t + n * G, hg_p + n * G, b_i.data(), b_h.data(), h.data() + n * H,
                        y_t + n * H, ws_t + n * kGRUSaved * H, H, j0, j1);
    });
    h_prev = torch::stable::select(y, 0, tt);
  }
  torch::stable::copy_(h_n, h_prev);
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x_in, const Tensor& w_ih, const Tensor& w_hh,
    std::optional<Tensor> b_ih, std::optional<Tensor> b_hh, const Tensor& h0, bool reverse) {
  check_layer_args(x_in, w_ih, w_hh, b_ih, b_hh, h0, 3);
  const Tensor x = torch::stable::contiguous(x_in);
  const int64_t T = x.size(0), N = x.size(1), H = w_hh.size(1);
  const ScalarType dt = x.scalar_type();
  Tensor y = empty_as(x, {T, N, H});
  Tensor h_n = empty_as(x, {N, H});
  Tensor ws = empty_as(x, {T, N, kGRUSaved * H}, opmath_type(dt));
  dispatch_floating(dt, "gru_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    gru_forward_impl<scalar_t>(x, w_ih, w_hh, b_ih, b_hh, h0, reverse, y, h_n, ws);
  });
  return {y, h_n, ws};
}

template <typename scalar_t>
void gru_backward_impl(const Tensor& gy, const Tensor& ghn, const Tensor& hp,
                       const Tensor& w_hh, const Tensor& ws, bool reverse, Tensor& dgi,
                       Tensor& dgh, Tensor& dh0) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t T = gy.size(0), N = gy.size(1), H = w_hh.size(1), G = 3 * H;

  // dh_direct carries dh * z to the previous step; dh_rec carries dgh @ W_hh.
  std::vector<acc_t> dh_direct(N * H);
  {
    const scalar_t* p = ghn.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < N * H; ++k) dh_direct[k] = static_cast<acc_t>(p[k]);
  }
  Tensor dh_rec = empty_as(gy, {N, H});
  const scalar_t* gy_p = gy.const_data_ptr<scalar_t>();
  const scalar_t* hp_p = hp.const_data_ptr<scalar_t>();
  const acc_t* ws_p = ws.const_data_ptr<acc_t>();
  scalar_t* dgi_p = dgi.mutable_data_ptr<scalar_t>();
  scalar_t* dgh_p = dgh.mutable_data_ptr<scalar_t>();
  // Before the last step's GEMM has run, the recurrent term is zero.
  Tensor zero_rec = torch::stable::new_zeros(gy, {N, H});
  const scalar_t* rec_p = zero_rec.const_data_ptr<scalar_t>();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t tt = reverse ? s : T - 1 - s;
    const scalar_t* gy_t = gy_p + tt * N * H;
    const scalar_t* hp_t = hp_p + tt * N * H;
    const acc_t* ws_t = ws_p + tt * N * kGRUSaved * H;
    scalar_t* dgi_t = dgi_p + tt * N * G;
    scalar_t* dgh_t = dgh_p + tt * N * G;
    for_each_unit_chunk(N, H, [&](int64_t n, int64_t j0, int64_t j1) {
      gru_backward_units(gy_t + n * H, rec_p + n * H, hp_t + n * H, ws_t + n * kGRUSaved * H,
                         dh_direct.data() + n * H, dgi_t + n * G, dgh_t + n * G, H, j0, j1);
    });
    mm_out(torch::stable::select(dgh, 0, tt), w_hh, dh_rec);
    rec_p = dh_rec.const_data_ptr<scalar_t>();
  }
  const acc_t* dd = dh_direct.data();
  scalar_t* dh0_p = dh0.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k) {
    dh0_p[k] = static_cast<scalar_t>(dd[k] + static_cast<acc_t>(rec_p[k]));
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y, const Tensor& grad_h_n, const Tensor& x_in, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& h0, const Tensor& y, const Tensor& ws, bool reverse) {
  const int64_t T = x_in.size(0), N = x_in.size(1), I = x_in.size(2), H = w_hh.size(1);
  const int64_t G = 3 * H;
  const ScalarType dt = x_in.scalar_type();
  check_cpu_input(grad_y, "grad_y", dt, 3);
  check_shape(grad_y, "grad_y", {T, N, H});
  check_shape(ws, "workspace", {T, N, kGRUSaved * H});
  const Tensor x = torch::stable::contiguous(x_in);
  const Tensor gy = torch::stable::contiguous(grad_y);
  const Tensor ghn = torch::stable::contiguous(grad_h_n);
  const Tensor wsc = torch::stable::contiguous(ws);
  const Tensor hp = previous_states(y, h0, reverse);

  Tensor dgi = empty_as(x, {T, N, G});
  Tensor dgh = empty_as(x, {T, N, G});
  Tensor dh0 = empty_as(x, {N, H});
  Tensor db_ih = empty_as(x, {G});
  Tensor db_hh = empty_as(x, {G});
  dispatch_floating(dt, "gru_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    gru_backward_impl<scalar_t>(gy, ghn, hp, w_hh, wsc, reverse, dgi, dgh, dh0);
    column_sum<scalar_t>(dgi.const_data_ptr<scalar_t>(), T * N, G,
                         db_ih.mutable_data_ptr<scalar_t>());
    column_sum<scalar_t>(dgh.const_data_ptr<scalar_t>(), T * N, G,
                         db_hh.mutable_data_ptr<scalar_t>());
  });
  const Tensor dgi2 = torch::stable::reshape(dgi, {T * N, G});
  const Tensor dgh2 = torch::stable::reshape(dgh, {T * N, G});
  Tensor dx = torch::stable::reshape(mm(dgi2, w_ih), {T, N, I});
  Tensor dw_ih = mm_tn(dgi2, torch::stable::reshape(x, {T * N, I}));
  Tensor dw_hh = mm_tn(dgh2, torch::stable::reshape(hp, {T * N, H}));
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("gru_forward", TORCH_BOX(&gru_forward));
  m.impl("gru_backward", TORCH_BOX(&gru_backward));
}

}  // namespace fusedrnn
