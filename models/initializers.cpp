// Keras's initializers: variance scaling (glorot, he, lecun; uniform and truncated normal), orthogonal,
// constant and random ones, each a pure function of (name, shape, fans, seed).
#include "models/initializers.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/ops/op_helpers.h"
#include "engine/util/error.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

// A splitmix64 stream: uniform doubles and standard normals (Box-Muller), identical on every platform.
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  double uniform() {  // in (0, 1): never 0, so log() below is finite
    return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double r = std::sqrt(-2.0 * std::log(uniform())), a = 2.0 * M_PI * uniform();
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }
  // Redrawn until within two standard deviations, as Keras's TruncatedNormal.
  double truncated_normal() {
    for (;;) {
      double z = normal();
      if (std::abs(z) <= 2.0) return z;
    }
  }

 private:
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// The standard deviation of a unit normal truncated at +-2: Keras divides by it so that the truncated
// distribution has the variance the scaling asks for.
constexpr double kTruncatedStddev = 0.87962566103423978;

std::string squash(const std::string& s) {
  std::string out;
  for (char c : s)
    if (c != '_') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Tensor filled(const Shape& shape, double v, DType dtype) {
  Tensor t(dtype, shape);
  if (v == 0 && !std::signbit(v)) return t;  // a new tensor is zeros already, untouched until written
  for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, v);
  return t;
}

Tensor normal_tensor(const Shape& shape, double stddev, bool truncated, uint64_t seed, DType dtype) {
  Tensor t(dtype, shape);
  Gaussian g(seed);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.set_f64(i, stddev * (truncated ? g.truncated_normal() : g.normal()));
  return t;
}

}  // namespace

uint64_t layer_seed(uint64_t model_seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull ^ model_seed;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

const std::vector<std::string>& initializer_names() {
  static const std::vector<std::string> names = {
      "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",       "lecun_uniform", "lecun_normal",
      "orthogonal",     "zeros",         "ones",       "random_uniform",  "random_normal", "truncated_normal",
      "uniform",        "normal",        "constant",   "variance_scaling"};
  return names;
}

std::string canonical_initializer(const std::string& name) {
  static const std::map<std::string, std::string> by_squashed = [] {
    std::map<std::string, std::string> m;
    for (const std::string& n : initializer_names()) m[squash(n)] = n;
    m["uniform"] = "random_uniform";  // Keras's short aliases
    m["normal"] = "random_normal";
    return m;
  }();
  auto it = by_squashed.find(squash(name));
  return it == by_squashed.end() ? std::string() : it->second;
}

Tensor glorot_uniform(const Shape& shape, int64_t fan_in, int64_t fan_out, uint64_t seed, DType dtype) {
  double limit = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  return ops::random_tensor(shape, -limit, limit, seed, dtype);
}

Tensor orthogonal(const Shape& shape, int64_t rows, int64_t cols, uint64_t seed, DType dtype) {
  TRAINER_ASSERT(rows * cols == shape.numel(), "orthogonal: {} x {} for shape {}", rows, cols, shape.str());
  // Work on the tall orientation m x n (m >= n), column-major; transpose at the end when rows < cols.
  const bool tall = rows >= cols;
  const int64_t m = tall ? rows : cols, n = tall ? cols : rows;
  std::vector<double> a(static_cast<size_t>(m * n));
  Gaussian g(seed);
  for (double& v : a) v = g.normal();
  auto A = [&](int64_t i, int64_t j) -> double& { return a[static_cast<size_t>(j * m + i)]; };

  // Householder QR: reflector k maps A[k:, k] onto alpha e_k; the reflectors are kept to form Q afterwards.
  std::vector<std::vector<double>> reflectors(static_cast<size_t>(n));
  std::vector<double> r_diag(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    double norm = 0;
    for (int64_t i = k; i < m; ++i) norm += A(i, k) * A(i, k);
    norm = std::sqrt(norm);
    double alpha = A(k, k) > 0 ? -norm : norm;
    std::vector<double>& v = reflectors[static_cast<size_t>(k)];
    v.assign(static_cast<size_t>(m - k), 0.0);
    for (int64_t i = k; i < m; ++i) v[static_cast<size_t>(i - k)] = A(i, k);
    v[0] -= alpha;
    double vv = 0;
    for (double x : v) vv += x * x;
    r_diag[static_cast<size_t>(k)] = alpha;
    if (vv == 0) continue;  // the column is already alpha e_k
    for (int64_t j = k; j < n; ++j) {
      double dot = 0;
      for (int64_t i = k; i < m; ++i) dot += v[static_cast<size_t>(i - k)] * A(i, j);
      double f = 2.0 * dot / vv;
      for (int64_t i = k; i < m; ++i) A(i, j) -= f * v[static_cast<size_t>(i - k)];
    }
  }
  // Q = H_0 H_1 ... H_{n-1} applied to the first n columns of the identity, last reflector first.
  std::vector<double> q(static_cast<size_t>(m * n), 0.0);
  auto Q = [&](int64_t i, int64_t j) -> double& { return q[static_cast<size_t>(j * m + i)]; };
  for (int64_t j = 0; j < n; ++j) Q(j, j) = 1.0;
  for (int64_t k = n - 1; k >= 0; --k) {
    const std::vector<double>& v = reflectors[static_cast<size_t>(k)];
    double vv = 0;
    for (double x : v) vv += x * x;
    if (vv == 0) continue;
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int64_t i = k; i < m; ++i) dot += v[static_cast<size_t>(i - k)] * Q(i, j);
      double f = 2.0 * dot / vv;
      for (int64_t i = k; i < m; ++i) Q(i, j) -= f * v[static_cast<size_t>(i - k)];
    }
  }
  // Signs from R's diagonal make the result unique for a given Gaussian matrix (uniform over orthogonal
  // matrices), as Keras does.
  Tensor t(dtype, shape);
  for (int64_t j = 0; j < n; ++j) {
    double s = r_diag[static_cast<size_t>(j)] < 0 ? -1.0 : 1.0;
    for (int64_t i = 0; i < m; ++i) {
      int64_t flat = tall ? i * cols + j : j * cols + i;  // row-major rows x cols
      t.set_f64(flat, s * Q(i, j));
    }
  }
  return t;
}

