// CPU kernels of op family 'conv': oneDNN convolution (forward, backward data, backward weights; f32 and
// bf16) and pooling (f32) on plain NCHW/OIHW buffers; plain loops for f64 and for the cases oneDNN defines
// differently from ONNX; GridSample. 1-D data runs as 2-D data of height 1. Every loop gives each output
// plane to one thread, so sums are deterministic.
#include <algorithm>
#include <cstring>
#include <limits>
#include <map>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/dnnl_util.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/ops/conv_geometry.h"

namespace trainer::engine::cpu {

namespace {

// A window op seen in 2-D: input [n, c, h, w], output [n, m, oh, ow]. pb/pr are the explicit end pads;
// reach_b and reach_r the end pads the last window touches (larger under ceil_mode).
struct Win2d {
  int64_t n = 0, c = 0, h = 1, w = 1, m = 0, oh = 1, ow = 1;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pt = 0, pl = 0, pb = 0, pr = 0, reach_b = 0, reach_r = 0;
  int64_t group = 1;
  int64_t in_plane() const { return h * w; }
  int64_t out_plane() const { return oh * ow; }
};

// `x` is the data input shape, `m` the output channels.
Win2d win2d(const Shape& x, int64_t m, const std::vector<int64_t>& kernel, const Attributes& a,
            bool ceil_mode, int64_t group = 1) {
  ops::WindowGeometry g;
  std::vector<int64_t> spatial(x.dims().begin() + 2, x.dims().end());
  std::string err = ops::resolve_window(a, spatial, kernel, ceil_mode, &g);
  TRAINER_ASSERT(err.empty(), "{}", err);
  TRAINER_ASSERT(g.spatial == 1 || g.spatial == 2, "window ops run on 1-D and 2-D data, got {}-D", g.spatial);
  Win2d v;
  v.n = x[0];
  v.c = x[1];
  v.m = m;
  v.group = group;
  int o = g.spatial == 2 ? 1 : 0;  // index of the width dim
  if (g.spatial == 2) {
    v.h = g.in[0];
    v.oh = g.out[0];
    v.kh = g.kernel[0];
    v.sh = g.stride[0];
    v.dh = g.dilation[0];
    v.pt = g.pad_begin[0];
    v.pb = g.pad_end[0];
    v.reach_b = g.reach_end(0);
  }
  v.w = g.in[o];
  v.ow = g.out[o];
  v.kw = g.kernel[o];
  v.sw = g.stride[o];
  v.dw = g.dilation[o];
  v.pl = g.pad_begin[o];
  v.pr = g.pad_end[o];
  v.reach_r = g.reach_end(o);
  return v;
}

std::vector<int64_t> kernel_of(const Shape& w) {
  return std::vector<int64_t>(w.dims().begin() + 2, w.dims().end());
}

// ---- oneDNN descriptors and layouts ----

// Which layout a convolution primitive works in. Measured on the 2-core AVX-512 machines (batch 64, 3x3
// kernels, 1 to 32 input channels): oneDNN's blocked layouts (nChw16c, ...), reorders included, beat plain
// NCHW (im2col + GEMM) 1.3-5x for the forward pass and the weight gradient at every size, and for the input
// gradient from 8 input channels up; below that (first layers, whose input gradient training never needs)
// plain NCHW is 2-5x faster.
enum class Layout { plain, blocked };

struct ConvMds {
  dnnl::memory::desc src, wei, bias, dst;  // plain: how the arena holds them
  dnnl::memory::dims strides, dilates, pad_l, pad_r;
  // The descriptors a primitive is created with: the plain ones, or "any" to let oneDNN choose.
  dnnl::memory::desc src_any, wei_any, dst_any;
};

// Descriptors for operands of type t; the bias (or its gradient) has the same type, as shape inference says.
ConvMds conv_mds(const Win2d& v, Layout layout, DType t) {
  using tag = dnnl::memory::format_tag;
  ConvMds d;
  d.src = dnnl_plain_md({v.n, v.c, v.h, v.w}, t);
  d.dst = dnnl_plain_md({v.n, v.m, v.oh, v.ow}, t);
  int64_t cg = v.c / v.group;
  std::vector<int64_t> wd = v.group == 1 ? std::vector<int64_t>{v.m, cg, v.kh, v.kw}
                                         : std::vector<int64_t>{v.group, v.m / v.group, cg, v.kh, v.kw};
  d.wei = dnnl_plain_md(wd, t);
  d.bias = dnnl_plain_md({v.m}, t);
  d.strides = {v.sh, v.sw};
  d.dilates = {v.dh - 1, v.dw - 1};  // oneDNN counts the gaps, ONNX the step
  d.pad_l = {v.pt, v.pl};
  d.pad_r = {v.pb, v.pr};
  auto any = [](const dnnl::memory::desc& md) {
    return dnnl::memory::desc(md.dims(), md.data_type(), tag::any);
  };
  bool blocked = layout == Layout::blocked;
  d.src_any = blocked ? any(d.src) : d.src;
  d.wei_any = blocked ? any(d.wei) : d.wei;
  d.dst_any = blocked ? any(d.dst) : d.dst;
  return d;
}

dnnl::convolution_forward::primitive_desc conv_fwd_pd(const ConvMds& d, bool bias) {
  using namespace dnnl;
  auto desc =
      bias ? convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct, d.src_any,
                                       d.wei_any, d.bias, d.dst_any, d.strides, d.dilates, d.pad_l, d.pad_r)
           : convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct, d.src_any,
                                       d.wei_any, d.dst_any, d.strides, d.dilates, d.pad_l, d.pad_r);
  return convolution_forward::primitive_desc(desc, dnnl_attr(), dnnl_cpu_engine());
}

