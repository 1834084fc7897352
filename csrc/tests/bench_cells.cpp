// Microbenchmark of the pointwise cell math in cells.h (float, one thread): ns per
// (batch, unit) element for LSTM/GRU forward and backward, and the bytes/s its loads and
// stores make (floats read + written per element over the time). Not a test.
// Usage: bench_cells [elements]   (default 65536: cache-resident, so this times the math
// rather than DRAM).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cells.h"

// The loops are built like csrc/cpu's per-unit kernels, so they vectorize the same way:
// free functions with __restrict parameters, cloned for AVX-512 / AVX2 / baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BENCH_CLONES \
  __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BENCH_CLONES __attribute__((noinline))
#endif

namespace {

using fusedrnn::GRUCell;
using fusedrnn::LSTMCell;
using R = float* __restrict;
using CR = const float* __restrict;

BENCH_CLONES void lstm_fwd(CR a, CR b, CR c, CR d, CR s, R o0, R o1, R o2, R o3, R o4, R o5,
                           int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const auto r = LSTMCell<float>::forward(a[k], b[k], c[k], d[k], s[k]);
    o0[k] = r.i, o1[k] = r.f, o2[k] = r.g, o3[k] = r.o, o4[k] = r.c, o5[k] = r.h;
  }
}

BENCH_CLONES void lstm_bwd(CR a, CR b, CR c, CR d, CR s, CR ga, CR gb, R o0, R o1, R o2, R o3,
                           R o4, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const auto r = LSTMCell<float>::backward(a[k], b[k], c[k], d[k], a[k] + s[k], s[k], ga[k],
                                             gb[k]);
    o0[k] = r.di, o1[k] = r.df, o2[k] = r.dg, o3[k] = r.do_, o4[k] = r.dc_prev;
  }
}

BENCH_CLONES void gru_fwd(CR a, CR b, CR c, CR d, CR s, R o0, R o1, R o2, R o3, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const auto r = GRUCell<float>::forward(a[k], b[k], c[k], d[k], s[k]);
    o0[k] = r.r, o1[k] = r.z, o2[k] = r.n, o3[k] = r.h;
  }
}

BENCH_CLONES void gru_bwd(CR a, CR b, CR c, CR d, CR s, CR ga, R o0, R o1, R o2, R o3, R o4,
                          int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const auto r = GRUCell<float>::backward(a[k], b[k], c[k], d[k], s[k], ga[k]);
    o0[k] = r.dr, o1[k] = r.dz, o2[k] = r.dn, o3[k] = r.dhn, o4[k] = r.dh_prev_direct;
  }
}

#if FUSEDRNN_HAVE_CELLS16
// The same loops on the 16-lane cells (cells16, AVX-512: the forward loops' form there).
FUSEDRNN_CELLS16_TARGET __attribute__((noinline)) void lstm_fwd16(
    CR a, CR b, CR c, CR d, CR s, R o0, R o1, R o2, R o3, R o4, R o5, int64_t n) {
  for (int64_t k = 0; k + 16 <= n; k += 16) {
    const fusedrnn::cells16::LSTM r(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k),
                                    _mm512_loadu_ps(c + k), _mm512_loadu_ps(d + k),
                                    _mm512_loadu_ps(s + k));
    _mm512_storeu_ps(o0 + k, r.i), _mm512_storeu_ps(o1 + k, r.f), _mm512_storeu_ps(o2 + k, r.g);
    _mm512_storeu_ps(o3 + k, r.o), _mm512_storeu_ps(o4 + k, r.c), _mm512_storeu_ps(o5 + k, r.h);
  }
}

FUSEDRNN_CELLS16_TARGET __attribute__((noinline)) void gru_fwd16(CR a, CR b, CR c, CR d, CR s,
                                                                 R o0, R o1, R o2, R o3,
                                                                 int64_t n) {
  for (int64_t k = 0; k + 16 <= n; k += 16) {
    const fusedrnn::cells16::GRU r(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k),
                                   _mm512_loadu_ps(c + k), _mm512_loadu_ps(d + k),
                                   _mm512_loadu_ps(s + k));
    _mm512_storeu_ps(o0 + k, r.r), _mm512_storeu_ps(o1 + k, r.z), _mm512_storeu_ps(o2 + k, r.n);
    _mm512_storeu_ps(o3 + k, r.h);
  }
}

