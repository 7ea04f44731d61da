// Keras's initializers: orthogonal is orthogonal, variance scaling has its variance and bounds, constants are
// constant, the LSTM forget gate starts at 1, and every weight is a function of (seed, weight name) only.
#include <doctest/doctest.h>

#include <cmath>

#include "models/initializers.h"
#include "spec_builder.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::models;
using models::testing::Spec;

namespace {

const Tensor& weight(const BuiltModel& m, const std::string& name) {
  ValueId v = m.graph.find(name);
  REQUIRE_MESSAGE(v != kNoValue, name);
  return *m.graph.initializer(v);
}

// Largest |(A^T A - I)_ij| for A viewed as rows x cols (columns orthonormal), or of A A^T when `by_rows`.
double orthonormality_error(const Tensor& t, int64_t rows, int64_t cols, bool by_rows) {
  const int64_t n = by_rows ? rows : cols, len = by_rows ? cols : rows;
  auto at = [&](int64_t vec, int64_t k) {
    return by_rows ? t.get_f64(vec * cols + k) : t.get_f64(k * cols + vec);
  };
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int64_t k = 0; k < len; ++k) dot += at(i, k) * at(j, k);
      worst = std::max(worst, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

struct Stats {
  double mean = 0, variance = 0, max_abs = 0;
};

Stats stats(const Tensor& t) {
  Stats s;
  for (int64_t i = 0; i < t.numel(); ++i) s.mean += t.get_f64(i);
  s.mean /= static_cast<double>(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) {
    double d = t.get_f64(i) - s.mean;
    s.variance += d * d;
    s.max_abs = std::max(s.max_abs, std::abs(t.get_f64(i)));
  }
  s.variance /= static_cast<double>(t.numel());
  return s;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

TEST_SUITE("init") {
  TEST_CASE("init: orthogonal has orthonormal columns when tall and orthonormal rows when wide") {
    Tensor tall = orthogonal(Shape{40, 12}, 40, 12, 3, DType::f64);
    CHECK(orthonormality_error(tall, 40, 12, false) < 1e-12);
    Tensor wide = orthogonal(Shape{5, 9}, 5, 9, 4, DType::f64);
    CHECK(orthonormality_error(wide, 5, 9, true) < 1e-12);
    Tensor square = orthogonal(Shape{1, 16, 16}, 16, 16, 5, DType::f32);
    CHECK(orthonormality_error(square, 16, 16, false) < 1e-5);
    CHECK(orthonormality_error(square, 16, 16, true) < 1e-5);
    // Not a trivial answer (identity, permutation): entries are spread.
    CHECK(stats(square).max_abs < 0.9);
  }

  TEST_CASE("init: LSTM and GRU recurrent kernels are orthogonal; the LSTM forget gate bias starts at 1") {
    Spec s({7, 5});
    s.add("LSTM", {{"units", int64_t{16}}, {"return_sequences", true}}).add("GRU", {{"units", int64_t{8}}});
    BuiltModel m = models::testing::build(s);
    // [1, gates * units, units]: Keras's [units, gates * units] transposed, so the columns are orthonormal.
    CHECK(orthonormality_error(weight(m, "lstm/recurrent_kernel"), 64, 16, false) < 1e-5);
    CHECK(orthonormality_error(weight(m, "gru/recurrent_kernel"), 24, 8, false) < 1e-5);
    const Tensor& bias = weight(m, "lstm/bias");
    REQUIRE(bias.shape() == Shape{1, 64});
    // ONNX gate order i, o, f, c: the forget gate is the third block.
    for (int64_t i = 0; i < 64; ++i) CHECK(bias.get_f64(i) == (i >= 32 && i < 48 ? 1.0 : 0.0));
    const Tensor& gru_bias = weight(m, "gru/bias");
    for (int64_t i = 0; i < gru_bias.numel(); ++i) CHECK(gru_bias.get_f64(i) == 0.0);

    Spec off({7, 5});
    off.add("LSTM", {{"units", int64_t{4}}, {"unit_forget_bias", false}});
    BuiltModel n = models::testing::build(off);
    CHECK(stats(weight(n, "lstm/bias")).max_abs == 0.0);
  }

  TEST_CASE("init: glorot_uniform and he_normal have Keras's bounds and variances") {
    Spec s({300});
    s.add("Dense", {{"units", int64_t{200}}}, "g")
        .add("Dense", {{"units", int64_t{400}}, {"kernel_initializer", std::string("he_normal")}}, "h")
        .add("Dense", {{"units", int64_t{100}}, {"kernel_initializer", std::string("GlorotNormal")}}, "n");
    BuiltModel m = models::testing::build(s);
    const double limit = std::sqrt(6.0 / 500.0);
    Stats g = stats(weight(m, "g/kernel"));
    CHECK(g.max_abs <= limit);
    CHECK(g.max_abs > 0.99 * limit);
    CHECK(std::abs(g.mean) < 0.01 * limit);
    CHECK(g.variance == doctest::Approx(limit * limit / 3).epsilon(0.03).scale(0));
    // Truncated normal scaled so that the variance is 2 / fan_in, cut at two of its standard deviations.
    Stats h = stats(weight(m, "h/kernel"));
    CHECK(h.variance == doctest::Approx(2.0 / 200).epsilon(0.03).scale(0));
    CHECK(h.max_abs <= 2 * std::sqrt(2.0 / 200) / 0.87962566103423978 + 1e-6);
    Stats n = stats(weight(m, "n/kernel"));
    CHECK(n.variance == doctest::Approx(2.0 / 500).epsilon(0.05).scale(0));
    CHECK(stats(weight(m, "g/bias")).max_abs == 0.0);
  }

  TEST_CASE("init: zeros, ones and uniform; embeddings default to uniform(-0.05, 0.05)") {
    Spec s({6}, "int64");
    s.add("Embedding", {{"input_dim", int64_t{100}}, {"output_dim", int64_t{50}}})
        .add("Flatten")
        .add("Dense", {{"units", int64_t{3}},
                       {"kernel_initializer", std::string("Zeros")},
                       {"bias_initializer", std::string("ones")}})
        .add("BatchNormalization", {{"gamma_initializer", std::string("uniform")}});
    BuiltModel m = models::testing::build(s);
    Stats e = stats(weight(m, "embedding/embeddings"));
    CHECK(e.max_abs <= 0.05);
    CHECK(e.max_abs > 0.049);
    CHECK(e.variance == doctest::Approx(0.1 * 0.1 / 12).epsilon(0.05).scale(0));
    CHECK(stats(weight(m, "dense/kernel")).max_abs == 0.0);
    const Tensor& b = weight(m, "dense/bias");
    for (int64_t i = 0; i < b.numel(); ++i) CHECK(b.get_f64(i) == 1.0);
    CHECK(weight(m, "batch_normalization/moving_variance").get_f64(0) == 1.0);
    CHECK(weight(m, "batch_normalization/moving_mean").get_f64(0) == 0.0);
    CHECK(stats(weight(m, "batch_normalization/gamma")).max_abs <= 0.05);
  }

  TEST_CASE("init: Keras's initializer calls take their arguments") {
    auto kernel = [](const std::string& init, uint64_t seed = 1) {
      Spec s({300});
      s.add("Dense", {{"units", int64_t{200}}, {"kernel_initializer", init}}, "d");
      return weight(models::testing::build(s, false, 4, seed), "d/kernel");
    };
    Stats n = stats(kernel("RandomNormal(mean=1.0, stddev=0.02)"));
    CHECK(n.mean == doctest::Approx(1.0).epsilon(0.001));
    CHECK(std::sqrt(n.variance) == doctest::Approx(0.02).epsilon(0.03));
    Stats u = stats(kernel("random_uniform(0.1, 0.3)"));  // by position: minval, maxval
    CHECK(u.mean == doctest::Approx(0.2).epsilon(0.01));
    CHECK(u.max_abs <= 0.3);
    const Tensor c = kernel("Constant(0.25)");
    for (int64_t i = 0; i < c.numel(); i += 997) CHECK(c.get_f64(i) == 0.25);
    // VarianceScaling spells out the named ones: he_uniform is scale 2, fan_in, uniform.
    CHECK(same_bytes(kernel("VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')"),
                     kernel("he_uniform")));
    CHECK(same_bytes(kernel("variance_scaling"), kernel("lecun_normal")));
    Stats o = stats(kernel("VarianceScaling(mode=\"fan_out\", distribution=\"untruncated_normal\")"));
    CHECK(o.variance == doctest::Approx(1.0 / 200).epsilon(0.05).scale(0));
    // A seeded initializer draws the same values whatever the model's seed; an unseeded one does not.
    CHECK(same_bytes(kernel("HeNormal(seed=7)", 1), kernel("he_normal(seed=7)", 2)));
    CHECK(!same_bytes(kernel("he_normal", 1), kernel("he_normal", 2)));
    CHECK(canonical_initializer_call("RandomNormal(0.0, 0.02)") == "random_normal(mean=0, stddev=0.02)");
    CHECK(canonical_initializer_call(" RandomNormal (stddev=0.02, seed=None,) ") ==
          "random_normal(stddev=0.02)");
    CHECK(
        same_bytes(kernel(" RandomNormal (stddev=0.02, seed=None,) "), kernel("random_normal(stddev=0.02)")));
    for (const char* bad : {"RandomNormal(std=0.1)", "VarianceScaling(mode='fan_sideways')",
                            "HeNormal(seed=-1)", "RandomNormal(stddev=0)", "Zeros(1)", "Constant(0.1"}) {
      CAPTURE(bad);
      CHECK_THROWS_AS(kernel(bad), InputError);
    }
  }

  TEST_CASE("init: weights depend on the seed and their own name only") {
    auto model = [](bool extra_layer) {
      Spec s({6, 5});
      if (extra_layer) s.add("Dense", {{"units", int64_t{5}}}, "extra");
      s.add("LSTM", {{"units", int64_t{4}}}, "rnn")
          .add("Dense", {{"units", int64_t{3}}}, "head")
          .add("BatchNormalization", {{"gamma_initializer", std::string("he_uniform")}}, "bn");
      return s;
    };
    BuiltModel a = models::testing::build(model(false), false, 4, 11);
    BuiltModel b = models::testing::build(model(false), false, 4, 11);
    BuiltModel c = models::testing::build(model(false), false, 4, 12);
    BuiltModel d = models::testing::build(model(true), false, 4, 11);
    for (const char* name : {"rnn/kernel", "rnn/recurrent_kernel", "head/kernel", "bn/gamma"}) {
      CAPTURE(name);
      CHECK(same_bytes(weight(a, name), weight(b, name)));
      CHECK_FALSE(same_bytes(weight(a, name), weight(c, name)));
      CHECK(same_bytes(weight(a, name), weight(d, name)));
    }
    // Two weights of one layer with one initializer are not drawn from one stream.
    Spec twin({4});
    twin.add("Dense", {{"units", int64_t{4}},
                       {"kernel_initializer", std::string("uniform")},
                       {"bias_initializer", std::string("uniform")}});
    BuiltModel t = models::testing::build(twin);
    const Tensor &kernel = weight(t, "dense/kernel"), &bias = weight(t, "dense/bias");
    int same = 0;
    for (int64_t i = 0; i < 4; ++i) same += kernel.get_f64(i) == bias.get_f64(i);
    CHECK(same == 0);
  }

  TEST_CASE("init: initializer names: snake_case, Keras class names and aliases") {
    CHECK(canonical_initializer("glorot_uniform") == "glorot_uniform");
    CHECK(canonical_initializer("GlorotUniform") == "glorot_uniform");
    CHECK(canonical_initializer("uniform") == "random_uniform");
    CHECK(canonical_initializer("RandomNormal") == "random_normal");
    CHECK(canonical_initializer("Orthogonal") == "orthogonal");
    CHECK(canonical_initializer("xavier") == "");
  }
}
