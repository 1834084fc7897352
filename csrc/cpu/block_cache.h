// Scratch memory of the CPU ops (Scratch), with its large blocks kept between calls
// (BlockCache). Torch-free: csrc/tests/test_block_cache.cpp tests it on its own.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace fusedrnn {

// Large scratch memory outlives the call that used it: a freed block of at least kMinBytes
// goes to a process-wide cache (up to FUSEDRNN_CPU_CACHE_MB megabytes, default kDefaultMB;
// 0 turns it off; oldest blocks freed first) and a later request takes it back. glibc
// hands blocks of 32 MB and more straight back to the kernel, so every call faulted them
// in again a page at a time, about 2 us a 4 KB page on the 2-core Sapphire Rapids: at
// T=50, N=256, I=H=1024 bfloat16 a GRU backward faulted in 425 MB (torch.nn's 102 MB),
// and the weight gradients' transposed dG (78 MB) took longer to fault in than to write.
// Smaller blocks fare no better: glibc maps blocks past its (moving) mmap threshold fresh
// and trims the heap top, so a T=200, N=1, H=256 LSTM forward faulted in its 1 MB weight
// panels and 800 KB of x W_ih^T every call (773 faults a call; 0 with blocks from 64 KB kept).
class BlockCache {
 public:
  static constexpr size_t kMinBytes = size_t{1} << 16;  // 64 KB
  static constexpr size_t kDefaultMB = 512;

  explicit BlockCache(size_t limit_bytes) : limit_(limit_bytes) {}
  ~BlockCache() {
    for (const auto& b : free_) std::free(b.first);
  }
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // The process's cache, its limit read from FUSEDRNN_CPU_CACHE_MB once. Never destroyed:
  // a Scratch freed during exit (another thread's op) still finds it.
  static BlockCache& global() {
    static BlockCache* cache = new BlockCache([] {
      const char* env = std::getenv("FUSEDRNN_CPU_CACHE_MB");
      return size_t(env && env[0] ? std::strtoull(env, nullptr, 10) : kDefaultMB) << 20;
    }());
    return *cache;
  }

  // A 64-byte aligned block of at least `bytes`; *capacity is its size, to give back. A
  // cached block is reused when it is at most twice the request (the smallest such).
  void* take(size_t bytes, size_t* capacity) {
    bytes = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    if (bytes >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second >= bytes && it->second <= 2 * bytes &&
            (best == free_.end() || it->second < best->second))
          best = it;
      }
      if (best != free_.end()) {
        void* p = best->first;
        *capacity = best->second;
        cached_ -= best->second;
        free_.erase(best);
        return p;
      }
    }
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
    *capacity = bytes;
    return p;
  }

  // Returns a block from take(): cached if large, freed otherwise or past the limit.
  void give(void* p, size_t capacity) {
    if (p == nullptr) return;
    if (capacity >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (capacity <= limit_) {
        free_.emplace_back(p, capacity);
        cached_ += capacity;
        while (cached_ > limit_) {
          std::free(free_.front().first);
          cached_ -= free_.front().second;
          free_.erase(free_.begin());
        }
        return;
      }
    }
    std::free(p);
  }

  // The most bytes it keeps (FUSEDRNN_CPU_CACHE_MB): larger blocks are freed on give().
  size_t limit() const { return limit_; }

  // Bytes held.
  size_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<void*, size_t>> free_;  // oldest first
  size_t cached_ = 0;
  const size_t limit_;
};

// n values, uninitialized and 64-byte aligned: scratch that is written before it is read.
// (std::vector would zero it: a memset, and every page of a fresh mapping faulted in by
// the calling thread rather than by the worker that uses it.) Large ones come from and go
// back to BlockCache::global().
template <typename T = float>
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    p_ = BlockCache::global().take(size_t(n) * sizeof(T), &capacity_);
  }
  Scratch(Scratch&& o) noexcept : p_(o.p_), capacity_(o.capacity_) { o.p_ = nullptr; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch& operator=(Scratch&&) = delete;
  ~Scratch() { BlockCache::global().give(p_, capacity_); }
  T* data() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace fusedrnn
