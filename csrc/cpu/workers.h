// The workers of the fused loops (recurrence.h, fused_backward.h): torch's intra-op
// threads in one parallel region for a whole sequence, meeting at one barrier (waits.h) per
// step (run_steps), with the first touch of their outputs spread over them (Prefault).
// Their scratch memory: Scratch (block_cache.h).
#pragma once

#include "common.h"
#include "tiles.h"
#include "waits.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fusedrnn {

#if FUSEDRNN_HAVE_FUSED

// Barrier between steps. Workers add how many of them arrived; step s may start once all
// have finished step s-1. They spin, then sleep (waits.h): a sleep and wake-up cost more
// than the microsecond scale of a batch-1 step, but a spinner on a shared core costs more.
class StepBarrier {
 public:
  explicit StepBarrier(Waits& waits) : waits_(waits) {}
  void arrive(int64_t workers) {
    arrived_.fetch_add(workers, std::memory_order_seq_cst);
    waits_.notify();
  }
  void wait(int64_t target) const {
    waits_.until([&] { return arrived_.load(std::memory_order_acquire) >= target; });
  }

 private:
  alignas(64) std::atomic<int64_t> arrived_{0};
  Waits& waits_;
};

// The CPUs torch's intra-op threads may run on (the union of their affinity masks when
// first asked), or 0 if unknown. Not the calling thread's mask alone: GOMP_CPU_AFFINITY
// pins each OpenMP thread to one CPU, and the main thread's one CPU had the fused loops
// take one worker (T=200, N=1, H=256 LSTM forward 3.9 ms instead of 1.7).
inline int64_t usable_cpus() {
#if defined(__linux__)
  static const int64_t n = [] {
    cpu_set_t all;
    CPU_ZERO(&all);
    std::mutex mutex;
    bool known = true;
    torch::stable::parallel_for(0, torch::stable::get_num_threads(), 1, [&](int64_t, int64_t) {
      cpu_set_t set;
      CPU_ZERO(&set);
      const bool got = sched_getaffinity(0, sizeof(set), &set) == 0;
      const std::lock_guard<std::mutex> lock(mutex);
      known = known && got;
      CPU_OR(&all, &all, &set);
    });
    return known ? int64_t(CPU_COUNT(&all)) : int64_t(0);
  }();
  return n;
#else
  return 0;
#endif
}

// The threads a fused loop may take: torch's, at most one a usable CPU (more workers than
// CPUs share cores among themselves: torch.set_num_threads(4) on the 2-core Zen 4, T=200,
// N=1, H=256 forward, LSTM 44.5 ms a call with 4 workers sleeping at the barriers, 4.6
// with SharedCores' one), or one while the cores are shared.
inline int64_t loop_threads() {
  if (SharedCores::now()) return 1;
  const int64_t threads = torch::stable::get_num_threads(), cpus = usable_cpus();
  return cpus > 0 ? std::min(threads, cpus) : threads;
}

// How many workers a fused loop takes for `units` blocks of work and a step of `macs`
// multiply-adds: one for each kWorkerStepMacs of a step, at least one, at most
// loop_threads(). A second worker halves a step's products but meets the first at a
// barrier every step, and what that costs moves with this VM's phases: a cross-core
// round trip takes 0.09 us in a fast phase, while in a slow one a step on two workers
// lost up to ~2 us against one. It had been 64K (a first guess, never measured), which
// left an LSTM below H=181 at N=1 (a GRU below H=209) on one worker, behind torch.nn at
// H=128-160. Paired on the 2-core Zen 4, T=200, N=1, float32, one worker vs two (ms):
// - fast phase, inference: LSTM H=32 (4K a step) 0.171 vs 0.184, H=64 (16K) 0.312 vs
//   0.270, H=128 (64K) 0.864 vs 0.578 (torch.nn 0.852), H=160 1.289 vs 0.782 (1.122);
//   GRU H=64 (12K) 0.256 vs 0.238, H=128 0.671 vs 0.476, H=160 1.028 vs 0.652;
// - slow phase, inference: LSTM H=40 0.262 vs 0.419, H=64 0.358 vs 0.477, H=80 (26K)
//   0.501 vs 0.636, H=96 (37K) 0.638 vs 0.714, H=112 (50K) 0.751 vs 0.562 and 0.773 vs
//   0.574, H=128 1.056 vs 0.761; GRU H=96 (28K) 0.479 vs 0.624, H=112 (38K) 0.580 vs
//   0.843, H=128 (49K) 0.750 vs 0.847 and 0.682 vs 0.491, H=144 (62K) 0.878 vs 0.606;
// - training (forward and backward; the backward counts N*G*(H+I)): LSTM H=64 (33K)
//   0.941 vs 0.943, H=96 (74K) 1.807 vs 1.280, GRU H=96 (55K) 1.609 vs 1.152.
// So a second worker from 48K, where it won in every phase measured; in a fast phase it
// would pay from ~10K. The row-dot loop (FUSEDRNN_CPU_FUSED=0, FUSEDRNN_CPU_ROWDOT=1)
// gained alike at H=128: inference 0.826 -> 0.615, training 2.516 -> 2.150 ms.
constexpr int64_t kWorkerStepMacs = 24 << 10;

