// CPU GRU layer ops: one layer, one direction, the whole sequence, padded or packed.
// Same structure as lstm.cpp. W_hn h + b_hn is kept apart from W_in x + b_in for the reset gate, so
// the recurrent GEMM's gradient (dgh) differs from the input GEMM's (dgi) in the n block.
#include "common.h"
#include "amx.h"
#include "fused_backward.h"
#include "avx2_panels.h"
#include "rowdot_loop.h"
#include "weight_grad.h"
#include "cells16.h"
#include "../cells.h"

namespace fusedrnn {
namespace {

// Workspace per step and row: r, z, n, and hn = W_hn h + b_hn. In opmath.
constexpr int64_t kGRUSaved = 4;

// Per-unit kernels over one row, pointers as __restrict parameters (see lstm.cpp).

// xg: the row's x_t @ W_ir^T, x_t @ W_iz^T [2H]; xn: x_t @ W_in^T [H]; hg: h_prev @ W_hh^T
// [3H] (xn and hg in float from the fused loop, else in the storage type; gate v of unit j
// at hg[v*hs + j]); bi, bh: biases [3H]; h: running state [H], updated in place; y: h_t [H];
// w: saved r, z, n, hn [4H].
// kXg false: xg is not read (the fused loop folded x W_ir, x W_iz into hg); kSave false: w
// is not written (inference).
template <bool kXg, bool kSave, typename scalar_t, typename xn_t, typename hg_t, typename acc_t>
FUSEDRNN_CPU_CLONES void gru_forward_scalar(
    const scalar_t* __restrict xg, const xn_t* __restrict xn, const hg_t* __restrict hg, int64_t hs,
    const acc_t* __restrict bi, const acc_t* __restrict bh, acc_t* __restrict h,
    scalar_t* __restrict y, acc_t* __restrict w, int64_t H, int64_t j0, int64_t j1) {
  auto x = [&](int64_t k) { return kXg ? acc_t(xg[k]) : acc_t(0); };
  for (int64_t j = j0; j < j1; ++j) {
    const acc_t hn = acc_t(hg[2 * hs + j]) + bh[2 * H + j];
    const auto f = GRUCell<acc_t>::forward(
        x(j) + acc_t(hg[j]) + bi[j] + bh[j], x(H + j) + acc_t(hg[hs + j]) + bi[H + j] + bh[H + j],
        acc_t(xn[j]) + bi[2 * H + j], hn, h[j]);
    if constexpr (kSave) {
      w[j] = f.r;
      w[H + j] = f.z;
      w[2 * H + j] = f.n;
      w[3 * H + j] = hn;
    }
    h[j] = f.h;
    y[j] = static_cast<scalar_t>(f.h);
  }
}

// One row's forward cell, units [j0, j1): the vector cells (cell_lanes()) where types allow.
template <bool kXg, bool kSave, typename scalar_t, typename xn_t, typename hg_t, typename acc_t>
inline void gru_forward_units(int lanes, const scalar_t* xg, const xn_t* xn, const hg_t* hg,
                              int64_t hs, const acc_t* bi, const acc_t* bh, acc_t* h, scalar_t* y,
                              acc_t* w, int64_t H, int64_t j0, int64_t j1) {
#if FUSEDRNN_HAVE_CELLS16
  if constexpr (kCells16Storage<scalar_t> && kCells16Storage<xn_t> &&
                std::is_same_v<hg_t, float> && std::is_same_v<acc_t, float>) {
    if (lanes == 16) return gru_forward_units16<kXg, kSave>(xg, xn, hg, hs, bi, bh, h, y, w, H, j0, j1);
    // cells8: float storage only
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<xn_t, float>)
      if (lanes == 8) return gru_forward_units8<kXg, kSave>(xg, xn, hg, hs, bi, bh, h, y, w, H, j0, j1);
  }
#endif
  (void)lanes;
  gru_forward_scalar<kXg, kSave>(xg, xn, hg, hs, bi, bh, h, y, w, H, j0, j1);
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

// x2 [R,I]; y2 [R,H]; ws2 [R,4H] (or [N,4H] scratch when save=false); h_n [N,H].
template <typename scalar_t>
void gru_forward_impl(const Steps& st, const Tensor& x2, const Tensor& w_ih, const Tensor& w_hh,
                      const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                      const Tensor& h0, bool reverse, bool save, Tensor& y2, Tensor& h_n,
                      Tensor& ws2) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t N = st.N, H = w_hh.size(1), G = 3 * H;
  const int lanes = cell_lanes();

