// Layer arguments: signature checks, typed access, did-you-mean hints.
#include "models/args.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "engine/util/error.h"

namespace trainer::models {

using formats::ArgValue;

namespace {

std::string lower(const std::string& s) {
  std::string out = s;
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

const char* kind_text(ArgKind k) {
  switch (k) {
    case ArgKind::integer:
      return "an integer";
    case ArgKind::number:
      return "a number";
    case ArgKind::boolean:
      return "true or false";
    case ArgKind::string:
      return "a string";
    case ArgKind::int_or_single:
      return "an integer or a list of one integer";
    case ArgKind::int_or_pair:
      return "an integer or a list of two integers";
    case ArgKind::int_or_triple:
      return "an integer or a list of three integers";
    case ArgKind::int_or_ints:
      return "an integer or a list of integers";
    case ArgKind::ints:
      return "a list of integers";
    case ArgKind::number_pair:
      return "a number or a list of two numbers";
    case ArgKind::numbers:
      return "a number or a list of numbers";
  }
  return "";
}

const char* example_text(ArgKind k) {
  switch (k) {
    case ArgKind::integer:
      return "64";
    case ArgKind::number:
      return "0.5";
    case ArgKind::boolean:
      return "true";
    case ArgKind::string:
      return "\"same\"";
    case ArgKind::int_or_single:
      return "3 or [3]";
    case ArgKind::int_or_pair:
      return "3 or [3, 3]";
    case ArgKind::int_or_triple:
      return "3 or [3, 3, 3]";
    case ArgKind::int_or_ints:
      return "-1 or [1, 2]";
    case ArgKind::ints:
      return "[7, 7, 64]";
    case ArgKind::number_pair:
      return "0.2 or [-0.2, 0.3]";
    case ArgKind::numbers:
      return "0.5 or [0.1, 2.5]";
  }
  return "";
}

bool fits(const ArgValue& v, ArgKind k) {
  switch (k) {
    case ArgKind::integer:
      return std::holds_alternative<int64_t>(v);
    case ArgKind::number:
      return std::holds_alternative<int64_t>(v) || std::holds_alternative<double>(v);
    case ArgKind::boolean:
      return std::holds_alternative<bool>(v);
    case ArgKind::string:
      return std::holds_alternative<std::string>(v);
    case ArgKind::int_or_single: {
      if (std::holds_alternative<int64_t>(v)) return true;
      auto* p = std::get_if<std::vector<int64_t>>(&v);
      return p && p->size() == 1;
    }
    case ArgKind::int_or_pair: {
      if (std::holds_alternative<int64_t>(v)) return true;
      auto* p = std::get_if<std::vector<int64_t>>(&v);
      return p && p->size() == 2;
    }
    case ArgKind::int_or_triple: {
      if (std::holds_alternative<int64_t>(v)) return true;
      auto* p = std::get_if<std::vector<int64_t>>(&v);
      return p && p->size() == 3;
    }
    case ArgKind::int_or_ints: {
      if (std::holds_alternative<int64_t>(v)) return true;
      auto* p = std::get_if<std::vector<int64_t>>(&v);
      return p && !p->empty();
    }
    case ArgKind::ints: {
      auto* p = std::get_if<std::vector<int64_t>>(&v);
      return p && !p->empty();
    }
    case ArgKind::number_pair: {
      if (std::holds_alternative<int64_t>(v) || std::holds_alternative<double>(v)) return true;
      auto* i = std::get_if<std::vector<int64_t>>(&v);
      auto* d = std::get_if<std::vector<double>>(&v);
      return (i && i->size() == 2) || (d && d->size() == 2);
    }
    case ArgKind::numbers: {
      if (std::holds_alternative<int64_t>(v) || std::holds_alternative<double>(v)) return true;
      auto* i = std::get_if<std::vector<int64_t>>(&v);
      auto* d = std::get_if<std::vector<double>>(&v);
      return (i && !i->empty()) || (d && !d->empty());
    }
  }
  return false;
}

// Keras arguments that trainer knows but does not implement: naming them as such beats "unknown argument".
bool known_unsupported(const std::string& name) {
  static const std::vector<std::string> names = {
      "data_format",  "stateful", "unroll",     "return_state",   "noise_shape",
      "input_length", "dtype",    "lora_rank",  "rms_scaling",    "attention_axes",
      "time_major",   "sparse",   "lora_alpha", "backward_layer", "quantization_config"};
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Keras arguments whose value changes nothing here, so that a layer copied from Keras code reads as it is:
// unroll and implementation (speed choices of the backend), input_length (Embedding's old, unused argument),
// data_format = "channels_last" (the layout every spec writes) and dtype = "float32" (what layers compute
// in).
bool without_effect(const std::string& name, const formats::ArgValue& v) {
  const std::string* s = std::get_if<std::string>(&v);
  if (name == "unroll") return std::holds_alternative<bool>(v);
  if (name == "implementation") {  // Keras 2 RNNs' kernel choice
    const int64_t* i = std::get_if<int64_t>(&v);
    return i && (*i == 1 || *i == 2);
  }
  if (name == "input_length") return std::holds_alternative<int64_t>(v);
  if (name == "data_format") return s && *s == "channels_last";
  if (name == "dtype") return s && *s == "float32";
  return false;
}

// The values without_effect takes for an argument it knows, as a hint; empty for any other argument.
std::string without_effect_values(const std::string& name) {
  if (name == "unroll") return "unroll = true or false (it changes nothing here)";
  if (name == "implementation")
    return "implementation = 1 or 2 (Keras's kernel choice; it changes nothing here)";
  if (name == "input_length") return "input_length = an integer (it changes nothing here)";
  if (name == "data_format")
    return "data_format = \"channels_last\", the layout specs are written in (the only one trainer takes)";
  if (name == "dtype") return "dtype = \"float32\", what layers compute in (the only one trainer takes)";
  return "";
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  const std::string w = lower(word);
  for (const std::string& c : candidates) {
    size_t d = edit_distance(w, lower(c));
    if (d < best_d) best_d = d, best = c;
  }
  // A third of the word, at least 2: "unit" -> "units", "Conv2d" -> "Conv2D", but not "foo" -> "rate".
  size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_d <= limit ? best : std::string();
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string m = closest_match(word, candidates);
  return m.empty() ? std::string() : fmt::format("did you mean '{}'? ", m);
}

std::string did_you_mean_only(const std::string& word, const std::vector<std::string>& candidates) {
  std::string m = closest_match(word, candidates);
  return m.empty() ? std::string() : fmt::format("did you mean '{}'?", m);
}

// A float as TOML writes it: 2.0, not 2 (which reads as an integer).
std::string float_text(double x) {
  std::string s = fmt::format("{}", x);
  if (s.find_first_of(".eEna") == std::string::npos) s += ".0";
  return s;
}

std::string describe_value(const ArgValue& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, bool>)
          return x ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::string>)
          return fmt::format("\"{}\"", x);
        else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          std::vector<std::string> q;
          for (const std::string& s : x) q.push_back(fmt::format("\"{}\"", s));
          return fmt::format("[{}]", fmt::join(q, ", "));
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          std::vector<std::string> q;
          for (double d : x) q.push_back(float_text(d));
          return fmt::format("[{}]", fmt::join(q, ", "));
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          return fmt::format("[{}]", fmt::join(x, ", "));
        } else if constexpr (std::is_same_v<T, double>) {
          return float_text(x);
        } else {
          return fmt::format("{}", x);
        }
      },
      v);
}

