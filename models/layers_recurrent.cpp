// LSTM, GRU and SimpleRNN as ONNX LSTM/GRU/RNN nodes with layout = 1 ([batch, timesteps, features], as
// Keras). Weights are stored in ONNX's layout and gate order (LSTM i, o, f, c; GRU z, r, h; RNN one "gate"):
// kernel [1, gates * units, features]
// and recurrent_kernel [1, gates * units, units] are Keras's kernels transposed with the gates reordered.
#include <fmt/format.h>

#include <algorithm>

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

DirectionWeights direction_weights(LayerBuilder& b, const std::string& prefix, ops::RnnCell cell,
                                   int64_t units, int64_t features, bool reset_after) {
  const bool lstm = cell == ops::RnnCell::lstm;
  const int64_t rows = (lstm ? 4 : cell == ops::RnnCell::gru ? 3 : 1) * units;
  DirectionWeights d;
  // Keras's (features, rows) and (units, rows): its axis 0 is the IR's 2, its axis 1 the IR's 1.
  d.w = b.weight(prefix + "kernel", "kernel_initializer", Shape{1, rows, features},
                 {features, rows, rows, features, {2, 1}});
  d.r = b.weight(prefix + "recurrent_kernel", "recurrent_initializer", Shape{1, rows, units},
                 {units, rows, rows, units, {2, 1}});
  // ONNX's B holds an input bias and a recurrent bias per gate. Keras's LSTM and SimpleRNN (and GRU with
  // reset_after = false) have one bias per gate, so the recurrent half is a constant zero; GRU with
  // reset_after keeps both, as Keras.
  if (b.args.boolean("use_bias")) {
    const int64_t n = reset_after ? 2 * rows : rows;
    Tensor init =
        b.initial(b.initializer("bias_initializer"), Shape{1, n}, {n, n, 1, n}, b.seed(prefix + "bias"));
    // unit_forget_bias: the forget gate (ONNX's third) starts at 1, so the cell remembers early in training.
    if (lstm && b.args.boolean("unit_forget_bias"))
      for (int64_t i = 2 * units; i < 3 * units; ++i) init.set_f64(i, 1.0);
    d.bias = b.weight(prefix + "bias", std::move(init));
    b.regularize(d.bias, "bias_regularizer");
    // Keras's bias is (rows) here, (2, rows) for GRU's reset_after: not the IR's [1, 2 rows] in another
    // order.
    b.constrain(d.bias, "bias_constraint",
                {n, n, 1, n, reset_after ? std::vector<int64_t>{} : std::vector<int64_t>{1}, reset_after});
    if (!reset_after)
      d.bias =
          b.op("Concat", {d.bias, b.constant(prefix + "recurrent_bias", Tensor(DType::f32, Shape{1, rows}))},
               {{"axis", int64_t{1}}});
  }
  return d;
}

// Keras's masked recurrence in ONNX's terms. A masked step leaves the states as they were, so the final
// states are those of the unmasked steps alone, in order: the steps are compacted to the front (row s of the
// compacted sequence is the s-th unmasked step) and the node runs with sequence_lens = their count. Outputs
// go back to every step: at step t the forward direction's is its output after the last unmasked step up to
// t (zeros before the first), the reverse direction's its output at the first unmasked step from t on (zeros
// after the last), as Keras carries them over masked steps; Bidirectional gives zeros at masked steps.
// Compaction and its inverse are products with one-hot [N, steps, steps] matrices, so the graph stays ONNX's
// and the gradient reaches the inputs.
struct MaskedSteps {
  ValueId mask3 = kNoValue;      // [N, T, 1]
  ValueId inclusive = kNoValue;  // [N, T, 1]: unmasked steps up to and including t
  ValueId lengths = kNoValue;    // [N] int32
  int64_t steps = 0;
};

