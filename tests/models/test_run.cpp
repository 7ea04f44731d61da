// Built models run on the CPU: the sample models go forward and train a few steps, and the layout conversions
// (channels-last spec, NCHW inside, CHW flatten), recurrent outputs, embeddings and BatchNorm compute what
// Keras would.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <set>

#include "engine/backend/backend.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"
#include "engine/train/training.h"
#include "models/layer_library.h"
#include "spec_builder.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::models;
using models::testing::Spec;

using namespace trainer::models::testing;

namespace {

std::vector<int64_t> v(std::initializer_list<int64_t> x) {
  return x;
}

Tensor random_input(const BuiltModel& m, uint64_t seed, int64_t vocab = 0) {
  const Value& in = m.graph.value(m.input);
  if (vocab > 0) return ops::random_int_tensor(in.shape, 0, vocab, seed, in.dtype);
  return ops::random_tensor(in.shape, -1, 1, seed, DType::f32);
}

// Runs the model forward once on `x`; returns its output.
Tensor forward(BuiltModel m, const Tensor& x) {
  m.graph.mark_output(m.output);
  auto g = std::make_shared<Graph>(std::move(m.graph));
  auto backend = make_cpu_backend();
  Session s(g, *backend);
  s.write(m.input, x);
  s.run({});
  return s.read(m.output);
}

// NHWC sample data -> the NCHW the IR input takes (what the loader does when input_channels_last is set).
Tensor to_nchw(const Tensor& nhwc) {
  const Shape& s = nhwc.shape();
  const int64_t n = s[0], h = s[1], w = s[2], c = s[3];
  Tensor out(nhwc.dtype(), Shape{n, c, h, w});
  for (int64_t b = 0; b < n; ++b)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t k = 0; k < c; ++k)
          out.set_f64(((b * c + k) * h + y) * w + x, nhwc.get_f64(((b * h + y) * w + x) * c + k));
  return out;
}

const Tensor& weight(const BuiltModel& m, const std::string& name) {
  ValueId id = m.graph.find(name);
  REQUIRE_MESSAGE(id != kNoValue, name);
  return *m.graph.initializer(id);
}

bool all_finite(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t.get_f64(i))) return false;
  return true;
}

// Trains `spec` for a few Adam steps on one fixed batch: the loss must fall. Returns the first and last
// losses.
std::pair<float, float> train_steps(const Spec& spec, int64_t batch, int64_t classes, int64_t vocab,
                                    int steps, float lr = 1e-3f, std::vector<std::string> watch = {},
                                    std::vector<Tensor>* watched = nullptr) {
  BuiltModel m = models::testing::build(spec, true, batch, 3);
  const Tensor x = random_input(m, 4, vocab);
  Graph g = std::move(m.graph);
  ValueId loss;
  ValueId y;
  Tensor labels;
  if (classes == 1) {
    // Sigmoid head: binary cross-entropy on the logits, as the fit loop fuses it.
    y = g.add_input("labels", DType::f32, Shape{batch, 1});
    labels = ops::random_int_tensor(Shape{batch, 1}, 0, 2, 9, DType::f32);
    loss = g.op("BinaryCrossEntropyWithLogits", {m.logits, y});
  } else {
    y = g.add_input("labels", DType::i64, Shape{batch});
    labels = ops::random_int_tensor(Shape{batch}, 0, classes, 9);
    loss = g.op("SoftmaxCrossEntropyLoss", {m.logits != kNoValue ? m.logits : m.output, y});
  }
  TrainingOptions opt;
  opt.optimizer.kind = "adam";
  TrainingGraph tg = build_training_graph(std::move(g), loss, opt);
  auto backend = make_cpu_backend();
  Trainer tr(std::move(tg), *backend, 5, opt);
  tr.feed(m.input, x);
  tr.feed(y, labels);
  float first = 0, last = 0;
  for (int i = 0; i < steps; ++i) {
    last = tr.step(lr);
    if (i == 0) first = last;
    CHECK(std::isfinite(last));
  }
  if (watched)
    for (const std::string& name : watch) watched->push_back(tr.parameter(name));
  return {first, last};
}

// For a model of [2, 5] token ids into a masked TokenAndPositionEmbedding 'tok' and on to a layer of 4 values
// per step: changing what a padded step holds (row 0 of the token table) changes nothing at the unmasked
// steps.
void check_padded_steps_count_for_nothing(const Spec& s) {
  const std::vector<int32_t> ids = {4, 2, 6, 0, 0, 1, 0, 3, 5, 0};
  Tensor outs[2];
  for (int k = 0; k < 2; ++k) {
    BuiltModel m = models::testing::build(s, false, 2);
    Tensor* table = m.graph.mutable_initializer(m.graph.find("tok/token_embedding/embeddings"));
    REQUIRE(table != nullptr);
    for (int64_t f = 0; f < 4; ++f) table->set_f64(f, k == 0 ? 0.3 : -2.0);
    outs[k] = forward(std::move(m), Tensor::from<int32_t>(Shape{2, 5}, ids));
  }
  int compared = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t) {
      if (ids[b * 5 + t] == 0) continue;
      for (int64_t f = 0; f < 4; ++f, ++compared)
        CHECK(outs[0].get_f64((b * 5 + t) * 4 + f) == doctest::Approx(outs[1].get_f64((b * 5 + t) * 4 + f)));
    }
  CHECK(compared == 24);
}

}  // namespace

