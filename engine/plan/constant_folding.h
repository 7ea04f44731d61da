// Constant folding: a node whose inputs are all constants is evaluated once, on the CPU backend, and its
// outputs become constants. Exporters leave shape arithmetic in graphs (Shape -> Gather -> Unsqueeze ->
// Concat
// -> Reshape) that a static-shape IR needs as constants; folding also saves the work at every step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine {

struct FoldOptions {
  // A node with a larger output stays computed at run time: a folded constant occupies the arena for good,
  // and graph constants are copied into every plan.
  size_t max_output_bytes = size_t{1} << 22;
};

// Whether an op may be folded at all: deterministic (Dropout draws random numbers) and stateless (optimizer
// updates and training-domain ops write state).
bool is_foldable_op(const std::string& op, const std::string& domain);

// Node n may be folded: a foldable op, at least one input, every present input a constant (not a parameter:
// those change while training), and outputs no larger than the options allow.
bool can_fold(const Graph& g, NodeId n, const FoldOptions& options = {});

// Runs one op on constant inputs (nullptr: an absent optional input) on the CPU backend and returns its
// outputs; an empty name in `output_names` leaves that optional output absent (its Tensor is empty). The node
// is validated as Graph::add_node does it: `node_name` and `input_names` (empty: generated) name it and its
// inputs in the InputError of a node that does not check. Returns nothing, having run nothing, when an
// output would be larger than `max_output_bytes`.
std::optional<std::vector<Tensor>> evaluate_constant_node(
    const std::string& op, const std::vector<const Tensor*>& inputs, const Attributes& attrs,
    const std::vector<std::string>& output_names, const std::string& node_name = "",
    const std::vector<std::string>& input_names = {}, size_t max_output_bytes = SIZE_MAX);

// Folds every foldable node, in topological order, so that whole chains fold. Each folded output becomes a
// constant that takes over its uses (graph outputs and state updates included), named after it with a
// "/folded" suffix since the node's value keeps its name; the node is erased. Returns how many nodes were
// folded.
int fold_constants(Graph& g, const FoldOptions& options = {});

}  // namespace trainer::engine
