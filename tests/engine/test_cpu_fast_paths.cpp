// The CPU backend's fast paths against plain references: the library-free sigmoid and tanh the recurrent
// kernels vectorize, MaxPool's and MaxPoolGrad's 2x2 stride-2 passes, the recurrent kernels' batch slices
// (f32 with several threads against f64 on one), and gradient kernels that take their forward kernel's
// records.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <optional>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/vec_math.h"
#include "engine/ir/op_schema.h"
#include "engine/kernels/philox.h"
#include "engine/ops/norm_dropout.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;
using V = std::vector<int64_t>;

namespace {

// Runs one node on a CPU backend with `threads` threads; absent inputs are kNoValue, absent outputs "".
std::vector<Tensor> run_node(const std::string& op, const std::vector<std::optional<Tensor>>& inputs,
                             Attributes attrs, const std::vector<std::string>& outputs, int threads,
                             StepContext ctx = {}) {
  auto g = std::make_shared<Graph>();
  std::vector<ValueId> in;
  for (size_t i = 0; i < inputs.size(); ++i)
    in.push_back(inputs[i] ? g->add_input("in" + std::to_string(i), inputs[i]->dtype(), inputs[i]->shape())
                           : kNoValue);
  NodeId n = g->add_node_named(op, in, std::move(attrs), outputs, "op");
  std::vector<ValueId> outs = g->node(n).outputs;
  for (ValueId o : outs)
    if (o != kNoValue) g->mark_output(o);
  auto backend = make_cpu_backend(CpuOptions{threads});
  Session sess(g, *backend);
  for (size_t i = 0; i < in.size(); ++i)
    if (inputs[i]) sess.write(in[i], *inputs[i]);
  sess.run(ctx);
  std::vector<Tensor> r;
  for (ValueId o : outs)
    if (o != kNoValue) r.push_back(sess.read(o));
  return r;
}

double max_rel_error(const Tensor& got, const Tensor& ref) {
  REQUIRE(got.shape() == ref.shape());
  double worst = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    double e = std::fabs(got.get_f64(i) - ref.get_f64(i)) / std::max(1.0, std::fabs(ref.get_f64(i)));
    worst = std::max(worst, e);
  }
  return worst;
}

}  // namespace

