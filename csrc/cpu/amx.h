// bfloat16 weight gradients on AMX (Sapphire Rapids and later): dW = dG^T @ X over all
// T*N rows, on the tile unit, with a fixed summation order.
//
// Why not oneDNN's bfloat16 GEMM: it runs on AMX too, but splits K across threads for some
// shapes, so its sums changed with the thread count; and widened to float the same sums
// ran at the vector units' float rate (T=50, N=256, H=1024 LSTM training: 3.3 s against
// torch.nn's 1.0 s). Here every output element is summed over k in chunks of kAmxChunk
// rows, in order, each chunk in tiles of 32 k; threads split the output rows only, so the
// result is bit-identical for any thread count.
#pragma once

#include "recurrence.h"

namespace fusedrnn {

#if FUSEDRNN_HAVE_AMX

// k rows per pass over the output blocks: a pass reads a 32-row block of packed dG^T
// (32 KB at 512) from L1 and the packed X rows (P*2 KB at 512) from L2.
constexpr int64_t kAmxChunk = 512;

// C[32x32 block at (m0, p0)] (=, if first, else +=) sum over k in [k0, k1) of
// At[m][k] * B[k][p]. At [Mp][Kp] is dG^T; Bp [Kp/2][Pp][2] holds X in pairs of k.
FUSEDRNN_AMX inline void amx_block(const uint16_t* At, int64_t Kp, const uint16_t* Bp,
                                   int64_t Pp, float* C, int64_t m0, int64_t p0, int64_t k0,
                                   int64_t k1, bool first) {
  float* c = C + m0 * Pp + p0;
  const int64_t ldc = Pp * int64_t(sizeof(float)), lda = Kp * 2, ldb = Pp * 4;
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c, ldc);
    _tile_loadd(1, c + 16, ldc);
    _tile_loadd(2, c + 16 * Pp, ldc);
    _tile_loadd(3, c + 16 * Pp + 16, ldc);
  }
  const uint16_t* a0 = At + m0 * Kp;
  const uint16_t* a1 = At + (m0 + 16) * Kp;
  for (int64_t k = k0; k < k1; k += 32) {
    const uint16_t* b = Bp + ((k / 2) * Pp + p0) * 2;
    _tile_loadd(4, a0 + k, lda);
    _tile_loadd(5, a1 + k, lda);
    _tile_loadd(6, b, ldb);
    _tile_loadd(7, b + 32, ldb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ldc);
  _tile_stored(1, c + 16, ldc);
  _tile_stored(2, c + 16 * Pp, ldc);
  _tile_stored(3, c + 16 * Pp + 16, ldc);
}

// Output blocks [b0, b1) of 32 rows, all columns, k in [k0, k1), on the calling thread.
FUSEDRNN_AMX inline void amx_rows(const uint16_t* At, int64_t Kp, const uint16_t* Bp,
                                  int64_t Pp, float* C, int64_t b0, int64_t b1, int64_t k0,
                                  int64_t k1) {
  static const TileConfig cfg;  // in memory whole: a local one lost its stores (gcc 12)
  _tile_loadconfig(&cfg);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t p0 = 0; p0 < Pp; p0 += 32) amx_block(At, Kp, Bp, Pp, C, b * 32, p0, k0, k1, k0 == 0);
  }
  _tile_release();
}

// a^T @ b for bfloat16 a [K, M], b [K, P], both contiguous: [M, P] bfloat16, summed in
// float (see the top of this file).
inline Tensor weight_grad_amx(const Tensor& a, const Tensor& b) {
  const int64_t K = a.size(0), M = a.size(1), P = b.size(1);
  const int64_t Kp = round32(K), Mp = round32(M), Pp = round32(P);
  const uint16_t* ap = reinterpret_cast<const uint16_t*>(a.const_data_ptr<c10::BFloat16>());
  const uint16_t* bp = reinterpret_cast<const uint16_t*>(b.const_data_ptr<c10::BFloat16>());
  const Scratch<uint16_t> At(Mp * Kp), Bp(Kp * Pp);
  const Scratch<float> C(Mp * Pp);
  uint16_t* at = At.data();
  uint16_t* bt = Bp.data();
  // At[m][k] = a[k][m], by 32x32 blocks through a block on the stack: each source row's
  // 32 entries read at once, each destination row's 32 written at once; zero past M and K.
  // (Element by element, m outer and a[k*M + m] inner, a's rows were read 4 KB apart, one
  // cache miss per element run: 7% of a bfloat16 training step at T=100, N=64, H=512.)
  parallel_rows(Mp / 32, 1, [at, ap, M, K, Kp](int64_t b0, int64_t b1) {
    for (int64_t k0 = 0; k0 < Kp; k0 += 32) {  // k outer: a's rows are read in order
      const int64_t kk = std::clamp<int64_t>(K - k0, 0, 32);
      for (int64_t m0 = b0 * 32; m0 < b1 * 32; m0 += 32) {
        const int64_t mm = std::clamp<int64_t>(M - m0, 0, 32);
        alignas(64) uint16_t blk[32][32];
        if (mm < 32 || kk < 32) std::memset(blk, 0, sizeof(blk));
        for (int64_t k = 0; k < kk; ++k) {
          const uint16_t* src = ap + (k0 + k) * M + m0;
          for (int64_t m = 0; m < mm; ++m) blk[m][k] = src[m];
        }
        for (int64_t m = 0; m < 32; ++m) std::memcpy(at + (m0 + m) * Kp + k0, blk[m], sizeof(blk[m]));
      }
    }
  });
  // Bp[k/2][p][k%2] = b[k][p]; zero past K and P.
  parallel_rows(Kp / 2, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      uint16_t* dst = bt + i * Pp * 2;
      const int64_t k = 2 * i;
      for (int64_t p = 0; p < Pp; ++p) {
        dst[2 * p] = k < K && p < P ? bp[k * P + p] : 0;
        dst[2 * p + 1] = k + 1 < K && p < P ? bp[(k + 1) * P + p] : 0;
      }
    }
  });
  for (int64_t k0 = 0; k0 < Kp; k0 += kAmxChunk) {
    const int64_t k1 = std::min(Kp, k0 + kAmxChunk);
    parallel_rows(Mp / 32, 1, [&](int64_t b0, int64_t b1) {
      amx_rows(at, Kp, bt, Pp, C.data(), b0, b1, k0, k1);
    });
  }
  Tensor out = empty_as(a, {M, P});
  c10::BFloat16* o = out.mutable_data_ptr<c10::BFloat16>();
  const float* c = C.data();
  parallel_rows(M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t p = 0; p < P; ++p) o[m * P + p] = static_cast<c10::BFloat16>(c[m * Pp + p]);
    }
  });
  return out;
}

#endif  // FUSEDRNN_HAVE_AMX

}  // namespace fusedrnn
