// Hand-made model sections for the layer library's tests, laid out as a TOML file would be so that every
// value has a line and column to check error positions against.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "engine/util/error.h"
#include "formats/model_spec.h"
#include "models/build.h"

namespace trainer::models::testing {

// model.toml as it would be written:
//   line 1: [model]                 line 2: input = [...]     (value at column 9)
//   then per layer: [[model.layers]] / type = "..." / name = "..." / inputs = [...] / one line per argument,
//   each value at column len(key) + 4, and a blank line.
class Spec {
 public:
  explicit Spec(std::vector<int64_t> input, std::string dtype = "float32") {
    section.pos = pos(1, 1);
    section.input.shape = std::move(input);
    section.input.dtype = std::move(dtype);
    section.input.pos = pos(2, 9);
    line_ = 4;
  }

  Spec& add(std::string type, std::vector<std::pair<std::string, formats::ArgValue>> args = {},
            std::string name = "", std::vector<std::string> inputs = {}) {
    formats::LayerSpec l;
    l.pos = pos(line_++, 1);
    l.type = std::move(type);
    ++line_;
    if (!name.empty()) ++line_;
    l.name = std::move(name);
    if (!inputs.empty()) ++line_;
    l.inputs = std::move(inputs);
    for (auto& [key, value] : args) {
      l.args[key] = formats::Arg{std::move(value), pos(line_++, static_cast<int>(key.size()) + 4), {}};
    }
    ++line_;
    section.layers.push_back(std::move(l));
    return *this;
  }

  // "model.toml:L:C" of layer k's table, and of its argument `key`.
  std::string layer_at(size_t k) const { return section.layers.at(k).pos.str(); }
  std::string arg_at(size_t k, const std::string& key) const {
    return section.layers.at(k).args.at(key).pos.str();
  }

  static formats::SourcePos pos(int line, int col) { return formats::SourcePos{"model.toml", line, col}; }

  formats::ModelSection section;

 private:
  int line_ = 0;
};

inline BuiltModel build(const Spec& s, bool training = false, int64_t batch = 4, uint64_t seed = 1) {
  BuildOptions o;
  o.training = training;
  o.batch_size = batch;
  o.seed = seed;
  return build_model(s.section, o);
}

// The live nodes of op `op` in g.
inline int count_ops(const engine::Graph& g, const std::string& op) {
  int n = 0;
  for (engine::NodeId i = 0; i < g.num_nodes(); ++i) n += !g.node(i).dead && g.node(i).op == op;
  return n;
}

// The one live node of op `op` (the test fails unless there is exactly one).
inline const engine::Node& only_node(const engine::Graph& g, const std::string& op) {
  REQUIRE(count_ops(g, op) == 1);
  for (engine::NodeId i = 0; i < g.num_nodes(); ++i)
    if (!g.node(i).dead && g.node(i).op == op) return g.node(i);
  throw InternalError("unreachable");
}

// Whether `part` is in `s`; says what was searched when not.
inline bool contains(const std::string& s, const std::string& part) {
  bool found = s.find(part) != std::string::npos;
  if (!found) MESSAGE("'" << part << "' is not in: " << s);
  return found;
}

// The InputError that building `s` throws; fails the test when it builds.
inline InputError build_error(const Spec& s) {
  try {
    build(s);
  } catch (const InputError& e) {
    return e;
  }
  FAIL("the model built without an error");
  return InputError("", "");
}

// The product's sample models (sample_specs.cpp).
Spec cifar_cnn();  // Conv2D 32 3x3 relu, MaxPool 2x2, Flatten, Dense 512 relu, Dense 10 softmax
Spec imdb_lstm(int64_t length = 200);  // Embedding 10000x16, LSTM 128, Dense 16 relu, Dense 1 sigmoid
Spec fashion_mlp();                    // Dense 1024 relu, Dense 512 relu, Dense 10 softmax
Spec fashion_cnn();                    // Keras's MNIST convnet example (34,826 parameters)
Spec fashion_lstm();                   // LSTM 128 over the 28 rows, Dense 16 relu, Dense 10

}  // namespace trainer::models::testing
