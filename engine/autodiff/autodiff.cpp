// Backward graph construction: forward reachability of the differentiated values, backward reachability of
// the loss, then each node's gradient rule in reverse topological order, with contributions summed at
// fan-out.
#include "engine/autodiff/autodiff.h"

#include <unordered_set>

#include "engine/ir/op_schema.h"

namespace trainer::engine {

std::vector<ValueId> trainable_parameters(const Graph& g) {
  std::vector<ValueId> out;
  for (ValueId v = 0; v < g.num_values(); ++v)
    if (g.value(v).kind == ValueKind::parameter && g.value(v).trainable) out.push_back(v);
  return out;
}

namespace {

// `name` by value: callers pass a value's name, which adding nodes can move.
ValueId sum_all(Graph& g, const std::vector<ValueId>& parts, std::string name) {
  ValueId acc = parts[0];
  for (size_t i = 1; i < parts.size(); ++i)
    acc = g.node(g.add_node("Add", {acc, parts[i]}, {}, 1, g.unique_name(name + "/accum"))).outputs[0];
  return acc;
}

}  // namespace

std::unordered_map<ValueId, ValueId> build_backward(Graph& g, ValueId loss, const std::vector<ValueId>& wrt) {
  const Value& lv = g.value(loss);
  if (lv.shape.numel() != 1 || !is_float(lv.dtype))
    throw InputError(lv.name,
                     fmt::format("the loss '{}' must be a float scalar, got {} {}", lv.name,
                                 dtype_name(lv.dtype), lv.shape.str()),
                     "reduce the loss to one number (mean over the batch)");
  std::vector<NodeId> order = g.topo_order();
  std::vector<char> requires_grad(g.num_values(), 0);
  for (ValueId v : wrt)
    if (is_float(g.value(v).dtype)) requires_grad[v] = 1;
  for (NodeId id : order) {
    const Node& n = g.node(id);
    const OpSchema& s = *n.schema;
    if (s.non_differentiable_reason()) continue;
    bool any = false;
    for (size_t i = 0; i < n.inputs.size(); ++i)
      if (n.inputs[i] != kNoValue && requires_grad[n.inputs[i]] && s.input_has_grad(static_cast<int>(i)))
        any = true;
    if (!any) continue;
    for (ValueId o : n.outputs)
      if (o != kNoValue && is_float(g.value(o).dtype)) requires_grad[o] = 1;
  }
  // Values the loss depends on.
  std::vector<char> reaches_loss(g.num_values(), 0);
  reaches_loss[loss] = 1;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const Node& n = g.node(*it);
    bool any = false;
    for (ValueId o : n.outputs)
      if (o != kNoValue && reaches_loss[o]) any = true;
    if (!any) continue;
    for (ValueId v : n.inputs)
      if (v != kNoValue) reaches_loss[v] = 1;
  }

  std::unordered_map<ValueId, std::vector<ValueId>> contrib;
  {
    Tensor one(lv.dtype, lv.shape);
    one.set_f64(0, 1.0);
    contrib[loss].push_back(g.add_constant(g.unique_name(lv.name + "/grad_seed"), std::move(one)));
  }
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    NodeId id = *it;
    // Copy what we need: gradient rules append nodes and may move the node storage.
    const Node fwd = g.node(id);
    std::vector<ValueId> gy(fwd.outputs.size(), kNoValue);
    bool any_out = false;
    for (size_t i = 0; i < fwd.outputs.size(); ++i) {
      ValueId o = fwd.outputs[i];
      if (o == kNoValue) continue;
      auto c = contrib.find(o);
      if (c == contrib.end() || c->second.empty()) continue;
      gy[i] = c->second.size() == 1 ? c->second[0] : sum_all(g, c->second, g.value(o).name);
      c->second = {gy[i]};
      any_out = true;
    }
    if (!any_out) continue;
    std::vector<bool> needs(fwd.inputs.size(), false);
    bool any_in = false;
    for (size_t i = 0; i < fwd.inputs.size(); ++i) {
      ValueId v = fwd.inputs[i];
      if (v == kNoValue || !requires_grad[v] || !reaches_loss[v]) continue;
      if (!fwd.schema->input_has_grad(static_cast<int>(i))) continue;
      needs[i] = true;
      any_in = true;
    }
    if (!any_in) continue;
    if (!fwd.schema->has_grad()) {
      if (fwd.schema->non_differentiable_reason()) continue;
      throw InputError(fwd.name, fmt::format("op {} (node '{}') has no gradient rule", fwd.op, fwd.name),
                       "freeze the parameters before it or use a differentiable op");
    }
    GradContext ctx(g, id, gy, needs);
    fwd.schema->grad_fn()(ctx);
    for (size_t i = 0; i < fwd.inputs.size(); ++i) {
      ValueId gx = ctx.grads()[i];
      if (gx == kNoValue || !needs[i]) continue;
      contrib[fwd.inputs[i]].push_back(gx);
    }
  }

  std::unordered_map<ValueId, ValueId> result;
  for (ValueId v : wrt) {
    auto c = contrib.find(v);
    if (c == contrib.end() || c->second.empty()) {
      const Value& val = g.value(v);
      result[v] = g.add_constant(g.unique_name(val.name + "/grad_zero"), Tensor(val.dtype, val.shape));
    } else {
      result[v] = c->second.size() == 1 ? c->second[0] : sum_all(g, c->second, g.value(v).name);
    }
  }
  return result;
}

}  // namespace trainer::engine
