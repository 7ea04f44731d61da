// Core layers: Dense, Activation and the activation layers, Dropout, SpatialDropout1D/2D/3D, GaussianNoise
// and GaussianDropout, Rescaling, Flatten, Reshape, the merges (Add, Subtract, Multiply, Average, Maximum,
// Minimum, Concatenate) and Embedding.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

LayerValue build_dense(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t units = b.positive("units");
  const std::string act = b.activation_name();
  // Dense acts on the last axis; for an image that is the channels, so it needs the channels-last layout.
  LayerValue x = b.to_channels_last(in[0]);
  const int64_t features = x.shape.back();
  ValueId w =
      b.weight("kernel", "kernel_initializer", Shape{features, units}, {features, units, features, units});
  ValueId y = b.op("MatMul", {x.value, w});
  if (b.args.boolean("use_bias"))
    y = b.op("Add", {y, b.weight("bias", "bias_initializer", Shape{units}, {units, units, 1, units})});
  b.info.flops_per_sample = 2 * numel(x.shape) * units;
  x.value = y;
  x.shape.back() = units;
  return b.activate(x, act);
}

LayerValue build_activation(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return b.activate(in[0], b.activation_name());
}

// Keras's activation layers. ReLU: max(x, 0) (negative_slope x below 0), capped at max_value.
LayerValue build_relu_layer(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const double slope = b.args.number("negative_slope");
  if (b.args.number("threshold") != 0)
    b.fail("threshold", "a threshold other than 0 is not supported", "leave threshold out");
  if (slope < 0) b.fail("negative_slope", fmt::format("negative_slope must not be negative, got {}", slope));
  LayerValue x = in[0];
  x.value = slope == 0 ? b.op("Relu", {x.value})
                       : b.op("LeakyRelu", {x.value}, {{"alpha", static_cast<float>(slope)}});
  if (b.args.has("max_value")) {
    const double cap = b.args.number("max_value");
    if (cap < 0) b.fail("max_value", fmt::format("max_value must not be negative, got {}", cap));
    Tensor hi(b.graph.value(x.value).dtype, Shape{});
    hi.set_f64(0, cap);
    x.value = b.op("Clip", {x.value, kNoValue, b.constant("max_value", std::move(hi))});
  }
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_leaky_relu_layer(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = in[0];
  // alpha: Keras 2's name of negative_slope, which Keras 3 still takes.
  if (b.args.has("alpha") && b.args.has("negative_slope"))
    b.fail("alpha", "alpha and negative_slope are one argument, given twice", "keep negative_slope");
  const double slope = b.args.number(b.args.has("alpha") ? "alpha" : "negative_slope");
  x.value = b.op("LeakyRelu", {x.value}, {{"alpha", static_cast<float>(slope)}});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_elu_layer(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = in[0];
  x.value = b.op("Elu", {x.value}, {{"alpha", static_cast<float>(b.args.number("alpha"))}});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// PReLU: a learned slope per element of the sample, shared along `shared_axes` (Keras's 1-based axes), kept
// in the graph's layout of the input so it broadcasts.
LayerValue build_prelu_layer(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = in[0];
  std::vector<int64_t> keras = x.shape;
  if (b.args.has("shared_axes"))
    for (int64_t a : b.args.ints("shared_axes")) {
      if (a < 1 || a > static_cast<int64_t>(keras.size()))
        b.fail("shared_axes", fmt::format("axis {} is not an axis of the input {}", a, keras_shape(x.shape)),
               "axes count from 1, the first after the batch");
      keras[static_cast<size_t>(a - 1)] = 1;
    }
  std::vector<int64_t> dims = keras;
  if (x.channels_first) {  // (H, W, C) -> (C, H, W), (T, F) -> (F, T)
    dims = {keras.back()};
    dims.insert(dims.end(), keras.begin(), keras.end() - 1);
  }
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  ValueId alpha = b.weight("alpha", "alpha_initializer", Shape(dims), {n, n, 1, n});
  x.value = b.op("PRelu", {x.value, alpha});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_softmax_layer(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t rank = static_cast<int64_t>(in[0].shape.size());
  int64_t axis = b.args.integer("axis");
  if (axis < -rank || axis >= rank || axis == 0)
    b.fail("axis",
           fmt::format("axis {} is not a feature axis of the input {}", axis, keras_shape(in[0].shape)),
           "-1 (the last) or an axis from 1");
  if (axis < 0) axis += rank + 1;  // Keras's axes count the batch as 0
  if (axis == rank) return b.activate(in[0], "softmax");
  LayerValue x = in[0];
  x.value =
      b.op("Softmax", {x.value}, {{"axis", static_cast<int64_t>(b.ir_axis(x, static_cast<int>(axis - 1)))}});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_dropout(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const double rate = b.args.number("rate");
  if (!(rate >= 0 && rate < 1)) b.fail("rate", fmt::format("rate must be in [0, 1), got {}", rate));
  LayerValue x = in[0];
  x.activation.clear();
  x.pre_activation = kNoValue;
  // Outside training Dropout is the identity and leaves no node behind.
  if (!b.options.training || rate == 0) return x;
  Attributes attrs;
  if (b.args.has("seed")) attrs.set("seed", b.args.integer("seed"));
  ValueId ratio = b.constant("ratio", Tensor::scalar<float>(static_cast<float>(rate)));
  ValueId mode = b.constant("training_mode", Tensor::scalar<bool>(true));
  x.value = b.op("Dropout", {x.value, ratio, mode}, attrs);
  return x;
}

// AlphaDropout (for SELU networks), in training only: dropped values become SELU's negative saturation
// -alpha scale, then a x + b with Keras's a = ((1 - rate)(1 + rate alpha_p^2))^-1/2 and b = -a alpha_p rate
// keep the mean and variance. The keep mask is a Dropout of ones (Philox, as Dropout's), times 1 - rate.
LayerValue build_alpha_dropout(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const double rate = b.args.number("rate");
  if (!(rate >= 0 && rate < 1)) b.fail("rate", fmt::format("rate must be in [0, 1), got {}", rate));
  LayerValue x = in[0];
  x.activation.clear();
  x.pre_activation = kNoValue;
  const Shape s = b.graph.value(x.value).shape;
  const ValueId mask = b.dropout_mask("mask", s.dims(), rate, "seed");
  if (mask == kNoValue) return x;
  const double alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946;
  const double a = 1.0 / std::sqrt((1 - rate) * (1 + rate * alpha_p * alpha_p)), shift = -a * alpha_p * rate;
  auto c = [&](const char* what, double v) {
    return b.constant(what, Tensor::scalar<float>(static_cast<float>(v)));
  };
  const ValueId kept = b.op("Mul", {mask, c("keep_scale", 1 - rate)});  // 1 kept, 0 dropped
  const ValueId dropped = b.op("Mul", {b.op("Sub", {c("one", 1), kept}), c("alpha_p", alpha_p)});
  x.value = b.op(
      "Add", {b.op("Mul", {b.op("Add", {b.op("Mul", {x.value, kept}), dropped}), c("a", a)}), c("b", shift)});
  return x;
}

// GaussianNoise (x + N(0, stddev^2)) and GaussianDropout (x times N(1, rate / (1 - rate))), in training only:
// a RandomNormalLike of x's shape, drawn anew each step from Philox as Dropout's masks are.
LayerValue gaussian(LayerBuilder& b, const std::vector<LayerValue>& in, bool dropout) {
  const char* arg = dropout ? "rate" : "stddev";
  const double v = b.args.number(arg);
  if (dropout && !(v >= 0 && v < 1)) b.fail(arg, fmt::format("rate must be in [0, 1), got {}", v));
  if (!dropout && v < 0) b.fail(arg, fmt::format("stddev must not be negative, got {}", v));
  LayerValue x = in[0];
  x.activation.clear();
  x.pre_activation = kNoValue;
  if (!b.options.training || v == 0) return x;
  Attributes attrs{{"mean", dropout ? 1.0f : 0.0f},
                   {"scale", static_cast<float>(dropout ? std::sqrt(v / (1 - v)) : v)}};
  if (b.args.has("seed")) attrs.set("seed", static_cast<float>(b.args.integer("seed")));
  ValueId noise = b.op("RandomNormalLike", {x.value}, attrs);
  x.value = b.op(dropout ? "Mul" : "Add", {x.value, noise});
  return x;
}
LayerValue build_gaussian_noise(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return gaussian(b, in, false);
}
LayerValue build_gaussian_dropout(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return gaussian(b, in, true);
}

// Flatten: Keras's order is (H, W, C). A channels-first value (after convolutions) is flattened as it lies,
// (C, H, W), and marked so (LayerValue::flattened_channels_first): the Dense layer that usually comes next
// only meets its features with other kernel rows, and build_model moves them into Keras's order for any
// other consumer. Where the move is a Reshape (one channel, or one pixel), it is done here.
LayerValue build_flatten(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = in[0];
  const bool moves =
      x.channels_first && x.shape.size() >= 2 && x.shape.back() > 1 && numel(x.shape) / x.shape.back() > 1;
  LayerValue y;
  y.from = x.from;
  y.shape = {numel(x.shape)};
  if (moves)
    y.flattened_channels_first = x.shape;
  else
    x = b.to_channels_last(x);
  y.value = x.shape.size() == 1 ? x.value : b.op("Flatten", {x.value}, {{"axis", int64_t{1}}});
  return y;
}

LayerValue build_reshape(LayerBuilder& b, const std::vector<LayerValue>& in) {
  std::vector<int64_t> target = b.args.ints("target_shape");
  const int64_t total = numel(in[0].shape);
  int64_t known = 1, unknown_at = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == -1 && unknown_at < 0) {
      unknown_at = static_cast<int64_t>(i);
    } else if (target[i] < 1) {
      b.fail("target_shape", fmt::format("target_shape [{}] must hold positive sizes and at most one -1",
                                         fmt::join(target, ", ")));
    } else {
      known *= target[i];
    }
  }
  if (unknown_at >= 0 && total % known == 0) target[static_cast<size_t>(unknown_at)] = total / known;
  if (numel(target) != total || (unknown_at >= 0 && total % known != 0))
    b.fail("target_shape",
           fmt::format("cannot reshape {} ({} values per sample) to {}", keras_shape(in[0].shape), total,
                       keras_shape(b.args.ints("target_shape"))),
           "the product of target_shape must equal the number of values per sample");
  // Keras reshapes in row-major channels-last order.
  return b.reshape(b.to_channels_last(in[0]), target);
}

// Add and Concatenate put every input into the first one's layout.
std::vector<LayerValue> same_layout(LayerBuilder& b, const std::vector<LayerValue>& in) {
  std::vector<LayerValue> out;
  for (const LayerValue& x : in)
    out.push_back(in[0].channels_first ? b.to_channels_first(x) : b.to_channels_last(x));
  return out;
}

// The mask of a merge, as Keras combines them: the product of the inputs' masks (a step counts where every
// masked input counts it); kNoValue when none has one.
ValueId merged_mask(LayerBuilder& b, const std::vector<LayerValue>& in) {
  ValueId m = kNoValue;
  for (const LayerValue& x : in)
    if (x.mask != kNoValue) m = m == kNoValue ? x.mask : b.op("Mul", {m, x.mask});
  return m;
}

// An elementwise merge: `op` folds the inputs left to right (Average adds, then scales). As Keras's, inputs
// broadcast where a dimension is 1 (a squeeze-and-excitation block multiplies (None, H, W, C) by
// (None, 1, 1, C)), and an input of a lower rank takes 1s after the batch axis first, its dimensions aligned
// with the others' last ones ((None, F) is added to every step of (None, T, F)).
LayerValue merge(LayerBuilder& b, const std::vector<LayerValue>& in, const std::string& op) {
  size_t rank = 0;
  for (const LayerValue& x : in) rank = std::max(rank, x.shape.size());
  std::vector<int64_t> shape(rank, 1);
  for (const LayerValue& x : in) {
    const size_t lead = rank - x.shape.size();
    bool fits = true;
    for (size_t d = 0; fits && d < x.shape.size(); ++d)
      fits = x.shape[d] == shape[lead + d] || x.shape[d] == 1 || shape[lead + d] == 1;
    if (!fits)
      b.fail_layer(
          fmt::format("inputs must have one shape, or shapes that broadcast (dimensions of 1, aligned at the "
                      "last axis); '{}' gives {} and '{}' gives {}",
                      in[0].from, keras_shape(in[0].shape), x.from, keras_shape(x.shape)));
    for (size_t d = 0; d < x.shape.size(); ++d) shape[lead + d] = std::max(shape[lead + d], x.shape[d]);
  }
  std::vector<LayerValue> ranked = in;
  for (LayerValue& x : ranked) {
    if (x.shape.size() == rank) continue;
    std::vector<int64_t> expanded(rank - x.shape.size(), 1);
    expanded.insert(expanded.end(), x.shape.begin(), x.shape.end());
    LayerValue y = b.reshape(b.to_channels_last(x), expanded);
    y.mask = kNoValue;  // its steps, if it had any, are not the merge's
    x = y;
  }
  std::vector<LayerValue> xs = same_layout(b, ranked);
  LayerValue y = xs[0];
  y.shape = shape;
  for (size_t i = 1; i < xs.size(); ++i) y.value = b.op(op == "Average" ? "Add" : op, {y.value, xs[i].value});
  if (op == "Average")
    y.value = b.op("Mul", {y.value, b.constant("reciprocal",
                                               Tensor::scalar<float>(1.0f / static_cast<float>(xs.size())))});
  y.activation.clear();
  y.pre_activation = kNoValue;
  y.mask = merged_mask(b, ranked);
  return y;
}

// Dot: the batched dot product of two inputs along `axes` (one per input; an int for both; Keras counts the
// batch as axis 0), of vectors ([N, F] -> [N, 1]) or sequences ([N, T1, F]·[N, T2, F] along the features
// -> [N, T1, T2]; along the steps -> [N, F1, F2]); `normalize` takes the cosine instead (each input
// L2-normalized along its axis first).
LayerValue build_dot(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<int64_t> axes = b.args.pair("axes");
  const bool normalize = b.args.boolean("normalize");
  std::vector<LayerValue> xs = {b.to_channels_last(in[0]), b.to_channels_last(in[1])};
  const int rank = static_cast<int>(xs[0].shape.size());
  if (rank != static_cast<int>(xs[1].shape.size()) || rank < 1 || rank > 2)
    b.fail_layer(fmt::format("takes two vectors or two sequences, got {} from '{}' and {} from '{}'",
                             keras_shape(xs[0].shape), xs[0].from, keras_shape(xs[1].shape), xs[1].from));
  int k[2];
  for (int i = 0; i < 2; ++i) {
    const int64_t a = axes[static_cast<size_t>(i)] < 0 ? axes[static_cast<size_t>(i)] + rank + 1
                                                       : axes[static_cast<size_t>(i)];
    if (a < 1 || a > rank)
      b.fail("axes",
             fmt::format("axis {} is out of range for {}", axes[static_cast<size_t>(i)],
                         keras_shape(xs[i].shape)),
             a == 0 ? "axis 0 is the batch" : "");
    k[i] = static_cast<int>(a - 1);
  }
  if (xs[0].shape[k[0]] != xs[1].shape[k[1]])
    b.fail("axes",
           fmt::format("the axes must have one length; {} has {} and {} has {}", keras_shape(xs[0].shape),
                       xs[0].shape[k[0]], keras_shape(xs[1].shape), xs[1].shape[k[1]]));
  if (normalize)
    for (int i = 0; i < 2; ++i) {
      ValueId axis = b.shape_constant(fmt::format("norm{}/axis", i), {k[i] + 1});
      ValueId squares =
          b.op("ReduceSum", {b.op("Mul", {xs[i].value, xs[i].value}), axis}, {{"keepdims", int64_t{1}}});
      ValueId norm = b.op("Sqrt", {b.op("Max", {squares, b.constant(fmt::format("norm{}/epsilon", i),
                                                                    Tensor::scalar<float>(1e-12f))})});
      xs[i].value = b.op("Div", {xs[i].value, norm});
    }
  LayerValue y;
  y.from = xs[0].from;
  if (rank == 1) {
    y.value = b.op("ReduceSum", {b.op("Mul", {xs[0].value, xs[1].value}), b.shape_constant("features", {1})},
                   {{"keepdims", int64_t{1}}});
    y.shape = {1};
    b.info.flops_per_sample = 2 * xs[0].shape[0];
    return y;
  }
  b.info.flops_per_sample = 2 * xs[0].shape[1 - k[0]] * xs[0].shape[k[0]] * xs[1].shape[1 - k[1]];
  const std::vector<int64_t> swap = {0, 2, 1};
  // [N, a, k] · [N, k, c]: the first input's contracted axis last, the second's first.
  ValueId a = k[0] == 1 ? xs[0].value : b.op("Transpose", {xs[0].value}, {{"perm", swap}});
  ValueId c = k[1] == 0 ? xs[1].value : b.op("Transpose", {xs[1].value}, {{"perm", swap}});
  y.value = b.op("MatMul", {a, c});
  y.shape = {xs[0].shape[1 - k[0]], xs[1].shape[1 - k[1]]};
  return y;
}

LayerValue build_add(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return merge(b, in, "Add");
}
LayerValue build_subtract(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return merge(b, in, "Sub");
}
LayerValue build_multiply(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return merge(b, in, "Mul");
}
LayerValue build_average(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return merge(b, in, "Average");
}
LayerValue build_maximum(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return merge(b, in, "Max");
}
LayerValue build_minimum(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return merge(b, in, "Min");
}

// Rescaling: x * scale + offset (Keras's preprocessing layer, often Rescaling(1/255) on images).
LayerValue build_rescaling(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = in[0];
  x.value =
      b.op("Mul",
           {x.value, b.constant("scale", Tensor::scalar<float>(static_cast<float>(b.args.number("scale"))))});
  if (const double offset = b.args.number("offset"); offset != 0)
    x.value = b.op("Add", {x.value, b.constant("offset", Tensor::scalar<float>(static_cast<float>(offset)))});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// Normalization: (x - mean) / max(sqrt(variance), 1e-7) per feature along `axis` (Keras's default -1, the
// features or channels), or the inverse with invert. mean and variance are given, or, for a layer on the
// model's input, computed from the training data by trainer fit (Keras's adapt) and written into the spec.
// Both are non-trainable weights, as in Keras.
LayerValue build_normalization(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = in[0];
  const int rank = static_cast<int>(x.shape.size());
  int64_t axis = b.args.integer("axis");
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank)
    b.fail(
        "axis",
        fmt::format("axis {} is not an axis of the input {}", b.args.integer("axis"), keras_shape(x.shape)),
        "-1 (the default) normalizes each feature of the last axis");
  if (b.args.has("mean") != b.args.has("variance"))
    b.fail(b.args.has("mean") ? "mean" : "variance", "mean and variance go together",
           "give both, or neither for trainer fit to compute them from the training data");
  const int64_t features = x.shape[static_cast<size_t>(axis)];
  // Without them (a spec before trainer fit's adapt, as check and summary read it): 0 and 1, which leave the
  // data as it is.
  const bool given = b.args.has("mean");
  std::vector<double> mean = given ? b.args.numbers("mean") : std::vector<double>{0.0};
  std::vector<double> variance = given ? b.args.numbers("variance") : std::vector<double>{1.0};
  for (auto [arg, v] : {std::pair{"mean", &mean}, std::pair{"variance", &variance}}) {
    if (v->size() == 1) v->assign(static_cast<size_t>(features), v->front());
    if (static_cast<int64_t>(v->size()) != features)
      b.fail(arg,
             fmt::format("{} has {} values for the {} features of axis {} of {}", arg, v->size(), features,
                         axis + 1, keras_shape(x.shape)),
             "give one value, or one per feature");
  }
  for (double v : variance)
    if (!(v >= 0)) b.fail("variance", fmt::format("variance must not be negative, got {}", v));
  std::vector<int64_t> dims(static_cast<size_t>(rank) + 1, 1);
  dims[static_cast<size_t>(b.ir_axis(x, static_cast<int>(axis)))] = features;
  Tensor m(DType::f32, Shape(dims)), var(DType::f32, Shape(dims));
  for (int64_t i = 0; i < features; ++i) {
    m.set_f64(i, mean[static_cast<size_t>(i)]);
    var.set_f64(i, variance[static_cast<size_t>(i)]);
  }
  const ValueId mv = b.state("mean", std::move(m)), vv = b.state("variance", std::move(var));
  const ValueId sd = b.op("Max", {b.op("Sqrt", {vv}), b.constant("epsilon", Tensor::scalar<float>(1e-7f))});
  x.value = b.args.boolean("invert") ? b.op("Add", {b.op("Mul", {x.value, sd}), mv})
                                     : b.op("Div", {b.op("Sub", {x.value, mv}), sd});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// SpatialDropout1D, 2D and 3D: Dropout of whole feature maps, one mask entry per sample and channel (the last
// Keras axis), broadcast over the steps, the pixels or the voxels.
LayerValue build_spatial_dropout(LayerBuilder& b, const std::vector<LayerValue>& in, size_t rank) {
  const double rate = b.args.number("rate");
  if (!(rate >= 0 && rate < 1)) b.fail("rate", fmt::format("rate must be in [0, 1), got {}", rate));
  LayerValue x = in[0];
  if (x.shape.size() != rank)
    b.fail_layer(fmt::format("needs a {} input, got {} from '{}'",
                             rank == 2   ? "sequence (None, steps, features)"
                             : rank == 3 ? "image (None, height, width, channels)"
                                         : "volume (None, depth, height, width, channels)",
                             keras_shape(x.shape), x.from));
  x.activation.clear();
  x.pre_activation = kNoValue;
  std::vector<int64_t> dims(rank + 1, 1);
  dims[0] = b.options.batch_size;
  dims[static_cast<size_t>(b.ir_axis(x, static_cast<int>(rank) - 1))] = x.shape.back();
  if (ValueId mask = b.dropout_mask("mask", dims, rate, "seed"); mask != kNoValue)
    x.value = b.op("Mul", {x.value, mask});
  return x;
}
LayerValue build_spatial_dropout1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_spatial_dropout(b, in, 2);
}
LayerValue build_spatial_dropout2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_spatial_dropout(b, in, 3);
}
LayerValue build_spatial_dropout3d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_spatial_dropout(b, in, 4);
}

// Identity: its input, unchanged (Keras's placeholder layer).
LayerValue build_identity(LayerBuilder&, const std::vector<LayerValue>& in) {
  return in[0];
}

// ActivityRegularization: its input unchanged, with l1 sum |x| + l2 sum x^2 (per sample) added to the loss.
LayerValue build_activity_regularization(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const double l1 = b.args.number("l1"), l2 = b.args.number("l2");
  for (const char* k : {"l1", "l2"})
    if (!(b.args.number(k) >= 0)) b.fail(k, fmt::format("{} = {} must be 0 or more", k, b.args.number(k)));
  b.penalize_activity(in[0].value, l1, l2);  // sums: the layout does not matter
  return in[0];
}

LayerValue build_concatenate(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int rank = static_cast<int>(in[0].shape.size());
  // Keras counts the batch as axis 0: axis -1 and axis `rank` are the last per-sample axis.
  const int64_t axis = b.args.integer("axis");
  const int64_t with_batch = axis < 0 ? axis + rank + 1 : axis;
  if (with_batch < 1 || with_batch > rank)
    b.fail("axis",
           fmt::format("axis {} is out of range for inputs of shape {}", axis, keras_shape(in[0].shape)),
           with_batch == 0 ? "axis 0 is the batch" : "");
  const int k = static_cast<int>(with_batch - 1);
  std::vector<int64_t> shape = in[0].shape;
  for (size_t i = 1; i < in.size(); ++i) {
    bool ok = in[i].shape.size() == in[0].shape.size();
    for (int d = 0; ok && d < rank; ++d) ok = d == k || in[i].shape[d] == in[0].shape[d];
    if (!ok)
      b.fail_layer(fmt::format("inputs must match except along axis {}; '{}' gives {} and '{}' gives {}",
                               axis, in[0].from, keras_shape(in[0].shape), in[i].from,
                               keras_shape(in[i].shape)));
    shape[k] += in[i].shape[k];
  }
  std::vector<LayerValue> xs = same_layout(b, in);
  std::vector<ValueId> values;
  for (const LayerValue& x : xs) values.push_back(x.value);
  LayerValue y = xs[0];
  y.shape = shape;
  y.value = b.op("Concat", values, {{"axis", int64_t{b.ir_axis(xs[0], k)}}});
  y.activation.clear();
  y.pre_activation = kNoValue;
  if (rank == 2 && k == 0) {  // along the steps of sequences: their masks joined, when every input has one
    std::vector<ValueId> masks;
    for (const LayerValue& x : in)
      if (x.mask != kNoValue) masks.push_back(x.mask);
    if (masks.size() == in.size()) y.mask = b.op("Concat", masks, {{"axis", int64_t{1}}});
  } else {
    y.mask = merged_mask(b, in);
  }
  return y;
}

// A Gather of rows of the [input_dim, output_dim] table: token ids [N, T] -> [N, T, output_dim].
LayerValue build_embedding(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t vocab = b.positive("input_dim");
  const int64_t dim = b.positive("output_dim");
  ValueId table =
      b.weight("embeddings", "embeddings_initializer", Shape{vocab, dim}, {vocab, dim, vocab, dim});
  LayerValue y;
  y.from = in[0].from;
  y.shape = in[0].shape;
  y.shape.push_back(dim);
  y.value = b.op("Gather", {table, in[0].value}, {{"axis", int64_t{0}}});
  // mask_zero: token id 0 is padding; the mask marks the other steps for the layers that honour it.
  if (b.args.boolean("mask_zero")) {
    if (in[0].shape.size() != 1)
      b.fail("mask_zero", fmt::format("mask_zero needs a sequence of token ids (None, steps), got {}",
                                      keras_shape(in[0].shape)));
    y.mask = b.nonzero_mask(in[0].value);
  }
  return y;
}

// CategoryEncoding: integer ids as one_hot (one row per id: [num_tokens] per sample for one id per sample),
// multi_hot (1 for each id the sample holds) or count (how often it holds each), via an Equal against the
// constant ids 0 .. num_tokens - 1.
LayerValue build_category_encoding(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t tokens = b.positive("num_tokens");
  const std::string mode = b.choice("output_mode", {"multi_hot", "one_hot", "count"});
  const LayerValue& x = in[0];
  if (x.shape.size() > 1)
    b.fail_layer(
        fmt::format("needs one id or a list of ids per sample, (None,) or (None, k), got {} from '{}'",
                    keras_shape(x.shape), x.from));
  const DType t = b.graph.value(x.value).dtype;
  Tensor classes(t, Shape{tokens});
  for (int64_t i = 0; i < tokens; ++i) classes.set_f64(i, static_cast<double>(i));
  // [N] or [N, k] ids against the classes: [N, 1, T] or [N, k, T].
  ValueId column = x.shape.empty() ? b.op("Unsqueeze", {x.value, b.shape_constant("id_axis", {1})}) : x.value;
  const int64_t k = x.shape.empty() ? 1 : x.shape[0];
  const ValueId hot = b.op("Cast",
                           {b.op("Equal", {b.op("Unsqueeze", {column, b.shape_constant("class_axis", {2})}),
                                           b.constant("ids", classes)})},
                           {{"to", int64_t{dtype_to_onnx(DType::f32)}}});
  LayerValue y;
  y.from = x.from;
  if (mode == "one_hot" && k > 1) {
    y.value = hot;
    y.shape = {k, tokens};
    return y;
  }
  const ValueId axis = b.shape_constant("ids_axis", {1});
  y.value = b.op(mode == "count" ? "ReduceSum" : "ReduceMax", {hot, axis}, {{"keepdims", int64_t{0}}});
  y.shape = {tokens};
  return y;
}

// Discretization: each float value's bucket among bin_boundaries (sorted): the count of boundaries at or
// below it, as int64 ids (for an Embedding or a CategoryEncoding after it).
LayerValue build_discretization(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::vector<double> bounds = b.args.numbers("bin_boundaries");
  b.choice("output_mode", {"int"});
  if (!std::is_sorted(bounds.begin(), bounds.end()))
    b.fail("bin_boundaries", "bin_boundaries must be sorted", "list them from the smallest");
  LayerValue x = b.to_channels_last(in[0]);
  const int rank = static_cast<int>(x.shape.size());
  Tensor bt(DType::f32, Shape{static_cast<int64_t>(bounds.size())});
  for (size_t i = 0; i < bounds.size(); ++i) bt.set_f64(static_cast<int64_t>(i), bounds[i]);
  const ValueId last = b.shape_constant("bucket_axis", {rank + 1});
  const ValueId above = b.op(
      "Cast", {b.op("GreaterOrEqual", {b.op("Unsqueeze", {x.value, last}), b.constant("boundaries", bt)})},
      {{"to", int64_t{dtype_to_onnx(DType::i64)}}});
  x.value = b.op("ReduceSum", {above, last}, {{"keepdims", int64_t{0}}});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// Masking: the steps whose features all equal mask_value are padding: zeroed, and masked for the layers that
// honour masks.
LayerValue build_masking(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = b.to_channels_last(in[0]);
  if (x.shape.size() != 2)
    b.fail_layer(fmt::format("needs a sequence (None, steps, features), got {} from '{}'",
                             keras_shape(x.shape), x.from),
                 "Masking marks the padded steps of a sequence");
  ValueId value =
      b.constant("mask_value", Tensor::scalar<float>(static_cast<float>(b.args.number("mask_value"))));
  ValueId same =
      b.op("Cast", {b.op("Equal", {x.value, value})}, {{"to", int64_t{dtype_to_onnx(DType::f32)}}});
  // A step counts when some feature differs: the maximum over the features of "not equal".
  x.mask = b.op("ReduceMax",
                {b.op("Sub", {b.constant("one", Tensor::scalar<float>(1.0f)), same}),
                 b.shape_constant("features", {2})},
                {{"keepdims", int64_t{0}}});
  x.value = b.op("Mul", {x.value, b.op("Unsqueeze", {x.mask, b.shape_constant("feature_axis", {2})})});
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue build_time_distributed(LayerBuilder& b, const std::vector<LayerValue>&) {
  b.fail_layer("TimeDistributed is built around its wrapped layer by build_model");
}

}  // namespace

void add_core_layers(std::vector<LayerDef>& defs) {
  using V = formats::ArgValue;
  const V none = std::string("None");
  defs.push_back({"Dense",
                  "dense",
                  {{"units", ArgKind::integer, std::nullopt},
                   {"activation", ArgKind::string, none},
                   {"use_bias", ArgKind::boolean, true},
                   {"kernel_initializer", ArgKind::string, std::string("glorot_uniform")},
                   {"bias_initializer", ArgKind::string, std::string("zeros")}},
                  1,
                  1,
                  false,
                  build_dense});
  defs.push_back({"Activation",
                  "activation",
                  {{"activation", ArgKind::string, std::nullopt}},
                  1,
                  1,
                  false,
                  build_activation});
  defs.push_back({"ReLU",
                  "re_lu",
                  {{"max_value", ArgKind::number, std::nullopt, true},
                   {"negative_slope", ArgKind::number, 0.0},
                   {"threshold", ArgKind::number, 0.0}},
                  1,
                  1,
                  false,
                  build_relu_layer});
  defs.push_back({"LeakyReLU",
                  "leaky_re_lu",
                  {{"negative_slope", ArgKind::number, 0.3}, {"alpha", ArgKind::number, std::nullopt, true}},
                  1,
                  1,
                  false,
                  build_leaky_relu_layer});
  defs.push_back({"ELU", "elu", {{"alpha", ArgKind::number, 1.0}}, 1, 1, false, build_elu_layer});
  defs.push_back({"PReLU",
                  "p_re_lu",
                  {{"alpha_initializer", ArgKind::string, std::string("zeros")},
                   {"shared_axes", ArgKind::int_or_ints, std::nullopt, true}},
                  1,
                  1,
                  false,
                  build_prelu_layer});
  defs.push_back(
      {"Softmax", "softmax", {{"axis", ArgKind::integer, int64_t{-1}}}, 1, 1, false, build_softmax_layer});
  defs.push_back({"Dropout",
                  "dropout",
                  {{"rate", ArgKind::number, std::nullopt}, {"seed", ArgKind::integer, std::nullopt, true}},
                  1,
                  1,
                  false,
                  build_dropout});
  const ArgDecl rate{"rate", ArgKind::number, std::nullopt};
  const ArgDecl seed{"seed", ArgKind::integer, std::nullopt, true};
  defs.push_back(
      {"SpatialDropout1D", "spatial_dropout1d", {rate, seed}, 1, 1, false, build_spatial_dropout1d});
  defs.push_back(
      {"SpatialDropout2D", "spatial_dropout2d", {rate, seed}, 1, 1, false, build_spatial_dropout2d});
  defs.push_back(
      {"SpatialDropout3D", "spatial_dropout3d", {rate, seed}, 1, 1, false, build_spatial_dropout3d});
  defs.push_back({"Identity", "identity", {}, 1, 1, false, build_identity});
  defs.push_back({"ActivityRegularization",
                  "activity_regularization",
                  {{"l1", ArgKind::number, 0.0}, {"l2", ArgKind::number, 0.0}},
                  1,
                  1,
                  false,
                  build_activity_regularization});
  defs.push_back({"AlphaDropout", "alpha_dropout", {rate, seed}, 1, 1, false, build_alpha_dropout});
  defs.push_back({"GaussianNoise",
                  "gaussian_noise",
                  {{"stddev", ArgKind::number, std::nullopt}, seed},
                  1,
                  1,
                  false,
                  build_gaussian_noise});
  defs.push_back({"GaussianDropout", "gaussian_dropout", {rate, seed}, 1, 1, false, build_gaussian_dropout});
  defs.push_back({"Rescaling",
                  "rescaling",
                  {{"scale", ArgKind::number, std::nullopt}, {"offset", ArgKind::number, 0.0}},
                  1,
                  1,
                  false,
                  build_rescaling});
  defs.push_back({"Flatten", "flatten", {}, 1, 1, false, build_flatten});
  defs.push_back(
      {"Reshape", "reshape", {{"target_shape", ArgKind::ints, std::nullopt}}, 1, 1, false, build_reshape});
  defs.push_back({"Add", "add", {}, 2, -1, false, build_add});
  defs.push_back({"Subtract", "subtract", {}, 2, 2, false, build_subtract});
  defs.push_back({"Multiply", "multiply", {}, 2, -1, false, build_multiply});
  defs.push_back({"Average", "average", {}, 2, -1, false, build_average});
  defs.push_back({"Maximum", "maximum", {}, 2, -1, false, build_maximum});
  defs.push_back({"Minimum", "minimum", {}, 2, -1, false, build_minimum});
  defs.push_back({"Concatenate",
                  "concatenate",
                  {{"axis", ArgKind::integer, int64_t{-1}}},
                  2,
                  -1,
                  false,
                  build_concatenate});
  defs.push_back({"Embedding",
                  "embedding",
                  {{"input_dim", ArgKind::integer, std::nullopt},
                   {"output_dim", ArgKind::integer, std::nullopt},
                   {"embeddings_initializer", ArgKind::string, std::string("uniform")},
                   {"mask_zero", ArgKind::boolean, false}},
                  1,
                  1,
                  true,
                  build_embedding});
  defs.push_back({"Masking", "masking", {{"mask_value", ArgKind::number, 0.0}}, 1, 1, false, build_masking});
  defs.push_back({"CategoryEncoding",
                  "category_encoding",
                  {{"num_tokens", ArgKind::integer, std::nullopt},
                   {"output_mode", ArgKind::string, std::string("multi_hot")}},
                  1,
                  1,
                  true,
                  build_category_encoding});
  defs.push_back({"Discretization",
                  "discretization",
                  {{"bin_boundaries", ArgKind::numbers, std::nullopt},
                   {"output_mode", ArgKind::string, std::string("int")}},
                  1,
                  1,
                  false,
                  build_discretization});
  defs.push_back({"Dot",
                  "dot",
                  {{"axes", ArgKind::int_or_pair, std::nullopt}, {"normalize", ArgKind::boolean, false}},
                  2,
                  2,
                  false,
                  build_dot});
  defs.push_back({"Normalization",
                  "normalization",
                  {{"axis", ArgKind::integer, int64_t{-1}},
                   {"mean", ArgKind::numbers, std::nullopt, true},
                   {"variance", ArgKind::numbers, std::nullopt, true},
                   {"invert", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_normalization});
  // TimeDistributed's arguments are `layer` and the wrapped layer's; build_model builds it around that layer.
  defs.push_back({"TimeDistributed",
                  "time_distributed",
                  {{"layer", ArgKind::string, std::nullopt}},
                  1,
                  1,
                  false,
                  build_time_distributed});
  keep_masks(defs, {"Dense",
                    "Activation",
                    "ReLU",
                    "LeakyReLU",
                    "ELU",
                    "PReLU",
                    "Softmax",
                    "Dropout",
                    "SpatialDropout1D",
                    "GaussianNoise",
                    "GaussianDropout",
                    "Rescaling",
                    "Add",
                    "Subtract",
                    "Multiply",
                    "Average",
                    "Maximum",
                    "Minimum",
                    "Concatenate",
                    "TimeDistributed",
                    "Normalization",
                    "Identity",
                    "AlphaDropout",
                    "ActivityRegularization"});
}

}  // namespace trainer::models
