// Optimizer updates: ONNX's Adam, Momentum and Adagrad against the ONNX reference test data (out of place and
// bound in place, f32 and f64), and add_optimizer's graphs run for several steps against Keras's formulas
// written out here.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/autodiff/autodiff.h"
#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/optim/optimizer.h"
#include "engine/train/session.h"

#include "alloc_counter.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

using Vec = std::vector<double>;

Tensor vec(const Vec& v, DType t) {
  return Tensor::from<double>(Shape{static_cast<int64_t>(v.size())}, v).cast(t);
}

Vec values(const Tensor& t) {
  Vec v(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.get_f64(i);
  return v;
}

void check_close(const Vec& got, const Vec& want, double rel, const std::string& what) {
  REQUIRE_MESSAGE(got.size() == want.size(), what);
  for (size_t i = 0; i < got.size(); ++i)
    CHECK_MESSAGE(std::fabs(got[i] - want[i]) <= rel * (1 + std::fabs(want[i])),
                  what << "[" << i << "]: got " << got[i] << ", want " << want[i]);
}

// Runs one update node. `tensors` is X..., G..., S1..., Sk...; returns X_new..., S1_new..., Sk_new....
// In place, X becomes a parameter and the states become state values, each bound to its output as in
// training.
std::vector<Vec> run_update(const std::string& op, const Attributes& attrs, float r, int64_t t,
                            const std::vector<Vec>& tensors, int num_tensors, DType dtype, bool in_place) {
  auto g = std::make_shared<Graph>();
  ValueId R = g->add_input("R", DType::f32, Shape{});
  ValueId T = g->add_input("T", DType::i64, Shape{});
  int n = num_tensors;
  std::vector<ValueId> ins{R, T};
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::string name = "t" + std::to_string(i);
    Tensor v = vec(tensors[i], dtype);
    if (!in_place || (i >= static_cast<size_t>(n) && i < static_cast<size_t>(2 * n)))
      ins.push_back(g->add_input(name, dtype, v.shape()));
    else if (i < static_cast<size_t>(n))
      ins.push_back(g->add_parameter(name, v));
    else
      ins.push_back(g->add_state(name, v));
  }
  int num_outputs = static_cast<int>(tensors.size()) - n;
  std::vector<ValueId> outs = g->node(g->add_node(op, ins, attrs, num_outputs, "update")).outputs;
  // Output o updates input tensor o (X) or o + n (a state: the G block is skipped).
  std::vector<ValueId> targets;
  for (int o = 0; o < num_outputs; ++o) {
    ValueId target = ins[2 + (o < n ? o : o + n)];
    if (in_place)
      g->bind_update(outs[o], target);
    else
      g->mark_output(outs[o]);
    targets.push_back(in_place ? target : outs[o]);
  }
  auto backend = make_cpu_backend();
  Session sess(g, *backend);
  sess.write(R, Tensor::scalar<float>(r));
  sess.write(T, Tensor::scalar<int64_t>(t));
  for (size_t i = 0; i < tensors.size(); ++i)
    if (g->value(ins[2 + i]).kind == ValueKind::input) sess.write(ins[2 + i], vec(tensors[i], dtype));
  sess.run(StepContext{});
  std::vector<Vec> result;
  for (ValueId v : targets) result.push_back(values(sess.read(v)));
  return result;
}

// Checks one ONNX reference case in f32 and f64, out of place and in place.
void check_onnx_case(const std::string& op, const Attributes& attrs, const std::vector<Vec>& tensors, int n,
                     const std::vector<Vec>& expected) {
  for (DType dtype : {DType::f32, DType::f64})
    for (bool in_place : {false, true}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(in_place);
      std::vector<Vec> got = run_update(op, attrs, 0.1f, 0, tensors, n, dtype, in_place);
      REQUIRE(got.size() == expected.size());
      for (size_t o = 0; o < got.size(); ++o)
        check_close(got[o], expected[o], 2e-6, op + " output " + std::to_string(o));
    }
}

