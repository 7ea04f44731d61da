// LSTM and GRU as ONNX LSTM/GRU nodes with layout = 1 ([batch, timesteps, features], as Keras). Weights are
// stored in ONNX's layout and gate order (LSTM i, o, f, c; GRU z, r, h): kernel [1, gates * units, features]
// and recurrent_kernel [1, gates * units, units] are Keras's kernels transposed with the gates reordered.
#include <fmt/format.h>

#include "engine/ops/rnn_config.h"
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

// The weights of one direction, named "<prefix>kernel", "<prefix>recurrent_kernel" and "<prefix>bias"
// (Keras's names: "lstm/kernel", or "bidirectional/forward_lstm/kernel" inside a Bidirectional).
struct DirectionWeights {
  ValueId w = kNoValue, r = kNoValue, bias = kNoValue;
};

DirectionWeights direction_weights(LayerBuilder& b, const std::string& prefix, bool lstm, int64_t units,
                                   int64_t features, bool reset_after) {
  const int64_t rows = (lstm ? 4 : 3) * units;
  DirectionWeights d;
  d.w = b.weight(prefix + "kernel", "kernel_initializer", Shape{1, rows, features},
                 {features, rows, rows, features});
  d.r = b.weight(prefix + "recurrent_kernel", "recurrent_initializer", Shape{1, rows, units},
                 {units, rows, rows, units});
  // ONNX's B holds an input bias and a recurrent bias per gate. Keras's LSTM (and GRU with reset_after =
  // false) has one bias per gate, so the recurrent half is a constant zero; GRU with reset_after keeps both,
  // as Keras.
  if (b.args.boolean("use_bias")) {
    const int64_t n = reset_after ? 2 * rows : rows;
    Tensor init =
        initialize(b.initializer("bias_initializer"), Shape{1, n}, {n, n, 1, n}, b.seed(prefix + "bias"));
    // unit_forget_bias: the forget gate (ONNX's third) starts at 1, so the cell remembers early in training.
    if (lstm && b.args.boolean("unit_forget_bias"))
      for (int64_t i = 2 * units; i < 3 * units; ++i) init.set_f64(i, 1.0);
    d.bias = b.weight(prefix + "bias", std::move(init));
    b.regularize(d.bias, "bias_regularizer");
    if (!reset_after)
      d.bias =
          b.op("Concat", {d.bias, b.constant(prefix + "recurrent_bias", Tensor(DType::f32, Shape{1, rows}))},
               {{"axis", int64_t{1}}});
  }
  return d;
}

