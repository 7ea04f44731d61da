// Keras's weight regularizers as a spec writes them: "l2", "l1(1e-4)", "l1_l2(l1=1e-5, l2=1e-4)". The layer
// builder turns one into the penalty l1 * sum(|w|) + l2 * sum(w^2), which training adds to the loss.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace trainer::models {

struct Regularizer {
  double l1 = 0, l2 = 0;
};

// The regularizer argument that goes with an initializer argument: kernel_initializer -> kernel_regularizer.
std::string regularizer_arg(const std::string& initializer_arg);

// Reads a regularizer: "None" (none), "l1" and "l2" (factor 0.01, as Keras), "l1(F)", "l2(F)", "l1(l1=F)",
// "l2(l2=F)", "l1_l2(F1, F2)", "l1_l2(l1=F1, l2=F2)" (a factor left out is 0, as Keras's L1L2). Names are
// case-insensitive and Keras's class names (L1, L2, L1L2) are accepted. Anything else calls
// fail(what, hint), which must not return.
Regularizer parse_regularizer(
    const std::string& text,
    const std::function<void(const std::string& what, const std::string& hint)>& fail);

// Keras's weight constraints as a spec writes them: "non_neg", "max_norm(3)", "max_norm(max_value=3,
// axis=0)", "unit_norm(axis=1)", "min_max_norm(min_value=0.5, max_value=1, rate=1, axis=0)", "max_norm(3,
// axis=[0, 1, 2])", or "None" (kind ""). Names are case-insensitive and Keras's class names (NonNeg, MaxNorm,
// UnitNorm, MinMaxNorm) are accepted; the defaults are Keras's (max_norm 2, min_max_norm 0 to 1, rate 1,
// axis 0).
struct Constraint {
  std::string kind;  // "" | non_neg | max_norm | unit_norm | min_max_norm
  double min_value = 0, max_value = 2, rate = 1;
  std::vector<int64_t> axes = {0};  // in Keras's layout of the weight; negative ones count from the end
};
Constraint parse_constraint(
    const std::string& text,
    const std::function<void(const std::string& what, const std::string& hint)>& fail);

// The constraint argument that goes with an initializer argument: kernel_initializer -> kernel_constraint.
std::string constraint_arg(const std::string& initializer_arg);

}  // namespace trainer::models