// Keras's update rules, in double, one tensor. weight_decay follows OptimizerConfig's documented semantics.
struct KerasReference {
  OptimizerConfig c;
  Vec m, v;  // sgd: velocity (Keras's sign and scale); adam: moments; rmsprop: v = mean square, m = momentum;
             // adamax: m, u; nadam: m, v; lion: m; adadelta: v = accumulated gradient squares, m = deltas'
  Vec h;     // adam's amsgrad: the largest v so far; centered rmsprop: the mean gradient
  double u_product = 1;  // nadam: Keras's running product of the momentum schedule

  void step(Vec& w, const Vec& grad, double lr, int64_t t) {
    size_t n = w.size();
    if (m.empty())
      m.assign(n, 0), v.assign(n, c.kind == "adagrad" ? c.initial_accumulator_value : 0.0), h.assign(n, 0);
    double wd = c.weight_decay;
    const double td = static_cast<double>(t);
    const double u_t = c.beta1 * (1 - 0.5 * std::pow(0.96, td)),
                 u_next = c.beta1 * (1 - 0.5 * std::pow(0.96, td + 1));
    if (c.kind == "nadam") u_product *= u_t;  // as Keras updates it before each step
    for (size_t i = 0; i < n; ++i) {
      double g = grad[i];
      w[i] -= w[i] * wd * lr;  // Keras 3's decoupled decay, before the step, for every kind
      if (c.kind == "adamax" || c.kind == "nadam" || c.kind == "lion" || c.kind == "adadelta") {
        if (c.kind == "adamax") {
          m[i] += (g - m[i]) * (1 - c.beta1);
          v[i] = std::max(c.beta2 * v[i], std::abs(g));
          w[i] -= lr * m[i] / ((1 - std::pow(c.beta1, td)) * (v[i] + c.epsilon));
        } else if (c.kind == "nadam") {
          m[i] += (g - m[i]) * (1 - c.beta1);
          v[i] += (g * g - v[i]) * (1 - c.beta2);
          const double m_hat = u_next * m[i] / (1 - u_product * u_next) + (1 - u_t) * g / (1 - u_product);
          const double v_hat = v[i] / (1 - std::pow(c.beta2, td));
          w[i] -= m_hat * lr / (std::sqrt(v_hat) + c.epsilon);
        } else if (c.kind == "lion") {
          const double d = m[i] * c.beta1 + g * (1 - c.beta1);
          w[i] -= lr * (d > 0 ? 1 : d < 0 ? -1 : 0);
          m[i] = m[i] * c.beta2 + g * (1 - c.beta2);
        } else {  // adadelta
          v[i] = c.rho * v[i] + (1 - c.rho) * g * g;
          const double delta = -std::sqrt(m[i] + c.epsilon) * g / std::sqrt(v[i] + c.epsilon);
          m[i] = c.rho * m[i] + (1 - c.rho) * delta * delta;
          w[i] += lr * delta;
        }
        continue;
      }
      if (c.kind == "sgd") {
        if (c.momentum == 0) {
          w[i] -= lr * g;
        } else {
          m[i] = c.momentum * m[i] - lr * g;
          w[i] += c.nesterov ? c.momentum * m[i] - lr * g : m[i];
        }
      } else if (c.kind == "adam" || c.kind == "adamw") {
        m[i] += (g - m[i]) * (1 - c.beta1);
        v[i] += (g * g - v[i]) * (1 - c.beta2);
        if (c.amsgrad) h[i] = std::max(h[i], v[i]);
        double alpha = lr * std::sqrt(1 - std::pow(c.beta2, t)) / (1 - std::pow(c.beta1, t));
        w[i] -= m[i] * alpha / (std::sqrt(c.amsgrad ? h[i] : v[i]) + c.epsilon);
      } else if (c.kind == "adagrad") {  // Keras 3: epsilon inside the square root
        v[i] += g * g;
        w[i] -= lr * g / std::sqrt(v[i] + c.epsilon);
      } else {  // rmsprop
        v[i] = c.rho * v[i] + (1 - c.rho) * g * g;
        if (c.centered) h[i] = c.rho * h[i] + (1 - c.rho) * g;
        double inc = lr * g / std::sqrt(v[i] - (c.centered ? h[i] * h[i] : 0.0) + c.epsilon);
        if (c.momentum > 0) {
          m[i] = c.momentum * m[i] + inc;
          w[i] -= m[i];
        } else {
          w[i] -= inc;
        }
      }
    }
  }
};

