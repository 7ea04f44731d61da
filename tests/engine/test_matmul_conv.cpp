// Forward values of the matmul and conv families on the CPU backend (f32 through oneDNN, f64 through the
// loops) against naive reference loops written here, including strided, padded, dilated and grouped
// convolutions, the gradient ops, bf16 against f32 on the same inputs, and zero-allocation checks.
#include <doctest/doctest.h>
#include <malloc.h>

#include <cmath>
#include <limits>

#include "alloc_counter.h"
#include "cpu_features.h"
#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;
using V = std::vector<int64_t>;

namespace {

// Runs one node with every input fed, and returns its outputs.
std::vector<Tensor> run_op(const std::string& op, const std::vector<Tensor>& inputs, Attributes attrs = {},
                           int num_outputs = 1) {
  auto g = std::make_shared<Graph>();
  std::vector<ValueId> in;
  for (size_t i = 0; i < inputs.size(); ++i)
    in.push_back(g->add_input("in" + std::to_string(i), inputs[i].dtype(), inputs[i].shape()));
  NodeId n = g->add_node(op, in, std::move(attrs), num_outputs, "op");
  std::vector<ValueId> outs = g->node(n).outputs;
  for (ValueId o : outs) g->mark_output(o);
  auto backend = make_cpu_backend();
  Session sess(g, *backend);
  for (size_t i = 0; i < in.size(); ++i) sess.write(in[i], inputs[i]);
  sess.run({});
  std::vector<Tensor> r;
  for (ValueId o : outs) r.push_back(sess.read(o));
  return r;
}

Tensor rnd(const Shape& s, uint64_t seed, DType t) {
  return ops::random_tensor(s, -1, 1, seed, t);
}

// Error relative to the reference value, or to the tensor's root-mean-square value (at least 1) for elements
// that are sums cancelling to much less than their neighbours: f32 rounding scales with the terms, not with
// the result.
void check_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  REQUIRE_MESSAGE(got.shape() == ref.shape(),
                  what << ": shape " << got.shape().str() << " vs " << ref.shape().str());
  double sq = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) sq += ref.get_f64(i) * ref.get_f64(i);
  double scale = std::max(1.0, std::sqrt(sq / static_cast<double>(std::max<int64_t>(1, ref.numel()))));
  double worst = 0;
  int64_t at = -1;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    double e = std::fabs(got.get_f64(i) - ref.get_f64(i)) / std::max(scale, std::fabs(ref.get_f64(i)));
    if (!(e <= worst)) {
      worst = e;
      at = i;
    }
  }
  CHECK_MESSAGE(worst <= tol, what << ": element " << at << " is " << (at >= 0 ? got.get_f64(at) : 0)
                                   << ", reference " << (at >= 0 ? ref.get_f64(at) : 0));
}

// ---- matmul references ----

// numpy matmul of a and b with optional transposes of the last two dims, times alpha.
Tensor ref_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb, double alpha = 1) {
  Shape sa = a.shape(), sb = b.shape();
  bool av = sa.rank() == 1, bv = sb.rank() == 1;
  if (av) sa = Shape{1, sa[0]};
  if (bv) sb = Shape{sb[0], 1};
  int ra = sa.rank(), rb = sb.rank();
  int64_t m = ta ? sa[ra - 1] : sa[ra - 2], k = ta ? sa[ra - 2] : sa[ra - 1],
          n = tb ? sb[rb - 2] : sb[rb - 1];
  Shape ba(V(sa.dims().begin(), sa.dims().end() - 2)), bb(V(sb.dims().begin(), sb.dims().end() - 2)), batch;
  REQUIRE(broadcast_shapes(ba, bb, &batch));
  V sta = broadcast_strides(ba, batch), stb = broadcast_strides(bb, batch);
  V od = batch.dims();
  if (!av) od.push_back(m);
  if (!bv) od.push_back(n);
  Tensor y(a.dtype(), Shape(od));
  int64_t r = batch.rank();
  for (int64_t f = 0; f < batch.numel(); ++f) {
    int64_t rest = f, oa = 0, ob = 0;
    for (int64_t d = r - 1; d >= 0; --d) {
      int64_t idx = rest % batch[d];
      rest /= batch[d];
      oa += idx * sta[d];
      ob += idx * stb[d];
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) {
          double av_ = a.get_f64(oa * m * k + (ta ? p * m + i : i * k + p));
          double bv_ = b.get_f64(ob * k * n + (tb ? j * k + p : p * n + j));
          s += av_ * bv_;
        }
        y.set_f64((f * m + i) * n + j, alpha * s);
      }
  }
  return y;
}

// ---- window references (2-D; 1-D cases run as height 1) ----

struct Win {
  int64_t kh, kw, sh = 1, sw = 1, dh = 1, dw = 1, pt = 0, pl = 0, pb = 0, pr = 0;
  int64_t out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0, int64_t p1) const {
    return (in + p0 + p1 - d * (k - 1) - 1) / s + 1;
  }
};

Tensor ref_conv(const Tensor& x, const Tensor& w, const Tensor* b, int64_t group, const Win& p) {
  int64_t n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
  int64_t m = w.shape()[0], cg = c / group, mg = m / group;
  int64_t oh = p.out(h, p.kh, p.sh, p.dh, p.pt, p.pb), ow = p.out(wd, p.kw, p.sw, p.dw, p.pl, p.pr);
  Tensor y(x.dtype(), Shape{n, m, oh, ow});
  for (int64_t ni = 0; ni < n; ++ni)
    for (int64_t mi = 0; mi < m; ++mi)
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          double s = b ? b->get_f64(mi) : 0;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t ky = 0; ky < p.kh; ++ky)
              for (int64_t kx = 0; kx < p.kw; ++kx) {
                int64_t iy = oy * p.sh - p.pt + ky * p.dh, ix = ox * p.sw - p.pl + kx * p.dw;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                int64_t cin = (mi / mg) * cg + ci;
                s += x.get_f64(((ni * c + cin) * h + iy) * wd + ix) *
                     w.get_f64(((mi * cg + ci) * p.kh + ky) * p.kw + kx);
              }
          y.set_f64(((ni * m + mi) * oh + oy) * ow + ox, s);
        }
  return y;
}

