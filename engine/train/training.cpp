// Training graph assembly (fusion, backward, optimizer) and the single-device Trainer.
#include "engine/train/training.h"

#include "engine/autodiff/autodiff.h"
#include "engine/ir/op_schema.h"

namespace trainer::engine {

TrainingGraph build_training_graph(Graph forward, ValueId loss, const TrainingOptions& options) {
  TrainingGraph tg;
  tg.graph = std::make_shared<Graph>(std::move(forward));
  Graph& g = *tg.graph;
  if (options.fuse) tg.fusion = fuse(g, options.fusion);
  tg.loss = loss;
  std::vector<ValueId> params = trainable_parameters(g);
  tg.backward_begin = g.num_nodes();
  auto grads = build_backward(g, tg.loss, params);
  // After autodiff, so the gradient GEMMs and convolutions are rewritten too and every gradient stays f32.
  apply_precision(g, options.precision);
  tg.update_begin = g.num_nodes();
  tg.learning_rate = g.add_input("__learning_rate", DType::f32, Shape{});
  tg.iteration = g.add_input("__iteration", DType::i64, Shape{});
  std::vector<ValueId> applied;
  for (ValueId p : params) {
    tg.gradients.push_back(grads.at(p));
    applied.push_back(grads.at(p));
  }
  if (options.clipnorm > 0 && !params.empty()) {
    NodeId clip = g.add_node("ClipByGlobalNorm", applied, {{"clipnorm", options.clipnorm}},
                             static_cast<int>(applied.size()) + 1, "clip_by_global_norm");
    const std::vector<ValueId>& outs = g.node(clip).outputs;
    applied.assign(outs.begin(), outs.end() - 1);
    tg.gradient_norm = outs.back();
    g.mark_output(tg.gradient_norm);
  }
  std::vector<std::pair<ValueId, ValueId>> pg;
  for (size_t i = 0; i < params.size(); ++i) pg.emplace_back(params[i], applied[i]);
  tg.parameters = add_optimizer(g, pg, tg.learning_rate, tg.iteration, options.optimizer);
  g.mark_output(tg.loss);
  return tg;
}

Trainer::Trainer(TrainingGraph tg, Backend& backend, uint64_t seed, const TrainingOptions& options)
    : tg_(std::move(tg)), seed_(seed) {
  PlanOptions po;
  po.gradients = tg_.gradients;
  po.bucket_bytes = options.bucket_bytes;
  session_ = std::make_unique<Session>(tg_.graph, backend, po);
}

float Trainer::step(float lr) {
  int64_t it = static_cast<int64_t>(step_ + 1);
  session_->write(tg_.learning_rate, &lr, sizeof lr);
  session_->write(tg_.iteration, &it, sizeof it);
  session_->run(StepContext{step_, seed_});
  ++step_;
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
