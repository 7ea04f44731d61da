// The one output layer of the CLI: data for machines on stdout (JSON lines), text for people on stderr (fmt),
// and a live progress bar only when stderr is a terminal.
#pragma once

#include <fmt/format.h>

#include "engine/util/error.h"

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace trainer::cli {

enum class LogFormat { automatic, text, jsonl };

class Output {
 public:
  Output(LogFormat format, bool quiet);
  // Metrics go to stdout as JSON lines with --log-format jsonl, or when stdout is not a terminal unless text
  // is asked.
  bool json() const { return json_; }
  bool quiet() const { return quiet_; }
  bool progress_bar() const { return bar_; }

  template <class... Args>
  void say(fmt::format_string<Args...> f, Args&&... args) {
    if (quiet_) return;
    clear_bar();
    eprint(f, std::forward<Args>(args)...);
  }
  // One JSON object per line on stdout, flushed so pipelines see it at once. With SIGPIPE ignored, a reader
  // that has gone (`| head -1`) makes stdout_closed() true instead of ending the process.
  void json_line(const std::string& object);
  bool stdout_closed() const { return stdout_closed_; }
  // Redraws the progress bar in place (stderr terminals only).
  void bar(const std::string& text);
  void clear_bar();

 private:
  bool json_ = false, quiet_ = false, bar_ = false, bar_shown_ = false, stdout_closed_ = false;
};

// The errno of the first failed write of a JSON line to stdout (0: none failed).
int stdout_error();
// Writes `line` and a newline to stdout and flushes it (SIGPIPE ignored by the caller). False when the reader
// has closed the pipe (EPIPE: not an error, the line is dropped); another failed write is kept for
// stdout_error(), which the exit status reports.
bool stdout_line(const std::string& line);

// JSON helpers: a string literal with escapes, and a number that stays valid JSON (NaN and infinities as
// null).
std::string json_string(const std::string& s);
std::string json_number(double v);
// A loss or metric as the text logs show it, as Keras's progress bar does: four decimals, or scientific
// notation at 0.001 and below (and, here, at ten million and above, where decimals would be dozens of
// digits).
std::string log_number(double v);
// {"k": v, ...} from ordered pairs whose values are already JSON.
std::string json_object(const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace trainer::cli
