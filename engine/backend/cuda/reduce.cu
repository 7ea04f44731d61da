// Device code of the reduce family: reductions over axes, softmax along an axis, the class and elementwise
// losses, LayerNormalization and the optimizer updates, for f32 and f64. Every reduced value is combined in
// an order fixed by the shape alone (per-thread strides, a warp butterfly, warps in order, chunk partials in
// order), never by atomics, so a step gives the same bits run after run on one GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "engine/backend/cuda/launch_reduce.h"
#include "engine/kernels/nadam.h"
#include "engine/ops/loss_functors.h"

namespace trainer::engine::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
// Partial sums of a loss: one pair per block of a fixed grid.
constexpr int kLossBlocks = 1024;
// Elements per block of the multi-tensor kernels (16 per thread).
constexpr int64_t kChunk = 4096;
constexpr int kMaxUpdateTensors = 40;  // keeps the kernel parameters under 4 KiB
constexpr int kMaxClipTensors = 64;

unsigned blocks_for(int64_t items, int per_block) {
  int64_t b = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}
// A grid-stride loop's grid; the element order a thread sees does not matter for elementwise work.
unsigned grid_stride_blocks(int64_t n) {
  int64_t b = (n + kBlock - 1) / kBlock;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b > 65535 * 8 ? 65535 * 8 : b);
}

// ==== kernels ====

// ---- combining ----

struct Add {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
// As the CPU's MaxOp: a NaN propagates (it replaces any number; nothing replaces it).
struct Max {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return b > a || b != b ? b : a;
  }
};

// Combines v over a group of tpo threads (1, 32 or 256 = the block); every thread of the group gets the
// result. A butterfly within the warp, then lane 0's value broadcast (so a non-commutative corner such as max
// of +0 and -0 cannot leave lanes disagreeing), then the warps in order. With tpo = 256 every thread of the
// block must call this.
template <class T, class Op>
__device__ T group_reduce(T v, int tpo, Op op) {
  if (tpo == 1) return v;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  v = __shfl_sync(0xffffffffu, v, 0);
  if (tpo == 32) return v;
  __shared__ T warp_part[kWarps];
  __syncthreads();  // the previous call's readers are done with warp_part
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = v;
  __syncthreads();
  T r = warp_part[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, warp_part[w]);
  return r;
}

// The group (row, position, output) this thread works on and its lane in it.
struct GroupIndex {
  int64_t id;
  int lane;
};
__device__ GroupIndex group_index(int tpo) {
  int per_block = kBlock / tpo;
  return {static_cast<int64_t>(blockIdx.x) * per_block + threadIdx.x / tpo,
          static_cast<int>(threadIdx.x % tpo)};
}

// ---- reductions ----

template <class T, int kOp>
__device__ T reduce_init() {
  return kOp == static_cast<int>(ReduceOp::max) ? T(-INFINITY) : T(0);
}
template <class T, int kOp>
__device__ T reduce_combine(T a, T b) {
  return kOp == static_cast<int>(ReduceOp::max) ? Max{}(a, b) : a + b;
}
template <class T, int kOp>
__device__ T reduce_finish(T a, int64_t count) {
  if (kOp != static_cast<int>(ReduceOp::mean)) return a;
  return count ? a / static_cast<T>(count) : T(NAN);
}
template <class T, int kOp>
struct ReduceCombine {
  __device__ T operator()(T a, T b) const { return reduce_combine<T, kOp>(a, b); }
};

__device__ int64_t kept_offset(const ReduceGeometry& g, int64_t o) {
  int64_t off = 0;
  for (int d = g.nk - 1; d >= 0; --d) {
    off += (o % g.kdim[d]) * g.kstr[d];
    o /= g.kdim[d];
  }
  return off;
}
__device__ int64_t reduced_offset(const ReduceGeometry& g, int64_t k) {
  if (g.nr == 1) return k * g.rstr[0];
  int64_t off = 0;
  if (g.red_count <= int64_t{UINT32_MAX}) {  // 32-bit division is several times cheaper
    auto k32 = static_cast<uint32_t>(k);
    for (int d = g.nr - 1; d >= 0; --d) {
      auto dim = static_cast<uint32_t>(g.rdim[d]);
      off += static_cast<int64_t>(k32 % dim) * g.rstr[d];
      k32 /= dim;
    }
    return off;
  }
  for (int d = g.nr - 1; d >= 0; --d) {
    off += (k % g.rdim[d]) * g.rstr[d];
    k /= g.rdim[d];
  }
  return off;
}

// Group grp = (split s, output o) reduces elements [s * chunk, (s + 1) * chunk) of output o. Consecutive
// groups are consecutive outputs, so with tpo = 1 neighbouring threads read neighbouring kept columns.
template <class T, int kOp>
__global__ void reduce_kernel(const T* x, T* y, ReduceGeometry g, int64_t chunk) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.out_count * g.splits) return;
  int64_t o = gi.id % g.out_count, s = gi.id / g.out_count;
  const T* xo = x + kept_offset(g, o);
  int64_t k0 = s * chunk, k1 = k0 + chunk < g.red_count ? k0 + chunk : g.red_count;
  T acc = reduce_init<T, kOp>();
  for (int64_t k = k0 + gi.lane; k < k1; k += g.tpo)
    acc = reduce_combine<T, kOp>(acc, xo[reduced_offset(g, k)]);
  acc = group_reduce(acc, g.tpo, ReduceCombine<T, kOp>{});
  if (gi.lane != 0) return;
  if (g.splits > 1)
    y[s * g.out_count + o] = acc;  // a partial, in the workspace
  else
    y[o] = reduce_finish<T, kOp>(acc, g.red_count);
}

// Combines the splits' partials of each output in split order.
template <class T, int kOp>
__global__ void reduce_splits_kernel(const T* part, T* y, int64_t out_count, int64_t splits,
                                     int64_t red_count) {
  int64_t o = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (o >= out_count) return;
  T acc = part[o];
  for (int64_t s = 1; s < splits; ++s) acc = reduce_combine<T, kOp>(acc, part[s * out_count + o]);
  y[o] = reduce_finish<T, kOp>(acc, red_count);
}

// A candidate for the position ReduceMax took its value from, as the CPU's scan finds it: the first NaN when
// there is one, else the first of the greatest elements. An associative rule: NaN beats a number, the greater
// number wins, and the lower index breaks ties.
template <class T>
struct ArgMax {
  T v;
  int64_t k;  // -1: none yet
  int nan;
};
template <class T>
__device__ ArgMax<T> better(ArgMax<T> a, ArgMax<T> b) {
  if (a.k < 0) return b;
  if (b.k < 0) return a;
  if (a.nan != b.nan) return a.nan ? a : b;
  if (a.nan || b.v == a.v) return b.k < a.k ? b : a;
  return b.v > a.v ? b : a;
}
template <class T>
__device__ ArgMax<T> shfl_xor(ArgMax<T> a, int o) {
  return {__shfl_xor_sync(0xffffffffu, a.v, o), __shfl_xor_sync(0xffffffffu, a.k, o),
          __shfl_xor_sync(0xffffffffu, a.nan, o)};
}
template <class T>
__device__ ArgMax<T> group_argmax(ArgMax<T> c, int tpo) {
  if (tpo == 1) return c;
  for (int o = 16; o > 0; o >>= 1) c = better(c, shfl_xor(c, o));
  if (tpo == 32) return c;
  __shared__ T pv[kWarps];
  __shared__ int64_t pk[kWarps];
  __shared__ int pn[kWarps];
  if (threadIdx.x % 32 == 0) {
    pv[threadIdx.x / 32] = c.v;
    pk[threadIdx.x / 32] = c.k;
    pn[threadIdx.x / 32] = c.nan;
  }
  __syncthreads();
  ArgMax<T> r{pv[0], pk[0], pn[0]};
  for (int w = 1; w < kWarps; ++w) r = better(r, ArgMax<T>{pv[w], pk[w], pn[w]});
  return r;
}

