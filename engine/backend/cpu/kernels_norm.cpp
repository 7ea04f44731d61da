// CPU kernels of op family 'norm'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_norm_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
