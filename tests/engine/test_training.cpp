// End to end through the C++ API: models train to a loss threshold (MLP; MLP with BatchNorm and Dropout
// evaluated in inference form; LSTM sequence classifier), and training is bitwise deterministic for a fixed
// seed.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "alloc_counter.h"
#include "engine/data/synthetic.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/training.h"
#include "models/layers.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

// Rows [start, start + count) of a dataset tensor.
Tensor rows(const Tensor& t, int64_t start, int64_t count) {
  std::vector<int64_t> dims = t.shape().dims();
  int64_t row_bytes = static_cast<int64_t>(t.nbytes()) / dims[0];
  dims[0] = count;
  Tensor out(t.dtype(), Shape(dims));
  std::memcpy(out.raw(), static_cast<const std::byte*>(t.raw()) + start * row_bytes, count * row_bytes);
  return out;
}

double accuracy(const Tensor& logits, const Tensor& labels) {
  int64_t n = logits.shape()[0], c = logits.shape()[1], ok = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* r = logits.data<float>() + i * c;
    ok += (std::max_element(r, r + c) - r) == labels.data<int64_t>()[i];
  }
  return static_cast<double>(ok) / n;
}

struct MlpRun {
  float final_loss = 0;
  std::vector<Tensor> params;
  double eval_accuracy = 0;
};

// Trains a spiral MLP; with `regularized`, a BatchNorm (training mode, running statistics bound as state) and
// a Dropout sit after the first layer, and accuracy is measured on an inference graph that shares the
// parameters.
MlpRun train_mlp(bool regularized, uint64_t seed, int epochs) {
  const int batch = 50, classes = 3;
  data::Synthetic ds = data::spirals(100, classes, 0.1f, 3);
  const int64_t n = ds.x.shape()[0];
  auto build = [&](Graph& g, bool training, int64_t b) {
    ValueId x = g.add_input("x", DType::f32, Shape{b, 2});
    models::LayerContext ctx{g, seed};
    ValueId h = models::dense(ctx, x, 64, "linear", "dense_1");
    if (regularized) {
      ValueId gamma = g.add_parameter("bn/gamma", Tensor::from<float>({64}, std::vector<float>(64, 1.0f)));
      ValueId beta = g.add_parameter("bn/beta", Tensor(DType::f32, Shape{64}));
      ValueId mean = g.add_state("bn/moving_mean", Tensor(DType::f32, Shape{64}));
      ValueId var =
          g.add_state("bn/moving_variance", Tensor::from<float>({64}, std::vector<float>(64, 1.0f)));
      Attributes a{{"epsilon", 1e-3f}, {"momentum", 0.9f}, {"training_mode", int64_t{training ? 1 : 0}}};
      NodeId bn = g.add_node("BatchNormalization", {h, gamma, beta, mean, var}, a, training ? 3 : 1, "bn");
      h = g.node(bn).outputs[0];
      if (training) {
        g.bind_update(g.node(bn).outputs[1], mean);
        g.bind_update(g.node(bn).outputs[2], var);
      }
    }
    h = g.op("Relu", {h});
    if (regularized && training) {
      ValueId ratio = g.add_constant("dropout/ratio", Tensor::scalar<float>(0.1f));
      ValueId mode = g.add_constant("dropout/training", Tensor::scalar<bool>(true));
      h = g.op("Dropout", {h, ratio, mode});
    }
    h = models::dense(ctx, h, 64, "relu", "dense_2");
    ValueId logits = models::dense(ctx, h, classes, "linear", "dense_3");
    g.mark_output(logits);
    return std::pair{x, logits};
  };
  Graph g;
  auto [x, logits] = build(g, true, batch);
  ValueId y = g.add_input("y", DType::i64, Shape{batch});
  ValueId loss = g.op("SoftmaxCrossEntropyLoss", {logits, y});
  TrainingOptions opt;
  TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
  auto backend = make_cpu_backend();
  Trainer tr(std::move(tg), *backend, seed, opt);
  MlpRun run;
  for (int e = 0; e < epochs; ++e) {
    double sum = 0;
    for (int64_t b = 0; b < n / batch; ++b) {
      // A fixed stride permutation per epoch mixes the classes in every batch.
      Tensor bx(DType::f32, Shape{batch, 2}), by(DType::i64, Shape{batch});
      for (int i = 0; i < batch; ++i) {
        int64_t k = (b + i * (n / batch) + e * 7) % n;
        std::memcpy(bx.data<float>() + 2 * i, ds.x.data<float>() + 2 * k, 2 * sizeof(float));
        by.data<int64_t>()[i] = ds.y.data<int64_t>()[k];
      }
      tr.feed(x, bx);
      tr.feed(y, by);
      sum += tr.step(0.01f);
    }
    run.final_loss = static_cast<float>(sum / (n / batch));
  }
  const Graph& tgraph = *tr.training_graph().graph;
  for (ValueId v = 0; v < tgraph.num_values(); ++v)
    if (tgraph.value(v).persistent() && tgraph.value(v).kind != ValueKind::constant)
      run.params.push_back(tr.read(v));

  // Inference graph over the whole dataset, sharing parameters and running statistics by name.
  auto eg = std::make_shared<Graph>();
  auto [ex, elogits] = build(*eg, false, n);
  Session eval(eg, *backend);
  for (ValueId v = 0; v < eg->num_values(); ++v) {
    if (!eg->value(v).persistent() || eg->value(v).kind == ValueKind::constant) continue;
    eval.write(v, tr.parameter(eg->value(v).name));
  }
  eval.write(ex, ds.x);
  eval.run({});
  run.eval_accuracy = accuracy(eval.read(elogits), ds.y);
  return run;
}

}  // namespace