// dx was zeroed; each output's dy goes to its group's first maximum.
template <class T>
__global__ void reduce_max_grad_kernel(const T* x, const T* dy, T* dx, ReduceGeometry g) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.out_count) return;
  int64_t base = kept_offset(g, gi.id);
  ArgMax<T> c{T(0), -1, 0};
  for (int64_t k = gi.lane; k < g.red_count; k += g.tpo) {
    T v = x[base + reduced_offset(g, k)];
    c = better(c, ArgMax<T>{v, k, v != v ? 1 : 0});
  }
  c = group_argmax(c, g.tpo);
  if (gi.lane == 0 && c.k >= 0) dx[base + reduced_offset(g, c.k)] = dy[gi.id];
}

// ---- softmax ----

// Row r of [outer, n, inner] starts at (r / inner) * n * inner + r % inner; its elements are `inner` apart.
__device__ int64_t axis_row_start(const AxisRows& g, int64_t r) {
  return (r / g.inner) * g.n * g.inner + r % g.inner;
}

// As the CPU: the maximum subtracted; softmax = exp(x - m) * (1 / sum), log_softmax = x - (m + log(sum)).
template <class T, bool kLog>
__global__ void softmax_kernel(const T* x, T* y, AxisRows g) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.outer * g.inner) return;
  int64_t start = axis_row_start(g, gi.id), st = g.inner;
  const T* xr = x + start;
  T* yr = y + start;
  T m = T(-INFINITY);
  for (int64_t i = gi.lane; i < g.n; i += g.tpo) m = Max{}(m, xr[i * st]);
  m = group_reduce(m, g.tpo, Max{});
  T s = 0;
  for (int64_t i = gi.lane; i < g.n; i += g.tpo) s += exp(xr[i * st] - m);
  s = group_reduce(s, g.tpo, Add{});
  if (kLog) {
    T lse = m + log(s);
    for (int64_t i = gi.lane; i < g.n; i += g.tpo) yr[i * st] = xr[i * st] - lse;
  } else {
    T inv = T(1) / s;
    for (int64_t i = gi.lane; i < g.n; i += g.tpo) yr[i * st] = exp(xr[i * st] - m) * inv;
  }
}

// Softmax: dx = y * (dy - sum(dy * y)); LogSoftmax: dx = dy - exp(y) * sum(dy). dx may be dy: each thread
// writes only the elements it read itself.
template <class T, bool kLog>
__global__ void softmax_grad_kernel(const T* dy, const T* y, T* dx, AxisRows g) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.outer * g.inner) return;
  int64_t start = axis_row_start(g, gi.id), st = g.inner;
  T acc = 0;
  for (int64_t i = gi.lane; i < g.n; i += g.tpo) {
    int64_t k = start + i * st;
    acc += kLog ? dy[k] : dy[k] * y[k];
  }
  acc = group_reduce(acc, g.tpo, Add{});
  for (int64_t i = gi.lane; i < g.n; i += g.tpo) {
    int64_t k = start + i * st;
    dx[k] = kLog ? dy[k] - exp(y[k]) * acc : y[k] * (dy[k] - acc);
  }
}

// ---- class losses ----

__device__ int64_t label_at(const ClassLabels& l, int64_t p) {
  return l.i64 ? static_cast<const int64_t*>(l.labels)[p] : static_cast<const int32_t*>(l.labels)[p];
}
__device__ bool is_ignore(const ClassLabels& l, int64_t label) {
  return l.has_ignore && label == l.ignore;
}
__device__ bool out_of_range(const ClassLabels& l, int64_t label) {
  return !is_ignore(l, label) && (label < 0 || label >= l.classes);
}
// The CPU's LabelView::weight: 0 for ignored or out-of-range labels.
template <class T>
__device__ double label_weight(const ClassLabels& l, int64_t label) {
  if (is_ignore(l, label) || label < 0 || label >= l.classes) return 0.0;
  return l.weights ? static_cast<double>(static_cast<const T*>(l.weights)[label]) : 1.0;
}
__device__ int64_t class_base(const ClassGeometry& g, int64_t p) {
  return (p / g.d) * g.c * g.d + p % g.d;
}
// The factor of position p's gradient: dloss[p], dloss[0], or dloss[0] over the total weight (precomputed).
template <class T>
__device__ double loss_scale(LossReduction r, const T* dloss, const double* mean_scale, int64_t p) {
  if (r == LossReduction::none) return static_cast<double>(dloss[p]);
  if (r == LossReduction::sum) return static_cast<double>(dloss[0]);
  return *mean_scale;
}

// log(sum(exp(x_k))) over the classes of one position, in double as the CPU.
template <class T>
__device__ double group_log_sum_exp(const T* xp, const ClassGeometry& g, int lane) {
  double mx = -INFINITY;
  for (int64_t k = lane; k < g.c; k += g.tpo) mx = Max{}(mx, static_cast<double>(xp[k * g.d]));
  mx = group_reduce(mx, g.tpo, Max{});
  double s = 0;
  for (int64_t k = lane; k < g.c; k += g.tpo) s += exp(xp[k * g.d] - mx);
  s = group_reduce(s, g.tpo, Add{});
  return mx + log(s);
}

// Fused softmax cross-entropy forward: log-sum-exp, the optional log_prob, and the position's weighted loss
// (to `loss` when unreduced, else with its weight to the workspace for the ordered sum).
template <class T>
__global__ void softmax_ce_kernel(const T* x, ClassLabels l, ClassGeometry g, T* loss, T* log_prob,
                                  double* pos_loss, double* pos_weight) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.n * g.d) return;
  int64_t p = gi.id, b = class_base(g, p);
  const T* xp = x + b;
  double lse = group_log_sum_exp(xp, g, gi.lane);
  if (log_prob)
    for (int64_t k = gi.lane; k < g.c; k += g.tpo) log_prob[b + k * g.d] = static_cast<T>(xp[k * g.d] - lse);
  if (gi.lane != 0) return;
  int64_t label = label_at(l, p);
  double w, v;
  if (out_of_range(l, label)) {
    w = v = NAN;
  } else {
    w = label_weight<T>(l, label);
    v = w == 0 ? 0.0 : -(xp[label * g.d] - lse) * w;
  }
  if (pos_loss) {
    pos_loss[p] = v;
    pos_weight[p] = w;
  } else {
    loss[p] = static_cast<T>(v);
  }
}

// Fused softmax cross-entropy backward: (softmax - onehot) * weight * scale, plus the log_prob output's
// gradient g - softmax * sum(g) when it has one.
template <class T>
__global__ void softmax_ce_grad_kernel(const T* dloss, const T* x, ClassLabels l, ClassGeometry g,
                                       LossReduction r, const double* mean_scale, const T* g_log_prob,
                                       T* dx) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.n * g.d) return;
  int64_t p = gi.id, b = class_base(g, p);
  const T* xp = x + b;
  double lse = group_log_sum_exp(xp, g, gi.lane);
  double g_sum = 0;
  if (g_log_prob) {
    for (int64_t k = gi.lane; k < g.c; k += g.tpo) g_sum += g_log_prob[b + k * g.d];
    g_sum = group_reduce(g_sum, g.tpo, Add{});
  }
  int64_t label = label_at(l, p);
  double s = label_weight<T>(l, label) * loss_scale(r, dloss, mean_scale, p);
  for (int64_t k = gi.lane; k < g.c; k += g.tpo) {
    double sm = exp(xp[k * g.d] - lse);
    double v = (sm - (k == label ? 1.0 : 0.0)) * s;
    if (g_log_prob) v += g_log_prob[b + k * g.d] - sm * g_sum;
    dx[b + k * g.d] = static_cast<T>(v);
  }
}

