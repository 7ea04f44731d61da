// stdout/stderr routing, the progress bar, and small JSON writers.
#include "cli/output.h"

#include "formats/checkpoint_json.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>

namespace trainer::cli {

namespace {
int first_stdout_error = 0;
}  // namespace

Output::Output(LogFormat format, bool quiet) : quiet_(quiet) {
  bool stdout_tty = isatty(STDOUT_FILENO), stderr_tty = isatty(STDERR_FILENO);
  json_ = format == LogFormat::jsonl || (format == LogFormat::automatic && !stdout_tty);
  bar_ = stderr_tty && !quiet;
}

void Output::json_line(const std::string& object) {
  if (!json_) return;
  clear_bar();
  if (stdout_closed_) return;
  if (!stdout_line(object)) stdout_closed_ = true;  // the run ends as interrupted, not as a failed write
}

bool stdout_line(const std::string& line) {
  errno = 0;
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  if (std::fflush(stdout) == 0) return true;
  if (errno == EPIPE) {
    std::clearerr(stdout);
    return false;
  }
  if (first_stdout_error == 0) first_stdout_error = errno;
  return true;
}

int stdout_error() {
  return first_stdout_error;
}

void Output::bar(const std::string& text) {
  if (!bar_) return;
  eprint("\r\x1b[2K{}", text);
  std::fflush(stderr);
  bar_shown_ = true;
}

void Output::clear_bar() {
  if (!bar_shown_) return;
  eprint("\r\x1b[2K");
  bar_shown_ = false;
}

std::string json_string(const std::string& s) {
  std::string out;
  // JSON carries only UTF-8: other text (a file name in another encoding) is written with '?' for each byte
  // outside ASCII.
  if (!formats::append_json_string(out, s)) {
    out.clear();
    std::string clean;
    for (unsigned char c : s) clean += c < 0x80 ? static_cast<char>(c) : '?';
    formats::append_json_string(out, clean);
  }
  return out;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  return fmt::format("{:.9g}", v);
}

std::string log_number(double v) {
  return std::isfinite(v) && (std::abs(v) <= 1e-3 || std::abs(v) >= 1e7) ? fmt::format("{:.4e}", v)
                                                                         : fmt::format("{:.4f}", v);
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
