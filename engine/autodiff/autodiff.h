// Reverse-mode differentiation on the IR: appends the backward graph of a scalar loss to the forward graph.
#pragma once

#include <unordered_map>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine {

// Appends nodes computing d(loss)/d(v) for every v in `wrt` and returns v -> gradient value. Gradients that
// meet at fan-out are summed; labels, integer values, frozen parameters and constants get none. A value in
// `wrt` that the loss does not depend on gets a gradient of zeros. Throws InputError naming the op when a
// node on the path to the loss has no gradient rule.
std::unordered_map<ValueId, ValueId> build_backward(Graph& g, ValueId loss, const std::vector<ValueId>& wrt);

// The trainable parameters of g, in creation order.
std::vector<ValueId> trainable_parameters(const Graph& g);

}  // namespace trainer::engine
