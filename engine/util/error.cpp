// Formatting of internal assertion failures.
#include "engine/util/error.h"

namespace trainer {

void assert_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(
      fmt::format("internal error: {} ({}:{}){}{}", expr, file, line, msg.empty() ? "" : ": ", msg));
}

}  // namespace trainer