TEST_SUITE("run") {
  TEST_CASE("run: the sample models go forward on the CPU") {
    struct Case {
      std::string name;
      Spec spec;
      int64_t vocab;
    };
    std::vector<Case> cases = {{"cifar10 cnn", cifar_cnn(), 0},
                               {"imdb lstm", imdb_lstm(40), 10000},
                               {"fashion mlp", fashion_mlp(), 0},
                               {"fashion cnn", fashion_cnn(), 0},
                               {"fashion lstm", fashion_lstm(), 0}};
    for (Case& c : cases) {
      CAPTURE(c.name);
      BuiltModel m = models::testing::build(c.spec, false, 3);
      const std::string act = m.final_activation;
      std::vector<int64_t> out_shape = m.output_shape;
      Tensor x = random_input(m, 1, c.vocab);
      Tensor y = forward(std::move(m), x);
      std::vector<int64_t> want = {3};
      want.insert(want.end(), out_shape.begin(), out_shape.end());
      CHECK(y.shape() == Shape(want));
      CHECK(all_finite(y));
      const int64_t k = out_shape.back();
      for (int64_t b = 0; b < 3; ++b) {
        double sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += y.get_f64(b * k + j);
        if (act == "softmax") CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
        if (act == "sigmoid") CHECK((sum > 0 && sum < 1));
      }
    }
  }

  TEST_CASE("run: the sample models train: the loss falls over a few Adam steps") {
    struct Case {
      std::string name;
      Spec spec;
      int64_t classes, vocab;
    };
    std::vector<Case> cases = {{"cifar10 cnn", cifar_cnn(), 10, 0},
                               {"imdb lstm", imdb_lstm(30), 1, 10000},
                               {"fashion mlp", fashion_mlp(), 10, 0},
                               {"fashion cnn", fashion_cnn(), 10, 0},
                               {"fashion lstm", fashion_lstm(), 10, 0}};
    for (Case& c : cases) {
      CAPTURE(c.name);
      auto [first, last] = train_steps(c.spec, 8, c.classes, c.vocab, 6);
      CHECK_MESSAGE(last < first, c.name << ": loss " << first << " -> " << last);
    }
  }

  TEST_CASE("run: BatchNormalization updates its moving statistics in training; Dropout trains") {
    Spec s({6, 6, 2});
    s.add("Conv2D",
          {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}, {"activation", std::string("relu")}})
        .add("BatchNormalization", {{"momentum", 0.5}})
        .add("GlobalAveragePooling2D")
        .add("Dropout", {{"rate", 0.2}})
        .add("Dense", {{"units", int64_t{3}}, {"activation", std::string("softmax")}});
    std::vector<Tensor> after;
    auto [first, last] =
        train_steps(s, 8, 3, 0, 20, 1e-2f,
                    {"batch_normalization/moving_mean", "batch_normalization/moving_variance"}, &after);
    CHECK(last < first);
    REQUIRE(after.size() == 2);
    // Initial statistics are 0 and 1; with momentum 0.5 a few steps move them most of the way to the batch's.
    bool mean_moved = false, var_moved = false;
    for (int64_t i = 0; i < 4; ++i) {
      mean_moved |= std::abs(after[0].get_f64(i)) > 1e-3;
      var_moved |= std::abs(after[1].get_f64(i) - 1.0) > 1e-3;
    }
    CHECK(mean_moved);
    CHECK(var_moved);
  }

  TEST_CASE(
      "run: Conv3D, MaxPooling3D and AveragePooling3D compute Keras's outputs on channels-last volumes") {
    // A direct loop over an NDHWC volume with Keras's "same" (the odd element of padding at the end) or
    // "valid".
    const int64_t n = 2, d = 4, h = 5, w = 3, c = 2;
    const Tensor x = ops::random_tensor(Shape{n, d, h, w, c}, -1, 1, 11, DType::f32);
    auto at = [&](int64_t b, int64_t z, int64_t y, int64_t xx, int64_t k) {
      return x.get_f64((((b * d + z) * h + y) * w + xx) * c + k);
    };
    struct Window {
      std::vector<int64_t> k, s, out, pad;
    };
    auto window = [&](std::vector<int64_t> k, std::vector<int64_t> st, bool same) {
      Window win{k, st, {}, {}};
      const int64_t in[3] = {d, h, w};
      for (int i = 0; i < 3; ++i) {
        const int64_t out = same ? (in[i] + st[i] - 1) / st[i] : (in[i] - k[i]) / st[i] + 1;
        win.out.push_back(out);
        win.pad.push_back(same ? std::max<int64_t>((out - 1) * st[i] + k[i] - in[i], 0) / 2 : 0);
      }
      return win;
    };
    SUBCASE("Conv3D, padding same, strides (1, 2, 1), a bias") {
      Spec s({d, h, w, c});
      s.add("Conv3D", {{"filters", int64_t{3}},
                       {"kernel_size", v({2, 3, 2})},
                       {"strides", v({1, 2, 1})},
                       {"padding", std::string("same")},
                       {"bias_initializer", std::string("uniform")}});
      BuiltModel m = models::testing::build(s, false, n);
      CHECK_FALSE(m.input_channels_last);
      const Tensor k = weight(m, "conv3d/kernel"), bias = weight(m, "conv3d/bias");  // [3, 2, 2, 3, 2]
      REQUIRE(k.shape() == Shape{3, 2, 2, 3, 2});
      const Window win = window({2, 3, 2}, {1, 2, 1}, true);
      const Tensor y = forward(std::move(m), x);
      REQUIRE(y.shape() == Shape{n, win.out[0], win.out[1], win.out[2], 3});
      int64_t i = 0;
      for (int64_t b = 0; b < n; ++b)
        for (int64_t oz = 0; oz < win.out[0]; ++oz)
          for (int64_t oy = 0; oy < win.out[1]; ++oy)
            for (int64_t ox = 0; ox < win.out[2]; ++ox)
              for (int64_t f = 0; f < 3; ++f, ++i) {
                double want = bias.get_f64(f);
                for (int64_t kz = 0; kz < 2; ++kz)
                  for (int64_t ky = 0; ky < 3; ++ky)
                    for (int64_t kx = 0; kx < 2; ++kx) {
                      const int64_t z = oz - win.pad[0] + kz, y0 = oy * 2 - win.pad[1] + ky,
                                    x0 = ox - win.pad[2] + kx;
                      if (z < 0 || z >= d || y0 < 0 || y0 >= h || x0 < 0 || x0 >= w) continue;
                      for (int64_t ch = 0; ch < c; ++ch)
                        want += at(b, z, y0, x0, ch) * k.get_f64((((f * c + ch) * 2 + kz) * 3 + ky) * 2 + kx);
                    }
                CHECK_MESSAGE(y.get_f64(i) == doctest::Approx(want).epsilon(1e-5), "output " << i);
              }
    }
    SUBCASE("MaxPooling3D and AveragePooling3D, padding same and valid") {
      for (const char* type : {"MaxPooling3D", "AveragePooling3D"})
        for (bool same : {true, false}) {
          CAPTURE(type);
          CAPTURE(same);
          Spec s({d, h, w, c});
          s.add(type, {{"pool_size", v({2, 2, 2})},
                       {"strides", v({2, 2, 1})},
                       {"padding", std::string(same ? "same" : "valid")}});
          const Window win = window({2, 2, 2}, {2, 2, 1}, same);
          const Tensor y = forward(models::testing::build(s, false, n), x);
          REQUIRE(y.shape() == Shape{n, win.out[0], win.out[1], win.out[2], c});
          const bool max = std::string(type) == "MaxPooling3D";
          int64_t i = 0;
          for (int64_t b = 0; b < n; ++b)
            for (int64_t oz = 0; oz < win.out[0]; ++oz)
              for (int64_t oy = 0; oy < win.out[1]; ++oy)
                for (int64_t ox = 0; ox < win.out[2]; ++ox)
                  for (int64_t ch = 0; ch < c; ++ch, ++i) {
                    double acc = max ? -1e30 : 0;
                    int count = 0;
                    for (int64_t kz = 0; kz < 2; ++kz)
                      for (int64_t ky = 0; ky < 2; ++ky)
                        for (int64_t kx = 0; kx < 2; ++kx) {
                          const int64_t z = oz * 2 - win.pad[0] + kz, y0 = oy * 2 - win.pad[1] + ky,
                                        x0 = ox - win.pad[2] + kx;
                          if (z < 0 || z >= d || y0 < 0 || y0 >= h || x0 < 0 || x0 >= w) continue;
                          acc = max ? std::max(acc, at(b, z, y0, x0, ch)) : acc + at(b, z, y0, x0, ch);
                          ++count;
                        }
                    CHECK(y.get_f64(i) == doctest::Approx(max ? acc : acc / count).epsilon(1e-5));
                  }
        }
    }
  }

  TEST_CASE("run: ZeroPadding3D, Cropping3D, UpSampling3D and GlobalAveragePooling3D move Keras's elements") {
    const Tensor x = ops::random_tensor(Shape{1, 2, 3, 2, 2}, -1, 1, 12, DType::f32);  // NDHWC
    auto at = [&](int64_t z, int64_t y, int64_t xx, int64_t k) {
      return x.get_f64(((z * 3 + y) * 2 + xx) * 2 + k);
    };
    {
      Spec s({2, 3, 2, 2});
      s.add("ZeroPadding3D", {{"padding", v({1, 0, 0, 0, 2, 1})}})
          .add("Cropping3D", {{"cropping", v({1, 0, 0, 1, 2, 0})}});
      const Tensor y = forward(models::testing::build(s, false, 1), x);
      // Padded to 3 x 3 x 5 (front 1, left 2, right 1), then cropped to 2 x 2 x 3 (front 1, bottom 1, left
      // 2): what is left is the original volume's first two rows, all depths, and its two columns plus a
      // zero.
      REQUIRE(y.shape() == Shape{1, 2, 2, 3, 2});
      for (int64_t z = 0; z < 2; ++z)
        for (int64_t yy = 0; yy < 2; ++yy)
          for (int64_t xx = 0; xx < 3; ++xx)
            for (int64_t k = 0; k < 2; ++k)
              CHECK(y.get_f64(((z * 2 + yy) * 3 + xx) * 2 + k) ==
                    (xx < 2 ? doctest::Approx(at(z, yy, xx, k)) : 0));
    }
    {
      Spec s({2, 3, 2, 2});
      s.add("UpSampling3D", {{"size", v({2, 1, 3})}});
      const Tensor y = forward(models::testing::build(s, false, 1), x);
      REQUIRE(y.shape() == Shape{1, 4, 3, 6, 2});
      for (int64_t z = 0; z < 4; ++z)
        for (int64_t yy = 0; yy < 3; ++yy)
          for (int64_t xx = 0; xx < 6; ++xx)
            for (int64_t k = 0; k < 2; ++k)
              CHECK(y.get_f64(((z * 3 + yy) * 6 + xx) * 2 + k) == doctest::Approx(at(z / 2, yy, xx / 3, k)));
    }
    {
      Spec s({2, 3, 2, 2});
      s.add("Conv3D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{1}}, {"use_bias", false}})
          .add("GlobalAveragePooling3D");
      BuiltModel m = models::testing::build(s, false, 1);
      const Tensor k = weight(m, "conv3d/kernel");
      const Tensor y = forward(std::move(m), x);
      REQUIRE(y.shape() == Shape{1, 2});
      for (int64_t f = 0; f < 2; ++f) {
        double want = 0;
        for (int64_t p = 0; p < 12; ++p)
          for (int64_t ch = 0; ch < 2; ++ch) want += x.get_f64(p * 2 + ch) * k.get_f64(f * 2 + ch) / 12;
        CHECK(y.get_f64(f) == doctest::Approx(want).epsilon(1e-5));
      }
    }
  }

  TEST_CASE("run: TimeDistributed applies its layer to every step with the same weights") {
    // Frames [T, H, W, C] through TimeDistributed(Conv2D 1x1): each frame's pixels times the kernel.
    Spec s({3, 2, 2, 2});
    s.add("TimeDistributed", {{"layer", std::string("Conv2D")},
                              {"filters", int64_t{2}},
                              {"kernel_size", int64_t{1}},
                              {"bias_initializer", std::string("uniform")}});
    BuiltModel m = models::testing::build(s, false, 2);
    REQUIRE(m.layers.at(0).output_shape == v({3, 2, 2, 2}));
    const Tensor k = weight(m, "time_distributed/kernel"), bias = weight(m, "time_distributed/bias");
    const Tensor x = ops::random_tensor(Shape{2, 3, 2, 2, 2}, -1, 1, 13, DType::f32);
    const Tensor y = forward(std::move(m), x);
    REQUIRE(y.shape() == Shape{2, 3, 2, 2, 2});
    for (int64_t p = 0; p < 2 * 3 * 2 * 2; ++p)  // every pixel of every frame, channels last
      for (int64_t f = 0; f < 2; ++f) {
        double want = bias.get_f64(f);
        for (int64_t ch = 0; ch < 2; ++ch) want += x.get_f64(p * 2 + ch) * k.get_f64(f * 2 + ch);
        CHECK(y.get_f64(p * 2 + f) == doctest::Approx(want).epsilon(1e-5));
      }
    // Layers that draw per-sample masks draw them per frame, and regularizers inside count.
    Spec drop({3, 2, 2, 2});
    drop.add("TimeDistributed", {{"layer", std::string("SpatialDropout2D")}, {"rate", 0.5}})
        .add("TimeDistributed", {{"layer", std::string("Dense")},
                                 {"units", int64_t{2}},
                                 {"kernel_regularizer", std::string("l2(0.5)")}});
    BuiltModel dm = models::testing::build(drop, true, 2);
    CHECK(dm.penalty != kNoValue);
    CHECK(forward(std::move(dm), x).shape() == Shape{2, 3, 2, 2, 2});
    // A video classifier: per-frame convolution and pooling, then an LSTM over the frames.
    Spec video({4, 6, 6, 1});
    video
        .add("TimeDistributed", {{"layer", std::string("Conv2D")},
                                 {"filters", int64_t{4}},
                                 {"kernel_size", int64_t{3}},
                                 {"activation", std::string("relu")}})
        .add("TimeDistributed", {{"layer", std::string("MaxPooling2D")}})
        .add("TimeDistributed", {{"layer", std::string("Flatten")}})
        .add("LSTM", {{"units", int64_t{8}}})
        .add("Dense", {{"units", int64_t{3}}, {"activation", std::string("softmax")}});
    const auto [first, last] = train_steps(video, 8, 3, 0, 30, 1e-2f);
    CHECK(last < 0.5f * first);
  }

  TEST_CASE("run: Conv3DTranspose has Keras's output sizes and spreads the input by its strides") {
    struct Case {
      std::vector<int64_t> kernel, strides;
      std::string padding;
      std::vector<int64_t> output_padding, want;
    };
    // Input 3 x 4 x 2: same gives in * strides; valid in * strides + max(kernel - strides, 0); output_padding
    // (in - 1) * strides + kernel - 2 pad + output_padding.
    const Case cases[] = {{{3, 3, 3}, {2, 1, 2}, "same", {}, {6, 4, 4}},
                          {{3, 2, 1}, {2, 1, 2}, "valid", {}, {7, 5, 4}},
                          {{3, 3, 3}, {2, 2, 2}, "same", {1, 0, 1}, {6, 7, 4}}};
    for (const Case& c : cases) {
      Spec s({3, 4, 2, 2});
      std::vector<std::pair<std::string, formats::ArgValue>> args = {
          {"filters", int64_t{2}}, {"kernel_size", c.kernel}, {"strides", c.strides}, {"padding", c.padding}};
      if (!c.output_padding.empty()) args.push_back({"output_padding", c.output_padding});
      s.add("Conv3DTranspose", args);
      BuiltModel m = models::testing::build(s, false, 1);
      CHECK(m.layers.at(0).output_shape == std::vector<int64_t>{c.want[0], c.want[1], c.want[2], 2});
      CHECK(forward(std::move(m), ops::random_tensor(Shape{1, 3, 4, 2, 2}, -1, 1, 14, DType::f32)).shape() ==
            Shape{1, c.want[0], c.want[1], c.want[2], 2});
    }
    // A 1 x 1 x 1 kernel at strides 2: each element's product lands at twice its coordinates, zeros between.
    Spec s({2, 2, 2, 1});
    s.add(
        "Conv3DTranspose",
        {{"filters", int64_t{1}}, {"kernel_size", int64_t{1}}, {"strides", int64_t{2}}, {"use_bias", false}});
    BuiltModel m = models::testing::build(s, false, 1);
    const double k = weight(m, "conv3d_transpose/kernel").get_f64(0);
    const Tensor x = ops::random_tensor(Shape{1, 2, 2, 2, 1}, -1, 1, 15, DType::f32);
    const Tensor y = forward(std::move(m), x);
    REQUIRE(y.shape() == Shape{1, 4, 4, 4, 1});
    for (int64_t z = 0; z < 4; ++z)
      for (int64_t r = 0; r < 4; ++r)
        for (int64_t q = 0; q < 4; ++q) {
          const bool hit = z % 2 == 0 && r % 2 == 0 && q % 2 == 0;
          const double want = hit ? k * x.get_f64(((z / 2) * 2 + r / 2) * 2 + q / 2) : 0.0;
          CHECK(y.get_f64((z * 4 + r) * 4 + q) == doctest::Approx(want).epsilon(1e-5));
        }
  }

  TEST_CASE("run: SpatialDropout3D drops whole channels of a volume in training; Identity passes its input") {
    Spec s({2, 3, 2, 4});
    s.add("SpatialDropout3D", {{"rate", 0.5}}).add("Identity");
    const Tensor x = ops::random_tensor(Shape{3, 2, 3, 2, 4}, 1, 2, 16, DType::f32);  // never 0
    const Tensor y = forward(models::testing::build(s, true, 3), x);
    REQUIRE(y.shape() == x.shape());
    int dropped = 0, kept = 0;
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t ch = 0; ch < 4; ++ch) {
        // Every voxel of one sample's channel shares the draw: all zero, or all scaled by 1 / (1 - rate).
        int zeros = 0;
        for (int64_t p = 0; p < 12; ++p) {
          const int64_t i = (b * 12 + p) * 4 + ch;
          if (y.get_f64(i) == 0)
            ++zeros;
          else
            CHECK(y.get_f64(i) == doctest::Approx(2 * x.get_f64(i)));
        }
        CHECK((zeros == 0 || zeros == 12));
        (zeros == 12 ? dropped : kept) += 1;
      }
    CHECK(dropped > 0);
    CHECK(kept > 0);
    const Tensor z = forward(models::testing::build(s, false, 3), x);  // inference: the identity
    for (int64_t i = 0; i < x.numel(); ++i) CHECK(z.get_f64(i) == x.get_f64(i));
  }

  TEST_CASE("run: AlphaDropout keeps or saturates each value, then shifts and scales as Keras") {
    Spec s({400});
    s.add("AlphaDropout", {{"rate", 0.25}});
    const Tensor x = ops::random_tensor(Shape{2, 400}, -1, 1, 17, DType::f32);
    const Tensor y = forward(models::testing::build(s, true, 2), x);
    const double alpha_p = -1.6732632423543772 * 1.0507009873554805, rate = 0.25;
    const double a = 1 / std::sqrt((1 - rate) * (1 + rate * alpha_p * alpha_p)), b = -a * alpha_p * rate;
    int dropped = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double kept = a * x.get_f64(i) + b, gone = a * alpha_p + b;
      const bool is_kept = std::fabs(y.get_f64(i) - kept) < 1e-5,
                 is_gone = std::fabs(y.get_f64(i) - gone) < 1e-5;
      CHECK((is_kept || is_gone));
      dropped += !is_kept;
    }
    CHECK(dropped > 120);  // a quarter of 800, give or take
    CHECK(dropped < 280);
    const Tensor z = forward(models::testing::build(s, false, 2), x);  // inference: the identity
    for (int64_t i = 0; i < x.numel(); ++i) CHECK(z.get_f64(i) == x.get_f64(i));
  }

  TEST_CASE("run: CategoryEncoding's modes and Discretization's buckets") {
    const Tensor ids = Tensor::from<int64_t>(Shape{2, 3}, {1, 3, 1, 0, 0, 2});
    const std::map<std::string, std::vector<double>> want = {{"multi_hot", {0, 1, 0, 1, 1, 0, 1, 0}},
                                                             {"count", {0, 2, 0, 1, 2, 0, 1, 0}}};
    for (const auto& [mode, values] : want) {
      Spec s({3}, "int64");
      s.add("CategoryEncoding", {{"num_tokens", int64_t{4}}, {"output_mode", mode}});
      const Tensor y = forward(models::testing::build(s, false, 2), ids);
      REQUIRE(y.shape() == Shape{2, 4});
      for (int64_t i = 0; i < 8; ++i) CHECK_MESSAGE(y.get_f64(i) == values[static_cast<size_t>(i)], mode);
    }
    Spec one({3}, "int64");
    one.add("CategoryEncoding", {{"num_tokens", int64_t{4}}, {"output_mode", std::string("one_hot")}});
    const Tensor y = forward(models::testing::build(one, false, 2), ids);
    REQUIRE(y.shape() == Shape{2, 3, 4});
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t t = 0; t < 4; ++t) CHECK(y.get_f64(i * 4 + t) == (ids.get_f64(i) == t ? 1 : 0));
    // Buckets of [0, 1, 2]: (-inf, 0) 0, [0, 1) 1, [1, 2) 2, [2, inf) 3; then one-hot rows of them.
    Spec d({4});
    d.add("Discretization", {{"bin_boundaries", std::vector<double>{0, 1, 2}}})
        .add("CategoryEncoding", {{"num_tokens", int64_t{4}}, {"output_mode", std::string("count")}});
    const Tensor x = Tensor::from<float>(Shape{1, 4}, {-0.5f, 0.0f, 1.5f, 7.0f});
    const Tensor c = forward(models::testing::build(d, false, 1), x);
    REQUIRE(c.shape() == Shape{1, 4});
    for (int64_t t = 0; t < 4; ++t) CHECK(c.get_f64(t) == 1);
    Spec unsorted({4});
    unsorted.add("Discretization", {{"bin_boundaries", std::vector<double>{1, 0}}});
    CHECK_THROWS_WITH(models::testing::build(unsorted), doctest::Contains("must be sorted"));
  }

  TEST_CASE("run: a Conv3D classifier trains") {
    Spec s({4, 6, 6, 1});
    s.add("Conv3D", {{"filters", int64_t{4}},
                     {"kernel_size", int64_t{3}},
                     {"padding", std::string("same")},
                     {"activation", std::string("relu")}})
        .add("MaxPooling3D", {{"pool_size", v({1, 2, 2})}})
        .add("Conv3D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{2}}, {"strides", int64_t{2}}})
        .add("GlobalMaxPooling3D")
        .add("Dense", {{"units", int64_t{3}}, {"activation", std::string("softmax")}});
    const auto [first, last] = train_steps(s, 8, 3, 0, 30, 1e-2f);
    CHECK(last < 0.5f * first);
    // Down and up again (a 3-D U-Net's shape) before the classifier head.
    Spec u({4, 6, 6, 1});
    u.add("Conv3D", {{"filters", int64_t{4}},
                     {"kernel_size", int64_t{3}},
                     {"strides", int64_t{2}},
                     {"padding", std::string("same")},
                     {"activation", std::string("relu")}})
        .add("Conv3DTranspose", {{"filters", int64_t{2}},
                                 {"kernel_size", int64_t{3}},
                                 {"strides", int64_t{2}},
                                 {"padding", std::string("same")},
                                 {"activation", std::string("relu")}})
        .add("GlobalAveragePooling3D")
        .add("Dense", {{"units", int64_t{3}}, {"activation", std::string("softmax")}});
    const auto [u_first, u_last] = train_steps(u, 8, 3, 0, 40, 2e-2f);
    CHECK(u_last < 0.7f * u_first);
  }

  TEST_CASE("run: a channels-last image input and a Conv2D output keep Keras's pixel and channel order") {
    Spec s({3, 2, 3});
    s.add(
        "Conv2D",
        {{"filters", int64_t{2}}, {"kernel_size", int64_t{1}}, {"bias_initializer", std::string("uniform")}});
    BuiltModel m = models::testing::build(s, false, 2);
    REQUIRE(m.input_channels_last);
    Tensor w = weight(m, "conv2d/kernel"), bias = weight(m, "conv2d/bias");  // [2, 3, 1, 1], [2]
    Tensor nhwc = ops::random_tensor(Shape{2, 3, 2, 3}, -1, 1, 8, DType::f32);
    Tensor y = forward(std::move(m), to_nchw(nhwc));
    REQUIRE(y.shape() == Shape{2, 3, 2, 2});  // NHWC, as the output shape (3, 2, 2) says
    for (int64_t p = 0; p < 2 * 3 * 2; ++p)
      for (int64_t f = 0; f < 2; ++f) {
        double want = bias.get_f64(f);
        for (int64_t c = 0; c < 3; ++c) want += nhwc.get_f64(p * 3 + c) * w.get_f64(f * 3 + c);
        CHECK(y.get_f64(p * 2 + f) == doctest::Approx(want).epsilon(1e-5));
      }
  }

  TEST_CASE("run: Reshape is row-major channels-last as in Keras; Flatten after convolutions is HWC") {
    Spec s({12});
    s.add("Reshape", {{"target_shape", v({2, 2, 3})}})
        .add("Conv2D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{1}}, {"use_bias", false}})
        .add("Flatten")
        .add("Dropout", {{"rate", 0.5}});
    BuiltModel m = models::testing::build(s, false, 1);
    Tensor w = weight(m, "conv2d/kernel");
    Tensor x = ops::random_tensor(Shape{1, 12}, -1, 1, 2, DType::f32);
    Tensor y = forward(std::move(m), x);
    REQUIRE(y.shape() == Shape{1, 8});
    // x is (h, w, c) row-major; the flattened output is (h, w, filter), as Keras's, through the Dropout.
    for (int64_t f = 0; f < 2; ++f)
      for (int64_t p = 0; p < 4; ++p) {
        double want = 0;
        for (int64_t c = 0; c < 3; ++c) want += x.get_f64(p * 3 + c) * w.get_f64(f * 3 + c);
        CHECK(y.get_f64(p * 2 + f) == doctest::Approx(want).epsilon(1e-5));
      }
  }

  TEST_CASE(
      "run: Flatten's features reach a Dense layer without a transpose, any other layer in Keras's order") {
    // The Dense layer (through elementwise layers) takes the channels-first order as it is: its kernel rows
    // meet the features in that order. A Reshape, a Concatenate and the model's output get Keras's order.
    auto transposes = [](const BuiltModel& m) { return count_ops(m.graph, "Transpose"); };
    Spec plain({6, 6, 1});
    plain.add("Conv2D", {{"filters", int64_t{4}}, {"kernel_size", int64_t{3}}}).add("MaxPooling2D");
    Spec dense = plain;
    dense.add("Flatten")
        .add("Dropout", {{"rate", 0.3}})
        .add("Activation", {{"activation", std::string("relu")}});
    dense.add("Dense", {{"units", int64_t{3}}});
    const int64_t base = transposes(models::testing::build(plain, true, 4)) - 1;  // less the output's
    CHECK(transposes(models::testing::build(dense, true, 4)) == base);
    Spec reshaped = plain;
    reshaped.add("Flatten").add("Reshape", {{"target_shape", v({4, 4})}});
    CHECK(transposes(models::testing::build(reshaped, true, 4)) == base + 1);
    // A Dense layer takes the channels-first order also when a reader of Keras's order comes first in the
    // spec (the order its kernel's rows follow does not depend on the spec's layout).
    for (bool concatenate_first : {true, false}) {
      CAPTURE(concatenate_first);
      Spec both = plain;
      both.add("Flatten", {}, "flat");
      auto concatenate = [&] {
        both.add("Dense", {{"units", int64_t{2}}}, "side", {"flat"})
            .add("Concatenate", {}, "joined", {"flat", "side"});
      };
      if (concatenate_first) concatenate();
      both.add("Dense", {{"units", int64_t{3}}}, "d", {"flat"});
      if (!concatenate_first) concatenate();
      both.add("Concatenate", {}, "all", {"joined", "d"});
      BuiltModel m = models::testing::build(both, true, 4);
      CHECK(transposes(m) == base + 1);  // the Concatenate's one
      int dense_matmuls = 0;
      for (NodeId id = 0; id < m.graph.num_nodes(); ++id) {
        const Node& n = m.graph.node(id);
        if (n.dead || n.op != "MatMul" || n.name.rfind("d/", 0) != 0) continue;
        const Node& reads = m.graph.node(m.graph.value(n.inputs[0]).producer);
        CHECK(reads.op == "Flatten");
        CHECK(reads.name.rfind("flat/", 0) == 0);
        ++dense_matmuls;
      }
      CHECK(dense_matmuls == 1);
    }
  }

  TEST_CASE("run: LSTM and GRU: the last step of return_sequences is the output without it") {
    for (const char* type : {"LSTM", "GRU"}) {
      CAPTURE(type);
      auto model = [&](bool sequences) {
        Spec s({5, 3});
        s.add(type,
              {{"units", int64_t{4}},
               {"return_sequences", sequences},
               {"bias_initializer", std::string("uniform")}},
              "rnn");
        return models::testing::build(s, false, 2);
      };
      BuiltModel seq = model(true), last = model(false);
      Tensor x = random_input(seq, 6);
      Tensor ys = forward(std::move(seq), x), yl = forward(std::move(last), x);
      REQUIRE(ys.shape() == Shape{2, 5, 4});
      REQUIRE(yl.shape() == Shape{2, 4});
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t j = 0; j < 4; ++j)
          CHECK(ys.get_f64((b * 5 + 4) * 4 + j) == doctest::Approx(yl.get_f64(b * 4 + j)));
      bool nonzero = false;
      for (int64_t i = 0; i < yl.numel(); ++i) nonzero |= std::abs(yl.get_f64(i)) > 1e-3;
      CHECK(nonzero);
    }
  }

  TEST_CASE("run: SimpleRNN computes h = activation(x W + h U + b) at every step") {
    for (const char* act : {"tanh", "relu"}) {
      CAPTURE(act);
      const int64_t steps = 4, features = 3, units = 2, n = 2;
      Spec s({steps, features});
      s.add("SimpleRNN", {{"units", units},
                          {"activation", std::string(act)},
                          {"return_sequences", true},
                          {"bias_initializer", std::string("uniform")}});
      BuiltModel m = models::testing::build(s, false, n);
      const Tensor w = weight(m, "simple_rnn/kernel"), r = weight(m, "simple_rnn/recurrent_kernel");
      const Tensor bias = weight(m, "simple_rnn/bias");
      Tensor x = random_input(m, 7);
      Tensor y = forward(std::move(m), x);
      REQUIRE(y.shape() == Shape{n, steps, units});
      for (int64_t b = 0; b < n; ++b) {
        std::vector<double> h(units, 0.0);
        for (int64_t t = 0; t < steps; ++t) {
          std::vector<double> next(units);
          for (int64_t u = 0; u < units; ++u) {
            double z = bias.get_f64(u);
            for (int64_t f = 0; f < features; ++f)
              z += w.get_f64(u * features + f) * x.get_f64((b * steps + t) * features + f);
            for (int64_t k = 0; k < units; ++k) z += r.get_f64(u * units + k) * h[k];
            next[u] = std::string(act) == "tanh" ? std::tanh(z) : std::max(z, 0.0);
          }
          h = next;
          for (int64_t u = 0; u < units; ++u)
            CHECK(y.get_f64((b * steps + t) * units + u) == doctest::Approx(h[u]).epsilon(1e-5));
        }
      }
    }
  }

  TEST_CASE("run: Embedding looks up rows; BatchNormalization in inference uses the moving statistics") {
    Spec s({4}, "int32");
    s.add("Embedding", {{"input_dim", int64_t{9}}, {"output_dim", int64_t{3}}});
    BuiltModel m = models::testing::build(s, false, 2);
    Tensor table = weight(m, "embedding/embeddings");
    Tensor ids = Tensor::from<int32_t>(Shape{2, 4}, {0, 8, 3, 3, 5, 1, 7, 2});
    Tensor y = forward(std::move(m), ids);
    REQUIRE(y.shape() == Shape{2, 4, 3});
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t d = 0; d < 3; ++d) CHECK(y.get_f64(i * 3 + d) == table.get_f64(ids.get_i64(i) * 3 + d));

    Spec bn({2, 3});
    bn.add("BatchNormalization", {{"epsilon", 0.01}});
    BuiltModel b = models::testing::build(bn, true, 2);
    BuiltModel bi = models::testing::build(bn, false, 2);
    Tensor x = ops::random_tensor(Shape{2, 2, 3}, -2, 2, 3, DType::f32);
    Tensor yi = forward(std::move(bi), x);
    for (int64_t i = 0; i < x.numel(); ++i)
      CHECK(yi.get_f64(i) == doctest::Approx(x.get_f64(i) / std::sqrt(1.01)).epsilon(1e-5));
    // In training the batch's statistics (over batch and timesteps, per feature) normalize each feature.
    Tensor yt = forward(std::move(b), x);
    for (int64_t c = 0; c < 3; ++c) {
      double mean = 0;
      for (int64_t r = 0; r < 4; ++r) mean += yt.get_f64(r * 3 + c);
      CHECK(mean == doctest::Approx(0).epsilon(1e-5).scale(1));
    }
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: every activation of the layer library computes Keras's formula") {
    auto sigmoid = [](double x) { return 1 / (1 + std::exp(-x)); };
    auto softplus = [](double x) { return std::log1p(std::exp(x)); };
    auto relu6 = [](double x) { return std::min(std::max(x, 0.0), 6.0); };
    const std::map<std::string, std::function<double(double)>> keras = {
        {"linear", [](double x) { return x; }},
        {"relu", [](double x) { return std::max(x, 0.0); }},
        {"sigmoid", sigmoid},
        {"tanh", [](double x) { return std::tanh(x); }},
        {"gelu", [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }},
        {"leaky_relu", [](double x) { return x >= 0 ? x : 0.2 * x; }},
        {"elu", [](double x) { return x > 0 ? x : std::expm1(x); }},
        {"selu",
         [](double x) { return 1.0507009873554805 * (x > 0 ? x : 1.6732632423543772 * std::expm1(x)); }},
        {"softplus", softplus},
        {"softsign", [](double x) { return x / (1 + std::abs(x)); }},
        {"silu", [&](double x) { return x * sigmoid(x); }},
        {"swish", [&](double x) { return x * sigmoid(x); }},
        {"relu6", relu6},
        {"hard_sigmoid", [&](double x) { return relu6(x + 3) / 6; }},
        {"hard_silu", [&](double x) { return x * relu6(x + 3) / 6; }},
        {"hard_swish", [&](double x) { return x * relu6(x + 3) / 6; }},
        {"mish", [&](double x) { return x * std::tanh(softplus(x)); }},
        {"exponential", [](double x) { return std::exp(x); }},
    };
    CHECK(keras.size() == activation_names().size() - 1);  // softmax is checked with the samples
    for (const std::string& name : activation_names()) {
      if (name == "softmax") continue;
      CAPTURE(name);
      REQUIRE(keras.count(name));
      Spec s({9});
      s.add("Activation", {{"activation", name}});
      BuiltModel m = models::testing::build(s);
      const std::vector<float> values = {-7.f, -3.f, -1.5f, -0.5f, 0.f, 0.25f, 1.f, 3.5f, 8.f};
      Tensor x(DType::f32, m.graph.value(m.input).shape);
      for (int64_t i = 0; i < x.numel(); ++i) x.set_f64(i, values[i % 9]);
      Tensor y = forward(std::move(m), x);
      for (int64_t i = 0; i < x.numel(); ++i)
        CHECK(y.get_f64(i) == doctest::Approx(keras.at(name)(x.get_f64(i))).epsilon(1e-5));
    }
  }
}

