// The three error tiers of DESIGN.md: user-input errors (InputError), broken invariants (TRAINER_ASSERT) and
// status codes of vendor libraries (their own check macros, which throw RuntimeError with the call site).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace trainer {

// Text for people on stderr, written as far as stderr takes it: a closed or full stderr neither ends the
// process nor turns an error's message into a crash (eprint(...) throws when a write fails).
void write_stderr(std::string_view text) noexcept;
template <class... Args>
void eprint(fmt::format_string<Args...> f, Args&&... args) {
  write_stderr(fmt::format(f, std::forward<Args>(args)...));
}

// Bad user input: a model, a data file, a flag. `where` is "file:line:col", a byte offset or a node name.
// The CLI prints what(), then the hint, and exits 2.
class InputError : public std::runtime_error {
 public:
  InputError(std::string where, std::string what, std::string hint = {})
      : std::runtime_error(where.empty() ? what : where + ": " + what),
        where_(std::move(where)),
        message_(std::move(what)),
        hint_(std::move(hint)) {}
  const std::string& where() const { return where_; }
  const std::string& message() const { return message_; }  // what() without the place
  const std::string& hint() const { return hint_; }

 private:
  std::string where_;
  std::string message_;
  std::string hint_;
};

// A failure at run time that is not the user's input: a vendor status code, a NaN loss, a lost device. The
// CLI prints what(), then the hint when there is one, and exits 1.
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  RuntimeError(const std::string& what, std::string hint)
      : std::runtime_error(what), hint_(std::move(hint)) {}
  const std::string& hint() const { return hint_; }

 private:
  std::string hint_;
};

// A broken internal invariant: a bug in trainer, never the user's fault.
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

[[noreturn]] void assert_failed(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace trainer

#define TRAINER_ASSERT(cond, ...)                                                                    \
  do {                                                                                               \
    if (!(cond)) ::trainer::assert_failed(#cond, __FILE__, __LINE__, ::fmt::format("" __VA_ARGS__)); \
  } while (0)
