// Dense and the activations as IR subgraphs, with Keras's default initializers.
#include "models/layers.h"

#include <map>

#include "engine/util/error.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

bool activation_op(const std::string& name, int64_t softmax_axis, std::string* op, Attributes* attrs) {
  // gelu is the exact (erf) form, Keras's default approximate = False.
  static const std::map<std::string, std::string> ops = {
      {"relu", "Relu"}, {"sigmoid", "Sigmoid"},      {"tanh", "Tanh"},
      {"gelu", "Gelu"}, {"leaky_relu", "LeakyRelu"}, {"softmax", "Softmax"}};
  auto it = ops.find(name);
  if (it == ops.end()) return false;
  *op = it->second;
  *attrs = {};
  // Keras 3's leaky_relu activation has negative_slope = 0.2 (ONNX's LeakyRelu defaults to 0.01).
  if (name == "leaky_relu") attrs->set("alpha", 0.2f);
  if (name == "softmax") attrs->set("axis", softmax_axis);
  return true;
}

ValueId activation(Graph& g, ValueId x, const std::string& name, int64_t softmax_axis) {
  if (name == "linear" || name.empty() || name == "None") return x;
  std::string op;
  Attributes attrs;
  if (!activation_op(name, softmax_axis, &op, &attrs))
    throw InputError("", fmt::format("unknown activation '{}'", name),
                     "use linear, relu, sigmoid, tanh, gelu, leaky_relu or softmax");
  return g.op(op, {x}, attrs);
}

ValueId dense(LayerContext& ctx, ValueId x, int64_t units, const std::string& act, const std::string& name) {
  Graph& g = ctx.graph;
  const Shape& s = g.value(x).shape;
  int64_t in = s[s.rank() - 1];
  DType t = g.value(x).dtype;
  const std::string kernel = name + "/kernel";
  ValueId w =
      g.add_parameter(kernel, glorot_uniform(Shape{in, units}, in, units, layer_seed(ctx.seed, kernel), t));
  ValueId b = g.add_parameter(name + "/bias", Tensor(t, Shape{units}));
  ValueId y = g.op("Add", {g.op("MatMul", {x, w}), b});
  return activation(g, y, act);
}

}  // namespace trainer::models
