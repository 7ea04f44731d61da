// TrainingState <-> checkpoint file. Doubles are written with 17 significant digits, so they read back
// exactly and a resumed run reports the same numbers as one that never stopped.
#include "cli/checkpoint_io.h"

#include <fmt/format.h>
#include <onnx/onnx_pb.h>
#include <algorithm>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "engine/util/error.h"
#include "formats/checkpoint.h"
#include "formats/checkpoint_json.h"
#include "formats/data_bytes.h"
#include "formats/onnx_import.h"
#include "formats/onnx_tensor.h"

namespace trainer::cli {

namespace {

// A number of the state as JSON: exact (17 digits); NaN and the infinities, which JSON has no numbers for
// (a validation loss on bad data), as the strings "NaN", "Infinity" and "-Infinity".
std::string num(double v) {
  if (std::isnan(v)) return "\"NaN\"";
  if (std::isinf(v)) return v > 0 ? "\"Infinity\"" : "\"-Infinity\"";
  return fmt::format("{:.17g}", v);
}

// The value of num's JSON (a number, or one of its strings); false when it is neither.
bool read_num(const formats::JsonValue& v, double* out) {
  if (v.kind == formats::JsonValue::Kind::number) {
    *out = std::strtod(v.text.c_str(), nullptr);
    return true;
  }
  if (v.kind != formats::JsonValue::Kind::string) return false;
  if (v.text == "NaN")
    *out = std::numeric_limits<double>::quiet_NaN();
  else if (v.text == "Infinity")
    *out = std::numeric_limits<double>::infinity();
  else if (v.text == "-Infinity")
    *out = -std::numeric_limits<double>::infinity();
  else
    return false;
  return true;
}

std::string logs_json(const engine::Logs& logs) {
  std::string s = "[";
  for (size_t i = 0; i < logs.size(); ++i) {
    if (i) s += ", ";
    s += "[";
    formats::append_json_string(s, logs[i].first);
    s += ", " + num(logs[i].second) + "]";
  }
  return s + "]";
}

std::string state_json(const engine::TrainingState& st) {
  std::string layout;
  formats::append_json_string(layout, st.metric_layout);
  std::string sums;
  for (size_t i = 0; i < st.metric_sums.size(); ++i) sums += (i ? ", " : "") + num(st.metric_sums[i]);
  std::string best_of;
  formats::append_json_string(best_of, st.saved_best_of);
  std::string order;
  formats::append_json_string(order, st.data_order);
  std::string s = fmt::format(
      "{{\"epoch\": {}, \"batch\": {}, \"global_step\": {}, \"steps_per_epoch\": {}, \"data_pass\": {}, "
      "\"data_samples\": {}, \"data_order\": {}, \"metric_sums\": [{}], \"metric_layout\": {}, "
      "\"saved_best_of\": {}, \"saved_best\": {}, "
      "\"lr_factor\": {}, "
      "\"plateau_have_best\": {}, \"plateau_best\": {}, \"plateau_wait\": {}, \"plateau_cooldown\": {}, "
      "\"seconds\": {}, "
      "\"have_best\": {}, \"best\": {}, \"waited\": {}, \"best_epoch\": "
      "{}, \"stopped\": {}, \"loss_scale\": {}, \"loss_scale_good_steps\": {}, \"skipped_steps\": {}, "
      "\"velocity\": \"rate_scaled\", \"history\": [",
      st.epoch, st.batch, st.global_step, st.steps_per_epoch, st.data_pass, st.data_samples, order, sums,
      layout, best_of, num(st.saved_best), num(st.lr_factor), st.plateau_have_best ? "true" : "false",
      num(st.plateau_best), st.plateau_wait, st.plateau_cooldown, num(st.seconds),
      st.have_best ? "true" : "false", num(st.best), st.waited, st.best_epoch, st.stopped ? "true" : "false",
      num(st.loss_scale), st.loss_scale_good_steps, st.skipped_steps);
  for (size_t i = 0; i < st.history.size(); ++i) {
    const engine::EpochReport& r = st.history[i];
    if (i) s += ", ";
    s += fmt::format(
        "{{\"epoch\": {}, \"epochs\": {}, \"steps\": {}, \"seconds\": {}, \"samples_per_s\": {}, "
        "\"logs\": {}}}",
        r.epoch, r.epochs, r.steps, num(r.seconds), num(r.samples_per_s), logs_json(r.logs));
  }
  return s + "]}";
}

struct StateReader {
  const formats::JsonValue& root;
  const std::string& path;
  const formats::JsonValue& get(const formats::JsonValue& o, const char* key) const {
    const formats::JsonValue* v = o.find(key);
    if (!v)
      throw InputError(path, fmt::format("the checkpoint's state has no '{}'", key),
                       "the file was not written by this version of trainer fit");
    return *v;
  }
  double d(const formats::JsonValue& o, const char* key) const {
    double out = 0;
    if (!read_num(get(o, key), &out))
      throw InputError(path, fmt::format("the checkpoint's state has a bad '{}'", key), "");
    return out;
  }
  // A count: a whole number, 0 or more.
  int64_t i(const formats::JsonValue& o, const char* key) const {
    const double v = d(o, key);
    if (!(v >= 0 && v <= 9.0e15 && v == std::floor(v)))
      throw InputError(
          path,
          fmt::format("the checkpoint's state has '{}' = {}, which is not a count", key, get(o, key).text),
          "the file is damaged or was edited");
    return static_cast<int64_t>(v);
  }
  bool b(const formats::JsonValue& o, const char* key) const { return get(o, key).boolean; }
  // A finite number in [lowest, inf), or above lowest when `above`: what a run can have written.
  double in_range(const formats::JsonValue& o, const char* key, double lowest, bool above) const {
    const double v = d(o, key);
    if (!std::isfinite(v) || v < lowest || (above && v == lowest))
      throw InputError(
          path,
          fmt::format("the checkpoint's state has '{}' = {}, which no run writes (a finite number {} "
                      "{})",
                      key, get(o, key).text, above ? "above" : "of at least", lowest),
          "the file is damaged or was edited");
    return v;
  }
};

engine::TrainingState parse_state(const std::string& text, const std::string& path) {
  formats::JsonValue root;
  try {
    root = formats::parse_json(text);
  } catch (const formats::JsonSyntaxError& e) {
    throw InputError(path, fmt::format("the checkpoint's state is not valid JSON: {}", e.what()), "");
  }
  StateReader r{root, path};
  engine::TrainingState st;
  st.epoch = r.i(root, "epoch");
  st.batch = r.i(root, "batch");
  st.global_step = r.i(root, "global_step");
  if (st.batch > st.global_step)
    throw InputError(path,
                     fmt::format("the checkpoint's state is at batch {} of its epoch but step {} of the run",
                                 st.batch, st.global_step),
                     "the file is damaged or was edited");
  // The position in the passes over the data came with steps_per_epoch: a checkpoint without it ran epochs of
  // a pass, and its position follows from the epoch and batch (fit works it out).
  if (root.find("steps_per_epoch")) {
    st.steps_per_epoch = r.i(root, "steps_per_epoch");
    st.data_pass = r.i(root, "data_pass");
    st.data_samples = r.i(root, "data_samples");
    if (const formats::JsonValue* o = root.find("data_order")) {
      if (o->kind != formats::JsonValue::Kind::string)
        throw InputError(path, "the checkpoint's state has a bad 'data_order'", "");
      st.data_order = o->text;
    }
  }
  if (root.find("metric_sums")) {
    for (const formats::JsonValue& v : root.find("metric_sums")->items) {
      double sum = 0;
      if (!read_num(v, &sum) || !std::isfinite(sum))
        throw InputError(path,
                         fmt::format("the checkpoint's state has a bad 'metric_sums' entry (number {})",
                                     st.metric_sums.size() + 1),
                         "the file is damaged or was edited");
      st.metric_sums.push_back(sum);
    }
    if (const formats::JsonValue* l = root.find("metric_layout")) {
      if (l->kind != formats::JsonValue::Kind::string)
        throw InputError(path, "the checkpoint's state has a bad 'metric_layout'", "");
      st.metric_layout = l->text;
    }
  } else {
    // Checkpoints from before metric_sums kept the loss, accuracy and top-k sums and the sample count apart.
    st.metric_sums = {r.d(root, "loss_sum"), r.d(root, "correct"), r.d(root, "topk"), r.d(root, "samples")};
  }
  // save_best's memory came later: a checkpoint without it starts save_best afresh.
  if (const formats::JsonValue* of = root.find("saved_best_of")) {
    if (of->kind != formats::JsonValue::Kind::string)
      throw InputError(path, "the checkpoint's state has a bad 'saved_best_of'", "");
    st.saved_best_of = of->text;
    st.saved_best = r.d(root, "saved_best");
  }
  // ReduceLROnPlateau came later: a checkpoint without it ran at the schedule's rate.
  if (root.find("lr_factor")) {
    st.lr_factor = r.in_range(root, "lr_factor", 0.0, true);
    st.plateau_have_best = r.b(root, "plateau_have_best");
    st.plateau_best = r.d(root, "plateau_best");
    st.plateau_wait = r.i(root, "plateau_wait");
    st.plateau_cooldown = r.i(root, "plateau_cooldown");
  }
  st.seconds = r.in_range(root, "seconds", 0.0, false);
  st.have_best = r.b(root, "have_best");
  st.best = r.d(root, "best");
  st.waited = r.i(root, "waited");
  st.best_epoch = r.i(root, "best_epoch");
  // Older checkpoints did not say that early stopping ended the run.
  if (root.find("stopped")) st.stopped = r.b(root, "stopped");
  // Loss scaling (fp16) came later: a checkpoint without it was written by an unscaled run.
  if (root.find("loss_scale")) {
    st.loss_scale = static_cast<float>(r.in_range(root, "loss_scale", 0.0, false));
    st.loss_scale_good_steps = r.i(root, "loss_scale_good_steps");
    st.skipped_steps = r.i(root, "skipped_steps");
  }
  // sgd's velocity became Keras's (rate-scaled) later: a checkpoint without the key held gradients.
  st.rate_scaled_velocity = false;
  if (const formats::JsonValue* v = root.find("velocity")) {
    if (v->kind != formats::JsonValue::Kind::string || v->text != "rate_scaled")
      throw InputError(path, fmt::format("the checkpoint's velocity is '{}'", v->text),
                       "the file was written by a later version of trainer fit");
    st.rate_scaled_velocity = true;
  }
  for (const formats::JsonValue& e : r.get(root, "history").items) {
    engine::EpochReport rep;
    rep.epoch = r.i(e, "epoch");
    rep.epochs = r.i(e, "epochs");
    rep.steps = r.i(e, "steps");
    rep.seconds = r.d(e, "seconds");
    rep.samples_per_s = r.d(e, "samples_per_s");
    for (const formats::JsonValue& kv : r.get(e, "logs").items) {
      double value = 0;
      if (kv.items.size() != 2 || !read_num(kv.items[1], &value))
        throw InputError(path, "the checkpoint's history is malformed", "");
      rep.logs.emplace_back(kv.items[0].text, value);
    }
    st.history.push_back(std::move(rep));
  }
  return st;
}

}  // namespace

void save_training_checkpoint(const std::string& path, const formats::ModelSpec& spec,
                              uint64_t plan_signature, const engine::TrainingState& st, double lr_scale) {
  namespace key = formats::checkpoint_key;
  std::map<std::string, std::string> meta;
  meta[key::kSpec] = formats::to_toml(spec);
  // The spec's path in the folder its relative paths start from: its own, or the working directory of a spec
  // piped in (/dev/stdin), so that a resume or an evaluation finds the data as the run did.
  meta[kSpecPathKey] =
      spec.base_dir.empty()
          ? std::filesystem::absolute(spec.path).string()
          : (std::filesystem::path(spec.base_dir) / std::filesystem::path(spec.path).filename()).string();
  meta[key::kPlanSignature] = fmt::format("{:016x}", plan_signature);
  meta[key::kEpoch] = std::to_string(st.epoch);
  meta[key::kStep] = std::to_string(st.global_step);
  meta[key::kCursor] = fmt::format("epoch {} batch {}", st.epoch, st.batch);
  meta[key::kRng] = fmt::format("philox4x32-10 seed {} step {}", spec.train.seed, st.global_step);
  meta[kStateKey] = state_json(st);
  if (lr_scale != 1) meta[kLrScaleKey] = num(lr_scale);
  std::vector<formats::CheckpointTensorSource> tensors;
  for (const auto& [name, t] : st.values) tensors.push_back(formats::tensor_source(name, t));
  for (const auto& [name, t] : st.best_values)
    tensors.push_back(formats::tensor_source(kBestPrefix + name, t));
  engine::Tensor onnx_model;
  if (!spec.model.onnx.empty()) {
    const std::string bytes =
        spec.model.onnx_bytes ? *spec.model.onnx_bytes
                              : formats::read_file_bytes(formats::resolve_data_path(spec, spec.model.onnx));
    onnx_model = engine::Tensor(engine::DType::u8, engine::Shape({static_cast<int64_t>(bytes.size())}));
    std::memcpy(onnx_model.raw(), bytes.data(), bytes.size());
    tensors.push_back(formats::tensor_source(kOnnxModelTensor, onnx_model));
  }
  formats::write_checkpoint(path, meta, tensors);
}

namespace {

std::map<std::string, std::string>& spool() {
  static std::map<std::string, std::string> kept;
  return kept;
}

}  // namespace

const std::string* spooled(const std::string& path) {
  if (auto it = spool().find(path); it != spool().end()) return &it->second;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st) || fs::is_regular_file(st) || fs::is_directory(st)) return nullptr;
  return &spool().emplace(path, formats::read_spec_text(path)).first->second;
}

