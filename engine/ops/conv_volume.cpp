// 3-D convolution and pooling written with the 2-D ops (see conv_volume.h).
#include "engine/ops/conv_volume.h"

#include <fmt/format.h>

#include "engine/util/error.h"

namespace trainer::engine::ops {

namespace {

ValueId ints(const VolumeEmitter& e, const std::vector<int64_t>& v, const std::string& what) {
  return e.constant(Tensor::from<int64_t>(Shape{static_cast<int64_t>(v.size())}, v), what);
}

}  // namespace

ValueId conv3d_as_2d(const VolumeEmitter& e, ValueId x, const Shape& xs, ValueId w, const Shape& ws,
                     ValueId bias, const WindowGeometry& g, int64_t group) {
  TRAINER_ASSERT(xs.rank() == 5 && ws.rank() == 5 && g.spatial == 3,
                 "conv3d_as_2d takes [N, C, D, H, W], got {}", xs.str());
  const int64_t c = xs[1], h = xs[3], wd = xs[4], m = ws[0], per_group = ws[1];
  const int64_t kd = g.kernel[0], out_d = g.out[0], out_h = g.out[1], out_w = g.out[2];
  // Depth padding first (Conv pads H and W itself), then depth next to the batch: [N, Dp, C, H, W].
  ValueId v = x;
  if (g.pad_begin[0] > 0 || g.pad_end[0] > 0)
    v = e.op("Pad", {v, ints(e, {0, 0, g.pad_begin[0], 0, 0, 0, 0, g.pad_end[0], 0, 0}, "depth_pads")}, {},
             "depth_padded", false);
  v = e.op("Transpose", {v}, {{"perm", std::vector<int64_t>{0, 2, 1, 3, 4}}}, "depth_major", false);
  const Attributes conv{
      {"kernel_shape", std::vector<int64_t>{g.kernel[1], g.kernel[2]}},
      {"strides", std::vector<int64_t>{g.stride[1], g.stride[2]}},
      {"dilations", std::vector<int64_t>{g.dilation[1], g.dilation[2]}},
      {"pads", std::vector<int64_t>{g.pad_begin[1], g.pad_begin[2], g.pad_end[1], g.pad_end[2]}},
      {"group", group}};
  const ValueId planes_shape = ints(e, {-1, c, h, wd}, "planes_shape");
  ValueId sum = kNoValue;
  for (int64_t i = 0; i < kd; ++i) {
    // Tap i reads depths i * dilation + j * stride of the padded data for output depth j.
    const std::string tap = fmt::format("tap{}", i);
    const int64_t start = i * g.dilation[0], end = start + (out_d - 1) * g.stride[0] + 1;
    ValueId xi = e.op("Slice",
                      {v, ints(e, {start}, tap + "/start"), ints(e, {end}, tap + "/end"),
                       ints(e, {1}, tap + "/axis"), ints(e, {g.stride[0]}, tap + "/step")},
                      {}, tap + "/depths", false);
    xi = e.op("Reshape", {xi, planes_shape}, {}, tap + "/planes", false);
    ValueId wi = e.op("Slice",
                      {w, ints(e, {i}, tap + "/weight_start"), ints(e, {i + 1}, tap + "/weight_end"),
                       ints(e, {2}, tap + "/weight_axis")},
                      {}, tap + "/weight", false);
    wi = e.op("Reshape", {wi, ints(e, {m, per_group, g.kernel[1], g.kernel[2]}, tap + "/weight_shape")}, {},
              tap + "/weight_2d", false);
    const ValueId yi = e.op("Conv", {xi, wi}, conv, tap + "/conv", false);
    sum = sum == kNoValue ? yi : e.op("Add", {sum, yi}, {}, tap + "/sum", false);
  }
  ValueId y =
      e.op("Reshape", {sum, ints(e, {-1, out_d, m, out_h, out_w}, "volume_shape")}, {}, "volume", false);
  const bool has_bias = bias != kNoValue;
  y = e.op("Transpose", {y}, {{"perm", std::vector<int64_t>{0, 2, 1, 3, 4}}}, "channels_first", !has_bias);
  if (!has_bias) return y;
  const ValueId b = e.op("Reshape", {bias, ints(e, {m, 1, 1, 1}, "bias_shape")}, {}, "bias_column", false);
  return e.op("Add", {y, b}, {}, "biased", true);
}

ValueId conv_transpose3d_as_2d(const VolumeEmitter& e, ValueId x, const Shape& xs, ValueId w, const Shape& ws,
                               ValueId bias, const Attributes& a, std::string* err) {
  TRAINER_ASSERT(xs.rank() == 5 && ws.rank() == 5, "conv_transpose3d_as_2d takes [N, C, D, H, W], got {}",
                 xs.str());
  std::vector<int64_t> out;
  Attributes resolved;
  const std::vector<int64_t> in = {xs[2], xs[3], xs[4]}, kernel = {ws[2], ws[3], ws[4]};
  *err = resolve_transpose(a, in, kernel, &out, &resolved);
  if (!err->empty()) return kNoValue;
  const int64_t group = a.i_or("group", 1), c = xs[1], depth = xs[2], h = xs[3], wd = xs[4];
  const int64_t m = ws[1] * group;
  if (c != ws[0] || c % group != 0) {
    *err = fmt::format("the input's {} channels do not match the weight {} in {} groups", c, ws.str(), group);
    return kNoValue;
  }
  const std::vector<int64_t> stride = resolved.ints("strides"), dilation = resolved.ints("dilations"),
                             pads = resolved.ints("pads");
  const int64_t extra = a.ints_or("output_padding", std::vector<int64_t>{0, 0, 0})[0];
  // The 2-D op gets the (H, W) halves of every attribute: each axis resolves on its own, so it computes those
  // axes as the 3-D op would.
  auto tail = [](const std::vector<int64_t>& v) { return std::vector<int64_t>(v.begin() + 1, v.end()); };
  Attributes plane{{"kernel_shape", tail(kernel)},
                   {"strides", tail(stride)},
                   {"dilations", tail(dilation)},
                   {"group", group}};
  if (a.has("output_padding")) plane.set("output_padding", tail(a.ints("output_padding")));
  if (a.has("auto_pad")) plane.set("auto_pad", a.s("auto_pad"));
  if (a.has("output_shape")) {
    const std::vector<int64_t>& want = a.ints("output_shape");
    plane.set("output_shape", std::vector<int64_t>(want.end() - 2, want.end()));
  } else if (a.has("pads")) {
    const std::vector<int64_t>& p = a.ints("pads");
    plane.set("pads", std::vector<int64_t>{p[1], p[2], p[4], p[5]});
  }
  // Depth: input plane d, tap i lands at d * stride + i * dilation of the uncut axis of `uncut` elements
  // (longer than the reach when an output_shape asks for zeros at the end); the output is [pad, pad + out).
  const int64_t kd = kernel[0], spread = (depth - 1) * stride[0] + 1;
  const int64_t reach = spread + (kd - 1) * dilation[0] + extra;
  const int64_t uncut = std::max(reach, pads[0] + out[0]);
  const int64_t plane_size = m * out[1] * out[2];
  const ValueId planes =
      e.op("Reshape",
           {e.op("Transpose", {x}, {{"perm", std::vector<int64_t>{0, 2, 1, 3, 4}}}, "depth_major", false),
            ints(e, {-1, c, h, wd}, "planes_shape")},
           {}, "planes", false);
  ValueId sum = kNoValue;
  for (int64_t i = 0; i < kd; ++i) {
    const std::string tap = fmt::format("tap{}", i);
    ValueId wi = e.op("Slice",
                      {w, ints(e, {i}, tap + "/weight_start"), ints(e, {i + 1}, tap + "/weight_end"),
                       ints(e, {2}, tap + "/weight_axis")},
                      {}, tap + "/weight", false);
    wi = e.op("Reshape", {wi, ints(e, {c, ws[1], kernel[1], kernel[2]}, tap + "/weight_shape")}, {},
              tap + "/weight_2d", false);
    ValueId yi = e.op("ConvTranspose", {planes, wi}, plane, tap + "/conv", false);  // [N D, M, H', W']
    if (stride[0] > 1) {  // zeros between the planes: [N, D, 1, R] padded to [N, D, stride, R]
      yi = e.op("Reshape", {yi, ints(e, {-1, depth, 1, plane_size}, tap + "/rows_shape")}, {}, tap + "/rows",
                false);
      yi = e.op("Pad", {yi, ints(e, {0, 0, 0, 0, 0, 0, stride[0] - 1, 0}, tap + "/gaps")}, {},
                tap + "/spread", false);
      yi = e.op("Reshape", {yi, ints(e, {-1, depth * stride[0], plane_size}, tap + "/spread_shape")}, {},
                tap + "/spread_rows", false);
      yi = e.op("Slice",
                {yi, ints(e, {0}, tap + "/spread_start"), ints(e, {spread}, tap + "/spread_end"),
                 ints(e, {1}, tap + "/spread_axis")},
                {}, tap + "/spread_cut", false);
    } else {
      yi = e.op("Reshape", {yi, ints(e, {-1, depth, plane_size}, tap + "/rows_shape")}, {}, tap + "/rows",
                false);
    }
    const int64_t before = i * dilation[0], after = uncut - spread - before;
    yi = e.op("Pad", {yi, ints(e, {0, before, 0, 0, after, 0}, tap + "/place")}, {}, tap + "/placed", false);
    sum = sum == kNoValue ? yi : e.op("Add", {sum, yi}, {}, tap + "/sum", false);
  }
  ValueId y = e.op("Slice",
                   {sum, ints(e, {pads[0]}, "depth_start"), ints(e, {pads[0] + out[0]}, "depth_end"),
                    ints(e, {1}, "depth_axis")},
                   {}, "depth_cut", false);
  y = e.op("Reshape", {y, ints(e, {-1, out[0], m, out[1], out[2]}, "volume_shape")}, {}, "volume", false);
  const bool has_bias = bias != kNoValue;
  y = e.op("Transpose", {y}, {{"perm", std::vector<int64_t>{0, 2, 1, 3, 4}}}, "channels_first", !has_bias);
  if (!has_bias) return y;
  const ValueId b = e.op("Reshape", {bias, ints(e, {m, 1, 1, 1}, "bias_shape")}, {}, "bias_column", false);
  return e.op("Add", {y, b}, {}, "biased", true);
}

ValueId pool3d_as_2d(const VolumeEmitter& e, const std::string& op, ValueId x, const Shape& xs,
                     const WindowGeometry& g, bool ceil_mode, int64_t count_include_pad) {
  TRAINER_ASSERT(xs.rank() == 5 && g.spatial == 3, "pool3d_as_2d takes [N, C, D, H, W], got {}", xs.str());
  // One 2-D pass over window axes `axes` (-1: a window of 1 along that axis).
  auto pass = [&](ValueId v, std::vector<int> axes, const std::string& what, bool last) {
    std::vector<int64_t> k, st, dil, pads(4, 0);
    for (size_t j = 0; j < 2; ++j) {
      const int d = axes[j];
      k.push_back(d < 0 ? 1 : g.kernel[static_cast<size_t>(d)]);
      st.push_back(d < 0 ? 1 : g.stride[static_cast<size_t>(d)]);
      dil.push_back(d < 0 ? 1 : g.dilation[static_cast<size_t>(d)]);
      pads[j] = d < 0 ? 0 : g.pad_begin[static_cast<size_t>(d)];
      pads[j + 2] = d < 0 ? 0 : g.pad_end[static_cast<size_t>(d)];
    }
    Attributes a{{"kernel_shape", k}, {"strides", st}, {"pads", pads}};
    if (op == "MaxPool") a.set("dilations", dil);
    if (ceil_mode) a.set("ceil_mode", int64_t{1});
    if (op == "AveragePool") a.set("count_include_pad", count_include_pad);
    return e.op(op, {v}, std::move(a), what, last);
  };
  const int64_t c = xs[1], depth = xs[2];
  ValueId v =
      e.op("Reshape", {x, ints(e, {0, c * depth, xs[3], xs[4]}, "planes_shape")}, {}, "planes", false);
  v = pass(v, {1, 2}, "pooled_planes", false);
  const int64_t oh = g.out[1], ow = g.out[2];
  v = e.op("Reshape", {v, ints(e, {0, c, depth, oh * ow}, "columns_shape")}, {}, "columns", false);
  v = pass(v, {0, -1}, "pooled_depth", false);
  return e.op("Reshape", {v, ints(e, {0, c, g.out[0], oh, ow}, "volume_shape")}, {}, "volume", true);
}

}  // namespace trainer::engine::ops