// Memory for `md` in a 64-byte-aligned buffer that `keep` owns (reorder targets, workspaces): made at prepare
// time.
dnnl::memory owned_memory(const dnnl::memory::desc& md,
                          std::vector<std::shared_ptr<std::vector<std::byte>>>* keep) {
  if (dnnl_counted_bytes) {
    *dnnl_counted_bytes += md.get_size() + 64;
    return dnnl::memory(md, dnnl_cpu_engine(), DNNL_MEMORY_NONE);
  }
  auto buf = std::make_shared<std::vector<std::byte>>(md.get_size() + 64);
  auto p = reinterpret_cast<uintptr_t>(buf->data());
  keep->push_back(buf);
  return dnnl::memory(md, dnnl_cpu_engine(), reinterpret_cast<void*>((p + 63) / 64 * 64));
}

// A primitive call whose operands may live in layouts other than the arena's: inputs are reordered into
// buffers owned here before the call and outputs reordered back after it. Buffers and reorders are all made
// at prepare time.
class LayoutCall {
 public:
  // The memory to bind for an operand the primitive wants as `want`, held in the arena as `plain` at `ptr`.
  dnnl::memory input(const dnnl::memory::desc& plain, const void* ptr, const dnnl::memory::desc& want) {
    return bind(plain, ptr, want, true);
  }
  dnnl::memory output(const dnnl::memory::desc& plain, void* ptr, const dnnl::memory::desc& want) {
    return bind(plain, ptr, want, false);
  }
  void set_call(DnnlCall call) { call_ = std::move(call); }
  void operator()() const {
    for (const DnnlCall& r : before_) r();
    call_();
    for (const DnnlCall& r : after_) r();
  }

 private:
  dnnl::memory bind(const dnnl::memory::desc& plain, const void* ptr, const dnnl::memory::desc& want,
                    bool in) {
    dnnl::memory user = dnnl_mem(plain, ptr);
    if (want == plain) return user;
    dnnl::memory mine = owned_memory(want, &buffers_);
    const dnnl::memory& from = in ? user : mine;
    const dnnl::memory& to = in ? mine : user;
    dnnl::reorder::primitive_desc pd(dnnl_cpu_engine(), from.get_desc(), dnnl_cpu_engine(), to.get_desc(),
                                     dnnl_attr());
    (in ? before_ : after_)
        .emplace_back(dnnl::reorder(pd), pd,
                      std::vector<std::pair<int, dnnl::memory>>{{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
    return mine;
  }
  std::vector<DnnlCall> before_, after_;
  DnnlCall call_;
  std::vector<std::shared_ptr<std::vector<std::byte>>> buffers_;
};

// ---- Conv: plain loops ----

template <class T>
void conv_fwd_loops(const Win2d& v, const T* x, const T* wt, const T* b, T* y) {
  int64_t cg = v.c / v.group, mg = v.m / v.group;
  int64_t work = v.out_plane() * cg * v.kh * v.kw;
  parallel_for(
      v.n * v.m,
      [&](int64_t nm) {
        int64_t ni = nm / v.m, mi = nm % v.m, gi = mi / mg;
        T* py = y + nm * v.out_plane();
        for (int64_t oy = 0; oy < v.oh; ++oy)
          for (int64_t ox = 0; ox < v.ow; ++ox) {
            T acc = b ? b[mi] : T(0);
            for (int64_t ci = 0; ci < cg; ++ci) {
              const T* px = x + (ni * v.c + gi * cg + ci) * v.in_plane();
              const T* pw = wt + (mi * cg + ci) * v.kh * v.kw;
              for (int64_t ky = 0; ky < v.kh; ++ky) {
                int64_t iy = oy * v.sh - v.pt + ky * v.dh;
                if (iy < 0 || iy >= v.h) continue;
                for (int64_t kx = 0; kx < v.kw; ++kx) {
                  int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                  if (ix < 0 || ix >= v.w) continue;
                  acc += px[iy * v.w + ix] * pw[ky * v.kw + kx];
                }
              }
            }
            py[oy * v.ow + ox] = acc;
          }
      },
      std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, work)));
}

template <class T>
void conv_bwd_data_loops(const Win2d& v, const T* dy, const T* wt, T* dx) {
  int64_t cg = v.c / v.group, mg = v.m / v.group;
  int64_t work = mg * v.out_plane() * v.kh * v.kw;
  parallel_for(
      v.n * v.c,
      [&](int64_t nc) {
        int64_t ni = nc / v.c, cig = nc % v.c, gi = cig / cg, ci = cig % cg;
        T* px = dx + nc * v.in_plane();
        std::fill(px, px + v.in_plane(), T(0));
        for (int64_t mi = gi * mg; mi < (gi + 1) * mg; ++mi) {
          const T* pdy = dy + (ni * v.m + mi) * v.out_plane();
          const T* pw = wt + (mi * cg + ci) * v.kh * v.kw;
          for (int64_t oy = 0; oy < v.oh; ++oy)
            for (int64_t ox = 0; ox < v.ow; ++ox) {
              T d = pdy[oy * v.ow + ox];
              for (int64_t ky = 0; ky < v.kh; ++ky) {
                int64_t iy = oy * v.sh - v.pt + ky * v.dh;
                if (iy < 0 || iy >= v.h) continue;
                for (int64_t kx = 0; kx < v.kw; ++kx) {
                  int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                  if (ix < 0 || ix >= v.w) continue;
                  px[iy * v.w + ix] += d * pw[ky * v.kw + kx];
                }
              }
            }
        }
      },
      std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, work)));
}

template <class T>
void conv_bwd_weights_loops(const Win2d& v, const T* dy, const T* x, T* dw, T* db) {
  int64_t cg = v.c / v.group, mg = v.m / v.group;
  int64_t kernel = cg * v.kh * v.kw;
  parallel_for(
      v.m,
      [&](int64_t mi) {
        int64_t gi = mi / mg;
        T* pdw = dw + mi * kernel;
        std::fill(pdw, pdw + kernel, T(0));
        T bias = 0;
        for (int64_t ni = 0; ni < v.n; ++ni) {
          const T* pdy = dy + (ni * v.m + mi) * v.out_plane();
          for (int64_t oy = 0; oy < v.oh; ++oy)
            for (int64_t ox = 0; ox < v.ow; ++ox) {
              T d = pdy[oy * v.ow + ox];
              bias += d;
              for (int64_t ci = 0; ci < cg; ++ci) {
                const T* px = x + (ni * v.c + gi * cg + ci) * v.in_plane();
                for (int64_t ky = 0; ky < v.kh; ++ky) {
                  int64_t iy = oy * v.sh - v.pt + ky * v.dh;
                  if (iy < 0 || iy >= v.h) continue;
                  for (int64_t kx = 0; kx < v.kw; ++kx) {
                    int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                    if (ix < 0 || ix >= v.w) continue;
                    pdw[(ci * v.kh + ky) * v.kw + kx] += d * px[iy * v.w + ix];
                  }
                }
              }
            }
        }
        if (db) db[mi] = bias;
      },
      1);
}