  InputProjection xg(st, x2, w_ih, reverse);
  const std::vector<acc_t> b_i = bias_vector<scalar_t>(b_ih, G);
  const std::vector<acc_t> b_h = bias_vector<scalar_t>(b_hh, G);

  // The running state in opmath, and its rounding (the GEMM's input) in h.
  Tensor h = torch::stable::clone(h0);
  std::vector<acc_t> ha(N * H);
  {
    const scalar_t* p = h.const_data_ptr<scalar_t>();
    for (int64_t k = 0; k < N * H; ++k) ha[k] = static_cast<acc_t>(p[k]);
  }
  scalar_t* y_p = y2.mutable_data_ptr<scalar_t>();
  scalar_t* h_p = h.mutable_data_ptr<scalar_t>();
  acc_t* ws_p = ws2.mutable_data_ptr<acc_t>();
#if FUSEDRNN_HAVE_FUSED
  // As in lstm.cpp: float32 while a step's rows fit and repay the panels, bfloat16 on AMX
  // tiles (amx_forward) or on bf16 products at any batch, other 16-bit storage at small
  // steps (fused_16bit).
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    const bool amx = amx_forward<scalar_t>(N, 3 * H, H);
    const bool pairs = std::is_same_v<scalar_t, c10::BFloat16> && (amx || bf16_dot_available());
    const bool use = kFloat ? fused_rows_fit(N, x2.size(1), H, kFusedGRURowsBytes) &&
                                  fused_forward_pays(st.R, 3 * H, H)
                            : (pairs && (amx || fused_forward_pays_bf16(st.T, 3 * H, H))) ||
                                  (!pairs && fused_16bit<scalar_t>(N, 3 * H, H));
    if (fused_available() && use) {
      const bool fold = (kFloat || pairs) && !amx && N >= fold_batch(pairs);
      const Tensor w_ih_c = torch::stable::contiguous(w_ih);
      const Tensor w_hh_c = torch::stable::contiguous(w_hh), h0_c = torch::stable::contiguous(h0);
      // Folded, the accumulators are r, z (x and h terms), W_hn h, W_in x; else r, z, n of h.
      auto cell = [&](int64_t s, int64_t n, int64_t j0, int64_t j1, const float* hg,
                      int64_t hs, const scalar_t* xg_row) {
        const int64_t off = st.offset[reverse ? st.T - 1 - s : s];
        float* ws_row = save ? ws_p + (off + n) * kGRUSaved * H : nullptr;
        with_flags(!fold, save, [&](auto with_xg, auto with_ws) {
          if constexpr (with_xg) {
            gru_forward_units<true, with_ws>(lanes, xg_row, xg_row + 2 * H, hg, hs, b_i.data(), b_h.data(),
                                             ha.data() + n * H, y_p + (off + n) * H, ws_row, H,
                                             j0, j1);
          } else {
            gru_forward_units<false, with_ws>(lanes, xg_row, hg + 3 * hs, hg, hs, b_i.data(), b_h.data(),
                                              ha.data() + n * H, y_p + (off + n) * H, ws_row,
                                              H, j0, j1);
          }
        });
      };
      auto run = [&](auto na, auto xs, auto hs) {
        with_pairs<scalar_t>(pairs, [&](auto kPairs) {
          fused_forward<decltype(na)::value, decltype(xs), decltype(hs), kPairs>(
              st, reverse, H, x2.const_data_ptr<scalar_t>(), x2.size(1),
              w_ih_c.const_data_ptr<scalar_t>(), w_hh_c.const_data_ptr<scalar_t>(),
              h0_c.const_data_ptr<scalar_t>(), y_p, h_n.mutable_data_ptr<scalar_t>(), xg, fold, amx,
              save ? ws_p : nullptr, kGRUSaved * H, cell);
        });
      };
      if (fold) {
        run(std::integral_constant<int, 4>{}, Slots<0, 1, 3>{}, Slots<0, 1, 2>{});
      } else {
        run(std::integral_constant<int, 3>{}, Slots<0, 1, 2>{}, Slots<0, 1, 2>{});
      }
      return;
    }
  }
  // float32 where the fused loop does not run: the row-dot loop or the AVX2 panels, as in
  // lstm.cpp.
  if constexpr (std::is_same_v<scalar_t, float>) {
    const bool rowdot = N <= kRowDotBatch && rowdot_wanted();
    if (rowdot ||
        (panels_wanted(N, H, kPanelForwardRowsBytes) && panels_pay(st.T, 3 * H, H))) {
      auto cell = [&](int64_t s, int64_t n, int64_t j0, int64_t j1, const float* hg, int64_t hs,
                      const float* xg_row) {
        const int64_t off = st.offset[reverse ? st.T - 1 - s : s];
        float* ws_row = save ? ws_p + (off + n) * kGRUSaved * H : nullptr;
        with_flags(xg_row != nullptr, save, [&](auto with_xg, auto with_ws) {
          if constexpr (with_xg) {
            gru_forward_units<true, with_ws>(lanes, xg_row, xg_row + 2 * H, hg, hs, b_i.data(),
                                             b_h.data(), ha.data() + n * H, y_p + (off + n) * H,
                                             ws_row, H, j0, j1);
          } else {  // x folded: W_in x in a fourth slot
            gru_forward_units<false, with_ws>(lanes, xg_row, hg + 3 * hs, hg, hs, b_i.data(),
                                              b_h.data(), ha.data() + n * H,
                                              y_p + (off + n) * H, ws_row, H, j0, j1);
          }
        });
      };
      avx2_forward<3>(rowdot, true, st, reverse, x2, w_ih, w_hh, h0, y_p,
                      h_n.mutable_data_ptr<float>(), xg, cell);
      return;
    }
  }
#endif
  StepWeight hh(w_hh);  // h @ W_hh^T
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? st.T - 1 - s : s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    const Tensor hg = hh(head(h, B));  // [B, G]
    const scalar_t* hg_p = hg.const_data_ptr<scalar_t>();
    const scalar_t* xg_p = static_cast<const scalar_t*>(xg.step(s));
    acc_t* ws_s = save ? ws_p + off * kGRUSaved * H : ws_p;
    for_each_unit_chunk(B, H, [&](int64_t n, int64_t j0, int64_t j1) {
      gru_forward_units<true, true>(lanes, xg_p + n * G, xg_p + n * G + 2 * H, hg_p + n * G, H, b_i.data(),
                        b_h.data(), ha.data() + n * H, y_p + (off + n) * H,
                        ws_s + n * kGRUSaved * H, H, j0, j1);
    });
    std::memcpy(h_p, y_p + off * H, B * H * sizeof(scalar_t));
  }
  torch::stable::copy_(h_n, h);
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(
    const Tensor& x_a, const Tensor& w_ih_a, const Tensor& w_hh_a, std::optional<Tensor> b_ih_a,
    std::optional<Tensor> b_hh_a, const Tensor& h0_a, std::optional<Tensor> batch_sizes,
    bool reverse, bool save) {
  const Tensor x_in = detach(x_a), w_ih = detach(w_ih_a), w_hh = detach(w_hh_a);
  const Tensor h0 = detach(h0_a);
  const std::optional<Tensor> b_ih = detach(b_ih_a), b_hh = detach(b_hh_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_hh.size(1);
  check_cpu_input(x_in, "x", x_in, x_in.dim());
  check_layer_args(x_in, w_ih, w_hh, b_ih, b_hh, h0, 3, H, st);
  const ScalarType dt = x_in.scalar_type();
  if (upcast_16bit(dt, st.R)) {  // 16-bit storage on float32 copies (upcast_16bit)
    auto [y, h_n, ws] = gru_forward(to_float(x_in), to_float(w_ih), to_float(w_hh),
                                    to_float(b_ih), to_float(b_hh), to_float(h0), batch_sizes,
                                    reverse, save);
    return {converted(y, dt), converted(h_n, dt), ws};
  }
  const Tensor x = torch::stable::contiguous(x_in);
  const Tensor x2 = torch::stable::reshape(x, {st.R, x.size(x.dim() - 1)});
  Tensor y2 = empty_as(x, {st.R, H});
  Tensor h_n = empty_as(x, {st.N, H});
  Tensor ws2 = cached_empty(x, {save ? st.R : st.N, kGRUSaved * H}, opmath_type(dt));
  dispatch_floating(dt, "gru_forward", [&](auto tag) {
    gru_forward_impl<decltype(tag)>(st, x2, w_ih, w_hh, b_ih, b_hh, h0, reverse, save, y2, h_n,
                                    ws2);
  });
  if (!save) ws2 = empty_as(x, {0}, opmath_type(dt));
  if (st.packed || !save) {
    return {st.packed ? y2 : torch::stable::reshape(y2, {st.T, st.N, H}), h_n, ws2};
  }
  return {torch::stable::reshape(y2, {st.T, st.N, H}), h_n,
          torch::stable::reshape(ws2, {st.T, st.N, kGRUSaved * H})};
}

// The GEMM loop's backward: dgi, dgh [R, G] (dX and dG) and dh0 [N, H] filled.
template <typename scalar_t>
void gru_backward_impl(const Steps& st, const Tensor& gy2, const Tensor& ghn, const Tensor& hp,
                       const Tensor& w_hh, const Tensor& ws2, bool reverse, Tensor& dgi,
                       Tensor& dgh, Tensor& dh0) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t N = st.N, H = w_hh.size(1), G = 3 * H;

  // Per row: dh carries dgh @ W_hh (and grad_h_n before a row's last step), dd carries
  // dh * z, the part of dh_prev that bypasses W_hh.
  std::vector<acc_t> dd(N * H, acc_t(0));
#if FUSEDRNN_HAVE_FUSED
  // float32 where the fused loop does not run: the row-dot loop's workers at small
  // batches, the AVX2 panels above them (avx2_panels.h).
  if constexpr (std::is_same_v<scalar_t, float>) {
    const bool rowdot = rowdot_backward_wanted(N, G, H);
    if (rowdot || (panels_wanted(N, H, kPanelRowsBytes) && panel_backward_pays(st.T, N))) {
      Tensor dh = torch::stable::clone(ghn);
      float* dh_p = dh.mutable_data_ptr<float>();
      const float* gy_p = gy2.const_data_ptr<float>();
      const float* hp_p = hp.const_data_ptr<float>();
      const float* ws_p = ws2.const_data_ptr<float>();
      float* dgi_p = dgi.mutable_data_ptr<float>();
      float* dgh_p = dgh.mutable_data_ptr<float>();
      const Tensor w_hh_c = torch::stable::contiguous(w_hh);
      with_backward_loop(rowdot, st, reverse, G, H, w_hh_c.const_data_ptr<float>(), dgh_p, dh_p,
                      [&](int64_t s, int64_t j0, int64_t j1) {
                        const int64_t t = reverse ? s : st.T - 1 - s, off = st.offset[t];
                        for (int64_t n = 0; n < st.batch[t]; ++n) {
                          const int64_t r = off + n;
                          gru_backward_units(gy_p + r * H, dh_p + n * H, hp_p + r * H,
                                             ws_p + r * kGRUSaved * H, dd.data() + n * H,
                                             dgi_p + r * G, dgh_p + r * G, H, j0, j1);
                        }
                      });
      float* dh0_p = dh0.mutable_data_ptr<float>();
      for (int64_t k = 0; k < N * H; ++k) dh0_p[k] = dd[k] + dh_p[k];
      return;
    }
  }
#endif
  StepWeight w_hh_tc(right_weight(w_hh, st.R), true);  // dG W_hh
  Tensor dh = torch::stable::clone(ghn);
  const scalar_t* gy_p = gy2.const_data_ptr<scalar_t>();
  const scalar_t* hp_p = hp.const_data_ptr<scalar_t>();
  const scalar_t* dh_p = dh.const_data_ptr<scalar_t>();
  const acc_t* ws_p = ws2.const_data_ptr<acc_t>();
  scalar_t* dgi_p = dgi.mutable_data_ptr<scalar_t>();
  scalar_t* dgh_p = dgh.mutable_data_ptr<scalar_t>();
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? s : st.T - 1 - s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    for_each_unit_chunk(B, H, [&](int64_t n, int64_t j0, int64_t j1) {
      const int64_t r = off + n;
      gru_backward_units(gy_p + r * H, dh_p + n * H, hp_p + r * H, ws_p + r * kGRUSaved * H,
                         dd.data() + n * H, dgi_p + r * G, dgh_p + r * G, H, j0, j1);
    });
    Tensor dh_b = head(dh, B);
    torch::stable::copy_(dh_b, w_hh_tc(rows(dgh, off, B)));
  }
  scalar_t* dh0_p = dh0.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k)
    dh0_p[k] = static_cast<scalar_t>(dd[k] + static_cast<acc_t>(dh_p[k]));
}

