// Layer builders for C++ callers (samples, tests): Keras's Dense and activations as IR subgraphs with Keras's
// initializers. Models described in a spec go through build_model (models/build.h), which covers every layer.
#pragma once

#include <cstdint>
#include <string>

#include "engine/ir/graph.h"
#include "models/initializers.h"

namespace trainer::models {

// Seeds each weight's initializer from (model seed, weight name), so adding a layer does not reshuffle the
// others.
struct LayerContext {
  engine::Graph& graph;
  uint64_t seed = 0;
};

// Dense: y = activation(x W + b) with W "<name>/kernel" [in, units] (glorot_uniform) and b "<name>/bias"
// [units] (zeros). activation: one of activation() below.
engine::ValueId dense(LayerContext& ctx, engine::ValueId x, int64_t units, const std::string& activation,
                      const std::string& name);

// Applies a named Keras activation: linear (or "" or "None": returns x), relu, sigmoid, tanh, gelu (exact),
// leaky_relu (negative slope 0.2, Keras's default), softmax (along `softmax_axis`).
engine::ValueId activation(engine::Graph& g, engine::ValueId x, const std::string& name,
                           int64_t softmax_axis = -1);

}  // namespace trainer::models
