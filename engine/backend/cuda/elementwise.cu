// Device code of the elementwise and shape kernels: the shared functors of engine/kernels applied over dense
// or strided (broadcast, transposed, sliced) operands, Cast, Dropout with the CPU's Philox mask, and data
// movement. The launchers at the bottom dispatch on element type at run time, so each kernel is instantiated
// only for the types the CPU backend supports too.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "engine/backend/cuda/launch_elementwise.h"
#include "engine/kernels/functors.h"
#include "engine/kernels/grid_sample.h"
#include "engine/kernels/philox.h"

namespace trainer::engine::cuda {

namespace {

namespace k = trainer::engine::kernels;

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n items: enough to fill the device, capped so huge tensors loop instead.
unsigned blocks_for(int64_t n) {
  int64_t b = (n + kBlock - 1) / kBlock;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b > 65535 * 8 ? 65535 * 8 : b);
}

#define GRID_STRIDE_LOOP(i, n)                                                           \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// ---------------------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------------------

// Offsets of dense element i in the first K operands of m. The loop has a fixed trip count so the map stays
// in the kernel's parameter space (no local-memory copy); rank 1 costs no division at all.
template <int K>
__device__ __forceinline__ void map_offsets(const IndexMap& m, int64_t i, int64_t (&off)[K]) {
#pragma unroll
  for (int q = 0; q < K; ++q) off[q] = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 1; --d) {
    if (d < m.rank) {
      int64_t next = i / m.dims[d];
      int64_t r = i - next * m.dims[d];
#pragma unroll
      for (int q = 0; q < K; ++q) off[q] += r * m.strides[q][d];
      i = next;
    }
  }
#pragma unroll
  for (int q = 0; q < K; ++q) off[q] += i * m.strides[q][0];
}

template <class T, class Op>
__global__ void binary_kernel(Op op, const T* a, const T* b, T* out, IndexMap m, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    int64_t off[2];
    map_offsets<2>(m, i, off);
    out[i] = op(a[off[0]], b[off[1]]);
  }
}

template <class T, class Op>
__global__ void compare_kernel(Op op, const T* a, const T* b, uint8_t* out, IndexMap m, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    int64_t off[2];
    map_offsets<2>(m, i, off);
    out[i] = op(a[off[0]], b[off[1]]) ? 1 : 0;
  }
}

// Clip's bounds are read here, so a captured graph replays with the values of the step; an absent bound is
// the type's extreme, passed by the launcher.
template <class T>
__global__ void clip_kernel(const T* x, const T* lo, const T* hi, T lowest, T highest, T* y, int64_t n) {
  const T l = lo ? *lo : lowest, h = hi ? *hi : highest;
  GRID_STRIDE_LOOP(i, n) {
    y[i] = k::ClipOp{}(x[i], l, h);
  }
}

template <class T>
__global__ void clip_grad_kernel(const T* dy, const T* x, const T* lo, const T* hi, T lowest, T highest,
                                 T* dx, int64_t n) {
  const T l = lo ? *lo : lowest, h = hi ? *hi : highest;
  GRID_STRIDE_LOOP(i, n) {
    dx[i] = k::ClipGradFromX{}(dy[i], x[i], l, h);
  }
}

template <class T>
__global__ void pad_kernel(k::PadMode mode, k::PadGeom g, const T* x, const T* value, T* y, int64_t n) {
  const T v = value ? *value : T(0);
  GRID_STRIDE_LOOP(i, n) {
    y[i] = k::pad_element(mode, g, x, v, i);
  }
}

template <class T>
__global__ void pad_grad_kernel(k::PadMode mode, k::PadGeom g, const T* dy, T* dx, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    dx[i] = k::pad_grad_element(mode, g, dy, i);
  }
}

template <class T, class Op>
__global__ void unary_kernel(Op op, const T* x, T* y, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    y[i] = op(x[i]);
  }
}

template <class T, class Op>
__global__ void grad_kernel(Op op, const T* dy, const T* xy, T* dx, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    dx[i] = op(dy[i], xy[i]);
  }
}

template <class T>
__global__ void where_kernel(const uint8_t* c, const T* x, const T* y, T* z, IndexMap m, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    int64_t off[3];
    map_offsets<3>(m, i, off);
    z[i] = c[off[0]] ? x[off[1]] : y[off[2]];
  }
}

// Cast goes through double, as the CPU's does, so every pair of types rounds the same way on both backends
// (i64 -> f32, for one, rounds twice there). The type switch is uniform across threads.
__device__ double load_as_double(ElemType t, const void* p, int64_t i) {
  switch (t) {
    case ElemType::f32:
      return static_cast<const float*>(p)[i];
    case ElemType::f64:
      return static_cast<const double*>(p)[i];
    case ElemType::bf16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case ElemType::f16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case ElemType::i32:
      return static_cast<const int32_t*>(p)[i];
    case ElemType::i64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case ElemType::u8:
      return static_cast<const uint8_t*>(p)[i];
    case ElemType::boolean:
      return static_cast<const uint8_t*>(p)[i] != 0;
  }
  return 0;
}

// A double to int32 as x86's conversion gives it: truncated, and the lowest int32 for NaN or out of range.
__device__ int32_t x86_int32(double v) {
  return v > -2147483649.0 && v < 2147483648.0 ? static_cast<int32_t>(v) : INT32_MIN;
}

