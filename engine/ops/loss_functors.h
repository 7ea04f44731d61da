// Per-element math of the elementwise losses (value and derivative with respect to the prediction), written
// once for every backend. The reductions (mean, sum, none) are applied by the kernels.
#pragma once

#include <cmath>

#include "engine/kernels/hd.h"

namespace trainer::engine::ops {

// -(t log p + (1 - t) log(1 - p)) with p clamped to [eps, 1 - eps], as Keras does; the clamp has zero slope.
struct BinaryCrossEntropyFn {
  double eps;
  TRAINER_HD double value(double p, double t) const {
    double q = p < eps ? eps : (p > 1 - eps ? 1 - eps : p);
    return -(t * std::log(q) + (1 - t) * std::log(1 - q));
  }
  TRAINER_HD double deriv(double p, double t) const {
    if (p < eps || p > 1 - eps) return 0;
    return (1 - t) / (1 - p) - t / p;
  }
};

// The same loss on logits x = logit(p), in the stable form max(x, 0) - x t + log(1 + exp(-|x|)).
struct BinaryCrossEntropyWithLogitsFn {
  TRAINER_HD double value(double x, double t) const {
    return (x > 0 ? x : 0) - x * t + std::log1p(std::exp(-std::fabs(x)));
  }
  TRAINER_HD double deriv(double x, double t) const {
    double s = x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x));
    return s - t;
  }
};

struct SquaredErrorFn {
  TRAINER_HD double value(double p, double t) const { return (p - t) * (p - t); }
  TRAINER_HD double deriv(double p, double t) const { return 2 * (p - t); }
};

struct AbsoluteErrorFn {
  TRAINER_HD double value(double p, double t) const { return std::fabs(p - t); }
  TRAINER_HD double deriv(double p, double t) const { return p > t ? 1.0 : (p < t ? -1.0 : 0.0); }
};

}  // namespace trainer::engine::ops
