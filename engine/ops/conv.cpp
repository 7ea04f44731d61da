// Op family 'conv': Conv, ConvTranspose, MaxPool, AveragePool and GlobalAveragePool over 1-D and 2-D NCHW
// data, with private gradient ops (ConvGradInput, ConvGradWeight, MaxPoolGrad, AveragePoolGrad,
// GlobalAveragePoolGrad) that carry the forward window resolved into explicit pads, so backward kernels never
// redo auto_pad or ceil_mode logic; and GridSample (bilinear or nearest resampling of NCHW images at grid
// points) with GridSampleGrad.
#include <tuple>

#include "engine/ir/op_schema.h"
#include "engine/ops/conv_geometry.h"
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

std::vector<int64_t> spatial_of(const Shape& s) {
  return std::vector<int64_t>(s.dims().begin() + 2, s.dims().end());
}

void expect_spatial_rank(InferContext& c, int i) {
  if (c.rank(i) != 3 && c.rank(i) != 4)
    c.fail("{} supports 1-D and 2-D data (NCW or NCHW, rank 3 or 4), got rank {}", c.node().op, c.rank(i));
}

WindowGeometry window(InferContext& c, const Shape& x, const std::vector<int64_t>& kernel, bool ceil_mode) {
  WindowGeometry g;
  std::string err = resolve_window(c.attrs(), spatial_of(x), kernel, ceil_mode, &g);
  if (!err.empty()) c.fail("{}", err);
  return g;
}

// The resolved window as attributes of a gradient op: explicit pads, no auto_pad.
Attributes window_attrs(const WindowGeometry& g) {
  return {
      {"kernel_shape", g.kernel}, {"strides", g.stride}, {"dilations", g.dilation}, {"pads", g.onnx_pads()}};
}

// The common window attributes of every op here (auto_pad only on the ONNX ops).
OpSchema& window_schema(OpSchema& s, bool with_auto_pad) {
  if (with_auto_pad) s.attr("auto_pad", std::string("NOTSET"));
  return s.attr_optional("dilations", AttrType::ints)
      .attr_optional("pads", AttrType::ints)
      .attr_optional("strides", AttrType::ints);
}

Shape out_shape(int64_t n, int64_t c, const WindowGeometry& g) {
  std::vector<int64_t> d = {n, c};
  d.insert(d.end(), g.out.begin(), g.out.end());
  return Shape(d);
}

// ---- Conv ----

void infer_conv(InferContext& c) {
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  expect_spatial_rank(c, 0);
  c.expect_rank(1, c.rank(0));
  const Shape& x = c.shape(0);
  const Shape& w = c.shape(1);
  int64_t group = c.attrs().i("group");
  if (w.numel() == 0 || x[1] == 0) c.fail("W {} or X {} holds no values", w.str(), x.str());
  if (group < 1 || x[1] % group != 0 || w[0] % group != 0)
    c.fail("group {} must divide the input channels ({}) and the output channels ({})", group, x[1], w[0]);
  if (w[1] * group != x[1])
    c.fail("W has {} input channels per group, X has {} channels in {} groups", w[1], x[1], group);
  std::vector<int64_t> kernel = spatial_of(w);
  if (c.attrs().has("kernel_shape") && c.attrs().ints("kernel_shape") != kernel)
    c.fail("kernel_shape does not match W's spatial dims {}", w.str());
  if (c.has_input(2)) {
    c.expect_same_dtype(0, 2);
    if (c.shape(2) != Shape{w[0]}) c.fail("B must have shape [{}]", w[0]);
  }
  c.set_output(0, c.dtype(0), out_shape(x[0], w[0], window(c, x, kernel, false)));
}

void conv_grad(GradContext& c) {
  const Shape& x = c.shape(c.input(0));
  const Shape& w = c.shape(c.input(1));
  WindowGeometry geo;
  std::string err = resolve_window(c.attrs(), spatial_of(x), spatial_of(w), false, &geo);
  TRAINER_ASSERT(err.empty(), "{}", err);
  Attributes a = window_attrs(geo);
  a.set("group", c.attrs().i("group"));
  ValueId dy = c.dy();
  if (c.needs_grad(0)) {
    Attributes ai = a;
    ai.set("input_shape", x.dims());
    c.set_grad(0, c.op("ConvGradInput", {dy, c.input(1)}, ai));
  }
  bool bias = c.input(2) != kNoValue && c.needs_grad(2);
  if (c.needs_grad(1) || bias) {
    std::vector<ValueId> d = c.op_multi("ConvGradWeight", {dy, c.input(0)}, a, bias ? 2 : 1);
    c.set_grad(1, d[0]);
    if (bias) c.set_grad(2, d[1]);
  }
}

