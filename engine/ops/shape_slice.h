// ONNX Slice geometry: starts/ends/axes/steps clamped exactly as ONNX does, resolved to a start, step and
// count per input dimension. Shared by Slice's shape inference and its kernel, and stored on SliceGrad as
// attributes.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/shape.h"
#include "engine/ir/tensor.h"

namespace trainer::engine::ops {

struct SliceDims {
  std::vector<int64_t> start, step, count;  // one per input dimension
};

// Empty `axes` means 0..len(starts)-1; empty `steps` means all 1. Returns an error message, or "" on success.
inline std::string slice_geometry(const Shape& in, const std::vector<int64_t>& starts,
                                  const std::vector<int64_t>& ends, std::vector<int64_t> axes,
                                  std::vector<int64_t> steps, SliceDims* out) {
  size_t k = starts.size();
  if (ends.size() != k) return fmt::format("{} starts but {} ends", k, ends.size());
  if (axes.empty())
    for (size_t i = 0; i < k; ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(k, 1);
  if (axes.size() != k) return fmt::format("{} starts but {} axes", k, axes.size());
  if (steps.size() != k) return fmt::format("{} starts but {} steps", k, steps.size());
  int r = in.rank();
  out->start.assign(r, 0);
  out->step.assign(r, 1);
  out->count = in.dims();
  std::vector<bool> seen(r, false);
  for (size_t i = 0; i < k; ++i) {
    int a = normalize_axis(axes[i], r);
    if (a < 0) return fmt::format("axis {} is out of range for rank {}", axes[i], r);
    if (seen[a]) return fmt::format("axis {} is given twice", axes[i]);
    seen[a] = true;
    int64_t d = in[a], st = steps[i];
    if (st == 0) return fmt::format("the step of axis {} is 0", axes[i]);
    // Bounds beyond the dimension are clamped (exporters write INT64_MAX / INT64_MIN for "to the end").
    int64_t s = starts[i], e = ends[i];
    if (s < 0) s += d;
    if (e < 0) e += d;
    int64_t cnt;
    if (st > 0) {
      s = std::clamp<int64_t>(s, 0, d);
      e = std::clamp<int64_t>(e, 0, d);
      cnt = e > s ? (e - s + st - 1) / st : 0;
    } else {
      s = std::clamp<int64_t>(s, -1, d - 1);
      e = std::clamp<int64_t>(e, -1, d - 1);
      cnt = s > e ? (s - e + (-st) - 1) / (-st) : 0;
    }
    out->start[a] = cnt > 0 ? s : 0;
    out->step[a] = st;
    out->count[a] = cnt;
  }
  return "";
}

// The geometry of a Slice node: inputs 1..4 (starts, ends, axes, steps) are constants (`consts[k]` their
// values, `present[k]` whether input k+1 is connected); with only the data input, the opset-1 attributes are
// used.
inline std::string slice_of_node(const Shape& in, const Attributes& attrs,
                                 const std::array<const Tensor*, 4>& consts,
                                 const std::array<bool, 4>& present, SliceDims* out) {
  std::vector<int64_t> v[4];
  if (!present[0] && !present[1]) {
    if (!attrs.has("starts") || !attrs.has("ends")) return "starts and ends are missing";
    v[0] = attrs.ints("starts");
    v[1] = attrs.ints("ends");
    v[2] = attrs.ints_or("axes", {});
  } else {
    static const char* names[4] = {"starts", "ends", "axes", "steps"};
    for (int k = 0; k < 4; ++k) {
      if (!present[k]) {
        if (k < 2) return fmt::format("input {} ({}) is missing", k + 1, names[k]);
        continue;
      }
      if (!consts[k])
        return fmt::format("input {} ({}) must be a constant initializer: shapes are static", k + 1,
                           names[k]);
      if (consts[k]->dtype() != DType::i64 && consts[k]->dtype() != DType::i32)
        return fmt::format("input {} ({}) must be i64 or i32", k + 1, names[k]);
      if (consts[k]->shape().rank() != 1) return fmt::format("input {} ({}) must be 1-D", k + 1, names[k]);
      for (int64_t i = 0; i < consts[k]->numel(); ++i) v[k].push_back(consts[k]->get_i64(i));
    }
  }
  return slice_geometry(in, v[0], v[1], v[2], v[3], out);
}

}  // namespace trainer::engine::ops
