// Reads a model spec: toml++ parses the text, --set overrides are merged into the document, then every table
// is checked against its schema so that a mistake is reported at its file:line:col with a did-you-mean hint.
#include "formats/model_spec.h"

#include <fmt/format.h>

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <variant>

#include "engine/train/fit.h"
#include "engine/util/error.h"
#include "formats/data_bytes.h"
#include "formats/data_text.h"
#include "formats/model_spec_text.h"

namespace trainer::formats {

using spec_text::join;
using spec_text::nearest;
using spec_text::toml_float;
using spec_text::toml_key;
using spec_text::toml_string;

namespace {

using Keys = std::vector<std::string_view>;

constexpr std::string_view kSetPrefix = "--set ";

// The schema: the keys each table may hold. Layer tables are free-form (models/ checks their arguments).
const Keys kRootKeys = {"format_version", "model", "data", "train", "parallel"};
const Keys kParallelKeys = {"bucket_mb", "shard_optimizer", "sync_batch_norm"};
const Keys kModelKeys = {"input", "inputs", "layers", "onnx", "freeze", "output", "outputs"};
const Keys kInputKeys = {"shape", "dtype"};
const Keys kNamedInputKeys = {"name", "shape", "dtype"};
const Keys kDataKeys = {"train", "validation", "test", "validation_split", "scale", "mean",
                        "std",   "shuffle",    "text", "sequences"};
const Keys kSourceKeys = {"format",
                          "x",
                          "y",
                          "x_key",
                          "y_key",
                          "header",
                          "label_column",
                          "limit",
                          "sample_weight",
                          "sample_weight_key",
                          "class_names"};
const Keys kTextKeys = {"max_tokens", "output_sequence_length", "standardize", "padding", "truncating",
                        "vocabulary"};
const Keys kSequenceKeys = {"maxlen",    "padding",  "truncating", "value",    "load_data",
                            "num_words", "skip_top", "start_char", "oov_char", "index_from"};
const Keys kTrainKeys = {"loss",
                         "from_logits",
                         "label_smoothing",
                         "metrics",
                         "loss_weights",
                         "top_k",
                         "weighted_metrics",
                         "class_weight",
                         "epochs",
                         "batch_size",
                         "seed",
                         "optimizer",
                         "precision",
                         "checkpoint",
                         "early_stopping",
                         "reduce_lr_on_plateau",
                         "validation_freq",
                         "steps_per_epoch",
                         "validation_steps"};
const Keys kPrecisions = {"auto", "fp32", "tf32", "bf16", "fp16"};
const Keys kOptimizerKeys = {"name",
                             "learning_rate",
                             "beta_1",
                             "beta_2",
                             "epsilon",
                             "amsgrad",
                             "momentum",
                             "nesterov",
                             "rho",
                             "centered",
                             "initial_accumulator_value",
                             "weight_decay",
                             "clipnorm",
                             "global_clipnorm",
                             "clipvalue",
                             "gradient_accumulation_steps",
                             "use_ema",
                             "ema_momentum",
                             "ema_overwrite_frequency",
                             "schedule"};
const Keys kScheduleKeys = {"kind",        "step_size",    "gamma",
                            "decay_steps", "decay_rate",   "staircase",
                            "alpha",       "warmup_steps", "end_learning_rate",
                            "power",       "cycle",        "first_decay_steps",
                            "t_mul",       "m_mul",        "boundaries",
                            "values",      "warmup_target"};
const Keys kEarlyStoppingKeys = {
    "monitor", "mode", "min_delta", "patience", "restore_best_weights", "baseline", "start_from_epoch"};
const Keys kCheckpointKeys = {"every_epochs", "every_steps", "keep_last", "save_best", "mode"};
const Keys kReduceLrKeys = {"monitor", "factor", "patience", "mode", "min_delta", "cooldown", "min_lr"};

// Every table of the schema, to tell a user who put a key in the wrong table where it belongs.
const std::vector<std::pair<std::string_view, const Keys*>> kAllTables = {
    {"the top level", &kRootKeys},
    {"[model]", &kModelKeys},
    {"[model.input]", &kInputKeys},
    {"[[model.inputs]]", &kNamedInputKeys},
    {"[data]", &kDataKeys},
    {"[data.train], [data.validation] and [data.test]", &kSourceKeys},
    {"[data.text]", &kTextKeys},
    {"[data.sequences]", &kSequenceKeys},
    {"[train]", &kTrainKeys},
    {"[train.optimizer]", &kOptimizerKeys},
    {"[train.optimizer.schedule]", &kScheduleKeys},
    {"[train.early_stopping]", &kEarlyStoppingKeys},
    {"[train.checkpoint]", &kCheckpointKeys},
    {"[train.reduce_lr_on_plateau]", &kReduceLrKeys},
    {"[parallel]", &kParallelKeys},
};

const Keys kDtypes = {"float32", "int32", "int64"};
const Keys kFormats = {"idx", "cifar10", "npy", "npz", "csv", "text", "images"};
const Keys kLosses = {"sparse_categorical_crossentropy",
                      "categorical_crossentropy",
                      "binary_crossentropy",
                      "binary_focal_crossentropy",
                      "categorical_focal_crossentropy",
                      "mse",
                      "mae",
                      "mean_squared_error",
                      "mean_absolute_error",
                      "huber",
                      "log_cosh",
                      "poisson",
                      "kl_divergence",
                      "kld",
                      "hinge",
                      "squared_hinge",
                      "categorical_hinge",
                      "cosine_similarity",
                      "msle",
                      "mean_squared_logarithmic_error",
                      "mape",
                      "mean_absolute_percentage_error"};
const Keys kMetrics = {"accuracy",
                       "top_k_accuracy",
                       "precision",
                       "recall",
                       "f1_score",
                       "auc",
                       "pr_auc",
                       "true_positives",
                       "false_positives",
                       "true_negatives",
                       "false_negatives",
                       "fbeta_score",
                       "precision_at_recall",
                       "recall_at_precision",
                       "sensitivity_at_specificity",
                       "specificity_at_sensitivity",
                       "mean_iou",
                       "iou",
                       "one_hot_iou",
                       "one_hot_mean_iou",
                       "binary_iou",
                       "binary_crossentropy",
                       "categorical_crossentropy",
                       "sparse_categorical_crossentropy",
                       "kl_divergence",
                       "poisson",
                       "cosine_similarity",
                       "logcosh",
                       "hinge",
                       "squared_hinge",
                       "categorical_hinge",
                       "mae",
                       "mse",
                       "mean_absolute_error",
                       "mean_squared_error",
                       "root_mean_squared_error",
                       "mape",
                       "mean_absolute_percentage_error",
                       "msle",
                       "mean_squared_logarithmic_error",
                       "r2_score",
                       "acc",
                       "binary_accuracy",
                       "categorical_accuracy",
                       "sparse_categorical_accuracy",
                       "top_k_categorical_accuracy",
                       "sparse_top_k_categorical_accuracy"};
// Keras's accuracy metrics by their explicit names, each tied to the labels its loss takes.
const std::map<std::string_view, std::string_view> kAccuracyLoss = {
    {"binary_accuracy", "binary_crossentropy"},
    {"categorical_accuracy", "categorical_crossentropy"},
    {"top_k_categorical_accuracy", "categorical_crossentropy"},
    {"sparse_categorical_accuracy", "sparse_categorical_crossentropy"},
    {"sparse_top_k_categorical_accuracy", "sparse_categorical_crossentropy"}};
const Keys kOptimizers = {"sgd",    "adam",  "adamw", "rmsprop", "adagrad",
                          "adamax", "nadam", "lion",  "adadelta"};
const Keys kSchedules = {"constant",   "step",         "exponential",     "cosine",
                         "polynomial", "inverse_time", "cosine_restarts", "piecewise_constant"};
const Keys kModes = {"auto", "min", "max"};

// Which optimizer and schedule keys apply to which kind: a key that does not apply is an error, as an
// unexpected keyword argument is in Keras, rather than a setting silently ignored.
// Each optimizer's own keys; learning_rate comes before them and the decay and clipping keys after them.
const std::map<std::string_view, Keys> kOptimizerOwnArgs = {
    {"sgd", {"momentum", "nesterov"}},
    {"adam", {"beta_1", "beta_2", "epsilon", "amsgrad"}},
    {"adamw", {"beta_1", "beta_2", "epsilon", "amsgrad"}},
    {"rmsprop", {"rho", "momentum", "epsilon", "centered"}},
    {"adagrad", {"initial_accumulator_value", "epsilon"}},
    {"adamax", {"beta_1", "beta_2", "epsilon"}},
    {"nadam", {"beta_1", "beta_2", "epsilon"}},
    {"lion", {"beta_1", "beta_2"}},
    {"adadelta", {"rho", "epsilon"}},
};

Keys optimizer_args(std::string_view name) {
  Keys keys = {"learning_rate"};
  const Keys& own = kOptimizerOwnArgs.at(name);
  keys.insert(keys.end(), own.begin(), own.end());
  for (const char* k : {"weight_decay", "clipnorm", "global_clipnorm", "clipvalue",
                        "gradient_accumulation_steps", "use_ema", "ema_momentum", "ema_overwrite_frequency"})
    keys.push_back(k);
  return keys;
}
const std::map<std::string_view, Keys> kScheduleArgs = {
    {"constant", {"warmup_steps"}},
    {"step", {"step_size", "gamma", "warmup_steps"}},
    {"exponential", {"decay_steps", "decay_rate", "staircase", "warmup_steps"}},
    {"cosine", {"decay_steps", "alpha", "warmup_steps", "warmup_target"}},
    {"polynomial", {"decay_steps", "end_learning_rate", "power", "cycle", "warmup_steps"}},
    {"inverse_time", {"decay_steps", "decay_rate", "staircase", "warmup_steps"}},
    {"cosine_restarts", {"first_decay_steps", "t_mul", "m_mul", "alpha", "warmup_steps"}},
    {"piecewise_constant", {"boundaries", "values", "warmup_steps"}},
};

bool contains(const Keys& keys, std::string_view k) {
  return std::find(keys.begin(), keys.end(), k) != keys.end();
}

// Keras's class names, as keras.losses.get and keras.metrics.get take them: "SparseCategoricalCrossentropy"
// and "KLDivergence" read as sparse_categorical_crossentropy and kl_divergence, "AUC" as auc, "Adam" as adam.
// A capital starts a word after a lower-case letter or a digit, and so does the last capital of a run before
// a lower-case letter. Returns `name` itself when the result is not one of `valid`.
std::string keras_class_name(const std::string& name, const Keys& valid) {
  if (contains(valid, name) || std::none_of(name.begin(), name.end(), [](char c) { return std::isupper(c); }))
    return name;
  // Keras's Accuracy class counts exact matches of values, which the loss-dependent "accuracy" does not.
  if (name == "Accuracy") return name;
  if (name == "FBetaScore" && contains(valid, "fbeta_score")) return "fbeta_score";
  // MeanIoU, IoU, OneHotMeanIoU, BinaryIoU: IoU is one word
  if (const size_t at = name.find("IoU"); at != std::string::npos && name.ends_with("IoU"))
    return keras_class_name(name.substr(0, at) + "Iou", valid);
  if (name == "LogCoshError" && contains(valid, "logcosh")) return "logcosh";
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (contains(valid, lower)) return lower;  // Adam, SGD, RMSprop
  std::string snake;
  for (size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (std::isupper(c) && i > 0) {
      const auto prev = static_cast<unsigned char>(name[i - 1]);
      const bool next_lower = i + 1 < name.size() && std::islower(static_cast<unsigned char>(name[i + 1]));
      if (std::islower(prev) || std::isdigit(prev) || (std::isupper(prev) && next_lower)) snake += '_';
    }
    snake += static_cast<char>(std::tolower(c));
  }
  if (contains(valid, snake)) return snake;
  // Keras's schedule classes: ExponentialDecay, CosineDecayRestarts, PiecewiseConstantDecay, ...
  if (const size_t d = snake.find("_decay"); d != std::string::npos) {
    snake.erase(d, 6);
    if (contains(valid, snake)) return snake;
  }
  return name;
}

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

// "a string (\"10\")": the type and, for scalars, the value, so the user sees what was read.
std::string describe(const toml::node& n) {
  if (auto* s = n.as_string()) {
    std::string v = s->get();
    if (v.size() > 40) v = v.substr(0, 37) + "...";
    return fmt::format("a string ({})", toml_string(v));
  }
  if (auto* i = n.as_integer()) return fmt::format("an integer ({})", i->get());
  if (auto* f = n.as_floating_point()) return fmt::format("a float ({})", toml_float(f->get()));
  if (auto* b = n.as_boolean()) return fmt::format("a boolean ({})", b->get());
  return type_name(n);
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// Positions: file:line:col from toml++'s source regions; values from --set carry the override as their place.
// The parser nests one table per part of a dotted key (a.b.c) and recurses through them, so a key of
// tens of thousands of parts exhausts the stack. No spec needs more than a handful: more than
// kMaxKeyParts parts in one dotted chain is refused before parsing. Returns the line (1-based) of the
// first chain that long, or 0.
constexpr int kMaxKeyParts = 64;

int overlong_key_line(std::string_view text) {
  int line = 1, dots = 0;
  size_t i = 0;
  const size_t n = text.size();
  auto skip_string = [&](char q) {
    const bool multi = text.substr(i, 3) == std::string_view(q == '"' ? "\"\"\"" : "'''");
    i += multi ? 3 : 1;
    while (i < n) {
      const char c = text[i];
      if (c == '\\' && q == '"') {
        if (i + 1 < n && text[i + 1] == '\n') ++line;  // a line continuation
        i += 2;
        continue;
      }
      if (c == '\n') {
        if (!multi) return;  // an unterminated string: the parser reports it
        ++line;
      }
      if (c == q && (!multi || text.substr(i, 3) == std::string_view(q == '"' ? "\"\"\"" : "'''"))) {
        i += multi ? 3 : 1;
        return;
      }
      ++i;
    }
  };
  while (i < n) {
    const char c = text[i];
    if (c == '"' || c == '\'') {
      skip_string(c);  // a quoted key part continues the chain
      continue;
    }
    if (c == '#') {
      while (i < n && text[i] != '\n') ++i;
      continue;
    }
    if (c == '.') {
      if (++dots >= kMaxKeyParts) return line;
    } else if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '+' ||
                 c == ' ' || c == '\t')) {
      dots = 0;  // '=', ',', brackets, braces and line ends end a key
    }
    if (c == '\n') ++line;
    ++i;
  }
  return 0;
}

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  SourcePos region(const toml::source_region& r) const {
    if (r.path && r.path->starts_with(kSetPrefix)) return SourcePos{*r.path, 0, 0};
    if (!r.begin) return SourcePos{file_, 0, 0};
    return SourcePos{file_, static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
  }
  SourcePos pos(const toml::node& n) const {
    auto it = synthetic_.find(&n);
    return it != synthetic_.end() ? it->second : region(n.source());
  }
  // A key's own position, or its value's where toml++ has none for the key, or where --set gave the value (an
  // overridden key keeps the file's place, and its value is the override's).
  SourcePos pos(const toml::key& k, const toml::node& v) const {
    const SourcePos vp = pos(v);
    if (from_set(vp)) return vp;
    SourcePos p = region(k.source());
    return p.line > 0 || from_set(p) ? p : vp;
  }
  static bool from_set(const SourcePos& p) { return p.line == 0 && p.file.starts_with(kSetPrefix); }
  SourcePos file() const { return SourcePos{file_, 0, 0}; }

  // Tables made from a shorthand (`input = [28, 28, 1]`) take the position of the value they replace.
  void set_pos(const toml::node& n, SourcePos p) { synthetic_[&n] = std::move(p); }

  // Every spec error has a hint: the caller's, or where the manual describes the spec.
  [[noreturn]] void fail(const SourcePos& where, std::string what, std::string hint = {}) const {
    throw InputError(where.str(), std::move(what),
                     hint.empty() ? "trainer-model(5) describes every key and its values" : std::move(hint));
  }

 private:
  std::string file_;
  std::map<const toml::node*, SourcePos> synthetic_;
};

// "did you mean 'x'?", or the list of valid names.
std::string choice_hint(std::string_view word, const Keys& valid, std::string_view quote = "'") {
  if (auto n = nearest(word, valid)) return fmt::format("did you mean {}{}{}?", quote, *n, quote);
  return fmt::format("expected one of: {}", join(valid));
}

// One TOML table checked against its schema. The constructor rejects unknown keys; the getters check types.
class Table {
 public:
  Table(const Reader& r, const toml::node& node, std::string path, const Keys& keys)
      : r_(r), node_(node), path_(std::move(path)) {
    t_ = node.as_table();
    if (!t_)
      r_.fail(r_.pos(node), fmt::format("{} must be a table, not {}", path_, describe(node)),
              fmt::format("write it as a [{}] section", path_));
    for (auto&& [k, v] : *t_) {
      if (contains(keys, k.str())) continue;
      unknown_key(k, v, keys);
    }
  }

  const toml::node* find(std::string_view key) const { return t_->get(key); }
  const toml::table& table() const { return *t_; }
  SourcePos pos() const { return r_.pos(node_); }
  SourcePos pos(std::string_view key) const { return r_.pos(*find(key)); }
  std::string name(std::string_view key) const {
    return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
  }
  std::string label() const { return path_.empty() ? "the top level" : fmt::format("[{}]", path_); }

  [[noreturn]] void fail(std::string_view key, std::string what, std::string hint = {}) const {
    r_.fail(pos(key), std::move(what), std::move(hint));
  }

  bool get(std::string_view key, int64_t& out) const {
    const toml::node* n = find(key);
    if (!n) return false;
    if (auto* v = n->as_integer()) {
      out = v->get();
      return true;
    }
    wrong_type(key, *n, "an integer");
  }
  // Integers are accepted where a float is expected ("learning_rate = 1"); infinities and NaN are not.
  bool get(std::string_view key, double& out) const {
    const toml::node* n = find(key);
    if (!n) return false;
    if (auto* v = n->as_floating_point())
      out = v->get();
    else if (auto* i = n->as_integer())
      out = static_cast<double>(i->get());
    else
      wrong_type(key, *n, "a number");
    if (!std::isfinite(out))
      fail(key, fmt::format("{} must be a finite number, not {}", name(key), describe(*n)));
    return true;
  }
  bool get(std::string_view key, bool& out) const {
    const toml::node* n = find(key);
    if (!n) return false;
    if (auto* v = n->as_boolean()) {
      out = v->get();
      return true;
    }
    wrong_type(key, *n, "a boolean (true or false)");
  }
  bool get(std::string_view key, std::string& out) const {
    const toml::node* n = find(key);
    if (!n) return false;
    if (auto* v = n->as_string()) {
      out = v->get();
      return true;
    }
    wrong_type(key, *n, "a string");
  }
  // A string one of `valid`.
  // `keras`: Keras's class names of the choices are taken too (see keras_class_name).
  bool get_choice(std::string_view key, std::string& out, const Keys& valid, std::string_view what,
                  bool keras = false) const {
    if (!get(key, out)) return false;
    if (keras) out = keras_class_name(out, valid);
    if (!contains(valid, out)) fail(key, fmt::format("unknown {} '{}'", what, out), choice_hint(out, valid));
    return true;
  }
  // A string or an array of strings.
  bool get_strings(std::string_view key, std::vector<std::string>& out) const {
    const toml::node* n = find(key);
    if (!n) return false;
    out.clear();
    if (auto* s = n->as_string()) {
      out.push_back(s->get());
      return true;
    }
    auto* a = n->as_array();
    if (!a) wrong_type(key, *n, "a string or an array of strings");
    for (const toml::node& e : *a) {
      auto* s = e.as_string();
      if (!s)
        r_.fail(r_.pos(e), fmt::format("{} must hold strings, not {}", name(key), describe(e)),
                e.is_array()
                    ? "give one list of names; lists by output (Keras's list of lists) are for a model "
                      "of several outputs, listed in [model] outputs"
                    : "quote each entry: [\"a\", \"b\"]");
      out.push_back(s->get());
    }
    return true;
  }
  // A number or an array of numbers.
  bool get_numbers(std::string_view key, std::vector<double>& out) const {
    const toml::node* n = find(key);
    if (!n) return false;
    out.clear();
    auto number = [&](const toml::node& e) {
      double v;
      if (auto* f = e.as_floating_point())
        v = f->get();
      else if (auto* i = e.as_integer())
        v = static_cast<double>(i->get());
      else
        r_.fail(r_.pos(e), fmt::format("{} must hold numbers, not {}", name(key), describe(e)));
      if (!std::isfinite(v)) r_.fail(r_.pos(e), fmt::format("{} must hold finite numbers", name(key)));
      out.push_back(v);
    };
    if (auto* a = n->as_array()) {
      for (const toml::node& e : *a) number(e);
    } else if (n->is_number()) {
      number(*n);
    } else {
      wrong_type(key, *n, "a number or an array of numbers");
    }
    return true;
  }

