// Keras's image augmentation layers, active in training only (the identity in evaluation, prediction and
// export): RandomFlip, RandomBrightness, RandomContrast, RandomTranslation, RandomZoom, RandomRotation and
// RandomCrop (which, as Keras's, resizes to its window outside training).
// Each image draws its own numbers from the Philox streams of Dropout (a Dropout mask or a RandomUniformLike
// per image), so the draws are the same for any replica count and after a resume.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

// RandomFlip: in training, each image flipped left to right (horizontal), top to bottom (vertical), or each
// of the two on its own draw (horizontal_and_vertical), with probability 1/2, as Keras's augmentation layer;
// the identity otherwise. A flip is a Slice with step -1; the draw a Dropout mask of one entry per sample.
LayerValue build_random_flip(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const std::string mode = b.choice("mode", {"horizontal", "vertical", "horizontal_and_vertical"});
  b.require_image(in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  x.activation.clear();
  x.pre_activation = kNoValue;
  if (!b.options.training) return x;
  for (const char* kind : {"horizontal", "vertical"}) {
    if (mode != kind && mode != "horizontal_and_vertical") continue;
    const int64_t axis = std::string(kind) == "horizontal" ? 3 : 2;
    const std::string k = kind;
    ValueId flipped =
        b.op("Slice", {x.value, b.shape_constant(k + "/starts", {-1}),
                       b.shape_constant(k + "/ends", {std::numeric_limits<int64_t>::min()}),
                       b.shape_constant(k + "/axes", {axis}), b.shape_constant(k + "/steps", {-1})});
    // The mask is 0 or 2 (a Dropout of ones at rate 1/2); where it is 2 the flipped image is taken, whole.
    ValueId draw = b.dropout_mask(k + "/draw", {b.options.batch_size, 1, 1, 1}, 0.5, "seed");
    ValueId pick = b.op("Greater", {draw, b.constant(k + "/one", Tensor::scalar<float>(1.0f))});
    x.value = b.op("Where", {pick, flipped, x.value});
  }
  return x;
}

// One uniform number per image, in [low, high): a RandomUniformLike of ones [N, 1, 1, 1] (not folded: it
// draws anew each step).
ValueId per_image_uniform(LayerBuilder& b, double low, double high, int rank = 4) {
  std::vector<int64_t> dims(static_cast<size_t>(rank), 1);
  dims[0] = b.options.batch_size;
  Attributes attrs{{"low", static_cast<float>(low)}, {"high", static_cast<float>(high)}};
  if (b.args.has("seed")) attrs.set("seed", static_cast<float>(b.args.integer("seed")));
  return b.op("RandomUniformLike", {b.ones("ones", dims)}, attrs);
}

// RandomBrightness and RandomContrast, Keras's augmentation layers, in training only. Brightness adds one
// draw per image from [lower, upper] times the width of value_range; contrast scales each image's deviation
// from its per-channel mean by one draw from [1 - lower, 1 + upper]. Both clip to value_range.
LayerValue build_random_color(LayerBuilder& b, const std::vector<LayerValue>& in, bool contrast) {
  auto [lower, upper] = b.args.number_pair("factor", !contrast);
  auto [lo, hi] = b.args.number_pair("value_range", false);
  if (!(hi > lo))
    b.fail("value_range", fmt::format("value_range [{}, {}] is empty", lo, hi), "e.g. [0, 255]");
  if (contrast ? !(lower >= 0 && lower <= 1 && upper >= 0) : !(lower >= -1 && upper <= 1 && lower <= upper))
    b.fail("factor",
           contrast
               ? fmt::format("the contrast factors [{}, {}] must be 0 or more, the lower at most 1", lower,
                             upper)
               : fmt::format("the brightness factors [{}, {}] must be in [-1, 1], lower first", lower, upper),
           contrast ? "e.g. factor = 0.2: contrast scaled by [0.8, 1.2]" : "e.g. factor = 0.2: [-0.2, 0.2]");
  b.require_image(in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  x.activation.clear();
  x.pre_activation = kNoValue;
  if (!b.options.training) return x;
  if (contrast) {
    ValueId f = per_image_uniform(b, 1 - lower, 1 + upper);
    ValueId mean =
        b.op("ReduceMean", {x.value, b.shape_constant("spatial", {2, 3})}, {{"keepdims", int64_t{1}}});
    x.value = b.op("Add", {b.op("Mul", {b.op("Sub", {x.value, mean}), f}), mean});
  } else {
    x.value = b.op("Add", {x.value, per_image_uniform(b, lower * (hi - lo), upper * (hi - lo))});
  }
  x.value = b.op("Clip", {x.value, b.constant("low", Tensor::scalar<float>(static_cast<float>(lo))),
                          b.constant("high", Tensor::scalar<float>(static_cast<float>(hi)))});
  return x;
}
LayerValue build_random_brightness(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_random_color(b, in, false);
}
LayerValue build_random_contrast(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_random_color(b, in, true);
}

// One coordinate axis of RandomTranslation or RandomZoom: the [N, n, n] matrices that resample an axis of n
// pixels, row i of image k taking source coordinate src = scale_k (i - c) + c - shift_k. Bilinear (or
// nearest, by rounding src) weights are tents relu(1 - |src - j|) over the extended pixels j in [-n, 2n);
// a constant [3n, n] matrix folds those onto the image as the fill mode says (reflect: d c b a | a b c d |
// d c b a; nearest: the edge pixel; constant: nothing, so the fill is 0). `shift` and `scale` are [N, 1, 1]
// values (kNoValue: 0 and 1).
ValueId resampling(LayerBuilder& b, const std::string& axis, int64_t n, ValueId shift, ValueId scale,
                   const std::string& fill, bool nearest) {
  Tensor i(DType::f32, Shape{1, n, 1}), j(DType::f32, Shape{1, 1, 3 * n}), fold(DType::f32, Shape{3 * n, n});
  const double c = (n - 1) / 2.0;
  for (int64_t k = 0; k < n; ++k) i.set_f64(k, k - c);
  for (int64_t k = 0; k < 3 * n; ++k) {
    j.set_f64(k, k - n);
    int64_t p = k - n;
    if (fill == "reflect") p = p < 0 ? -p - 1 : p >= n ? 2 * n - 1 - p : p;
    if (fill == "nearest") p = std::clamp<int64_t>(p, 0, n - 1);
    if (p >= 0 && p < n) fold.set_f64(k * n + p, 1.0);
  }
  ValueId src = b.constant(axis + "/centred", std::move(i));
  if (scale != kNoValue) src = b.op("Mul", {src, scale});
  src = b.op("Add", {src, b.constant(axis + "/centre", Tensor::scalar<float>(static_cast<float>(c)))});
  if (shift != kNoValue) src = b.op("Sub", {src, shift});
  if (nearest) src = b.op("Round", {src});
  ValueId distance = b.op("Abs", {b.op("Sub", {src, b.constant(axis + "/pixels", std::move(j))})});
  ValueId tents =
      b.op("Relu", {b.op("Sub", {b.constant(axis + "/one", Tensor::scalar<float>(1.0f)), distance})});
  ValueId m = b.op("MatMul", {tents, b.constant(axis + "/fold", std::move(fold))});  // [N, n, n]
  return b.op("Reshape", {m, b.shape_constant(axis + "/per_channel", {0, 1, n, n})});
}

// RandomTranslation and RandomZoom: each image resampled along its height and width by its own draw, in
// training only: Y = A_h X A_wᵀ, per image, with A from `resampling`.
LayerValue build_random_affine(LayerBuilder& b, const std::vector<LayerValue>& in, bool zoom) {
  b.require_image(in[0]);
  auto [hl, hu] = b.args.number_pair("height_factor", true);
  const bool own_width = b.args.has("width_factor");
  auto [wl, wu] = own_width ? b.args.number_pair("width_factor", true) : std::pair<double, double>{hl, hu};
  for (const char* arg : {"height_factor", "width_factor"}) {
    if (!b.args.has(arg)) continue;
    auto [l, u] = b.args.number_pair(arg, true);
    if (!(l <= u && l >= -1 && u <= 1 && (!zoom || l > -1)))
      b.fail(arg,
             fmt::format("{} [{}, {}] must be in [-1, 1] (above -1 for a zoom), the lower first", arg, l, u),
             zoom ? "e.g. 0.2: zoomed in or out by up to 20%" : "e.g. 0.1: shifted by up to 10% of the size");
  }
  const std::string fill = b.choice("fill_mode", {"reflect", "constant", "nearest"});
  const bool nearest = b.choice("interpolation", {"bilinear", "nearest"}) == "nearest";
  if (b.args.number("fill_value") != 0)
    b.fail("fill_value", "only fill_value = 0 is supported", "leave fill_value out");
  LayerValue x = b.to_channels_first(in[0]);
  x.activation.clear();
  x.pre_activation = kNoValue;
  if (!b.options.training) return x;
  const int64_t h = x.shape[0], w = x.shape[1];
  auto draw = [&](double lo, double hi) { return per_image_uniform(b, lo, hi, 3); };
  ValueId ah, aw;
  if (zoom) {
    // Keras's zoom: a factor 1 + draw (above 1 zooms out); without width_factor both axes take one draw.
    ValueId zh = draw(1 + hl, 1 + hu);
    ValueId zw = own_width ? draw(1 + wl, 1 + wu) : zh;
    ah = resampling(b, "height", h, kNoValue, zh, fill, nearest);
    aw = resampling(b, "width", w, kNoValue, zw, fill, nearest);
  } else {
    ah = resampling(b, "height", h, draw(hl * h, hu * h), kNoValue, fill, nearest);
    aw = resampling(b, "width", w, draw(wl * w, wu * w), kNoValue, fill, nearest);
  }
  // Two per multiply-add: building each axis's matrices ([n, 3n] tents by the [3n, n] fold), then applying
  // them.
  const int64_t channels = x.shape[2];
  b.info.flops_per_sample = 2 * 3 * (h * h * h + w * w * w) + 2 * channels * h * w * (h + w);
  ValueId y = b.op("MatMul", {ah, x.value});  // rows
  x.value =
      b.op("MatMul", {y, b.op("Transpose", {aw}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}})});  // columns
  return x;
}
LayerValue build_random_translation(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_random_affine(b, in, false);
}
LayerValue build_random_zoom(LayerBuilder& b, const std::vector<LayerValue>& in) {
  return build_random_affine(b, in, true);
}

