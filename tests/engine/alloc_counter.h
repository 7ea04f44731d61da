// Counts heap allocations (operator new, malloc family, aligned allocations) made by any thread while armed,
// and tells apart those that oneDNN makes inside its own execute call (its per-call argument map) from all
// others.
#pragma once

#include <cstdint>

namespace trainer::test {

struct AllocationCounts {
  int64_t total = 0;
  int64_t in_onednn = 0;  // calls made from oneDNN's own code
  int64_t bytes_in_onednn = 0;
  int64_t outside_onednn() const { return total - in_onednn; }
};

void arm_allocation_counter();
AllocationCounts disarm_allocation_counts();
// Disarms and returns every allocation seen, wherever it came from.
inline int64_t disarm_allocation_counter() {
  return disarm_allocation_counts().total;
}

}  // namespace trainer::test