template <class T>
__global__ void nll_kernel(const T* x, ClassLabels l, ClassGeometry g, T* loss, double* pos_loss,
                           double* pos_weight) {
  int64_t p = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (p >= g.n * g.d) return;
  int64_t label = label_at(l, p);
  double w, v;
  if (out_of_range(l, label)) {
    w = v = NAN;
  } else {
    w = label_weight<T>(l, label);
    v = w == 0 ? 0.0 : -static_cast<double>(x[class_base(g, p) + label * g.d]) * w;
  }
  if (pos_loss) {
    pos_loss[p] = v;
    pos_weight[p] = w;
  } else {
    loss[p] = static_cast<T>(v);
  }
}

// One thread per element of dinput: -weight * scale at the label, zero elsewhere.
template <class T>
__global__ void nll_grad_kernel(const T* dloss, ClassLabels l, ClassGeometry g, LossReduction r,
                                const double* mean_scale, T* dx) {
  int64_t total = g.n * g.c * g.d, cd = g.c * g.d;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kBlock) {
    int64_t p = (i / cd) * g.d + i % g.d, k = (i / g.d) % g.c;
    int64_t label = label_at(l, p);
    double w = label_weight<T>(l, label);
    dx[i] = (w != 0 && k == label) ? static_cast<T>(-w * loss_scale(r, dloss, mean_scale, p)) : T(0);
  }
}

// ---- elementwise losses ----

__device__ double point_value(PointLoss fn, double eps, double p, double t) {
  switch (fn) {
    case PointLoss::binary_cross_entropy:
      return ops::BinaryCrossEntropyFn{eps}.value(p, t);
    case PointLoss::binary_cross_entropy_with_logits:
      return ops::BinaryCrossEntropyWithLogitsFn{}.value(p, t);
    case PointLoss::squared:
      return ops::SquaredErrorFn{}.value(p, t);
    default:
      return ops::AbsoluteErrorFn{}.value(p, t);
  }
}
__device__ double point_deriv(PointLoss fn, double eps, double p, double t) {
  switch (fn) {
    case PointLoss::binary_cross_entropy:
      return ops::BinaryCrossEntropyFn{eps}.deriv(p, t);
    case PointLoss::binary_cross_entropy_with_logits:
      return ops::BinaryCrossEntropyWithLogitsFn{}.deriv(p, t);
    case PointLoss::squared:
      return ops::SquaredErrorFn{}.deriv(p, t);
    default:
      return ops::AbsoluteErrorFn{}.deriv(p, t);
  }
}

template <class T>
__global__ void point_loss_kernel(PointLoss fn, double eps, const T* p, const T* t, int64_t n, T* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kBlock)
    out[i] = static_cast<T>(point_value(fn, eps, p[i], t[i]));
}

template <class T>
__global__ void point_loss_grad_kernel(PointLoss fn, double eps, const T* dloss, const T* p, const T* t,
                                       int64_t n, LossReduction r, T* dp) {
  double shared = 0;
  if (r == LossReduction::sum) shared = dloss[0];
  if (r == LossReduction::mean) shared = dloss[0] / static_cast<double>(n > 1 ? n : 1);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kBlock) {
    double s = r == LossReduction::none ? static_cast<double>(dloss[i]) : shared;
    dp[i] = static_cast<T>(point_deriv(fn, eps, p[i], t[i]) * s);
  }
}

// ---- ordered sums of losses and weights ----

// What the first pass sums: per-position (loss, weight) arrays, class weights of the labels, or an
// elementwise loss.
struct SumSource {
  enum Kind : int { arrays, class_weights, point } kind = arrays;
  const double* a = nullptr;
  const double* b = nullptr;
  ClassLabels labels;
  PointLoss fn = PointLoss::squared;
  double eps = 0;
  const void* p = nullptr;
  const void* t = nullptr;
  int64_t n = 0;
};

// Pass 1: a fixed grid of kLossBlocks blocks (fewer for small n, by n alone); block b writes its two sums to
// part[2b], part[2b + 1].
template <class T>
__global__ void sum_partials_kernel(SumSource src, double* part) {
  double a = 0, b = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < src.n;
       i += static_cast<int64_t>(gridDim.x) * kBlock) {
    switch (src.kind) {
      case SumSource::arrays:
        a += src.a[i];
        b += src.b[i];
        break;
      case SumSource::class_weights:
        b += label_weight<T>(src.labels, label_at(src.labels, i));
        break;
      case SumSource::point:
        a += point_value(src.fn, src.eps, static_cast<const T*>(src.p)[i], static_cast<const T*>(src.t)[i]);
        break;
    }
  }
  a = group_reduce(a, kBlock, Add{});
  b = group_reduce(b, kBlock, Add{});
  if (threadIdx.x == 0) {
    part[2 * blockIdx.x] = a;
    part[2 * blockIdx.x + 1] = b;
  }
}

enum class Finish : int { sum, mean_by_weight, mean_by_count, scale_by_weight };

// Pass 2, one block: the partials in a fixed order, then the loss (out) or the gradient's mean scale
// dloss[0] / total weight (scale; 0 when every position is ignored).
template <class T>
__global__ void sum_finish_kernel(const double* part, int blocks, Finish mode, double count, T* out,
                                  const T* dloss, double* scale) {
  double a = 0, b = 0;
  for (int i = threadIdx.x; i < blocks; i += kBlock) {
    a += part[2 * i];
    b += part[2 * i + 1];
  }
  a = group_reduce(a, kBlock, Add{});
  b = group_reduce(b, kBlock, Add{});
  if (threadIdx.x != 0) return;
  switch (mode) {
    case Finish::sum:
      *out = static_cast<T>(a);
      break;
    case Finish::mean_by_weight:
      *out = static_cast<T>(b != 0 ? a / b : 0.0);
      break;
    case Finish::mean_by_count:
      *out = static_cast<T>(a / count);
      break;
    case Finish::scale_by_weight:
      *scale = b != 0 ? static_cast<double>(dloss[0]) / b : 0.0;
      break;
  }
}

// ---- LayerNormalization ----

// Mean and inverse standard deviation of one row, two passes in double as the CPU.
template <class T>
__device__ void row_moments(const T* xr, const LayerNormGeometry& g, int lane, double* mean,
                            double* inv_std) {
  double s = 0;
  for (int64_t j = lane; j < g.inner; j += g.tpo) s += xr[j];
  double mu = group_reduce(s, g.tpo, Add{}) / static_cast<double>(g.inner);
  double q = 0;
  for (int64_t j = lane; j < g.inner; j += g.tpo) {
    double d = xr[j] - mu;
    q += d * d;
  }
  q = group_reduce(q, g.tpo, Add{});
  *mean = mu;
  *inv_std = 1 / sqrt(q / static_cast<double>(g.inner) + g.eps);
}