  [[noreturn]] void wrong_type(std::string_view key, const toml::node& n, std::string_view expected) const {
    std::string hint;
    if (auto* s = n.as_string()) {
      // A quoted number or boolean: say how to write it.
      const std::string v = trim(s->get());
      bool plain = false;
      if (!overlong_key_line(v)) try {
          toml::table parsed = toml::parse("v = " + v);
          const toml::node* p = parsed.get("v");
          plain = parsed.size() == 1 && p && (p->is_number() || p->is_boolean());
        } catch (const toml::parse_error&) {
        }
      if (plain) hint = fmt::format("write it without quotes: {} = {}", key, v);
    } else if (auto* f = n.as_floating_point();
               f && expected == "an integer" && std::isfinite(f->get()) && f->get() == std::floor(f->get())) {
      hint = fmt::format("write it without a decimal point: {} = {}", key, static_cast<int64_t>(f->get()));
    } else if (expected == "a string" && !n.is_table() && !n.is_array()) {
      hint = "put the value in quotes";
    } else if (expected == "a string" && n.is_table() && name(key) == "train.loss") {
      hint =
          "name the loss, and set its option beside it: loss = \"sparse_categorical_crossentropy\" and "
          "from_logits = true under [train]";
    }
    r_.fail(r_.pos(n), fmt::format("{} must be {}, not {}", name(key), expected, describe(n)), hint);
  }

 private:
  [[noreturn]] void unknown_key(const toml::key& k, const toml::node& v, const Keys& keys) const {
    const SourcePos where = r_.pos(k, v);
    // A key is named in full unless it is absurdly long (a file fed as a spec by mistake).
    const std::string key =
        k.str().size() > 64 ? std::string(k.str().substr(0, 61)) + "..." : std::string(k.str());
    std::string hint;
    if (key == "monitor" && label() == "[train.checkpoint]") {
      hint =
          "the checkpoint of the best epoch is save_best = \"val_loss\" (Keras's ModelCheckpoint monitor "
          "with save_best_only)";
    } else if (auto n = nearest(key, keys)) {
      hint = fmt::format("did you mean '{}'?", Reader::from_set(where) ? name(*n) : *n);
    } else {
      for (const auto& [label, other] : kAllTables)
        if (other != &keys && contains(*other, key)) hint = fmt::format("'{}' belongs in {}", key, label);
      if (hint.empty()) hint = fmt::format("{} takes: {}", label(), join(keys));
    }
    if (Reader::from_set(where)) r_.fail(where, fmt::format("unknown key '{}'", name(key)), hint);
    r_.fail(where, fmt::format("unknown key '{}' {} {}", key, path_.empty() ? "at" : "in", label()), hint);
  }

  const Reader& r_;
  const toml::node& node_;
  const toml::table* t_ = nullptr;
  std::string path_;
};

// --- shorthands and overrides
// --------------------------------------------------------------------------------

// `model.input = [28, 28, 1]` becomes `{ shape = [28, 28, 1] }` and `train.optimizer = "sgd"` becomes
// `{ name = "sgd" }`, so that overrides can reach into them and the checks see one form.
void expand_shorthand(Reader& r, toml::table& doc, std::string_view section, std::string_view key,
                      std::string_view inner) {
  toml::table* sec = doc.get_as<toml::table>(section);
  if (!sec) return;
  toml::node* v = sec->get(key);
  if (!v || v->is_table() || !(v->is_array() || v->is_string())) return;
  const SourcePos p = r.pos(*v);
  const toml::source_region src = v->source();  // the shorthand's place becomes the key's
  toml::table t;
  v->visit([&](auto& n) {
    if constexpr (!std::is_same_v<std::remove_cvref_t<decltype(n)>, toml::table>)
      t.insert_or_assign(toml::key(inner, src), std::move(n));
  });
  sec->insert_or_assign(std::string(key), std::move(t));
  r.set_pos(*sec->get(key), p);
}

// Keras's lists by output for a model of several outputs: loss = ["binary_crossentropy", "mse"] (and
// from_logits, label_smoothing, loss_weights... as lists), and metrics = [["accuracy"], ["mae"]] (a list of
// lists; a list of names is every output's), become the tables by output name that the format reads.
void expand_output_lists(Reader& r, toml::table& doc) {
  const toml::array* names = doc.at_path("model.outputs").as_array();
  toml::table* train = doc.get_as<toml::table>("train");
  if (!names || names->size() < 2 || !train) return;
  for (const toml::node& n : *names)
    if (!n.is_string()) return;  // reported where [model] is read
  std::vector<std::string> listed;
  for (const toml::node& n : *names) listed.push_back(n.as_string()->get());
  for (const char* key : {"loss", "from_logits", "label_smoothing", "metrics", "weighted_metrics"}) {
    toml::array* a = train->get_as<toml::array>(key);
    if (!a) continue;
    const SourcePos p = r.pos(*a);
    const bool metrics = std::string_view(key).ends_with("metrics");
    const size_t lists = static_cast<size_t>(
        std::count_if(a->begin(), a->end(), [](const toml::node& e) { return e.is_array(); }));
    if (metrics && lists == 0) continue;  // a list of metric names is every output's
    if (metrics && lists != a->size())
      r.fail(p, fmt::format("train.{} mixes lists by output with names", key),
             fmt::format("give a list for each output, in order ({}): {} = [[\"accuracy\"], [\"mae\"]]",
                         fmt::join(listed, ", "), key));
    if (a->size() != names->size())
      r.fail(p,
             fmt::format("train.{} lists {} value{} for the {} outputs ({})", key, a->size(),
                         a->size() == 1 ? "" : "s", names->size(), fmt::join(listed, ", ")),
             "give one per output, in [model] outputs' order, or a table by output name");
    toml::table t;
    for (size_t i = 0; i < a->size(); ++i)
      a->get(i)->visit(
          [&](auto& v) { t.insert_or_assign(toml::key(listed[i], a->get(i)->source()), std::move(v)); });
    train->insert_or_assign(std::string(key), std::move(t));
    r.set_pos(*train->get(key), p);
  }
}

void expand_shorthands(Reader& r, toml::table& doc) {
  expand_shorthand(r, doc, "model", "input", "shape");
  expand_shorthand(r, doc, "train", "optimizer", "name");
  expand_output_lists(r, doc);
}

// Merges one --set KEY=VALUE into the document. The value is parsed as TOML with the override text as its
// source path, so everything it creates reports "--set KEY=VALUE" as its place.
void apply_override(Reader& r, toml::table& doc, const std::string& text) {
  const std::string origin = std::string(kSetPrefix) + text;
  const SourcePos where{origin, 0, 0};
  const size_t eq = text.find('=');
  if (eq == std::string::npos)
    r.fail(where, "--set expects KEY=VALUE", "for example --set train.optimizer.learning_rate=3e-4");

  const std::string key = trim(std::string_view(text).substr(0, eq));
  const std::string value = trim(std::string_view(text).substr(eq + 1));
  std::vector<std::string> segs;
  for (size_t b = 0;;) {
    const size_t e = key.find('.', b);
    segs.push_back(trim(std::string_view(key).substr(b, e == std::string::npos ? e : e - b)));
    if (segs.back().empty())
      r.fail(where, fmt::format("--set has an empty part in the key '{}'", key),
             "write the dotted path of a key, e.g. train.epochs");
    if (e == std::string::npos) break;
    b = e + 1;
  }
  // The key is split on its dots here, and a value may be an inline table with dotted keys of its own.
  if (segs.size() > static_cast<size_t>(kMaxKeyParts) ||
      (value.find('{') != std::string::npos && overlong_key_line("v = " + value)))
    r.fail(SourcePos{clipped(origin, 80), 0, 0},
           fmt::format("--set has a dotted key of more than {} parts", kMaxKeyParts),
           "for example --set train.optimizer.learning_rate=3e-4");

  // VALUE as TOML when it is one TOML value; otherwise the text itself, as a bare string ("mse",
  // "data/x.npy").
  std::string value_toml = toml_string(value);
  try {
    toml::table probe = toml::parse("v = " + value);
    if (probe.size() == 1 && probe.get("v")) value_toml = value;
  } catch (const toml::parse_error&) {
  }
  std::string line;
  for (const std::string& s : segs) line += (line.empty() ? "" : ".") + toml_key(s);
  line += " = " + value_toml;
  toml::table ovr = toml::parse(line, std::string(origin));

  toml::node* cur = &doc;
  toml::table* ocur = &ovr;
  std::string walked;
  for (size_t i = 0; i < segs.size(); ++i) {
    const std::string& seg = segs[i];
    auto oit = ocur->find(seg);
    toml::node& onode = oit->second;
    const bool last = i + 1 == segs.size();
    toml::node* next = nullptr;
    if (toml::table* tbl = cur->as_table()) {
      next = tbl->get(seg);
      if (last || !next) {
        onode.visit([&](auto& n) { tbl->insert_or_assign(toml::key(oit->first), std::move(n)); });
        return;
      }
    } else if (toml::array* arr = cur->as_array()) {
      size_t idx = 0;
      auto [p, ec] = std::from_chars(seg.data(), seg.data() + seg.size(), idx);
      if (ec != std::errc() || p != seg.data() + seg.size() || idx >= arr->size())
        r.fail(
            where,
            arr->empty()
                ? fmt::format("cannot set '{}': '{}' is an empty array", key, walked)
                : fmt::format("cannot set '{}': '{}' is an array and '{}' is not an index from 0 to {}", key,
                              walked, seg, arr->size() - 1),
            fmt::format("for example --set {}.0.{}", walked, last ? "units=64" : segs.back() + "=" + value));
      if (last) {
        onode.visit(
            [&](auto& n) { arr->replace(arr->cbegin() + static_cast<ptrdiff_t>(idx), std::move(n)); });
        return;
      }
      next = arr->get(idx);
    }
    walked += (walked.empty() ? "" : ".") + seg;
    if (!next->is_table() && !next->is_array())
      r.fail(where, fmt::format("cannot set '{}': '{}' is {}, not a table", key, walked, describe(*next)));
    cur = next;
    ocur = onode.as_table();
  }
}

// --- sections
// ------------------------------------------------------------------------------------------------

std::vector<int64_t> read_shape(const Reader& r, const toml::node& n, const std::string& what) {
  auto* a = n.as_array();
  if (!a)
    r.fail(r.pos(n), fmt::format("{} must be an array of dimensions, not {}", what, describe(n)),
           "give the per-sample shape without the batch dimension, e.g. [28, 28, 1]");
  if (a->empty())
    r.fail(r.pos(n), fmt::format("{} is empty", what),
           "give the per-sample shape without the batch dimension, e.g. [28, 28, 1]");
  std::vector<int64_t> shape;
  for (const toml::node& e : *a) {
    auto* i = e.as_integer();
    if (!i) r.fail(r.pos(e), fmt::format("{} must hold integers, not {}", what, describe(e)));
    if (i->get() <= 0)
      r.fail(r.pos(e), fmt::format("{} must hold positive dimensions, not {}", what, i->get()),
             i->get() < 0 || a->size() > 1
                 ? "every dimension is fixed (Keras's None, a length that varies, is not supported): pad the "
                   "sequences to one length, and leave the batch out of the shape (batch_size sets it)"
                 : "the batch dimension is not part of the shape; batch_size sets it");
    shape.push_back(i->get());
  }
  return shape;
}

InputSpec read_input(const Reader& r, const toml::node& n) {
  InputSpec in;
  in.pos = r.pos(n);
  if (!n.is_table())
    r.fail(in.pos, fmt::format("model.input must be a shape or a table, not {}", describe(n)),
           "write input = [28, 28, 1] or input = { shape = [28, 28, 1], dtype = \"float32\" }");
  Table t(r, n, "model.input", kInputKeys);
  const toml::node* shape = t.find("shape");
  if (!shape) r.fail(in.pos, "model.input has no shape", "write input = { shape = [28, 28, 1] }");
  in.shape = read_shape(r, *shape, "model.input.shape");
  t.get_choice("dtype", in.dtype, kDtypes, "input dtype");
  return in;
}

// [[model.inputs]]: a model of several inputs, each named (layers take them by name) and in the order the
// data and `trainer predict` give them.
std::vector<InputSpec> read_inputs(const Reader& r, const toml::node& n) {
  const SourcePos list_pos = r.pos(n);
  auto* arr = n.as_array();
  if (!arr || arr->empty())
    r.fail(list_pos, fmt::format("model.inputs must hold [[model.inputs]] tables, not {}", describe(n)),
           "write each input as its own [[model.inputs]] table with a name and a shape");
  std::vector<InputSpec> out;
  for (size_t i = 0; i < arr->size(); ++i) {
    const toml::node& e = *arr->get(i);
    const std::string where = fmt::format("model.inputs[{}]", i);
    if (!e.is_table())
      r.fail(r.pos(e), fmt::format("{} must be a table, not {}", where, describe(e)),
             "write each input as its own [[model.inputs]] table");
    Table t(r, e, where, kNamedInputKeys);
    InputSpec in;
    in.pos = r.pos(e);
    if (!t.get("name", in.name))
      r.fail(in.pos, fmt::format("{} has no name", where),
             "name each input, e.g. name = \"tokens\": layers take it by that name");
    if (in.name.empty() || std::any_of(in.name.begin(), in.name.end(), [](char c) {
          return c == '/' || std::isspace(static_cast<unsigned char>(c)) ||
                 std::iscntrl(static_cast<unsigned char>(c));
        }))
      t.fail("name", fmt::format("{}.name {} is not a valid input name", where, toml_string(in.name)),
             "use letters, digits, '_', '-' or '.', without '/' or spaces");
    for (const InputSpec& o : out)
      if (o.name == in.name)
        t.fail("name", fmt::format("two inputs are named '{}'", in.name),
               fmt::format("the other one is at {}; names must be unique", o.pos.str()));
    const toml::node* shape = t.find("shape");
    if (!shape) r.fail(in.pos, fmt::format("{} has no shape", where), "e.g. shape = [28, 28, 1]");
    in.shape = read_shape(r, *shape, where + ".shape");
    t.get_choice("dtype", in.dtype, kDtypes, "input dtype");
    out.push_back(std::move(in));
  }
  return out;
}

// Keras's default layer name: the class name in snake_case ("MaxPooling2D" -> "max_pooling2d", "ReLU" ->
// "re_lu").
std::string snake_case(const std::string& type) {
  static const std::regex word("(.)([A-Z][a-z]+)");
  static const std::regex lower_upper("([a-z])([A-Z])");
  std::string s = std::regex_replace(std::regex_replace(type, word, "$1_$2"), lower_upper, "$1_$2");
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

ArgValue read_arg(const Reader& r, const toml::node& n, const std::string& what) {
  if (auto* v = n.as_boolean()) return v->get();
  if (auto* v = n.as_integer()) return v->get();
  if (auto* v = n.as_floating_point()) return v->get();
  if (auto* v = n.as_string()) return v->get();
  if (auto* a = n.as_array()) {
    bool ints = true, numbers = true, strings = true;
    for (const toml::node& e : *a) {
      ints = ints && e.is_integer();
      numbers = numbers && e.is_number();
      strings = strings && e.is_string();
    }
    if (ints) {  // also the empty array
      std::vector<int64_t> out;
      for (const toml::node& e : *a) out.push_back(e.as_integer()->get());
      return out;
    }
    if (numbers) {
      std::vector<double> out;
      for (const toml::node& e : *a) out.push_back(e.value<double>().value());
      return out;
    }
    if (strings) {
      std::vector<std::string> out;
      for (const toml::node& e : *a) out.push_back(e.as_string()->get());
      return out;
    }
    // Keras's nested pairs, ((top, bottom), (left, right)) for ZeroPadding2D and Cropping2D, read as the flat
    // [top, bottom, left, right] the layers take.
    bool pairs = true;
    for (const toml::node& e : *a) {
      const toml::array* p = e.as_array();
      pairs = pairs && p && p->size() == 2 && (*p)[0].is_integer() && (*p)[1].is_integer();
    }
    if (pairs) {
      std::vector<int64_t> out;
      for (const toml::node& e : *a)
        for (const toml::node& v : *e.as_array()) out.push_back(v.as_integer()->get());
      return out;
    }
    r.fail(r.pos(n), fmt::format("{} must be an array of numbers or of strings", what),
           "layer arguments take scalars and flat arrays of one kind, e.g. kernel_size = [3, 3], or "
           "pairs of integers, e.g. padding = [[1, 1], [2, 2]]");
  }
  r.fail(r.pos(n),
         fmt::format("{} must be a number, a boolean, a string or an array, not {}", what, describe(n)),
         "layer arguments take scalars and flat arrays, e.g. kernel_initializer = \"he_normal\"");
}

// `inputs`: the model's input names, which layers may take and no layer may have.
std::vector<LayerSpec> read_layers(const Reader& r, const toml::node& n, const Keys& inputs) {
  const SourcePos list_pos = r.pos(n);
  auto* arr = n.as_array();
  if (!arr)
    r.fail(list_pos, fmt::format("model.layers must be an array of tables, not {}", describe(n)),
           "write each layer as its own [[model.layers]] table (double brackets)");
  if (arr->empty()) r.fail(list_pos, "model.layers is empty", "add one [[model.layers]] table per layer");

  std::vector<LayerSpec> layers;
  std::vector<SourcePos> share_pos;  // each layer's `shares` value (empty: none)
  std::vector<std::vector<SourcePos>> input_pos;
  std::vector<SourcePos> name_pos;
  std::vector<bool> named;
  for (size_t i = 0; i < arr->size(); ++i) {
    const toml::node& e = *arr->get(i);
    const std::string where = fmt::format("model.layers[{}]", i);
    auto* t = e.as_table();
    if (!t)
      r.fail(r.pos(e), fmt::format("{} must be a table, not {}", where, describe(e)),
             "write each layer as its own [[model.layers]] table");
    LayerSpec L;
    L.pos = r.pos(e);
    const toml::node* type = t->get("type");
    const toml::node* shares = t->get("shares");
    if (shares && !shares->is_string())
      r.fail(r.pos(*shares), fmt::format("{}.shares must be a layer name, not {}", where, describe(*shares)),
             "e.g. shares = \"encoder\"");
    if (shares) {
      L.shares = shares->as_string()->get();
      if (L.shares.empty())
        r.fail(r.pos(*shares), fmt::format("{}.shares is empty", where),
               "name the layer listed before it that this table calls again");
      share_pos.push_back(r.pos(*shares));
    } else {
      share_pos.emplace_back();
    }
    if (!type && !shares)
      r.fail(L.pos, fmt::format("{} has no type", where),
             "give its Keras class, e.g. type = \"Dense\" (or shares = \"<layer>\" to call an earlier layer "
             "again)");
    if (type && !type->is_string())
      r.fail(r.pos(*type), fmt::format("{}.type must be a string, not {}", where, describe(*type)),
             "give the Keras class in quotes, e.g. type = \"Dense\"");
    if (type) {
      L.type = canonical_layer_type(type->as_string()->get());
      L.type_pos = r.pos(*type);
      if (L.type.empty()) r.fail(L.type_pos, fmt::format("{}.type is empty", where), "e.g. type = \"Dense\"");
    } else {
      L.type_pos = share_pos.back();
    }

    SourcePos npos = L.pos;
    if (const toml::node* name = t->get("name")) {
      npos = r.pos(*name);
      if (!name->is_string())
        r.fail(npos, fmt::format("{}.name must be a string, not {}", where, describe(*name)),
               "e.g. name = \"block1_conv\"");
      L.name = name->as_string()->get();
      // Names become parts of parameter names ("dense/kernel") and of optimizer state
      // ("dense/kernel/adam_m").
      if (L.name.empty() || std::any_of(L.name.begin(), L.name.end(), [](char c) {
            return c == '/' || std::isspace(static_cast<unsigned char>(c)) ||
                   std::iscntrl(static_cast<unsigned char>(c));
          }))
        r.fail(npos, fmt::format("{}.name {} is not a valid layer name", where, toml_string(L.name)),
               "use letters, digits, '_', '-' or '.', without '/' or spaces");
      if (contains(inputs, L.name))
        r.fail(npos,
               inputs == Keys{"onnx"}
                   ? fmt::format("{}.name 'onnx' is reserved for the ONNX model's output", where)
                   : fmt::format("{}.name '{}' is the name of a model input", where, L.name),
               fmt::format("'{}' stands for it in `inputs`; choose another name", L.name));
    }
    std::vector<SourcePos> ipos;
    if (const toml::node* inputs = t->get("inputs")) {
      auto one = [&](const toml::node& s) {
        if (!s.is_string())
          r.fail(r.pos(s), fmt::format("{}.inputs must hold layer names, not {}", where, describe(s)),
                 "e.g. inputs = [\"conv_a\", \"conv_b\"]");
        L.inputs.push_back(s.as_string()->get());
        ipos.push_back(r.pos(s));
      };
      if (auto* a = inputs->as_array()) {
        if (a->empty())
          r.fail(r.pos(*inputs), fmt::format("{}.inputs is empty", where),
                 "name the layers it takes, or leave out inputs to take the previous layer");
        for (const toml::node& s : *a) one(s);
      } else if (inputs->is_string()) {
        one(*inputs);
      } else {
        r.fail(r.pos(*inputs),
               fmt::format("{}.inputs must be an array of layer names, not {}", where, describe(*inputs)),
               "e.g. inputs = [\"conv_a\", \"conv_b\"]");
      }
    }
    for (auto&& [k, v] : *t) {
      const std::string_view key = k.str();
      if (key == "type" || key == "name" || key == "inputs" || key == "shares") continue;
      if (shares)
        r.fail(r.pos(k, v),
               fmt::format("{} shares the layer '{}', whose arguments it takes: '{}' cannot be set here",
                           where, L.shares, key),
               "a shared layer's table holds name, shares and inputs; set the arguments where the layer is "
               "defined");
      L.args.emplace(std::string(key),
                     Arg{read_arg(r, v, fmt::format("{}.{}", where, key)), r.pos(v), r.pos(k, v)});
    }
    named.push_back(!L.name.empty());
    L.named = named.back();
    name_pos.push_back(npos);
    input_pos.push_back(std::move(ipos));
    layers.push_back(std::move(L));
  }

  // Explicit names first: a generated name skips them, so "dense" given to the third layer does not collide.
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!named[i]) continue;
    auto [it, fresh] = index.emplace(layers[i].name, i);
    if (!fresh)
      r.fail(name_pos[i], fmt::format("layer name '{}' is used twice", layers[i].name),
             fmt::format("model.layers[{}] at {} has it too; names must be unique", it->second,
                         name_pos[it->second].str()));
  }
  // A shared layer: the layer it names, listed before it, called again. Its type and arguments are that
  // layer's (the one that holds the weights, when that one shares another's too).
  auto resolve_share = [&](size_t i) {
    LayerSpec& L = layers[i];
    const std::string who = named[i] ? fmt::format("layer '{}'", L.name) : fmt::format("model.layers[{}]", i);
    auto it = index.find(L.shares);
    if (it == index.end() || it->second >= i) {
      Keys earlier;
      for (size_t k = 0; k < i; ++k) earlier.push_back(layers[k].name);
      r.fail(share_pos[i],
             it == index.end() ? fmt::format("{} shares '{}', which is not a layer before it", who, L.shares)
             : it->second == i
                 ? fmt::format("{} shares itself", who)
                 : fmt::format("{} shares '{}', which comes later in model.layers", who, L.shares),
             it == index.end() && !earlier.empty() ? choice_hint(L.shares, earlier)
                                                   : "a layer shares a layer listed before it");
    }
    const LayerSpec& owner = layers[it->second];
    if (!L.type.empty() && L.type != owner.type)
      r.fail(L.type_pos,
             fmt::format("{} is a {}, and the layer '{}' it shares is a {}", who, L.type, owner.name,
                         owner.type),
             "leave out type: a shared layer is its layer's");
    L.type = owner.type;
    L.args = owner.args;
    if (!owner.shares.empty()) L.shares = owner.shares;
  };
  std::map<std::string, int> counters;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].shares.empty()) resolve_share(i);
    if (named[i]) continue;
    const std::string base = snake_case(layers[i].type);
    std::string name;
    do {
      const int n = counters[base]++;
      name = n == 0 ? base : fmt::format("{}_{}", base, n);
    } while (index.count(name) || contains(inputs, name));
    layers[i].name = name;
    index.emplace(name, i);
  }

  // A layer takes the model input or layers defined before it, so the list is already in execution order.
  for (size_t i = 0; i < layers.size(); ++i) {
    for (size_t j = 0; j < layers[i].inputs.size(); ++j) {
      const std::string& in = layers[i].inputs[j];
      if (contains(inputs, in)) continue;
      auto it = index.find(in);
      if (it != index.end() && it->second < i) continue;
      if (it != index.end())
        r.fail(input_pos[i][j],
               it->second == i ? fmt::format("layer '{}' takes itself as input", in)
                               : fmt::format("layer '{}' takes '{}', which comes later in model.layers",
                                             layers[i].name, in),
               "a layer takes the model input or layers listed before it");
      Keys earlier = inputs;
      for (size_t k = 0; k < i; ++k) earlier.push_back(layers[k].name);
      r.fail(input_pos[i][j],
             fmt::format("layer '{}' takes '{}', which is not a layer before it", layers[i].name, in),
             choice_hint(in, earlier));
    }
  }
  return layers;
}