// dx and dW (+ dB) of ref_conv for a given dy, by scattering every product of the forward sum.
void ref_conv_grads(const Tensor& x, const Tensor& w, const Tensor& dy, int64_t group, const Win& p,
                    Tensor* dx, Tensor* dw, Tensor* db) {
  int64_t n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
  int64_t m = w.shape()[0], cg = c / group, mg = m / group, oh = dy.shape()[2], ow = dy.shape()[3];
  *dx = Tensor(x.dtype(), x.shape());
  *dw = Tensor(x.dtype(), w.shape());
  *db = Tensor(x.dtype(), Shape{m});
  for (int64_t ni = 0; ni < n; ++ni)
    for (int64_t mi = 0; mi < m; ++mi)
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          double d = dy.get_f64(((ni * m + mi) * oh + oy) * ow + ox);
          db->set_f64(mi, db->get_f64(mi) + d);
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t ky = 0; ky < p.kh; ++ky)
              for (int64_t kx = 0; kx < p.kw; ++kx) {
                int64_t iy = oy * p.sh - p.pt + ky * p.dh, ix = ox * p.sw - p.pl + kx * p.dw;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                int64_t xi = ((ni * c + (mi / mg) * cg + ci) * h + iy) * wd + ix;
                int64_t wi = ((mi * cg + ci) * p.kh + ky) * p.kw + kx;
                dx->set_f64(xi, dx->get_f64(xi) + d * w.get_f64(wi));
                dw->set_f64(wi, dw->get_f64(wi) + d * x.get_f64(xi));
              }
        }
}

enum class Pool { max, avg_exclude, avg_include };

// Pooling with explicit output size (oh, ow); windows past the input (ceil_mode) see nothing. The include-pad
// divisor counts the taps inside the explicitly padded input.
Tensor ref_pool(const Tensor& x, Pool kind, const Win& p, int64_t oh, int64_t ow) {
  int64_t n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
  Tensor y(x.dtype(), Shape{n, c, oh, ow});
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        double best = -std::numeric_limits<double>::infinity(), sum = 0;
        int64_t inside = 0, padded = 0;
        for (int64_t ky = 0; ky < p.kh; ++ky)
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            int64_t iy = oy * p.sh - p.pt + ky * p.dh, ix = ox * p.sw - p.pl + kx * p.dw;
            if (iy >= -p.pt && iy < h + p.pb && ix >= -p.pl && ix < wd + p.pr) ++padded;
            if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
            double v = x.get_f64((pl * h + iy) * wd + ix);
            best = std::max(best, v);
            sum += v;
            ++inside;
          }
        double r =
            kind == Pool::max ? best : sum / static_cast<double>(kind == Pool::avg_include ? padded : inside);
        y.set_f64((pl * oh + oy) * ow + ox, r);
      }
  return y;
}

Tensor reshaped(const Tensor& t, Shape s) {
  return t.reshaped(std::move(s));
}

// ---- bf16 ----

// Runs `op` on bf16 inputs and, as the reference, on the same values in f32 (every bf16 is exact in f32),
// and checks each output: bf16, and within `tol` of the f32 result relative to the output's largest
// magnitude. Rounding a result to bf16 alone costs up to 2^-9 of it; the f32 accumulation order differs
// too, far less.
void check_bf16_op(const std::string& op, const std::vector<Tensor>& bf16_inputs, const Attributes& attrs,
                   int num_outputs, const std::string& what, double tol = 1e-2) {
  std::vector<Tensor> f32_inputs;
  for (const Tensor& t : bf16_inputs) {
    REQUIRE(t.dtype() == DType::bf16);
    f32_inputs.push_back(t.cast(DType::f32));
  }
  std::vector<Tensor> got = run_op(op, bf16_inputs, attrs, num_outputs);
  std::vector<Tensor> ref = run_op(op, f32_inputs, attrs, num_outputs);
  REQUIRE(got.size() == ref.size());
  for (size_t o = 0; o < got.size(); ++o) {
    std::string out = fmt::format("{} bf16 {} output {}", op, what, o);
    REQUIRE_MESSAGE(got[o].dtype() == DType::bf16, out << ": dtype " << dtype_name(got[o].dtype()));
    REQUIRE_MESSAGE(got[o].shape() == ref[o].shape(), out << ": shape " << got[o].shape().str());
    double scale = 0, worst = 0;
    int64_t at = -1;
    for (int64_t i = 0; i < ref[o].numel(); ++i) scale = std::max(scale, std::fabs(ref[o].get_f64(i)));
    REQUIRE_MESSAGE(scale > 0, out << ": the reference is all zeros");
    for (int64_t i = 0; i < ref[o].numel(); ++i) {
      double e = std::fabs(got[o].get_f64(i) - ref[o].get_f64(i)) / scale;
      if (!(e <= worst)) {
        worst = e;
        at = i;
      }
    }
    CHECK_MESSAGE(worst <= tol, out << ": element " << at << " is " << (at >= 0 ? got[o].get_f64(at) : 0)
                                    << ", f32 gives " << (at >= 0 ? ref[o].get_f64(at) : 0) << " (max "
                                    << scale << ")");
  }
}

Tensor rnd_bf16(const Shape& s, uint64_t seed) {
  return rnd(s, seed, DType::bf16);
}

}  // namespace

