// CPU kernels of op family 'reduce': ReduceSum/Mean/Max, ReduceMaxGrad, Softmax, LogSoftmax and their
// gradients. A reduction is first simplified (size-1 dims dropped, adjacent dims of the same kind merged) so
// the common cases become a contiguous run per output or a sum of rows; every output element is produced by
// one thread in a fixed order, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cpu/dnnl_util.h"
#include "engine/backend/cpu/parallel.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/ops/reduce_axes.h"

namespace trainer::engine::cpu {

namespace {

constexpr int kMaxDims = 32;

// A reduction over a row-major input, simplified. Kept dims index the outputs (row-major); reduced dims are
// walked in increasing memory order, the innermost reduced dim as one contiguous run when it is the input's
// last dim.
struct ReduceGeom {
  enum Kind { kCopy, kContiguous, kRows, kGeneral } kind = kCopy;
  int64_t out_count = 1, red_count = 1;
  int64_t rows_a = 1, rows_b = 1, rows_c = 1;  // kRows: out[a, c] = reduce over b of x[a, b, c]
  int nk = 0, nr = 0;
  int64_t kdim[kMaxDims], kstr[kMaxDims], rdim[kMaxDims], rstr[kMaxDims];
  int64_t run = 1;  // length of the contiguous innermost reduced run (1 when the last dim is kept)

  ReduceGeom(const Shape& in, const std::vector<int>& axes) {
    std::vector<int64_t> dims;
    std::vector<bool> red;
    for (int d = 0; d < in.rank(); ++d) {
      if (in[d] == 1) continue;
      bool r = std::find(axes.begin(), axes.end(), d) != axes.end();
      if (!red.empty() && red.back() == r) {
        dims.back() *= in[d];
      } else {
        dims.push_back(in[d]);
        red.push_back(r);
      }
    }
    int n = static_cast<int>(dims.size());
    TRAINER_ASSERT(n <= kMaxDims, "rank {} is too high for a reduction", n);
    std::vector<int64_t> stride(n);
    int64_t acc = 1;
    for (int d = n - 1; d >= 0; --d) {
      stride[d] = acc;
      acc *= dims[d];
    }
    int nred = 0;
    for (int d = 0; d < n; ++d) {
      if (red[d]) {
        red_count *= dims[d];
        ++nred;
        if (d == n - 1) {
          run = dims[d];
        } else {
          rdim[nr] = dims[d];
          rstr[nr++] = stride[d];
        }
      } else {
        out_count *= dims[d];
        kdim[nk] = dims[d];
        kstr[nk++] = stride[d];
      }
    }
    if (nred == 0) {
      kind = kCopy;
    } else if (nred == 1 && red[n - 1]) {
      kind = kContiguous;
    } else if (nred == 1) {
      kind = kRows;
      int rd = static_cast<int>(std::find(red.begin(), red.end(), true) - red.begin());
      for (int d = 0; d < rd; ++d) rows_a *= dims[d];
      rows_b = dims[rd];
      for (int d = rd + 1; d < n; ++d) rows_c *= dims[d];
    } else {
      kind = kGeneral;
    }
  }

