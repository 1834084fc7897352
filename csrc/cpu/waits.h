// How the fused loops' workers wait for each other (workers.h, fused_backward.h): spin for
// a short while, then sleep until a worker that may have made the wait's condition true
// wakes the sleepers. Torch-free (csrc/tests/test_waits.cpp).
//
// Why not spin only: a spinning worker holds its core. With more runnable threads than
// cores (two processes of two workers on two cores, data-loader workers beside a model)
// the worker it waits for may be off its core, and the spinner burns its time slice at
// every step: two concurrent batch-1 LSTM forwards (T=200, H=256) on the 2-core Zen 4 took
// 2.1 ms a call alone, and 6.5-328 ms (medians of runs; single calls up to 400 ms) side by
// side. Past the spin budget a waiter sleeps in a futex,
// giving its core to the worker it waits for. Within a step the waits are microseconds
// (0.01-0.04 us at batch 1; benchmarks/README.md), far below the budget, so an unshared
// machine hardly ever sleeps, and a notify costs one load of the sleepers' count. Where
// the waits do sleep often, SharedCores (below) has the loops take one worker instead.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fusedrnn {

// A waiting worker spins this long before it sleeps; FUSEDRNN_CPU_SPIN_US overrides (0:
// sleep at once, as the tests do).
constexpr int64_t kSpinMicroseconds = 200;

inline int64_t spin_budget_ns() {
  const char* e = std::getenv("FUSEDRNN_CPU_SPIN_US");
  if (e == nullptr || e[0] == '\0') return kSpinMicroseconds * 1000;
  return std::max<int64_t>(0, std::atoll(e)) * 1000;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// One channel for all the waits of a parallel region: any worker may wait on any condition
// (until) and must call notify after each store that can make some worker's condition true.
// A notify wakes every sleeper, and each sleeper checks its own condition again.
class Waits {
 public:
  explicit Waits(int64_t spin_ns = spin_budget_ns(), int64_t sleep_timeout_ms = 200)
      : spin_ns_(spin_ns), timeout_ms_(sleep_timeout_ms) {}

  // Returns once done() holds. done() reads the other workers' stores with acquire loads.
  template <typename P>
  void until(const P& done) {
    if (done()) return;
    if (spin_ns_ > 0) {
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 1;; ++i) {
        cpu_relax();
        if (done()) return;
        if (i % 64 == 0 && std::chrono::steady_clock::now() - start >
                               std::chrono::nanoseconds(spin_ns_)) {
          break;
        }
      }
    }
    if (done()) return;
    sleeps_.fetch_add(1, std::memory_order_relaxed);
    while (!done()) {
      // Dekker's pattern with notify: this RMW on sleepers_ and the notifier's seq_cst
      // store of the condition (or RMW) are in one total order, so either the notifier
      // sees this sleeper, or the fenced done() below sees the store. The epoch read
      // before that check makes the futex wait return at once if a notify came between.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      const uint32_t epoch = epoch_.load(std::memory_order_seq_cst);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (!done() && sleep(epoch) && done()) lost_.fetch_add(1, std::memory_order_relaxed);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  // After a seq_cst store (or RMW) that may satisfy a waiter.
  void notify() {
    if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
    epoch_.fetch_add(1, std::memory_order_seq_cst);
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch_), FUTEX_WAKE_PRIVATE, INT32_MAX,
            nullptr, nullptr, 0);
#endif
  }

  // Waits that went to sleep.
  int64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }

  // Sleeps that ended by their timeout rather than a notify: a lost wakeup ends so, and
  // so does a sleep whose waker had not yet run (a busy or paused host).
  int64_t timeouts() const { return timeouts_.load(std::memory_order_relaxed); }

  // Timed-out sleeps whose condition held when they woke: the store was made and its
  // notify did not wake them (lost wakeups; tests expect none).
  int64_t lost() const { return lost_.load(std::memory_order_relaxed); }

 private:
  // True if the sleep ended by its timeout.
  bool sleep(uint32_t epoch) {
#if defined(__linux__)
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
    timespec timeout{timeout_ms_ / 1000, (timeout_ms_ % 1000) * 1000000};
    const long r = syscall(SYS_futex, reinterpret_cast<uint32_t*>(&epoch_), FUTEX_WAIT_PRIVATE,
                           epoch, &timeout, nullptr, 0);
    const bool timed_out = r != 0 && errno == ETIMEDOUT;
    if (timed_out) timeouts_.fetch_add(1, std::memory_order_relaxed);
    return timed_out;
#else
    (void)epoch;
    std::this_thread::yield();
    return false;
#endif
  }

  alignas(64) std::atomic<int32_t> sleepers_{0};
  std::atomic<uint32_t> epoch_{0};
  std::atomic<int64_t> sleeps_{0};
  std::atomic<int64_t> timeouts_{0};
  std::atomic<int64_t> lost_{0};
  int64_t spin_ns_;
  int64_t timeout_ms_;  // a sleep's longest wait before it checks its condition again
};

