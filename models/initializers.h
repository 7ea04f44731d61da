// Keras's weight initializers by name (glorot_uniform, orthogonal, zeros, ...), deterministic functions of a
// seed so that a model built twice from one spec and one seed starts from the same weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/ir/tensor.h"

namespace trainer::models {

// What an initializer needs to know about the weight beyond its shape. Fans follow Keras's compute_fans for
// the weight's Keras shape (Dense [in, units]: fan_in = in; Conv2D: kernel area x channels); `rows` x `cols`
// is the matrix `orthogonal` makes orthonormal (along its shorter side), so it may differ from the IR layout
// by a transpose or a permutation of rows, which keeps the property.
struct WeightFans {
  int64_t fan_in = 1;
  int64_t fan_out = 1;
  int64_t rows = 1;
  int64_t cols = 1;
  // For the axes of Keras's norm constraints: the IR axis of each axis of the weight's Keras shape, where
  // the layouts differ by a permutation (a convolution's OIHW kernel for Keras's HWIO; an LSTM's
  // [directions, gates * units, features] kernel for Keras's (features, gates * units)). Empty: the IR keeps
  // Keras's layout, or (other_layout) one that is no permutation of it.
  std::vector<int64_t> keras_axes = {};
  bool other_layout = false;
};

// keras_axes of a convolution kernel of `rank` axes: Keras keeps the window's axes first, then the channels
// (in, out; out, in for a transposed convolution), and ONNX the channels first, in the reverse order.
std::vector<int64_t> kernel_keras_axes(int rank);

// The seed of a weight: a hash of the model seed and a name ("dense_1/kernel"), so adding a layer does not
// reshuffle the others.
uint64_t layer_seed(uint64_t model_seed, const std::string& name);

// The initializer names accepted in specs (snake_case, as Keras writes them). Keras's class names are
// accepted too: "GlorotUniform" and "glorot_uniform" are the same initializer.
const std::vector<std::string>& initializer_names();
// The canonical snake_case name of `name`, or "" when it is not an initializer.
std::string canonical_initializer(const std::string& name);

// An initializer as a spec writes it: a name, or Keras's call form with arguments by keyword or position,
// "RandomNormal(stddev=0.02)", "Constant(0.1)", "VarianceScaling(scale=2.0, mode='fan_out')",
// "HeNormal(seed=7)". Returns its canonical text ("random_normal(stddev=0.02)": snake_case name, keyword
// arguments in the initializer's order), which initialize() takes; throws InputError (where = "", what and
// hint) for an unknown initializer, argument or value.
std::string canonical_initializer_call(const std::string& text);

// A weight initialized by `name` (see initializer_names(), or a canonical call of
// canonical_initializer_call); an unknown name is an internal error (the layer library validates names
// first). An initializer given a seed draws from it alone, as Keras's seeded initializers do; otherwise from
// `seed`.
engine::Tensor initialize(const std::string& name, const engine::Shape& shape, const WeightFans& fans,
                          uint64_t seed, engine::DType dtype = engine::DType::f32);

// glorot_uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out)).
engine::Tensor glorot_uniform(const engine::Shape& shape, int64_t fan_in, int64_t fan_out, uint64_t seed,
                              engine::DType dtype = engine::DType::f32);
// orthogonal: the Q factor of the QR decomposition (Householder) of a Gaussian rows x cols matrix, with the
// signs fixed by R's diagonal, as Keras's Orthogonal(gain=1): orthonormal columns when rows >= cols, else
// orthonormal rows. The result has `shape`, which must hold rows * cols elements, read row-major.
engine::Tensor orthogonal(const engine::Shape& shape, int64_t rows, int64_t cols, uint64_t seed,
                          engine::DType dtype = engine::DType::f32);

}  // namespace trainer::models
