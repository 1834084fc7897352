// bfloat16 weight gradients on AMX (Sapphire Rapids and later) or, without it, on
// vdpbf16ps (AVX512-BF16: Zen 4 and later): dW = dG^T @ X over all T*N rows, in bf16
// products and float sums, with a fixed summation order.
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

// The same sums on vdpbf16ps (AVX512-BF16 without AMX: Zen 4 and later, Cooper Lake), for
// C[4 rows from m0][16*NV columns from p0] over the pairs of k [q0, q1): each output adds
// its products pair by pair, in k order, to the float C it starts from (zero if first).
template <int NV>
FUSEDRNN_AVX512_BF16 inline void dot_block(const uint16_t* At, int64_t Kp, const uint16_t* Bp,
                                           int64_t Pp, float* C, int64_t m0, int64_t p0,
                                           int64_t q0, int64_t q1, bool first) {
  constexpr int MR = 4;
  __m512 acc[MR][NV];
  const uint16_t* a[MR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    a[r] = At + (m0 + r) * Kp;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(C + (m0 + r) * Pp + p0 + 16 * v);
    }
  }
  for (int64_t q = q0; q < q1; ++q) {
    const uint16_t* b = Bp + (q * Pp + p0) * 2;
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + 32 * v);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, a[r] + 2 * q, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + (m0 + r) * Pp + p0 + 16 * v, acc[r][v]);
  }
}

// Pairs of k per pass over a thread's output rows: the pass's 64-column panel of packed X
// (128 KB) stays in L2 across the rows' tiles, and each pass loads and stores C's tiles
// once. At 64 pairs (a 16 KB panel, in L1) C's loads and stores took a third of the
// kernel's samples (C is 16 MB at T=50, N=256, H=1024 LSTM). bfloat16 LSTM backward on the
// 2-core Zen 4, pairs per pass 64 / 256 / 512 / 1024 / 2048: T=50, N=256, H=1024 1382 /
// 1137 / 1125 / 1105 / 1556 ms; T=100, N=64, H=512 161 / 152 / 150 / 147 / 167 ms. (A
// 6-row tile, 6/4/2-row calls, was slower: 1267 and 235 ms.)
constexpr int64_t kDotChunkPairs = 512;

// Output blocks [b0, b1) of 32 rows, all Pp columns, every k, on the calling thread: for
// each chunk of pairs, each 64 (or last 32) columns, every 4-row tile.
inline void dot_rows(const uint16_t* At, int64_t Kp, const uint16_t* Bp, int64_t Pp, float* C,
                     int64_t b0, int64_t b1) {
  for (int64_t q0 = 0; q0 < Kp / 2; q0 += kDotChunkPairs) {
    const int64_t q1 = std::min(Kp / 2, q0 + kDotChunkPairs);
    for (int64_t p0 = 0; p0 < Pp; p0 += 64) {
      for (int64_t m0 = b0 * 32; m0 < b1 * 32; m0 += 4) {
        if (p0 + 64 <= Pp) {
          dot_block<4>(At, Kp, Bp, Pp, C, m0, p0, q0, q1, q0 == 0);
        } else {
          dot_block<2>(At, Kp, Bp, Pp, C, m0, p0, q0, q1, q0 == 0);
        }
      }
    }
  }
}

// d[j*ldd + i] = s[i*lds + j] for a 32x32 block of 16-bit values, in registers: three
// rounds of unpacks transpose each 128-bit lane's 8x8 blocks, two rounds of 128-bit lane
// shuffles move the blocks. AVX512BW, which every AMX CPU has.
__attribute__((target("avx512f,avx512bw"))) inline void amx_transpose32(
    const uint16_t* s, int64_t lds, uint16_t* d, int64_t ldd) {
  __m512i r[32], t[32];
  for (int i = 0; i < 32; ++i) r[i] = _mm512_loadu_si512(s + i * lds);
  // Per group g of 8 rows (8g..8g+7), lane L: after the unpacks, register 8g + c holds
  // column 8L + c of the group's rows.
  for (int g = 0; g < 4; ++g) {
    __m512i* x = r + 8 * g;
    __m512i* y = t + 8 * g;
    for (int i = 0; i < 4; ++i) {
      y[2 * i] = _mm512_unpacklo_epi16(x[2 * i], x[2 * i + 1]);      // cols 0-3 of the lane
      y[2 * i + 1] = _mm512_unpackhi_epi16(x[2 * i], x[2 * i + 1]);  // cols 4-7
    }
    // y[0], y[2], y[4], y[6]: rows (0,1), (2,3), (4,5), (6,7), cols 0-3; odd ones cols 4-7.
    for (int h = 0; h < 2; ++h) {
      const __m512i a0 = _mm512_unpacklo_epi32(y[h], y[h + 2]);  // rows 0-3, cols 0,1 (+4h)
      const __m512i a1 = _mm512_unpackhi_epi32(y[h], y[h + 2]);  // rows 0-3, cols 2,3
      const __m512i b0 = _mm512_unpacklo_epi32(y[h + 4], y[h + 6]);  // rows 4-7, cols 0,1
      const __m512i b1 = _mm512_unpackhi_epi32(y[h + 4], y[h + 6]);  // rows 4-7, cols 2,3
      x[4 * h + 0] = _mm512_unpacklo_epi64(a0, b0);
      x[4 * h + 1] = _mm512_unpackhi_epi64(a0, b0);
      x[4 * h + 2] = _mm512_unpacklo_epi64(a1, b1);
      x[4 * h + 3] = _mm512_unpackhi_epi64(a1, b1);
    }
  }
  // Column 8L + c: lane L of r[8g + c] for g = 0..3, a 4x4 transpose of 128-bit lanes.
  for (int c = 0; c < 8; ++c) {
    const __m512i p0 = _mm512_shuffle_i64x2(r[c], r[8 + c], 0x88);
    const __m512i p1 = _mm512_shuffle_i64x2(r[c], r[8 + c], 0xdd);
    const __m512i p2 = _mm512_shuffle_i64x2(r[16 + c], r[24 + c], 0x88);
    const __m512i p3 = _mm512_shuffle_i64x2(r[16 + c], r[24 + c], 0xdd);
    t[c] = _mm512_shuffle_i64x2(p0, p2, 0x88);
    t[16 + c] = _mm512_shuffle_i64x2(p0, p2, 0xdd);
    t[8 + c] = _mm512_shuffle_i64x2(p1, p3, 0x88);
    t[24 + c] = _mm512_shuffle_i64x2(p1, p3, 0xdd);
  }
  for (int j = 0; j < 32; ++j) _mm512_storeu_si512(d + j * ldd, t[j]);
}

