// trainer evaluate: a checkpoint's loss and metrics on one of its spec's datasets (every sample counted), as
// one JSON object on stdout and a line for people on stderr.
#include <fmt/ranges.h>

#include <chrono>
#include <csignal>
#include <optional>
#include <set>

#include "cli/checkpoint_io.h"
#include "cli/common.h"
#include "engine/util/error.h"
#include "formats/data_text.h"

namespace trainer::cli {

int64_t load_trained_values(engine::Graph& g,
                            const std::vector<std::pair<std::string, engine::Tensor>>& values,
                            const std::string& ckpt) {
  std::set<std::string> held;
  std::string foreign;  // a value of the checkpoint that the model does not have
  int64_t loaded = 0;
  for (const auto& [name, t] : values) {
    held.insert(name);
    engine::ValueId v = g.find(name);
    if (v == engine::kNoValue) {
      // Optimizer state ("dense/kernel/adam_m") has no place in the forward graph; anything else means that
      // the model is not the checkpoint's (a --set that changed it).
      const size_t slash = name.rfind('/');
      const engine::ValueId of =
          slash == std::string::npos ? engine::kNoValue : g.find(name.substr(0, slash));
      if ((of == engine::kNoValue || g.value(of).kind != engine::ValueKind::parameter) && foreign.empty())
        foreign = name;
      continue;
    }
    engine::Tensor* init = g.mutable_initializer(v);
    if (!init || init->shape() != t.shape() || init->dtype() != t.dtype())
      throw InputError(
          ckpt, fmt::format("'{}' in the checkpoint does not fit the model", name),
          "the checkpoint and the model disagree: a --set that changes the model cannot read it, "
          "or else the file is damaged or was edited");
    *init = t;
    ++loaded;
  }
  for (engine::ValueId v = 0; v < g.num_values(); ++v) {
    const engine::Value& val = g.value(v);
    if ((val.kind == engine::ValueKind::parameter || val.kind == engine::ValueKind::state) &&
        !held.count(val.name))
      throw InputError(
          ckpt, fmt::format("the checkpoint has no '{}', which its model has", val.name),
          "the checkpoint and the model disagree: a --set that changes the model cannot read it, "
          "or else the file is damaged or was edited");
  }
  if (!foreign.empty())
    throw InputError(ckpt, fmt::format("the checkpoint holds '{}', which the model does not have", foreign),
                     "the model differs from the checkpoint's: a --set changed it, or the file was edited");
  return loaded;
}

engine::ModelFactory trained_model_factory(const formats::ModelSpec& spec,
                                           std::vector<std::pair<std::string, engine::Tensor>> values,
                                           const std::string& ckpt) {
  auto base = model_factory(spec);
  auto weights =
      std::make_shared<const std::vector<std::pair<std::string, engine::Tensor>>>(std::move(values));
  // Every weight and state comes from the checkpoint (load_trained_values requires them all): none is drawn.
  return [base, weights, ckpt](int64_t batch, bool training, bool) {
    engine::ForwardModel fm = base(batch, training, false);
    load_trained_values(fm.graph, *weights, ckpt);
    return fm;
  };
}

namespace {

constexpr const char* kSplits[] = {"validation", "test", "train"};

}  // namespace

Command add_evaluate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("evaluate", "Loss and metrics of a checkpoint on a dataset, as JSON");
  auto ckpt = std::make_shared<std::string>();
  auto split = std::make_shared<std::string>();
  auto batch = std::make_shared<int64_t>(0);
  auto sets = std::make_shared<std::vector<std::string>>();
  auto quiet = std::make_shared<bool>(false);
  auto device = std::make_shared<DeviceOptions>();
  cmd->add_option("CKPT", *ckpt, "A checkpoint written by trainer fit")->required();
  cmd->add_option("--data", *split,
                  "The spec's dataset to evaluate on: validation (the default when the spec has one), test "
                  "or train")
      ->check(CLI::IsMember({"validation", "test", "train"}));
  cmd->add_option("--batch-size", *batch, "Samples per step (default: the spec's train.batch_size)")
      ->check(whole_number(1));
  cmd->add_option("--set", *sets,
                  "Override a key of the checkpoint's spec, e.g. point a dataset elsewhere: "
                  "--set data.test.x=t10k-images-idx3-ubyte.gz")
      ->type_name("KEY=VALUE");
  cmd->add_flag("-q,--quiet", *quiet, "Print nothing on stderr but errors");
  device->add(cmd);
  auto run = [=]() -> int {
    auto t0 = std::chrono::steady_clock::now();
    refuse_spec_as_model(*ckpt, "evaluate");
    if (looks_like_onnx(*ckpt))
      throw InputError(
          *ckpt, "evaluate needs a checkpoint: its spec names the data, the loss and the metrics",
          "evaluate the checkpoint the model was exported from; trainer predict runs ONNX models");
    LoadedCheckpoint ck = load_training_checkpoint(*ckpt);
    formats::ModelSpec spec = ck.spec(*sets);
    if (*batch > 0) spec.train.batch_size = *batch;
    models::BuiltModel probe = build(spec, probe_batch(spec), false, false);  // shapes alone
    std::string name = *split;
    const bool held_out = spec.data.validation_split > 0 && !spec.data.validation;
    if (name.empty())
      name = spec.data.validation || held_out ? "validation" : spec.data.test ? "test" : "train";
    // A split with files of its own is read alone, as the data opened for training: evaluating on the test
    // files needs neither the training nor the validation files. (A validation split held out of the
    // training data needs the training data.)
    std::optional<formats::DataSource>& own = name == "test" ? spec.data.test : spec.data.validation;
    const bool alone = name != "train" && own.has_value();
    std::vector<std::string> classes;  // of the training folders, which a folder source read alone takes
    bool named = false;
    if (alone) {
      const formats::DataSource& trained = *spec.data.train;
      if (own->format == trained.format && (own->format == "text" || own->format == "images")) {
        classes = formats::source_classes(trained, spec.base_dir);
        named = !trained.class_names.empty();
      }
      spec.data.train = own;
      spec.data.validation.reset();
      spec.data.test.reset();
      spec.data.validation_split = 0;
    }
    SpecData data = open_data(spec, probe, classes, named);
    std::shared_ptr<const engine::data::Dataset> ds = alone                  ? data.train
                                                      : name == "validation" ? data.validation
                                                      : name == "test"       ? data.test
                                                                             : data.train;
    if (!ds)
      throw InputError(*ckpt, fmt::format("the checkpoint's spec has no {} data", name),
                       fmt::format("choose another with --data ({}), or name files with --set data.{}.x=... "
                                   "--set data.{}.y=...",
                                   fmt::join(kSplits, ", "), name, name));
    if (ds->size() == 0)
      throw InputError(
          ds->describe(), "holds no samples",
          fmt::format("choose another with --data ({}), or files with samples", fmt::join(kSplits, ", ")));
    engine::FitConfig cfg = fit_config(spec);
    cfg.sample_weight_shapes = data.sample_weight_shapes;
    DeviceOptions::Opened opened = device->open(spec, *quiet);
    if (!opened.more.empty())
      throw InputError(
          "--gpus",
          fmt::format("{} GPUs were asked for, and this command runs on one", opened.devices.size()),
          "give one: --gpus 1");
    auto& backend = opened.backend;
    cfg.precision = opened.precision;
    engine::Logs logs = at_spec_places(spec, [&] {
      const engine::data::BatchFormat& format = name == "validation" ? data.format.of_validation()
                                                : name == "test"     ? data.format.of_test()
                                                                     : data.format;
      return engine::evaluate(trained_model_factory(spec, std::move(ck.state.values), *ckpt), ds, format, cfg,
                              *backend);
    });
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Led by its event, as fit's and bench's JSON lines are: one jq filter reads them all.
    std::vector<std::pair<std::string, std::string>> f = {{"event", json_string("evaluate")},
                                                          {"data", json_string(name)},
                                                          {"samples", std::to_string(ds->size())}};
    std::string text;
    for (const auto& [k, v] : logs) {
      f.emplace_back(k, json_number(v));
      text += fmt::format(" · {} {}", k, log_number(v));
    }
    f.emplace_back("seconds", json_number(seconds));
    // A reader that closed the pipe early (`| true`) is no failure, as for predict.
    std::signal(SIGPIPE, SIG_IGN);
    stdout_line(json_object(f));
    if (!*quiet)
      eprint("{} on {} data ({}, {} samples){} · {:.1f}s\n", *ckpt, name, ds->describe(), ds->size(), text,
             seconds);
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