// ---- Conv kernels ----

// The oneDNN passes, operands of type t (f32 or bf16; bf16 accumulates in f32), in the arena's plain layouts
// with reorders to and from the layouts the primitive prefers.
KernelPtr conv_fwd_dnnl(const Win2d& v, DType t, const std::string& node, const void* x, const void* w,
                        const void* b, void* y) {
  bool bias = b != nullptr;
  ConvMds d = conv_mds(v, Layout::blocked, t);
  auto pd = dnnl_make_pd(t, node, [&] { return conv_fwd_pd(d, bias); });
  auto call = std::make_shared<LayoutCall>();
  std::vector<std::pair<int, dnnl::memory>> args = {
      {DNNL_ARG_SRC, call->input(d.src, x, pd.src_desc())},
      {DNNL_ARG_WEIGHTS, call->input(d.wei, w, pd.weights_desc())},
      {DNNL_ARG_DST, call->output(d.dst, y, pd.dst_desc())}};
  if (bias) args.emplace_back(DNNL_ARG_BIAS, dnnl_mem(d.bias, b));
  call->set_call(DnnlCall(dnnl::convolution_forward(pd), pd, std::move(args)));
  return make_kernel([call](const StepContext&) { (*call)(); });
}

KernelPtr conv_bwd_data_dnnl(const Win2d& v, DType t, const std::string& node, const void* dy, const void* w,
                             void* dx) {
  using namespace dnnl;
  ConvMds d = conv_mds(v, v.c / v.group >= 8 ? Layout::blocked : Layout::plain, t);
  auto pd = dnnl_make_pd(t, node, [&] {
    auto hint = conv_fwd_pd(d, false);
    return convolution_backward_data::primitive_desc(
        convolution_backward_data::desc(algorithm::convolution_direct, d.src_any, d.wei_any, d.dst_any,
                                        d.strides, d.dilates, d.pad_l, d.pad_r),
        dnnl_attr(), dnnl_cpu_engine(), hint);
  });
  auto call = std::make_shared<LayoutCall>();
  std::vector<std::pair<int, memory>> args = {
      {DNNL_ARG_DIFF_DST, call->input(d.dst, dy, pd.diff_dst_desc())},
      {DNNL_ARG_WEIGHTS, call->input(d.wei, w, pd.weights_desc())},
      {DNNL_ARG_DIFF_SRC, call->output(d.src, dx, pd.diff_src_desc())}};
  call->set_call(DnnlCall(convolution_backward_data(pd), pd, std::move(args)));
  return make_kernel([call](const StepContext&) { (*call)(); });
}

KernelPtr conv_bwd_weights_dnnl(const Win2d& v, DType t, const std::string& node, const void* dy,
                                const void* x, void* dw, void* db) {
  using namespace dnnl;
  bool bias = db != nullptr;
  ConvMds d = conv_mds(v, Layout::blocked, t);
  auto pd = dnnl_make_pd(t, node, [&] {
    auto hint = conv_fwd_pd(d, bias);
    auto desc =
        bias ? convolution_backward_weights::desc(algorithm::convolution_direct, d.src_any, d.wei_any, d.bias,
                                                  d.dst_any, d.strides, d.dilates, d.pad_l, d.pad_r)
             : convolution_backward_weights::desc(algorithm::convolution_direct, d.src_any, d.wei_any,
                                                  d.dst_any, d.strides, d.dilates, d.pad_l, d.pad_r);
    return convolution_backward_weights::primitive_desc(desc, dnnl_attr(), dnnl_cpu_engine(), hint);
  });
  auto call = std::make_shared<LayoutCall>();
  std::vector<std::pair<int, memory>> args = {
      {DNNL_ARG_DIFF_DST, call->input(d.dst, dy, pd.diff_dst_desc())},
      {DNNL_ARG_SRC, call->input(d.src, x, pd.src_desc())},
      {DNNL_ARG_DIFF_WEIGHTS, call->output(d.wei, dw, pd.diff_weights_desc())}};
  if (bias) args.emplace_back(DNNL_ARG_DIFF_BIAS, dnnl_mem(d.bias, db));
  call->set_call(DnnlCall(convolution_backward_weights(pd), pd, std::move(args)));
  return make_kernel([call](const StepContext&) { (*call)(); });
}

KernelPtr conv(const KernelArgs& a) {
  const Shape& ws = a.in(1).shape;
  Win2d v = win2d(a.in(0).shape, ws[0], kernel_of(ws), a.attrs(), false, a.attrs().i("group"));
  const void* b = a.has_input(2) ? a.inputs[2] : nullptr;
  DType t = a.in(0).dtype;
  if (t == DType::bf16) return conv_fwd_dnnl(v, t, a.node.name, a.inputs[0], a.inputs[1], b, a.outputs[0]);
  KernelPtr kp;
  dispatch_float(t, "Conv", [&]<class T>() {
    if constexpr (std::is_same_v<T, float>) {
      kp = conv_fwd_dnnl(v, t, a.node.name, a.inputs[0], a.inputs[1], b, a.outputs[0]);
    } else {
      const T* x = a.in_ptr<T>(0);
      const T* w = a.in_ptr<T>(1);
      const T* bt = static_cast<const T*>(b);
      T* y = a.out_ptr<T>(0);
      kp = make_kernel([=](const StepContext&) { conv_fwd_loops(v, x, w, bt, y); });
    }
  });
  return kp;
}