__device__ void store_from_double(ElemType t, void* p, int64_t i, double v) {
  switch (t) {
    case ElemType::f32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
    case ElemType::f64:
      static_cast<double*>(p)[i] = v;
      break;
    case ElemType::bf16: {
      // Round to nearest even like engine::f32_to_bf16, whose NaN is the positive quiet 0x7fc0.
      float f = static_cast<float>(v);
      if (f != f)
        static_cast<uint16_t*>(p)[i] = 0x7fc0;
      else
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(f);
      break;
    }
    case ElemType::f16: {
      // Round to nearest even like engine::f32_to_f16, whose NaN keeps the sign and is 0x7e00.
      float f = static_cast<float>(v);
      if (f != f)
        static_cast<uint16_t*>(p)[i] =
            static_cast<uint16_t>(((__float_as_uint(f) >> 16) & 0x8000u) | 0x7e00u);
      else
        static_cast<__half*>(p)[i] = __float2half_rn(f);
      break;
    }
    // The device's conversions saturate (NaN to 0); x86's give the lowest integer to NaN and to anything out
    // of range, and the CPU kernels convert so: the same here.
    case ElemType::i32:
      static_cast<int32_t*>(p)[i] = x86_int32(v);
      break;
    case ElemType::i64:
      static_cast<int64_t*>(p)[i] =
          v >= -9223372036854775808.0 && v < 9223372036854775808.0 ? static_cast<int64_t>(v) : INT64_MIN;
      break;
    case ElemType::u8:
      // Through int32, as x86 converts a double to an 8-bit integer: out-of-range values wrap alike.
      static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(x86_int32(v));
      break;
    case ElemType::boolean:
      static_cast<uint8_t*>(p)[i] = v != 0;
      break;
  }
}

__global__ void cast_kernel(ElemType from, ElemType to, const void* x, void* y, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    store_from_double(to, y, i, load_as_double(from, x, i));
  }
}

// Dropout: element i of this replica is global element base + i, base = sample_offset * per_sample, and
// global element j takes word j % 4 of Philox block j / 4, exactly as the CPU kernel (kernels_norm.cpp) and
// kernels::philox_uniform map them. One thread per block of four global elements draws each block once.
// The step's counters, the ratio and the training flag are read here, on the device, so a captured graph
// replays with each step's values.
template <class T>
__global__ void dropout_kernel(DropoutArgs a, const DeviceStepContext* ctx, const T* x, T* y, uint8_t* mask,
                               int64_t n) {
  float ratio = 0.5f;
  if (a.ratio)
    ratio = a.ratio_f64 ? static_cast<float>(*static_cast<const double*>(a.ratio))
                        : *static_cast<const float*>(a.ratio);
  const bool training = a.training && *a.training;
  if (!training || ratio <= 0) {
    GRID_STRIDE_LOOP(i, n) {
      if (x != y) y[i] = x[i];
      if (mask) mask[i] = 1;
    }
    return;
  }
  // The rule of ops::dropout_seed: the node's seed attribute, when present, is mixed into the step's seed.
  const uint64_t seed = a.has_seed ? ctx->seed ^ static_cast<uint64_t>(a.seed) : ctx->seed;
  const uint64_t step = ctx->step;
  const T scale = ratio < 1 ? static_cast<T>(1.0 / (1.0 - static_cast<double>(ratio))) : T(0);
  const uint64_t base = ctx->sample_offset * static_cast<uint64_t>(a.per_sample);
  const uint64_t end = base + static_cast<uint64_t>(n);
  const uint64_t first_block = base / 4, blocks = (end + 3) / 4 - first_block;
  GRID_STRIDE_LOOP(g, static_cast<int64_t>(blocks)) {
    const uint64_t block = first_block + static_cast<uint64_t>(g);
    k::Philox4x32 bits = k::philox_block(seed, a.stream, step, block);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint64_t j = 4 * block + w;
      if (j < base || j >= end) continue;
      const int64_t i = static_cast<int64_t>(j - base);
      const bool keep = k::uniform01(bits.v[w]) >= ratio;  // the rule of ops::dropout_keep
      y[i] = keep ? x[i] * scale : T(0);
      if (mask) mask[i] = keep;
    }
  }
}

// RandomNormalLike and RandomUniformLike: element i of this replica is global element base + i, as for
// Dropout, and its number is the CPU kernel's (kernels_norm.cpp) from the same shared functions.
template <class T>
__global__ void random_kernel(RandomArgs a, const DeviceStepContext* ctx, T* y, int64_t n) {
  const uint64_t seed = a.has_seed ? ctx->seed ^ static_cast<uint64_t>(a.seed) : ctx->seed;
  const uint64_t step = ctx->step, base = ctx->sample_offset * static_cast<uint64_t>(a.per_sample);
  GRID_STRIDE_LOOP(i, n) {
    const uint64_t j = base + static_cast<uint64_t>(i);
    const float z =
        a.normal ? k::philox_normal(seed, a.stream, step, j) : k::philox_uniform(seed, a.stream, step, j);
    y[i] = static_cast<T>(a.shift + a.width * static_cast<double>(z));
  }
}

template <class U>
__global__ void strided_copy_kernel(bool scatter, U* strided, U* dense, IndexMap m, int64_t n) {
  GRID_STRIDE_LOOP(i, n) {
    int64_t off[1];
    map_offsets<1>(m, i, off);
    if (scatter)
      strided[off[0]] = dense[i];
    else
      dense[i] = strided[off[0]];
  }
}

// A batched 2-D transpose through a shared 32 x 32 tile: both the global reads and the global writes are
// coalesced; the tile's extra column keeps the column reads free of bank conflicts. Blocks loop over tiles,
// so any batch size fits the grid.
constexpr int kTile = 32, kTileRows = 8;
template <class T>
__global__ void transpose_kernel(const T* x, T* y, int64_t batch, int64_t rows, int64_t cols) {
  __shared__ T tile[kTile][kTile + 1];
  const int64_t tiles_r = (rows + kTile - 1) / kTile, tiles_c = (cols + kTile - 1) / kTile;
  const int64_t per_matrix = tiles_r * tiles_c, total = batch * per_matrix;
  for (int64_t t = blockIdx.x; t < total; t += gridDim.x) {
    const int64_t b = t / per_matrix, rem = t - b * per_matrix;
    const int64_t r0 = (rem / tiles_c) * kTile, c0 = (rem % tiles_c) * kTile;
    const T* xb = x + b * rows * cols;
    T* yb = y + b * rows * cols;
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      const int64_t r = r0 + j, c = c0 + threadIdx.x;
      if (r < rows && c < cols) tile[j][threadIdx.x] = xb[r * cols + c];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      const int64_t c = c0 + j, r = r0 + threadIdx.x;
      if (c < cols && r < rows) yb[c * rows + r] = tile[threadIdx.x][j];
    }
    __syncthreads();
  }
}

