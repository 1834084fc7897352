// Unit test of block_cache.h: which requests a freed block serves, the size limit and its
// eviction order, and Scratch's round trip through the global cache. Exit code 1 on any
// failure.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "cpu/block_cache.h"

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

constexpr size_t kMB = size_t{1} << 20;

}  // namespace

int main() {
  using fusedrnn::BlockCache;
  {
    BlockCache cache(64 * kMB);
    size_t cap = 0;
    void* a = cache.take(8 * kMB + 1, &cap);
    check(a != nullptr && reinterpret_cast<uintptr_t>(a) % 64 == 0, "a block is 64-byte aligned");
    check(cap >= 8 * kMB + 1 && cap % 64 == 0, "capacity covers the request, in lines");
    std::memset(a, 1, cap);  // all of it is ours
    cache.give(a, cap);
    check(cache.cached() == cap, "a large block is kept");
    size_t cap2 = 0;
    void* b = cache.take(8 * kMB, &cap2);
    check(b == a && cap2 == cap, "the same size takes the kept block back");
    check(cache.cached() == 0, "a taken block leaves the cache");
    cache.give(b, cap2);
    size_t cap3 = 0;
    void* c = cache.take(4 * kMB, &cap3);  // less than half the kept block
    check(c != a, "a block more than twice the request is not used");
    cache.give(c, cap3);
    void* d = cache.take(16 * kMB, &cap3);
    check(d != a && cap3 == 16 * kMB, "a larger request gets a new block");
    cache.give(d, cap3);
    size_t small = 0;
    void* e = cache.take(BlockCache::kMinBytes - 100, &small);
    check(small == BlockCache::kMinBytes - 64, "a small block is the request rounded to lines");
    const size_t before = cache.cached();
    cache.give(e, small);
    check(cache.cached() == before, "a block under kMinBytes is freed, not kept");
    size_t mid = 0;
    void* f = cache.take(BlockCache::kMinBytes, &mid);
    cache.give(f, mid);
    check(cache.cached() == before + mid, "a block of kMinBytes is kept");
    size_t mid2 = 0;
    void* g = cache.take(BlockCache::kMinBytes, &mid2);
    check(g == f && mid2 == mid, "and taken back");
    cache.give(g, mid2);
  }
  {
    BlockCache cache(20 * kMB);
    size_t c1 = 0, c2 = 0, c3 = 0;
    void* a = cache.take(8 * kMB, &c1);
    void* b = cache.take(8 * kMB, &c2);
    void* c = cache.take(8 * kMB, &c3);
    cache.give(a, c1);
    cache.give(b, c2);
    cache.give(c, c3);  // 24 MB > 20: the oldest (a) goes
    check(cache.cached() == 16 * kMB, "the cache stays within its limit");
    size_t got = 0;
    void* x = cache.take(8 * kMB, &got);
    void* y = cache.take(8 * kMB, &got);
    check((x == b && y == c) || (x == c && y == b), "the oldest block was the one freed");
    cache.give(x, got);
    cache.give(y, got);
    void* big = cache.take(32 * kMB, &got);
    cache.give(big, got);  // past the limit on its own: freed
    check(cache.cached() == 16 * kMB, "a block larger than the limit is not kept");
  }
  {
    BlockCache off(0);
    size_t cap = 0;
    void* a = off.take(8 * kMB, &cap);
    off.give(a, cap);
    check(off.cached() == 0, "a zero limit keeps nothing");
  }
  {
    const float* first = nullptr;
    {
      fusedrnn::Scratch<float> s(3 * kMB);  // 12 MB
      first = s.data();
      s.data()[3 * kMB - 1] = 1.f;
    }
    fusedrnn::Scratch<float> again(3 * kMB);
    check(again.data() == first, "Scratch returns its block to the global cache");
  }
  std::printf("%s\n", failures ? "FAILED" : "block cache: all checks passed");
  return failures ? 1 : 0;
}
