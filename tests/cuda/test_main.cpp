// The GPU tests' entry point: without a CUDA device they report "skipped" (exit 77, which CTest shows as
// skipped), never "passed".
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <string>

#include "engine/backend/backend.h"

int main(int argc, char** argv) {
  // The device-free checks (the CUDA kernel registry) run everywhere: `cuda_tests
  // --test-suite=cuda_registry`.
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--test-suite=cuda_registry") {
      doctest::Context context(argc, argv);
      return context.run();
    }
  trainer::engine::CudaDevices found = trainer::engine::cuda_devices();
  if (found.devices.empty()) {
    std::printf("skipped: no CUDA device (%s)\n", found.why_none.c_str());
    return 77;
  }
  const trainer::engine::CudaDeviceInfo& d = found.devices.front();
  std::printf("CUDA device 0: %s, sm_%d, %.0f GiB\n", d.name.c_str(), d.sm, d.memory_bytes / 1073741824.0);
  doctest::Context context(argc, argv);
  context.addFilter("test-suite-exclude", "cuda_registry");
  return context.run();
}