TEST_SUITE("training") {
  TEST_CASE("training: an MLP learns the spirals") {
    MlpRun r = train_mlp(false, 11, 60);
    MESSAGE("MLP final loss " << r.final_loss << ", accuracy " << r.eval_accuracy);
    CHECK(r.final_loss < 0.15f);
    CHECK(r.eval_accuracy > 0.95);
  }

  TEST_CASE("training: with BatchNorm and Dropout, evaluated in inference form") {
    MlpRun r = train_mlp(true, 11, 60);
    MESSAGE("MLP+BN+Dropout final loss " << r.final_loss << ", inference accuracy " << r.eval_accuracy);
    CHECK(r.final_loss < 0.3f);
    CHECK(r.eval_accuracy > 0.93);
  }

  TEST_CASE("training: two runs with the same seed are bitwise equal; another seed differs") {
    MlpRun a = train_mlp(true, 5, 3), b = train_mlp(true, 5, 3), c = train_mlp(true, 6, 3);
    REQUIRE(a.params.size() == b.params.size());
    REQUIRE(a.params.size() > 4);
    bool same = true, differs = false;
    for (size_t i = 0; i < a.params.size(); ++i) {
      same &= std::memcmp(a.params[i].raw(), b.params[i].raw(), a.params[i].nbytes()) == 0;
      differs |= std::memcmp(a.params[i].raw(), c.params[i].raw(), a.params[i].nbytes()) != 0;
    }
    CHECK(same);
    CHECK(differs);
  }

  TEST_CASE("training: an LSTM classifies sequences by their first value") {
    const int batch = 32, len = 8, hidden = 16, n = 512;
    data::Synthetic ds = data::first_sign_sequences(n, len, 21);
    Graph g;
    // ONNX LSTM with layout = 1 takes [batch, seq, features], as Keras does.
    ValueId x = g.add_input("x", DType::f32, Shape{batch, len, 1});
    ValueId y = g.add_input("y", DType::i64, Shape{batch});
    uint64_t seed = 3;
    ValueId W = g.add_parameter("lstm/W", models::glorot_uniform({1, 4 * hidden, 1}, 1, 4 * hidden, seed));
    ValueId R = g.add_parameter(
        "lstm/R", models::glorot_uniform({1, 4 * hidden, hidden}, hidden, 4 * hidden, seed + 1));
    // Keras's unit_forget_bias: the forget gate (third block in ONNX's i, o, f, c order) starts at bias 1.
    Tensor bias(DType::f32, Shape{1, 8 * hidden});
    for (int i = 2 * hidden; i < 3 * hidden; ++i) bias.data<float>()[i] = 1.0f;
    ValueId B = g.add_parameter("lstm/B", bias);
    NodeId lstm =
        g.add_node_named("LSTM", {x, W, R, B}, {{"hidden_size", int64_t{hidden}}, {"layout", int64_t{1}}},
                         {"", "lstm/h", ""}, "lstm");
    ValueId h = g.op("Reshape", {g.node(lstm).outputs[1],
                                 g.add_constant("shape", Tensor::from<int64_t>({2}, {batch, hidden}))});
    models::LayerContext ctx{g, seed};
    ValueId logits = models::dense(ctx, h, 2, "linear", "head");
    ValueId loss = g.op("SoftmaxCrossEntropyLoss", {logits, y});
    TrainingOptions opt;
    TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
    auto backend = make_cpu_backend();
    Trainer tr(std::move(tg), *backend, seed, opt);
    float last = 0;
    for (int e = 0; e < 25; ++e) {
      double sum = 0;
      for (int b = 0; b < n / batch; ++b) {
        tr.feed(x, rows(ds.x, b * batch, batch));
        tr.feed(y, rows(ds.y, b * batch, batch));
        sum += tr.step(0.01f);
      }
      last = static_cast<float>(sum / (n / batch));
    }
    MESSAGE("LSTM final loss " << last);
    CHECK(last < 0.1f);
  }

  TEST_CASE("training: a training step allocates nothing") {
    const int batch = 32;
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{batch, 2});
    ValueId y = g.add_input("y", DType::i64, Shape{batch});
    models::LayerContext ctx{g, 1};
    ValueId h = models::dense(ctx, x, 32, "relu", "d1");
    ValueId logits = models::dense(ctx, h, 3, "linear", "d2");
    ValueId loss = g.op("SoftmaxCrossEntropyLoss", {logits, y});
    TrainingOptions opt;
    TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
    auto backend = make_cpu_backend();
    Trainer tr(std::move(tg), *backend, 1, opt);
    data::Synthetic ds = data::spirals(32, 3, 0.1f, 1);
    Tensor bx = rows(ds.x, 0, batch), by = rows(ds.y, 0, batch);
    tr.feed(x, bx);
    tr.feed(y, by);
    tr.step(0.01f);  // warm-up
    test::arm_allocation_counter();
    for (int i = 0; i < 5; ++i) {
      tr.feed(x, bx.raw(), bx.nbytes());
      tr.feed(y, by.raw(), by.nbytes());
      tr.step(0.01f);
    }
    test::AllocationCounts c = test::disarm_allocation_counts();
    // trainer's own code allocates nothing. oneDNN 2.6's dnnl_primitive_execute builds a small argument map
    // per call inside the library; that is all it may do: a handful of small blocks per primitive call, never
    // a buffer.
    MESSAGE("allocations in 5 steps: " << c.total << " total, " << c.in_onednn << " inside oneDNN ("
                                       << c.bytes_in_onednn << " bytes)");
    CHECK(c.outside_onednn() == 0);
    CHECK(c.bytes_in_onednn < 5 * 64 * 1024);
  }
}

