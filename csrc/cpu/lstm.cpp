// CPU LSTM layer ops: one layer, one direction, the whole sequence, padded or packed.
// Forward: xg = x @ W_ih^T for all steps in one GEMM; per step hg = h @ W_hh^T over the
// step's active rows, then one fused pass (bias, gates, state update, output, saved
// activations); with projections, h = m @ W_hr^T where m = o * tanh(c).
// Backward: per step one fused pass and dh = dgates @ W_hh; after the loop dx, dW_ih,
// dW_hh (and dW_hr) as large GEMMs and the bias gradient as a fixed-order reduction.
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

// Workspace per step and row: i, f, g, o (activated), then c. In opmath.
constexpr int64_t kLSTMSaved = 5;

// The per-unit kernels take one row's pointers as __restrict parameters: gcc honours restrict
// on parameters (not on locals loaded from a struct), and needs it to vectorize these loops.

// xg, hg: the row's x_t @ W_ih^T and h_prev @ W_hh^T [4H] (hg in float from the fused
// loop, else in the storage type; gate v of unit j at hg[v*hs + j]); b = b_ih + b_hh [4H];
// c: cell state [H], updated in place; y: h_t [H]; w: saved i, f, g, o, c [5H].
// kXg false: xg is not read (the fused loop folded x into hg); kSave false: w is not
// written (inference).
template <bool kXg, bool kSave, typename scalar_t, typename hg_t, typename acc_t>
FUSEDRNN_CPU_CLONES void lstm_forward_scalar(
    const scalar_t* __restrict xg, const hg_t* __restrict hg, int64_t hs, const acc_t* __restrict b,
    acc_t* __restrict c, scalar_t* __restrict y, acc_t* __restrict w, int64_t H, int64_t j0,
    int64_t j1) {
  auto x = [&](int64_t k) { return kXg ? acc_t(xg[k]) : acc_t(0); };
  for (int64_t j = j0; j < j1; ++j) {
    const auto f = LSTMCell<acc_t>::forward(
        x(j) + acc_t(hg[j]) + b[j], x(H + j) + acc_t(hg[hs + j]) + b[H + j],
        x(2 * H + j) + acc_t(hg[2 * hs + j]) + b[2 * H + j],
        x(3 * H + j) + acc_t(hg[3 * hs + j]) + b[3 * H + j], c[j]);
    if constexpr (kSave) {
      w[j] = f.i;
      w[H + j] = f.f;
      w[2 * H + j] = f.g;
      w[3 * H + j] = f.o;
      w[4 * H + j] = f.c;
    }
    c[j] = f.c;
    y[j] = static_cast<scalar_t>(f.h);
  }
}

