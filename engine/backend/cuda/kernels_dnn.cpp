// CUDA kernels of op families 'conv' and 'norm' through cuDNN's descriptor API: Conv and its two gradients,
// max and average pooling and their gradients, BatchNormalization and its gradient, for f32 NCHW
// (1-D data as height 1). Cases cuDNN defines differently from ONNX (asymmetric pads, dilated pooling,
// ceil_mode windows past the padding) return nullptr and run on the host.
#include <cudnn.h>
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/dynload.h"
#include "engine/backend/cuda/launch_blas.h"
#include "engine/ops/conv_geometry.h"

namespace trainer::engine::cuda {

namespace {

[[noreturn]] void dnn_failed(cudnnStatus_t s, const char* call, const char* file, int line) {
  throw RuntimeError(
      fmt::format("cuDNN error {} in {} at {}:{}", lib::cudnn().cudnnGetErrorString(s), call, file, line));
}
#define DNN_CHECK(call)                                                            \
  do {                                                                             \
    cudnnStatus_t dnn_status_ = (call);                                            \
    if (dnn_status_ != CUDNN_STATUS_SUCCESS)                                       \
      ::trainer::engine::cuda::dnn_failed(dnn_status_, #call, __FILE__, __LINE__); \
  } while (0)

bool ok(cudnnStatus_t s) {
  return s == CUDNN_STATUS_SUCCESS;
}

const float kOne = 1.0f, kZero = 0.0f;

// ---- descriptors (RAII) ----

class TensorDesc {
 public:
  TensorDesc() { DNN_CHECK(lib::cudnn().cudnnCreateTensorDescriptor(&d_)); }
  ~TensorDesc() { lib::cudnn().cudnnDestroyTensorDescriptor(d_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  bool set(int64_t n, int64_t c, int64_t h, int64_t w, cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return ok(lib::cudnn().cudnnSetTensor4dDescriptor(d_, CUDNN_TENSOR_NCHW, type, static_cast<int>(n),
                                                      static_cast<int>(c), static_cast<int>(h),
                                                      static_cast<int>(w)));
  }
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class FilterDesc {
 public:
  FilterDesc() { DNN_CHECK(lib::cudnn().cudnnCreateFilterDescriptor(&d_)); }
  ~FilterDesc() { lib::cudnn().cudnnDestroyFilterDescriptor(d_); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  cudnnFilterDescriptor_t get() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvDesc {
 public:
  ConvDesc() { DNN_CHECK(lib::cudnn().cudnnCreateConvolutionDescriptor(&d_)); }
  ~ConvDesc() { lib::cudnn().cudnnDestroyConvolutionDescriptor(d_); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  cudnnConvolutionDescriptor_t get() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

class PoolDesc {
 public:
  PoolDesc() { DNN_CHECK(lib::cudnn().cudnnCreatePoolingDescriptor(&d_)); }
  ~PoolDesc() { lib::cudnn().cudnnDestroyPoolingDescriptor(d_); }
  PoolDesc(const PoolDesc&) = delete;
  PoolDesc& operator=(const PoolDesc&) = delete;
  cudnnPoolingDescriptor_t get() const { return d_; }

 private:
  cudnnPoolingDescriptor_t d_ = nullptr;
};

// ---- window geometry ----

// A window op seen in 2-D (as the CPU's kernels_conv.cpp does): input [n, c, h, w], output [n, m, oh, ow];
// pb/pr the explicit end pads, reach_b/reach_r the end pads the last window touches (more under ceil_mode).
struct Win2d {
  int64_t n = 0, c = 0, h = 1, w = 1, m = 0, oh = 1, ow = 1;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pt = 0, pl = 0, pb = 0, pr = 0, reach_b = 0, reach_r = 0;
};

// False for geometry that is not 1-D or 2-D.
bool win2d(const Shape& x, int64_t m, const std::vector<int64_t>& kernel, const Attributes& a, bool ceil_mode,
           Win2d* v) {
  if (x.rank() != 3 && x.rank() != 4) return false;
  ops::WindowGeometry g;
  std::vector<int64_t> spatial(x.dims().begin() + 2, x.dims().end());
  if (!ops::resolve_window(a, spatial, kernel, ceil_mode, &g).empty()) return false;
  v->n = x[0];
  v->c = x[1];
  v->m = m;
  const int o = g.spatial == 2 ? 1 : 0;  // index of the width dim
  if (g.spatial == 2) {
    v->h = g.in[0];
    v->oh = g.out[0];
    v->kh = g.kernel[0];
    v->sh = g.stride[0];
    v->dh = g.dilation[0];
    v->pt = g.pad_begin[0];
    v->pb = g.pad_end[0];
    v->reach_b = g.reach_end(0);
  }
  v->w = g.in[o];
  v->ow = g.out[o];
  v->kw = g.kernel[o];
  v->sw = g.stride[o];
  v->dw = g.dilation[o];
  v->pl = g.pad_begin[o];
  v->pr = g.pad_end[o];
  v->reach_r = g.reach_end(o);
  return true;
}

bool fits_int(std::initializer_list<int64_t> values) {
  for (int64_t x : values)
    if (x < 0 || x > INT_MAX) return false;
  return true;
}

// cuDNN pads both ends alike and sizes outputs as floor((in + 2 * pad - span) / stride) + 1: the window must
// say the same, or cuDNN would compute a different op. Tensors must also fit its int dims and element counts.
bool cudnn_window(const Win2d& v) {
  if (v.pt != v.pb || v.pl != v.pr || v.reach_b != v.pb || v.reach_r != v.pr) return false;
  const int64_t span_h = v.dh * (v.kh - 1) + 1, span_w = v.dw * (v.kw - 1) + 1;
  if (v.oh != (v.h + 2 * v.pt - span_h) / v.sh + 1 || v.ow != (v.w + 2 * v.pl - span_w) / v.sw + 1)
    return false;
  const int64_t big = std::max(v.c, v.m);
  return fits_int({v.n, v.c, v.m, v.h, v.w, v.oh, v.ow, v.kh, v.kw, v.n * big * v.h * v.w,
                   v.n * big * v.oh * v.ow, v.m * v.c * v.kh * v.kw});
}

std::vector<int64_t> kernel_of(const Shape& w) {
  return std::vector<int64_t>(w.dims().begin() + 2, w.dims().end());
}

// ---- convolution ----

// Convolutions take f32, and the bf16/fp16 operands of mixed precision (engine/plan/precision.h), which run
// on the tensor cores with fp32 accumulation.
bool conv_dtype(DType t, cudnnDataType_t* out) {
  switch (t) {
    case DType::f32:
      *out = CUDNN_DATA_FLOAT;
      return true;
    case DType::bf16:
      *out = CUDNN_DATA_BFLOAT16;
      return true;
    case DType::f16:
      *out = CUDNN_DATA_HALF;
      return true;
    default:
      return false;
  }
}

enum class ConvPass { forward, data, filter };

// The descriptors of one convolution: x [n, c, h, w], w [m, c / group, kh, kw], y [n, m, oh, ow].
struct ConvState {
  TensorDesc x, y;
  FilterDesc w;
  ConvDesc conv;
  int algo = 0;
  cudnnHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Algorithms choices per shape, shared by every node and backend of the process.
struct AlgoCache {
  std::mutex mu;
  std::map<std::string, std::pair<int, cudnnMathType_t>> found;
};
AlgoCache& algo_cache() {
  static AlgoCache c;
  return c;
}

// Picks the first (fastest by cuDNN's heuristic) algorithm that is deterministic (training must reproduce run
// to run), fits the shared workspace, runs without tensor-op math unless TF32 is allowed (fp32 results then
// match the CPU's), and computes the direct sum: not through FFTs or Winograd's transforms, whose rounding
// differs visibly from it (the large tiles of the non-fused Winograd variants most of all).
template <class Perf>
bool choose(const Perf* perf, int count, size_t ws_limit, bool allow_tensor_ops, bool (*transformed)(int),
            int* algo, cudnnMathType_t* math) {
  for (int i = 0; i < count; ++i) {
    const Perf& p = perf[i];
    if (p.status != CUDNN_STATUS_SUCCESS || p.determinism != CUDNN_DETERMINISTIC || p.memory > ws_limit)
      continue;
    if (transformed(static_cast<int>(p.algo))) continue;
    if (!allow_tensor_ops && p.mathType != CUDNN_DEFAULT_MATH && p.mathType != CUDNN_FMA_MATH) continue;
    *algo = static_cast<int>(p.algo);
    *math = allow_tensor_ops ? p.mathType : CUDNN_FMA_MATH;
    return true;
  }
  return false;
}

// Sets up descriptors and the algorithm of one pass; false when cuDNN cannot run it.
bool conv_setup(const Win2d& v, int64_t group, ConvPass pass, const CudaLibs& libs, DType dtype,
                ConvState* s) {
  const lib::Cudnn& dnn = lib::cudnn();
  cudnnDataType_t type;
  if (!conv_dtype(dtype, &type)) return false;
  const bool half = type != CUDNN_DATA_FLOAT;
  // Tensor cores: always for bf16/fp16 operands, for fp32 only when TF32 is allowed.
  const bool tensor_ops = half || libs.allow_tf32;
  if (group < 1 || v.c % group != 0 || v.m % group != 0) return false;
  if (!s->x.set(v.n, v.c, v.h, v.w, type) || !s->y.set(v.n, v.m, v.oh, v.ow, type)) return false;
  if (!ok(dnn.cudnnSetFilter4dDescriptor(s->w.get(), type, CUDNN_TENSOR_NCHW, static_cast<int>(v.m),
                                         static_cast<int>(v.c / group), static_cast<int>(v.kh),
                                         static_cast<int>(v.kw))))
    return false;
  if (!ok(dnn.cudnnSetConvolution2dDescriptor(s->conv.get(), static_cast<int>(v.pt), static_cast<int>(v.pl),
                                              static_cast<int>(v.sh), static_cast<int>(v.sw),
                                              static_cast<int>(v.dh), static_cast<int>(v.dw),
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) ||
      !ok(dnn.cudnnSetConvolutionGroupCount(s->conv.get(), static_cast<int>(group))))
    return false;
  // FMA math forbids the TF32 tensor cores cuDNN may otherwise use for fp32 on Ampere and later.
  const cudnnMathType_t start_math =
      half ? CUDNN_TENSOR_OP_MATH : (libs.allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
  if (!ok(dnn.cudnnSetConvolutionMathType(s->conv.get(), start_math))) return false;
  s->handle = libs.cudnn;
  s->workspace = libs.workspace;
  s->workspace_bytes = libs.workspace_bytes;

  const std::string key =
      fmt::format("{} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}", static_cast<int>(pass),
                  v.n, v.c, v.h, v.w, v.m, v.oh, v.ow, v.kh, v.kw, v.sh, v.sw, v.dh, v.dw, v.pt, v.pl, group,
                  libs.allow_tf32, libs.workspace_bytes, libs.sm, libs.device) +
      fmt::format(" {}", static_cast<int>(type));
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  int algo = 0;
  cudnnMathType_t math = start_math;
  if (auto it = cache.found.find(key); it != cache.found.end()) {
    algo = it->second.first;
    math = it->second.second;
  } else {
    int returned = 0;
    bool found = false;
    switch (pass) {
      case ConvPass::forward: {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        if (!ok(dnn.cudnnGetConvolutionForwardAlgorithm_v7(libs.cudnn, s->x.get(), s->w.get(), s->conv.get(),
                                                           s->y.get(), CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                           &returned, perf)))
          return false;
        found = choose(
            perf, returned, libs.workspace_bytes, tensor_ops,
            [](int a) {
              return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
                     a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
                     a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
            },
            &algo, &math);
        break;
      }
      case ConvPass::data: {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        if (!ok(dnn.cudnnGetConvolutionBackwardDataAlgorithm_v7(
                libs.cudnn, s->w.get(), s->y.get(), s->conv.get(), s->x.get(),
                CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, perf)))
          return false;
        found = choose(
            perf, returned, libs.workspace_bytes, tensor_ops,
            [](int a) {
              return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
                     a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
                     a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
                     a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
            },
            &algo, &math);
        break;
      }
      case ConvPass::filter: {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        if (!ok(dnn.cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                libs.cudnn, s->x.get(), s->y.get(), s->conv.get(), s->w.get(),
                CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, perf)))
          return false;
        found = choose(
            perf, returned, libs.workspace_bytes, tensor_ops,
            [](int a) {
              return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT ||
                     a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
                     a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
            },
            &algo, &math);
        break;
      }
    }
    if (!found) return false;
    cache.found.emplace(key, std::make_pair(algo, math));
  }
  if (math != start_math && !ok(dnn.cudnnSetConvolutionMathType(s->conv.get(), math))) return false;
  // The heuristic's memory estimate is checked against the exact size the call will ask for; an algorithm the
  // descriptors do not support fails here, at prepare time, instead of at the first step.
  size_t need = 0;
  cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
  switch (pass) {
    case ConvPass::forward:
      st = dnn.cudnnGetConvolutionForwardWorkspaceSize(libs.cudnn, s->x.get(), s->w.get(), s->conv.get(),
                                                       s->y.get(),
                                                       static_cast<cudnnConvolutionFwdAlgo_t>(algo), &need);
      break;
    case ConvPass::data:
      st = dnn.cudnnGetConvolutionBackwardDataWorkspaceSize(
          libs.cudnn, s->w.get(), s->y.get(), s->conv.get(), s->x.get(),
          static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), &need);
      break;
    case ConvPass::filter:
      st = dnn.cudnnGetConvolutionBackwardFilterWorkspaceSize(
          libs.cudnn, s->x.get(), s->y.get(), s->conv.get(), s->w.get(),
          static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), &need);
      break;
  }
  if (!ok(st) || need > libs.workspace_bytes) return false;
  s->algo = algo;
  return true;
}

// Conv(X, W, [B]) -> Y
KernelPtr conv(const KernelArgs& a) {
  const Shape& ws = a.in(1).shape;
  Win2d v;
  if (!win2d(a.in(0).shape, ws[0], kernel_of(ws), a.attrs(), false, &v) || !cudnn_window(v)) return nullptr;
  auto s = std::make_shared<ConvState>();
  if (!conv_setup(v, a.attrs().i("group"), ConvPass::forward, *a.libs, a.in(0).dtype, s.get()))
    return nullptr;
  // The bias is added by our kernel, which takes every type the convolution does (the type lists of cuDNN's
  // legacy bias calls differ from call to call).
  if (a.has_input(2) && a.in(2).dtype != a.out(0).dtype) return nullptr;
  const ElemType btype = elem_type(a.out(0).dtype);
  const void* x = a.inputs[0];
  const void* w = a.inputs[1];
  const void* b = a.has_input(2) ? a.inputs[2] : nullptr;
  void* y = a.outputs[0];
  const int64_t spatial = v.oh * v.ow;
  return make_kernel([s, x, w, b, y, btype, v, spatial](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnConvolutionForward(s->handle, &kOne, s->x.get(), x, s->w.get(), w, s->conv.get(),
                                          static_cast<cudnnConvolutionFwdAlgo_t>(s->algo), s->workspace,
                                          s->workspace_bytes, &kZero, s->y.get(), y));
    if (b) TRAINER_CUDA_CHECK(launch_channel_bias(btype, y, b, v.n, v.m, spatial, stream));
  });
}

// ConvGradInput(dY, W) -> dX of shape input_shape
KernelPtr conv_grad_input(const KernelArgs& a) {
  const Shape& ws = a.in(1).shape;
  Win2d v;
  if (!win2d(Shape(a.attrs().ints("input_shape")), ws[0], kernel_of(ws), a.attrs(), false, &v) ||
      !cudnn_window(v))
    return nullptr;
  auto s = std::make_shared<ConvState>();
  if (!conv_setup(v, a.attrs().i("group"), ConvPass::data, *a.libs, a.in(0).dtype, s.get())) return nullptr;
  const void* dy = a.inputs[0];
  const void* w = a.inputs[1];
  void* dx = a.outputs[0];
  return make_kernel([s, dy, w, dx](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnConvolutionBackwardData(s->handle, &kOne, s->w.get(), w, s->y.get(), dy, s->conv.get(),
                                               static_cast<cudnnConvolutionBwdDataAlgo_t>(s->algo),
                                               s->workspace, s->workspace_bytes, &kZero, s->x.get(), dx));
  });
}

// ConvTranspose(X, W[, B]): cuDNN's backward data of the convolution from Y's shape to X's (X standing for
// its output gradient), then the bias by our kernel, as Conv adds it.
KernelPtr conv_transpose(const KernelArgs& a) {
  Node as_grad;
  if (!ops::conv_transpose_as_grad_input(a.node, a.in(0).shape, a.in(1).shape, a.out(0).shape, &as_grad))
    return nullptr;
  KernelArgs g{a.graph, as_grad, {a.inputs[0], a.inputs[1]}, {a.outputs[0]}, a.ctx, a.libs};
  KernelPtr data = conv_grad_input(g);
  if (!data || !a.has_input(2)) return data;
  std::shared_ptr<CudaKernel> first(std::move(data));
  const ElemType btype = elem_type(a.out(0).dtype);
  const Shape& ys = a.out(0).shape;
  const int64_t n = ys[0], channels = ys[1], spatial = ys.numel() / std::max<int64_t>(n * channels, 1);
  const void* b = a.inputs[2];
  void* y = a.outputs[0];
  return make_kernel([first, btype, y, b, n, channels, spatial](cudaStream_t stream) {
    first->launch(stream);
    TRAINER_CUDA_CHECK(launch_channel_bias(btype, y, b, n, channels, spatial, stream));
  });
}

// ConvGradWeight(dY, X) -> dW [, dB]
KernelPtr conv_grad_weight(const KernelArgs& a) {
  const Shape& dys = a.in(0).shape;
  Win2d v;
  if (!win2d(a.in(1).shape, dys[1], a.attrs().ints("kernel_shape"), a.attrs(), false, &v) || !cudnn_window(v))
    return nullptr;
  auto s = std::make_shared<ConvState>();
  if (!conv_setup(v, a.attrs().i("group"), ConvPass::filter, *a.libs, a.in(0).dtype, s.get())) return nullptr;
  // The bias gradient is our kernel's too (see conv): a sum in a fixed order, the same bits on every run.
  if (a.has_output(1) && a.out(1).dtype != a.in(0).dtype) return nullptr;
  const ElemType btype = elem_type(a.in(0).dtype);
  const void* dy = a.inputs[0];
  const void* x = a.inputs[1];
  void* dw = a.outputs[0];
  void* db = a.has_output(1) ? a.outputs[1] : nullptr;
  const int64_t spatial = v.oh * v.ow;
  return make_kernel([s, dy, x, dw, db, btype, v, spatial](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnConvolutionBackwardFilter(s->handle, &kOne, s->x.get(), x, s->y.get(), dy,
                                                 s->conv.get(),
                                                 static_cast<cudnnConvolutionBwdFilterAlgo_t>(s->algo),
                                                 s->workspace, s->workspace_bytes, &kZero, s->w.get(), dw));
    // The workspace is free again: cuDNN's kernel above is before this one on the stream.
    if (db)
      TRAINER_CUDA_CHECK(
          launch_channel_sums(btype, dy, db, v.n, v.m, spatial, s->workspace, s->workspace_bytes, stream));
  });
}

// ---- pooling ----

struct PoolState {
  TensorDesc x, y;
  PoolDesc pool;
  cudnnHandle_t handle = nullptr;
  void* scratch = nullptr;  // MaxPoolGrad: the forward output cuDNN's backward reads
};

// Descriptors for pooling `v` with `mode`; false when cuDNN computes something else (dilation, one-sided
// padding, ceil_mode windows past the padding) or rejects it.
bool pool_setup(const Win2d& v, cudnnPoolingMode_t mode, const CudaLibs& libs, PoolState* s) {
  if (v.dh != 1 || v.dw != 1 || !cudnn_window(v)) return false;
  if (!s->x.set(v.n, v.c, v.h, v.w) || !s->y.set(v.n, v.c, v.oh, v.ow)) return false;
  s->handle = libs.cudnn;
  return ok(lib::cudnn().cudnnSetPooling2dDescriptor(
      s->pool.get(), mode, CUDNN_NOT_PROPAGATE_NAN, static_cast<int>(v.kh), static_cast<int>(v.kw),
      static_cast<int>(v.pt), static_cast<int>(v.pl), static_cast<int>(v.sh), static_cast<int>(v.sw)));
}

bool pool_window(const KernelArgs& a, const Shape& x, Win2d* v) {
  return a.in(0).dtype == DType::f32 &&
         win2d(x, x[1], a.attrs().ints("kernel_shape"), a.attrs(), a.attrs().i("ceil_mode") != 0, v);
}

cudnnPoolingMode_t avg_mode(const KernelArgs& a) {
  return a.attrs().i("count_include_pad") != 0 ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                               : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
}

KernelPtr pool_forward(std::shared_ptr<PoolState> s, const void* x, void* y) {
  return make_kernel([s, x, y](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnPoolingForward(s->handle, s->pool.get(), &kOne, s->x.get(), x, &kZero, s->y.get(), y));
  });
}

// Average pooling's backward reads neither y nor x; cuDNN's signature still takes them, so dy and dx stand
// in.
KernelPtr avg_pool_backward(std::shared_ptr<PoolState> s, const void* dy, void* dx) {
  return make_kernel([s, dy, dx](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnPoolingBackward(s->handle, s->pool.get(), &kOne, s->y.get(), dy, s->y.get(), dy,
                                       s->x.get(), dx, &kZero, s->x.get(), dx));
  });
}

KernelPtr max_pool(const KernelArgs& a) {
  if (a.has_output(1)) return nullptr;  // Indices: the host kernel reports it as unsupported
  Win2d v;
  if (!pool_window(a, a.in(0).shape, &v)) return nullptr;
  auto s = std::make_shared<PoolState>();
  if (!pool_setup(v, CUDNN_POOLING_MAX_DETERMINISTIC, *a.libs, s.get())) return nullptr;
  return pool_forward(s, a.inputs[0], a.outputs[0]);
}

// MaxPoolGrad(dY, X) -> dX. cuDNN's backward finds each window's maximum by comparing X with the forward
// output, which MaxPool does not keep: it is recomputed into the workspace first.
KernelPtr max_pool_grad(const KernelArgs& a) {
  Win2d v;
  if (!pool_window(a, a.in(1).shape, &v)) return nullptr;
  if (static_cast<size_t>(a.in(0).shape.numel()) * sizeof(float) > a.libs->workspace_bytes) return nullptr;
  auto s = std::make_shared<PoolState>();
  if (!pool_setup(v, CUDNN_POOLING_MAX_DETERMINISTIC, *a.libs, s.get())) return nullptr;
  s->scratch = a.libs->workspace;
  const void* dy = a.inputs[0];
  const void* x = a.inputs[1];
  void* dx = a.outputs[0];
  return make_kernel([s, dy, x, dx](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnPoolingForward(s->handle, s->pool.get(), &kOne, s->x.get(), x, &kZero, s->y.get(),
                                      s->scratch));
    DNN_CHECK(dnn.cudnnPoolingBackward(s->handle, s->pool.get(), &kOne, s->y.get(), s->scratch, s->y.get(),
                                       dy, s->x.get(), x, &kZero, s->x.get(), dx));
  });
}

KernelPtr avg_pool(const KernelArgs& a) {
  Win2d v;
  if (!pool_window(a, a.in(0).shape, &v)) return nullptr;
  auto s = std::make_shared<PoolState>();
  if (!pool_setup(v, avg_mode(a), *a.libs, s.get())) return nullptr;
  return pool_forward(s, a.inputs[0], a.outputs[0]);
}

// AveragePoolGrad(dY) -> dX of shape input_shape
KernelPtr avg_pool_grad(const KernelArgs& a) {
  Win2d v;
  if (!pool_window(a, Shape(a.attrs().ints("input_shape")), &v)) return nullptr;
  auto s = std::make_shared<PoolState>();
  if (!pool_setup(v, avg_mode(a), *a.libs, s.get())) return nullptr;
  return avg_pool_backward(s, a.inputs[0], a.outputs[0]);
}

// ---- batch normalization ----

// X [N, C, ...] as [N, C, S, 1]: cuDNN's spatial mode then takes per-channel statistics over N x S, as the
// CPU does for every rank (a 2-D [N, C] input is S = 1).
struct BnState {
  TensorDesc x, stats;
  cudnnHandle_t handle = nullptr;
  double epsilon = 1e-5;
};

std::shared_ptr<BnState> bn_state(const KernelArgs& a, const Shape& x, DType dt) {
  if (dt != DType::f32 || x.rank() < 2) return nullptr;
  const int64_t n = x[0], c = x[1], spatial = x.numel() / std::max<int64_t>(1, n * c);
  if (x.numel() == 0 || !fits_int({n, c, spatial, x.numel()})) return nullptr;
  auto s = std::make_shared<BnState>();
  s->epsilon = a.attrs().f("epsilon");
  if (s->epsilon < CUDNN_BN_MIN_EPSILON) return nullptr;
  if (!s->x.set(n, c, spatial, 1) || !s->stats.set(1, c, 1, 1)) return nullptr;
  s->handle = a.libs->cudnn;
  return s;
}

// What cuDNN's training forward folds into the running variance: the biased batch variance (as ONNX wants) or
// the unbiased one (count / (count - 1) times it). Measured once on two samples {0, 2}: mean 1, biased
// variance 1, unbiased 2. The probe runs in stream order on the handle's stream, in the shared workspace.
enum class RunningVariance { unknown, biased, unbiased };

RunningVariance running_variance_kind(const CudaLibs& libs) {
  static std::mutex mu;
  static RunningVariance kind = RunningVariance::unknown;
  std::lock_guard<std::mutex> lock(mu);
  if (kind != RunningVariance::unknown) return kind;
  if (libs.workspace_bytes < 8 * sizeof(float)) return RunningVariance::unknown;
  const lib::Cudnn& dnn = lib::cudnn();
  cudaStream_t stream = nullptr;
  if (!ok(dnn.cudnnGetStream(libs.cudnn, &stream))) return RunningVariance::unknown;
  // x (2), y (2), scale, bias, running mean, running variance
  const float in[8] = {0.0f, 2.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f};
  float out[8] = {};
  auto* p = static_cast<float*>(libs.workspace);
  TensorDesc x, stats;
  if (!x.set(2, 1, 1, 1) || !stats.set(1, 1, 1, 1)) return RunningVariance::unknown;
  TRAINER_CUDA_CHECK(cudaMemcpyAsync(p, in, sizeof(in), cudaMemcpyHostToDevice, stream));
  if (!ok(dnn.cudnnBatchNormalizationForwardTraining(libs.cudnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero,
                                                     x.get(), p, x.get(), p + 2, stats.get(), p + 4, p + 5,
                                                     1.0, p + 6, p + 7, 1e-5, nullptr, nullptr))) {
    TRAINER_CUDA_CHECK(cudaStreamSynchronize(stream));
    return RunningVariance::unknown;
  }
  TRAINER_CUDA_CHECK(cudaMemcpyAsync(out, p, sizeof(out), cudaMemcpyDeviceToHost, stream));
  TRAINER_CUDA_CHECK(cudaStreamSynchronize(stream));
  const float mean = out[6], var = out[7];
  if (std::abs(mean - 1.0f) < 1e-5f && std::abs(var - 1.0f) < 1e-5f) kind = RunningVariance::biased;
  if (std::abs(mean - 1.0f) < 1e-5f && std::abs(var - 2.0f) < 1e-5f) kind = RunningVariance::unbiased;
  return kind;
}

// Inputs (X, scale, B, input_mean, input_var); outputs Y, [running_mean], [running_var]. In training, cuDNN
// writes the batch mean and variance into workspace scratch (factor 1 replaces, not blends), and the running
// statistics are blended from there as ONNX says: running = input * momentum + batch * (1 - momentum).
KernelPtr batch_norm(const KernelArgs& a) {
  auto s = bn_state(a, a.in(0).shape, a.in(0).dtype);
  if (!s) return nullptr;
  const Shape& xs = a.in(0).shape;
  const int64_t c = xs[1], count = xs.numel() / c;
  const bool training = a.attrs().i("training_mode") != 0;
  const double momentum = a.attrs().f("momentum");
  const void* x = a.inputs[0];
  const void* scale = a.inputs[1];
  const void* bias = a.inputs[2];
  const void* in_mean = a.inputs[3];
  const void* in_var = a.inputs[4];
  void* y = a.outputs[0];
  void* run_mean = a.has_output(1) ? a.outputs[1] : nullptr;
  void* run_var = a.has_output(2) ? a.outputs[2] : nullptr;
  const size_t stat_bytes = static_cast<size_t>(c) * sizeof(float);

  if (!training) {
    return make_kernel([s, x, scale, bias, in_mean, in_var, y, run_mean, run_var,
                        stat_bytes](cudaStream_t stream) {
      const lib::Cudnn& dnn = lib::cudnn();
      DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
      DNN_CHECK(dnn.cudnnBatchNormalizationForwardInference(s->handle, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero,
                                                            s->x.get(), x, s->x.get(), y, s->stats.get(),
                                                            scale, bias, in_mean, in_var, s->epsilon));
      // Outside training the running statistics pass through unchanged.
      if (run_mean && run_mean != in_mean)
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(run_mean, in_mean, stat_bytes, cudaMemcpyDeviceToDevice, stream));
      if (run_var && run_var != in_var)
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(run_var, in_var, stat_bytes, cudaMemcpyDeviceToDevice, stream));
    });
  }

  if (count < 2 || 2 * stat_bytes > a.libs->workspace_bytes) return nullptr;
  float var_factor = 1.0f;  // turns what cuDNN folds into the running variance into the biased batch variance
  if (run_var) {
    const RunningVariance kind = running_variance_kind(*a.libs);
    if (kind == RunningVariance::unknown) return nullptr;
    if (kind == RunningVariance::unbiased)
      var_factor = static_cast<float>(static_cast<double>(count - 1) / static_cast<double>(count));
  }
  auto* batch_mean = static_cast<float*>(a.libs->workspace);
  float* batch_var = batch_mean + c;
  const float keep = static_cast<float>(momentum);
  const float take_mean = static_cast<float>(1.0 - momentum);
  const float take_var = static_cast<float>((1.0 - momentum) * var_factor);
  return make_kernel([=](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    // Factor 1 gives 0 * old + new: zero the scratch so no leftover NaN survives the product.
    TRAINER_CUDA_CHECK(cudaMemsetAsync(batch_mean, 0, 2 * stat_bytes, stream));
    DNN_CHECK(dnn.cudnnBatchNormalizationForwardTraining(
        s->handle, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, s->x.get(), x, s->x.get(), y, s->stats.get(),
        scale, bias, 1.0, batch_mean, batch_var, s->epsilon, nullptr, nullptr));
    // running = keep * input + take * batch, as C = alpha * A + beta * C on a copy of the input (the running
    // statistics may share the input's buffer).
    if (run_mean) {
      if (run_mean != in_mean)
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(run_mean, in_mean, stat_bytes, cudaMemcpyDeviceToDevice, stream));
      DNN_CHECK(dnn.cudnnAddTensor(s->handle, &take_mean, s->stats.get(), batch_mean, &keep, s->stats.get(),
                                   run_mean));
    }
    if (run_var) {
      if (run_var != in_var)
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(run_var, in_var, stat_bytes, cudaMemcpyDeviceToDevice, stream));
      DNN_CHECK(dnn.cudnnAddTensor(s->handle, &take_var, s->stats.get(), batch_var, &keep, s->stats.get(),
                                   run_var));
    }
  });
}

