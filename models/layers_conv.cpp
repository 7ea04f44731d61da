// Image and normalization layers: Conv2D, Conv2DTranspose, MaxPooling2D, AveragePooling2D,
// GlobalAveragePooling2D, GlobalMaxPooling2D, UpSampling2D, ZeroPadding2D, BatchNormalization and
// LayerNormalization. Images
// run as NCHW (ONNX's layout); padding "same" places the odd pixel at the end, as TensorFlow does.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "engine/ops/sync_batch_norm.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

void require_image(LayerBuilder& b, const LayerValue& x) {
  b.require_image(x);
}

// Output sizes and explicit ONNX pads ([top, left, bottom, right]) of a 2-D window; `fits` is false when a
// "valid" window is larger than its input.
struct Window {
  std::vector<int64_t> out, pads;
  bool fits = true;
};

Window window(const LayerValue& x, const std::vector<int64_t>& kernel, const std::vector<int64_t>& strides,
              const std::vector<int64_t>& dilation, bool same) {
  Window w;
  w.pads.assign(4, 0);
  for (int i = 0; i < 2; ++i) {
    const int64_t in = x.shape[static_cast<size_t>(i)], span = dilation[i] * (kernel[i] - 1) + 1;
    if (same) {
      const int64_t out = (in + strides[i] - 1) / strides[i];
      const int64_t total = std::max<int64_t>((out - 1) * strides[i] + span - in, 0);
      w.pads[static_cast<size_t>(i)] = total / 2;
      w.pads[static_cast<size_t>(i + 2)] = total - total / 2;
      w.out.push_back(out);
    } else {
      if (in < span) w.fits = false;
      w.out.push_back(in < span ? 0 : (in - span) / strides[i] + 1);
    }
  }
  return w;
}

std::string pair_text(const std::vector<int64_t>& v) {
  return fmt::format("({}, {})", v[0], v[1]);
}

LayerValue build_conv2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const std::vector<int64_t> kernel = b.positive_pair("kernel_size");
  const std::vector<int64_t> strides = b.positive_pair("strides");
  const std::vector<int64_t> dilation = b.positive_pair("dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const int64_t groups = b.positive("groups");
  const std::string act = b.activation_name();
  require_image(b, in[0]);
  const int64_t channels = in[0].shape[2];
  if (channels % groups != 0 || filters % groups != 0)
    b.fail("groups", fmt::format("groups = {} must divide the input channels ({}) and filters ({})", groups,
                                 channels, filters));
  Window w = window(in[0], kernel, strides, dilation, same);
  if (!w.fits) {
    std::string spans =
        dilation == std::vector<int64_t>{1, 1}
            ? std::string()
            : fmt::format(" (with dilation_rate {}: {} x {} pixels)", pair_text(dilation),
                          dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1);
    b.fail("kernel_size",
           fmt::format("kernel_size {}{} is larger than its input {} from '{}'", pair_text(kernel), spans,
                       keras_shape(in[0].shape), in[0].from),
           "use a smaller kernel_size, padding = \"same\", or fewer pooling layers before it");
  }
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t per_group = channels / groups, area = kernel[0] * kernel[1];
  // OIHW, ONNX's layout (Keras keeps HWIO); fans as Keras computes them for its (kh, kw, in/groups, filters).
  ValueId weight =
      b.weight("kernel", "kernel_initializer", Shape{filters, per_group, kernel[0], kernel[1]},
               {area * per_group, area * filters, filters, per_group * area, kernel_keras_axes(4)});
  std::vector<ValueId> inputs = {x.value, weight};
  if (b.args.boolean("use_bias"))
    inputs.push_back(b.weight("bias", "bias_initializer", Shape{filters}, {filters, filters, 1, filters}));
  Attributes attrs{{"kernel_shape", kernel},
                   {"strides", strides},
                   {"dilations", dilation},
                   {"pads", w.pads},
                   {"group", groups}};
  x.value = b.op("Conv", inputs, attrs);
  x.shape = {w.out[0], w.out[1], filters};
  b.info.flops_per_sample = 2 * w.out[0] * w.out[1] * filters * per_group * area;
  return b.activate(x, act);
}

