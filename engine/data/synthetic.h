// Synthetic datasets (host tensors) for examples and end-to-end tests: problems a linear model cannot solve,
// generated from a seed.
#pragma once

#include <cstdint>

#include "engine/ir/tensor.h"

namespace trainer::engine::data {

struct Synthetic {
  Tensor x;  // features, f32
  Tensor y;  // labels, i64
};

// `classes` interleaved spiral arms in the plane, `per_class` points each: x [N, 2], y [N].
Synthetic spirals(int per_class, int classes, float noise, uint64_t seed);

// Sequences of `length` values in [-1, 1], x [N, length, 1]; the label is 1 when the FIRST value is positive,
// so a recurrent model must carry it through every later step.
Synthetic first_sign_sequences(int n, int length, uint64_t seed);

}  // namespace trainer::engine::data
