// Shared options and the spec-to-engine glue.
#include "cli/common.h"

#include <fmt/ranges.h>

#include <cmath>

#include "engine/util/error.h"
#include "formats/datasets.h"

namespace trainer::cli {

using engine::DType;
using engine::Shape;

void SpecOptions::add_spec(CLI::App* app) {
  app->add_option("SPEC", path, "Model description: a TOML file (see trainer-model(5))")->required();
}

void SpecOptions::add_overrides(CLI::App* app, bool training) {
  app->add_option("--set", sets,
                  "Override a spec key, validated like the file: --set train.optimizer.learning_rate=3e-4")
      ->type_name("KEY=VALUE");
  app->add_option("--batch-size", batch_size, "Global batch size (same as --set train.batch_size=N)")
      ->check(CLI::PositiveNumber);
  if (!training) return;
  app->add_option("--epochs", epochs, "Epochs to train (same as --set train.epochs=N)")
      ->check(CLI::PositiveNumber);
  app->add_option("--seed", seed, "Seed of initializers, shuffling and dropout (same as --set train.seed=N)");
}

std::vector<std::string> SpecOptions::overrides() const {
  std::vector<std::string> o = sets;
  if (epochs) o.push_back(fmt::format("train.epochs={}", *epochs));
  if (batch_size) o.push_back(fmt::format("train.batch_size={}", *batch_size));
  if (seed) o.push_back(fmt::format("train.seed={}", *seed));
  return o;
}

formats::ModelSpec SpecOptions::load() const { return formats::load_model_spec(path, overrides()); }

void OutputOptions::add(CLI::App* app) {
  app->add_option("--log-format", log_format,
                  "Metrics on stdout as JSON lines (jsonl) or not (text); auto: JSON lines when stdout is "
                  "not a terminal")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}));
  app->add_flag("-q,--quiet", quiet, "Print nothing on stderr but errors");
}

Output OutputOptions::make() const {
  LogFormat f = log_format == "jsonl"  ? LogFormat::jsonl
                : log_format == "text" ? LogFormat::text
                                       : LogFormat::automatic;
  return Output(f, quiet);
}

void DeviceOptions::add(CLI::App* app) {
  app->add_option("--device", device, "Device to run on (cpu)")->check(CLI::IsMember({"cpu"}));
}

std::unique_ptr<engine::Backend> DeviceOptions::make_backend() const {
  return engine::make_cpu_backend();
}

models::BuiltModel build(const formats::ModelSpec& spec, int64_t batch, bool training) {
  models::BuildOptions o;
  o.batch_size = batch;
  o.training = training;
  o.seed = spec.train.seed;
  return models::build_model(spec.model, o);
}

engine::ModelFactory model_factory(const formats::ModelSpec& spec) {
  auto shared = std::make_shared<formats::ModelSpec>(spec);
  return [shared](int64_t batch, bool training) {
    models::BuiltModel m = build(*shared, batch, training);
    engine::ForwardModel fm;
    fm.graph = std::move(m.graph);
    fm.input = m.input;
    fm.output = m.output;
    fm.final_activation = m.final_activation;
    return fm;
  };
}

engine::FitConfig fit_config(const formats::ModelSpec& spec) {
  const formats::TrainSection& t = spec.train;
  engine::FitConfig c;
  c.loss = t.loss;
  c.from_logits = t.from_logits;
  c.metrics = t.metrics;
  c.top_k = t.top_k;
  c.epochs = t.epochs;
  c.batch_size = t.batch_size;
  c.seed = t.seed;
  c.shuffle = spec.data.shuffle;
  const formats::OptimizerSpec& o = t.optimizer;
  c.optimizer.kind = o.name;
  c.optimizer.beta1 = static_cast<float>(o.beta_1);
  c.optimizer.beta2 = static_cast<float>(o.beta_2);
  c.optimizer.epsilon = static_cast<float>(o.epsilon);
  c.optimizer.momentum = static_cast<float>(o.momentum);
  c.optimizer.nesterov = o.nesterov;
  c.optimizer.rho = static_cast<float>(o.rho);
  c.optimizer.weight_decay = static_cast<float>(o.weight_decay);
  c.clipnorm = static_cast<float>(o.clipnorm);
  const formats::ScheduleSpec& s = o.schedule;
  c.schedule.kind = s.kind;
  c.schedule.base = o.learning_rate;
  c.schedule.step_size = s.step_size;
  c.schedule.gamma = s.gamma;
  c.schedule.decay_steps = s.decay_steps;
  c.schedule.decay_rate = s.decay_rate;
  c.schedule.staircase = s.staircase;
  c.schedule.alpha = s.alpha;
  c.schedule.warmup_steps = s.warmup_steps;
  const formats::EarlyStoppingSpec& e = t.early_stopping;
  c.early_stopping.enabled = e.enabled;
  c.early_stopping.monitor = e.monitor;
  c.early_stopping.mode = e.mode;
  c.early_stopping.min_delta = e.min_delta;
  c.early_stopping.patience = e.patience;
  c.early_stopping.restore_best_weights = e.restore_best_weights;
  return c;
}

