// ConvLSTM1D, ConvLSTM2D and ConvLSTM3D: Keras's convolutional LSTMs over a sequence of sequences, images or
// volumes ([N, T, S..., C]), as IR ops. The input's convolution runs once over every step (the steps folded
// into the batch); the recurrence is unrolled, each step a "same" convolution of the hidden state (stride 1,
// as Keras's recurrent_conv) and the gates as Keras computes them (i, f, c, o):
//   i = σ(x_i + h_i), f = σ(x_f + h_f), c = f c + i tanh(x_c + h_c), o = σ(x_o + h_o), h = o tanh(c).
// Weights in ONNX's layout (kernel [4F, C, k...], recurrent_kernel [4F, F, k...]; Keras keeps (k..., in,
// out)), the gates along the output channels in Keras's order. Unrolled, the graph is plain ONNX and autodiff
// needs nothing new; it grows with the sequence's length.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>

#include "engine/ops/conv_volume.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

// kernel_size, strides or dilation_rate of a layer of `rank` spatial axes: an integer, or `rank` of them
// (Bidirectional declares them as integers or lists, whose length is checked here); each positive.
std::vector<int64_t> sizes(LayerBuilder& b, const std::string& arg, int rank) {
  std::vector<int64_t> v = b.args.ints(arg);
  if (v.size() == 1) v.assign(static_cast<size_t>(rank), v[0]);
  if (v.size() != static_cast<size_t>(rank))
    b.fail(arg, fmt::format("{} of a layer of {} spatial axes is an integer or {} of them, not [{}]", arg,
                            rank, rank, fmt::join(v, ", ")));
  for (int64_t x : v)
    if (x < 1 || x > largest_value_of(arg))
      b.fail(arg, fmt::format("{} must hold positive integers of at most {}, got [{}]", arg,
                              largest_value_of(arg), fmt::join(v, ", ")));
  return v;
}

}  // namespace