// One row's forward cell, units [j0, j1): the vector cells (cell_lanes()) where types allow.
template <bool kXg, bool kSave, typename scalar_t, typename hg_t, typename acc_t>
inline void lstm_forward_units(int lanes, const scalar_t* xg, const hg_t* hg, int64_t hs,
                               const acc_t* b, acc_t* c, scalar_t* y, acc_t* w, int64_t H,
                               int64_t j0, int64_t j1) {
#if FUSEDRNN_HAVE_CELLS16
  if constexpr (kCells16Storage<scalar_t> && std::is_same_v<hg_t, float> &&
                std::is_same_v<acc_t, float>) {
    if (lanes == 16) return lstm_forward_units16<kXg, kSave>(xg, hg, hs, b, c, y, w, H, j0, j1);
    if constexpr (std::is_same_v<scalar_t, float>)  // cells8: float storage only
      if (lanes == 8) return lstm_forward_units8<kXg, kSave>(xg, hg, hs, b, c, y, w, H, j0, j1);
  }
#endif
  (void)lanes;
  lstm_forward_scalar<kXg, kSave>(xg, hg, hs, b, c, y, w, H, j0, j1);
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


// A vector of n opmath values read from a contiguous tensor.
template <typename scalar_t>
std::vector<opmath_t<scalar_t>> to_opmath(const Tensor& a) {
  const Tensor c = torch::stable::contiguous(a);
  const scalar_t* p = c.const_data_ptr<scalar_t>();
  return std::vector<opmath_t<scalar_t>>(p, p + c.numel());
}

template <typename scalar_t>
void copy_rows(scalar_t* dst, const scalar_t* src, int64_t n) {
  std::memcpy(dst, src, n * sizeof(scalar_t));
}

// x2 [R,I]; y2 [R,P]; ws2 [R,5H], or [N,5H] scratch rewritten every step when nothing
// is saved for backward (save=false); h_n [N,P]; c_n [N,H]. P = H without projections.
template <typename scalar_t>
void lstm_forward_impl(const Steps& st, const Tensor& x2, const Tensor& w_ih, const Tensor& w_hh,
                       const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                       const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
                       bool reverse, bool save, Tensor& y2, Tensor& h_n, Tensor& c_n,
                       Tensor& ws2) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t N = st.N, H = w_ih.size(0) / 4, P = w_hh.size(1), G = 4 * H;
  const int lanes = cell_lanes();

  InputProjection xg(st, x2, w_ih, reverse);
  const std::vector<acc_t> b_i = bias_vector<scalar_t>(b_ih, G);
  const std::vector<acc_t> b_h = bias_vector<scalar_t>(b_hh, G);
  std::vector<acc_t> bias(G);
  for (int64_t k = 0; k < G; ++k) bias[k] = b_i[k] + b_h[k];

  std::vector<acc_t> c = to_opmath<scalar_t>(c0);      // running cell state [N,H]
  Tensor h = torch::stable::clone(h0);                 // running h [N,P], the GEMM's input
  Tensor m = empty_as(x2, {w_hr ? N : 0, H});          // o * tanh(c) before the projection
  const std::optional<Tensor> w_hr_t = w_hr ? std::optional<Tensor>(t(*w_hr)) : std::nullopt;

  scalar_t* y_p = y2.mutable_data_ptr<scalar_t>();
  scalar_t* h_p = h.mutable_data_ptr<scalar_t>();
  scalar_t* m_p = m.mutable_data_ptr<scalar_t>();
  acc_t* ws_p = ws2.mutable_data_ptr<acc_t>();
  scalar_t* cn_p = c_n.mutable_data_ptr<scalar_t>();
#if FUSEDRNN_HAVE_FUSED
  // float32 while a step's rows fit (fused_rows_fit) and there are enough of them to repay
  // the weight panels (fused_forward_pays), bfloat16 on AMX tiles up to
  // kAmxForwardMacs (amx_forward) or on bf16 products (AVX512-BF16 without AMX) at any
  // batch once there are enough steps (fused_forward_pays_bf16), other 16-bit storage at
  // small steps (fused_16bit).
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    const bool amx = amx_forward<scalar_t>(N, G, H);
    const bool pairs = std::is_same_v<scalar_t, c10::BFloat16> && (amx || bf16_dot_available());
    const bool use = kFloat ? fused_rows_fit(N, x2.size(1), H) && fused_forward_pays(st.R, G, H)
                            : (pairs && (amx || fused_forward_pays_bf16(st.T, G, H))) ||
                                  (!pairs && fused_16bit<scalar_t>(N, G, H));
    if (!w_hr && fused_available() && use) {
      const bool fold = (kFloat || pairs) && !amx && N >= fold_batch(pairs);
      auto cell = [&](int64_t s, int64_t n, int64_t j0, int64_t j1, const float* hg,
                      int64_t hs, const scalar_t* xg_row) {
        const int64_t off = st.offset[reverse ? st.T - 1 - s : s];
        float* ws_row = save ? ws_p + (off + n) * kLSTMSaved * H : nullptr;
        with_flags(!fold, save, [&](auto with_xg, auto with_ws) {
          lstm_forward_units<with_xg, with_ws>(lanes, xg_row, hg, hs, bias.data(), c.data() + n * H,
                                               y_p + (off + n) * H, ws_row, H, j0, j1);
        });
      };
      const Tensor w_ih_c = torch::stable::contiguous(w_ih);
      const Tensor w_hh_c = torch::stable::contiguous(w_hh), h0_c = torch::stable::contiguous(h0);
      with_pairs<scalar_t>(pairs, [&](auto kPairs) {
        fused_forward<4, Slots<0, 1, 2, 3>, Slots<0, 1, 2, 3>, kPairs>(
            st, reverse, H, x2.const_data_ptr<scalar_t>(), x2.size(1),
            w_ih_c.const_data_ptr<scalar_t>(), w_hh_c.const_data_ptr<scalar_t>(),
            h0_c.const_data_ptr<scalar_t>(), y_p, h_n.mutable_data_ptr<scalar_t>(), xg, fold, amx,
            save ? ws_p : nullptr, kLSTMSaved * H, cell);
      });
      for (int64_t k = 0; k < N * H; ++k) cn_p[k] = static_cast<scalar_t>(c[k]);
      return;
    }
  }
  // float32 where the fused loop does not run (CPUs without AVX-512): the row-dot loop
  // at small batches (rowdot_loop.h), the AVX2 panels above them (avx2_panels.h).
  if constexpr (std::is_same_v<scalar_t, float>) {
    const bool rowdot = N <= kRowDotBatch && rowdot_wanted();
    if (!w_hr && (rowdot || (panels_wanted(N, H, kPanelForwardRowsBytes) &&
                              panels_pay(st.T, 4 * H, H)))) {
      auto cell = [&](int64_t s, int64_t n, int64_t j0, int64_t j1, const float* hg, int64_t hs,
                      const float* xg_row) {
        const int64_t off = st.offset[reverse ? st.T - 1 - s : s];
        float* ws_row = save ? ws_p + (off + n) * kLSTMSaved * H : nullptr;
        with_flags(xg_row != nullptr, save, [&](auto with_xg, auto with_ws) {
          lstm_forward_units<with_xg, with_ws>(lanes, xg_row, hg, hs, bias.data(), c.data() + n * H,
                                               y_p + (off + n) * H, ws_row, H, j0, j1);
        });
      };
      avx2_forward<4>(rowdot, false, st, reverse, x2, w_ih, w_hh, h0, y_p,
                      h_n.mutable_data_ptr<float>(), xg, cell);
      for (int64_t k = 0; k < N * H; ++k) cn_p[k] = c[k];
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
    acc_t* ws_s = save ? ws_p + off * kLSTMSaved * H : ws_p;
    scalar_t* out = w_hr ? m_p : y_p + off * H;  // rows of m, or of y (P = H)
    for_each_unit_chunk(B, H, [&](int64_t n, int64_t j0, int64_t j1) {
      lstm_forward_units<true, true>(lanes, xg_p + n * G, hg_p + n * G, H, bias.data(), c.data() + n * H,
                         out + n * H, ws_s + n * kLSTMSaved * H, H, j0, j1);
    });
    if (w_hr) {
      Tensor y_b = rows(y2, off, B);
      few_rows_into(head(m, B), *w_hr_t, y_b);
    }
    copy_rows(h_p, y_p + off * P, B * P);
  }
  torch::stable::copy_(h_n, h);
  for (int64_t k = 0; k < N * H; ++k) cn_p[k] = static_cast<scalar_t>(c[k]);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& x_a, const Tensor& w_ih_a, const Tensor& w_hh_a, std::optional<Tensor> b_ih_a,
    std::optional<Tensor> b_hh_a, std::optional<Tensor> w_hr_a, const Tensor& h0_a,
    const Tensor& c0_a, std::optional<Tensor> batch_sizes, bool reverse, bool save) {
  const Tensor x_in = detach(x_a), w_ih = detach(w_ih_a), w_hh = detach(w_hh_a);
  const Tensor h0 = detach(h0_a), c0 = detach(c0_a);
  const std::optional<Tensor> b_ih = detach(b_ih_a), b_hh = detach(b_hh_a), w_hr = detach(w_hr_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_ih.size(0) / 4, P = w_hh.size(1);
  check_cpu_input(x_in, "x", x_in, x_in.dim());
  check_layer_args(x_in, w_ih, w_hh, b_ih, b_hh, h0, 4, H, st);
  check_cpu_input(c0, "c0", x_in, 2);
  check_shape(c0, "c0", {st.N, H});
  if (w_hr) {
    check_cpu_input(*w_hr, "w_hr", x_in, 2);
    check_shape(*w_hr, "w_hr", {P, H});
  } else {
    STD_TORCH_CHECK(P == H, "fusedrnn: w_hh must be [4H, H] without w_hr");
  }
  const ScalarType dt = x_in.scalar_type();
  if (upcast_16bit(dt, st.R)) {  // 16-bit storage on float32 copies (upcast_16bit)
    auto [y, h_n, c_n, ws] =
        lstm_forward(to_float(x_in), to_float(w_ih), to_float(w_hh), to_float(b_ih),
                     to_float(b_hh), to_float(w_hr), to_float(h0), to_float(c0), batch_sizes,
                     reverse, save);
    return {converted(y, dt), converted(h_n, dt), converted(c_n, dt), ws};
  }
  const Tensor x = torch::stable::contiguous(x_in);
  const Tensor x2 = torch::stable::reshape(x, {st.R, x.size(x.dim() - 1)});
  Tensor y2 = empty_as(x, {st.R, P});
  Tensor h_n = empty_as(x, {st.N, P});
  Tensor c_n = empty_as(x, {st.N, H});
  Tensor ws2 = cached_empty(x, {save ? st.R : st.N, kLSTMSaved * H}, opmath_type(dt));
  dispatch_floating(dt, "lstm_forward", [&](auto tag) {
    lstm_forward_impl<decltype(tag)>(st, x2, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, reverse, save,
                                     y2, h_n, c_n, ws2);
  });
  if (!save) ws2 = empty_as(x, {0}, opmath_type(dt));
  if (st.packed || !save) {
    return {st.packed ? y2 : torch::stable::reshape(y2, {st.T, st.N, P}), h_n, c_n, ws2};
  }
  return {torch::stable::reshape(y2, {st.T, st.N, P}), h_n, c_n,
          torch::stable::reshape(ws2, {st.T, st.N, kLSTMSaved * H})};
}

// The GEMM loop's backward. gy2 [R,P]; dgates [R,4H]; with projections also dh_all [R,P]
// (the grad of each step's h, all sources summed) for dW_hr. dh0, dc0 [N,P], [N,H] filled.
template <typename scalar_t>
void lstm_backward_impl(const Steps& st, const Tensor& gy2, const Tensor& ghn, const Tensor& gcn,
                        const Tensor& c0, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
                        const Tensor& ws2, bool reverse, Tensor& dgates, Tensor& dh_all,
                        Tensor& dh0, Tensor& dc0) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t N = st.N, H = w_hh.size(0) / 4, P = w_hh.size(1), G = 4 * H;

  std::vector<acc_t> dc = to_opmath<scalar_t>(gcn);  // grad of c, carried back per row
#if FUSEDRNN_HAVE_FUSED
  // float32 where the fused loop does not run: the row-dot loop's workers at small
  // batches, the AVX2 panels above them (avx2_panels.h).
  if constexpr (std::is_same_v<scalar_t, float>) {
    const bool rowdot = rowdot_backward_wanted(N, G, H);
    if (!w_hr &&
        (rowdot || (panels_wanted(N, H, kPanelRowsBytes) && panel_backward_pays(st.T, N)))) {
      const std::vector<float> c_first = to_opmath<float>(c0);
      const float* ws_p = ws2.const_data_ptr<float>();
      const float* gy_p = gy2.const_data_ptr<float>();
      float* dg_p = dgates.mutable_data_ptr<float>();
      Tensor dh = torch::stable::clone(ghn);
      float* dh_p = dh.mutable_data_ptr<float>();
      const Tensor w_hh_c = torch::stable::contiguous(w_hh);
      with_backward_loop(rowdot, st, reverse, G, H, w_hh_c.const_data_ptr<float>(), dg_p, dh_p,
                      [&](int64_t s, int64_t j0, int64_t j1) {
                        const int64_t t = reverse ? s : st.T - 1 - s, off = st.offset[t];
                        for (int64_t n = 0; n < st.batch[t]; ++n) {
                          const float* cp =
                              n < st.carried(t, reverse)
                                  ? ws_p + (st.offset[st.prev(t, reverse)] + n) * kLSTMSaved * H +
                                        4 * H
                                  : c_first.data() + n * H;
                          lstm_backward_units(gy_p + (off + n) * H, dh_p + n * H,
                                              ws_p + (off + n) * kLSTMSaved * H, cp,
                                              dc.data() + n * H, dg_p + (off + n) * G, H, j0, j1);
                        }
                      });
      torch::stable::copy_(dh0, dh);
      float* dc0_p = dc0.mutable_data_ptr<float>();
      for (int64_t k = 0; k < N * H; ++k) dc0_p[k] = dc[k];
      return;
    }
  }
#endif
  const std::vector<acc_t> c_first = to_opmath<scalar_t>(c0);
  // c_{t-1} of row n at time t: saved by the previous step (rows of stride 5H), or c0.
  const acc_t* ws_p = ws2.const_data_ptr<acc_t>();
  auto c_prev = [&](int64_t t, int64_t n) {
    return n < st.carried(t, reverse)
               ? ws_p + (st.offset[st.prev(t, reverse)] + n) * kLSTMSaved * H + 4 * H
               : c_first.data() + n * H;
  };
  const scalar_t* gy_p = gy2.const_data_ptr<scalar_t>();
  scalar_t* dg_p = dgates.mutable_data_ptr<scalar_t>();
  StepWeight w_hh_tc(right_weight(w_hh, st.R), true);  // dG W_hh
  Tensor dh = torch::stable::clone(ghn);  // grad of h from later steps [N,P], per row
  Tensor dm = empty_as(gy2, {w_hr ? N : 0, H});
  Tensor zeros = torch::stable::new_zeros(gy2, {w_hr ? N : 0, H});
  scalar_t* dh_p = dh.mutable_data_ptr<scalar_t>();
  scalar_t* dha_p = dh_all.mutable_data_ptr<scalar_t>();
  for (int64_t s = 0; s < st.T; ++s) {
    const int64_t tt = reverse ? s : st.T - 1 - s;
    const int64_t B = st.batch[tt], off = st.offset[tt];
    // The two terms the cell's dh sums: (gy, dh) without projections; with them,
    // (dm, 0) where dm = (gy + dh) @ W_hr.
    const scalar_t* a = gy_p + off * P;
    const scalar_t* b = dh_p;
    if (w_hr) {
      scalar_t* d = dha_p + off * P;
      for (int64_t k = 0; k < B * P; ++k) d[k] = static_cast<scalar_t>(acc_t(a[k]) + acc_t(b[k]));
      Tensor dm_b = head(dm, B);
      few_rows_into(rows(dh_all, off, B), *w_hr, dm_b);
      a = dm.const_data_ptr<scalar_t>();
      b = zeros.const_data_ptr<scalar_t>();
    }
    for_each_unit_chunk(B, H, [&](int64_t n, int64_t j0, int64_t j1) {
      lstm_backward_units(a + n * H, b + n * H, ws_p + (off + n) * kLSTMSaved * H, c_prev(tt, n),
                          dc.data() + n * H, dg_p + (off + n) * G, H, j0, j1);
    });
    Tensor dh_b = head(dh, B);
    torch::stable::copy_(dh_b, w_hh_tc(rows(dgates, off, B)));
  }
  torch::stable::copy_(dh0, dh);
  scalar_t* dc0_p = dc0.mutable_data_ptr<scalar_t>();
  for (int64_t k = 0; k < N * H; ++k) dc0_p[k] = static_cast<scalar_t>(dc[k]);
}