namespace {

// The first `n` bytes of a file (fewer when it is shorter; none when it cannot be read).
std::string file_head(const std::string& path, size_t n) {
  // A path read already through a pipe (spooled) is read from what was kept.
  if (auto it = spool().find(path); it != spool().end()) return it->second.substr(0, n);
  std::ifstream f(path, std::ios::binary);
  std::string head(n, '\0');
  f.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(f.gcount()));
  return head;
}

// Text as people write it: no control bytes but line breaks and tabs.
bool is_text(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x20 || c == '\n' || c == '\r' || c == '\t';
  });
}

// A checkpoint's header length, then its '{' (what the checkpoint reader then reads, or says is damaged).
bool checkpoint_brace(std::string_view head) {
  return head.size() > 8 && head[8] == '{';
}

}  // namespace

bool starts_as_checkpoint(const std::string& path) {
  const std::string head = file_head(path, 9);
  // The header's length is little-endian and far below 2^40, so its top three bytes are 0, which text never
  // holds (a TOML spec whose ninth byte is '{', as in "model = {"). A checkpoint cut short is still one, for
  // its reader to say so.
  return checkpoint_brace(head) && head[5] == 0 && head[6] == 0 && head[7] == 0;
}

bool looks_like_onnx(const std::string& path) {
  const std::string head = file_head(path, 9);
  const bool read = head.size() == 9;
  if (checkpoint_brace(head)) return false;  // a checkpoint's header, whatever the file's name
  if (path.ends_with(".onnx")) return true;
  // A ModelProto as exporters write it: ir_version first (field 1, a small varint), then another of its
  // fields (2 to 8: producer, domain, model_version, doc_string, graph, opset_import; 14: metadata). A
  // 0x08 alone is a CIFAR-10 record of label 8 as well.
  const auto u = [&](int i) { return static_cast<unsigned char>(head[i]); };
  static constexpr unsigned char kNextTags[] = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72};
  return read && u(0) == 0x08 && u(1) >= 1 && u(1) <= 15 &&
         std::find(std::begin(kNextTags), std::end(kNextTags), u(2)) != std::end(kNextTags);
}