Vec pseudo_random(size_t n, uint64_t seed, double lo, double hi) {
  Vec v(n);
  uint64_t s = seed * 2654435761u + 12345;
  for (double& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = lo + (hi - lo) * static_cast<double>(s >> 11) / 9007199254740992.0;
  }
  return v;
}

struct BuilderCase {
  std::string label;
  OptimizerConfig config;
  bool constant_lr = false;  // Keras's SGD momentum equals ONNX Momentum only under a constant learning rate
};

OptimizerConfig config(const char* kind, float momentum = 0, bool nesterov = false, float wd = 0) {
  OptimizerConfig c;
  c.kind = kind;
  c.momentum = momentum;
  c.nesterov = nesterov;
  c.weight_decay = wd;
  return c;
}

OptimizerConfig lion_config(float wd) {  // Keras's Lion takes beta_2 = 0.99
  OptimizerConfig c = config("lion", 0, false, wd);
  c.beta2 = 0.99f;
  return c;
}

OptimizerConfig adadelta_config(float wd) {  // Keras's Adadelta takes rho = 0.95
  OptimizerConfig c = config("adadelta", 0, false, wd);
  c.rho = 0.95f;
  return c;
}

OptimizerConfig centered_config(float momentum, float wd) {
  OptimizerConfig c = config("rmsprop", momentum, false, wd);
  c.centered = true;
  return c;
}

OptimizerConfig amsgrad_config(const char* kind, float wd) {
  OptimizerConfig c = config(kind, 0, false, wd);
  c.amsgrad = true;
  return c;
}

std::vector<BuilderCase> builder_cases() {
  return {
      {"sgd", config("sgd", 0, false, 0.01f)},
      {"sgd momentum", config("sgd", 0.9f), true},
      {"sgd nesterov decay", config("sgd", 0.9f, true, 0.01f), true},
      {"adam", config("adam")},
      {"adam decay", config("adam", 0, false, 0.01f)},
      {"adamw", config("adamw", 0, false, 0.05f)},
      {"rmsprop", config("rmsprop")},
      {"rmsprop momentum decay", config("rmsprop", 0.5f, false, 0.01f)},
      {"rmsprop centered", centered_config(0.0f, 0.0f)},
      {"rmsprop centered momentum decay", centered_config(0.5f, 0.01f)},
      {"adam amsgrad", amsgrad_config("adam", 0.0f)},
      {"adam amsgrad decay", amsgrad_config("adam", 0.01f)},
      {"adamw amsgrad", amsgrad_config("adamw", 0.05f)},
      {"adagrad", config("adagrad")},
      {"adagrad decay", config("adagrad", 0, false, 0.01f)},
      {"adamax", config("adamax")},
      {"adamax decay", config("adamax", 0, false, 0.02f)},
      {"nadam", config("nadam")},
      {"nadam decay", config("nadam", 0, false, 0.02f)},
      {"lion", lion_config(0.0f)},
      {"lion decay", lion_config(0.02f)},
      {"adadelta", adadelta_config(0.0f)},
      {"adadelta decay", adadelta_config(0.02f)},
  };
}

double lr_at(int64_t t, bool constant) {
  return constant ? 0.05 : 0.05 / (1 + 0.3 * static_cast<double>(t));
}

}  // namespace

