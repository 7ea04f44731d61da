// Graph construction, rewrites, validation and topological ordering.
#include "engine/ir/graph.h"

#include <algorithm>
#include <queue>

#include "engine/ir/op_schema.h"

namespace trainer::engine {

ValueId Graph::new_value(const std::string& name, DType dtype, Shape shape, ValueKind kind) {
  if (by_name_.count(name))
    throw InputError(name, fmt::format("duplicate value name '{}'", name), "names must be unique");
  ValueId id = static_cast<ValueId>(values_.size());
  Value v;
  v.name = name;
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.kind = kind;
  values_.push_back(std::move(v));
  by_name_[name] = id;
  return id;
}

ValueId Graph::add_input(const std::string& name, DType dtype, Shape shape) {
  ValueId v = new_value(name, dtype, std::move(shape), ValueKind::input);
  inputs_.push_back(v);
  return v;
}

ValueId Graph::add_parameter(const std::string& name, Tensor init, bool trainable) {
  ValueId v = new_value(name, init.dtype(), init.shape(), ValueKind::parameter);
  values_[v].trainable = trainable && is_float(init.dtype());
  initializers_[v] = std::move(init);
  return v;
}

ValueId Graph::add_constant(const std::string& name, Tensor value) {
  ValueId v = new_value(name, value.dtype(), value.shape(), ValueKind::constant);
  initializers_[v] = std::move(value);
  return v;
}

ValueId Graph::add_state(const std::string& name, Tensor init) {
  ValueId v = new_value(name, init.dtype(), init.shape(), ValueKind::state);
  initializers_[v] = std::move(init);
  return v;
}

std::string Graph::unique_name(const std::string& prefix) {
  int& c = name_counters_[prefix];
  for (;;) {
    std::string n = c == 0 ? prefix : fmt::format("{}_{}", prefix, c);
    ++c;
    if (!by_name_.count(n)) return n;
  }
}

NodeId Graph::add_node(const std::string& op, std::vector<ValueId> inputs, Attributes attrs, int num_outputs,
                       const std::string& name) {
  const OpSchema& s = OpRegistry::global().get(op);
  if (num_outputs < 0) num_outputs = s.min_outputs();
  std::string node_name = name.empty() ? unique_name(op) : name;
  std::vector<std::string> outs;
  for (int i = 0; i < num_outputs; ++i)
    outs.push_back(unique_name(num_outputs == 1 ? node_name : fmt::format("{}:{}", node_name, i)));
  return insert_node(op, std::move(inputs), std::move(attrs), std::move(outs), node_name);
}

NodeId Graph::add_node_named(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                             const std::vector<std::string>& output_names, const std::string& name) {
  return insert_node(op, std::move(inputs), std::move(attrs), output_names,
                     name.empty() ? unique_name(op) : name);
}

NodeId Graph::insert_node(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                          std::vector<std::string> output_names, const std::string& name) {
  const OpSchema& s = OpRegistry::global().get(op);
  // Trailing absent inputs are dropped, as in ONNX.
  while (!inputs.empty() && inputs.back() == kNoValue) inputs.pop_back();
  for (ValueId v : inputs) {
    if (v != kNoValue && (v < 0 || v >= num_values()))
      throw InternalError(fmt::format("node '{}' ({}) uses unknown value id {}", name, op, v));
  }
  Node n;
  n.name = name;
  n.op = op;
  n.domain = s.domain();
  n.inputs = std::move(inputs);
  n.attrs = std::move(attrs);
  n.schema = &s;
  // Placeholder outputs so inference can ask has_output(); real values are created after it succeeds.
  n.outputs.assign(output_names.size(), kNoValue);
  for (size_t i = 0; i < output_names.size(); ++i)
    if (!output_names[i].empty()) n.outputs[i] = 0;  // marks "wanted"
  std::vector<OutputMeta> meta;
  s.validate_and_infer(*this, n, &meta);
  NodeId id = static_cast<NodeId>(nodes_.size());
  for (size_t i = 0; i < output_names.size(); ++i) {
    if (output_names[i].empty()) continue;
    TRAINER_ASSERT(meta[i].set, "shape inference of {} did not set output {}", op, i);
    ValueId v = new_value(output_names[i], meta[i].dtype, meta[i].shape, ValueKind::intermediate);
    values_[v].producer = id;
    n.outputs[i] = v;
  }
  for (ValueId v : n.inputs)
    if (v != kNoValue) values_[v].consumers.push_back(id);
  nodes_.push_back(std::move(n));
  return id;
}

void Graph::mark_output(ValueId v) {
  if (std::find(outputs_.begin(), outputs_.end(), v) == outputs_.end()) outputs_.push_back(v);
}

void Graph::bind_update(ValueId next, ValueId state) {
  TRAINER_ASSERT(values_[state].persistent(), "update target '{}' is not persistent", values_[state].name);
  TRAINER_ASSERT(values_[next].shape == values_[state].shape && values_[next].dtype == values_[state].dtype,
                 "update '{}' does not match '{}'", values_[next].name, values_[state].name);
  updates_.emplace_back(next, state);
}

void Graph::rebind_update(ValueId state, ValueId next) {
  TRAINER_ASSERT(values_[next].shape == values_[state].shape && values_[next].dtype == values_[state].dtype,
                 "update '{}' does not match '{}'", values_[next].name, values_[state].name);
  for (auto& [n, s] : updates_)
    if (s == state) {
      n = next;
      return;
    }
  TRAINER_ASSERT(false, "'{}' has no update to replace", values_[state].name);
}

const Tensor* Graph::initializer(ValueId v) const {
  auto it = initializers_.find(v);
  return it == initializers_.end() ? nullptr : &it->second;
}

Tensor* Graph::mutable_initializer(ValueId v) {
  auto it = initializers_.find(v);
  return it == initializers_.end() ? nullptr : &it->second;
}

ValueId Graph::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? kNoValue : it->second;
}

