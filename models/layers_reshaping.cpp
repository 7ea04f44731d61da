// Keras's reshaping layers beyond Reshape and Flatten: RepeatVector, Permute, Cropping1D, Cropping2D,
// UpSampling1D and ZeroPadding1D; and the image preprocessing layers Resizing and CenterCrop.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

LayerValue plain(LayerValue x) {
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

// RepeatVector: [N, F] -> [N, n, F], the vector repeated n times (an Expand of [N, 1, F]).
LayerValue build_repeat_vector(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t n = b.positive("n");
  LayerValue x = plain(in[0]);
  if (x.shape.size() != 1)
    b.fail_layer(
        fmt::format("needs a vector input (None, features), got {} from '{}'", keras_shape(x.shape), x.from),
        "put a Flatten layer before it");
  const int64_t f = x.shape[0];
  ValueId column = b.op("Reshape", {x.value, b.shape_constant("column", {0, 1, f})});
  x.value = b.op("Expand", {column, b.shape_constant("repeat", {1, n, 1})});
  x.shape = {n, f};
  return x;
}

// Permute: the per-sample axes in the order `dims` gives (1-based, as Keras counts them after the batch).
LayerValue build_permute(LayerBuilder& b, const std::vector<LayerValue>& in) {
  LayerValue x = plain(b.to_channels_last(in[0]));
  const std::vector<int64_t> dims = b.args.ints("dims");
  const int64_t rank = static_cast<int64_t>(x.shape.size());
  std::vector<int64_t> sorted = dims;
  std::sort(sorted.begin(), sorted.end());
  bool ok = static_cast<int64_t>(dims.size()) == rank;
  for (int64_t i = 0; ok && i < rank; ++i) ok = sorted[static_cast<size_t>(i)] == i + 1;
  if (!ok)
    b.fail("dims",
           fmt::format("dims [{}] is not a permutation of the input's axes 1 to {} ({})",
                       fmt::join(dims, ", "), rank, keras_shape(x.shape)),
           "list each axis after the batch once, counting from 1, e.g. dims = [2, 1]");
  std::vector<int64_t> perm = {0}, shape;
  for (int64_t d : dims) {
    perm.push_back(d);
    shape.push_back(x.shape[static_cast<size_t>(d - 1)]);
  }
  x.value = b.op("Transpose", {x.value}, {{"perm", perm}});
  x.shape = shape;
  // An image whose channels moved is no longer channels-last in the builder's sense; Keras's shape is the
  // permuted one, held row-major, which is what the builder assumes of a value that is not channels_first.
  return x;
}

// Cropping along Keras axes `axes` (per-sample, 0-based) of `begin`/`end` elements: one Slice.
LayerValue crop(LayerBuilder& b, const LayerValue& in, const std::vector<int>& axes,
                const std::vector<int64_t>& begin, const std::vector<int64_t>& end) {
  LayerValue x = plain(in);
  std::vector<int64_t> starts, ends, ir_axes;
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t size = x.shape[static_cast<size_t>(axes[i])];
    if (begin[i] < 0 || end[i] < 0)
      b.fail("cropping", fmt::format("cropping must not be negative, got {}", std::min(begin[i], end[i])));
    if (begin[i] + end[i] >= size)
      b.fail("cropping",
             fmt::format("cropping {} + {} leaves nothing of axis {} (size {}) of {}", begin[i], end[i],
                         axes[i] + 1, size, keras_shape(x.shape)),
             "crop less than the axis holds");
    starts.push_back(begin[i]);
    ends.push_back(size - end[i]);
    ir_axes.push_back(b.ir_axis(x, axes[i]));
    x.shape[static_cast<size_t>(axes[i])] = size - begin[i] - end[i];
  }
  x.value = b.op("Slice", {x.value, b.shape_constant("starts", starts), b.shape_constant("ends", ends),
                           b.shape_constant("axes", ir_axes)});
  return x;
}

// Cropping1D: cropping = n (both ends) or [begin, end] steps of a sequence.
LayerValue build_cropping1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  if (in[0].shape.size() != 2)
    b.fail_layer(fmt::format("needs a sequence input (None, steps, features), got {} from '{}'",
                             keras_shape(in[0].shape), in[0].from));
  std::vector<int64_t> c = b.args.pair("cropping");
  return crop(b, in[0], {0}, {c[0]}, {c[1]});
}

// Cropping2D: cropping = n (every side), [h, w] (top and bottom, left and right) or [top, bottom, left,
// right] (Keras's ((top, bottom), (left, right)) flattened).
LayerValue build_cropping2d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  if (in[0].shape.size() != 3)
    b.fail_layer(fmt::format("needs an image input (None, height, width, channels), got {} from '{}'",
                             keras_shape(in[0].shape), in[0].from));
  const std::vector<int64_t> c = b.four_sides("cropping");
  return crop(b, in[0], {0, 1}, {c[0], c[2]}, {c[1], c[3]});
}

