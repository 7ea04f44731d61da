// LSTM and GRU as ONNX LSTM/GRU nodes with layout = 1 ([batch, timesteps, features], as Keras). Weights are
// stored in ONNX's layout and gate order (LSTM i, o, f, c; GRU z, r, h): kernel [1, gates * units, features]
// and recurrent_kernel [1, gates * units, units] are Keras's kernels transposed with the gates reordered.
#include <fmt/format.h>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

// ONNX's name for an activation a recurrent cell accepts.
std::string cell_activation(LayerBuilder& b, const std::string& arg) {
  const std::string name = b.activation_name(arg);
  if (name == "tanh") return "Tanh";
  if (name == "sigmoid") return "Sigmoid";
  if (name == "relu") return "Relu";
  b.fail(arg, fmt::format("{} = \"{}\" is not supported in a recurrent cell", arg, name),
         "use tanh, sigmoid or relu");
}

LayerValue build_recurrent(LayerBuilder& b, const std::vector<LayerValue>& in, bool lstm) {
  const int64_t units = b.positive("units");
  const std::string act = cell_activation(b, "activation");
  const std::string rec_act = cell_activation(b, "recurrent_activation");
  const LayerValue& x = in[0];
  if (x.shape.size() != 2)
    b.fail_layer(fmt::format("needs a sequence input (None, timesteps, features), got {} from '{}'",
                             keras_shape(x.shape), x.from),
                 "declare [model] input = [timesteps, features], or put a Reshape layer before it");
  const int64_t steps = x.shape[0], features = x.shape[1];
  const int64_t gates = lstm ? 4 : 3, rows = gates * units;
  ValueId w =
      b.weight("kernel", "kernel_initializer", Shape{1, rows, features}, {features, rows, rows, features});
  ValueId r = b.weight("recurrent_kernel", "recurrent_initializer", Shape{1, rows, units},
                       {units, rows, rows, units});

  // ONNX's B holds an input bias and a recurrent bias per gate. Keras's LSTM (and GRU with reset_after =
  // false) has one bias per gate, so the recurrent half is a constant zero; GRU with reset_after keeps both,
  // as Keras.
  ValueId bias = kNoValue;
  const bool reset_after = !lstm && b.args.boolean("reset_after");
  if (b.args.boolean("use_bias")) {
    const int64_t n = reset_after ? 2 * rows : rows;
    Tensor init = initialize(b.initializer("bias_initializer"), Shape{1, n}, {n, n, 1, n}, b.seed("bias"));
    // unit_forget_bias: the forget gate (ONNX's third) starts at 1, so the cell remembers early in training.
    if (lstm && b.args.boolean("unit_forget_bias"))
      for (int64_t i = 2 * units; i < 3 * units; ++i) init.set_f64(i, 1.0);
    bias = b.weight("bias", std::move(init));
    if (!reset_after)
      bias = b.op("Concat", {bias, b.constant("recurrent_bias", Tensor(DType::f32, Shape{1, rows}))},
                  {{"axis", int64_t{1}}});
  }

  Attributes attrs{{"hidden_size", units}, {"layout", int64_t{1}}};
  attrs.set("activations",
            lstm ? fmt::format("{},{},{}", rec_act, act, act) : fmt::format("{},{}", rec_act, act));
  if (!lstm) attrs.set("linear_before_reset", int64_t{reset_after ? 1 : 0});
  const std::string op = lstm ? "LSTM" : "GRU";
  const bool sequences = b.args.boolean("return_sequences");
  // Y [N, T, 1, units] for the whole sequence, or only Y_h [N, 1, units], the last step.
  const std::string node_name = b.graph.unique_name(b.name() + "/" + op);
  std::vector<std::string> outs = {sequences ? b.graph.unique_name(node_name + ":Y") : std::string(),
                                   sequences ? std::string() : b.graph.unique_name(node_name + ":Y_h")};
  NodeId n = b.graph.add_node_named(op, {x.value, w, r, bias}, attrs, outs, node_name);
  ValueId y = b.graph.node(n).outputs[sequences ? 0 : 1];

  LayerValue out;
  out.from = x.from;
  out.shape = sequences ? std::vector<int64_t>{steps, units} : std::vector<int64_t>{units};
  std::vector<int64_t> dims = {-1};
  dims.insert(dims.end(), out.shape.begin(), out.shape.end());
  out.value = b.op("Reshape", {y, b.shape_constant("shape", dims)});
  b.info.flops_per_sample = 2 * steps * rows * (features + units);
  return out;
}

LayerValue build_lstm(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_recurrent(b, in, true);
}

LayerValue build_gru(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_recurrent(b, in, false);
}

std::vector<ArgDecl> common_args() {
  using S = std::string;
  return {{"units", ArgKind::integer, std::nullopt},
          {"activation", ArgKind::string, S("tanh")},
          {"recurrent_activation", ArgKind::string, S("sigmoid")},
          {"use_bias", ArgKind::boolean, true},
          {"return_sequences", ArgKind::boolean, false},
          {"kernel_initializer", ArgKind::string, S("glorot_uniform")},
          {"recurrent_initializer", ArgKind::string, S("orthogonal")},
          {"bias_initializer", ArgKind::string, S("zeros")}};
}

}  // namespace

void add_recurrent_layers(std::vector<LayerDef>& defs) {
  std::vector<ArgDecl> lstm = common_args(), gru = common_args();
  lstm.push_back({"unit_forget_bias", ArgKind::boolean, true});
  gru.push_back({"reset_after", ArgKind::boolean, true});
  defs.push_back({"LSTM", "lstm", lstm, 1, 1, false, build_lstm});
  defs.push_back({"GRU", "gru", gru, 1, 1, false, build_gru});
}

}  // namespace trainer::models
