// Device code of the blas family: FusedGemm's activation applied after a cuBLASLt bias epilogue, for the
// cases cuBLASLt cannot do exactly (its GELU epilogue is an approximation of its own; ours must match the
// CPU's).
#include <cuda_bf16.h>

#include "engine/backend/cuda/launch_blas.h"
#include "engine/kernels/functors.h"

namespace trainer::engine::cuda {

namespace k = trainer::engine::kernels;

namespace {

// One thread per element, grid-stride: memory-bound, nothing to share between threads.
template <class Op>
__global__ void activation(Op op, const float* z, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = op(z[i]);
}

template <class Op>
__global__ void activation_bf16(Op op, const __nv_bfloat16* z, __nv_bfloat16* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = __float2bfloat16_rn(op(__bfloat162float(z[i])));
}

struct Identity {
  __device__ float operator()(float x) const { return x; }
};

}  // namespace

cudaError_t launch_gemm_activation(GemmActivation act, const float* z, float* y, int64_t n,
                                   cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!z || !y) return cudaErrorInvalidValue;
  constexpr unsigned block = 256;
  int64_t blocks = (n + block - 1) / block;
  const unsigned grid = static_cast<unsigned>(blocks > 65535 * 8 ? 65535 * 8 : blocks);
  switch (act) {
    case GemmActivation::none:
      activation<<<grid, block, 0, stream>>>(Identity{}, z, y, n);
      break;
    case GemmActivation::relu:
      activation<<<grid, block, 0, stream>>>(k::ReluOp{}, z, y, n);
      break;
    case GemmActivation::gelu:
      activation<<<grid, block, 0, stream>>>(k::GeluOp{false}, z, y, n);
      break;
    case GemmActivation::gelu_tanh:
      activation<<<grid, block, 0, stream>>>(k::GeluOp{true}, z, y, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_gemm_activation_bf16(GemmActivation act, const void* zv, void* yv, int64_t n,
                                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!zv || !yv) return cudaErrorInvalidValue;
  const auto* z = static_cast<const __nv_bfloat16*>(zv);
  auto* y = static_cast<__nv_bfloat16*>(yv);
  constexpr unsigned block = 256;
  int64_t blocks = (n + block - 1) / block;
  const unsigned grid = static_cast<unsigned>(blocks > 65535 * 8 ? 65535 * 8 : blocks);
  switch (act) {
    case GemmActivation::none:
      activation_bf16<<<grid, block, 0, stream>>>(Identity{}, z, y, n);
      break;
    case GemmActivation::relu:
      activation_bf16<<<grid, block, 0, stream>>>(k::ReluOp{}, z, y, n);
      break;
    case GemmActivation::gelu:
      activation_bf16<<<grid, block, 0, stream>>>(k::GeluOp{false}, z, y, n);
      break;
    case GemmActivation::gelu_tanh:
      activation_bf16<<<grid, block, 0, stream>>>(k::GeluOp{true}, z, y, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

namespace {

template <class T>
__device__ double load_as_double(const T* p, int64_t k) {
  return static_cast<double>(p[k]);
}
template <>
__device__ double load_as_double(const __nv_bfloat16* p, int64_t k) {
  return static_cast<double>(__bfloat162float(p[k]));
}
template <class T>
__device__ void store_from_double(T* p, int64_t k, double v) {
  p[k] = static_cast<T>(v);
}
template <>
__device__ void store_from_double(__nv_bfloat16* p, int64_t k, double v) {
  p[k] = __float2bfloat16_rn(static_cast<float>(v));
}

template <class T>
__global__ void column_sums(const T* dz, T* db, int64_t m, int64_t n) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{gridDim.x} * blockDim.x) {
    double s = 0;
    for (int64_t i = 0; i < m; ++i) s += load_as_double(dz, i * n + j);
    store_from_double(db, j, s);
  }
}

}  // namespace

cudaError_t launch_column_sums(int type, const void* dz, void* db, int64_t m, int64_t n,
                               cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!dz || !db || m < 0) return cudaErrorInvalidValue;
  constexpr unsigned block = 128;
  int64_t blocks = (n + block - 1) / block;
  const unsigned grid = static_cast<unsigned>(blocks > 65535 ? 65535 : blocks);
  switch (type) {
    case 0:
      column_sums<<<grid, block, 0, stream>>>(static_cast<const float*>(dz), static_cast<float*>(db), m, n);
      break;
    case 1:
      column_sums<<<grid, block, 0, stream>>>(static_cast<const double*>(dz), static_cast<double*>(db), m, n);
      break;
    case 2:
      column_sums<<<grid, block, 0, stream>>>(static_cast<const __nv_bfloat16*>(dz),
                                              static_cast<__nv_bfloat16*>(db), m, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace trainer::engine::cuda