template <class U, class I>
__global__ void gather_kernel(const U* x, const I* idx, U* y, GatherGeom g) {
  const int64_t total = g.outer * g.k * g.inner;
  GRID_STRIDE_LOOP(t, total) {
    const int64_t row = t / g.inner, col = t - row * g.inner;
    const int64_t o = row / g.k, j = row - o * g.k;
    int64_t i = static_cast<int64_t>(idx[j]);
    if (i < 0) i += g.n;
    y[t] = (i < 0 || i >= g.n) ? U{} : x[(o * g.n + i) * g.inner + col];
  }
}

// One thread per column (o, c) of dx adds dy's rows in index order, as the CPU does: no two threads write the
// same element, so there are no atomics and the sums are the same bits run after run. A run of equal indices
// accumulates in a register, which adds in the same order and saves the round trip through memory.
template <class T, class I>
__global__ void gather_grad_kernel(const T* dy, const I* idx, T* dx, GatherGeom g) {
  const int64_t columns = g.outer * g.inner;
  GRID_STRIDE_LOOP(t, columns) {
    const int64_t o = t / g.inner, c = t - o * g.inner;
    T* d = dx + o * g.n * g.inner + c;
    const T* s = dy + o * g.k * g.inner + c;
    int64_t row = -1;
    T acc = T(0);
    for (int64_t j = 0; j < g.k; ++j) {
      int64_t i = static_cast<int64_t>(idx[j]);
      if (i < 0) i += g.n;
      if (i < 0 || i >= g.n) continue;
      if (i != row) {
        if (row >= 0) d[row * g.inner] = acc;
        row = i;
        acc = d[row * g.inner];
      }
      acc += s[j * g.inner];
    }
    if (row >= 0) d[row * g.inner] = acc;
  }
}

// The same sums with a warp per row of dx: the block's warps own consecutive rows (lanes over the row's
// columns, kRowCols each), read the indices in tiles through shared memory, and add the dy rows whose index
// is theirs, in index order (a ballot finds them 32 at a time), so the bits are the column kernel's and the
// CPU's. The column kernel walks all k indices in one thread per column, k dependent steps: an embedding of
// 16 columns has 16 threads. Here every row of the table has a warp of its own, and each warp scans k / 32
// ballots.
constexpr int kRowTile = 1024;  // indices per shared-memory tile
constexpr int kRowCols = 4;     // columns per lane: a warp covers 128 columns per grid row

template <class T, class I>
__global__ void gather_grad_rows_kernel(const T* dy, const I* idx, T* dx, GatherGeom g) {
  __shared__ int64_t tile[kRowTile];
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t rows = blockDim.x / 32, groups = (g.n + rows - 1) / rows;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * 32 * kRowCols + lane;
  // Every thread of the block takes every group of the loop (the barriers need them all).
  for (int64_t b = blockIdx.x; b < g.outer * groups; b += gridDim.x) {
    const int64_t o = b / groups, r = (b - o * groups) * rows + (threadIdx.x >> 5);
    const T* s = dy + o * g.k * g.inner;
    T acc[kRowCols];
    for (int q = 0; q < kRowCols; ++q) acc[q] = T(0);
    for (int64_t j0 = 0; j0 < g.k; j0 += kRowTile) {
      const int64_t m = g.k - j0 < kRowTile ? g.k - j0 : kRowTile;
      __syncthreads();  // the last tile is read by every warp
      for (int64_t t = threadIdx.x; t < m; t += blockDim.x) {
        int64_t i = static_cast<int64_t>(idx[j0 + t]);
        if (i < 0) i += g.n;
        tile[t] = i < 0 || i >= g.n ? -1 : i;  // skipped, as the column kernel skips it
      }
      __syncthreads();
      for (int64_t t0 = 0; t0 < m; t0 += 32) {
        unsigned hits = __ballot_sync(0xffffffffu, t0 + lane < m && tile[t0 + lane] == r);
        while (hits) {
          const int bit = __ffs(hits) - 1;
          hits &= hits - 1;
          const T* src = s + (j0 + t0 + bit) * g.inner;
          for (int q = 0; q < kRowCols; ++q) {
            const int64_t c = c0 + q * 32;
            if (c < g.inner) acc[q] += src[c];
          }
        }
      }
    }
    if (r < g.n)
      for (int q = 0; q < kRowCols; ++q) {
        const int64_t c = c0 + q * 32;
        if (c < g.inner) dx[(o * g.n + r) * g.inner + c] = acc[q];
      }
  }
}

__global__ void write_ints_kernel(SmallInts v, int64_t* y) {
  for (int i = threadIdx.x; i < v.count; i += blockDim.x) y[i] = v.v[i];
}

// ---------------------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------------------

