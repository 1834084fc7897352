// Unit test of cells.h, torch-free. Forward is checked against the formulas written out;
// backward against central finite differences of forward, in double; the float
// instantiation (what the kernels run) against double. Exit code 1 on any failure.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>
#include <random>

#include "cells.h"

namespace {

using fusedrnn::GRUCell;
using fusedrnn::LSTMCell;

constexpr double kEps = 1e-6;      // finite-difference step: O(eps^2) + O(1e-16/eps) error
constexpr double kTolExact = 1e-12;  // double forward vs the same formulas
constexpr double kTolFd = 1e-7;    // analytic vs finite-difference gradient
constexpr double kTolFloat = 2e-5;   // float vs double, relative to max(1, |want|)

int failures = 0;
int checks = 0;

void check(const char* what, int trial, double got, double want, double tol) {
  ++checks;
  const double err = std::abs(got - want);
  // Written as !(err <= ...) so that NaN fails.
  if (!(err <= tol * std::max(1.0, std::abs(want)))) {
    if (++failures <= 20) {
      std::printf("FAIL %s (trial %d): got %.12g, want %.12g, err %.2e > tol %.0e\n", what,
                  trial, got, want, err, tol);
    }
  }
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// d loss / d x[k] by central differences.
template <size_t N, typename F>
double numgrad(F loss, std::array<double, N> x, size_t k) {
  auto xp = x, xm = x;
  xp[k] += kEps;
  xm[k] -= kEps;
  return (loss(xp) - loss(xm)) / (2 * kEps);
}

void test_lstm(std::mt19937_64& rng, int trials, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  using C = LSTMCell<double>;
  using Cf = LSTMCell<float>;
  for (int t = 0; t < trials; ++t) {
    // x = pre-activations i, f, g, o and c_prev; dh, dc are the gradients into h', c'.
    const std::array<double, 5> x{u(rng), u(rng), u(rng), u(rng), u(rng)};
    const double dh = u(rng), dc = u(rng);

    const auto y = C::forward(x[0], x[1], x[2], x[3], x[4]);
    const double i = sig(x[0]), f = sig(x[1]), g = std::tanh(x[2]), o = sig(x[3]);
    const double c = f * x[4] + i * g;
    const double h = o * std::tanh(c);
    check("lstm fwd i", t, y.i, i, kTolExact);
    check("lstm fwd f", t, y.f, f, kTolExact);
    check("lstm fwd g", t, y.g, g, kTolExact);
    check("lstm fwd o", t, y.o, o, kTolExact);
    check("lstm fwd c", t, y.c, c, kTolExact);
    check("lstm fwd h", t, y.h, h, kTolExact);

    // loss = dh*h' + dc*c', so d loss/d input is exactly what backward returns.
    auto loss = [&](const std::array<double, 5>& v) {
      const auto r = C::forward(v[0], v[1], v[2], v[3], v[4]);
      return dh * r.h + dc * r.c;
    };
    const auto b = C::backward(y.i, y.f, y.g, y.o, y.c, x[4], dh, dc);
    const std::array<double, 5> grad{b.di, b.df, b.dg, b.do_, b.dc_prev};
    const char* names[5] = {"lstm bwd di", "lstm bwd df", "lstm bwd dg", "lstm bwd do",
                            "lstm bwd dc_prev"};
    for (size_t k = 0; k < 5; ++k) check(names[k], t, grad[k], numgrad(loss, x, k), kTolFd);

    // The float path matches double up to float rounding.
    const auto yf = Cf::forward(float(x[0]), float(x[1]), float(x[2]), float(x[3]), float(x[4]));
    check("lstm float fwd c", t, yf.c, y.c, kTolFloat);
    check("lstm float fwd h", t, yf.h, y.h, kTolFloat);
    const auto bf = Cf::backward(yf.i, yf.f, yf.g, yf.o, yf.c, float(x[4]), float(dh), float(dc));
    const std::array<double, 5> gradf{bf.di, bf.df, bf.dg, bf.do_, bf.dc_prev};
    for (size_t k = 0; k < 5; ++k) check("lstm float bwd", t, gradf[k], grad[k], kTolFloat);
  }
}

void test_gru(std::mt19937_64& rng, int trials, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  using C = GRUCell<double>;
  using Cf = GRUCell<float>;
  for (int t = 0; t < trials; ++t) {
    // x = pre-activations r, z; xn = W_in x + b_in; hn = W_hn h + b_hn; h_prev.
    const std::array<double, 5> x{u(rng), u(rng), u(rng), u(rng), u(rng)};
    const double dh = u(rng);

    const auto y = C::forward(x[0], x[1], x[2], x[3], x[4]);
    const double r = sig(x[0]), z = sig(x[1]);
    const double n = std::tanh(x[2] + r * x[3]);
    const double h = (1 - z) * n + z * x[4];
    check("gru fwd r", t, y.r, r, kTolExact);
    check("gru fwd z", t, y.z, z, kTolExact);
    check("gru fwd n", t, y.n, n, kTolExact);
    check("gru fwd h", t, y.h, h, kTolExact);

    // hn is held fixed, so the h_prev gradient is only the direct z*h_prev path.
    auto loss = [&](const std::array<double, 5>& v) {
      return dh * C::forward(v[0], v[1], v[2], v[3], v[4]).h;
    };
    const auto b = C::backward(y.r, y.z, y.n, x[3], x[4], dh);
    const std::array<double, 5> grad{b.dr, b.dz, b.dn, b.dhn, b.dh_prev_direct};
    const char* names[5] = {"gru bwd dr", "gru bwd dz", "gru bwd dn", "gru bwd dhn",
                            "gru bwd dh_prev_direct"};
    for (size_t k = 0; k < 5; ++k) check(names[k], t, grad[k], numgrad(loss, x, k), kTolFd);

    const auto yf = Cf::forward(float(x[0]), float(x[1]), float(x[2]), float(x[3]), float(x[4]));
    check("gru float fwd h", t, yf.h, y.h, kTolFloat);
    const auto bf = Cf::backward(yf.r, yf.z, yf.n, float(x[3]), float(x[4]), float(dh));
    const std::array<double, 5> gradf{bf.dr, bf.dz, bf.dn, bf.dhn, bf.dh_prev_direct};
    for (size_t k = 0; k < 5; ++k) check("gru float bwd", t, gradf[k], grad[k], kTolFloat);
  }
}

// Saturated gates (|pre-activation| up to 100) must stay finite in float: exp overflows to
// inf there, and 1/(1+inf) = 0 is still the right limit.
void test_saturation() {
  const float big[] = {-100.f, -30.f, 30.f, 100.f};
  for (float a : big) {
    for (float s : {-1.f, 1.f}) {
      const auto l = LSTMCell<float>::forward(a, -a, a, s * a, 1.f);
      const auto lb = LSTMCell<float>::backward(l.i, l.f, l.g, l.o, l.c, 1.f, 1.f, 1.f);
      const auto g = GRUCell<float>::forward(a, s * a, a, -a, 1.f);
      const auto gb = GRUCell<float>::backward(g.r, g.z, g.n, -a, 1.f, 1.f);
      const float all[] = {l.h, l.c, lb.di, lb.df, lb.dg, lb.do_, lb.dc_prev,
                           g.h, gb.dr, gb.dz, gb.dn, gb.dhn, gb.dh_prev_direct};
      for (float v : all) {
        ++checks;
        if (!std::isfinite(v) && ++failures <= 20) {
          std::printf("FAIL saturation a=%g: non-finite value %g\n", a, v);
        }
      }
    }
  }
}

// exp_ and tanh_ (the vectorizable polynomials) against long double libm, in units of
// the type's epsilon relative to the true value, over their whole unclamped range.
template <typename T>
void test_transcendentals(T lo, T hi, double max_ulps) {
  const int steps = 400000;
  double worst_exp = 0, worst_tanh = 0;
  for (int k = 0; k <= steps; ++k) {
    const T x = lo + (hi - lo) * static_cast<T>(k) / static_cast<T>(steps);
    for (T v : {x, static_cast<T>(x * T(1e-3)), static_cast<T>(x * T(1e-6))}) {
      const long double e = expl(static_cast<long double>(v));
      const long double th = tanhl(static_cast<long double>(v));
      worst_exp = std::max(worst_exp, static_cast<double>(fabsl((fusedrnn::exp_(v) - e) / e)));
      if (th != 0) {
        worst_tanh = std::max(worst_tanh,
                              static_cast<double>(fabsl((fusedrnn::tanh_(v) - th) / th)));
      }
    }
  }
  const double eps = std::numeric_limits<T>::epsilon();
  for (auto [what, worst] : {std::pair{"exp_", worst_exp}, std::pair{"tanh_", worst_tanh}}) {
    ++checks;
    if (!(worst <= max_ulps * eps)) {
      ++failures;
      std::printf("FAIL %s<%s>: max rel err %.3g = %.2f eps > %.1f eps\n", what,
                  sizeof(T) == 8 ? "double" : "float", worst, worst / eps, max_ulps);
    }
  }
}

#if FUSEDRNN_HAVE_CELLS16
// The vector cells (cells16, AVX-512; cells8, AVX2): exp, sigmoid and tanh against long
// double libm in float eps relative to the true value, over the whole unclamped range and
// near 0; the LSTM and GRU cells against double like the float instantiation above; NaN
// in gives NaN out, saturation stays finite. Each form's functions below take 16 floats
// (cells8 as two halves).
struct VectorCells {
  const char* name;
  bool (*supported)();
  void (*apply)(const float* x, float* e, float* s, float* t);  // [16] each
  void (*lstm)(const float* in, float* out);  // in [5][16], out [6][16]
  void (*gru)(const float* in, float* out);   // in [5][16], out [4][16]
  double bound[3];  // exp, sigmoid, tanh, in float eps
};

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

FUSEDRNN_CELLS16_TARGET void cells16_apply(const float* x, float* e, float* s, float* t) {
  const __m512 v = _mm512_loadu_ps(x);
  _mm512_storeu_ps(e, fusedrnn::cells16::exp(v));
  _mm512_storeu_ps(s, fusedrnn::cells16::sigmoid(v));
  _mm512_storeu_ps(t, fusedrnn::cells16::tanh(v));
}

FUSEDRNN_CELLS16_TARGET void cells16_lstm(const float* in, float* out) {
  const fusedrnn::cells16::LSTM r(_mm512_loadu_ps(in), _mm512_loadu_ps(in + 16),
                                  _mm512_loadu_ps(in + 32), _mm512_loadu_ps(in + 48),
                                  _mm512_loadu_ps(in + 64));
  const __m512 all[6] = {r.i, r.f, r.g, r.o, r.c, r.h};
  for (int k = 0; k < 6; ++k) _mm512_storeu_ps(out + 16 * k, all[k]);
}

FUSEDRNN_CELLS16_TARGET void cells16_gru(const float* in, float* out) {
  const fusedrnn::cells16::GRU r(_mm512_loadu_ps(in), _mm512_loadu_ps(in + 16),
                                 _mm512_loadu_ps(in + 32), _mm512_loadu_ps(in + 48),
                                 _mm512_loadu_ps(in + 64));
  const __m512 all[4] = {r.r, r.z, r.n, r.h};
  for (int k = 0; k < 4; ++k) _mm512_storeu_ps(out + 16 * k, all[k]);
}

bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

FUSEDRNN_CELLS8_TARGET void cells8_apply(const float* x, float* e, float* s, float* t) {
  for (int h = 0; h < 16; h += 8) {
    const __m256 v = _mm256_loadu_ps(x + h);
    _mm256_storeu_ps(e + h, fusedrnn::cells8::exp(v));
    _mm256_storeu_ps(s + h, fusedrnn::cells8::sigmoid(v));
    _mm256_storeu_ps(t + h, fusedrnn::cells8::tanh(v));
  }
}

FUSEDRNN_CELLS8_TARGET void cells8_lstm(const float* in, float* out) {
  for (int h = 0; h < 16; h += 8) {
    const fusedrnn::cells8::LSTM r(_mm256_loadu_ps(in + h), _mm256_loadu_ps(in + 16 + h),
                                   _mm256_loadu_ps(in + 32 + h), _mm256_loadu_ps(in + 48 + h),
                                   _mm256_loadu_ps(in + 64 + h));
    const __m256 all[6] = {r.i, r.f, r.g, r.o, r.c, r.h};
    for (int k = 0; k < 6; ++k) _mm256_storeu_ps(out + 16 * k + h, all[k]);
  }
}

FUSEDRNN_CELLS8_TARGET void cells8_gru(const float* in, float* out) {
  for (int h = 0; h < 16; h += 8) {
    const fusedrnn::cells8::GRU r(_mm256_loadu_ps(in + h), _mm256_loadu_ps(in + 16 + h),
                                  _mm256_loadu_ps(in + 32 + h), _mm256_loadu_ps(in + 48 + h),
                                  _mm256_loadu_ps(in + 64 + h));
    const __m256 all[4] = {r.r, r.z, r.n, r.h};
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out + 16 * k + h, all[k]);
  }
}

// Bounds: cells16 measured 1.00, 1.57, 2.24 eps; cells8 0.99, 1.38, 2.14 (on Zen 3).
const VectorCells kVectorCells[] = {
    {"cells16", has_avx512, cells16_apply, cells16_lstm, cells16_gru, {1.5, 2.0, 3.0}},
    {"cells8", has_avx2, cells8_apply, cells8_lstm, cells8_gru, {1.5, 2.0, 3.0}},
};

void test_vector_cells(const VectorCells& vc, std::mt19937_64& rng) {
  if (!vc.supported()) {
    std::printf("%s: not supported by this CPU, not tested\n", vc.name);
    return;
  }
  const double eps = std::numeric_limits<float>::epsilon();
  double worst[3] = {0, 0, 0};
  float x[16], e[16], s[16], t[16];
  const int steps = 1 << 18;
  for (float scale : {1.0f, 1e-3f, 1e-6f}) {
    for (int k0 = 0; k0 <= steps; k0 += 16) {
      for (int l = 0; l < 16; ++l) {
        x[l] = scale * (-87.0f + 175.0f * static_cast<float>(std::min(k0 + l, steps)) / steps);
      }
      vc.apply(x, e, s, t);
      for (int l = 0; l < 16; ++l) {
        const long double v = x[l], ev = expl(v), sv = 1 / (1 + expl(-v)), tv = tanhl(v);
        worst[0] = std::max(worst[0], static_cast<double>(fabsl((e[l] - ev) / ev)));
        // (below 2^-126 the sigmoid is subnormal: no relative accuracy, nor in float)
        if (sv > 1e-37L) worst[1] = std::max(worst[1], static_cast<double>(fabsl((s[l] - sv) / sv)));
        if (tv != 0) worst[2] = std::max(worst[2], static_cast<double>(fabsl((t[l] - tv) / tv)));
      }
    }
  }
  const char* names[3] = {"exp", "sigmoid", "tanh"};
  for (int k = 0; k < 3; ++k) {
    ++checks;
    std::printf("%s %s: max rel err %.2f eps\n", vc.name, names[k], worst[k] / eps);
    if (!(worst[k] <= vc.bound[k] * eps)) {
      ++failures;
      std::printf("FAIL %s %s: max rel err %.3g = %.2f eps > %.1f eps\n", vc.name, names[k],
                  worst[k], worst[k] / eps, vc.bound[k]);
    }
  }
  // The cells, 16 random units at a time, against double (as the float cells above).
  std::uniform_real_distribution<double> u(-8.0, 8.0);
  for (int trial = 0; trial < 400; ++trial) {
    float in[80], out[96];
    for (float& v : in) v = static_cast<float>(u(rng));
    vc.lstm(in, out);
    for (int l = 0; l < 16; ++l) {
      const auto y = LSTMCell<double>::forward(in[l], in[16 + l], in[32 + l], in[48 + l], in[64 + l]);
      const double want[6] = {y.i, y.f, y.g, y.o, y.c, y.h};
      for (int k = 0; k < 6; ++k) check(vc.name, trial, out[16 * k + l], want[k], kTolFloat);
    }
    vc.gru(in, out);
    for (int l = 0; l < 16; ++l) {
      const auto y = GRUCell<double>::forward(in[l], in[16 + l], in[32 + l], in[48 + l], in[64 + l]);
      const double want[4] = {y.r, y.z, y.n, y.h};
      for (int k = 0; k < 4; ++k) check(vc.name, trial, out[16 * k + l], want[k], kTolFloat);
    }
  }
  // NaN propagates; saturated inputs stay finite with the right limits.
  const float special[4] = {std::numeric_limits<float>::quiet_NaN(), -1e30f, 1e30f, -100.0f};
  for (int l = 0; l < 16; ++l) x[l] = special[l % 4];
  vc.apply(x, e, s, t);
  for (int l = 0; l < 16; ++l) {
    ++checks;
    const int q = l % 4;
    const bool ok = q == 0 ? std::isnan(e[l]) && std::isnan(s[l]) && std::isnan(t[l])
                           : std::isfinite(e[l]) && std::isfinite(s[l]) && std::isfinite(t[l]) &&
                                 t[l] == (x[l] < 0 ? -1.0f : 1.0f) &&
                                 (x[l] < 0 ? s[l] < 1e-30f : s[l] == 1.0f);
    if (!ok && ++failures <= 20) {
      std::printf("FAIL %s at x=%g: exp %g sigmoid %g tanh %g\n", vc.name, x[l], e[l], s[l], t[l]);
    }
  }
}
#endif

}  // namespace

int main() {
  test_transcendentals<double>(-708.0, 709.0, 2.0);
  test_transcendentals<float>(-87.0f, 88.0f, 2.0);
  std::mt19937_64 rng(20260101);
  test_lstm(rng, 2000, 3.0);  // the range where every gate's slope matters
  test_lstm(rng, 200, 8.0);   // into saturation
  test_gru(rng, 2000, 3.0);
  test_gru(rng, 200, 8.0);
  test_saturation();
#if FUSEDRNN_HAVE_CELLS16
  for (const VectorCells& vc : kVectorCells) test_vector_cells(vc, rng);
#endif
  std::printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "OK", checks, failures);
  return failures ? 1 : 0;
}
