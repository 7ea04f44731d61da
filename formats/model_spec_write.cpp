// Writes a resolved ModelSpec back as TOML (checkpoints embed it, so a run describes itself), compares specs
// by their settings, and resolves data paths against the spec's folder.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "formats/model_spec.h"
#include "formats/model_spec_text.h"

namespace trainer::formats {

using spec_text::toml_float;
using spec_text::toml_key;
using spec_text::toml_string;

std::string SourcePos::str() const {
  if (line <= 0) return file;
  return fmt::format("{}:{}:{}", file, line, col);
}

namespace {

std::string value(bool v) {
  return v ? "true" : "false";
}
std::string value(int64_t v) {
  return std::to_string(v);
}
std::string value(uint64_t v) {
  return std::to_string(v);
}
std::string value(double v) {
  return toml_float(v);
}
std::string value(const std::string& v) {
  return toml_string(v);
}

template <typename T>
std::string value(const std::vector<T>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + value(v[i]);
  return out + "]";
}

// An inline table: { key = value, ... }.
template <typename T>
std::string value(const std::map<std::string, T>& m) {
  std::string out;
  for (const auto& [k, v] : m)
    out += fmt::format("{}{} = {}", out.empty() ? "" : ", ", toml_key(k), value(v));
  return "{ " + out + " }";
}

class Writer {
 public:
  template <typename T>
  void kv(std::string_view key, const T& v) {
    out_ += fmt::format("{} = {}\n", toml_key(key), value(v));
  }
  void header(std::string_view h) { out_ += fmt::format("\n{}\n", h); }
  void raw(std::string_view s) { out_ += s; }
  std::string str() && { return std::move(out_); }