  int64_t base(int64_t o) const {
    int64_t off = 0;
    for (int d = nk - 1; d >= 0; --d) {
      off += (o % kdim[d]) * kstr[d];
      o /= kdim[d];
    }
    return off;
  }
  // Calls f(offset) for the start of every contiguous run (length `run`) of output o's group, in memory
  // order.
  template <class F>
  void for_each_run(int64_t o, F&& f) const {
    int64_t idx[kMaxDims] = {};
    int64_t off = base(o);
    int64_t runs = red_count / run;
    for (int64_t k = 0; k < runs; ++k) {
      f(off);
      for (int d = nr - 1; d >= 0; --d) {
        off += rstr[d];
        if (++idx[d] < rdim[d]) break;
        off -= rstr[d] * rdim[d];
        idx[d] = 0;
      }
    }
  }
};

template <class T>
struct SumOp {
  static T init() { return T(0); }
  static T combine(T a, T b) { return a + b; }
  static T finish(T a, int64_t) { return a; }
};
template <class T>
struct MeanOp {
  static T init() { return T(0); }
  static T combine(T a, T b) { return a + b; }
  static T finish(T a, int64_t count) {
    return count ? a / static_cast<T>(count) : std::numeric_limits<T>::quiet_NaN();
  }
};
// A NaN propagates, as numpy's max and onnxruntime's ReduceMax do: it replaces any number, and nothing
// replaces it (a comparison with NaN is false).
template <class T>
struct MaxOp {
  static T init() {
    if constexpr (std::numeric_limits<T>::has_infinity)
      return -std::numeric_limits<T>::infinity();
    else
      return std::numeric_limits<T>::lowest();
  }
  static T combine(T a, T b) { return b > a || b != b ? b : a; }
  static T finish(T a, int64_t) { return a; }
};

// Whether x takes the place of m as the maximum found so far in a scan: a greater number, or the first NaN.
template <class T>
bool replaces_max(T x, T m) {
  return x > m || (x != x && m == m);
}

// The maximum of x[0, n) and acc, a NaN winning, eight lanes at a time. GCC's vector extensions spell the
// lanes out: it does not vectorize the scalar form's NaN test (an AVX2 clone runs it as compare and blend).
inline float max_run_f32(const float* x, int64_t n, float acc) {
  typedef float V8 __attribute__((vector_size(32)));
  typedef int32_t I8 __attribute__((vector_size(32)));
  int64_t i = 0;
  if (n >= 16) {
    V8 m;
    std::memcpy(&m, x, sizeof m);
    for (i = 8; i + 8 <= n; i += 8) {
      V8 v;
      std::memcpy(&v, x + i, sizeof v);
      const I8 take = (v > m) | (v != v);
      m = take ? v : m;
    }
    float lanes[8];
    std::memcpy(lanes, &m, sizeof lanes);
    for (float l : lanes) acc = MaxOp<float>::combine(acc, l);
  }
  for (; i < n; ++i) acc = MaxOp<float>::combine(acc, x[i]);
  return acc;
}

// Eight independent partials (combined in a fixed tree) let the compiler vectorize and bound the rounding
// error.
template <class T, class Op>
T reduce_run(const T* x, int64_t n, T acc) {
  if constexpr (std::is_same_v<Op, MaxOp<float>>) return max_run_f32(x, n, acc);
  constexpr int L = 8;
  if (n >= 2 * L) {
    T p[L];
    for (int k = 0; k < L; ++k) p[k] = Op::init();
    int64_t i = 0;
    for (; i + L <= n; i += L)
      for (int k = 0; k < L; ++k) p[k] = Op::combine(p[k], x[i + k]);
    for (; i < n; ++i) p[0] = Op::combine(p[0], x[i]);
    for (int w = L / 2; w > 0; w /= 2)
      for (int k = 0; k < w; ++k) p[k] = Op::combine(p[k], p[k + w]);
    return Op::combine(acc, p[0]);
  }
  for (int64_t i = 0; i < n; ++i) acc = Op::combine(acc, x[i]);
  return acc;
}

// Output r of rows x [rows, n] reduced along n, the rows' loops compiled for the CPU's widest vectors (the
// partials keep their order, so every clone rounds alike).
template <class T, class Op>
TRAINER_CPU_CLONES void reduce_rows(const T* x, T* y, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) y[r] = Op::finish(reduce_run<T, Op>(x + r * n, n, Op::init()), n);
}

// ReduceMaxGrad of rows [rows, n] along n: dy goes to the first maximum (or the first NaN) of each row and
// zeros elsewhere. The maximum is found with vectorized partials, then its first position by a scan.
template <class T>
TRAINER_CPU_CLONES void max_grad_rows(const T* x, const T* dy, T* dx, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r, x += n, dx += n) {
    const T m = reduce_run<T, MaxOp<T>>(x, n, MaxOp<T>::init());
    int64_t at = 0;
    if (m != m) {
      while (at < n && x[at] == x[at]) ++at;
    } else {
      while (at < n && x[at] != m) ++at;
    }
    for (int64_t i = 0; i < n; ++i) dx[i] = T(0);
    if (at < n) dx[at] = dy[r];
  }
}

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(work_per_item, 1));
}