TEST_SUITE("matmul_conv") {
  TEST_CASE("MatMul and MatMulTransposed match numpy semantics") {
    struct Case {
      Shape a, b;
      bool ta = false, tb = false;
    };
    std::vector<Case> cases = {{{3, 4}, {4, 5}},
                               {{2, 3, 4}, {2, 4, 5}},
                               {{2, 1, 3, 4}, {3, 4, 2}},
                               {{2, 3, 4}, {4, 5}},
                               {{3, 4}, {2, 4, 5}},
                               {{4}, {4, 3}},
                               {{2, 3, 4}, {4}},
                               {{4}, {4}},
                               {{64, 784}, {784, 1024}},
                               {{7, 33}, {33, 65}},
                               {{4, 3}, {4, 5}, true, false},
                               {{3, 4}, {5, 4}, false, true},
                               {{2, 4, 3}, {1, 5, 4}, true, true}};
    uint64_t seed = 1;
    for (const Case& c : cases) {
      for (DType t : {DType::f32, DType::f64}) {
        Tensor a = rnd(c.a, seed++, t), b = rnd(c.b, seed++, t);
        bool transposed = c.ta || c.tb;
        std::string what = fmt::format("{} {} x {} {}{}", dtype_name(t), c.a.str(), c.b.str(),
                                       c.ta ? "T" : "", c.tb ? "T" : "");
        Tensor y = transposed
                       ? run_op("MatMulTransposed", {a, b},
                                {{"transA", int64_t{c.ta}}, {"transB", int64_t{c.tb}}, {"alpha", 0.5f}})[0]
                       : run_op("MatMul", {a, b})[0];
        check_close(y, ref_matmul(a, b, c.ta, c.tb, transposed ? 0.5 : 1.0), 1e-4, what);
      }
    }
  }

  TEST_CASE("Gemm: transposes, alpha, beta and every broadcast of C") {
    struct Case {
      Shape a, b, c;
      bool ta, tb;
      float alpha, beta;
    };
    std::vector<Case> cases = {
        {{5, 6}, {6, 7}, {7}, false, false, 1, 1},          {{5, 6}, {6, 7}, {5, 1}, false, false, 1, 1},
        {{5, 6}, {6, 7}, {5, 7}, false, false, 1, 1},       {{5, 6}, {6, 7}, {}, false, false, 1, 1},
        {{6, 5}, {7, 6}, {1, 7}, true, true, 0.5, 2},       {{5, 6}, {7, 6}, {5, 7}, false, true, 1, -0.5},
        {{6, 5}, {6, 7}, {5, 1}, true, false, 1.5, 1},      {{5, 6}, {6, 7}, {0}, false, false, 2, 0},
        {{64, 784}, {1024, 784}, {1024}, false, true, 1, 1}};
    uint64_t seed = 100;
    for (const Case& c : cases) {
      for (DType t : {DType::f32, DType::f64}) {
        Tensor a = rnd(c.a, seed++, t), b = rnd(c.b, seed++, t);
        bool has_c = c.c.rank() == 0 || c.c[0] != 0;
        Tensor cc = has_c ? rnd(c.c, seed++, t) : Tensor();
        std::vector<Tensor> in = {a, b};
        if (has_c) in.push_back(cc);
        Tensor y = run_op(
            "Gemm", in,
            {{"transA", int64_t{c.ta}}, {"transB", int64_t{c.tb}}, {"alpha", c.alpha}, {"beta", c.beta}})[0];
        Tensor ref = ref_matmul(a, b, c.ta, c.tb, c.alpha);
        if (has_c) {
          V st = broadcast_strides(cc.shape(), ref.shape());
          for (int64_t i = 0; i < ref.shape()[0]; ++i)
            for (int64_t j = 0; j < ref.shape()[1]; ++j) {
              int64_t o = i * ref.shape()[1] + j;
              ref.set_f64(o, ref.get_f64(o) + c.beta * cc.get_f64(i * st[0] + j * st[1]));
            }
        }
        check_close(y, ref, 1e-4,
                    fmt::format("{} Gemm {} {} C {}", dtype_name(t), c.a.str(), c.b.str(), c.c.str()));
      }
    }
  }

  TEST_CASE("FusedGemm: bias and activation epilogues, with and without the saved pre-activation") {
    auto act_ref = [](const std::string& act, double z) {
      if (act == "relu") return z > 0 ? z : 0.0;
      if (act == "gelu") return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
      if (act == "gelu_tanh")
        return 0.5 * z * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z)));
      return z;
    };
    uint64_t seed = 200;
    for (std::string act : {"none", "relu", "gelu", "gelu_tanh"})
      for (bool tb : {false, true})
        for (int outputs : {1, 2})
          for (DType t : {DType::f32, DType::f64}) {
            Shape sa{2, 9, 17}, sb = tb ? Shape{33, 17} : Shape{17, 33};
            Tensor a = rnd(sa, seed++, t), b = rnd(sb, seed++, t), bias = rnd({33}, seed++, t);
            auto y =
                run_op("FusedGemm", {a, b, bias}, {{"transB", int64_t{tb}}, {"activation", act}}, outputs);
            Tensor z = ref_matmul(a.reshaped({18, 17}), b, false, tb).reshaped({2, 9, 33});
            for (int64_t i = 0; i < z.numel(); ++i) z.set_f64(i, z.get_f64(i) + bias.get_f64(i % 33));
            Tensor ry = z;
            for (int64_t i = 0; i < z.numel(); ++i) ry.set_f64(i, act_ref(act, z.get_f64(i)));
            std::string what =
                fmt::format("{} FusedGemm {} transB={} outputs={}", dtype_name(t), act, tb, outputs);
            check_close(y[0], ry, 1e-4, what);
            if (outputs == 2) check_close(y[1], z, 1e-4, what + " (pre-activation)");
          }
  }

  TEST_CASE("Conv: strides, pads, dilations, groups and auto_pad against reference loops") {
    struct Case {
      std::string label;
      Shape x, w;
      int64_t group;
      Win p;             // explicit geometry for the reference
      Attributes attrs;  // what the op gets
      bool bias;
    };
    std::vector<Case> cases = {
        {"3x3 pads 1",
         {2, 3, 9, 9},
         {8, 3, 3, 3},
         1,
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         {{"pads", V{1, 1, 1, 1}}},
         true},
        {"strides 2, asymmetric pads",
         {2, 3, 9, 8},
         {4, 3, 3, 2},
         1,
         {3, 2, 2, 2, 1, 1, 0, 1, 1, 0},
         {{"strides", V{2, 2}}, {"pads", V{0, 1, 1, 0}}},
         false},
        {"dilations 2x3", {2, 3, 9, 9}, {4, 3, 3, 2}, 1, {3, 2, 1, 1, 2, 3}, {{"dilations", V{2, 3}}}, true},
        {"depthwise",
         {2, 6, 8, 8},
         {6, 1, 3, 3},
         6,
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         {{"group", int64_t{6}}, {"pads", V{1, 1, 1, 1}}},
         true},
        {"group 2, strides 1x2, dilation",
         {2, 4, 9, 9},
         {6, 2, 3, 3},
         2,
         {3, 3, 1, 2, 2, 1},
         {{"group", int64_t{2}}, {"strides", V{1, 2}}, {"dilations", V{2, 1}}},
         true},
        // 9 with stride 2: out 5, total pad (5-1)*2+3-9 = 2 -> 1/1; kernel 2: total 1 -> upper 0/1, lower
        // 1/0.
        {"SAME_UPPER",
         {2, 3, 9, 9},
         {4, 3, 2, 3},
         1,
         {2, 3, 2, 2, 1, 1, 0, 1, 1, 1},
         {{"auto_pad", std::string("SAME_UPPER")}, {"strides", V{2, 2}}},
         false},
        {"SAME_LOWER",
         {2, 3, 9, 9},
         {4, 3, 2, 3},
         1,
         {2, 3, 2, 2, 1, 1, 1, 1, 0, 1},
         {{"auto_pad", std::string("SAME_LOWER")}, {"strides", V{2, 2}}},
         false},
        {"VALID",
         {2, 3, 9, 9},
         {4, 3, 3, 3},
         1,
         {3, 3, 2, 1},
         {{"auto_pad", std::string("VALID")}, {"strides", V{2, 1}}},
         true},
        // Enough input channels for oneDNN's blocked layouts in every pass (reorders around the primitives).
        {"16 channels, strides 2",
         {2, 16, 9, 9},
         {8, 16, 3, 3},
         1,
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 1},
         {{"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}},
         true},
        {"2 groups of 8 channels",
         {2, 16, 7, 7},
         {32, 8, 3, 3},
         2,
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         {{"group", int64_t{2}}, {"pads", V{1, 1, 1, 1}}},
         true},
        {"MNIST first layer", {64, 1, 28, 28}, {32, 1, 3, 3}, 1, {3, 3}, {}, true},
        {"CIFAR first layer",
         {16, 3, 32, 32},
         {32, 3, 3, 3},
         1,
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         {{"pads", V{1, 1, 1, 1}}},
         true},
    };
    uint64_t seed = 300;
    for (const Case& c : cases)
      for (DType t : {DType::f32, DType::f64}) {
        Tensor x = rnd(c.x, seed++, t), w = rnd(c.w, seed++, t), b = rnd({c.w[0]}, seed++, t);
        std::vector<Tensor> in = {x, w};
        if (c.bias) in.push_back(b);
        Attributes attrs = c.attrs;
        if (c.group != 1) attrs.set("group", c.group);
        Tensor y = run_op("Conv", in, attrs)[0];
        Tensor ref = ref_conv(x, w, c.bias ? &b : nullptr, c.group, c.p);
        std::string what = fmt::format("{} Conv {}", dtype_name(t), c.label);
        check_close(y, ref, 1e-4, what);

        // The gradient ops, fed the resolved geometry as conv's gradient rule does.
        Tensor dy = rnd(ref.shape(), seed++, t);
        Tensor rdx, rdw, rdb;
        ref_conv_grads(x, w, dy, c.group, c.p, &rdx, &rdw, &rdb);
        Attributes ga = {{"kernel_shape", V{c.p.kh, c.p.kw}},
                         {"strides", V{c.p.sh, c.p.sw}},
                         {"dilations", V{c.p.dh, c.p.dw}},
                         {"pads", V{c.p.pt, c.p.pl, c.p.pb, c.p.pr}},
                         {"group", c.group}};
        Attributes gi = ga;
        gi.set("input_shape", c.x.dims());
        check_close(run_op("ConvGradInput", {dy, w}, gi)[0], rdx, 1e-4, what + " ConvGradInput");
        auto gw = run_op("ConvGradWeight", {dy, x}, ga, 2);
        check_close(gw[0], rdw, 1e-4, what + " ConvGradWeight dW");
        check_close(gw[1], rdb, 1e-4, what + " ConvGradWeight dB");
      }
  }

  TEST_CASE("Conv: 1-D data runs as height 1") {
    for (DType t : {DType::f32, DType::f64}) {
      Tensor x = rnd({2, 3, 11}, 1, t), w = rnd({4, 3, 3}, 2, t), b = rnd({4}, 3, t);
      Tensor y = run_op("Conv", {x, w, b}, {{"strides", V{2}}, {"pads", V{1, 2}}, {"dilations", V{2}}})[0];
      Win p{1, 3, 1, 2, 1, 2, 0, 1, 0, 2};
      Tensor ref = ref_conv(reshaped(x, {2, 3, 1, 11}), reshaped(w, {4, 3, 1, 3}), &b, 1, p);
      check_close(y, reshaped(ref, {2, 4, ref.shape()[3]}), 1e-4, fmt::format("{} Conv 1-D", dtype_name(t)));
    }
  }

  TEST_CASE("MaxPool and AveragePool: pads, strides, dilations, ceil_mode, count_include_pad") {
    struct Case {
      std::string label;
      Shape x;
      Win p;
      int64_t oh, ow;
      Attributes attrs;
    };
    std::vector<Case> cases = {
        {"2x2 strides 2",
         {2, 3, 9, 9},
         {2, 2, 2, 2},
         4,
         4,
         {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}}},
        {"3x3 strides 2 pads 1",
         {2, 3, 9, 9},
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 1},
         5,
         5,
         {{"kernel_shape", V{3, 3}}, {"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}}},
        // 9 wide, kernel 2, stride 2, ceil: 5 windows, the last one half outside.
        {"ceil_mode",
         {2, 3, 9, 9},
         {2, 2, 2, 2},
         5,
         5,
         {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"ceil_mode", int64_t{1}}}},
        {"dilations 2, asymmetric pads",
         {2, 3, 9, 9},
         {2, 3, 1, 1, 2, 2, 1, 0, 0, 1},
         8,
         6,
         {{"kernel_shape", V{2, 3}}, {"dilations", V{2, 2}}, {"pads", V{1, 0, 0, 1}}}},
        {"SAME_UPPER strides 2",
         {2, 3, 9, 9},
         {2, 2, 2, 2, 1, 1, 0, 0, 1, 1},
         5,
         5,
         {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"auto_pad", std::string("SAME_UPPER")}}},
        {"CNN pool",
         {64, 32, 26, 26},
         {2, 2, 2, 2},
         13,
         13,
         {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}}},
    };
    uint64_t seed = 400;
    for (const Case& c : cases)
      for (DType t : {DType::f32, DType::f64}) {
        Tensor x = rnd(c.x, seed++, t);
        std::string what = fmt::format("{} {}", dtype_name(t), c.label);
        Tensor ymax = run_op("MaxPool", {x}, c.attrs)[0];
        check_close(ymax, ref_pool(x, Pool::max, c.p, c.oh, c.ow), 1e-6, what + " MaxPool");
        for (int64_t include : {0, 1}) {
          Attributes a = c.attrs;
          a.set("count_include_pad", include);
          Tensor y = run_op("AveragePool", {x}, a)[0];
          check_close(y, ref_pool(x, include ? Pool::avg_include : Pool::avg_exclude, c.p, c.oh, c.ow), 1e-5,
                      what + (include ? " AveragePool count_include_pad" : " AveragePool"));
        }
      }
    // ceil_mode windows past the explicit padding: the divisor stops at the padding (loops, not oneDNN).
    for (DType t : {DType::f32, DType::f64}) {
      Tensor x = rnd({2, 3, 6, 6}, 7, t);
      Tensor y = run_op("AveragePool", {x},
                        {{"kernel_shape", V{3, 3}},
                         {"strides", V{2, 2}},
                         {"pads", V{1, 1, 1, 1}},
                         {"ceil_mode", int64_t{1}},
                         {"count_include_pad", int64_t{1}}})[0];
      check_close(y, ref_pool(x, Pool::avg_include, {3, 3, 2, 2, 1, 1, 1, 1, 1, 1}, 4, 4), 1e-5,
                  fmt::format("{} AveragePool ceil_mode count_include_pad", dtype_name(t)));
    }
  }

  TEST_CASE("pooling gradients route dy to the maximum, or spread it over the window") {
    for (DType t : {DType::f32, DType::f64}) {
      Tensor x = rnd({2, 3, 7, 7}, 11, t);
      Attributes a = {{"kernel_shape", V{3, 3}}, {"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}};
      Tensor dy = rnd({2, 3, 4, 4}, 12, t);
      // MaxPool: the reference finds each window's maximum and adds dy there.
      Tensor dx = run_op("MaxPoolGrad", {dy, x}, a)[0];
      Tensor ref(t, x.shape());
      for (int64_t pl = 0; pl < 6; ++pl)
        for (int64_t oy = 0; oy < 4; ++oy)
          for (int64_t ox = 0; ox < 4; ++ox) {
            int64_t arg = -1;
            for (int64_t ky = 0; ky < 3; ++ky)
              for (int64_t kx = 0; kx < 3; ++kx) {
                int64_t iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx;
                if (iy < 0 || iy >= 7 || ix < 0 || ix >= 7) continue;
                int64_t i = pl * 49 + iy * 7 + ix;
                if (arg < 0 || x.get_f64(i) > x.get_f64(arg)) arg = i;
              }
            ref.set_f64(arg, ref.get_f64(arg) + dy.get_f64((pl * 4 + oy) * 4 + ox));
          }
      check_close(dx, ref, 1e-6, fmt::format("{} MaxPoolGrad", dtype_name(t)));
      // AveragePool: adjoint of the forward, <pool(x), dy> == <x, pool_grad(dy)> for every x; checked
      // elementwise with unit vectors through the reference pool.
      for (int64_t include : {0, 1}) {
        Attributes ga = a;
        ga.set("count_include_pad", include);
        ga.set("input_shape", x.shape().dims());
        Tensor g = run_op("AveragePoolGrad", {dy}, ga)[0];
        Tensor rg(t, x.shape());
        Tensor e(t, Shape{1, 1, 7, 7});
        Win p{3, 3, 2, 2, 1, 1, 1, 1, 1, 1};
        for (int64_t i = 0; i < 49; ++i) {
          e.set_f64(i, 1);
          Tensor col = ref_pool(e, include ? Pool::avg_include : Pool::avg_exclude, p, 4, 4);
          e.set_f64(i, 0);
          for (int64_t pl = 0; pl < 6; ++pl) {
            double s = 0;
            for (int64_t o = 0; o < 16; ++o) s += col.get_f64(o) * dy.get_f64(pl * 16 + o);
            rg.set_f64(pl * 49 + i, s);
          }
        }
        check_close(g, rg, 1e-5, fmt::format("{} AveragePoolGrad include_pad={}", dtype_name(t), include));
      }
    }
  }

  TEST_CASE("GlobalAveragePool and its gradient") {
    for (DType t : {DType::f32, DType::f64}) {
      Tensor x = rnd({2, 3, 5, 4}, 21, t);
      Tensor y = run_op("GlobalAveragePool", {x})[0];
      REQUIRE(y.shape() == Shape{2, 3, 1, 1});
      Tensor ref(t, y.shape());
      for (int64_t p = 0; p < 6; ++p) {
        double s = 0;
        for (int64_t i = 0; i < 20; ++i) s += x.get_f64(p * 20 + i);
        ref.set_f64(p, s / 20);
      }
      check_close(y, ref, 1e-6, "GlobalAveragePool");
      Tensor dx = run_op("GlobalAveragePoolGrad", {y}, {{"input_shape", V{2, 3, 5, 4}}})[0];
      for (int64_t i = 0; i < dx.numel(); ++i)
        CHECK(dx.get_f64(i) == doctest::Approx(ref.get_f64(i / 20) / 20));
    }
  }

  TEST_CASE("a CPU without AVX-512 refuses a bf16 product, naming the way out") {
    Tensor a = rnd_bf16(Shape{4, 8}, 1), b = rnd_bf16(Shape{8, 3}, 2);
    if (test::cpu_runs_bf16())
      CHECK(run_op("MatMul", {a, b})[0].dtype() == DType::bf16);
    else
      CHECK_THROWS_WITH(run_op("MatMul", {a, b}),
                        doctest::Contains("bf16 needs a CPU with AVX-512 (oneDNN's bf16 kernels)"));
  }

  TEST_CASE("bf16 MatMul and MatMulTransposed match f32 on the same inputs" *
            doctest::skip(!test::cpu_runs_bf16())) {
    struct Case {
      Shape a, b;
      bool ta = false, tb = false;
    };
    // 2-D, batched, broadcast batches, a shared 2-D operand, and one product large enough to run threaded.
    std::vector<Case> cases = {{{33, 47}, {47, 29}},
                               {{3, 17, 40}, {3, 40, 21}},
                               {{2, 1, 5, 16}, {3, 16, 7}},
                               {{2, 9, 24}, {24, 13}},
                               {{64, 300}, {300, 200}},
                               {{24, 9}, {24, 13}, true, false},
                               {{9, 24}, {13, 24}, false, true},
                               {{2, 24, 9}, {1, 13, 24}, true, true},
                               {{300, 64}, {200, 300}, true, true}};
    uint64_t seed = 500;
    for (const Case& c : cases) {
      Tensor a = rnd_bf16(c.a, seed++), b = rnd_bf16(c.b, seed++);
      std::string what = fmt::format("{} x {} {}{}", c.a.str(), c.b.str(), c.ta ? "T" : "", c.tb ? "T" : "");
      if (c.ta || c.tb)
        check_bf16_op("MatMulTransposed", {a, b},
                      {{"transA", int64_t{c.ta}}, {"transB", int64_t{c.tb}}, {"alpha", 0.5f}}, 1, what);
      else
        check_bf16_op("MatMul", {a, b}, {}, 1, what);
    }
  }

  TEST_CASE("bf16 Gemm: transposes, alpha, beta and C as bias or broadcast" *
            doctest::skip(!test::cpu_runs_bf16())) {
    struct Case {
      Shape a, b, c;  // c rank 1 with 0: no C
      bool ta, tb;
      float alpha, beta;
    };
    std::vector<Case> cases = {{{20, 30}, {30, 25}, {25}, false, false, 1, 1},
                               {{30, 20}, {25, 30}, {1, 25}, true, true, 1, 1},
                               {{20, 30}, {25, 30}, {20, 25}, false, true, 1, 1},
                               {{30, 20}, {30, 25}, {20, 1}, true, false, 1, 1},
                               {{20, 30}, {30, 25}, {}, false, false, 1, 1},
                               {{30, 20}, {25, 30}, {20, 1}, true, true, 0.5, 2},
                               {{20, 30}, {25, 30}, {20, 25}, false, true, 1.5, -0.5},
                               {{20, 30}, {30, 25}, {0}, false, false, 2, 1},
                               // An empty inner dimension: no product, y = beta * C.
                               {{20, 0}, {0, 25}, {20, 1}, false, false, 1, 2},
                               {{64, 300}, {256, 300}, {256}, false, true, 1, 1}};
    uint64_t seed = 600;
    for (const Case& c : cases) {
      std::vector<Tensor> in = {rnd_bf16(c.a, seed++), rnd_bf16(c.b, seed++)};
      bool has_c = c.c.rank() == 0 || c.c[0] != 0;
      if (has_c) in.push_back(rnd_bf16(c.c, seed++));
      check_bf16_op(
          "Gemm", in,
          {{"transA", int64_t{c.ta}}, {"transB", int64_t{c.tb}}, {"alpha", c.alpha}, {"beta", c.beta}}, 1,
          fmt::format("{}{} x {}{} C {} alpha {} beta {}", c.a.str(), c.ta ? "T" : "", c.b.str(),
                      c.tb ? "T" : "", has_c ? c.c.str() : "none", c.alpha, c.beta));
    }
  }

  TEST_CASE("bf16 FusedGemm: bias, relu and gelu epilogues, and gelu's saved pre-activation" *
            doctest::skip(!test::cpu_runs_bf16())) {
    uint64_t seed = 700;
    for (std::string act : {"none", "relu", "gelu", "gelu_tanh"})
      for (bool tb : {false, true})
        for (int outputs : {1, 2})
          for (bool bias : {true, false}) {
            Shape sa{2, 9, 40}, sb = tb ? Shape{33, 40} : Shape{40, 33};
            std::vector<Tensor> in = {rnd_bf16(sa, seed++), rnd_bf16(sb, seed++)};
            if (bias) in.push_back(rnd_bf16({33}, seed++));
            check_bf16_op("FusedGemm", in, {{"transB", int64_t{tb}}, {"activation", act}}, outputs,
                          fmt::format("{} transB={} bias={}", act, tb, bias));
          }
    // Rows enough for the threaded path, gelu with the pre-activation kept (what a training step runs).
    check_bf16_op("FusedGemm", {rnd_bf16({128, 300}, 790), rnd_bf16({300, 256}, 791), rnd_bf16({256}, 792)},
                  {{"activation", std::string("gelu")}}, 2, "gelu, 128 x 300 x 256");
  }

  TEST_CASE("bf16 Conv, ConvGradInput and ConvGradWeight match f32 on the same inputs" *
            doctest::skip(!test::cpu_runs_bf16())) {
    struct Case {
      std::string label;
      Shape x, w;
      Attributes attrs;  // with group; the gradient ops get explicit geometry below
      Win p;
      bool bias;
    };
    std::vector<Case> cases = {
        {"3x3 pads 1, bias",
         {2, 3, 9, 9},
         {8, 3, 3, 3},
         {{"pads", V{1, 1, 1, 1}}},
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         true},
        {"strides 2, asymmetric pads",
         {2, 3, 9, 8},
         {4, 3, 3, 2},
         {{"strides", V{2, 2}}, {"pads", V{0, 1, 1, 0}}},
         {3, 2, 2, 2, 1, 1, 0, 1, 1, 0},
         false},
        {"dilations 2x3, bias",
         {2, 3, 9, 9},
         {4, 3, 3, 2},
         {{"dilations", V{2, 3}}},
         {3, 2, 1, 1, 2, 3},
         true},
        {"depthwise",
         {2, 6, 8, 8},
         {6, 1, 3, 3},
         {{"group", int64_t{6}}, {"pads", V{1, 1, 1, 1}}},
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         true},
        {"group 2, strides 1x2",
         {2, 4, 9, 9},
         {6, 2, 3, 3},
         {{"group", int64_t{2}}, {"strides", V{1, 2}}},
         {3, 3, 1, 2},
         true},
        // 8 and more channels per group: blocked layouts in every pass, reorders around the primitives.
        {"16 channels, strides 2, pads 1",
         {2, 16, 9, 9},
         {32, 16, 3, 3},
         {{"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}},
         {3, 3, 2, 2, 1, 1, 1, 1, 1, 1},
         true},
        {"2 groups of 16 channels",
         {4, 32, 8, 8},
         {32, 16, 3, 3},
         {{"group", int64_t{2}}, {"pads", V{1, 1, 1, 1}}},
         {3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
         true},
        {"CNN second layer", {16, 32, 13, 13}, {64, 32, 3, 3}, {}, {3, 3}, true},
    };
    uint64_t seed = 800;
    for (const Case& c : cases) {
      int64_t group = c.attrs.has("group") ? c.attrs.i("group") : 1;
      Tensor x = rnd_bf16(c.x, seed++), w = rnd_bf16(c.w, seed++);
      std::vector<Tensor> in = {x, w};
      if (c.bias) in.push_back(rnd_bf16({c.w[0]}, seed++));
      check_bf16_op("Conv", in, c.attrs, 1, c.label);

      int64_t oh = c.p.out(c.x[2], c.p.kh, c.p.sh, c.p.dh, c.p.pt, c.p.pb);
      int64_t ow = c.p.out(c.x[3], c.p.kw, c.p.sw, c.p.dw, c.p.pl, c.p.pr);
      Tensor dy = rnd_bf16({c.x[0], c.w[0], oh, ow}, seed++);
      Attributes ga = {{"kernel_shape", V{c.p.kh, c.p.kw}},
                       {"strides", V{c.p.sh, c.p.sw}},
                       {"dilations", V{c.p.dh, c.p.dw}},
                       {"pads", V{c.p.pt, c.p.pl, c.p.pb, c.p.pr}},
                       {"group", group}};
      Attributes gi = ga;
      gi.set("input_shape", c.x.dims());
      check_bf16_op("ConvGradInput", {dy, w}, gi, 1, c.label);
      // dW with and without the bias gradient.
      check_bf16_op("ConvGradWeight", {dy, x}, ga, c.bias ? 2 : 1, c.label);
    }
    // 1-D data runs as height 1.
    check_bf16_op("Conv", {rnd_bf16({2, 3, 11}, 890), rnd_bf16({4, 3, 3}, 891), rnd_bf16({4}, 892)},
                  {{"strides", V{2}}, {"pads", V{1, 2}}, {"dilations", V{2}}}, 1, "1-D");
  }

  TEST_CASE("shape errors name the problem") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2, 3, 5, 5});
    ValueId w = g.add_input("w", DType::f32, Shape{4, 2, 3, 3});
    CHECK_THROWS_WITH_AS(g.add_node("Conv", {x, w}), doctest::Contains("input channels per group"),
                         InputError);
    ValueId a = g.add_input("a", DType::f32, Shape{3, 4});
    ValueId b = g.add_input("b", DType::f32, Shape{5, 6});
    CHECK_THROWS_WITH_AS(g.add_node("MatMul", {a, b}), doctest::Contains("inner dimensions differ"),
                         InputError);
    CHECK_THROWS_WITH_AS(g.add_node("MaxPool", {x}, {{"kernel_shape", V{2, 2}}}, 2),
                         doctest::Contains("Indices output"), InputError);
    CHECK_THROWS_WITH_AS(g.add_node("MaxPool", {x}, {{"kernel_shape", V{7, 7}}}),
                         doctest::Contains("larger than"), InputError);
  }

  TEST_CASE("held_bytes is what the prepared convolution and pooling kernels hold beside the arena") {
    // Planned memory counts it (oneDNN's blocked copies of a convolution's operands, its scratchpads, a max
    // pooling's workspace: several times the arena of a CNN): measured here as the heap's growth while one
    // node's session is prepared, against the arena plus Backend::held_bytes.
    auto heap = [] {
      const struct mallinfo2 m = mallinfo2();
      return static_cast<double>(m.uordblks + m.hblkhd);
    };
    const DType t = DType::f32;
    run_op("Conv", {rnd({1, 16, 8, 8}, 1, t), rnd({8, 16, 3, 3}, 2, t)});  // oneDNN's one-time state
    const Attributes pad = {{"pads", V{1, 1, 1, 1}}};
    struct Case {
      std::string op;
      std::vector<Shape> inputs;
      Attributes attrs;
      int outputs;
    };
    const std::vector<Case> cases = {
        {"Conv", {{32, 16, 32, 32}, {32, 16, 3, 3}, {32}}, pad, 1},
        {"ConvGradInput",
         {{32, 32, 32, 32}, {32, 16, 3, 3}},
         {{"pads", V{1, 1, 1, 1}}, {"input_shape", V{32, 16, 32, 32}}, {"kernel_shape", V{3, 3}}},
         1},
        {"ConvGradWeight",
         {{32, 32, 32, 32}, {32, 16, 32, 32}},
         {{"pads", V{1, 1, 1, 1}}, {"kernel_shape", V{3, 3}}},
         2},
        {"MaxPoolGrad",
         {{32, 16, 10, 10}, {32, 16, 32, 32}},
         {{"kernel_shape", V{3, 3}}, {"strides", V{3, 3}}},
         1},
    };
    for (const Case& c : cases) {
      CAPTURE(c.op);
      const double before = heap();
      auto g = std::make_shared<Graph>();
      std::vector<ValueId> in;
      for (size_t i = 0; i < c.inputs.size(); ++i)
        in.push_back(g->add_input("in" + std::to_string(i), t, c.inputs[i]));
      NodeId n = g->add_node(c.op, in, c.attrs, c.outputs, "op");
      for (ValueId o : g->node(n).outputs) g->mark_output(o);
      auto backend = make_cpu_backend();
      {
        Session sess(g, *backend);
        const double grown = heap() - before;
        const size_t held = backend->held_bytes(*g, g->node(n));
        // An arena of 1 MiB or more is mapped, outside the heap (cpu_backend.cpp's HostBuffer).
        const size_t arena = backend->memory_bytes();
        const double want = static_cast<double>((arena >= (size_t{1} << 20) ? 0 : arena) + held);
        CAPTURE(grown);
        CAPTURE(want);
        CAPTURE(held);
        if (c.op == "Conv") CHECK(held > Shape{32, 16, 32, 32}.numel() * 4);  // at least the input's copy
        CHECK(grown > 0.9 * want);
        CHECK(grown < 1.1 * want + 1024 * 1024);
      }
    }
    // A kernel of plain loops (f64) holds nothing beside the arena.
    Graph g;
    ValueId x = g.add_input("x", DType::f64, Shape{2, 16, 8, 8});
    ValueId w = g.add_input("w", DType::f64, Shape{8, 16, 3, 3});
    g.op("Conv", {x, w});
    CHECK(make_cpu_backend()->held_bytes(g, g.node(0)) == 0);
  }

  TEST_CASE("a steady-state step of these kernels allocates nothing") {
    // Nothing may allocate, except oneDNN inside its own execute call (its per-call argument map), which only
    // the f32 kernels make.
    for (DType t : {DType::f64, DType::f32}) {
      auto g = std::make_shared<Graph>();
      ValueId x = g->add_input("x", t, Shape{8, 3, 12, 12});
      ValueId w = g->add_parameter("w", rnd({8, 3, 3, 3}, 1, t));
      ValueId b = g->add_parameter("b", rnd({8}, 2, t));
      ValueId y = g->op("Conv", {x, w, b}, {{"pads", V{1, 1, 1, 1}}});
      ValueId p = g->op("MaxPool", {y}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}});
      ValueId q = g->op("AveragePool", {p}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}});
      ValueId pg = g->op("MaxPoolGrad", {p, y}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}});
      ValueId ag = g->op("AveragePoolGrad", {q},
                         {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"input_shape", V{8, 8, 6, 6}}});
      ValueId gp = g->op("GlobalAveragePool", {y});
      ValueId gg = g->op("GlobalAveragePoolGrad", {gp}, {{"input_shape", V{8, 8, 12, 12}}});
      ValueId dx =
          g->op("ConvGradInput", {y, w},
                {{"pads", V{1, 1, 1, 1}}, {"input_shape", V{8, 3, 12, 12}}, {"kernel_shape", V{3, 3}}});
      auto gw = g->node(g->add_node("ConvGradWeight", {y, x},
                                    {{"pads", V{1, 1, 1, 1}}, {"kernel_shape", V{3, 3}}}, 2))
                    .outputs;
      ValueId flat = g->add_input("flat", t, Shape{8, 72});
      ValueId wm = g->add_parameter("wm", rnd({72, 16}, 3, t));
      ValueId bm = g->add_parameter("bm", rnd({16}, 4, t));
      auto fg =
          g->node(g->add_node("FusedGemm", {flat, wm, bm}, {{"activation", std::string("gelu")}}, 2)).outputs;
      ValueId gm = g->op("Gemm", {flat, wm, bm}, {{"alpha", 0.5f}, {"beta", 2.0f}});
      ValueId mt = g->op("MatMulTransposed", {flat, fg[0]}, {{"transA", int64_t{1}}});
      ValueId mm = g->op("MatMul", {flat, wm});
      for (ValueId v : {pg, ag, gg, dx, gw[0], gw[1], fg[1], gm, mt, mm}) g->mark_output(v);
      auto backend = make_cpu_backend();
      Session sess(g, *backend);
      Tensor tx = rnd({8, 3, 12, 12}, 5, t), tf = rnd({8, 72}, 6, t);
      sess.write(x, tx);
      sess.write(flat, tf);
      sess.run({});  // warm-up
      test::arm_allocation_counter();
      for (int i = 0; i < 3; ++i) {
        sess.write(x, tx.raw(), tx.nbytes());
        sess.write(flat, tf.raw(), tf.nbytes());
        sess.run({});
      }
      test::AllocationCounts n = test::disarm_allocation_counts();
      CAPTURE(dtype_name(t));
      CHECK(n.outside_onednn() == 0);
      if (t == DType::f64) CHECK(n.total == 0);
    }
  }

  TEST_CASE("a steady-state bf16 step of these kernels allocates nothing outside oneDNN" *
            doctest::skip(!test::cpu_runs_bf16())) {
    const DType t = DType::bf16;
    auto g = std::make_shared<Graph>();
    ValueId x = g->add_input("x", t, Shape{8, 16, 12, 12});
    ValueId w = g->add_parameter("w", rnd_bf16({16, 16, 3, 3}, 1));
    ValueId b = g->add_parameter("b", rnd_bf16({16}, 2));
    ValueId y = g->op("Conv", {x, w, b}, {{"pads", V{1, 1, 1, 1}}});
    ValueId dx =
        g->op("ConvGradInput", {y, w},
              {{"pads", V{1, 1, 1, 1}}, {"input_shape", V{8, 16, 12, 12}}, {"kernel_shape", V{3, 3}}});
    auto gw = g->node(g->add_node("ConvGradWeight", {y, x},
                                  {{"pads", V{1, 1, 1, 1}}, {"kernel_shape", V{3, 3}}}, 2))
                  .outputs;
    ValueId flat = g->add_input("flat", t, Shape{8, 72});
    ValueId wm = g->add_parameter("wm", rnd_bf16({72, 16}, 3));
    ValueId bm = g->add_parameter("bm", rnd_bf16({16}, 4));
    ValueId cm = g->add_parameter("cm", rnd_bf16({8, 1}, 5));
    auto fg =
        g->node(g->add_node("FusedGemm", {flat, wm, bm}, {{"activation", std::string("gelu")}}, 2)).outputs;
    ValueId gm = g->op("Gemm", {flat, wm, cm}, {{"alpha", 0.5f}, {"beta", 2.0f}});
    ValueId mt = g->op("MatMulTransposed", {flat, fg[0]}, {{"transA", int64_t{1}}});
    ValueId mm = g->op("MatMul", {flat, wm});
    for (ValueId v : {dx, gw[0], gw[1], fg[1], gm, mt, mm}) g->mark_output(v);
    auto backend = make_cpu_backend();
    Session sess(g, *backend);
    Tensor tx = rnd_bf16({8, 16, 12, 12}, 6), tf = rnd_bf16({8, 72}, 7);
    sess.write(x, tx);
    sess.write(flat, tf);
    sess.run({});  // warm-up
    test::arm_allocation_counter();
    for (int i = 0; i < 3; ++i) {
      sess.write(x, tx.raw(), tx.nbytes());
      sess.write(flat, tf.raw(), tf.nbytes());
      sess.run({});
    }
    test::AllocationCounts n = test::disarm_allocation_counts();
    CHECK(n.outside_onednn() == 0);
  }
}