TEST_SUITE("cpu_fast_paths") {
  TEST_CASE("exp-based sigmoid and tanh stay within a few ulp of libm, saturate, and pass NaN") {
    double worst_sig = 0, worst_tanh = 0, worst_exp = 0;
    auto rel = [](double got, double ref) {
      return std::fabs(got - ref) /
             std::max(std::fabs(ref), static_cast<double>(std::numeric_limits<float>::min()));
    };
    for (double x = -40; x <= 40; x += 0.00731) {
      float xf = static_cast<float>(x);
      double xd = xf;
      worst_sig = std::max(worst_sig, rel(cpu::sigmoid_f(xf), 1 / (1 + std::exp(-xd))));
      worst_tanh = std::max(worst_tanh, rel(cpu::tanh_f(xf), std::tanh(xd)));
      worst_exp = std::max(worst_exp, rel(cpu::exp_clamped(xf), std::exp(xd)));
    }
    for (double x = -0.4; x <= 0.4; x += 1.3e-5) {  // tanh's switch from the series to exp at |x| = 0.3
      float xf = static_cast<float>(x);
      worst_tanh = std::max(worst_tanh, rel(cpu::tanh_f(xf), std::tanh(static_cast<double>(xf))));
    }
    CHECK(worst_exp < 3e-7);
    CHECK(worst_sig < 5e-7);
    CHECK(worst_tanh < 5e-7);
    CHECK(cpu::tanh_f(0.0f) == 0.0f);
    CHECK(cpu::tanh_f(100.0f) == 1.0f);
    CHECK(cpu::tanh_f(-100.0f) == -1.0f);
    CHECK(cpu::sigmoid_f(100.0f) == 1.0f);
    CHECK(cpu::sigmoid_f(-100.0f) < 1e-37f);
    CHECK(cpu::sigmoid_f(-100.0f) >= 0.0f);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    CHECK(std::isnan(cpu::sigmoid_f(nan)));
    CHECK(std::isnan(cpu::tanh_f(nan)));
    CHECK(std::isnan(cpu::exp_clamped(nan)));
  }

  TEST_CASE("expm1_f, log1p_unit_f and softplus_f stay within a few ulp of libm, near zero too") {
    double worst_expm1 = 0, worst_log1p = 0, worst_softplus = 0;
    auto rel = [](double got, double ref) {
      return std::fabs(got - ref) /
             std::max(std::fabs(ref), static_cast<double>(std::numeric_limits<float>::min()));
    };
    auto sweep = [&](double lo, double hi, double step) {
      for (double x = lo; x <= hi; x += step) {
        const float xf = static_cast<float>(x);
        const double xd = xf;
        worst_expm1 = std::max(worst_expm1, rel(cpu::expm1_f(xf), std::expm1(xd)));
        worst_softplus = std::max(worst_softplus, rel(cpu::softplus_f(xf), std::log1p(std::exp(xd))));
      }
    };
    sweep(-40, 40, 0.00731);
    sweep(-0.4, 0.4, 1.3e-5);  // expm1's switch from the series at |x| = 0.3
    for (double y = 0; y <= 1; y += 3.7e-6) {
      const float yf = static_cast<float>(y);
      worst_log1p = std::max(worst_log1p, rel(cpu::log1p_unit_f(yf), std::log1p(static_cast<double>(yf))));
    }
    for (float y = 1e-30f; y < 1e-3f; y *= 1.37f)  // where 1 + y rounds away most of y
      worst_log1p = std::max(worst_log1p, rel(cpu::log1p_unit_f(y), std::log1p(static_cast<double>(y))));
    CHECK(worst_expm1 < 5e-7);
    CHECK(worst_log1p < 5e-7);
    CHECK(worst_softplus < 5e-7);
    CHECK(cpu::expm1_f(0.0f) == 0.0f);
    CHECK(cpu::expm1_f(-100.0f) == -1.0f);
    CHECK(cpu::softplus_f(100.0f) == 100.0f);
    CHECK(cpu::softplus_f(-100.0f) >= 0.0f);
    CHECK(cpu::softplus_f(-100.0f) < 1e-37f);
    const float inf = std::numeric_limits<float>::infinity();
    CHECK(cpu::expm1_f(-inf) == -1.0f);
    CHECK(cpu::softplus_f(inf) == inf);
    CHECK(cpu::softplus_f(-inf) == 0.0f);
    CHECK(cpu::sigmoid_f(-inf) == 0.0f);
    CHECK(cpu::sigmoid_f(-88.5f) == 0.0f);  // below the smallest normal float
    // -0 keeps its sign, as libm's tanh and expm1 keep it.
    CHECK(std::signbit(cpu::tanh_f(-0.0f)));
    CHECK(std::signbit(cpu::expm1_f(-0.0f)));
    const float nan = std::numeric_limits<float>::quiet_NaN();
    CHECK(std::isnan(cpu::expm1_f(nan)));
    CHECK(std::isnan(cpu::softplus_f(nan)));
  }

  TEST_CASE("erf_f stays within 3 ulp of libm's erf, is odd, saturates, and passes NaN") {
    double worst = 0;
    for (double x = -6; x <= 6; x += 1.7e-5) {
      const float xf = static_cast<float>(x);
      const double ref = std::erf(static_cast<double>(xf));
      const double ulp =
          std::nextafter(static_cast<float>(std::fabs(ref)), 2.0f) - static_cast<float>(std::fabs(ref));
      worst = std::max(worst, std::fabs(cpu::erf_f(xf) - ref) / std::max(ulp, 1e-45));
    }
    MESSAGE("erf_f: worst error " << worst << " ulp");
    CHECK(worst <= 3);
    CHECK(cpu::erf_f(0.0f) == 0.0f);
    CHECK(cpu::erf_f(4.0f) == 1.0f);
    CHECK(cpu::erf_f(-100.0f) == -1.0f);
    CHECK(cpu::erf_f(-0.7f) == -cpu::erf_f(0.7f));
    CHECK(cpu::erf_f(1e-30f) == doctest::Approx(1.1283791670955126e-30).epsilon(1e-6));
    CHECK(std::isnan(cpu::erf_f(std::numeric_limits<float>::quiet_NaN())));
  }

  TEST_CASE(
      "the f32 Erf, Gelu, Tanh, Sigmoid and gradient kernels (vectorized loops) match the f64 functors") {
    const Tensor x64 = ops::random_tensor({3, 1000}, -6, 6, 71);
    const Tensor dy64 = ops::random_tensor({3, 1000}, -1, 1, 72);
    Tensor x32(DType::f32, x64.shape()), dy32(DType::f32, x64.shape());
    for (int64_t i = 0; i < x64.numel(); ++i) {
      x32.set_f64(i, x64.get_f64(i));
      dy32.set_f64(i, dy64.get_f64(i));
    }
    struct Case {
      const char* op;
      bool grad;
      const char* approximate;
    };
    for (const Case& c :
         {Case{"Erf", false, nullptr}, Case{"ErfGrad", true, nullptr}, Case{"Gelu", false, "none"},
          Case{"Gelu", false, "tanh"}, Case{"GeluGrad", true, "none"}, Case{"GeluGrad", true, "tanh"},
          Case{"Tanh", false, nullptr}, Case{"Sigmoid", false, nullptr}, Case{"Elu", false, nullptr},
          Case{"EluGrad", true, nullptr}, Case{"Selu", false, nullptr}, Case{"SeluGrad", true, nullptr},
          Case{"Softplus", false, nullptr}, Case{"SoftplusGrad", true, nullptr},
          Case{"LeakyRelu", false, nullptr}, Case{"LeakyReluGrad", true, nullptr}}) {
      CAPTURE(c.op);
      CAPTURE(c.approximate ? c.approximate : "");
      Attributes a;
      if (c.approximate) a.set("approximate", std::string(c.approximate));
      auto in = [&](bool f32) {
        std::vector<std::optional<Tensor>> v;
        if (c.grad) v.emplace_back(f32 ? dy32 : dy64);
        v.emplace_back(f32 ? x32 : x64);
        return v;
      };
      // The f64 run takes the unrounded inputs: rounding them to f32 moves the results far less than 1e-5.
      Tensor ref = run_node(c.op, in(false), a, {"y"}, 1)[0];
      Tensor got = run_node(c.op, in(true), a, {"y"}, 2)[0];
      CHECK(got.dtype() == DType::f32);
      CHECK(max_rel_error(got, ref) < 1e-5);
    }
  }

  TEST_CASE("Clip is ONNX's min(max(x, min), max): absent bounds, min above max, NaN") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    Tensor x = Tensor::from<float>({5}, {-3.f, -0.5f, 0.25f, 2.f, nan});
    auto clip = [&](std::optional<float> lo, std::optional<float> hi) {
      std::vector<std::optional<Tensor>> in{x, std::nullopt, std::nullopt};
      if (lo) in[1] = Tensor::scalar<float>(*lo);
      if (hi) in[2] = Tensor::scalar<float>(*hi);
      while (!in.back()) in.pop_back();
      return run_node("Clip", in, {}, {"y"}, 1)[0];
    };
    auto expect = [](const Tensor& y, std::vector<float> want) {
      for (int64_t i = 0; i < 5; ++i) {
        if (std::isnan(want[i]))
          CHECK(std::isnan(y.data<float>()[i]));
        else
          CHECK(y.data<float>()[i] == want[i]);
      }
    };
    expect(clip(-1.f, 1.f), {-1.f, -0.5f, 0.25f, 1.f, nan});
    expect(clip(std::nullopt, 0.f), {-3.f, -0.5f, 0.f, 0.f, nan});
    expect(clip(0.f, std::nullopt), {0.f, 0.f, 0.25f, 2.f, nan});
    expect(clip(1.f, -1.f), {-1.f, -1.f, -1.f, -1.f, nan});  // min above max: max everywhere
  }

  TEST_CASE(
      "ReduceMaxGrad over one axis: dy at each column's first NaN or first maximum, as the general loop") {
    // [2, 5, 70]: 70 columns span two blocks of the column-blocked pass. Rows 1 and 3 tie at the maximum of
    // every third column; a NaN leads column 5 of the first slice and sits inside column 6.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    Tensor x = ops::random_tensor({2, 5, 70}, -1, 1, 91, DType::f32);
    auto at = [&](int64_t o, int64_t i, int64_t c) -> float& {
      return x.data<float>()[(o * 5 + i) * 70 + c];
    };
    for (int64_t o = 0; o < 2; ++o)
      for (int64_t c = 0; c < 70; c += 3) at(o, 1, c) = at(o, 3, c) = 2.f;
    at(0, 0, 5) = nan;
    at(0, 2, 6) = nan;
    Tensor dy = ops::random_tensor({2, 70}, 1, 2, 92, DType::f32);
    for (std::vector<int64_t> axes : {std::vector<int64_t>{1}, std::vector<int64_t>{-2}}) {
      Tensor dx = run_node("ReduceMaxGrad", {x, dy}, {{"axes", axes}}, {"dx"}, 2)[0];
      for (int64_t o = 0; o < 2; ++o)
        for (int64_t c = 0; c < 70; ++c) {
          // The general rule: the first NaN (ReduceMax's value then), else the first of the greatest.
          int64_t best = 0;
          for (int64_t i = 1; i < 5; ++i)
            if (!std::isnan(at(o, best, c)) && (std::isnan(at(o, i, c)) || at(o, i, c) > at(o, best, c)))
              best = i;
          for (int64_t i = 0; i < 5; ++i) {
            CAPTURE(o);
            CAPTURE(c);
            CAPTURE(i);
            CHECK(dx.data<float>()[(o * 5 + i) * 70 + c] == (i == best ? dy.data<float>()[o * 70 + c] : 0.f));
          }
        }
    }
  }

  TEST_CASE("ReduceMax propagates NaN on every path: contiguous runs, rows, the general loop") {
    // [3, 20, 17]: runs of 17 and 20 take the eight-partial loop; a NaN at the start, middle and end of runs.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (DType t : {DType::f32, DType::f64}) {
      Tensor x = ops::random_tensor({3, 20, 17}, -1, 1, 17, t);
      for (int64_t i :
           {int64_t{0}, int64_t{17 * 9 + 4}, int64_t{20 * 17 + 16}, int64_t{2 * 20 * 17 + 19 * 17}})
        x.set_f64(i, nan);
      for (V axes : {V{2}, V{1}, V{0, 2}, V{0, 1, 2}}) {
        CAPTURE(axes.size());
        CAPTURE(axes[0]);
        auto g = std::make_shared<Graph>();
        ValueId in = g->add_input("x", t, x.shape());
        Tensor at(DType::i64, Shape{static_cast<int64_t>(axes.size())});
        for (size_t k = 0; k < axes.size(); ++k)
          at.set_f64(static_cast<int64_t>(k), static_cast<double>(axes[k]));
        ValueId y =
            g->op("ReduceMax", {in, g->add_constant("axes", std::move(at))}, {{"keepdims", int64_t{1}}});
        g->mark_output(y);
        auto backend = make_cpu_backend(CpuOptions{2});
        Session sess(g, *backend);
        sess.write(in, x);
        sess.run({});
        Tensor got = sess.read(y);
        // numpy's max: NaN when the group holds one.
        const int64_t dims[3] = {3, 20, 17};
        bool reduced[3] = {};
        for (int64_t a : axes) reduced[a] = true;
        for (int64_t i = 0; i < got.numel(); ++i) {
          int64_t k[3], rest = i;
          for (int d = 2; d >= 0; --d) {
            const int64_t n = reduced[d] ? 1 : dims[d];
            k[d] = rest % n;
            rest /= n;
          }
          double want = -std::numeric_limits<double>::infinity();
          bool has_nan = false;
          for (int64_t a = 0; a < 3; ++a)
            for (int64_t b = 0; b < 20; ++b)
              for (int64_t c = 0; c < 17; ++c) {
                if ((!reduced[0] && a != k[0]) || (!reduced[1] && b != k[1]) || (!reduced[2] && c != k[2]))
                  continue;
                const double v = x.get_f64((a * 20 + b) * 17 + c);
                has_nan = has_nan || std::isnan(v);
                want = std::max(want, v);
              }
          CAPTURE(i);
          if (has_nan)
            CHECK(std::isnan(got.get_f64(i)));
          else
            CHECK(got.get_f64(i) == want);
        }
      }
    }
  }

  TEST_CASE("MaxPool 2x2 stride 2: each window's maximum, found as the gradient's pass finds it") {
    Attributes a = {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}};
    for (Shape xs : {Shape{2, 3, 6, 8}, Shape{1, 2, 7, 5}, Shape{1, 1, 4, 40}}) {
      CAPTURE(xs.str());
      const int64_t planes = xs[0] * xs[1], h = xs[2], w = xs[3], oh = h / 2, ow = w / 2;
      Tensor x = ops::random_tensor(xs, -1, 1, 5, DType::f32);
      // oneDNN's rule on every path: a NaN is skipped, first in its window (position 4's) or later (w + 3's);
      // a window of NaN gives the lowest float.
      const double nan = std::numeric_limits<double>::quiet_NaN();
      x.set_f64(4, nan);
      x.set_f64(w + 3, nan);
      for (int64_t i : {2 * w, 2 * w + 1, 3 * w, 3 * w + 1}) x.set_f64(i, nan);
      x.set_f64(h * w - 1, 7.0);  // an odd last row or column belongs to no window
      Tensor ref(DType::f32, Shape{xs[0], xs[1], oh, ow});
      for (int64_t p = 0; p < planes; ++p)
        for (int64_t oy = 0; oy < oh; ++oy)
          for (int64_t ox = 0; ox < ow; ++ox) {
            double m = std::numeric_limits<float>::lowest();
            for (int64_t k : {int64_t{0}, int64_t{1}, w, w + 1}) {
              const double v = x.get_f64(p * h * w + 2 * oy * w + 2 * ox + k);
              if (v > m) m = v;
            }
            ref.set_f64((p * oh + oy) * ow + ox, m);
          }
      for (int threads : {1, 2}) {
        Tensor y = run_node("MaxPool", {x}, a, {"y"}, threads)[0];
        REQUIRE(y.shape() == ref.shape());
        for (int64_t i = 0; i < ref.numel(); ++i) {
          CAPTURE(i);
          CHECK(y.get_f64(i) == ref.get_f64(i));
        }
      }
    }
  }

  TEST_CASE("Pooling windows wider than the input visit only the taps inside it") {
    // A window of 100000x100000 over a 5x5 input ran every tap (oneDNN's pooling): hours, not microseconds.
    struct Case {
      Shape xs;
      V kernel, strides, pads;
    };
    for (const Case& k : {Case{{1, 2, 6, 7}, {41, 40}, {3, 2}, {20, 35, 24, 2}},
                          Case{{2, 1, 5, 5}, {100000, 100000}, {50000, 50000}, {99999, 99999, 99999, 99999}}})
      for (DType t : {DType::f32, DType::f64})
        for (int64_t include_pad : {0, 1}) {
          CAPTURE(k.xs.str());
          CAPTURE(dtype_name(t));
          CAPTURE(include_pad);
          const int64_t planes = k.xs[0] * k.xs[1], h = k.xs[2], w = k.xs[3];
          const int64_t oh = (h + k.pads[0] + k.pads[2] - k.kernel[0]) / k.strides[0] + 1;
          const int64_t ow = (w + k.pads[1] + k.pads[3] - k.kernel[1]) / k.strides[1] + 1;
          Tensor x = ops::random_tensor(k.xs, -1, 1, 9, t);
          Tensor dy = ops::random_tensor(Shape{k.xs[0], k.xs[1], oh, ow}, 0.5, 1.5, 10, t);
          Tensor max_ref(t, dy.shape()), avg_ref(t, dy.shape()), max_dx(t, k.xs), avg_dx(t, k.xs);
          for (int64_t i = 0; i < k.xs.numel(); ++i) max_dx.set_f64(i, 0), avg_dx.set_f64(i, 0);
          for (int64_t p = 0; p < planes; ++p)
            for (int64_t oy = 0; oy < oh; ++oy)
              for (int64_t ox = 0; ox < ow; ++ox) {
                // The window's rows and columns inside the input, and inside the padded input.
                const int64_t y0 = oy * k.strides[0] - k.pads[0], x0 = ox * k.strides[1] - k.pads[1];
                const int64_t y1 = y0 + k.kernel[0], x1 = x0 + k.kernel[1];
                const int64_t ya = std::max<int64_t>(y0, 0), yb = std::min(y1, h);
                const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min(x1, w);
                const int64_t padded = (std::min(y1, h + k.pads[2]) - std::max(y0, -k.pads[0])) *
                                       (std::min(x1, w + k.pads[3]) - std::max(x0, -k.pads[1]));
                const int64_t o = (p * oh + oy) * ow + ox;
                int64_t arg = -1;
                double sum = 0;
                for (int64_t iy = ya; iy < yb; ++iy)
                  for (int64_t ix = xa; ix < xb; ++ix) {
                    const int64_t i = (p * h + iy) * w + ix;
                    sum += x.get_f64(i);
                    if (arg < 0 || x.get_f64(i) > x.get_f64(arg)) arg = i;
                  }
                const double count =
                    include_pad ? static_cast<double>(padded) : static_cast<double>((yb - ya) * (xb - xa));
                max_ref.set_f64(o, x.get_f64(arg));
                avg_ref.set_f64(o, sum / count);
                max_dx.set_f64(arg, max_dx.get_f64(arg) + dy.get_f64(o));
                for (int64_t iy = ya; iy < yb; ++iy)
                  for (int64_t ix = xa; ix < xb; ++ix) {
                    const int64_t i = (p * h + iy) * w + ix;
                    avg_dx.set_f64(i, avg_dx.get_f64(i) + dy.get_f64(o) / count);
                  }
              }
          Attributes a = {{"kernel_shape", k.kernel}, {"strides", k.strides}, {"pads", k.pads}};
          Attributes avg = a;
          avg.set("count_include_pad", include_pad);
          Attributes avg_grad = avg;
          avg_grad.set("input_shape", k.xs.dims());
          const double tol = t == DType::f32 ? 1e-5 : 1e-12;
          auto same = [&](const Tensor& got, const Tensor& want) {
            REQUIRE(got.shape() == want.shape());
            for (int64_t i = 0; i < want.numel(); ++i) {
              CAPTURE(i);
              CHECK(got.get_f64(i) == doctest::Approx(want.get_f64(i)).epsilon(tol));
            }
          };
          same(run_node("AveragePool", {x}, avg, {"y"}, 2)[0], avg_ref);
          same(run_node("AveragePoolGrad", {dy}, avg_grad, {"dx"}, 2)[0], avg_dx);
          if (include_pad) continue;
          same(run_node("MaxPool", {x}, a, {"y"}, 2)[0], max_ref);
          same(run_node("MaxPoolGrad", {dy, x}, a, {"dx"}, 2)[0], max_dx);
        }
  }

  TEST_CASE(
      "Max pooling takes oneDNN's NaN rule on every path: f32 (oneDNN, the 2x2 pass) and f64 (the loops)") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    Tensor x = ops::random_tensor(Shape{1, 2, 6, 6}, -1, 1, 11, DType::f64);
    for (int64_t i : {0, 1, 2, 6, 7, 8, 12, 13, 14, 22, 29})
      x.set_f64(i, nan);  // a 3x3 block of NaN, and two
    Tensor dy3 = ops::random_tensor(Shape{1, 2, 4, 4}, 0.5, 1.5, 12, DType::f64);
    Tensor dy2 = ops::random_tensor(Shape{1, 2, 3, 3}, 0.5, 1.5, 13, DType::f64);
    for (int64_t k : {3, 2}) {
      CAPTURE(k);
      Attributes a = {{"kernel_shape", V{k, k}}, {"strides", V{4 - k, 4 - k}}};
      const Tensor& dy = k == 3 ? dy3 : dy2;
      Tensor y64 = run_node("MaxPool", {x}, a, {"y"}, 1)[0];
      Tensor y32 = run_node("MaxPool", {x.cast(DType::f32)}, a, {"y"}, 1)[0];
      for (int64_t i = 0; i < y64.numel(); ++i) {
        CAPTURE(i);
        const double want = y64.get_f64(i) == std::numeric_limits<double>::lowest()
                                ? std::numeric_limits<float>::lowest()
                                : static_cast<float>(y64.get_f64(i));
        CHECK(y32.get_f64(i) == want);
      }
      CHECK(y64.get_f64(0) == std::numeric_limits<double>::lowest());  // the window of NaN
      Tensor dx64 = run_node("MaxPoolGrad", {dy, x}, a, {"dx"}, 1)[0];
      Tensor dx32 = run_node("MaxPoolGrad", {dy.cast(DType::f32), x.cast(DType::f32)}, a, {"dx"}, 1)[0];
      for (int64_t i = 0; i < x.numel(); ++i) {
        CAPTURE(i);
        CHECK(dx32.get_f64(i) ==
              doctest::Approx(dx64.get_f64(i)).epsilon(1e-6));  // sums of overlapping windows
      }
      CHECK(dx64.get_f64(0) == dy.get_f64(0));  // the window of NaN gives its dy to its first tap
    }
  }

  TEST_CASE("MaxPoolGrad 2x2 stride 2: dy at each window's first maximum, zeros elsewhere") {
    Attributes a = {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}};
    for (Shape xs : {Shape{2, 3, 6, 8}, Shape{1, 2, 7, 5}}) {
      CAPTURE(xs.str());
      const int64_t planes = xs[0] * xs[1], h = xs[2], w = xs[3], oh = h / 2, ow = w / 2;
      Tensor x = ops::random_tensor(xs, -1, 1, 3, DType::f32);
      // Ties (the first in row-major order wins), NaN (skipped, also where it comes first) and a window of
      // NaN (its first element takes dy).
      x.set_f64(0, 0.5);
      x.set_f64(1, 0.5);
      x.set_f64(w, 0.5);
      x.set_f64(w + 1, 0.5);
      x.set_f64(2, std::numeric_limits<double>::quiet_NaN());
      x.set_f64(5, std::numeric_limits<double>::quiet_NaN());
      for (int64_t i : {2 * w + 2, 2 * w + 3, 3 * w + 2, 3 * w + 3})
        x.set_f64(i, std::numeric_limits<double>::quiet_NaN());
      Tensor dy = ops::random_tensor(Shape{xs[0], xs[1], oh, ow}, 0.5, 1.5, 4, DType::f32);
      Tensor ref(DType::f32, xs);
      for (int64_t p = 0; p < planes; ++p)
        for (int64_t oy = 0; oy < oh; ++oy)
          for (int64_t ox = 0; ox < ow; ++ox) {
            int64_t arg = p * h * w + 2 * oy * w + 2 * ox;
            double best = std::numeric_limits<float>::lowest();
            for (int64_t ky = 0; ky < 2; ++ky)
              for (int64_t kx = 0; kx < 2; ++kx) {
                int64_t i = p * h * w + (2 * oy + ky) * w + 2 * ox + kx;
                if (x.get_f64(i) > best) best = x.get_f64(i), arg = i;
              }
            ref.set_f64(arg, dy.get_f64((p * oh + oy) * ow + ox));
          }
      for (int threads : {1, 2}) {
        Tensor dx = run_node("MaxPoolGrad", {dy, x}, a, {"dx"}, threads)[0];
        for (int64_t i = 0; i < xs.numel(); ++i) {
          CAPTURE(i);
          CHECK(dx.get_f64(i) == ref.get_f64(i));
        }
      }
    }
  }

  TEST_CASE("LSTM and GRU in f32 on batch slices match f64 on one thread, with sequence lengths and masks") {
    const int64_t S = 5, B = 7, I = 3, H = 4;
    for (const char* op : {"LSTM", "GRU"})
      for (int64_t lbr : {0, 1}) {
        if (std::string(op) == "LSTM" && lbr) continue;
        CAPTURE(op);
        CAPTURE(lbr);
        const int64_t G = std::string(op) == "LSTM" ? 4 : 3;
        Attributes at = {{"hidden_size", H}, {"direction", std::string("bidirectional")}};
        if (lbr) at.set("linear_before_reset", int64_t{1});
        auto rnd = [](Shape s, uint64_t seed) { return ops::random_tensor(s, -0.6, 0.6, seed, DType::f64); };
        Tensor x = rnd({S, B, I}, 1), w = rnd({2, G * H, I}, 2), r = rnd({2, G * H, H}, 3),
               b = rnd({2, 2 * G * H}, 4), h0 = rnd({2, B, H}, 5), dy = rnd({S, 2, B, H}, 6),
               dyh = rnd({2, B, H}, 7);
        Tensor lens = Tensor::from<int32_t>(Shape{B}, {5, 3, 0, 5, 1, 4, 2});
        const bool lstm = G == 4;
        std::vector<std::optional<Tensor>> fwd_in = {x, w, r, b, lens, h0};
        if (lstm) fwd_in.push_back(std::nullopt);                              // initial_c
        if (lstm) fwd_in.push_back(std::nullopt);                              // P
        fwd_in.push_back(ops::random_tensor({2, B, H}, 0, 2, 8, DType::f64));  // a recurrent dropout mask
        std::vector<std::string> fwd_out = {"y", "yh"};
        if (lstm) fwd_out.push_back("yc");
        std::vector<std::optional<Tensor>> grad_in = fwd_in;
        grad_in.push_back(dy);
        grad_in.push_back(dyh);
        if (lstm) grad_in.push_back(std::nullopt);
        // Outputs: dX, dW, dR, dB, dinitial_h (LSTM also dinitial_c and dP, left absent here).
        std::vector<std::string> grad_out = {"dx", "dw", "dr", "db", "dh0"};
        if (lstm) {
          grad_out.push_back("");
          grad_out.push_back("");
        }
        auto cast = [](std::vector<std::optional<Tensor>> v, DType t) {
          for (auto& e : v)
            if (e && e->dtype() == DType::f64) e = e->cast(t);
          return v;
        };
        std::string gop = std::string(op) + "Grad";
        std::vector<Tensor> f64 = run_node(op, fwd_in, at, fwd_out, 1);
        std::vector<Tensor> f32 = run_node(op, cast(fwd_in, DType::f32), at, fwd_out, 3);
        for (size_t k = 0; k < f64.size(); ++k) CHECK(max_rel_error(f32[k], f64[k]) < 1e-5);
        std::vector<Tensor> g64 = run_node(gop, grad_in, at, grad_out, 1);
        std::vector<Tensor> g32 = run_node(gop, cast(grad_in, DType::f32), at, grad_out, 3);
        for (size_t k = 0; k < g64.size(); ++k) {
          CAPTURE(k);
          CHECK(max_rel_error(g32[k], g64[k]) < 1e-4);
        }
      }
  }

  TEST_CASE("LSTMGrad and GRUGrad after their forward node in one plan match a standalone gradient exactly") {
    const int64_t S = 6, B = 5, I = 3, H = 4;
    for (const char* op : {"LSTM", "GRU"})
      for (bool masked : {false, true}) {
        CAPTURE(op);
        CAPTURE(masked);
        const bool lstm = std::string(op) == "LSTM";
        const int64_t G = lstm ? 4 : 3;
        const int nf = lstm ? 9 : 7;  // the recurrent dropout mask is the last forward input
        Attributes at = {{"hidden_size", H}};
        // One graph with both nodes (the gradient kernel takes the forward kernel's records) and one with the
        // gradient node alone (it reruns the forward pass).
        auto build = [&](bool with_forward, std::vector<ValueId>* ins, std::vector<ValueId>* outs) {
          auto g = std::make_shared<Graph>();
          ValueId x = g->add_input("x", DType::f32, Shape{S, B, I});
          ValueId w = g->add_input("w", DType::f32, Shape{1, G * H, I});
          ValueId r = g->add_input("r", DType::f32, Shape{1, G * H, H});
          ValueId b = g->add_input("b", DType::f32, Shape{1, 2 * G * H});
          ValueId lens = g->add_input("lens", DType::i32, Shape{B});
          ValueId dyh = g->add_input("dyh", DType::f32, Shape{1, B, H});
          *ins = {x, w, r, b, lens, dyh};
          std::vector<ValueId> fwd = {x, w, r, b, lens};
          if (masked) {
            while (static_cast<int>(fwd.size()) < nf - 1) fwd.push_back(kNoValue);
            fwd.push_back(g->add_input("mask", DType::f32, Shape{1, B, H}));
            ins->push_back(fwd.back());
          }
          if (with_forward) {
            NodeId n = g->add_node_named(op, fwd, at, {"y", "yh"}, "fwd");
            for (ValueId v : g->node(n).outputs)
              if (v != kNoValue) g->mark_output(v);
          }
          std::vector<ValueId> gin = fwd;
          while (static_cast<int>(gin.size()) < nf) gin.push_back(kNoValue);
          gin.push_back(kNoValue);  // dY
          gin.push_back(dyh);
          if (lstm) gin.push_back(kNoValue);  // dY_c
          std::vector<std::string> names = {"dx", "dw", "dr", "db", ""};
          if (lstm) names.insert(names.end(), {"", ""});
          NodeId n = g->add_node_named(std::string(op) + "Grad", gin, at, names, "grad");
          outs->clear();
          for (ValueId v : g->node(n).outputs)
            if (v != kNoValue) {
              g->mark_output(v);
              outs->push_back(v);
            }
          return g;
        };
        std::vector<ValueId> in_a, out_a, in_b, out_b;
        auto ga = build(true, &in_a, &out_a);
        auto gb = build(false, &in_b, &out_b);
        auto backend = make_cpu_backend(CpuOptions{2});
        Session sa(ga, *backend), sb(gb, *backend);
        // Several steps with new inputs: the records must be this step's.
        for (uint64_t step = 0; step < 3; ++step) {
          CAPTURE(step);
          for (size_t i = 0; i < in_a.size(); ++i) {
            const Value& v = ga->value(in_a[i]);
            Tensor t = v.dtype == DType::i32
                           ? Tensor::from<int32_t>(Shape{B}, {6, 2, 0, 5, 3})
                           : ops::random_tensor(v.shape, -0.7, 0.7, 10 * step + i, DType::f32);
            sa.write(in_a[i], t);
            sb.write(in_b[i], t);
          }
          sa.run({});
          sb.run({});
          REQUIRE(out_a.size() == out_b.size());
          for (size_t k = 0; k < out_a.size(); ++k) {
            Tensor ta = sa.read(out_a[k]), tb = sb.read(out_b[k]);
            CAPTURE(k);
            for (int64_t i = 0; i < ta.numel(); ++i) CHECK(ta.get_f64(i) == tb.get_f64(i));
          }
        }
      }
  }

  TEST_CASE("Dropout and DropoutGrad without a mask output keep what philox_uniform keeps, at any offset") {
    // Without a mask output, f32 takes eight Philox blocks per AVX2 pass where the CPU has it. 2053 samples
    // of 49: the last block is partly used; odd offsets start the replica's share inside a block (the
    // scalar path) and even ones at a block boundary.
    const float ratio = 0.3f;
    Tensor x = ops::random_tensor({2053, 49}, 0.5, 1.5, 5, DType::f32);
    const uint64_t stream = ops::dropout_stream("op");
    const float scale = static_cast<float>(1.0 / (1.0 - ratio));
    for (uint64_t offset : {uint64_t{0}, uint64_t{3}, uint64_t{4}, uint64_t{1000}})
      for (int threads : {1, 2}) {
        CAPTURE(offset);
        CAPTURE(threads);
        StepContext ctx{7, 42, offset};
        const Tensor ratio_t = Tensor::scalar<float>(ratio), on = Tensor::scalar<bool>(true);
        Tensor y = run_node("Dropout", {x, ratio_t, on}, {}, {"y", ""}, threads, ctx)[0];
        Attributes ga;
        ga.set("stream", static_cast<int64_t>(stream));
        Tensor dx = run_node("DropoutGrad", {x, ratio_t, on}, ga, {"dx"}, threads, ctx)[0];
        int64_t wrong = 0, wrong_grad = 0, kept = 0;
        for (int64_t i = 0; i < x.numel(); ++i) {
          const uint64_t global = offset * 49 + static_cast<uint64_t>(i);
          const bool keep = kernels::philox_uniform(42, stream, 7, global) >= ratio;
          const float want = keep ? x.data<float>()[i] * scale : 0.0f;
          kept += keep;
          wrong += std::memcmp(&y.data<float>()[i], &want, sizeof want) != 0;
          wrong_grad += std::memcmp(&dx.data<float>()[i], &want, sizeof want) != 0;
        }
        CHECK(wrong == 0);
        CHECK(wrong_grad == 0);
        CHECK(std::fabs(static_cast<double>(kept) / static_cast<double>(x.numel()) - (1.0 - ratio)) < 0.01);
      }
  }

  TEST_CASE("SoftmaxGrad and LogSoftmaxGrad along long rows: the vectorized row loop against f64 formulas") {
    // Rows of 45 take two 16-lane passes and a tail of 13; rows of 7 the tail alone.
    for (int64_t n : {int64_t{45}, int64_t{7}})
      for (bool log : {false, true}) {
        CAPTURE(n);
        CAPTURE(log);
        Tensor dy = ops::random_tensor({6, n}, -1, 1, 3, DType::f32);
        Tensor logits = ops::random_tensor({6, n}, -4, 4, 4, DType::f64);
        // y: the forward's output, a softmax or log-softmax of each row.
        Tensor y(DType::f32, Shape{6, n});
        for (int64_t r = 0; r < 6; ++r) {
          double m = -1e300, sum = 0;
          for (int64_t j = 0; j < n; ++j) m = std::max(m, logits.get_f64(r * n + j));
          for (int64_t j = 0; j < n; ++j) sum += std::exp(logits.get_f64(r * n + j) - m);
          for (int64_t j = 0; j < n; ++j) {
            const double v = logits.get_f64(r * n + j) - m - std::log(sum);
            y.set_f64(r * n + j, log ? v : std::exp(v));
          }
        }
        Attributes a;
        a.set("axis", int64_t{-1});
        Tensor dx = run_node(log ? "LogSoftmaxGrad" : "SoftmaxGrad", {dy, y}, a, {"dx"}, 2)[0];
        double worst = 0;
        for (int64_t r = 0; r < 6; ++r) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j)
            acc += log ? dy.get_f64(r * n + j) : dy.get_f64(r * n + j) * y.get_f64(r * n + j);
          for (int64_t j = 0; j < n; ++j) {
            const int64_t k = r * n + j;
            const double want =
                log ? dy.get_f64(k) - std::exp(y.get_f64(k)) * acc : y.get_f64(k) * (dy.get_f64(k) - acc);
            worst = std::max(worst, std::fabs(dx.get_f64(k) - want));
          }
        }
        CHECK(worst < 1e-6);
      }
  }

  TEST_CASE(
      "ReduceMaxGrad along the last axis: dy at each row's first maximum or first NaN, zeros elsewhere") {
    // Rows of 37 (the eight-lane maximum and a tail); ties in row 1, a NaN after the maximum in row 2 and
    // two NaNs in row 3.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (DType t : {DType::f32, DType::f64}) {
      CAPTURE(t == DType::f32);
      Tensor x = ops::random_tensor({4, 37}, -1, 1, 6, t);
      x.set_f64(37 + 5, 3.0);
      x.set_f64(37 + 30, 3.0);
      x.set_f64(2 * 37 + 2, 5.0);
      x.set_f64(2 * 37 + 33, nan);
      x.set_f64(3 * 37 + 20, nan);
      x.set_f64(3 * 37 + 9, nan);
      Tensor dy = ops::random_tensor({4}, 1, 2, 7, t);
      Attributes a;
      a.set("axes", std::vector<int64_t>{1});
      Tensor dx = run_node("ReduceMaxGrad", {x, dy}, a, {"dx"}, 2)[0];
      for (int64_t r = 0; r < 4; ++r) {
        int64_t want = 0;
        for (int64_t j = 1; j < 37; ++j) {
          const double v = x.get_f64(r * 37 + j), m = x.get_f64(r * 37 + want);
          if (m == m && (v > m || v != v)) want = j;
        }
        CAPTURE(r);
        CHECK(want == (r == 1 ? 5 : r == 2 ? 33 : r == 3 ? 9 : want));
        for (int64_t j = 0; j < 37; ++j) CHECK(dx.get_f64(r * 37 + j) == (j == want ? dy.get_f64(r) : 0.0));
      }
    }
  }
}
