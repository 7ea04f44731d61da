// A layer's arguments checked against its Keras signature: unknown names (with a did-you-mean), wrong types
// and missing required ones are InputErrors at the argument's position in the spec.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "formats/model_spec.h"

namespace trainer::models {

enum class ArgKind {
  integer,        // 64
  int_or_single,  // 3 or [3] (Keras's 1-D sizes, which take a tuple of one)
  number,         // 0.5 or 1
  boolean,        // true
  string,         // "same"
  int_or_pair,    // 3 or [3, 3]
  int_or_triple,  // 3 or [3, 3, 3]
  int_or_ints,    // -1 or [1, 2, 3]
  ints,           // [7, 7, 64]
  number_pair,    // 0.2 or [-0.2, 0.3]
  numbers,        // 0.5 or [0.1, 2, 3.5]
};

struct ArgDecl {
  std::string name;
  ArgKind kind;
  std::optional<formats::ArgValue> default_value;  // nullopt: required unless `optional`
  bool optional = false;                           // no default, and may be absent (Dropout's seed)
};

// The closest candidate to `word` by edit distance (case-insensitive), or "" when none is close enough to be
// a plausible misspelling.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);
// "did you mean 'x'? " or "", to start a hint that goes on.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);
// "did you mean 'x'?" or "", a hint by itself.
std::string did_you_mean_only(const std::string& word, const std::vector<std::string>& candidates);

class LayerArgs {
 public:
  // Checks every given argument against `decls` (unknown names, types) and that required ones are present.
  LayerArgs(const formats::LayerSpec& spec, const std::vector<ArgDecl>& decls);

  bool has(const std::string& name) const;  // given in the spec
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  bool boolean(const std::string& name) const;
  std::string string(const std::string& name) const;
  // An int_or_pair as two values; an int_or_ints as a list.
  std::vector<int64_t> pair(const std::string& name) const;
  // An int_or_triple as three values.
  std::vector<int64_t> triple(const std::string& name) const;
  std::vector<int64_t> ints(const std::string& name) const;
  // A number_pair as [lower, upper]; a single number v as [-v, v] when `symmetric`, else [v, v].
  std::pair<double, double> number_pair(const std::string& name, bool symmetric) const;
  // A `numbers` argument as a list (one number: a list of one).
  std::vector<double> numbers(const std::string& name) const;

  // Where the argument was written; the layer's table when it was not.
  const formats::SourcePos& pos(const std::string& name) const;
  // "Dense layer 'dense_1'", the subject of every message about this layer.
  std::string subject() const;
  [[noreturn]] void fail(const std::string& name, const std::string& what,
                         const std::string& hint = {}) const;
  [[noreturn]] void fail_layer(const std::string& what, const std::string& hint = {}) const;

 private:
  const formats::ArgValue& value(const std::string& name) const;
  const formats::LayerSpec& spec_;
  const std::vector<ArgDecl>& decls_;
};

// How a value reads in a message: 64, 0.5, true, "same", [3, 3].
std::string describe_value(const formats::ArgValue& v);

}  // namespace trainer::models
