// Registry-walking op tests: every registered op is complete (shape inference, a gradient rule or a stated
// reason for none, a kernel on every backend, examples), runs forward on every backend, and every
// differentiable input of every example passes an f64 central finite-difference check of its gradient rule.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/autodiff/autodiff.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

struct Built {
  std::shared_ptr<Graph> g;
  std::vector<ValueId> inputs;   // per example input: the graph value (kNoValue when absent)
  std::vector<ValueId> outputs;  // the node's outputs
};

Built build_one(const OpSchema& s, const OpExample& e) {
  Built b;
  b.g = std::make_shared<Graph>();
  for (size_t i = 0; i < e.inputs.size(); ++i) {
    std::string name = "in" + std::to_string(i);
    if (i < e.absent.size() && e.absent[i])
      b.inputs.push_back(kNoValue);
    else if (i < e.constant.size() && e.constant[i])
      b.inputs.push_back(b.g->add_constant(name, e.inputs[i]));
    else
      b.inputs.push_back(b.g->add_input(name, e.inputs[i].dtype(), e.inputs[i].shape()));
  }
  NodeId n = b.g->add_node(s.name(), b.inputs, e.attrs, e.num_outputs, "op");
  b.outputs = b.g->node(n).outputs;
  return b;
}

void feed(Session& sess, const Built& b, const OpExample& e) {
  for (size_t i = 0; i < b.inputs.size(); ++i)
    if (b.inputs[i] != kNoValue && b.g->value(b.inputs[i]).kind == ValueKind::input)
      sess.write(b.inputs[i], e.inputs[i]);
}

std::string case_name(const OpSchema& s, const OpExample& e) {
  return s.name() + "/" + e.label;
}

// The gradient check. loss = sum_k sum(out_k * w_k) with fixed random weights w_k, so every output element
// counts.
void grad_check(const OpSchema& s, const OpExample& e, Backend& backend) {
  Built b = build_one(s, e);
  Graph& g = *b.g;
  std::vector<ValueId> wrt;
  std::vector<size_t> wrt_index;
  for (size_t i = 0; i < b.inputs.size(); ++i) {
    ValueId v = b.inputs[i];
    if (v == kNoValue || g.value(v).kind != ValueKind::input || !is_float(g.value(v).dtype)) continue;
    if (!s.input_has_grad(static_cast<int>(i))) continue;
    wrt.push_back(v);
    wrt_index.push_back(i);
  }
  if (wrt.empty()) return;
  ValueId loss = kNoValue;
  for (size_t k = 0; k < b.outputs.size(); ++k) {
    ValueId o = b.outputs[k];
    if (o == kNoValue || !is_float(g.value(o).dtype)) continue;
    ValueId w = g.add_constant("w" + std::to_string(k),
                               ops::random_tensor(g.value(o).shape, -1, 1, 100 + k, g.value(o).dtype));
    ValueId term = g.op("ReduceSum", {g.op("Mul", {o, w})}, {{"keepdims", int64_t{0}}});
    loss = loss == kNoValue ? term : g.op("Add", {loss, term});
  }
  REQUIRE(loss != kNoValue);
  auto grads = build_backward(g, loss, wrt);
  g.mark_output(loss);
  for (ValueId v : wrt) g.mark_output(grads.at(v));
  Session sess(b.g, backend);
  feed(sess, b, e);
  StepContext ctx{7, 1234};
  sess.run(ctx);
  std::vector<Tensor> analytic_all;
  for (ValueId v : wrt) analytic_all.push_back(sess.read(grads.at(v)));
  for (size_t w = 0; w < wrt.size(); ++w) {
    const Tensor& analytic = analytic_all[w];
    Tensor x = e.inputs[wrt_index[w]];
    for (int64_t j = 0; j < x.numel(); ++j) {
      double x0 = x.get_f64(j);
      double h = 1e-5 * std::max(1.0, std::fabs(x0));
      x.set_f64(j, x0 + h);
      sess.write(wrt[w], x);
      sess.run(ctx);
      double lp = sess.read(loss).get_f64(0);
      x.set_f64(j, x0 - h);
      sess.write(wrt[w], x);
      sess.run(ctx);
      double lm = sess.read(loss).get_f64(0);
      x.set_f64(j, x0);
      sess.write(wrt[w], x);
      double numeric = (lp - lm) / (2 * h);
      double a = analytic.get_f64(j);
      double tol = std::max(e.grad_tolerance, 1e-6) * (1 + std::fabs(numeric));
      if (!(std::fabs(a - numeric) <= tol)) {
        FAIL_CHECK(case_name(s, e) << ": d/d(input " << wrt_index[w] << ")[" << j << "] analytic " << a
                                   << " numeric " << numeric);
        return;  // one message per input is enough
      }
    }
  }
}