LayerArgs::LayerArgs(const formats::LayerSpec& spec, const std::vector<ArgDecl>& decls)
    : spec_(spec), decls_(decls) {
  std::vector<std::string> names;
  for (const ArgDecl& d : decls) names.push_back(d.name);
  for (const auto& [name, arg] : spec.args) {
    auto it = std::find_if(decls.begin(), decls.end(), [&](const ArgDecl& d) { return d.name == name; });
    if (it == decls.end() && without_effect(name, arg.value)) continue;
    if (it == decls.end()) {
      std::string takes = fmt::format("{} takes: {}", spec.type, fmt::join(names, ", "));
      if (const std::string values = without_effect_values(name); !values.empty())
        throw InputError(arg.pos.str(),
                         fmt::format("{}: Keras's argument {} = {} is not supported by trainer", subject(),
                                     name, describe_value(arg.value)),
                         values);
      if (known_unsupported(name))
        throw InputError(
            arg.where_key().str(),
            fmt::format("{}: Keras's argument '{}' is not supported by trainer", subject(), name), takes);
      throw InputError(arg.where_key().str(), fmt::format("{}: unknown argument '{}'", subject(), name),
                       did_you_mean(name, names) + takes);
    }
    if (!fits(arg.value, it->kind))
      throw InputError(arg.pos.str(),
                       fmt::format("{}: argument '{}' must be {}, got {}", subject(), name,
                                   kind_text(it->kind), describe_value(arg.value)),
                       fmt::format("for example {} = {}", name, example_text(it->kind)));
    // TOML's nan and inf read as numbers; no layer argument means anything by them.
    const double* d = std::get_if<double>(&arg.value);
    const auto* ds = std::get_if<std::vector<double>>(&arg.value);
    const bool finite =
        (!d || std::isfinite(*d)) &&
        (!ds || std::all_of(ds->begin(), ds->end(), [](double x) { return std::isfinite(x); }));
    if (!finite)
      throw InputError(arg.pos.str(),
                       fmt::format("{}: argument '{}' must be a finite number, got {}", subject(), name,
                                   describe_value(arg.value)),
                       fmt::format("for example {} = {}", name, example_text(it->kind)));
  }
  for (const ArgDecl& d : decls)
    if (!d.default_value && !d.optional && !spec.args.count(d.name))
      throw InputError(spec.pos.str(), fmt::format("{}: the argument '{}' is required", subject(), d.name),
                       fmt::format("add {} = {} to the layer", d.name, example_text(d.kind)));
}