// ConvGradInput(dy, W) -> dx of shape input_shape.
void infer_conv_grad_input(InferContext& c) {
  c.expect_same_dtype(0, 1);
  expect_spatial_rank(c, 0);
  Shape x(c.attrs().ints("input_shape"));
  const Shape& w = c.shape(1);
  if (x.rank() != c.rank(0) || w.rank() != c.rank(0)) c.fail("input_shape, dy and W must have the same rank");
  WindowGeometry g = window(c, x, spatial_of(w), false);
  if (out_shape(x[0], w[0], g) != c.shape(0)) c.fail("dy does not match the convolution of {}", x.str());
  if (w[1] * c.attrs().i("group") != x[1]) c.fail("W does not match input_shape and group");
  c.set_output(0, c.dtype(0), x);
}

// ConvGradWeight(dy, x) -> dW [, dB].
void infer_conv_grad_weight(InferContext& c) {
  c.expect_same_dtype(0, 1);
  expect_spatial_rank(c, 0);
  c.expect_rank(1, c.rank(0));
  const Shape& x = c.shape(1);
  const Shape& dy = c.shape(0);
  int64_t group = c.attrs().i("group");
  const std::vector<int64_t>& kernel = c.attrs().ints("kernel_shape");
  if (group < 1 || x[1] % group != 0 || dy[1] % group != 0)
    c.fail("group {} does not divide the channels", group);
  WindowGeometry g = window(c, x, kernel, false);
  if (out_shape(x[0], dy[1], g) != dy) c.fail("dy does not match the convolution of {}", x.str());
  std::vector<int64_t> wd = {dy[1], x[1] / group};
  wd.insert(wd.end(), kernel.begin(), kernel.end());
  c.set_output(0, c.dtype(0), Shape(wd));
  if (c.has_output(1)) c.set_output(1, c.dtype(0), Shape{dy[1]});
}

OpExample conv_example(std::string label, Shape x, Shape w, bool bias, Attributes attrs, uint64_t seed) {
  std::vector<Tensor> in = {random_tensor(x, -1, 1, seed), random_tensor(w, -1, 1, seed + 1)};
  if (bias) in.push_back(random_tensor(Shape{w[0]}, -1, 1, seed + 2));
  return example(std::move(label), std::move(in), std::move(attrs));
}

std::vector<OpExample> conv_examples() {
  using V = std::vector<int64_t>;
  return {
      conv_example("3x3, pads 1, bias", {2, 3, 5, 5}, {4, 3, 3, 3}, true, {{"pads", V{1, 1, 1, 1}}}, 101),
      conv_example("strides 2, asymmetric pads", {2, 3, 5, 5}, {2, 3, 3, 2}, false,
                   {{"strides", V{2, 2}}, {"pads", V{0, 1, 1, 0}}}, 104),
      conv_example("dilations 2, bias", {2, 3, 5, 5}, {2, 3, 2, 2}, true, {{"dilations", V{2, 2}}}, 107),
      conv_example("depthwise, group 3", {2, 3, 5, 5}, {3, 1, 3, 3}, true,
                   {{"group", int64_t{3}}, {"pads", V{1, 1, 1, 1}}}, 110),
      conv_example("group 2, strides 1x2", {2, 4, 5, 5}, {4, 2, 3, 3}, true,
                   {{"group", int64_t{2}}, {"strides", V{1, 2}}, {"kernel_shape", V{3, 3}}}, 113),
      conv_example("SAME_UPPER, strides 2", {2, 3, 5, 5}, {2, 3, 2, 2}, false,
                   {{"auto_pad", std::string("SAME_UPPER")}, {"strides", V{2, 2}}}, 116),
      conv_example("SAME_LOWER", {2, 3, 5, 5}, {2, 3, 2, 2}, true, {{"auto_pad", std::string("SAME_LOWER")}},
                   119),
      conv_example("VALID, strides 2x1", {2, 3, 5, 5}, {2, 3, 3, 3}, false,
                   {{"auto_pad", std::string("VALID")}, {"strides", V{2, 1}}}, 122),
      conv_example("1-D, strides 2, pads", {2, 3, 7}, {2, 3, 3}, true, {{"strides", V{2}}, {"pads", V{1, 1}}},
                   125),
  };
}