TEST_SUITE("training") {
  TEST_CASE("training: clipping by global norm bounds the SGD step") {
    // loss = sum(w * x) with x large: the raw gradient is x; clipped, the step has norm lr * clipnorm.
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{4});
    ValueId w = g.add_parameter("w", Tensor::from<float>({4}, {0, 0, 0, 0}));
    ValueId loss = g.op("ReduceSum", {g.op("Mul", {w, x})}, {{"keepdims", int64_t{0}}});
    TrainingOptions opt;
    opt.optimizer.kind = "sgd";
    opt.global_clipnorm = 2.0f;
    opt.fuse = false;
    TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
    REQUIRE(tg.gradient_norm != kNoValue);
    auto backend = make_cpu_backend();
    Trainer tr(tg, *backend, 1, opt);
    tr.feed(x, Tensor::from<float>({4}, {30, 40, 0, 0}));  // |g| = 50
    tr.step(0.5f);
    Tensor wt = tr.parameter("w");
    CHECK(wt.data<float>()[0] == doctest::Approx(-0.5 * 2 * 30 / 50.0));
    CHECK(wt.data<float>()[1] == doctest::Approx(-0.5 * 2 * 40 / 50.0));
    CHECK(tr.read(tg.gradient_norm).data<float>()[0] == doctest::Approx(50.0));
    // A small gradient passes unchanged.
    tr.feed(x, Tensor::from<float>({4}, {0, 0, 0.3f, 0.4f}));
    tr.step(1.0f);
    CHECK(tr.parameter("w").data<float>()[2] == doctest::Approx(-0.3));
  }

  // Two parameters, loss = sum(a * x) + sum(b * y): the gradients are x and y. Keras's three ways of clipping
  // them before one SGD step at rate 1.
  std::map<std::string, std::vector<float>> clipped_step(float clipnorm, float global_clipnorm,
                                                         float clipvalue) {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2});
    ValueId y = g.add_input("y", DType::f32, Shape{2});
    ValueId a = g.add_parameter("a", Tensor::from<float>({2}, {0, 0}));
    ValueId b = g.add_parameter("b", Tensor::from<float>({2}, {0, 0}));
    ValueId loss = g.op("Add", {g.op("ReduceSum", {g.op("Mul", {a, x})}, {{"keepdims", int64_t{0}}}),
                                g.op("ReduceSum", {g.op("Mul", {b, y})}, {{"keepdims", int64_t{0}}})});
    TrainingOptions opt;
    opt.optimizer.kind = "sgd";
    opt.clipnorm = clipnorm;
    opt.global_clipnorm = global_clipnorm;
    opt.clipvalue = clipvalue;
    opt.fuse = false;
    TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
    auto backend = make_cpu_backend();
    Trainer tr(tg, *backend, 1, opt);
    tr.feed(x, Tensor::from<float>({2}, {3, 4}));      // norm 5
    tr.feed(y, Tensor::from<float>({2}, {0.3f, -2}));  // norm 2.02
    tr.step(1.0f);
    std::map<std::string, std::vector<float>> out;
    for (const char* name : {"a", "b"}) {
      const Tensor t = tr.parameter(name);
      out[name] = {t.data<float>()[0], t.data<float>()[1]};
    }
    return out;
  }

  TEST_CASE("training: clipnorm clips each gradient, global_clipnorm all together, clipvalue each element") {
    auto each = clipped_step(2.5f, 0, 0);  // a's gradient (norm 5) halved; b's (norm 2.02) as it is
    CHECK(each["a"][0] == doctest::Approx(-1.5));
    CHECK(each["a"][1] == doctest::Approx(-2.0));
    CHECK(each["b"][0] == doctest::Approx(-0.3));
    CHECK(each["b"][1] == doctest::Approx(2.0));
    auto together = clipped_step(0, 2.5f, 0);  // the joint norm sqrt(25 + 4.09) scaled to 2.5
    const double joint = std::sqrt(25.0 + 0.09 + 4.0);
    CHECK(together["a"][0] == doctest::Approx(-3 * 2.5 / joint));
    CHECK(together["b"][1] == doctest::Approx(2 * 2.5 / joint));
    auto elements = clipped_step(0, 0, 1.0f);  // each element to [-1, 1]
    CHECK(elements["a"][0] == doctest::Approx(-1.0));
    CHECK(elements["a"][1] == doctest::Approx(-1.0));
    CHECK(elements["b"][0] == doctest::Approx(-0.3));
    CHECK(elements["b"][1] == doctest::Approx(1.0));
  }
}