ModelSection read_model(const Reader& r, const toml::node& n) {
  Table t(r, n, "model", kModelKeys);
  ModelSection m;
  m.pos = t.pos();
  if (t.get("onnx", m.onnx)) {
    m.onnx_pos = t.pos("onnx");
    if (m.onnx.empty())
      t.fail("onnx", "model.onnx is empty", "name the ONNX file, e.g. onnx = \"model.onnx\"");
    // The ONNX file defines the inputs; a second definition beside it would be ignored. Layers go on top of
    // its output.
    for (const char* key : {"input", "inputs"})
      if (t.find(key))
        t.fail(key,
               fmt::format("model.{} does not go with model.onnx: the ONNX model defines its inputs", key),
               fmt::format("remove model.{}, or remove onnx to describe the model here", key));
  }
  if (t.get_strings("freeze", m.freeze)) {
    const toml::node* f = t.find("freeze");
    for (size_t i = 0; i < m.freeze.size(); ++i) {
      m.freeze_pos.push_back(f->is_array() ? r.pos(*f->as_array()->get(i)) : r.pos(*f));
      if (m.freeze[i].empty())
        r.fail(m.freeze_pos.back(), "model.freeze has an empty pattern",
               "give glob patterns on initializer names, e.g. freeze = [\"conv1.*\"]");
    }
    if (m.onnx.empty())
      t.fail("freeze", "model.freeze applies to ONNX models: it names initializers of model.onnx",
             "set onnx = \"model.onnx\", or remove freeze");
  }
  if (t.get("output", m.output)) {
    m.output_pos = t.pos("output");
    if (m.onnx.empty())
      t.fail("output", "model.output names a value of the ONNX model, and there is no model.onnx",
             "set onnx = \"model.onnx\", or remove output");
    if (m.output.empty())
      t.fail("output", "model.output is empty", "name a value of the ONNX model, or leave output out");
  }
  if (t.get_strings("outputs", m.outputs)) {
    const toml::node* o = t.find("outputs");
    // Layers of the spec, or (an ONNX model without layers on top) values of the ONNX model.
    // (With layers on top, output picks the ONNX value they take, and outputs names layers.)
    if (!m.output.empty() && !t.find("layers"))
      t.fail("outputs", "model.output and model.outputs both name the model's output",
             "keep output for one value of the ONNX model, or outputs for several");
    if (m.outputs.empty())
      t.fail("outputs", "model.outputs is empty", "name the output layers, or leave it out");
    for (size_t i = 0; i < m.outputs.size(); ++i) {
      m.outputs_pos.push_back(o->is_array() ? r.pos(*o->as_array()->get(i)) : r.pos(*o));
      if (m.outputs[i].empty()) r.fail(m.outputs_pos.back(), "model.outputs has an empty name");
      // Reported quantities are NAME_loss, NAME_accuracy, and val_ or test_ before them.
      for (const char* prefix : {"val", "test"})
        if (m.outputs[i] == prefix || m.outputs[i].starts_with(std::string(prefix) + "_"))
          r.fail(m.outputs_pos.back(),
                 fmt::format("model.outputs names '{}', which would make its reported quantities read as "
                             "{} data's",
                             m.outputs[i], prefix == std::string_view("val") ? "validation" : "test"),
                 "rename the layer");
      for (size_t j = 0; j < i; ++j)
        if (m.outputs[j] == m.outputs[i])
          r.fail(m.outputs_pos.back(), fmt::format("model.outputs lists '{}' twice", m.outputs[i]));
    }
  }
  if (!m.onnx.empty()) {
    // Layers on top of the ONNX model take its output, named "onnx".
    if (const toml::node* layers = t.find("layers")) m.layers = read_layers(r, *layers, {"onnx"});
    return m;
  }
  const toml::node* input = t.find("input");
  const toml::node* inputs = t.find("inputs");
  if (!input && !inputs)
    r.fail(m.pos, "[model] has no input",
           "give the per-sample input shape, e.g. input = [28, 28, 1]; [[model.inputs]] tables for a model "
           "of several inputs; or onnx = \"model.onnx\" for an ONNX model");
  if (input && inputs)
    t.fail("inputs", "model.input and [[model.inputs]] both define the model's input",
           "keep input for a model of one input, or [[model.inputs]] (named) for several");
  Keys names;
  if (input) {
    m.input = read_input(r, *input);
  } else {
    std::vector<InputSpec> all = read_inputs(r, *inputs);
    m.input = all[0];
    m.more_inputs.assign(all.begin() + 1, all.end());
  }
  names.push_back(m.input.name);
  for (const InputSpec& in : m.more_inputs) names.push_back(in.name);
  const toml::node* layers = t.find("layers");
  if (!layers) r.fail(m.pos, "[model] has no layers", "add one [[model.layers]] table per layer");
  m.layers = read_layers(r, *layers, names);
  return m;
}

DataSource read_source(const Reader& r, const toml::node& n, const std::string& path) {
  Table t(r, n, path, kSourceKeys);
  DataSource s;
  s.pos = t.pos();
  // A file that --set gave is named by the override, where a mistake in it is (not by the file's table).
  for (const char* key : {"x", "y", "sample_weight"})
    if (const toml::node* v = t.find(key); v && Reader::from_set(r.pos(*v))) s.pos = r.pos(*v);
  t.get_choice("format", s.format, kFormats, "data format");
  // A table of files by input name, for a model of several inputs; each entry is what x is otherwise.
  if (const toml::node* x = t.find("x"); x && x->is_table()) {
    const std::string xpath = t.name("x");
    for (auto&& [k, v] : *x->as_table()) {
      std::vector<std::string>& files = s.x_by_input[std::string(k.str())];
      auto* a = v.as_array();
      if (!v.is_string() && !a)
        r.fail(r.pos(v), fmt::format("{}.{} must be a file name or an array of them, not {}", xpath, k.str(),
                                     describe(v)));
      for (size_t i = 0; i < (a ? a->size() : 1); ++i) {
        const toml::node& f = a ? *a->get(i) : v;
        if (!f.is_string() || f.as_string()->get().empty())
          r.fail(r.pos(f), fmt::format("{}.{} must hold file names", xpath, k.str()),
                 "e.g. x = { tokens = \"tokens.npy\", meta = \"meta.npy\" }");
        files.push_back(f.as_string()->get());
      }
      if (files.empty())
        r.fail(r.pos(v), fmt::format("{}.{} is empty", xpath, k.str()), "name at least one file");
    }
    if (s.x_by_input.empty())
      t.fail("x", fmt::format("{} is empty", xpath), "name each input's files: x = { tokens = \"t.npy\" }");
  } else if (!t.get_strings("x", s.x)) {
    r.fail(s.pos, fmt::format("[{}] has no x", path),
           "name the feature files, e.g. x = \"train-images-idx3-ubyte.gz\"");
  } else if (s.x.empty()) {
    t.fail("x", fmt::format("{}.x is empty", path), "name at least one file");
  }
  // A table of label files by output name, for a model of several outputs.
  if (const toml::node* y = t.find("y"); y && y->is_table()) {
    for (auto&& [k, v] : *y->as_table()) {
      std::vector<std::string>& files = s.y_by_output[std::string(k.str())];
      auto* a = v.as_array();
      for (size_t i = 0; i < (a ? a->size() : 1) && (a || v.is_string()); ++i) {
        const toml::node& f = a ? *a->get(i) : v;
        if (!f.is_string() || f.as_string()->get().empty())
          r.fail(r.pos(f), fmt::format("{}.{} must hold file names", t.name("y"), k.str()),
                 "e.g. y = { digit = \"digit.npy\", parity = \"parity.npy\" }");
        files.push_back(f.as_string()->get());
      }
      if (files.empty())
        r.fail(r.pos(v), fmt::format("{}.{} must name the output's label files", t.name("y"), k.str()),
               "e.g. y = { digit = \"digit.npy\", parity = \"parity.npy\" }");
    }
    if (s.y_by_output.empty())
      t.fail("y", fmt::format("{} is empty", t.name("y")), "name each output's label files");
  } else {
    t.get_strings("y", s.y);
  }
  for (const char* key : {"x", "y"}) {
    if (!t.find(key)) continue;
    const auto& files = std::string_view(key) == "x" ? s.x : s.y;
    for (const std::string& f : files)
      if (f.empty()) t.fail(key, fmt::format("{} has an empty file name", t.name(key)));
  }
  // x_key as a table: the array of each input of a model of several inputs, by input name.
  if (const toml::node* xk = t.find("x_key"); xk && xk->is_table()) {
    for (auto&& [k, v] : *xk->as_table()) {
      if (!v.is_string() || v.as_string()->get().empty())
        r.fail(r.pos(v), fmt::format("{}.{} must name an array of the .npz", t.name("x_key"), k.str()),
               "e.g. x_key = { tokens = \"input_ids\" }");
      s.x_keys[std::string(k.str())] = v.as_string()->get();
    }
  } else if (t.get("x_key", s.x_key) && s.x_key.empty()) {
    t.fail("x_key", fmt::format("{} is empty", t.name("x_key")), "name an array of the .npz");
  }
  if (const toml::node* yk = t.find("y_key"); yk && yk->is_table()) {
    for (auto&& [k, v] : *yk->as_table()) {
      if (!v.is_string() || v.as_string()->get().empty())
        r.fail(r.pos(v), fmt::format("{}.{} must name an array of the .npz", t.name("y_key"), k.str()),
               "e.g. y_key = { digit = \"y_digit\" }");
      s.y_keys[std::string(k.str())] = v.as_string()->get();
    }
  } else if (t.get("y_key", s.y_key) && s.y_key.empty())
    t.fail("y_key", fmt::format("{} is empty", t.name("y_key")), "name an array of the .npz");
  // A table of weight files, or of .npz arrays, by output name: a model of several outputs weighs each apart.
  if (const toml::node* sw = t.find("sample_weight"); sw && sw->is_table()) {
    for (auto&& [k, v] : *sw->as_table()) {
      std::vector<std::string>& files = s.sample_weight_by_output[std::string(k.str())];
      auto* a = v.as_array();
      for (size_t i = 0; i < (a ? a->size() : 1) && (a || v.is_string()); ++i) {
        const toml::node& f = a ? *a->get(i) : v;
        if (!f.is_string() || f.as_string()->get().empty())
          r.fail(r.pos(f), fmt::format("{}.{} must hold file names", t.name("sample_weight"), k.str()),
                 "e.g. sample_weight = { digit = \"w_digit.npy\" }");
        files.push_back(f.as_string()->get());
      }
      if (files.empty())
        r.fail(r.pos(v),
               fmt::format("{}.{} must name the output's weight files", t.name("sample_weight"), k.str()),
               "e.g. sample_weight = { digit = \"w_digit.npy\" }");
    }
    if (s.sample_weight_by_output.empty())
      t.fail("sample_weight", fmt::format("{} is empty", t.name("sample_weight")),
             "name each output's weights");
  } else if (t.get_strings("sample_weight", s.sample_weight)) {
    if (s.sample_weight.empty())
      t.fail("sample_weight", fmt::format("{} is empty", t.name("sample_weight")), "name the .npy file(s)");
    for (const std::string& f : s.sample_weight)
      if (f.empty())
        t.fail("sample_weight", fmt::format("{} has an empty file name", t.name("sample_weight")));
  }
  if (const toml::node* sk = t.find("sample_weight_key"); sk && sk->is_table()) {
    for (auto&& [k, v] : *sk->as_table()) {
      if (!v.is_string() || v.as_string()->get().empty())
        r.fail(r.pos(v),
               fmt::format("{}.{} must name an array of the .npz", t.name("sample_weight_key"), k.str()),
               "e.g. sample_weight_key = { digit = \"w_digit\" }");
      s.sample_weight_keys[std::string(k.str())] = v.as_string()->get();
    }
  } else if (t.get("sample_weight_key", s.sample_weight_key) && s.sample_weight_key.empty()) {
    t.fail("sample_weight_key", fmt::format("{} is empty", t.name("sample_weight_key")),
           "name an array of the .npz");
  }
  if (t.find("sample_weight") && t.find("sample_weight_key"))
    t.fail("sample_weight_key",
           fmt::format("{} and {} both give the sample weights", t.name("sample_weight"),
                       t.name("sample_weight_key")),
           "keep sample_weight (.npy files) or sample_weight_key (an array of the .npz)");
  t.get("header", s.header);
  if (const toml::node* lc = t.find("label_column")) {
    if (auto* i = lc->as_integer()) {
      if (i->get() < 0)
        t.fail("label_column", fmt::format("{} must be a column name or a 0-based index, not {}",
                                           t.name("label_column"), i->get()));
      s.label_column = std::to_string(i->get());
    } else if (auto* str = lc->as_string()) {
      s.label_column = str->get();
      if (s.label_column.empty())
        t.fail("label_column", fmt::format("{} is empty", t.name("label_column")),
               "leave it out to take the last column");
    } else {
      t.wrong_type("label_column", *lc, "a column name or a 0-based index");
    }
  }
  if (t.get("limit", s.limit) && s.limit < 0)
    t.fail("limit", fmt::format("{} must be 0 (all samples) or more, not {}", t.name("limit"), s.limit));
  if (t.get_strings("class_names", s.class_names)) {
    if (s.class_names.empty())
      t.fail("class_names", fmt::format("{} is empty", t.name("class_names")),
             "name the class folders in label order, or leave it out for every folder");
    std::set<std::string> seen;
    for (const std::string& c : s.class_names)
      if (c.empty() || c.find('/') != std::string::npos || !seen.insert(c).second)
        t.fail("class_names",
               fmt::format("{} must name distinct folders, not '{}'", t.name("class_names"), c),
               "e.g. class_names = [\"neg\", \"pos\"]");
  }
  return s;
}

