// Sequence layers over (steps, features): Conv1D, DepthwiseConv1D, SeparableConv1D, Conv1DTranspose,
// MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D and GlobalMaxPooling1D. The window layers work on
// ONNX's [N, features, steps] and leave their result so (the channels-first layout of images), so a stack of
// them transposes once; a layer that needs [N, steps, features] (a recurrent one, Dense) turns it back.
// Padding "same" places the odd step at the end, as TensorFlow does; "causal" pads the start only.
#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

void require_sequence(LayerBuilder& b, const LayerValue& x) {
  if (x.shape.size() != 2)
    b.fail_layer(
        fmt::format("needs a sequence input (None, steps, features), got {} from '{}'", keras_shape(x.shape),
                    x.from),
        "declare [model] input = [steps, features], put it after an Embedding, or use a Reshape layer");
}

// Output length and ONNX pads (begin, end) of a 1-D window over `steps`; `fits` is false when a "valid" or
// "causal" window is longer than its input.
struct Window1d {
  int64_t out = 0, begin = 0, end = 0;
  bool fits = true;
};

Window1d window1d(int64_t steps, int64_t kernel, int64_t stride, int64_t dilation,
                  const std::string& padding) {
  Window1d w;
  const int64_t span = dilation * (kernel - 1) + 1;
  if (padding == "same") {
    w.out = (steps + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((w.out - 1) * stride + span - steps, 0);
    w.begin = total / 2;
    w.end = total - w.begin;
  } else {
    if (padding == "causal") w.begin = span - 1;
    const int64_t room = steps + w.begin - span;
    w.fits = room >= 0;
    w.out = w.fits ? room / stride + 1 : 0;
  }
  return w;
}

// A convolution's window over the steps of x; a kernel longer than a "valid" or "causal" input is an error at
// kernel_size.
Window1d kernel_window1d(LayerBuilder& b, const LayerValue& x, int64_t kernel, int64_t stride,
                         int64_t dilation, const std::string& padding) {
  const Window1d w = window1d(x.shape[0], kernel, stride, dilation, padding);
  if (!w.fits)
    b.fail(
        "kernel_size",
        fmt::format("kernel_size {} (with dilation_rate {}: {} steps) is longer than its input {} from '{}'",
                    kernel, dilation, dilation * (kernel - 1) + 1, keras_shape(x.shape), x.from),
        "use a smaller kernel_size, or padding = \"same\"");
  return w;
}

LayerValue build_conv1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const int64_t kernel = b.positive("kernel_size");
  const int64_t stride = b.positive("strides");
  const int64_t dilation = b.positive("dilation_rate");
  const std::string padding = b.choice("padding", {"valid", "same", "causal"});
  const int64_t groups = b.positive("groups");
  const std::string act = b.activation_name();
  require_sequence(b, in[0]);
  const int64_t channels = in[0].shape[1];
  if (channels % groups != 0 || filters % groups != 0)
    b.fail("groups", fmt::format("groups = {} must divide the input features ({}) and filters ({})", groups,
                                 channels, filters));
  const Window1d w = kernel_window1d(b, in[0], kernel, stride, dilation, padding);
  const int64_t per_group = channels / groups;
  // [filters, in / groups, k], ONNX's layout (Keras keeps (k, in / groups, filters)); Keras's fans.
  ValueId weight =
      b.weight("kernel", "kernel_initializer", Shape{filters, per_group, kernel},
               {kernel * per_group, kernel * filters, filters, per_group * kernel, kernel_keras_axes(3)});
  LayerValue x = b.to_channels_first(in[0]);
  std::vector<ValueId> inputs = {x.value, weight};
  if (b.args.boolean("use_bias"))
    inputs.push_back(b.weight("bias", "bias_initializer", Shape{filters}, {filters, filters, 1, filters}));
  Attributes attrs{{"kernel_shape", std::vector<int64_t>{kernel}},
                   {"strides", std::vector<int64_t>{stride}},
                   {"dilations", std::vector<int64_t>{dilation}},
                   {"pads", std::vector<int64_t>{w.begin, w.end}},
                   {"group", groups}};
  x.value = b.op("Conv", inputs, attrs);
  x.shape = {w.out, filters};
  x.pre_activation = kNoValue;
  b.info.flops_per_sample = 2 * w.out * filters * per_group * kernel;
  return b.activate(x, act);
}

