// Option groups shared by subcommands, and the glue from a ModelSpec to the engine: model factory, fit
// configuration, datasets and the batch format the model needs.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/output.h"
#include "engine/backend/backend.h"
#include "engine/data/dataset.h"
#include "engine/train/fit.h"
#include "engine/util/error.h"
#include "formats/model_spec.h"
#include "models/build.h"

namespace trainer::formats {
class OnnxModelFile;
}  // namespace trainer::formats

namespace trainer::cli {

// A parsed subcommand: its CLI11 app and what runs it (returns the exit code).
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// Checks an option's value is a whole number from lo to hi, with an error that says so (CLI11's own names
// the largest double when hi is unbounded). hi defaults to the largest int, which the option's type holds.
CLI::Validator whole_number(int64_t lo, int64_t hi = std::numeric_limits<int>::max());

// SPEC plus overrides. --epochs/--batch-size/--seed are shorthands for --set train.<key>=N. SPEC is a TOML
// spec, or an ONNX model (.onnx) with --train TOML for the data and training settings.
struct SpecOptions {
  std::string path;
  std::string train_toml;  // --train
  std::vector<std::string> sets;
  std::optional<int64_t> epochs, batch_size;
  std::optional<uint64_t> seed;
  std::string command;      // the subcommand, for hints
  bool model_only = false;  // an ONNX model without --train is a spec of the model alone (summary)
  // SPEC (required unless `optional`, whose text then says what stands in) and --train.
  void add_spec(CLI::App* app, const char* optional = nullptr);
  void add_overrides(CLI::App* app, bool training);
  std::vector<std::string> overrides() const;  // --set values, then the shorthands
  bool onnx() const;                           // SPEC names an ONNX model
  // The combinations of SPEC and --train that cannot work, refused before anything is read.
  void check_combination() const;
  formats::ModelSpec load() const;
};

// A file a command will write (export's -o, fit's --trace), checked before any work so that a run does not
// end in an error after training: its folder must exist, and it must not be what writing would destroy (one
// of the command's `inputs`, a checkpoint, something that is not a regular file). InputError naming `option`.
void check_output_file(const std::string& path, const char* option, const std::vector<std::string>& inputs);

// Training needs the spec's [train] section (its loss): a model-only spec gets an error naming the file.
void require_training(const formats::ModelSpec& spec);

struct OutputOptions {
  std::string log_format = "auto";
  bool quiet = false;
  void add(CLI::App* app);
  // under_mpirun: auto takes JSON lines, since mpirun (OpenMPI) gives each rank's stdout a terminal of its
  // own whatever the job's stdout is, so a file or pipe cannot be seen.
  Output make(bool under_mpirun = false) const;
};

// --device auto|cpu|cuda|cuda:N, --gpus (fit and bench), --no-cuda-graph. auto takes the first CUDA device
// when there is one, else the CPU; a CUDA build that finds no device says so in one line (unless quiet).
struct DeviceOptions {
  std::string device = "auto";
  std::string gpus;  // "", "N", "all" or "0,2"
  bool no_cuda_graph = false;
  void add(CLI::App* app, bool with_gpus = false);
  // The CUDA device ids --gpus/--device name; empty for the CPU. InputError (exit 2) when they name devices
  // that are not there, naming what was found.
  std::vector<int> cuda_device_ids(bool quiet) const;
  std::unique_ptr<engine::Backend> make_backend(bool quiet = false) const;

