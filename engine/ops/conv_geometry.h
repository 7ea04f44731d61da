// Sliding-window geometry shared by Conv, the pooling ops, their gradient ops and their kernels: ONNX's
// kernel, strides, dilations, pads, auto_pad and ceil_mode resolved into explicit per-dimension numbers and
// output sizes; and GridSample's geometry.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/graph.h"
#include "engine/kernels/grid_sample.h"

namespace trainer::engine::ops {

struct WindowGeometry {
  int spatial = 0;  // number of spatial dims
  std::vector<int64_t> in, kernel, stride, dilation, pad_begin, pad_end, out;

  // Extent of one window in input elements.
  int64_t span(int i) const { return dilation[i] * (kernel[i] - 1) + 1; }
  // The end padding the last window actually reaches (more than pad_end under ceil_mode, never less).
  int64_t reach_end(int i) const {
    int64_t need = (out[i] - 1) * stride[i] + span(i) - in[i] - pad_begin[i];
    return need > pad_end[i] ? need : pad_end[i];
  }
  // Pads in ONNX order: every begin, then every end.
  std::vector<int64_t> onnx_pads() const {
    std::vector<int64_t> p = pad_begin;
    p.insert(p.end(), pad_end.begin(), pad_end.end());
    return p;
  }
};

// Resolves the window of an op from its attributes (auto_pad, pads, strides, dilations; ceil_mode when
// `ceil_mode` is true). `in` and `kernel` are the spatial input and kernel sizes. Returns an error message,
// empty on success.
inline std::string resolve_window(const Attributes& a, const std::vector<int64_t>& in,
                                  const std::vector<int64_t>& kernel, bool ceil_mode, WindowGeometry* g) {
  const int n = static_cast<int>(in.size());
  if (static_cast<int>(kernel.size()) != n)
    return fmt::format("kernel has {} spatial dims, the input {}", kernel.size(), n);
  g->spatial = n;
  g->in = in;
  g->kernel = kernel;
  g->stride = a.ints_or("strides", std::vector<int64_t>(n, 1));
  g->dilation = a.ints_or("dilations", std::vector<int64_t>(n, 1));
  if (static_cast<int>(g->stride.size()) != n)
    return fmt::format("strides has {} values, expected {}", g->stride.size(), n);
  if (static_cast<int>(g->dilation.size()) != n)
    return fmt::format("dilations has {} values, expected {}", g->dilation.size(), n);
  // No window of a real model measures 2^31; larger numbers would overflow the arithmetic below.
  constexpr int64_t kLarge = int64_t{1} << 31;
  for (int i = 0; i < n; ++i) {
    if (g->stride[i] < 1) return fmt::format("strides must be positive, got {}", g->stride[i]);
    if (g->dilation[i] < 1) return fmt::format("dilations must be positive, got {}", g->dilation[i]);
    if (kernel[i] < 1) return fmt::format("kernel sizes must be positive, got {}", kernel[i]);
    if (g->stride[i] >= kLarge || g->dilation[i] >= kLarge || kernel[i] >= kLarge)
      return fmt::format("strides, dilations and kernel sizes must be below 2^31, got {}, {} and {}",
                         g->stride[i], g->dilation[i], kernel[i]);
  }
  std::string auto_pad = a.has("auto_pad") ? a.s("auto_pad") : "NOTSET";
  g->pad_begin.assign(n, 0);
  g->pad_end.assign(n, 0);
  g->out.assign(n, 0);
  if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (int i = 0; i < n; ++i) {
      g->out[i] = (in[i] + g->stride[i] - 1) / g->stride[i];
      int64_t total = (g->out[i] - 1) * g->stride[i] + g->span(i) - in[i];
      if (total < 0) total = 0;
      int64_t small = total / 2;
      g->pad_begin[i] = auto_pad == "SAME_UPPER" ? small : total - small;
      g->pad_end[i] = total - g->pad_begin[i];
    }
    return {};
  }
  if (auto_pad == "VALID") {
    ceil_mode = false;
  } else if (auto_pad == "NOTSET") {
    if (a.has("pads")) {
      const std::vector<int64_t>& p = a.ints("pads");
      if (static_cast<int>(p.size()) != 2 * n)
        return fmt::format("pads has {} values, expected {}", p.size(), 2 * n);
      for (int i = 0; i < n; ++i) {
        if (p[i] < 0 || p[n + i] < 0) return "pads must not be negative";
        if (p[i] >= kLarge || p[n + i] >= kLarge) return "pads must be below 2^31";
        g->pad_begin[i] = p[i];
        g->pad_end[i] = p[n + i];
      }
    }
  } else {
    return fmt::format("auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '{}'", auto_pad);
  }
  for (int i = 0; i < n; ++i) {
    int64_t room = in[i] + g->pad_begin[i] + g->pad_end[i] - g->span(i);
    if (room < 0)
      return fmt::format("the window ({} elements with dilation) is larger than the padded input ({})",
                         g->span(i), in[i] + g->pad_begin[i] + g->pad_end[i]);
    g->out[i] = (ceil_mode ? (room + g->stride[i] - 1) / g->stride[i] : room / g->stride[i]) + 1;
    // As in PyTorch and ONNX's reference: the last window must start inside the input or its begin padding.
    if (ceil_mode && (g->out[i] - 1) * g->stride[i] >= in[i] + g->pad_begin[i]) --g->out[i];
  }
  return {};
}