namespace {

std::string shape_str(const Shape& s) {
  return s.str();
}

// The dataset's samples must hold exactly the model's input values; images stored HWC become CHW.
void check_samples(const engine::data::Dataset& d, const formats::DataSource& src,
                   const models::BuiltModel& m, const formats::ModelSpec& spec,
                   engine::data::BatchFormat* fmt) {
  const Shape& s = d.sample_shape();
  const std::vector<int64_t>& want = spec.model.input.shape;
  int64_t want_n = 1;
  for (int64_t v : want) want_n *= v;
  if (s.numel() != want_n)
    throw InputError(
        src.pos.str(),
        fmt::format("{} holds samples of shape {} ({} values), but the model's input is [{}] ({} values)",
                    d.describe(), shape_str(s), s.numel(), fmt::join(want, ", "), want_n),
        "set [model] input to the data's sample shape");
  if (m.input_channels_last && want.size() == 3 && want[2] > 1) {
    // CHW data (CIFAR-10) is already what the IR takes; plain or HWC data of shape [H, W, C] is converted.
    bool chw = d.layout() == engine::data::Layout::chw ||
               (s.rank() == 3 && s[0] == want[2] && s[1] == want[0] && s[2] == want[1] &&
                d.layout() != engine::data::Layout::hwc);
    fmt->to_chw = !chw;
  }
}

}  // namespace

SpecData open_data(const formats::ModelSpec& spec, const models::BuiltModel& model) {
  SpecData out;
  const formats::DataSection& ds = spec.data;
  if (!ds.train)
    throw InputError(ds.pos.str(), "the spec has no [data.train] source", "add a [data.train] table");
  out.train = formats::open_dataset(*ds.train, spec.base_dir);
  engine::data::BatchFormat& f = out.format;
  f.x_dtype = model.graph.value(model.input).dtype;
  f.scale = ds.scale;
  f.mean = ds.mean;
  f.std = ds.std;
  const std::string& loss = spec.train.loss;
  f.y_dtype = loss == "sparse_categorical_crossentropy" ? DType::i64 : DType::f32;
  if (loss == "sparse_categorical_crossentropy" && !model.output_shape.empty())
    f.num_classes = model.output_shape.back();
  // Token ids feed an Embedding: ids outside its table are bad data, named by sample.
  if (engine::is_integer(f.x_dtype))
    for (const formats::LayerSpec& l : spec.model.layers)
      if (l.type == "Embedding") {
        auto it = l.args.find("input_dim");
        if (it != l.args.end() && std::holds_alternative<int64_t>(it->second.value))
          f.num_tokens = std::get<int64_t>(it->second.value);
        break;
      }
  check_samples(*out.train, *ds.train, model, spec, &f);
  if (ds.validation) {
    out.validation = formats::open_dataset(*ds.validation, spec.base_dir);
    engine::data::BatchFormat vf = f;
    check_samples(*out.validation, *ds.validation, model, spec, &vf);
  } else if (ds.validation_split > 0) {
    int64_t n = out.train->size();
    int64_t held = static_cast<int64_t>(std::floor(n * ds.validation_split));
    if (held < 1 || held >= n)
      throw InputError(ds.pos.str(),
                       fmt::format("validation_split {} of {} samples leaves {} for validation",
                                   ds.validation_split, n, held),
                       "");
    out.validation = engine::data::subset(out.train, n - held, n);
    out.train = engine::data::subset(out.train, 0, n - held);
  }
  if (ds.test) {
    out.test = formats::open_dataset(*ds.test, spec.base_dir);
    engine::data::BatchFormat tf = f;
    check_samples(*out.test, *ds.test, model, spec, &tf);
  }
  // The label kind must fit the loss.
  const Shape& ls = out.train->label_shape();
  if ((loss == "sparse_categorical_crossentropy" || loss == "binary_crossentropy") && ls.numel() != 1)
    throw InputError(ds.train->pos.str(),
                     fmt::format("{} needs one label per sample, {} has labels of shape {}", loss,
                                 out.train->describe(), ls.str()),
                     "use categorical_crossentropy for one-hot labels");
  return out;
}

void rethrow_at_spec_place(const formats::ModelSpec& spec, const InputError& e) {
  const formats::SourcePos* pos = nullptr;
  if (e.where() == "train.loss")
    pos = &spec.train.loss_pos;
  else if (e.where().starts_with("train.early_stopping"))
    pos = &spec.train.early_stopping.pos;
  if (!pos || pos->file.empty()) throw e;
  std::string what = e.what();
  throw InputError(pos->str(), what.substr(std::min(what.size(), e.where().size() + 2)), e.hint());
}

}  // namespace trainer::cli
