// Microbenchmark of the batch-1 step's products on one core (AVX-512, float): what bounds
// the latency shape's step (T=200, N=1, I=H=256 LSTM, two workers: each runs 8 blocks of
// 16 units x 4 gates, a 512 KB share of W_hh that stays in its L2). Not a test.
//   h:         h_{t-1} W_hh^T over the 8 blocks (4 accumulators a block, as tile_product)
//   h 8-acc:   the same with 8 accumulators (two k chains): is it FMA latency or reads?
//   h + x:     h, then a 4-row x W_ih^T tile over a quarter of the blocks (the x products
//              of 4 steps spread over 4 steps: FMA-bound, made while the h reads wait?)
//   h | x:     both in one loop, 4 k of h per k of x, to overlap the x tile's FMAs with
//              the h products' L2 reads
// Prints us per step and the rate W_hh is read at. Usage: bench_step_products [steps]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#if defined(__GNUC__) && defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f"), noinline))

namespace {

constexpr int K = 256, kBlocks = 8, kCols = 64, kXRows = 4;

// 64-byte aligned, as the op's panels are (unaligned, every vector load spans two lines).
struct Array {
  explicit Array(size_t n) : n_(n), p_(static_cast<float*>(std::aligned_alloc(64, n * 4))) {
    std::fill(p_, p_ + n, 0.f);
  }
  ~Array() { std::free(p_); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  float& operator[](size_t i) const { return p_[i]; }
  float* data() const { return p_; }
  float* begin() const { return p_; }
  float* end() const { return p_ + n_; }
  size_t n_;
  float* p_;
};

struct Data {
  Array wh{kBlocks * K * kCols}, wx{kBlocks * K * kCols}, h{K}, x{kXRows * K};
  Array out_h{kBlocks * kCols}, out_x{kXRows * kBlocks * kCols};
  Data() {
    std::mt19937 g(0);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (const Array* v : {&wh, &wx, &h, &x}) for (float& e : *v) e = u(g);
  }
};

// out[16v..16v+16) = sum over k of h[k] * block b's panel[k][16v..16v+16).
AVX512 void h_block(const Data& d, int b, float* out, bool eight) {
  const float* p = d.wh.data() + b * K * kCols;
  __m512 a[8];
  for (auto& v : a) v = _mm512_setzero_ps();
  if (!eight) {
    for (int k = 0; k < K; ++k) {
      const __m512 h = _mm512_set1_ps(d.h[k]);
      for (int v = 0; v < 4; ++v) a[v] = _mm512_fmadd_ps(h, _mm512_loadu_ps(p + k * kCols + 16 * v), a[v]);
    }
  } else {
    for (int k = 0; k < K; k += 2) {
      const __m512 h0 = _mm512_set1_ps(d.h[k]), h1 = _mm512_set1_ps(d.h[k + 1]);
      for (int v = 0; v < 4; ++v) {
        a[v] = _mm512_fmadd_ps(h0, _mm512_loadu_ps(p + k * kCols + 16 * v), a[v]);
        a[4 + v] = _mm512_fmadd_ps(h1, _mm512_loadu_ps(p + (k + 1) * kCols + 16 * v), a[4 + v]);
      }
    }
  }
  for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + 16 * v, _mm512_add_ps(a[v], a[4 + v]));
}

// kXRows rows of x times block b's x panel, added to out.
AVX512 void x_tile(const Data& d, int b, float* out) {
  const float* p = d.wx.data() + b * K * kCols;
  __m512 a[kXRows][4];
  for (auto& r : a) for (auto& v : r) v = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m512 w[4];
    for (int v = 0; v < 4; ++v) w[v] = _mm512_loadu_ps(p + k * kCols + 16 * v);
    for (int r = 0; r < kXRows; ++r) {
      const __m512 x = _mm512_set1_ps(d.x[r * K + k]);
      for (int v = 0; v < 4; ++v) a[r][v] = _mm512_fmadd_ps(x, w[v], a[r][v]);
    }
  }
  for (int r = 0; r < kXRows; ++r)
    for (int v = 0; v < 4; ++v) {
      float* o = out + r * kBlocks * kCols + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[r][v]));
    }
}

