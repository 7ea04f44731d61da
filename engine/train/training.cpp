// Training graph assembly (fusion, backward, optimizer) and the single-device Trainer.
#include "engine/train/training.h"

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <set>

#include "engine/autodiff/autodiff.h"

#include "engine/ir/op_schema.h"
#include "engine/util/error.h"

namespace trainer::engine {

namespace {

// Each constrained parameter's updated value, projected: non_neg keeps w >= 0; the norms (over the axes, with
// Keras's epsilon 1e-7) rescale w to norm min(n, max) (max_norm), 1 (unit_norm) or
// rate clip(n, min, max) + (1 - rate) n (min_max_norm).
void apply_constraints(Graph& g, const std::vector<OptimizerState>& params, const TrainingOptions& options) {
  std::map<ValueId, ValueId> next_of;
  for (const auto& [next, state] : g.updates()) next_of[state] = next;
  for (const OptimizerState& p : params) {
    std::string name = g.value(p.param).name;
    const bool shard = name.ends_with(kShardSuffix);
    if (shard) name.resize(name.size() - std::string_view(kShardSuffix).size());
    auto it = options.constraints.find(name);
    auto next = next_of.find(p.param);
    if (it == options.constraints.end() || next == next_of.end()) continue;
    const WeightConstraint& c = it->second;
    const ValueId w = next->second;
    const DType t = g.value(w).dtype;
    auto scalar = [&](double v) {
      Tensor s(t, Shape{});
      s.set_f64(0, v);
      return g.add_constant(g.unique_name(name + "/constraint/c"), std::move(s));
    };
    ValueId out;
    if (c.kind == "non_neg") {
      out = g.op("Relu", {w});
    } else {
      if (shard)
        throw InputError("parallel.shard_optimizer",
                         fmt::format("the {} constraint of '{}' needs the whole weight, and shard_optimizer "
                                     "updates each replica's share of it",
                                     c.kind, name),
                         "set [parallel] shard_optimizer = false, or use non_neg");
      const ValueId norms = g.op(
          "Sqrt",
          {g.op("ReduceSum",
                {g.op("Mul", {w, w}),
                 g.add_constant(g.unique_name(name + "/constraint/axes"),
                                Tensor::from<int64_t>(Shape{static_cast<int64_t>(c.axes.size())}, c.axes))},
                {{"keepdims", int64_t{1}}})});
      ValueId desired;
      if (c.kind == "unit_norm") {
        desired = scalar(1.0);
      } else if (c.kind == "max_norm") {
        desired = g.op("Clip", {norms, scalar(0.0), scalar(c.max_value)});
      } else {  // min_max_norm
        desired = g.op(
            "Add",
            {g.op("Mul", {scalar(c.rate), g.op("Clip", {norms, scalar(c.min_value), scalar(c.max_value)})}),
             g.op("Mul", {scalar(1 - c.rate), norms})});
      }
      out = g.op("Mul", {w, g.op("Div", {desired, g.op("Add", {norms, scalar(1e-7)})})});
    }
    g.rebind_update(p.param, out);
  }
}

}  // namespace

TrainingGraph build_training_graph(Graph forward, ValueId loss, const TrainingOptions& options) {
  TrainingGraph tg;
  tg.graph = std::make_shared<Graph>(std::move(forward));
  Graph& g = *tg.graph;
  if (options.fuse) tg.fusion = fuse(g, options.fusion);
  tg.loss = loss;
  std::vector<ValueId> params = trainable_parameters(g);
  tg.backward_begin = g.num_nodes();
  ValueId differentiated = tg.loss;
  if (options.loss_scaling) {
    tg.loss_scale = g.add_input("__loss_scale", DType::f32, Shape{});
    ValueId scale = tg.loss_scale;
    if (g.value(loss).dtype != DType::f32)
      scale = g.op("Cast", {scale}, {{"to", int64_t{dtype_to_onnx(g.value(loss).dtype)}}});
    differentiated = g.op("Mul", {tg.loss, scale});
  }
  auto grads = build_backward(g, differentiated, params);
  // Each gradient in a buffer of its own. A gradient that backward also reads (Add(x, P) of equal shapes
  // gives P the very value that carries x's gradient on), that is another parameter's too, or that is a
  // constant (a parameter the loss does not reach) would otherwise be summed across replicas in place while
  // backward still reads it. The copy is an Add of zero.
  std::set<ValueId> own;
  for (ValueId p : params) {
    ValueId& gv = grads.at(p);
    bool read = false;
    for (NodeId c : g.value(gv).consumers) read = read || !g.node(c).dead;
    if (read || g.value(gv).producer < 0 || own.count(gv)) {
      const DType dtype = g.value(gv).dtype;
      const ValueId zero = g.add_constant(g.unique_name(g.value(gv).name + "/own"), Tensor(dtype, Shape{}));
      gv = g.op("Add", {gv, zero});
    }
    own.insert(gv);
  }
  const NodeId backward_end = g.num_nodes();
  // After autodiff, so the gradient GEMMs and convolutions are rewritten too and every gradient stays f32.
  const PrecisionReport rewrite = apply_precision(g, options.precision);
  tg.update_begin = g.num_nodes();
  tg.phase.assign(tg.update_begin, 1);
  for (NodeId n = 0; n < tg.backward_begin; ++n) tg.phase[n] = 0;
  for (const auto& [added, origin] : rewrite.origin)
    if (origin >= 0 && origin < backward_end) tg.phase[added] = origin < tg.backward_begin ? 0 : 1;
  tg.learning_rate = g.add_input("__learning_rate", DType::f32, Shape{});
  tg.iteration = g.add_input("__iteration", DType::i64, Shape{});
  std::vector<ValueId> applied;
  for (ValueId p : params) {
    tg.gradients.push_back(grads.at(p));
    applied.push_back(grads.at(p));
  }
  if (options.loss_scaling && !params.empty()) {
    std::vector<ValueId> in = {tg.loss_scale};
    in.insert(in.end(), applied.begin(), applied.end());
    NodeId u =
        g.add_node("UnscaleGradients", in, {}, static_cast<int>(applied.size()) + 1, "unscale_gradients");
    const std::vector<ValueId>& outs = g.node(u).outputs;
    applied.assign(outs.begin(), outs.end() - 1);
    tg.grads_finite = outs.back();
    g.mark_output(tg.grads_finite);
  }
  if (options.accumulation_steps > 1 && !params.empty()) {
    if (options.loss_scaling)
      throw InputError("train.optimizer.gradient_accumulation_steps",
                       "gradient accumulation with fp16's loss scaling is not supported",
                       "train in bf16 or fp32 (train.precision), or leave gradient_accumulation_steps out");
    tg.apply_update = g.add_input("__apply_update", DType::boolean, Shape{});
    tg.replica_weight = g.add_input("__replica_weight", DType::f32, Shape{});
    std::map<DType, ValueId> weight_as;  // the weight in each gradient dtype
    weight_as[DType::f32] = tg.replica_weight;
    for (size_t i = 0; i < applied.size(); ++i) {
      const std::string name = g.value(params[i]).name;
      const Value& gv = g.value(applied[i]);
      const DType dtype = gv.dtype;
      const ValueId acc = g.add_state(name + "/accumulated_gradient", Tensor(dtype, gv.shape));
      tg.other_state.push_back(acc);
      auto [w, fresh] = weight_as.try_emplace(dtype, kNoValue);
      if (fresh) w->second = g.op("Cast", {tg.replica_weight}, {{"to", int64_t{dtype_to_onnx(dtype)}}});
      // The sum is what replicas reduce, on update steps only: each adds its own weighted gradients.
      const ValueId sum = g.op("Add", {acc, g.op("Mul", {applied[i], w->second})});
      tg.step_gradients.push_back(applied[i]);
      tg.gradients[i] = sum;
      Tensor zero(dtype, Shape{}), inverse(dtype, Shape{});
      inverse.set_f64(0, 1.0 / static_cast<double>(options.accumulation_steps));
      g.bind_update(
          g.op("Where", {tg.apply_update,
                         g.add_constant(g.unique_name(name + "/accumulated_gradient/zero"), zero), sum}),
          acc);
      applied[i] =
          g.op("Mul", {sum, g.add_constant(g.unique_name(name + "/accumulated_gradient/mean"), inverse)});
    }
  }
  if (options.global_clipnorm > 0 && !params.empty()) {
    NodeId clip = g.add_node("ClipByGlobalNorm", applied, {{"clipnorm", options.global_clipnorm}},
                             static_cast<int>(applied.size()) + 1, "clip_by_global_norm");
    const std::vector<ValueId>& outs = g.node(clip).outputs;
    applied.assign(outs.begin(), outs.end() - 1);
    tg.gradient_norm = outs.back();
    g.mark_output(tg.gradient_norm);
  }
  for (size_t i = 0; i < applied.size() && options.clipnorm > 0; ++i) {
    // Keras's clipnorm: each gradient on its own (the joint norm of one).
    const std::string name = g.value(params[i]).name;
    NodeId clip = g.add_node("ClipByGlobalNorm", {applied[i]}, {{"clipnorm", options.clipnorm}}, 2,
                             name + "/clip_norm");
    applied[i] = g.node(clip).outputs[0];
  }
  for (size_t i = 0; i < applied.size() && options.clipvalue > 0; ++i) {
    const DType dtype = g.value(applied[i]).dtype;
    auto bound = [&](double v, const char* which) {
      Tensor t(dtype, Shape{});
      t.set_f64(0, v);
      return g.add_constant(g.unique_name(g.value(params[i]).name + "/clip_value/" + which), std::move(t));
    };
    applied[i] =
        g.op("Clip", {applied[i], bound(-options.clipvalue, "min"), bound(options.clipvalue, "max")});
  }
  std::vector<std::pair<ValueId, ValueId>> pg;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!options.shard) {
      pg.emplace_back(params[i], applied[i]);
      continue;
    }
    g.mark_output(tg.gradients[i]);  // reduced into by the ranks, whatever reads it here
    const std::string name = g.value(params[i]).name;
    auto it = options.shard->find(name);
    if (it == options.shard->end() || it->second.count == 0) continue;
    const auto [offset, count] = it->second;
    const int64_t numel = g.value(params[i]).shape.numel();
    TRAINER_ASSERT(offset >= 0 && count > 0 && offset + count <= numel,
                   "shard [{}, {}) of '{}' ({} elements)", offset, offset + count, name, numel);
    // The shard starts as the same elements of the parameter's initial value.
    const Tensor* init = g.initializer(params[i]);
    const DType dtype = g.value(params[i]).dtype;
    Tensor part(dtype, Shape{count});
    std::memcpy(part.raw(), static_cast<const std::byte*>(init->raw()) + offset * dtype_bytes(dtype),
                part.nbytes());
    const ValueId shard = g.add_parameter(name + kShardSuffix, std::move(part), false);
    auto constant = [&](int64_t v) {
      return g.add_constant(g.unique_name(name + kShardSuffix + "/range"),
                            Tensor::from<int64_t>(Shape{1}, {v}));
    };
    const ValueId flat = g.op("Reshape", {applied[i], constant(numel)});
    pg.emplace_back(shard, g.op("Slice", {flat, constant(offset), constant(offset + count)}));
  }
  tg.parameters = add_optimizer(g, pg, tg.learning_rate, tg.iteration, options.optimizer);
  // A step that only accumulates its gradients, and a step whose gradients overflowed (loss scaling), keep
  // every parameter and optimizer state: each update is selected against the old value, and the selection,
  // not the update, is what the state becomes.
  auto keep_unless = [&](ValueId condition) {
    if (condition == kNoValue) return;
    std::map<ValueId, ValueId> next_of;
    for (const auto& [next, state] : g.updates()) next_of[state] = next;
    for (const OptimizerState& p : tg.parameters) {
      std::vector<ValueId> states = p.slots;
      states.push_back(p.param);
      for (ValueId s : states) {
        auto it = next_of.find(s);
        if (it == next_of.end()) continue;
        g.rebind_update(s, g.op("Where", {condition, it->second, s}));
      }
    }
  };
  keep_unless(tg.apply_update);
  if (options.use_ema && !tg.parameters.empty()) {
    if (options.shard)
      throw InputError("train.optimizer.use_ema", "use_ema with a sharded optimizer is not supported",
                       "leave out parallel.shard_optimizer, or use_ema");
    std::map<ValueId, ValueId> next_of;
    for (const auto& [next, state] : g.updates()) next_of[state] = next;
    const ValueId first =
        g.op("Equal", {tg.iteration, g.add_constant(g.unique_name("ema/one"), Tensor::scalar<int64_t>(1))});
    ValueId overwrite = kNoValue;
    if (options.ema_overwrite_frequency > 0)
      overwrite = g.op(
          "Equal", {g.op("Mod", {tg.iteration,
                                 g.add_constant(g.unique_name("ema/frequency"),
                                                Tensor::scalar<int64_t>(options.ema_overwrite_frequency))}),
                    g.add_constant(g.unique_name("ema/zero"), Tensor::scalar<int64_t>(0))});
    for (const OptimizerState& p : tg.parameters) {
      auto it = next_of.find(p.param);
      if (it == next_of.end()) continue;
      const Value& pv = g.value(p.param);
      const std::string name = pv.name;
      const DType dtype = pv.dtype;
      const Shape shape = pv.shape;
      auto scalar = [&](double v, const char* what) {
        Tensor t(dtype, Shape{});
        t.set_f64(0, v);
        return g.add_constant(g.unique_name(name + "/ema/" + what), std::move(t));
      };
      const ValueId ema = g.add_state(name + "/ema", Tensor(dtype, shape));
      tg.other_state.push_back(ema);
      // Keras's: the momentum is 0 at the first iteration, so the average starts at the first new value.
      const ValueId m = g.op("Where", {first, scalar(0, "zero"), scalar(options.ema_momentum, "momentum")});
      const ValueId next = it->second;
      const ValueId average =
          g.op("Add", {g.op("Mul", {m, ema}), g.op("Mul", {g.op("Sub", {scalar(1, "one"), m}), next})});
      // A step skipped for overflow (fp16) leaves the average, and the weights (below), as they were.
      const ValueId kept =
          tg.grads_finite != kNoValue ? g.op("Where", {tg.grads_finite, average, ema}) : average;
      g.bind_update(kept, ema);
      if (overwrite != kNoValue) g.rebind_update(p.param, g.op("Where", {overwrite, kept, next}));
    }
  }
  // Keras's order: the constraints project the weights last, on every step (one that only accumulates
  // too), after the average has read the updated weights and any overwrite has taken it.
  if (!options.constraints.empty()) apply_constraints(g, tg.parameters, options);
  keep_unless(tg.grads_finite);
  g.mark_output(tg.loss);
  tg.phase.resize(g.num_nodes(), 2);
  return tg;
}

