// CPU kernels of op family 'rnn'.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_rnn_cpu_kernels(KernelRegistry& r) {}

}  // namespace trainer::engine::cpu
