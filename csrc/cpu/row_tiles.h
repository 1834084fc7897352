// How the AVX2 panel kernel (panel_gemm.h) cuts a product's rows into tiles: its tile is
// 6 rows by 16 columns, 12 ymm accumulators, 2 panel vectors and a broadcast in the 16
// registers. Torch-free, so that csrc/tests/test_row_tiles.cpp checks it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fusedrnn {

// Rows per tile.
constexpr int kAvx2Rows = 6;

// f(n0, rows) for the row tiles of B rows in order: kAvx2Rows at a time, except that where
// 1 or 2 rows would be left over the last two tiles are 4 and the rest (B = 32: 6, 6, 6,
// 6, 4, 4). Which tile makes a row leaves its sums as they are: the bits do not change.
//
// Why: a tile of 1 or 2 rows pays the panel's loads of a whole tile for a third of its
// FMAs (a 2-row tile took 9% of a T=100, N=32, H=512 2-layer bidirectional LSTM's tile
// samples for 6% of its products). Paired in one process, ms, 6 + 2 -> 4 + 4 (2-core Zen 3,
// float32): that deep LSTM inference 524.8 -> 496.7 and 522.1 -> 507.4, training 1546 ->
// 1493, GRU inference 375.6 -> 372.0; one layer, N=32, I=1024, H=512 LSTM inference 156.1
// -> 148.4, I=512 training 315.2 -> 301.6, GRU 233.6 -> 230.4; N=8 LSTM inference 25.5 ->
// 24.0, GRU 22.4 -> 21.2; N=13 (6 + 1 -> 4 + 3) 38.4 -> 37.4; N=20 54.3 -> 53.3; packed,
// T=99, N=64, lengths 30-99, LSTM inference 149.6 -> 146.1, GRU 89.9 -> 88.6, training
// LSTM 358.7 -> 371.1 then 387.2 -> 383.6 (noise), GRU 276.7 -> 271.2. Not 3 rows left:
// 6 + 3 as 5 + 4 ran level (N=15: 40.7 vs 40.7). Not even sizes throughout: B = 32 as 5,
// 5, 6, 5, 5, 6 ran 2-4% slower than five of 6 and one of 2 (T=100, N=32, H=512 LSTM
// forward 125.3 vs 122.6 ms, I=1024 199.2 vs 191.8, GRU 100.7 vs 97.6).
template <typename F>
inline void for_row_tiles(int64_t B, const F& f) {
  const int64_t left = B % kAvx2Rows;
  const int64_t whole = B > kAvx2Rows && left > 0 && left < 3 ? B - kAvx2Rows - left : B;
  for (int64_t n0 = 0; n0 < whole; n0 += kAvx2Rows)
    f(n0, static_cast<int>(std::min<int64_t>(kAvx2Rows, whole - n0)));
  if (whole < B) {
    f(whole, 4);
    f(whole + 4, static_cast<int>(B - whole - 4));
  }
}

}  // namespace fusedrnn