bool looks_like_spec(const std::string& path) {
  if (path.ends_with(".toml")) return true;
  const std::string head = file_head(path, 4096);
  return is_text(head) && head.find("format_version") != std::string::npos;
}

void refuse_spec_as_model(const std::string& path, const std::string& command) {
  if (!looks_like_spec(path)) return;
  if (command == "fit --resume")
    throw InputError(path, "is a model spec, not a checkpoint: --resume takes a checkpoint a run wrote",
                     fmt::format("trainer fit {} trains the spec from the start", path));
  throw InputError(
      path,
      fmt::format("is a model spec, not a trained model: trainer {} takes a checkpoint{}", command,
                  command == "predict" ? " or an ONNX model" : ""),
      fmt::format("train it first: trainer fit {} --output-dir DIR, then trainer {} DIR/last.ckpt", path,
                  command));
}

// A dataset given in a checkpoint's place would otherwise read as a damaged checkpoint.
std::optional<std::string> other_file_kind(const std::string& path) {
  const std::string head = file_head(path, 4096);
  // Nothing read (no such file, a directory, an empty file): the checkpoint reader says which.
  if (head.empty() || checkpoint_brace(head)) return std::nullopt;
  if (const char* kind = formats::data_file_kind(head)) return kind;
  return is_text(head) ? "a text file" : "";
}

