// CPU kernels of op family 'matmul'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_matmul_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
