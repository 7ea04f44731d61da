// A backend's kernel registry: factories by op name, filled once by the backend's explicit register_* list.
// Each backend instantiates it with its own factory type.
#pragma once

#include <map>
#include <string>

#include "engine/util/error.h"

namespace trainer::engine {

template <class Factory>
class KernelRegistryOf {
 public:
  void add(const std::string& op, Factory f) {
    TRAINER_ASSERT(!map_.count(op), "a kernel for {} registered twice", op);
    map_.emplace(op, std::move(f));
  }
  const Factory* find(const std::string& op) const {
    auto it = map_.find(op);
    return it == map_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, Factory>& all() const { return map_; }

 private:
  std::map<std::string, Factory> map_;
};

}  // namespace trainer::engine
