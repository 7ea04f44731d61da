// Pad's index math, written once for both backends: where output element o of a padded dimension reads from,
// and, for the gradient, which outputs read input element i. A dimension of n input elements is padded by
// `begin` before and `end` after (negative values crop); the output has n + begin + end elements.
#pragma once

#include <cstdint>

#include "engine/kernels/hd.h"

namespace trainer::engine::kernels {

enum class PadMode : int { constant, reflect, edge };

// The input index that output index o reads, or -1 where it takes the constant. reflect mirrors about the
// first and last elements without repeating them (ONNX's and numpy's "reflect"; the pads are smaller than n);
// edge repeats them.
TRAINER_HD int64_t pad_source(PadMode mode, int64_t o, int64_t begin, int64_t n) {
  int64_t s = o - begin;
  if (mode == PadMode::edge) return s < 0 ? 0 : (s >= n ? n - 1 : s);
  if (mode == PadMode::reflect && n > 1) {
    if (s < 0) s = -s;
    if (s >= n) s = 2 * (n - 1) - s;
  }
  return s < 0 || s >= n ? -1 : s;
}

// The output indices that read input index i, as up to three ranges [lo[k], hi[k]] (inclusive, lo <= hi) in
// increasing order; returns their number. `out` is the output's length. The gradient kernels sum dy over
// these ranges, in this order, on both backends.
TRAINER_HD int pad_readers(PadMode mode, int64_t i, int64_t begin, int64_t n, int64_t out, int64_t* lo,
                           int64_t* hi) {
  int k = 0;
  auto add = [&](int64_t a, int64_t b) {
    if (a < 0) a = 0;
    if (b > out - 1) b = out - 1;
    if (a <= b) {
      lo[k] = a;
      hi[k] = b;
      ++k;
    }
  };
  if (mode == PadMode::edge) {
    const int64_t first = i == 0 ? 0 : i + begin;
    const int64_t last = i == n - 1 ? out - 1 : i + begin;
    add(first, last);
    return k;
  }
  if (mode == PadMode::reflect && n > 1) {
    // o reads i when o - begin is i, -i (left mirror, i > 0), or 2 (n - 1) - i (right mirror, i < n - 1).
    if (i > 0) add(begin - i, begin - i);
    add(i + begin, i + begin);
    if (i < n - 1) add(begin + 2 * (n - 1) - i, begin + 2 * (n - 1) - i);
    return k;
  }
  add(i + begin, i + begin);
  return k;
}

// A padded tensor's geometry: up to 8 dims, row-major, with each dim's input and output lengths and its begin
// pad (the end pad is out - in - begin).
struct PadGeom {
  int rank = 0;
  int64_t in[8] = {};
  int64_t out[8] = {};
  int64_t begin[8] = {};
};

// Output element `flat` (row-major over geom.out): the input element it reads, or `value`.
template <class T>
TRAINER_HD T pad_element(PadMode mode, const PadGeom& g, const T* x, T value, int64_t flat) {
  int64_t src = 0, stride = 1;
  for (int d = g.rank - 1; d >= 0; --d) {
    const int64_t o = flat % g.out[d];
    flat /= g.out[d];
    const int64_t s = pad_source(mode, o, g.begin[d], g.in[d]);
    if (s < 0) return value;
    src += s * stride;
    stride *= g.in[d];
  }
  return x[src];
}

// The gradient at input element `flat` (row-major over geom.in): the sum of dy over the outputs that read it,
// in row-major order of those outputs.
template <class T>
TRAINER_HD T pad_grad_element(PadMode mode, const PadGeom& g, const T* dy, int64_t flat) {
  int64_t lo[8][3], hi[8][3], cur[8];
  int count[8], part[8];
  for (int d = g.rank - 1; d >= 0; --d) {
    const int64_t i = flat % g.in[d];
    flat /= g.in[d];
    count[d] = pad_readers(mode, i, g.begin[d], g.in[d], g.out[d], lo[d], hi[d]);
    if (count[d] == 0) return T(0);
    part[d] = 0;
    cur[d] = lo[d][0];
  }
  T sum = T(0);
  for (;;) {
    int64_t off = 0;
    for (int d = 0; d < g.rank; ++d) off = off * g.out[d] + cur[d];
    sum += dy[off];
    // The next output position: the last dim fastest, through each dim's ranges in order.
    int d = g.rank - 1;
    for (; d >= 0; --d) {
      if (cur[d] < hi[d][part[d]]) {
        ++cur[d];
        break;
      }
      if (part[d] + 1 < count[d]) {
        ++part[d];
        cur[d] = lo[d][part[d]];
        break;
      }
      part[d] = 0;
      cur[d] = lo[d][0];
    }
    if (d < 0) return sum;
  }
}

}  // namespace trainer::engine::kernels
