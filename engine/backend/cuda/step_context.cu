// Device code of the backend itself: the per-step counters every kernel may read.
#include "engine/backend/cuda/launch_step.h"

namespace trainer::engine::cuda {

namespace {

__global__ void set_step_context(DeviceStepContext* ctx, uint64_t step, uint64_t seed,
                                 uint64_t sample_offset) {
  ctx->step = step;
  ctx->seed = seed;
  ctx->sample_offset = sample_offset;
}

}  // namespace

cudaError_t launch_set_step_context(DeviceStepContext* ctx, uint64_t step, uint64_t seed,
                                    uint64_t sample_offset, cudaStream_t stream) {
  set_step_context<<<1, 1, 0, stream>>>(ctx, step, seed, sample_offset);
  return cudaGetLastError();
}

}  // namespace trainer::engine::cuda