// Shared cores. Where another process (or more threads than cores) takes the cores, a
// worker often waits, asleep, for one that is off its core, and a batch-1 step costs a
// scheduler round trip. Two processes of two threads each on the 2-core Zen 4, T=200,
// N=1, H=256 (benchmarks/contention.py): the lockstep of two workers gave an LSTM forward
// 6-20 ms a call (calls up to 400 ms with spinning alone), one worker per process 4.0 ms
// (2.1 ms alone). So a run of steps in which a quarter of the barrier waits slept marks
// the cores as shared: the loops then take one worker (loop_threads in workers.h; the
// same bits, as no sum depends on the workers) and try their threads again after a
// back-off that doubles from kBackoffMin to kBackoffMax while the tries find the cores
// shared; a try that finds them free clears the mark. FUSEDRNN_CPU_SHARED=0: always
// torch's thread count. Process-wide.
class SharedCores {
 public:
  static constexpr int64_t kBackoffMin = 50'000'000, kBackoffMax = 1'000'000'000;  // ns

  static bool now() {
    const char* e = std::getenv("FUSEDRNN_CPU_SHARED");
    if (e != nullptr && e[0] == '0') return false;
    return clock_ns() < until_.load(std::memory_order_relaxed);
  }

  // The back-off of the last mark (0 after a run that found the cores free).
  static int64_t backoff_ns() { return backoff_.load(std::memory_order_relaxed); }

  // Forgets any mark.
  static void clear() {
    until_.store(0, std::memory_order_relaxed);
    backoff_.store(0, std::memory_order_relaxed);
  }

  // After a run of `steps` steps of several workers whose waits slept `sleeps` times, in
  // `ns` nanoseconds. Runs of fewer than kMinSteps steps say nothing either way, nor do
  // runs whose steps took kLongStepNs or more on average: there a sleep and its wake-up
  // cost little against the step, and one worker would double it. (On the 2-core Zen 3
  // of 2026-11-28, a busy VM host, T=100, N=64, I=H=512 LSTM forward, ~2 ms steps: the
  // 200 us spins slept at a quarter of the steps, so calls alternated between two
  // workers, 220-270 ms, and one, 400-490 ms.)
  static constexpr int64_t kMinSteps = 16;
  static constexpr int64_t kLongStepNs = 500'000;
  static void report(int64_t steps, int64_t sleeps, int64_t ns = 0) {
    if (steps < kMinSteps || ns >= kLongStepNs * steps) return;
    if (4 * sleeps >= steps) {
      const int64_t b = std::clamp(2 * backoff_.load(std::memory_order_relaxed), kBackoffMin,
                                   kBackoffMax);
      backoff_.store(b, std::memory_order_relaxed);
      until_.store(clock_ns() + b, std::memory_order_relaxed);
    } else {  // several workers ran without sleeping: the cores are free now
      clear();
    }
  }

 private:
  static int64_t clock_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static inline std::atomic<int64_t> until_{0}, backoff_{0};
};

}  // namespace fusedrnn