namespace {

// A checkpoint written before ONNX import read PyTorch's merged initializers apart (an Identity of an
// initializer, now one of its own) holds the merged group as the one initializer the Identities read: each
// copy, its optimizer slots ("name/adam_m") and its best weights start from that tensor's.
void take_untied_copies(const std::string& onnx_bytes, const std::string& path, engine::TrainingState* st) {
  onnx::ModelProto model;
  std::vector<std::pair<std::string, std::string>> untied;
  formats::parse_onnx_model(onnx_bytes, path, &model, &untied);
  std::set<std::string> initializers;  // (a value named source/... that is one is no slot of source's)
  for (const auto& t : model.graph().initializer()) initializers.insert(t.name());
  for (auto* values : {&st->values, &st->best_values}) {
    if (values->empty()) continue;
    std::map<std::string, size_t> at;
    for (size_t i = 0; i < values->size(); ++i) at.emplace((*values)[i].first, i);
    for (const auto& [copy, source] : untied) {
      if (at.count(copy) || !at.count(source)) continue;
      std::vector<std::pair<std::string, engine::Tensor>> added;
      for (const auto& [name, t] : *values)
        if (name == source)
          added.emplace_back(copy, t);
        else if (name.size() > source.size() + 1 && name.rfind(source + "/", 0) == 0 &&
                 !initializers.count(name) && !at.count(copy + name.substr(source.size())))
          added.emplace_back(copy + name.substr(source.size()), t);
      for (auto& [name, t] : added) {
        at.emplace(name, values->size());
        values->emplace_back(std::move(name), std::move(t));
      }
    }
  }
}

}  // namespace