std::string LayerArgs::subject() const {
  return fmt::format("{} layer '{}'", spec_.type, spec_.name);
}

bool LayerArgs::has(const std::string& name) const {
  return spec_.args.count(name) != 0;
}

const ArgValue& LayerArgs::value(const std::string& name) const {
  auto it = spec_.args.find(name);
  if (it != spec_.args.end()) return it->second.value;
  for (const ArgDecl& d : decls_)
    if (d.name == name) {
      TRAINER_ASSERT(d.default_value.has_value(), "{}: argument '{}' has no default", spec_.type, name);
      return *d.default_value;
    }
  TRAINER_ASSERT(false, "{} does not declare argument '{}'", spec_.type, name);
  throw InternalError("unreachable");
}

const formats::SourcePos& LayerArgs::pos(const std::string& name) const {
  auto it = spec_.args.find(name);
  return it != spec_.args.end() ? it->second.pos : spec_.pos;
}

int64_t LayerArgs::integer(const std::string& name) const {
  const ArgValue& v = value(name);
  if (auto* one = std::get_if<std::vector<int64_t>>(&v); one && one->size() == 1) return (*one)[0];  // [3]
  return std::get<int64_t>(v);
}

double LayerArgs::number(const std::string& name) const {
  const ArgValue& v = value(name);
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return std::get<double>(v);
}

bool LayerArgs::boolean(const std::string& name) const {
  return std::get<bool>(value(name));
}

std::string LayerArgs::string(const std::string& name) const {
  return std::get<std::string>(value(name));
}

std::vector<int64_t> LayerArgs::pair(const std::string& name) const {
  const ArgValue& v = value(name);
  if (auto* i = std::get_if<int64_t>(&v)) return {*i, *i};
  return std::get<std::vector<int64_t>>(v);
}

std::vector<int64_t> LayerArgs::triple(const std::string& name) const {
  const ArgValue& v = value(name);
  if (auto* i = std::get_if<int64_t>(&v)) return {*i, *i, *i};
  return std::get<std::vector<int64_t>>(v);
}

std::pair<double, double> LayerArgs::number_pair(const std::string& name, bool symmetric) const {
  const ArgValue& v = value(name);
  if (auto* i = std::get_if<std::vector<int64_t>>(&v))
    return {static_cast<double>((*i)[0]), static_cast<double>((*i)[1])};
  if (auto* d = std::get_if<std::vector<double>>(&v)) return {(*d)[0], (*d)[1]};
  const double x = number(name);
  return {symmetric ? -x : x, x};
}

std::vector<double> LayerArgs::numbers(const std::string& name) const {
  const ArgValue& v = value(name);
  if (auto* i = std::get_if<std::vector<int64_t>>(&v)) return std::vector<double>(i->begin(), i->end());
  if (auto* d = std::get_if<std::vector<double>>(&v)) return *d;
  return {number(name)};
}

std::vector<int64_t> LayerArgs::ints(const std::string& name) const {
  const ArgValue& v = value(name);
  if (auto* i = std::get_if<int64_t>(&v)) return {*i};
  return std::get<std::vector<int64_t>>(v);
}

void LayerArgs::fail(const std::string& name, const std::string& what, const std::string& hint) const {
  throw InputError(
      pos(name).str(), fmt::format("{}: {}", subject(), what),
      hint.empty()
          ? fmt::format("trainer-model(5) describes {}'s arguments under [[model.layers]]", spec_.type)
          : hint);
}

void LayerArgs::fail_layer(const std::string& what, const std::string& hint) const {
  throw InputError(
      spec_.pos.str(), fmt::format("{}: {}", subject(), what),
      hint.empty() ? fmt::format("trainer-model(5) describes the {} layer under [[model.layers]]", spec_.type)
                   : hint);
}

}  // namespace trainer::models