TEST_SUITE("training") {
  TEST_CASE("training: the schedule computes weight gradients first and updates in gradient order") {
    // Input 8 -> Dense 1024 relu -> Dense 256 relu -> Dense 4: the last two layers' gradients (1.05 MB) fill
    // the small first bucket, the first layer's the second.
    const int batch = 16;
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{batch, 8});
    ValueId y = g.add_input("y", DType::i64, Shape{batch});
    models::LayerContext ctx{g, 1};
    ValueId h = models::dense(ctx, x, 1024, "relu", "a");
    h = models::dense(ctx, h, 256, "relu", "b");
    ValueId loss = g.op("SoftmaxCrossEntropyLoss", {models::dense(ctx, h, 4, "linear", "c"), y});
    TrainingGraph tg = build_training_graph(std::move(g), loss, TrainingOptions{});
    const Graph& tgg = *tg.graph;
    PlanOptions po;
    po.gradients = tg.gradients;
    const Program planned = plan_program(tg.graph, po);
    const Program plain = plan_program(tg.graph, PlanOptions{});  // no gradients: the nodes in id order
    auto positions = [&](const Program& p) {
      std::vector<int> at(tgg.num_nodes(), -1);
      for (size_t s = 0; s < p.steps.size(); ++s) at[p.steps[s]] = static_cast<int>(s);
      return at;
    };
    // Per layer with an input gradient (b, c): its weight gradient against its input gradient (the node
    // that reads the layer's kernel in backward).
    auto weight_grad_first = [&](const Program& p, const std::string& layer) {
      const std::vector<int> at = positions(p);
      const ValueId kernel = tgg.find(layer + "/kernel");
      int grad_at = -1, input_grad_at = -1;
      for (size_t i = 0; i < tg.parameters.size(); ++i)
        if (tg.parameters[i].param == kernel) grad_at = at[tgg.value(tg.gradients[i]).producer];
      for (NodeId c : tgg.value(kernel).consumers)
        if (c >= tg.backward_begin && c < tg.update_begin) input_grad_at = at[c];
      REQUIRE(grad_at >= 0);
      REQUIRE(input_grad_at >= 0);
      return grad_at < input_grad_at;
    };
    for (const char* layer : {"b", "c"}) CHECK_MESSAGE(weight_grad_first(planned, layer), layer);
    // The plain order does not: what the priority changes.
    CHECK_FALSE((weight_grad_first(plain, "b") && weight_grad_first(plain, "c")));
    // The updates run in the order their gradients were produced (the last layer's first).
    const std::vector<int> at = positions(planned);
    std::vector<std::pair<int, int>> grad_then_update;
    for (size_t i = 0; i < tg.parameters.size(); ++i)
      grad_then_update.emplace_back(at[tgg.value(tg.gradients[i]).producer], at[tg.parameters[i].update]);
    std::sort(grad_then_update.begin(), grad_then_update.end());
    for (size_t i = 1; i < grad_then_update.size(); ++i)
      CHECK(grad_then_update[i - 1].second < grad_then_update[i].second);
    // Two buckets: b's and c's gradients (over the first bucket's 1 MB), then a's.
    REQUIRE(planned.buckets.size() == 2);
    CHECK(planned.buckets[0].grads.size() == 4);
    CHECK(planned.buckets[1].grads.size() == 2);
    PlanOptions one = po;
    one.first_bucket_bytes = one.bucket_bytes;
    CHECK(plan_program(tg.graph, one).buckets.size() == 1);
  }
}

