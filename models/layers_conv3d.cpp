// Volume layers, on (depth, height, width, channels) samples: Conv3D, Conv3DTranspose, MaxPooling3D,
// AveragePooling3D, GlobalAveragePooling3D, GlobalMaxPooling3D, ZeroPadding3D, Cropping3D and UpSampling3D.
// Volumes run as NCDHW; the convolution and the pools are written with the 2-D ops
// (engine/ops/conv_volume.h).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "engine/ops/conv_volume.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

void require_volume(LayerBuilder& b, const LayerValue& x) {
  if (x.shape.size() != 4)
    b.fail_layer(
        fmt::format("needs a volume input (None, depth, height, width, channels), got {} from '{}'",
                    keras_shape(x.shape), x.from),
        "declare [model] input = [depth, height, width, channels], or put a Reshape layer before it");
}

std::vector<int64_t> positive_triple(LayerBuilder& b, const std::string& arg) {
  std::vector<int64_t> v = b.args.triple(arg);
  for (int64_t x : v)
    if (x < 1 || x > largest_value_of(arg))
      b.fail(arg, fmt::format("{} must hold positive integers of at most {}, got [{}]", arg,
                              largest_value_of(arg), fmt::join(v, ", ")));
  return v;
}

// The window of a Keras volume layer: "same" pads so that out = ceil(in / stride), the odd element at the end
// (as TensorFlow); "valid" fails at `arg` when the window is larger than the input.
ops::WindowGeometry keras_window(LayerBuilder& b, const LayerValue& x, const std::vector<int64_t>& kernel,
                                 const std::vector<int64_t>& strides, const std::vector<int64_t>& dilation,
                                 bool same, const std::string& arg) {
  ops::WindowGeometry g;
  g.spatial = 3;
  g.in.assign(x.shape.begin(), x.shape.begin() + 3);
  g.kernel = kernel;
  g.stride = strides;
  g.dilation = dilation;
  g.pad_begin.assign(3, 0);
  g.pad_end.assign(3, 0);
  for (size_t i = 0; i < 3; ++i) {
    const int64_t in = g.in[i], span = g.span(static_cast<int>(i));
    if (same) {
      g.out.push_back((in + strides[i] - 1) / strides[i]);
      const int64_t total = std::max<int64_t>((g.out[i] - 1) * strides[i] + span - in, 0);
      g.pad_begin[i] = total / 2;
      g.pad_end[i] = total - total / 2;
    } else {
      if (in < span)
        b.fail(arg,
               fmt::format("{} [{}] spans {} elements along axis {} of its input {} from '{}'", arg,
                           fmt::join(kernel, ", "), span, i + 1, keras_shape(x.shape), x.from),
               fmt::format("use a smaller {}, padding = \"same\", or fewer pooling layers before it", arg));
      g.out.push_back((in - span) / strides[i] + 1);
    }
  }
  return g;
}

LayerValue build_conv3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const std::vector<int64_t> kernel = positive_triple(b, "kernel_size");
  const std::vector<int64_t> strides = positive_triple(b, "strides");
  const std::vector<int64_t> dilation = positive_triple(b, "dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const int64_t groups = b.positive("groups");
  const std::string act = b.activation_name();
  require_volume(b, in[0]);
  const int64_t channels = in[0].shape[3];
  if (channels % groups != 0 || filters % groups != 0)
    b.fail("groups", fmt::format("groups = {} must divide the input channels ({}) and filters ({})", groups,
                                 channels, filters));
  const ops::WindowGeometry g = keras_window(b, in[0], kernel, strides, dilation, same, "kernel_size");
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t per_group = channels / groups, volume = kernel[0] * kernel[1] * kernel[2];
  // OIDHW, ONNX's layout (Keras keeps DHWIO); fans as Keras computes them.
  const Shape ws{filters, per_group, kernel[0], kernel[1], kernel[2]};
  const ValueId weight =
      b.weight("kernel", "kernel_initializer", ws,
               {volume * per_group, volume * filters, filters, per_group * volume, kernel_keras_axes(5)});
  const ValueId bias = b.args.boolean("use_bias") ? b.weight("bias", "bias_initializer", Shape{filters},
                                                             {filters, filters, 1, filters})
                                                  : kNoValue;
  x.value = ops::conv3d_as_2d(volume_emitter(b), x.value, b.graph.value(x.value).shape, weight, ws, bias, g,
                              groups);
  x.shape = {g.out[0], g.out[1], g.out[2], filters};
  b.info.flops_per_sample = 2 * g.out[0] * g.out[1] * g.out[2] * filters * per_group * volume;
  return b.activate(x, act);
}

