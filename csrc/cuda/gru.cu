// GRU time-step kernels: one fused pointwise pass per step, forward and backward, laid out
// as in lstm.cu. W_hn h + b_hn is kept apart from W_in x + b_in for the reset gate and
// saved (hn), so the recurrent gradient dgh differs from dgi in the n block.
#include "common.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) gru_forward_kernel(GRUForwardStep p) {
  using A = opmath_t<T>;
  const int64_t H = p.H, Hv = H / V;
  const T* xg = static_cast<const T*>(p.xg);
  const T* hg = static_cast<const T*>(p.hg);
  const T* bi = static_cast<const T*>(p.b_ih);
  const T* bh = static_cast<const T*>(p.b_hh);
  A* ha = static_cast<A*>(p.ha);
  T* y = static_cast<T*>(p.y);
  T* hs = static_cast<T*>(p.h);
  A* ws = static_cast<A*>(p.ws);
  FUSEDRNN_GRID_STRIDE(i, p.B * Hv) {
    const int64_t n = i / Hv, j = (i - n * Hv) * V;
    const T* xr = xg + n * 3 * H + j;
    const T* hr = hg + n * 3 * H + j;
    const Pack<T, V> xr_ = load<V>(xr), xz = load<V>(xr + H), xn = load<V>(xr + 2 * H);
    const Pack<T, V> hr_ = load<V>(hr), hz = load<V>(hr + H), hn = load<V>(hr + 2 * H);
    A pr[V], pz[V], pxn[V], phn[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      pr[k] = up<A>(xr_.v[k]) + up<A>(hr_.v[k]);
      pz[k] = up<A>(xz.v[k]) + up<A>(hz.v[k]);
      pxn[k] = up<A>(xn.v[k]);
      phn[k] = up<A>(hn.v[k]);
    }
    if (bi != nullptr) {  // the CPU path's order: x + h + b_i + b_h
      const Pack<T, V> bir = load<V>(bi + j), biz = load<V>(bi + H + j), bin = load<V>(bi + 2 * H + j);
      const Pack<T, V> bhr = load<V>(bh + j), bhz = load<V>(bh + H + j), bhn = load<V>(bh + 2 * H + j);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        pr[k] = pr[k] + up<A>(bir.v[k]) + up<A>(bhr.v[k]);
        pz[k] = pz[k] + up<A>(biz.v[k]) + up<A>(bhz.v[k]);
        pxn[k] += up<A>(bin.v[k]);
        phn[k] += up<A>(bhn.v[k]);
      }
    }
    Pack<A, V> h = load<V>(ha + n * H + j), r, z, nn, hn_s;
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const auto f = GRUCell<A>::forward(pr[k], pz[k], pxn[k], phn[k], h.v[k]);
      r.v[k] = f.r;
      z.v[k] = f.z;
      nn.v[k] = f.n;
      hn_s.v[k] = phn[k];
      h.v[k] = f.h;
      out.v[k] = down<T>(f.h);
    }
    A* w = ws + n * 4 * H + j;
    store(w, r);
    store(w + H, z);
    store(w + 2 * H, nn);
    store(w + 3 * H, hn_s);
    store(ha + n * H + j, h);
    store(y + n * H + j, out);
    store(hs + n * H + j, out);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) gru_backward_kernel(GRUBackwardStep p) {
  using A = opmath_t<T>;
  const int64_t H = p.H, Hv = H / V;
  const T* gy = static_cast<const T*>(p.gy);
  const T* rec = static_cast<const T*>(p.rec);
  const A* ws = static_cast<const A*>(p.ws);
  A* dds = static_cast<A*>(p.dd);
  T* dgi = static_cast<T*>(p.dgi);
  T* dgh = static_cast<T*>(p.dgh);
  const T* yp = static_cast<const T*>(p.y_prev);
  const T* h0 = static_cast<const T*>(p.h0);
  T* hps = static_cast<T*>(p.hp);
  FUSEDRNN_GRID_STRIDE(i, p.B * Hv) {
    const int64_t n = i / Hv, j = (i - n * Hv) * V;
    const Pack<T, V> g = load<V>(gy + n * H + j), rc = load<V>(rec + n * H + j);
    const Pack<T, V> hp = n < p.keep ? load<V>(yp + n * H + j) : load<V>(h0 + n * H + j);
    Pack<A, V> dd = load<V>(dds + n * H + j);
    const A* w = ws + n * 4 * H + j;
    const Pack<A, V> r = load<V>(w), z = load<V>(w + H), nn = load<V>(w + 2 * H);
    const Pack<A, V> hn = load<V>(w + 3 * H);
    Pack<T, V> dr, dz, dn, dhn;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A dh = up<A>(g.v[k]) + dd.v[k] + up<A>(rc.v[k]);
      const auto b = GRUCell<A>::backward(r.v[k], z.v[k], nn.v[k], hn.v[k], up<A>(hp.v[k]), dh);
      dr.v[k] = down<T>(b.dr);
      dz.v[k] = down<T>(b.dz);
      dn.v[k] = down<T>(b.dn);
      dhn.v[k] = down<T>(b.dhn);
      dd.v[k] = b.dh_prev_direct;
    }
    T* di = dgi + n * 3 * H + j;
    T* dh_ = dgh + n * 3 * H + j;
    store(di, dr);
    store(di + H, dz);
    store(di + 2 * H, dn);
    store(dh_, dr);
    store(dh_ + H, dz);
    store(dh_ + 2 * H, dhn);
    store(dds + n * H + j, dd);
    store(hps + n * H + j, hp);
  }
}

}  // namespace

cudaError_t gru_forward_step(DType dt, const GRUForwardStep& p, cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec =
        vector_ok<T>(p.H, {p.xg, p.hg, p.b_ih, p.b_hh, p.ha, p.y, p.h, p.ws});
    return launch_units(gru_forward_kernel<T, kVec<T>>, gru_forward_kernel<T, 1>,
                        kVec<T>, vec, p, s);
  });
}

cudaError_t gru_backward_step(DType dt, const GRUBackwardStep& p, cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec =
        vector_ok<T>(p.H, {p.gy, p.rec, p.ws, p.dd, p.dgi, p.dgh, p.y_prev, p.h0, p.hp});
    return launch_units(gru_backward_kernel<T, kVec<T>>, gru_backward_kernel<T, 1>,
                        kVec<T>, vec, p, s);
  });
}

}  // namespace fusedrnn::cuda