TEST_SUITE("run") {
  TEST_CASE(
      "run: UpSampling2D repeats each pixel as a block; GlobalMaxPooling2D takes each channel's maximum") {
    Spec s({2, 3, 2});
    s.add("UpSampling2D", {{"size", v({2, 3})}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({4, 9, 2}));
    const Shape in = m.graph.value(m.input).shape;  // NCHW inside
    Tensor x = ops::random_tensor(in, -1, 1, 81, DType::f32);
    Tensor y = forward(std::move(m), x);
    const int64_t n = in[0], c = in[1], h = in[2], w = in[3];
    REQUIRE(y.shape() == Shape{n, 2 * h, 3 * w, c});  // the model's output is channels-last, as Keras's
    for (int64_t b = 0; b < n; ++b)
      for (int64_t k = 0; k < c; ++k)
        for (int64_t i = 0; i < 2 * h; ++i)
          for (int64_t j = 0; j < 3 * w; ++j)
            CHECK(y.get_f64(((b * 2 * h + i) * 3 * w + j) * c + k) ==
                  x.get_f64(((b * c + k) * h + i / 2) * w + j / 3));

    Spec p({3, 4, 2});
    p.add("GlobalMaxPooling2D");
    BuiltModel pm = models::testing::build(p);
    CHECK(pm.layers[0].output_shape == v({2}));
    const Shape pin = pm.graph.value(pm.input).shape;
    Tensor px = ops::random_tensor(pin, -1, 1, 82, DType::f32);
    Tensor py = forward(std::move(pm), px);
    for (int64_t b = 0; b < pin[0]; ++b)
      for (int64_t k = 0; k < pin[1]; ++k) {
        double best = -1e9;
        for (int64_t i = 0; i < pin[2] * pin[3]; ++i)
          best = std::max(best, px.get_f64((b * pin[1] + k) * pin[2] * pin[3] + i));
        CHECK(py.get_f64(b * pin[1] + k) == best);
      }
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: ZeroPadding2D puts zeros around the image, [top, bottom, left, right]") {
    Spec s({2, 3, 2});
    s.add("ZeroPadding2D", {{"padding", v({1, 0, 2, 1})}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({3, 6, 2}));
    const Shape in = m.graph.value(m.input).shape;  // NCHW inside
    Tensor x = ops::random_tensor(in, -1, 1, 83, DType::f32);
    Tensor y = forward(std::move(m), x);  // NHWC
    const int64_t n = in[0], c = in[1], h = in[2], w = in[3];
    REQUIRE(y.shape() == Shape{n, h + 1, w + 3, c});
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < h + 1; ++i)
        for (int64_t j = 0; j < w + 3; ++j)
          for (int64_t k = 0; k < c; ++k) {
            const bool inside = i >= 1 && j >= 2 && j < w + 2;
            const double want = inside ? x.get_f64(((b * c + k) * h + i - 1) * w + j - 2) : 0.0;
            CHECK(y.get_f64(((b * (h + 1) + i) * (w + 3) + j) * c + k) == want);
          }
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: Conv1D with causal padding sees only the present and past steps, as in Keras") {
    Spec s({6, 2});
    s.add("Conv1D", {{"filters", int64_t{3}},
                     {"kernel_size", int64_t{2}},
                     {"padding", std::string("causal")},
                     {"dilation_rate", int64_t{2}}});
    BuiltModel m = models::testing::build(s);
    const Tensor w = weight(m, "conv1d/kernel");  // [filters, features, k]
    const Shape in = m.graph.value(m.input).shape;
    Tensor x = ops::random_tensor(in, -1, 1, 84, DType::f32);  // [N, steps, features]
    Tensor y = forward(std::move(m), x);
    const int64_t n = in[0], steps = in[1], feats = in[2];
    REQUIRE(y.shape() == Shape{n, steps, 3});
    for (int64_t b = 0; b < n; ++b)
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t f = 0; f < 3; ++f) {
          double want = 0;
          for (int64_t k = 0; k < 2; ++k) {
            const int64_t src = t - 2 * (1 - k);  // taps at t - 2 and t
            if (src < 0) continue;
            for (int64_t c = 0; c < feats; ++c)
              want += x.get_f64((b * steps + src) * feats + c) * w.get_f64((f * feats + c) * 2 + k);
          }
          CHECK(y.get_f64((b * steps + t) * 3 + f) == doctest::Approx(want).epsilon(1e-5));
        }
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: DepthwiseConv1D filters each feature alone, SeparableConv1D then mixes them, as in Keras") {
    // Features 3, multiplier 2 (depth 6), kernel 3 with "same" padding (one step each side), stride 1; then
    // 4 filters of width 1 with a bias. Keras's depth order: feature f gives channels f * 2 + m.
    Spec s({7, 3});
    s.add("SeparableConv1D", {{"filters", int64_t{4}},
                              {"kernel_size", int64_t{3}},
                              {"depth_multiplier", int64_t{2}},
                              {"padding", std::string("same")},
                              {"bias_initializer", std::string("ones")}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({7, 4}));
    CHECK(m.layers[0].params == 3 * 3 * 2 + 6 * 4 + 4);
    const Tensor dw = weight(m, "separable_conv1d/depthwise_kernel");  // [6, 1, 3]
    const Tensor pw = weight(m, "separable_conv1d/pointwise_kernel");  // [4, 6, 1]
    CHECK(dw.shape() == Shape{6, 1, 3});
    const Shape in = m.graph.value(m.input).shape;
    const Tensor x = ops::random_tensor(in, -1, 1, 86, DType::f32);  // [N, steps, features]
    const Tensor y = forward(std::move(m), x);
    const int64_t n = in[0], steps = 7;
    REQUIRE(y.shape() == Shape{n, steps, 4});
    for (int64_t b = 0; b < n; ++b)
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t o = 0; o < 4; ++o) {
          double want = 1.0;  // the bias
          for (int64_t d = 0; d < 6; ++d) {
            double depth = 0;
            for (int64_t k = 0; k < 3; ++k) {
              const int64_t src = t + k - 1;
              if (src >= 0 && src < steps)
                depth += x.get_f64((b * steps + src) * 3 + d / 2) * dw.get_f64(d * 3 + k);
            }
            want += depth * pw.get_f64(o * 6 + d);
          }
          CHECK(y.get_f64((b * steps + t) * 4 + o) == doctest::Approx(want).epsilon(1e-5));
        }
    // DepthwiseConv1D alone: a "valid" window of 3 with stride 2 over 7 steps gives 3, one bias per channel.
    Spec d({7, 3});
    d.add("DepthwiseConv1D",
          {{"kernel_size", int64_t{3}}, {"strides", int64_t{2}}, {"depth_multiplier", int64_t{2}}});
    BuiltModel dm = models::testing::build(d);
    CHECK(dm.layers[0].output_shape == v({3, 6}));
    CHECK(dm.layers[0].params == 3 * 3 * 2 + 6);
    const auto [first, last] =
        train_steps(d.add("Flatten", {}).add("Dense", {{"units", int64_t{2}}}), 8, 2, 0, 20, 1e-2f);
    CHECK(last < first);
  }

  TEST_CASE(
      "run: go_backwards runs the layer on the reversed sequence, its outputs in that order, as Keras") {
    for (const char* layer : {"LSTM", "GRU", "SimpleRNN"})
      for (bool sequences : {true, false}) {
        const std::string kind = layer;
        CAPTURE(kind);
        CAPTURE(sequences);
        auto spec = [&](bool backwards) {
          Spec s({5, 3});
          s.add(layer, {{"units", int64_t{4}}, {"return_sequences", sequences}, {"go_backwards", backwards}});
          return s;
        };
        BuiltModel back = models::testing::build(spec(true));
        const Shape in = back.graph.value(back.input).shape;
        Tensor x = ops::random_tensor(in, -1, 1, 87, DType::f32);
        Tensor rx(DType::f32, in);  // the same sequences reversed in time
        for (int64_t b = 0; b < in[0]; ++b)
          for (int64_t t = 0; t < in[1]; ++t)
            for (int64_t f = 0; f < in[2]; ++f)
              rx.set_f64((b * in[1] + t) * in[2] + f, x.get_f64((b * in[1] + in[1] - 1 - t) * in[2] + f));
        // The same weights (seeded by the layer's generated name) forward over the reversed sequence.
        const Tensor got = forward(std::move(back), x);
        const Tensor want = forward(models::testing::build(spec(false)), rx);
        REQUIRE(got.shape() == want.shape());
        for (int64_t i = 0; i < got.numel(); ++i)
          CHECK(got.get_f64(i) == doctest::Approx(want.get_f64(i)).epsilon(1e-5));
      }
  }

  TEST_CASE("run: Bidirectional concatenates a forward layer and a backward one over the reversed sequence") {
    for (const char* layer : {"LSTM", "GRU"}) {
      CAPTURE(layer);
      const std::string inner = std::string(layer) == "LSTM" ? "lstm" : "gru";
      Spec s({5, 3});
      s.add("Bidirectional", {{"layer", std::string(layer)}, {"units", int64_t{4}}});
      BuiltModel bi = models::testing::build(s);
      CHECK(bi.layers[0].output_shape == v({8}));
      const Shape in = bi.graph.value(bi.input).shape;
      Tensor x = ops::random_tensor(in, -1, 1, 85, DType::f32);
      // The same sequence reversed in time.
      Tensor rx(DType::f32, in);
      for (int64_t b = 0; b < in[0]; ++b)
        for (int64_t t = 0; t < in[1]; ++t)
          for (int64_t f = 0; f < in[2]; ++f)
            rx.set_f64((b * in[1] + t) * in[2] + f, x.get_f64((b * in[1] + in[1] - 1 - t) * in[2] + f));
      // One plain layer with each direction's weights.
      Tensor halves[2];
      const char* dirs[2] = {"forward_", "backward_"};
      for (int k = 0; k < 2; ++k) {
        Spec p({5, 3});
        p.add(layer, {{"units", int64_t{4}}});
        BuiltModel one = models::testing::build(p);
        for (const char* w : {"kernel", "recurrent_kernel", "bias"}) {
          const Tensor& src = weight(bi, "bidirectional/" + std::string(dirs[k]) + inner + "/" + w);
          *one.graph.mutable_initializer(one.graph.find(inner + "/" + w)) = src;
        }
        halves[k] = forward(std::move(one), k == 0 ? x : rx);
      }
      Tensor y = forward(std::move(bi), x);
      REQUIRE(y.shape() == Shape{in[0], 8});
      for (int64_t b = 0; b < in[0]; ++b)
        for (int64_t u = 0; u < 4; ++u) {
          CHECK(y.get_f64(b * 8 + u) == doctest::Approx(halves[0].get_f64(b * 4 + u)).epsilon(1e-5));
          CHECK(y.get_f64(b * 8 + 4 + u) == doctest::Approx(halves[1].get_f64(b * 4 + u)).epsilon(1e-5));
        }
    }
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: the activation layers compute Keras's formulas; PReLU learns a slope per shared group") {
    struct Case {
      const char* type;
      std::vector<std::pair<std::string, formats::ArgValue>> args;
      std::function<double(double)> keras;
    };
    const std::vector<Case> cases = {
        {"ReLU", {}, [](double x) { return std::max(x, 0.0); }},
        {"ReLU",
         {{"max_value", 6.0}, {"negative_slope", 0.1}},
         [](double x) { return std::min(x > 0 ? x : 0.1 * x, 6.0); }},
        {"LeakyReLU", {}, [](double x) { return x > 0 ? x : 0.3 * x; }},
        {"ELU", {{"alpha", 0.5}}, [](double x) { return x > 0 ? x : 0.5 * std::expm1(x); }},
        {"PReLU", {}, [](double x) { return std::max(x, 0.0); }},  // alpha starts at zero
    };
    for (const Case& c : cases) {
      CAPTURE(c.type);
      Spec s({9});
      s.add(c.type, c.args);
      BuiltModel m = models::testing::build(s);
      const std::vector<float> values = {-7.f, -3.f, -1.5f, -0.5f, 0.f, 0.25f, 1.f, 3.5f, 8.f};
      Tensor x(DType::f32, m.graph.value(m.input).shape);
      for (int64_t i = 0; i < x.numel(); ++i) x.set_f64(i, values[i % 9]);
      Tensor y = forward(std::move(m), x);
      for (int64_t i = 0; i < x.numel(); ++i)
        CHECK(y.get_f64(i) == doctest::Approx(c.keras(x.get_f64(i))).epsilon(1e-5));
    }
    // PReLU on images, one slope per channel (shared over height and width), kept in the graph's layout.
    Spec p({4, 5, 3});
    p.add("PReLU", {{"shared_axes", v({1, 2})}, {"alpha_initializer", std::string("ones")}});
    BuiltModel pm = models::testing::build(p);
    CHECK(pm.layers[0].params == 3);
    CHECK(weight(pm, "p_re_lu/alpha").shape() == Shape{3, 1, 1});
    // Softmax over an axis other than the last.
    Spec q({3, 4});
    q.add("Softmax", {{"axis", int64_t{1}}});
    BuiltModel qm = models::testing::build(q);
    const Shape qs = qm.graph.value(qm.input).shape;
    Tensor qx = ops::random_tensor(qs, -2, 2, 86, DType::f32);
    Tensor qy = forward(std::move(qm), qx);
    for (int64_t b = 0; b < qs[0]; ++b)
      for (int64_t f = 0; f < 4; ++f) {
        double sum = 0;
        for (int64_t t = 0; t < 3; ++t) sum += qy.get_f64((b * 3 + t) * 4 + f);
        CHECK(sum == doctest::Approx(1.0).epsilon(1e-5));
      }
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: the merge layers combine their inputs elementwise, as Keras") {
    // Two Dense branches of one vector input, then each merge; outputs compared with the branches'.
    const std::vector<std::string> merges = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"};
    for (const std::string& type : merges) {
      CAPTURE(type);
      Spec s({5});
      s.add("Dense", {{"units", int64_t{3}}}, "a").add("Dense", {{"units", int64_t{3}}}, "b", {"input"});
      s.add(type, {}, "merged", {"a", "b"});
      BuiltModel m = models::testing::build(s);
      CHECK(m.layers[2].output_shape == v({3}));
      Tensor x = ops::random_tensor(m.graph.value(m.input).shape, -1, 1, 91, DType::f32);
      // The branch outputs, read from a model that ends at each one.
      auto branch = [&](const std::string& name) {
        BuiltModel b = models::testing::build(s);
        b.output = b.graph.node(b.graph.value(b.graph.find(name + "/kernel")).consumers.at(0)).outputs[0];
        b.output = b.graph.node(b.graph.value(b.output).consumers.at(0)).outputs[0];  // after the bias
        return forward(std::move(b), x);
      };
      const Tensor a = branch("a"), bb = branch("b");
      const Tensor y = forward(std::move(m), x);
      REQUIRE(y.shape() == a.shape());
      for (int64_t i = 0; i < y.numel(); ++i) {
        const double p = a.get_f64(i), q = bb.get_f64(i);
        const double want = type == "Add"        ? p + q
                            : type == "Subtract" ? p - q
                            : type == "Multiply" ? p * q
                            : type == "Average"  ? (p + q) / 2
                            : type == "Maximum"  ? std::max(p, q)
                                                 : std::min(p, q);
        CHECK(y.get_f64(i) == doctest::Approx(want).epsilon(1e-6));
      }
    }
    Spec three({4});
    three.add("Dense", {{"units", int64_t{2}}}, "a").add("Dense", {{"units", int64_t{2}}}, "b", {"input"});
    three.add("Dense", {{"units", int64_t{2}}}, "c", {"input"}).add("Subtract", {}, "d", {"a", "b", "c"});
    CHECK(contains(build_error(three).what(), "takes 2 inputs, got 3"));
  }

  TEST_CASE("run: Rescaling, RepeatVector and Permute") {
    Spec s({2, 3});
    s.add("Rescaling", {{"scale", 0.5}, {"offset", -1.0}}).add("Permute", {{"dims", v({2, 1})}});
    s.add("Flatten").add("RepeatVector", {{"n", int64_t{4}}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[1].output_shape == v({3, 2}));
    CHECK(m.layers[3].output_shape == v({4, 6}));
    const Shape in = m.graph.value(m.input).shape;
    Tensor x = ops::random_tensor(in, -1, 1, 92, DType::f32);
    Tensor y = forward(std::move(m), x);
    const int64_t n = in[0];
    REQUIRE(y.shape() == Shape{n, 4, 6});
    for (int64_t b = 0; b < n; ++b)
      for (int64_t r = 0; r < 4; ++r)
        for (int64_t i = 0; i < 3; ++i)  // permuted [3, 2], flattened row-major
          for (int64_t j = 0; j < 2; ++j)
            CHECK(y.get_f64((b * 4 + r) * 6 + i * 2 + j) ==
                  doctest::Approx(x.get_f64((b * 2 + j) * 3 + i) * 0.5 - 1.0));
    Spec bad({2, 3});
    bad.add("Permute", {{"dims", v({1, 1})}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "dims"));
  }

  TEST_CASE("run: Cropping2D and Cropping1D cut Keras's rows, columns and steps") {
    Spec s({5, 6, 2});
    s.add("Cropping2D", {{"cropping", v({1, 0, 2, 1})}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({4, 3, 2}));
    const Shape in = m.graph.value(m.input).shape;  // NCHW
    Tensor x = ops::random_tensor(in, -1, 1, 93, DType::f32);
    Tensor y = forward(std::move(m), x);  // NHWC
    const int64_t n = in[0], c = in[1], h = in[2], w = in[3];
    REQUIRE(y.shape() == Shape{n, 4, 3, c});
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < 3; ++j)
          for (int64_t k = 0; k < c; ++k)
            CHECK(y.get_f64(((b * 4 + i) * 3 + j) * c + k) ==
                  x.get_f64(((b * c + k) * h + i + 1) * w + j + 2));

    // After a Conv1D the sequence is channels-first inside; the crop is along the steps all the same.
    Spec q({7, 2});
    q.add("Conv1D", {{"filters", int64_t{3}}, {"kernel_size", int64_t{1}}})
        .add("Cropping1D", {{"cropping", v({2, 1})}});
    BuiltModel mq = models::testing::build(q);
    CHECK(mq.layers[1].output_shape == v({4, 3}));
    Spec full({7, 2});
    full.add("Conv1D", {{"filters", int64_t{3}}, {"kernel_size", int64_t{1}}});
    BuiltModel mf = models::testing::build(full);
    Tensor xs = ops::random_tensor(mq.graph.value(mq.input).shape, -1, 1, 94, DType::f32);
    Tensor cropped = forward(std::move(mq), xs), whole = forward(std::move(mf), xs);  // [N, steps, 3]
    for (int64_t b = 0; b < xs.shape()[0]; ++b)
      for (int64_t t = 0; t < 4; ++t)
        for (int64_t k = 0; k < 3; ++k)
          CHECK(cropped.get_f64((b * 4 + t) * 3 + k) == whole.get_f64((b * 7 + t + 2) * 3 + k));

    Spec bad({5, 6, 2});
    bad.add("Cropping2D", {{"cropping", v({3, 2})}});
    CHECK(contains(build_error(bad).what(), "leaves nothing of axis 1"));
  }

  TEST_CASE("run: SpatialDropout2D drops whole channels, LSTM's dropout whole features at every step") {
    Spec s({4, 4, 6});
    s.add("SpatialDropout2D", {{"rate", 0.5}});
    BuiltModel m = models::testing::build(s, true, 8);
    const Shape in = m.graph.value(m.input).shape;  // [8, 6, 4, 4]
    Tensor x = ops::random_tensor(in, 1, 2, 95, DType::f32);
    Tensor y = forward(std::move(m), x);  // NHWC
    int dropped = 0;
    for (int64_t b = 0; b < 8; ++b)
      for (int64_t k = 0; k < 6; ++k) {
        const bool zero = y.get_f64(((b * 4 + 0) * 4 + 0) * 6 + k) == 0;
        dropped += zero;
        for (int64_t i = 0; i < 16; ++i)
          CHECK(y.get_f64((b * 16 + i) * 6 + k) ==
                (zero ? 0.0 : doctest::Approx(2 * x.get_f64((b * 6 + k) * 16 + i))));
      }
    CHECK(dropped > 8);
    CHECK(dropped < 40);
    CHECK(count_ops(models::testing::build(s, false, 8).graph, "Dropout") == 0);

    Spec r({5, 3});
    r.add("LSTM", {{"units", int64_t{2}}, {"dropout", 0.25}});
    BuiltModel lstm = models::testing::build(r, true, 8);
    const Node& drop = only_node(lstm.graph, "Dropout");
    CHECK(lstm.graph.value(drop.outputs[0]).shape ==
          Shape{8, 1, 3});  // one mask entry per sample and feature
    CHECK(count_ops(models::testing::build(r, false, 8).graph, "Dropout") == 0);
    Spec bad({5, 3});
    bad.add("GRU", {{"units", int64_t{2}}, {"dropout", 1.0}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "dropout"));
  }

  TEST_CASE("run: recurrent_dropout feeds one mask per sample, direction and unit to the recurrent node") {
    for (const char* type : {"LSTM", "GRU"})
      for (bool bidirectional : {false, true}) {
        CAPTURE(type);
        CAPTURE(bidirectional);
        const bool lstm = std::string(type) == "LSTM";
        Spec s({5, 3});
        std::vector<std::pair<std::string, formats::ArgValue>> args = {{"units", int64_t{4}},
                                                                       {"recurrent_dropout", 0.3}};
        if (bidirectional) args.push_back({"layer", std::string(type)});
        s.add(bidirectional ? "Bidirectional" : type, args);
        BuiltModel m = models::testing::build(s, true, 8);
        const Node& rnn = only_node(m.graph, type);
        const size_t mask_input = lstm ? 8 : 6;
        REQUIRE(rnn.inputs.size() == mask_input + 1);
        const Node& drop = only_node(m.graph, "Dropout");
        CHECK(rnn.inputs[mask_input] == drop.outputs[0]);
        CHECK(m.graph.value(drop.outputs[0]).shape == Shape{8, bidirectional ? 2 : 1, 4});
        // Inference holds no mask, so the node is ONNX's.
        BuiltModel inference = models::testing::build(s, false, 8);
        CHECK(count_ops(inference.graph, "Dropout") == 0);
        CHECK(only_node(inference.graph, type).inputs.size() <= mask_input);
      }
    Spec bad({5, 3});
    bad.add("LSTM", {{"units", int64_t{2}}, {"recurrent_dropout", -0.1}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "recurrent_dropout"));
  }
}

TEST_SUITE("run") {
  // Keras's masking against the plain layers run on each sample's unmasked steps alone. A single layer at
  // step t gives its output after the unmasked steps up to t (zeros before any): a masked step repeats the
  // output before it. In a Bidirectional, the forward direction at unmasked step t gives its output after the
  // unmasked steps up to t, the backward direction its output after the unmasked steps from t on, and a
  // masked step gives zeros in both (Keras's Bidirectional sets zero_output_for_mask for sequences).
  TEST_CASE("run: mask_zero: LSTM, GRU and Bidirectional skip padded steps wherever they are") {
    const int64_t steps = 6, dim = 3, units = 4;
    // Pre-padded, holes, all padding, no padding.
    const std::vector<int32_t> ids = {0, 0, 3, 5, 1, 2, 4, 0, 6, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6};
    const int64_t n = 4;
    for (const char* layer : {"LSTM", "GRU"})
      for (bool bidirectional : {true, false})
        for (bool sequences : {true, false}) {
          CAPTURE(layer);
          CAPTURE(bidirectional);
          CAPTURE(sequences);
          const std::string inner = std::string(layer) == "LSTM" ? "lstm" : "gru";
          const int dirs = bidirectional ? 2 : 1;
          Spec s({steps}, "int32");
          std::vector<std::pair<std::string, formats::ArgValue>> args = {
              {"units", units},
              {"return_sequences", sequences},
              {"bias_initializer", std::string("uniform")}};
          if (bidirectional) args.push_back({"layer", std::string(layer)});
          s.add("Embedding", {{"input_dim", int64_t{7}}, {"output_dim", dim}, {"mask_zero", true}})
              .add(bidirectional ? "Bidirectional" : layer, args);
          BuiltModel m = models::testing::build(s, false, n);
          const Tensor table = weight(m, "embedding/embeddings");
          Tensor w[2][3];
          const char* prefixes[2] = {"bidirectional/forward_", "bidirectional/backward_"};
          const char* names[3] = {"kernel", "recurrent_kernel", "bias"};
          for (int d = 0; d < dirs; ++d)
            for (int k = 0; k < 3; ++k)
              w[d][k] = weight(m, (bidirectional ? prefixes[d] : "") + inner + "/" + names[k]);
          Tensor y = forward(std::move(m), Tensor::from<int32_t>(Shape{n, steps}, ids));
          const int64_t width = dirs * units;
          REQUIRE(y.shape() == (sequences ? Shape{n, steps, width} : Shape{n, width}));
          for (int64_t b = 0; b < n; ++b) {
            CAPTURE(b);
            std::vector<int32_t> kept;
            for (int64_t t = 0; t < steps; ++t)
              if (ids[b * steps + t] != 0) kept.push_back(ids[b * steps + t]);
            const int64_t len = static_cast<int64_t>(kept.size());
            // The plain layer over the kept steps (reversed for the backward direction), every step's output.
            Tensor plain[2];
            for (int d = 0; d < dirs && len > 0; ++d) {
              Spec p({len, dim});
              p.add(layer, {{"units", units}, {"return_sequences", true}});
              BuiltModel one = models::testing::build(p, false, 1);
              for (int k = 0; k < 3; ++k)
                *one.graph.mutable_initializer(one.graph.find(inner + "/" + names[k])) = w[d][k];
              Tensor x(DType::f32, Shape{1, len, dim});
              for (int64_t q = 0; q < len; ++q)
                for (int64_t f = 0; f < dim; ++f)
                  x.set_f64(q * dim + f, table.get_f64(kept[d == 0 ? q : len - 1 - q] * dim + f));
              plain[d] = forward(std::move(one), x);  // [1, len, units]
            }
            // Plain output of direction d after `count` kept steps (0: the zero state).
            auto after = [&](int d, int64_t count, int64_t u) {
              return count == 0 ? 0.0 : plain[d].get_f64((count - 1) * units + u);
            };
            if (!sequences) {
              for (int d = 0; d < dirs; ++d)
                for (int64_t u = 0; u < units; ++u)
                  CHECK(y.get_f64(b * width + d * units + u) ==
                        doctest::Approx(after(d, len, u)).epsilon(1e-5));
              continue;
            }
            int64_t before = 0;  // kept steps before t
            for (int64_t t = 0; t < steps; ++t) {
              const bool keep = ids[b * steps + t] != 0;
              for (int64_t u = 0; u < units; ++u) {
                const double fwd = bidirectional && !keep ? 0.0 : after(0, before + keep, u);
                CHECK(y.get_f64((b * steps + t) * width + u) == doctest::Approx(fwd).epsilon(1e-5));
                if (!bidirectional) continue;
                // The backward pass has seen the kept steps from t on.
                const double bwd = keep ? after(1, len - before, u) : 0.0;
                CHECK(y.get_f64((b * steps + t) * width + units + u) == doctest::Approx(bwd).epsilon(1e-5));
              }
              before += keep;
            }
          }
        }
  }

  // go_backwards under a mask, as Keras runs it: the sequence and its mask reversed together, so the kept
  // steps run last to first and the output at position i (step T - 1 - i) is the one after the kept steps
  // from that step on (zeros before any).
  TEST_CASE("run: mask_zero with go_backwards: the kept steps run in reverse, outputs in that order") {
    const int64_t steps = 6, dim = 3, units = 4, n = 4;
    const std::vector<int32_t> ids = {0, 0, 3, 5, 1, 2, 4, 0, 6, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6};
    for (const char* layer : {"LSTM", "GRU", "SimpleRNN"})
      for (bool sequences : {true, false}) {
        CAPTURE(layer);
        CAPTURE(sequences);
        const std::string inner = std::string(layer) == "LSTM"  ? "lstm"
                                  : std::string(layer) == "GRU" ? "gru"
                                                                : "simple_rnn";
        Spec s({steps}, "int32");
        s.add("Embedding", {{"input_dim", int64_t{7}}, {"output_dim", dim}, {"mask_zero", true}})
            .add(layer, {{"units", units},
                         {"return_sequences", sequences},
                         {"go_backwards", true},
                         {"bias_initializer", std::string("uniform")}});
        BuiltModel m = models::testing::build(s, false, n);
        const Tensor table = weight(m, "embedding/embeddings");
        const char* names[3] = {"kernel", "recurrent_kernel", "bias"};
        Tensor w[3];
        for (int k = 0; k < 3; ++k) w[k] = weight(m, inner + "/" + names[k]);
        Tensor y = forward(std::move(m), Tensor::from<int32_t>(Shape{n, steps}, ids));
        REQUIRE(y.shape() == (sequences ? Shape{n, steps, units} : Shape{n, units}));
        for (int64_t b = 0; b < n; ++b) {
          CAPTURE(b);
          std::vector<int32_t> kept;
          for (int64_t t = 0; t < steps; ++t)
            if (ids[b * steps + t] != 0) kept.push_back(ids[b * steps + t]);
          const int64_t len = static_cast<int64_t>(kept.size());
          // The plain layer over the kept steps, last to first.
          Tensor plain;
          if (len > 0) {
            Spec p({len, dim});
            p.add(layer, {{"units", units}, {"return_sequences", true}});
            BuiltModel one = models::testing::build(p, false, 1);
            for (int k = 0; k < 3; ++k)
              *one.graph.mutable_initializer(one.graph.find(inner + "/" + names[k])) = w[k];
            Tensor x(DType::f32, Shape{1, len, dim});
            for (int64_t q = 0; q < len; ++q)
              for (int64_t f = 0; f < dim; ++f)
                x.set_f64(q * dim + f, table.get_f64(kept[len - 1 - q] * dim + f));
            plain = forward(std::move(one), x);
          }
          auto after = [&](int64_t count, int64_t u) {
            return count == 0 ? 0.0 : plain.get_f64((count - 1) * units + u);
          };
          if (!sequences) {
            for (int64_t u = 0; u < units; ++u)
              CHECK(y.get_f64(b * units + u) == doctest::Approx(after(len, u)).epsilon(1e-5));
            continue;
          }
          int64_t from = 0;  // kept steps from step t on
          for (int64_t i = 0; i < steps; ++i) {
            const int64_t t = steps - 1 - i;
            from += ids[b * steps + t] != 0;
            for (int64_t u = 0; u < units; ++u)
              CHECK(y.get_f64((b * steps + i) * units + u) == doctest::Approx(after(from, u)).epsilon(1e-5));
          }
        }
      }
  }

  TEST_CASE("run: masks: GlobalAveragePooling1D averages the kept steps; Masking marks steps of mask_value") {
    const int64_t steps = 4, dim = 2;
    Spec s({steps}, "int32");
    s.add("Embedding", {{"input_dim", int64_t{5}}, {"output_dim", dim}, {"mask_zero", true}})
        .add("Dropout", {{"rate", 0.5}})  // keeps the mask
        .add("GlobalAveragePooling1D");
    BuiltModel m = models::testing::build(s, false, 3);
    const Tensor table = weight(m, "embedding/embeddings");
    const std::vector<int32_t> ids = {0, 2, 0, 4, 1, 2, 3, 4, 0, 0, 0, 0};
    Tensor y = forward(std::move(m), Tensor::from<int32_t>(Shape{3, steps}, ids));
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t f = 0; f < dim; ++f) {
        double sum = 0;
        int count = 0;
        for (int64_t t = 0; t < steps; ++t)
          if (ids[b * steps + t] != 0) sum += table.get_f64(ids[b * steps + t] * dim + f), ++count;
        CHECK(y.get_f64(b * dim + f) == doctest::Approx(count ? sum / count : 0.0));
      }

    // Masking on float steps: the padded steps (all features 0) are skipped by the LSTM, so its final output
    // is that of the kept steps alone.
    Spec mk({5, 2});
    mk.add("Masking").add("LSTM", {{"units", int64_t{3}}});
    Spec kept({3, 2});
    kept.add("LSTM", {{"units", int64_t{3}}});
    BuiltModel masked = models::testing::build(mk, false, 1), plain = models::testing::build(kept, false, 1);
    for (const char* name : {"lstm/kernel", "lstm/recurrent_kernel", "lstm/bias"})
      *plain.graph.mutable_initializer(plain.graph.find(name)) = weight(masked, name);
    Tensor xm = Tensor::from<float>(Shape{1, 5, 2}, {0, 0, 0.5f, -1, 0, 0, 2, 0, 0.25f, 0.75f});
    Tensor xk = Tensor::from<float>(Shape{1, 3, 2}, {0.5f, -1, 2, 0, 0.25f, 0.75f});
    Tensor ym = forward(std::move(masked), xm), yk = forward(std::move(plain), xk);
    for (int64_t u = 0; u < 3; ++u) CHECK(ym.get_f64(u) == doctest::Approx(yk.get_f64(u)).epsilon(1e-5));
    // A layer that does not keep masks ends them: after a Conv1D the average is over every step, as without
    // mask_zero.
    auto conv_mean = [&](bool mask_zero) {
      Spec c({4}, "int32");
      c.add("Embedding", {{"input_dim", int64_t{5}}, {"output_dim", int64_t{2}}, {"mask_zero", mask_zero}})
          .add("Conv1D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{1}}})
          .add("GlobalAveragePooling1D");
      return forward(models::testing::build(c, false, 3), Tensor::from<int32_t>(Shape{3, steps}, ids));
    };
    // A merge takes the mask of any input that has one: Add(zeros from a Conv1D, which ends the mask, e)
    // averaged over e's kept steps.
    Spec merged({steps}, "int32");
    merged.add("Embedding", {{"input_dim", int64_t{5}}, {"output_dim", dim}, {"mask_zero", true}}, "e")
        .add("Conv1D",
             {{"filters", dim},
              {"kernel_size", int64_t{1}},
              {"use_bias", false},
              {"kernel_initializer", std::string("zeros")}},
             "zeros", {"e"})
        .add("Add", {}, "sum", {"zeros", "e"})
        .add("GlobalAveragePooling1D", {}, "mean", {"sum"});
    BuiltModel mm = models::testing::build(merged, false, 3);
    const Tensor mtable = weight(mm, "e/embeddings");
    Tensor ymerged = forward(std::move(mm), Tensor::from<int32_t>(Shape{3, steps}, ids));
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t f = 0; f < dim; ++f) {
        double sum = 0;
        int count = 0;
        for (int64_t t = 0; t < steps; ++t)
          if (ids[b * steps + t] != 0) sum += mtable.get_f64(ids[b * steps + t] * dim + f), ++count;
        CHECK(ymerged.get_f64(b * dim + f) == doctest::Approx(count ? sum / count : 0.0));
      }
    Tensor with = conv_mean(true), without = conv_mean(false);
    for (int64_t i = 0; i < with.numel(); ++i) CHECK(with.get_f64(i) == without.get_f64(i));
  }

  TEST_CASE("run: MultiHeadAttention computes Keras's attention, causal or not") {
    // The value (and key) of the last case is the query's first 3 steps: Keras's causal mask is then the
    // lower triangle of [4, 3].
    for (auto [causal, tv] : {std::pair<bool, int64_t>{false, 4}, {true, 4}, {true, 3}}) {
      CAPTURE(causal);
      CAPTURE(tv);
      const int64_t steps = 4, width = 3, heads = 2, kd = 3, vd = 2, out = 5;
      Spec s({steps, width});
      if (tv < steps) s.add("Cropping1D", {{"cropping", std::vector<int64_t>{0, steps - tv}}}, "crop");
      s.add("MultiHeadAttention",
            {{"num_heads", heads},
             {"key_dim", kd},
             {"value_dim", vd},
             // Keras's tuple form, output_shape = (5,), in the last case.
             {"output_shape",
              tv < steps ? formats::ArgValue(std::vector<int64_t>{out}) : formats::ArgValue(out)},
             {"use_causal_mask", causal},
             {"bias_initializer", std::string("glorot_uniform")}},
            "", tv < steps ? std::vector<std::string>{"input", "crop"} : std::vector<std::string>{});
      BuiltModel m = models::testing::build(s, false, 2);
      CHECK(m.layers.back().output_shape == v({steps, out}));
      // Keras's parameter count: 3 input projections and the output one, with their biases.
      CHECK(m.layers.back().params ==
            2 * (width * heads * kd + heads * kd) + width * heads * vd + heads * vd + heads * vd * out + out);
      auto w = [&](const std::string& name) { return weight(m, "multi_head_attention/" + name); };
      const Tensor wq = w("query/kernel"), bq = w("query/bias"), wk = w("key/kernel"), bk = w("key/bias");
      const Tensor wv = w("value/kernel"), bv = w("value/bias"), wo = w("attention_output/kernel");
      const Tensor bo = w("attention_output/bias");
      CHECK(wq.shape() == Shape{width, heads, kd});
      CHECK(wo.shape() == Shape{heads, vd, out});
      const Shape in = m.graph.value(m.input).shape;
      Tensor x = ops::random_tensor(in, -1, 1, 96, DType::f32);
      Tensor y = forward(std::move(m), x);
      REQUIRE(y.shape() == Shape{2, steps, out});
      for (int64_t n = 0; n < 2; ++n) {
        auto proj = [&](const Tensor& k, const Tensor& bias, int64_t t, int64_t h, int64_t d, int64_t dim) {
          double acc = bias.get_f64(h * dim + d);
          for (int64_t c = 0; c < width; ++c)
            acc += x.get_f64((n * steps + t) * width + c) * k.get_f64((c * heads + h) * dim + d);
          return acc;
        };
        std::vector<double> ctx(steps * heads * vd, 0.0);
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t i = 0; i < steps; ++i) {
            std::vector<double> score(tv);
            double top = -1e300;
            for (int64_t j = 0; j < tv; ++j) {
              double dot = 0;
              for (int64_t d = 0; d < kd; ++d) dot += proj(wq, bq, i, h, d, kd) * proj(wk, bk, j, h, d, kd);
              score[j] = causal && j > i ? -1e300 : dot / std::sqrt(double(kd));
              top = std::max(top, score[j]);
            }
            double total = 0;
            for (double& e : score) total += (e = std::exp(e - top));
            for (int64_t j = 0; j < tv; ++j)
              for (int64_t d = 0; d < vd; ++d)
                ctx[(i * heads + h) * vd + d] += score[j] / total * proj(wv, bv, j, h, d, vd);
          }
        for (int64_t i = 0; i < steps; ++i)
          for (int64_t o = 0; o < out; ++o) {
            double want = bo.get_f64(o);
            for (int64_t h = 0; h < heads; ++h)
              for (int64_t d = 0; d < vd; ++d)
                want += ctx[(i * heads + h) * vd + d] * wo.get_f64((h * vd + d) * out + o);
            CHECK(y.get_f64((n * steps + i) * out + o) == doctest::Approx(want).epsilon(1e-4));
          }
      }
    }
  }

  TEST_CASE("run: a transformer encoder block trains; TokenAndPositionEmbedding adds its positions") {
    Spec s({6}, "int64");
    s.add("TokenAndPositionEmbedding",
          {{"vocabulary_size", int64_t{12}}, {"sequence_length", int64_t{8}}, {"embedding_dim", int64_t{8}}},
          "embed")
        .add("MultiHeadAttention", {{"num_heads", int64_t{2}}, {"key_dim", int64_t{4}}, {"dropout", 0.1}},
             "attn", {"embed", "embed"})
        .add("Add", {}, "residual", {"embed", "attn"})
        .add("LayerNormalization", {{"epsilon", 1e-6}})
        .add("GlobalAveragePooling1D")
        .add("Dense", {{"units", int64_t{3}}, {"activation", std::string("softmax")}});
    BuiltModel m = models::testing::build(s);
    CHECK(m.layers[0].output_shape == v({6, 8}));
    CHECK(m.layers[0].params == 12 * 8 + 8 * 8);
    CHECK(weight(m, "embed/position_embedding/embeddings").shape() == Shape{8, 8});
    auto [first, last] = train_steps(s, 8, 3, 12, 30, 1e-2f);
    CHECK(last < first * 0.7f);

    // Token t at step i: row t of the token table plus row i of the position table.
    Spec e({3}, "int64");
    e.add("TokenAndPositionEmbedding",
          {{"vocabulary_size", int64_t{5}}, {"sequence_length", int64_t{4}}, {"embedding_dim", int64_t{2}}});
    BuiltModel me = models::testing::build(e, false, 2);
    const Tensor tokens = weight(me, "token_and_position_embedding/token_embedding/embeddings");
    const Tensor positions = weight(me, "token_and_position_embedding/position_embedding/embeddings");
    Tensor ids = Tensor::from<int64_t>(Shape{2, 3}, {4, 0, 2, 1, 1, 3});
    Tensor y = forward(std::move(me), ids);
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t d = 0; d < 2; ++d)
          CHECK(
              y.get_f64((n * 3 + i) * 2 + d) ==
              doctest::Approx(tokens.get_f64(ids.get_f64(n * 3 + i) * 2 + d) + positions.get_f64(i * 2 + d)));
    Spec longer({9}, "int64");
    longer.add(
        "TokenAndPositionEmbedding",
        {{"vocabulary_size", int64_t{5}}, {"sequence_length", int64_t{4}}, {"embedding_dim", int64_t{2}}});
    CHECK(build_error(longer).where() == longer.arg_at(0, "sequence_length"));
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: RandomFlip flips whole images, about half of them, in training only") {
    for (const std::string mode : {"horizontal", "vertical"}) {
      CAPTURE(mode);
      Spec s({3, 4, 2});
      s.add("RandomFlip", {{"mode", mode}});
      BuiltModel m = models::testing::build(s, true, 64);
      const Shape in = m.graph.value(m.input).shape;  // [64, 2, 3, 4]
      Tensor x = ops::random_tensor(in, -1, 1, 97, DType::f32);
      Tensor y = forward(std::move(m), x);  // NHWC [64, 3, 4, 2]
      const int64_t c = 2, h = 3, w = 4;
      int flipped = 0;
      for (int64_t b = 0; b < 64; ++b) {
        bool same = true, mirrored = true;
        for (int64_t i = 0; i < h; ++i)
          for (int64_t j = 0; j < w; ++j)
            for (int64_t k = 0; k < c; ++k) {
              const double got = y.get_f64(((b * h + i) * w + j) * c + k);
              const int64_t si = mode == "vertical" ? h - 1 - i : i,
                            sj = mode == "horizontal" ? w - 1 - j : j;
              same = same && got == x.get_f64(((b * c + k) * h + i) * w + j);
              mirrored = mirrored && got == x.get_f64(((b * c + k) * h + si) * w + sj);
            }
        CHECK((same || mirrored));
        flipped += mirrored && !same;
      }
      CHECK(flipped > 16);
      CHECK(flipped < 48);
      BuiltModel inference = models::testing::build(s, false, 64);
      CHECK(count_ops(inference.graph, "Slice") == 0);
    }
    Spec both({3, 4, 2});
    both.add("RandomFlip");
    CHECK(count_ops(models::testing::build(both, true, 8).graph, "Slice") == 2);
    Spec bad({3, 4, 2});
    bad.add("RandomFlip", {{"mode", std::string("diagonal")}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "mode"));
  }
}