template <template <class> class OpT>
KernelPtr reduce_kernel(const KernelArgs& a, bool floats_only) {
  const Tensor* axes_t = a.has_input(1) ? a.graph.initializer(a.node.inputs[1]) : nullptr;
  ops::ReduceAxes ax = ops::resolve_reduce_axes(a.in(0).shape, a.attrs(), axes_t, a.has_input(1));
  TRAINER_ASSERT(ax.error.empty(), "{}", ax.error);
  if (ax.identity) ax.axes.clear();  // no reduced axis: a copy
  auto g = std::make_shared<ReduceGeom>(a.in(0).shape, ax.axes);
  bool empty_input = a.in(0).shape.numel() == 0;
  KernelPtr kp;
  auto body = [&]<class T>() {
    using Op = OpT<T>;
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    int64_t nout = a.out(0).shape.numel();
    if (empty_input) {
      // Reducing nothing gives the identity (0 for sums, -inf for max, NaN for a mean).
      kp = make_kernel([=](const StepContext&) {
        for (int64_t i = 0; i < nout; ++i) y[i] = Op::finish(Op::init(), 0);
      });
      return;
    }
    switch (g->kind) {
      case ReduceGeom::kCopy:
        kp = make_kernel([=](const StepContext&) { std::memcpy(y, x, nout * sizeof(T)); });
        break;
      case ReduceGeom::kContiguous:
        kp = make_kernel([=](const StepContext&) {
          int64_t r = g->red_count;
          parallel_chunks(
              g->out_count,
              [&](int64_t o0, int64_t o1) { reduce_rows<T, Op>(x + o0 * r, y + o0, o1 - o0, r); },
              grain_for(r));
        });
        break;
      case ReduceGeom::kRows:
        kp = make_kernel([=](const StepContext&) {
          // Work items are (a, block of c); each accumulates rows b into its own output slice.
          constexpr int64_t kCols = 512;
          int64_t A = g->rows_a, B = g->rows_b, C = g->rows_c, blocks = (C + kCols - 1) / kCols;
          parallel_for(
              A * blocks,
              [&](int64_t t) {
                int64_t ia = t / blocks, c0 = (t % blocks) * kCols, c1 = std::min(c0 + kCols, C);
                T* out = y + ia * C;
                const T* in = x + ia * B * C;
                for (int64_t c = c0; c < c1; ++c) out[c] = Op::init();
                for (int64_t b = 0; b < B; ++b)
                  for (int64_t c = c0; c < c1; ++c) out[c] = Op::combine(out[c], in[b * C + c]);
                for (int64_t c = c0; c < c1; ++c) out[c] = Op::finish(out[c], B);
              },
              grain_for(B * std::min(C, kCols)));
        });
        break;
      case ReduceGeom::kGeneral:
        kp = make_kernel([=](const StepContext&) {
          parallel_for(
              g->out_count,
              [&](int64_t o) {
                T acc = Op::init();
                g->for_each_run(o, [&](int64_t off) { acc = reduce_run<T, Op>(x + off, g->run, acc); });
                y[o] = Op::finish(acc, g->red_count);
              },
              grain_for(g->red_count));
        });
        break;
    }
  };
  if (floats_only)
    dispatch_float(a.in(0).dtype, a.node.op.c_str(), body);
  else
    dispatch_numeric(a.in(0).dtype, a.node.op.c_str(), body);
  return kp;
}

// dx = dy at the first maximum of each group (memory order), or at its first NaN (the value ReduceMax gave),
// zero elsewhere.
KernelPtr reduce_max_grad_any(const KernelArgs& a) {
  std::vector<int> axes;
  for (int64_t v : a.attrs().ints("axes")) axes.push_back(normalize_axis(v, a.in(0).shape.rank()));
  auto g = std::make_shared<ReduceGeom>(a.in(0).shape, axes);
  int64_t n = a.in(0).shape.numel();
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "ReduceMaxGrad", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    const T* dy = a.in_ptr<T>(1);
    T* dx = a.out_ptr<T>(0);
    kp = make_kernel([=](const StepContext&) {
      if (n == 0) return;
      parallel_for(n, [&](int64_t i) { dx[i] = T(0); });
      parallel_for(
          g->out_count,
          [&](int64_t o) {
            int64_t best = -1;
            T m = MaxOp<T>::init();
            g->for_each_run(o, [&](int64_t off) {
              for (int64_t i = 0; i < g->run; ++i)
                if (best < 0 || replaces_max(x[off + i], m)) {
                  m = x[off + i];
                  best = off + i;
                }
            });
            dx[best] = dy[o];
          },
          grain_for(g->red_count));
    });
  });
  return kp;
}

