// trainer summary: the layer table of a spec's model (or of an ONNX model, alone or with --train), its
// parameters, FLOPs per sample, and the planned memory of a training step at the batch size.
#include <fmt/ranges.h>

#include "cli/common.h"
#include "engine/ops/sync_batch_norm.h"

namespace trainer::cli {

namespace {

// A dimension of k times the batch (LayerInfo::output_shape's -k) is N or kN, as in (1, N, 128).
std::string shape_text(const std::vector<int64_t>& s) {
  std::vector<std::string> dims;
  for (int64_t d : s) dims.push_back(d >= 0 ? std::to_string(d) : d == -1 ? "N" : fmt::format("{}N", -d));
  return fmt::format("({})", fmt::join(dims, ", "));
}

// In JSON a dimension that follows the batch is null.
std::string shape_json(const std::vector<int64_t>& s) {
  std::vector<std::string> dims;
  for (int64_t d : s) dims.push_back(d >= 0 ? std::to_string(d) : "null");
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

std::string grouped(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

}  // namespace

Command add_summary_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("summary", "Print the model's layers, parameters, FLOPs and planned memory");
  auto spec = std::make_shared<SpecOptions>();
  auto json = std::make_shared<bool>(false);
  auto devices = std::make_shared<int>(1);
  spec->model_only = true;
  spec->add_spec(cmd);
  spec->add_overrides(cmd, false);
  cmd->add_flag("--json", *json, "Print one JSON object instead of the table");
  cmd->add_option("--devices", *devices,
                  "Replicas of a data-parallel run: the memory one of them plans for its rows of the batch, "
                  "and the optimizer state it holds with [parallel] shard_optimizer")
      ->check(whole_number(1, 1024));
  auto run = [=]() -> int {
    // --batch-size sets the batch of the table and the planned memory, also for a model without [train]
    // (where --set train.batch_size would need a loss).
    SpecOptions without_batch = *spec;
    without_batch.batch_size.reset();
    formats::ModelSpec s = without_batch.load();
    if (spec->batch_size) s.train.batch_size = *spec->batch_size;
    // An ONNX model alone is shown as the file has it: at the batch size its inputs fix, if they do (its
    // shape constants may hold it), with all its outputs.
    if (!s.model.onnx.empty() && s.train.loss.empty()) {
      const OnnxModelFacts facts = onnx_model_facts(s);
      if (facts.fixed_batch > 0 && !spec->batch_size) s.train.batch_size = facts.fixed_batch;
      if (s.model.layers.empty() && s.model.output.empty() && s.model.outputs.empty() &&
          facts.outputs.size() > 1)
        s.model.outputs = facts.outputs;
    }
    int64_t batch = s.train.batch_size;
    // The training model when there is training to plan; an ONNX model alone as it runs for predictions (its
    // BatchNormalization's running statistics need not be trainable to be shown).
    const bool alone = !s.model.onnx.empty() && s.train.loss.empty();
    // Shapes are all the table and the memory need: the weights are left uninitialized (zeros that cost
    // nothing), so a model of billions of parameters is summarized in a moment.
    models::BuiltModel m = build(s, batch, !alone, false);
    mark_onnx_batch_axes(m, s, batch, !alone);
    // The memory of a training step needs the training settings; a model alone has its layers only.
    const bool training = !s.train.loss.empty();
    size_t bytes = 0;
    engine::OptimizerStateBytes state;
    if (training) {
      auto backend = engine::make_cpu_backend();
      bytes = at_spec_places(s, [&] {
        return engine::planned_training_bytes(model_factory(s), fit_config(s), batch, *backend, *devices);
      });
      state = at_spec_places(
          s, [&] { return engine::optimizer_state_bytes(model_factory(s), fit_config(s), batch, *devices); });
    }
    const int64_t per_replica = (batch + *devices - 1) / *devices;
    auto when_training = [&](auto v) { return training ? std::to_string(v) : std::string("null"); };
    // The model's inputs: name, per-sample shape as the data gives it (Keras's for a spec), dtype.
    struct InputRow {
      std::string name, dtype;
      std::vector<int64_t> shape;
    };
    std::vector<InputRow> inputs;
    const std::vector<std::string> names = input_names(m);
    for (size_t k = 0; k < names.size(); ++k) {
      const engine::Value& v = m.graph.value(k == 0 ? m.input : m.more_inputs[k - 1].value);
      InputRow r{names[k], "", {}};
      if (s.model.onnx.empty()) {
        const formats::InputSpec& in = k == 0 ? s.model.input : s.model.more_inputs.at(k - 1);
        r.shape = in.shape;
        r.dtype = in.dtype;
      } else {
        r.shape.assign(v.shape.dims().begin() + 1, v.shape.dims().end());
        r.dtype = v.dtype == engine::DType::i64   ? "int64"
                  : v.dtype == engine::DType::i32 ? "int32"
                                                  : "float32";
      }
      inputs.push_back(std::move(r));
    }
    // A model of several outputs: each output's layer and per-sample shape.
    std::vector<std::pair<std::string, std::vector<int64_t>>> outputs;
    if (!m.output_name.empty()) {
      outputs.emplace_back(m.output_name, m.output_shape);
      for (const models::BuiltModel::Output& o : m.more_outputs) outputs.emplace_back(o.name, o.shape);
    }
    // Batch normalizations in training mode, and those a data-parallel run synchronizes.
    const int64_t batch_norms =
        static_cast<int64_t>(engine::ops::training_batch_norms(m.graph).size()) + m.masked_norms;
    const int64_t synchronized_norms =
        s.parallel.sync_batch_norm
            ? batch_norms
            : static_cast<int64_t>(m.synchronized_norms.size()) + m.synchronized_masked_norms;
    int64_t total = 0, trainable = 0, flops = 0;
    for (const models::LayerInfo& l : m.layers) {
      total += l.params;
      trainable += l.trainable_params;
      flops += l.flops_per_sample;
    }
    if (*json) {
      std::string layers;
      for (const models::LayerInfo& l : m.layers) {
        if (!layers.empty()) layers += ", ";
        layers += json_object({{"name", json_string(l.name)},
                               {"type", json_string(l.type)},
                               {"output_shape", shape_json(l.output_shape)},
                               {"params", std::to_string(l.params)},
                               {"flops_per_sample", std::to_string(l.flops_per_sample)}});
      }
      std::string input_list;
      for (const InputRow& r : inputs) {
        if (!input_list.empty()) input_list += ", ";
        input_list += json_object({{"name", json_string(r.name)},
                                   {"shape", fmt::format("[{}]", fmt::join(r.shape, ", "))},
                                   {"dtype", json_string(r.dtype)}});
      }
      std::string output_list;
      for (const auto& [name, shape] : outputs) {
        if (!output_list.empty()) output_list += ", ";
        output_list += json_object(
            {{"name", json_string(name)}, {"shape", fmt::format("[{}]", fmt::join(shape, ", "))}});
      }
      fmt::print("{}\n",
                 json_object({{"inputs", "[" + input_list + "]"},
                              {"outputs", "[" + output_list + "]"},
                              {"layers", "[" + layers + "]"},
                              {"total_params", std::to_string(total)},
                              {"trainable_params", std::to_string(trainable)},
                              {"flops_per_sample", std::to_string(flops)},
                              {"batch_size", when_training(batch)},
                              {"planned_bytes", when_training(bytes)},
                              {"batch_per_replica", when_training(per_replica)},
                              {"optimizer_state_bytes", when_training(state.total)},
                              {"replicas", std::to_string(*devices)},
                              {"optimizer_state_bytes_per_replica", when_training(state.per_replica)},
                              {"batch_norm_layers", std::to_string(batch_norms)},
                              {"synchronized_batch_norm_layers", std::to_string(synchronized_norms)}}));
      return 0;
    }
    if (inputs.size() > 1) {
      std::vector<std::string> parts;
      for (const InputRow& r : inputs)
        parts.push_back(fmt::format("{} {} {}", r.name, shape_text(r.shape), r.dtype));
      fmt::print("Inputs: {}\n", fmt::join(parts, " · "));
    }
    if (!outputs.empty()) {
      std::vector<std::string> parts;
      for (const auto& [name, shape] : outputs)
        parts.push_back(fmt::format("{} {}", name, shape_text(shape)));
      fmt::print("Outputs: {}\n", fmt::join(parts, " · "));
    }
    size_t wn = 5, wt = 4, ws = 12;
    for (const models::LayerInfo& l : m.layers) {
      wn = std::max(wn, l.name.size());
      wt = std::max(wt, l.type.size());
      ws = std::max(ws, shape_text(l.output_shape).size());
    }
    fmt::print("{:<{}}  {:<{}}  {:<{}}  {:>12}  {:>14}\n", "Layer", wn, "Type", wt, "Output shape", ws,
               "Params", "FLOPs/sample");
    fmt::print("{}\n", std::string(wn + wt + ws + 34, '-'));
    for (const models::LayerInfo& l : m.layers)
      fmt::print("{:<{}}  {:<{}}  {:<{}}  {:>12}  {:>14}\n", l.name, wn, l.type, wt,
                 shape_text(l.output_shape), ws, grouped(l.params), grouped(l.flops_per_sample));
    fmt::print("{}\n", std::string(wn + wt + ws + 34, '-'));
    fmt::print("Total params: {} ({} trainable, {} non-trainable)\n", grouped(total), grouped(trainable),
               grouped(total - trainable));
    fmt::print("FLOPs per sample (forward): {}\n", grouped(flops));
    if (!training) {
      fmt::print("Planned memory: the spec has no [train] section{}\n",
                 spec->onnx() ? " (give --train TOML)" : "");
      return 0;
    }
    if (*devices > 1)
      fmt::print(
          "Planned memory of a training step at batch {} ({} rows per replica{}): {:.2f} MiB per replica\n",
          batch, per_replica, s.parallel.shard_optimizer ? ", its shard of the optimizer state" : "",
          bytes / 1048576.0);
    else
      fmt::print("Planned memory of a training step at batch {}: {:.2f} MiB per device\n", batch,
                 bytes / 1048576.0);
    if (*devices > 1 && s.parallel.shard_optimizer)
      fmt::print("Optimizer state: {:.2f} MiB, sharded over {} replicas: {:.2f} MiB per replica\n",
                 state.total / 1048576.0, *devices, state.per_replica / 1048576.0);
    else
      fmt::print("Optimizer state: {:.2f} MiB per replica{}\n", state.total / 1048576.0,
                 *devices > 1 ? " ([parallel] shard_optimizer = true divides it among the replicas)" : "");
    if (*devices > 1 && batch_norms > 0) {
      if (synchronized_norms == batch_norms)
        fmt::print(
            "BatchNormalization: {} synchronized across the replicas (the global batch's statistics; "
            "a few small collectives each per step)\n",
            batch_norms == 1 ? "1 layer" : fmt::format("{} layers", batch_norms));
      else
        fmt::print(
            "BatchNormalization: {} of {} normalize each replica's own rows (synchronized = true, or "
            "[parallel] sync_batch_norm = true, for the global batch's statistics)\n",
            batch_norms - synchronized_norms, batch_norms);
    }
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