TEST_SUITE("run") {
  TEST_CASE(
      "run: GaussianNoise adds N(0, stddev^2) and GaussianDropout multiplies by N(1, rate / (1 - rate))") {
    for (const std::string type : {"GaussianNoise", "GaussianDropout"}) {
      CAPTURE(type);
      const bool dropout = type == "GaussianDropout";
      Spec s({50, 40});
      s.add(type, {{dropout ? "rate" : "stddev", dropout ? 0.2 : 0.5}});
      BuiltModel m = models::testing::build(s, true, 4);
      Tensor x = ops::random_tensor(m.graph.value(m.input).shape, 0.5, 1.5, 98, DType::f32);
      Tensor y = forward(std::move(m), x);
      double sum = 0, sq = 0;
      const int64_t n = x.numel();
      for (int64_t i = 0; i < n; ++i) {
        // The noise: y - x, or y / x - 1.
        const double e = dropout ? y.get_f64(i) / x.get_f64(i) - 1 : y.get_f64(i) - x.get_f64(i);
        sum += e, sq += e * e;
      }
      const double mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
      CHECK(std::fabs(mean) < 0.03);
      CHECK(sd == doctest::Approx(dropout ? 0.5 : 0.5).epsilon(0.04));  // sqrt(0.2 / 0.8) = 0.5
      CHECK(count_ops(models::testing::build(s, false, 4).graph, "RandomNormalLike") == 0);
    }
    Spec bad({3});
    bad.add("GaussianDropout", {{"rate", 1.0}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "rate"));
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: RandomBrightness shifts and RandomContrast scales each image by one draw, clipped") {
    Spec s({4, 5, 3});
    s.add("RandomBrightness", {{"factor", 0.1}});
    BuiltModel m = models::testing::build(s, true, 16);
    const Shape in = m.graph.value(m.input).shape;               // [16, 3, 4, 5]
    Tensor x = ops::random_tensor(in, 30, 225, 99, DType::f32);  // inside [0, 255] with room for a 25.5 shift
    Tensor y = forward(std::move(m), x);                         // NHWC
    const int64_t c = 3, h = 4, w = 5, hw = h * w;
    double lo = 1e9, hi = -1e9;
    for (int64_t b = 0; b < 16; ++b) {
      const double delta = y.get_f64(b * hw * c) - x.get_f64(b * c * hw);
      lo = std::min(lo, delta), hi = std::max(hi, delta);
      CHECK(std::fabs(delta) <= 25.5 + 1e-3);
      for (int64_t k = 0; k < c; ++k)
        for (int64_t p = 0; p < hw; ++p)
          CHECK(y.get_f64((b * hw + p) * c + k) == doctest::Approx(x.get_f64((b * c + k) * hw + p) + delta));
    }
    CHECK(hi - lo > 5);  // the images drew different shifts

    Spec q({4, 5, 3});
    q.add("RandomContrast",
          {{"factor", std::vector<double>{0.5, 0.5}}, {"value_range", std::vector<int64_t>{-1, 1}}});
    BuiltModel mq = models::testing::build(q, true, 16);
    Tensor xq = ops::random_tensor(in, -0.5, 0.5, 100, DType::f32);
    Tensor yq = forward(std::move(mq), xq);
    for (int64_t b = 0; b < 16; ++b) {
      double factor = 0;
      for (int64_t k = 0; k < c; ++k) {
        double mean = 0;
        for (int64_t p = 0; p < hw; ++p) mean += xq.get_f64((b * c + k) * hw + p) / hw;
        const double d0 = xq.get_f64((b * c + k) * hw) - mean;
        if (k == 0) factor = (yq.get_f64(b * hw * c) - mean) / d0;
        CHECK(factor >= 0.5 - 1e-4);
        CHECK(factor <= 1.5 + 1e-4);
        for (int64_t p = 0; p < hw; ++p) {
          const double want =
              std::clamp(mean + factor * (xq.get_f64((b * c + k) * hw + p) - mean), -1.0, 1.0);
          CHECK(yq.get_f64((b * hw + p) * c + k) == doctest::Approx(want).epsilon(1e-4));
        }
      }
    }
    CHECK(count_ops(models::testing::build(q, false, 16).graph, "RandomUniformLike") == 0);
    Spec bad({4, 5, 3});
    bad.add("RandomBrightness", {{"factor", 1.5}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "factor"));
  }
}