std::vector<std::unique_ptr<Backend>> backends() {
  std::vector<std::unique_ptr<Backend>> b;
  b.push_back(make_cpu_backend());
  return b;
}

}  // namespace

TEST_SUITE("ops") {
  TEST_CASE("ops: every registered op is complete") {
    const auto& ops = OpRegistry::global().all();
    CHECK(ops.size() > 10);
    for (const auto& [name, s] : ops) {
      CAPTURE(name);
      // A gradient rule, or a reason why there is none.
      CHECK_MESSAGE((s.has_grad() || s.non_differentiable_reason().has_value()),
                    name << " has neither a gradient rule nor a non-differentiable reason");
      CHECK_MESSAGE(cpu::KernelRegistry::global().find(name) != nullptr, name << " has no CPU kernel");
      // Private gradient ops are exercised by their forward op's gradient check; every other op brings
      // examples.
      bool grad_op = s.is_private() && s.non_differentiable_reason() &&
                     s.non_differentiable_reason()->find("gradient op") != std::string::npos;
      if (!grad_op) CHECK_MESSAGE(static_cast<bool>(s.examples_fn()), name << " has no examples");
    }
  }

  TEST_CASE("ops: every example in f32 computes what it computes in f64, on the CPU") {
    // The single-precision kernels (oneDNN's convolutions and products, the vectorized activations) against
    // the f64 ones, which the gradient checks hold to the finite differences.
    auto cpu = make_cpu_backend();
    int compared = 0;
    std::vector<std::string> refused;
    for (const auto& [name, s] : OpRegistry::global().all()) {
      if (!s.examples_fn()) continue;
      for (const OpExample& e : s.examples_fn()()) {
        OpExample f;
        if (!ops::as_f32(e, &f)) continue;
        CAPTURE(case_name(s, f));
        Built b64 = build_one(s, e), b32;
        try {
          b32 = build_one(s, f);
        } catch (const InputError&) {
          refused.push_back(case_name(s, e));
          continue;
        }
        std::vector<Tensor> outs[2];
        int k = 0;
        for (Built* b : {&b64, &b32}) {
          for (ValueId o : b->outputs)
            if (o != kNoValue) b->g->mark_output(o);
          Session sess(b->g, *cpu);
          feed(sess, *b, k == 0 ? e : f);
          sess.run(StepContext{7, 1234});
          for (ValueId o : b->outputs)
            if (o != kNoValue) outs[k].push_back(sess.read(o));
          ++k;
        }
        REQUIRE(outs[0].size() == outs[1].size());
        for (size_t j = 0; j < outs[0].size(); ++j) {
          if (!is_float(outs[0][j].dtype())) {
            for (int64_t i = 0; i < outs[0][j].numel(); ++i)
              CHECK(outs[0][j].get_f64(i) == outs[1][j].get_f64(i));
            continue;
          }
          double scale = 0, diff = 0;
          for (int64_t i = 0; i < outs[0][j].numel(); ++i) {
            scale = std::max(scale, std::fabs(outs[0][j].get_f64(i)));
            diff = std::max(diff, std::fabs(outs[0][j].get_f64(i) - outs[1][j].get_f64(i)));
          }
          CHECK(diff <= 1e-4 * std::max(scale, 1.0));
        }
        ++compared;
      }
    }
    MESSAGE(compared << " examples compared in f32; refused in f32: " << refused.size());
    CHECK(compared > 100);
  }

  TEST_CASE("ops: forward on every backend, and f64 gradient checks") {
    auto bks = backends();
    for (const auto& [name, s] : OpRegistry::global().all()) {
      if (!s.examples_fn()) continue;
      for (const OpExample& e : s.examples_fn()()) {
        std::string sub = case_name(s, e);
        SUBCASE(sub.c_str()) {
          for (auto& backend : bks) {
            Built b = build_one(s, e);
            for (ValueId o : b.outputs)
              if (o != kNoValue) b.g->mark_output(o);
            Session sess(b.g, *backend);
            feed(sess, b, e);
            sess.run(StepContext{7, 1234});
            for (ValueId o : b.outputs) {
              if (o == kNoValue) continue;
              Tensor t = sess.read(o);
              if (!is_float(t.dtype())) continue;
              for (int64_t j = 0; j < t.numel(); ++j)
                if (!std::isfinite(t.get_f64(j))) {
                  FAIL_CHECK(sub << " on " << backend->name() << ": output " << b.g->value(o).name << "[" << j
                                 << "] is " << t.get_f64(j));
                  break;
                }
            }
          }
          if (e.grad_check && s.has_grad()) {
            grad_check(s, e, *bks[0]);
          }
        }
      }
    }
  }
}
