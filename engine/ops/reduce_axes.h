// Which axes a Reduce* node reduces: from its optional axes input (opset 13/18) or its older `axes`
// attribute, normalized and sorted. Shared by shape inference, gradient rules and the kernels, so they cannot
// disagree.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/shape.h"
#include "engine/ir/tensor.h"

namespace trainer::engine::ops {

struct ReduceAxes {
  std::vector<int> axes;  // normalized, sorted, unique
  bool identity = false;  // empty axes with noop_with_empty_axes = 1: the node copies its input
  std::string error;      // non-empty when the node is invalid
};

// `axes_input` is the value of input 1 when it is a constant; `axes_input_present` says whether input 1
// exists at all.
inline ReduceAxes resolve_reduce_axes(const Shape& in, const Attributes& attrs, const Tensor* axes_input,
                                      bool axes_input_present) {
  ReduceAxes r;
  std::vector<int64_t> raw;
  if (axes_input_present) {
    if (!axes_input) {
      r.error = "the axes input must be a constant initializer: shapes are static";
      return r;
    }
    if (attrs.has("axes")) {
      r.error = "axes are given both as an input and as an attribute";
      return r;
    }
    if (axes_input->shape().rank() > 1) {
      r.error = fmt::format("the axes input must be 1-D, got {}", axes_input->shape().str());
      return r;
    }
    for (int64_t i = 0; i < axes_input->numel(); ++i) raw.push_back(axes_input->get_i64(i));
  } else if (attrs.has("axes")) {
    raw = attrs.ints("axes");
  }
  if (raw.empty()) {
    if (attrs.i_or("noop_with_empty_axes", 0) != 0) {
      r.identity = true;
      return r;
    }
    for (int i = 0; i < in.rank(); ++i) r.axes.push_back(i);
    return r;
  }
  for (int64_t a : raw) {
    int n = normalize_axis(a, in.rank());
    if (n < 0) {
      r.error = fmt::format("axis {} is out of range for rank {}", a, in.rank());
      return r;
    }
    if (std::find(r.axes.begin(), r.axes.end(), n) != r.axes.end()) {
      r.error = fmt::format("axis {} is given twice", a);
      return r;
    }
    r.axes.push_back(n);
  }
  std::sort(r.axes.begin(), r.axes.end());
  return r;
}

// The output shape: reduced dims become 1 (keepdims) or disappear.
inline Shape reduced_shape(const Shape& in, const std::vector<int>& axes, bool keepdims) {
  std::vector<int64_t> d;
  for (int i = 0; i < in.rank(); ++i) {
    bool red = std::find(axes.begin(), axes.end(), i) != axes.end();
    if (!red)
      d.push_back(in[i]);
    else if (keepdims)
      d.push_back(1);
  }
  return Shape(std::move(d));
}

}  // namespace trainer::engine::ops
