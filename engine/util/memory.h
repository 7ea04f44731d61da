// The memory this process may fill, for refusing sizes no run could hold before allocating them.
#pragma once

namespace trainer::engine {

// Bytes: the machine's physical memory, or less where a limit says so (ulimit -v or -d, the memory.max of
// the process's cgroup v2 or a parent's, cgroup v1's memory.limit_in_bytes). Read once, then cached.
double usable_memory_bytes();

}  // namespace trainer::engine
