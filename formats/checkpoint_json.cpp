// Strict JSON: a recursive-descent reader that records byte spans, and the string escaping of the writer.
#include "formats/checkpoint_json.h"

#include <fmt/format.h>

namespace trainer::formats {

namespace {

constexpr int kMaxDepth = 64;

// The length of the well-formed UTF-8 sequence at p (at most `avail` bytes), or 0 when there is none.
size_t utf8_sequence_length(const unsigned char* p, size_t avail) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
  } else {
    return 0;
  }
  if (avail < n) return 0;
  if (p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < n; ++i)
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
  return n;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  JsonValue parse_document() {
    JsonValue v = parse_value(0);
    skip_whitespace();
    if (pos_ != s_.size()) fail("unexpected bytes after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw JsonSyntaxError(pos_, what); }
  [[noreturn]] void fail_at(size_t at, const std::string& what) const { throw JsonSyntaxError(at, what); }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }

  void skip_whitespace() {
    while (!at_end() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  void expect(char c, const char* context) {
    if (at_end() || s_[pos_] != c) fail(fmt::format("expected '{}' {}", c, context));
    ++pos_;
  }

  JsonValue parse_value(int depth) {
    skip_whitespace();
    if (at_end()) fail("the JSON text ends where a value was expected");
    char c = s_[pos_];
    if (c == '{') return parse_object(depth + 1);
    if (c == '[') return parse_array(depth + 1);
    if (c == '"') return parse_string();
    if (c == '-' || is_digit(c)) return parse_number();
    if (c == 't') return parse_literal("true", JsonValue::Kind::boolean, true);
    if (c == 'f') return parse_literal("false", JsonValue::Kind::boolean, false);
    if (c == 'n') return parse_literal("null", JsonValue::Kind::null, false);
    fail("expected a JSON value");
  }

  JsonValue parse_literal(std::string_view word, JsonValue::Kind kind, bool b) {
    if (s_.substr(pos_, word.size()) != word) fail("expected a JSON value");
    JsonValue v;
    v.kind = kind;
    v.boolean = b;
    v.begin = pos_;
    pos_ += word.size();
    v.end = pos_;
    return v;
  }

  JsonValue parse_number() {
    JsonValue v;
    v.kind = JsonValue::Kind::number;
    v.begin = pos_;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (is_digit(peek())) fail("a number must not have leading zeros");
    } else if (is_digit(peek())) {
      while (is_digit(peek())) ++pos_;
    } else {
      fail("expected a digit");
    }
    if (peek() == '.') {
      ++pos_;
      if (!is_digit(peek())) fail("expected a digit after the decimal point");
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!is_digit(peek())) fail("expected a digit in the exponent");
      while (is_digit(peek())) ++pos_;
    }
    v.end = pos_;
    v.text = std::string(s_.substr(v.begin, v.end - v.begin));
    return v;
  }

  uint32_t parse_hex4() {
    if (s_.size() - pos_ < 4) fail("expected four hex digits after \\u");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (is_digit(c)) {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        fail_at(pos_ - 1, "expected four hex digits after \\u");
      }
    }
    return v;
  }

  JsonValue parse_string() {
    JsonValue v;
    v.kind = JsonValue::Kind::string;
    v.begin = pos_;
    ++pos_;  // the opening quote
    for (;;) {
      if (at_end()) fail_at(v.begin, "unterminated string");
      auto c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        break;
      }
      if (c < 0x20) fail("a control character inside a string (it must be escaped)");
      if (c == '\\') {
        ++pos_;
        if (at_end()) fail_at(v.begin, "unterminated string");
        char e = s_[pos_++];
        switch (e) {
          case '"':
          case '\\':
          case '/':
            v.text += e;
            break;
          case 'b':
            v.text += '\b';
            break;
          case 'f':
            v.text += '\f';
            break;
          case 'n':
            v.text += '\n';
            break;
          case 'r':
            v.text += '\r';
            break;
          case 't':
            v.text += '\t';
            break;
          case 'u': {
            size_t at = pos_ - 2;
            uint32_t cp = parse_hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(at, "a lone low surrogate in a \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (s_.substr(pos_, 2) != "\\u") fail_at(at, "a high surrogate not followed by a low one");
              pos_ += 2;
              uint32_t lo = parse_hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) fail_at(at, "a high surrogate not followed by a low one");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(v.text, cp);
            break;
          }
          default:
            fail_at(pos_ - 2, fmt::format("unknown escape sequence \\{}", e));
        }
        continue;
      }
      size_t n =
          utf8_sequence_length(reinterpret_cast<const unsigned char*>(s_.data()) + pos_, s_.size() - pos_);
      if (n == 0) fail("invalid UTF-8 inside a string");
      v.text.append(s_.substr(pos_, n));
      pos_ += n;
    }
    v.end = pos_;
    return v;
  }

  JsonValue parse_array(int depth) {
    if (depth > kMaxDepth) fail(fmt::format("JSON nested deeper than {} levels", kMaxDepth));
    JsonValue v;
    v.kind = JsonValue::Kind::array;
    v.begin = pos_;
    ++pos_;
    skip_whitespace();
    if (peek() == ']') {
      ++pos_;
    } else {
      for (;;) {
        v.items.push_back(parse_value(depth));
        skip_whitespace();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']', "or ',' in an array");
        break;
      }
    }
    v.end = pos_;
    return v;
  }

  JsonValue parse_object(int depth) {
    if (depth > kMaxDepth) fail(fmt::format("JSON nested deeper than {} levels", kMaxDepth));
    JsonValue v;
    v.kind = JsonValue::Kind::object;
    v.begin = pos_;
    ++pos_;
    skip_whitespace();
    if (peek() == '}') {
      ++pos_;
    } else {
      for (;;) {
        skip_whitespace();
        if (peek() != '"') fail("expected a string key in an object");
        size_t key_at = pos_;
        JsonValue key = parse_string();
        if (v.find(key.text)) fail_at(key_at, fmt::format("duplicate key \"{}\"", key.text));
        skip_whitespace();
        expect(':', "after an object key");
        v.members.emplace_back(std::move(key.text), parse_value(depth));
        skip_whitespace();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}', "or ',' in an object");
        break;
      }
    }
    v.end = pos_;
    return v;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

const JsonValue* JsonValue::find(std::string_view key) const {
  for (const auto& [k, v] : members)
    if (k == key) return &v;
  return nullptr;
}

bool JsonValue::to_u64(uint64_t* out) const {
  if (kind != Kind::number || text.empty() || text.size() > 20) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (!is_digit(c)) return false;
    auto d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

JsonValue parse_json(std::string_view text) {
  return Parser(text).parse_document();
}

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8_sequence_length(p + i, s.size() - i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool append_json_string(std::string& out, std::string_view s) {
  if (!is_valid_utf8(s)) return false;
  out += '"';
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
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        else
          out += c;
    }
  }
  out += '"';
  return true;
}

}  // namespace trainer::formats