// And on the 8-lane cells (cells8, AVX2).
FUSEDRNN_CELLS8_TARGET __attribute__((noinline)) void lstm_fwd8(
    CR a, CR b, CR c, CR d, CR s, R o0, R o1, R o2, R o3, R o4, R o5, int64_t n) {
  for (int64_t k = 0; k + 8 <= n; k += 8) {
    const fusedrnn::cells8::LSTM r(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k),
                                   _mm256_loadu_ps(c + k), _mm256_loadu_ps(d + k),
                                   _mm256_loadu_ps(s + k));
    _mm256_storeu_ps(o0 + k, r.i), _mm256_storeu_ps(o1 + k, r.f), _mm256_storeu_ps(o2 + k, r.g);
    _mm256_storeu_ps(o3 + k, r.o), _mm256_storeu_ps(o4 + k, r.c), _mm256_storeu_ps(o5 + k, r.h);
  }
}

FUSEDRNN_CELLS8_TARGET __attribute__((noinline)) void gru_fwd8(CR a, CR b, CR c, CR d, CR s,
                                                               R o0, R o1, R o2, R o3,
                                                               int64_t n) {
  for (int64_t k = 0; k + 8 <= n; k += 8) {
    const fusedrnn::cells8::GRU r(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k),
                                  _mm256_loadu_ps(c + k), _mm256_loadu_ps(d + k),
                                  _mm256_loadu_ps(s + k));
    _mm256_storeu_ps(o0 + k, r.r), _mm256_storeu_ps(o1 + k, r.z), _mm256_storeu_ps(o2 + k, r.n);
    _mm256_storeu_ps(o3 + k, r.h);
  }
}
#endif

// Best of 7 runs, each repeating fn until about 20 ms have passed.
template <typename F>
double ns_per_element(F fn, int64_t n) {
  using clock = std::chrono::steady_clock;
  double best = 1e300;
  for (int run = 0; run < 7; ++run) {
    int64_t reps = 0;
    const auto t0 = clock::now();
    double elapsed = 0;
    do {
      fn();
      ++reps;
      elapsed = std::chrono::duration<double, std::nano>(clock::now() - t0).count();
    } while (elapsed < 2e7);
    best = std::min(best, elapsed / (double(reps) * double(n)));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = std::max<int64_t>(1, argc > 1 ? std::atoll(argv[1]) : 65536);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<std::vector<float>> in(7, std::vector<float>(n)), out(6, std::vector<float>(n));
  for (auto& v : in)
    for (auto& x : v) x = u(rng);
  const float *a = in[0].data(), *b = in[1].data(), *c = in[2].data(), *d = in[3].data(),
              *s = in[4].data(), *ga = in[5].data(), *gb = in[6].data();
  float *o0 = out[0].data(), *o1 = out[1].data(), *o2 = out[2].data(), *o3 = out[3].data(),
        *o4 = out[4].data(), *o5 = out[5].data();

  std::printf("elements: %lld (float, 1 thread)\n", static_cast<long long>(n));
  std::printf("%-14s %8s %8s\n", "case", "ns/elem", "GB/s");
  // floats read + written per element by each loop below
  const auto row = [](const char* name, double ns, int floats) {
    std::printf("%-14s %8.3f %8.1f\n", name, ns, floats * 4.0 / ns);
  };
  row("lstm forward", ns_per_element([&] { lstm_fwd(a, b, c, d, s, o0, o1, o2, o3, o4, o5, n); }, n), 11);
  row("lstm backward", ns_per_element([&] { lstm_bwd(a, b, c, d, s, ga, gb, o0, o1, o2, o3, o4, n); }, n), 12);
  row("gru forward", ns_per_element([&] { gru_fwd(a, b, c, d, s, o0, o1, o2, o3, n); }, n), 9);
#if FUSEDRNN_HAVE_CELLS16
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    row("lstm fwd 16", ns_per_element([&] { lstm_fwd16(a, b, c, d, s, o0, o1, o2, o3, o4, o5, n); }, n), 11);
    row("gru fwd 16", ns_per_element([&] { gru_fwd16(a, b, c, d, s, o0, o1, o2, o3, n); }, n), 9);
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    row("lstm fwd 8", ns_per_element([&] { lstm_fwd8(a, b, c, d, s, o0, o1, o2, o3, o4, o5, n); }, n), 11);
    row("gru fwd 8", ns_per_element([&] { gru_fwd8(a, b, c, d, s, o0, o1, o2, o3, n); }, n), 9);
  }
#endif
  row("gru backward", ns_per_element([&] { gru_bwd(a, b, c, d, s, ga, o0, o1, o2, o3, o4, n); }, n), 11);
  // Read the outputs back so the stores stay observable.
  double sum = 0;
  for (const auto& v : out) sum += v[n / 2];
  std::printf("(checksum %g)\n", sum);
  return 0;
}