// [N, T, T]: 1 at (t, s) where v[t] == s.
ValueId one_hot_steps(LayerBuilder& b, ValueId v, int64_t steps, const std::string& name) {
  Tensor positions(DType::f32, Shape{1, 1, steps});
  for (int64_t s = 0; s < steps; ++s) positions.set_f64(s, static_cast<double>(s));
  return b.op("Cast", {b.op("Equal", {v, b.constant(name + "/positions", std::move(positions))})},
              {{"to", int64_t{dtype_to_onnx(DType::f32)}}});
}

MaskedSteps masked_steps(LayerBuilder& b, ValueId mask, int64_t steps) {
  MaskedSteps m;
  m.steps = steps;
  Tensor upper(DType::f32, Shape{steps, steps});  // [t', t]: 1 where t' <= t
  for (int64_t i = 0; i < steps; ++i)
    for (int64_t j = i; j < steps; ++j) upper.set_f64(i * steps + j, 1.0);
  ValueId axis2 = b.shape_constant("mask/step_axis", {2});
  m.mask3 = b.op("Unsqueeze", {mask, axis2});
  m.inclusive =
      b.op("Unsqueeze", {b.op("MatMul", {mask, b.constant("mask/upper", std::move(upper))}), axis2});
  m.lengths = b.op(
      "Cast", {b.op("ReduceSum", {mask, b.shape_constant("mask/steps", {1})}, {{"keepdims", int64_t{0}}})},
      {{"to", int64_t{dtype_to_onnx(DType::i32)}}});
  return m;
}

// x [N, T, F] with its unmasked steps moved to the front, in order.
ValueId compact_steps(LayerBuilder& b, const MaskedSteps& m, ValueId x) {
  ValueId rank = b.op("Sub", {m.inclusive, b.constant("mask/one", Tensor::scalar<float>(1.0f))});
  ValueId pick = b.op("Mul", {one_hot_steps(b, rank, m.steps, "mask/compact"), m.mask3});  // [N, t, s]
  return b.op("MatMul", {b.op("Transpose", {pick}, {{"perm", std::vector<int64_t>{0, 2, 1}}}), x});
}

// y [N, T, dirs, H] of the compacted sequence back at every step (see MaskedSteps). `reverse`: the one
// direction runs in reverse (go_backwards), and takes the reverse direction's rule. `zero_masked`: masked
// steps give zeros instead (Keras's zero_output_for_mask, which Bidirectional sets for sequences).
ValueId expand_steps(LayerBuilder& b, const MaskedSteps& m, ValueId y, int dirs, int64_t units, bool reverse,
                     bool zero_masked) {
  std::vector<ValueId> per_direction;
  for (int d = 0; d < dirs; ++d) {
    const std::string k = fmt::format("mask/direction{}", d);
    // Forward: the output after unmasked step inclusive - 1; reverse: at unmasked step inclusive - mask.
    const bool forward = d == 0 && !reverse;
    ValueId source =
        b.op("Sub", {m.inclusive, forward ? b.constant(k + "/one", Tensor::scalar<float>(1.0f)) : m.mask3});
    ValueId yd =
        b.op("Reshape",
             {b.op("Slice", {y, b.shape_constant(k + "/start", {d}), b.shape_constant(k + "/end", {d + 1}),
                             b.shape_constant(k + "/axis", {2})}),
              b.shape_constant(k + "/shape", {0, m.steps, units})});
    ValueId pick = one_hot_steps(b, source, m.steps, k);  // [N, T, T]
    if (zero_masked) pick = b.op("Mul", {pick, m.mask3});
    ValueId spread = b.op("MatMul", {pick, yd});  // [N, T, H]
    per_direction.push_back(b.op("Unsqueeze", {spread, b.shape_constant(k + "/axis2", {2})}));
  }
  return dirs == 1 ? per_direction[0] : b.op("Concat", per_direction, {{"axis", int64_t{2}}});
}

