// CUDA kernels of the dnn family (placeholder until they land: every node runs on the host fallback).
#include "engine/backend/cuda/cuda_kernel.h"

namespace trainer::engine::cuda {

void register_dnn_kernels(KernelRegistry&) {}

}  // namespace trainer::engine::cuda
