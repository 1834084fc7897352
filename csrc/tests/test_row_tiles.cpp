// Unit test of row_tiles.h: for_row_tiles covers B rows once, in order, in as many tiles
// as B / 6 rounded up, none over 6 rows, and none of 1 or 2 rows where B is over 6 (those
// leave the panel kernel's loads to a third of its FMAs). Exit code 1 on any failure.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu/row_tiles.h"

int main() {
  int failures = 0;
  auto fail = [&](int64_t B, const char* what) {
    std::printf("FAIL: B=%lld: %s\n", static_cast<long long>(B), what);
    ++failures;
  };
  for (int64_t B = 0; B <= 400; ++B) {
    std::vector<std::pair<int64_t, int>> tiles;
    fusedrnn::for_row_tiles(B, [&](int64_t n0, int rows) { tiles.push_back({n0, rows}); });
    int64_t next = 0;
    for (const auto& [n0, rows] : tiles) {
      if (n0 != next) fail(B, "a tile does not start where the last ended");
      if (rows < 1 || rows > fusedrnn::kAvx2Rows) fail(B, "a tile of 0 or over 6 rows");
      if (B > fusedrnn::kAvx2Rows && rows < 3) fail(B, "a tile of 1 or 2 rows");
      next = n0 + rows;
    }
    if (next != B) fail(B, "the tiles do not end at B");
    const int64_t count = (B + fusedrnn::kAvx2Rows - 1) / fusedrnn::kAvx2Rows;
    if (static_cast<int64_t>(tiles.size()) != count) fail(B, "more tiles than B / 6 rounded up");
  }
  // the cut of the deep shape's batch, spelled out
  std::vector<int> rows32;
  fusedrnn::for_row_tiles(32, [&](int64_t, int rows) { rows32.push_back(rows); });
  if (rows32 != std::vector<int>{6, 6, 6, 6, 4, 4}) fail(32, "not 6, 6, 6, 6, 4, 4");
  if (failures == 0) std::printf("test_row_tiles: all passed\n");
  return failures == 0 ? 0 : 1;
}