// An LSTM, GRU or SimpleRNN layer, or (`bidirectional`) both directions of one as Keras's Bidirectional wraps
// it: one ONNX node with direction = bidirectional, whose two outputs are merged by `merge_mode` (concat:
// forward then backward features; sum, ave or mul).
LayerValue build_recurrent(LayerBuilder& b, const std::vector<LayerValue>& in, ops::RnnCell cell,
                           bool bidirectional) {
  const bool lstm = cell == ops::RnnCell::lstm, simple = cell == ops::RnnCell::rnn;
  const int64_t units = b.positive("units");
  const std::string act = cell_activation(b, "activation");
  const std::string rec_act = simple ? std::string() : cell_activation(b, "recurrent_activation");
  LayerValue x = b.to_channels_last(in[0]);  // ONNX's layout 1 is [N, T, F]
  if (x.shape.size() != 2)
    b.fail_layer(fmt::format("needs a sequence input (None, timesteps, features), got {} from '{}'",
                             keras_shape(x.shape), x.from),
                 "declare [model] input = [timesteps, features], or put a Reshape layer before it");
  const int64_t steps = x.shape[0], features = x.shape[1];
  // Keras's dropout on the inputs: one mask per sample and feature, the same at every step.
  const double rate = b.args.number("dropout");
  if (!(rate >= 0 && rate < 1)) b.fail("dropout", fmt::format("dropout must be in [0, 1), got {}", rate));
  if (ValueId mask = b.dropout_mask("input_dropout", {b.options.batch_size, 1, features}, rate, "seed");
      mask != kNoValue)
    x.value = b.op("Mul", {x.value, mask});
  MaskedSteps masked;
  if (x.mask != kNoValue) {
    masked = masked_steps(b, x.mask, steps);
    x.value = compact_steps(b, masked, x.value);
  }
  const int64_t gates = lstm ? 4 : simple ? 1 : 3, rows = gates * units;
  const bool reset_after = cell == ops::RnnCell::gru && b.args.boolean("reset_after");
  const std::string op = ops::rnn_op_name(cell);
  const std::string inner = lstm ? "lstm" : simple ? "simple_rnn" : "gru";
  const std::string merge = bidirectional ? b.choice("merge_mode", {"concat", "sum", "ave", "mul"}) : "";
  ValueId w, r, bias = kNoValue;
  if (!bidirectional) {
    DirectionWeights d = direction_weights(b, "", cell, units, features, reset_after);
    w = d.w, r = d.r, bias = d.bias;
  } else {
    DirectionWeights f = direction_weights(b, "forward_" + inner + "/", cell, units, features, reset_after);
    DirectionWeights k = direction_weights(b, "backward_" + inner + "/", cell, units, features, reset_after);
    const Attributes axis0{{"axis", int64_t{0}}};
    w = b.op("Concat", {f.w, k.w}, axis0);
    r = b.op("Concat", {f.r, k.r}, axis0);
    if (f.bias != kNoValue) bias = b.op("Concat", {f.bias, k.bias}, axis0);
  }

  Attributes attrs{{"hidden_size", units}, {"layout", int64_t{1}}};
  const std::string acts = lstm     ? fmt::format("{},{},{}", rec_act, act, act)
                           : simple ? act
                                    : fmt::format("{},{}", rec_act, act);
  attrs.set("activations", bidirectional ? acts + "," + acts : acts);
  if (bidirectional) attrs.set("direction", std::string("bidirectional"));
  // Keras's go_backwards: the sequence processed from its last step to its first, ONNX's reverse direction;
  // the outputs of every step come in that order too (the first is the last step's). Under a mask the
  // unmasked steps run last to first (the compacted ones, in reverse up to their count), and each position's
  // output is the one after the unmasked steps from its step on, as Keras reverses the sequence and its mask
  // together; the mask passed on is the input's, unreversed, as Keras's.
  const bool backwards = !bidirectional && b.args.boolean("go_backwards");
  if (backwards) attrs.set("direction", std::string("reverse"));
  if (cell == ops::RnnCell::gru) attrs.set("linear_before_reset", int64_t{reset_after ? 1 : 0});
  const bool sequences = b.args.boolean("return_sequences");
  // Y [N, T, directions, units] for the whole sequence, or only Y_h [N, directions, units], the last step.
  const std::string node_name = b.graph.unique_name(b.name() + "/" + op);
  std::vector<std::string> outs = {sequences ? b.graph.unique_name(node_name + ":Y") : std::string(),
                                   sequences ? std::string() : b.graph.unique_name(node_name + ":Y_h")};
  std::vector<ValueId> inputs = {x.value, w, r, bias};
  if (masked.lengths != kNoValue) inputs.push_back(masked.lengths);
  // Keras's recurrent_dropout: one mask per sample, direction and unit, the same at every step, on the state
  // where it enters the recurrent product (the engine's private trailing input of LSTM and GRU).
  const double rec_rate = b.args.number("recurrent_dropout");
  if (!(rec_rate >= 0 && rec_rate < 1))
    b.fail("recurrent_dropout", fmt::format("recurrent_dropout must be in [0, 1), got {}", rec_rate));
  const int64_t dirs = bidirectional ? 2 : 1;
  if (ValueId mask =
          b.dropout_mask("recurrent_dropout", {b.options.batch_size, dirs, units}, rec_rate, "seed");
      mask != kNoValue) {
    inputs.resize(ops::rnn_mask_input(cell), kNoValue);
    inputs.push_back(mask);
  }
  NodeId n = b.graph.add_node_named(op, inputs, attrs, outs, node_name);
  ValueId y = b.graph.node(n).outputs[sequences ? 0 : 1];
  if (sequences && masked.lengths != kNoValue)
    y = expand_steps(b, masked, y, bidirectional ? 2 : 1, units, backwards, bidirectional);
  if (sequences && backwards) {  // ONNX keeps step t's output at t; Keras lists them in processing order
    Tensor order(DType::i64, Shape{steps});
    for (int64_t t = 0; t < steps; ++t) order.set_f64(t, static_cast<double>(steps - 1 - t));
    y = b.op("Gather", {y, b.constant("backwards_order", std::move(order))}, {{"axis", int64_t{1}}});
  }

  LayerValue out;
  out.from = x.from;
  out.mask = x.mask;  // kept for the steps of a whole sequence (build.cpp drops it otherwise)
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
  return build_recurrent(b, in, ops::RnnCell::lstm, false);
}

