// Constant folding: each foldable node is copied into a small graph of its own, planned and run once on the
// CPU backend, and its outputs are read back as tensors.
#include "engine/plan/constant_folding.h"

#include <memory>

#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/plan/program.h"

namespace trainer::engine {

bool is_foldable_op(const std::string& op, const std::string& domain) {
  if (domain == kTrainingDomain) return false;  // optimizer steps: they update state
  // Random draws change every step, even of a constant input.
  if (op == "Dropout" || op == "DropoutGrad" || op == "RandomNormalLike" || op == "RandomUniformLike")
    return false;
  const OpSchema* s = OpRegistry::global().find(op);
  return s != nullptr && s->domain() == domain;
}

bool can_fold(const Graph& g, NodeId id, const FoldOptions& options) {
  const Node& n = g.node(id);
  if (n.dead || !is_foldable_op(n.op, n.domain)) return false;
  bool any_input = false;
  for (ValueId v : n.inputs) {
    if (v == kNoValue) continue;
    if (g.value(v).kind != ValueKind::constant) return false;
    any_input = true;
  }
  if (!any_input) return false;
  for (ValueId v : n.outputs)
    if (v != kNoValue && g.value(v).nbytes() > options.max_output_bytes) return false;
  // A node that updates state (BatchNormalization's running statistics) must keep running.
  for (const auto& [next, state] : g.updates())
    for (ValueId v : n.outputs)
      if (v != kNoValue && v == next) return false;
  return true;
}

std::optional<std::vector<Tensor>> evaluate_constant_node(
    const std::string& op, const std::vector<const Tensor*>& inputs, const Attributes& attrs,
    const std::vector<std::string>& output_names, const std::string& node_name,
    const std::vector<std::string>& input_names, size_t max_output_bytes) {
  auto g = std::make_shared<Graph>();
  std::vector<ValueId> ins;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i]) {
      ins.push_back(kNoValue);
      continue;
    }
    // A value read twice (Mul(x, x)) is one constant.
    std::string name =
        i < input_names.size() && !input_names[i].empty() ? input_names[i] : fmt::format("input {}", i);
    ValueId v = g->find(name);
    ins.push_back(v != kNoValue ? v : g->add_constant(name, *inputs[i]));
  }
  std::vector<std::string> outs;
  for (size_t i = 0; i < output_names.size(); ++i) {
    const std::string& name = output_names[i];
    outs.push_back(name.empty() ? std::string() : g->find(name) == kNoValue ? name : g->unique_name(name));
  }
  NodeId id = g->add_node_named(op, ins, attrs, outs, node_name.empty() ? op : node_name);
  const std::vector<ValueId> produced = g->node(id).outputs;
  for (ValueId v : produced)
    if (v != kNoValue && g->value(v).nbytes() > max_output_bytes) return std::nullopt;

  std::vector<Tensor> results(output_names.size());
  bool all_empty = true;
  for (size_t i = 0; i < produced.size(); ++i) {
    if (produced[i] == kNoValue) continue;
    g->mark_output(produced[i]);
    const Value& v = g->value(produced[i]);
    results[i] = Tensor(v.dtype, v.shape);
    all_empty = all_empty && v.nbytes() == 0;
  }
  if (all_empty) return results;

  std::unique_ptr<Backend> backend = make_cpu_backend();
  PlanOptions po;
  po.inplace = false;  // the inputs are constants; nothing may write over them
  Program p = plan_program(g, po);
  std::unique_ptr<DeviceBuffer> arena = backend->allocate(std::max<size_t>(p.arena_bytes(), 1));
  for (ValueId v : ins) {
    if (v == kNoValue || !p.slots[v].assigned) continue;
    const Tensor* t = g->initializer(v);
    if (t->nbytes() > 0) backend->copy_to_device(*arena, p.slots[v].offset, t->raw(), t->nbytes());
  }
  std::unique_ptr<Executable> exec = backend->prepare(p, *arena);
  exec->run(StepContext{});
  backend->synchronize();
  for (size_t i = 0; i < produced.size(); ++i) {
    ValueId v = produced[i];
    if (v == kNoValue || results[i].nbytes() == 0) continue;
    TRAINER_ASSERT(p.slots[v].assigned, "folded output '{}' has no buffer", g->value(v).name);
    backend->copy_to_host(results[i].raw(), *arena, p.slots[v].offset, results[i].nbytes());
  }
  return results;
}

int fold_constants(Graph& g, const FoldOptions& options) {
  int folded = 0;
  for (NodeId id : g.topo_order()) {
    if (!can_fold(g, id, options)) continue;
    // Copies: adding constants below may reallocate the graph's node and value arrays.
    const Node n = g.node(id);
    std::vector<const Tensor*> inputs;
    for (ValueId v : n.inputs) inputs.push_back(v == kNoValue ? nullptr : g.initializer(v));
    std::vector<std::string> names;
    for (ValueId v : n.outputs) names.push_back(v == kNoValue ? std::string() : g.value(v).name);
    std::vector<std::string> input_names;
    for (ValueId v : n.inputs) input_names.push_back(v == kNoValue ? std::string() : g.value(v).name);
    std::optional<std::vector<Tensor>> values =
        evaluate_constant_node(n.op, inputs, n.attrs, names, n.name, input_names, options.max_output_bytes);
    if (!values) continue;
    g.erase_node(id);
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      if (n.outputs[i] == kNoValue) continue;
      ValueId c = g.add_constant(g.unique_name(names[i] + "/folded"), std::move((*values)[i]));
      g.replace_uses(n.outputs[i], c);
    }
    ++folded;
  }
  return folded;
}

}  // namespace trainer::engine