template <class T>
__global__ void layer_norm_kernel(const T* x, const T* scale, const T* bias, T* y, T* mean_out, T* inv_out,
                                  LayerNormGeometry g) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.rows) return;
  const T* xr = x + gi.id * g.inner;
  T* yr = y + gi.id * g.inner;
  double mean, inv_std;
  row_moments(xr, g, gi.lane, &mean, &inv_std);
  for (int64_t j = gi.lane; j < g.inner; j += g.tpo) {
    double v = (xr[j] - mean) * inv_std * scale[j];
    if (bias) v += bias[j];
    yr[j] = static_cast<T>(v);
  }
  if (gi.lane == 0) {
    if (mean_out) mean_out[gi.id] = static_cast<T>(mean);
    if (inv_out) inv_out[gi.id] = static_cast<T>(inv_std);
  }
}

// dX per row (with g = dy * scale, xhat = (x - mean) * inv_std): inv_std * (g - mean(g) - xhat * mean(g *
// xhat)), plus what flows in through the Mean and InvStdDev outputs. Keeps each row's statistics for the
// column sums.
template <class T>
__global__ void layer_norm_grad_rows_kernel(const T* dy, const T* x, const T* scale, const T* g_mean,
                                            const T* g_inv, T* dx, LayerNormGeometry g, double* row_mean,
                                            double* row_inv) {
  GroupIndex gi = group_index(g.tpo);
  if (gi.id >= g.rows) return;
  int64_t r = gi.id;
  const T* xr = x + r * g.inner;
  const T* dyr = dy + r * g.inner;
  T* dxr = dx + r * g.inner;
  double mean, inv_std;
  row_moments(xr, g, gi.lane, &mean, &inv_std);
  double sa = 0, sb = 0;
  for (int64_t j = gi.lane; j < g.inner; j += g.tpo) {
    double gj = static_cast<double>(dyr[j]) * scale[j];
    sa += gj;
    sb += gj * (xr[j] - mean);
  }
  sa = group_reduce(sa, g.tpo, Add{});
  sb = group_reduce(sb, g.tpo, Add{});
  double n = static_cast<double>(g.inner);
  double mg = sa / n, mgx = sb * inv_std / n;
  double cm = g_mean ? g_mean[r] / n : 0.0;
  double ci = g_inv ? -static_cast<double>(g_inv[r]) * inv_std * inv_std * inv_std / n : 0.0;
  for (int64_t j = gi.lane; j < g.inner; j += g.tpo) {
    double xc = xr[j] - mean;
    double gj = static_cast<double>(dyr[j]) * scale[j];
    dxr[j] = static_cast<T>(inv_std * (gj - mg - xc * inv_std * mgx) + cm + ci * xc);
  }
  if (gi.lane == 0) {
    row_mean[r] = mean;
    row_inv[r] = inv_std;
  }
}

// dScale and dB partials: thread (block of rows, column j) sums its rows in order.
template <class T>
__global__ void layer_norm_grad_cols_kernel(const T* dy, const T* x, LayerNormGeometry g,
                                            const double* row_mean, const double* row_inv, double* part_s,
                                            double* part_b) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= g.row_blocks * g.inner) return;
  int64_t blk = i / g.inner, j = i % g.inner;
  double ps = 0, pb = 0;
  for (int64_t r = g.rows * blk / g.row_blocks, e = g.rows * (blk + 1) / g.row_blocks; r < e; ++r) {
    double d = dy[r * g.inner + j];
    double xc = x[r * g.inner + j] - row_mean[r];
    ps += d * xc * row_inv[r];
    pb += d;
  }
  part_s[i] = ps;
  part_b[i] = pb;
}

template <class T>
__global__ void layer_norm_grad_sum_kernel(const double* part_s, const double* part_b, LayerNormGeometry g,
                                           T* dscale, T* dbias) {
  int64_t j = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (j >= g.inner) return;
  double ds = 0, db = 0;
  for (int64_t blk = 0; blk < g.row_blocks; ++blk) {
    ds += part_s[blk * g.inner + j];
    db += part_b[blk * g.inner + j];
  }
  dscale[j] = static_cast<T>(ds);
  if (dbias) dbias[j] = static_cast<T>(db);
}

// ---- optimizer updates ----

// Up to kMaxUpdateTensors tensors, cut into kChunk-element chunks; block b takes one chunk.
struct UpdateBatch {
  int count = 0;
  int64_t first_chunk[kMaxUpdateTensors + 1] = {};
  UpdateTensor t[kMaxUpdateTensors];
};

// The tensor whose chunks include block b: the last j with first[j] <= b (tensors without chunks are
// skipped).
template <int kMax>
__device__ int chunk_owner(const int64_t (&first)[kMax], int count, int64_t b) {
  int j = 0;
  while (j + 1 < count && first[j + 1] <= b) ++j;
  return j;
}

// R * sqrt(1 - beta2^t) / (1 - beta1^t); R itself before the first update.
__device__ double adam_rate(double r, int64_t t, double beta1, double beta2) {
  if (t <= 0) return r;
  double td = static_cast<double>(t);
  return r * sqrt(1 - pow(beta2, td)) / (1 - pow(beta1, td));
}

