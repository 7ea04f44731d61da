// trainer export: a checkpoint's model as an ONNX inference graph (dropout removed, batch normalization in
// its inference form, the final activation kept), with the trained weights as initializers named like the
// parameters.
#include <fmt/ranges.h>
#include <onnx/onnx_pb.h>

#include "cli/checkpoint_io.h"
#include "cli/common.h"
#include "engine/util/error.h"
#include "formats/onnx_export.h"
#include "formats/onnx_import.h"

namespace trainer::cli {

Command add_export_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "Write a checkpoint's model as ONNX for inference");
  auto ckpt = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto opset = std::make_shared<int>(formats::kDefaultOnnxExportOpset);
  auto quiet = std::make_shared<bool>(false);
  cmd->add_option("CKPT", *ckpt, "A checkpoint written by trainer fit")->required();
  cmd->add_option("-o,--output", *out, "The ONNX file to write")->required()->type_name("FILE");
  cmd->add_option("--opset", *opset, "ONNX opset of the default domain")
      ->check(whole_number(formats::kMinOnnxExportOpset, formats::kMaxOnnxExportOpset));
  cmd->add_flag("-q,--quiet", *quiet, "Print nothing on success");
  auto run = [=]() -> int {
    check_output_file(*out, "-o", {*ckpt});
    refuse_spec_as_model(*ckpt, "export");
    LoadedCheckpoint ck = load_training_checkpoint(*ckpt);
    formats::ModelSpec spec = ck.spec();
    // At a batch the model builds at (a fixed-batch ONNX model's may be its training batch only); the
    // export then checks that its batch dimension is symbolic.
    models::BuiltModel m = build(spec, probe_batch(spec), false, false);  // every weight from the checkpoint
    // The trained weights replace the initial ones, by name; optimizer state has no place in inference.
    int64_t loaded = load_trained_values(m.graph, ck.state.values, *ckpt);
    formats::OnnxExportOptions o;
    o.opset = *opset;
    o.producer_version = TRAINER_VERSION;
    std::vector<engine::ValueId> inputs = {m.input};
    o.channels_last_inputs = {m.input_channels_last};
    for (const models::BuiltModel::Input& in : m.more_inputs) {
      inputs.push_back(in.value);
      o.channels_last_inputs.push_back(in.channels_last);
    }
    // A spec's model is named input -> output (or after its inputs); an imported ONNX model keeps its own
    // names.
    // A model of several outputs names each after its layer, as Keras's converters do.
    std::vector<engine::ValueId> outputs = {m.output};
    for (const models::BuiltModel::Output& out : m.more_outputs) outputs.push_back(out.value);
    if (spec.model.onnx.empty()) {
      for (engine::ValueId v : inputs) o.input_names.push_back(m.graph.value(v).name);
      o.output_names = {"output"};
    } else if (!spec.model.layers.empty()) {
      o.output_names = {"output"};  // the output of the layers on top of the ONNX model
    }
    if (!m.output_name.empty()) {  // [model] outputs
      o.output_names = {m.output_name};
      for (const models::BuiltModel::Output& out : m.more_outputs) o.output_names.push_back(out.name);
    }
    o.fixed_as_constant_nodes = true;
    if (!spec.model.onnx.empty()) {  // an imported model's initializers keep their form
      const std::shared_ptr<const formats::OnnxModelFile> file = open_onnx(spec);
      for (const auto& init : file->model().graph().initializer()) o.keep_as_initializers.insert(init.name());
    }
    o.metadata = {{"trainer.spec", ck.spec_text},
                  {"trainer.epoch", std::to_string(ck.state.epoch)},
                  {"trainer.step", std::to_string(ck.state.global_step)}};
    onnx::ModelProto model;
    bool own_graph = false;
    try {
      model = formats::export_onnx(m.graph, inputs, outputs, o);
    } catch (const formats::BatchDependentError& e) {
      // The engine folds an imported model's shape arithmetic at one batch size; where the folded shapes
      // hold the batch (PyTorch's attention reshapes [seq, batch * heads, dim]), the model goes back as the
      // graph it came as, with the trained values.
      if (spec.model.onnx.empty() || !spec.model.onnx_bytes) throw;
      // The imported graph as it came has no place for layers put on top of it.
      if (!spec.model.layers.empty() || !spec.model.output.empty() || !spec.model.outputs.empty())
        throw InputError(e.where(),
                         e.message() +
                             "; the model would go back as the imported graph, which cannot "
                             "hold the layers on top of it or its cut at model.output",
                         "export the ONNX model with a symbolic batch dimension, so that its shapes do not "
                         "hold the batch");
      if (*opset != formats::kDefaultOnnxExportOpset)
        throw InputError(e.where(),
                         e.message() + "; so the model is written as its own graph, " +
                             "in its own opset, and --opset cannot apply",
                         "leave out --opset");
      onnx::ModelProto original;
      formats::parse_onnx_model(*spec.model.onnx_bytes, spec.model.onnx, &original);
      model = formats::with_trained_values(original, ck.state.values, o, &loaded);
      own_graph = true;
    }
    formats::save_onnx(model, *out);
    if (!*quiet) {
      int model_opset = *opset;
      for (const auto& imp : model.opset_import())
        if (imp.domain().empty() || imp.domain() == "ai.onnx") model_opset = static_cast<int>(imp.version());
      std::vector<std::string> names;
      for (int i = 0; i < model.graph().input_size(); ++i)
        names.push_back(fmt::format("'{}'{}", model.graph().input(i).name(),
                                    static_cast<size_t>(i) < o.channels_last_inputs.size() &&
                                            o.channels_last_inputs[static_cast<size_t>(i)]
                                        ? " (NHWC)"
                                        : ""));
      eprint("{}: {} nodes, {} initializers ({} tensor{} from the checkpoint), opset {}, input{} {}{}\n",
             *out, model.graph().node_size(), model.graph().initializer_size(), loaded,
             loaded == 1 ? "" : "s", model_opset, names.size() == 1 ? "" : "s", fmt::join(names, ", "),
             own_graph ? "; the imported graph with its trained values (its shapes depend on the batch as "
                         "the engine folds them)"
                       : "");
    }
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
