// CPU kernels of op family 'reduce'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_reduce_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