// Conv3DTranspose: ONNX's ConvTranspose with Keras's output sizes and TensorFlow's crop (deconv_axis),
// written with the 2-D op per depth tap.
LayerValue build_conv3d_transpose(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t filters = b.positive("filters");
  const std::vector<int64_t> kernel = positive_triple(b, "kernel_size");
  const std::vector<int64_t> strides = positive_triple(b, "strides");
  const std::vector<int64_t> dilation = positive_triple(b, "dilation_rate");
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  const std::string act = b.activation_name();
  const bool given_extra = b.args.has("output_padding");
  std::vector<int64_t> extra = given_extra ? b.args.triple("output_padding") : std::vector<int64_t>{0, 0, 0};
  require_volume(b, in[0]);
  const int64_t channels = in[0].shape[3];
  std::vector<int64_t> out(3), pads(6, 0);
  for (size_t i = 0; i < 3; ++i) {
    if (given_extra && (extra[i] < 0 || extra[i] >= strides[i]))
      b.fail("output_padding",
             fmt::format("output_padding [{}] must be at least 0 and smaller than strides [{}]",
                         fmt::join(extra, ", "), fmt::join(strides, ", ")));
    const DeconvAxis d = deconv_axis(in[0].shape[i], kernel[i], strides[i], dilation[i], same,
                                     given_extra ? std::optional<int64_t>(extra[i]) : std::nullopt);
    if (d.out < 1)
      b.fail("kernel_size", fmt::format("the output would have {} elements along axis {}", d.out, i + 1),
             "use a larger input, or padding = \"valid\"");
    out[i] = d.out;
    pads[i] = d.pad_begin;
    pads[i + 3] = d.pad_end;
    extra[i] = d.extra;
  }
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t volume = kernel[0] * kernel[1] * kernel[2];
  // [C_in, filters, kD, kH, kW], ONNX's layout; fans as Keras computes them.
  const Shape ws{channels, filters, kernel[0], kernel[1], kernel[2]};
  const ValueId weight =
      b.weight("kernel", "kernel_initializer", ws,
               {volume * filters, volume * channels, channels, filters * volume, kernel_keras_axes(5)});
  const ValueId bias = b.args.boolean("use_bias") ? b.weight("bias", "bias_initializer", Shape{filters},
                                                             {filters, filters, 1, filters})
                                                  : kNoValue;
  const Attributes attrs{{"kernel_shape", kernel},
                         {"strides", strides},
                         {"dilations", dilation},
                         {"pads", pads},
                         {"output_padding", extra}};
  std::string err;
  x.value = ops::conv_transpose3d_as_2d(volume_emitter(b), x.value, b.graph.value(x.value).shape, weight, ws,
                                        bias, attrs, &err);
  TRAINER_ASSERT(err.empty(), "Conv3DTranspose: {}", err);
  x.shape = {out[0], out[1], out[2], filters};
  b.info.flops_per_sample =
      2 * in[0].shape[0] * in[0].shape[1] * in[0].shape[2] * channels * filters * volume;
  return b.activate(x, act);
}

LayerValue build_pool3d(LayerBuilder& b, const std::vector<LayerValue>& in, const char* op) {
  const std::vector<int64_t> pool = positive_triple(b, "pool_size");
  const std::vector<int64_t> strides = b.args.has("strides") ? positive_triple(b, "strides") : pool;
  const bool same = b.choice("padding", {"valid", "same"}) == "same";
  require_volume(b, in[0]);
  const ops::WindowGeometry g = keras_window(b, in[0], pool, strides, {1, 1, 1}, same, "pool_size");
  LayerValue x = b.to_channels_first(in[0]);
  // As TensorFlow, average pooling divides by the elements inside the volume only.
  x.value = ops::pool3d_as_2d(volume_emitter(b), op, x.value, b.graph.value(x.value).shape, g, false, 0);
  x.shape = {g.out[0], g.out[1], g.out[2], x.shape[3]};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_max_pool3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_pool3d(b, in, "MaxPool");
}

LayerValue build_average_pool3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_pool3d(b, in, "AveragePool");
}

LayerValue build_global_pool3d(LayerBuilder& b, const std::vector<LayerValue>& in, bool max) {
  require_volume(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t channels = x.shape[3];
  x.value = b.op(max ? "ReduceMax" : "ReduceMean", {x.value, b.shape_constant("axes", {2, 3, 4})},
                 {{"keepdims", int64_t{1}}});
  x.activation.clear();
  x.pre_activation = kNoValue;
  if (b.args.boolean("keepdims")) {
    x.shape = {1, 1, 1, channels};
    return x;
  }
  x.value = b.op("Flatten", {x.value}, {{"axis", int64_t{1}}});
  x.shape = {channels};
  x.channels_first = false;
  return x;
}

LayerValue build_global_average_pool3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_global_pool3d(b, in, false);
}

LayerValue build_global_max_pool3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_global_pool3d(b, in, true);
}

