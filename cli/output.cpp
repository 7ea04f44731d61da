// stdout/stderr routing, the progress bar, and small JSON writers.
#include "cli/output.h"

#include <unistd.h>

#include <cmath>

namespace trainer::cli {

Output::Output(LogFormat format, bool quiet) : quiet_(quiet) {
  bool stdout_tty = isatty(STDOUT_FILENO), stderr_tty = isatty(STDERR_FILENO);
  json_ = format == LogFormat::jsonl || (format == LogFormat::automatic && !stdout_tty);
  bar_ = stderr_tty && !quiet;
}

void Output::json_line(const std::string& object) {
  if (!json_) return;
  clear_bar();
  std::fwrite(object.data(), 1, object.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void Output::bar(const std::string& text) {
  if (!bar_) return;
  fmt::print(stderr, "\r\x1b[2K{}", text);
  std::fflush(stderr);
  bar_shown_ = true;
}

void Output::clear_bar() {
  if (!bar_shown_) return;
  fmt::print(stderr, "\r\x1b[2K");
  bar_shown_ = false;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out += c;
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  return fmt::format("{:.9g}", v);
}

std::string json_object(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out = "{";
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ", ";
    out += json_string(fields[i].first) + ": " + fields[i].second;
  }
  return out + "}";
}

}  // namespace trainer::cli