// [data.text]: Keras's TextVectorization settings, and its vocabulary when given (a list of words, or a file
// of one word per line, relative to the spec's folder).
TextSpec read_text(const Reader& r, const toml::node& n, const std::string& base_dir,
                   const ModelSection& model) {
  Table t(r, n, "data.text", kTextKeys);
  TextSpec x;
  x.pos = t.pos();
  if (!t.get("output_sequence_length", x.output_sequence_length))
    r.fail(x.pos, "[data.text] has no output_sequence_length",
           fmt::format("give the ids per text, the model's input length: output_sequence_length = {}",
                       model.onnx.empty() && model.input.shape.size() == 1 ? model.input.shape[0] : 200));
  if (x.output_sequence_length < 1)
    t.fail("output_sequence_length", fmt::format("data.text.output_sequence_length must be 1 or more, not {}",
                                                 x.output_sequence_length));
  if (t.get("max_tokens", x.max_tokens) && x.max_tokens != 0 && x.max_tokens < 3)
    t.fail(
        "max_tokens",
        fmt::format("data.text.max_tokens counts the padding id 0 and the unknown-word id 1, so it must be "
                    "3 or more (or 0: every word), not {}",
                    x.max_tokens),
        "e.g. max_tokens = 10000, an Embedding's input_dim");
  t.get_choice("standardize", x.standardize,
               {"lower_and_strip_punctuation", "lower", "strip_punctuation", "none"}, "standardization");
  t.get_choice("padding", x.padding, {"post", "pre"}, "padding side");
  t.get_choice("truncating", x.truncating, {"post", "pre"}, "truncating side");
  if (const toml::node* v = t.find("vocabulary")) {
    if (auto* file = v->as_string()) {
      const std::string path =
          file->get().starts_with("/") || base_dir.empty() ? file->get() : base_dir + "/" + file->get();
      std::ifstream in(path, std::ios::binary);
      if (!in)
        t.fail("vocabulary", fmt::format("cannot read the vocabulary file '{}'", file->get()),
               "give a file of one word per line, or a list of words");
      std::string line;
      while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (x.vocabulary.empty() && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // a byte-order mark
        x.vocabulary.push_back(line);
      }
      while (!x.vocabulary.empty() && x.vocabulary.back().empty()) x.vocabulary.pop_back();
    } else {
      t.get_strings("vocabulary", x.vocabulary);
    }
    // Keras's get_vocabulary() begins with the padding and unknown-word entries: a list copied from it is
    // taken as it is meant.
    if (!x.vocabulary.empty() && x.vocabulary[0].empty()) x.vocabulary.erase(x.vocabulary.begin());
    if (!x.vocabulary.empty() && x.vocabulary[0] == "[UNK]") x.vocabulary.erase(x.vocabulary.begin());
    if (x.vocabulary.empty())
      t.fail("vocabulary", "data.text.vocabulary holds no words",
             "list the words, or leave vocabulary out for trainer fit to adapt it on the training texts");
    std::set<std::string_view> seen;
    for (const std::string& w : x.vocabulary)
      // A word as the tokenizer gives one: valid UTF-8, no white space.
      if (w.empty() || text_words(w, "none") != std::vector<std::string>{w} || !seen.insert(w).second)
        t.fail("vocabulary",
               fmt::format(
                   "data.text.vocabulary must hold distinct words of UTF-8 without white space, not '{}'", w),
               "one word per entry (per line in a file), each once");
    if (x.max_tokens > 0 && static_cast<int64_t>(x.vocabulary.size()) + 2 > x.max_tokens)
      t.fail("vocabulary",
             fmt::format("data.text.vocabulary holds {} words, more than max_tokens = {} leaves room for (2 "
                         "ids are padding and unknown words)",
                         x.vocabulary.size(), x.max_tokens),
             fmt::format("raise max_tokens to {}, or give fewer words", x.vocabulary.size() + 2));
  }
  return x;
}

// [data.sequences]: Keras's load_data id mapping and pad_sequences settings.
SequenceSpec read_sequences(const Reader& r, const toml::node& n) {
  Table t(r, n, "data.sequences", kSequenceKeys);
  SequenceSpec s;
  s.pos = t.pos();
  if (t.get("maxlen", s.maxlen) && s.maxlen < 1)
    t.fail("maxlen", fmt::format("data.sequences.maxlen must be 1 or more, not {}", s.maxlen),
           "leave it out for the model input's length");
  t.get_choice("padding", s.padding, {"pre", "post"}, "padding side");
  t.get_choice("truncating", s.truncating, {"pre", "post"}, "truncating side");
  t.get("value", s.value);
  if (s.value < INT32_MIN || s.value > INT32_MAX)
    t.fail("value", fmt::format("data.sequences.value must be a 32-bit id, not {}", s.value));
  t.get("load_data", s.load_data);
  for (auto [key, v, least] :
       {std::tuple{"num_words", &s.num_words, int64_t{1}}, std::tuple{"skip_top", &s.skip_top, int64_t{0}},
        std::tuple{"start_char", &s.start_char, int64_t{0}}, std::tuple{"oov_char", &s.oov_char, int64_t{0}},
        std::tuple{"index_from", &s.index_from, int64_t{0}}}) {
    // start_char and oov_char take false for Keras's None.
    const bool may_be_none = v == &s.start_char || v == &s.oov_char;
    const toml::node* node = t.find(key);
    const bool none = may_be_none && node && node->is_boolean();
    if (none && node->as_boolean()->get())
      t.fail(key, fmt::format("data.sequences.{} = true has no meaning", key),
             fmt::format("give an id, or false for Keras's {}=None", key));
    if (none)
      *v = -1;
    else if (!t.get(key, *v))
      continue;
    if (!s.load_data)
      t.fail(key, fmt::format("data.sequences.{} is a setting of Keras's load_data id mapping", key),
             "add load_data = true to map the ids as keras.datasets.imdb.load_data does");
    if (!none && (*v < least || *v > INT32_MAX))
      t.fail(key, fmt::format("data.sequences.{} must be from {} to 2147483647, not {}", key, least, *v),
             may_be_none ? fmt::format("or false for Keras's {}=None", key) : std::string());
  }
  return s;
}

DataSection read_data(const Reader& r, const toml::node& n, const ModelSection& model,
                      const std::string& base_dir) {
  Table t(r, n, "data", kDataKeys);
  DataSection d;
  d.pos = t.pos();
  if (const toml::node* s = t.find("train")) d.train = read_source(r, *s, "data.train");
  if (const toml::node* s = t.find("validation")) d.validation = read_source(r, *s, "data.validation");
  if (const toml::node* s = t.find("test")) d.test = read_source(r, *s, "data.test");
  // Weights by output name are for a model of several outputs.
  for (const auto* src : {&d.train, &d.validation, &d.test})
    if (*src && model.outputs.size() < 2 &&
        (!(*src)->sample_weight_by_output.empty() || !(*src)->sample_weight_keys.empty()))
      r.fail((*src)->pos, "sample weights by output name are for a model of several outputs",
             "give one set of weights: sample_weight = \"w.npy\", or list the outputs in [model] outputs");
  if (!d.train) r.fail(d.pos, "[data] has no [data.train]", "add a [data.train] table with x = \"...\"");
  if (t.get("validation_split", d.validation_split)) {
    if (d.validation_split < 0 || d.validation_split >= 1)
      t.fail("validation_split",
             fmt::format("data.validation_split must be in [0, 1), not {}", toml_float(d.validation_split)),
             "it is the fraction of the training samples held out, e.g. 0.1");
    if (d.validation && d.validation_split > 0)
      t.fail("validation_split", "data.validation_split and [data.validation] both give a validation set",
             "keep one of them");
  }
  // Preprocessing in the loader is for the one input of a model; a model of several normalizes each input
  // with its own layer.
  double scale = 1;
  if (!model.more_inputs.empty())
    for (const char* key : {"scale", "mean", "std"})
      if (t.find(key) && (std::string_view(key) != "scale" || (t.get(key, scale) && scale != 1)))
        t.fail(key,
               fmt::format("data.{} applies to a model of one input, and this model has {}", key,
                           model.more_inputs.size() + 1),
               "put a Rescaling or Normalization layer on the inputs that need it");
  if (t.get("scale", d.scale) && d.scale == 0)
    t.fail("scale", "data.scale must not be 0", "e.g. scale = 0.00392156862745098 (1/255) for 8-bit images");
  t.get("shuffle", d.shuffle);
  if (const toml::node* seq = t.find("sequences")) d.sequences = read_sequences(r, *seq);
  if (const toml::node* text = t.find("text")) {
    d.text = read_text(r, *text, base_dir, model);
    // A spec's one input takes the ids: integers, as many as output_sequence_length.
    const InputSpec& in = model.input;
    if (model.onnx.empty() && model.more_inputs.empty()) {
      if (in.dtype == "float32")
        r.fail(d.text->pos, "text data gives token ids, and the model's input is float32",
               fmt::format("declare input = {{ shape = [{}], dtype = \"int32\" }}, read by an Embedding",
                           d.text->output_sequence_length));
      if (in.shape != std::vector<int64_t>{d.text->output_sequence_length})
        r.fail(d.text->pos,
               fmt::format("data.text.output_sequence_length is {}, and the model's input is [{}]",
                           d.text->output_sequence_length, fmt::join(in.shape, ", ")),
               "give the text as many ids as the input takes: make the two equal");
    }
  }
  // Text sources need [data.text]; [data.text] is for text sources.
  bool any_text = false;
  for (const auto* src : {&d.train, &d.validation, &d.test}) {
    if (!*src) continue;
    const bool text = (*src)->format == "text";
    any_text = any_text || text;
    if (text && !d.text)
      r.fail((*src)->pos, "text data needs a [data.text] table",
             "add [data.text] with output_sequence_length (and max_tokens, e.g. an Embedding's input_dim)");
    if (!text && (*src)->format != "images" && !(*src)->class_names.empty())
      r.fail((*src)->pos, "class_names is for folders of class folders (format = \"text\" or \"images\")",
             "set format = \"text\" or \"images\", or remove class_names");
  }
  if (d.text && !any_text)
    r.fail(d.text->pos, "[data.text] is for text sources, and no source has format = \"text\"",
           "set format = \"text\" in [data.train] (x then names folders of class folders of .txt files)");
  // One value for every feature, or one per channel (the last dimension of the input shape). An ONNX model's
  // channels are known once it is read: the data loader checks them then.
  const int64_t channels = model.input.shape.empty() ? 0 : model.input.shape.back();
  for (const char* key : {"mean", "std"}) {
    std::vector<double>& v = std::string_view(key) == "mean" ? d.mean : d.std;
    if (!t.get_numbers(key, v)) continue;
    if (v.empty()) t.fail(key, fmt::format("data.{} is empty", key), "give one value, or one per channel");
    if (model.onnx.empty() && v.size() > 1 && static_cast<int64_t>(v.size()) != channels)
      t.fail(key,
             fmt::format("data.{} has {} values but the input has {} channels (the last dimension of {})",
                         key, v.size(), channels, fmt::join(model.input.shape, "x")),
             "give one value, or one per channel");
    if (std::string_view(key) == "std")
      for (double s : v)
        if (s <= 0) t.fail(key, fmt::format("data.std must be positive, not {}", toml_float(s)));
  }
  return d;
}

ScheduleSpec read_schedule(const Reader& r, const toml::node& n) {
  Table t(r, n, "train.optimizer.schedule", kScheduleKeys);
  ScheduleSpec s;
  s.pos = t.pos();
  t.get_choice("kind", s.kind, kSchedules, "schedule kind", true);
  const Keys& args = kScheduleArgs.at(s.kind);
  for (auto&& [k, v] : t.table()) {
    if (k.str() == "kind" || contains(args, k.str())) continue;
    r.fail(r.pos(k, v), fmt::format("{} does not apply to the {} schedule", t.name(k.str()), s.kind),
           fmt::format("the {} schedule takes: {}", s.kind, join(args)));
  }
  auto positive = [&](std::string_view key, int64_t& v, bool required) {
    if (!t.get(key, v)) {
      if (required)
        r.fail(s.pos, fmt::format("the {} schedule needs {}", s.kind, key),
               fmt::format("add {} = <steps> to [train.optimizer.schedule]", key));
      return;
    }
    if (v <= 0) t.fail(key, fmt::format("{} must be positive, not {}", t.name(key), v));
  };
  if (s.kind == "step") positive("step_size", s.step_size, true);
  // A cosine without decay_steps spans the whole run (every epoch's steps after the warmup).
  if (s.kind == "exponential" || s.kind == "cosine" || s.kind == "polynomial" || s.kind == "inverse_time")
    positive("decay_steps", s.decay_steps, s.kind != "cosine");
  if (s.kind == "cosine_restarts") positive("first_decay_steps", s.first_decay_steps, true);
  if (s.kind == "inverse_time" && !t.find("decay_rate"))
    r.fail(s.pos, "the inverse_time schedule needs decay_rate", "add decay_rate = 0.5, say, as Keras asks");
  if (t.get("end_learning_rate", s.end_learning_rate) && s.end_learning_rate < 0)
    t.fail("end_learning_rate", fmt::format("{} must be 0 or more, not {}", t.name("end_learning_rate"),
                                            toml_float(s.end_learning_rate)));
  if (t.get("power", s.power) && s.power <= 0)
    t.fail("power", fmt::format("{} must be positive, not {}", t.name("power"), toml_float(s.power)));
  t.get("cycle", s.cycle);
  for (const char* key : {"t_mul", "m_mul"}) {
    double& v = std::string_view(key) == "t_mul" ? s.t_mul : s.m_mul;
    if (t.get(key, v) && v <= 0)
      t.fail(key, fmt::format("{} must be positive, not {}", t.name(key), toml_float(v)));
  }
  if (s.kind == "piecewise_constant") {
    // Keras's PiecewiseConstantDecay: values[i] up to boundaries[i] (inclusive), the last value after.
    std::vector<double> bounds;
    if (!t.get_numbers("boundaries", bounds) || !t.get_numbers("values", s.values))
      r.fail(
          s.pos, "the piecewise_constant schedule needs boundaries and values",
          "e.g. boundaries = [1000, 2000] and values = [0.01, 0.005, 0.001]: the rate up to each boundary, "
          "then the last");
    for (size_t i = 0; i < bounds.size(); ++i) {
      if (bounds[i] != std::floor(bounds[i]) || bounds[i] < 0 || (i > 0 && bounds[i] <= bounds[i - 1]))
        t.fail("boundaries", fmt::format("{} must be increasing whole step numbers", t.name("boundaries")));
      s.boundaries.push_back(static_cast<int64_t>(bounds[i]));
    }
    if (s.values.size() != s.boundaries.size() + 1)
      t.fail("values",
             fmt::format("{} has {} rates for {} boundaries; it needs one more rate than boundaries",
                         t.name("values"), s.values.size(), s.boundaries.size()));
    for (double v : s.values)
      if (!(v > 0)) t.fail("values", fmt::format("{} holds {}; rates must be positive", t.name("values"), v));
  }
  if (t.get("gamma", s.gamma) && s.gamma <= 0)
    t.fail("gamma", fmt::format("{} must be positive, not {}", t.name("gamma"), toml_float(s.gamma)));
  if (t.get("decay_rate", s.decay_rate) && s.decay_rate <= 0)
    t.fail("decay_rate",
           fmt::format("{} must be positive, not {}", t.name("decay_rate"), toml_float(s.decay_rate)));
  t.get("staircase", s.staircase);
  if (t.get("alpha", s.alpha) && (s.alpha < 0 || s.alpha > 1))
    t.fail("alpha", fmt::format("{} must be in [0, 1], not {}", t.name("alpha"), toml_float(s.alpha)),
           "it is the final learning rate as a fraction of the initial one");
  if (t.get("warmup_steps", s.warmup_steps) && s.warmup_steps < 0)
    t.fail("warmup_steps",
           fmt::format("{} must be 0 or more, not {}", t.name("warmup_steps"), s.warmup_steps));
  if (double target = 0; t.get("warmup_target", target)) {
    if (!(target > 0) || !std::isfinite(target))
      t.fail("warmup_target",
             fmt::format("{} must be a positive rate, not {}", t.name("warmup_target"), toml_float(target)));
    s.warmup_target = target;
  }
  return s;
}