// Softmax-family ops work along one axis of [outer, n, inner]. The loops take a block of up to kCols adjacent
// columns (inner indices) at once, so each pass over the axis reads contiguous memory even when the axis is
// not the last one (softmax over the channels of NCHW).
struct AxisGeom {
  static constexpr int64_t kCols = 64;
  int64_t outer = 1, n = 1, inner = 1;
  AxisGeom(const Shape& s, int64_t axis_attr) {
    int axis = normalize_axis(axis_attr, s.rank());
    for (int d = 0; d < axis; ++d) outer *= s[d];
    n = s.rank() ? s[axis] : 1;
    for (int d = axis + 1; d < s.rank(); ++d) inner *= s[d];
  }
  int64_t blocks_per_outer() const { return (inner + kCols - 1) / kCols; }
  int64_t blocks() const { return outer * blocks_per_outer(); }
  // Offset of block b's first element and its width.
  int64_t start(int64_t b) const {
    return (b / blocks_per_outer()) * n * inner + (b % blocks_per_outer()) * kCols;
  }
  int64_t width(int64_t b) const { return std::min(kCols, inner - (b % blocks_per_outer()) * kCols); }
};

// ReduceMaxGrad over one axis, [outer, n, inner]: the first maximum of each column found kCols columns at a
// time, so every pass over the axis reads contiguous memory (the general loop strides through it one element
// at a time). Same choice of position as reduce_max_grad_any: the first NaN, else the first of equal
// maxima.
KernelPtr reduce_max_grad(const KernelArgs& a) {
  const auto& axes = a.attrs().ints("axes");
  if (axes.size() != 1) return reduce_max_grad_any(a);
  const AxisGeom geo(a.in(0).shape, axes[0]);
  const int64_t total = a.in(0).shape.numel();
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, "ReduceMaxGrad", [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    const T* dy = a.in_ptr<T>(1);
    T* dx = a.out_ptr<T>(0);
    if (geo.inner == 1) {  // along the last axis (global max pooling of NCW): whole rows
      kp = make_kernel([=](const StepContext&) {
        if (total == 0) return;
        parallel_chunks(
            geo.outer,
            [&](int64_t r0, int64_t r1) {
              max_grad_rows<T>(x + r0 * geo.n, dy + r0, dx + r0 * geo.n, r1 - r0, geo.n);
            },
            grain_for(2 * geo.n));
      });
      return;
    }
    kp = make_kernel([=](const StepContext&) {
      if (total == 0) return;
      parallel_for(total, [&](int64_t i) { dx[i] = T(0); });
      parallel_for(
          geo.blocks(),
          [&](int64_t b) {
            const int64_t start = geo.start(b), w = geo.width(b), o = b / geo.blocks_per_outer();
            const int64_t c0 = (b % geo.blocks_per_outer()) * AxisGeom::kCols;
            T m[AxisGeom::kCols];
            int64_t at[AxisGeom::kCols];
            for (int64_t c = 0; c < w; ++c) {
              m[c] = x[start + c];
              at[c] = 0;
            }
            for (int64_t i = 1; i < geo.n; ++i) {
              const T* row = x + start + i * geo.inner;
              for (int64_t c = 0; c < w; ++c)
                if (replaces_max(row[c], m[c])) {
                  m[c] = row[c];
                  at[c] = i;
                }
            }
            for (int64_t c = 0; c < w; ++c) dx[start + at[c] * geo.inner + c] = dy[o * geo.inner + c0 + c];
          },
          std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(geo.n * AxisGeom::kCols, 1)));
    });
  });
  return kp;
}

