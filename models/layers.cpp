// Dense and activations as IR subgraphs, with Keras's default initializers.
#include "models/layers.h"

#include <cmath>

#include "engine/ops/op_helpers.h"
#include "engine/util/error.h"

namespace trainer::models {

using namespace trainer::engine;

uint64_t layer_seed(uint64_t model_seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull ^ model_seed;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

Tensor glorot_uniform(const Shape& shape, int64_t fan_in, int64_t fan_out, uint64_t seed, DType dtype) {
  double limit = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  return ops::random_tensor(shape, -limit, limit, seed, dtype);
}

ValueId activation(Graph& g, ValueId x, const std::string& name) {
  if (name == "linear" || name.empty()) return x;
  if (name == "relu") return g.op("Relu", {x});
  if (name == "sigmoid") return g.op("Sigmoid", {x});
  if (name == "tanh") return g.op("Tanh", {x});
  if (name == "gelu") return g.op("Gelu", {x});
  if (name == "softmax") return g.op("Softmax", {x}, {{"axis", int64_t{-1}}});
  throw InputError("", fmt::format("unknown activation '{}'", name),
                   "use linear, relu, sigmoid, tanh, gelu or softmax");
}

ValueId dense(LayerContext& ctx, ValueId x, int64_t units, const std::string& act, const std::string& name) {
  Graph& g = ctx.graph;
  const Shape& s = g.value(x).shape;
  int64_t in = s[s.rank() - 1];
  uint64_t seed = layer_seed(ctx.seed, name);
  DType t = g.value(x).dtype;
  ValueId w = g.add_parameter(name + "/kernel", glorot_uniform(Shape{in, units}, in, units, seed, t));
  ValueId b = g.add_parameter(name + "/bias", Tensor(t, Shape{units}));
  ValueId y = g.op("Add", {g.op("MatMul", {x, w}), b});
  return activation(g, y, act);
}

}  // namespace trainer::models