// h block b and the quarter q of x block xb's k, in one loop: 4 k of h per k of x.
AVX512 void mixed(const Data& d, int b, int xb, int q, float* out_h, float* out_x) {
  const float* p = d.wh.data() + b * K * kCols;
  const float* px = d.wx.data() + xb * K * kCols;
  __m512 ah[4], ax[kXRows][4];
  for (auto& v : ah) v = _mm512_setzero_ps();
  for (auto& r : ax) for (auto& v : r) v = _mm512_setzero_ps();
  for (int kk = q * K / 4; kk < (q + 1) * K / 4; ++kk) {
    for (int i = 0; i < 4; ++i) {
      const int k = 4 * (kk - q * K / 4) + i;
      const __m512 h = _mm512_set1_ps(d.h[k]);
      for (int v = 0; v < 4; ++v) ah[v] = _mm512_fmadd_ps(h, _mm512_loadu_ps(p + k * kCols + 16 * v), ah[v]);
    }
    __m512 w[4];
    for (int v = 0; v < 4; ++v) w[v] = _mm512_loadu_ps(px + kk * kCols + 16 * v);
    for (int r = 0; r < kXRows; ++r) {
      const __m512 x = _mm512_set1_ps(d.x[r * K + kk]);
      for (int v = 0; v < 4; ++v) ax[r][v] = _mm512_fmadd_ps(x, w[v], ax[r][v]);
    }
  }
  for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out_h + 16 * v, ah[v]);
  for (int r = 0; r < kXRows; ++r)
    for (int v = 0; v < 4; ++v) {
      float* o = out_x + r * kBlocks * kCols + xb * kCols + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), ax[r][v]));
    }
}

void step(Data& d, int mode, int s) {
  const int q = s % 4;  // this step's quarter of the x work: blocks q and q + 4
  for (int b = 0; b < kBlocks; ++b) {
    float* oh = d.out_h.data() + b * kCols;
    if (mode == 0 || mode == 1 || mode == 2) h_block(d, b, oh, mode == 1);
    if (mode == 3) mixed(d, b, b / 4 * 4 + q, b % 4, oh, d.out_x.data());
  }
  if (mode == 2) {
    for (int b = q; b < kBlocks; b += 4) x_tile(d, b, d.out_x.data() + b * kCols);
  }
  d.h[s % K] += 1e-7f * d.out_h[s % (kBlocks * kCols)];  // a dependence between steps
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx512f")) {
    std::printf("no AVX-512F: nothing to time\n");
    return 0;
  }
  const int steps = argc > 1 ? std::atoi(argv[1]) : 20000;
  Data d;
  const char* names[] = {"h", "h 8-acc", "h + x", "h | x"};
  std::printf("per step, one core: %d blocks of %d k x %d floats (W_hh share %d KB)\n",
              kBlocks, K, kCols, kBlocks * K * kCols * 4 / 1024);
  std::printf("%-10s %9s %12s\n", "case", "us/step", "W_hh GB/s");
  for (int mode = 0; mode < 4; ++mode) {
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < steps; ++s) step(d, mode, s);
      const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
      best = std::min(best, dt.count() / steps);
    }
    std::printf("%-10s %9.3f %12.1f\n", names[mode], best * 1e6,
                kBlocks * K * kCols * 4.0 / best / 1e9);
  }
  double sum = 0;
  for (float v : d.out_h) sum += v;
  for (float v : d.out_x) sum += v;
  std::printf("(checksum %g)\n", sum);
  return 0;
}
#else
int main() {
  std::printf("x86-64 with GCC only\n");
  return 0;
}
#endif