TEST_SUITE("run") {
  // A reference of Keras's resampling along one axis: bilinear between the two neighbours of src, each index
  // mapped by the fill mode (reflect, nearest; constant gives 0 outside).
  double sample_axis(const std::function<double(int64_t)>& at, int64_t n, double src,
                     const std::string& fill) {
    const int64_t k0 = static_cast<int64_t>(std::floor(src));
    const double t = src - static_cast<double>(k0);
    double v = 0;
    for (auto [k, wgt] : {std::pair<int64_t, double>{k0, 1 - t}, {k0 + 1, t}}) {
      if (wgt == 0) continue;
      int64_t p = k;
      if (fill == "reflect") p = p < 0 ? -p - 1 : p >= n ? 2 * n - 1 - p : p;
      if (fill == "nearest") p = std::clamp<int64_t>(p, 0, n - 1);
      if (p >= 0 && p < n) v += wgt * at(p);
    }
    return v;
  }

  TEST_CASE("run: RandomTranslation and RandomZoom resample each image as Keras, with its fill mode") {
    const int64_t h = 6, w = 5, c = 2, n = 3;
    struct Case {
      std::string type, fill;
      double hf, wf;  // fixed draws: lower == upper
    };
    for (const Case& k :
         {Case{"RandomTranslation", "reflect", 1.0 / 3, -0.2},
          Case{"RandomTranslation", "constant", -0.25, 0.3}, Case{"RandomZoom", "reflect", 0.5, -0.2},
          Case{"RandomZoom", "nearest", -0.3, 0.4}}) {
      CAPTURE(k.type);
      CAPTURE(k.fill);
      Spec s({h, w, c});
      s.add(k.type, {{"height_factor", std::vector<double>{k.hf, k.hf}},
                     {"width_factor", std::vector<double>{k.wf, k.wf}},
                     {"fill_mode", k.fill}});
      BuiltModel m = models::testing::build(s, true, n);
      Tensor x = ops::random_tensor(m.graph.value(m.input).shape, -1, 1, 101, DType::f32);  // NCHW
      Tensor y = forward(std::move(m), x);                                                  // NHWC
      const bool zoom = k.type == "RandomZoom";
      auto src = [&](int64_t i, int64_t size, double f) {
        const double centre = (size - 1) / 2.0;
        return zoom ? (i - centre) * (1 + f) + centre : i - f * size;
      };
      for (int64_t b = 0; b < n; ++b)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t i = 0; i < h; ++i)
            for (int64_t j = 0; j < w; ++j) {
              auto row = [&](int64_t r) {
                return sample_axis([&](int64_t q) { return x.get_f64(((b * c + ch) * h + r) * w + q); }, w,
                                   src(j, w, k.wf), k.fill);
              };
              const double want = sample_axis(row, h, src(i, h, k.hf), k.fill);
              CHECK(y.get_f64(((b * h + i) * w + j) * c + ch) == doctest::Approx(want).epsilon(1e-4));
            }
      CHECK(count_ops(models::testing::build(s, false, n).graph, "MatMul") == 0);
    }
    // Drawn shifts differ between images.
    Spec r({h, w, c});
    r.add("RandomTranslation",
          {{"height_factor", 0.5}, {"width_factor", 0.0}, {"fill_mode", std::string("constant")}});
    BuiltModel m = models::testing::build(r, true, 8);
    Tensor ones(DType::f32, m.graph.value(m.input).shape);
    for (int64_t i = 0; i < ones.numel(); ++i) ones.set_f64(i, 1.0);
    Tensor y = forward(std::move(m), ones);
    std::set<double> sums;
    for (int64_t b = 0; b < 8; ++b) {
      double total = 0;
      for (int64_t i = 0; i < h * w * c; ++i) total += y.get_f64(b * h * w * c + i);
      sums.insert(std::round(total * 1000) / 1000);
    }
    CHECK(sums.size() > 4);
    Spec bad({h, w, c});
    bad.add("RandomZoom", {{"height_factor", -1.0}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "height_factor"));
  }

  // Keras's bilinear resize with half-pixel centres along one axis: the source (i + 0.5) n / out - 0.5,
  // clamped to the image, between its two neighbours.
  double resize_axis(const std::function<double(int64_t)>& at, int64_t n, int64_t out, int64_t i) {
    const double src = std::clamp((i + 0.5) * static_cast<double>(n) / static_cast<double>(out) - 0.5, 0.0,
                                  static_cast<double>(n - 1));
    const auto lo = static_cast<int64_t>(std::floor(src));
    const int64_t hi = std::min<int64_t>(lo + 1, n - 1);
    return (1 - (src - static_cast<double>(lo))) * at(lo) + (src - static_cast<double>(lo)) * at(hi);
  }

  TEST_CASE("run: RandomCrop takes each image's own window in training and resizes to it otherwise") {
    const int64_t h = 7, w = 6, c = 2, n = 32, oh = 4, ow = 3;
    Spec s({h, w, c});
    s.add("RandomCrop", {{"height", oh}, {"width", ow}});
    BuiltModel m = models::testing::build(s, true, n);
    CHECK(m.layers.back().output_shape == v({oh, ow, c}));
    Tensor x = ops::random_tensor(m.graph.value(m.input).shape, -1, 1, 107, DType::f32);  // NCHW
    Tensor y = forward(std::move(m), x);                                                  // NHWC
    auto in = [&](int64_t b, int64_t ch, int64_t i, int64_t j) {
      return x.get_f64(((b * c + ch) * h + i) * w + j);
    };
    std::set<int64_t> tops, lefts;
    std::set<std::pair<int64_t, int64_t>> windows;
    for (int64_t b = 0; b < n; ++b) {
      int found = 0;
      for (int64_t top = 0; top + oh <= h; ++top)
        for (int64_t left = 0; left + ow <= w; ++left) {
          bool same = true;
          for (int64_t i = 0; i < oh && same; ++i)
            for (int64_t j = 0; j < ow && same; ++j)
              for (int64_t ch = 0; ch < c && same; ++ch)
                same = y.get_f64(((b * oh + i) * ow + j) * c + ch) == in(b, ch, top + i, left + j);
          if (!same) continue;
          ++found;
          tops.insert(top), lefts.insert(left), windows.insert({top, left});
        }
      CHECK(found == 1);  // exactly one window of the image, copied exactly
    }
    CHECK(tops.size() == static_cast<size_t>(h - oh + 1));  // every offset is drawn, the last included
    CHECK(lefts.size() == static_cast<size_t>(w - ow + 1));
    CHECK(windows.size() > 8);  // the images draw their own windows

    // Outside training: the largest centred 4:3 window (7 by 5, the spare column on the right), resized.
    BuiltModel e = models::testing::build(s, false, n);
    CHECK(count_ops(e.graph, "RandomUniformLike") == 0);
    CHECK(e.layers.back().output_shape == v({oh, ow, c}));
    Tensor ye = forward(std::move(e), x);
    const int64_t cw = 5, left = 0;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            auto row = [&](int64_t r) {
              return resize_axis([&](int64_t q) { return in(b, ch, r, left + q); }, cw, ow, j);
            };
            CHECK(ye.get_f64(((b * oh + i) * ow + j) * c + ch) ==
                  doctest::Approx(resize_axis(row, h, oh, i)).epsilon(1e-5));
          }

    // An image smaller than the window is resized in training too; a window must have a size.
    Spec small({3, 5, 1});
    small.add("RandomCrop", {{"height", int64_t{4}}, {"width", int64_t{4}}});
    BuiltModel sm = models::testing::build(small, true, 2);
    CHECK(count_ops(sm.graph, "RandomUniformLike") == 0);
    CHECK(sm.layers.back().output_shape == v({4, 4, 1}));
    Spec bad({h, w, c});
    bad.add("RandomCrop", {{"height", int64_t{0}}, {"width", int64_t{3}}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "height"));
  }

  TEST_CASE("run: RandomRotation turns each image about its centre as Keras, with its fill mode") {
    const int64_t h = 6, w = 5, c = 2, n = 2;
    for (const std::string fill : {"reflect", "constant", "nearest"}) {
      CAPTURE(fill);
      const double factor = 0.07;  // a fixed draw: lower == upper
      Spec s({h, w, c});
      s.add("RandomRotation", {{"factor", std::vector<double>{factor, factor}}, {"fill_mode", fill}});
      BuiltModel m = models::testing::build(s, true, n);
      Tensor x = ops::random_tensor(m.graph.value(m.input).shape, -1, 1, 103, DType::f32);  // NCHW
      Tensor y = forward(std::move(m), x);                                                  // NHWC
      const double theta = factor * 2 * M_PI, cy = (h - 1) / 2.0, cx = (w - 1) / 2.0;
      for (int64_t b = 0; b < n; ++b)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t i = 0; i < h; ++i)
            for (int64_t j = 0; j < w; ++j) {
              // Output pixel (i, j) reads the input at its offset from the centre turned by theta.
              const double u = j - cx, v = i - cy;
              const double xs = std::cos(theta) * u - std::sin(theta) * v + cx;
              const double ys = std::sin(theta) * u + std::cos(theta) * v + cy;
              auto row = [&](int64_t r) {
                return sample_axis([&](int64_t q) { return x.get_f64(((b * c + ch) * h + r) * w + q); }, w,
                                   xs, fill);
              };
              CHECK(y.get_f64(((b * h + i) * w + j) * c + ch) ==
                    doctest::Approx(sample_axis(row, h, ys, fill)).epsilon(1e-4));
            }
      CHECK(count_ops(models::testing::build(s, false, n).graph, "GridSample") == 0);
    }
    Spec bad({h, w, c});
    bad.add("RandomRotation", {{"factor", 0.1}, {"fill_mode", std::string("wrap")}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "fill_mode"));
  }
}

