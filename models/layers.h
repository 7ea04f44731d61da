// Layer builders in Keras's vocabulary that expand to IR subgraphs with Keras's initializers. The full layer
// library (Conv2D, LSTM, Embedding, ... from a TOML spec) grows here; these are the first, used by samples
// and tests.
#pragma once

#include <cstdint>
#include <string>

#include "engine/ir/graph.h"

namespace trainer::models {

// Seeds each layer's initializers from (model seed, layer name), so adding a layer does not reshuffle the
// others.
struct LayerContext {
  engine::Graph& graph;
  uint64_t seed = 0;
};

// glorot_uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out)).
engine::Tensor glorot_uniform(const engine::Shape& shape, int64_t fan_in, int64_t fan_out, uint64_t seed,
                              engine::DType dtype = engine::DType::f32);
uint64_t layer_seed(uint64_t model_seed, const std::string& name);

// Dense: y = activation(x W + b) with W [in, units] (glorot_uniform) and b [units] (zeros).
// activation: linear, relu, sigmoid, tanh, gelu, softmax.
engine::ValueId dense(LayerContext& ctx, engine::ValueId x, int64_t units, const std::string& activation,
                      const std::string& name);

// Applies a named activation; "linear" returns x.
engine::ValueId activation(engine::Graph& g, engine::ValueId x, const std::string& name);

}  // namespace trainer::models
