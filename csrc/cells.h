// The cell math, written once. One (batch, unit) element per call, computed in
// opmath (float, or double for float64) whatever the storage type. Gate order is
// torch's: LSTM i, f, g, o; GRU r, z, n with b_hn inside r * (W_hn h + b_hn).
// Free of torch so that the CPU path, the CUDA path and the C++ unit tests share it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#if defined(__CUDACC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced inline so the cell math lands inside the CPU's vectorized per-unit loops.
#define FUSEDRNN_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FUSEDRNN_HOST_DEVICE inline
#endif

namespace fusedrnn {

// exp and tanh. On the host they are branch-free polynomials (Cephes' coefficients,
// within a few ulp of the correctly rounded result, csrc/tests/test_cells.cpp) so that
// the CPU's per-unit loops vectorize: libm's scalar calls would dominate the step
// (14% of a float64 LSTM forward). The GPU uses the library functions.
#if defined(__CUDA_ARCH__)
FUSEDRNN_HOST_DEVICE double exp_(double x) { return exp(x); }
FUSEDRNN_HOST_DEVICE double tanh_(double x) { return tanh(x); }
FUSEDRNN_HOST_DEVICE float exp_(float x) { return expf(x); }
FUSEDRNN_HOST_DEVICE float tanh_(float x) { return tanhf(x); }
#else
FUSEDRNN_HOST_DEVICE double exp_(double x) {
  // Clamped so that 2^n stays a normal double: e^709 and e^-708 stand in for overflow
  // and underflow, which sigmoid and tanh turn into exact 0 and 1 all the same.
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  // x = n*ln2 + r; n rounded by the 1.5*2^52 trick, whose low mantissa bits then hold n.
  constexpr double kShift = 6755399441055744.0;
  const double t = x * 1.4426950408889634074 + kShift;
  const double n = t - kShift;
  const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  // Pade form e^r = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
  const double rr = r * r;
  const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                        9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * p / (q - p);
  int64_t tb, sb;
  std::memcpy(&tb, &t, sizeof(t));
  std::memcpy(&sb, &kShift, sizeof(kShift));
  const int64_t bits = ((tb - sb) + 1023) << 52;  // 2^n
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

FUSEDRNN_HOST_DEVICE double tanh_(double x) {
  // |x| < 0.625: x + x^3 P(x^2)/Q(x^2) (no cancellation near 0); else 1 - 2/(e^2|x| + 1).
  const double a = std::fabs(x);
  const double z = x * x;
  const double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z -
                   1.61468768441708447952e3;
  const double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z +
                   4.84406305325125486048e3;
  const double small = x + x * z * p / q;
  const double big = 1.0 - 2.0 / (exp_(2.0 * a) + 1.0);
  return a < 0.625 ? small : (x < 0.0 ? -big : big);
}

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


// The forward cells on 16 floats at a time (AVX-512), for the CPU's per-unit loops on
// CPUs that have it (x86-64-v4). The same math as above: exp_'s range reduction and
// polynomial, tanh_'s two branches; n rounded by vrndscaleps and 2^n applied by
// vscalefps, and each division 1/d of sigmoid and tanh made as vrcp14ps's estimate
// (relative error < 2^-14) and one Newton step, r + r(1 - d r). Within 1.0 (exp),
// 1.6 (sigmoid), 2.3 (tanh) float eps of the true value over their whole range
// (test_cells.cpp); NaN in gives NaN out. Written as scalar code, gcc vectorized exp_ and
// tanh_ into 5 divisions a unit and the integer steps of 2^n: the LSTM forward cell took
// 2.40 ns a unit on one Zen 4 core, these 1.9.
#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__GNUC__)
#define FUSEDRNN_HAVE_CELLS16 1
#define FUSEDRNN_CELLS16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define FUSEDRNN_CELLS16 inline __attribute__((always_inline)) FUSEDRNN_CELLS16_TARGET

namespace cells16 {

// (The masked forms, all lanes, with a source operand: gcc 12's unmasked min, max,
// rcp14, scalef and roundscale pass an "undefined" vector that -Wall reports as
// maybe-uninitialized wherever they inline.)
constexpr __mmask16 kAll = 0xFFFF;

FUSEDRNN_CELLS16 __m512 exp(__m512 x) {
  // Clamped as exp_ (max(lo, x): a NaN x is vmaxps's second operand, so it passes).
  x = _mm512_mask_max_ps(x, kAll, _mm512_set1_ps(-87.0f), x);
  x = _mm512_mask_min_ps(x, kAll, _mm512_set1_ps(88.0f), x);
  const __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n =
      _mm512_mask_roundscale_ps(y, kAll, y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_mask_scalef_ps(p, kAll, p, n);
}

// 1/d: the estimate and one Newton step.
FUSEDRNN_CELLS16 __m512 recip(__m512 d) {
  const __m512 r = _mm512_mask_rcp14_ps(d, kAll, d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

FUSEDRNN_CELLS16 __m512 sigmoid(__m512 x) {
  return recip(_mm512_add_ps(_mm512_set1_ps(1.0f), exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

FUSEDRNN_CELLS16 __m512 tanh(__m512 x) {
  // |x| < 0.625: tanh_'s odd polynomial; else 1 - 2/(e^2x + 1), which keeps the sign.
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f),
                                      recip(_mm512_add_ps(exp(_mm512_add_ps(x, x)), one)), one);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 q = _mm512_set1_ps(-5.70498872745e-3f);
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(2.06390887954e-2f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-5.37397155531e-2f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(1.33314422036e-1f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-3.33332819422e-1f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(x, z), q, x);
  const __mmask16 near0 = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(0.625f), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(near0, big, small);
}

// LSTMCell<float>::forward and GRUCell<float>::forward on 16 units.
struct LSTM {
  __m512 i, f, g, o, c, h;
  FUSEDRNN_CELLS16 LSTM(__m512 pi, __m512 pf, __m512 pg, __m512 po, __m512 c_prev)
      : i(sigmoid(pi)), f(sigmoid(pf)), g(tanh(pg)), o(sigmoid(po)),
        c(_mm512_fmadd_ps(f, c_prev, _mm512_mul_ps(i, g))), h(_mm512_mul_ps(o, tanh(c))) {}
};

struct GRU {
  __m512 r, z, n, h;
  FUSEDRNN_CELLS16 GRU(__m512 pr, __m512 pz, __m512 xn, __m512 hn, __m512 h_prev)
      : r(sigmoid(pr)), z(sigmoid(pz)), n(tanh(_mm512_fmadd_ps(r, hn, xn))),
        h(_mm512_fmadd_ps(z, _mm512_sub_ps(h_prev, n), n)) {}
};

}  // namespace cells16

// The same cells on 8 floats at a time (AVX2 and FMA), for CPUs without AVX-512
// (x86-64-v3): n rounded by vroundps, 2^n made in the exponent field (n is in [-126, 127]
// after the clamp), the divisions true divisions (as fast as vrcpps and a Newton step
// here, which left sigmoid(88) short of 1). Within 0.99 (exp), 1.38 (sigmoid), 2.14 (tanh)
// float eps (test_cells.cpp). gcc's vectorized scalar loop (tanh_ on |x| with a sign
// select, the clamps as compares and blends) took 6.3 ns a unit for the LSTM forward cell
// and 4.7 for the GRU's on one Zen 3 core (bench_cells 1024), these 3.9 and 2.5.
#define FUSEDRNN_HAVE_CELLS8 1
#define FUSEDRNN_CELLS8_TARGET __attribute__((target("avx2,fma")))
#define FUSEDRNN_CELLS8 inline __attribute__((always_inline)) FUSEDRNN_CELLS8_TARGET

namespace cells8 {

FUSEDRNN_CELLS8 __m256 exp(__m256 x) {
  // Clamped as exp_ (max(lo, x): a NaN x is vmaxps's second operand, so it passes).
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n as its exponent field: n is in [-126, 127] after the clamp (a NaN's 2^n is
  // garbage, and p, NaN, passes)
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

FUSEDRNN_CELLS8 __m256 recip(__m256 d) { return _mm256_div_ps(_mm256_set1_ps(1.0f), d); }

FUSEDRNN_CELLS8 __m256 sigmoid(__m256 x) {
  return recip(_mm256_add_ps(_mm256_set1_ps(1.0f), exp(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

FUSEDRNN_CELLS8 __m256 tanh(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 big = _mm256_fnmadd_ps(_mm256_set1_ps(2.0f),
                                      recip(_mm256_add_ps(exp(_mm256_add_ps(x, x)), one)), one);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 q = _mm256_set1_ps(-5.70498872745e-3f);
  q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(2.06390887954e-2f));
  q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(-5.37397155531e-2f));
  q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(1.33314422036e-1f));
  q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(-3.33332819422e-1f));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(x, z), q, x);
  const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
}

struct LSTM {
  __m256 i, f, g, o, c, h;
  FUSEDRNN_CELLS8 LSTM(__m256 pi, __m256 pf, __m256 pg, __m256 po, __m256 c_prev)
      : i(sigmoid(pi)), f(sigmoid(pf)), g(tanh(pg)), o(sigmoid(po)),
        c(_mm256_fmadd_ps(f, c_prev, _mm256_mul_ps(i, g))), h(_mm256_mul_ps(o, tanh(c))) {}
};

struct GRU {
  __m256 r, z, n, h;
  FUSEDRNN_CELLS8 GRU(__m256 pr, __m256 pz, __m256 xn, __m256 hn, __m256 h_prev)
      : r(sigmoid(pr)), z(sigmoid(pz)), n(tanh(_mm256_fmadd_ps(r, hn, xn))),
        h(_mm256_fmadd_ps(z, _mm256_sub_ps(h_prev, n), n)) {}
};

}  // namespace cells8
#endif

}  // namespace fusedrnn
