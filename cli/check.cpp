// trainer check: parses the spec (or an ONNX model with --train), builds the model and plans a training step,
// running nothing. Exit 0 or 2.
#include "cli/common.h"

namespace trainer::cli {

Command add_check_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("check", "Validate a spec: parse, build and plan it, run nothing");
  auto spec = std::make_shared<SpecOptions>();
  auto quiet = std::make_shared<bool>(false);
  spec->add_spec(cmd);
  spec->add_overrides(cmd, false);
  cmd->add_flag("-q,--quiet", *quiet, "Print nothing when the spec is valid");
  auto run = [=]() -> int {
    formats::ModelSpec s = spec->load();
    // The model's own errors first. Its weights stay uninitialized: planning needs their shapes alone.
    models::BuiltModel m = build(s, s.train.batch_size, true, false);
    require_training(s);
    check_output_and_loss(s, m);
    auto backend = engine::make_cpu_backend();
    engine::FitConfig cfg = fit_config(s);
    size_t bytes = at_spec_places(s, [&] {
      return engine::planned_training_bytes(model_factory(s), cfg, s.train.batch_size, *backend);
    });
    int64_t params = 0;
    for (const models::LayerInfo& l : m.layers) params += l.params;
    if (!*quiet)
      eprint("{}: ok · {} layers · {} parameters · training step planned in {:.2f} MiB at batch {}\n",
             spec->onnx() ? fmt::format("{} with {}", spec->path, spec->train_toml) : spec->path,
             m.layers.size(), params, bytes / 1048576.0, s.train.batch_size);
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