TEST_SUITE("training") {
  TEST_CASE("training: every gradient has a buffer of its own that backward does not read") {
    // h = x W + P with P of h's shape: P's gradient is the value that also carries W's gradient on. Summed in
    // place across replicas, it would change under backward's feet; the training graph copies it.
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{1, 3});
    ValueId w = g.add_parameter("w", ops::random_tensor({3, 4}, -1, 1, 1, DType::f32));
    ValueId p = g.add_parameter("p", ops::random_tensor({1, 4}, -1, 1, 2, DType::f32));
    ValueId unused = g.add_parameter("unused", ops::random_tensor({2}, -1, 1, 3, DType::f32));
    (void)unused;
    ValueId h = g.op("Add", {g.op("MatMul", {x, w}), p});
    ValueId loss = g.op("ReduceSum", {g.op("Mul", {h, h})}, {{"keepdims", int64_t{0}}});
    TrainingOptions opt;
    opt.fuse = false;
    TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
    const Graph& tgg = *tg.graph;
    std::set<ValueId> distinct(tg.gradients.begin(), tg.gradients.end());
    CHECK(distinct.size() == tg.gradients.size());
    for (ValueId gv : tg.gradients) {
      CHECK_MESSAGE(tgg.value(gv).producer >= 0, tgg.value(gv).name);
      for (NodeId c : tgg.value(gv).consumers)
        CHECK_MESSAGE(c >= tg.update_begin,
                      tgg.value(gv).name << " is read in backward by " << tgg.node(c).name);
    }
    // And planned with buckets, every bucket is complete before its first reader.
    PlanOptions po;
    po.gradients = tg.gradients;
    for (const GradBucket& b : plan_program(tg.graph, po).buckets)
      CHECK(b.needed_by_step > b.ready_after_step);
  }
}
