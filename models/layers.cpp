// Dense and the activations as IR subgraphs, with Keras's default initializers.
#include "models/layers.h"

#include <fmt/ranges.h>

#include <map>

#include "engine/util/error.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

bool activation_op(const std::string& name, int64_t softmax_axis, std::string* op, Attributes* attrs) {
  // gelu is the exact (erf) form, Keras's default approximate = False.
  static const std::map<std::string, std::string> ops = {{"relu", "Relu"},
                                                         {"sigmoid", "Sigmoid"},
                                                         {"tanh", "Tanh"},
                                                         {"gelu", "Gelu"},
                                                         {"leaky_relu", "LeakyRelu"},
                                                         {"softmax", "Softmax"},
                                                         {"elu", "Elu"},
                                                         {"selu", "Selu"},
                                                         {"softplus", "Softplus"},
                                                         {"softsign", "Softsign"},
                                                         {"hard_sigmoid", "HardSigmoid"},
                                                         {"hard_silu", "HardSwish"},
                                                         {"hard_swish", "HardSwish"},
                                                         {"exponential", "Exp"}};
  auto it = ops.find(name);
  if (it == ops.end()) return false;
  *op = it->second;
  *attrs = {};
  // Keras 3's leaky_relu activation has negative_slope = 0.2 (ONNX's LeakyRelu defaults to 0.01).
  if (name == "leaky_relu") attrs->set("alpha", 0.2f);
  // Keras 3's hard_sigmoid is relu6(x + 3) / 6 (ONNX's HardSigmoid defaults to 0.2 x + 0.5, Keras 2's).
  if (name == "hard_sigmoid") {
    attrs->set("alpha", 1.0f / 6);
    attrs->set("beta", 0.5f);
  }
  if (name == "softmax") attrs->set("axis", softmax_axis);
  return true;
}

ValueId emit_activation(const ActivationOps& ops, ValueId x, DType dtype, const std::string& name,
                        int64_t softmax_axis) {
  if (name == "linear" || name.empty() || name == "None") return x;
  // The activations that are more than one op.
  if (name == "silu" || name == "swish") return ops.op("Mul", {x, ops.op("Sigmoid", {x}, {})}, {});
  if (name == "mish") return ops.op("Mul", {x, ops.op("Tanh", {ops.op("Softplus", {x}, {})}, {})}, {});
  if (name == "relu6") {
    Tensor lo(dtype, Shape{}), hi(dtype, Shape{});
    hi.set_f64(0, 6);
    return ops.op("Clip", {x, ops.constant("min", std::move(lo)), ops.constant("max", std::move(hi))}, {});
  }
  std::string op;
  Attributes attrs;
  if (!activation_op(name, softmax_axis, &op, &attrs)) return kNoValue;
  return ops.op(op, {x}, attrs);
}

ValueId activation(Graph& g, ValueId x, const std::string& name, int64_t softmax_axis) {
  ActivationOps ops{[&](const std::string& op, std::vector<ValueId> in, Attributes a) {
                      return g.op(op, std::move(in), a);
                    },
                    [&](const std::string& suffix, Tensor t) {
                      return g.add_constant(g.unique_name(suffix), std::move(t));
                    }};
  ValueId y = emit_activation(ops, x, g.value(x).dtype, name, softmax_axis);
  if (y == kNoValue)
    throw InputError("", fmt::format("unknown activation '{}'", name),
                     fmt::format("use one of: {}", fmt::join(activation_names(), ", ")));
  return y;
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
