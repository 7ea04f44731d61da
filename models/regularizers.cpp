// Parsing of Keras's regularizer forms (regularizers.h).
#include "models/regularizers.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <utility>
#include <vector>

namespace trainer::models {

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

const char* kForms = "\"l2\", \"l2(1e-4)\", \"l1(1e-5)\" or \"l1_l2(l1=1e-5, l2=1e-4)\"";

// The comma-separated arguments between a form's parentheses, trimmed; none for "()". A list's commas
// ("axis=[0, 1, 2]") stay in its argument.
std::vector<std::string> split_arguments(const std::string& inside) {
  std::vector<std::string> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i <= inside.size(); ++i) {
    const char c = i < inside.size() ? inside[i] : ',';
    if (c == '[' || c == '(') ++depth;
    if (c == ']' || c == ')') --depth;
    if (c != ',' || (depth > 0 && i < inside.size())) continue;
    parts.push_back(trim(inside.substr(start, i - start)));
    start = i + 1;
  }
  if (parts.size() == 1 && parts[0].empty()) parts.clear();
  return parts;
}

// Which of `keys` argument `position` sets: its own "key=" (stripped from `value`, the key left in `key`), or
// its position. keys.size() for a key that is not one of them.
size_t key_index(std::string& value, size_t position, const std::vector<std::string>& keys,
                 std::string& key) {
  const size_t eq = value.find('=');
  if (eq == std::string::npos) return position;
  key = lower(trim(value.substr(0, eq)));
  value = trim(value.substr(eq + 1));
  return static_cast<size_t>(std::find(keys.begin(), keys.end(), key) - keys.begin());
}

// The argument that goes with an initializer argument: kernel_initializer -> kernel_<kind>.
std::string paired_arg(const std::string& initializer_arg, const char* kind) {
  const std::string suffix = "_initializer";
  if (!initializer_arg.ends_with(suffix)) return {};
  return initializer_arg.substr(0, initializer_arg.size() - suffix.size()) + "_" + kind;
}

}  // namespace

std::string constraint_arg(const std::string& initializer_arg) {
  return paired_arg(initializer_arg, "constraint");
}

Constraint parse_constraint(const std::string& text,
                            const std::function<void(const std::string&, const std::string&)>& fail) {
  const char* forms =
      "\"non_neg\", \"max_norm(3)\", \"unit_norm(axis=0)\" or "
      "\"min_max_norm(min_value=0.5, max_value=1)\"";
  auto bad = [&](const std::string& what) {
    fail(what, fmt::format("write {}, or \"None\"", forms));
    std::abort();  // fail throws
  };
  const std::string t = trim(text);
  const size_t open = t.find('(');
  std::string name = lower(trim(t.substr(0, open)));
  for (const auto& [keras, ours] :
       std::vector<std::pair<std::string, std::string>>{{"nonneg", "non_neg"},
                                                        {"maxnorm", "max_norm"},
                                                        {"unitnorm", "unit_norm"},
                                                        {"minmaxnorm", "min_max_norm"}})
    if (name == keras) name = ours;
  Constraint c;
  if (name == "none" && open == std::string::npos) return c;
  if (name != "non_neg" && name != "max_norm" && name != "unit_norm" && name != "min_max_norm")
    bad(fmt::format("unknown constraint \"{}\"", text));
  c.kind = name;
  if (name == "min_max_norm") c.max_value = 1;
  if (open == std::string::npos) return c;
  if (t.back() != ')') bad(fmt::format("constraint \"{}\" does not end with ')'", text));
  std::vector<std::string> keys;
  if (name == "max_norm") keys = {"max_value", "axis"};
  if (name == "unit_norm") keys = {"axis"};
  if (name == "min_max_norm") keys = {"min_value", "max_value", "rate", "axis"};
  const std::vector<std::string> parts = split_arguments(t.substr(open + 1, t.size() - open - 2));
  if (parts.size() > keys.size())
    bad(fmt::format("constraint \"{}\" takes at most {} argument{}", text, keys.size(),
                    keys.size() == 1 ? "" : "s"));
  std::vector<bool> seen(keys.size(), false);
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string value = parts[i], key;
    const size_t k = key_index(value, i, keys, key);
    if (k == keys.size()) bad(fmt::format("constraint \"{}\" has no argument '{}'", text, key));
    if (seen[k]) bad(fmt::format("constraint \"{}\" gives {} twice", text, keys[k]));
    seen[k] = true;
    if (keys[k] == "axis") {
      // One axis, or a list of them: [0, 1, 2] (a convolution kernel's window and input channels).
      const bool list = value.size() >= 2 && value.front() == '[' && value.back() == ']';
      const std::vector<std::string> items =
          list ? split_arguments(value.substr(1, value.size() - 2)) : std::vector<std::string>{value};
      if (items.empty()) bad(fmt::format("constraint \"{}\": axis [] names no axis", text));
      c.axes.clear();
      for (const std::string& item : items) {
        char* end = nullptr;
        const long long a = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0')
          bad(fmt::format("constraint \"{}\": axis '{}' is not an integer", text, item));
        if (std::find(c.axes.begin(), c.axes.end(), a) != c.axes.end())
          bad(fmt::format("constraint \"{}\": axis {} is listed twice", text, a));
        c.axes.push_back(a);
      }
      continue;
    }
    char* end = nullptr;
    const double f = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !std::isfinite(f))
      bad(fmt::format("constraint \"{}\": {} '{}' is not a number", text, keys[k], value));
    if (f < 0 || (keys[k] == "rate" && f > 1)) {
      bad(fmt::format("constraint \"{}\": {} {} is out of range", text, keys[k], value));
    } else {
      (keys[k] == "min_value" ? c.min_value : keys[k] == "max_value" ? c.max_value : c.rate) = f;
    }
  }
  if (c.min_value > c.max_value)
    bad(fmt::format("constraint \"{}\": min_value {} is above max_value {}", text, c.min_value, c.max_value));
  return c;
}