// ConvLSTM1D, 2D and 3D: `rank` spatial axes between the steps and the channels. `merge` (Bidirectional's
// merge_mode) runs a forward and a backward layer (Keras's forward_conv_lstm2d and backward_conv_lstm2d, the
// backward one's outputs flipped back into the steps' order) and merges their channels; "" runs one.
LayerValue build_conv_lstm(LayerBuilder& b, const std::vector<LayerValue>& in, int rank,
                           const std::string& merge) {
  const size_t r = static_cast<size_t>(rank);
  const int64_t filters = b.positive("filters");
  const std::vector<int64_t> kernel = sizes(b, "kernel_size", rank);
  const std::vector<int64_t> strides = sizes(b, "strides", rank);
  const std::vector<int64_t> dilation = sizes(b, "dilation_rate", rank);
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const std::string act = b.activation_name("activation");
  const std::string gate_act = b.activation_name("recurrent_activation");
  const bool sequences = b.args.boolean("return_sequences");
  const bool go_backwards = merge.empty() && b.args.boolean("go_backwards");  // Bidirectional runs both
  const double rate = b.args.number("dropout"), recurrent_rate = b.args.number("recurrent_dropout");
  for (const auto& [arg, v] : {std::pair{"dropout", rate}, std::pair{"recurrent_dropout", recurrent_rate}})
    if (!(v >= 0 && v < 1)) b.fail(arg, fmt::format("{} must be in [0, 1), not {}", arg, v));
  const LayerValue x = b.to_channels_last(in[0]);  // a model input of (steps, width, channels) comes NCHW
  static const char* const kAxes[] = {"(steps, width, channels)", "(steps, height, width, channels)",
                                      "(steps, depth, height, width, channels)"};
  static const char* const kShapes[] = {"[steps, width, channels]", "[steps, height, width, channels]",
                                        "[steps, depth, height, width, channels]"};
  if (x.shape.size() != r + 2)
    b.fail_layer(fmt::format("ConvLSTM{}D takes a sequence of {}, {}, and '{}' gives {}", rank,
                             rank == 1   ? "sequences"
                             : rank == 2 ? "images"
                                         : "volumes",
                             kAxes[rank - 1], x.from, keras_shape(x.shape)),
                 fmt::format("give the input shape {}", kShapes[rank - 1]));
  const int64_t steps = x.shape[0], channels = x.shape[r + 1];
  const std::vector<int64_t> space(x.shape.begin() + 1, x.shape.begin() + 1 + rank);
  // The input convolution's output sizes and ONNX pads (every axis's start, then every axis's end), as the
  // convolution layers'.
  std::vector<int64_t> out(r), pads(2 * r, 0);
  int64_t area = 1, cells = 1;
  for (size_t i = 0; i < r; ++i) {
    const int64_t n = space[i], span = dilation[i] * (kernel[i] - 1) + 1;
    if (same) {
      out[i] = (n + strides[i] - 1) / strides[i];
      const int64_t total = std::max<int64_t>((out[i] - 1) * strides[i] + span - n, 0);
      pads[i] = total / 2;
      pads[i + r] = total - total / 2;
    } else {
      if (n < span)
        b.fail(
            "kernel_size",
            fmt::format("kernel_size ({}){} spans {} elements along axis {}, more than the input {} from "
                        "'{}' holds",
                        fmt::join(kernel, ", "),
                        dilation[i] > 1 ? fmt::format(" with dilation_rate ({})", fmt::join(dilation, ", "))
                                        : std::string(),
                        span, i + 2, keras_shape(x.shape), x.from),
            "use a smaller kernel_size or dilation_rate, or padding = \"same\"");
      out[i] = (n - span) / strides[i] + 1;
    }
    area *= kernel[i];
    cells *= out[i];
  }
  const int64_t gates = 4 * filters;
  auto dims = [](std::vector<int64_t> head, const std::vector<int64_t>& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
  };
  // Keras's fans of its (k..., channels, 4 filters) and (k..., filters, 4 filters) kernels; an orthogonal
  // initializer's matrix is the IR's [4 filters, channels k...] (Keras's matrix transposed, its rows
  // permuted).
  // [N, T, S..., C] -> [N, T, C, S...], the convolutions' layout.
  std::vector<int64_t> to_first = {0, 1, rank + 2};
  for (int i = 0; i < rank; ++i) to_first.push_back(i + 2);
  const ValueId channels_first_steps = b.op("Transpose", {x.value}, {{"perm", to_first}});
  const int64_t batch = b.options.batch_size;
  // One direction's layer, its weights named `prefix` + kernel, ...: the last hidden state [N, F, s...], or
  // every step's in the order they ran, [N, T, F, s...].
  auto direction = [&](const std::string& prefix, bool backwards) -> ValueId {
    const ValueId kernel_w =
        b.weight(prefix + "kernel", "kernel_initializer", Shape(dims({gates, channels}, kernel)),
                 {area * channels, area * gates, gates, channels * area, kernel_keras_axes(rank + 2)});
    const ValueId recurrent_w =
        b.weight(prefix + "recurrent_kernel", "recurrent_initializer", Shape(dims({gates, filters}, kernel)),
                 {area * filters, area * gates, gates, filters * area, kernel_keras_axes(rank + 2)});
    ValueId bias = kNoValue;
    if (b.args.boolean("use_bias")) {
      Tensor init = b.initial(b.initializer("bias_initializer"), Shape{gates}, {gates, gates, 1, gates},
                              b.seed(prefix + "bias"));
      // unit_forget_bias: the forget gate (the second) starts at 1, as Keras's.
      if (b.args.boolean("unit_forget_bias"))
        for (int64_t i = filters; i < 2 * filters; ++i) init.set_f64(i, 1.0);
      bias = b.weight(prefix + "bias", std::move(init));
      b.regularize(bias, "bias_regularizer");
      b.constrain(bias, "bias_constraint", {gates, gates, 1, gates});
    }
    // Keras's input dropout: one mask per sequence, the same at every step.
    ValueId seq = channels_first_steps;
    if (ValueId m = b.dropout_mask(prefix + "input_mask", dims({batch, 1, channels}, space), rate, "seed");
        m != kNoValue)
      seq = b.op("Mul", {seq, m});
    // A convolution of `v` [M, in, s...] by w: ONNX's Conv, or for volumes the engine's 2-D convolutions
    // (ops::conv3d_as_2d, as Conv3D's).
    auto convolve = [&](ValueId v, ValueId w, ValueId with_bias, const std::vector<int64_t>& stride,
                        const std::vector<int64_t>& dilations, const std::vector<int64_t>& onnx_pads) {
      if (rank < 3) {
        std::vector<ValueId> ins = {v, w};
        if (with_bias != kNoValue) ins.push_back(with_bias);
        return b.op(
            "Conv", ins,
            {{"kernel_shape", kernel}, {"strides", stride}, {"dilations", dilations}, {"pads", onnx_pads}});
      }
      const Shape vs = b.graph.value(v).shape;
      ops::WindowGeometry g;
      g.spatial = 3;
      g.kernel = kernel;
      g.stride = stride;
      g.dilation = dilations;
      g.pad_begin.assign(onnx_pads.begin(), onnx_pads.begin() + 3);
      g.pad_end.assign(onnx_pads.begin() + 3, onnx_pads.end());
      for (int i = 0; i < 3; ++i) {
        g.in.push_back(vs[i + 2]);
        g.out.push_back((vs[i + 2] + g.pad_begin[i] + g.pad_end[i] - g.span(i)) / stride[i] + 1);
      }
      return ops::conv3d_as_2d(volume_emitter(b), v, vs, w, b.graph.value(w).shape, with_bias, g, 1);
    };
    // Every step's input convolution at once: [N T, 4F, s...], then [N, T, 4F, s...].
    ValueId xs =
        convolve(b.op("Reshape", {seq, b.shape_constant("steps_in_batch", dims({-1, channels}, space))}),
                 kernel_w, bias, strides, dilation, pads);
    xs = b.op("Reshape", {xs, b.shape_constant("steps", dims({-1, steps, gates}, out))});
    const ValueId recurrent_mask =
        b.dropout_mask(prefix + "recurrent_mask", dims({batch, filters}, out), recurrent_rate, "seed");
    // The recurrent convolution keeps the state's size: "same" padding at stride 1.
    std::vector<int64_t> recurrent_pads(2 * r);
    for (size_t i = 0; i < r; ++i) {
      recurrent_pads[i] = (kernel[i] - 1) / 2;
      recurrent_pads[i + r] = kernel[i] / 2;
    }
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
    std::vector<ValueId> outputs;  // [N, 1, F, s...] each
    for (int64_t k = 0; k < steps; ++k) {
      const int64_t t = backwards ? steps - 1 - k : k;
      ValueId z = b.op("Reshape", {slice(xs, 1, t, t + 1), b.shape_constant("step", dims({-1, gates}, out))});
      if (hidden != kNoValue) {  // the first step's state is zero
        const ValueId from = recurrent_mask != kNoValue ? b.op("Mul", {hidden, recurrent_mask}) : hidden;
        const std::vector<int64_t> ones(r, 1);
        z = b.op("Add", {z, convolve(from, recurrent_w, kNoValue, ones, ones, recurrent_pads)});
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
    if (!sequences) return hidden;
    return outputs.size() == 1 ? outputs[0] : b.op("Concat", outputs, {{"axis", int64_t{1}}});
  };
  ValueId y;
  int64_t width = filters;
  if (merge.empty()) {
    y = direction("", go_backwards);
  } else {
    const std::string inner = fmt::format("conv_lstm{}d/", rank);
    const ValueId forward = direction("forward_" + inner, go_backwards);
    ValueId backward = direction("backward_" + inner, !go_backwards);
    if (sequences)  // Keras flips the backward layer's steps back into the input's order
      backward = b.op("Slice", {backward, b.shape_constant("flip/starts", {-1}),
                                b.shape_constant("flip/ends", {std::numeric_limits<int64_t>::min()}),
                                b.shape_constant("flip/axes", {1}), b.shape_constant("flip/steps", {-1})});
    const int64_t channel_axis = sequences ? 2 : 1;
    if (merge == "concat") {
      y = b.op("Concat", {forward, backward}, {{"axis", channel_axis}});
      width = 2 * filters;
    } else if (merge == "mul") {
      y = b.op("Mul", {forward, backward});
    } else {
      y = b.op("Add", {forward, backward});
      if (merge == "ave") y = b.op("Mul", {y, b.constant("half", Tensor::scalar<float>(0.5f))});
    }
  }
  b.info.flops_per_sample = (merge.empty() ? 1 : 2) * 2 * steps * cells * gates * area * (channels + filters);
  LayerValue out_value;
  out_value.from = b.name();
  if (!sequences) {
    out_value.value = y;  // [N, F, s...]: channels first
    out_value.shape = dims(out, {width});
    out_value.channels_first = true;
    return out_value;
  }
  // In the order the steps ran (reversed with go_backwards, as Keras's), [N, T, s..., F].
  std::vector<int64_t> to_last = {0, 1};
  for (int i = 0; i < rank; ++i) to_last.push_back(i + 3);
  to_last.push_back(2);
  out_value.value = b.op("Transpose", {y}, {{"perm", to_last}});
  out_value.shape = dims({steps}, dims(out, {width}));
  return out_value;
}

namespace {

LayerValue build_conv_lstm1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_conv_lstm(b, in, 1, "");
}
LayerValue build_conv_lstm2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_conv_lstm(b, in, 2, "");
}
LayerValue build_conv_lstm3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_conv_lstm(b, in, 3, "");
}

}  // namespace

void add_conv_recurrent_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  const ArgKind size_kinds[] = {ArgKind::integer, ArgKind::int_or_pair, ArgKind::int_or_triple};
  const BuildFn builds[] = {build_conv_lstm1d, build_conv_lstm2d, build_conv_lstm3d};
  for (int rank = 1; rank <= 3; ++rank) {
    const ArgKind size = size_kinds[rank - 1];
    defs.push_back({fmt::format("ConvLSTM{}D", rank),
                    fmt::format("conv_lstm{}d", rank),
                    {{"filters", ArgKind::integer, std::nullopt},
                     {"kernel_size", size, std::nullopt},
                     {"strides", size, int64_t{1}},
                     {"padding", ArgKind::string, S("valid")},
                     {"dilation_rate", size, int64_t{1}},
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
                     {"recurrent_dropout", ArgKind::number, 0.0},
                     {"seed", ArgKind::integer, std::nullopt, true}},
                    1,
                    1,
                    false,
                    builds[rank - 1]});
  }
}

}  // namespace trainer::models
