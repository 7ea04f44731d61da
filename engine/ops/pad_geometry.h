// Pad's geometry, shared by its shape inference and gradient rule (ops/shape.cpp) and the kernels of both
// backends: the per-dim begin and end pads from the pads and axes inputs, and the kernels' PadGeom.
#pragma once

#include <fmt/format.h>

#include <string>
#include <vector>

#include "engine/ir/graph.h"
#include "engine/kernels/pad.h"

namespace trainer::engine::ops {

// The begin and end pads of each dim of a rank-`rank` input, from the pads values (ONNX's order: the begins,
// then the ends, of the axes given, or of every dim) and the optional axes. An error message, empty on
// success.
inline std::string pad_amounts(int rank, const std::vector<int64_t>& pads, const std::vector<int64_t>* axes,
                               std::vector<int64_t>* begin, std::vector<int64_t>* end) {
  std::vector<int64_t> dims;
  if (axes) {
    for (int64_t a : *axes) {
      if (a < -rank || a >= rank) return fmt::format("axis {} is out of range for rank {}", a, rank);
      dims.push_back(a < 0 ? a + rank : a);
    }
  } else {
    for (int d = 0; d < rank; ++d) dims.push_back(d);
  }
  const size_t k = dims.size();
  if (pads.size() != 2 * k) return fmt::format("pads has {} values, expected {}", pads.size(), 2 * k);
  begin->assign(rank, 0);
  end->assign(rank, 0);
  for (size_t i = 0; i < k; ++i) {
    (*begin)[dims[i]] = pads[i];
    (*end)[dims[i]] = pads[k + i];
  }
  return {};
}

inline kernels::PadMode pad_mode(const std::string& m) {
  return m == "reflect" ? kernels::PadMode::reflect
                        : (m == "edge" ? kernels::PadMode::edge : kernels::PadMode::constant);
}

// The values of a constant 1-D integer value, or false when it is not a constant.
inline bool constant_ints(const Graph& g, ValueId v, std::vector<int64_t>* out) {
  const Tensor* t = v == kNoValue ? nullptr : g.initializer(v);
  if (!t) return false;
  out->resize(t->numel());
  for (int64_t k = 0; k < t->numel(); ++k) (*out)[k] = t->get_i64(k);
  return true;
}

// The kernels' geometry of a tensor `in` padded into `out` with the begin pads `begin`.
inline kernels::PadGeom pad_geom(const Shape& in, const Shape& out, const std::vector<int64_t>& begin) {
  kernels::PadGeom geom;
  geom.rank = in.rank();
  for (int d = 0; d < geom.rank && d < 8; ++d) {
    geom.in[d] = in[d];
    geom.out[d] = out[d];
    geom.begin[d] = begin[d];
  }
  return geom;
}

// The geometry of Pad node n (x, pads[, constant_value[, axes]]), or false when its pads or axes are not
// constants or the rank is over 8.
inline bool pad_node_geom(const Graph& g, const Node& n, kernels::PadGeom* geom) {
  const Shape& in = g.value(n.inputs[0]).shape;
  std::vector<int64_t> pads, axes, begin, end;
  const bool with_axes = n.inputs.size() > 3 && n.inputs[3] != kNoValue;
  if (in.rank() > 8 || !constant_ints(g, n.inputs[1], &pads) ||
      (with_axes && !constant_ints(g, n.inputs[3], &axes)))
    return false;
  if (!pad_amounts(in.rank(), pads, with_axes ? &axes : nullptr, &begin, &end).empty()) return false;
  *geom = pad_geom(in, g.value(n.outputs[0]).shape, begin);
  return true;
}

}  // namespace trainer::engine::ops