std::string regularizer_arg(const std::string& initializer_arg) {
  return paired_arg(initializer_arg, "regularizer");
}

Regularizer parse_regularizer(const std::string& text,
                              const std::function<void(const std::string&, const std::string&)>& fail) {
  auto bad = [&](const std::string& what) {
    fail(what, fmt::format("write {}, or \"None\"", kForms));
    std::abort();  // fail throws
  };
  const std::string t = trim(text);
  const size_t open = t.find('(');
  std::string name = lower(trim(t.substr(0, open)));
  if (name == "l1l2") name = "l1_l2";
  if (name == "none" && open == std::string::npos) return {};
  if (name != "l1" && name != "l2" && name != "l1_l2") bad(fmt::format("unknown regularizer \"{}\"", text));
  Regularizer r;
  if (open == std::string::npos) {
    // Keras's shorthand strings: 0.01. Its L1L2() alone penalizes nothing, so that form asks for factors.
    if (name == "l1_l2")
      fail("regularizer \"l1_l2\" needs its factors",
           "write \"l1_l2(l1=1e-5, l2=1e-4)\"; a factor left out is 0");
    (name == "l1" ? r.l1 : r.l2) = 0.01;
    return r;
  }
  if (t.back() != ')') bad(fmt::format("regularizer \"{}\" does not end with ')'", text));
  const std::vector<std::string> parts = split_arguments(t.substr(open + 1, t.size() - open - 2));
  const std::vector<std::string> keys =
      name == "l1_l2" ? std::vector<std::string>{"l1", "l2"} : std::vector<std::string>{name};
  if (parts.empty() || parts.size() > keys.size())
    bad(fmt::format("regularizer \"{}\" takes {}", text,
                    keys.size() == 1 ? "one factor" : "one or two factors (l1, l2)"));
  std::vector<bool> seen(keys.size(), false);
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string value = parts[i], key;
    const size_t k = key_index(value, i, keys, key);
    if (k == keys.size()) bad(fmt::format("regularizer \"{}\" has no factor '{}'", text, key));
    if (seen[k]) bad(fmt::format("regularizer \"{}\" gives {} twice", text, keys[k]));
    seen[k] = true;
    char* end = nullptr;
    const double f = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || !std::isfinite(f) || f < 0)
      bad(fmt::format("regularizer \"{}\": the factor '{}' is not a number, 0 or more", text, value));
    (keys[k] == "l1" ? r.l1 : r.l2) = f;
  }
  return r;
}

}  // namespace trainer::models