LoadedCheckpoint load_training_checkpoint(const std::string& path) {
  namespace key = formats::checkpoint_key;
  // An ONNX model would otherwise read as a damaged checkpoint.
  if (looks_like_onnx(path))
    throw InputError(path, "is an ONNX model, not a checkpoint of trainer fit",
                     "a checkpoint is what trainer fit writes under --output-dir (DIR/last.ckpt); trainer "
                     "predict runs ONNX models, and trainer fit MODEL.onnx --train TOML trains them");
  if (const std::optional<std::string> kind = other_file_kind(path))
    throw InputError(path,
                     kind->empty()
                         ? "is not a checkpoint of trainer fit (one starts with its header's length, "
                           "then '{'), or a checkpoint damaged at its start"
                         : fmt::format("is {}, not a checkpoint of trainer fit", *kind),
                     "a checkpoint is what trainer fit writes under --output-dir (DIR/last.ckpt)");
  formats::Checkpoint ck = formats::read_checkpoint(path);
  LoadedCheckpoint out;
  out.spec_text = formats::checkpoint_value(ck.metadata, key::kSpec, path);
  out.spec_path = formats::checkpoint_value(ck.metadata, kSpecPathKey, path);
  out.path = path;
  out.plan_signature =
      std::strtoull(formats::checkpoint_value(ck.metadata, key::kPlanSignature, path).c_str(), nullptr, 16);
  out.state = parse_state(formats::checkpoint_value(ck.metadata, kStateKey, path), path);
  if (auto it = ck.metadata.find(kLrScaleKey); it != ck.metadata.end()) {
    char* end = nullptr;
    out.lr_scale = std::strtod(it->second.c_str(), &end);
    if (end == it->second.c_str() || *end || !(out.lr_scale > 0))
      throw InputError(
          path, fmt::format("the checkpoint's {} is '{}', not a positive number", kLrScaleKey, it->second),
          "the file is damaged or was edited");
  }
  std::string prefix = kBestPrefix;
  for (formats::CheckpointTensor& t : ck.tensors) {
    if (t.name == kOnnxModelTensor)
      out.onnx_bytes =
          std::make_shared<const std::string>(static_cast<const char*>(t.value.raw()), t.value.nbytes());
    else if (t.name.rfind(prefix, 0) == 0)
      out.state.best_values.emplace_back(t.name.substr(prefix.size()), std::move(t.value));
    else
      out.state.values.emplace_back(t.name, std::move(t.value));
  }
  if (out.onnx_bytes) take_untied_copies(*out.onnx_bytes, path, &out.state);
  return out;
}

