// Unit test of waits.h: workers that sleep at every wait (no spin) still see every store
// they wait for, and no sleep ends by its timeout with its store made (a lost wakeup); a
// step barrier built on it, as workers.h's, keeps the steps in order. Exit code 1 on any
// failure. (A sleep may time out while its waker has not run yet: on a paused VM host.)
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include "cpu/waits.h"

namespace {

int failures = 0;

// Sleeps end by this timeout with their condition met only where a wakeup was lost:
// short, so that a broken notify fails in seconds rather than hangs.
constexpr int64_t kTimeoutMs = 20;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

// `workers` threads through `steps` barriers: at step s each writes s*workers + w into its
// slot of the step's parity, then after the barrier reads every slot of step s. A waiter
// that left the barrier early would read a slot of step s-2.
int64_t barrier_steps(int64_t workers, int64_t steps, int64_t spin_ns, int64_t* timeouts,
                      int64_t* lost) {
  fusedrnn::Waits waits(spin_ns, kTimeoutMs);
  std::atomic<int64_t> arrived{0};
  std::vector<std::atomic<int64_t>> slots(2 * workers);
  std::atomic<int64_t> wrong{0};
  std::vector<std::thread> threads;
  for (int64_t w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      for (int64_t s = 0; s < steps; ++s) {
        slots[s % 2 * workers + w].store(s * workers + w, std::memory_order_relaxed);
        arrived.fetch_add(1, std::memory_order_seq_cst);
        waits.notify();
        waits.until([&] { return arrived.load(std::memory_order_acquire) >= (2 * s + 1) * workers; });
        for (int64_t u = 0; u < workers; ++u) {
          if (slots[s % 2 * workers + u].load(std::memory_order_relaxed) != s * workers + u) {
            wrong.fetch_add(1);
          }
        }
        // Nobody rewrites this parity's slots before all have read them: a second barrier.
        arrived.fetch_add(1, std::memory_order_seq_cst);
        waits.notify();
        waits.until([&] { return arrived.load(std::memory_order_acquire) >= (2 * s + 2) * workers; });
      }
    });
  }
  for (auto& t : threads) t.join();
  *timeouts = waits.timeouts();
  *lost = waits.lost();
  return wrong.load();
}

}  // namespace

int main() {
  // Barriers of 2 and 3 threads, sleeping at every wait (spin 0) and with the default spin.
  for (int64_t workers : {2, 3}) {
    for (int64_t spin_ns : {int64_t{0}, fusedrnn::kSpinMicroseconds * 1000}) {
      int64_t timeouts = -1, lost = -1;
      const int64_t wrong = barrier_steps(workers, 3000, spin_ns, &timeouts, &lost);
      std::printf("barrier: %lld workers, spin %lld ns: %lld wrong reads, %lld timed-out "
                  "sleeps, %lld of them lost wakeups\n",
                  static_cast<long long>(workers), static_cast<long long>(spin_ns),
                  static_cast<long long>(wrong), static_cast<long long>(timeouts),
                  static_cast<long long>(lost));
      check(wrong == 0, "every worker reads all of the step's slots after the barrier");
      check(lost == 0, "every sleep whose store was made ends by its notify");
    }
  }
  // Ping-pong on two flags (the backward's wait on a block's applied chunks): each side
  // waits, asleep, for the other's store.
  {
    fusedrnn::Waits waits(0, kTimeoutMs);
    std::atomic<int64_t> ping{0}, pong{0};
    constexpr int64_t kRounds = 5000;
    std::thread other([&] {
      for (int64_t i = 1; i <= kRounds; ++i) {
        waits.until([&] { return ping.load(std::memory_order_acquire) >= i; });
        pong.store(i, std::memory_order_seq_cst);
        waits.notify();
      }
    });
    for (int64_t i = 1; i <= kRounds; ++i) {
      ping.store(i, std::memory_order_seq_cst);
      waits.notify();
      waits.until([&] { return pong.load(std::memory_order_acquire) >= i; });
    }
    other.join();
    check(pong.load() == kRounds, "the ping-pong ran every round");
    check(waits.lost() == 0, "ping-pong: no wakeup lost");
  }
  // A notify with nobody asleep is a load and nothing else: the epoch does not move, and
  // a later sleeper is not woken by it (its wait returns only when the condition holds).
  {
    fusedrnn::Waits waits(0, 2000);
    std::atomic<int> flag{0};
    waits.notify();
    std::thread setter([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      flag.store(1, std::memory_order_seq_cst);
      waits.notify();
    });
    const auto t0 = std::chrono::steady_clock::now();
    waits.until([&] { return flag.load(std::memory_order_acquire) == 1; });
    const auto waited = std::chrono::steady_clock::now() - t0;
    setter.join();
    check(waited >= std::chrono::milliseconds(15), "the waiter slept until the store");
    check(waits.lost() == 0, "and was woken by its notify");
  }
  // SharedCores: a run whose waits slept at a quarter of its steps marks the cores shared
  // for a back-off that doubles with each such run up to its cap; a run that found them
  // free clears the mark.
  {
    using fusedrnn::SharedCores;
    SharedCores::clear();
    check(!SharedCores::now(), "no mark: the loops take their threads");
    SharedCores::report(200, 49);
    check(!SharedCores::now(), "sleeps at under a quarter of the steps: no mark");
    SharedCores::report(15, 15);
    check(!SharedCores::now(), "a run of under 16 steps: no mark");
    SharedCores::report(200, 200, 200 * SharedCores::kLongStepNs);
    check(!SharedCores::now(), "a run of long steps: no mark");
    // A mark lasts its back-off from the report: where this thread was paused past it
    // (a busy VM host), the check below has nothing to say.
    auto marked = [](std::chrono::steady_clock::time_point since) {
      return SharedCores::now() || std::chrono::steady_clock::now() - since >=
                                       std::chrono::nanoseconds(SharedCores::kBackoffMin);
    };
    auto t0 = std::chrono::steady_clock::now();
    SharedCores::report(200, 50);
    check(marked(t0), "sleeps at a quarter of the steps mark the cores shared");
    check(SharedCores::backoff_ns() == SharedCores::kBackoffMin, "for the shortest back-off");
    SharedCores::report(200, 200);
    check(SharedCores::backoff_ns() == 2 * SharedCores::kBackoffMin, "which doubles");
    for (int i = 0; i < 40; ++i) SharedCores::report(200, 200);
    check(SharedCores::backoff_ns() == SharedCores::kBackoffMax, "up to its cap");
    SharedCores::report(200, 0);
    check(SharedCores::backoff_ns() == 0 && !SharedCores::now(),
          "a run that found the cores free clears the mark");
    SharedCores::clear();
    t0 = std::chrono::steady_clock::now();
    SharedCores::report(16, 4);
    check(marked(t0), "a run of 16 steps with 4 sleeps marks");
    SharedCores::report(15, 0);
    check(marked(t0), "a run of under 16 steps does not clear it");
    SharedCores::report(200, 0, 200 * SharedCores::kLongStepNs);
    check(marked(t0), "nor does a run of long steps");
    std::this_thread::sleep_for(std::chrono::milliseconds(SharedCores::kBackoffMin / 1000000 + 20));
    check(!SharedCores::now(), "the mark ends with its back-off");
    SharedCores::clear();
  }
  if (failures == 0) std::printf("all waits tests passed\n");
  return failures == 0 ? 0 : 1;
}
