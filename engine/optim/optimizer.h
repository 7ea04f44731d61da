// Optimizers as graph rewrites: each trainable parameter gets its state values and one update node whose result is
// bound back onto the parameter, so the update is part of the step's Program.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine {

struct OptimizerConfig {
  std::string kind = "adam";  // sgd | adam | adamw | rmsprop
  float beta1 = 0.9f;         // adam, adamw
  float beta2 = 0.999f;       // adam, adamw
  float epsilon = 1e-7f;      // adam, adamw, rmsprop (Keras's default)
  float momentum = 0.0f;      // sgd, rmsprop
  bool nesterov = false;      // sgd
  float rho = 0.9f;           // rmsprop
  float weight_decay = 0.0f;  // adamw: decoupled; sgd: L2 added to the gradient
};

struct OptimizerState {
  ValueId param = kNoValue;
  ValueId grad = kNoValue;
  std::vector<ValueId> slots;  // optimizer state values (momentum, second moment, ...)
};

// Adds update nodes for every (param, grad) pair. `lr` is an f32 scalar input; `step` an i64 scalar input holding the
// 1-based iteration number. Returns the states in parameter order.
std::vector<OptimizerState> add_optimizer(Graph& g, const std::vector<std::pair<ValueId, ValueId>>& params_and_grads,
                                          ValueId lr, ValueId step, const OptimizerConfig& config);

}  // namespace trainer::engine