TEST_SUITE("run") {
  TEST_CASE("run: UpSampling1D repeats steps and ZeroPadding1D adds zero steps, in either layout") {
    for (bool after_conv : {false, true}) {
      CAPTURE(after_conv);
      auto model = [&](bool reshaped) {
        Spec s({4, 2});
        if (after_conv)  // a Conv1D leaves the sequence channels-first
          s.add("Conv1D", {{"filters", int64_t{2}}, {"kernel_size", int64_t{1}}});
        if (reshaped)
          s.add("UpSampling1D", {{"size", int64_t{3}}}).add("ZeroPadding1D", {{"padding", v({1, 2})}});
        return models::testing::build(s, false, 2);
      };
      BuiltModel m = model(true);
      CHECK(m.layers.back().output_shape == v({15, 2}));
      Tensor x = random_input(m, 11);
      Tensor z = x;  // the sequence before the two layers
      if (after_conv) {
        BuiltModel base = model(false);
        for (const char* name : {"conv1d/kernel", "conv1d/bias"})
          *base.graph.mutable_initializer(base.graph.find(name)) = weight(m, name);
        z = forward(std::move(base), x);
      }
      Tensor y = forward(std::move(m), x);
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t t = 0; t < 15; ++t)
          for (int64_t f = 0; f < 2; ++f) {
            const int64_t src = t - 1;  // one zero step first, then each step three times, then two zeros
            const double want = src >= 0 && src < 12 ? z.get_f64((b * 4 + src / 3) * 2 + f) : 0.0;
            CHECK(y.get_f64((b * 15 + t) * 2 + f) == doctest::Approx(want));
          }
    }
  }

  TEST_CASE("run: GroupNormalization normalizes each group of channels over every position") {
    for (bool image : {true, false}) {
      CAPTURE(image);
      const std::vector<int64_t> shape = image ? v({3, 2, 6}) : v({5, 6});
      Spec s(shape);
      s.add("GroupNormalization", {{"groups", int64_t{3}},
                                   {"epsilon", 0.01},
                                   {"gamma_initializer", std::string("uniform")},
                                   {"beta_initializer", std::string("uniform")}});
      BuiltModel m = models::testing::build(s, false, 2);
      CHECK(m.layers[0].params == 12);
      const Tensor gamma = weight(m, "group_normalization/gamma"),
                   beta = weight(m, "group_normalization/beta");
      Tensor x = random_input(m, 12);       // the IR layout: NCHW for an image
      Tensor y = forward(std::move(m), x);  // channels-last
      const int64_t positions = image ? 6 : 5, channels = 6;
      auto at = [&](int64_t b, int64_t p, int64_t c) {  // x at position p, channel c
        return image ? x.get_f64((b * channels + c) * positions + p)
                     : x.get_f64((b * positions + p) * channels + c);
      };
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t g = 0; g < 3; ++g) {
          double mean = 0, var = 0;
          for (int64_t p = 0; p < positions; ++p)
            for (int64_t c = 2 * g; c < 2 * g + 2; ++c) mean += at(b, p, c) / (2.0 * positions);
          for (int64_t p = 0; p < positions; ++p)
            for (int64_t c = 2 * g; c < 2 * g + 2; ++c)
              var += std::pow(at(b, p, c) - mean, 2) / (2.0 * positions);
          for (int64_t p = 0; p < positions; ++p)
            for (int64_t c = 2 * g; c < 2 * g + 2; ++c) {
              const double want =
                  (at(b, p, c) - mean) / std::sqrt(var + 0.01) * gamma.get_f64(c) + beta.get_f64(c);
              CHECK(y.get_f64((b * positions + p) * channels + c) == doctest::Approx(want).epsilon(1e-4));
            }
        }
    }
    Spec bad({5, 6});
    bad.add("GroupNormalization", {{"groups", int64_t{4}}});
    CHECK(build_error(bad).where() == bad.arg_at(0, "groups"));
  }

  TEST_CASE("run: UpSampling2D bilinear is the bilinear Resizing to the upsampled size, as in Keras") {
    Spec up({3, 4, 2}), resized({3, 4, 2});
    up.add("UpSampling2D", {{"size", v({2, 3})}, {"interpolation", std::string("bilinear")}});
    resized.add("Resizing", {{"height", int64_t{6}}, {"width", int64_t{12}}});
    BuiltModel a = models::testing::build(up, false, 2), b = models::testing::build(resized, false, 2);
    CHECK(a.layers[0].output_shape == v({6, 12, 2}));
    CHECK(a.layers[0].flops_per_sample == b.layers[0].flops_per_sample);
    Tensor x = random_input(a, 23);
    Tensor ya = forward(std::move(a), x), yb = forward(std::move(b), x);
    REQUIRE(ya.shape() == yb.shape());
    int differ = 0;
    for (int64_t i = 0; i < ya.numel(); ++i) differ += ya.get_f64(i) != yb.get_f64(i);
    CHECK(differ == 0);
    // Not the nearest-neighbour blocks.
    Spec near({3, 4, 2});
    near.add("UpSampling2D", {{"size", v({2, 3})}});
    BuiltModel c = models::testing::build(near, false, 2);
    Tensor yc = forward(std::move(c), x);
    for (int64_t i = 0; i < yc.numel(); ++i) differ += yc.get_f64(i) != yb.get_f64(i);
    CHECK(differ > 0);
  }

  TEST_CASE("run: merges broadcast dimensions of 1, as Keras's do") {
    // A squeeze-and-excitation product: each channel of (None, 2, 3, 4) times its mean, (None, 1, 1, 4).
    const int64_t H = 2, W = 3, C = 4;
    Spec s({H, W, C});
    s.add("GlobalAveragePooling2D", {{"keepdims", true}}, "mean")
        .add("Multiply", {}, "scaled", {"input", "mean"})
        .add("Subtract", {}, "centered", {"scaled", "mean"});
    BuiltModel m = models::testing::build(s, false, 2);
    CHECK(m.layers[1].output_shape == v({H, W, C}));
    Tensor x = random_input(m, 21);  // NCHW
    Tensor y = forward(std::move(m), x);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < C; ++c) {
        double mean = 0;
        for (int64_t p = 0; p < H * W; ++p) mean += x.get_f64((b * C + c) * H * W + p) / (H * W);
        for (int64_t p = 0; p < H * W; ++p)
          CHECK(y.get_f64((b * H * W + p) * C + c) ==
                doctest::Approx(x.get_f64((b * C + c) * H * W + p) * mean - mean).epsilon(1e-5));
      }
  }

  TEST_CASE("run: LayerNormalization over axes that are not the last ones, as Keras computes it") {
    // Keras axis = [1, 3] of an image (None, 2, 3, 4): each sample's rows and channels normalized at each
    // column, gamma and beta of shape (2, 4); axis = 1 of a sequence (None, 5, 3): each feature over the
    // steps.
    for (bool image : {true, false}) {
      CAPTURE(image);
      const int64_t H = image ? 2 : 5, W = image ? 3 : 1, C = image ? 4 : 3;
      Spec s(image ? v({H, W, C}) : v({H, C}));
      s.add("LayerNormalization", {{"axis", image ? v({1, 3}) : v({1})},
                                   {"epsilon", 0.01},
                                   {"gamma_initializer", std::string("uniform")},
                                   {"beta_initializer", std::string("uniform")}});
      BuiltModel m = models::testing::build(s, false, 2);
      const Tensor gamma = weight(m, "layer_normalization/gamma"),
                   beta = weight(m, "layer_normalization/beta");
      CHECK(gamma.shape() == (image ? Shape{H, C} : Shape{H}));
      CHECK(m.layers[0].params == 2 * H * (image ? C : 1));
      Tensor x = random_input(m, 14);  // the IR layout: NCHW for an image
      Tensor y = forward(std::move(m), x);
      auto at = [&](int64_t b, int64_t i, int64_t j, int64_t c) {  // x at Keras index (b, i, j, c)
        return image ? x.get_f64(((b * C + c) * H + i) * W + j) : x.get_f64((b * H + i) * C + c);
      };
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t j = 0; j < W; ++j)
          for (int64_t c0 = 0; c0 < (image ? 1 : C); ++c0) {
            // The normalized group: every (i, c) of column j for the image, every step i of feature c0 else.
            const int64_t cs = image ? 0 : c0, ce = image ? C : c0 + 1;
            const double count = static_cast<double>(H * (ce - cs));
            double mean = 0, var = 0;
            for (int64_t i = 0; i < H; ++i)
              for (int64_t c = cs; c < ce; ++c) mean += at(b, i, j, c) / count;
            for (int64_t i = 0; i < H; ++i)
              for (int64_t c = cs; c < ce; ++c) var += std::pow(at(b, i, j, c) - mean, 2) / count;
            for (int64_t i = 0; i < H; ++i)
              for (int64_t c = cs; c < ce; ++c) {
                const int64_t p = image ? i * C + c : i;
                const double want =
                    (at(b, i, j, c) - mean) / std::sqrt(var + 0.01) * gamma.get_f64(p) + beta.get_f64(p);
                CHECK(y.get_f64(((b * H + i) * W + j) * C + c) == doctest::Approx(want).epsilon(1e-4));
              }
          }
    }
  }

  TEST_CASE("run: UnitNormalization and Dot (plain and normalized) as Keras computes them") {
    Spec u({4});
    u.add("UnitNormalization");
    BuiltModel mu = models::testing::build(u, false, 2);
    Tensor x = random_input(mu, 13);
    Tensor y = forward(std::move(mu), x);
    for (int64_t b = 0; b < 2; ++b) {
      double norm = 0;
      for (int64_t f = 0; f < 4; ++f) norm += x.get_f64(b * 4 + f) * x.get_f64(b * 4 + f);
      for (int64_t f = 0; f < 4; ++f)
        CHECK(y.get_f64(b * 4 + f) == doctest::Approx(x.get_f64(b * 4 + f) / std::sqrt(norm)));
    }
    // Sequences a [3, 2] and b [4, 2] (the input's halves): along the features, [3, 4]; along the steps of
    // two [3, 2] halves, [2, 2].
    for (bool normalize : {false, true})
      for (int64_t axis : {2, 1}) {
        CAPTURE(normalize);
        CAPTURE(axis);
        const int64_t ta = 3, tb = axis == 2 ? 4 : 3;
        Spec s({ta + tb, 2});
        s.add("Cropping1D", {{"cropping", v({0, tb})}}, "a", {"input"})
            .add("Cropping1D", {{"cropping", v({ta, 0})}}, "b", {"input"})
            .add("Dot", {{"axes", axis}, {"normalize", normalize}}, "dot", {"a", "b"});
        BuiltModel m = models::testing::build(s, false, 2);
        Tensor in = random_input(m, 14);
        Tensor out = forward(std::move(m), in);
        auto a = [&](int64_t b, int64_t t, int64_t f) { return in.get_f64((b * (ta + tb) + t) * 2 + f); };
        auto bb = [&](int64_t b, int64_t t, int64_t f) {
          return in.get_f64((b * (ta + tb) + ta + t) * 2 + f);
        };
        const int64_t rows = axis == 2 ? ta : 2, cols = axis == 2 ? tb : 2, len = axis == 2 ? 2 : ta;
        REQUIRE(out.shape() == Shape{2, rows, cols});
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
              double dot = 0, na = 0, nb = 0;
              for (int64_t k = 0; k < len; ++k) {
                const double p = axis == 2 ? a(b, i, k) : a(b, k, i),
                             q = axis == 2 ? bb(b, j, k) : bb(b, k, j);
                dot += p * q;
                na += p * p;
                nb += q * q;
              }
              const double want = normalize ? dot / std::sqrt(na * nb) : dot;
              CHECK(out.get_f64((b * rows + i) * cols + j) == doctest::Approx(want).epsilon(1e-5));
            }
      }
  }

  TEST_CASE("run: Attention and AdditiveAttention score, mask and mix the values as Keras") {
    const int64_t steps = 4, dim = 3, n = 2;
    // Token ids with padding (0) so the masks count: keys at padded steps get no weight, padded queries give
    // zeros.
    const std::vector<int32_t> ids = {3, 1, 0, 0, 2, 4, 5, 0};
    for (const std::string kind : {"dot", "concat", "additive"}) {
      CAPTURE(kind);
      Spec s({steps}, "int32");
      s.add("Embedding", {{"input_dim", int64_t{6}}, {"output_dim", dim}, {"mask_zero", true}}, "e");
      if (kind == "additive")
        s.add("AdditiveAttention", {}, "att", {"e", "e"});
      else
        s.add("Attention", {{"use_scale", true}, {"score_mode", kind}}, "att", {"e", "e"});
      BuiltModel m = models::testing::build(s, false, n);
      const Tensor table = weight(m, "e/embeddings");
      const Tensor scale = weight(m, "att/scale");
      Tensor y = forward(std::move(m), Tensor::from<int32_t>(Shape{n, steps}, ids));
      auto e = [&](int64_t b, int64_t t, int64_t f) { return table.get_f64(ids[b * steps + t] * dim + f); };
      for (int64_t b = 0; b < n; ++b)
        for (int64_t i = 0; i < steps; ++i) {
          std::vector<double> w(steps);
          double top = -1e300;
          for (int64_t j = 0; j < steps; ++j) {
            double sc = 0;
            for (int64_t f = 0; f < dim; ++f) {
              if (kind == "dot")
                sc += e(b, i, f) * e(b, j, f);
              else if (kind == "concat")
                sc += std::tanh(scale.get_f64(0) * (e(b, i, f) + e(b, j, f)));
              else
                sc += scale.get_f64(f) * std::tanh(e(b, i, f) + e(b, j, f));
            }
            if (kind == "dot") sc *= scale.get_f64(0);  // concat_score_weight starts at 1
            w[j] = ids[b * steps + j] == 0 ? -1e300 : sc;
            top = std::max(top, w[j]);
          }
          double total = 0;
          for (double& wj : w) total += wj = wj == -1e300 ? 0.0 : std::exp(wj - top);
          for (int64_t f = 0; f < dim; ++f) {
            double want = 0;
            for (int64_t j = 0; j < steps; ++j) want += w[j] / total * e(b, j, f);
            if (ids[b * steps + i] == 0) want = 0;
            CHECK(y.get_f64((b * steps + i) * dim + f) == doctest::Approx(want).epsilon(1e-5));
          }
        }
    }
  }

  TEST_CASE(
      "run: a causal mask and a padding mask combine as Keras's: a query that sees only padding weighs all") {
    // Pre-padded ids: query step 0 of the first sample sees key 0 alone, which is padding. Keras combines the
    // causal mask and the value's padding mask (a logical and) and adds -1e9 once, so that row weighs every
    // key alike; other rows take the softmax over their visible unpadded keys. The query has no mask of its
    // own (an embedding without mask_zero), so no row is zeroed.
    const int64_t steps = 4, dim = 3, n = 2;
    const std::vector<int32_t> ids = {0, 0, 3, 1, 2, 0, 5, 4};
    for (bool additive : {false, true}) {
      CAPTURE(additive);
      Spec s({steps}, "int32");
      s.add("Embedding", {{"input_dim", int64_t{6}}, {"output_dim", dim}}, "q")
          .add("Embedding", {{"input_dim", int64_t{6}}, {"output_dim", dim}, {"mask_zero", true}}, "e",
               {"input"});
      if (additive)
        s.add("AdditiveAttention", {{"use_causal_mask", true}, {"use_scale", false}}, "att", {"q", "e"});
      else
        s.add("Attention", {{"use_causal_mask", true}}, "att", {"q", "e"});
      BuiltModel m = models::testing::build(s, false, n);
      const Tensor qt = weight(m, "q/embeddings"), vt = weight(m, "e/embeddings");
      Tensor y = forward(std::move(m), Tensor::from<int32_t>(Shape{n, steps}, ids));
      auto q = [&](int64_t b, int64_t t, int64_t f) { return qt.get_f64(ids[b * steps + t] * dim + f); };
      auto v = [&](int64_t b, int64_t t, int64_t f) { return vt.get_f64(ids[b * steps + t] * dim + f); };
      for (int64_t b = 0; b < n; ++b)
        for (int64_t i = 0; i < steps; ++i) {
          std::vector<double> w(steps, 0.0);
          std::vector<bool> on(steps);
          bool any = false;
          for (int64_t j = 0; j < steps; ++j) any |= on[j] = j <= i && ids[b * steps + j] != 0;
          double top = -1e300;
          for (int64_t j = 0; j < steps; ++j) {
            double sc = 0;
            for (int64_t f = 0; f < dim; ++f)
              sc += additive ? std::tanh(q(b, i, f) + v(b, j, f)) : q(b, i, f) * v(b, j, f);
            w[j] = sc;
            if (on[j]) top = std::max(top, sc);
          }
          double total = 0;
          for (int64_t j = 0; j < steps; ++j) total += w[j] = !any ? 1.0 : on[j] ? std::exp(w[j] - top) : 0.0;
          for (int64_t f = 0; f < dim; ++f) {
            double want = 0;
            for (int64_t j = 0; j < steps; ++j) want += w[j] / total * v(b, j, f);
            CAPTURE(b);
            CAPTURE(i);
            CHECK(y.get_f64((b * steps + i) * dim + f) == doctest::Approx(want).epsilon(1e-5));
          }
        }
    }
  }

  TEST_CASE("run: MultiHeadAttention combines its causal mask with the value's padding mask as Keras's") {
    // Query from an embedding without a mask, value from one with mask_zero, pre-padded ids: query step 0
    // of the first sample sees only padding, so it weighs all four keys alike; the others take the softmax
    // over their visible unpadded keys.
    const int64_t steps = 4, dim = 4, heads = 2, kd = 2, n = 2;
    const std::vector<int32_t> ids = {0, 0, 3, 1, 2, 0, 5, 4};
    Spec s({steps}, "int32");
    s.add("Embedding", {{"input_dim", int64_t{6}}, {"output_dim", dim}}, "q")
        .add("Embedding", {{"input_dim", int64_t{6}}, {"output_dim", dim}, {"mask_zero", true}}, "e",
             {"input"})
        .add("MultiHeadAttention",
             {{"num_heads", heads},
              {"key_dim", kd},
              {"use_causal_mask", true},
              {"bias_initializer", std::string("glorot_uniform")}},
             "mha", {"q", "e"});
    BuiltModel m = models::testing::build(s, false, n);
    auto w = [&](const std::string& name) { return weight(m, "mha/" + name); };
    const Tensor wq = w("query/kernel"), bq = w("query/bias"), wk = w("key/kernel"), bk = w("key/bias");
    const Tensor wv = w("value/kernel"), bv = w("value/bias"), wo = w("attention_output/kernel");
    const Tensor bo = w("attention_output/bias"), qt = weight(m, "q/embeddings"),
                 vt = weight(m, "e/embeddings");
    Tensor y = forward(std::move(m), Tensor::from<int32_t>(Shape{n, steps}, ids));
    for (int64_t b = 0; b < n; ++b) {
      // x's projection of step t, head h, feature d.
      auto proj = [&](const Tensor& table, const Tensor& k, const Tensor& bias, int64_t t, int64_t h,
                      int64_t d) {
        double acc = bias.get_f64(h * kd + d);
        for (int64_t c = 0; c < dim; ++c)
          acc += table.get_f64(ids[b * steps + t] * dim + c) * k.get_f64((c * heads + h) * kd + d);
        return acc;
      };
      for (int64_t i = 0; i < steps; ++i) {
        std::vector<double> ctx(heads * kd, 0.0);
        for (int64_t h = 0; h < heads; ++h) {
          std::vector<double> score(steps, 0.0);
          std::vector<bool> on(steps);
          bool any = false;
          double top = -1e300;
          for (int64_t j = 0; j < steps; ++j) {
            any |= on[j] = j <= i && ids[b * steps + j] != 0;
            for (int64_t d = 0; d < kd; ++d)
              score[j] += proj(qt, wq, bq, i, h, d) * proj(vt, wk, bk, j, h, d);
            score[j] /= std::sqrt(double(kd));
            if (on[j]) top = std::max(top, score[j]);
          }
          double total = 0;
          for (int64_t j = 0; j < steps; ++j)
            total += score[j] = !any ? 1.0 : on[j] ? std::exp(score[j] - top) : 0.0;
          for (int64_t j = 0; j < steps; ++j)
            for (int64_t d = 0; d < kd; ++d) ctx[h * kd + d] += score[j] / total * proj(vt, wv, bv, j, h, d);
        }
        for (int64_t o = 0; o < dim; ++o) {
          double want = bo.get_f64(o);
          for (int64_t k = 0; k < heads * kd; ++k) want += ctx[k] * wo.get_f64(k * dim + o);
          CAPTURE(b);
          CAPTURE(i);
          CHECK(y.get_f64((b * steps + i) * dim + o) == doctest::Approx(want).epsilon(1e-4));
        }
      }
    }
  }

  TEST_CASE("run: MultiHeadAttention with mask_zero ignores the padded keys") {
    // Changing what a padded step holds (row 0 of the token table) changes nothing at the unmasked queries.
    Spec s({5}, "int32");
    s.add("TokenAndPositionEmbedding",
          {{"vocabulary_size", int64_t{7}},
           {"sequence_length", int64_t{5}},
           {"embedding_dim", int64_t{4}},
           {"mask_zero", true}},
          "tok")
        .add("MultiHeadAttention", {{"num_heads", int64_t{2}}, {"key_dim", int64_t{2}}}, "mha",
             {"tok", "tok"});
    check_padded_steps_count_for_nothing(s);
  }

  TEST_CASE("run: MultiHeadAttention with a key of its own still ignores the value's padded steps") {
    // query and value from a masked embedding, the key from one without a mask: Keras combines the value's
    // mask with the key's, so the padded values (row 0 of the value's table) weigh nothing.
    Spec s({5}, "int32");
    const std::vector<std::pair<std::string, formats::ArgValue>> embedding = {
        {"vocabulary_size", int64_t{7}}, {"sequence_length", int64_t{5}}, {"embedding_dim", int64_t{4}}};
    auto masked = embedding;
    masked.push_back({"mask_zero", true});
    s.add("TokenAndPositionEmbedding", masked, "tok")
        .add("TokenAndPositionEmbedding", embedding, "plain", {"input"})
        .add("MultiHeadAttention", {{"num_heads", int64_t{2}}, {"key_dim", int64_t{2}}}, "mha",
             {"tok", "tok", "plain"});
    check_padded_steps_count_for_nothing(s);
  }
}