// ConvGradInput(dy, W) -> dx
KernelPtr conv_grad_input(const KernelArgs& a) {
  const Shape& ws = a.in(1).shape;
  Shape xs(a.attrs().ints("input_shape"));
  Win2d v = win2d(xs, ws[0], kernel_of(ws), a.attrs(), false, a.attrs().i("group"));
  DType t = a.in(0).dtype;
  if (t == DType::bf16) return conv_bwd_data_dnnl(v, t, a.node.name, a.inputs[0], a.inputs[1], a.outputs[0]);
  KernelPtr kp;
  dispatch_float(t, "ConvGradInput", [&]<class T>() {
    if constexpr (std::is_same_v<T, float>) {
      kp = conv_bwd_data_dnnl(v, t, a.node.name, a.inputs[0], a.inputs[1], a.outputs[0]);
    } else {
      const T* dy = a.in_ptr<T>(0);
      const T* w = a.in_ptr<T>(1);
      T* dx = a.out_ptr<T>(0);
      kp = make_kernel([=](const StepContext&) { conv_bwd_data_loops(v, dy, w, dx); });
    }
  });
  return kp;
}

// ConvGradWeight(dy, x) -> dW [, dB]
KernelPtr conv_grad_weight(const KernelArgs& a) {
  const Shape& dys = a.in(0).shape;
  Win2d v =
      win2d(a.in(1).shape, dys[1], a.attrs().ints("kernel_shape"), a.attrs(), false, a.attrs().i("group"));
  void* db = a.has_output(1) ? a.outputs[1] : nullptr;
  DType t = a.in(0).dtype;
  if (t == DType::bf16)
    return conv_bwd_weights_dnnl(v, t, a.node.name, a.inputs[0], a.inputs[1], a.outputs[0], db);
  KernelPtr kp;
  dispatch_float(t, "ConvGradWeight", [&]<class T>() {
    if constexpr (std::is_same_v<T, float>) {
      kp = conv_bwd_weights_dnnl(v, t, a.node.name, a.inputs[0], a.inputs[1], a.outputs[0], db);
    } else {
      const T* dy = a.in_ptr<T>(0);
      const T* x = a.in_ptr<T>(1);
      T* dw = a.out_ptr<T>(0);
      T* dbt = static_cast<T*>(db);
      kp = make_kernel([=](const StepContext&) { conv_bwd_weights_loops(v, dy, x, dw, dbt); });
    }
  });
  return kp;
}

// ConvTranspose(x, W[, B]): the ConvGradInput kernel of the convolution from y's shape to x's (x standing for
// its output gradient), then the bias added per channel.
KernelPtr conv_transpose(const KernelArgs& a) {
  Node as_grad;
  TRAINER_ASSERT(
      ops::conv_transpose_as_grad_input(a.node, a.in(0).shape, a.in(1).shape, a.out(0).shape, &as_grad),
      "ConvTranspose '{}' does not resolve", a.node.name);
  KernelPtr data = conv_grad_input(KernelArgs{a.graph, as_grad, {a.inputs[0], a.inputs[1]}, {a.outputs[0]}});
  if (!a.has_input(2) || !data) return data;
  std::shared_ptr<CpuKernel> first(std::move(data));
  KernelPtr kp;
  dispatch_float(a.out(0).dtype, "ConvTranspose", [&]<class T>() {
    const T* b = a.in_ptr<T>(2);
    T* y = a.out_ptr<T>(0);
    const Shape& ys = a.out(0).shape;
    const int64_t channels = ys[1], planes = ys[0] * ys[1], plane = ys.numel() / std::max<int64_t>(planes, 1);
    kp = make_kernel([=](const StepContext& ctx) {
      first->run(ctx);
      parallel_for(planes, [&](int64_t p) {
        const T bias = b[p % channels];
        T* row = y + p * plane;
        for (int64_t i = 0; i < plane; ++i) row[i] += bias;
      });
    });
  });
  return kp;
}

// ---- Pooling: plain loops ----

// The taps [first, last) of a window that begins at `start`, with k taps d apart, that fall inside [lo, hi):
// computed, not searched, so that a window far larger than its input (a pool_size of 20000 with padding
// "same") costs what the input does, not what the window does.
struct Taps {
  int64_t first = 0, last = 0;
};
inline Taps taps_in(int64_t start, int64_t k, int64_t d, int64_t lo, int64_t hi) {
  auto ceil_div = [](int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); };
  const int64_t first = std::max<int64_t>(0, ceil_div(lo - start, d));
  const int64_t last = std::min<int64_t>(k, ceil_div(hi - start, d));
  return {first, std::max(first, last)};
}

inline int64_t taps_inside(int64_t start, int64_t k, int64_t d, int64_t lo, int64_t hi) {
  const Taps t = taps_in(start, k, d, lo, hi);
  return t.last - t.first;
}

// The kernel rows of output row oy, and the kernel columns of output column ox, that fall inside the input.
inline Taps rows_in(const Win2d& v, int64_t oy) {
  return taps_in(oy * v.sh - v.pt, v.kh, v.dh, 0, v.h);
}
inline Taps cols_in(const Win2d& v, int64_t ox) {
  return taps_in(ox * v.sw - v.pl, v.kw, v.dw, 0, v.w);
}

// Planes per parallel task: each window visits at most the input's taps.
int64_t pool_grain(const Win2d& v) {
  const int64_t taps = std::min(v.kh, v.h) * std::min(v.kw, v.w);
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, v.out_plane() * taps));
}

// A window longer than the input along an axis: oneDNN's pooling visits every tap of it (its time grows with
// the window's area); the loops visit only those inside.
bool wider_than_input(const Win2d& v) {
  return v.kh > v.h || v.kw > v.w;
}

template <class T>
void max_pool_loops(const Win2d& v, const T* x, T* y) {
  parallel_for(
      v.n * v.c,
      [&](int64_t p) {
        const T* px = x + p * v.in_plane();
        T* py = y + p * v.out_plane();
        for (int64_t oy = 0; oy < v.oh; ++oy)
          for (int64_t ox = 0; ox < v.ow; ++ox) {
            T best = std::numeric_limits<T>::lowest();
            const Taps ty = rows_in(v, oy), tx = cols_in(v, ox);
            for (int64_t ky = ty.first; ky < ty.last; ++ky) {
              int64_t iy = oy * v.sh - v.pt + ky * v.dh;
              for (int64_t kx = tx.first; kx < tx.last; ++kx) {
                int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                const T val = px[iy * v.w + ix];
                best = val > best ? val : best;
              }
            }
            py[oy * v.ow + ox] = best;
          }
      },
      pool_grain(v));
}