namespace {

// An initializer's arguments, in the order Keras's constructor takes them, with their defaults.
struct InitArg {
  const char* key;
  double number = 0;
  const char* text = nullptr;  // a string argument's default; null for a number
};
std::vector<InitArg> init_args(const std::string& c) {
  if (c == "random_normal" || c == "truncated_normal") return {{"mean", 0.0}, {"stddev", 0.05}, {"seed", -1}};
  if (c == "random_uniform") return {{"minval", -0.05}, {"maxval", 0.05}, {"seed", -1}};
  if (c == "constant") return {{"value", 0.0}};
  if (c == "orthogonal") return {{"gain", 1.0}, {"seed", -1}};
  if (c == "variance_scaling")
    return {{"scale", 1.0}, {"mode", 0, "fan_in"}, {"distribution", 0, "truncated_normal"}, {"seed", -1}};
  if (c == "zeros" || c == "ones") return {};
  return {{"seed", -1}};  // glorot, he and lecun
}

std::string trimmed(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

struct ParsedInit {
  std::string name;
  std::vector<std::pair<std::string, std::string>> given;  // key, value text (strings unquoted)
};

// "Name(a, k=v)" -> the canonical name and each argument with its key (by position where none is given).
ParsedInit parse_init(const std::string& text) {
  const std::string forms =
      "e.g. \"he_normal\", \"RandomNormal(stddev=0.02)\", \"Constant(0.1)\" or "
      "\"VarianceScaling(scale=2.0, mode='fan_out')\"";
  const std::string t = trimmed(text);
  const size_t open = t.find('(');
  ParsedInit p;
  p.name = canonical_initializer(trimmed(t.substr(0, open)));
  if (p.name.empty()) throw InputError("", fmt::format("unknown initializer \"{}\"", text), forms);
  if (open == std::string::npos) return p;
  if (t.back() != ')')
    throw InputError("", fmt::format("initializer \"{}\" does not end with ')'", text), forms);
  const std::vector<InitArg> args = init_args(p.name);
  std::vector<std::string> parts;
  for (size_t start = open + 1, i = open + 1; i < t.size(); ++i)
    if (t[i] == ',' || i + 1 == t.size()) {
      parts.push_back(trimmed(t.substr(start, i - start)));
      start = i + 1;
    }
  if (!parts.empty() && parts.back().empty()) parts.pop_back();  // "()", or a trailing comma as Python allows
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string key, value = parts[i];
    if (const size_t eq = value.find('='); eq != std::string::npos) {
      key = trimmed(value.substr(0, eq));
      value = trimmed(value.substr(eq + 1));
    } else if (i < args.size()) {
      key = args[i].key;
    } else {
      throw InputError("",
                       fmt::format("initializer \"{}\" takes {} argument{}", text, args.size(),
                                   args.size() == 1 ? "" : "s"),
                       forms);
    }
    if (value.size() >= 2 && (value.front() == '\'' || value.front() == '"') && value.back() == value.front())
      value = value.substr(1, value.size() - 2);
    if (key == "seed" && value == "None") continue;  // Keras's default: unseeded
    p.given.emplace_back(key, value);
  }
  return p;
}

}  // namespace

