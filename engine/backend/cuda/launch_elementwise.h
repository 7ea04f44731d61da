// Launchers of the elementwise and shape kernels (elementwise.cu): plain declarations that g++ and nvcc both
// read. The factories (kernels_elementwise.cpp) read the graph and reduce every op to these few geometries.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/backend/cuda/launch_step.h"
#include "engine/kernels/grid_sample.h"
#include "engine/kernels/pad.h"

namespace trainer::engine::cuda {

// Element types, in the order of engine::DType (the factory maps one to the other explicitly).
enum class ElemType : int { f32, f64, bf16, f16, i32, i64, u8, boolean };

enum class BinaryOp : int { add, sub, mul, div, pow, max, min, prelu, mod, fmod };
enum class CompareOp : int { greater, less, equal, greater_or_equal, less_or_equal };
enum class UnaryOp : int {
  neg,
  exp,
  log,
  sqrt,
  relu,
  leaky_relu,
  sigmoid,
  tanh,
  gelu,
  abs,
  reciprocal,
  erf,
  softplus,
  elu,
  selu,
  hard_sigmoid,
  hard_swish,
  softsign,
  sign,
  floor,
  ceil,
  round,
  sin,
  cos,
  asin,
  acos,
  atan,
  asinh,
  acosh,
  atanh
};
// (dy, x or y) -> dx; which operand each takes is that of the functors in engine/kernels/functors.h.
enum class ActivationGrad : int {
  relu,
  leaky_relu,
  sigmoid,
  tanh,
  gelu,
  abs,
  erf,
  softplus,
  elu,
  selu,
  hard_sigmoid,
  hard_swish,
  softsign
};

// Parameters of the parameterized activations (LeakyRelu's and Elu's alpha, Gelu's tanh approximation,
// HardSigmoid's alpha and beta, Selu's alpha and gamma).
struct UnaryParams {
  float alpha = 0.01f;
  bool tanh_approx = false;
  float beta = 0;
  float gamma = 0;
};

// A dense row-major index space `dims` mapped to up to three strided operands: element i of the dense side is
// at sum(idx_d * strides[k][d]) in operand k (a stride of 0 broadcasts). The factory drops size-1 dims and
// merges dims that are contiguous in every operand, so the common cases reach the kernel as rank 1 or 2.
inline constexpr int kMaxDims = 8;
inline constexpr int kMaxOperands = 3;
struct IndexMap {
  int rank = 0;
  int64_t dims[kMaxDims] = {};
  int64_t strides[kMaxOperands][kMaxDims] = {};
};

// Gather as [outer, n, inner] indexed along n by k indices; inner counts elements of the launcher's unit.
struct GatherGeom {
  int64_t outer = 1, n = 1, inner = 1, k = 1;
};

// Dropout's operands that are read on the device at run time (they may be fed values), and its constants.
struct DropoutArgs {
  const void* ratio = nullptr;  // scalar, f32 or f64; nullptr means 0.5
  bool ratio_f64 = false;
  const uint8_t* training = nullptr;  // scalar bool; nullptr means inference (the identity)
  bool has_seed = false;              // the node's `seed` attribute, mixed into the step's seed
  int64_t seed = 0;
  uint64_t stream = 0;     // the forward node's Philox stream (ops::dropout_stream of its name)
  int64_t per_sample = 1;  // elements per sample: sample_offset * per_sample is element 0's index
};

// RandomNormalLike (normal) and RandomUniformLike: y = shift + width * z, z from kernels::philox_normal or
// philox_uniform of the global element, keyed as Dropout's masks are.
struct RandomArgs {
  bool normal = true;
  double shift = 0, width = 1;  // mean and scale, or low and high - low
  bool has_seed = false;
  int64_t seed = 0;
  uint64_t stream = 0;
  int64_t per_sample = 1;
};

// A few int64 values, written by a kernel so the write is part of the captured step (Shape's output).
struct SmallInts {
  int count = 0;
  int64_t v[kMaxDims] = {};
};

// out = op(a, b) over map operands 0 (a), 1 (b); out is dense. t: f32, f64, i32, i64 or u8.
cudaError_t launch_binary(BinaryOp op, ElemType t, const void* a, const void* b, void* out,
                          const IndexMap& map, int64_t n, cudaStream_t stream);
// out = op(a, b) != 0 as bytes, over map operands 0 (a), 1 (b); out is dense. t: f32, f64, i32, i64 or u8.
cudaError_t launch_compare(CompareOp op, ElemType t, const void* a, const void* b, uint8_t* out,
                           const IndexMap& map, int64_t n, cudaStream_t stream);
// y = op(x), dense. neg, abs and sign: f32, f64, i32, i64, u8; the others: f32, f64.
cudaError_t launch_unary(UnaryOp op, UnaryParams p, ElemType t, const void* x, void* y, int64_t n,
                         cudaStream_t stream);
// dx = grad(dy, x_or_y), dense, f32 or f64.
cudaError_t launch_activation_grad(ActivationGrad op, UnaryParams p, ElemType t, const void* dy,
                                   const void* xy, void* dx, int64_t n, cudaStream_t stream);
// y = min(max(x, *lo), *hi), dense; lo and hi (scalars, read on the device) may be nullptr. t: f32, f64, i32,
// i64 or u8.
cudaError_t launch_clip(ElemType t, const void* x, const void* lo, const void* hi, void* y, int64_t n,
                        cudaStream_t stream);
// dx = lo <= x <= hi ? dy : 0, dense; lo and hi as for launch_clip. t: f32 or f64.
cudaError_t launch_clip_grad(ElemType t, const void* dy, const void* x, const void* lo, const void* hi,
                             void* dx, int64_t n, cudaStream_t stream);
// z = cond ? x : y over map operands 0 (cond, bool), 1 (x), 2 (y); z is dense. t: f32, f64, i32, i64, u8.
cudaError_t launch_where(ElemType t, const uint8_t* cond, const void* x, const void* y, void* z,
                         const IndexMap& map, int64_t n, cudaStream_t stream);
// Pad: y[o] = the input element that engine/kernels/pad.h maps o to, or *value (nullptr: 0), with value read
// on the device; t: f32, f64, i32, i64 or u8. PadGrad: dx[i] = the sum of dy over the outputs that read i, in
// the CPU's order; t: f32 or f64. n counts y's (Pad) or dx's (PadGrad) elements.
cudaError_t launch_pad(ElemType t, kernels::PadMode mode, const kernels::PadGeom& g, const void* x,
                       const void* value, void* y, int64_t n, cudaStream_t stream);
cudaError_t launch_pad_grad(ElemType t, kernels::PadMode mode, const kernels::PadGeom& g, const void* dy,
                            void* dx, int64_t n, cudaStream_t stream);
// Any element type to any other, through double as the CPU does.
cudaError_t launch_cast(ElemType from, ElemType to, const void* x, void* y, int64_t n, cudaStream_t stream);
// y = keep ? x * scale : 0 with the CPU's mask; mask (optional) gets keep. The step's counters come from ctx.
// t: f32 or f64. In place (x == y) is allowed.
cudaError_t launch_dropout(ElemType t, const DropoutArgs& a, const DeviceStepContext* ctx, const void* x,
                           void* y, uint8_t* mask, int64_t n, cudaStream_t stream);
// The draw of RandomNormalLike or RandomUniformLike into y (f32 or f64), the CPU's numbers.
cudaError_t launch_random(ElemType t, const RandomArgs& a, const DeviceStepContext* ctx, void* y, int64_t n,
                          cudaStream_t stream);
// Gather (scatter = false): dense[i] = strided[off_0(i)]; scatter: strided[off_0(i)] = dense[i]. Elements of
// elem_bytes bytes: 1, 2, 4, 8 or 16.
cudaError_t launch_strided_copy(int elem_bytes, bool scatter, void* strided, void* dense, const IndexMap& map,
                                int64_t n, cudaStream_t stream);
// y[b][c][r] = x[b][r][c] for batch x rows x cols; elem_bytes 1, 2, 4 or 8.
cudaError_t launch_transpose(int elem_bytes, const void* x, void* y, int64_t batch, int64_t rows,
                             int64_t cols, cudaStream_t stream);
// y[o][j][:] = x[o][idx[j]][:] (negative indices count from the end; out-of-range ones give zeros).
// unit_bytes 1, 2, 4, 8 or 16: the factory picks the widest that divides a row.
cudaError_t launch_gather(int unit_bytes, bool idx64, const void* x, const void* idx, void* y,
                          const GatherGeom& g, cudaStream_t stream);
// dx = 0, then dx[o][idx[j]][:] += dy[o][j][:] in index order (out-of-range indices are skipped). Each thread
// owns one column of dx, so sums are deterministic and bitwise equal to the CPU's. t: f32 or f64.
cudaError_t launch_gather_grad(ElemType t, bool idx64, const void* dy, const void* idx, void* dx,
                               const GatherGeom& g, cudaStream_t stream);
// GridSample: y [N, C, H_out, W_out] from x and grid; its gradient's dx (deterministic: no atomics) and
// dgrid, each skipped when null. f32 and f64.
cudaError_t launch_grid_sample(ElemType t, const void* x, const void* grid, void* y,
                               const kernels::GridGeom& g, cudaStream_t stream);
cudaError_t launch_grid_sample_grad(ElemType t, const void* dy, const void* x, const void* grid, void* dx,
                                    void* dgrid, const kernels::GridGeom& g, cudaStream_t stream);
// y[0 .. v.count) = v.
cudaError_t launch_write_ints(const SmallInts& v, int64_t* y, cudaStream_t stream);

}  // namespace trainer::engine::cuda