// ---- ConvTranspose: the input gradient of a convolution from the output's shape back to the input's ----

// The convolution that ConvTranspose(x, W) is the input gradient of: its attributes (with group) and the
// ConvTranspose's output spatial sizes.
Attributes transpose_as_conv(const Attributes& a, const Shape& x, const Shape& w, std::vector<int64_t>* out,
                             std::string* err) {
  Attributes conv;
  *err = resolve_transpose(a, spatial_of(x), spatial_of(w), out, &conv);
  conv.set("group", a.i("group"));
  return conv;
}

void infer_conv_transpose(InferContext& c) {
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  expect_spatial_rank(c, 0);
  c.expect_rank(1, c.rank(0));
  const Shape& x = c.shape(0);
  const Shape& w = c.shape(1);
  const int64_t group = c.attrs().i("group");
  if (group < 1 || x[1] % group != 0) c.fail("group {} must divide the input channels ({})", group, x[1]);
  if (w[0] != x[1]) c.fail("W has {} input channels, X has {}", w[0], x[1]);
  if (c.attrs().has("kernel_shape") && c.attrs().ints("kernel_shape") != spatial_of(w))
    c.fail("kernel_shape does not match W's spatial dims {}", w.str());
  const int64_t channels = w[1] * group;
  if (c.has_input(2)) {
    c.expect_same_dtype(0, 2);
    if (c.shape(2) != Shape{channels}) c.fail("B must have shape [{}]", channels);
  }
  std::vector<int64_t> out;
  std::string err;
  transpose_as_conv(c.attrs(), x, w, &out, &err);
  if (!err.empty()) c.fail("{}", err);
  std::vector<int64_t> d = {x[0], channels};
  d.insert(d.end(), out.begin(), out.end());
  c.set_output(0, c.dtype(0), Shape(d));
}

// y = ConvGradInput of the convolution C from y's shape to x's: dx = C(dy), dW = ConvGradWeight with x as the
// convolution's output gradient and dy as its input, dB = the sum of dy over all but the channels.
void conv_transpose_grad(GradContext& c) {
  const Shape x = c.shape(c.input(0));
  const Shape w = c.shape(c.input(1));
  std::vector<int64_t> out;
  std::string err;
  Attributes conv = transpose_as_conv(c.attrs(), x, w, &out, &err);
  TRAINER_ASSERT(err.empty(), "{}", err);
  ValueId dy = c.dy();
  if (c.needs_grad(0)) c.set_grad(0, c.op("Conv", {dy, c.input(1)}, conv));
  if (c.needs_grad(1)) c.set_grad(1, c.op("ConvGradWeight", {c.input(0), dy}, conv));
  if (c.input(2) != kNoValue && c.needs_grad(2)) {
    std::vector<int64_t> axes = {0};
    for (int d = 2; d < x.rank(); ++d) axes.push_back(d);
    c.set_grad(2, c.op("ReduceSum", {dy, c.constant_i64(axes)}, {{"keepdims", int64_t{0}}}));
  }
}

