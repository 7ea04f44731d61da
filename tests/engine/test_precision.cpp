// Mixed precision (engine/plan/precision.h): which nodes the bf16/fp16 rewrite moves, that parameters,
// gradients and the loss stay f32 with their ids, and that a bf16 training run on the CPU learns like fp32.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "cpu_features.h"
#include "engine/data/synthetic.h"
#include "engine/plan/precision.h"
#include "engine/train/session.h"
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

struct Run {
  std::vector<float> losses;
  std::vector<Tensor> params;
  DynamicLossScaler scaler;
};

Run train(Precision p, int steps, bool loss_scaling = false, float initial_scale = 65536.0f) {
  const int per_class = 64, batch = 3 * per_class;
  Model m = mlp(batch);
  const ValueId x = m.x, y = m.y;
  TrainingOptions opt;
  opt.precision = p;
  opt.loss_scaling = loss_scaling;
  opt.loss_scale.initial_scale = initial_scale;
  TrainingGraph tg = build_training_graph(std::move(m.g), m.loss, opt);
  auto backend = make_cpu_backend();
  Trainer tr(std::move(tg), *backend, 1, opt);
  data::Synthetic ds = data::spirals(per_class, 3, 0.1f, 2);
  Run r;
  for (int s = 0; s < steps; ++s) {
    tr.feed(x, ds.x);
    tr.feed(y, ds.y);
    r.losses.push_back(tr.step(0.01f));
  }
  for (const OptimizerState& st : tr.training_graph().parameters) r.params.push_back(tr.read(st.param));
  r.scaler = tr.loss_scaler();
  return r;
}