// a^T @ b for bfloat16 a [K, M], b [K, P], both contiguous: [M, P] bfloat16, summed in
// float (see the top of this file).
// The left operand a^T of weight gradients a^T @ b (bfloat16 a [K, M], contiguous),
// transposed once for the AMX row tiles: At [Mp][Kp], zero past M and K. LSTM's dW_ih and
// dW_hh share it (a = dG).
class AmxLhs {
 public:
  explicit AmxLhs(const Tensor& a)
      : like(a), K(a.size(0)), M(a.size(1)), Kp(round32(K)), Mp(round32(M)), At(Mp * Kp) {
    const uint16_t* ap = reinterpret_cast<const uint16_t*>(a.const_data_ptr<c10::BFloat16>());
    uint16_t* at = At.data();
    // At[m][k] = a[k][m] by 32x32 blocks, k outer (a's rows are read in order); zero past M
    // and K. Whole blocks are transposed in registers (amx_transpose32), the edges element
    // by element. (Element by element throughout, the transposition took as long as the
    // products: 8.9% vs 8.6% of a bfloat16 LSTM training step at T=100, N=64, H=512.)
    parallel_rows(Mp / 32, 1, [this, at, ap](int64_t b0, int64_t b1) {
      for (int64_t k0 = 0; k0 < Kp; k0 += 32) {
        const int64_t kk = std::clamp<int64_t>(K - k0, 0, 32);
        for (int64_t m0 = b0 * 32; m0 < b1 * 32; m0 += 32) {
          const int64_t mm = std::clamp<int64_t>(M - m0, 0, 32);
          if (mm == 32 && kk == 32) {
            amx_transpose32(ap + k0 * M + m0, M, at + m0 * Kp + k0, Kp);
            continue;
          }
          alignas(64) uint16_t blk[32][32] = {};
          for (int64_t k = 0; k < kk; ++k) {
            const uint16_t* src = ap + (k0 + k) * M + m0;
            for (int64_t m = 0; m < mm; ++m) blk[m][k] = src[m];
          }
          for (int64_t m = 0; m < 32; ++m) std::memcpy(at + (m0 + m) * Kp + k0, blk[m], sizeof(blk[m]));
        }
      }
    });
  }
  Tensor like;
  int64_t K, M, Kp, Mp;
  Scratch<uint16_t> At;
};

inline Tensor weight_grad_amx(const AmxLhs& lhs, const Tensor& b) {
  const int64_t K = lhs.K, M = lhs.M, P = b.size(1), Kp = lhs.Kp, Mp = lhs.Mp;
  const int64_t Pp = round32(P);
  STD_TORCH_CHECK(b.size(0) == K, "fusedrnn: weight_grad_amx: row counts differ");
  const uint16_t* bp = reinterpret_cast<const uint16_t*>(b.const_data_ptr<c10::BFloat16>());
  const Scratch<uint16_t> Bp(Kp * Pp);
  const Scratch<float> C(Mp * Pp);
  const uint16_t* at = lhs.At.data();
  uint16_t* bt = Bp.data();
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
  if (amx_usable()) {
    for (int64_t k0 = 0; k0 < Kp; k0 += kAmxChunk) {
      const int64_t k1 = std::min(Kp, k0 + kAmxChunk);
      parallel_rows(Mp / 32, 1, [&](int64_t b0, int64_t b1) {
        amx_rows(at, Kp, bt, Pp, C.data(), b0, b1, k0, k1);
      });
    }
  } else {
    parallel_rows(Mp / 32, 1, [&](int64_t b0, int64_t b1) {
      dot_rows(at, Kp, bt, Pp, C.data(), b0, b1);
    });
  }
  Tensor out = empty_as(lhs.like, {M, P});
  c10::BFloat16* o = out.mutable_data_ptr<c10::BFloat16>();
  const float* c = C.data();
  parallel_rows(M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t p = 0; p < P; ++p) o[m * P + p] = static_cast<c10::BFloat16>(c[m * Pp + p]);
    }
  });
  return out;
}

inline Tensor weight_grad_amx(const Tensor& a, const Tensor& b) {
  return weight_grad_amx(AmxLhs(a), b);
}

#endif  // FUSEDRNN_HAVE_AMX

}  // namespace fusedrnn