#if FUSEDRNN_HAVE_FUSED
// The fused loop's backward (float32, no projections), every gradient in one pass
// (fused_backward.h). All tensors contiguous; x2 [R,I], y2 [R,H], ws2 [R,5H].
void lstm_backward_fused(const Steps& st, bool reverse, const Tensor& gy2, const Tensor& ghn,
                         const Tensor& gcn, const Tensor& c0, const Tensor& x2, const Tensor& y2,
                         const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                         const Tensor& ws2, Tensor& dx2, Tensor& dh0, Tensor& dc0,
                         Tensor& dw_ih, Tensor& dw_hh, Tensor& db) {
  const int64_t N = st.N, H = w_hh.size(1), G = 4 * H;
  std::vector<float> dc = to_opmath<float>(gcn);  // grad of c, carried back per row
  const std::vector<float> c_first = to_opmath<float>(c0);
  const float* ws_p = ws2.const_data_ptr<float>();
  const float* gy_p = gy2.const_data_ptr<float>();
  auto cell = [&](int64_t s, int64_t n, int64_t j0, int64_t j1, const float* rec, float* dg,
                  float*) {
    const int64_t t = reverse ? s : st.T - 1 - s, r = st.offset[t] + n;
    // c_{t-1}: saved by the previous step, or c0
    const float* cp = n < st.carried(t, reverse)
                          ? ws_p + (st.offset[st.prev(t, reverse)] + n) * kLSTMSaved * H + 4 * H
                          : c_first.data() + n * H;
    lstm_backward_units(gy_p + r * H, rec, ws_p + r * kLSTMSaved * H, cp, dc.data() + n * H, dg,
                        H, j0, j1);
  };
  std::vector<double> db_sum(G, 0.0);
  fused_backward(st, reverse, 4, H, x2.size(1), x2.const_data_ptr<float>(),
                 y2.const_data_ptr<float>(), h0.const_data_ptr<float>(),
                 w_ih.const_data_ptr<float>(), w_hh.const_data_ptr<float>(),
                 ghn.const_data_ptr<float>(), false,
                 {dx2.mutable_data_ptr<float>(), dh0.mutable_data_ptr<float>(),
                  dw_ih.mutable_data_ptr<float>(), dw_hh.mutable_data_ptr<float>(),
                  db_sum.data(), nullptr},
                 cell);
  float* dc0_p = dc0.mutable_data_ptr<float>();
  for (int64_t k = 0; k < N * H; ++k) dc0_p[k] = dc[k];
  float* db_p = db.mutable_data_ptr<float>();
  for (int64_t k = 0; k < G; ++k) db_p[k] = static_cast<float>(db_sum[k]);
}
#endif