Trainer::Trainer(TrainingGraph tg, Backend& backend, uint64_t seed, const TrainingOptions& options)
    : tg_(std::move(tg)),
      seed_(seed),
      scaler_(options.loss_scale),
      accumulation_steps_(std::max<int64_t>(options.accumulation_steps, 1)) {
  PlanOptions po;
  po.gradients = tg_.gradients;
  po.early = tg_.step_gradients;
  po.bucket_bytes = options.bucket_bytes;
  session_ = std::make_unique<Session>(tg_.graph, backend, po);
}

float Trainer::step(float lr) {
  // The optimizer counts applied updates only: a skipped step does not advance Adam's bias correction; under
  // gradient accumulation, the updates (steps over N), as Keras counts its iterations.
  int64_t it = accumulation_steps_ > 1 ? static_cast<int64_t>(step_) / accumulation_steps_ + 1
                                       : scaler_.applied_steps() + 1;
  if (tg_.apply_update != kNoValue) {
    const bool apply = (static_cast<int64_t>(step_) + 1) % accumulation_steps_ == 0;
    session_->write(tg_.apply_update, &apply, sizeof apply);
    const float whole = 1.0f;  // one replica's share of its batch
    session_->write(tg_.replica_weight, &whole, sizeof whole);
  }
  session_->write(tg_.learning_rate, &lr, sizeof lr);
  session_->write(tg_.iteration, &it, sizeof it);
  if (tg_.loss_scale != kNoValue) {
    const float scale = scaler_.scale();
    session_->write(tg_.loss_scale, &scale, sizeof scale);
  }
  session_->run(StepContext{step_, seed_});
  ++step_;
  bool finite = true;
  if (tg_.grads_finite != kNoValue) session_->read(tg_.grads_finite, &finite, sizeof finite);
  scaler_.update(finite, tg_.loss_scale != kNoValue);
  float loss = 0;
  const Value& lv = tg_.graph->value(tg_.loss);
  if (lv.dtype == DType::f32) {
    session_->read(tg_.loss, &loss, sizeof loss);
  } else {
    double d = 0;
    session_->read(tg_.loss, &d, sizeof d);
    loss = static_cast<float>(d);
  }
  return loss;
}

Tensor Trainer::parameter(const std::string& name) const {
  ValueId v = tg_.graph->find(name);
  if (v == kNoValue) throw InputError(name, fmt::format("no value named '{}'", name), "");
  return session_->read(v);
}

}  // namespace trainer::engine