// Element (i, c) of a block is at p[i * stride + c].
template <class T, bool kLog>
void softmax_block(const T* x, T* y, int64_t n, int64_t stride, int64_t w) {
  T m[AxisGeom::kCols], s[AxisGeom::kCols];
  for (int64_t c = 0; c < w; ++c) {
    m[c] = x[c];
    s[c] = 0;
  }
  for (int64_t i = 1; i < n; ++i) {
    const T* r = x + i * stride;
    for (int64_t c = 0; c < w; ++c) m[c] = r[c] > m[c] ? r[c] : m[c];
  }
  if constexpr (kLog) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < w; ++c) s[c] += std::exp(x[i * stride + c] - m[c]);
    for (int64_t c = 0; c < w; ++c) s[c] = m[c] + std::log(s[c]);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < w; ++c) y[i * stride + c] = x[i * stride + c] - s[c];
  } else {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < w; ++c) {
        T e = std::exp(x[i * stride + c] - m[c]);
        y[i * stride + c] = e;
        s[c] += e;
      }
    for (int64_t c = 0; c < w; ++c) s[c] = T(1) / s[c];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < w; ++c) y[i * stride + c] *= s[c];
  }
}

// Softmax: dx = y * (dy - sum(dy * y)); LogSoftmax: dx = dy - exp(y) * sum(dy). dx may alias dy: each element
// of dy is read before its dx is written.
template <class T, bool kLog>
void softmax_grad_block(const T* dy, const T* y, T* dx, int64_t n, int64_t stride, int64_t w) {
  T acc[AxisGeom::kCols];
  for (int64_t c = 0; c < w; ++c) acc[c] = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < w; ++c) {
      int64_t k = i * stride + c;
      if constexpr (kLog)
        acc[c] += dy[k];
      else
        acc[c] += dy[k] * y[k];
    }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < w; ++c) {
      int64_t k = i * stride + c;
      if constexpr (kLog)
        dx[k] = dy[k] - std::exp(y[k]) * acc[c];
      else
        dx[k] = y[k] * (dy[k] - acc[c]);
    }
}

// The gradient along the last axis, one row at a time. Sixteen partial sums, added in a fixed tree, let the
// loops vectorize at any width with the same rounding on every CPU. oneDNN 2.6's softmax backward has no
// vectorized kernel without AVX-512: its reference loop took 8x the forward's time on an AVX2 machine.
template <class T, bool kLog>
TRAINER_CPU_CLONES void softmax_grad_rows(const T* dy, const T* y, T* dx, int64_t rows, int64_t n) {
  constexpr int L = 16;
  for (int64_t r = 0; r < rows; ++r, dy += n, y += n, dx += n) {
    T p[L] = {};
    int64_t i = 0;
    for (; i + L <= n; i += L)
      for (int k = 0; k < L; ++k) p[k] += kLog ? dy[i + k] : dy[i + k] * y[i + k];
    for (; i < n; ++i) p[0] += kLog ? dy[i] : dy[i] * y[i];
    for (int w = L / 2; w > 0; w /= 2)
      for (int k = 0; k < w; ++k) p[k] += p[k + w];
    const T acc = p[0];
    if constexpr (!kLog) {
      for (int64_t j = 0; j < n; ++j) dx[j] = y[j] * (dy[j] - acc);
    } else if constexpr (std::is_same_v<T, float>) {
      for (int64_t j = 0; j < n; ++j) dx[j] = dy[j] - exp_clamped(y[j]) * acc;
    } else {
      for (int64_t j = 0; j < n; ++j) dx[j] = dy[j] - std::exp(y[j]) * acc;
    }
  }
}

// The forward f32 along the last axis goes to oneDNN (vectorized exp). oneDNN 2.6 falls back to a slow
// reference kernel for any other axis, so those, and f64 (gradient checks), take the blocked loops.
bool use_dnnl_softmax(const KernelArgs& a, const AxisGeom& g) {
  return a.in(0).dtype == DType::f32 && g.inner == 1 && a.in(0).shape.numel() > 0;
}

dnnl::memory::desc softmax_md(const AxisGeom& g) {
  return dnnl_plain_md({g.outer, g.n, g.inner}, DType::f32);
}