// m = o * tanh(c) of every row, from the workspace: the input of the projection.
template <typename scalar_t>
Tensor projection_inputs(const Tensor& ws2, int64_t H, const Tensor& like) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t R = ws2.size(0);
  Tensor m = empty_as(like, {R, H});
  const acc_t* w = ws2.const_data_ptr<acc_t>();
  scalar_t* out = m.mutable_data_ptr<scalar_t>();
  parallel_rows(R, std::max<int64_t>(1, kPointwiseGrain / H), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const acc_t* row = w + r * kLSTMSaved * H;
      for (int64_t j = 0; j < H; ++j)
        out[r * H + j] = static_cast<scalar_t>(row[3 * H + j] * tanh_(row[4 * H + j]));
    }
  });
  return m;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_y_a, const Tensor& grad_h_n_a, const Tensor& grad_c_n_a, const Tensor& x_a,
    const Tensor& w_ih_a, const Tensor& w_hh_a, std::optional<Tensor> w_hr_a, const Tensor& h0_a,
    const Tensor& c0_a, const Tensor& y_a, const Tensor& ws, std::optional<Tensor> batch_sizes,
    bool reverse) {
  const Tensor grad_y = detach(grad_y_a), grad_h_n = detach(grad_h_n_a);
  const Tensor grad_c_n = detach(grad_c_n_a), x_in = detach(x_a), w_ih = detach(w_ih_a);
  const Tensor w_hh = detach(w_hh_a), h0 = detach(h0_a), c0_in = detach(c0_a), y = detach(y_a);
  const std::optional<Tensor> w_hr = detach(w_hr_a);
  const Steps st = make_steps(x_in, batch_sizes);
  const int64_t H = w_ih.size(0) / 4, P = w_hh.size(1), G = 4 * H;
  const int64_t I = x_in.size(x_in.dim() - 1);
  const ScalarType dt = x_in.scalar_type();
  check_cpu_input(x_in, "x", x_in, x_in.dim());
  check_cpu_input(grad_y, "grad_y", x_in, x_in.dim());
  STD_TORCH_CHECK(grad_y.numel() == st.R * P && y.numel() == st.R * P,
                  "fusedrnn: grad_y and y must have the shape of y");
  STD_TORCH_CHECK(ws.numel() == st.R * kLSTMSaved * H, "fusedrnn: wrong workspace size");
  if (upcast_16bit(dt)) {  // 16-bit storage on float32 copies (upcast_16bit)
    auto [dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr] =
        lstm_backward(to_float(grad_y), to_float(grad_h_n), to_float(grad_c_n), to_float(x_in),
                      to_float(w_ih), to_float(w_hh), to_float(w_hr), to_float(h0),
                      to_float(c0_in), to_float(y), ws, batch_sizes, reverse);
    return {converted(dx, dt),    converted(dh0, dt),   converted(dc0, dt), converted(dw_ih, dt),
            converted(dw_hh, dt), converted(db, dt),    converted(dw_hr, dt)};
  }
  const Tensor x2 = torch::stable::reshape(torch::stable::contiguous(x_in), {st.R, I});
  const Tensor gy2 = torch::stable::reshape(torch::stable::contiguous(grad_y), {st.R, P});
  const Tensor y2 = torch::stable::reshape(torch::stable::contiguous(y), {st.R, P});
  const Tensor ws2 = torch::stable::reshape(torch::stable::contiguous(ws), {st.R, kLSTMSaved * H});
  const Tensor ghn = torch::stable::contiguous(grad_h_n);
  const Tensor gcn = torch::stable::contiguous(grad_c_n);
  const Tensor c0 = torch::stable::contiguous(c0_in);
  const Tensor h0c = torch::stable::contiguous(h0);

  Tensor dh0 = empty_as(x2, {st.N, P});
  Tensor dc0 = empty_as(x2, {st.N, H});
  Tensor db = empty_as(x2, {G});
  Tensor dw_hr = empty_as(x2, {0});
  Tensor dx2, dw_ih, dw_hh;
  bool fused = false;
#if FUSEDRNN_HAVE_FUSED
  if ((dt == ScalarType::Float || fused_backward_16bit(dt, st.N, H, st.R, G, I)) && !w_hr &&
      fused_available() && st.T > 0 && fused_rows_fit(st.N, I, H)) {
    // 16-bit storage: in float, on float copies (see fused_backward_16bit).
    const auto f = [](const Tensor& a) { return converted(a, ScalarType::Float); };
    const Tensor x2f = f(x2);
    // Small outputs: float32 writes them in place, 16-bit through float buffers.
    const auto out = [dt](const Tensor& a) {
      return dt == ScalarType::Float ? a : empty_as(a, {a.numel()}, ScalarType::Float);
    };
    Tensor dx2f = empty_as(x2f, {st.R, I}), dh0f = out(dh0), dc0f = out(dc0), dbf = out(db);
    Tensor dw_ihf = cached_empty(x2f, {G, I}), dw_hhf = cached_empty(x2f, {G, P});
    lstm_backward_fused(st, reverse, f(gy2), f(ghn), f(gcn), f(c0), x2f, f(y2), f(h0c),
                        f(torch::stable::contiguous(w_ih)), f(torch::stable::contiguous(w_hh)),
                        ws2, dx2f, dh0f, dc0f, dw_ihf, dw_hhf, dbf);
    const auto back = [dt](const Tensor& a) { return converted(a, dt); };
    dx2 = back(dx2f), dw_ih = back(dw_ihf), dw_hh = back(dw_hhf);
    if (dt != ScalarType::Float) {
      torch::stable::copy_(dh0, torch::stable::reshape(dh0f, {st.N, P}));
      torch::stable::copy_(dc0, torch::stable::reshape(dc0f, {st.N, H}));
      torch::stable::copy_(db, dbf);
    }
    fused = true;
  }
#endif
  if (!fused) {
    // Temporaries over Scratch memory (BlockCache): 105 MB each at T=50, N=256, H=1024.
    ScratchTensor dgates_mem(x2, {st.R, G}), dh_all_mem(x2, {w_hr ? st.R : 0, P});
    ScratchTensor hp_mem(y2, {st.R, P});
    Tensor& dgates = dgates_mem.tensor;
    Tensor& dh_all = dh_all_mem.tensor;
    dispatch_floating(dt, "lstm_backward", [&](auto tag) {
      using scalar_t = decltype(tag);
      lstm_backward_impl<scalar_t>(st, gy2, ghn, gcn, c0, w_hh, w_hr, ws2, reverse, dgates,
                                   dh_all, dh0, dc0);
      column_sum<scalar_t>(dgates.const_data_ptr<scalar_t>(), st.R, G,
                           db.mutable_data_ptr<scalar_t>());
      if (w_hr) dw_hr = weight_grad(dh_all, projection_inputs<scalar_t>(ws2, H, x2));
    });
    dx2 = times_weight(dgates, w_ih);
    previous_states(y2, h0c, st, reverse, hp_mem.tensor);
    std::tie(dw_ih, dw_hh) = weight_grads(dgates, x2, hp_mem.tensor);
  }
  Tensor dx = torch::stable::reshape(dx2, x_in.dim() == 3 ? std::vector<int64_t>{st.T, st.N, I}
                                                          : std::vector<int64_t>{st.R, I});
  return {dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fusedrnn, CPU, m) {
  m.impl("lstm_forward", TORCH_BOX(&lstm_forward));
  m.impl("lstm_backward", TORCH_BOX(&lstm_backward));
}

}  // namespace fusedrnn
