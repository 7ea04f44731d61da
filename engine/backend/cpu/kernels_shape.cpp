// CPU kernels of op family 'shape'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_shape_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