void require_steps(LayerBuilder& b, const LayerValue& x) {
  if (x.shape.size() != 2)
    b.fail_layer(fmt::format("needs a sequence input (None, steps, features), got {} from '{}'",
                             keras_shape(x.shape), x.from));
}

// UpSampling1D: each step repeated `size` times, in whichever layout the sequence is: a Reshape that opens an
// axis of 1 after the steps, an Expand of it and a Reshape that merges it back.
LayerValue build_upsampling1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t size = b.positive("size");
  require_steps(b, in[0]);
  LayerValue x = plain(in[0]);
  const int64_t steps = x.shape[0], features = x.shape[1];
  const bool first = x.channels_first;  // [N, F, T] after Conv1D, else [N, T, F]
  std::vector<int64_t> split =
      first ? std::vector<int64_t>{0, features, steps, 1} : std::vector<int64_t>{0, steps, 1, features};
  std::vector<int64_t> repeat =
      first ? std::vector<int64_t>{1, 1, 1, size} : std::vector<int64_t>{1, 1, size, 1};
  std::vector<int64_t> merged = first ? std::vector<int64_t>{0, features, steps * size}
                                      : std::vector<int64_t>{0, steps * size, features};
  ValueId v = b.op("Reshape", {x.value, b.shape_constant("split", split)});
  v = b.op("Expand", {v, b.shape_constant("repeat", repeat)});
  x.value = b.op("Reshape", {v, b.shape_constant("merged", merged)});
  x.shape = {steps * size, features};
  return x;
}

// ZeroPadding1D: padding = n (both ends) or [begin, end] zero steps.
LayerValue build_zero_padding1d(LayerBuilder& b, const std::vector<LayerValue>& in) {
  require_steps(b, in[0]);
  const std::vector<int64_t> p = b.args.pair("padding");
  if (p[0] < 0 || p[1] < 0)
    b.fail("padding", fmt::format("padding must not be negative, got [{}, {}]", p[0], p[1]));
  LayerValue x = plain(in[0]);
  std::vector<int64_t> pads(6, 0);  // ONNX's: the begins of the three axes, then their ends
  const int axis = b.ir_axis(x, 0);
  pads[static_cast<size_t>(axis)] = p[0];
  pads[static_cast<size_t>(axis) + 3] = p[1];
  x.value = b.op("Pad", {x.value, b.shape_constant("pads", pads)}, {{"mode", std::string("constant")}});
  x.shape[0] += p[0] + p[1];
  return x;
}

// The [out, in] matrix that resamples an axis of `in` pixels to `out` as TensorFlow's resize does with
// half-pixel centres (Keras's Resizing): bilinear, source (i + 0.5) in / out - 0.5 between its two neighbours
// (clamped at the edges); nearest, floor((i + 0.5) in / out).
Tensor resize_matrix(int64_t out, int64_t in, bool nearest) {
  Tensor m(DType::f32, Shape{out, in});
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t i = 0; i < out; ++i) {
    if (nearest) {
      const int64_t j = std::min<int64_t>(static_cast<int64_t>(std::floor((i + 0.5) * scale)), in - 1);
      m.set_f64(i * in + j, 1.0);
      continue;
    }
    const double src = (i + 0.5) * scale - 0.5, lo = std::floor(src);
    const int64_t lower = std::max<int64_t>(static_cast<int64_t>(lo), 0);
    const int64_t upper = std::min<int64_t>(static_cast<int64_t>(std::ceil(src)), in - 1);
    const double frac = src - lo;
    m.set_f64(i * in + lower, m.get_f64(i * in + lower) + 1 - frac);
    m.set_f64(i * in + upper, m.get_f64(i * in + upper) + frac);
  }
  return m;
}

// Resizing: images to (height, width), bilinear or nearest, as two products with constant matrices (rows,
// then columns); crop_to_aspect_ratio first crops the largest centred window of the target's aspect ratio, as
// Keras.
LayerValue build_resizing(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t out_h = b.positive("height"), out_w = b.positive("width");
  const bool nearest = b.choice("interpolation", {"bilinear", "nearest"}) == "nearest";
  b.require_image(in[0]);
  LayerValue x = plain(b.to_channels_first(in[0]));
  if (b.args.boolean("crop_to_aspect_ratio")) x = crop_to_aspect_ratio(b, x, out_h, out_w);
  return resize_channels_first(b, x, out_h, out_w, nearest);
}