// The step's coefficients come from R and T in device memory (read here, so a replayed graph sees this
// step's values), computed once per block in double and rounded to T as the CPU does; the per-element
// formulas then follow engine/backend/cpu/kernels_optimizer.cpp operation for operation.
template <class T>
__global__ void update_kernel(UpdateBatch batch, UpdateHyper h, UpdateScalars sc) {
  __shared__ T c[6];
  if (threadIdx.x == 0) {
    for (T& v : c) v = T(0);
    double r =
        sc.r_f64 ? *static_cast<const double*>(sc.r) : static_cast<double>(*static_cast<const float*>(sc.r));
    int64_t t = *sc.t;
    switch (h.rule) {
      case UpdateRule::adam:
        c[0] = static_cast<T>(adam_rate(r, t, h.alpha, h.beta));
        c[1] = static_cast<T>(h.alpha);
        c[2] = static_cast<T>(h.beta);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(h.l2);
        c[5] = static_cast<T>(1 - h.post);
        break;
      case UpdateRule::adamw:
      case UpdateRule::adamw_amsgrad:
        c[0] = static_cast<T>(adam_rate(r, t, h.alpha, h.beta));
        c[1] = static_cast<T>(h.alpha);
        c[2] = static_cast<T>(h.beta);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(r * h.decay);
        break;
      case UpdateRule::momentum:
      case UpdateRule::nesterov:
        c[0] = static_cast<T>(r);
        c[1] = static_cast<T>(h.alpha);
        c[2] = static_cast<T>(t > 0 ? h.beta : 1.0);  // the first update takes the whole gradient
        c[4] = static_cast<T>(h.l2);
        break;
      case UpdateRule::adagrad:
        c[0] = static_cast<T>(r / (1 + static_cast<double>(t) * h.decay));
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(h.l2);
        break;
      case UpdateRule::rmsprop:
      case UpdateRule::rmsprop_momentum:
      case UpdateRule::rmsprop_centered:
      case UpdateRule::rmsprop_centered_momentum:
        c[0] = static_cast<T>(r);
        c[1] = static_cast<T>(h.rho);
        c[2] = static_cast<T>(h.momentum);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(h.l2);
        break;
      case UpdateRule::sgd:
        c[0] = static_cast<T>(r);
        c[4] = static_cast<T>(h.l2);
        break;
      case UpdateRule::adamax:
        c[0] = static_cast<T>(r / (1 - pow(h.alpha, static_cast<double>(t))));
        c[1] = static_cast<T>(h.alpha);
        c[2] = static_cast<T>(h.beta);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(r * h.decay);
        break;
      case UpdateRule::nadam: {
        const kernels::NadamFactors f = kernels::nadam_factors(h.alpha, h.beta, t);
        c[0] = static_cast<T>(r);
        c[1] = static_cast<T>(f.moment);
        c[2] = static_cast<T>(f.gradient);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(r * h.decay);
        c[5] = static_cast<T>(f.second);
        break;
      }
      case UpdateRule::lion:
        c[0] = static_cast<T>(r);
        c[1] = static_cast<T>(h.alpha);
        c[2] = static_cast<T>(h.beta);
        c[4] = static_cast<T>(r * h.decay);
        break;
      case UpdateRule::adadelta:
        c[0] = static_cast<T>(r);
        c[1] = static_cast<T>(h.rho);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(r * h.decay);
        break;
      case UpdateRule::adagrad_keras:
        c[0] = static_cast<T>(r);
        c[3] = static_cast<T>(h.eps);
        c[4] = static_cast<T>(r * h.decay);
        break;
    }
  }
  __syncthreads();
  int j = chunk_owner(batch.first_chunk, batch.count, blockIdx.x);
  const UpdateTensor& u = batch.t[j];
  int64_t begin = (static_cast<int64_t>(blockIdx.x) - batch.first_chunk[j]) * kChunk;
  int64_t end = begin + kChunk < u.n ? begin + kChunk : u.n;
  const T* xs = static_cast<const T*>(u.x);
  const T* gs = static_cast<const T*>(u.g);
  const T* s0s = static_cast<const T*>(u.s0);
  const T* s1s = static_cast<const T*>(u.s1);
  const T* s2s = static_cast<const T*>(u.s2);
  T* xo = static_cast<T*>(u.x_out);
  T* s0o = static_cast<T*>(u.s0_out);
  T* s1o = static_cast<T*>(u.s1_out);
  T* s2o = static_cast<T*>(u.s2_out);
  const T rate = c[0], c1 = c[1], c2 = c[2], e = c[3], c4 = c[4], post = c[5];
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
    T x = xs[i], g = gs[i];
    T s0 = s0s ? s0s[i] : T(0), s1 = s1s ? s1s[i] : T(0), s2 = s2s ? s2s[i] : T(0);
    T nx, n0 = 0, n1 = 0, n2 = 0;
    switch (h.rule) {
      case UpdateRule::adam: {  // c1 = alpha, c2 = beta, c4 = norm_coefficient
        T gr = g + c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * gr;
        n1 = c2 * s1 + (T(1) - c2) * gr * gr;
        nx = post * (x - rate * (n0 / (sqrt(n1) + e)));
        break;
      }
      case UpdateRule::adamw: {  // c1 = beta1, c2 = beta2, c4 = R * weight_decay
        x = x - c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * g;
        n1 = c2 * s1 + (T(1) - c2) * g * g;
        nx = x - rate * (n0 / (sqrt(n1) + e));
        break;
      }
      case UpdateRule::adamw_amsgrad: {  // as adamw; s2 = the largest second moment so far
        x = x - c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * g;
        n1 = c2 * s1 + (T(1) - c2) * g * g;
        n2 = s2 < n1 ? n1 : s2;  // std::max's choice, as the CPU
        nx = x - rate * (n0 / (sqrt(n2) + e));
        break;
      }
      case UpdateRule::momentum:
      case UpdateRule::nesterov: {  // c1 = alpha, c2 = beta (or 1), c4 = norm_coefficient
        T gr = g + c4 * x;
        n0 = c1 * s0 + c2 * gr;
        nx = h.rule == UpdateRule::nesterov ? x - rate * (gr + c1 * n0) : x - rate * n0;
        break;
      }
      case UpdateRule::adagrad: {
        T gr = g + c4 * x;
        n0 = s0 + gr * gr;
        nx = x - rate * gr / (sqrt(n0) + e);
        break;
      }
      case UpdateRule::rmsprop: {  // c1 = rho
        T gr = g + c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * gr * gr;
        nx = x - rate * gr / sqrt(n0 + e);
        break;
      }
      case UpdateRule::rmsprop_momentum: {  // c1 = rho, c2 = momentum
        T gr = g + c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * gr * gr;
        n1 = c2 * s1 + rate * gr / sqrt(n0 + e);
        nx = x - n1;
        break;
      }
      case UpdateRule::rmsprop_centered: {  // c1 = rho; s1 = the mean gradient
        T gr = g + c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * gr * gr;
        n1 = c1 * s1 + (T(1) - c1) * gr;
        nx = x - rate * gr / sqrt(n0 - n1 * n1 + e);
        break;
      }
      case UpdateRule::rmsprop_centered_momentum: {  // c1 = rho, c2 = momentum; s2 = the mean gradient
        T gr = g + c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * gr * gr;
        n2 = c1 * s2 + (T(1) - c1) * gr;
        n1 = c2 * s1 + rate * gr / sqrt(n0 - n2 * n2 + e);
        nx = x - n1;
        break;
      }
      case UpdateRule::adagrad_keras: {  // c4 = R * weight_decay
        x = x - c4 * x;
        n0 = s0 + g * g;
        nx = x - rate * g / sqrt(n0 + e);
        break;
      }
      case UpdateRule::adamax: {  // c1 = beta1, c2 = beta2, c4 = R * weight_decay
        x = x - c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * g;
        n1 = c2 * s1 < fabs(g) ? fabs(g) : c2 * s1;  // std::max's choice, NaN included, as the CPU
        nx = x - rate * n0 / (n1 + e);
        break;
      }
      case UpdateRule::nadam: {  // c1, c2: the moment's and the gradient's weights, post: 1 / (1 - beta2^T)
        const T b1 = static_cast<T>(h.alpha), b2 = static_cast<T>(h.beta);
        x = x - c4 * x;
        n0 = b1 * s0 + (T(1) - b1) * g;
        n1 = b2 * s1 + (T(1) - b2) * g * g;
        nx = x - rate * (c1 * n0 + c2 * g) / (sqrt(n1 * post) + e);
        break;
      }
      case UpdateRule::lion: {  // c1 = beta1, c2 = beta2
        x = x - c4 * x;
        const T d = c1 * s0 + (T(1) - c1) * g;
        nx = x - rate * (d > T(0) ? T(1) : d < T(0) ? T(-1) : T(0));
        n0 = c2 * s0 + (T(1) - c2) * g;
        break;
      }
      case UpdateRule::adadelta: {  // c1 = rho
        x = x - c4 * x;
        n0 = c1 * s0 + (T(1) - c1) * g * g;
        const T d = -sqrt(s1 + e) * g / sqrt(n0 + e);
        n1 = c1 * s1 + (T(1) - c1) * d * d;
        nx = x + rate * d;
        break;
      }
      default:  // sgd
        nx = x - rate * (g + c4 * x);
        break;
    }
    if (xo) xo[i] = nx;
    if (s0o) s0o[i] = n0;
    if (s1o) s1o[i] = n1;
    if (s2o) s2o[i] = n2;
  }
}

// Kernel parameters are limited to 4 KiB.
static_assert(sizeof(UpdateBatch) + sizeof(UpdateHyper) + sizeof(UpdateScalars) <= 4096);

// ---- ClipByGlobalNorm ----

struct ClipBatch {
  int count = 0;
  int64_t first_chunk[kMaxClipTensors + 1] = {};
  ClipTensor t[kMaxClipTensors];
};

static_assert(sizeof(ClipBatch) + sizeof(double*) <= 4096);

