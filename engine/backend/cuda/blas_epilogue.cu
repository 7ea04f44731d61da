// Device code of the blas family: FusedGemm's activation applied after a cuBLASLt bias epilogue, for the
// cases cuBLASLt cannot do exactly (its GELU epilogue is an approximation of its own; ours must match the
// CPU's); the bias gradients beside the GEMMs; a convolution's bias and its gradient.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
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

// Column j's rows [y * chunk, (y + 1) * chunk) summed in order by one thread, for the chunks y of blockIdx.y;
// the sum goes to partial[y * n + j], or to db[j] when there is one chunk. Adjacent threads read adjacent
// columns, so the loads coalesce.
template <class T>
__global__ void column_sums(const T* dz, T* db, double* partial, int64_t m, int64_t n, int64_t splits,
                            int64_t chunk) {
  for (int64_t y = blockIdx.y; y < splits; y += gridDim.y)
    for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
         j += int64_t{gridDim.x} * blockDim.x) {
      const int64_t end = (y + 1) * chunk < m ? (y + 1) * chunk : m;
      double s = 0;
      for (int64_t i = y * chunk; i < end; ++i) s += load_as_double(dz, i * n + j);
      if (partial)
        partial[y * n + j] = s;
      else
        store_from_double(db, j, s);
    }
}

// db[j] = the sum over x < splits of partial[j * item_stride + x * split_stride], in order of x: the chunks'
// sums of the column sums (item_stride 1, split_stride n) and of the channel sums (splits, 1).
template <class T>
__global__ void combine_partials(const double* partial, T* db, int64_t n, int64_t splits, int64_t item_stride,
                                 int64_t split_stride) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{gridDim.x} * blockDim.x) {
    double s = 0;
    for (int64_t x = 0; x < splits; ++x) s += partial[j * item_stride + x * split_stride];
    store_from_double(db, j, s);
  }
}

// y[r * spatial + j] += b[r % channels] for the rows r = i * channels + c: a row's bias is read once, and
// the threads of a block walk a row's contiguous elements.
template <class T>
__global__ void channel_bias(T* y, const T* b, int64_t rows, int64_t channels, int64_t spatial) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const double bias = load_as_double(b, r % channels);
    T* row = y + r * spatial;
    for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < spatial;
         j += int64_t{gridDim.x} * blockDim.x)
      store_from_double(row, j, load_as_double(row, j) + bias);
  }
}

// The sums of a channel's batch * spatial elements (numbered k = i * spatial + j, i the sample), in chunks of
// `chunk`: block (x, y) sums chunk x of channel y. Each thread adds its elements k = first + t, first + t +
// kChannelThreads, ... in order, then a fixed tree adds the threads' sums; the chunk's sum goes to
// partial[c * splits + x], or to db[c] when there is one chunk. The same bits on every run. The loops over
// channels and chunks are the same for every thread of a block, so the barriers are reached by all of them.
constexpr int kChannelThreads = 256;
template <class T>
__global__ void channel_sums(const T* dy, T* db, double* partial, int64_t batch, int64_t channels,
                             int64_t spatial, int64_t splits, int64_t chunk) {
  __shared__ double part[kChannelThreads];
  const int64_t count = batch * spatial;
  for (int64_t c = blockIdx.y; c < channels; c += gridDim.y)
    for (int64_t x = blockIdx.x; x < splits; x += gridDim.x) {
      const int64_t end = (x + 1) * chunk < count ? (x + 1) * chunk : count;
      double s = 0;
      int64_t k = x * chunk + threadIdx.x;
      if (k < end) {
        // Element k is dy[(i * channels + c) * spatial + j]; (i, j) follow k without a division per step.
        int64_t i = k / spatial, j = k - i * spatial;
        const int64_t di = kChannelThreads / spatial, dj = kChannelThreads - di * spatial;
        for (; k < end; k += kChannelThreads) {
          s += load_as_double(dy, (i * channels + c) * spatial + j);
          i += di;
          j += dj;
          if (j >= spatial) {
            j -= spatial;
            ++i;
          }
        }
      }
      part[threadIdx.x] = s;
      __syncthreads();
      for (int w = kChannelThreads / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        if (partial)
          partial[c * splits + x] = part[0];
        else
          store_from_double(db, c, part[0]);
      }
      __syncthreads();  // part is written again for the next chunk
    }
}

