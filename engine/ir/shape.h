// Static tensor shapes and numpy broadcasting.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace trainer::engine {

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  int rank() const { return static_cast<int>(dims_.size()); }
  int64_t operator[](int i) const { return dims_[i]; }
  int64_t& operator[](int i) { return dims_[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims_) n *= d;
    return n;
  }
  const std::vector<int64_t>& dims() const { return dims_; }
  std::vector<int64_t>& dims() { return dims_; }
  bool operator==(const Shape&) const = default;
  std::string str() const;  // "[2, 3, 4]"

 private:
  std::vector<int64_t> dims_;
};

// Numpy (multidirectional) broadcasting. Returns false when the shapes are incompatible.
bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out);
// Row-major strides of `s`, with stride 0 on dims broadcast to `out` (s right-aligned to out).
std::vector<int64_t> broadcast_strides(const Shape& s, const Shape& out);
// Normalizes a possibly negative axis against rank; returns -1 when out of range.
int normalize_axis(int64_t axis, int rank);

}  // namespace trainer::engine
