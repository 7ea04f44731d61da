// Philox 4x32-10 known-answer vectors (from the generator's published test values) and the uniform mapping.
#include <doctest/doctest.h>

#include <algorithm>

#include "engine/kernels/philox.h"

using namespace trainer::engine::kernels;

TEST_SUITE("rng") {
  TEST_CASE("philox4x32-10 matches the published known answers") {
    Philox4x32 z = philox4x32_10(Philox4x32{{0, 0, 0, 0}}, 0, 0);
    CHECK(z.v[0] == 0x6627e8d5u);
    CHECK(z.v[1] == 0xe169c58du);
    CHECK(z.v[2] == 0xbc57ac4cu);
    CHECK(z.v[3] == 0x9b00dbd8u);
    Philox4x32 f = philox4x32_10(Philox4x32{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
                                 0xffffffffu, 0xffffffffu);
    CHECK(f.v[0] == 0x408f276du);
    CHECK(f.v[1] == 0x41c83b0eu);
    CHECK(f.v[2] == 0xa20bc7c6u);
    CHECK(f.v[3] == 0x6d5451fdu);
    Philox4x32 p = philox4x32_10(Philox4x32{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                 0xa4093822u, 0x299f31d0u);
    CHECK(p.v[0] == 0xd16cfe09u);
    CHECK(p.v[1] == 0x94fdccebu);
    CHECK(p.v[2] == 0x5001e420u);
    CHECK(p.v[3] == 0x24126ea1u);
  }

  TEST_CASE("uniforms depend on seed, stream, step and index only, and are uniform") {
    CHECK(philox_uniform(1, 2, 3, 4) == philox_uniform(1, 2, 3, 4));
    CHECK(philox_uniform(1, 2, 3, 4) != philox_uniform(1, 2, 3, 5));
    CHECK(philox_uniform(1, 2, 3, 4) != philox_uniform(1, 2, 4, 4));
    CHECK(philox_uniform(1, 2, 3, 4) != philox_uniform(1, 3, 3, 4));
    CHECK(philox_uniform(1, 2, 3, 4) != philox_uniform(2, 2, 3, 4));
    double sum = 0;
    float lo = 1, hi = 0;
    const int n = 100000;
    for (int i = 0; i < n; ++i) {
      float u = philox_uniform(42, 0, 0, i);
      sum += u;
      lo = std::min(lo, u);
      hi = std::max(hi, u);
    }
    CHECK(sum / n == doctest::Approx(0.5).epsilon(0.01));
    CHECK(lo >= 0.0f);
    CHECK(hi < 1.0f);
  }
}
