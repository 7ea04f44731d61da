// Fusion rewrites: the patterns are found, the fused graph computes the same loss and gradients as the
// unfused one, and values held by the caller keep their ids.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/autodiff/autodiff.h"
#include "engine/ops/op_helpers.h"
#include "engine/plan/fusion.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

struct Mlp {
  std::shared_ptr<Graph> g;
  ValueId x, y, probs, loss;
};

// x -> MatMul+Add+Relu -> MatMul+Add -> Softmax -> Log -> NLL, with the probabilities kept as a graph output.
Mlp build() {
  Mlp m;
  m.g = std::make_shared<Graph>();
  Graph& g = *m.g;
  m.x = g.add_input("x", DType::f64, Shape{4, 3});
  m.y = g.add_input("y", DType::i64, Shape{4});
  ValueId w1 = g.add_parameter("w1", ops::random_tensor({3, 5}, -1, 1, 1));
  ValueId b1 = g.add_parameter("b1", ops::random_tensor({5}, -1, 1, 2));
  ValueId w2 = g.add_parameter("w2", ops::random_tensor({5, 3}, -1, 1, 3));
  ValueId b2 = g.add_parameter("b2", ops::random_tensor({3}, -1, 1, 4));
  ValueId h = g.op("Relu", {g.op("Add", {g.op("MatMul", {m.x, w1}), b1})});
  ValueId logits = g.op("Add", {b2, g.op("MatMul", {h, w2})});
  m.probs = g.op("Softmax", {logits}, {{"axis", int64_t{1}}});
  m.loss = g.op("NegativeLogLikelihoodLoss", {g.op("Log", {m.probs}), m.y});
  g.mark_output(m.probs);
  return m;
}

struct Result {
  double loss;
  std::vector<Tensor> grads;
  Tensor probs;
};

Result run(Mlp& m, bool fused, FusionReport* report) {
  Graph& g = *m.g;
  if (fused) *report = fuse(g);
  auto params = trainable_parameters(g);
  auto grads = build_backward(g, m.loss, params);
  g.mark_output(m.loss);
  for (ValueId p : params) g.mark_output(grads.at(p));
  auto backend = make_cpu_backend();
  Session s(m.g, *backend);
  s.write(m.x, ops::random_tensor({4, 3}, -1, 1, 9));
  s.write(m.y, Tensor::from<int64_t>({4}, {0, 2, 1, 2}));
  s.run({});
  Result r{s.read(m.loss).get_f64(0), {}, s.read(m.probs)};
  for (ValueId p : params) r.grads.push_back(s.read(grads.at(p)));
  return r;
}

int count_op(const Graph& g, const std::string& op) {
  int n = 0;
  for (NodeId i = 0; i < g.num_nodes(); ++i) n += !g.node(i).dead && g.node(i).op == op;
  return n;
}

}  // namespace

TEST_SUITE("fusion") {
  TEST_CASE("fusion: bias+activation GEMM and softmax cross-entropy, same numbers") {
    Mlp plain = build(), fused = build();
    FusionReport rep;
    Result a = run(plain, false, nullptr);
    Result b = run(fused, true, &rep);
    CHECK(rep.gemm_bias_activation == 2);
    CHECK(rep.softmax_cross_entropy == 1);
    CHECK(count_op(*fused.g, "MatMul") == 0);
    CHECK(count_op(*fused.g, "NegativeLogLikelihoodLoss") == 0);
    CHECK(count_op(*fused.g, "Softmax") == 1);  // still needed: the probabilities are an output
    CHECK(count_op(*fused.g, "SoftmaxCrossEntropyLoss") == 1);
    CHECK(fused.g->value(fused.loss).producer >= 0);  // the caller's loss id is still the loss
    CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-12));
    for (int64_t i = 0; i < a.probs.numel(); ++i)
      CHECK(b.probs.get_f64(i) == doctest::Approx(a.probs.get_f64(i)));
    REQUIRE(a.grads.size() == b.grads.size());
    for (size_t k = 0; k < a.grads.size(); ++k)
      for (int64_t i = 0; i < a.grads[k].numel(); ++i)
        CHECK(b.grads[k].get_f64(i) == doctest::Approx(a.grads[k].get_f64(i)).epsilon(1e-9));
  }

  TEST_CASE("fusion: a MatMul whose result is read elsewhere is left alone") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2, 3});
    ValueId w = g.add_parameter("w", ops::random_tensor({3, 4}, -1, 1, 1, DType::f32));
    ValueId b = g.add_parameter("b", ops::random_tensor({4}, -1, 1, 2, DType::f32));
    ValueId mm = g.op("MatMul", {x, w});
    g.op("Add", {mm, b});
    g.mark_output(mm);
    FusionReport r = fuse(g);
    CHECK(r.gemm_bias_activation == 0);
  }
}