std::string canonical_initializer_call(const std::string& text) {
  const ParsedInit p = parse_init(text);
  const std::vector<InitArg> args = init_args(p.name);
  std::vector<std::string> keys;
  for (const InitArg& a : args) keys.push_back(a.key);
  std::vector<std::string> out(args.size());
  for (const auto& [key, value] : p.given) {
    const auto it = std::find(keys.begin(), keys.end(), key);
    if (it == keys.end())
      throw InputError("", fmt::format("initializer \"{}\" has no argument '{}'", text, key),
                       keys.empty() ? fmt::format("{} takes none", p.name)
                                    : fmt::format("{} takes: {}", p.name, fmt::join(keys, ", ")));
    const InitArg& a = args[static_cast<size_t>(it - keys.begin())];
    std::string& slot = out[static_cast<size_t>(it - keys.begin())];
    if (!slot.empty()) throw InputError("", fmt::format("initializer \"{}\" gives {} twice", text, key), "");
    if (a.text) {
      static const std::vector<std::string> modes = {"fan_in", "fan_out", "fan_avg"};
      static const std::vector<std::string> dists = {"truncated_normal", "untruncated_normal", "normal",
                                                     "uniform"};
      const std::vector<std::string>& ok = key == "mode" ? modes : dists;
      if (std::find(ok.begin(), ok.end(), value) == ok.end())
        throw InputError("",
                         fmt::format("initializer \"{}\": {} '{}' is not one of {}", text, key, value,
                                     fmt::join(ok, ", ")),
                         "");
      slot = fmt::format("{}='{}'", key, value == "normal" ? "truncated_normal" : value);
      continue;
    }
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    const bool whole = v == std::floor(v) && v >= 0 && v < 9.0e15;
    if (value.empty() || *end != '\0' || !std::isfinite(v) || (key == "seed" && !whole) ||
        ((key == "stddev" || key == "scale" || key == "gain") && !(v > 0)))
      throw InputError("",
                       fmt::format("initializer \"{}\": {} = {} is not {}", text, key, value,
                                   key == "seed" ? "a seed (a whole number, 0 or more)"
                                   : key == "stddev" || key == "scale" || key == "gain" ? "a positive number"
                                                                                        : "a number"),
                       "");
    slot = fmt::format("{}={}", key, v);
  }
  std::vector<std::string> given;
  for (const std::string& s : out)
    if (!s.empty()) given.push_back(s);
  return given.empty() ? p.name : fmt::format("{}({})", p.name, fmt::join(given, ", "));
}