// Pass 1: each chunk's sum of squares, in double, to part[first + block].
template <class T>
__global__ void clip_partials_kernel(ClipBatch batch, double* part) {
  int j = chunk_owner(batch.first_chunk, batch.count, blockIdx.x);
  const ClipTensor& u = batch.t[j];
  const T* g = static_cast<const T*>(u.g);
  int64_t begin = (static_cast<int64_t>(blockIdx.x) - batch.first_chunk[j]) * kChunk;
  int64_t end = begin + kChunk < u.n ? begin + kChunk : u.n;
  double s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) s += static_cast<double>(g[i]) * g[i];
  s = group_reduce(s, kBlock, Add{});
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// Pass 2, one block: norm = sqrt(sum of the partials in order); scale = clipnorm / max(norm, clipnorm).
template <class T>
__global__ void clip_finish_kernel(const double* part, int64_t count, double clipnorm, double* scale,
                                   T* norm_out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < count; i += kBlock) s += part[i];
  s = group_reduce(s, kBlock, Add{});
  if (threadIdx.x != 0) return;
  double norm = sqrt(s);
  *scale = clipnorm / (norm < clipnorm ? clipnorm : norm);
  if (norm_out) *norm_out = static_cast<T>(norm);
}

template <class T>
__global__ void clip_scale_kernel(ClipBatch batch, const double* scale) {
  int j = chunk_owner(batch.first_chunk, batch.count, blockIdx.x);
  const ClipTensor& u = batch.t[j];
  const T* g = static_cast<const T*>(u.g);
  T* out = static_cast<T*>(u.out);
  const T sc = static_cast<T>(*scale);
  int64_t begin = (static_cast<int64_t>(blockIdx.x) - batch.first_chunk[j]) * kChunk;
  int64_t end = begin + kChunk < u.n ? begin + kChunk : u.n;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) out[i] = g[i] * sc;
}

// ==== launchers ====

int64_t chunks_of(int64_t n) {
  return (n + kChunk - 1) / kChunk;
}

size_t real_bytes(Real t) {
  return t == Real::f64 ? sizeof(double) : sizeof(float);
}

template <class T>
struct Tag {
  using type = T;
};
// Calls f(Tag<T>{}) with T = float or double (C++17: no template lambdas).
template <class F>
void with_real(Real t, F&& f) {
  if (t == Real::f64)
    f(Tag<double>{});
  else
    f(Tag<float>{});
}

template <class T, int kOp>
void reduce_typed(const void* xv, void* yv, const ReduceGeometry& g, void* workspace, cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  int64_t chunk = (g.red_count + g.splits - 1) / g.splits;
  if (chunk < 1) chunk = 1;
  unsigned blocks = blocks_for(g.out_count * g.splits, kBlock / g.tpo);
  if (g.splits == 1) {
    reduce_kernel<T, kOp><<<blocks, kBlock, 0, stream>>>(x, y, g, chunk);
    return;
  }
  T* part = static_cast<T*>(workspace);
  reduce_kernel<T, kOp><<<blocks, kBlock, 0, stream>>>(x, part, g, chunk);
  reduce_splits_kernel<T, kOp>
      <<<blocks_for(g.out_count, kBlock), kBlock, 0, stream>>>(part, y, g.out_count, g.splits, g.red_count);
}

bool valid_tpo(int tpo) {
  return tpo == 1 || tpo == 32 || tpo == kBlock;
}

size_t align256(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// The partial-sum passes of a loss: returns the number of pass-1 blocks.
template <class T>
int launch_sum_partials(const SumSource& src, double* part, cudaStream_t stream) {
  int64_t b = (src.n + kBlock - 1) / kBlock;
  int blocks = static_cast<int>(b < 1 ? 1 : (b > kLossBlocks ? kLossBlocks : b));
  sum_partials_kernel<T><<<blocks, kBlock, 0, stream>>>(src, part);
  return blocks;
}

// The class losses' workspace: per-position losses and weights, then the pass-1 partials, then the scale.
struct ClassWorkspace {
  double* pos_loss;
  double* pos_weight;
  double* part;
  double* scale;
};
ClassWorkspace class_workspace(void* ws, int64_t positions) {
  if (!ws) return {nullptr, nullptr, nullptr, nullptr};
  auto* base = static_cast<char*>(ws);
  size_t arr = align256(static_cast<size_t>(positions) * sizeof(double));
  ClassWorkspace w;
  w.pos_loss = reinterpret_cast<double*>(base);
  w.pos_weight = reinterpret_cast<double*>(base + arr);
  w.part = reinterpret_cast<double*>(base + 2 * arr);
  w.scale = reinterpret_cast<double*>(base + 2 * arr + align256(2 * kLossBlocks * sizeof(double)));
  return w;
}

template <class T>
void finish_class_loss(const ClassWorkspace& w, int64_t positions, LossReduction r, T* out,
                       cudaStream_t stream) {
  SumSource src;
  src.kind = SumSource::arrays;
  src.a = w.pos_loss;
  src.b = w.pos_weight;
  src.n = positions;
  int blocks = launch_sum_partials<T>(src, w.part, stream);
  Finish mode = r == LossReduction::sum ? Finish::sum : Finish::mean_by_weight;
  sum_finish_kernel<T><<<1, kBlock, 0, stream>>>(w.part, blocks, mode, 1.0, out, nullptr, nullptr);
}

// For a mean-reduced class-loss gradient: dloss[0] / total weight into w.scale.
template <class T>
void class_mean_scale(const T* dloss, const ClassLabels& l, int64_t positions, const ClassWorkspace& w,
                      cudaStream_t stream) {
  SumSource src;
  src.kind = SumSource::class_weights;
  src.labels = l;
  src.n = positions;
  int blocks = launch_sum_partials<T>(src, w.part, stream);
  sum_finish_kernel<T>
      <<<1, kBlock, 0, stream>>>(w.part, blocks, Finish::scale_by_weight, 1.0, nullptr, dloss, w.scale);
}

}  // namespace

size_t reduce_workspace_bytes(const ReduceGeometry& g, Real t) {
  return g.splits > 1 ? static_cast<size_t>(g.out_count * g.splits) * real_bytes(t) : 0;
}

cudaError_t launch_reduce(ReduceOp op, Real t, const void* x, void* y, const ReduceGeometry& g,
                          void* workspace, cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || g.splits < 1 || g.nk > kReduceMaxDims || g.nr > kReduceMaxDims ||
      (g.splits > 1 && !workspace))
    return cudaErrorInvalidValue;
  if (g.out_count == 0) return cudaSuccess;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (op) {
      case ReduceOp::sum:
        reduce_typed<T, static_cast<int>(ReduceOp::sum)>(x, y, g, workspace, stream);
        break;
      case ReduceOp::mean:
        reduce_typed<T, static_cast<int>(ReduceOp::mean)>(x, y, g, workspace, stream);
        break;
      case ReduceOp::max:
        reduce_typed<T, static_cast<int>(ReduceOp::max)>(x, y, g, workspace, stream);
        break;
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_reduce_max_grad(Real t, const void* x, const void* dy, void* dx, int64_t n,
                                   const ReduceGeometry& g, cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || g.splits != 1 || g.nk > kReduceMaxDims || g.nr > kReduceMaxDims)
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  cudaError_t s = cudaMemsetAsync(dx, 0, static_cast<size_t>(n) * real_bytes(t), stream);
  if (s != cudaSuccess) return s;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    reduce_max_grad_kernel<T><<<blocks_for(g.out_count, kBlock / g.tpo), kBlock, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx), g);
  });
  return cudaGetLastError();
}

template <class T>
__global__ void spread_mean_kernel(const T* dy, T* dx, int64_t n, int64_t plane) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    dx[i] = dy[i / plane] / static_cast<T>(plane);
}

