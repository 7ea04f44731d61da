// Launchers of the blas family's own device code (blas_epilogue.cu): the activations cuBLASLt's epilogues do
// not compute exactly as the CPU does, and the bias sums of GEMMs and convolutions. Plain declarations that
// g++ and nvcc both read.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/backend/cuda/launch_elementwise.h"

namespace trainer::engine::cuda {

// FusedGemm's activations, numbered as the kernel switches on them.
enum class GemmActivation : int { none = 0, relu = 1, gelu = 2, gelu_tanh = 3 };

// y[i] = act(z[i]) for i < n, with the shared functors (kernels::ReluOp, kernels::GeluOp), so the GPU
// computes the formula the CPU does. z and y may be the same buffer.
cudaError_t launch_gemm_activation(GemmActivation act, const float* z, float* y, int64_t n,
                                   cudaStream_t stream);
// The same on bf16 values (mixed precision): computed in f32, rounded to nearest even.
cudaError_t launch_gemm_activation_bf16(GemmActivation act, const void* z, void* y, int64_t n,
                                        cudaStream_t stream);

// db[j] = sum over i < m of dz[i * n + j]: the bias gradient beside a weight-gradient GEMM
// (GemmGradWeightBias). Threads take columns (adjacent threads adjacent columns: the loads coalesce) and walk
// chunks of 16 rows (more for inputs over 65,536 rows: at most 4,096 chunks) in order with a double
// accumulator; the chunks' sums, kept in the workspace (8 bytes a chunk and column), are then added in order,
// so the sum is the same on every run. With no room there, one chunk. `type`: f32, f64, bf16 or f16.
cudaError_t launch_column_sums(ElemType type, const void* dz, void* db, int64_t m, int64_t n, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream);

// A convolution's bias, on NCHW tensors of batch x channels x spatial elements; `type`: f32, f64, bf16 or
// f16, each computed in double and rounded once. launch_channel_bias: y[i][c][j] += b[c], in place.
cudaError_t launch_channel_bias(ElemType type, void* y, const void* b, int64_t batch, int64_t channels,
                                int64_t spatial, cudaStream_t stream);
// launch_channel_sums: db[c] = the sum over i and j of dy[i][c][j], in an order fixed by the sizes alone (the
// same bits on every run). Each channel is summed in up to 1,024 chunks in parallel, their sums kept in the
// workspace (8 bytes a chunk and channel) and added in order; with no room there, one chunk per channel.
cudaError_t launch_channel_sums(ElemType type, const void* dy, void* db, int64_t batch, int64_t channels,
                                int64_t spatial, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream);

}  // namespace trainer::engine::cuda