OptimizerSpec read_optimizer(const Reader& r, const toml::node& n) {
  Table t(r, n, "train.optimizer", kOptimizerKeys);
  OptimizerSpec o;
  o.pos = t.pos();
  t.get_choice("name", o.name, kOptimizers, "optimizer", true);
  const Keys args = optimizer_args(o.name);
  for (auto&& [k, v] : t.table()) {
    if (k.str() == "name" || k.str() == "schedule" || contains(args, k.str())) continue;
    r.fail(r.pos(k, v), fmt::format("{} does not apply to {}", t.name(k.str()), o.name),
           fmt::format("{} takes: {}", o.name, join(args)));
  }
  if (o.name == "sgd") o.learning_rate = 0.01;    // Keras's SGD default (0.001 for the others)
  if (o.name == "adamw") o.weight_decay = 0.004;  // Keras's AdamW default
  if (o.name == "lion") o.beta_2 = 0.99;          // Keras's Lion default
  if (o.name == "adadelta") o.rho = 0.95;         // Keras's Adadelta default
  struct Rule {
    std::string_view key;
    double* value;
    bool (*ok)(double);
    std::string_view range;
  };
  const Rule rules[] = {
      {"learning_rate", &o.learning_rate, [](double v) { return v > 0; }, "positive"},
      {"beta_1", &o.beta_1, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)"},
      {"beta_2", &o.beta_2, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)"},
      {"epsilon", &o.epsilon, [](double v) { return v > 0; }, "positive"},
      {"momentum", &o.momentum, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)"},
      {"rho", &o.rho, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)"},
      {"initial_accumulator_value", &o.initial_accumulator_value, [](double v) { return v >= 0; },
       "0 or more"},
      {"weight_decay", &o.weight_decay, [](double v) { return v >= 0; }, "0 or more"},
      {"clipnorm", &o.clipnorm, [](double v) { return v >= 0; }, "0 (no clipping) or more"},
      {"global_clipnorm", &o.global_clipnorm, [](double v) { return v >= 0; }, "0 (no clipping) or more"},
      {"clipvalue", &o.clipvalue, [](double v) { return v >= 0; }, "0 (no clipping) or more"},
  };
  for (const Rule& rule : rules)
    if (t.get(rule.key, *rule.value) && !rule.ok(*rule.value))
      t.fail(rule.key,
             fmt::format("{} must be {}, not {}", t.name(rule.key), rule.range, toml_float(*rule.value)));
  // Keras takes one way of clipping.
  std::vector<std::string_view> clipping;
  for (std::string_view key : {"clipnorm", "global_clipnorm", "clipvalue"}) {
    double v = 0;
    if (t.get(key, v) && v > 0) clipping.push_back(key);
  }
  if (clipping.size() > 1)
    t.fail(
        clipping[1],
        fmt::format("{} and {} are both set; gradients are clipped one way", t.name(clipping[0]),
                    t.name(clipping[1])),
        "keep one: clipnorm (each gradient's norm), global_clipnorm (their norm together) or clipvalue (each "
        "element)");
  if (t.get("gradient_accumulation_steps", o.gradient_accumulation_steps) &&
      (o.gradient_accumulation_steps < 1 || o.gradient_accumulation_steps > 1000000))
    t.fail("gradient_accumulation_steps",
           fmt::format("train.optimizer.gradient_accumulation_steps must be from 1 (an update every step) to "
                       "1000000, not {}",
                       o.gradient_accumulation_steps));
  t.get("use_ema", o.use_ema);
  for (const char* key : {"ema_momentum", "ema_overwrite_frequency"})
    if (t.find(key) && !t.find("use_ema"))
      t.fail(key, fmt::format("train.optimizer.{} applies with use_ema = true", key),
             "add use_ema = true, or leave it out");
  if (t.get("ema_momentum", o.ema_momentum) && !(o.ema_momentum >= 0 && o.ema_momentum <= 1))
    t.fail("ema_momentum",
           fmt::format("train.optimizer.ema_momentum must be in [0, 1], not {}", toml_float(o.ema_momentum)));
  if (t.get("ema_overwrite_frequency", o.ema_overwrite_frequency) && o.ema_overwrite_frequency < 0)
    t.fail("ema_overwrite_frequency",
           fmt::format("train.optimizer.ema_overwrite_frequency must be 0 (never) or more, not {}",
                       o.ema_overwrite_frequency));
  t.get("nesterov", o.nesterov);
  t.get("amsgrad", o.amsgrad);
  t.get("centered", o.centered);
  if (const toml::node* s = t.find("schedule")) o.schedule = read_schedule(r, *s);
  // A piecewise constant schedule's values are the rates themselves: learning_rate would say another.
  if (o.schedule.kind == "piecewise_constant") {
    if (t.find("learning_rate"))
      t.fail("learning_rate",
             "train.optimizer.learning_rate is set, and the piecewise_constant schedule's values are "
             "the rates",
             "leave learning_rate out: the first of the schedule's values is the initial rate");
    o.learning_rate = o.schedule.values.at(0);
  }
  return o;
}

}  // namespace

std::vector<std::string> reported_quantities(const TrainSection& train) {
  std::vector<std::string> names = {"loss"};
  if (train.outputs.empty()) {
    names.insert(names.end(), train.metrics.begin(), train.metrics.end());
    for (const std::string& m : train.weighted_metrics)
      names.push_back(engine::weighted_metric_name(train.metrics, m));
    return names;
  }
  for (const OutputTrainSpec& o : train.outputs) names.push_back(o.name + "_loss");
  for (const OutputTrainSpec& o : train.outputs)
    for (const std::string& m : o.metrics) names.push_back(o.name + "_" + m);
  for (const OutputTrainSpec& o : train.outputs)
    for (const std::string& m : o.weighted_metrics)
      names.push_back(o.name + "_" + engine::weighted_metric_name(o.metrics, m));
  return names;
}