// Calls f with a null pointer of the float type `type`; false for another type.
template <class F>
bool with_type(ElemType type, F f) {
  switch (type) {
    case ElemType::f32:
      f(static_cast<float*>(nullptr));
      return true;
    case ElemType::f64:
      f(static_cast<double*>(nullptr));
      return true;
    case ElemType::bf16:
      f(static_cast<__nv_bfloat16*>(nullptr));
      return true;
    case ElemType::f16:
      f(static_cast<__half*>(nullptr));
      return true;
    default:
      return false;
  }
}

// How an item's `count` elements are summed: in chunks of at least `min_chunk`, at most `max_splits` of them
// (enough blocks for the GPU, a short ordered combine), and no more than the workspace holds partial sums for
// (8 bytes a chunk and item). One chunk writes the result directly (partial is null).
struct Chunking {
  int64_t splits, chunk;
  double* partial;
};
Chunking chunking(int64_t count, int64_t items, int64_t min_chunk, int64_t max_splits, void* workspace,
                  size_t workspace_bytes) {
  int64_t splits = std::min(std::max<int64_t>(1, (count + min_chunk - 1) / min_chunk), max_splits);
  const int64_t room = workspace ? static_cast<int64_t>(workspace_bytes / (sizeof(double) * items)) : 0;
  if (splits > room) splits = std::max<int64_t>(1, room);
  const int64_t chunk = std::max<int64_t>(1, (count + splits - 1) / splits);
  splits = std::max<int64_t>(1, (count + chunk - 1) / chunk);  // no empty chunk at the end
  return {splits, chunk, splits > 1 ? static_cast<double*>(workspace) : nullptr};
}

}  // namespace

cudaError_t launch_channel_bias(ElemType type, void* y, const void* b, int64_t batch, int64_t channels,
                                int64_t spatial, cudaStream_t stream) {
  const int64_t rows = batch * channels;
  if (rows <= 0 || spatial <= 0) return cudaSuccess;
  if (!y || !b) return cudaErrorInvalidValue;
  constexpr unsigned block = 256;
  const int64_t across = (spatial + block - 1) / block;
  const dim3 grid(static_cast<unsigned>(across > 1024 ? 1024 : across),
                  static_cast<unsigned>(rows > 65535 ? 65535 : rows));
  const bool known = with_type(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    channel_bias<<<grid, block, 0, stream>>>(static_cast<T*>(y), static_cast<const T*>(b), rows, channels,
                                             spatial);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_channel_sums(ElemType type, const void* dy, void* db, int64_t batch, int64_t channels,
                                int64_t spatial, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  if (channels <= 0) return cudaSuccess;
  if (!dy || !db || batch < 0 || spatial < 0) return cudaErrorInvalidValue;
  // Chunks of about 16K elements, so that a few channels still give every multiprocessor blocks.
  const Chunking c = chunking(batch * spatial, channels, 16384, 1024, workspace, workspace_bytes);
  const dim3 grid(static_cast<unsigned>(c.splits),
                  static_cast<unsigned>(channels > 65535 ? 65535 : channels));
  const bool known = with_type(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    channel_sums<<<grid, kChannelThreads, 0, stream>>>(static_cast<const T*>(dy), static_cast<T*>(db),
                                                       c.partial, batch, channels, spatial, c.splits,
                                                       c.chunk);
    if (c.partial) {
      const int64_t blocks = (channels + 255) / 256;
      combine_partials<<<static_cast<unsigned>(blocks > 65535 ? 65535 : blocks), 256, 0, stream>>>(
          c.partial, static_cast<T*>(db), channels, c.splits, c.splits, 1);
    }
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_column_sums(ElemType type, const void* dz, void* db, int64_t m, int64_t n, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!dz || !db || m < 0) return cudaErrorInvalidValue;
  // Chunks of 16 rows, so that a narrow layer's few columns still give the GPU blocks and each thread a short
  // walk; longer ones past 4,096 chunks.
  const Chunking c = chunking(m, n, 16, 4096, workspace, workspace_bytes);
  constexpr unsigned block = 128;
  const int64_t across = (n + block - 1) / block;
  const dim3 grid(static_cast<unsigned>(across > 65535 ? 65535 : across), static_cast<unsigned>(c.splits));
  const bool known = with_type(type, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    column_sums<<<grid, block, 0, stream>>>(static_cast<const T*>(dz), static_cast<T*>(db), c.partial, m, n,
                                            c.splits, c.chunk);
    if (c.partial)
      combine_partials<<<grid.x, block, 0, stream>>>(c.partial, static_cast<T*>(db), n, c.splits, 1, n);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace trainer::engine::cuda
