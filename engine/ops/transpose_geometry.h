// Transpose's geometry as both backends run it: size-1 dims dropped, and output dims that are adjacent in the
// input merged, so NCHW -> NHWC becomes a batched 2-D transpose [N, C, HW] -> [N, HW, C].
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/shape.h"

namespace trainer::engine::ops {

struct MergedTranspose {
  std::vector<int64_t> dims;  // the merged input's dims
  std::vector<int> perm;      // output dim i is merged input dim perm[i]
  // A batched 2-D transpose [batch, rows, cols] -> [batch, cols, rows] (batch 1 for rank 2)?
  bool is_batched_2d() const {
    const size_t r = dims.size();
    return r == 2 || (r == 3 && perm[0] == 0 && perm[1] == 2 && perm[2] == 1);
  }
};

// `attrs`' perm (reversed dims when absent) on input shape `in`.
inline MergedTranspose merge_transpose(const Shape& in, const Attributes& attrs) {
  std::vector<int64_t> perm = attrs.ints_or("perm", {});
  if (perm.empty())
    for (int i = in.rank() - 1; i >= 0; --i) perm.push_back(i);
  std::vector<int> keep_index(in.rank(), -1);
  std::vector<int64_t> dims;
  for (int d = 0; d < in.rank(); ++d)
    if (in[d] != 1) {
      keep_index[d] = static_cast<int>(dims.size());
      dims.push_back(in[d]);
    }
  std::vector<int> p;
  for (int64_t q : perm)
    if (keep_index[q] >= 0) p.push_back(keep_index[q]);
  std::vector<std::vector<int>> groups;  // in output order, each a run of consecutive input dims
  for (int q : p) {
    if (!groups.empty() && groups.back().back() + 1 == q)
      groups.back().push_back(q);
    else
      groups.push_back({q});
  }
  // The merged input: groups sorted by their first input dim.
  std::vector<int> order(groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return groups[x][0] < groups[y][0]; });
  MergedTranspose m;
  m.dims.resize(groups.size());
  m.perm.resize(groups.size());
  for (size_t j = 0; j < order.size(); ++j) {
    int64_t n = 1;
    for (int q : groups[order[j]]) n *= dims[q];
    m.dims[j] = n;
    m.perm[order[j]] = static_cast<int>(j);
  }
  return m;
}

}  // namespace trainer::engine::ops
