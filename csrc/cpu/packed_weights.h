// The forward's weight panels: W_hh (and, folded, W_ih) repacked once per call into the
// layout the micro-kernels of tiles.h read (recurrence.h drives them).
#pragma once

#include "tiles.h"
#include "workers.h"

#include <type_traits>

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// W_hh [gates*H, K] (torch's layout, any storage type) repacked for the micro-kernel: for
// each block of kUnits units, for each k, the gates' kUnits weights in a row,
// [blocks][K][gates*kUnits] in float; with kPairs (bfloat16 storage, bf16 products) in
// bf16 pairs of consecutive k instead, [blocks][Kp/2][gates*kUnits][2] (Kp: K padded to
// k_align). Units past H (and k past K) are zero. The worker that owns a block packs it (pack(b)) at its first
// step: no separate pass over the threads, and the panel starts out in that core's cache.
template <typename src_t, bool kPairs = false>
class PackedWeights {
 public:
  using value_t = std::conditional_t<kPairs, uint16_t, float>;
  // k_align (kPairs): k padded with zeros to a multiple of it (2; 32 for AMX tiles).
  PackedWeights(const src_t* w, int64_t gates, int64_t H, int64_t K, int64_t k_align = 2)
      : w_(w), gates_(gates), H_(H), K_(K), Kp_(kPairs ? (K + k_align - 1) / k_align * k_align : K),
        blocks_((H + kUnits - 1) / kUnits), stride_(Kp_ * gates * kUnits), data_(blocks_ * stride_) {}
  // Writes in order, k outer: the block's gates*kUnits source rows are read a cache line
  // at a time across consecutive k.
  void pack(int64_t b) const {
    constexpr int64_t kStep = kPairs ? 2 : 1;
    value_t* dst = block(b);
    // A whole block: 16 units x 16 k at a time, transposed in registers. Element by
    // element (the strided loads below), packing took 31% of a T=1, N=1, H=256 LSTM call.
    // 16-bit storage (float products): each 16 x 16 block widened to float first.
    if constexpr (!kPairs) {
      if ((b + 1) * kUnits <= H_) {
        const int64_t ld = gates_ * kUnits;
        const int64_t k16 = K_ / 16 * 16;
        alignas(64) float tmp[16 * 16];
        for (int64_t g = 0; g < gates_; ++g) {
          const src_t* rows = w_ + (g * H_ + b * kUnits) * K_;
          for (int64_t k = 0; k < k16; k += 16) {
            if constexpr (std::is_same_v<src_t, float>) {
              transpose16(rows + k, K_, dst + k * ld + g * kUnits, ld);
            } else {
              for (int64_t u = 0; u < kUnits; ++u)
                for (int64_t i = 0; i < 16; ++i) tmp[u * 16 + i] = static_cast<float>(rows[u * K_ + k + i]);
              transpose16(tmp, 16, dst + k * ld + g * kUnits, ld);
            }
          }
          for (int64_t k = k16; k < K_; ++k)
            for (int64_t u = 0; u < kUnits; ++u)
              dst[k * ld + g * kUnits + u] = static_cast<float>(rows[u * K_ + k]);
        }
        return;
      }
    }
    for (int64_t k = 0; k < Kp_; k += kStep) {
      for (int64_t g = 0; g < gates_; ++g) {
        for (int64_t u = 0; u < kUnits; ++u, dst += kStep) {
          const int64_t j = b * kUnits + u;
          const src_t* row = w_ + (g * H_ + j) * K_;
          if constexpr (kPairs) {
            dst[0] = j < H_ && k < K_ ? row[k].x : 0;
            dst[1] = j < H_ && k + 1 < K_ ? row[k + 1].x : 0;
          } else {
            dst[0] = j < H_ ? static_cast<float>(row[k]) : 0.f;
          }
        }
      }
    }
  }
  int64_t blocks() const { return blocks_; }
  value_t* block(int64_t b) const { return data_.data() + b * stride_; }

 private:
  const src_t* w_;
  int64_t gates_, H_, K_, Kp_, blocks_, stride_;
  Scratch<value_t> data_;
};

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