// RandomRotation: each image turned about its centre by its own angle, factor * 2π (positive:
// counter-clockwise as displayed, rows running down), in training only. Output pixel (u, v) from the centre
// samples the input at (cos θ u - sin θ v, sin θ u + cos θ v), through GridSample without align_corners,
// whose reflection about the outer pixel edges is Keras's reflect (d c b a | a b c d), border its nearest and
// zeros its constant 0.
LayerValue build_random_rotation(LayerBuilder& b, const std::vector<LayerValue>& in) {
  b.require_image(in[0]);
  auto [lower, upper] = b.args.number_pair("factor", true);
  if (!(lower <= upper))
    b.fail("factor", fmt::format("the rotation factors [{}, {}] must be lower first", lower, upper),
           "e.g. factor = 0.1: turned by up to 10% of a full turn either way");
  const std::string fill = b.choice("fill_mode", {"reflect", "constant", "nearest", "wrap"});
  if (fill == "wrap")
    b.fail("fill_mode", "fill_mode = \"wrap\" is not supported", "use reflect, constant or nearest");
  const std::string interpolation = b.choice("interpolation", {"bilinear", "nearest"});
  if (b.args.number("fill_value") != 0)
    b.fail("fill_value", "only fill_value = 0 is supported", "leave fill_value out");
  LayerValue x = b.to_channels_first(in[0]);
  x.activation.clear();
  x.pre_activation = kNoValue;
  const int64_t h = x.shape[0], w = x.shape[1];
  if (!b.options.training) return x;
  // Offsets from the centre, normalized as GridSample reads them: 2 / W along x, 2 / H along y.
  auto offsets = [&](const std::string& name, bool columns, double size) {
    Tensor t(DType::f32, Shape{1, h, w});
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j)
        t.set_f64(i * w + j, (columns ? j - (w - 1) / 2.0 : i - (h - 1) / 2.0) * 2 / size);
    return b.constant(name, std::move(t));
  };
  const double turn = 2 * M_PI;
  ValueId theta = per_image_uniform(b, lower * turn, upper * turn, 3);  // [N, 1, 1]
  ValueId cos = b.op("Cos", {theta}), sin = b.op("Sin", {theta});
  ValueId gx = b.op(
      "Sub", {b.op("Mul", {cos, offsets("u_x", true, w)}), b.op("Mul", {sin, offsets("v_x", false, w)})});
  ValueId gy = b.op(
      "Add", {b.op("Mul", {sin, offsets("u_y", true, h)}), b.op("Mul", {cos, offsets("v_y", false, h)})});
  ValueId last = b.shape_constant("last_axis", {3});
  ValueId grid =
      b.op("Concat", {b.op("Unsqueeze", {gx, last}), b.op("Unsqueeze", {gy, last})}, {{"axis", int64_t{3}}});
  x.value = b.op("GridSample", {x.value, grid},
                 {{"align_corners", int64_t{0}},
                  {"mode", interpolation},
                  {"padding_mode", std::string(fill == "reflect"   ? "reflection"
                                               : fill == "nearest" ? "border"
                                                                   : "zeros")}});
  return x;
}

