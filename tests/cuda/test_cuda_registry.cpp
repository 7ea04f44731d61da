// The CUDA kernel registry, checked without a GPU: it builds (no op registered twice), every entry is an op
// of the engine's registry, and the ops left to the host fallback are exactly the ones listed here, so a
// kernel that goes missing, or a new op without one, is noticed.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/ir/op_schema.h"

using namespace trainer::engine;

TEST_SUITE("cuda_registry") {
  TEST_CASE("cuda_registry: every CUDA kernel is a registered op, and the host-fallback ops are known") {
    const auto& kernels = cuda::KernelRegistry::global().all();
    for (const auto& [name, f] : kernels) {
      CAPTURE(name);
      CHECK(OpRegistry::global().find(name) != nullptr);
    }
    // Every op has a CUDA kernel (a factory may still hand an unsupported case to the host at prepare time).
    const std::set<std::string> host = {};
    std::set<std::string> without;
    for (const auto& [name, s] : OpRegistry::global().all())
      if (!kernels.count(name)) without.insert(name);
    CHECK(without == host);
    MESSAGE(kernels.size() << " ops with CUDA kernels; on the host: " << without.size());
  }
}