// Softmax over fewer elements than this runs on the calling thread (a classifier's [64, 10] output).
inline constexpr int64_t kSerialSoftmax = int64_t{1} << 14;

template <class Fwd>
KernelPtr dnnl_softmax(const KernelArgs& a, const AxisGeom& g) {
  dnnl::memory::desc md = softmax_md(g);
  const bool serial = a.in(0).shape.numel() <= kSerialSoftmax;
  std::optional<SerialScope> one;
  if (serial) one.emplace();
  typename Fwd::primitive_desc pd(typename Fwd::desc(dnnl::prop_kind::forward_training, md, 1), dnnl_attr(),
                                  dnnl_cpu_engine());
  auto call = std::make_shared<DnnlCall>(
      Fwd(pd), pd,
      std::vector<std::pair<int, dnnl::memory>>{{DNNL_ARG_SRC, dnnl_mem(md, a.inputs[0])},
                                                {DNNL_ARG_DST, dnnl_mem(md, a.outputs[0])}},
      serial);
  return make_kernel([call](const StepContext&) { (*call)(); });
}

template <bool kLog>
KernelPtr softmax(const KernelArgs& a) {
  AxisGeom g(a.in(0).shape, a.attrs().i("axis"));
  if (use_dnnl_softmax(a, g)) {
    if constexpr (kLog)
      return dnnl_softmax<dnnl::logsoftmax_forward>(a, g);
    else
      return dnnl_softmax<dnnl::softmax_forward>(a, g);
  }
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
    const T* x = a.in_ptr<T>(0);
    T* y = a.out_ptr<T>(0);
    kp = make_kernel([=](const StepContext&) {
      if (g.n == 0) return;
      parallel_for(
          g.blocks(),
          [&](int64_t b) {
            int64_t s = g.start(b);
            softmax_block<T, kLog>(x + s, y + s, g.n, g.inner, g.width(b));
          },
          grain_for(3 * g.n * std::min(g.inner, AxisGeom::kCols)));
    });
  });
  return kp;
}

template <bool kLog>
KernelPtr softmax_grad(const KernelArgs& a) {
  AxisGeom g(a.in(0).shape, a.attrs().i("axis"));
  KernelPtr kp;
  dispatch_float(a.in(0).dtype, a.node.op.c_str(), [&]<class T>() {
    const T* dy = a.in_ptr<T>(0);
    const T* y = a.in_ptr<T>(1);
    T* dx = a.out_ptr<T>(0);
    if (g.inner == 1) {
      // Rows in chunks, one chunk per thread; dx may alias dy (a row's dy is read before it is written).
      kp = make_kernel([=](const StepContext&) {
        parallel_chunks(
            g.outer,
            [&](int64_t r0, int64_t r1) {
              softmax_grad_rows<T, kLog>(dy + r0 * g.n, y + r0 * g.n, dx + r0 * g.n, r1 - r0, g.n);
            },
            grain_for(2 * g.n));
      });
      return;
    }
    kp = make_kernel([=](const StepContext&) {
      parallel_for(
          g.blocks(),
          [&](int64_t b) {
            int64_t s = g.start(b);
            softmax_grad_block<T, kLog>(dy + s, y + s, dx + s, g.n, g.inner, g.width(b));
          },
          grain_for(2 * g.n * std::min(g.inner, AxisGeom::kCols)));
    });
  });
  return kp;
}

}  // namespace

void register_reduce_cpu_kernels(KernelRegistry& r) {
  r.add("ReduceSum", [](const KernelArgs& a) { return reduce_kernel<SumOp>(a, false); });
  r.add("ReduceMean", [](const KernelArgs& a) { return reduce_kernel<MeanOp>(a, true); });
  r.add("ReduceMax", [](const KernelArgs& a) { return reduce_kernel<MaxOp>(a, false); });
  r.add("ReduceMaxGrad", reduce_max_grad);
  r.add("Softmax", softmax<false>);
  r.add("LogSoftmax", softmax<true>);
  r.add("SoftmaxGrad", softmax_grad<false>);
  r.add("LogSoftmaxGrad", softmax_grad<true>);
}

}  // namespace trainer::engine::cpu