LayerValue build_gru(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_recurrent(b, in, ops::RnnCell::gru, false);
}

LayerValue build_simple_rnn(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_recurrent(b, in, ops::RnnCell::rnn, false);
}

// Bidirectional: `layer` names the wrapped LSTM, GRU or SimpleRNN, whose arguments sit beside it (Keras nests
// a layer object; a spec's layer table holds them flat).
LayerValue build_bidirectional(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::string layer = b.args.string("layer");
  const int conv_rank = layer == "ConvLSTM1D" ? 1 : layer == "ConvLSTM2D" ? 2 : layer == "ConvLSTM3D" ? 3 : 0;
  if (layer != "LSTM" && layer != "GRU" && layer != "SimpleRNN" && conv_rank == 0)
    b.fail("layer",
           fmt::format("Bidirectional wraps LSTM, GRU, SimpleRNN or ConvLSTM1D/2D/3D, not \"{}\"", layer),
           "layer = \"LSTM\", \"GRU\", \"SimpleRNN\" or \"ConvLSTM2D\"");
  // The arguments only other wrapped layers take, with the layers that take them ("ConvLSTM": the three).
  struct Owned {
    const char* arg;
    std::vector<std::string> layers;
    const char* owners;
  };
  const Owned owned[] = {{"unit_forget_bias", {"LSTM", "ConvLSTM"}, "LSTM and the ConvLSTMs"},
                         {"reset_after", {"GRU"}, "GRU"},
                         {"recurrent_activation", {"LSTM", "GRU", "ConvLSTM"}, "LSTM, GRU and the ConvLSTMs"},
                         {"units", {"LSTM", "GRU", "SimpleRNN"}, "LSTM, GRU and SimpleRNN"},
                         {"filters", {"ConvLSTM"}, "the ConvLSTMs"},
                         {"kernel_size", {"ConvLSTM"}, "the ConvLSTMs"},
                         {"strides", {"ConvLSTM"}, "the ConvLSTMs"},
                         {"padding", {"ConvLSTM"}, "the ConvLSTMs"},
                         {"dilation_rate", {"ConvLSTM"}, "the ConvLSTMs"}};
  const std::string kind = conv_rank > 0 ? "ConvLSTM" : layer;
  for (const Owned& o : owned)
    if (b.args.has(o.arg) && std::find(o.layers.begin(), o.layers.end(), kind) == o.layers.end())
      b.fail(o.arg, fmt::format("{} is an argument of {}, not of the {} this wraps", o.arg, o.owners, layer));
  const std::string merge = b.choice("merge_mode", {"concat", "sum", "ave", "mul"});
  if (conv_rank > 0) {
    for (const char* arg : {"filters", "kernel_size"})
      if (!b.args.has(arg)) b.fail_layer(fmt::format("Bidirectional {} needs {}", layer, arg));
    return build_conv_lstm(b, in, conv_rank, merge);
  }
  if (!b.args.has("units")) b.fail_layer(fmt::format("Bidirectional {} needs units", layer));
  const ops::RnnCell cell = layer == "LSTM"  ? ops::RnnCell::lstm
                            : layer == "GRU" ? ops::RnnCell::gru
                                             : ops::RnnCell::rnn;
  return build_recurrent(b, in, cell, true);
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
          {"recurrent_dropout", ArgKind::number, 0.0},
          {"seed", ArgKind::integer, std::nullopt, true}};  // of the dropout masks, as Dropout's
}