// DepthwiseConv1D and SeparableConv1D: a 1-D convolution with one group per input feature, each giving
// depth_multiplier features; SeparableConv1D then mixes them with a convolution of width 1. Weights as Keras
// names them (depthwise_kernel, pointwise_kernel, bias), in ONNX's layout, with Keras's fans.
LayerValue build_depthwise1d(LayerBuilder& b, const std::vector<LayerValue>& in, bool separable) {
  const int64_t kernel = b.positive("kernel_size");
  const int64_t stride = b.positive("strides");
  const int64_t dilation = b.positive("dilation_rate");
  const std::string padding = b.choice("padding", {"valid", "same", "causal"});
  const int64_t multiplier = b.positive("depth_multiplier");
  const int64_t filters = separable ? b.positive("filters") : 0;
  const std::string act = b.activation_name();
  require_sequence(b, in[0]);
  const int64_t channels = in[0].shape[1], depth = channels * multiplier;
  const Window1d w = kernel_window1d(b, in[0], kernel, stride, dilation, padding);
  LayerValue x = b.to_channels_first(in[0]);
  // Keras's depthwise kernel is (k, features, multiplier): fan_in = k * features, fan_out = k * multiplier.
  ValueId dw = b.weight("depthwise_kernel", "depthwise_initializer", Shape{depth, 1, kernel},
                        {kernel * channels, kernel * multiplier, depth, kernel});
  std::vector<ValueId> inputs = {x.value, dw};
  const bool bias = b.args.boolean("use_bias");
  if (bias && !separable)
    inputs.push_back(b.weight("bias", "bias_initializer", Shape{depth}, {depth, depth, 1, depth}));
  x.value = b.op("Conv", inputs,
                 {{"kernel_shape", std::vector<int64_t>{kernel}},
                  {"strides", std::vector<int64_t>{stride}},
                  {"dilations", std::vector<int64_t>{dilation}},
                  {"pads", std::vector<int64_t>{w.begin, w.end}},
                  {"group", channels}});
  int64_t out_features = depth;
  b.info.flops_per_sample = 2 * w.out * depth * kernel;
  if (separable) {
    // Keras's pointwise kernel is (1, depth, filters).
    ValueId pw = b.weight("pointwise_kernel", "pointwise_initializer", Shape{filters, depth, 1},
                          {depth, filters, filters, depth, kernel_keras_axes(3)});
    std::vector<ValueId> pin = {x.value, pw};
    if (bias)
      pin.push_back(b.weight("bias", "bias_initializer", Shape{filters}, {filters, filters, 1, filters}));
    x.value = b.op("Conv", pin, {{"kernel_shape", std::vector<int64_t>{1}}});
    out_features = filters;
    b.info.flops_per_sample += 2 * w.out * depth * filters;
  }
  x.shape = {w.out, out_features};
  x.pre_activation = kNoValue;
  return b.activate(x, act);
}

LayerValue build_depthwise_conv1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_depthwise1d(b, in, false);
}

LayerValue build_separable_conv1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_depthwise1d(b, in, true);
}

