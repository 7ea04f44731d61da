// Small text helpers shared by the model-spec reader and writer: TOML spelling of keys, strings and floats,
// and the nearest-name search behind did-you-mean hints.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace trainer::formats::spec_text {

// A TOML basic string with the escapes TOML requires: "a\"b".
std::string toml_string(std::string_view s);
// A key as TOML spells it: bare when it can be ([A-Za-z0-9_-]+), quoted otherwise.
std::string toml_key(std::string_view k);
// The shortest text that reads back as the same double, always a TOML float ("3.0", "0.001", "1e-07", "inf").
std::string toml_float(double v);

// Levenshtein distance, case-insensitive.
size_t edit_distance(std::string_view a, std::string_view b);
// The candidate nearest to `word` when it is near enough to be a likely misspelling.
std::optional<std::string> nearest(std::string_view word, const std::vector<std::string_view>& candidates);
// "a, b, c" for hints that list the valid names.
std::string join(const std::vector<std::string_view>& names);

}  // namespace trainer::formats::spec_text