// ConvTranspose as the input gradient of a convolution: the output's spatial sizes (`out`) and the attributes
// (kernel_shape, strides, dilations, explicit pads) of the convolution whose input has the output's shape and
// whose output has the input's. ONNX's output_shape, output_padding and auto_pad are resolved as its
// definition says. Returns an error message, empty on success.
inline std::string resolve_transpose(const Attributes& a, const std::vector<int64_t>& in,
                                     const std::vector<int64_t>& kernel, std::vector<int64_t>* out,
                                     Attributes* conv) {
  const int n = static_cast<int>(in.size());
  if (static_cast<int>(kernel.size()) != n)
    return fmt::format("kernel has {} spatial dims, the input {}", kernel.size(), n);
  const std::vector<int64_t> stride = a.ints_or("strides", std::vector<int64_t>(n, 1));
  const std::vector<int64_t> dilation = a.ints_or("dilations", std::vector<int64_t>(n, 1));
  const std::vector<int64_t> extra = a.ints_or("output_padding", std::vector<int64_t>(n, 0));
  if (static_cast<int>(stride.size()) != n || static_cast<int>(dilation.size()) != n ||
      static_cast<int>(extra.size()) != n)
    return fmt::format("strides, dilations and output_padding need {} values each", n);
  const std::string auto_pad = a.has("auto_pad") ? a.s("auto_pad") : "NOTSET";
  if (auto_pad != "NOTSET" && auto_pad != "VALID" && auto_pad != "SAME_UPPER" && auto_pad != "SAME_LOWER")
    return fmt::format("auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '{}'", auto_pad);
  std::vector<int64_t> want;
  if (a.has("output_shape")) {
    want = a.ints("output_shape");
    if (static_cast<int>(want.size()) == n + 2) want.erase(want.begin(), want.begin() + 2);
    if (static_cast<int>(want.size()) != n)
      return fmt::format("output_shape has {} values, expected {}", a.ints("output_shape").size(), n);
  }
  std::vector<int64_t> pads(2 * n, 0);
  if (want.empty() && auto_pad == "NOTSET" && a.has("pads")) {
    pads = a.ints("pads");
    if (static_cast<int>(pads.size()) != 2 * n)
      return fmt::format("pads has {} values, expected {}", pads.size(), 2 * n);
  }
  out->assign(n, 0);
  for (int i = 0; i < n; ++i) {
    if (stride[i] < 1 || dilation[i] < 1 || kernel[i] < 1)
      return "strides, dilations and kernel sizes must be positive";
    if (extra[i] < 0 || extra[i] >= stride[i])
      return fmt::format("output_padding {} must be at least 0 and smaller than the stride {}", extra[i],
                         stride[i]);
    const int64_t span = dilation[i] * (kernel[i] - 1) + 1;
    const int64_t full = stride[i] * (in[i] - 1) + extra[i] + span;  // the output before padding
    if (!want.empty() || auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t size = want.empty() ? in[i] * stride[i] : want[i];
      const int64_t total = full - size;
      if (total < 0) {
        // A longer output than the input reaches: zeros at its end (ONNX's negative end padding), as more
        // output_padding would give; the convolution's floor division takes them while fewer than a stride.
        if (auto_pad == "SAME_UPPER" || extra[i] - total >= stride[i])
          return fmt::format("an output of {} elements reaches past the {} the input covers", size, full);
        (*out)[i] = size;
        continue;
      }
      const int64_t half = total / 2;
      pads[i] = auto_pad == "SAME_UPPER" ? half : total - half;
      pads[n + i] = total - pads[i];
    }
    if (pads[i] < 0 || pads[n + i] < 0) return "pads must not be negative";
    (*out)[i] = full - pads[i] - pads[n + i];
    if ((*out)[i] < 1) return fmt::format("the pads leave {} output elements", (*out)[i]);
  }
  conv->set("kernel_shape", kernel);
  conv->set("strides", stride);
  conv->set("dilations", dilation);
  conv->set("pads", pads);
  return {};
}

// ConvTranspose node n (x, W[, B]) as the ConvGradInput node that computes it without its bias: x stands for
// the convolution's output gradient, the attributes are the convolution's with input_shape = the output's
// shape. Returns false when the attributes do not resolve (shape inference reports why).
inline bool conv_transpose_as_grad_input(const Node& n, const Shape& x, const Shape& w, const Shape& y,
                                         Node* out) {
  std::vector<int64_t> spatial;
  Attributes conv;
  const std::vector<int64_t> xs(x.dims().begin() + 2, x.dims().end()),
      ws(w.dims().begin() + 2, w.dims().end());
  if (!resolve_transpose(n.attrs, xs, ws, &spatial, &conv).empty()) return false;
  *out = n;
  out->op = "ConvGradInput";
  out->inputs.resize(2);
  out->attrs = conv;
  out->attrs.set("group", n.attrs.i("group"));
  out->attrs.set("input_shape", y.dims());
  return true;
}

// GridSample's geometry from X [N, C, H, W], grid [N, H_out, W_out, 2] and the node's attributes (which shape
// inference has checked).
inline kernels::GridGeom grid_geom(const Shape& x, const Shape& grid, const Attributes& a) {
  kernels::GridGeom g;
  g.n = x[0];
  g.c = x[1];
  g.h = x[2];
  g.w = x[3];
  g.oh = grid[1];
  g.ow = grid[2];
  g.align_corners = a.i_or("align_corners", 0) != 0;
  const std::string mode = a.has("mode") ? a.s("mode") : std::string("bilinear");
  g.mode = mode == "nearest"                      ? kernels::GridMode::nearest
           : mode == "bicubic" || mode == "cubic" ? kernels::GridMode::bicubic
                                                  : kernels::GridMode::bilinear;
  const std::string pad = a.has("padding_mode") ? a.s("padding_mode") : std::string("zeros");
  g.padding = pad == "border"       ? kernels::GridPadding::border
              : pad == "reflection" ? kernels::GridPadding::reflection
                                    : kernels::GridPadding::zeros;
  return g;
}

}  // namespace trainer::engine::ops