// One axis of RandomCrop's window: the [N, 1, out, n] matrices whose row i of image k is one at column
// start_k + i, start_k drawn for each image from {0, ..., n - out}, every offset equally likely (Floor of a
// uniform draw in [0, n - out + 1), kept below n - out + 1 against the draw's rounding).
ValueId crop_window(LayerBuilder& b, const std::string& axis, int64_t n, int64_t out) {
  Tensor i(DType::f32, Shape{1, out, 1}), j(DType::f32, Shape{1, 1, n});
  for (int64_t k = 0; k < out; ++k) i.set_f64(k, static_cast<double>(k));
  for (int64_t k = 0; k < n; ++k) j.set_f64(k, static_cast<double>(k));
  const auto last = static_cast<float>(n - out);
  ValueId start = b.op("Floor", {b.op("Min", {per_image_uniform(b, 0, last + 1, 3),
                                              b.constant(axis + "/last", Tensor::scalar<float>(last))})});
  ValueId src = b.op("Add", {b.constant(axis + "/rows", std::move(i)), start});  // [N, out, 1]
  ValueId distance = b.op("Abs", {b.op("Sub", {src, b.constant(axis + "/pixels", std::move(j))})});
  ValueId one_hot =
      b.op("Relu", {b.op("Sub", {b.constant(axis + "/one", Tensor::scalar<float>(1.0f)), distance})});
  return b.op("Reshape", {one_hot, b.shape_constant(axis + "/per_channel", {0, 1, out, n})});
}