std::vector<OpExample> conv_transpose_examples() {
  using V = std::vector<int64_t>;
  // The bias has C_out = W[1] * group elements.
  auto conv_example = [](std::string label, Shape x, Shape w, bool bias, Attributes attrs, uint64_t seed) {
    std::vector<Tensor> in = {random_tensor(x, -1, 1, seed), random_tensor(w, -1, 1, seed + 1)};
    const int64_t group = attrs.has("group") ? attrs.i("group") : 1;
    if (bias) in.push_back(random_tensor(Shape{w[1] * group}, -1, 1, seed + 2));
    return example(std::move(label), std::move(in), std::move(attrs));
  };
  return {
      conv_example("3x3, strides 2, pads 1, output_padding 1, bias", {2, 3, 4, 4}, {3, 2, 3, 3}, true,
                   {{"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}, {"output_padding", V{1, 1}}}, 131),
      conv_example("2x2, strides 2 (upsampling)", {2, 4, 3, 3}, {4, 3, 2, 2}, false, {{"strides", V{2, 2}}},
                   134),
      conv_example("group 2, dilations 2, bias", {2, 4, 3, 3}, {4, 1, 2, 2}, true,
                   {{"group", int64_t{2}}, {"dilations", V{2, 2}}}, 137),
      conv_example("output_shape, SAME_UPPER", {2, 2, 3, 3}, {2, 2, 3, 3}, true,
                   {{"strides", V{2, 2}}, {"output_shape", V{6, 6}}, {"auto_pad", std::string("SAME_UPPER")}},
                   140),
      conv_example("1-D, strides 3", {2, 3, 4}, {3, 2, 3}, true, {{"strides", V{3}}}, 143),
      conv_example("output_shape past the reach (zeros at the end)", {1, 2, 3, 3}, {2, 2, 3, 3}, false,
                   {{"strides", V{3, 2}}, {"output_shape", V{10, 8}}}, 146),
  };
}

// ---- Pooling ----

void infer_pool(InferContext& c, bool ceil) {
  c.expect_float(0);
  expect_spatial_rank(c, 0);
  if (c.has_output(1)) c.fail("the Indices output of MaxPool is not supported");
  const Shape& x = c.shape(0);
  WindowGeometry g = window(c, x, c.attrs().ints("kernel_shape"), ceil && c.attrs().i("ceil_mode") != 0);
  c.set_output(0, c.dtype(0), out_shape(x[0], x[1], g));
}

// The ceil_mode a gradient op gets: auto_pad's output size never uses it (resolve_window ignores it there).
int64_t grad_ceil_mode(const Attributes& a) {
  return a.s("auto_pad") == "NOTSET" ? a.i("ceil_mode") : int64_t{0};
}

Attributes pool_grad_attrs(GradContext& c) {
  const Shape& x = c.shape(c.input(0));
  WindowGeometry geo;
  std::string err = resolve_window(c.attrs(), spatial_of(x), c.attrs().ints("kernel_shape"),
                                   c.attrs().i("ceil_mode") != 0, &geo);
  TRAINER_ASSERT(err.empty(), "{}", err);
  Attributes a = window_attrs(geo);
  a.set("ceil_mode", grad_ceil_mode(c.attrs()));
  return a;
}

// Pool gradient ops: output shaped like the forward input (given as x or as input_shape).
void infer_pool_grad(InferContext& c, const Shape& x) {
  if (x.rank() != c.rank(0)) c.fail("dy and the input must have the same rank");
  WindowGeometry g = window(c, x, c.attrs().ints("kernel_shape"), c.attrs().i("ceil_mode") != 0);
  if (out_shape(x[0], x[1], g) != c.shape(0)) c.fail("dy does not match the pooling of {}", x.str());
  c.set_output(0, c.dtype(0), x);
}

OpExample pool_example(std::string label, Shape x, Attributes attrs, uint64_t seed) {
  return example(std::move(label), {random_tensor(x, -1, 1, seed)}, std::move(attrs));
}

std::vector<OpExample> pool_examples(bool average) {
  using V = std::vector<int64_t>;
  std::vector<OpExample> e = {
      pool_example("2x2, strides 2", {2, 3, 5, 5}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}}, 201),
      pool_example("3x3, strides 2, pads 1", {2, 3, 5, 5},
                   {{"kernel_shape", V{3, 3}}, {"strides", V{2, 2}}, {"pads", V{1, 1, 1, 1}}}, 202),
      pool_example("ceil_mode", {2, 3, 5, 5},
                   {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"ceil_mode", int64_t{1}}}, 203),
      pool_example("dilations 2, asymmetric pads", {2, 3, 5, 5},
                   {{"kernel_shape", V{2, 2}}, {"dilations", V{2, 2}}, {"pads", V{1, 0, 0, 1}}}, 204),
      pool_example("SAME_UPPER, strides 2", {2, 3, 5, 5},
                   {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}, {"auto_pad", std::string("SAME_UPPER")}},
                   205),
      pool_example("SAME_LOWER", {2, 3, 5, 5},
                   {{"kernel_shape", V{3, 2}}, {"auto_pad", std::string("SAME_LOWER")}}, 206),
      pool_example("1-D", {2, 3, 7}, {{"kernel_shape", V{3}}, {"strides", V{2}}}, 207),
  };
  if (average) {
    e.push_back(pool_example(
        "count_include_pad", {2, 3, 5, 5},
        {{"kernel_shape", V{3, 3}}, {"pads", V{1, 1, 1, 1}}, {"count_include_pad", int64_t{1}}}, 208));
    // The last window overhangs the explicit padding: the divisor counts only the padded extent.
    e.push_back(pool_example("ceil_mode, count_include_pad", {2, 3, 6, 6},
                             {{"kernel_shape", V{3, 3}},
                              {"strides", V{2, 2}},
                              {"pads", V{1, 1, 1, 1}},
                              {"ceil_mode", int64_t{1}},
                              {"count_include_pad", int64_t{1}}},
                             209));
  }
  return e;
}