#if FUSEDRNN_HAVE_FUSED
// The fused loop's backward (float32), every gradient in one pass (fused_backward.h).
// All tensors contiguous; x2 [R,I], y2 [R,H], ws2 [R,4H].
void gru_backward_fused(const Steps& st, bool reverse, const Tensor& gy2, const Tensor& ghn,
                        const Tensor& x2, const Tensor& y2, const Tensor& h0, const Tensor& w_ih,
                        const Tensor& w_hh, const Tensor& ws2, Tensor& dx2, Tensor& dh0,
                        Tensor& dw_ih, Tensor& dw_hh, Tensor& db_ih, Tensor& db_hh) {
  const int64_t N = st.N, H = w_hh.size(1), G = 3 * H;
  // dd carries dh * z per row, the part of dh_prev that bypasses W_hh.
  std::vector<float> dd(N * H, 0.f);
  const float* gy_p = gy2.const_data_ptr<float>();
  const float* ws_p = ws2.const_data_ptr<float>();
  const float* y_p = y2.const_data_ptr<float>();
  const float* h0_p = h0.const_data_ptr<float>();
  auto cell = [&](int64_t s, int64_t n, int64_t j0, int64_t j1, const float* rec, float* dgh,
                  float* dgi) {
    const int64_t t = reverse ? s : st.T - 1 - s, r = st.offset[t] + n;
    const float* hp = n < st.carried(t, reverse)
                          ? y_p + (st.offset[st.prev(t, reverse)] + n) * H
                          : h0_p + n * H;
    gru_backward_units(gy_p + r * H, rec, hp, ws_p + r * kGRUSaved * H, dd.data() + n * H, dgi,
                       dgh, H, j0, j1);
  };
  std::vector<double> db_i(G, 0.0), db_h(G, 0.0);
  fused_backward(st, reverse, 3, H, x2.size(1), x2.const_data_ptr<float>(), y_p, h0_p,
                 w_ih.const_data_ptr<float>(), w_hh.const_data_ptr<float>(),
                 ghn.const_data_ptr<float>(), true,
                 {dx2.mutable_data_ptr<float>(), dh0.mutable_data_ptr<float>(),
                  dw_ih.mutable_data_ptr<float>(), dw_hh.mutable_data_ptr<float>(), db_i.data(),
                  db_h.data()},
                 cell);
  float* dh0_p = dh0.mutable_data_ptr<float>();
  for (int64_t k = 0; k < N * H; ++k) dh0_p[k] += dd[k];
  float* bi = db_ih.mutable_data_ptr<float>();
  float* bh = db_hh.mutable_data_ptr<float>();
  for (int64_t k = 0; k < G; ++k) {
    bi[k] = static_cast<float>(db_i[k]);
    bh[k] = static_cast<float>(db_h[k]);
  }
}
#endif

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const Tensor& grad_y_a, const Tensor& grad_h_n_a, const Tensor& x_a, const Tensor& w_ih_a,
    const Tensor& w_hh_a, const Tensor& h0_a, const Tensor& y_a, const Tensor& ws,
    std::optional<Tensor> batch_sizes, bool reverse) {
  const Tensor grad_y = detach(grad_y_a), grad_h_n = detach(grad_h_n_a), x_in = detach(x_a);
  const Tensor w_ih = detach(w_ih_a), w_hh = detach(w_hh_a), h0 = detach(h0_a);
  const Tensor y = detach(y_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_hh.size(1), G = 3 * H, I = x_in.size(x_in.dim() - 1);
  const ScalarType dt = x_in.scalar_type();
  check_cpu_input(x_in, "x", x_in, x_in.dim());
  check_cpu_input(grad_y, "grad_y", x_in, x_in.dim());
  STD_TORCH_CHECK(grad_y.numel() == st.R * H && y.numel() == st.R * H,
                  "fusedrnn: grad_y and y must have the shape of y");
  STD_TORCH_CHECK(ws.numel() == st.R * kGRUSaved * H, "fusedrnn: wrong workspace size");
  if (upcast_16bit(dt)) {  // 16-bit storage on float32 copies (upcast_16bit)
    auto [dx, dh0, dw_ih, dw_hh, db_ih, db_hh] =
        gru_backward(to_float(grad_y), to_float(grad_h_n), to_float(x_in), to_float(w_ih),
                     to_float(w_hh), to_float(h0), to_float(y), ws, batch_sizes, reverse);
    return {converted(dx, dt),    converted(dh0, dt),   converted(dw_ih, dt),
            converted(dw_hh, dt), converted(db_ih, dt), converted(db_hh, dt)};
  }
  const Tensor x2 = torch::stable::reshape(torch::stable::contiguous(x_in), {st.R, I});
  const Tensor gy2 = torch::stable::reshape(torch::stable::contiguous(grad_y), {st.R, H});
  const Tensor y2 = torch::stable::reshape(torch::stable::contiguous(y), {st.R, H});
  const Tensor ws2 = torch::stable::reshape(torch::stable::contiguous(ws), {st.R, kGRUSaved * H});
  const Tensor ghn = torch::stable::contiguous(grad_h_n);
  const Tensor h0c = torch::stable::contiguous(h0);

  Tensor dh0 = empty_as(x2, {st.N, H});
  Tensor db_ih = empty_as(x2, {G});
  Tensor db_hh = empty_as(x2, {G});
  Tensor dx2, dw_ih, dw_hh;
  bool fused = false;
#if FUSEDRNN_HAVE_FUSED
  if ((dt == ScalarType::Float || fused_backward_16bit(dt, st.N, H, st.R, G, I)) && fused_available() &&
      st.T > 0 && fused_rows_fit(st.N, I, H)) {
    // 16-bit storage: in float, on float copies (see fused_backward_16bit).
    const auto f = [](const Tensor& a) { return converted(a, ScalarType::Float); };
    const Tensor x2f = f(x2);
    // Small outputs: float32 writes them in place, 16-bit through float buffers.
    const auto out = [dt](const Tensor& a) {
      return dt == ScalarType::Float ? a : empty_as(a, {a.numel()}, ScalarType::Float);
    };
    Tensor dx2f = empty_as(x2f, {st.R, I}), dh0f = out(dh0), db_ihf = out(db_ih);
    Tensor db_hhf = out(db_hh);
    Tensor dw_ihf = cached_empty(x2f, {G, I}), dw_hhf = cached_empty(x2f, {G, H});
    gru_backward_fused(st, reverse, f(gy2), f(ghn), x2f, f(y2), f(h0c),
                       f(torch::stable::contiguous(w_ih)), f(torch::stable::contiguous(w_hh)), ws2,
                       dx2f, dh0f, dw_ihf, dw_hhf, db_ihf, db_hhf);
    const auto back = [dt](const Tensor& a) { return converted(a, dt); };
    dx2 = back(dx2f), dw_ih = back(dw_ihf), dw_hh = back(dw_hhf);
    if (dt != ScalarType::Float) {
      torch::stable::copy_(dh0, torch::stable::reshape(dh0f, {st.N, H}));
      torch::stable::copy_(db_ih, db_ihf);
      torch::stable::copy_(db_hh, db_hhf);
    }
    fused = true;
  }
#endif
  if (!fused) {
    // Temporaries over Scratch memory (BlockCache): 78 MB each at T=50, N=256, H=1024.
    ScratchTensor hp_mem(y2, {st.R, H}), dgi_mem(x2, {st.R, G}), dgh_mem(x2, {st.R, G});
    Tensor& hp = hp_mem.tensor;
    Tensor& dgi = dgi_mem.tensor;
    Tensor& dgh = dgh_mem.tensor;
    previous_states(y2, h0c, st, reverse, hp);
    dispatch_floating(dt, "gru_backward", [&](auto tag) {
      using scalar_t = decltype(tag);
      gru_backward_impl<scalar_t>(st, gy2, ghn, hp, w_hh, ws2, reverse, dgi, dgh, dh0);
      column_sum<scalar_t>(dgi.const_data_ptr<scalar_t>(), st.R, G,
                           db_ih.mutable_data_ptr<scalar_t>());
      column_sum<scalar_t>(dgh.const_data_ptr<scalar_t>(), st.R, G,
                           db_hh.mutable_data_ptr<scalar_t>());
    });
    dx2 = times_weight(dgi, w_ih);
    dw_ih = weight_grad(dgi, x2);
    dw_hh = weight_grad(dgh, hp);
  }
  Tensor dx = torch::stable::reshape(dx2, x_in.dim() == 3 ? std::vector<int64_t>{st.T, st.N, I}
                                                          : std::vector<int64_t>{st.R, I});
  return {dx, dh0, dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("gru_forward", TORCH_BOX(&gru_forward));
  m.impl("gru_backward", TORCH_BOX(&gru_backward));
}

}  // namespace fusedrnn