// DepthwiseConv2D and SeparableConv2D: a grouped convolution with one group per input channel, each giving
// depth_multiplier channels; SeparableConv2D then mixes the channels with a 1 x 1 convolution. Weights as
// Keras names them (depthwise_kernel, pointwise_kernel, bias), in ONNX's layout, with Keras's fans.
LayerValue build_depthwise(LayerBuilder& b, const std::vector<LayerValue>& in, bool separable) {
  const std::vector<int64_t> kernel = b.positive_pair("kernel_size");
  const std::vector<int64_t> strides = b.positive_pair("strides");
  const std::vector<int64_t> dilation = b.positive_pair("dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const int64_t multiplier = b.positive("depth_multiplier");
  const int64_t filters = separable ? b.positive("filters") : 0;
  const std::string act = b.activation_name();
  require_image(b, in[0]);
  const int64_t channels = in[0].shape[2], depth = channels * multiplier, area = kernel[0] * kernel[1];
  Window w = window(in[0], kernel, strides, dilation, same);
  if (!w.fits)
    b.fail("kernel_size",
           fmt::format("kernel_size {} is larger than its input {} from '{}'", pair_text(kernel),
                       keras_shape(in[0].shape), in[0].from),
           "use a smaller kernel_size, or padding = \"same\"");
  LayerValue x = b.to_channels_first(in[0]);
  // Keras's depthwise kernel is (kh, kw, channels, multiplier): fan_in = area * channels, fan_out = area *
  // multiplier.
  ValueId dw = b.weight("depthwise_kernel", "depthwise_initializer", Shape{depth, 1, kernel[0], kernel[1]},
                        {area * channels, area * multiplier, depth, area});
  std::vector<ValueId> inputs = {x.value, dw};
  const bool bias = b.args.boolean("use_bias");
  if (bias && !separable)
    inputs.push_back(b.weight("bias", "bias_initializer", Shape{depth}, {depth, depth, 1, depth}));
  Attributes attrs{{"kernel_shape", kernel},
                   {"strides", strides},
                   {"dilations", dilation},
                   {"pads", w.pads},
                   {"group", channels}};
  x.value = b.op("Conv", inputs, attrs);
  int64_t out_channels = depth;
  b.info.flops_per_sample = 2 * w.out[0] * w.out[1] * depth * area;
  if (separable) {
    // Keras's pointwise kernel is (1, 1, depth, filters).
    ValueId pw = b.weight("pointwise_kernel", "pointwise_initializer", Shape{filters, depth, 1, 1},
                          {depth, filters, filters, depth, kernel_keras_axes(4)});
    std::vector<ValueId> pin = {x.value, pw};
    if (bias)
      pin.push_back(b.weight("bias", "bias_initializer", Shape{filters}, {filters, filters, 1, filters}));
    x.value = b.op("Conv", pin, {{"kernel_shape", std::vector<int64_t>{1, 1}}});
    out_channels = filters;
    b.info.flops_per_sample += 2 * w.out[0] * w.out[1] * depth * filters;
  }
  x.shape = {w.out[0], w.out[1], out_channels};
  x.pre_activation = kNoValue;
  return b.activate(x, act);
}

LayerValue build_depthwise_conv2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_depthwise(b, in, false);
}

LayerValue build_separable_conv2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_depthwise(b, in, true);
}