// go_backwards, which the single-direction layers take (Bidirectional runs both directions itself).
std::vector<ArgDecl> one_direction(std::vector<ArgDecl> args) {
  args.push_back({"go_backwards", ArgKind::boolean, false});
  return args;
}

}  // namespace

void add_recurrent_layers(std::vector<LayerDef>& defs) {
  std::vector<ArgDecl> lstm = common_args(), gru = common_args();
  lstm.push_back({"unit_forget_bias", ArgKind::boolean, true});
  gru.push_back({"reset_after", ArgKind::boolean, true});
  defs.push_back({"LSTM", "lstm", one_direction(lstm), 1, 1, false, build_lstm});
  defs.push_back({"GRU", "gru", one_direction(gru), 1, 1, false, build_gru});
  std::vector<ArgDecl> simple;
  for (const ArgDecl& a : common_args())
    if (a.name != "recurrent_activation") simple.push_back(a);
  defs.push_back({"SimpleRNN", "simple_rnn", one_direction(simple), 1, 1, false, build_simple_rnn});
  // Bidirectional takes the arguments of every layer it wraps: units is for LSTM, GRU and SimpleRNN, the
  // convolution's for the ConvLSTMs (build_bidirectional checks which).
  std::vector<ArgDecl> both;
  for (ArgDecl a : common_args()) {
    if (a.name == "units") a.optional = true;
    both.push_back(a);
  }
  both.push_back({"filters", ArgKind::integer, std::nullopt, true});
  both.push_back({"kernel_size", ArgKind::int_or_ints, std::nullopt, true});
  both.push_back({"strides", ArgKind::int_or_ints, int64_t{1}});
  both.push_back({"padding", ArgKind::string, std::string("valid")});
  both.push_back({"dilation_rate", ArgKind::int_or_ints, int64_t{1}});
  both.push_back({"layer", ArgKind::string, std::nullopt});
  both.push_back({"merge_mode", ArgKind::string, std::string("concat")});
  both.push_back({"unit_forget_bias", ArgKind::boolean, true});
  both.push_back({"reset_after", ArgKind::boolean, true});
  defs.push_back({"Bidirectional", "bidirectional", both, 1, 1, false, build_bidirectional});
  keep_masks(defs, {"LSTM", "GRU", "SimpleRNN", "Bidirectional"});
}

}  // namespace trainer::models
