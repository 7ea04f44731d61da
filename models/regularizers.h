// Keras's weight regularizers as a spec writes them: "l2", "l1(1e-4)", "l1_l2(l1=1e-5, l2=1e-4)". The layer
// builder turns one into the penalty l1 * sum(|w|) + l2 * sum(w^2), which training adds to the loss.
#pragma once

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

}  // namespace trainer::models