inline int64_t step_workers(int64_t units, int64_t macs) {
  return std::max<int64_t>(1,
                           std::min<int64_t>({loop_threads(), units, macs / kWorkerStepMacs}));
}

// Which blocks each worker runs, step by step, in proportion to the rate each worker
// measured (blocks a second, averaged over steps): cores do not all run at one speed
// (hybrid CPUs; on the 2-core Sapphire Rapids VM a two-thread replica of the wide dG W
// product ran 122-130 GFLOP/s pinned to one core and 139-147 on the other, and in the op
// the main thread took 6-10% more samples for the same kernels), and with an even split
// the faster one waits at every barrier. At the start of step s each worker computes
// the split of step s+1 from the times of step s-2 (published by all before step s
// began), the same split on every worker: no locks, no messages. A boundary moves by at
// most one block a step, and only when the rates put it more than kHysteresis blocks
// away. Which worker runs a block does not change its sums: results stay bit-identical.
// FUSEDRNN_CPU_BALANCE=0 keeps the even split; =test moves every boundary by one block
// back and forth each step (tests).
class Balancer {
 public:
  static constexpr double kHysteresis = 0.75;
  static constexpr double kSmoothing = 0.25;  // weight of the newest rate

  Balancer(int64_t blocks, int64_t workers)
      : blocks_(blocks), workers_(workers), mode_(mode()),
        load_((4 * workers + 2) * kLine, 0.0), states_(workers) {
    // Each worker writes its own state and load slot every step: 64 bytes of padding on
    // both sides keep them off the other workers' cache lines.
    for (auto& st : states_) {
      st.ints.assign(7 * (workers + 1) + 2 * kLine, 0);
      st.reals.assign(workers + 2 * kLine, 0.0);
      int64_t* p = st.ints.data() + kLine;
      st.prev = p;
      st.cut = p + (workers + 1);
      st.next = p + 2 * (workers + 1);
      for (int i = 0; i < 4; ++i) st.sizes[i] = p + (3 + i) * (workers + 1);
      st.rate = st.reals.data() + kLine;
      for (int64_t w = 0; w <= workers; ++w) st.cut[w] = blocks * w / workers;
      std::copy(st.cut, st.cut + workers + 1, st.prev);
      std::copy(st.cut, st.cut + workers + 1, st.next);
    }
  }

  // 0 even split, 1 adaptive (default), 2 forced moves (tests). Read at every call, as
  // FUSEDRNN_CPU_FUSED is.
  static int mode() {
    const char* e = std::getenv("FUSEDRNN_CPU_BALANCE");
    if (e == nullptr || e[0] == '\0') return 1;
    return std::strcmp(e, "test") == 0 ? 2 : (e[0] == '0' ? 0 : 1);
  }

  // Worker w's blocks at the step it began last (which 0), the step before (-1) or after (1).
  std::pair<int64_t, int64_t> range(int64_t w, int which = 0) const {
    const State& st = states_[w];
    const int64_t* c = which < 0 ? st.prev : (which > 0 ? st.next : st.cut);
    return {c[w], c[w + 1]};
  }

  // Worker w at the start of step s (after the barrier) of a run of steps from s0.
  void begin(int64_t w, int64_t s, int64_t s0) {
    State& st = states_[w];
    const int64_t n = workers_ + 1;
    std::copy(s == s0 ? st.next : st.cut, (s == s0 ? st.next : st.cut) + n, st.prev);
    std::copy(st.next, st.next + n, st.cut);
    for (int64_t u = 0; u < workers_; ++u) st.sizes[s % 4][u] = st.cut[u + 1] - st.cut[u];
    if (mode_ == 0 || workers_ < 2 || blocks_ < workers_) return;  // (some own no block)
    if (mode_ == 2) {  // every inner boundary one block up, then down: a move every step
      const int64_t d = (s % 2 == 0) ? 1 : -1;
      for (int64_t u = 1; u < workers_; ++u) {
        const int64_t even = blocks_ * u / workers_;
        st.next[u] = std::clamp(even + d, st.next[u - 1] + 1, blocks_ - (workers_ - u));
      }
      return;
    }
    if (s - s0 < 2) return;
    // Rates from step s-2: its blocks over its time, smoothed.
    for (int64_t u = 0; u < workers_; ++u) {
      const double t = load_[((s - 2) % 4 * workers_ + u + 1) * kLine];
      const int64_t n = st.sizes[(s - 2) % 4][u];
      if (t <= 0 || n <= 0) continue;
      const double r = n / t;
      st.rate[u] = st.rate[u] > 0 ? (1 - kSmoothing) * st.rate[u] + kSmoothing * r : r;
    }
    double total = 0;
    for (int64_t u = 0; u < workers_; ++u) {
      if (st.rate[u] <= 0) return;
      total += st.rate[u];
    }
    double acc = 0;
    for (int64_t u = 1; u < workers_; ++u) {
      acc += st.rate[u - 1];
      const double ideal = blocks_ * acc / total;
      int64_t c = st.cut[u];
      if (ideal > c + kHysteresis) ++c;
      if (ideal < c - kHysteresis) --c;
      st.next[u] = std::clamp(c, st.next[u - 1] + 1, blocks_ - (workers_ - u));
    }
  }