// Conv2DTranspose: ONNX's ConvTranspose with Keras's output sizes and TensorFlow's crop (deconv_axis).
LayerValue build_conv2d_transpose(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const std::vector<int64_t> kernel = b.positive_pair("kernel_size");
  const std::vector<int64_t> strides = b.positive_pair("strides");
  const std::vector<int64_t> dilation = b.positive_pair("dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const std::string act = b.activation_name();
  const bool given_extra = b.args.has("output_padding");
  std::vector<int64_t> extra = given_extra ? b.args.pair("output_padding") : std::vector<int64_t>{0, 0};
  require_image(b, in[0]);
  const int64_t channels = in[0].shape[2];
  std::vector<int64_t> out(2), pads(4, 0);
  for (int i = 0; i < 2; ++i) {
    if (given_extra && (extra[i] < 0 || extra[i] >= strides[i]))
      b.fail("output_padding", fmt::format("output_padding {} must be at least 0 and smaller than strides {}",
                                           pair_text(extra), pair_text(strides)));
    const DeconvAxis d = deconv_axis(in[0].shape[static_cast<size_t>(i)], kernel[i], strides[i], dilation[i],
                                     same, given_extra ? std::optional<int64_t>(extra[i]) : std::nullopt);
    if (d.out < 1)
      b.fail("kernel_size", fmt::format("the output would have {} rows or columns", d.out),
             "use a larger input, or padding = \"valid\"");
    out[i] = d.out;
    pads[static_cast<size_t>(i)] = d.pad_begin;
    pads[static_cast<size_t>(i + 2)] = d.pad_end;
    extra[i] = d.extra;
  }
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t area = kernel[0] * kernel[1];
  // [C_in, filters, kH, kW], ONNX's layout (Keras keeps (kh, kw, filters, in)); fans as Keras computes them.
  ValueId weight =
      b.weight("kernel", "kernel_initializer", Shape{channels, filters, kernel[0], kernel[1]},
               {area * filters, area * channels, channels, filters * area, kernel_keras_axes(4)});
  std::vector<ValueId> inputs = {x.value, weight};
  if (b.args.boolean("use_bias"))
    inputs.push_back(b.weight("bias", "bias_initializer", Shape{filters}, {filters, filters, 1, filters}));
  Attributes attrs{{"kernel_shape", kernel},
                   {"strides", strides},
                   {"dilations", dilation},
                   {"pads", pads},
                   {"output_padding", extra}};
  const int64_t in_pixels = in[0].shape[0] * in[0].shape[1];
  x.value = b.op("ConvTranspose", inputs, attrs);
  x.shape = {out[0], out[1], filters};
  b.info.flops_per_sample = 2 * in_pixels * channels * filters * area;
  return b.activate(x, act);
}

LayerValue build_pool(LayerBuilder& b, const std::vector<LayerValue>& in, const char* op) {
  const std::vector<int64_t> pool = b.positive_pair("pool_size");
  const std::vector<int64_t> strides = b.args.has("strides") ? b.positive_pair("strides") : pool;
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  require_image(b, in[0]);
  Window w = window(in[0], pool, strides, {1, 1}, same);
  if (!w.fits)
    b.fail("pool_size",
           fmt::format("pool_size {} is larger than its input {} from '{}'", pair_text(pool),
                       keras_shape(in[0].shape), in[0].from),
           "use a smaller pool_size, padding = \"same\", or fewer pooling layers before it");
  LayerValue x = b.to_channels_first(in[0]);
  Attributes attrs{{"kernel_shape", pool}, {"strides", strides}, {"pads", w.pads}};
  // As TensorFlow, average pooling divides by the pixels inside the image only.
  if (std::string(op) == "AveragePool") attrs.set("count_include_pad", int64_t{0});
  x.value = b.op(op, {x.value}, attrs);
  x.shape = {w.out[0], w.out[1], x.shape[2]};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_max_pool(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_pool(b, in, "MaxPool");
}

LayerValue build_average_pool(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_pool(b, in, "AveragePool");
}

LayerValue build_global_pool(LayerBuilder& b, const std::vector<LayerValue>& in, bool max) {
  require_image(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t channels = x.shape[2];
  x.value = max ? b.op("ReduceMax", {x.value, b.shape_constant("axes", {2, 3})}, {{"keepdims", int64_t{1}}})
                : b.op("GlobalAveragePool", {x.value});
  x.activation.clear();
  x.pre_activation = kNoValue;
  if (b.args.boolean("keepdims")) {
    x.shape = {1, 1, channels};
    return x;
  }
  x.value = b.op("Flatten", {x.value}, {{"axis", int64_t{1}}});
  x.shape = {channels};
  x.channels_first = false;
  return x;
}

LayerValue build_global_average_pool(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_global_pool(b, in, false);
}

LayerValue build_global_max_pool(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_global_pool(b, in, true);
}

// ZeroPadding2D: zeros around the image, `padding` as one number (every side), [h, w] (top and bottom, left
// and right), or [top, bottom, left, right] (Keras's ((top, bottom), (left, right)) flattened).
LayerValue build_zero_padding2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<int64_t> p = b.four_sides("padding");
  require_image(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  // ONNX's pads: the begins of N, C, H, W, then their ends.
  x.value = b.op("Pad", {x.value, b.shape_constant("pads", {0, 0, p[0], p[2], 0, 0, p[1], p[3]})},
                 {{"mode", std::string("constant")}});
  x.shape = {x.shape[0] + p[0] + p[1], x.shape[1] + p[2] + p[3], x.shape[2]};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// UpSampling2D with nearest-neighbour interpolation: each pixel repeated as a size[0] x size[1] block, as
// Reshape [N, C, H, 1, W, 1] -> Expand -> Reshape [N, C, H s0, W s1] (what ONNX import makes of Resize).
// With interpolation = "bilinear", the bilinear resize to (H s0, W s1) that Keras's does, as Resizing's.
LayerValue build_upsampling2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<int64_t> size = b.positive_pair("size");
  const bool bilinear = b.choice("interpolation", {"nearest", "bilinear"}) == "bilinear";
  require_image(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t h = x.shape[0], w = x.shape[1], c = x.shape[2];
  if (bilinear) return resize_channels_first(b, x, h * size[0], w * size[1], false);
  ValueId split = b.op("Reshape", {x.value, b.shape_constant("split", {0, 0, h, 1, w, 1})});
  ValueId repeated = b.op("Expand", {split, b.shape_constant("repeat", {1, 1, 1, size[0], 1, size[1]})});
  x.value = b.op("Reshape", {repeated, b.shape_constant("merged", {0, 0, h * size[0], w * size[1]})});
  x.shape = {h * size[0], w * size[1], c};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// Scale or shift of a normalization: a weight, or a constant when the layer has none (ONNX requires Scale).
ValueId norm_param(LayerBuilder& b, bool present, const char* suffix, const char* init_arg,
                   const Shape& shape, double fixed) {
  const int64_t n = shape.numel();
  if (present) return b.weight(suffix, init_arg, shape, {n, n, 1, n});
  Tensor t(DType::f32, shape);
  for (int64_t i = 0; i < n; ++i) t.set_f64(i, fixed);
  return b.constant(std::string(suffix) + "_fixed", std::move(t));
}

void check_epsilon_momentum(LayerBuilder& b, bool has_momentum) {
  if (!(b.args.number("epsilon") > 0))
    b.fail("epsilon", fmt::format("epsilon must be positive, got {}", b.args.number("epsilon")));
  if (has_momentum) {
    double m = b.args.number("momentum");
    if (!(m >= 0 && m <= 1)) b.fail("momentum", fmt::format("momentum must be in [0, 1], got {}", m));
  }
}

LayerValue build_batch_norm(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int rank = static_cast<int>(in[0].shape.size());
  const int64_t axis = b.args.integer("axis");
  if (axis != -1 && axis != rank)
    b.fail("axis",
           fmt::format("axis = {} is not supported: the channel axis of {} (axis = -1) is the only one", axis,
                       keras_shape(in[0].shape)),
           "images are channels-last in the spec; leave axis at its default, -1");
  check_epsilon_momentum(b, true);
  LayerValue x = in[0];
  const int64_t channels = x.shape.back();
  const Shape cshape{channels};
  ValueId gamma = norm_param(b, b.args.boolean("scale"), "gamma", "gamma_initializer", cshape, 1.0);
  ValueId beta = norm_param(b, b.args.boolean("center"), "beta", "beta_initializer", cshape, 0.0);
  const WeightFans fans{channels, channels, 1, channels};
  ValueId mean = b.state("moving_mean", b.initial(b.initializer("moving_mean_initializer"), cshape, fans,
                                                  b.seed("moving_mean")));
  ValueId var = b.state("moving_variance", b.initial(b.initializer("moving_variance_initializer"), cshape,
                                                     fans, b.seed("moving_variance")));
  // A frozen BatchNormalization (trainable = false) runs in inference mode, as in Keras.
  const bool training = b.options.training && b.trainable();
  const bool synchronized = b.args.boolean("synchronized") || b.options.sync_batch_norm;
  // Under a Keras mask (a sequence from Embedding mask_zero or Masking), training takes the moments of the
  // steps that count only, as Keras's masked moments do: each row of [N * steps, C] weighs its mask. The
  // normalization applies to every step, and the mask goes on.
  const bool masked = training && x.mask != kNoValue && rank == 2 && !x.channels_first;
  // ONNX normalizes axis 1. NCHW images and [N, C] features have their channels there; anything else with the
  // channels last is viewed as [N * ..., C], which is the same normalization at no cost.
  const bool direct = !masked && (x.channels_first || rank == 1);
  ValueId v = direct ? x.value : b.op("Reshape", {x.value, b.shape_constant("rows_shape", {-1, channels})});
  if (masked) {
    ops::BatchNormInputs bi;
    bi.name = b.graph.unique_name(b.name() + "/BatchNormalization");
    bi.x = v;
    bi.weights = b.op("Reshape", {x.mask, b.shape_constant("mask_rows", {-1, 1})});
    bi.scale = gamma;
    bi.bias = beta;
    bi.running_mean = mean;
    bi.running_var = var;
    bi.epsilon = b.args.number("epsilon");
    bi.momentum = b.args.number("momentum");
    // Synchronized, the weighted sums are averaged across replicas by ReplicaMean (the identity on one
    // device).
    bi.across_replicas = synchronized;
    const ops::BatchNormGraph made = ops::batch_norm_graph(b.graph, bi);
    ++b.masked_norms;
    if (synchronized) ++b.synchronized_masked_norms;
    b.graph.bind_update(made.running_mean, mean);
    b.graph.bind_update(made.running_var, var);
    v = made.y;
  } else {
    Attributes attrs{{"epsilon", static_cast<float>(b.args.number("epsilon"))},
                     {"momentum", static_cast<float>(b.args.number("momentum"))},
                     {"training_mode", int64_t{training ? 1 : 0}}};
    NodeId n = b.node("BatchNormalization", {v, gamma, beta, mean, var}, attrs, training ? 3 : 1);
    v = b.graph.node(n).outputs[0];
    if (training) {
      b.graph.bind_update(b.graph.node(n).outputs[1], mean);
      b.graph.bind_update(b.graph.node(n).outputs[2], var);
      // synchronized: a data-parallel run rewrites the node to use the global batch's statistics.
      if (synchronized) b.synchronized_norms.push_back(n);
    }
  }
  if (!direct) {
    std::vector<int64_t> back = {-1};
    back.insert(back.end(), x.shape.begin(), x.shape.end());
    v = b.op("Reshape", {v, b.shape_constant("shape", back)});
  }
  x.value = v;
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_layer_norm(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int rank = static_cast<int>(in[0].shape.size());
  std::vector<int64_t> axes = b.args.ints("axis");
  // Keras counts the batch as axis 0; these are per-sample axes from 0.
  std::vector<int64_t> per_sample;
  for (int64_t a : axes) {
    int64_t k = a < 0 ? a + rank : a - 1;
    if (k < 0 || k >= rank)
      b.fail("axis",
             fmt::format("axis {} is out of range for inputs of shape {}", a, keras_shape(in[0].shape)),
             a == 0 ? "axis 0 is the batch" : "");
    per_sample.push_back(k);
  }
  std::sort(per_sample.begin(), per_sample.end());
  per_sample.erase(std::unique(per_sample.begin(), per_sample.end()), per_sample.end());
  check_epsilon_momentum(b, false);
  LayerValue x = b.to_channels_last(in[0]);
  // ONNX normalizes a trailing block of axes: other axes are moved to the front (each keeping its order) and
  // back after, so that gamma and beta have Keras's shape, the normalized axes' sizes in order.
  const int64_t kept = rank - static_cast<int64_t>(per_sample.size());
  std::vector<int64_t> perm = {0}, pshape;
  for (int64_t k = 0; k < rank; ++k)
    if (!std::binary_search(per_sample.begin(), per_sample.end(), k)) perm.push_back(k + 1);
  for (int64_t k : per_sample) {
    perm.push_back(k + 1);
    pshape.push_back(x.shape[static_cast<size_t>(k)]);
  }
  bool moved = false;
  for (size_t i = 0; i < perm.size(); ++i) moved = moved || perm[i] != static_cast<int64_t>(i);
  ValueId gamma = norm_param(b, b.args.boolean("scale"), "gamma", "gamma_initializer", Shape(pshape), 1.0);
  ValueId beta = b.args.boolean("center")
                     ? norm_param(b, true, "beta", "beta_initializer", Shape(pshape), 0.0)
                     : kNoValue;
  ValueId v = moved ? b.op("Transpose", {x.value}, {{"perm", perm}}) : x.value;
  v = b.op("LayerNormalization", {v, gamma, beta},
           {{"axis", kept + 1}, {"epsilon", static_cast<float>(b.args.number("epsilon"))}});
  if (moved) {
    std::vector<int64_t> back(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) back[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
    v = b.op("Transpose", {v}, {{"perm", back}});
  }
  x.value = v;
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// GroupNormalization: the channels (the last Keras axis) in `groups` groups, each normalized per sample over
// its channels and every position (mean and population variance), then scaled and shifted per channel.
LayerValue build_group_norm(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t groups = b.positive("groups");
  const int rank = static_cast<int>(in[0].shape.size());
  if (const int64_t axis = b.args.integer("axis"); axis != -1 && axis != rank)
    b.fail("axis",
           fmt::format("axis = {} is not supported: the groups are of the last axis (the channels)", axis),
           "leave axis out (-1)");
  check_epsilon_momentum(b, false);
  LayerValue x = in[0];
  x.activation.clear();
  x.pre_activation = kNoValue;
  const int64_t channels = x.shape.back();
  if (channels % groups != 0)
    b.fail("groups", fmt::format("{} channels do not split into {} groups", channels, groups),
           "use a number of groups that divides the channels");
  int64_t positions = 1;
  for (size_t d = 0; d + 1 < x.shape.size(); ++d) positions *= x.shape[d];
  const int64_t per = channels / groups;
  // Grouped views: channels-first [N, C, ...] -> [N, G, per * positions]; channels-last [N, ..., C] ->
  // [N, positions, G, per].
  const bool first = x.channels_first;
  ValueId v =
      b.op("Reshape",
           {x.value, b.shape_constant("grouped", first ? std::vector<int64_t>{0, groups, per * positions}
                                                       : std::vector<int64_t>{0, positions, groups, per})});
  ValueId axes = b.shape_constant("group_axes", first ? std::vector<int64_t>{2} : std::vector<int64_t>{1, 3});
  const Attributes keep{{"keepdims", int64_t{1}}};
  ValueId centred = b.op("Sub", {v, b.op("ReduceMean", {v, axes}, keep)});
  ValueId var = b.op("ReduceMean", {b.op("Mul", {centred, centred}), axes}, keep);
  ValueId eps = b.constant("epsilon", Tensor::scalar<float>(static_cast<float>(b.args.number("epsilon"))));
  ValueId y = b.op("Div", {centred, b.op("Sqrt", {b.op("Add", {var, eps})})});
  std::vector<int64_t> ir = {0};  // the input's IR shape, batch left as is
  if (first) {
    ir.push_back(channels);
    ir.insert(ir.end(), x.shape.begin(), x.shape.end() - 1);
  } else {
    ir.insert(ir.end(), x.shape.begin(), x.shape.end());
  }
  y = b.op("Reshape", {y, b.shape_constant("ungrouped", ir)});
  // Per-channel scale and shift, broadcast along the channel axis of the layout.
  Shape pshape{channels};
  std::vector<int64_t> along = {channels};
  if (first) along.insert(along.end(), static_cast<size_t>(rank - 1), 1);
  auto per_channel = [&](ValueId p, const char* name) {
    return first ? b.op("Reshape", {p, b.shape_constant(name, along)}) : p;
  };
  if (b.args.boolean("scale"))
    y = b.op("Mul",
             {y, per_channel(norm_param(b, true, "gamma", "gamma_initializer", pshape, 1.0), "gamma_shape")});
  if (b.args.boolean("center"))
    y = b.op("Add",
             {y, per_channel(norm_param(b, true, "beta", "beta_initializer", pshape, 0.0), "beta_shape")});
  x.value = y;
  return x;
}

// UnitNormalization: each sample's last axis scaled to unit L2 norm, x / sqrt(max(Σx², 1e-12)).
LayerValue build_unit_norm(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int rank = static_cast<int>(in[0].shape.size());
  const std::vector<int64_t> axes = b.args.ints("axis");
  if (axes.size() != 1 || (axes[0] != -1 && axes[0] != rank))
    b.fail("axis", "only the last axis is supported", "leave axis out (-1)");
  LayerValue x = b.to_channels_last(in[0]);
  x.activation.clear();
  x.pre_activation = kNoValue;
  ValueId squares = b.op("ReduceSum", {b.op("Mul", {x.value, x.value}), b.shape_constant("last", {rank})},
                         {{"keepdims", int64_t{1}}});
  ValueId norm = b.op("Sqrt", {b.op("Max", {squares, b.constant("epsilon", Tensor::scalar<float>(1e-12f))})});
  x.value = b.op("Div", {x.value, norm});
  return x;
}

std::vector<ArgDecl> pool_args() {
  return {{"pool_size", ArgKind::int_or_pair, int64_t{2}},
          {"strides", ArgKind::int_or_pair, std::nullopt, true},
          {"padding", ArgKind::string, std::string("valid")}};
}

}  // namespace

DeconvAxis deconv_axis(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, bool same,
                       std::optional<int64_t> output_padding) {
  DeconvAxis d;
  const int64_t span = dilation * (kernel - 1) + 1, reach = stride * (in - 1) + span;
  if (output_padding)
    d.out = reach - 2 * (same ? span / 2 : 0) + *output_padding;
  else
    d.out = same ? in * stride : in * stride + std::max<int64_t>(span - stride, 0);
  const int64_t total = reach - d.out;
  if (total >= 0) {
    d.pad_begin = total / 2;
    d.pad_end = total - total / 2;
  } else {
    d.extra = -total;
  }
  return d;
}

std::vector<ArgDecl> conv_args(std::vector<ArgDecl> head, const std::string& kernel_init) {
  head.push_back({"activation", ArgKind::string, std::string("None")});
  head.push_back({"use_bias", ArgKind::boolean, true});
  head.push_back({kernel_init, ArgKind::string, std::string("glorot_uniform")});
  head.push_back({"bias_initializer", ArgKind::string, std::string("zeros")});
  return head;
}

void add_conv_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  defs.push_back({"Conv2D", "conv2d",
                  conv_args({{"filters", ArgKind::integer, std::nullopt},
                             {"kernel_size", ArgKind::int_or_pair, std::nullopt},
                             {"strides", ArgKind::int_or_pair, int64_t{1}},
                             {"padding", ArgKind::string, S("valid")},
                             {"dilation_rate", ArgKind::int_or_pair, int64_t{1}},
                             {"groups", ArgKind::integer, int64_t{1}}}),
                  1, 1, false, build_conv2d});
  std::vector<ArgDecl> depthwise = conv_args({{"kernel_size", ArgKind::int_or_pair, std::nullopt},
                                              {"strides", ArgKind::int_or_pair, int64_t{1}},
                                              {"padding", ArgKind::string, S("valid")},
                                              {"depth_multiplier", ArgKind::integer, int64_t{1}},
                                              {"dilation_rate", ArgKind::int_or_pair, int64_t{1}}},
                                             "depthwise_initializer");
  defs.push_back({"DepthwiseConv2D", "depthwise_conv2d", depthwise, 1, 1, false, build_depthwise_conv2d});
  std::vector<ArgDecl> separable = depthwise;
  separable.insert(separable.begin(), {"filters", ArgKind::integer, std::nullopt});
  separable.push_back({"pointwise_initializer", ArgKind::string, S("glorot_uniform")});
  defs.push_back({"SeparableConv2D", "separable_conv2d", separable, 1, 1, false, build_separable_conv2d});
  defs.push_back({"Conv2DTranspose", "conv2d_transpose",
                  conv_args({{"filters", ArgKind::integer, std::nullopt},
                             {"kernel_size", ArgKind::int_or_pair, std::nullopt},
                             {"strides", ArgKind::int_or_pair, int64_t{1}},
                             {"padding", ArgKind::string, S("valid")},
                             {"output_padding", ArgKind::int_or_pair, std::nullopt, true},
                             {"dilation_rate", ArgKind::int_or_pair, int64_t{1}}}),
                  1, 1, false, build_conv2d_transpose});
  defs.push_back({"MaxPooling2D", "max_pooling2d", pool_args(), 1, 1, false, build_max_pool});
  defs.push_back({"AveragePooling2D", "average_pooling2d", pool_args(), 1, 1, false, build_average_pool});
  defs.push_back({"GlobalAveragePooling2D",
                  "global_average_pooling2d",
                  {{"keepdims", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_global_average_pool});
  defs.push_back({"GlobalMaxPooling2D",
                  "global_max_pooling2d",
                  {{"keepdims", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_global_max_pool});
  defs.push_back({"ZeroPadding2D",
                  "zero_padding2d",
                  {{"padding", ArgKind::int_or_ints, int64_t{1}}},
                  1,
                  1,
                  false,
                  build_zero_padding2d});
  defs.push_back(
      {"UpSampling2D",
       "up_sampling2d",
       {{"size", ArgKind::int_or_pair, int64_t{2}}, {"interpolation", ArgKind::string, S("nearest")}},
       1,
       1,
       false,
       build_upsampling2d});
  defs.push_back({"BatchNormalization",
                  "batch_normalization",
                  {{"axis", ArgKind::integer, int64_t{-1}},
                   {"momentum", ArgKind::number, 0.99},
                   {"epsilon", ArgKind::number, 1e-3},
                   {"center", ArgKind::boolean, true},
                   {"scale", ArgKind::boolean, true},
                   {"beta_initializer", ArgKind::string, S("zeros")},
                   {"gamma_initializer", ArgKind::string, S("ones")},
                   {"moving_mean_initializer", ArgKind::string, S("zeros")},
                   {"moving_variance_initializer", ArgKind::string, S("ones")},
                   {"synchronized", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_batch_norm});
  // LayerNormalization's and GroupNormalization's arguments after their first.
  const std::vector<ArgDecl> norm_tail = {{"epsilon", ArgKind::number, 1e-3},
                                          {"center", ArgKind::boolean, true},
                                          {"scale", ArgKind::boolean, true},
                                          {"beta_initializer", ArgKind::string, S("zeros")},
                                          {"gamma_initializer", ArgKind::string, S("ones")}};
  std::vector<ArgDecl> layer_norm = {{"axis", ArgKind::int_or_ints, int64_t{-1}}};
  layer_norm.insert(layer_norm.end(), norm_tail.begin(), norm_tail.end());
  defs.push_back({"LayerNormalization", "layer_normalization", layer_norm, 1, 1, false, build_layer_norm});
  std::vector<ArgDecl> group_norm = {{"groups", ArgKind::integer, int64_t{32}},
                                     {"axis", ArgKind::integer, int64_t{-1}}};
  group_norm.insert(group_norm.end(), norm_tail.begin(), norm_tail.end());
  defs.push_back({"GroupNormalization", "group_normalization", group_norm, 1, 1, false, build_group_norm});
  defs.push_back({"UnitNormalization",
                  "unit_normalization",
                  {{"axis", ArgKind::int_or_ints, int64_t{-1}}},
                  1,
                  1,
                  false,
                  build_unit_norm});
  keep_masks(defs, {"BatchNormalization", "LayerNormalization", "UnitNormalization"});
}

}  // namespace trainer::models