template <class Op>
cudaError_t binary_typed(Op op, ElemType t, const void* a, const void* b, void* out, const IndexMap& m,
                         int64_t n, cudaStream_t s) {
  const unsigned grid = blocks_for(n);
  switch (t) {
    case ElemType::f32:
      binary_kernel<float><<<grid, kBlock, 0, s>>>(
          op, static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(out), m, n);
      break;
    case ElemType::f64:
      binary_kernel<double><<<grid, kBlock, 0, s>>>(
          op, static_cast<const double*>(a), static_cast<const double*>(b), static_cast<double*>(out), m, n);
      break;
    case ElemType::i32:
      binary_kernel<int32_t><<<grid, kBlock, 0, s>>>(op, static_cast<const int32_t*>(a),
                                                     static_cast<const int32_t*>(b),
                                                     static_cast<int32_t*>(out), m, n);
      break;
    case ElemType::i64:
      binary_kernel<int64_t><<<grid, kBlock, 0, s>>>(op, static_cast<const int64_t*>(a),
                                                     static_cast<const int64_t*>(b),
                                                     static_cast<int64_t*>(out), m, n);
      break;
    case ElemType::u8:
      binary_kernel<uint8_t><<<grid, kBlock, 0, s>>>(op, static_cast<const uint8_t*>(a),
                                                     static_cast<const uint8_t*>(b),
                                                     static_cast<uint8_t*>(out), m, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <class Op>
cudaError_t unary_float(Op op, ElemType t, const void* x, void* y, int64_t n, cudaStream_t s) {
  const unsigned grid = blocks_for(n);
  switch (t) {
    case ElemType::f32:
      unary_kernel<float>
          <<<grid, kBlock, 0, s>>>(op, static_cast<const float*>(x), static_cast<float*>(y), n);
      break;
    case ElemType::f64:
      unary_kernel<double>
          <<<grid, kBlock, 0, s>>>(op, static_cast<const double*>(x), static_cast<double*>(y), n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <class Op>
cudaError_t compare_typed(Op op, ElemType t, const void* a, const void* b, uint8_t* out, const IndexMap& m,
                          int64_t n, cudaStream_t s) {
  const unsigned grid = blocks_for(n);
  switch (t) {
    case ElemType::f32:
      compare_kernel<float>
          <<<grid, kBlock, 0, s>>>(op, static_cast<const float*>(a), static_cast<const float*>(b), out, m, n);
      break;
    case ElemType::f64:
      compare_kernel<double><<<grid, kBlock, 0, s>>>(op, static_cast<const double*>(a),
                                                     static_cast<const double*>(b), out, m, n);
      break;
    case ElemType::i32:
      compare_kernel<int32_t><<<grid, kBlock, 0, s>>>(op, static_cast<const int32_t*>(a),
                                                      static_cast<const int32_t*>(b), out, m, n);
      break;
    case ElemType::i64:
      compare_kernel<int64_t><<<grid, kBlock, 0, s>>>(op, static_cast<const int64_t*>(a),
                                                      static_cast<const int64_t*>(b), out, m, n);
      break;
    case ElemType::u8:
      compare_kernel<uint8_t><<<grid, kBlock, 0, s>>>(op, static_cast<const uint8_t*>(a),
                                                      static_cast<const uint8_t*>(b), out, m, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <class T>
void launch_clip_typed(const void* x, const void* lo, const void* hi, void* y, int64_t n, cudaStream_t s) {
  clip_kernel<T><<<blocks_for(n), kBlock, 0, s>>>(static_cast<const T*>(x), static_cast<const T*>(lo),
                                                  static_cast<const T*>(hi), std::numeric_limits<T>::lowest(),
                                                  std::numeric_limits<T>::max(), static_cast<T*>(y), n);
}

template <class T>
void launch_clip_grad_typed(const void* dy, const void* x, const void* lo, const void* hi, void* dx,
                            int64_t n, cudaStream_t s) {
  clip_grad_kernel<T><<<blocks_for(n), kBlock, 0, s>>>(static_cast<const T*>(dy), static_cast<const T*>(x),
                                                       static_cast<const T*>(lo), static_cast<const T*>(hi),
                                                       std::numeric_limits<T>::lowest(),
                                                       std::numeric_limits<T>::max(), static_cast<T*>(dx), n);
}

// Neg and Abs also apply to integers.
template <class Op>
cudaError_t unary_numeric(Op op, ElemType t, const void* x, void* y, int64_t n, cudaStream_t s) {
  const unsigned grid = blocks_for(n);
  switch (t) {
    case ElemType::f32:
    case ElemType::f64:
      return unary_float(op, t, x, y, n, s);
    case ElemType::i32:
      unary_kernel<int32_t>
          <<<grid, kBlock, 0, s>>>(op, static_cast<const int32_t*>(x), static_cast<int32_t*>(y), n);
      break;
    case ElemType::i64:
      unary_kernel<int64_t>
          <<<grid, kBlock, 0, s>>>(op, static_cast<const int64_t*>(x), static_cast<int64_t*>(y), n);
      break;
    case ElemType::u8:
      unary_kernel<uint8_t>
          <<<grid, kBlock, 0, s>>>(op, static_cast<const uint8_t*>(x), static_cast<uint8_t*>(y), n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <class Op>
cudaError_t grad_float(Op op, ElemType t, const void* dy, const void* xy, void* dx, int64_t n,
                       cudaStream_t s) {
  const unsigned grid = blocks_for(n);
  switch (t) {
    case ElemType::f32:
      grad_kernel<float><<<grid, kBlock, 0, s>>>(op, static_cast<const float*>(dy),
                                                 static_cast<const float*>(xy), static_cast<float*>(dx), n);
      break;
    case ElemType::f64:
      grad_kernel<double><<<grid, kBlock, 0, s>>>(
          op, static_cast<const double*>(dy), static_cast<const double*>(xy), static_cast<double*>(dx), n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <class U>
cudaError_t strided_copy_typed(bool scatter, void* strided, void* dense, const IndexMap& m, int64_t n,
                               cudaStream_t s) {
  strided_copy_kernel<U>
      <<<blocks_for(n), kBlock, 0, s>>>(scatter, static_cast<U*>(strided), static_cast<U*>(dense), m, n);
  return cudaGetLastError();
}

template <class T>
cudaError_t transpose_typed(const void* x, void* y, int64_t batch, int64_t rows, int64_t cols,
                            cudaStream_t s) {
  const int64_t tiles = batch * ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
  const unsigned grid = static_cast<unsigned>(tiles < 65535 * 8 ? tiles : 65535 * 8);
  transpose_kernel<T><<<grid, dim3(kTile, kTileRows), 0, s>>>(static_cast<const T*>(x), static_cast<T*>(y),
                                                              batch, rows, cols);
  return cudaGetLastError();
}

template <class U>
cudaError_t gather_typed(bool idx64, const void* x, const void* idx, void* y, const GatherGeom& g,
                         cudaStream_t s) {
  const unsigned grid = blocks_for(g.outer * g.k * g.inner);
  if (idx64)
    gather_kernel<U, int64_t><<<grid, kBlock, 0, s>>>(
        static_cast<const U*>(x), static_cast<const int64_t*>(idx), static_cast<U*>(y), g);
  else
    gather_kernel<U, int32_t><<<grid, kBlock, 0, s>>>(
        static_cast<const U*>(x), static_cast<const int32_t*>(idx), static_cast<U*>(y), g);
  return cudaGetLastError();
}

template <class T>
cudaError_t gather_grad_typed(bool idx64, const void* dy, const void* idx, void* dx, const GatherGeom& g,
                              cudaStream_t s) {
  // A warp per row where the blocks' reads of the indices stay under 2^27 (about 1 GB of int64 from L2;
  // IMDB's 10000 x 16 embedding at batch 64 of 200 steps reads 16M); it writes every element of dx.
  const int64_t groups = (g.n + kBlock / 32 - 1) / (kBlock / 32), column_groups = (g.inner + 127) / 128;
  if (g.k > 0 && column_groups <= 65535 && g.outer * groups * column_groups * g.k <= (int64_t{1} << 27)) {
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(g.outer * groups, 65535 * 8)),
                    static_cast<unsigned>(column_groups));
    if (idx64)
      gather_grad_rows_kernel<T, int64_t><<<grid, kBlock, 0, s>>>(
          static_cast<const T*>(dy), static_cast<const int64_t*>(idx), static_cast<T*>(dx), g);
    else
      gather_grad_rows_kernel<T, int32_t><<<grid, kBlock, 0, s>>>(
          static_cast<const T*>(dy), static_cast<const int32_t*>(idx), static_cast<T*>(dx), g);
    return cudaGetLastError();
  }
  const size_t bytes = static_cast<size_t>(g.outer * g.n * g.inner) * sizeof(T);
  cudaError_t e = cudaMemsetAsync(dx, 0, bytes, s);
  if (e != cudaSuccess) return e;
  if (g.k == 0 || g.outer * g.inner == 0) return cudaSuccess;
  const unsigned grid = blocks_for(g.outer * g.inner);
  if (idx64)
    gather_grad_kernel<T, int64_t><<<grid, kBlock, 0, s>>>(
        static_cast<const T*>(dy), static_cast<const int64_t*>(idx), static_cast<T*>(dx), g);
  else
    gather_grad_kernel<T, int32_t><<<grid, kBlock, 0, s>>>(
        static_cast<const T*>(dy), static_cast<const int32_t*>(idx), static_cast<T*>(dx), g);
  return cudaGetLastError();
}

// ---- GridSample (the per-pixel math is engine/kernels/grid_sample.h's, shared with the CPU) ----

// One thread per output element, in y's order (n, c, pixel), so writes coalesce; each recomputes its pixel's
// taps, which costs less than a pass to store them.
template <class T>
__global__ void grid_sample_kernel(const T* x, const T* grid, T* y, k::GridGeom g) {
  const int64_t out_plane = g.oh * g.ow;
  GRID_STRIDE_LOOP(i, g.n * g.c * out_plane) {
    const int64_t q = i % out_plane, nc = i / out_plane, n = nc / g.c;
    const k::GridTaps<T> t = k::grid_taps(g, grid, n * out_plane + q);
    y[i] = k::grid_sample_plane(x + nc * g.h * g.w, g, t);
  }
}

// dX: one thread per (image, channel) plane walks the output pixels in order and adds their weights, so the
// sums are deterministic (no atomics). The parallelism is N x C; GridSample's usual place (augmentation ahead
// of the first layer) needs no dX at all.
template <class T>
__global__ void grid_sample_dx_kernel(const T* dy, const T* grid, T* dx, k::GridGeom g) {
  const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow;
  GRID_STRIDE_LOOP(nc, g.n * g.c) {
    T* d = dx + nc * plane;
    for (int64_t j = 0; j < plane; ++j) d[j] = T(0);
    const int64_t n = nc / g.c;
    for (int64_t q = 0; q < out_plane; ++q)
      k::grid_scatter_plane(d, g, k::grid_taps(g, grid, n * out_plane + q), dy[nc * out_plane + q]);
  }
}

// dgrid: one thread per output pixel, summing over the channels in order.
template <class T>
__global__ void grid_sample_dgrid_kernel(const T* dy, const T* x, const T* grid, T* dgrid, k::GridGeom g) {
  const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow;
  GRID_STRIDE_LOOP(p, g.n * out_plane) {
    const k::GridTaps<T> t = k::grid_taps(g, grid, p);
    T gx = 0, gy = 0;
    if (g.mode != k::GridMode::nearest) {
      const int64_t n = p / out_plane, q = p % out_plane;
      for (int64_t c = 0; c < g.c; ++c)
        k::grid_coord_grad(x + (n * g.c + c) * plane, g, t, dy[(n * g.c + c) * out_plane + q], &gx, &gy);
    }
    dgrid[2 * p] = gx * t.cx.dx;
    dgrid[2 * p + 1] = gy * t.cy.dx;
  }
}

template <class T>
void grid_sample_grad_typed(const void* dy, const void* x, const void* grid, void* dx, void* dgrid,
                            const k::GridGeom& g, cudaStream_t s) {
  const T* dyt = static_cast<const T*>(dy);
  const T* gt = static_cast<const T*>(grid);
  if (dx) grid_sample_dx_kernel<T><<<blocks_for(g.n * g.c), kBlock, 0, s>>>(dyt, gt, static_cast<T*>(dx), g);
  if (dgrid)
    grid_sample_dgrid_kernel<T><<<blocks_for(g.n * g.oh * g.ow), kBlock, 0, s>>>(
        dyt, static_cast<const T*>(x), gt, static_cast<T*>(dgrid), g);
}

bool valid_map(const IndexMap& m) {
  if (m.rank < 1 || m.rank > kMaxDims) return false;
  for (int d = 0; d < m.rank; ++d)
    if (m.dims[d] < 1) return false;
  return true;
}

template <class T>
void launch_pad_typed(k::PadMode mode, const k::PadGeom& g, const void* x, const void* value, void* y,
                      int64_t n, cudaStream_t s) {
  pad_kernel<T><<<blocks_for(n), kBlock, 0, s>>>(mode, g, static_cast<const T*>(x),
                                                 static_cast<const T*>(value), static_cast<T*>(y), n);
}

}  // namespace

cudaError_t launch_binary(BinaryOp op, ElemType t, const void* a, const void* b, void* out,
                          const IndexMap& map, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!a || !b || !out || !valid_map(map)) return cudaErrorInvalidValue;
  switch (op) {
    case BinaryOp::add:
      return binary_typed(k::AddOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::sub:
      return binary_typed(k::SubOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::mul:
      return binary_typed(k::MulOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::div:
      return binary_typed(k::DivOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::pow:
      return binary_typed(k::PowOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::max:
      return binary_typed(k::MaxOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::min:
      return binary_typed(k::MinOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::prelu:
      return binary_typed(k::PReluOp{}, t, a, b, out, map, n, stream);
    case BinaryOp::mod:
      return binary_typed(k::ModOp{false}, t, a, b, out, map, n, stream);
    case BinaryOp::fmod:
      return binary_typed(k::ModOp{true}, t, a, b, out, map, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_compare(CompareOp op, ElemType t, const void* a, const void* b, uint8_t* out,
                           const IndexMap& map, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!a || !b || !out || !valid_map(map)) return cudaErrorInvalidValue;
  switch (op) {
    case CompareOp::greater:
      return compare_typed(k::GreaterOp{}, t, a, b, out, map, n, stream);
    case CompareOp::less:
      return compare_typed(k::LessOp{}, t, a, b, out, map, n, stream);
    case CompareOp::equal:
      return compare_typed(k::EqualOp{}, t, a, b, out, map, n, stream);
    case CompareOp::greater_or_equal:
      return compare_typed(k::GreaterOrEqualOp{}, t, a, b, out, map, n, stream);
    case CompareOp::less_or_equal:
      return compare_typed(k::LessOrEqualOp{}, t, a, b, out, map, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_pad(ElemType t, k::PadMode mode, const k::PadGeom& g, const void* x, const void* value,
                       void* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!x || !y || g.rank < 1 || g.rank > 8) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      launch_pad_typed<float>(mode, g, x, value, y, n, stream);
      break;
    case ElemType::f64:
      launch_pad_typed<double>(mode, g, x, value, y, n, stream);
      break;
    case ElemType::i32:
      launch_pad_typed<int32_t>(mode, g, x, value, y, n, stream);
      break;
    case ElemType::i64:
      launch_pad_typed<int64_t>(mode, g, x, value, y, n, stream);
      break;
    case ElemType::u8:
      launch_pad_typed<uint8_t>(mode, g, x, value, y, n, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_pad_grad(ElemType t, k::PadMode mode, const k::PadGeom& g, const void* dy, void* dx,
                            int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!dy || !dx || g.rank < 1 || g.rank > 8) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      pad_grad_kernel<float><<<blocks_for(n), kBlock, 0, stream>>>(mode, g, static_cast<const float*>(dy),
                                                                   static_cast<float*>(dx), n);
      break;
    case ElemType::f64:
      pad_grad_kernel<double><<<blocks_for(n), kBlock, 0, stream>>>(mode, g, static_cast<const double*>(dy),
                                                                    static_cast<double*>(dx), n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_clip(ElemType t, const void* x, const void* lo, const void* hi, void* y, int64_t n,
                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!x || !y) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      launch_clip_typed<float>(x, lo, hi, y, n, stream);
      break;
    case ElemType::f64:
      launch_clip_typed<double>(x, lo, hi, y, n, stream);
      break;
    case ElemType::i32:
      launch_clip_typed<int32_t>(x, lo, hi, y, n, stream);
      break;
    case ElemType::i64:
      launch_clip_typed<int64_t>(x, lo, hi, y, n, stream);
      break;
    case ElemType::u8:
      launch_clip_typed<uint8_t>(x, lo, hi, y, n, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_clip_grad(ElemType t, const void* dy, const void* x, const void* lo, const void* hi,
                             void* dx, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!dy || !x || !dx) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      launch_clip_grad_typed<float>(dy, x, lo, hi, dx, n, stream);
      break;
    case ElemType::f64:
      launch_clip_grad_typed<double>(dy, x, lo, hi, dx, n, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_unary(UnaryOp op, UnaryParams p, ElemType t, const void* x, void* y, int64_t n,
                         cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!x || !y) return cudaErrorInvalidValue;
  switch (op) {
    case UnaryOp::neg:
      return unary_numeric(k::NegOp{}, t, x, y, n, stream);
    case UnaryOp::abs:
      return unary_numeric(k::AbsOp{}, t, x, y, n, stream);
    case UnaryOp::reciprocal:
      return unary_float(k::ReciprocalOp{}, t, x, y, n, stream);
    case UnaryOp::erf:
      return unary_float(k::ErfOp{}, t, x, y, n, stream);
    case UnaryOp::softplus:
      return unary_float(k::SoftplusOp{}, t, x, y, n, stream);
    case UnaryOp::elu:
      return unary_float(k::EluOp{p.alpha}, t, x, y, n, stream);
    case UnaryOp::selu:
      return unary_float(k::SeluOp{p.alpha, p.gamma}, t, x, y, n, stream);
    case UnaryOp::hard_sigmoid:
      return unary_float(k::HardSigmoidOp{p.alpha, p.beta}, t, x, y, n, stream);
    case UnaryOp::hard_swish:
      return unary_float(k::HardSwishOp{}, t, x, y, n, stream);
    case UnaryOp::softsign:
      return unary_float(k::SoftsignOp{}, t, x, y, n, stream);
    case UnaryOp::sign:
      return unary_numeric(k::SignOp{}, t, x, y, n, stream);
    case UnaryOp::floor:
      return unary_float(k::FloorOp{}, t, x, y, n, stream);
    case UnaryOp::ceil:
      return unary_float(k::CeilOp{}, t, x, y, n, stream);
    case UnaryOp::round:
      return unary_float(k::RoundOp{}, t, x, y, n, stream);
    case UnaryOp::sin:
      return unary_float(k::SinOp{}, t, x, y, n, stream);
    case UnaryOp::cos:
      return unary_float(k::CosOp{}, t, x, y, n, stream);
    case UnaryOp::asin:
      return unary_float(k::AsinOp{}, t, x, y, n, stream);
    case UnaryOp::acos:
      return unary_float(k::AcosOp{}, t, x, y, n, stream);
    case UnaryOp::atan:
      return unary_float(k::AtanOp{}, t, x, y, n, stream);
    case UnaryOp::asinh:
      return unary_float(k::AsinhOp{}, t, x, y, n, stream);
    case UnaryOp::acosh:
      return unary_float(k::AcoshOp{}, t, x, y, n, stream);
    case UnaryOp::atanh:
      return unary_float(k::AtanhOp{}, t, x, y, n, stream);
    case UnaryOp::exp:
      return unary_float(k::ExpOp{}, t, x, y, n, stream);
    case UnaryOp::log:
      return unary_float(k::LogOp{}, t, x, y, n, stream);
    case UnaryOp::sqrt:
      return unary_float(k::SqrtOp{}, t, x, y, n, stream);
    case UnaryOp::relu:
      return unary_float(k::ReluOp{}, t, x, y, n, stream);
    case UnaryOp::leaky_relu:
      return unary_float(k::LeakyReluOp{p.alpha}, t, x, y, n, stream);
    case UnaryOp::sigmoid:
      return unary_float(k::SigmoidOp{}, t, x, y, n, stream);
    case UnaryOp::tanh:
      return unary_float(k::TanhOp{}, t, x, y, n, stream);
    case UnaryOp::gelu:
      return unary_float(k::GeluOp{p.tanh_approx}, t, x, y, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_activation_grad(ActivationGrad op, UnaryParams p, ElemType t, const void* dy,
                                   const void* xy, void* dx, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!dy || !xy || !dx) return cudaErrorInvalidValue;
  switch (op) {
    case ActivationGrad::relu:
      return grad_float(k::ReluGradFromY{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::leaky_relu:
      return grad_float(k::LeakyReluGradFromX{p.alpha}, t, dy, xy, dx, n, stream);
    case ActivationGrad::sigmoid:
      return grad_float(k::SigmoidGradFromY{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::tanh:
      return grad_float(k::TanhGradFromY{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::gelu:
      return grad_float(k::GeluGradFromX{p.tanh_approx}, t, dy, xy, dx, n, stream);
    case ActivationGrad::abs:
      return grad_float(k::AbsGradFromX{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::erf:
      return grad_float(k::ErfGradFromX{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::softplus:
      return grad_float(k::SoftplusGradFromX{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::elu:
      return grad_float(k::EluGradFromX{p.alpha}, t, dy, xy, dx, n, stream);
    case ActivationGrad::selu:
      return grad_float(k::SeluGradFromX{p.alpha, p.gamma}, t, dy, xy, dx, n, stream);
    case ActivationGrad::hard_sigmoid:
      return grad_float(k::HardSigmoidGradFromX{p.alpha, p.beta}, t, dy, xy, dx, n, stream);
    case ActivationGrad::hard_swish:
      return grad_float(k::HardSwishGradFromX{}, t, dy, xy, dx, n, stream);
    case ActivationGrad::softsign:
      return grad_float(k::SoftsignGradFromX{}, t, dy, xy, dx, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_where(ElemType t, const uint8_t* cond, const void* x, const void* y, void* z,
                         const IndexMap& map, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!cond || !x || !y || !z || !valid_map(map)) return cudaErrorInvalidValue;
  const unsigned grid = blocks_for(n);
  switch (t) {
    case ElemType::f32:
      where_kernel<float><<<grid, kBlock, 0, stream>>>(
          cond, static_cast<const float*>(x), static_cast<const float*>(y), static_cast<float*>(z), map, n);
      break;
    case ElemType::f64:
      where_kernel<double><<<grid, kBlock, 0, stream>>>(cond, static_cast<const double*>(x),
                                                        static_cast<const double*>(y),
                                                        static_cast<double*>(z), map, n);
      break;
    case ElemType::i32:
      where_kernel<int32_t><<<grid, kBlock, 0, stream>>>(cond, static_cast<const int32_t*>(x),
                                                         static_cast<const int32_t*>(y),
                                                         static_cast<int32_t*>(z), map, n);
      break;
    case ElemType::i64:
      where_kernel<int64_t><<<grid, kBlock, 0, stream>>>(cond, static_cast<const int64_t*>(x),
                                                         static_cast<const int64_t*>(y),
                                                         static_cast<int64_t*>(z), map, n);
      break;
    case ElemType::u8:
      where_kernel<uint8_t><<<grid, kBlock, 0, stream>>>(cond, static_cast<const uint8_t*>(x),
                                                         static_cast<const uint8_t*>(y),
                                                         static_cast<uint8_t*>(z), map, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_cast(ElemType from, ElemType to, const void* x, void* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!x || !y) return cudaErrorInvalidValue;
  cast_kernel<<<blocks_for(n), kBlock, 0, stream>>>(from, to, x, y, n);
  return cudaGetLastError();
}

cudaError_t launch_random(ElemType t, const RandomArgs& a, const DeviceStepContext* ctx, void* y, int64_t n,
                          cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!ctx || !y || a.per_sample < 0) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      random_kernel<float><<<blocks_for(n), kBlock, 0, stream>>>(a, ctx, static_cast<float*>(y), n);
      break;
    case ElemType::f64:
      random_kernel<double><<<blocks_for(n), kBlock, 0, stream>>>(a, ctx, static_cast<double*>(y), n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_dropout(ElemType t, const DropoutArgs& a, const DeviceStepContext* ctx, const void* x,
                           void* y, uint8_t* mask, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!ctx || !x || !y || a.per_sample < 0) return cudaErrorInvalidValue;
  // One thread per Philox block when drawing (at most n / 4 + 2 of them); the copy path loops over n.
  const unsigned grid = blocks_for(n / 4 + 2);
  switch (t) {
    case ElemType::f32:
      dropout_kernel<float><<<grid, kBlock, 0, stream>>>(a, ctx, static_cast<const float*>(x),
                                                         static_cast<float*>(y), mask, n);
      break;
    case ElemType::f64:
      dropout_kernel<double><<<grid, kBlock, 0, stream>>>(a, ctx, static_cast<const double*>(x),
                                                          static_cast<double*>(y), mask, n);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_strided_copy(int elem_bytes, bool scatter, void* strided, void* dense, const IndexMap& map,
                                int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!strided || !dense || !valid_map(map)) return cudaErrorInvalidValue;
  switch (elem_bytes) {
    case 1:
      return strided_copy_typed<uint8_t>(scatter, strided, dense, map, n, stream);
    case 2:
      return strided_copy_typed<uint16_t>(scatter, strided, dense, map, n, stream);
    case 4:
      return strided_copy_typed<uint32_t>(scatter, strided, dense, map, n, stream);
    case 8:
      return strided_copy_typed<uint64_t>(scatter, strided, dense, map, n, stream);
    case 16:
      return strided_copy_typed<uint4>(scatter, strided, dense, map, n, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_transpose(int elem_bytes, const void* x, void* y, int64_t batch, int64_t rows,
                             int64_t cols, cudaStream_t stream) {
  if (batch <= 0 || rows <= 0 || cols <= 0) return cudaSuccess;
  if (!x || !y || x == y) return cudaErrorInvalidValue;
  switch (elem_bytes) {
    case 1:
      return transpose_typed<uint8_t>(x, y, batch, rows, cols, stream);
    case 2:
      return transpose_typed<uint16_t>(x, y, batch, rows, cols, stream);
    case 4:
      return transpose_typed<uint32_t>(x, y, batch, rows, cols, stream);
    case 8:
      return transpose_typed<uint64_t>(x, y, batch, rows, cols, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_gather(int unit_bytes, bool idx64, const void* x, const void* idx, void* y,
                          const GatherGeom& g, cudaStream_t stream) {
  if (g.outer * g.k * g.inner <= 0) return cudaSuccess;
  if (!x || !idx || !y || g.n < 0) return cudaErrorInvalidValue;
  switch (unit_bytes) {
    case 1:
      return gather_typed<uint8_t>(idx64, x, idx, y, g, stream);
    case 2:
      return gather_typed<uint16_t>(idx64, x, idx, y, g, stream);
    case 4:
      return gather_typed<uint32_t>(idx64, x, idx, y, g, stream);
    case 8:
      return gather_typed<uint64_t>(idx64, x, idx, y, g, stream);
    case 16:
      return gather_typed<uint4>(idx64, x, idx, y, g, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_gather_grad(ElemType t, bool idx64, const void* dy, const void* idx, void* dx,
                               const GatherGeom& g, cudaStream_t stream) {
  if (g.outer * g.n * g.inner <= 0) return cudaSuccess;
  if (!dx || (g.k > 0 && (!dy || !idx))) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      return gather_grad_typed<float>(idx64, dy, idx, dx, g, stream);
    case ElemType::f64:
      return gather_grad_typed<double>(idx64, dy, idx, dx, g, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_grid_sample(ElemType t, const void* x, const void* grid, void* y, const k::GridGeom& g,
                               cudaStream_t stream) {
  const int64_t n = g.n * g.c * g.oh * g.ow;
  if (n <= 0) return cudaSuccess;
  if (!x || !grid || !y || g.h < 1 || g.w < 1) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      grid_sample_kernel<float><<<blocks_for(n), kBlock, 0, stream>>>(
          static_cast<const float*>(x), static_cast<const float*>(grid), static_cast<float*>(y), g);
      break;
    case ElemType::f64:
      grid_sample_kernel<double><<<blocks_for(n), kBlock, 0, stream>>>(
          static_cast<const double*>(x), static_cast<const double*>(grid), static_cast<double*>(y), g);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_grid_sample_grad(ElemType t, const void* dy, const void* x, const void* grid, void* dx,
                                    void* dgrid, const k::GridGeom& g, cudaStream_t stream) {
  if (g.n * g.c <= 0 || g.h < 1 || g.w < 1) return cudaSuccess;
  if (!dy || !x || !grid) return cudaErrorInvalidValue;
  switch (t) {
    case ElemType::f32:
      grid_sample_grad_typed<float>(dy, x, grid, dx, dgrid, g, stream);
      break;
    case ElemType::f64:
      grid_sample_grad_typed<double>(dy, x, grid, dx, dgrid, g, stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_write_ints(const SmallInts& v, int64_t* y, cudaStream_t stream) {
  if (v.count <= 0) return cudaSuccess;
  if (!y || v.count > kMaxDims) return cudaErrorInvalidValue;
  write_ints_kernel<<<1, 32, 0, stream>>>(v, y);
  return cudaGetLastError();
}

}  // namespace trainer::engine::cuda