TEST_SUITE("fusion") {
  TEST_CASE("fusion: sigmoid + binary cross-entropy becomes the logits form, with the same numbers") {
    auto build = [] {
      auto g = std::make_shared<Graph>();
      ValueId x = g->add_input("x", DType::f64, Shape{5, 1});
      ValueId t = g->add_input("t", DType::f64, Shape{5, 1});
      ValueId w = g->add_parameter("w", ops::random_tensor({1}, 0.5, 1.5, 3));
      ValueId loss = g->op("BinaryCrossEntropy", {g->op("Sigmoid", {g->op("Mul", {x, w})}), t});
      return std::tuple{g, x, t, w, loss};
    };
    double losses[2], grads[2];
    for (int fused = 0; fused < 2; ++fused) {
      auto [g, x, t, w, loss] = build();
      if (fused) CHECK(fuse(*g).sigmoid_binary_cross_entropy == 1);
      CHECK(count_op(*g, "BinaryCrossEntropy") == 1 - fused);
      auto gw = build_backward(*g, loss, {w});
      g->mark_output(loss);
      g->mark_output(gw.at(w));
      auto backend = make_cpu_backend();
      Session s(g, *backend);
      s.write(x, ops::random_tensor({5, 1}, -3, 3, 4));
      s.write(t, Tensor::from<double>({5, 1}, {0, 1, 1, 0, 1}));
      s.run({});
      losses[fused] = s.read(loss).get_f64(0);
      grads[fused] = s.read(gw.at(w)).get_f64(0);
    }
    CHECK(losses[1] == doctest::Approx(losses[0]).epsilon(1e-12));
    CHECK(grads[1] == doctest::Approx(grads[0]).epsilon(1e-9));
  }
}

TEST_SUITE("fusion") {
  TEST_CASE("fusion: the erf formula of GELU, as exporters write it, becomes Gelu with the same numbers") {
    // form 0: x * (erf(x / sqrt 2) + 1) * 0.5 (PyTorch); form 1: (x * 0.5) * (1 + erf(x * (1 / sqrt 2)));
    // form 2: form 0 with a wrong constant (x / 2), which must stay as it is.
    for (int form = 0; form < 3; ++form) {
      CAPTURE(form);
      double losses[2];
      std::vector<double> grads[2];
      for (int fused = 0; fused < 2; ++fused) {
        auto g = std::make_shared<Graph>();
        ValueId x = g->add_input("x", DType::f64, Shape{3, 4});
        ValueId w = g->add_parameter("w", ops::random_tensor({4, 4}, -1, 1, 5));
        ValueId h = g->op("MatMul", {x, w});
        auto c = [&](double v) { return g->add_constant(g->unique_name("c"), Tensor::scalar<double>(v)); };
        ValueId y;
        if (form == 1) {
          ValueId e = g->op("Erf", {g->op("Mul", {h, c(1 / std::sqrt(2.0))})});
          y = g->op("Mul", {g->op("Mul", {h, c(0.5)}), g->op("Add", {c(1), e})});
        } else {
          ValueId e = g->op("Erf", {g->op("Div", {h, c(form == 0 ? std::sqrt(2.0) : 2.0)})});
          y = g->op("Mul", {g->op("Mul", {h, g->op("Add", {e, c(1)})}), c(0.5)});
        }
        ValueId loss = g->op("ReduceSum", {g->op("Mul", {y, y})}, {{"keepdims", int64_t{0}}});
        if (fused) {
          FusionOptions o;
          o.gemm_bias_activation = false;
          CHECK(fuse(*g, o).erf_gelu == (form == 2 ? 0 : 1));
          CHECK(count_op(*g, "Erf") == (form == 2 ? 1 : 0));
          CHECK(count_op(*g, "Gelu") == (form == 2 ? 0 : 1));
        }
        auto gw = build_backward(*g, loss, {w});
        g->mark_output(loss);
        g->mark_output(gw.at(w));
        auto backend = make_cpu_backend();
        Session s(g, *backend);
        s.write(x, ops::random_tensor({3, 4}, -2, 2, 6));
        s.run({});
        losses[fused] = s.read(loss).get_f64(0);
        Tensor gt = s.read(gw.at(w));
        for (int64_t i = 0; i < gt.numel(); ++i) grads[fused].push_back(gt.get_f64(i));
      }
      CHECK(losses[1] == doctest::Approx(losses[0]).epsilon(1e-12));
      for (size_t i = 0; i < grads[0].size(); ++i)
        CHECK(grads[1][i] == doctest::Approx(grads[0][i]).epsilon(1e-9));
    }
  }
}
