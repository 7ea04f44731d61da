// Launchers of the backend's own device code (step_context.cu): plain declarations that g++ and nvcc both
// read.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace trainer::engine::cuda {

// The step's counters, in device memory: the backend writes them before each step, so a captured graph reads
// this step's values, not the capture's. Kernels that draw random numbers (Dropout) read them.
struct DeviceStepContext {
  uint64_t step;
  uint64_t seed;
  uint64_t sample_offset;
};

// Writes the step's counters into device memory, in stream order. The values travel as kernel arguments, so
// the host may enqueue the next step at once; a captured graph that follows reads them from `ctx`.
cudaError_t launch_set_step_context(DeviceStepContext* ctx, uint64_t step, uint64_t seed,
                                    uint64_t sample_offset, cudaStream_t stream);

}  // namespace trainer::engine::cuda
