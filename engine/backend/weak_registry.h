// Objects one kernel makes and a later kernel of the same plan may reuse (an RNN forward's records, read by
// its gradient kernel), found by a key both compute. Entries hold weak references: they expire with their
// owners.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace trainer::engine {

template <class V>
class WeakRegistry {
 public:
  static void add(const std::string& key, const std::shared_ptr<V>& value) {
    std::lock_guard<std::mutex> lock(mutex());
    auto& m = map();
    std::erase_if(m, [](const auto& kv) { return kv.second.expired(); });
    m[key] = value;
  }
  static std::shared_ptr<V> find(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex());
    auto it = map().find(key);
    return it == map().end() ? nullptr : it->second.lock();
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::map<std::string, std::weak_ptr<V>>& map() {
    static std::map<std::string, std::weak_ptr<V>> m;
    return m;
  }
};

}  // namespace trainer::engine