bool same_bits(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].nbytes() != b[i].nbytes() || std::memcmp(a[i].raw(), b[i].raw(), a[i].nbytes()) != 0)
      return false;
  return true;
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
    // The rewritten nodes keep their phase: the forward GEMMs are forward, their gradients backward.
    REQUIRE(tg.phase.size() == static_cast<size_t>(g.num_nodes()));
    int forward = 0, backward = 0;
    for (NodeId n = 0; n < g.num_nodes(); ++n) {
      if (g.node(n).dead || !runs_in_low_precision(g.node(n).op)) continue;
      (tg.phase[n] == 0 ? forward : backward) += 1;
      CHECK(tg.phase[n] != 2);
    }
    CHECK(forward == 2);
    CHECK(backward >= 2);
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

  TEST_CASE("precision: a bf16 run on the CPU follows the fp32 run and learns" *
            doctest::skip(!test::cpu_runs_bf16())) {
    std::vector<float> full = train(Precision::fp32, 60).losses, half = train(Precision::bf16, 60).losses;
    // bf16 operands carry 8 significant bits: the curves agree to a few percent, not bitwise.
    CHECK(half.front() == doctest::Approx(full.front()).epsilon(0.02));
    CHECK(half.back() == doctest::Approx(full.back()).epsilon(0.15));
    CHECK(half.back() < 0.8f * half.front());
    CHECK(half != full);  // the bf16 path really ran
  }

  TEST_CASE("precision: a power-of-two loss scale changes no bit of an fp32 run") {
    Run plain = train(Precision::fp32, 20), scaled = train(Precision::fp32, 20, true, 1024.0f);
    CHECK(plain.losses == scaled.losses);
    CHECK(same_bits(plain.params, scaled.params));
    CHECK(scaled.scaler.skipped_steps() == 0);
    CHECK(scaled.scaler.applied_steps() == 20);
  }

  TEST_CASE("precision: an overflowing step changes nothing but the scale") {
    // loss = sum(w * x) with x = 1000: the scaled gradient x * 2^127 overflows until the scale has backed off
    // to 2^118 (1000 * 2^118 < 2^128), so the first 9 steps are skipped and the 10th applies an SGD step of
    // -lr * x.
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{4});
    g.add_parameter("w", Tensor::from<float>({4}, {0, 0, 0, 0}));
    ValueId loss = g.op("ReduceSum", {g.op("Mul", {g.find("w"), x})}, {{"keepdims", int64_t{0}}});
    TrainingOptions opt;
    opt.optimizer.kind = "sgd";
    opt.fuse = false;
    opt.loss_scaling = true;
    opt.loss_scale.initial_scale = 1.7014118e38f;  // 2^127
    TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
    auto backend = make_cpu_backend();
    Trainer tr(std::move(tg), *backend, 1, opt);
    const Tensor xs = Tensor::from<float>({4}, {1000, 1000, 1000, 1000});
    for (int i = 0; i < 9; ++i) {
      tr.feed(x, xs);
      tr.step(0.5f);
      CAPTURE(i);
      CHECK(tr.parameter("w").to_vector<float>() == std::vector<float>(4, 0.0f));
    }
    CHECK(tr.loss_scaler().skipped_steps() == 9);
    CHECK(tr.loss_scaler().scale() == std::ldexp(1.0f, 118));
    tr.feed(x, xs);
    tr.step(0.5f);
    CHECK(tr.loss_scaler().applied_steps() == 1);
    CHECK(tr.parameter("w").to_vector<float>() == std::vector<float>(4, -500.0f));
  }

  TEST_CASE("precision: the dynamic loss scaler grows, backs off and stays in range") {
    LossScaleOptions o;
    o.initial_scale = 8;
    o.growth_interval = 3;
    o.min_scale = 2;
    o.max_scale = 32;
    DynamicLossScaler s(o);
    for (int i = 0; i < 3; ++i) s.update(true);
    CHECK(s.scale() == 16);
    for (int i = 0; i < 9; ++i) s.update(true);
    CHECK(s.scale() == 32);  // capped
    s.update(false);
    CHECK(s.scale() == 16);
    CHECK(s.good_steps() == 0);
    for (int i = 0; i < 5; ++i) s.update(false);
    CHECK(s.scale() == 2);  // floored
    CHECK(s.applied_steps() == 12);
    CHECK(s.skipped_steps() == 6);
    DynamicLossScaler unscaled;
    unscaled.update(false, false);  // without scaling every step counts
    CHECK(unscaled.applied_steps() == 1);
    CHECK(unscaled.skipped_steps() == 0);
  }

  TEST_CASE("precision: the CPU's casts between f32 and bf16 round as Tensor's conversions, bit for bit") {
    // Ties to even both ways, values that round up into the next binade or to infinity, NaN, infinities,
    // subnormals and zeros of both signs; enough of them to split among threads.
    const std::vector<uint32_t> special = {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x7fc00001u,
                                           0xff800001u, 0x7f800000u, 0xff800000u, 0x00000001u, 0x80000000u,
                                           0x00000000u, 0x3f7fffffu, 0xc0490fdbu};
    const int64_t n = 100000;
    Tensor x(DType::f32, Shape{n});
    uint32_t state = 12345u;
    for (int64_t i = 0; i < n; ++i) {
      state = state * 1664525u + 1013904223u;  // every bit pattern is fair game
      const uint32_t bits =
          i < static_cast<int64_t>(special.size()) ? special[static_cast<size_t>(i)] : state;
      std::memcpy(x.data<float>() + i, &bits, 4);
    }
    auto g = std::make_shared<Graph>();
    const ValueId in = g->add_input("x", DType::f32, Shape{n});
    const ValueId half = g->op("Cast", {in}, {{"to", int64_t{dtype_to_onnx(DType::bf16)}}});
    const ValueId back = g->op("Cast", {half}, {{"to", int64_t{dtype_to_onnx(DType::f32)}}});
    g->mark_output(half);
    g->mark_output(back);
    auto backend = make_cpu_backend();
    Session s(g, *backend);
    s.write(in, x);
    s.run(StepContext{});
    const Tensor h = s.read(half), f = s.read(back);
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t want = f32_to_bf16(x.data<float>()[i]);
      const uint16_t got = static_cast<const uint16_t*>(h.raw())[i];
      uint32_t round_trip;
      std::memcpy(&round_trip, f.data<float>() + i, 4);
      if (got != want || round_trip != static_cast<uint32_t>(want) << 16) ++wrong;
      if (i < static_cast<int64_t>(special.size())) CHECK_MESSAGE(got == want, "element " << i);
    }
    CHECK(wrong == 0);
  }
}