// ZeroPadding3D: zeros around the volume, `padding` as one number, [d, h, w] or all six sides.
LayerValue build_zero_padding3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<int64_t> p = b.six_sides("padding");
  require_volume(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  x.value = b.op("Pad", {x.value, b.shape_constant("pads", {0, 0, p[0], p[2], p[4], 0, 0, p[1], p[3], p[5]})},
                 {{"mode", std::string("constant")}});
  x.shape = {x.shape[0] + p[0] + p[1], x.shape[1] + p[2] + p[3], x.shape[2] + p[4] + p[5], x.shape[3]};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// Cropping3D: `cropping` as one number, [d, h, w] or all six sides, cut from the volume.
LayerValue build_cropping3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<int64_t> c = b.six_sides("cropping");
  require_volume(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  std::vector<int64_t> starts, ends;
  for (size_t i = 0; i < 3; ++i) {
    const int64_t size = x.shape[i];
    if (c[2 * i] + c[2 * i + 1] >= size)
      b.fail("cropping",
             fmt::format("cropping {} + {} leaves nothing of axis {} (size {}) of {}", c[2 * i], c[2 * i + 1],
                         i + 1, size, keras_shape(x.shape)),
             "crop less than the axis holds");
    starts.push_back(c[2 * i]);
    ends.push_back(size - c[2 * i + 1]);
    x.shape[i] = size - c[2 * i] - c[2 * i + 1];
  }
  x.value = b.op("Slice", {x.value, b.shape_constant("starts", starts), b.shape_constant("ends", ends),
                           b.shape_constant("axes", {2, 3, 4})});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// UpSampling3D: each element repeated as a size[0] x size[1] x size[2] block: a Reshape that opens an axis of
// 1 after each spatial axis, an Expand of them and a Reshape that merges them back.
LayerValue build_upsampling3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<int64_t> size = positive_triple(b, "size");
  require_volume(b, in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  const int64_t d = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3];
  const ValueId split = b.op("Reshape", {x.value, b.shape_constant("split", {0, c, d, 1, h, 1, w, 1})});
  const ValueId repeated =
      b.op("Expand", {split, b.shape_constant("repeat", {1, 1, 1, size[0], 1, size[1], 1, size[2]})});
  x.value =
      b.op("Reshape", {repeated, b.shape_constant("merged", {0, c, d * size[0], h * size[1], w * size[2]})});
  x.shape = {d * size[0], h * size[1], w * size[2], c};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

std::vector<ArgDecl> pool3d_args() {
  return {{"pool_size", ArgKind::int_or_triple, int64_t{2}},
          {"strides", ArgKind::int_or_triple, std::nullopt, true},
          {"padding", ArgKind::string, std::string("valid")}};
}

}  // namespace

void add_volume_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  defs.push_back({"Conv3D", "conv3d",
                  conv_args({{"filters", ArgKind::integer, std::nullopt},
                             {"kernel_size", ArgKind::int_or_triple, std::nullopt},
                             {"strides", ArgKind::int_or_triple, int64_t{1}},
                             {"padding", ArgKind::string, S("valid")},
                             {"dilation_rate", ArgKind::int_or_triple, int64_t{1}},
                             {"groups", ArgKind::integer, int64_t{1}}}),
                  1, 1, false, build_conv3d});
  defs.push_back({"Conv3DTranspose", "conv3d_transpose",
                  conv_args({{"filters", ArgKind::integer, std::nullopt},
                             {"kernel_size", ArgKind::int_or_triple, std::nullopt},
                             {"strides", ArgKind::int_or_triple, int64_t{1}},
                             {"padding", ArgKind::string, S("valid")},
                             {"output_padding", ArgKind::int_or_triple, std::nullopt, true},
                             {"dilation_rate", ArgKind::int_or_triple, int64_t{1}}}),
                  1, 1, false, build_conv3d_transpose});
  defs.push_back({"MaxPooling3D", "max_pooling3d", pool3d_args(), 1, 1, false, build_max_pool3d});
  defs.push_back({"AveragePooling3D", "average_pooling3d", pool3d_args(), 1, 1, false, build_average_pool3d});
  defs.push_back({"GlobalAveragePooling3D",
                  "global_average_pooling3d",
                  {{"keepdims", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_global_average_pool3d});
  defs.push_back({"GlobalMaxPooling3D",
                  "global_max_pooling3d",
                  {{"keepdims", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_global_max_pool3d});
  defs.push_back({"ZeroPadding3D",
                  "zero_padding3d",
                  {{"padding", ArgKind::int_or_ints, int64_t{1}}},
                  1,
                  1,
                  false,
                  build_zero_padding3d});
  defs.push_back({"Cropping3D",
                  "cropping3d",
                  {{"cropping", ArgKind::int_or_ints, int64_t{1}}},
                  1,
                  1,
                  false,
                  build_cropping3d});
  defs.push_back({"UpSampling3D",
                  "up_sampling3d",
                  {{"size", ArgKind::int_or_triple, int64_t{2}}},
                  1,
                  1,
                  false,
                  build_upsampling3d});
}

ops::VolumeEmitter volume_emitter(LayerBuilder& b) {
  ops::VolumeEmitter e;
  e.op = [&b](const std::string& op, std::vector<ValueId> ins, Attributes a, const std::string&, bool) {
    return b.op(op, std::move(ins), std::move(a));
  };
  e.constant = [&b](Tensor t, const std::string& what) { return b.constant(what, std::move(t)); };
  return e;
}

}  // namespace trainer::models
