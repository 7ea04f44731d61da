// Synthetic dataset generators (splitmix64-seeded, identical on every platform).
#include "engine/data/synthetic.h"

#include <cmath>

namespace trainer::engine::data {

namespace {

struct Rng {
  uint64_t s;
  double uniform() {  // [0, 1)
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
  }
};

}  // namespace

Synthetic spirals(int per_class, int classes, float noise, uint64_t seed) {
  int n = per_class * classes;
  Synthetic d{Tensor(DType::f32, Shape{n, 2}), Tensor(DType::i64, Shape{n})};
  float* x = d.x.data<float>();
  int64_t* y = d.y.data<int64_t>();
  Rng rng{seed};
  for (int c = 0; c < classes; ++c) {
    for (int i = 0; i < per_class; ++i) {
      int k = c * per_class + i;
      double r = static_cast<double>(i) / per_class;
      double t = c * 2 * M_PI / classes + r * 4.0 + noise * (rng.uniform() * 2 - 1);
      x[2 * k] = static_cast<float>(r * std::cos(t));
      x[2 * k + 1] = static_cast<float>(r * std::sin(t));
      y[k] = c;
    }
  }
  return d;
}

Synthetic first_sign_sequences(int n, int length, uint64_t seed) {
  Synthetic d{Tensor(DType::f32, Shape{n, length, 1}), Tensor(DType::i64, Shape{n})};
  float* x = d.x.data<float>();
  int64_t* y = d.y.data<int64_t>();
  Rng rng{seed};
  for (int i = 0; i < n; ++i) {
    for (int t = 0; t < length; ++t) x[i * length + t] = static_cast<float>(rng.uniform() * 2 - 1);
    y[i] = x[i * length] > 0 ? 1 : 0;
  }
  return d;
}

}  // namespace trainer::engine::data
