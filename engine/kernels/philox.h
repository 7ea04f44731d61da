// Philox 4x32-10 (Salmon et al., SC'11): a counter-based generator, so any element's random number is a pure
// function of (seed, stream, step, element) and every backend, replica count and resume sees the same stream.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/kernels/hd.h"

namespace trainer::engine::kernels {

struct Philox4x32 {
  uint32_t v[4];
};

TRAINER_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// The raw generator: 10 rounds over a 128-bit counter with a 64-bit key.
TRAINER_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo32(kM0, ctr.v[0], &hi0);
    uint32_t lo1 = mulhilo32(kM1, ctr.v[2], &hi1);
    ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// Four uniform 32-bit words for element group `index` (elements 4*index .. 4*index+3) of `step` in `stream`.
// The key is the seed mixed with the stream (one per op instance); the counter is (index, step).
TRAINER_HD Philox4x32 philox_block(uint64_t seed, uint64_t stream, uint64_t step, uint64_t index) {
  uint64_t key = seed ^ (stream * 0x9E3779B97F4A7C15ull);
  Philox4x32 ctr{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                  static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)}};
  return philox4x32_10(ctr, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// A uniform float in [0, 1) from 24 random bits: exact in float, so every backend rounds the same way.
TRAINER_HD float uniform01(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// A standard normal number for element i: Box-Muller on the first two words of block i, with u1 in (0, 1]
// so that its log is finite. Every backend evaluates this same float expression.
TRAINER_HD float philox_normal(uint64_t seed, uint64_t stream, uint64_t step, uint64_t i) {
  const Philox4x32 b = philox_block(seed, stream, step, i);
  const float u1 = static_cast<float>((b.v[0] >> 8) + 1u) * (1.0f / 16777216.0f);
  const float u2 = uniform01(b.v[1]);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530717958647692f * u2);
}

// The uniform number of element i.
TRAINER_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t step, uint64_t i) {
  Philox4x32 b = philox_block(seed, stream, step, i >> 2);
  return uniform01(b.v[i & 3]);
}

}  // namespace trainer::engine::kernels