// RandomCrop: in training, each image's own (height, width) window at a random place; otherwise
// (evaluation, prediction, export, and in training an image smaller than the window) the largest centred
// window of the target's aspect ratio resized to (height, width), bilinear, as Keras documents its
// inference (Resizing with crop_to_aspect_ratio). Keras crops a whole batch at one place; here each image
// draws its own, so augmentation varies within a batch and the draws are the same on any replica count.
LayerValue build_random_crop(LayerBuilder& b, const std::vector<LayerValue>& in) {
  const int64_t out_h = b.positive("height"), out_w = b.positive("width");
  b.require_image(in[0]);
  LayerValue x = b.to_channels_first(in[0]);
  x.activation.clear();
  x.pre_activation = kNoValue;
  const int64_t h = x.shape[0], w = x.shape[1], channels = x.shape[2];
  if (!b.options.training || h < out_h || w < out_w)
    return resize_channels_first(b, crop_to_aspect_ratio(b, x, out_h, out_w), out_h, out_w, false);
  // Two per multiply-add: building each axis's one-hot rows is negligible; applying them is a product.
  if (h != out_h) {
    x.value = b.op("MatMul", {crop_window(b, "height", h, out_h), x.value});  // [N, C, out_h, w]
    b.info.flops_per_sample += 2 * channels * out_h * h * w;
  }
  if (w != out_w) {
    ValueId columns =
        b.op("Transpose", {crop_window(b, "width", w, out_w)}, {{"perm", std::vector<int64_t>{0, 1, 3, 2}}});
    x.value = b.op("MatMul", {x.value, columns});
    b.info.flops_per_sample += 2 * channels * out_h * w * out_w;
  }
  x.shape = {out_h, out_w, channels};
  return x;
}

}  // namespace