// Each dy goes to the first maximum of its window (row-major order), as the forward pass found it. Every CPU
// path of max pooling takes oneDNN's rule: the maximum starts at the lowest finite value and rises to each
// tap above it, so a NaN is skipped, a window of NaN gives the lowest value, and its dy goes to the first
// tap.
template <class T>
void max_pool_grad_loops(const Win2d& v, const T* dy, const T* x, T* dx) {
  parallel_for(
      v.n * v.c,
      [&](int64_t p) {
        const T* px = x + p * v.in_plane();
        const T* pdy = dy + p * v.out_plane();
        T* pdx = dx + p * v.in_plane();
        std::fill(pdx, pdx + v.in_plane(), T(0));
        for (int64_t oy = 0; oy < v.oh; ++oy)
          for (int64_t ox = 0; ox < v.ow; ++ox) {
            int64_t arg = -1;
            T best = std::numeric_limits<T>::lowest();
            const Taps ty = rows_in(v, oy), tx = cols_in(v, ox);
            for (int64_t ky = ty.first; ky < ty.last; ++ky) {
              int64_t iy = oy * v.sh - v.pt + ky * v.dh;
              for (int64_t kx = tx.first; kx < tx.last; ++kx) {
                int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                T val = px[iy * v.w + ix];
                if (arg < 0) arg = iy * v.w + ix;
                if (val > best) {
                  best = val;
                  arg = iy * v.w + ix;
                }
              }
            }
            if (arg >= 0) pdx[arg] += pdy[oy * v.ow + ox];
          }
      },
      pool_grain(v));
}

// The divisor of window (oy, ox): taps inside the input, or inside the explicitly padded input.
inline int64_t avg_divisor(const Win2d& v, int64_t oy, int64_t ox, bool include_pad) {
  int64_t y0 = oy * v.sh - v.pt, x0 = ox * v.sw - v.pl;
  if (include_pad)
    return taps_inside(y0, v.kh, v.dh, -v.pt, v.h + v.pb) * taps_inside(x0, v.kw, v.dw, -v.pl, v.w + v.pr);
  const Taps ty = rows_in(v, oy), tx = cols_in(v, ox);
  return (ty.last - ty.first) * (tx.last - tx.first);
}

template <class T>
void avg_pool_loops(const Win2d& v, bool include_pad, const T* x, T* y) {
  parallel_for(
      v.n * v.c,
      [&](int64_t p) {
        const T* px = x + p * v.in_plane();
        T* py = y + p * v.out_plane();
        for (int64_t oy = 0; oy < v.oh; ++oy)
          for (int64_t ox = 0; ox < v.ow; ++ox) {
            T sum = 0;
            const Taps ty = rows_in(v, oy), tx = cols_in(v, ox);
            for (int64_t ky = ty.first; ky < ty.last; ++ky) {
              int64_t iy = oy * v.sh - v.pt + ky * v.dh;
              for (int64_t kx = tx.first; kx < tx.last; ++kx) {
                int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                sum += px[iy * v.w + ix];
              }
            }
            int64_t div = avg_divisor(v, oy, ox, include_pad);
            py[oy * v.ow + ox] = div > 0 ? sum / T(div) : T(0);
          }
      },
      pool_grain(v));
}

template <class T>
void avg_pool_grad_loops(const Win2d& v, bool include_pad, const T* dy, T* dx) {
  parallel_for(
      v.n * v.c,
      [&](int64_t p) {
        const T* pdy = dy + p * v.out_plane();
        T* pdx = dx + p * v.in_plane();
        std::fill(pdx, pdx + v.in_plane(), T(0));
        for (int64_t oy = 0; oy < v.oh; ++oy)
          for (int64_t ox = 0; ox < v.ow; ++ox) {
            int64_t div = avg_divisor(v, oy, ox, include_pad);
            if (div == 0) continue;
            T g = pdy[oy * v.ow + ox] / T(div);
            const Taps ty = rows_in(v, oy), tx = cols_in(v, ox);
            for (int64_t ky = ty.first; ky < ty.last; ++ky) {
              int64_t iy = oy * v.sh - v.pt + ky * v.dh;
              for (int64_t kx = tx.first; kx < tx.last; ++kx) {
                int64_t ix = ox * v.sw - v.pl + kx * v.dw;
                pdx[iy * v.w + ix] += g;
              }
            }
          }
      },
      pool_grain(v));
}

// ---- Pooling: oneDNN ----

struct PoolMds {
  dnnl::memory::desc src, dst;
  dnnl::memory::dims strides, kernel, dilation, pad_l, pad_r;
};

PoolMds pool_mds(const Win2d& v) {
  PoolMds d;
  d.src = dnnl_plain_md({v.n, v.c, v.h, v.w}, DType::f32);
  d.dst = dnnl_plain_md({v.n, v.c, v.oh, v.ow}, DType::f32);
  d.strides = {v.sh, v.sw};
  d.kernel = {v.kh, v.kw};
  d.dilation = {v.dh - 1, v.dw - 1};
  d.pad_l = {v.pt, v.pl};
  d.pad_r = {v.reach_b, v.reach_r};  // ceil_mode: the extra windows see padding, which pooling never counts
  return d;
}

dnnl::pooling_v2_forward::primitive_desc pool_fwd_pd(const PoolMds& d, dnnl::algorithm alg,
                                                     dnnl::prop_kind prop) {
  using namespace dnnl;
  return pooling_v2_forward::primitive_desc(
      pooling_v2_forward::desc(prop, alg, d.src, d.dst, d.strides, d.kernel, d.dilation, d.pad_l, d.pad_r),
      dnnl_attr(), dnnl_cpu_engine());
}

