// Dense and the activations as IR subgraphs, with Keras's default initializers.
#include "models/layers.h"

#include "engine/util/error.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

bool activation_op(const std::string& name, int64_t softmax_axis, std::string* op, Attributes* attrs) {
  *attrs = {};
  if (name == "relu")
    *op = "Relu";
  else if (name == "sigmoid")
    *op = "Sigmoid";
  else if (name == "tanh")
    *op = "Tanh";
  else if (name == "gelu")
    *op = "Gelu";  // exact (erf), Keras's default approximate=False
  else if (name == "leaky_relu") {
    // Keras 3's leaky_relu activation: negative_slope = 0.2 (ONNX's LeakyRelu defaults to 0.01).
    *op = "LeakyRelu";
    attrs->set("alpha", 0.2f);
  } else if (name == "softmax") {
    *op = "Softmax";
    attrs->set("axis", softmax_axis);
  } else {
    return false;
  }
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