TEST_SUITE("run") {
  TEST_CASE(
      "run: Resizing halves by 2x2 means (bilinear), doubles by repeats (nearest); CenterCrop centres") {
    const int64_t h = 4, w = 6, c = 2, n = 2;
    const Tensor x = ops::random_tensor(Shape{n, c, h, w}, -1, 1, 121, DType::f32);  // the IR's NCHW
    // Runs one layer on x; returns its NHWC output.
    auto run_layer = [&](const std::string& type,
                         std::vector<std::pair<std::string, formats::ArgValue>> args) {
      Spec s({h, w, c});
      s.add(type, std::move(args));
      BuiltModel m = models::testing::build(s, false, n);
      return forward(std::move(m), x);
    };
    auto px = [&](int64_t b, int64_t i, int64_t j, int64_t k) {
      return x.get_f64(((b * c + k) * h + i) * w + j);
    };
    // The mean of the 2 x 2 block at (2i, left + 2j).
    auto block = [&](int64_t b, int64_t i, int64_t j, int64_t k, int64_t left) {
      return (px(b, 2 * i, left + 2 * j, k) + px(b, 2 * i + 1, left + 2 * j, k) +
              px(b, 2 * i, left + 2 * j + 1, k) + px(b, 2 * i + 1, left + 2 * j + 1, k)) /
             4;
    };
    Tensor half = run_layer("Resizing", {{"height", int64_t{2}}, {"width", int64_t{3}}});
    Tensor twice = run_layer(
        "Resizing",
        {{"height", int64_t{8}}, {"width", int64_t{12}}, {"interpolation", std::string("nearest")}});
    Tensor square = run_layer(
        "Resizing", {{"height", int64_t{2}}, {"width", int64_t{2}}, {"crop_to_aspect_ratio", true}});
    Tensor centre = run_layer("CenterCrop", {{"height", int64_t{1}}, {"width", int64_t{3}}});
    REQUIRE(half.shape() == Shape{n, 2, 3, c});
    REQUIRE(twice.shape() == Shape{n, 8, 12, c});
    REQUIRE(square.shape() == Shape{n, 2, 2, c});
    REQUIRE(centre.shape() == Shape{n, 1, 3, c});
    for (int64_t b = 0; b < n; ++b)
      for (int64_t k = 0; k < c; ++k) {
        for (int64_t i = 0; i < 2; ++i)
          for (int64_t j = 0; j < 3; ++j)
            CHECK(half.get_f64(((b * 2 + i) * 3 + j) * c + k) == doctest::Approx(block(b, i, j, k, 0)));
        for (int64_t i = 0; i < 8; ++i)
          for (int64_t j = 0; j < 12; ++j)
            CHECK(twice.get_f64(((b * 8 + i) * 12 + j) * c + k) == doctest::Approx(px(b, i / 2, j / 2, k)));
        for (int64_t i = 0; i < 2; ++i)  // the centred 4 x 4 window (columns 1..4), halved
          for (int64_t j = 0; j < 2; ++j)
            CHECK(square.get_f64(((b * 2 + i) * 2 + j) * c + k) == doctest::Approx(block(b, i, j, k, 1)));
        for (int64_t j = 0; j < 3; ++j)  // row 1 (an odd margin's extra row at the bottom), columns 1..3
          CHECK(centre.get_f64((b * 3 + j) * c + k) == doctest::Approx(px(b, 1, 1 + j, k)));
      }
    Spec bad({4, 6, 2});
    bad.add("CenterCrop", {{"height", int64_t{5}}, {"width", int64_t{2}}});
    CHECK(contains(build_error(bad).what(), "smaller image"));
  }
}
