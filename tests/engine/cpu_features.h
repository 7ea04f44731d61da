// What the test machine's CPU can run, for the tests of kernels that need more than AVX2.
#pragma once

namespace trainer::test {

// oneDNN's bf16 kernels need AVX-512 (F, BW, VL, DQ); on other CPUs trainer refuses bf16 with a hint, and
// the bf16 numerics tests are skipped (reported as skipped by doctest).
inline bool cpu_runs_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

}  // namespace trainer::test