// oneDNN's include-padding average divides by the full kernel; ONNX does not count the part of a ceil_mode
// window past the explicit padding, so such windows run on the loops.
bool dnnl_avg_matches(const Win2d& v, bool include_pad) {
  return !include_pad || (v.reach_b == v.pb && v.reach_r == v.pr);
}

dnnl::algorithm avg_alg(bool include_pad) {
  return include_pad ? dnnl::algorithm::pooling_avg_include_padding
                     : dnnl::algorithm::pooling_avg_exclude_padding;
}

// f(p) for every plane p of the input, in parallel, as the 2x2 passes take them.
template <class F>
void each_plane(const Win2d& v, const F& f) {
  parallel_for(v.n * v.c, f, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, v.in_plane())));
}

// Windows of 2x2 at stride 2, without padding or dilation: the common case, with kernels of its own.
bool is_plain_2x2(const Win2d& v) {
  return v.kh == 2 && v.kw == 2 && v.sh == 2 && v.sw == 2 && v.dh == 1 && v.dw == 1 && v.pt == 0 &&
         v.pl == 0 && v.reach_b == 0 && v.reach_r == 0 && v.oh == v.h / 2 && v.ow == v.w / 2;
}

// 2x2 windows at stride 2 without padding or dilation (is_plain_2x2): the maximum by the chain of comparisons
// max_pool_grad_2x2_plane makes, by oneDNN's rule (see max_pool_grad_loops). oneDNN's plain-layout max
// pooling is a scalar loop; this pass is about ten times faster on the CIFAR-10 CNN's pool.
TRAINER_CPU_CLONES void max_pool_2x2_plane(const float* x, float* y, int64_t w, int64_t oh, int64_t ow) {
  for (int64_t oy = 0; oy < oh; ++oy) {
    const float* r0 = x + 2 * oy * w;
    const float* r1 = r0 + w;
    float* out = y + oy * ow;
#pragma omp simd simdlen(8)
    for (int64_t j = 0; j < ow; ++j) {
      const float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
      constexpr float lowest = std::numeric_limits<float>::lowest();
      float m = a > lowest ? a : lowest;
      m = b > m ? b : m;
      m = c > m ? c : m;
      out[j] = d > m ? d : m;
    }
  }
}

KernelPtr max_pool(const KernelArgs& a) {
  if (a.has_output(1)) throw InputError(a.node.name, "the Indices output of MaxPool is not supported", "");
  Win2d v = win2d(a.in(0).shape, a.in(0).shape[1], a.attrs().ints("kernel_shape"), a.attrs(),
                  a.attrs().i("ceil_mode") != 0);
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "MaxPool", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    if constexpr (std::is_same_v<T, float>) {
      if (!wider_than_input(v)) {
        if (is_plain_2x2(v)) {
          kp = make_kernel([=](const StepContext&) {
            each_plane(v, [&](int64_t p) {
              max_pool_2x2_plane(x + p * v.in_plane(), y + p * v.out_plane(), v.w, v.oh, v.ow);
            });
          });
          return;
        }
        PoolMds d = pool_mds(v);
        auto pd = pool_fwd_pd(d, dnnl::algorithm::pooling_max, dnnl::prop_kind::forward_inference);
        DnnlCall call(dnnl::pooling_v2_forward(pd), pd,
                      {{DNNL_ARG_SRC, dnnl_mem(d.src, x)}, {DNNL_ARG_DST, dnnl_mem(d.dst, y)}});
        kp = make_kernel([call](const StepContext&) { call(); });
        return;
      }
    }
    kp = make_kernel([=](const StepContext&) { max_pool_loops(v, x, y); });
  });
  return kp;
}

// 2x2 windows at stride 2 without padding or dilation, the common case: windows do not overlap, so every dx
// element is written once, with dy where its window's first maximum is (as in the loops) and 0 elsewhere,
// and no separate zero fill is needed. An odd last row or column belongs to no window. A vectorized pass
// like this is several times faster than oneDNN's plain-layout backward (which also needs the forward rerun
// for its workspace).
TRAINER_CPU_CLONES void max_pool_grad_2x2_plane(const float* x, const float* dy, float* dx, int64_t h,
                                                int64_t w, int64_t oh, int64_t ow) {
  for (int64_t oy = 0; oy < oh; ++oy) {
    const float* r0 = x + 2 * oy * w;
    const float* r1 = r0 + w;
    float* d0 = dx + 2 * oy * w;
    float* d1 = d0 + w;
    const float* g = dy + oy * ow;
    // Branch-free selects: which element wins is data dependent, so branches would mispredict about once per
    // window. Rows are short (13 windows at 26 columns), hence 8 lanes.
#pragma omp simd simdlen(8)
    for (int64_t j = 0; j < ow; ++j) {
      const float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
      constexpr float lowest = std::numeric_limits<float>::lowest();
      float m = a > lowest ? a : lowest;  // a wins when nothing beats the lowest value
      const bool kb = b > m;
      m = kb ? b : m;
      const bool kc = c > m;
      m = kc ? c : m;
      const bool kd = d > m;
      // dy passes down the chain of selects to the winner (plain selects, which the vectorizer if-converts;
      // && would become branches).
      const float to_d = kd ? g[j] : 0.0f, past_d = kd ? 0.0f : g[j];
      const float to_c = kc ? past_d : 0.0f, past_c = kc ? 0.0f : past_d;
      const float to_b = kb ? past_c : 0.0f, to_a = kb ? 0.0f : past_c;
      d0[2 * j] = to_a;
      d0[2 * j + 1] = to_b;
      d1[2 * j] = to_c;
      d1[2 * j + 1] = to_d;
    }
    for (int64_t ix = 2 * ow; ix < w; ++ix) d0[ix] = d1[ix] = 0.0f;
  }
  for (int64_t iy = 2 * oh; iy < h; ++iy) std::fill(dx + iy * w, dx + (iy + 1) * w, 0.0f);
}

