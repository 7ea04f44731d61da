// ConvLSTM2D: Keras's convolutional LSTM over a sequence of images [N, T, H, W, C], as IR ops. The input's
// convolution runs once over every step (the steps folded into the batch); the recurrence is unrolled, each
// step a "same" convolution of the hidden state (stride 1, as Keras's recurrent_conv) and the gates as Keras
// computes them (i, f, c, o):
//   i = σ(x_i + h_i), f = σ(x_f + h_f), c = f c + i tanh(x_c + h_c), o = σ(x_o + h_o), h = o tanh(c).
// Weights in ONNX's layout (kernel [4F, C, kh, kw], recurrent_kernel [4F, F, kh, kw]; Keras keeps HWIO), the
// gates along the output channels in Keras's order. Unrolled, the graph is plain ONNX and autodiff needs
// nothing new; it grows with the sequence's length.
#include <fmt/format.h>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

LayerValue build_conv_lstm2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const std::vector<int64_t> kernel = b.positive_pair("kernel_size");
  const std::vector<int64_t> strides = b.positive_pair("strides");
  const std::vector<int64_t> dilation = b.positive_pair("dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const std::string act = b.activation_name("activation");
  const std::string gate_act = b.activation_name("recurrent_activation");
  const bool sequences = b.args.boolean("return_sequences");
  const bool backwards = b.args.boolean("go_backwards");
  const double rate = b.args.number("dropout"), recurrent_rate = b.args.number("recurrent_dropout");
  for (const auto& [arg, r] : {std::pair{"dropout", rate}, std::pair{"recurrent_dropout", recurrent_rate}})
    if (!(r >= 0 && r < 1)) b.fail(arg, fmt::format("{} must be in [0, 1), not {}", arg, r));
  const LayerValue& x = in[0];
  if (x.shape.size() != 4)
    b.fail_layer(
        fmt::format("ConvLSTM2D takes a sequence of images (steps, height, width, channels), and '{}' "
                    "gives {}",
                    x.from, keras_shape(x.shape)),
        "give the input shape [steps, height, width, channels]");
  const int64_t steps = x.shape[0], channels = x.shape[3];
  // The input convolution's output size and pads ([top, left, bottom, right]), as Conv2D's.
  std::vector<int64_t> out(2), pads(4, 0);
  for (int i = 0; i < 2; ++i) {
    const int64_t n = x.shape[static_cast<size_t>(i + 1)], span = dilation[i] * (kernel[i] - 1) + 1;
    if (same) {
      out[i] = (n + strides[i] - 1) / strides[i];
      const int64_t total = std::max<int64_t>((out[i] - 1) * strides[i] + span - n, 0);
      pads[static_cast<size_t>(i)] = total / 2;
      pads[static_cast<size_t>(i + 2)] = total - total / 2;
    } else {
      if (n < span)
        b.fail("kernel_size",
               fmt::format("kernel_size ({}, {}) spans {} x {} pixels, more than the images {} from '{}'",
                           kernel[0], kernel[1], dilation[0] * (kernel[0] - 1) + 1,
                           dilation[1] * (kernel[1] - 1) + 1, keras_shape(x.shape), x.from),
               "use a smaller kernel_size or padding = \"same\"");
      out[i] = (n - span) / strides[i] + 1;
    }
  }
  const int64_t h = out[0], w = out[1], area = kernel[0] * kernel[1], gates = 4 * filters;
  // Keras's fans of its (kh, kw, channels, 4 filters) and (kh, kw, filters, 4 filters) kernels; an orthogonal
  // initializer's matrix is the IR's [4 filters, channels kh kw] (Keras's matrix transposed, its rows
  // permuted).
  const ValueId kernel_w =
      b.weight("kernel", "kernel_initializer", Shape{gates, channels, kernel[0], kernel[1]},
               {area * channels, area * gates, gates, channels * area, kernel_keras_axes(4)});
  const ValueId recurrent_w =
      b.weight("recurrent_kernel", "recurrent_initializer", Shape{gates, filters, kernel[0], kernel[1]},
               {area * filters, area * gates, gates, filters * area, kernel_keras_axes(4)});
  ValueId bias = kNoValue;
  if (b.args.boolean("use_bias")) {
    Tensor init =
        initialize(b.initializer("bias_initializer"), Shape{gates}, {gates, gates, 1, gates}, b.seed("bias"));
    // unit_forget_bias: the forget gate (the second) starts at 1, as Keras's.
    if (b.args.boolean("unit_forget_bias"))
      for (int64_t i = filters; i < 2 * filters; ++i) init.set_f64(i, 1.0);
    bias = b.weight("bias", std::move(init));
    b.regularize(bias, "bias_regularizer");
    b.constrain(bias, "bias_constraint", {gates, gates, 1, gates});
  }
  // [N, T, H, W, C] -> [N, T, C, H, W]; Keras's input dropout: one mask per sequence, the same at every step.
  ValueId seq = b.op("Transpose", {x.value}, {{"perm", std::vector<int64_t>{0, 1, 4, 2, 3}}});
  const int64_t batch = b.options.batch_size;
  if (ValueId m = b.dropout_mask("input_mask", {batch, 1, channels, x.shape[1], x.shape[2]}, rate);
      m != kNoValue)
    seq = b.op("Mul", {seq, m});
  // Every step's input convolution at once: [N T, 4F, h, w], then [N, T, 4F, h, w].
  std::vector<ValueId> conv_in = {
      b.op("Reshape", {seq, b.shape_constant("steps_in_batch", {-1, channels, x.shape[1], x.shape[2]})}),
      kernel_w};
  if (bias != kNoValue) conv_in.push_back(bias);
  ValueId xs =
      b.op("Conv", conv_in,
           {{"kernel_shape", kernel}, {"strides", strides}, {"dilations", dilation}, {"pads", pads}});
  xs = b.op("Reshape", {xs, b.shape_constant("steps", {-1, steps, gates, h, w})});
  const ValueId recurrent_mask = b.dropout_mask("recurrent_mask", {batch, filters, h, w}, recurrent_rate);
  // The recurrent convolution keeps the state's size: "same" padding at stride 1.
  const std::vector<int64_t> recurrent_pads = {(kernel[0] - 1) / 2, (kernel[1] - 1) / 2, kernel[0] / 2,
                                               kernel[1] / 2};
  ActivationOps ops{[&](const std::string& o, std::vector<ValueId> v, Attributes a) {
                      return b.op(o, std::move(v), std::move(a));
                    },
                    [&](const std::string& suffix, Tensor t) { return b.constant(suffix, std::move(t)); }};
  auto apply = [&](const std::string& name, ValueId v) {
    const ValueId y = emit_activation(ops, v, DType::f32, name, 1);
    TRAINER_ASSERT(y != kNoValue, "activation '{}'", name);
    return y;
  };
  auto slice = [&](ValueId v, int64_t axis, int64_t from, int64_t to) {
    return b.op("Slice", {v, b.shape_constant("starts", {from}), b.shape_constant("ends", {to}),
                          b.shape_constant("axes", {axis})});
  };
  ValueId hidden = kNoValue, cell = kNoValue;
  std::vector<ValueId> outputs;
  for (int64_t k = 0; k < steps; ++k) {
    const int64_t t = backwards ? steps - 1 - k : k;
    ValueId z = b.op("Reshape", {slice(xs, 1, t, t + 1), b.shape_constant("step", {-1, gates, h, w})});
    if (hidden != kNoValue) {  // the first step's state is zero
      const ValueId from = recurrent_mask != kNoValue ? b.op("Mul", {hidden, recurrent_mask}) : hidden;
      z = b.op("Add", {z, b.op("Conv", {from, recurrent_w},
                               {{"kernel_shape", kernel},
                                {"strides", std::vector<int64_t>{1, 1}},
                                {"pads", recurrent_pads}})});
    }
    const ValueId i = apply(gate_act, slice(z, 1, 0, filters));
    const ValueId candidate = apply(act, slice(z, 1, 2 * filters, 3 * filters));
    const ValueId o = apply(gate_act, slice(z, 1, 3 * filters, gates));
    cell = cell == kNoValue
               ? b.op("Mul", {i, candidate})
               : b.op("Add", {b.op("Mul", {apply(gate_act, slice(z, 1, filters, 2 * filters)), cell}),
                              b.op("Mul", {i, candidate})});
    hidden = b.op("Mul", {o, apply(act, cell)});
    if (sequences) outputs.push_back(b.op("Unsqueeze", {hidden, b.shape_constant("step_axis", {1})}));
  }
  b.info.flops_per_sample = 2 * steps * h * w * gates * area * (channels + filters);
  LayerValue y;
  y.from = b.name();
  if (!sequences) {
    y.value = hidden;  // [N, F, h, w]
    y.shape = {h, w, filters};
    y.channels_first = true;
    return y;
  }
  // In the order the steps ran (reversed with go_backwards, as Keras's), [N, T, h, w, F].
  ValueId all = outputs.size() == 1 ? outputs[0] : b.op("Concat", outputs, {{"axis", int64_t{1}}});
  y.value = b.op("Transpose", {all}, {{"perm", std::vector<int64_t>{0, 1, 3, 4, 2}}});
  y.shape = {steps, h, w, filters};
  return y;
}

}  // namespace

