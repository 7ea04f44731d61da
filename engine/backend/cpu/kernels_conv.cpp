// CPU kernels of op family 'conv'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_conv_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
