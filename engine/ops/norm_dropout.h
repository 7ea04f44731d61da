// Dropout's mask rule, shared by the Dropout and DropoutGrad kernels of every backend: the mask is a pure
// function of (seed, stream, step, element index), so backward regenerates it instead of storing it.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "engine/kernels/hd.h"
#include "engine/kernels/philox.h"

namespace trainer::engine::ops {

// The Philox stream of a Dropout node: FNV-1a of its name, stable across runs, platforms and processes.
inline uint64_t dropout_stream(std::string_view node_name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : node_name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// The attribute of a Dropout, RandomUniformLike or RandomNormalLike node (and DropoutGrad) whose tensor's
// leading axis holds several rows per sample of the batch (TimeDistributed folds its steps into the batch):
// how many. Element keys count whole samples from the replica's first (StepContext::sample_offset), so a
// replica that takes other rows of the batch draws what one device draws. Absent: 1.
inline constexpr const char* kRowsPerSample = "rows_per_sample";

// Elements per sample of such a tensor: `n` elements, `rows` along its leading axis (rank 0: 0).
inline int64_t elements_per_sample(int64_t n, int64_t rows, int64_t rows_per_sample) {
  return (rows > 0 ? n / rows : n) * rows_per_sample;
}

// The seed a Dropout node draws with: the step's seed, mixed with the node's own `seed` attribute when it has
// one.
inline uint64_t dropout_seed(uint64_t step_seed, bool has_attr, int64_t attr_seed) {
  return has_attr ? step_seed ^ static_cast<uint64_t>(attr_seed) : step_seed;
}

// Element i is kept when its uniform number is at least `ratio`: probability 1 - ratio.
TRAINER_HD bool dropout_keep(uint64_t seed, uint64_t stream, uint64_t step, uint64_t i, float ratio) {
  return kernels::philox_uniform(seed, stream, step, i) >= ratio;
}

// The same rule on a Philox word w, with integers: uniform01(w) = u / 2^24 for u = w >> 8, and ratio * 2^24
// is exact in float, so u / 2^24 >= ratio exactly when u >= ceil(ratio * 2^24). The CPU kernel compares this
// way.
inline uint32_t dropout_threshold(float ratio) {
  const double t = std::ceil(static_cast<double>(ratio) * 16777216.0);
  return t <= 0 ? 0u : static_cast<uint32_t>(t > 16777216.0 ? 16777216.0 : t);
}
TRAINER_HD bool dropout_keep_word(uint32_t w, uint32_t threshold) {
  return (w >> 8) >= threshold;
}

}  // namespace trainer::engine::ops