  // The backend for a spec's run and the spec's train.precision resolved for it: auto is bf16 on a GPU of
  // compute capability 8.0 or newer and fp32 otherwise; fp16 on the CPU is an InputError at the key; tf32
  // turns on TF32 in the GPU's GEMMs and convolutions (on the CPU it is fp32).
  struct Opened {
    std::unique_ptr<engine::Backend> backend;  // the first device's
    engine::Precision precision = engine::Precision::fp32;
    std::vector<int> devices;                            // the CUDA device ids (empty: the CPU)
    std::vector<std::unique_ptr<engine::Backend>> more;  // the other devices' backends, with --gpus N
  };
  Opened open(const formats::ModelSpec& spec, bool quiet = false) const;
};

// Data parallelism (trainer fit): replicas of the step on CPU threads, and how they share the batch.
struct ParallelOptions {
  int devices = 1;  // CPU replicas (--devices N); GPUs are chosen by --gpus
  bool allow_uneven = false;
  std::string scale_lr;  // none | linear; empty when not given (a resumed run keeps its checkpoint's factor)
  double collective_timeout_s = 300;
  void add(CLI::App* app);
};

// Builds the model of a spec for a batch size and mode (a fresh graph each call). `initialize` false leaves
// the weights of the spec's layers at zero (BuildOptions::initialize): for check and summary, which need
// shapes alone. An ONNX model's weights are its file's either way.
models::BuiltModel build(const formats::ModelSpec& spec, int64_t batch, bool training,
                         bool initialize = true);
// For `trainer summary` of an ONNX spec: builds the model once more at batch + 1 to tell which dimensions of
// each node's output follow the batch, and writes them into the rows of `m` (built at `batch`) as
// LayerInfo::output_shape describes; a leading batch axis is dropped, as for a spec's layers. A model that
// builds at one batch size only keeps the rows as they are.
void mark_onnx_batch_axes(models::BuiltModel& m, const formats::ModelSpec& spec, int64_t batch,
                          bool training);
// Reads an ONNX spec's model file into spec.model.onnx_bytes, unless they are there already (from a
// checkpoint); a missing file is an InputError at the spec's `onnx` key.
void read_onnx_bytes(formats::ModelSpec& spec);
engine::ModelFactory model_factory(const formats::ModelSpec& spec);
engine::FitConfig fit_config(const formats::ModelSpec& spec);

// The rows of the table an ONNX model's integer input indexes (a Gather of an initializer, after a Cast of
// the ids or not): the token ids it takes lie in [0, rows); 0 when it feeds no such table.
int64_t onnx_token_count(const engine::Graph& g, engine::ValueId v);

// What an ONNX spec's model file says of itself: the batch size its graph inputs fix (0 when symbolic, or
// when they disagree), and its graph outputs' names in order.
struct OnnxModelFacts {
  int64_t fixed_batch = 0;
  std::vector<std::string> outputs;
};
OnnxModelFacts onnx_model_facts(const formats::ModelSpec& spec);
// The batch size at which to build a spec's model to learn its inputs' and outputs' shapes: 1, or for an
// ONNX model whose inputs fix the batch dimension (which its shape constants may hold), the training batch
// size, at which training builds it anyway. `fixed` (when given) says whether the model fixes its batch.
int64_t probe_batch(const formats::ModelSpec& spec, bool* fixed = nullptr);

// The names of the model's inputs, in the order the data feeds them.
std::vector<std::string> input_names(const models::BuiltModel& model);
// How the loader prepares each input of the model (dtype, [data] scaling, the token range of the Embedding
// that takes it) and the labels for the spec's loss; to_chw is left to the data (open_data).
engine::data::BatchFormat batch_format(const formats::ModelSpec& spec, const models::BuiltModel& model);

struct SpecData {
  std::shared_ptr<const engine::data::Dataset> train, validation, test;
  engine::data::BatchFormat format;
  // The sample weight inputs' values per sample (FitConfig::sample_weight_shapes): [] or [steps] each.
  std::vector<std::vector<int64_t>> sample_weight_shapes;
};
// The [height, width, channels] that image folders (format = "images") are decoded to: the model's first
// input, a spec's channels-last shape, or an ONNX input's, channels first ([C, H, W]) unless it ends in 1, 3
// or 4 channels.
std::vector<int64_t> image_input_shape(const formats::ModelSpec& spec, const models::BuiltModel& model);

// The spec's [data.sequences] with maxlen resolved: the model input's length when it leaves maxlen out and
// the input is one dimension (0 when it is not). The spec must have the table.
formats::SequenceSpec resolved_sequences(const formats::ModelSpec& spec, const models::BuiltModel& model);
// Opens the spec's datasets and checks them against the model (sample shape, label kind); the validation
// split holds out the last samples of train, as Keras does.
// `training_classes`: the classes of the training folders, for a spec whose data.train is a validation or
// test folder source read alone (evaluate), so that it labels as the training folders did.
SpecData open_data(const formats::ModelSpec& spec, const models::BuiltModel& model,
                   const std::vector<std::string>& training_classes = {}, bool classes_named = false);

// Whether an ONNX model's image input is channels last ([N, H, W, C]): the model transposes it to NCHW first
// (perm [0, 3, 1, 2]), as trainer's own exports of a spec and TensorFlow's exports do. Otherwise an image
// input is taken for ONNX's channels first.
bool onnx_input_channels_last(const engine::Graph& g, engine::ValueId input);
// The ONNX model of a spec's [model] onnx (its embedded bytes, or the file), parsed.
std::shared_ptr<const formats::OnnxModelFile> open_onnx(formats::ModelSpec spec);

// An output and its cross-entropy must agree on what the output is: an ONNX model's logits or
// log-probabilities (a Gemm, MatMul, Conv or LogSoftmax at the end) need from_logits, and probabilities (a
// Softmax or Sigmoid node, or a spec's output layer with activation softmax or sigmoid) refuse it. Checked by
// fit and check, before training; evaluate takes a checkpoint as it was trained.
void check_output_and_loss(const formats::ModelSpec& spec, const models::BuiltModel& m);

// Keras's Normalization.adapt: each Normalization layer of `spec` without mean and variance that takes the
// model's input gets them from the training data as fed to the model (after [data] scale, mean and std), per
// feature along its axis (the population variance), written into the spec so that checkpoints, export and
// predict carry them. Such a layer elsewhere is an error. Returns the layers adapted.
std::vector<std::string> adapt_normalization(formats::ModelSpec& spec, const SpecData& data,
                                             const models::BuiltModel& model);

// Keras's TextVectorization.adapt: a spec whose [data.text] gives no vocabulary gets the training texts'
// most frequent words (up to max_tokens), written into the spec so that checkpoints, evaluate and predict
// carry them. Returns how many texts were read, or 0 when nothing was adapted.
size_t adapt_text(formats::ModelSpec& spec);

// The engine names the spec keys it rejects by their dotted path ("train.loss"): rethrows such an error with
// the key's place in the spec (file:line:col, or the --set override), any other error as it is.
[[noreturn]] void rethrow_at_spec_place(const formats::ModelSpec& spec, const InputError& e);
// Runs `f`, which hands the spec's settings to the engine, with errors at their place in the spec.
template <class F>
decltype(auto) at_spec_places(const formats::ModelSpec& spec, F&& f) {
  try {
    return f();
  } catch (const InputError& e) {
    rethrow_at_spec_place(spec, e);
  }
}

Command add_fit_command(CLI::App& app);
Command add_summary_command(CLI::App& app);
Command add_check_command(CLI::App& app);
Command add_export_command(CLI::App& app);
Command add_predict_command(CLI::App& app);
Command add_evaluate_command(CLI::App& app);

// Sets the initial values of g's weights and state to a checkpoint's (by name; the optimizer state of g's
// parameters is skipped) and returns how many it set. A weight or state of g that the checkpoint lacks or
// holds in another shape, or a value of the checkpoint that is neither g's nor a parameter's optimizer state,
// is an InputError naming `ckpt`: its model is not g.
int64_t load_trained_values(engine::Graph& g,
                            const std::vector<std::pair<std::string, engine::Tensor>>& values,
                            const std::string& ckpt);

// The model of a checkpoint's spec with the checkpoint's weights (parameters and state, by name) as its
// initializers; values the model does not have (optimizer state) are skipped. `ckpt` names the file in
// errors.
engine::ModelFactory trained_model_factory(const formats::ModelSpec& spec,
                                           std::vector<std::pair<std::string, engine::Tensor>> values,
                                           const std::string& ckpt);

}  // namespace trainer::cli
