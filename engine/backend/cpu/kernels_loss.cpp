// CPU kernels of op family 'loss'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_loss_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
