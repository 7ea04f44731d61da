// Counts heap allocations (operator new and malloc family) made by any thread while a counter is armed.
#pragma once

#include <cstdint>

namespace trainer::test {

void arm_allocation_counter();
// Disarms the counter and returns the allocations seen since it was armed.
int64_t disarm_allocation_counter();

}  // namespace trainer::test