TEST_SUITE("optimizer") {
  // Inputs and outputs of /usr/share/libonnx-testdata/data/node/test_*/test_data_set_0 (R = 0.1, T = 0).
  TEST_CASE("Adam matches the ONNX test data") {
    check_onnx_case("Adam",
                    {{"alpha", 0.95f}, {"beta", 0.1f}, {"epsilon", 1e-7f}, {"norm_coefficient", 0.001f}},
                    {{1.2, 2.8}, {-0.94, -2.5}, {1.7, 3.6}, {0.1, 0.1}}, 1,
                    {{1.025036334991455, 2.6610326766967773},
                     {1.568060040473938, 3.295139789581299},
                     {0.8032107949256897, 5.622406959533691}});
    // test_adam_multiple's model omits the epsilon its expected outputs were computed with (1e-2;
    // onnx/onnx#7749).
    check_onnx_case("Adam",
                    {{"alpha", 0.95f}, {"beta", 0.85f}, {"epsilon", 1e-2f}, {"norm_coefficient", 0.001f}},
                    {{1}, {1, 2}, {-1}, {-1, -3}, {2}, {4, 1}, {0.5}, {1, 10}}, 2,
                    {{0.7591362595558167},
                     {0.628652811050415, 1.9745852947235107},
                     {1.8500499725341797},
                     {3.7500500679016113, 0.8000999689102173},
                     {0.5747001767158508},
                     {0.9997001886367798, 9.848200798034668}});
  }

  TEST_CASE("Momentum matches the ONNX test data") {
    Attributes standard{
        {"alpha", 0.95f}, {"beta", 0.1f}, {"mode", std::string("standard")}, {"norm_coefficient", 0.001f}};
    check_onnx_case("Momentum", standard, {{1.2, 2.8}, {-0.94, -2.5}, {1.7, 3.6}}, 1,
                    {{1.1323800086975098, 2.7077200412750244}, {0.6762000322341919, 0.922799825668335}});
    standard.set("beta", 0.85f);
    check_onnx_case("Momentum", standard, {{1}, {1, 2}, {-1}, {-1, -3}, {2}, {4, 1}}, 2,
                    {{0.9099000096321106},
                     {0.7199000120162964, 2.2047998905181885},
                     {0.9009999632835388},
                     {2.800999879837036, -2.047999858856201}});
    Attributes nesterov{
        {"alpha", 0.95f}, {"beta", 1.0f}, {"mode", std::string("nesterov")}, {"norm_coefficient", 0.01f}};
    check_onnx_case("Momentum", nesterov, {{1.2, 2.8}, {-0.94, -2.5}, {1.7, 3.6}}, 1,
                    {{1.2275350093841553, 2.9571399688720703}, {0.687000036239624, 0.9479999542236328}});
  }

  TEST_CASE("Adagrad matches the ONNX test data") {
    Attributes a{{"decay_factor", 0.1f}, {"epsilon", 1e-5f}, {"norm_coefficient", 0.001f}};
    check_onnx_case("Adagrad", a, {{1}, {-1}, {2}}, 1, {{1.0576962232589722}, {2.9980010986328125}});
    check_onnx_case("Adagrad", a, {{1}, {1, 2}, {-1}, {-1, -3}, {2}, {4, 1}}, 2,
                    {{1.0576962232589722},
                     {1.0446853637695312, 2.0948617458343506},
                     {2.9980010986328125},
                     {4.9980010986328125, 9.988003730773926}});
  }

  // The ONNX data all have T = 0; these check the T > 0 branches against the ONNX formulas.
  TEST_CASE("ONNX ops after the first update") {
    const double r = 0.1, x = 1.2, g = -0.94, v = 1.7, h = 0.3, nc = 0.001;
    const int64_t t = 3;
    double gr = g + nc * x;
    {
      double vn = 0.9 * v + 0.1 * gr, hn = 0.99 * h + 0.01 * gr * gr;
      double rate = r * std::sqrt(1 - std::pow(0.99, t)) / (1 - std::pow(0.9, t));
      double xn = x - rate * vn / (std::sqrt(hn) + 1e-6);
      auto got = run_update("Adam", {{"alpha", 0.9f}, {"beta", 0.99f}, {"norm_coefficient", 0.001f}}, 0.1f, t,
                            {{x}, {g}, {v}, {h}}, 1, DType::f64, true);
      check_close(got[0], {xn}, 1e-7, "Adam X");
      check_close(got[1], {vn}, 1e-7, "Adam V");
      check_close(got[2], {hn}, 1e-7, "Adam H");
    }
    {
      double vn = 0.9 * v + 0.5 * gr;  // beta applies from the second update on
      auto got = run_update(
          "Momentum",
          {{"alpha", 0.9f}, {"beta", 0.5f}, {"mode", std::string("standard")}, {"norm_coefficient", 0.001f}},
          0.1f, t, {{x}, {g}, {v}}, 1, DType::f64, true);
      check_close(got[0], {x - r * vn}, 1e-7, "Momentum X");
      check_close(got[1], {vn}, 1e-7, "Momentum V");
    }
    {
      double hn = h + gr * gr, rate = r / (1 + t * 0.1);
      auto got = run_update("Adagrad", {{"decay_factor", 0.1f}, {"norm_coefficient", 0.001f}}, 0.1f, t,
                            {{x}, {g}, {h}}, 1, DType::f64, true);
      check_close(got[0], {x - rate * gr / (std::sqrt(hn) + 1e-6)}, 1e-7, "Adagrad X");
      check_close(got[1], {hn}, 1e-7, "Adagrad H");
    }
  }

  TEST_CASE("malformed updates are rejected") {
    Graph g;
    ValueId R = g.add_input("R", DType::f32, Shape{});
    ValueId T = g.add_input("T", DType::i64, Shape{});
    ValueId x = g.add_input("x", DType::f32, Shape{3});
    ValueId y = g.add_input("y", DType::f32, Shape{2});
    CHECK_THROWS_AS(g.add_node("Adam", {R, T, x, x, x}, {}, 3), InputError);     // one tensor short
    CHECK_THROWS_AS(g.add_node("Adam", {R, T, x, y, x, x}, {}, 3), InputError);  // G's shape differs from X's
    CHECK_THROWS_AS(g.add_node("Adam", {R, T, x, x, x, x}, {}, 2), InputError);  // an output short
    CHECK_THROWS_AS(g.add_node("Adam", {T, T, x, x, x, x}, {}, 3), InputError);  // R is not a float
    CHECK_THROWS_AS(
        g.add_node(
            "Momentum", {R, T, x, x, x},
            {{"alpha", 0.9f}, {"beta", 1.0f}, {"mode", std::string("heavy")}, {"norm_coefficient", 0.0f}}, 2),
        InputError);
    CHECK_THROWS_AS(g.add_node("RMSpropUpdate", {R, T, x, x, x}, {{"momentum", 0.9f}}, 2), InputError);
    CHECK_NOTHROW(g.add_node("Adam", {R, T, x, y, x, y, x, y, x, y}, {}, 6));
  }

  TEST_CASE("add_optimizer follows Keras's update rules over several steps") {
    for (const BuilderCase& bc : builder_cases())
      for (DType dtype : {DType::f32, DType::f64}) {
        CAPTURE(bc.label);
        CAPTURE(dtype_name(dtype));
        const Shape shape{2, 3};
        Vec w0 = pseudo_random(6, 1, -1, 1);
        auto g = std::make_shared<Graph>();
        ValueId w = g->add_parameter("w", vec(w0, dtype).reshaped(shape));
        ValueId grad = g->add_input("grad", dtype, shape);
        ValueId lr = g->add_input("lr", DType::f32, Shape{});
        ValueId step = g->add_input("step", DType::i64, Shape{});
        auto states = add_optimizer(*g, {{w, grad}}, lr, step, bc.config);
        REQUIRE(states.size() == 1);
        CHECK(states[0].param == w);
        CHECK(states[0].grad == grad);
        for (ValueId s : states[0].slots) {
          CHECK(g->value(s).kind == ValueKind::state);
          CHECK(g->value(s).name.rfind("w/", 0) == 0);
        }

        auto backend = make_cpu_backend();
        Session sess(g, *backend);
        // The update is computed in the parameter's and its states' own buffers.
        const Node& upd = g->node(states[0].update);
        CHECK(sess.program().aliases(upd.outputs[0], w));
        for (size_t k = 0; k < states[0].slots.size(); ++k)
          CHECK(sess.program().aliases(upd.outputs[k + 1], states[0].slots[k]));

        KerasReference ref{bc.config, {}, {}, {}};
        Vec want = w0;
        for (int64_t t = 1; t <= 6; ++t) {
          Vec gv = pseudo_random(6, 100 + t, -2, 2);
          double rate = lr_at(t, bc.constant_lr);
          sess.write(grad, vec(gv, dtype).reshaped(shape));
          sess.write(lr, Tensor::scalar<float>(static_cast<float>(rate)));
          sess.write(step, Tensor::scalar<int64_t>(t));
          sess.run(StepContext{static_cast<uint64_t>(t), 0});
          ref.step(want, gv, static_cast<float>(rate), t);
          check_close(values(sess.read(w)), want, dtype == DType::f32 ? 1e-5 : 1e-10,
                      bc.label + " step " + std::to_string(t));
        }
        // Adam's and RMSprop's state holds Keras's moments exactly (SGD's velocity is Keras's times -1/lr).
        if (bc.config.kind == "adam" || bc.config.kind == "adamw") {
          check_close(values(sess.read(g->find("w/adam_m"))), ref.m, 1e-5, "adam_m");
          check_close(values(sess.read(g->find("w/adam_v"))), ref.v, 1e-5, "adam_v");
        }
        if (bc.config.amsgrad)
          check_close(values(sess.read(g->find("w/adam_vhat"))), ref.h, 1e-5, "adam_vhat");
        if (bc.config.kind == "rmsprop")
          check_close(values(sess.read(g->find("w/rms_v"))), ref.v, 1e-5, "rms_v");
        if (bc.config.centered) check_close(values(sess.read(g->find("w/rms_mg"))), ref.h, 1e-5, "rms_mg");
        if (bc.config.kind == "adagrad")
          check_close(values(sess.read(g->find("w/adagrad_accumulator"))), ref.v, 1e-5,
                      "adagrad_accumulator");
      }
  }

  TEST_CASE("add_optimizer trains through autodiff: loss = sum(w*w)") {
    for (const char* kind :
         {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adamax", "nadam", "lion", "adadelta"}) {
      CAPTURE(kind);
      OptimizerConfig c = config(kind, std::string(kind) == "sgd" ? 0.9f : 0.0f, false,
                                 std::string(kind) == "adamw" ? 0.01f : 0.0f);
      Vec w0{0.5, -1.5, 2.0};
      auto g = std::make_shared<Graph>();
      ValueId w = g->add_parameter("w", vec(w0, DType::f32));
      ValueId loss = g->op("ReduceSum", {g->op("Mul", {w, w})}, {{"keepdims", int64_t{0}}});
      auto grads = build_backward(*g, loss, {w});
      ValueId lr = g->add_input("lr", DType::f32, Shape{});
      ValueId step = g->add_input("step", DType::i64, Shape{});
      add_optimizer(*g, {{w, grads.at(w)}}, lr, step, c);
      g->mark_output(loss);
      auto backend = make_cpu_backend();
      Session sess(g, *backend);
      KerasReference ref{c, {}, {}, {}};
      Vec want = w0;
      double first_loss = 0, last_loss = 0;
      for (int64_t t = 1; t <= 5; ++t) {
        sess.write(lr, Tensor::scalar<float>(0.1f));
        sess.write(step, Tensor::scalar<int64_t>(t));
        sess.run(StepContext{static_cast<uint64_t>(t), 0});
        double l = 0;
        for (double x : want) l += x * x;
        CHECK(sess.read(loss).get_f64(0) == doctest::Approx(l).epsilon(1e-5));  // the loss before this update
        (t == 1 ? first_loss : last_loss) = l;
        Vec grad(want.size());
        for (size_t i = 0; i < want.size(); ++i) grad[i] = 2 * want[i];
        ref.step(want, grad, 0.1f, t);
        check_close(values(sess.read(w)), want, 1e-5, std::string(kind) + " step " + std::to_string(t));
      }
      CHECK(last_loss < first_loss);
    }
  }

  TEST_CASE("update steps allocate nothing, also when split across threads") {
    auto g = std::make_shared<Graph>();
    const Shape shape{1 << 16};  // above the parallel grain
    ValueId lr = g->add_input("lr", DType::f32, Shape{});
    ValueId step = g->add_input("step", DType::i64, Shape{});
    ValueId grad = g->add_input("grad", DType::f32, shape);
    int i = 0;
    for (const BuilderCase& bc : builder_cases()) {
      ValueId w = g->add_parameter("w" + std::to_string(i++), Tensor(DType::f32, shape));
      add_optimizer(*g, {{w, grad}}, lr, step, bc.config);
    }
    ValueId x = g->add_parameter("x", Tensor(DType::f32, shape));
    ValueId h = g->add_state("h", Tensor(DType::f32, shape));
    auto outs = g->node(g->add_node("Adagrad", {lr, step, x, grad, h}, {}, 2)).outputs;
    g->bind_update(outs[0], x);
    g->bind_update(outs[1], h);
    auto backend = make_cpu_backend();
    Session sess(g, *backend);
    Tensor gv(DType::f32, shape);
    for (int64_t j = 0; j < gv.numel(); ++j) gv.data<float>()[j] = static_cast<float>(j % 7) - 3;
    sess.write(grad, gv);
    float rate = 0.01f;
    int64_t t = 1;
    sess.write(lr, &rate, sizeof rate);
    sess.write(step, &t, sizeof t);
    sess.run({});  // warm-up: thread pool start
    test::arm_allocation_counter();
    for (t = 2; t < 5; ++t) {
      sess.write(step, &t, sizeof t);
      sess.run({static_cast<uint64_t>(t), 0});
    }
    CHECK(test::disarm_allocation_counter() == 0);
    CHECK(sess.read(x).get_f64(0) > 0);  // g[0] = -3 pushes x up
  }

  TEST_CASE("add_optimizer rejects unknown kinds and bad hyperparameters") {
    Graph g;
    ValueId w = g.add_parameter("w", Tensor(DType::f32, Shape{2}));
    ValueId gr = g.add_input("g", DType::f32, Shape{2});
    ValueId lr = g.add_input("lr", DType::f32, Shape{});
    ValueId step = g.add_input("step", DType::i64, Shape{});
    CHECK_THROWS_AS(add_optimizer(g, {{w, gr}}, lr, step, config("adafactor")), InputError);
    CHECK_THROWS_AS(add_optimizer(g, {{w, gr}}, lr, step, config("sgd", 1.5f)), InputError);
    OptimizerConfig c = config("adam");
    c.beta1 = 1.0f;
    CHECK_THROWS_AS(add_optimizer(g, {{w, gr}}, lr, step, c), InputError);
    CHECK_THROWS_AS(add_optimizer(g, {{w, gr}}, lr, step, amsgrad_config("nadam", 0)), InputError);
    c = config("adam");
    c.centered = true;
    CHECK_THROWS_AS(add_optimizer(g, {{w, gr}}, lr, step, c), InputError);
    // Plain SGD keeps no state; momentum SGD one velocity; Adam two moments.
    CHECK(add_optimizer(g, {{w, gr}}, lr, step, config("sgd"))[0].slots.empty());
  }
}
