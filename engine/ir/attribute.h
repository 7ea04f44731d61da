// Node attributes with ONNX's types: int, float, string, ints, floats, tensor.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "engine/ir/tensor.h"

namespace trainer::engine {

enum class AttrType { i, f, s, ints, floats, t };
using AttrValue = std::variant<int64_t, float, std::string, std::vector<int64_t>, std::vector<float>, Tensor>;
AttrType attr_type_of(const AttrValue& v);
std::string_view attr_type_name(AttrType t);

class Attributes {
 public:
  Attributes() = default;
  Attributes(std::initializer_list<std::pair<const std::string, AttrValue>> init) : map_(init) {}

  bool has(const std::string& name) const { return map_.count(name) != 0; }
  void set(const std::string& name, AttrValue v) { map_[name] = std::move(v); }
  void erase(const std::string& name) { map_.erase(name); }

  // Typed getters. Schemas fill defaults when a node is added, so a missing attribute here is a bug.
  int64_t i(const std::string& name) const { return get<int64_t>(name); }
  float f(const std::string& name) const { return get<float>(name); }
  const std::string& s(const std::string& name) const { return get<std::string>(name); }
  const std::vector<int64_t>& ints(const std::string& name) const { return get<std::vector<int64_t>>(name); }
  const std::vector<float>& floats(const std::string& name) const { return get<std::vector<float>>(name); }
  const Tensor& t(const std::string& name) const { return get<Tensor>(name); }
  // Getters with a fallback, for attributes that are optional without a default (Conv's pads, ...).
  int64_t i_or(const std::string& name, int64_t d) const { return has(name) ? i(name) : d; }
  float f_or(const std::string& name, float d) const { return has(name) ? f(name) : d; }
  std::vector<int64_t> ints_or(const std::string& name, std::vector<int64_t> d) const {
    return has(name) ? ints(name) : d;
  }

  const std::map<std::string, AttrValue>& all() const { return map_; }

 private:
  template <class T>
  const T& get(const std::string& name) const {
    auto it = map_.find(name);
    TRAINER_ASSERT(it != map_.end(), "attribute '{}' is not set", name);
    const T* v = std::get_if<T>(&it->second);
    TRAINER_ASSERT(v != nullptr, "attribute '{}' has type {}", name,
                   attr_type_name(attr_type_of(it->second)));
    return *v;
  }
  std::map<std::string, AttrValue> map_;
};

}  // namespace trainer::engine
