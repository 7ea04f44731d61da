// The IR graph: Values (typed, statically shaped, named) produced and consumed by Nodes (ONNX-style ops).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/shape.h"
#include "engine/ir/tensor.h"

namespace trainer::engine {

class OpSchema;

using ValueId = int32_t;
using NodeId = int32_t;
inline constexpr ValueId kNoValue = -1;

enum class ValueKind : uint8_t {
  intermediate,  // produced by a node
  input,         // fed from outside every step (data, labels, learning rate, step counter)
  parameter,     // trainable (or frozen) weight with an initial value; persistent
  constant,      // read-only initializer; persistent
  state,         // optimizer or running statistics state; persistent, never differentiated
};

struct Value {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  ValueKind kind = ValueKind::intermediate;
  bool trainable = false;  // parameters only
  bool frozen = false;     // state only: a frozen layer's (trainable = false), which training leaves alone
  NodeId producer = -1;
  std::vector<NodeId> consumers;  // one entry per use
  size_t nbytes() const { return static_cast<size_t>(shape.numel()) * dtype_bytes(dtype); }
  bool persistent() const {
    return kind == ValueKind::parameter || kind == ValueKind::constant || kind == ValueKind::state;
  }
};

struct Node {
  std::string name;
  std::string op;
  std::string domain;
  std::vector<ValueId> inputs;   // kNoValue for an absent optional input
  std::vector<ValueId> outputs;  // kNoValue for an absent optional output
  Attributes attrs;
  const OpSchema* schema = nullptr;
  bool dead = false;  // removed by a rewrite; skipped everywhere
};

class Graph {
 public:
  Graph() = default;

  // Graph inputs and initializers. Names must be unique.
  ValueId add_input(const std::string& name, DType dtype, Shape shape);
  ValueId add_parameter(const std::string& name, Tensor init, bool trainable = true);
  ValueId add_constant(const std::string& name, Tensor value);
  ValueId add_state(const std::string& name, Tensor init);

  // Adds a node, fills attribute defaults from the schema, validates it and infers its outputs.
  // num_outputs < 0 means the schema's minimum. Throws InputError naming the node and the shapes when
  // invalid.
  NodeId add_node(const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {},
                  int num_outputs = -1, const std::string& name = "");
  // As add_node, with explicit output names; an empty name leaves that optional output absent.
  NodeId add_node_named(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                        const std::vector<std::string>& output_names, const std::string& name = "");
  // Single-output shorthand: returns output 0.
  ValueId op(const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {}) {
    return node(add_node(op, std::move(inputs), std::move(attrs), 1)).outputs[0];
  }

  void mark_output(ValueId v);
  const std::vector<ValueId>& inputs() const { return inputs_; }
  const std::vector<ValueId>& outputs() const { return outputs_; }

  // `next` holds the new value of persistent `state` after a step (optimizer updates, running statistics).
  // The planner gives both one buffer and schedules the writer after every other reader of `state`.
  void bind_update(ValueId next, ValueId state);
  // Replaces the value bound onto `state` (which must be bound) by `next`.
  void rebind_update(ValueId state, ValueId next);
  const std::vector<std::pair<ValueId, ValueId>>& updates() const { return updates_; }

  const Value& value(ValueId v) const { return values_.at(v); }
  Value& value(ValueId v) { return values_.at(v); }
  const Node& node(NodeId n) const { return nodes_.at(n); }
  Node& node(NodeId n) { return nodes_.at(n); }
  int num_values() const { return static_cast<int>(values_.size()); }
  int num_nodes() const { return static_cast<int>(nodes_.size()); }

  // Initial value of a parameter, constant or state value; nullptr for others.
  const Tensor* initializer(ValueId v) const;
  Tensor* mutable_initializer(ValueId v);
  // The value with this name, or kNoValue.
  ValueId find(const std::string& name) const;
  std::string unique_name(const std::string& prefix);

  // Rewrites: route every use of `from` to `to`, and remove a node.
  void replace_uses(ValueId from, ValueId to);
  void erase_node(NodeId n);
  // Makes node n produce the existing value `target` as its output i (instead of the value it was created
  // with), so a rewrite keeps the ids and names that callers and exports hold. Target's old producer must be
  // erased.
  void move_output(NodeId n, int i, ValueId target);
  // Re-runs validation and shape inference on every live node and checks names and the graph's acyclicity.
  void validate() const;
  // Live nodes in a topological order (inputs before consumers), stable with respect to insertion order.
  std::vector<NodeId> topo_order() const;

 private:
  ValueId new_value(const std::string& name, DType dtype, Shape shape, ValueKind kind);
  NodeId insert_node(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                     std::vector<std::string> output_names, const std::string& name);

  std::vector<Value> values_;
  std::vector<Node> nodes_;
  std::vector<ValueId> inputs_;
  std::vector<ValueId> outputs_;
  std::unordered_map<ValueId, Tensor> initializers_;
  std::unordered_map<std::string, ValueId> by_name_;
  std::unordered_map<std::string, int> name_counters_;
  std::vector<std::pair<ValueId, ValueId>> updates_;
};

// The part of `g` that computes `outs` from its inputs and constants alone, as a graph of its own: the inputs
// it reads (by their names), the nodes between, and `outs` (by their names) as its outputs. nullopt when one
// of `outs` depends on a parameter or state value.
std::optional<Graph> input_subgraph(const Graph& g, const std::vector<ValueId>& outs);

}  // namespace trainer::engine