// oneDNN's max-pooling backward needs the forward's workspace (where each maximum was). MaxPool itself runs
// as inference and keeps none, so the gradient kernel reruns the forward into a workspace and a scratch
// output of its own. That is still about twice as fast as the plain loops' window search (measured at [64,
// 32, 26, 26], 3x3).
struct MaxPoolGradState {
  DnnlCall forward, backward;
  std::vector<std::shared_ptr<std::vector<std::byte>>> buffers;
};

// MaxPoolGrad(dy, x) -> dx
KernelPtr max_pool_grad(const KernelArgs& a) {
  const Shape& xs = a.in(1).shape;
  Win2d v = win2d(xs, xs[1], a.attrs().ints("kernel_shape"), a.attrs(), a.attrs().i("ceil_mode") != 0);
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "MaxPoolGrad", [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    const T* x = a.in_ptr<T>(1);
    T* dx = a.out_ptr<T>(0);
    if constexpr (std::is_same_v<T, float>) {
      if (!wider_than_input(v)) {
        if (is_plain_2x2(v)) {
          kp = make_kernel([=](const StepContext&) {
            each_plane(v, [&](int64_t p) {
              max_pool_grad_2x2_plane(x + p * v.in_plane(), dy + p * v.out_plane(), dx + p * v.in_plane(),
                                      v.h, v.w, v.oh, v.ow);
            });
          });
          return;
        }
        using namespace dnnl;
        PoolMds d = pool_mds(v);
        auto fwd = pool_fwd_pd(d, algorithm::pooling_max, prop_kind::forward_training);
        pooling_v2_backward::primitive_desc bwd(
            pooling_v2_backward::desc(algorithm::pooling_max, d.src, d.dst, d.strides, d.kernel, d.dilation,
                                      d.pad_l, d.pad_r),
            dnnl_attr(), dnnl_cpu_engine(), fwd);
        auto st = std::make_shared<MaxPoolGradState>();
        memory ws = owned_memory(fwd.workspace_desc(), &st->buffers);
        memory y = owned_memory(d.dst, &st->buffers);
        st->forward =
            DnnlCall(pooling_v2_forward(fwd), fwd,
                     {{DNNL_ARG_SRC, dnnl_mem(d.src, x)}, {DNNL_ARG_DST, y}, {DNNL_ARG_WORKSPACE, ws}});
        st->backward = DnnlCall(pooling_v2_backward(bwd), bwd,
                                {{DNNL_ARG_DIFF_DST, dnnl_mem(d.dst, dy)},
                                 {DNNL_ARG_WORKSPACE, ws},
                                 {DNNL_ARG_DIFF_SRC, dnnl_mem(d.src, dx)}});
        kp = make_kernel([st](const StepContext&) {
          st->forward();
          st->backward();
        });
        return;
      }
    }
    kp = make_kernel([=](const StepContext&) { max_pool_grad_loops(v, dy, x, dx); });
  });
  return kp;
}

KernelPtr avg_pool(const KernelArgs& a) {
  Win2d v = win2d(a.in(0).shape, a.in(0).shape[1], a.attrs().ints("kernel_shape"), a.attrs(),
                  a.attrs().i("ceil_mode") != 0);
  bool include_pad = a.attrs().i("count_include_pad") != 0;
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "AveragePool", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    if constexpr (std::is_same_v<T, float>) {
      if (!wider_than_input(v) && dnnl_avg_matches(v, include_pad)) {
        PoolMds d = pool_mds(v);
        auto pd = pool_fwd_pd(d, avg_alg(include_pad), dnnl::prop_kind::forward_inference);
        DnnlCall call(dnnl::pooling_v2_forward(pd), pd,
                      {{DNNL_ARG_SRC, dnnl_mem(d.src, x)}, {DNNL_ARG_DST, dnnl_mem(d.dst, y)}});
        kp = make_kernel([call](const StepContext&) { call(); });
        return;
      }
    }
    kp = make_kernel([=](const StepContext&) { avg_pool_loops(v, include_pad, x, y); });
  });
  return kp;
}

// AveragePoolGrad(dy) -> dx of shape input_shape
KernelPtr avg_pool_grad(const KernelArgs& a) {
  Shape xs(a.attrs().ints("input_shape"));
  Win2d v = win2d(xs, xs[1], a.attrs().ints("kernel_shape"), a.attrs(), a.attrs().i("ceil_mode") != 0);
  bool include_pad = a.attrs().i("count_include_pad") != 0;
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "AveragePoolGrad", [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    T* dx = a.out_ptr<T>(0);
    if constexpr (std::is_same_v<T, float>) {
      if (!wider_than_input(v) && dnnl_avg_matches(v, include_pad)) {
        using namespace dnnl;
        PoolMds d = pool_mds(v);
        auto hint = pool_fwd_pd(d, avg_alg(include_pad), prop_kind::forward_training);
        pooling_v2_backward::primitive_desc pd(
            pooling_v2_backward::desc(avg_alg(include_pad), d.src, d.dst, d.strides, d.kernel, d.dilation,
                                      d.pad_l, d.pad_r),
            dnnl_attr(), dnnl_cpu_engine(), hint);
        DnnlCall call(pooling_v2_backward(pd), pd,
                      {{DNNL_ARG_DIFF_DST, dnnl_mem(d.dst, dy)}, {DNNL_ARG_DIFF_SRC, dnnl_mem(d.src, dx)}});
        kp = make_kernel([call](const StepContext&) { call(); });
        return;
      }
    }
    kp = make_kernel([=](const StepContext&) { avg_pool_grad_loops(v, include_pad, dy, dx); });
  });
  return kp;
}

KernelPtr global_avg_pool(const KernelArgs& a) {
  const Shape& xs = a.in(0).shape;
  int64_t planes = xs[0] * xs[1], plane = xs.numel() / std::max<int64_t>(1, planes);
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "GlobalAveragePool", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    kp = make_kernel([=](const StepContext&) {
      parallel_for(
          planes,
          [&](int64_t p) {
            double s = 0;
            const T* px = x + p * plane;
            for (int64_t i = 0; i < plane; ++i) s += px[i];
            y[p] = static_cast<T>(s / static_cast<double>(plane));
          },
          std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, plane)));
    });
  });
  return kp;
}

