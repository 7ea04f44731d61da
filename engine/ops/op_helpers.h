// Helpers shared by the op files: common shape-inference rules and deterministic example tensors for the
// registry-walking tests.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/ir/op_schema.h"

namespace trainer::engine::ops {

// Output 0 has input 0's type and shape.
void infer_like_input0(InferContext& c);
// Numpy broadcasting of every input; all inputs share the dtype of input 0.
void infer_broadcast(InferContext& c);

// Deterministic pseudo-random tensor with values uniform in [lo, hi) (splitmix64; stable across platforms).
Tensor random_tensor(const Shape& s, double lo, double hi, uint64_t seed, DType dtype = DType::f64);
// Random integers in [lo, hi).
Tensor random_int_tensor(const Shape& s, int64_t lo, int64_t hi, uint64_t seed, DType dtype = DType::i64);
// A 1-D i64 tensor.
Tensor i64_tensor(const std::vector<int64_t>& v);

// The example with its f64 tensors in f32 (label + " (f32)"), so tests run the single-precision kernels;
// false when it has no f64 tensor.
bool as_f32(const OpExample& e, OpExample* out);

// Shorthand for an example: all inputs present and non-constant unless marked.
OpExample example(std::string label, std::vector<Tensor> inputs, Attributes attrs = {});

}  // namespace trainer::engine::ops
