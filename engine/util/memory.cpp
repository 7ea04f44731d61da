// The memory this process may fill: physical memory under the process's limits.
#include "engine/util/memory.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <string>

namespace trainer::engine {

namespace {

double read_usable_memory() {
  double m = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  for (int resource : {RLIMIT_AS, RLIMIT_DATA}) {
    rlimit r{};
    if (getrlimit(resource, &r) == 0 && r.rlim_cur != RLIM_INFINITY)
      m = std::min(m, static_cast<double>(r.rlim_cur));
  }
  // A byte count, or "max" (none).
  auto limit_in = [&m](const std::string& file) {
    std::ifstream f(file);
    std::string text;
    if (f >> text && !text.empty() && std::isdigit(static_cast<unsigned char>(text[0])))
      m = std::min(m, std::strtod(text.c_str(), nullptr));
  };
  // The process's control groups, from /proc/self/cgroup: "0::/path" (v2), "N:memory:/path" (v1). A v2 limit
  // of any group above the process's holds too.
  std::ifstream groups("/proc/self/cgroup");
  for (std::string line; std::getline(groups, line);) {
    if (line.rfind("0::", 0) == 0) {
      for (std::string path = line.substr(3);; path = path.substr(0, path.rfind('/'))) {
        limit_in("/sys/fs/cgroup" + path + "/memory.max");
        if (path.empty() || path == "/") break;
      }
    } else if (const size_t at = line.find(":memory:"); at != std::string::npos) {
      limit_in("/sys/fs/cgroup/memory" + line.substr(at + 8) + "/memory.limit_in_bytes");
    }
  }
  limit_in("/sys/fs/cgroup/memory.max");
  return m;
}

}  // namespace

double usable_memory_bytes() {
  static const double bytes = read_usable_memory();
  return bytes;
}

}  // namespace trainer::engine