namespace {

// A monitored quantity (early stopping, save_best, reduce_lr_on_plateau) must be one the run reports: the
// loss or a listed metric, with or without val_; a val_ one needs a validation set (known when [data] is
// read).
void check_monitor(const Reader& r, const Table& t, const char* key, const char* who,
                   const std::string& monitor, const std::vector<std::string>& names,
                   const DataSection* data) {
  std::vector<std::string> monitors = names;
  for (const std::string& m : names) monitors.push_back("val_" + m);
  if (std::find(monitors.begin(), monitors.end(), monitor) == monitors.end()) {
    const std::string metric = monitor.starts_with("val_") ? monitor.substr(4) : monitor;
    t.fail(key, fmt::format("{} '{}' is not a reported quantity", t.name(key), monitor),
           contains(kMetrics, metric) ? fmt::format("add \"{}\" to train.metrics", metric)
                                      : choice_hint(monitor, Keys(monitors.begin(), monitors.end())));
  }
  const bool has_validation = data && (data->validation || data->validation_split > 0);
  if (data && monitor.starts_with("val_") && !has_validation)
    r.fail(t.find(key) ? t.pos(key) : t.pos(),
           fmt::format("{} monitors '{}' but [data] has no validation set", who, monitor),
           fmt::format("add [data.validation] or data.validation_split, or monitor '{}'", monitor.substr(4)));
}

ReduceLrSpec read_reduce_lr(const Reader& r, const toml::node& n, const std::vector<std::string>& metrics,
                            const DataSection* data) {
  Table t(r, n, "train.reduce_lr_on_plateau", kReduceLrKeys);
  ReduceLrSpec s;
  s.enabled = true;
  s.pos = t.pos();
  t.get("monitor", s.monitor);
  check_monitor(r, t, "monitor", "reduce_lr_on_plateau", s.monitor, metrics, data);
  if (t.get("factor", s.factor) && !(s.factor > 0 && s.factor < 1))
    t.fail("factor",
           fmt::format("train.reduce_lr_on_plateau.factor must be in (0, 1), not {}", toml_float(s.factor)),
           "the learning rate is multiplied by it: 0.1 or 0.5, say");
  if (t.get("patience", s.patience) && s.patience < 0)
    t.fail("patience",
           fmt::format("train.reduce_lr_on_plateau.patience must be 0 or more, not {}", s.patience));
  t.get_choice("mode", s.mode, kModes, "reduce_lr_on_plateau mode");
  if (t.get("min_delta", s.min_delta) && s.min_delta < 0)
    t.fail("min_delta", fmt::format("train.reduce_lr_on_plateau.min_delta must be 0 or more, not {}",
                                    toml_float(s.min_delta)));
  if (t.get("cooldown", s.cooldown) && s.cooldown < 0)
    t.fail("cooldown",
           fmt::format("train.reduce_lr_on_plateau.cooldown must be 0 or more, not {}", s.cooldown));
  if (t.get("min_lr", s.min_lr) && s.min_lr < 0)
    t.fail("min_lr",
           fmt::format("train.reduce_lr_on_plateau.min_lr must be 0 or more, not {}", toml_float(s.min_lr)));
  return s;
}

EarlyStoppingSpec read_early_stopping(const Reader& r, const toml::node& n,
                                      const std::vector<std::string>& metrics, const DataSection* data) {
  Table t(r, n, "train.early_stopping", kEarlyStoppingKeys);
  EarlyStoppingSpec e;
  e.enabled = true;
  e.pos = t.pos();
  t.get("monitor", e.monitor);
  check_monitor(r, t, "monitor", "early stopping", e.monitor, metrics, data);
  t.get_choice("mode", e.mode, kModes, "early-stopping mode");
  if (t.get("min_delta", e.min_delta) && e.min_delta < 0)
    t.fail("min_delta",
           fmt::format("train.early_stopping.min_delta must be 0 or more, not {}", toml_float(e.min_delta)));
  if (t.get("patience", e.patience) && e.patience < 0)
    t.fail("patience", fmt::format("train.early_stopping.patience must be 0 or more, not {}", e.patience));
  t.get("restore_best_weights", e.restore_best_weights);
  double baseline = 0;
  if (t.get("baseline", baseline)) e.baseline = baseline;
  if (t.get("start_from_epoch", e.start_from_epoch) && e.start_from_epoch < 0)
    t.fail("start_from_epoch", fmt::format("train.early_stopping.start_from_epoch must be 0 or more, not {}",
                                           e.start_from_epoch));
  return e;
}

CheckpointSpec read_checkpoint(const Reader& r, const toml::node& n, const std::vector<std::string>& metrics,
                               const DataSection* data) {
  Table t(r, n, "train.checkpoint", kCheckpointKeys);
  CheckpointSpec c;
  c.enabled = true;
  c.pos = t.pos();
  if (t.get("every_epochs", c.every_epochs) && c.every_epochs < 0)
    t.fail("every_epochs",
           fmt::format("train.checkpoint.every_epochs must be 0 or more, not {}", c.every_epochs));
  if (t.get("every_steps", c.every_steps) && c.every_steps < 0)
    t.fail("every_steps",
           fmt::format("train.checkpoint.every_steps must be 0 or more, not {}", c.every_steps));
  if (t.get("keep_last", c.keep_last) && c.keep_last < 0)
    t.fail("keep_last", fmt::format("train.checkpoint.keep_last must be 0 or more, not {}", c.keep_last));
  if (t.get("save_best", c.save_best))
    check_monitor(r, t, "save_best", "save_best", c.save_best, metrics, data);
  t.get_choice("mode", c.mode, kModes, "checkpoint mode");
  return c;
}

// --- Keras's call forms: loss = "Huber(delta=2.0)", metrics = ["TopKCategoricalAccuracy(k=3)"]

struct CallArg {
  std::string name;  // "" for a positional argument, until the class's order of arguments names it
  std::variant<double, bool, std::string> value;
  std::string text;  // as written
  bool integer = false;
  bool none = false;  // Python's None, Keras's "not set" (value holds "None")
  // A list or tuple of numbers ([0, 1] or (0, 1)), for target_class_ids: its values; value holds the text.
  std::optional<std::vector<double>> list;
  bool integers = false;  // every value of the list is written as a whole number
};

struct Call {
  std::string name;
  std::vector<CallArg> args;
};

// A class name without Keras's module path: keras.losses.Huber is Huber.
std::string without_module(const std::string& name) {
  for (const char* prefix :
       {"tf.keras.losses.", "tf.keras.metrics.", "keras.losses.", "keras.metrics.", "losses.", "metrics."})
    if (name.starts_with(prefix)) return name.substr(std::strlen(prefix));
  return name;
}

// NAME or NAME(value, ..., key=value, ...), values being numbers, True/False (or true/false), None, quoted
// strings and lists or tuples of numbers; Keras's module paths (keras.losses.Huber) read as the class.
// Positional arguments come first, as in Python, and keep an empty name (name_positional gives them the
// class's). Returns what is wrong with the text, or "".
std::string parse_call(const std::string& text, Call& out) {
  size_t i = 0;
  const size_t n = text.size();
  if (text.find_first_of("()") == std::string::npos) {
    // A name, as the lookup of names reads it (a misspelling gets its did-you-mean there).
    out.name = without_module(text);
    return out.name.empty() ? "it is empty" : "";
  }
  auto space = [&] {
    while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  };
  auto ident = [&] {
    const size_t b = i;
    while (i < n && (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '_' || text[i] == '.'))
      ++i;
    return text.substr(b, i - b);
  };
  // A number, True/False or None, up to the next ',' or ')' (or `end`, in a list): into `a`.
  auto scalar = [&](CallArg& a, std::string_view what, char end) -> std::string {
    const size_t b = i;
    while (i < n && text[i] != ',' && text[i] != ')' && text[i] != end &&
           !std::isspace(static_cast<unsigned char>(text[i])))
      ++i;
    const std::string v = text.substr(b, i - b);
    const bool decimal = !v.empty() && v.find_first_not_of("0123456789+-.eE") == std::string::npos &&
                         v.find_first_of("0123456789") != std::string::npos;
    if (v == "None") {
      a.value = v;
      a.none = true;
    } else if (v == "True" || v == "true" || v == "False" || v == "false") {
      a.value = v == "True" || v == "true";
    } else {
      char* stop = nullptr;
      const double d = std::strtod(v.c_str(), &stop);
      if (!decimal || *stop != '\0' || !std::isfinite(d))
        return fmt::format("its argument {} = {} is not a number, True, False, a quoted string or a list",
                           what, v.empty() ? "(nothing)" : v);
      a.value = d;
      a.integer = v.find_first_of(".eE") == std::string::npos;
    }
    return "";
  };
  space();
  out.name = ident();
  out.name = without_module(out.name);
  space();
  if (i == n) return out.name.empty() ? "it is empty" : "";
  if (out.name.empty() || text[i] != '(' || out.name.find('.') != std::string::npos)
    return "it is not a name, nor a call NAME(key=value, ...)";
  ++i;
  bool keywords = false;  // a keyword argument came: no positional one may follow
  for (;;) {
    space();
    if (i < n && text[i] == ')') break;
    CallArg a;
    const size_t start = i;
    a.name = ident();
    space();
    if (a.name.empty() || i >= n || text[i] != '=') {
      // A positional argument: its value starts where the name was read.
      a.name.clear();
      i = start;
    } else {
      keywords = true;
      ++i;
      space();
    }
    const std::string what = a.name.empty() ? fmt::format("{}", out.args.size() + 1) : a.name;
    const size_t b = i;
    if (i < n && (text[i] == '"' || text[i] == '\'')) {
      const char q = text[i++];
      while (i < n && text[i] != q) ++i;
      if (i >= n) return fmt::format("the quote of its argument '{}' is not closed", what);
      a.value = text.substr(b + 1, i - b - 1);
      ++i;
    } else if (i < n && (text[i] == '[' || text[i] == '(')) {
      const char close = text[i] == '[' ? ']' : ')';
      ++i;
      a.list.emplace();
      a.integers = true;
      bool comma = false;
      for (;;) {
        space();
        if (i < n && text[i] == close) break;
        if (i < n && (text[i] == '"' || text[i] == '\''))
          return fmt::format("its argument {} is a list that holds a quoted string, where numbers go", what);
        CallArg item;
        if (const std::string wrong = scalar(item, what, close); !wrong.empty()) return wrong;
        const double* d = std::get_if<double>(&item.value);
        if (!d)
          return fmt::format("its argument {} is a list of what is not a number ({})", what,
                             std::get<std::string>(item.value) == "None" ? "None" : "True or False");
        a.list->push_back(*d);
        a.integers = a.integers && item.integer;
        space();
        if (i < n && text[i] == ',')
          ++i, comma = true;
        else if (i >= n || text[i] != close)
          return fmt::format("the list of its argument {} is not closed with '{}'", what, close);
      }
      ++i;
      a.value = text.substr(b, i - b);
      // Python's (2) is the number 2, not a tuple: (2,) is.
      if (close == ')' && !comma && a.list->size() == 1) {
        a.value = a.list->front();
        a.integer = a.integers;
        a.list.reset();
      }
    } else if (const std::string wrong = scalar(a, what, ')'); !wrong.empty()) {
      return wrong;
    }
    a.text = text.substr(b, i - b);
    if (a.name.empty() && keywords)
      return fmt::format("its argument {} has no name and follows one with a name, as Python refuses",
                         a.text);
    for (const CallArg& before : out.args)
      if (!a.name.empty() && before.name == a.name)
        return fmt::format("its argument '{}' is given twice", a.name);
    out.args.push_back(std::move(a));
    space();
    if (i < n && text[i] == ',') {
      ++i;
      continue;
    }
    if (i < n && text[i] == ')') break;
    return "its arguments must be values, then key=value pairs, separated by commas, and end with ')'";
  }
  ++i;
  space();
  return i == n ? "" : "text follows its closing ')'";
}

// Names the positional arguments of a call by its class's order of arguments (`order`, Keras's). Returns
// what is wrong (more of them than the class takes, or one given by name too), or "".
std::string name_positional(Call& call, const Keys& order) {
  const auto positional =
      std::count_if(call.args.begin(), call.args.end(), [](const CallArg& c) { return c.name.empty(); });
  size_t k = 0;
  for (CallArg& a : call.args) {
    if (!a.name.empty()) continue;
    if (k >= order.size())
      return fmt::format("it gives {} arguments without names, and {} takes at most {} so ({})", positional,
                         call.name, order.size(), join(order));
    a.name = std::string(order[k++]);
  }
  for (size_t x = 0; x < call.args.size(); ++x)
    for (size_t y = x + 1; y < call.args.size(); ++y)
      if (call.args[x].name == call.args[y].name)
        return fmt::format("its argument '{}' is given twice (by position and by name)", call.args[x].name);
  return "";
}

// A loss class's arguments in Keras's order, for those given by position: Huber(2.0) is Huber(delta=2.0).
Keys loss_argument_order(const std::string& loss) {
  if (loss == "binary_crossentropy" || loss == "categorical_crossentropy")
    return {"from_logits", "label_smoothing", "axis", "reduction", "name"};
  if (loss == "binary_focal_crossentropy")
    return {"apply_class_balancing", "alpha", "gamma",     "from_logits",
            "label_smoothing",       "axis",  "reduction", "name"};
  if (loss == "categorical_focal_crossentropy")
    return {"alpha", "gamma", "from_logits", "label_smoothing", "axis", "reduction", "name"};
  if (loss == "sparse_categorical_crossentropy") return {"from_logits", "ignore_class", "reduction", "name"};
  if (loss == "huber") return {"delta", "reduction", "name"};
  if (loss == "cosine_similarity") return {"axis", "reduction", "name"};
  return {"reduction", "name"};
}

// The arguments a loss's Keras class takes that trainer reads, for messages.
Keys loss_arguments(const std::string& loss) {
  Keys a;
  if (loss == "huber") a = {"delta"};
  if (loss == "binary_focal_crossentropy") a = {"apply_class_balancing", "alpha", "gamma"};
  if (loss == "categorical_focal_crossentropy") a = {"alpha", "gamma"};
  if (loss == "sparse_categorical_crossentropy") a = {"ignore_class"};
  if (loss.ends_with("crossentropy")) a.push_back("from_logits");
  if (loss.ends_with("crossentropy") && loss != "sparse_categorical_crossentropy")
    a.push_back("label_smoothing");
  if (loss.ends_with("crossentropy") || loss == "cosine_similarity") a.push_back("axis=-1");
  a.push_back("reduction=\"sum_over_batch_size\"");
  a.push_back("name");
  return a;
}

// The settings that metrics' calls give, each with its place: the top-k metrics' k for the whole run, and
// per output (read_output_settings takes its own from where they stood before its lists) the rest.
struct CallSettings {
  std::vector<std::pair<int64_t, SourcePos>> k, num_classes, iou_ignore, num_labels;  // num_labels: AUC's
  std::vector<std::pair<int64_t, SourcePos>> class_id, top_k;       // Precision's and Recall's
  std::vector<std::pair<bool, SourcePos>> multi_label;              // AUC's
  std::vector<std::pair<std::vector<int64_t>, SourcePos>> targets;  // IoU's target_class_ids
  std::vector<std::pair<double, SourcePos>> iou_threshold, beta;  // BinaryIoU's threshold, FBetaScore's beta
  std::vector<std::pair<double, SourcePos>>
      threshold;  // a binary output's: BinaryAccuracy's, Precision's, ...
  std::vector<std::pair<std::string, SourcePos>> f1_average;  // F1Score(average=...) of a categorical output
  // PrecisionAtRecall's recall, ..., by metric
  std::map<std::string, std::vector<std::pair<double, SourcePos>>> at;
};

// The IoU metrics of a categorical output's classes (Keras's MeanIoU, IoU, OneHotIoU and OneHotMeanIoU),
// which share one count per class and one ignore_class.
bool is_class_iou(std::string_view m) {
  return m == "mean_iou" || m == "iou" || m == "one_hot_iou" || m == "one_hot_mean_iou";
}
// Keras's metrics that find the best of one quantity where another meets a constraint, over the thresholds,
// with the argument that sets the constraint.
const std::map<std::string_view, std::string_view> kAtMetrics = {
    {"precision_at_recall", "recall"},
    {"recall_at_precision", "precision"},
    {"sensitivity_at_specificity", "specificity"},
    {"specificity_at_sensitivity", "sensitivity"}};

// A metric class's arguments in Keras's order, for those given by position.
Keys metric_argument_order(const std::string& metric) {
  if (metric.find("top_k") != std::string::npos) return {"k", "name", "dtype"};
  if (metric == "auc")
    return {"num_thresholds", "curve",       "summation_method", "name",          "dtype",
            "thresholds",     "multi_label", "num_labels",       "label_weights", "from_logits"};
  if (metric == "precision" || metric == "recall")
    return {"thresholds", "top_k", "class_id", "name", "dtype"};
  if (metric.ends_with("_positives") || metric.ends_with("_negatives"))
    return {"thresholds", "name", "dtype"};
  if (metric == "f1_score") return {"average", "threshold", "name", "dtype"};
  if (metric == "fbeta_score") return {"average", "beta", "threshold", "name", "dtype"};
  if (metric == "mean_iou")
    return {"num_classes", "name", "dtype", "ignore_class", "sparse_y_true", "sparse_y_pred"};
  if (metric == "iou")
    return {"num_classes",  "target_class_ids", "name",         "dtype",
            "ignore_class", "sparse_y_true",    "sparse_y_pred"};
  if (metric == "one_hot_iou")
    return {"num_classes", "target_class_ids", "name", "dtype", "ignore_class", "sparse_y_pred"};
  if (metric == "one_hot_mean_iou") return {"num_classes", "name", "dtype", "ignore_class", "sparse_y_pred"};
  if (metric == "binary_iou") return {"target_class_ids", "threshold", "name", "dtype"};
  if (auto it = kAtMetrics.find(metric); it != kAtMetrics.end())
    return {it->second, "num_thresholds", "class_id", "name", "dtype"};
  return {"name", "dtype"};  // the loss metrics (BinaryCrossentropy(name, dtype, from_logits, ...)), mae, ...
}

// A metric's call (TopKCategoricalAccuracy(k=3), AUC(curve="ROC"), PrecisionAtRecall(0.8)): the arguments
// trainer reads, each at the value it computes with, or (k, num_classes, target_class_ids, average, beta,
// the constraints, ...) returned in `ks` with its place. `metric` is set to its name.
void check_metric_call(const Reader& r, const SourcePos& mp, const std::string& text, std::string& metric,
                       const std::string& loss, bool from_logits, CallSettings& ks) {
  Call call;
  if (const std::string wrong = parse_call(text, call); !wrong.empty())
    r.fail(mp, fmt::format("metric '{}': {}", text, wrong),
           "name the metric, or write Keras's call of its class: \"TopKCategoricalAccuracy(k=3)\"");
  metric = keras_class_name(call.name, kMetrics);
  // An unknown name (or a loss's) gets its own message in check_metrics, whatever its arguments.
  if (!contains(kMetrics, metric)) return;
  const auto at_metric = kAtMetrics.find(metric);
  const bool needs_targets = metric == "iou" || metric == "one_hot_iou";
  auto given = [&](std::string_view key) {
    return std::any_of(call.args.begin(), call.args.end(), [&](const CallArg& a) { return a.name == key; });
  };
  if (const std::string wrong = name_positional(call, metric_argument_order(metric)); !wrong.empty())
    r.fail(mp, fmt::format("metric '{}': {}", text, wrong),
           fmt::format("name the arguments: \"{}\"",
                       at_metric != kAtMetrics.end() ? fmt::format("{}({}=0.8)", call.name, at_metric->second)
                                                     : fmt::format("{}(key=value)", call.name)));
  const bool top_k = metric.find("top_k") != std::string::npos;
  Keys takes;
  if (top_k) takes = {"k"};
  if (metric == "auc")
    takes = {"curve=\"ROC\" or \"PR\"",
             "num_thresholds=200",
             "summation_method=\"interpolation\"",
             "multi_label",
             "num_labels",
             "label_weights=None",
             from_logits ? "from_logits=True" : "from_logits=False"};
  if (metric == "precision" || metric == "recall" || metric.ends_with("_positives") ||
      metric.ends_with("_negatives"))
    takes = {"thresholds=0.5"};
  if (metric == "precision" || metric == "recall") {
    takes.push_back("top_k=None");
    takes.push_back("class_id=None");
  }
  if (metric == "binary_accuracy") takes = {"threshold=0.5"};
  // F1Score and FBetaScore of one probability (binary) at 0.5, or of the classes of a categorical output
  // (their largest, Keras's threshold=None) averaged as asked.
  const bool binary_loss = label_family(loss) == "binary_crossentropy";
  const bool f_score = metric == "f1_score" || metric == "fbeta_score";
  // A binary metric's threshold: compared with the output as it is, as in Keras (under from_logits, a logit:
  // any number); Keras's F-scores take it in (0, 1].
  auto threshold_valid = [&](double v) {
    return std::isfinite(v) && (f_score ? v > 0 && v <= 1 : from_logits || (v >= 0 && v <= 1));
  };
  if (f_score)
    takes = binary_loss
                ? Keys{"average=None, \"macro\", \"micro\" or \"weighted\" (of the labels)", "threshold=0.5"}
                : Keys{"average=\"macro\", \"micro\" or \"weighted\"", "threshold=None"};
  if (metric == "fbeta_score") takes.push_back("beta");
  // The IoU metrics' predictions are the outputs' largest classes (sparse_y_pred=False), their labels the
  // loss's; OneHotIoU's and OneHotMeanIoU's are one-hot.
  const bool sparse = loss == "sparse_categorical_crossentropy";
  if (is_class_iou(metric)) {
    takes = {"num_classes"};
    if (metric == "iou" || metric == "one_hot_iou") takes.push_back("target_class_ids");
    if (metric == "iou" || metric == "mean_iou")
      takes.push_back(sparse ? "sparse_y_true=True" : "sparse_y_true=False");
    takes.push_back("sparse_y_pred=False");
    // Every metric leaves out the positions of the loss's ignore_class; these leave out another class's
    // (or say the same).
    takes.push_back("ignore_class");
  }
  if (metric == "binary_iou") takes = {"target_class_ids=[0, 1]", "threshold=0.5"};
  if (at_metric != kAtMetrics.end()) takes = {at_metric->second, "num_thresholds=200", "class_id=None"};
  // The cross-entropy metrics read the outputs as the loss does.
  if (metric.ends_with("crossentropy")) takes = {from_logits ? "from_logits=True" : "from_logits=False"};
  const std::string hint = takes.empty() ? fmt::format("write it as \"{}\", without arguments", metric)
                                         : fmt::format("{} takes: {}", metric, join(takes));
  for (const CallArg& a : call.args) {
    const bool known = std::any_of(takes.begin(), takes.end(), [&](std::string_view k) {
      return k == a.name || k.starts_with(a.name + "=");
    });
    // Keras's defaults; a float dtype is what trainer counts in (weights as they are, not rounded down).
    const std::string* text_value = std::get_if<std::string>(&a.value);
    if ((a.name == "name" || a.name == "dtype") && a.none) continue;
    if (a.name == "dtype" && !a.list && text_value && (*text_value == "float32" || *text_value == "float64"))
      continue;
    if (a.name == "dtype")
      r.fail(mp, fmt::format("metric '{}': dtype = {} is not supported by trainer", text, a.text),
             "trainer counts in floating point, weights as they are: dtype=None, \"float32\" or \"float64\"");
    if (a.name == "name")
      r.fail(mp, fmt::format("metric '{}': another name for it is not supported by trainer", text),
             fmt::format("it is reported as {}; {}", metric, hint));
    if (!known) {
      const std::string guess = choice_hint(a.name, takes);
      r.fail(mp, fmt::format("metric '{}': {} has no argument '{}' here", text, metric, a.name),
             guess.starts_with("did") ? guess + " " + hint : hint);
    }
    const double* num = std::get_if<double>(&a.value);
    const std::string* str = std::get_if<std::string>(&a.value);
    if (a.list) num = nullptr, str = nullptr;
    bool ok = true;
    std::string why = hint;  // the hint of a value refused
    // A value Keras refuses too (out of its range), rather than one trainer does not compute with.
    const bool precision_recall = metric == "precision" || metric == "recall";
    const bool invalid = a.name == "k" || a.name == "beta" || a.name == "num_classes" ||
                         (precision_recall && (a.name == "top_k" || a.name == "class_id")) ||
                         a.name == "target_class_ids" || a.name == "average" ||
                         (at_metric != kAtMetrics.end() && a.name == at_metric->second) ||
                         ((a.name == "threshold" || a.name == "thresholds") && metric != "binary_iou" &&
                          num && !threshold_valid(*num));
    if (a.name == "k") {
      ok = num && a.integer && *num >= 1 && *num < 1e9;
      if (ok) ks.k.emplace_back(static_cast<int64_t>(*num), mp);
      why = "k is a whole number, 1 or more";
    }
    if (a.name == "curve") ok = str && (*str == "ROC" || *str == "PR");
    if (ok && a.name == "curve" && *str == "PR") metric = "pr_auc";
    if (a.name == "summation_method") ok = str && *str == "interpolation";
    if (a.name == "multi_label") {
      const bool* on = std::get_if<bool>(&a.value);
      ok = on != nullptr;
      if (ok) ks.multi_label.emplace_back(*on, mp);
    }
    if (a.name == "num_labels") {
      ok = a.none || (num && a.integer && *num >= 1 && *num < 1e9);
      if (ok && !a.none) ks.num_labels.emplace_back(static_cast<int64_t>(*num), mp);
      why = "num_labels is a whole number, 1 or more: the labels of each sample";
    }
    if (a.name == "label_weights") ok = a.none;
    if (a.name == "num_thresholds") ok = num && *num == 200;
    if (a.name == "class_id") {
      ok = a.none || (precision_recall && num && a.integer && *num >= 0 && *num < 1e9);
      if (ok && !a.none) ks.class_id.emplace_back(static_cast<int64_t>(*num), mp);
      if (precision_recall) why = "class_id is a class of the output: 0 or more";
    }
    if (a.name == "top_k") {
      ok = a.none || (num && a.integer && *num >= 1 && *num < 1e9);
      if (ok && !a.none) ks.top_k.emplace_back(static_cast<int64_t>(*num), mp);
      why = "top_k is a whole number, 1 or more: the classes predicted at each position";
    }
    // (Precision's, Recall's and the counts' thresholds=None is Keras's default, 0.5.) A binary output's
    // threshold is one for its accuracy, precision, recall, counts and F-scores.
    if ((a.name == "threshold" || a.name == "thresholds") && metric != "binary_iou") {
      ok = (num && threshold_valid(*num) && (!f_score || binary_loss)) ||
           (f_score && !binary_loss && a.none) || (a.name == "thresholds" && a.none);
      if (ok && num) ks.threshold.emplace_back(*num, mp);
      if (num && !threshold_valid(*num))
        why = f_score ? fmt::format("{} is in (0, 1], as Keras asks: an output above it is class 1", a.name)
              : from_logits
                  ? fmt::format("{} is a number: a logit above it is class 1", a.name)
                  : fmt::format("{} is a probability, from 0 to 1: a prediction above it is class 1", a.name);
    }
    if (a.name == "threshold" && metric == "binary_iou") {
      ok = num != nullptr;
      if (ok) ks.iou_threshold.emplace_back(*num, mp);
      why = "threshold is a number: a probability at or above it is class 1";
    }
    if (a.name == "average") {  // None: Keras's default, a binary output's score (or one per class)
      ok = a.none || (str && (*str == "macro" || *str == "micro" || *str == "weighted"));
      if (ok && !a.none) ks.f1_average.emplace_back(*str, mp);
    }
    if (a.name == "beta") {
      ok = num && *num > 0 && *num < 1e6;
      if (ok) ks.beta.emplace_back(*num, mp);
      why = "beta is a positive number: recall counts beta times as much as precision";
    }
    if (a.name == "num_classes") {
      ok = num && a.integer && *num >= 2 && *num < 1e9;
      if (ok) ks.num_classes.emplace_back(static_cast<int64_t>(*num), mp);
      why = "num_classes is a whole number, 2 or more: the classes of the output";
    }
    if (a.name == "target_class_ids") {
      std::vector<int64_t> ids;
      ok = a.list && a.integers && !a.list->empty();
      for (double v : a.list ? *a.list : std::vector<double>{}) {
        ok = ok && v >= 0 && v < (metric == "binary_iou" ? 2 : 1e9);
        ids.push_back(static_cast<int64_t>(v));
      }
      if (ok) ks.targets.emplace_back(ids, mp);
      why = metric == "binary_iou" ? "target_class_ids is a list of the classes 0 and 1: [0, 1], [0] or [1]"
                                   : "target_class_ids is a list of class ids, 0 or more: [0, 2]";
    }
    if (at_metric != kAtMetrics.end() && a.name == at_metric->second) {
      ok = num && *num >= 0 && *num <= 1;
      if (ok) ks.at[metric].emplace_back(*num, mp);
      why = fmt::format("{} is a number in [0, 1]", a.name);
    }
    const bool* flag = std::get_if<bool>(&a.value);
    if (a.name == "sparse_y_true") ok = flag && *flag == sparse;
    if (a.name == "sparse_y_pred") ok = flag && !*flag;
    if (a.name == "from_logits") ok = flag && *flag == from_logits;
    if (a.name == "ignore_class") {
      ok = a.none || (num && a.integer && std::abs(*num) < 9e15);
      if (ok && !a.none) ks.iou_ignore.emplace_back(static_cast<int64_t>(*num), mp);
    }
    if (!ok)
      r.fail(mp,
             fmt::format("metric '{}': {} = {} is {}", text, a.name, a.text,
                         invalid ? "not a valid value" : "not supported by trainer"),
             why);
  }
  // The arguments Keras requires (after the arguments given, so that a misspelt one is named).
  if (at_metric != kAtMetrics.end() && !given(at_metric->second))
    r.fail(mp, fmt::format("metric '{}' needs the {} it is computed at", text, at_metric->second),
           fmt::format("write its call: \"{}({}=0.8)\"",
                       call.name == metric ? std::string(metric) : call.name, at_metric->second));
  if (needs_targets && !given("target_class_ids"))
    r.fail(mp, fmt::format("metric '{}' needs the classes it averages (target_class_ids)", text),
           fmt::format("write its call: \"{}(num_classes=3, target_class_ids=[0, 2])\", or report mean_iou "
                       "for every class",
                       call.name == metric ? std::string(metric) : call.name));
}

void check_metrics(const Reader& r, const toml::node& mn, const std::string& what, const std::string& loss,
                   bool from_logits, std::vector<std::string>& metrics, CallSettings& ks) {
  for (size_t i = 0; i < metrics.size(); ++i) {
    const SourcePos mp = mn.is_array() ? r.pos(*mn.as_array()->get(i)) : r.pos(mn);
    const size_t averages = ks.f1_average.size();
    check_metric_call(r, mp, std::string(metrics[i]), metrics[i], loss, from_logits, ks);
    const bool averaged = ks.f1_average.size() > averages;  // F1Score(average=...)
    const std::string& m = metrics[i];
    if (m == "loss")
      r.fail(mp, "'loss' is not a metric here",
             fmt::format("the loss is always reported; leave it out of {}", what));
    if (!contains(kMetrics, m) && m == loss)
      r.fail(mp, fmt::format("'{}' is the loss, which is not a metric here", m),
             fmt::format(
                 "the loss is always reported (loss, and val_loss with validation data); leave it out of "
                 "{}",
                 what));
    if (!contains(kMetrics, m) && contains(kLosses, keras_class_name(m, kLosses)))
      r.fail(mp, fmt::format("the loss '{}' is not a metric here", keras_class_name(m, kLosses)),
             fmt::format("metrics take: {}", join(kMetrics)));
    if (!contains(kMetrics, m)) r.fail(mp, fmt::format("unknown metric '{}'", m), choice_hint(m, kMetrics));
    if (m == "mean_absolute_error") metrics[i] = "mae";
    if (m == "mean_squared_error") metrics[i] = "mse";
    if (m == "mean_absolute_percentage_error") metrics[i] = "mape";
    if (m == "mean_squared_logarithmic_error") metrics[i] = "msle";
    const bool binary = label_family(loss) == "binary_crossentropy";
    if (auto it = kAccuracyLoss.find(m);
        it != kAccuracyLoss.end() && label_family(loss) != it->second && loss.ends_with("crossentropy"))
      r.fail(mp, fmt::format("metric '{}' reads the labels of {}, and the loss is {}", m, it->second, loss),
             "use 'accuracy', which follows the loss, as Keras does");
    const bool sparse_labels = loss == "sparse_categorical_crossentropy";
    if (m == "sparse_categorical_crossentropy" && !sparse_labels)
      r.fail(
          mp,
          fmt::format("metric 'sparse_categorical_crossentropy' reads class ids, and the loss is {}", loss),
          "its labels are the loss's: report categorical_crossentropy for one-hot labels");
    if (sparse_labels && m != "sparse_categorical_crossentropy" &&
        m.find("crossentropy") != std::string::npos)
      r.fail(mp,
             fmt::format("metric '{}' reads labels of the output's shape, and the labels are class ids", m),
             "report sparse_categorical_crossentropy");
    if (sparse_labels && (m == "kl_divergence" || m == "poisson" || m == "cosine_similarity" ||
                          m == "logcosh" || m == "hinge" || m == "squared_hinge" || m == "categorical_hinge"))
      r.fail(
          mp,
          fmt::format("metric '{}' compares outputs with labels of the same shape, and "
                      "sparse_categorical_crossentropy's labels are class ids",
                      m),
          "report accuracy or sparse_categorical_crossentropy, or use categorical_crossentropy with one-hot "
          "labels");
    if (from_logits && (m == "poisson" || m == "kl_divergence"))
      r.fail(mp,
             fmt::format(
                 "metric '{}' reads probabilities, and from_logits = true says the outputs are logits", m),
             "report the cross-entropy of the loss (which reads logits as the loss does), or leave it out");
    const bool f_score = m == "f1_score" || m == "fbeta_score";
    if (is_class_iou(m) && (binary || !loss.ends_with("crossentropy")))
      r.fail(
          mp,
          fmt::format("metric '{}' counts the classes of a categorical output, and the loss is {}", m, loss),
          "it needs loss = \"sparse_categorical_crossentropy\" or categorical_crossentropy (focal or not)");
    if (f_score && averaged && !loss.ends_with("crossentropy"))
      r.fail(
          mp,
          fmt::format("metric '{}' averaged counts the classes or labels of a classification, and the loss "
                      "is {}",
                      m, loss),
          "it needs a cross-entropy loss (binary for labels, categorical for classes)");
    if (m.find("top_k") != std::string::npos && binary)
      r.fail(mp, fmt::format("metric '{}' ranks classes, and binary_crossentropy's model has one output", m),
             "report accuracy, precision, recall, auc or pr_auc");
    if ((m == "one_hot_iou" || m == "one_hot_mean_iou") && sparse_labels)
      r.fail(mp,
             fmt::format(
                 "metric '{}' reads one-hot labels, and sparse_categorical_crossentropy's are class ids", m),
             m == "one_hot_iou"
                 ? "report IoU(num_classes=N, target_class_ids=[...]), which reads the loss's labels"
                 : "report mean_iou, which reads the loss's labels");
    if (f_score && !binary && loss.ends_with("crossentropy") && !averaged)
      r.fail(mp,
             fmt::format("metric '{}': the {} score of a categorical output is one per class, and trainer "
                         "reports one number",
                         metrics[i], m == "f1_score" ? "F1" : "F-beta"),
             fmt::format("write \"{}(average='macro')\" (the classes' mean), 'micro' (of the counts summed "
                         "over the classes) or 'weighted' (weighted by each class's labels)",
                         m == "f1_score" ? "F1Score" : "FBetaScore"));
    // Precision and Recall also count a categorical output's classes (sparse labels as their one-hot rows).
    const bool categorical = label_family(loss) == "categorical_crossentropy" || sparse_labels;
    if ((((m == "precision" || m == "recall") && !categorical) || (f_score && !averaged) || m == "auc" ||
         m == "pr_auc" || m.ends_with("_positives") || m.ends_with("_negatives") || m == "binary_iou" ||
         kAtMetrics.contains(m)) &&
        !binary)
      r.fail(
          mp,
          fmt::format("metric '{}' is a{} classification metric, and the loss is {}", m,
                      m == "precision" || m == "recall" ? "" : " binary", loss),
          m == "precision" || m == "recall"
              ? "it needs a classification loss: binary_crossentropy, categorical_crossentropy or "
                "sparse_categorical_crossentropy (focal or not)"
              : "it needs loss = \"binary_crossentropy\" or binary_focal_crossentropy (one probability per "
                "sample)");
    if ((metrics[i] == "mae" || metrics[i] == "mse" || metrics[i] == "mape" || metrics[i] == "msle" ||
         metrics[i] == "r2_score" || metrics[i] == "root_mean_squared_error") &&
        loss == "sparse_categorical_crossentropy")
      r.fail(mp,
             fmt::format("metric '{}' compares outputs with labels of the same shape, and "
                         "sparse_categorical_crossentropy's labels are class ids",
                         m),
             "report accuracy, or use categorical_crossentropy with one-hot labels");
    if (std::find(metrics.begin(), metrics.begin() + static_cast<ptrdiff_t>(i), metrics[i]) !=
        metrics.begin() + static_cast<ptrdiff_t>(i))
      r.fail(mp, fmt::format("metric '{}' is listed twice", m));
  }
}

// The one value an output's metric calls give a setting (`given` from `from` on are this output's), or none;
// two that differ are an error naming both.
template <class T>
std::optional<T> one_setting(const Reader& r, const std::vector<std::pair<T, SourcePos>>& given, size_t from,
                             std::string_view metric, std::string_view key, std::string_view hint) {
  auto shown = [](const T& v) {
    if constexpr (std::is_same_v<T, std::string>)
      return fmt::format("'{}'", v);
    else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
      return fmt::format("[{}]", fmt::join(v, ", "));
    else
      return fmt::format("{}", v);
  };
  for (size_t i = from; i < given.size(); ++i)
    if (given[i].first != given[from].first)
      r.fail(given[i].second,
             fmt::format("the {} calls of one output say {}={} and {}={}", metric, key,
                         shown(given[from].first), key, shown(given[i].first)),
             std::string(hint));
  if (from == given.size()) return std::nullopt;
  return given[from].first;
}

// The loss and metrics of one output from the [train] keys that hold them (loss, from_logits,
// label_smoothing, metrics): each key a value for every output or, in a model of several outputs, a table by
// output name (`outputs`). `output` "" reads the keys' values as they are (a model of one output).
OutputTrainSpec read_output_settings(const Reader& r, const Table& t, const Keys& outputs,
                                     const std::string& output, CallSettings& ks) {
  OutputTrainSpec o;
  o.name = output;
  std::vector<std::unique_ptr<Table>> tables;
  // The table and key that hold `key`'s value for this output.
  auto at = [&](std::string_view key) -> std::pair<const Table*, std::string> {
    const toml::node* n = t.find(key);
    if (!output.empty() && n && n->is_table()) {
      tables.push_back(std::make_unique<Table>(r, *n, t.name(key), outputs));
      return {tables.back().get(), output};
    }
    return {&t, std::string(key)};
  };
  const auto [lt, lk] = at("loss");
  std::string text;
  if (!lt->get(lk, text)) {
    if (lt != &t)
      r.fail(lt->pos(), fmt::format("train.loss gives no loss for the output '{}'", output),
             fmt::format("add {} = \"...\" to it, or give one loss for every output", output));
    r.fail(t.pos(), "[train] has no loss", "e.g. loss = \"sparse_categorical_crossentropy\"");
  }
  Call call;
  if (const std::string wrong = parse_call(text, call); !wrong.empty())
    lt->fail(lk, fmt::format("{} '{}': {}", lt->name(lk), text, wrong),
             "name the loss, or write Keras's call of its class: loss = \"Huber(delta=2.0)\"");
  o.loss = keras_class_name(call.name, kLosses);
  if (!contains(kLosses, o.loss))
    lt->fail(lk, fmt::format("unknown loss '{}'", o.loss), choice_hint(o.loss, kLosses));
  o.loss_pos = lt->pos(lk);
  if (const std::string wrong = name_positional(call, loss_argument_order(o.loss)); !wrong.empty())
    lt->fail(lk, fmt::format("{} '{}': {}", lt->name(lk), text, wrong),
             fmt::format("name the arguments: {} takes {}", o.loss, join(loss_arguments(o.loss))));
  if (o.loss == "mean_squared_error") o.loss = "mse";
  if (o.loss == "kld") o.loss = "kl_divergence";
  if (o.loss == "mean_absolute_error") o.loss = "mae";
  if (o.loss == "mean_squared_logarithmic_error") o.loss = "msle";
  if (o.loss == "mean_absolute_percentage_error") o.loss = "mape";
  // The call's arguments: the loss's own options, and from_logits and label_smoothing as the keys beside it.
  std::optional<bool> call_logits;
  std::optional<double> call_smoothing;
  const Keys takes = loss_arguments(o.loss);
  for (const CallArg& a : call.args) {
    const std::string subject =
        fmt::format("{}: {}'s argument {} = {}", lt->name(lk), o.loss, a.name, a.text);
    const std::string hint = fmt::format("{} takes: {}", o.loss, join(takes));
    auto known = [&] {
      return std::any_of(takes.begin(), takes.end(),
                         [&](std::string_view k) { return k == a.name || k.starts_with(a.name + "="); });
    };
    if (!known())
      lt->fail(
          lk, fmt::format("{}: {} has no argument '{}' here", lt->name(lk), o.loss, a.name),
          choice_hint(a.name, takes).starts_with("did") ? choice_hint(a.name, takes) + " " + hint : hint);
    if (a.list)
      lt->fail(lk,
               fmt::format("{} '{}': its argument {} is a list, which trainer does not take (one number for "
                           "every class)",
                           lt->name(lk), text, a.name),
               hint);
    const double* num = std::get_if<double>(&a.value);
    const bool* flag = std::get_if<bool>(&a.value);
    const std::string* str = std::get_if<std::string>(&a.value);
    auto need = [&](bool ok, std::string_view what) {
      if (!ok) lt->fail(lk, fmt::format("{} must be {}", subject, what), hint);
    };
    if (a.name == "from_logits" || a.name == "apply_class_balancing") {
      need(flag != nullptr, "True or False");
      if (a.name == "from_logits")
        call_logits = *flag;
      else
        o.loss_options.apply_class_balancing = *flag;
    } else if (a.name == "alpha" && o.loss == "categorical_focal_crossentropy") {
      need(num && *num >= 0, "a number 0 or more (every class's weight)");
      o.loss_options.alpha = *num;
    } else if (a.name == "label_smoothing" || a.name == "alpha") {
      need(num && *num >= 0 && *num <= 1, "a number in [0, 1]");
      if (a.name == "alpha")
        o.loss_options.alpha = *num;
      else
        call_smoothing = *num;
    } else if (a.name == "ignore_class" && a.none) {  // Keras's default: no class skipped
    } else if (a.name == "ignore_class") {
      need(num && a.integer && std::abs(*num) < 9e15,
           "a whole number written without a decimal point (the label to skip, such as -1 or 255), or None");
      o.loss_options.ignore_class = static_cast<int64_t>(*num);
    } else if (a.name == "delta") {
      need(num && *num > 0, "a positive number");
      o.loss_options.delta = *num;
    } else if (a.name == "gamma") {
      need(num && *num >= 0, "a number 0 or more");
      o.loss_options.gamma = *num;
    } else if (a.name == "axis") {
      need(num && *num == -1, "-1 (the last axis, as trainer's losses reduce it)");
    } else if (a.name == "reduction") {
      need(str && (*str == "sum_over_batch_size" || *str == "auto"),
           "\"sum_over_batch_size\" or Keras 2's \"auto\" (the mean over the batch, which trainer's losses "
           "are)");
    } else if (a.name == "name") {
      need(str != nullptr, "a quoted string (the loss is reported as loss, as in Keras)");
    }
  }
  {
    const auto [ft, fk] = at("from_logits");
    if (ft->get(fk, o.from_logits) && call_logits && *call_logits != o.from_logits)
      ft->fail(fk,
               fmt::format("{} is {}, and the loss's call says from_logits={}", ft->name(fk), o.from_logits,
                           *call_logits ? "True" : "False"),
               "give it once");
    if (ft->find(fk)) o.from_logits_pos = ft->pos(fk);
    if (call_logits) o.from_logits = *call_logits, o.from_logits_pos = o.loss_pos;
  }
  const auto [st, sk] = at("label_smoothing");
  const bool smoothing_key = st->get(sk, o.label_smoothing);
  if (smoothing_key && call_smoothing && *call_smoothing != o.label_smoothing)
    st->fail(sk,
             fmt::format("{} is {}, and the loss's call says label_smoothing={}", st->name(sk),
                         toml_float(o.label_smoothing), toml_float(*call_smoothing)),
             "give it once");
  if (call_smoothing) o.label_smoothing = *call_smoothing;
  if (smoothing_key) {
    if (!(o.label_smoothing >= 0 && o.label_smoothing <= 1))
      st->fail(sk, fmt::format("{} must be in [0, 1], not {}", st->name(sk), toml_float(o.label_smoothing)));
    // 0 smooths nothing: a list by output gives it to the outputs whose loss takes no smoothing.
    if (o.label_smoothing != 0 && label_family(o.loss) != "categorical_crossentropy" &&
        label_family(o.loss) != "binary_crossentropy")
      st->fail(sk,
               fmt::format("{} applies to the categorical and binary cross-entropies (focal or not), and the "
                           "loss is {}",
                           st->name(sk), o.loss),
               o.loss == "sparse_categorical_crossentropy"
                   ? "use one-hot labels with categorical_crossentropy"
                   : "leave label_smoothing out");
  }
  // Where this output's settings start among those of the run's calls.
  const size_t iou_before = ks.num_classes.size(), ignore_before = ks.iou_ignore.size(),
               average_before = ks.f1_average.size(), targets_before = ks.targets.size(),
               threshold_before = ks.iou_threshold.size(), beta_before = ks.beta.size(),
               multi_before = ks.multi_label.size(), labels_before = ks.num_labels.size(),
               decision_before = ks.threshold.size(), class_before = ks.class_id.size(),
               top_k_before = ks.top_k.size();
  std::map<std::string, size_t> at_before;
  for (const auto& [metric, values] : ks.at) at_before[metric] = values.size();
  if (const auto [mt, mk] = at("metrics"); mt->get_strings(mk, o.metrics)) {
    check_metrics(r, *mt->find(mk), mt->name(mk), o.loss, o.from_logits, o.metrics, ks);
    o.metrics_pos = mt->pos(mk);
  }
  if (const auto [wt, wk] = at("weighted_metrics"); wt->get_strings(wk, o.weighted_metrics)) {
    check_metrics(r, *wt->find(wk), wt->name(wk), o.loss, o.from_logits, o.weighted_metrics, ks);
    o.weighted_metrics_pos = wt->pos(wk);
  }
  // What the calls set, this output's: one value each, whichever of its lists names it.
  engine::MetricOptions& mo = o.metric_options;
  if (auto c = one_setting(r, ks.num_classes, iou_before, "IoU metrics'", "num_classes",
                           "give them the classes of the output"))
    mo.iou_classes = *c;
  if (auto a = one_setting(r, ks.f1_average, average_before, "F-score", "average", "give them one average"))
    mo.f1_average = *a;
  if (auto b = one_setting(r, ks.beta, beta_before, "FBetaScore", "beta", "give them one beta")) mo.beta = *b;
  if (auto t = one_setting(r, ks.targets, targets_before, "IoU metrics'", "target_class_ids",
                           "give them one list of classes"))
    mo.iou_targets = *t;
  if (auto t = one_setting(r, ks.iou_threshold, threshold_before, "BinaryIoU", "threshold",
                           "give them one threshold"))
    mo.iou_threshold = *t;
  mo.threshold = one_setting(r, ks.threshold, decision_before, "binary metrics'", "threshold",
                             "give them one threshold");
  if (auto m =
          one_setting(r, ks.multi_label, multi_before, "AUC", "multi_label", "give them one multi_label"))
    mo.auc_multi_label = *m;
  mo.class_id = one_setting(r, ks.class_id, class_before, "Precision and Recall", "class_id",
                            "give them one class, or report them on outputs of their own");
  mo.top_k = one_setting(r, ks.top_k, top_k_before, "Precision and Recall", "top_k", "give them one top_k");
  // Keras's class_id and top_k of a binary output pick among its labels; trainer counts those together.
  const bool binary_output = label_family(o.loss) == "binary_crossentropy";
  auto categorical_only = [&](const std::vector<std::pair<int64_t, SourcePos>>& given, size_t before,
                              std::string_view key) {
    if (binary_output && given.size() > before)
      r.fail(
          given[before].second,
          fmt::format("Precision's and Recall's {} pick among the classes of a categorical output, and the "
                      "loss is {}",
                      key, o.loss),
          "leave it out: a binary output's precision and recall count all its labels at the threshold");
  };
  categorical_only(ks.class_id, class_before, "class_id");
  categorical_only(ks.top_k, top_k_before, "top_k");
  // A setting one call gives holds for every metric of the output that takes it, so those must all give it:
  // one without it beside one with it would take the other's value.
  auto all_give = [&](std::initializer_list<std::string_view> names, size_t given, const SourcePos& first,
                      std::string_view metric, std::string_view key, const std::string& value) {
    size_t n = 0;
    for (const auto* list : {&o.metrics, &o.weighted_metrics})
      for (const std::string& m : *list) n += std::find(names.begin(), names.end(), m) != names.end();
    if (given > 0 && n > given)
      r.fail(first,
             fmt::format("one {} of this output says {}={}, and another says nothing", metric, key, value),
             fmt::format("give the output's {} calls one {}, or report them on outputs of their own", metric,
                         key));
  };
  if (ks.f1_average.size() > average_before)
    all_give({"f1_score", "fbeta_score"}, ks.f1_average.size() - average_before,
             ks.f1_average[average_before].second, "F-score", "average", fmt::format("'{}'", mo.f1_average));
  if (ks.beta.size() > beta_before)
    all_give({"fbeta_score"}, ks.beta.size() - beta_before, ks.beta[beta_before].second, "FBetaScore", "beta",
             toml_float(mo.beta));
  if (ks.iou_threshold.size() > threshold_before)
    all_give({"binary_iou"}, ks.iou_threshold.size() - threshold_before,
             ks.iou_threshold[threshold_before].second, "BinaryIoU", "threshold",
             toml_float(mo.iou_threshold));
  // (accuracy on a binary output is binary_accuracy, judged at the same threshold; a probability's 0.5, the
  // default, needs no saying)
  // (A categorical output's accuracy and F-scores take its largest class: only Precision and Recall read the
  // threshold.)
  if (mo.threshold && (*mo.threshold != 0.5 || o.from_logits) && binary_output)
    all_give({"accuracy", "acc", "binary_accuracy", "precision", "recall", "true_positives",
              "false_positives", "true_negatives", "false_negatives", "f1_score", "fbeta_score"},
             ks.threshold.size() - decision_before, ks.threshold[decision_before].second, "binary metric",
             "threshold", toml_float(*mo.threshold));
  if (mo.threshold && (*mo.threshold != 0.5 || o.from_logits) && !binary_output)
    all_give({"precision", "recall"}, ks.threshold.size() - decision_before,
             ks.threshold[decision_before].second, "Precision or Recall", "thresholds",
             toml_float(*mo.threshold));
  if (mo.class_id)
    all_give({"precision", "recall"}, ks.class_id.size() - class_before, ks.class_id[class_before].second,
             "Precision or Recall", "class_id", std::to_string(*mo.class_id));
  if (mo.top_k)
    all_give({"precision", "recall"}, ks.top_k.size() - top_k_before, ks.top_k[top_k_before].second,
             "Precision or Recall", "top_k", std::to_string(*mo.top_k));
  if (ks.targets.size() > targets_before)
    all_give({"binary_iou"}, ks.targets.size() - targets_before, ks.targets[targets_before].second,
             "BinaryIoU", "target_class_ids", fmt::format("[{}]", fmt::join(mo.iou_targets, ", ")));
  if (mo.auc_multi_label)
    all_give({"auc", "pr_auc"}, ks.multi_label.size() - multi_before, ks.multi_label[multi_before].second,
             "AUC", "multi_label", "True");
  if (auto n =
          one_setting(r, ks.num_labels, labels_before, "AUC", "num_labels", "give them the output's labels"))
    mo.auc_num_labels = *n;
  for (const auto& [metric, values] : ks.at)
    if (auto v = one_setting(r, values, at_before[metric], metric, kAtMetrics.at(metric),
                             "report it at one value per output"))
      mo.at[metric] = *v;
  // One ignore_class per output serves the IoU metrics of both lists: one without it beside one with it
  // would take it too.
  const auto ious = std::count_if(o.metrics.begin(), o.metrics.end(), is_class_iou) +
                    std::count_if(o.weighted_metrics.begin(), o.weighted_metrics.end(), is_class_iou);
  if (ks.iou_ignore.size() > ignore_before &&
      static_cast<size_t>(ious) > ks.iou_ignore.size() - ignore_before)
    r.fail(ks.iou_ignore[ignore_before].second,
           fmt::format("one IoU metric of this output says ignore_class={}, and another says none",
                       ks.iou_ignore[ignore_before].first),
           "give the output's IoU metrics one ignore_class");
  mo.iou_ignore = one_setting(r, ks.iou_ignore, ignore_before, "IoU metrics'", "ignore_class",
                              "give them one class to leave out");
  return o;
}

TrainSection read_train(const Reader& r, const toml::node& n, const ModelSection& model,
                        const DataSection* data) {
  Table t(r, n, "train", kTrainKeys);
  TrainSection s;
  s.pos = t.pos();
  const Keys outputs(model.outputs.begin(), model.outputs.end());
  const char* const per_output[] = {"loss",    "from_logits",  "label_smoothing",
                                    "metrics", "loss_weights", "weighted_metrics"};
  for (const char* key : per_output) {
    const toml::node* v = t.find(key);
    const bool by_name = v && v->is_table() && (std::string_view(key) != "loss" || !outputs.empty());
    if (by_name && outputs.empty())
      t.fail(key, fmt::format("train.{} is a table by output name, and [model] outputs lists none", key),
             model.onnx.empty()
                 ? "list the output layers in [model] outputs = [\"a\", \"b\"], or give one value"
                 : "list the ONNX model's outputs that train in [model] outputs = [\"a\", \"b\"] (a graph of "
                   "several outputs trains the ones listed), or give one value");
    if (by_name)
      for (auto&& [k, val] : *v->as_table())
        if (!contains(outputs, k.str()))
          r.fail(r.pos(k, val),
                 fmt::format("train.{} names '{}', which model.outputs does not list ({})", key, k.str(),
                             join(outputs)),
                 choice_hint(k.str(), outputs));
  }
  CallSettings ks;  // what the metrics' calls say
  if (outputs.size() > 1) {
    for (const auto& name : model.outputs) s.outputs.push_back(read_output_settings(r, t, outputs, name, ks));
    const OutputTrainSpec& first = s.outputs[0];
    s.loss = first.loss;
    s.loss_pos = first.loss_pos;
    s.from_logits_pos = first.from_logits_pos;
    s.metrics_pos = first.metrics_pos;
    s.weighted_metrics_pos = first.weighted_metrics_pos;
    s.loss_options = first.loss_options;
    s.metric_options = first.metric_options;
    s.from_logits = first.from_logits;
    s.label_smoothing = first.label_smoothing;
    s.metrics = first.metrics;
    s.weighted_metrics = first.weighted_metrics;
  } else {
    const OutputTrainSpec o =
        read_output_settings(r, t, outputs, outputs.empty() ? "" : model.outputs[0], ks);
    s.loss = o.loss;
    s.loss_pos = o.loss_pos;
    s.from_logits_pos = o.from_logits_pos;
    s.metrics_pos = o.metrics_pos;
    s.weighted_metrics_pos = o.weighted_metrics_pos;
    s.loss_options = o.loss_options;
    s.metric_options = o.metric_options;
    s.from_logits = o.from_logits;
    s.label_smoothing = o.label_smoothing;
    s.metrics = o.metrics;
    s.weighted_metrics = o.weighted_metrics;
  }
  if (const toml::node* lw = t.find("loss_weights")) {
    if (outputs.size() < 2)
      t.fail("loss_weights", "train.loss_weights weighs the losses of a model's several outputs",
             "list the output layers in [model] outputs, or leave loss_weights out");
    std::vector<double> weights;
    if (lw->is_table()) {
      Table wt(r, *lw, "train.loss_weights", outputs);
      for (size_t k = 0; k < outputs.size(); ++k) {
        double w = 1;
        if (wt.get(outputs[k], w) && !(w >= 0))
          wt.fail(outputs[k],
                  fmt::format("{} must be 0 or more, not {}", wt.name(outputs[k]), toml_float(w)));
        s.outputs[k].loss_weight = w;
      }
    } else {
      t.get_numbers("loss_weights", weights);
      if (weights.size() != outputs.size())
        t.fail("loss_weights",
               fmt::format("train.loss_weights has {} weights, and the model has {} outputs", weights.size(),
                           outputs.size()),
               "give one weight per output, in [model] outputs' order, or a table by output name");
      for (size_t k = 0; k < weights.size(); ++k) {
        if (!(weights[k] >= 0))
          t.fail("loss_weights", fmt::format("train.loss_weights holds {}; weights must be 0 or more",
                                             toml_float(weights[k])));
        s.outputs[k].loss_weight = weights[k];
      }
    }
  }
  for (const auto& [k, pos] : ks.k)
    if (k != ks.k[0].first)
      r.fail(pos, fmt::format("the top-k metrics' calls say k={} and k={}", ks.k[0].first, k),
             "trainer ranks one k for every top-k metric of a run; give them one");
  if (t.get("top_k", s.top_k)) {
    if (s.top_k < 1) t.fail("top_k", fmt::format("train.top_k must be 1 or more, not {}", s.top_k));
    if (!ks.k.empty() && ks.k[0].first != s.top_k)
      t.fail("top_k", fmt::format("train.top_k is {}, and a metric's call says k={}", s.top_k, ks.k[0].first),
             "give k once");
    bool ranked = false;
    for (const auto* list : {&s.metrics, &s.weighted_metrics})
      for (const std::string& m : *list) ranked = ranked || m.find("top_k") != std::string::npos;
    for (const OutputTrainSpec& o : s.outputs)
      for (const auto* list : {&o.metrics, &o.weighted_metrics})
        for (const std::string& m : *list) ranked = ranked || m.find("top_k") != std::string::npos;
    if (!ranked)
      t.fail("top_k", "train.top_k is set but train.metrics (or weighted_metrics) has no top_k_accuracy",
             "add \"top_k_accuracy\" to train.metrics, or leave out top_k");
  } else if (!ks.k.empty()) {
    s.top_k = ks.k[0].first;
  }
  if (const toml::node* cw = t.find("class_weight")) {
    s.class_weight_pos = r.pos(*cw);
    if (!s.outputs.empty())
      t.fail("class_weight", "train.class_weight weighs the classes of a model of one output",
             "give sample weights instead (sample_weight in the data sources), as Keras asks of a model of "
             "several outputs");
    if (cw->is_table()) {
      // Keras's dict form, keys being class ids: { "0" = 1.0, "1" = 5.0 }; a class left out weighs 1.
      s.class_weight_by_id = true;
      std::map<long long, std::string> keys;  // each class's key, for a class keyed twice ("1" and "01")
      for (const auto& [key, v] : *cw->as_table()) {
        const std::string k(key.str());
        char* end = nullptr;
        const long long id = std::strtoll(k.c_str(), &end, 10);
        if (k.empty() || !std::isdigit(static_cast<unsigned char>(k[0])) || *end != '\0' || id < 0 ||
            id > 100000)
          r.fail(r.pos(v), fmt::format("train.class_weight has key '{}', which is not a class id", k),
                 "key each weight by its class: class_weight = { \"0\" = 1.0, \"1\" = 5.0 }");
        if (const auto [at, fresh] = keys.emplace(id, k); !fresh)
          r.fail(r.pos(v),
                 fmt::format("train.class_weight keys class {} twice, as '{}' and '{}'", id, at->second, k),
                 "give each class one weight");
        if (!v.is_number())
          r.fail(r.pos(v), fmt::format("train.class_weight.{} must be a number, not {}", k, describe(v)));
        if (static_cast<size_t>(id) >= s.class_weight.size()) s.class_weight.resize(id + 1, 1.0);
        s.class_weight[id] = v.is_integer() ? static_cast<double>(*v.value<int64_t>()) : *v.value<double>();
      }
    } else if (!cw->is_array()) {
      t.fail("class_weight",
             fmt::format("train.class_weight must be an array or a table, not {}", describe(*cw)),
             "one weight per class, [1.0, 5.0], or by class id, { \"1\" = 5.0 }");
    } else {
      t.get_numbers("class_weight", s.class_weight);
    }
    if (s.class_weight.empty())
      t.fail("class_weight", "train.class_weight is empty", "leave it out, or give weights");
    for (double w : s.class_weight)
      if (!(w >= 0) || !std::isfinite(w))
        t.fail("class_weight", fmt::format("train.class_weight holds {}; weights must be 0 or more", w));
    if (!s.loss.ends_with("crossentropy"))
      t.fail("class_weight",
             fmt::format("train.class_weight weighs classes, and the loss {} has none", s.loss),
             "use it with a cross-entropy loss");
    if (label_family(s.loss) == "binary_crossentropy" && s.class_weight.size() > 2)
      t.fail("class_weight",
             s.class_weight_by_id
                 ? fmt::format("train.class_weight keys class {}, and {} has 2 classes (0 and 1)",
                               s.class_weight.size() - 1, s.loss)
                 : fmt::format("train.class_weight has {} weights, and {} has 2 classes (0 and 1)",
                               s.class_weight.size(), s.loss));
  }
  if (t.get("epochs", s.epochs) && s.epochs < 1)
    t.fail("epochs", fmt::format("train.epochs must be 1 or more, not {}", s.epochs));
  if (t.get("validation_freq", s.validation_freq) && s.validation_freq < 1)
    t.fail("validation_freq",
           fmt::format("train.validation_freq must be 1 or more, not {}", s.validation_freq),
           "the validation data is evaluated after every validation_freq-th epoch");
  if (t.get("steps_per_epoch", s.steps_per_epoch) && s.steps_per_epoch < 1)
    t.fail("steps_per_epoch",
           fmt::format("train.steps_per_epoch must be 1 or more, not {}", s.steps_per_epoch),
           "leave it out for epochs of one pass over the training data");
  if (t.get("validation_steps", s.validation_steps) && s.validation_steps < 1)
    t.fail("validation_steps",
           fmt::format("train.validation_steps must be 1 or more, not {}", s.validation_steps),
           "leave it out to evaluate every batch of the validation data");
  if (t.get("batch_size", s.batch_size) && (s.batch_size < 1 || s.batch_size > 2147483647))
    t.fail("batch_size",
           fmt::format("train.batch_size must be from 1 to 2147483647 (as --batch-size takes it), not {}",
                       s.batch_size),
           "a batch larger than the data is one batch of every sample");
  int64_t seed = 0;
  if (t.get("seed", seed)) {
    if (seed < 0) t.fail("seed", fmt::format("train.seed must be 0 or more, not {}", seed));
    s.seed = static_cast<uint64_t>(seed);
  }
  if (t.get_choice("precision", s.precision, kPrecisions, "precision")) s.precision_pos = t.pos("precision");
  if (const toml::node* o = t.find("optimizer")) s.optimizer = read_optimizer(r, *o);
  if (s.precision == "fp16" && s.optimizer.gradient_accumulation_steps > 1)
    t.fail("precision", "train.precision fp16 (its loss scaling) with gradient accumulation is not supported",
           "train in bf16 or fp32, or leave out train.optimizer.gradient_accumulation_steps");
  const std::vector<std::string> reported = reported_quantities(s);
  if (const toml::node* e = t.find("early_stopping"))
    s.early_stopping = read_early_stopping(r, *e, reported, data);
  if (const toml::node* c = t.find("checkpoint")) s.checkpoint = read_checkpoint(r, *c, reported, data);
  if (const toml::node* p = t.find("reduce_lr_on_plateau"))
    s.reduce_lr = read_reduce_lr(r, *p, reported, data);
  return s;
}

std::string base_dir_of(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // A spec that comes through a pipe or a descriptor (/dev/stdin, /dev/fd/63, even one that names a file):
  // its paths are the working directory's.
  const fs::file_status st = fs::status(path, ec);
  const bool descriptor = path.starts_with("/dev/") || path.starts_with("/proc/");
  if (!ec && fs::exists(st) && !fs::is_directory(st) && (descriptor || !fs::is_regular_file(st))) {
    const fs::path here = fs::current_path(ec);
    if (!ec) return here.string();
  }
  fs::path abs = fs::absolute(path.empty() ? fs::path(".") / "spec.toml" : fs::path(path), ec);
  if (ec) return fs::path(path).parent_path().string();
  return abs.lexically_normal().parent_path().string();
}

// `trainer fit MODEL.onnx --train FILE`: model.onnx comes from the command line, relative to the spec's
// folder, with the path as given for its place; the file's [model] may hold freeze, output, outputs and
// layers.
void insert_onnx_model(Reader& r, toml::table& doc, const std::string& onnx_path,
                       const std::string& base_dir) {
  if (const toml::node* m = doc.get("model"); m && !m->is_table())
    r.fail(r.pos(*m), fmt::format("model must be a table, not {}", describe(*m)),
           "with an ONNX model, [model] may hold only freeze, output, outputs and [[model.layers]]");
  if (!doc.get("model")) doc.insert("model", toml::table{});
  toml::table& model = *doc.get_as<toml::table>("model");
  for (const char* key : {"onnx", "input", "inputs"})
    if (const toml::node* v = model.get(key))
      r.fail(
          r.pos(*v), fmt::format("model.{} is set, but the model comes from {}", key, onnx_path),
          "with trainer fit MODEL.onnx --train FILE, the file's [model] table may hold only freeze, output, "
          "outputs and [[model.layers]] on top of the ONNX model");
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path abs = fs::absolute(onnx_path, ec).lexically_normal();
  const fs::path rel = ec ? fs::path() : abs.lexically_relative(base_dir);
  model.insert_or_assign("onnx", rel.empty() ? (ec ? onnx_path : abs.string()) : rel.string());
  r.set_pos(*model.get("onnx"), SourcePos{onnx_path, 0, 0});
}

ModelSpec parse_spec(const std::string& text, const std::string& path,
                     const std::vector<std::string>& overrides, const std::string* onnx_path) {
  Reader r(path);
  if (const int line = overlong_key_line(text))
    r.fail(SourcePos{path, line, 1}, fmt::format("a dotted key has more than {} parts", kMaxKeyParts),
           "a spec's keys are a few parts deep, e.g. train.optimizer.learning_rate");
  toml::table doc;
  try {
    doc = toml::parse(text, std::string(path));
  } catch (const toml::parse_error& e) {
    r.fail(r.region(e.source()), std::string(e.description()),
           "the spec is not valid TOML (https://toml.io)");
  }
  expand_shorthands(r, doc);
  for (const std::string& o : overrides) apply_override(r, doc, o);
  expand_shorthands(r, doc);  // an override may have written a shorthand

  ModelSpec spec;
  spec.path = path;
  spec.base_dir = base_dir_of(path);
  if (onnx_path) insert_onnx_model(r, doc, *onnx_path, spec.base_dir);

  // The version first: a newer spec may hold keys that this version does not know.
  const toml::node* version = doc.get("format_version");
  if (!version)
    r.fail(r.file(), "the spec has no format_version",
           fmt::format("add `format_version = {}` as its first line", kModelSpecFormatVersion));
  if (!version->is_integer())
    r.fail(r.pos(*version), fmt::format("format_version must be an integer, not {}", describe(*version)),
           fmt::format("write format_version = {}", kModelSpecFormatVersion));
  if (version->as_integer()->get() != kModelSpecFormatVersion)
    r.fail(r.pos(*version), fmt::format("unsupported format_version {}", version->as_integer()->get()),
           fmt::format("this trainer reads format_version = {}", kModelSpecFormatVersion));

  Table root(r, doc, "", kRootKeys);
  const toml::node* model = root.find("model");
  if (!model)
    r.fail(r.file(), "the spec has no [model] section",
           "add [model] with input and [[model.layers]], or with onnx = \"model.onnx\"");
  spec.model = read_model(r, *model);
  const toml::node* data = root.find("data");
  if (data) spec.data = read_data(r, *data, spec.model, spec.base_dir);
  if (const toml::node* train = root.find("train"))
    spec.train = read_train(r, *train, spec.model, data ? &spec.data : nullptr);
  if (const toml::node* parallel = root.find("parallel")) {
    Table t(r, *parallel, "parallel", kParallelKeys);
    spec.parallel.pos = t.pos();
    if (t.get("bucket_mb", spec.parallel.bucket_mb) && !(spec.parallel.bucket_mb > 0))
      t.fail("bucket_mb", fmt::format("parallel.bucket_mb must be positive, not {}", spec.parallel.bucket_mb),
             "25 (MB of gradients per reduction) suits most models");
    t.get("shard_optimizer", spec.parallel.shard_optimizer);
    t.get("sync_batch_norm", spec.parallel.sync_batch_norm);
  }
  return spec;
}

}  // namespace