 private:
  std::string out_;
};

void write_source(Writer& w, std::string_view name, const DataSource& s) {
  w.header(fmt::format("[data.{}]", name));
  if (!s.format.empty()) w.kv("format", s.format);
  if (s.x_by_input.empty())
    w.kv("x", s.x);
  else
    w.kv("x", s.x_by_input);
  if (!s.y_by_output.empty())
    w.kv("y", s.y_by_output);
  else if (!s.y.empty())
    w.kv("y", s.y);
  if (s.x_keys.empty())
    w.kv("x_key", s.x_key);
  else
    w.kv("x_key", s.x_keys);
  if (s.y_keys.empty())
    w.kv("y_key", s.y_key);
  else
    w.kv("y_key", s.y_keys);
  if (!s.sample_weight.empty()) w.kv("sample_weight", s.sample_weight);
  if (!s.sample_weight_by_output.empty()) w.kv("sample_weight", s.sample_weight_by_output);
  if (!s.sample_weight_key.empty()) w.kv("sample_weight_key", s.sample_weight_key);
  if (!s.sample_weight_keys.empty()) w.kv("sample_weight_key", s.sample_weight_keys);
  w.kv("header", s.header);
  if (!s.label_column.empty()) w.kv("label_column", s.label_column);
  w.kv("limit", s.limit);
  if (!s.class_names.empty()) w.kv("class_names", s.class_names);
}

void clear_positions(ModelSpec& s) {
  s.path.clear();
  s.base_dir.clear();
  s.model.pos = s.model.input.pos = s.model.onnx_pos = s.model.output_pos = {};
  for (InputSpec& in : s.model.more_inputs) in.pos = {};
  s.model.freeze_pos.clear();
  s.model.outputs_pos.clear();
  for (OutputTrainSpec& o : s.train.outputs)
    o.loss_pos = o.from_logits_pos = o.metrics_pos = o.weighted_metrics_pos = {};
  s.model.onnx_bytes.reset();
  s.parallel.pos = {};
  for (LayerSpec& l : s.model.layers) {
    l.pos = l.type_pos = {};
    // Whether the name was written or generated is not a setting (older checkpoints wrote every name).
    l.named = false;
    for (auto& [k, a] : l.args) a.pos = a.key_pos = {};
  }
  s.data.pos = {};
  if (s.data.text) s.data.text->pos = {};
  if (s.data.sequences) s.data.sequences->pos = {};
  for (auto* src : {&s.data.train, &s.data.validation, &s.data.test})
    if (*src) (*src)->pos = {};
  s.train.pos = s.train.loss_pos = s.train.from_logits_pos = s.train.precision_pos = {};
  s.train.metrics_pos = s.train.weighted_metrics_pos = {};
  s.train.optimizer.pos = s.train.optimizer.schedule.pos = s.train.early_stopping.pos =
      s.train.reduce_lr.pos = s.train.class_weight_pos = {};
  s.train.checkpoint.pos = {};
}

}  // namespace

std::string to_toml(const ModelSpec& spec) {
  Writer w;
  w.kv("format_version", static_cast<int64_t>(spec.format_version));

  const ModelSection& m = spec.model;
  w.header("[model]");
  if (!m.outputs.empty()) w.kv("outputs", m.outputs);
  if (!m.onnx.empty()) {
    // The ONNX file defines the input and the layers.
    w.kv("onnx", m.onnx);
    if (!m.freeze.empty()) w.kv("freeze", m.freeze);
    if (!m.output.empty()) w.kv("output", m.output);
  } else {
    if (m.more_inputs.empty() && m.input.name == "input") {
      w.raw(
          fmt::format("input = {{ shape = {}, dtype = {} }}\n", value(m.input.shape), value(m.input.dtype)));
    } else {
      std::vector<const InputSpec*> all = {&m.input};
      for (const InputSpec& in : m.more_inputs) all.push_back(&in);
      for (const InputSpec* in : all) {
        w.header("[[model.inputs]]");
        w.kv("name", in->name);
        w.kv("shape", in->shape);
        w.kv("dtype", in->dtype);
      }
    }
  }
  for (const LayerSpec& l : m.layers) {
    w.header("[[model.layers]]");
    w.kv("type", l.type);
    // A generated name is generated again when the text is read: left out, it stays free to change (on top
    // of an ONNX model, to the next name that no value of the model holds).
    if (l.named) w.kv("name", l.name);
    if (!l.inputs.empty()) w.kv("inputs", l.inputs);
    // A shared layer's arguments are its layer's, written there.
    if (!l.shares.empty()) w.kv("shares", l.shares);
    if (l.shares.empty())
      for (const auto& [k, a] : l.args) std::visit([&, &key = k](const auto& v) { w.kv(key, v); }, a.value);
  }

  // The reader requires [data.train] in a [data] table and a loss in a [train] table, so the sections are
  // written when they hold those.
  const DataSection& d = spec.data;
  if (d.train) {
    w.header("[data]");
    w.kv("validation_split", d.validation_split);
    w.kv("scale", d.scale);
    if (!d.mean.empty()) w.kv("mean", d.mean);
    if (!d.std.empty()) w.kv("std", d.std);
    w.kv("shuffle", d.shuffle);
    if (d.text) {
      w.header("[data.text]");
      w.kv("max_tokens", d.text->max_tokens);
      w.kv("output_sequence_length", d.text->output_sequence_length);
      w.kv("standardize", d.text->standardize);
      w.kv("padding", d.text->padding);
      w.kv("truncating", d.text->truncating);
      if (!d.text->vocabulary.empty()) w.kv("vocabulary", d.text->vocabulary);
    }
    if (d.sequences) {
      const SequenceSpec& q = *d.sequences;
      w.header("[data.sequences]");
      if (q.maxlen > 0) w.kv("maxlen", q.maxlen);
      w.kv("padding", q.padding);
      w.kv("truncating", q.truncating);
      w.kv("value", q.value);
      w.kv("load_data", q.load_data);
      if (q.load_data) {
        if (q.num_words > 0) w.kv("num_words", q.num_words);
        w.kv("skip_top", q.skip_top);
        for (auto [key, v] : {std::pair{"start_char", q.start_char}, std::pair{"oov_char", q.oov_char}})
          if (v < 0)
            w.kv(key, false);  // Keras's None
          else
            w.kv(key, v);
        w.kv("index_from", q.index_from);
      }
    }
    write_source(w, "train", *d.train);
    if (d.validation) write_source(w, "validation", *d.validation);
    if (d.test) write_source(w, "test", *d.test);
  }

  const TrainSection& t = spec.train;
  if (!t.loss.empty()) {
    w.header("[train]");
    // The settings the metrics' calls gave (top_k is a key of its own), in each call that takes them.
    auto with_calls = [&](std::vector<std::string> ms, const engine::MetricOptions& mo) {
      std::vector<std::string> iou;
      if (mo.iou_classes > 0) iou.push_back(fmt::format("num_classes={}", mo.iou_classes));
      const std::string targets = fmt::format("target_class_ids=[{}]", fmt::join(mo.iou_targets, ", "));
      for (std::string& m : ms) {
        std::vector<std::string> args;
        if (m == "mean_iou" || m == "iou" || m == "one_hot_iou" || m == "one_hot_mean_iou") args = iou;
        if ((m == "iou" || m == "one_hot_iou" || m == "binary_iou") && !mo.iou_targets.empty())
          args.push_back(targets);
        if (m == "binary_iou" && mo.iou_threshold != 0.5)
          args.push_back(fmt::format("threshold={}", toml_float(mo.iou_threshold)));
        if ((m == "mean_iou" || m == "iou" || m == "one_hot_iou" || m == "one_hot_mean_iou") && mo.iou_ignore)
          args.push_back(fmt::format("ignore_class={}", *mo.iou_ignore));
        if ((m == "f1_score" || m == "fbeta_score") && !mo.f1_average.empty())
          args.push_back(fmt::format("average='{}'", mo.f1_average));
        if (m == "fbeta_score" && mo.beta != 1) args.push_back(fmt::format("beta={}", toml_float(mo.beta)));
        // (Keras's confusion metrics call it thresholds, the others threshold)
        const bool counts =
            m == "precision" || m == "recall" || m.ends_with("_positives") || m.ends_with("_negatives");
        if (mo.threshold && (counts || m == "binary_accuracy" || m == "f1_score" || m == "fbeta_score"))
          args.push_back(fmt::format("threshold{}={}", counts ? "s" : "", toml_float(*mo.threshold)));
        if ((m == "precision" || m == "recall") && mo.top_k)
          args.push_back(fmt::format("top_k={}", *mo.top_k));
        if ((m == "precision" || m == "recall") && mo.class_id)
          args.push_back(fmt::format("class_id={}", *mo.class_id));
        if (m == "auc" || m == "pr_auc") {
          if (mo.auc_multi_label) args.push_back("multi_label=True");
          if (mo.auc_num_labels > 0) args.push_back(fmt::format("num_labels={}", mo.auc_num_labels));
          if (m == "pr_auc" && !args.empty()) m = "auc", args.insert(args.begin(), "curve='PR'");
        }
        if (auto it = mo.at.find(m); it != mo.at.end())
          args.push_back(fmt::format("{}", toml_float(it->second)));
        if (!args.empty()) m = fmt::format("{}({})", m, fmt::join(args, ", "));
      }
      return ms;
    };
    bool ranked = false;
    for (const auto* list : {&t.metrics, &t.weighted_metrics})
      for (const std::string& m : *list) ranked = ranked || m.find("top_k") != std::string::npos;
    if (t.outputs.empty()) {
      w.kv("loss", loss_call_text(t.loss, t.loss_options));
      w.kv("from_logits", t.from_logits);
      if (t.label_smoothing != 0) w.kv("label_smoothing", t.label_smoothing);
      w.kv("metrics", with_calls(t.metrics, t.metric_options));
      if (!t.weighted_metrics.empty())
        w.kv("weighted_metrics", with_calls(t.weighted_metrics, t.metric_options));
    } else {
      // Each setting as a table by output name, as Keras's compile takes dicts.
      std::map<std::string, std::string> loss;
      std::map<std::string, bool> from_logits;
      std::map<std::string, double> smoothing, weights;
      std::map<std::string, std::vector<std::string>> metrics, weighted;
      for (const OutputTrainSpec& o : t.outputs) {
        loss[o.name] = loss_call_text(o.loss, o.loss_options);
        from_logits[o.name] = o.from_logits;
        if (o.label_smoothing != 0) smoothing[o.name] = o.label_smoothing;
        weights[o.name] = o.loss_weight;
        metrics[o.name] = with_calls(o.metrics, o.metric_options);
        if (!o.weighted_metrics.empty()) weighted[o.name] = with_calls(o.weighted_metrics, o.metric_options);
        for (const auto* list : {&o.metrics, &o.weighted_metrics})
          for (const std::string& m : *list) ranked = ranked || m.find("top_k") != std::string::npos;
      }
      w.kv("loss", loss);
      w.kv("from_logits", from_logits);
      if (!smoothing.empty()) w.kv("label_smoothing", smoothing);
      w.kv("metrics", metrics);
      if (!weighted.empty()) w.kv("weighted_metrics", weighted);
      w.kv("loss_weights", weights);
    }
    if (ranked) w.kv("top_k", t.top_k);
    if (!t.class_weight.empty() && t.class_weight_by_id) {
      std::map<std::string, double> by_id;
      for (size_t c = 0; c < t.class_weight.size(); ++c) by_id[std::to_string(c)] = t.class_weight[c];
      w.kv("class_weight", by_id);
    } else if (!t.class_weight.empty()) {
      w.kv("class_weight", t.class_weight);
    }
    w.kv("epochs", t.epochs);
    if (t.validation_freq != 1) w.kv("validation_freq", t.validation_freq);
    if (t.steps_per_epoch > 0) w.kv("steps_per_epoch", t.steps_per_epoch);
    if (t.validation_steps > 0) w.kv("validation_steps", t.validation_steps);
    w.kv("batch_size", t.batch_size);
    w.kv("seed", t.seed);
    w.kv("precision", t.precision);

    // Only the keys that apply to the optimizer and the schedule: the reader rejects the others.
    const OptimizerSpec& o = t.optimizer;
    w.header("[train.optimizer]");
    w.kv("name", o.name);
    if (o.schedule.kind != "piecewise_constant")
      w.kv("learning_rate", o.learning_rate);  // its values are the rates
    if (o.name == "adam" || o.name == "adamw" || o.name == "adamax" || o.name == "nadam" ||
        o.name == "lion") {
      w.kv("beta_1", o.beta_1);
      w.kv("beta_2", o.beta_2);
    }
    if (o.name == "sgd" || o.name == "rmsprop") w.kv("momentum", o.momentum);
    if (o.name == "sgd") w.kv("nesterov", o.nesterov);
    // Only when set, so that a checkpoint that does not use them reads in versions before them.
    if (o.amsgrad) w.kv("amsgrad", true);
    if (o.centered) w.kv("centered", true);
    if (o.name == "rmsprop" || o.name == "adadelta") w.kv("rho", o.rho);
    if (o.name == "adagrad") w.kv("initial_accumulator_value", o.initial_accumulator_value);
    if (o.name != "sgd" && o.name != "lion") w.kv("epsilon", o.epsilon);
    w.kv("weight_decay", o.weight_decay);
    w.kv("clipnorm", o.clipnorm);
    w.kv("global_clipnorm", o.global_clipnorm);
    w.kv("clipvalue", o.clipvalue);
    if (o.gradient_accumulation_steps != 1)
      w.kv("gradient_accumulation_steps", o.gradient_accumulation_steps);
    if (o.use_ema) {
      w.kv("use_ema", true);
      w.kv("ema_momentum", o.ema_momentum);
      w.kv("ema_overwrite_frequency", o.ema_overwrite_frequency);
    }

    const ScheduleSpec& s = o.schedule;
    w.header("[train.optimizer.schedule]");
    w.kv("kind", s.kind);
    if (s.kind == "step") {
      w.kv("step_size", s.step_size);
      w.kv("gamma", s.gamma);
    }
    // A cosine without decay_steps spans the whole run: 0 is "not given", which the reader would refuse.
    if (s.kind == "exponential" || (s.kind == "cosine" && s.decay_steps > 0))
      w.kv("decay_steps", s.decay_steps);
    if (s.kind == "exponential") {
      w.kv("decay_rate", s.decay_rate);
      w.kv("staircase", s.staircase);
    }
    if (s.kind == "cosine") w.kv("alpha", s.alpha);
    if (s.kind == "polynomial" || s.kind == "inverse_time") w.kv("decay_steps", s.decay_steps);
    if (s.kind == "polynomial") {
      w.kv("end_learning_rate", s.end_learning_rate);
      w.kv("power", s.power);
      w.kv("cycle", s.cycle);
    }
    if (s.kind == "inverse_time") {
      w.kv("decay_rate", s.decay_rate);
      w.kv("staircase", s.staircase);
    }
    if (s.kind == "cosine_restarts") {
      w.kv("first_decay_steps", s.first_decay_steps);
      w.kv("t_mul", s.t_mul);
      w.kv("m_mul", s.m_mul);
      w.kv("alpha", s.alpha);
    }
    if (s.kind == "piecewise_constant") {
      w.kv("boundaries", s.boundaries);
      w.kv("values", s.values);
    }
    w.kv("warmup_steps", s.warmup_steps);
    if (s.warmup_target) w.kv("warmup_target", *s.warmup_target);

    const EarlyStoppingSpec& e = t.early_stopping;
    if (e.enabled) {
      w.header("[train.early_stopping]");
      w.kv("monitor", e.monitor);
      w.kv("mode", e.mode);
      w.kv("min_delta", e.min_delta);
      w.kv("patience", e.patience);
      w.kv("restore_best_weights", e.restore_best_weights);
      // Only when set, so that a spec without them reads in versions before them.
      if (e.baseline) w.kv("baseline", *e.baseline);
      if (e.start_from_epoch > 0) w.kv("start_from_epoch", e.start_from_epoch);
    }
    const ReduceLrSpec& p = t.reduce_lr;
    if (p.enabled) {
      w.header("[train.reduce_lr_on_plateau]");
      w.kv("monitor", p.monitor);
      w.kv("factor", p.factor);
      w.kv("patience", p.patience);
      w.kv("mode", p.mode);
      w.kv("min_delta", p.min_delta);
      w.kv("cooldown", p.cooldown);
      w.kv("min_lr", p.min_lr);
    }
    const CheckpointSpec& c = t.checkpoint;
    if (c.enabled) {
      w.header("[train.checkpoint]");
      w.kv("every_epochs", c.every_epochs);
      w.kv("every_steps", c.every_steps);
      w.kv("keep_last", c.keep_last);
      if (!c.save_best.empty()) w.kv("save_best", c.save_best);
      w.kv("mode", c.mode);
    }
  }
  w.header("[parallel]");
  w.kv("bucket_mb", spec.parallel.bucket_mb);
  w.kv("shard_optimizer", spec.parallel.shard_optimizer);
  w.kv("sync_batch_norm", spec.parallel.sync_batch_norm);
  return std::move(w).str();
}

bool same_settings(const ModelSpec& a, const ModelSpec& b) {
  ModelSpec x = a, y = b;
  clear_positions(x);
  clear_positions(y);
  // The same weights given as an array or keyed by class id are the same setting.
  x.train.class_weight_by_id = y.train.class_weight_by_id = false;
  return x == y;
}

std::string resolve_data_path(const ModelSpec& spec, const std::string& path) {
  const std::filesystem::path p(path);
  if (p.is_absolute() || spec.base_dir.empty()) return path;
  return (std::filesystem::path(spec.base_dir) / p).lexically_normal().string();
}

}  // namespace trainer::formats
