// The CUDA entry points of a build without CUDA (-DTRAINER_CUDA=OFF): no device is ever found.
#include "engine/backend/backend.h"
#include "engine/util/error.h"

namespace trainer::engine {

bool cuda_built() {
  return false;
}

CudaDevices cuda_devices() {
  return {{}, "this trainer was built without CUDA"};
}

std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options) {
  throw InputError(fmt::format("cuda:{}", options.device), "this trainer was built without CUDA",
                   "run on the CPU with --device cpu, or build with -DTRAINER_CUDA=ON");
}

uint64_t cuda_allocation_calls() {
  return 0;
}

}  // namespace trainer::engine
