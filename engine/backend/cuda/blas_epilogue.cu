// Device code of the blas family: FusedGemm's activation applied after a cuBLASLt bias epilogue, for the
// cases cuBLASLt cannot do exactly (its GELU epilogue is an approximation of its own; ours must match the
// CPU's); the bias gradients beside the GEMMs; a convolution's bias and its gradient.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

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
template <>
__device__ double load_as_double(const __half* p, int64_t k) {
  return static_cast<double>(__half2float(p[k]));
}
template <>
__device__ void store_from_double(__half* p, int64_t k, double v) {
  p[k] = __float2half_rn(static_cast<float>(v));
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

// y[(i * channels + c) * spatial + j] += b[c], one thread per element, in place.
template <class T>
__global__ void channel_bias(T* y, const T* b, int64_t channels, int64_t spatial, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x)
    store_from_double(y, i, load_as_double(y, i) + load_as_double(b, (i / spatial) % channels));
}

// One block per channel. Each thread sums its fixed share of the channel's elements in order, then a fixed
// tree adds the threads' sums: the same bits on every run. The loop over channels is the same for every
// thread of a block, so the barriers are reached by all of them.
constexpr int kChannelThreads = 256;
template <class T>
__global__ void channel_sums(const T* dy, T* db, int64_t batch, int64_t channels, int64_t spatial) {
  __shared__ double part[kChannelThreads];
  const int64_t count = batch * spatial;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double s = 0;
    for (int64_t k = threadIdx.x; k < count; k += kChannelThreads) {
      const int64_t i = k / spatial;
      s += load_as_double(dy, (i * channels + c) * spatial + (k - i * spatial));
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = kChannelThreads / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) store_from_double(db, c, part[0]);
    __syncthreads();  // part is written again for the next channel
  }
}

// Calls f with a null pointer of the element type numbered `type` (0 f32, 1 f64, 2 bf16, 3 f16); false for
// another number.
template <class F>
bool with_type(int type, F f) {
  switch (type) {
    case 0:
      f(static_cast<float*>(nullptr));
      return true;
    case 1:
      f(static_cast<double*>(nullptr));
      return true;
    case 2:
      f(static_cast<__nv_bfloat16*>(nullptr));
      return true;
    case 3:
      f(static_cast<__half*>(nullptr));
      return true;
    default:
      return false;
  }
}

}  // namespace

cudaError_t launch_channel_bias(int type, void* y, const void* b, int64_t batch, int64_t channels,
                                int64_t spatial, cudaStream_t stream) {
  const int64_t total = batch * channels * spatial;
  if (total <= 0) return cudaSuccess;
  if (!y || !b) return cudaErrorInvalidValue;
  constexpr unsigned block = 256;
  const int64_t blocks = (total + block - 1) / block;
  const unsigned grid = static_cast<unsigned>(blocks > 65535 * 8 ? 65535 * 8 : blocks);
  const bool known = with_type(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    channel_bias<<<grid, block, 0, stream>>>(static_cast<T*>(y), static_cast<const T*>(b), channels, spatial,
                                             total);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_channel_sums(int type, const void* dy, void* db, int64_t batch, int64_t channels,
                                int64_t spatial, cudaStream_t stream) {
  if (channels <= 0) return cudaSuccess;
  if (!dy || !db || batch < 0 || spatial < 0) return cudaErrorInvalidValue;
  const unsigned grid = static_cast<unsigned>(channels > 65535 ? 65535 : channels);
  const bool known = with_type(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    channel_sums<<<grid, kChannelThreads, 0, stream>>>(static_cast<const T*>(dy), static_cast<T*>(db), batch,
                                                       channels, spatial);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

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
