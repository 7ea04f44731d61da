// Walks an output shape row by row (rows of the last dimension) and gives each input's offset and inner
// stride, so broadcasting kernels run a tight inner loop instead of a division per element.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engine/ir/shape.h"

namespace trainer::engine::cpu {

template <int N>
class BroadcastRows {
 public:
  BroadcastRows(const Shape& out, const std::array<const Shape*, N>& ins) : out_(out) {
    rank_ = out.rank();
    inner_ = rank_ ? out[rank_ - 1] : 1;
    rows_ = inner_ ? out.numel() / inner_ : 0;
    for (int k = 0; k < N; ++k) strides_[k] = broadcast_strides(*ins[k], out);
  }
  int64_t rows() const { return rows_; }
  int64_t inner() const { return inner_; }
  // Stride of input k along the last dimension: 0 (broadcast) or 1.
  int64_t inner_stride(int k) const { return rank_ ? strides_[k][rank_ - 1] : 0; }
  // Offsets of every input at the start of output row `row`.
  void offsets(int64_t row, std::array<int64_t, N>* off) const {
    off->fill(0);
    for (int d = rank_ - 2; d >= 0; --d) {
      int64_t i = row % out_[d];
      row /= out_[d];
      for (int k = 0; k < N; ++k) (*off)[k] += i * strides_[k][d];
    }
  }

 private:
  Shape out_;
  int rank_;
  int64_t inner_, rows_;
  std::array<std::vector<int64_t>, N> strides_;
};

}  // namespace trainer::engine::cpu
