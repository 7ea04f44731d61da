// Optimizers as graph rewrites: each trainable parameter gets its state values and one update node whose
// result is bound back onto the parameter, so the update is part of the step's Program.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine {

// Keras's optimizers and defaults. weight_decay, for every kind, is Keras 3's: decoupled, param -=
// lr*weight_decay*param before the step (not added to the gradient, so the moments never see it).
// Keras's weight constraints: a parameter's new value after each update is projected, as Keras's optimizers
// apply a variable's constraint after assigning it.
struct WeightConstraint {
  std::string kind;  // non_neg | max_norm | unit_norm | min_max_norm
  double min_value = 0, max_value = 2, rate = 1;
  std::vector<int64_t> axes = {0};  // the norms' axes, in the parameter's layout
};

struct OptimizerConfig {
  std::string kind = "adam";  // sgd | adam | adamw | rmsprop | adagrad | adamax | nadam | lion | adadelta
  float beta1 = 0.9f;         // adam, adamw
  float beta2 = 0.999f;       // adam, adamw
  float epsilon = 1e-7f;      // adam, adamw, rmsprop (Keras's default)
  float momentum = 0.0f;      // sgd, rmsprop
  bool nesterov = false;      // sgd
  bool amsgrad = false;       // adam, adamw: the denominator takes the largest second moment so far
  bool centered = false;      // rmsprop: the mean square less the squared mean gradient
  float rho = 0.9f;           // rmsprop
  float initial_accumulator_value = 0.1f;  // adagrad
  float weight_decay = 0.0f;               // see above
};

struct OptimizerState {
  ValueId param = kNoValue;
  ValueId grad = kNoValue;
  std::vector<ValueId>
      slots;           // optimizer state values (momentum, second moment, ...), named "<param>/<slot>"
  NodeId update = -1;  // the update node
};

// Adds update nodes for every (param, grad) pair. `lr` is an f32 scalar input; `step` an i64 scalar input
// holding the 1-based iteration number. Returns the states in parameter order. State values are named after
// their parameter:
//   sgd with momentum: "<param>/momentum"; adam, adamw: "<param>/adam_m", "<param>/adam_v" and, with
//   amsgrad, "<param>/adam_vhat"; rmsprop: "<param>/rms_v", with momentum "<param>/rms_momentum" and,
//   centered, "<param>/rms_mg" (the mean gradient); adagrad:
//   "<param>/adagrad_accumulator" (starting at initial_accumulator_value); adamax: "<param>/adamax_m",
//   "<param>/adamax_u"; nadam: "<param>/nadam_m", "<param>/nadam_v"; lion: "<param>/lion_m"; adadelta:
//   "<param>/adadelta_grad", "<param>/adadelta_delta" (accumulated squares). Plain SGD has none.
// Throws InputError for an unknown kind or an out-of-range hyperparameter.
std::vector<OptimizerState> add_optimizer(Graph& g,
                                          const std::vector<std::pair<ValueId, ValueId>>& params_and_grads,
                                          ValueId lr, ValueId step, const OptimizerConfig& config);

// The slot names add_optimizer gives each parameter's state, in its order ("adam_m", "adam_v" for adam; none
// for plain SGD).
std::vector<std::string> optimizer_slots(const OptimizerConfig& config);

}  // namespace trainer::engine