KernelPtr global_avg_pool_grad(const KernelArgs& a) {
  Shape xs(a.attrs().ints("input_shape"));
  int64_t planes = xs[0] * xs[1], plane = xs.numel() / std::max<int64_t>(1, planes);
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "GlobalAveragePoolGrad", [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    T* dx = a.out_ptr<T>(0);
    kp = make_kernel([=](const StepContext&) {
      parallel_for(
          planes,
          [&](int64_t p) {
            T g = dy[p] / static_cast<T>(plane);
            std::fill(dx + p * plane, dx + (p + 1) * plane, g);
          },
          std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, plane)));
    });
  });
  return kp;
}

// ---- GridSample ----

// Each output pixel's coordinates are computed once and serve every channel; threads own output rows.
KernelPtr grid_sample(const KernelArgs& a) {
  const kernels::GridGeom g = ops::grid_geom(a.in(0).shape, a.in(1).shape, a.attrs());
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "GridSample", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    const T* grid = a.in_ptr<T>(1);
    T* y = a.out_ptr<T>(0);
    kp = make_kernel([=](const StepContext&) {
      const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow;
      parallel_for(
          g.n * g.oh,
          [&](int64_t row) {
            const int64_t n = row / g.oh;
            for (int64_t j = 0; j < g.ow; ++j) {
              const int64_t p = row * g.ow + j;  // the pixel in grid order
              const kernels::GridTaps<T> t = kernels::grid_taps(g, grid, p);
              const int64_t q = p - n * out_plane;
              for (int64_t c = 0; c < g.c; ++c)
                y[(n * g.c + c) * out_plane + q] =
                    kernels::grid_sample_plane(x + (n * g.c + c) * plane, g, t);
            }
          },
          std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, g.ow * g.c * 8)));
    });
  });
  return kp;
}

// dX: each (image, channel) plane belongs to one thread, which adds the samples' weights in pixel order, so
// the sums do not depend on the thread count. dgrid: per output pixel, summed over the channels in order
// (zero for nearest, whose samples are flat in the grid).
KernelPtr grid_sample_grad(const KernelArgs& a) {
  const kernels::GridGeom g = ops::grid_geom(a.in(1).shape, a.in(2).shape, a.attrs());
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "GridSampleGrad", [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    const T* x = a.in_ptr<T>(1);
    const T* grid = a.in_ptr<T>(2);
    T* dx = a.has_output(0) ? a.out_ptr<T>(0) : nullptr;
    T* dgrid = a.has_output(1) ? a.out_ptr<T>(1) : nullptr;
    kp = make_kernel([=](const StepContext&) {
      const int64_t plane = g.h * g.w, out_plane = g.oh * g.ow;
      if (dx)
        parallel_for(
            g.n * g.c,
            [&](int64_t nc) {
              T* d = dx + nc * plane;
              std::fill(d, d + plane, T(0));
              const int64_t n = nc / g.c;
              for (int64_t q = 0; q < out_plane; ++q)
                kernels::grid_scatter_plane(d, g, kernels::grid_taps(g, grid, n * out_plane + q),
                                            dy[nc * out_plane + q]);
            },
            std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, out_plane * 8)));
      if (dgrid)
        parallel_for(
            g.n * out_plane,
            [&](int64_t p) {
              T gx = 0, gy = 0;
              const kernels::GridTaps<T> t = kernels::grid_taps(g, grid, p);
              if (g.mode != kernels::GridMode::nearest) {
                const int64_t n = p / out_plane, q = p % out_plane;
                for (int64_t c = 0; c < g.c; ++c)
                  kernels::grid_coord_grad(x + (n * g.c + c) * plane, g, t, dy[(n * g.c + c) * out_plane + q],
                                           &gx, &gy);
              }
              dgrid[2 * p] = gx * t.cx.dx;
              dgrid[2 * p + 1] = gy * t.cy.dx;
            },
            std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, g.c * 8)));
    });
  });
  return kp;
}

}  // namespace

size_t conv_held_bytes(const Graph& g, const Node& n) {
  using Builder = KernelPtr (*)(const KernelArgs&);
  static const std::map<std::string, Builder, std::less<>> builders = {{"Conv", conv},
                                                                       {"ConvGradInput", conv_grad_input},
                                                                       {"ConvTranspose", conv_transpose},
                                                                       {"ConvGradWeight", conv_grad_weight},
                                                                       {"MaxPool", max_pool},
                                                                       {"MaxPoolGrad", max_pool_grad},
                                                                       {"AveragePool", avg_pool},
                                                                       {"AveragePoolGrad", avg_pool_grad}};
  auto it = builders.find(n.op);
  if (it == builders.end()) return 0;
  // Operands at a stand-in address: the kernel is made, never run, and its buffers are only counted.
  static std::byte stand_in[64];
  KernelArgs a{g, n, {}, {}};
  for (ValueId v : n.inputs) a.inputs.push_back(v == kNoValue ? nullptr : stand_in);
  for (ValueId v : n.outputs) a.outputs.push_back(v == kNoValue ? nullptr : stand_in);
  size_t bytes = 0;
  dnnl_counted_bytes = &bytes;
  try {
    it->second(a);
  } catch (...) {
    dnnl_counted_bytes = nullptr;
    return 0;  // the kernel's own error is reported when the plan makes it
  }
  dnnl_counted_bytes = nullptr;
  return bytes;
}

void register_conv_cpu_kernels(KernelRegistry& r) {
  r.add("Conv", conv);
  r.add("ConvGradInput", conv_grad_input);
  r.add("ConvTranspose", conv_transpose);
  r.add("ConvGradWeight", conv_grad_weight);
  r.add("MaxPool", max_pool);
  r.add("MaxPoolGrad", max_pool_grad);
  r.add("AveragePool", avg_pool);
  r.add("AveragePoolGrad", avg_pool_grad);
  r.add("GlobalAveragePool", global_avg_pool);
  r.add("GlobalAveragePoolGrad", global_avg_pool_grad);
  r.add("GridSample", grid_sample);
  r.add("GridSampleGrad", grid_sample_grad);
}

}  // namespace trainer::engine::cpu