// Conv1DTranspose: ONNX's 1-D ConvTranspose with Keras's output length and TensorFlow's crop (deconv_axis).
LayerValue build_conv1d_transpose(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const int64_t kernel = b.positive("kernel_size");
  const int64_t stride = b.positive("strides");
  const int64_t dilation = b.positive("dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const std::string act = b.activation_name();
  require_sequence(b, in[0]);
  const int64_t steps = in[0].shape[0], channels = in[0].shape[1];
  std::optional<int64_t> given;
  if (b.args.has("output_padding")) {
    given = b.args.integer("output_padding");
    if (*given < 0 || *given >= stride)
      b.fail("output_padding",
             fmt::format("output_padding {} must be at least 0 and smaller than strides {}", *given, stride));
  }
  const DeconvAxis d = deconv_axis(steps, kernel, stride, dilation, same, given);
  if (d.out < 1)
    b.fail("kernel_size", fmt::format("the output would have {} steps", d.out),
           "use a longer input, or padding = \"valid\"");
  // [in, filters, k], ONNX's layout; Keras's fans.
  ValueId weight =
      b.weight("kernel", "kernel_initializer", Shape{channels, filters, kernel},
               {kernel * filters, kernel * channels, channels, filters * kernel, kernel_keras_axes(3)});
  LayerValue x = b.to_channels_first(in[0]);
  std::vector<ValueId> inputs = {x.value, weight};
  if (b.args.boolean("use_bias"))
    inputs.push_back(b.weight("bias", "bias_initializer", Shape{filters}, {filters, filters, 1, filters}));
  x.value = b.op("ConvTranspose", inputs,
                 {{"kernel_shape", std::vector<int64_t>{kernel}},
                  {"strides", std::vector<int64_t>{stride}},
                  {"dilations", std::vector<int64_t>{dilation}},
                  {"pads", std::vector<int64_t>{d.pad_begin, d.pad_end}},
                  {"output_padding", std::vector<int64_t>{d.extra}}});
  x.shape = {d.out, filters};
  x.pre_activation = kNoValue;
  b.info.flops_per_sample = 2 * steps * channels * filters * kernel;
  return b.activate(x, act);
}

LayerValue build_pool1d(LayerBuilder& b, const std::vector<LayerValue>& in, const char* op) {
  const int64_t pool = b.positive("pool_size");
  const int64_t stride = b.args.has("strides") ? b.positive("strides") : pool;
  const std::string padding = b.choice("padding", {"valid", "same"});
  require_sequence(b, in[0]);
  const Window1d w = window1d(in[0].shape[0], pool, stride, 1, padding);
  if (!w.fits)
    b.fail("pool_size",
           fmt::format("pool_size {} is longer than its input {} from '{}'", pool, keras_shape(in[0].shape),
                       in[0].from),
           "use a smaller pool_size, or padding = \"same\"");
  Attributes attrs{{"kernel_shape", std::vector<int64_t>{pool}},
                   {"strides", std::vector<int64_t>{stride}},
                   {"pads", std::vector<int64_t>{w.begin, w.end}}};
  // As TensorFlow, average pooling divides by the steps inside the sequence only.
  if (std::string(op) == "AveragePool") attrs.set("count_include_pad", int64_t{0});
  LayerValue x = b.to_channels_first(in[0]);
  x.value = b.op(op, {x.value}, attrs);
  x.shape = {w.out, in[0].shape[1]};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_max_pool1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_pool1d(b, in, "MaxPool");
}

LayerValue build_average_pool1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_pool1d(b, in, "AveragePool");
}

// The mean or maximum over the steps, in whichever layout the sequence is: no transpose.
LayerValue build_global_pool1d(LayerBuilder& b, const std::vector<LayerValue>& in, bool max) {
  require_sequence(b, in[0]);
  const bool keep = b.args.boolean("keepdims");
  if (!max && in[0].mask != kNoValue) {
    // Keras's masked mean: the sum over the unmasked steps over their count (at least 1: an all-padding
    // sequence averages to zeros).
    LayerValue x = b.to_channels_last(in[0]);
    ValueId m3 = b.op("Unsqueeze", {x.mask, b.shape_constant("mask/feature_axis", {2})});
    ValueId axes = b.shape_constant("axes", {1});
    const Attributes keepdims{{"keepdims", int64_t{keep ? 1 : 0}}};
    ValueId sum = b.op("ReduceSum", {b.op("Mul", {x.value, m3}), axes}, keepdims);
    ValueId count = b.op("Max", {b.op("ReduceSum", {m3, axes}, keepdims),
                                 b.constant("mask/one", Tensor::scalar<float>(1.0f))});
    x.value = b.op("Div", {sum, count});
    x.shape = keep ? std::vector<int64_t>{1, in[0].shape[1]} : std::vector<int64_t>{in[0].shape[1]};
    x.activation.clear();
    x.pre_activation = kNoValue;
    return x;
  }
  LayerValue x = in[0];
  x.value =
      b.op(max ? "ReduceMax" : "ReduceMean", {in[0].value, b.shape_constant("axes", {b.ir_axis(in[0], 0)})},
           {{"keepdims", int64_t{keep ? 1 : 0}}});
  x.shape = keep ? std::vector<int64_t>{1, in[0].shape[1]} : std::vector<int64_t>{in[0].shape[1]};
  if (!keep) x.channels_first = false;  // [N, F] in either layout
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_global_average_pool1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_global_pool1d(b, in, false);
}