// CenterCrop: the centred (height, width) window of each image (the extra pixel of an odd margin on the
// bottom and right, as Keras).
LayerValue build_center_crop(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t out_h = b.positive("height"), out_w = b.positive("width");
  b.require_image(in[0]);
  const int64_t h = in[0].shape[0], w = in[0].shape[1];
  if (out_h > h || out_w > w)
    b.fail_layer(fmt::format("crops ({}, {}) out of a smaller image {} from '{}'", out_h, out_w,
                             keras_shape(in[0].shape), in[0].from),
                 "put a Resizing layer before it, or crop less");
  const int64_t top = (h - out_h) / 2, left = (w - out_w) / 2;
  return crop(b, in[0], {0, 1}, {top, left}, {h - out_h - top, w - out_w - left});
}

}  // namespace

LayerValue crop_to_aspect_ratio(LayerBuilder& b, LayerValue x, int64_t out_h, int64_t out_w) {
  const int64_t h = x.shape[0], w = x.shape[1];
  const int64_t ch =
      std::max<int64_t>(std::min<int64_t>(h, static_cast<int64_t>(static_cast<float>(w * out_h) / out_w)), 1);
  const int64_t cw =
      std::max<int64_t>(std::min<int64_t>(w, static_cast<int64_t>(static_cast<float>(h * out_w) / out_h)), 1);
  if (ch == h && cw == w) return x;
  const int64_t top = (h - ch) / 2, left = (w - cw) / 2;
  x.value = b.op(
      "Slice", {x.value, b.shape_constant("crop/starts", {top, left}),
                b.shape_constant("crop/ends", {top + ch, left + cw}), b.shape_constant("crop/axes", {2, 3})});
  x.shape = {ch, cw, x.shape[2]};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

LayerValue resize_channels_first(LayerBuilder& b, LayerValue x, int64_t out_h, int64_t out_w, bool nearest) {
  const int64_t h = x.shape[0], w = x.shape[1], channels = x.shape[2];
  // Two per multiply-add: [out_h, h] by each channel's [h, w], then [out_h, w] by [w, out_w].
  b.info.flops_per_sample +=
      2 * channels * ((h != out_h ? out_h * h * w : 0) + (w != out_w ? out_h * w * out_w : 0));
  if (h != out_h) x.value = b.op("MatMul", {b.constant("rows", resize_matrix(out_h, h, nearest)), x.value});
  if (w != out_w) {
    Tensor cols = resize_matrix(out_w, w, nearest);
    x.value = b.op("MatMul", {x.value, b.op("Transpose", {b.constant("columns", std::move(cols))},
                                            {{"perm", std::vector<int64_t>{1, 0}}})});
  }
  x.shape = {out_h, out_w, channels};
  x.activation.clear();
  x.pre_activation = kNoValue;
  return x;
}

void add_reshaping_layers(std::vector<LayerDef>& defs) {
  defs.push_back({"Resizing",
                  "resizing",
                  {{"height", ArgKind::integer, std::nullopt},
                   {"width", ArgKind::integer, std::nullopt},
                   {"interpolation", ArgKind::string, std::string("bilinear")},
                   {"crop_to_aspect_ratio", ArgKind::boolean, false}},
                  1,
                  1,
                  false,
                  build_resizing});
  defs.push_back({"CenterCrop",
                  "center_crop",
                  {{"height", ArgKind::integer, std::nullopt}, {"width", ArgKind::integer, std::nullopt}},
                  1,
                  1,
                  false,
                  build_center_crop});
  defs.push_back({"UpSampling1D",
                  "up_sampling1d",
                  {{"size", ArgKind::integer, int64_t{2}}},
                  1,
                  1,
                  false,
                  build_upsampling1d});
  defs.push_back({"ZeroPadding1D",
                  "zero_padding1d",
                  {{"padding", ArgKind::int_or_pair, int64_t{1}}},
                  1,
                  1,
                  false,
                  build_zero_padding1d});
  defs.push_back({"RepeatVector",
                  "repeat_vector",
                  {{"n", ArgKind::integer, std::nullopt}},
                  1,
                  1,
                  false,
                  build_repeat_vector});
  defs.push_back({"Permute", "permute", {{"dims", ArgKind::ints, std::nullopt}}, 1, 1, false, build_permute});
  defs.push_back({"Cropping1D",
                  "cropping1d",
                  {{"cropping", ArgKind::int_or_pair, int64_t{1}}},
                  1,
                  1,
                  false,
                  build_cropping1d});
  defs.push_back({"Cropping2D",
                  "cropping2d",
                  {{"cropping", ArgKind::int_or_ints, int64_t{0}}},
                  1,
                  1,
                  false,
                  build_cropping2d});
}

}  // namespace trainer::models