void add_augmentation_layers(std::vector<LayerDef>& defs) {
  using S = std::string;
  for (const auto& [type, base, build] :
       {std::tuple<const char*, const char*, BuildFn>{"RandomBrightness", "random_brightness",
                                                      build_random_brightness},
        std::tuple<const char*, const char*, BuildFn>{"RandomContrast", "random_contrast",
                                                      build_random_contrast}})
    defs.push_back({type,
                    base,
                    {{"factor", ArgKind::number_pair, std::nullopt},
                     {"value_range", ArgKind::number_pair, std::vector<int64_t>{0, 255}},
                     {"seed", ArgKind::integer, std::nullopt, true}},
                    1,
                    1,
                    false,
                    build});
  defs.push_back({"RandomFlip",
                  "random_flip",
                  {{"mode", ArgKind::string, S("horizontal_and_vertical")},
                   {"seed", ArgKind::integer, std::nullopt, true}},
                  1,
                  1,
                  false,
                  build_random_flip});
  for (const auto& [type, base, build] :
       {std::tuple<const char*, const char*, BuildFn>{"RandomTranslation", "random_translation",
                                                      build_random_translation},
        std::tuple<const char*, const char*, BuildFn>{"RandomZoom", "random_zoom", build_random_zoom}}) {
    std::vector<ArgDecl> args = {{"height_factor", ArgKind::number_pair, std::nullopt}};
    // RandomTranslation needs both factors; RandomZoom's width follows its height when left out.
    args.push_back({"width_factor", ArgKind::number_pair, std::nullopt, std::string(type) == "RandomZoom"});
    args.insert(args.end(), {{"fill_mode", ArgKind::string, S("reflect")},
                             {"interpolation", ArgKind::string, S("bilinear")},
                             {"fill_value", ArgKind::number, 0.0},
                             {"seed", ArgKind::integer, std::nullopt, true}});
    defs.push_back({type, base, args, 1, 1, false, build});
  }
  defs.push_back({"RandomCrop",
                  "random_crop",
                  {{"height", ArgKind::integer, std::nullopt},
                   {"width", ArgKind::integer, std::nullopt},
                   {"seed", ArgKind::integer, std::nullopt, true}},
                  1,
                  1,
                  false,
                  build_random_crop});
  defs.push_back({"RandomRotation",
                  "random_rotation",
                  {{"factor", ArgKind::number_pair, std::nullopt},
                   {"fill_mode", ArgKind::string, S("reflect")},
                   {"interpolation", ArgKind::string, S("bilinear")},
                   {"fill_value", ArgKind::number, 0.0},
                   {"seed", ArgKind::integer, std::nullopt, true}},
                  1,
                  1,
                  false,
                  build_random_rotation});
}

}  // namespace trainer::models