cudaError_t launch_spread_mean(Real t, const void* dy, void* dx, int64_t groups, int64_t plane,
                               cudaStream_t stream) {
  const int64_t n = groups * plane;
  if (n <= 0) return cudaSuccess;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    spread_mean_kernel<T><<<blocks_for(n, kBlock), kBlock, 0, stream>>>(static_cast<const T*>(dy),
                                                                        static_cast<T*>(dx), n, plane);
  });
  return cudaGetLastError();
}

cudaError_t launch_softmax(bool log, Real t, const void* x, void* y, const AxisRows& g, cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || (g.inner > 1 && g.tpo != 1)) return cudaErrorInvalidValue;
  int64_t rows = g.outer * g.inner;
  if (rows == 0 || g.n == 0) return cudaSuccess;
  unsigned blocks = blocks_for(rows, kBlock / g.tpo);
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (log)
      softmax_kernel<T, true><<<blocks, kBlock, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), g);
    else
      softmax_kernel<T, false>
          <<<blocks, kBlock, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), g);
  });
  return cudaGetLastError();
}

cudaError_t launch_softmax_grad(bool log, Real t, const void* dy, const void* y, void* dx, const AxisRows& g,
                                cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || (g.inner > 1 && g.tpo != 1)) return cudaErrorInvalidValue;
  int64_t rows = g.outer * g.inner;
  if (rows == 0 || g.n == 0) return cudaSuccess;
  unsigned blocks = blocks_for(rows, kBlock / g.tpo);
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto dyp = static_cast<const T*>(dy);
    auto yp = static_cast<const T*>(y);
    auto dxp = static_cast<T*>(dx);
    if (log)
      softmax_grad_kernel<T, true><<<blocks, kBlock, 0, stream>>>(dyp, yp, dxp, g);
    else
      softmax_grad_kernel<T, false><<<blocks, kBlock, 0, stream>>>(dyp, yp, dxp, g);
  });
  return cudaGetLastError();
}

size_t class_loss_workspace_bytes(int64_t positions) {
  return 2 * align256(static_cast<size_t>(positions) * sizeof(double)) +
         align256(2 * kLossBlocks * sizeof(double)) + 256;
}

cudaError_t launch_softmax_cross_entropy(Real t, const void* scores, const ClassLabels& labels,
                                         const ClassGeometry& g, LossReduction r, void* loss, void* log_prob,
                                         void* workspace, cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || (g.d > 1 && g.tpo != 1) || (r != LossReduction::none && !workspace))
    return cudaErrorInvalidValue;
  int64_t positions = g.n * g.d;
  ClassWorkspace w = class_workspace(workspace, positions);
  bool reduced = r != LossReduction::none;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (positions > 0)
      softmax_ce_kernel<T><<<blocks_for(positions, kBlock / g.tpo), kBlock, 0, stream>>>(
          static_cast<const T*>(scores), labels, g, static_cast<T*>(loss), static_cast<T*>(log_prob),
          reduced ? w.pos_loss : nullptr, reduced ? w.pos_weight : nullptr);
    if (reduced) finish_class_loss<T>(w, positions, r, static_cast<T*>(loss), stream);
  });
  return cudaGetLastError();
}

cudaError_t launch_softmax_cross_entropy_grad(Real t, const void* dloss, const void* scores,
                                              const ClassLabels& labels, const ClassGeometry& g,
                                              LossReduction r, const void* d_log_prob, void* dscores,
                                              void* workspace, cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || (g.d > 1 && g.tpo != 1) || (r == LossReduction::mean && !workspace))
    return cudaErrorInvalidValue;
  int64_t positions = g.n * g.d;
  if (positions == 0 || g.c == 0) return cudaSuccess;
  ClassWorkspace w = class_workspace(workspace, positions);
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* dl = static_cast<const T*>(dloss);
    if (r == LossReduction::mean) class_mean_scale<T>(dl, labels, positions, w, stream);
    softmax_ce_grad_kernel<T><<<blocks_for(positions, kBlock / g.tpo), kBlock, 0, stream>>>(
        dl, static_cast<const T*>(scores), labels, g, r, w.scale, static_cast<const T*>(d_log_prob),
        static_cast<T*>(dscores));
  });
  return cudaGetLastError();
}

cudaError_t launch_nll(Real t, const void* input, const ClassLabels& labels, const ClassGeometry& g,
                       LossReduction r, void* loss, void* workspace, cudaStream_t stream) {
  if (r != LossReduction::none && !workspace) return cudaErrorInvalidValue;
  int64_t positions = g.n * g.d;
  ClassWorkspace w = class_workspace(workspace, positions);
  bool reduced = r != LossReduction::none;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (positions > 0)
      nll_kernel<T><<<blocks_for(positions, kBlock), kBlock, 0, stream>>>(
          static_cast<const T*>(input), labels, g, static_cast<T*>(loss), reduced ? w.pos_loss : nullptr,
          reduced ? w.pos_weight : nullptr);
    if (reduced) finish_class_loss<T>(w, positions, r, static_cast<T*>(loss), stream);
  });
  return cudaGetLastError();
}

cudaError_t launch_nll_grad(Real t, const void* dloss, const ClassLabels& labels, const ClassGeometry& g,
                            LossReduction r, void* dinput, void* workspace, cudaStream_t stream) {
  if (r == LossReduction::mean && !workspace) return cudaErrorInvalidValue;
  int64_t positions = g.n * g.d, total = positions * g.c;
  if (total == 0) return cudaSuccess;
  ClassWorkspace w = class_workspace(workspace, positions);
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* dl = static_cast<const T*>(dloss);
    if (r == LossReduction::mean) class_mean_scale<T>(dl, labels, positions, w, stream);
    nll_grad_kernel<T><<<grid_stride_blocks(total), kBlock, 0, stream>>>(dl, labels, g, r, w.scale,
                                                                         static_cast<T*>(dinput));
  });
  return cudaGetLastError();
}

cudaError_t launch_point_loss(PointLoss fn, double eps, Real t, const void* pred, const void* target,
                              int64_t n, LossReduction r, void* loss, void* workspace, cudaStream_t stream) {
  if (r != LossReduction::none && !workspace) return cudaErrorInvalidValue;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(pred);
    const T* tg = static_cast<const T*>(target);
    T* out = static_cast<T*>(loss);
    if (r == LossReduction::none) {
      if (n > 0) point_loss_kernel<T><<<grid_stride_blocks(n), kBlock, 0, stream>>>(fn, eps, p, tg, n, out);
      return;
    }
    SumSource src;
    src.kind = SumSource::point;
    src.fn = fn;
    src.eps = eps;
    src.p = p;
    src.t = tg;
    src.n = n;
    auto* part = static_cast<double*>(workspace);
    int blocks = launch_sum_partials<T>(src, part, stream);
    Finish mode = r == LossReduction::sum ? Finish::sum : Finish::mean_by_count;
    double count = static_cast<double>(n > 1 ? n : 1);
    sum_finish_kernel<T><<<1, kBlock, 0, stream>>>(part, blocks, mode, count, out, nullptr, nullptr);
  });
  return cudaGetLastError();
}

cudaError_t launch_point_loss_grad(PointLoss fn, double eps, Real t, const void* dloss, const void* pred,
                                   const void* target, int64_t n, LossReduction r, void* dpred,
                                   cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    point_loss_grad_kernel<T><<<grid_stride_blocks(n), kBlock, 0, stream>>>(
        fn, eps, static_cast<const T*>(dloss), static_cast<const T*>(pred), static_cast<const T*>(target), n,
        r, static_cast<T*>(dpred));
  });
  return cudaGetLastError();
}

