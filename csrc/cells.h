// The cell math, written once. One (batch, unit) element per call, computed in
// opmath (float, or double for float64) whatever the storage type. Gate order is
// torch's: LSTM i, f, g, o; GRU r, z, n with b_hn inside r * (W_hn h + b_hn).
// Free of torch so that the CPU path, the CUDA path and the C++ unit tests share it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced inline so the cell math lands inside the CPU's vectorized per-unit loops.
#define FUSEDRNN_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FUSEDRNN_HOST_DEVICE inline
#endif

namespace fusedrnn {

// exp and tanh. float on the host uses branch-free polynomials (Cephes' expf and
// tanhf coefficients, within 2 ulp of the correctly rounded result over the whole
// range) so that the CPU's per-unit loops vectorize; libm's scalar calls would
// dominate the step. double and the GPU use the library functions.
FUSEDRNN_HOST_DEVICE double exp_(double x) { return std::exp(x); }
FUSEDRNN_HOST_DEVICE double tanh_(double x) { return std::tanh(x); }

#if defined(__CUDA_ARCH__)
FUSEDRNN_HOST_DEVICE float exp_(float x) { return expf(x); }
FUSEDRNN_HOST_DEVICE float tanh_(float x) { return tanhf(x); }
#else
FUSEDRNN_HOST_DEVICE float exp_(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // x = n*ln2 + r, |r| <= ln2/2; n rounded to nearest by the 1.5*2^23 trick.
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

FUSEDRNN_HOST_DEVICE float tanh_(float x) {
  // |x| < 0.625: odd polynomial (no cancellation near 0); else 1 - 2/(e^2|x| + 1).
  const float a = std::fabs(x);
  const float z = x * x;
  float q = -5.70498872745e-3f;
  q = q * z + 2.06390887954e-2f;
  q = q * z - 5.37397155531e-2f;
  q = q * z + 1.33314422036e-1f;
  q = q * z - 3.33332819422e-1f;
  const float small = x + x * z * q;
  const float big = 1.0f - 2.0f / (exp_(2.0f * a) + 1.0f);
  return a < 0.625f ? small : (x < 0.0f ? -big : big);
}
#endif

template <typename T>
FUSEDRNN_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
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
    r.g = tanh_(pg);
    r.o = sigmoid(po);
    r.c = r.f * c_prev + r.i * r.g;
    r.h = r.o * tanh_(r.c);
    return r;
  }

  // dh, dc: total gradients flowing into h' and c' of this step.
  static FUSEDRNN_HOST_DEVICE Backward backward(
      T i, T f, T g, T o, T c, T c_prev, T dh, T dc) {
    const T tc = tanh_(c);
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
    r.n = tanh_(xn + r.r * hn);
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