// Inputs (dY, X, scale, [input_mean], [input_var], [d running_mean], [d running_var]); outputs dX, dscale,
// dB, [d input_mean], [d input_var]. cuDNN's backward is the training-mode gradient with statistics
// recomputed from X, which is what the CPU does when no gradient reaches the running statistics (the usual
// case: they feed no loss). Inference mode, or gradients of the running statistics, run on the host.
KernelPtr batch_norm_grad(const KernelArgs& a) {
  if (a.attrs().i("training_mode") == 0 || a.has_input(5) || a.has_input(6)) return nullptr;
  auto s = bn_state(a, a.in(1).shape, a.in(1).dtype);
  if (!s) return nullptr;
  const int64_t c = a.in(1).shape[1];
  if (a.in(1).shape.numel() / c < 2) return nullptr;
  const size_t stat_bytes = static_cast<size_t>(c) * sizeof(float);
  const void* dy = a.inputs[0];
  const void* x = a.inputs[1];
  const void* scale = a.inputs[2];
  void* dx = a.outputs[0];
  void* dscale = a.outputs[1];
  void* dbias = a.outputs[2];
  void* dmean = a.has_output(3) ? a.outputs[3] : nullptr;
  void* dvar = a.has_output(4) ? a.outputs[4] : nullptr;
  return make_kernel([=](cudaStream_t stream) {
    const lib::Cudnn& dnn = lib::cudnn();
    DNN_CHECK(dnn.cudnnSetStream(s->handle, stream));
    DNN_CHECK(dnn.cudnnBatchNormalizationBackward(
        s->handle, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, &kOne, &kZero, s->x.get(), x, s->x.get(), dy,
        s->x.get(), dx, s->stats.get(), scale, dscale, dbias, s->epsilon, nullptr, nullptr));
    // In training, d input_mean = momentum * d running_mean, and no such gradient came in.
    if (dmean) TRAINER_CUDA_CHECK(cudaMemsetAsync(dmean, 0, stat_bytes, stream));
    if (dvar) TRAINER_CUDA_CHECK(cudaMemsetAsync(dvar, 0, stat_bytes, stream));
  });
}

}  // namespace

void register_dnn_kernels(KernelRegistry& r) {
  r.add("Conv", conv);
  r.add("ConvGradInput", conv_grad_input);
  r.add("ConvTranspose", conv_transpose);
  r.add("ConvGradWeight", conv_grad_weight);
  r.add("MaxPool", max_pool);
  r.add("MaxPoolGrad", max_pool_grad);
  r.add("AveragePool", avg_pool);
  r.add("AveragePoolGrad", avg_pool_grad);
  r.add("BatchNormalization", batch_norm);
  r.add("BatchNormalizationGrad", batch_norm_grad);
}

}  // namespace trainer::engine::cuda