cudaError_t launch_layer_norm(Real t, const void* x, const void* scale, const void* bias, void* y, void* mean,
                              void* inv_std, const LayerNormGeometry& g, cudaStream_t stream) {
  if (!valid_tpo(g.tpo)) return cudaErrorInvalidValue;
  if (g.rows == 0 || g.inner == 0) return cudaSuccess;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    layer_norm_kernel<T><<<blocks_for(g.rows, kBlock / g.tpo), kBlock, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(scale), static_cast<const T*>(bias),
        static_cast<T*>(y), static_cast<T*>(mean), static_cast<T*>(inv_std), g);
  });
  return cudaGetLastError();
}

size_t layer_norm_grad_workspace_bytes(const LayerNormGeometry& g) {
  return 2 * align256(static_cast<size_t>(g.rows) * sizeof(double)) +
         2 * align256(static_cast<size_t>(g.row_blocks * g.inner) * sizeof(double));
}

cudaError_t launch_layer_norm_grad(Real t, const void* dy, const void* x, const void* scale,
                                   const void* g_mean, const void* g_inv_std, void* dx, void* dscale,
                                   void* dbias, const LayerNormGeometry& g, void* workspace,
                                   cudaStream_t stream) {
  if (!valid_tpo(g.tpo) || g.row_blocks < 1 || !workspace) return cudaErrorInvalidValue;
  if (g.inner == 0) return cudaSuccess;
  auto* base = static_cast<char*>(workspace);
  size_t rows_bytes = align256(static_cast<size_t>(g.rows) * sizeof(double));
  size_t part_bytes = align256(static_cast<size_t>(g.row_blocks * g.inner) * sizeof(double));
  auto* row_mean = reinterpret_cast<double*>(base);
  auto* row_inv = reinterpret_cast<double*>(base + rows_bytes);
  auto* part_s = reinterpret_cast<double*>(base + 2 * rows_bytes);
  auto* part_b = reinterpret_cast<double*>(base + 2 * rows_bytes + part_bytes);
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* dyp = static_cast<const T*>(dy);
    const T* xp = static_cast<const T*>(x);
    if (g.rows > 0)
      layer_norm_grad_rows_kernel<T><<<blocks_for(g.rows, kBlock / g.tpo), kBlock, 0, stream>>>(
          dyp, xp, static_cast<const T*>(scale), static_cast<const T*>(g_mean),
          static_cast<const T*>(g_inv_std), static_cast<T*>(dx), g, row_mean, row_inv);
    layer_norm_grad_cols_kernel<T><<<blocks_for(g.row_blocks * g.inner, kBlock), kBlock, 0, stream>>>(
        dyp, xp, g, row_mean, row_inv, part_s, part_b);
    layer_norm_grad_sum_kernel<T><<<blocks_for(g.inner, kBlock), kBlock, 0, stream>>>(
        part_s, part_b, g, static_cast<T*>(dscale), static_cast<T*>(dbias));
  });
  return cudaGetLastError();
}

cudaError_t launch_update(const UpdateHyper& h, Real t, const UpdateScalars& s, const UpdateTensor* tensors,
                          int count, cudaStream_t stream) {
  if (!s.r || !s.t || count < 0) return cudaErrorInvalidValue;
  for (int first = 0; first < count; first += kMaxUpdateTensors) {
    UpdateBatch b;
    b.count = count - first < kMaxUpdateTensors ? count - first : kMaxUpdateTensors;
    for (int j = 0; j < b.count; ++j) {
      b.t[j] = tensors[first + j];
      b.first_chunk[j + 1] = b.first_chunk[j] + chunks_of(b.t[j].n);
    }
    int64_t blocks = b.first_chunk[b.count];
    if (blocks == 0) continue;
    with_real(t, [&](auto tag) {
      using T = typename decltype(tag)::type;
      update_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(b, h, s);
    });
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

size_t clip_workspace_bytes(const ClipTensor* tensors, int count) {
  int64_t chunks = 0;
  for (int i = 0; i < count; ++i) chunks += chunks_of(tensors[i].n);
  return align256(static_cast<size_t>(chunks) * sizeof(double)) + 256;
}

cudaError_t launch_clip_by_global_norm(Real t, const ClipTensor* tensors, int count, double clipnorm,
                                       void* norm_out, void* workspace, cudaStream_t stream) {
  if (!workspace || count < 1) return cudaErrorInvalidValue;
  int64_t chunks = 0;
  for (int i = 0; i < count; ++i) chunks += chunks_of(tensors[i].n);
  auto* part = static_cast<double*>(workspace);
  auto* scale = reinterpret_cast<double*>(static_cast<char*>(workspace) +
                                          align256(static_cast<size_t>(chunks) * sizeof(double)));
  // The batches of every pass, built once: pass 1 writes their partials one after another.
  auto for_batches = [&](auto&& f) {
    int64_t offset = 0;
    for (int first = 0; first < count; first += kMaxClipTensors) {
      ClipBatch b;
      b.count = count - first < kMaxClipTensors ? count - first : kMaxClipTensors;
      for (int j = 0; j < b.count; ++j) {
        b.t[j] = tensors[first + j];
        b.first_chunk[j + 1] = b.first_chunk[j] + chunks_of(b.t[j].n);
      }
      int64_t blocks = b.first_chunk[b.count];
      if (blocks > 0) f(b, static_cast<unsigned>(blocks), offset);
      offset += blocks;
    }
  };
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_batches([&](const ClipBatch& b, unsigned blocks, int64_t offset) {
      clip_partials_kernel<T><<<blocks, kBlock, 0, stream>>>(b, part + offset);
    });
    clip_finish_kernel<T><<<1, kBlock, 0, stream>>>(part, chunks, clipnorm, scale, static_cast<T*>(norm_out));
    for_batches([&](const ClipBatch& b, unsigned blocks, int64_t) {
      clip_scale_kernel<T><<<blocks, kBlock, 0, stream>>>(b, scale);
    });
  });
  return cudaGetLastError();
}

// ---- UnscaleGradients ----

namespace {

template <class T>
__global__ void unscale_kernel(const T* g, T* out, int64_t n, const float* scale, int* flag) {
  const T inv = static_cast<T>(1.0 / static_cast<double>(*scale));
  bool bad = false;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T v = g[i];
    bad = bad || !isfinite(v);
    out[i] = v * inv;
  }
  if (bad) *flag = 1;  // every writer writes the same value: no ordering question
}

__global__ void unscale_finish_kernel(const int* flag, bool* finite) {
  *finite = *flag == 0;
}

}  // namespace

cudaError_t launch_unscale_gradients(Real t, const float* scale, const UnscaleTensor* tensors, int count,
                                     bool* finite, int* flag, cudaStream_t stream) {
  cudaError_t st = cudaMemsetAsync(flag, 0, sizeof(int), stream);
  if (st != cudaSuccess) return st;
  with_real(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for (int i = 0; i < count; ++i) {
      const UnscaleTensor& u = tensors[i];
      if (u.n == 0) continue;
      int64_t blocks = (u.n + 255) / 256;
      if (blocks > 4096) blocks = 4096;
      unscale_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          static_cast<const T*>(u.g), static_cast<T*>(u.out), u.n, scale, flag);
    }
    unscale_finish_kernel<<<1, 1, 0, stream>>>(flag, finite);
  });
  return cudaGetLastError();
}

}  // namespace trainer::engine::cuda