std::string read_spec_text(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw InputError(path, "is a directory, not a spec file", "give the path of a .toml file");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw InputError(path, fmt::format("cannot read the spec: {}", std::strerror(errno)),
                     "check the path; trainer-model(5) describes the file");
  // A spec is text of a few KiB: a path to a device or a huge file is a mistake, found before it fills
  // memory.
  constexpr size_t kMostBytes = size_t{16} << 20;
  std::string text(kMostBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMostBytes)
    throw InputError(path, "is larger than 16 MiB, which no spec is",
                     "give the .toml spec file (trainer-model(5) describes it)");
  text.shrink_to_fit();  // the room read into, beyond the text, goes back
  return text;
}

std::string optimizer_name(const std::string& text) {
  const std::string name = keras_class_name(text, kOptimizers);
  return contains(kOptimizers, name) ? name : std::string();
}

std::string loss_call_text(const std::string& loss, const LossOptions& options) {
  const LossOptions keras;
  std::vector<std::string> args;
  if (options.apply_class_balancing != keras.apply_class_balancing)
    args.push_back(fmt::format("apply_class_balancing={}", options.apply_class_balancing ? "True" : "False"));
  if (options.alpha != keras.alpha) args.push_back("alpha=" + toml_float(options.alpha));
  if (options.gamma != keras.gamma) args.push_back("gamma=" + toml_float(options.gamma));
  if (options.delta != keras.delta) args.push_back("delta=" + toml_float(options.delta));
  if (options.ignore_class) args.push_back(fmt::format("ignore_class={}", *options.ignore_class));
  return args.empty() ? loss : fmt::format("{}({})", loss, fmt::join(args, ", "));
}

