// The product's sample models as hand-made model sections (samples/*.toml say the same in TOML).
#include "spec_builder.h"

namespace trainer::models::testing {

namespace {

std::vector<int64_t> v(std::initializer_list<int64_t> x) {
  return x;
}

}  // namespace

// The CIFAR-10 CNN of the samples: Keras reports 896 + 3,686,912 + 5,130 = 3,692,938 parameters.
Spec cifar_cnn() {
  Spec s({32, 32, 3});
  s.add("Conv2D", {{"filters", int64_t{32}}, {"kernel_size", v({3, 3})}, {"activation", std::string("relu")}})
      .add("MaxPooling2D", {{"pool_size", v({2, 2})}})
      .add("Flatten")
      .add("Dense", {{"units", int64_t{512}}, {"activation", std::string("relu")}})
      .add("Dense", {{"units", int64_t{10}}, {"activation", std::string("softmax")}});
  return s;
}

// The IMDB classifier: Embedding 10000 x 16, LSTM 128, Dense 16 relu, Dense 1 sigmoid.
Spec imdb_lstm(int64_t length) {
  Spec s({length}, "int64");
  s.add("Embedding", {{"input_dim", int64_t{10000}}, {"output_dim", int64_t{16}}})
      .add("LSTM", {{"units", int64_t{128}}})
      .add("Dense", {{"units", int64_t{16}}, {"activation", std::string("relu")}})
      .add("Dense", {{"units", int64_t{1}}, {"activation", std::string("sigmoid")}});
  return s;
}

Spec fashion_mlp() {
  Spec s({28, 28, 1});
  s.add("Flatten")
      .add("Dense", {{"units", int64_t{1024}}, {"activation", std::string("relu")}})
      .add("Dense", {{"units", int64_t{512}}, {"activation", std::string("relu")}})
      .add("Dense", {{"units", int64_t{10}}, {"activation", std::string("softmax")}});
  return s;
}

// Keras's "simple MNIST convnet" example, 34,826 parameters.
Spec fashion_cnn() {
  Spec s({28, 28, 1});
  s.add("Conv2D",
        {{"filters", int64_t{32}}, {"kernel_size", int64_t{3}}, {"activation", std::string("relu")}})
      .add("MaxPooling2D", {{"pool_size", int64_t{2}}})
      .add("Conv2D",
           {{"filters", int64_t{64}}, {"kernel_size", int64_t{3}}, {"activation", std::string("relu")}})
      .add("MaxPooling2D", {{"pool_size", int64_t{2}}})
      .add("Flatten")
      .add("Dropout", {{"rate", 0.5}})
      .add("Dense", {{"units", int64_t{10}}, {"activation", std::string("softmax")}});
  return s;
}

Spec fashion_lstm() {
  Spec s({28, 28});
  s.add("LSTM", {{"units", int64_t{128}}})
      .add("Dense", {{"units", int64_t{16}}, {"activation", std::string("relu")}})
      .add("Dense", {{"units", int64_t{10}}});
  return s;
}

}  // namespace trainer::models::testing
