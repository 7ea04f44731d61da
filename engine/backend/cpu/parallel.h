// Static-partition parallel loops for CPU kernels. Each index range goes to a fixed thread for a fixed thread
// count, so results are deterministic run to run; reductions combine per-thread partials in thread order.
#pragma once

#include <omp.h>

#include <cstdint>

namespace trainer::engine::cpu {

// Below this many elements the loop runs on the calling thread: forking costs more than it saves.
inline constexpr int64_t kParallelGrain = 1 << 15;

template <class F>
void parallel_for(int64_t n, F&& f, int64_t grain = kParallelGrain) {
  if (n < grain || omp_get_max_threads() == 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Calls f(begin, end) on contiguous chunks, one per thread.
template <class F>
void parallel_chunks(int64_t n, F&& f, int64_t grain = kParallelGrain) {
  if (n < grain || omp_get_max_threads() == 1) {
    f(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t b = n * t / nt, e = n * (t + 1) / nt;
    if (b < e) f(b, e);
  }
}

}  // namespace trainer::engine::cpu