std::string label_family(const std::string& loss) {
  if (loss == "binary_focal_crossentropy") return "binary_crossentropy";
  if (loss == "categorical_focal_crossentropy") return "categorical_crossentropy";
  return loss;
}

ModelSpec parse_model_spec(const std::string& text, const std::string& path,
                           const std::vector<std::string>& overrides) {
  return parse_spec(text, path, overrides, nullptr);
}

ModelSpec load_model_spec(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_spec(read_spec_text(path), path, overrides, nullptr);
}

ModelSpec load_onnx_training_spec(const std::string& onnx_path, const std::string& toml_path,
                                  const std::vector<std::string>& overrides) {
  return parse_spec(read_spec_text(toml_path), toml_path, overrides, &onnx_path);
}

ModelSpec load_onnx_model_spec(const std::string& onnx_path, const std::vector<std::string>& overrides) {
  return parse_spec("format_version = 1\n", onnx_path, overrides, &onnx_path);
}

std::string canonical_layer_type(const std::string& type) {
  static const std::map<std::string, std::string, std::less<>> aliases = [] {
    std::map<std::string, std::string, std::less<>> m;
    for (const char* d : {"1D", "2D", "3D"}) {
      const std::string D = d;
      m["MaxPool" + D] = "MaxPooling" + D;
      m["AvgPool" + D] = "AveragePooling" + D;
      m["GlobalMaxPool" + D] = "GlobalMaxPooling" + D;
      m["GlobalAvgPool" + D] = "GlobalAveragePooling" + D;
      m["Convolution" + D] = "Conv" + D;
      m["Convolution" + D + "Transpose"] = "Conv" + D + "Transpose";
    }
    m["SeparableConvolution1D"] = "SeparableConv1D";
    m["SeparableConvolution2D"] = "SeparableConv2D";
    return m;
  }();
  auto it = aliases.find(type);
  return it == aliases.end() ? type : it->second;
}

}  // namespace trainer::formats
