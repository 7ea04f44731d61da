// The one list of every CPU kernel file.
#include "engine/backend/cpu/cpu_kernel.h"

namespace trainer::engine::cpu {

void register_elementwise_cpu_kernels(KernelRegistry& r);
void register_shape_cpu_kernels(KernelRegistry& r);
void register_reduce_cpu_kernels(KernelRegistry& r);
void register_matmul_cpu_kernels(KernelRegistry& r);
void register_conv_cpu_kernels(KernelRegistry& r);
void register_norm_cpu_kernels(KernelRegistry& r);
void register_loss_cpu_kernels(KernelRegistry& r);
void register_rnn_cpu_kernels(KernelRegistry& r);
void register_optimizer_cpu_kernels(KernelRegistry& r);

void register_all_cpu_kernels(KernelRegistry& r) {
  register_elementwise_cpu_kernels(r);
  register_shape_cpu_kernels(r);
  register_reduce_cpu_kernels(r);
  register_matmul_cpu_kernels(r);
  register_conv_cpu_kernels(r);
  register_norm_cpu_kernels(r);
  register_loss_cpu_kernels(r);
  register_rnn_cpu_kernels(r);
  register_optimizer_cpu_kernels(r);
}

}  // namespace trainer::engine::cpu
