// CPU kernels of op family 'optimizer'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_optimizer_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
