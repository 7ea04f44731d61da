// Mixed precision (engine/plan/precision.h): which nodes the bf16/fp16 rewrite moves, that parameters,
// gradients and the loss stay f32 with their ids, and that a bf16 training run on the CPU learns like fp32.
#include <doctest/doctest.h>

#include <map>

#include "engine/data/synthetic.h"
#include "engine/plan/precision.h"
#include "engine/train/training.h"
#include "models/layers.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

struct Model {
  Graph g;
  ValueId x, y, loss;
};

// Dense relu -> Dense: with fusion, a FusedGemm and a MatMul with a bias Add.
Model mlp(int batch) {
  Model m;
  m.x = m.g.add_input("x", DType::f32, Shape{batch, 2});
  m.y = m.g.add_input("y", DType::i64, Shape{batch});
  models::LayerContext ctx{m.g, 1};
  ValueId h = models::dense(ctx, m.x, 32, "relu", "d1");
  ValueId logits = models::dense(ctx, h, 3, "linear", "d2");
  m.loss = m.g.op("SoftmaxCrossEntropyLoss", {logits, m.y});
  return m;
}

int count_live(const Graph& g, const std::string& op) {
  int n = 0;
  for (NodeId i = 0; i < g.num_nodes(); ++i) n += !g.node(i).dead && g.node(i).op == op;
  return n;
}

std::vector<float> train(Precision p, int steps) {
  const int per_class = 64, batch = 3 * per_class;
  Model m = mlp(batch);
  const ValueId x = m.x, y = m.y;
  TrainingOptions opt;
  opt.precision = p;
  TrainingGraph tg = build_training_graph(std::move(m.g), m.loss, opt);
  auto backend = make_cpu_backend();
  Trainer tr(std::move(tg), *backend, 1, opt);
  data::Synthetic ds = data::spirals(per_class, 3, 0.1f, 2);
  std::vector<float> losses;
  for (int s = 0; s < steps; ++s) {
    tr.feed(x, ds.x);
    tr.feed(y, ds.y);
    losses.push_back(tr.step(0.01f));
  }
  return losses;
}

}  // namespace

TEST_SUITE("precision") {
  TEST_CASE("precision: names parse and print") {
    for (Precision p : {Precision::fp32, Precision::tf32, Precision::bf16, Precision::fp16})
      CHECK(parse_precision(precision_name(p)) == p);
    CHECK_FALSE(parse_precision("fp8").has_value());
    CHECK_FALSE(parse_precision("auto").has_value());  // resolved by the CLI, never by the engine
    CHECK(runs_in_low_precision("MatMul"));
    CHECK(runs_in_low_precision("ConvGradWeight"));
    CHECK_FALSE(runs_in_low_precision("Add"));
    CHECK_FALSE(runs_in_low_precision("SoftmaxCrossEntropyLoss"));
  }

  TEST_CASE("precision: bf16 moves every GEMM, forward and backward, and keeps the rest f32") {
    Model m = mlp(8);
    TrainingOptions opt;
    opt.precision = Precision::bf16;
    const ValueId loss = m.loss;
    TrainingGraph tg = build_training_graph(std::move(m.g), m.loss, opt);
    const Graph& g = *tg.graph;
    g.validate();
    CHECK(tg.loss == loss);
    CHECK(g.value(tg.loss).dtype == DType::f32);
    int heavy = 0;
    for (NodeId n = 0; n < g.num_nodes(); ++n) {
      const Node& node = g.node(n);
      if (node.dead) continue;
      CAPTURE(node.name);
      if (runs_in_low_precision(node.op)) {
        ++heavy;
        for (ValueId v : node.inputs)
          if (v != kNoValue && is_float(g.value(v).dtype)) CHECK(g.value(v).dtype == DType::bf16);
        for (ValueId v : node.outputs)
          if (v != kNoValue) CHECK(g.value(v).dtype == DType::bf16);
      } else if (node.op != "Cast") {
        for (ValueId v : node.inputs)
          if (v != kNoValue) CHECK(g.value(v).dtype != DType::bf16);
      }
    }
    CHECK(heavy >= 4);  // two forward GEMMs and their input and weight gradients
    for (const OptimizerState& p : tg.parameters) CHECK(g.value(p.param).dtype == DType::f32);
    for (ValueId grad : tg.gradients) CHECK(g.value(grad).dtype == DType::f32);
    // One cast per value and direction: a weight read by the forward GEMM and by the input-gradient GEMM is
    // cast once.
    std::map<ValueId, int> casts_of;
    for (NodeId n = 0; n < g.num_nodes(); ++n)
      if (!g.node(n).dead && g.node(n).op == "Cast") ++casts_of[g.node(n).inputs[0]];
    for (const auto& [v, k] : casts_of) CHECK_MESSAGE(k == 1, g.value(v).name);
  }

  TEST_CASE("precision: fp32 and tf32 leave the graph alone, and so does bf16 on f64 math") {
    for (Precision p : {Precision::fp32, Precision::tf32}) {
      Model m = mlp(4);
      const int before = m.g.num_nodes();
      CHECK(apply_precision(m.g, p).nodes == 0);
      CHECK(m.g.num_nodes() == before);
    }
    Graph g;
    ValueId x = g.add_input("x", DType::f64, Shape{4, 2});
    ValueId w = g.add_parameter("w", Tensor(DType::f64, Shape{2, 3}));
    g.mark_output(g.op("MatMul", {x, w}));
    CHECK(apply_precision(g, Precision::bf16).nodes == 0);
    CHECK(count_live(g, "Cast") == 0);
  }

  TEST_CASE("precision: a bf16 run on the CPU follows the fp32 run and learns") {
    std::vector<float> full = train(Precision::fp32, 60), half = train(Precision::bf16, 60);
    // bf16 operands carry 8 significant bits: the curves agree to a few percent, not bitwise.
    CHECK(half.front() == doctest::Approx(full.front()).epsilon(0.02));
    CHECK(half.back() == doctest::Approx(full.back()).epsilon(0.15));
    CHECK(half.back() < 0.8f * half.front());
    CHECK(half != full);  // the bf16 path really ran
  }
}
