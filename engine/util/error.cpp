// Formatting of internal assertion failures, and writing to stderr.
#include "engine/util/error.h"

#include <cstdio>

namespace trainer {

void assert_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(
      fmt::format("internal error: {} ({}:{}){}{}", expr, file, line, msg.empty() ? "" : ": ", msg));
}

void write_stderr(std::string_view text) noexcept {
  if (std::fwrite(text.data(), 1, text.size(), stderr) != text.size() || std::fflush(stderr) != 0)
    std::clearerr(stderr);  // nobody reads it: the text is dropped, and the run goes on
}

}  // namespace trainer
