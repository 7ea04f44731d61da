// A loss's own options, as Keras's loss classes take them (Huber(delta=2.0),
// BinaryFocalCrossentropy(gamma=3.0)); the defaults are Keras's.
#pragma once

#include <cstdint>
#include <optional>

namespace trainer::engine {

struct LossOptions {
  double delta = 1.0;                  // huber: the error where the square turns linear
  double gamma = 2.0;                  // the focal losses: the modulating factor's power
  double alpha = 0.25;                 // categorical focal: every class's weight; binary: class 1's, balanced
  bool apply_class_balancing = false;  // binary focal: weigh class 1 by alpha and class 0 by 1 - alpha
  // sparse categorical cross-entropy: the label whose positions the loss and the metrics skip (a void class,
  // such as -1 or 255), as a mask does; none by default
  std::optional<int64_t> ignore_class;
  bool operator==(const LossOptions&) const = default;
};

}  // namespace trainer::engine