// An LSTM or GRU layer, or (`bidirectional`) both directions of one as Keras's Bidirectional wraps it: one
// ONNX node with direction = bidirectional, whose two outputs are merged by `merge_mode` (concat: forward
// then backward features; sum, ave or mul).
LayerValue build_recurrent(LayerBuilder& b, const std::vector<LayerValue>& in, bool lstm,
                           bool bidirectional) {
  const int64_t units = b.positive("units");
  const std::string act = cell_activation(b, "activation");
  const std::string rec_act = cell_activation(b, "recurrent_activation");
  LayerValue x = b.to_channels_last(in[0]);  // ONNX's layout 1 is [N, T, F]
  if (x.shape.size() != 2)
    b.fail_layer(fmt::format("needs a sequence input (None, timesteps, features), got {} from '{}'",
                             keras_shape(x.shape), x.from),
                 "declare [model] input = [timesteps, features], or put a Reshape layer before it");
  const int64_t steps = x.shape[0], features = x.shape[1];
  // Keras's dropout on the inputs: one mask per sample and feature, the same at every step.
  const double rate = b.args.number("dropout");
  if (!(rate >= 0 && rate < 1)) b.fail("dropout", fmt::format("dropout must be in [0, 1), got {}", rate));
  if (ValueId mask = b.dropout_mask("input_dropout", {b.options.batch_size, 1, features}, rate);
      mask != kNoValue)
    x.value = b.op("Mul", {x.value, mask});
  const int64_t gates = lstm ? 4 : 3, rows = gates * units;
  const bool reset_after = !lstm && b.args.boolean("reset_after");
  const std::string op = lstm ? "LSTM" : "GRU";
  const std::string inner = lstm ? "lstm" : "gru";
  const std::string merge = bidirectional ? b.choice("merge_mode", {"concat", "sum", "ave", "mul"}) : "";
  ValueId w, r, bias = kNoValue;
  if (!bidirectional) {
    DirectionWeights d = direction_weights(b, "", lstm, units, features, reset_after);
    w = d.w, r = d.r, bias = d.bias;
  } else {
    DirectionWeights f = direction_weights(b, "forward_" + inner + "/", lstm, units, features, reset_after);
    DirectionWeights k = direction_weights(b, "backward_" + inner + "/", lstm, units, features, reset_after);
    const Attributes axis0{{"axis", int64_t{0}}};
    w = b.op("Concat", {f.w, k.w}, axis0);
    r = b.op("Concat", {f.r, k.r}, axis0);
    if (f.bias != kNoValue) bias = b.op("Concat", {f.bias, k.bias}, axis0);
  }

  Attributes attrs{{"hidden_size", units}, {"layout", int64_t{1}}};
  const std::string acts =
      lstm ? fmt::format("{},{},{}", rec_act, act, act) : fmt::format("{},{}", rec_act, act);
  attrs.set("activations", bidirectional ? acts + "," + acts : acts);
  if (bidirectional) attrs.set("direction", std::string("bidirectional"));
  if (!lstm) attrs.set("linear_before_reset", int64_t{reset_after ? 1 : 0});
  const bool sequences = b.args.boolean("return_sequences");
  // Y [N, T, directions, units] for the whole sequence, or only Y_h [N, directions, units], the last step.
  const std::string node_name = b.graph.unique_name(b.name() + "/" + op);
  std::vector<std::string> outs = {sequences ? b.graph.unique_name(node_name + ":Y") : std::string(),
                                   sequences ? std::string() : b.graph.unique_name(node_name + ":Y_h")};
  std::vector<ValueId> inputs = {x.value, w, r, bias};
  // Keras's recurrent_dropout: one mask per sample, direction and unit, the same at every step, on the state
  // where it enters the recurrent product (the engine's private trailing input of LSTM and GRU).
  const double rec_rate = b.args.number("recurrent_dropout");
  if (!(rec_rate >= 0 && rec_rate < 1))
    b.fail("recurrent_dropout", fmt::format("recurrent_dropout must be in [0, 1), got {}", rec_rate));
  const int64_t dirs = bidirectional ? 2 : 1;
  if (ValueId mask = b.dropout_mask("recurrent_dropout", {b.options.batch_size, dirs, units}, rec_rate);
      mask != kNoValue) {
    inputs.resize(ops::rnn_mask_input(lstm ? ops::RnnCell::lstm : ops::RnnCell::gru), kNoValue);
    inputs.push_back(mask);
  }
  NodeId n = b.graph.add_node_named(op, inputs, attrs, outs, node_name);
  ValueId y = b.graph.node(n).outputs[sequences ? 0 : 1];

  LayerValue out;
  out.from = x.from;
  const int64_t width = merge == "concat" ? 2 * units : units;
  out.shape = sequences ? std::vector<int64_t>{steps, width} : std::vector<int64_t>{width};
  const int64_t dir_axis = sequences ? 2 : 1;
  if (merge == "sum" || merge == "ave") {
    y = b.op(merge == "sum" ? "ReduceSum" : "ReduceMean", {y, b.shape_constant("directions", {dir_axis})},
             {{"keepdims", int64_t{1}}});
  } else if (merge == "mul") {
    auto direction = [&](int64_t k) {
      return b.op("Slice", {y, b.shape_constant(fmt::format("start{}", k), {k}),
                            b.shape_constant(fmt::format("end{}", k), {k + 1}),
                            b.shape_constant(fmt::format("axis{}", k), {dir_axis})});
    };
    y = b.op("Mul", {direction(0), direction(1)});
  }
  std::vector<int64_t> dims = {-1};
  dims.insert(dims.end(), out.shape.begin(), out.shape.end());
  out.value = b.op("Reshape", {y, b.shape_constant("shape", dims)});
  b.info.flops_per_sample = (bidirectional ? 2 : 1) * 2 * steps * rows * (features + units);
  return out;
}

LayerValue build_lstm(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_recurrent(b, in, true, false);
}

LayerValue build_gru(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_recurrent(b, in, false, false);
}

// Bidirectional: `layer` names the wrapped LSTM or GRU, whose arguments sit beside it (Keras nests a layer
// object; a spec's layer table holds them flat).
LayerValue build_bidirectional(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::string layer = b.args.string("layer");
  if (layer != "LSTM" && layer != "GRU")
    b.fail("layer", fmt::format("Bidirectional wraps LSTM or GRU, not \"{}\"", layer),
           "layer = \"LSTM\" or layer = \"GRU\"");
  const bool lstm = layer == "LSTM";
  const char* other = lstm ? "reset_after" : "unit_forget_bias";
  if (b.args.has(other))
    b.fail(other, fmt::format("{} is an argument of {}, not of the {} this wraps", other,
                              lstm ? "GRU" : "LSTM", layer));
  return build_recurrent(b, in, lstm, true);
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
          {"bias_initializer", ArgKind::string, S("zeros")},
          {"dropout", ArgKind::number, 0.0},
          {"recurrent_dropout", ArgKind::number, 0.0}};
}

}  // namespace

void add_recurrent_layers(std::vector<LayerDef>& defs) {
  std::vector<ArgDecl> lstm = common_args(), gru = common_args();
  lstm.push_back({"unit_forget_bias", ArgKind::boolean, true});
  gru.push_back({"reset_after", ArgKind::boolean, true});
  defs.push_back({"LSTM", "lstm", lstm, 1, 1, false, build_lstm});
  defs.push_back({"GRU", "gru", gru, 1, 1, false, build_gru});
  std::vector<ArgDecl> both = common_args();
  both.push_back({"layer", ArgKind::string, std::nullopt});
  both.push_back({"merge_mode", ArgKind::string, std::string("concat")});
  both.push_back({"unit_forget_bias", ArgKind::boolean, true});
  both.push_back({"reset_after", ArgKind::boolean, true});
  defs.push_back({"Bidirectional", "bidirectional", both, 1, 1, false, build_bidirectional});
}

}  // namespace trainer::models
