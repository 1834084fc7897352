// The cell math, written once. One (batch, unit) element per call, computed in
// opmath (float, or double for float64) whatever the storage type. Gate order is
// torch's: LSTM i, f, g, o; GRU r, z, n with b_hn inside r * (W_hn h + b_hn).
// Free of torch so that the CPU path, the CUDA path and the C++ unit tests share it.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HOST_DEVICE inline
#endif

namespace fusedrnn {

template <typename T>
FUSEDRNN_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
struct LSTMCell {
  // Activated gates and the new state of one unit.
  struct Forward {
    T i, f, g, o, c, h;
  };
  // Gradients with respect to the four gate pre-activations, and to c_prev.
  struct Backward {
    T di, df, dg, do_, dc_prev;
  };

  // c' = f*c + i*g ; h' = o*tanh(c')
  static FUSEDRNN_HOST_DEVICE Forward forward(T pi, T pf, T pg, T po, T c_prev) {
    Forward r;
    r.i = sigmoid(pi);
    r.f = sigmoid(pf);
    r.g = std::tanh(pg);
    r.o = sigmoid(po);
    r.c = r.f * c_prev + r.i * r.g;
    r.h = r.o * std::tanh(r.c);
    return r;
  }

  // dh, dc: total gradients flowing into h' and c' of this step.
  static FUSEDRNN_HOST_DEVICE Backward backward(
      T i, T f, T g, T o, T c, T c_prev, T dh, T dc) {
    const T tc = std::tanh(c);
    const T dct = dc + dh * o * (T(1) - tc * tc);
    Backward r;
    r.do_ = dh * tc * o * (T(1) - o);
    r.di = dct * g * i * (T(1) - i);
    r.df = dct * c_prev * f * (T(1) - f);
    r.dg = dct * i * (T(1) - g * g);
    r.dc_prev = dct * f;
    return r;
  }
};

template <typename T>
struct GRUCell {
  struct Forward {
    T r, z, n, h;
  };
  struct Backward {
    T dr, dz, dn;    // gradients of the r, z pre-activations and of (W_in x + b_in)
    T dhn;           // gradient of (W_hn h + b_hn)
    T dh_prev_direct;  // the part of dh_prev that does not go through W_hh
  };

  // pr, pz: full pre-activations; xn = W_in x + b_in; hn = W_hn h + b_hn.
  // n = tanh(xn + r*hn) ; h' = (1-z)*n + z*h
  static FUSEDRNN_HOST_DEVICE Forward forward(T pr, T pz, T xn, T hn, T h_prev) {
    Forward r;
    r.r = sigmoid(pr);
    r.z = sigmoid(pz);
    r.n = std::tanh(xn + r.r * hn);
    r.h = r.n + r.z * (h_prev - r.n);
    return r;
  }

  static FUSEDRNN_HOST_DEVICE Backward backward(T r, T z, T n, T hn, T h_prev, T dh) {
    Backward b;
    const T dn_pre = dh * (T(1) - z) * (T(1) - n * n);
    b.dn = dn_pre;
    b.dhn = dn_pre * r;
    b.dr = dn_pre * hn * r * (T(1) - r);
    b.dz = dh * (h_prev - n) * z * (T(1) - z);
    b.dh_prev_direct = dh * z;
    return b;
  }
};

}  // namespace fusedrnn