void Graph::replace_uses(ValueId from, ValueId to) {
  for (NodeId c : values_[from].consumers) {
    for (ValueId& in : nodes_[c].inputs)
      if (in == from) in = to;
    values_[to].consumers.push_back(c);
  }
  values_[from].consumers.clear();
  for (ValueId& o : outputs_)
    if (o == from) o = to;
  for (auto& [next, state] : updates_)
    if (next == from) next = to;
}

void Graph::erase_node(NodeId n) {
  Node& node = nodes_[n];
  node.dead = true;
  for (ValueId v : node.inputs) {
    if (v == kNoValue) continue;
    auto& c = values_[v].consumers;
    auto it = std::find(c.begin(), c.end(), n);
    if (it != c.end()) c.erase(it);
  }
  for (ValueId v : node.outputs)
    if (v != kNoValue) values_[v].producer = -1;
}

void Graph::move_output(NodeId n, int i, ValueId target) {
  Node& node = nodes_[n];
  ValueId old = node.outputs.at(i);
  TRAINER_ASSERT(values_[target].producer < 0 || nodes_[values_[target].producer].dead,
                 "'{}' still has a live producer", values_[target].name);
  TRAINER_ASSERT(values_[old].shape == values_[target].shape && values_[old].dtype == values_[target].dtype,
                 "move_output: '{}' and '{}' differ", values_[old].name, values_[target].name);
  TRAINER_ASSERT(values_[old].consumers.empty(), "move_output: '{}' is already used", values_[old].name);
  values_[old].producer = -1;
  node.outputs[i] = target;
  values_[target].producer = n;
}

void Graph::validate() const {
  for (NodeId id = 0; id < num_nodes(); ++id) {
    const Node& n = nodes_[id];
    if (n.dead) continue;
    for (ValueId v : n.inputs) {
      if (v == kNoValue) continue;
      const Value& val = values_[v];
      if (val.kind == ValueKind::intermediate && (val.producer < 0 || nodes_[val.producer].dead))
        throw InputError(
            n.name, fmt::format("node '{}' ({}) reads '{}', which no node produces", n.name, n.op, val.name));
    }
    Node copy = n;
    for (size_t i = 0; i < copy.outputs.size(); ++i)
      if (copy.outputs[i] != kNoValue) copy.outputs[i] = 0;
    std::vector<OutputMeta> metas;
    n.schema->validate_and_infer(*this, copy, &metas);
    for (size_t i = 0; i < n.outputs.size(); ++i) {
      if (n.outputs[i] == kNoValue) continue;
      const OutputMeta& meta = metas[i];
      const Value& out = values_[n.outputs[i]];
      if (meta.shape != out.shape || meta.dtype != out.dtype)
        throw InputError(n.name, fmt::format("node '{}' ({}) output '{}' is {} {} but its inputs give {} {}",
                                             n.name, n.op, out.name, dtype_name(out.dtype), out.shape.str(),
                                             dtype_name(meta.dtype), meta.shape.str()));
    }
  }
  (void)topo_order();  // throws on a cycle
}