LayerValue build_global_max_pool1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_global_pool1d(b, in, true);
}

std::vector<ArgDecl> pool1d_args() {
  return {{"pool_size", ArgKind::int_or_single, int64_t{2}},
          {"strides", ArgKind::int_or_single, std::nullopt, true},
          {"padding", ArgKind::string, std::string("valid")}};
}

}  // namespace

void add_sequence_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  defs.push_back({"Conv1D", "conv1d",
                  conv_args({{"filters", ArgKind::integer, std::nullopt},
                             {"kernel_size", ArgKind::int_or_single, std::nullopt},
                             {"strides", ArgKind::int_or_single, int64_t{1}},
                             {"padding", ArgKind::string, S("valid")},
                             {"dilation_rate", ArgKind::int_or_single, int64_t{1}},
                             {"groups", ArgKind::integer, int64_t{1}}}),
                  1, 1, false, build_conv1d});
  std::vector<ArgDecl> depthwise = conv_args({{"kernel_size", ArgKind::int_or_single, std::nullopt},
                                              {"strides", ArgKind::int_or_single, int64_t{1}},
                                              {"padding", ArgKind::string, S("valid")},
                                              {"depth_multiplier", ArgKind::integer, int64_t{1}},
                                              {"dilation_rate", ArgKind::int_or_single, int64_t{1}}},
                                             "depthwise_initializer");
  defs.push_back({"DepthwiseConv1D", "depthwise_conv1d", depthwise, 1, 1, false, build_depthwise_conv1d});
  std::vector<ArgDecl> separable = depthwise;
  separable.insert(separable.begin(), {"filters", ArgKind::integer, std::nullopt});
  separable.push_back({"pointwise_initializer", ArgKind::string, S("glorot_uniform")});
  defs.push_back({"SeparableConv1D", "separable_conv1d", separable, 1, 1, false, build_separable_conv1d});
  defs.push_back({"Conv1DTranspose", "conv1d_transpose",
                  conv_args({{"filters", ArgKind::integer, std::nullopt},
                             {"kernel_size", ArgKind::int_or_single, std::nullopt},
                             {"strides", ArgKind::int_or_single, int64_t{1}},
                             {"padding", ArgKind::string, S("valid")},
                             {"output_padding", ArgKind::int_or_single, std::nullopt, true},
                             {"dilation_rate", ArgKind::int_or_single, int64_t{1}}}),
                  1, 1, false, build_conv1d_transpose});
  defs.push_back({"MaxPooling1D", "max_pooling1d", pool1d_args(), 1, 1, false, build_max_pool1d});
  defs.push_back({"AveragePooling1D", "average_pooling1d", pool1d_args(), 1, 1, false, build_average_pool1d});
  defs.push_back({"GlobalAveragePooling1D",
                  "global_average_pooling1d",
                  {{"keepdims", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_global_average_pool1d});
  defs.push_back({"GlobalMaxPooling1D",
                  "global_max_pooling1d",
                  {{"keepdims", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_global_max_pool1d});
}

}  // namespace trainer::models