formats::ModelSpec LoadedCheckpoint::spec(const std::vector<std::string>& overrides) const {
  // Places in it are lines of the spec the checkpoint holds (resolved, every setting spelled out), not of the
  // file it was once read from; its data paths still resolve against that file's folder.
  const std::string where = fmt::format("{} (the spec it holds)", path);
  // Another optimizer: the state the checkpoint holds (Adam's moments, ...) is not its state, and the keys
  // the spec spells out for the first do not apply to it. Said as such, before a key of the first is named.
  std::string was, override_text;
  auto another = [&](const std::string& name) {
    return InputError(
        fmt::format("--set {}", override_text),
        fmt::format("the checkpoint's run trains with {}; a resumed run goes on with it, not with {}", was,
                    name),
        fmt::format("its state ({}'s own, saved with the weights) is no other optimizer's: change {}'s keys "
                    "(train.optimizer.learning_rate=...), or train anew",
                    was, was));
  };
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos) continue;
    std::string key = o.substr(0, eq);
    key.erase(0, key.find_first_not_of(" \t"));
    key.erase(key.find_last_not_of(" \t") + 1);
    if (key == "train.optimizer" || key.starts_with("train.optimizer.name")) override_text = o;
  }
  formats::ModelSpec s;
  if (!override_text.empty()) {
    was = formats::parse_model_spec(spec_text, where).train.optimizer.name;
    try {
      s = formats::parse_model_spec(spec_text, where, overrides);
    } catch (const InputError& e) {
      // The checkpoint's keys that the other optimizer does not take: the name it was given, if a known one.
      std::string value = override_text.substr(override_text.find('=') + 1);
      value.erase(0, value.find_first_not_of(" \t\"'"));
      value.erase(value.find_last_not_of(" \t\"'") + 1);
      const std::string name = formats::optimizer_name(value);
      if (!name.empty() && name != was) throw another(name);
      throw;
    }
    if (s.train.optimizer.name != was) throw another(s.train.optimizer.name);
  } else {
    s = formats::parse_model_spec(spec_text, where, overrides);
  }
  // The weights learned the ids of the checkpoint's vocabulary and settings: an override that changes them
  // would feed them other ids.
  if (s.data.text && !overrides.empty()) {
    const formats::ModelSpec held = formats::parse_model_spec(spec_text, where);
    formats::TextSpec a = *s.data.text, b = held.data.text ? *held.data.text : formats::TextSpec{};
    a.pos = b.pos = {};
    if (!(a == b))
      throw InputError("--set",
                       "[data.text] of a checkpoint cannot change: its weights learned the ids its "
                       "vocabulary and settings give",
                       "leave data.text out of --set, or train anew");
  }
  s.path = spec_path;
  // Class weights as the run took them: keyed, so that a checkpoint written when an array could leave the
  // last classes out (at 1) resumes as it trained.
  if (!s.train.class_weight.empty()) s.train.class_weight_by_id = true;
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(spec_path, ec);
  if (!ec) s.base_dir = abs.lexically_normal().parent_path().string();
  if (!s.model.onnx.empty()) {
    if (!onnx_bytes)
      throw InputError(spec_path, "the checkpoint of an ONNX model lacks its embedded model",
                       "the checkpoint was not written by this trainer; train again");
    s.model.onnx_bytes = onnx_bytes;
  }
  return s;
}

std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  for (int line = 1;; ++line) {
    bool ha = static_cast<bool>(std::getline(sa, la)), hb = static_cast<bool>(std::getline(sb, lb));
    if (!ha && !hb) return "";
    if (!ha) la = "(end)";
    if (!hb) lb = "(end)";
    if (la != lb) return fmt::format("line {}: '{}' in the checkpoint, '{}' in the spec", line, la, lb);
  }
}

}  // namespace trainer::cli