Tensor initialize(const std::string& text, const Shape& shape, const WeightFans& fans, uint64_t given_seed,
                  DType dtype) {
  const ParsedInit p = parse_init(text);
  const std::string& c = p.name;
  // The arguments: the defaults, then what the call gives (canonical_initializer_call checked them).
  std::map<std::string, double> num;
  std::map<std::string, std::string> str;
  for (const InitArg& a : init_args(c)) {
    if (a.text)
      str[a.key] = a.text;
    else
      num[a.key] = a.number;
  }
  for (const auto& [key, value] : p.given) {
    if (str.count(key))
      str[key] = value;
    else
      num[key] = std::strtod(value.c_str(), nullptr);
  }
  // A seeded initializer draws from its own seed alone (the same values wherever it is used, as in Keras).
  const uint64_t seed = num.count("seed") && num["seed"] >= 0
                            ? layer_seed(static_cast<uint64_t>(num["seed"]), "initializer seed")
                            : given_seed;
  const double fan_in = static_cast<double>(std::max<int64_t>(fans.fan_in, 1));
  const double fan_out = static_cast<double>(std::max<int64_t>(fans.fan_out, 1));
  const double fan_avg = (fan_in + fan_out) / 2;
  // Variance scaling: variance scale / fan, uniform with limit sqrt(3 variance) or a truncated normal.
  auto scaled = [&](double scale, double fan, bool uniform) {
    double variance = scale / fan;
    if (uniform) {
      double limit = std::sqrt(3.0 * variance);
      return ops::random_tensor(shape, -limit, limit, seed, dtype);
    }
    return normal_tensor(shape, std::sqrt(variance) / kTruncatedStddev, true, seed, dtype);
  };
  if (c == "glorot_uniform") return glorot_uniform(shape, fans.fan_in, fans.fan_out, seed, dtype);
  if (c == "glorot_normal") return scaled(1.0, fan_avg, false);
  if (c == "he_uniform") return scaled(2.0, fan_in, true);
  if (c == "he_normal") return scaled(2.0, fan_in, false);
  if (c == "lecun_uniform") return scaled(1.0, fan_in, true);
  if (c == "lecun_normal") return scaled(1.0, fan_in, false);
  if (c == "orthogonal") {
    Tensor t = orthogonal(shape, fans.rows, fans.cols, seed, dtype);
    if (num["gain"] != 1.0)
      for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, t.get_f64(i) * num["gain"]);
    return t;
  }
  if (c == "zeros") return filled(shape, 0.0, dtype);
  if (c == "ones") return filled(shape, 1.0, dtype);
  if (c == "constant") return filled(shape, num["value"], dtype);
  auto shifted = [&](Tensor t, double by) {
    if (by != 0)
      for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, t.get_f64(i) + by);
    return t;
  };
  if (c == "random_uniform") return ops::random_tensor(shape, num["minval"], num["maxval"], seed, dtype);
  if (c == "random_normal")
    return shifted(normal_tensor(shape, num["stddev"], false, seed, dtype), num["mean"]);
  if (c == "truncated_normal")
    return shifted(normal_tensor(shape, num["stddev"], true, seed, dtype), num["mean"]);
  if (c == "variance_scaling") {
    const std::string& mode = str["mode"];
    const double fan = mode == "fan_in" ? fan_in : mode == "fan_out" ? fan_out : fan_avg;
    const std::string& d = str["distribution"];
    if (d == "untruncated_normal")
      return normal_tensor(shape, std::sqrt(num["scale"] / fan), false, seed, dtype);
    return scaled(num["scale"], fan, d == "uniform");
  }
  TRAINER_ASSERT(false, "unknown initializer '{}'", text);
  return {};
}

std::vector<int64_t> kernel_keras_axes(int rank) {
  std::vector<int64_t> out;
  for (int a = 0; a < rank - 2; ++a) out.push_back(a + 2);
  out.push_back(1);
  out.push_back(0);
  return out;
}

}  // namespace trainer::models
