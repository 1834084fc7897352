// The workers of the fused loops (recurrence.h, fused_backward.h): torch's intra-op
// threads in one parallel region for a whole sequence, meeting at one spin barrier per
// step (run_steps), with the first touch of their outputs spread over them (Prefault).
// Their scratch memory: Scratch (block_cache.h).
#pragma once

#include "common.h"
#include "tiles.h"

#include <atomic>
#include <memory>
#include <thread>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// Spin barrier between steps. Workers add how many of them arrived; step s may start
// once all have finished step s-1. Spinning (then yielding) costs less than a sleep and
// wake-up at the microsecond scale of a batch-1 step.
class StepBarrier {
 public:
  void arrive(int64_t workers) { arrived_.fetch_add(workers, std::memory_order_release); }
  void wait(int64_t target) const {
    for (int64_t spins = 0; arrived_.load(std::memory_order_acquire) < target; ++spins) {
      if (spins < (1 << 16)) {
        _mm_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  alignas(64) std::atomic<int64_t> arrived_{0};
};

// Runs f(w, s) for every worker w < workers and step s0 <= s < s1, steps in order, with
// all of step s-1 finished before any of step s starts. Then, between finishing step s
// and waiting for the others, each worker runs ahead(w, s): work of its own that needs
// none of the other workers' step s (the next step's input products, the weight
// gradients of its units), done while it would otherwise spin. The workers are torch's
// intra-op threads (one parallel_for over the workers); a thread given several workers
// (fewer threads, or a nested parallel region that runs serially) runs them in turn.
template <typename F, typename A>
void run_steps(int64_t workers, int64_t s0, int64_t s1, const F& f, const A& ahead) {
  if (workers == 1) {
    for (int64_t s = s0; s < s1; ++s) {
      f(int64_t{0}, s);
      ahead(int64_t{0}, s);
    }
    return;
  }
  StepBarrier barrier;
  torch::stable::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t s = s0; s < s1; ++s) {
      if (s > s0) barrier.wait(workers * (s - s0));
      for (int64_t w = w0; w < w1; ++w) f(w, s);
      barrier.arrive(w1 - w0);
      for (int64_t w = w0; w < w1; ++w) ahead(w, s);
    }
  });
}

// The first touch of the outputs written row by row ([R, width] arrays: y, the workspace,
// dx). They are fresh allocations, and the workers split every row by units, so both
// write into every page: each page then faults once per worker, and the faults contend
// on the page-table lock (at T=50, N=256, H=1024, a training forward faulted in 610 MB
// for its 315 MB of outputs). Instead the steps form groups of at least kGroupBytes of
// output; at a group's first step each worker maps in its page-aligned share of the next
// group's rows with MADV_POPULATE_WRITE, which faults pages in as a write would but
// leaves their contents alone (Linux 5.14+; elsewhere, or where it fails, a no-op).
class Prefault {
 public:
  static constexpr int64_t kGroupBytes = 1 << 20;

  // Steps in run order: step s holds rows [first(s), first(s) + count(s)).
  template <typename First, typename Count>
  Prefault(int64_t steps, const First& first, const Count& count,
           std::vector<std::pair<void*, int64_t>> arrays)  // base, bytes per row
      : arrays_(std::move(arrays)), group_of_(steps) {
    int64_t width = 0;
    for (const auto& a : arrays_) width += a.second;
    for (int64_t s = 0; s < steps;) {
      int64_t lo = first(s), hi = lo;
      const int64_t s0 = s;
      while (s < steps && (s == s0 || (hi - lo) * width < kGroupBytes)) {
        lo = std::min(lo, first(s));
        hi = std::max(hi, first(s) + count(s));
        group_of_[s++] = static_cast<int64_t>(rows_.size());
      }
      rows_.push_back({lo, hi});
      starts_.push_back(s0);
    }
  }

  // Worker w of `workers` at step s: at step 0 its share of groups 0 and 1, at a later
  // group's first step its share of the group after.
  void at_step(int64_t s, int64_t w, int64_t workers) const {
    if (arrays_.empty() || group_of_.empty() || starts_[group_of_[s]] != s) return;
    const int64_t g = group_of_[s];
    if (s == 0) populate(0, w, workers);
    if (g + 1 < static_cast<int64_t>(rows_.size())) populate(g + 1, w, workers);
  }

 private:
  void populate(int64_t g, int64_t w, int64_t workers) const {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    for (const auto& [base, row_bytes] : arrays_) {
      const uintptr_t b = reinterpret_cast<uintptr_t>(base);
      const uintptr_t lo = (b + rows_[g].first * row_bytes) / page;
      const uintptr_t hi = (b + rows_[g].second * row_bytes + page - 1) / page;
      const uintptr_t p0 = lo + (hi - lo) * w / workers, p1 = lo + (hi - lo) * (w + 1) / workers;
      if (p1 > p0) madvise(reinterpret_cast<void*>(p0 * page), (p1 - p0) * page, MADV_POPULATE_WRITE);
    }
#else
    (void)g, (void)w, (void)workers;
#endif
  }

  std::vector<std::pair<void*, int64_t>> arrays_;
  std::vector<int64_t> group_of_, starts_;
  std::vector<std::pair<int64_t, int64_t>> rows_;
};

#endif  // FUSEDRNN_HAVE_FUSED

}  // namespace fusedrnn
