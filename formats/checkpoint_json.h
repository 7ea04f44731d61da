// A strict JSON (RFC 8259) reader and string writer for checkpoint headers. The reader keeps each value's
// byte span, so callers can point at the place of an error and find the bytes of a value inside the header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace trainer::formats {

struct JsonValue {
  enum class Kind { null, boolean, number, string, array, object };
  Kind kind = Kind::null;
  bool boolean = false;
  std::string text;  // a string's decoded UTF-8, or a number's literal as written
  std::vector<JsonValue> items;
  std::vector<std::pair<std::string, JsonValue>> members;  // in file order; keys are unique
  size_t begin = 0, end = 0;  // byte span in the parsed text; a string's span includes its quotes

  const JsonValue* find(std::string_view key) const;
  // A number written as a plain non-negative integer ("0", "17"; no sign, fraction or exponent) that fits in
  // 64 bits.
  bool to_u64(uint64_t* out) const;
};

// A syntax error at byte `offset` of the parsed text.
class JsonSyntaxError : public std::runtime_error {
 public:
  JsonSyntaxError(size_t offset, const std::string& what) : std::runtime_error(what), offset_(offset) {}
  size_t offset() const { return offset_; }

 private:
  size_t offset_;
};

// Parses one JSON value followed by nothing but whitespace. Rejects everything RFC 8259 does not allow
// (trailing commas, comments, control characters in strings, invalid UTF-8, lone surrogates, leading zeros)
// and also duplicate object keys and nesting deeper than 64 levels. Throws JsonSyntaxError.
JsonValue parse_json(std::string_view text);

// Appends `s` as a quoted JSON string: '"', '\' and control characters escaped, other bytes as they are.
// Returns false (appending nothing) when `s` is not valid UTF-8, which JSON cannot carry.
bool append_json_string(std::string& out, std::string_view s);

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace trainer::formats
