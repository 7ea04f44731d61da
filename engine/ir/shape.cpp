// Shape printing and broadcasting rules.
#include "engine/ir/shape.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace trainer::engine {

std::string Shape::str() const {
  return fmt::format("[{}]", fmt::join(dims_, ", "));
}

bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out) {
  int r = std::max(a.rank(), b.rank());
  std::vector<int64_t> d(r);
  for (int i = 0; i < r; ++i) {
    int ia = a.rank() - r + i, ib = b.rank() - r + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) return false;
    d[i] = da == 1 ? db : da;
  }
  *out = Shape(std::move(d));
  return true;
}

std::vector<int64_t> broadcast_strides(const Shape& s, const Shape& out) {
  int r = out.rank();
  std::vector<int64_t> st(r, 0);
  int64_t acc = 1;
  for (int i = s.rank() - 1; i >= 0; --i) {
    int oi = r - s.rank() + i;
    st[oi] = s[i] == 1 ? 0 : acc;
    acc *= s[i];
  }
  return st;
}

int normalize_axis(int64_t axis, int rank) {
  if (axis < -rank || axis >= rank) return -1;
  return static_cast<int>(axis < 0 ? axis + rank : axis);
}

}  // namespace trainer::engine