// ---- GridSample ----

// Validates X (input x) and grid (input g) and the attributes.
void check_grid_sample(InferContext& c, int x, int g) {
  c.expect_float(x);
  c.expect_same_dtype(x, g);
  if (c.rank(x) != 4) c.fail("X must be [N, C, H, W] (rank 4), got rank {}", c.rank(x));
  const Shape& xs = c.shape(x);
  const Shape& gs = c.shape(g);
  if (gs.rank() != 4 || gs[3] != 2 || gs[0] != xs[0])
    c.fail("grid must be [N, H_out, W_out, 2] with N = {}, got {}", xs[0], gs.str());
  const std::string mode = c.attrs().s("mode");
  if (mode != "bilinear" && mode != "linear" && mode != "nearest" && mode != "bicubic" && mode != "cubic")
    c.fail("mode must be bilinear (linear), nearest or bicubic (cubic), got '{}'", mode);
  const std::string pad = c.attrs().s("padding_mode");
  if (pad != "zeros" && pad != "border" && pad != "reflection")
    c.fail("padding_mode must be zeros, border or reflection, got '{}'", pad);
}

void infer_grid_sample(InferContext& c) {
  check_grid_sample(c, 0, 1);
  const Shape& x = c.shape(0);
  const Shape& g = c.shape(1);
  c.set_output(0, c.dtype(0), Shape{x[0], x[1], g[1], g[2]});
}

