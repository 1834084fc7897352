// LSTM time-step kernels: one fused pointwise pass per step, forward and backward. The
// step's GEMMs run in torch (cuBLAS) before each launch; see ops.cpp. Each thread owns V
// consecutive units of one row (V = 16 bytes of storage where H and the pointers allow,
// else 1) and reads every gate of them, so all loads and stores are coalesced.
#include "common.cuh"

namespace fusedrnn::cuda {
namespace {

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) lstm_forward_kernel(LSTMForwardStep p) {
  using A = opmath_t<T>;
  const int64_t H = p.H, Hv = H / V;
  const T* xg = static_cast<const T*>(p.xg);
  const T* hg = static_cast<const T*>(p.hg);
  const T* bi = static_cast<const T*>(p.b_ih);
  const T* bh = static_cast<const T*>(p.b_hh);
  A* cs = static_cast<A*>(p.c);
  T* out = static_cast<T*>(p.out);
  T* hs = static_cast<T*>(p.h);
  A* ws = static_cast<A*>(p.ws);
  FUSEDRNN_GRID_STRIDE(i, p.B * Hv) {
    const int64_t n = i / Hv, j = (i - n * Hv) * V;
    A pre[4][V];
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const Pack<T, V> a = load<V>(xg + n * 4 * H + g * H + j);
      const Pack<T, V> b = load<V>(hg + n * 4 * H + g * H + j);
#pragma unroll
      for (int k = 0; k < V; ++k) pre[g][k] = up<A>(a.v[k]) + up<A>(b.v[k]);
      if (bi != nullptr) {  // b_ih + b_hh, added as the CPU path adds them
        const Pack<T, V> u = load<V>(bi + g * H + j);
        const Pack<T, V> w = load<V>(bh + g * H + j);
#pragma unroll
        for (int k = 0; k < V; ++k) pre[g][k] += up<A>(u.v[k]) + up<A>(w.v[k]);
      }
    }
    Pack<A, V> c = load<V>(cs + n * H + j), gi, gf, gg, go;
    Pack<T, V> h;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const auto f = LSTMCell<A>::forward(pre[0][k], pre[1][k], pre[2][k], pre[3][k], c.v[k]);
      gi.v[k] = f.i;
      gf.v[k] = f.f;
      gg.v[k] = f.g;
      go.v[k] = f.o;
      c.v[k] = f.c;
      h.v[k] = down<T>(f.h);
    }
    A* w = ws + n * 5 * H + j;
    store(w, gi);
    store(w + H, gf);
    store(w + 2 * H, gg);
    store(w + 3 * H, go);
    store(w + 4 * H, c);
    store(cs + n * H + j, c);
    store(out + n * H + j, h);
    if (hs != nullptr) store(hs + n * H + j, h);
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) lstm_backward_kernel(LSTMBackwardStep p) {
  using A = opmath_t<T>;
  const int64_t H = p.H, P = p.P, Hv = H / V;
  const T* gy = static_cast<const T*>(p.gy);
  const T* dn = static_cast<const T*>(p.dh_next);
  const A* ws = static_cast<const A*>(p.ws);
  const A* wp = static_cast<const A*>(p.ws_prev);
  const A* c0 = static_cast<const A*>(p.c0);
  A* dcs = static_cast<A*>(p.dc);
  T* dg = static_cast<T*>(p.dg);
  const T* yp = static_cast<const T*>(p.y_prev);
  const T* h0 = static_cast<const T*>(p.h0);
  T* hp = static_cast<T*>(p.hp);
  FUSEDRNN_GRID_STRIDE(i, p.B * Hv) {
    const int64_t n = i / Hv, j = (i - n * Hv) * V;
    A dh[V];
    const Pack<T, V> a = load<V>(gy + n * H + j);
#pragma unroll
    for (int k = 0; k < V; ++k) dh[k] = up<A>(a.v[k]);
    if (dn != nullptr) {
      const Pack<T, V> b = load<V>(dn + n * H + j);
#pragma unroll
      for (int k = 0; k < V; ++k) dh[k] += up<A>(b.v[k]);
    }
    const A* w = ws + n * 5 * H + j;
    const Pack<A, V> gi = load<V>(w), gf = load<V>(w + H), gg = load<V>(w + 2 * H);
    const Pack<A, V> go = load<V>(w + 3 * H), c = load<V>(w + 4 * H);
    const Pack<A, V> cp = n < p.keep ? load<V>(wp + n * 5 * H + 4 * H + j) : load<V>(c0 + n * H + j);
    Pack<A, V> dc = load<V>(dcs + n * H + j);
    Pack<T, V> di, df, dgg, dgo;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const auto b = LSTMCell<A>::backward(gi.v[k], gf.v[k], gg.v[k], go.v[k], c.v[k], cp.v[k],
                                           dh[k], dc.v[k]);
      di.v[k] = down<T>(b.di);
      df.v[k] = down<T>(b.df);
      dgg.v[k] = down<T>(b.dg);
      dgo.v[k] = down<T>(b.do_);
      dc.v[k] = b.dc_prev;
    }
    T* d = dg + n * 4 * H + j;
    store(d, di);
    store(d + H, df);
    store(d + 2 * H, dgg);
    store(d + 3 * H, dgo);
    store(dcs + n * H + j, dc);
    // h_prev of this row for the W_hh gradient: its P columns, in strides of H.
    const T* src = n < p.keep ? yp + n * P : h0 + n * P;
    for (int64_t c = j; c < P; c += H) {
#pragma unroll
      for (int k = 0; k < V; ++k)
        if (c + k < P) hp[n * P + c + k] = src[c + k];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    projection_inputs_kernel(const opmath_t<T>* ws, T* out, int64_t R, int64_t H) {
  FUSEDRNN_GRID_STRIDE(i, R * H) {
    const int64_t r = i / H, j = i - r * H;
    const opmath_t<T>* w = ws + r * 5 * H;
    out[i] = down<T>(w[3 * H + j] * tanh_(w[4 * H + j]));
  }
}

}  // namespace

cudaError_t lstm_forward_step(DType dt, const LSTMForwardStep& p, cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec =
        vector_ok<T>(p.H, {p.xg, p.hg, p.b_ih, p.b_hh, p.c, p.out, p.h, p.ws});
    return launch_units(lstm_forward_kernel<T, kVec<T>>, lstm_forward_kernel<T, 1>,
                        kVec<T>, vec, p, s);
  });
}

cudaError_t lstm_backward_step(DType dt, const LSTMBackwardStep& p, cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec =
        vector_ok<T>(p.H, {p.gy, p.dh_next, p.ws, p.ws_prev, p.c0, p.dc, p.dg});
    return launch_units(lstm_backward_kernel<T, kVec<T>>, lstm_backward_kernel<T, 1>,
                        kVec<T>, vec, p, s);
  });
}

cudaError_t lstm_projection_inputs(DType dt, const void* ws, void* out, int64_t R, int64_t H,
                                   cudaStream_t s) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if (R * H == 0) return cudaSuccess;
    projection_inputs_kernel<T><<<grid_for(R * H), kThreads, 0, s>>>(
        static_cast<const opmath_t<T>*>(ws), static_cast<T*>(out), R, H);
    return cudaGetLastError();
  });
}

}  // namespace fusedrnn::cuda