void add_conv_recurrent_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  defs.push_back({"ConvLSTM2D",
                  "conv_lstm2d",
                  {{"filters", ArgKind::integer, std::nullopt},
                   {"kernel_size", ArgKind::int_or_pair, std::nullopt},
                   {"strides", ArgKind::int_or_pair, int64_t{1}},
                   {"padding", ArgKind::string, S("valid")},
                   {"dilation_rate", ArgKind::int_or_pair, int64_t{1}},
                   {"activation", ArgKind::string, S("tanh")},
                   {"recurrent_activation", ArgKind::string, S("sigmoid")},
                   {"use_bias", ArgKind::boolean, true},
                   {"kernel_initializer", ArgKind::string, S("glorot_uniform")},
                   {"recurrent_initializer", ArgKind::string, S("orthogonal")},
                   {"bias_initializer", ArgKind::string, S("zeros")},
                   {"unit_forget_bias", ArgKind::boolean, true},
                   {"return_sequences", ArgKind::boolean, false},
                   {"go_backwards", ArgKind::boolean, false},
                   {"dropout", ArgKind::number, 0.0},
                   {"recurrent_dropout", ArgKind::number, 0.0}},
                  1,
                  1,
                  false,
                  build_conv_lstm2d});
}

}  // namespace trainer::models