std::vector<OpExample> grid_sample_examples() {
  std::vector<OpExample> out;
  const std::vector<std::tuple<const char*, const char*, int64_t, const char*>> cases = {
      {"bilinear, zeros", "bilinear", 0, "zeros"},
      {"bilinear, border, align_corners", "bilinear", 1, "border"},
      {"bilinear, reflection", "bilinear", 0, "reflection"},
      {"linear, reflection, align_corners", "linear", 1, "reflection"},
      {"nearest, zeros", "nearest", 0, "zeros"},
      {"bicubic, zeros", "bicubic", 0, "zeros"},
      {"cubic, border, align_corners", "cubic", 1, "border"},
      {"bicubic, reflection", "bicubic", 0, "reflection"}};
  uint64_t seed = 311;
  for (const auto& [label, mode, align, pad] : cases) {
    // Grid points reach past the borders, so every padding rule is exercised.
    OpExample e = example(
        label, {random_tensor({2, 3, 4, 5}, -1, 1, seed), random_tensor({2, 3, 2, 2}, -1.6, 1.6, seed + 1)},
        {{"mode", std::string(mode)}, {"align_corners", align}, {"padding_mode", std::string(pad)}});
    seed += 2;
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

void register_conv_ops(OpRegistry& r) {
  {
    OpSchema s("Conv");
    s.since(11)
        .doc("N-channel 1-D or 2-D convolution (cross-correlation) over NCHW data with OIHW weights.")
        .inputs(2, 3)
        .attr("group", int64_t{1})
        .attr_optional("kernel_shape", AttrType::ints);
    window_schema(s, true).infer(infer_conv).grad(conv_grad).examples(conv_examples);
    r.add(std::move(s));
  }
  {
    OpSchema s("ConvTranspose");
    s.since(11)
        .doc(
            "Transposed convolution over 1-D or 2-D NCHW data with weights [C_in, C_out / group, kH, kW]: "
            "the "
            "input gradient of the convolution from the output's shape back to the input's.")
        .inputs(2, 3)
        .attr("auto_pad", std::string("NOTSET"))
        .attr("group", int64_t{1})
        .attr_optional("kernel_shape", AttrType::ints)
        .attr_optional("dilations", AttrType::ints)
        .attr_optional("output_padding", AttrType::ints)
        .attr_optional("output_shape", AttrType::ints)
        .attr_optional("pads", AttrType::ints)
        .attr_optional("strides", AttrType::ints)
        .infer(infer_conv_transpose)
        .grad(conv_transpose_grad)
        .examples(conv_transpose_examples);
    r.add(std::move(s));
  }
  {
    OpSchema s("ConvGradInput", kPrivateDomain);
    s.doc("Gradient of Conv with respect to its input: (dy, W) -> dx.")
        .inputs(2, 2)
        .attr("group", int64_t{1})
        .attr_optional("kernel_shape", AttrType::ints)
        .attr_required("input_shape", AttrType::ints);
    window_schema(s, false).infer(infer_conv_grad_input).non_differentiable(kGradOpReason);
    r.add(std::move(s));
  }
  {
    OpSchema s("ConvGradWeight", kPrivateDomain);
    s.doc(
         "Gradient of Conv with respect to its weights and, as optional output 1, its bias: (dy, x) -> dW [, "
         "dB].")
        .inputs(2, 2)
        .outputs(1, 2)
        .attr("group", int64_t{1})
        .attr_required("kernel_shape", AttrType::ints);
    window_schema(s, false).infer(infer_conv_grad_weight).non_differentiable(kGradOpReason);
    r.add(std::move(s));
  }
  {
    OpSchema s("MaxPool");
    s.since(12)
        .doc(
            "Max pooling over 1-D or 2-D windows. Its Indices output is not this op's: the ONNX importer "
            "writes "
            "it with other ops.")
        .inputs(1, 1)
        .outputs(1, 2)
        .attr("ceil_mode", int64_t{0})
        .attr_required("kernel_shape", AttrType::ints)
        .attr("storage_order", int64_t{0});
    window_schema(s, true)
        .infer([](InferContext& c) { infer_pool(c, true); })
        .grad([](GradContext& c) {
          c.set_grad(0, c.op("MaxPoolGrad", {c.dy(), c.input(0)}, pool_grad_attrs(c)));
        })
        .examples([] { return pool_examples(false); });
    r.add(std::move(s));
  }
  {
    OpSchema s("MaxPoolGrad", kPrivateDomain);
    s.doc("Gradient of MaxPool: (dy, x) -> dx; each dy goes to the first maximum of its window.")
        .inputs(2, 2)
        .attr("ceil_mode", int64_t{0})
        .attr_required("kernel_shape", AttrType::ints);
    window_schema(s, false)
        .infer([](InferContext& c) {
          c.expect_same_dtype(0, 1);
          infer_pool_grad(c, c.shape(1));
        })
        .non_differentiable(kGradOpReason);
    r.add(std::move(s));
  }
  {
    OpSchema s("AveragePool");
    s.since(19)
        .doc("Average pooling over 1-D or 2-D windows; count_include_pad counts the padding in the divisor.")
        .inputs(1, 1)
        .attr("ceil_mode", int64_t{0})
        .attr("count_include_pad", int64_t{0})
        .attr_required("kernel_shape", AttrType::ints);
    window_schema(s, true)
        .infer([](InferContext& c) {
          infer_pool(c, true);
          // A window wholly in the padding would average nothing (oneDNN and cuDNN refuse it).
          const WindowGeometry g =
              window(c, c.shape(0), c.attrs().ints("kernel_shape"), c.attrs().i("ceil_mode") != 0);
          for (int i = 0; i < g.spatial; ++i)
            if (g.pad_begin[i] >= g.kernel[i] || g.pad_end[i] >= g.kernel[i])
              c.fail("pads {} must be smaller than the kernel {}", fmt::join(g.onnx_pads(), ", "),
                     fmt::join(g.kernel, ", "));
        })
        .grad([](GradContext& c) {
          Attributes a = pool_grad_attrs(c);
          a.set("count_include_pad", c.attrs().i("count_include_pad"));
          a.set("input_shape", c.shape(c.input(0)).dims());
          c.set_grad(0, c.op("AveragePoolGrad", {c.dy()}, a));
        })
        .examples([] { return pool_examples(true); });
    r.add(std::move(s));
  }
  {
    OpSchema s("AveragePoolGrad", kPrivateDomain);
    s.doc("Gradient of AveragePool: dy -> dx of shape input_shape.")
        .inputs(1, 1)
        .attr("ceil_mode", int64_t{0})
        .attr("count_include_pad", int64_t{0})
        .attr_required("kernel_shape", AttrType::ints)
        .attr_required("input_shape", AttrType::ints);
    window_schema(s, false)
        .infer([](InferContext& c) { infer_pool_grad(c, Shape(c.attrs().ints("input_shape"))); })
        .non_differentiable(kGradOpReason);
    r.add(std::move(s));
  }
  r.add(OpSchema("GridSample")
            .since(16)
            .doc("Samples X [N, C, H, W] at grid [N, H_out, W_out, 2] (x then y, normalized to [-1, 1]): "
                 "mode bilinear (linear), nearest or bicubic (cubic), padding_mode zeros, border or "
                 "reflection, align_corners.")
            .inputs(2, 2)
            .attr("align_corners", int64_t{0})
            .attr("mode", std::string("bilinear"))
            .attr("padding_mode", std::string("zeros"))
            .infer(infer_grid_sample)
            .grad([](GradContext& c) {
              Graph& g = c.graph();
              const std::string base = c.node().name + "/grad/";
              std::vector<std::string> names = {
                  c.needs_grad(0) ? g.unique_name(base + "dX") : std::string(),
                  c.needs_grad(1) ? g.unique_name(base + "dgrid") : std::string()};
              if (names[0].empty() && names[1].empty()) return;
              NodeId n = g.add_node_named("GridSampleGrad", {c.dy(), c.input(0), c.input(1)}, c.attrs(),
                                          names, g.unique_name(base + "GridSampleGrad"));
              const std::vector<ValueId> outs = g.node(n).outputs;
              for (int k = 0; k < 2; ++k)
                if (!names[k].empty()) c.set_grad(k, outs[k]);
            })
            .examples(grid_sample_examples));
  r.add(OpSchema("GridSampleGrad", kPrivateDomain)
            .doc("Gradient of GridSample: (dy, X, grid) -> dX, dgrid (each present when needed); dX sums "
                 "every output's weights in a fixed order.")
            .inputs(3, 3)
            .outputs(1, 2)
            .attr("align_corners", int64_t{0})
            .attr("mode", std::string("bilinear"))
            .attr("padding_mode", std::string("zeros"))
            .infer([](InferContext& c) {
              Shape x = c.shape(1), grid = c.shape(2);
              check_grid_sample(c, 1, 2);
              const Shape y{x[0], x[1], grid[1], grid[2]};
              if (c.shape(0) != y) c.fail("dy must be {}, got {}", y.str(), c.shape(0).str());
              c.expect_same_dtype(0, 1);
              c.set_output(0, c.dtype(1), x);
              c.set_output(1, c.dtype(2), grid);
            })
            .non_differentiable(kGradOpReason));
  r.add(OpSchema("GlobalAveragePool")
            .doc("Mean over every spatial dim: [N, C, ...] -> [N, C, 1, ...].")
            .inputs(1, 1)
            .infer([](InferContext& c) {
              c.expect_float(0);
              if (c.rank(0) < 3) c.fail("input must have rank 3 or more (N, C, spatial...)");
              std::vector<int64_t> d = c.shape(0).dims();
              for (size_t i = 2; i < d.size(); ++i) d[i] = 1;
              c.set_output(0, c.dtype(0), Shape(d));
            })
            .grad([](GradContext& c) {
              c.set_grad(
                  0, c.op("GlobalAveragePoolGrad", {c.dy()}, {{"input_shape", c.shape(c.input(0)).dims()}}));
            })
            .examples([] {
              return std::vector<OpExample>{
                  pool_example("2-D", {2, 3, 5, 5}, {}, 301),
                  pool_example("1-D", {2, 3, 4}, {}, 302),
              };
            }));
  r.add(OpSchema("GlobalAveragePoolGrad", kPrivateDomain)
            .doc("Gradient of GlobalAveragePool: dy [N, C, 1, ...] -> dx of shape input_shape.")
            .inputs(1, 1)
            .attr_required("input_shape", AttrType::ints)
            .infer([](InferContext& c) {
              Shape x(c.attrs().ints("input_shape"));
              if (x.rank() != c.rank(0) || x.rank() < 3 || x[0] != c.shape(0)[0] || x[1] != c.shape(0)[1] ||
                  c.shape(0).numel() != x[0] * x[1])
                c.fail("dy does not match input_shape {}", x.str());
              c.set_output(0, c.dtype(0), x);
            })
            .non_differentiable(kGradOpReason));
}

}  // namespace trainer::engine::ops