std::vector<NodeId> Graph::topo_order() const {
  std::vector<int> pending(nodes_.size(), 0);
  std::vector<NodeId> order;
  // Min-heap on node id keeps the order stable: a node comes as early as its inputs allow, ties by insertion.
  std::priority_queue<NodeId, std::vector<NodeId>, std::greater<>> ready;
  size_t live = 0;
  for (NodeId id = 0; id < num_nodes(); ++id) {
    const Node& n = nodes_[id];
    if (n.dead) continue;
    ++live;
    for (ValueId v : n.inputs) {
      if (v == kNoValue) continue;
      NodeId p = values_[v].producer;
      if (p >= 0 && !nodes_[p].dead) ++pending[id];
    }
    if (pending[id] == 0) ready.push(id);
  }
  while (!ready.empty()) {
    NodeId id = ready.top();
    ready.pop();
    order.push_back(id);
    for (ValueId v : nodes_[id].outputs) {
      if (v == kNoValue) continue;
      for (NodeId c : values_[v].consumers)
        if (!nodes_[c].dead && --pending[c] == 0) ready.push(c);
    }
  }
  if (order.size() != live)
    throw InputError("", "the graph has a cycle", "every value must be produced before it is used");
  return order;
}

std::optional<Graph> input_subgraph(const Graph& g, const std::vector<ValueId>& outs) {
  std::vector<char> needed(static_cast<size_t>(g.num_values()), 0);
  std::vector<ValueId> stack(outs.begin(), outs.end());
  while (!stack.empty()) {
    const ValueId v = stack.back();
    stack.pop_back();
    if (needed[v]) continue;
    needed[v] = 1;
    const Value& val = g.value(v);
    if (val.kind == ValueKind::parameter || val.kind == ValueKind::state) return std::nullopt;
    if (val.producer >= 0)
      for (ValueId in : g.node(val.producer).inputs)
        if (in != kNoValue) stack.push_back(in);
  }
  Graph sub;
  std::vector<ValueId> to(static_cast<size_t>(g.num_values()), kNoValue);
  for (ValueId v : g.inputs())
    if (needed[v]) to[v] = sub.add_input(g.value(v).name, g.value(v).dtype, g.value(v).shape);
  auto mapped = [&](ValueId v) {
    if (v == kNoValue || to[v] != kNoValue) return v == kNoValue ? kNoValue : to[v];
    TRAINER_ASSERT(g.value(v).kind == ValueKind::constant, "'{}' is read before it is made", g.value(v).name);
    return to[v] = sub.add_constant(g.value(v).name, *g.initializer(v));
  };
  for (NodeId id : g.topo_order()) {
    const Node& n = g.node(id);
    if (std::none_of(n.outputs.begin(), n.outputs.end(),
                     [&](ValueId o) { return o != kNoValue && needed[o]; }))
      continue;
    std::vector<ValueId> ins;
    for (ValueId in : n.inputs) ins.push_back(mapped(in));
    std::vector<std::string> names;
    for (ValueId o : n.outputs) names.push_back(o == kNoValue ? "" : g.value(o).name);
    const Node& copy = sub.node(sub.add_node_named(n.op, std::move(ins), n.attrs, names, n.name));
    for (size_t i = 0; i < n.outputs.size(); ++i)
      if (n.outputs[i] != kNoValue) to[n.outputs[i]] = copy.outputs[i];
  }
  for (ValueId o : outs) sub.mark_output(mapped(o));
  return sub;
}

}  // namespace trainer::engine