  // Worker w's time for step s (its blocks and its work ahead), published before it
  // arrives at step s+1's barrier: the others read it at the start of step s+2.
  void end(int64_t w, int64_t s, double seconds) {
    load_[(s % 4 * workers_ + w + 1) * kLine] = seconds;
  }

 private:
  static constexpr int64_t kLine = 8;  // 64 bytes of int64 or double
  struct State {
    std::vector<int64_t> ints;  // the arrays below, padded
    std::vector<double> reals;
    int64_t *prev, *cut, *next;  // boundaries at steps s-1, s, s+1 [workers + 1]
    int64_t* sizes[4];           // blocks per worker at steps s-3 .. s
    double* rate;                // smoothed blocks a second per worker
  };
  int64_t blocks_, workers_;
  int mode_;
  std::vector<double> load_;  // [4 steps][workers] seconds, one cache line each
  std::vector<State> states_;
};

// h_n from y [R, H] after a recurrence: row n of the last step that ran it (forward, the
// last step whose batch holds it; reverse, t = 0).
template <typename scalar_t>
void copy_final_states(const Steps& st, bool reverse, int64_t H, const scalar_t* y,
                       scalar_t* h_n) {
  for (int64_t n = 0; n < st.N; ++n) {
    int64_t t = 0;
    if (!reverse) {
      t = st.T - 1;
      while (st.batch[t] <= n) --t;
    }
    std::memcpy(h_n + n * H, y + (st.offset[t] + n) * H, H * sizeof(scalar_t));
  }
}

// Runs f(w, s) for every worker w < workers and step s0 <= s < s1, steps in order, with
// all of step s-1 finished before any of step s starts. Then, between finishing step s
// and waiting for the others, each worker runs ahead(w, s): work of its own that needs
// none of the other workers' step s (the next step's input products, the weight
// gradients of its units), done while it would otherwise spin. The workers are torch's
// intra-op threads (one parallel_for over the workers); a thread given several workers
// (fewer threads, or a nested parallel region that runs serially) runs them in turn.
// With a Balancer, each worker begins each step with bal->begin and reports the step's
// time (from the barrier to the end of its work ahead) with bal->end.
// The workers wait for each other through `waits` (or a channel of the call's own), which
// the caller's own waits in f or ahead share.
template <typename F, typename A>
void run_steps(int64_t workers, int64_t s0, int64_t s1, const F& f, const A& ahead,
               Balancer* bal = nullptr, Waits* waits = nullptr) {
  if (workers == 1) {
    for (int64_t s = s0; s < s1; ++s) {
      if (bal) bal->begin(0, s, s0);
      f(int64_t{0}, s);
      ahead(int64_t{0}, s);
    }
    return;
  }
  Waits own;
  Waits& channel = waits != nullptr ? *waits : own;
  const int64_t slept = channel.sleeps();
  const auto start = std::chrono::steady_clock::now();
  StepBarrier barrier(channel);
  torch::stable::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t s = s0; s < s1; ++s) {
      if (s > s0) barrier.wait(workers * (s - s0));
      const auto t0 = std::chrono::steady_clock::now();
      if (bal) {
        for (int64_t w = w0; w < w1; ++w) bal->begin(w, s, s0);
      }
      for (int64_t w = w0; w < w1; ++w) f(w, s);
      barrier.arrive(w1 - w0);
      for (int64_t w = w0; w < w1; ++w) ahead(w, s);
      if (bal) {  // a thread that runs several workers reports each its share
        const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        for (int64_t w = w0; w < w1; ++w) bal->end(w, s, dt.count() / double(w1 - w0));
      }
    }
  });
  const std::chrono::nanoseconds ran = std::chrono::steady_clock::now() - start;
  SharedCores::report(s1 - s0, channel.sleeps() - slept, ran.count());
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
