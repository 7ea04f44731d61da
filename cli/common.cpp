// Shared options and the spec-to-engine glue.
#include "cli/common.h"

#include <fmt/ranges.h>
#include <fnmatch.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <onnx/onnx_pb.h>
#include "cli/checkpoint_io.h"
#include "engine/ops/sync_batch_norm.h"
#include "engine/util/error.h"
#include "formats/atomic_file.h"
#include "formats/data_text.h"
#include "formats/datasets.h"
#include "formats/onnx_import.h"
#include "formats/onnx_tensor.h"

namespace trainer::cli {

using engine::DType;
using engine::Shape;

void SpecOptions::add_spec(CLI::App* app, const char* optional) {
  command = app->get_name();
  auto* opt = app->add_option("SPEC", path,
                              std::string("Model description: a TOML file (see trainer-model(5)), or an ONNX "
                                          "model with --train") +
                                  (model_only ? " (or alone, for its layers)" : "") +
                                  (command != "fit" ? "; or a checkpoint, for the model it holds" : "") +
                                  (optional ? std::string("; ") + optional : std::string()));
  if (!optional) opt->required();
  app->add_option("--train", train_toml,
                  "With an ONNX model as SPEC: the TOML file that supplies data, loss, optimizer and metrics")
      ->type_name("TOML");
}

bool SpecOptions::onnx() const {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".onnx";
}

void SpecOptions::check_combination() const {
  if (onnx() && train_toml.empty() && !model_only)
    throw InputError(path,
                     "an ONNX model needs --train TOML: the file with data, loss, optimizer and metrics",
                     fmt::format("trainer {} {} --train train.toml (see trainer-model(5))", command, path));
  if (!train_toml.empty() && !onnx())
    throw InputError(train_toml, "--train goes with an ONNX model as SPEC",
                     path.empty() ? fmt::format("trainer {} model.onnx --train train.toml", command)
                                  : "a TOML spec holds its training settings itself: leave out --train");
}

void check_output_file(const std::string& path, const char* option, const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  if (path.empty()) throw InputError(option, "names no file", "give a file name");
  // The file writing replaces: through symbolic links, even one whose target does not exist yet.
  std::string target;
  try {
    target = formats::written_path(path);
  } catch (const InputError& e) {
    throw InputError(option, fmt::format("'{}' {}", path, e.message()), e.hint());
  }
  const fs::path p(target);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw InputError(option,
                     fmt::format("'{}': the folder {} does not exist", path,
                                 target == path ? dir.string() : dir.string() + " (where its link leads)"),
                     "create the folder first, or name a file in an existing one");
  if (!fs::exists(p, ec)) return;
  if (!fs::is_regular_file(p, ec))
    throw InputError(option, fmt::format("'{}' is not a regular file, and writing would replace it", path),
                     "name a file, or a new path");
  for (const std::string& in : inputs)
    if (fs::equivalent(p, in, ec))
      throw InputError(option, fmt::format("'{}' is the input {}: writing would destroy it", path, in),
                       "name another file");
  // A trainer checkpoint: the safetensors header length, then a header that says so.
  std::ifstream f(path, std::ios::binary);
  std::string head(4096, '\0');
  f.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(f.gcount()));
  if (head.size() > 9 && head[8] == '{' && head.find("trainer-checkpoint") != std::string::npos)
    throw InputError(option, fmt::format("'{}' is a checkpoint: writing would destroy it", path),
                     "name another file");
}

void require_training(const formats::ModelSpec& spec) {
  if (!spec.train.loss.empty()) return;
  throw InputError(
      spec.path, "the spec has no [train] section: nothing says how to train the model",
      "add [train] with loss, epochs and batch_size, and [train.optimizer] (see trainer-model(5))");
}

CLI::Validator whole_number(int64_t lo, int64_t hi) {
  const bool unbounded = hi == std::numeric_limits<int>::max();
  return CLI::Validator(
      [lo, hi, unbounded](std::string& v) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long n = std::strtoll(v.c_str(), &end, 10);
        const bool whole = end != v.c_str() && !*end && errno == 0;
        if (whole && n >= lo && n <= hi) return "";
        if (whole && unbounded && n > hi) return fmt::format("'{}' is larger than {}", v, hi);
        if (unbounded) return fmt::format("'{}' is not a whole number of at least {}", v, lo);
        return fmt::format("'{}' is not a whole number from {} to {}", v, lo, hi);
      },
      unbounded ? fmt::format(">= {}", lo) : fmt::format("{} to {}", lo, hi));
}

void SpecOptions::add_overrides(CLI::App* app, bool training) {
  app->add_option("--set", sets,
                  "Override a spec key, validated like the file: --set train.optimizer.learning_rate=3e-4")
      ->type_name("KEY=VALUE");
  app->add_option("--batch-size", batch_size, "Global batch size (same as --set train.batch_size=N)")
      ->check(whole_number(1));
  if (!training) return;
  app->add_option("--epochs", epochs, "Epochs to train (same as --set train.epochs=N)")
      ->check(whole_number(1));
  app->add_option("--seed", seed, "Seed of initializers, shuffling and dropout (same as --set train.seed=N)")
      ->check(whole_number(0, std::numeric_limits<int64_t>::max()));
}

std::vector<std::string> SpecOptions::overrides() const {
  std::vector<std::string> o = sets;
  if (epochs) o.push_back(fmt::format("train.epochs={}", *epochs));
  if (batch_size) o.push_back(fmt::format("train.batch_size={}", *batch_size));
  if (seed) o.push_back(fmt::format("train.seed={}", *seed));
  return o;
}

formats::ModelSpec SpecOptions::load() const {
  check_combination();
  // A spec piped in (`trainer check /dev/stdin`, `<(...)`) is read once; its relative paths are the
  // working directory's. Checkpoints and ONNX models are read from files.
  if (const std::string* text = spooled(path)) {
    if (text->empty())
      throw InputError(path, "gave nothing: the pipe or device it names was empty",
                       "give the spec as a file (under mpirun or srun, only rank 0 reads standard input)");
    if (onnx() || !train_toml.empty() || starts_as_checkpoint(path) || looks_like_onnx(path))
      throw InputError(path,
                       "is not a regular file (a pipe or a device): a checkpoint or an ONNX model is read "
                       "from a file",
                       "save it to a file first");
    return formats::parse_model_spec(*text, path, overrides());
  }
  // A checkpoint's model: the spec it holds (summary, check and bench show the model that was trained).
  // (Named .ckpt, a damaged one is one too, for its reader to say where it is damaged; but a spec, text that
  // sets format_version, is read as the spec it is whatever its name.)
  if (!onnx() && !path.ends_with(".toml") &&
      (starts_as_checkpoint(path) || (path.ends_with(".ckpt") && !looks_like_spec(path)))) {
    if (command == "fit")
      throw InputError(
          path, "is a checkpoint, not a model spec",
          fmt::format("trainer fit --resume {} continues its run; trainer fit SPEC starts one", path));
    return load_training_checkpoint(path).spec(overrides());
  }
  if (!onnx()) return formats::load_model_spec(path, overrides());
  // An ONNX model holds no data or training settings: --train supplies them.
  if (!train_toml.empty()) return formats::load_onnx_training_spec(path, train_toml, overrides());
  return formats::load_onnx_model_spec(path, overrides());
}

void OutputOptions::add(CLI::App* app) {
  app->add_option("--log-format", log_format,
                  "Metrics on stdout as JSON lines (jsonl) or not (text); auto: JSON lines when stdout is "
                  "not a terminal")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}));
  app->add_flag("-q,--quiet", quiet,
                "Print nothing on stderr but errors (and the warning that TensorBoard events stopped)");
}

Output OutputOptions::make(bool under_mpirun) const {
  LogFormat f = log_format == "jsonl" || (log_format == "auto" && under_mpirun) ? LogFormat::jsonl
                : log_format == "text"                                          ? LogFormat::text
                                                                                : LogFormat::automatic;
  return Output(f, quiet);
}

void DeviceOptions::add(CLI::App* app, bool with_gpus) {
  app->add_option("--device", device,
                  "Device to run on: auto (the first GPU when there is one, else the CPU), cpu, cuda or "
                  "cuda:N")
      ->check([](const std::string& s) -> std::string {
        if (s == "auto" || s == "cpu" || s == "cuda") return "";
        if (s.starts_with("cuda:") && s.size() > 5 &&
            s.find_first_not_of("0123456789", 5) == std::string::npos)
          return "";
        return fmt::format("'{}' is no device: use auto, cpu, cuda or cuda:N", s);
      });
  if (with_gpus)
    app->add_option("--gpus", gpus,
                    "GPUs to train on, one replica each: a count (4), all, or device ids (0,2)")
        ->type_name("N|all|IDS")
        ->check([](const std::string& s) -> std::string {
          return s.empty() ? "an empty value chooses no GPU: give a count, all, or device ids" : "";
        });
  app->add_flag("--no-cuda-graph", no_cuda_graph,
                "Run each CUDA step kernel by kernel instead of replaying a captured CUDA graph (debugging)");
}

void ParallelOptions::add(CLI::App* app) {
  app->add_option(
         "--devices", devices,
         "CPU replicas that share every global batch, one thread each (with --device cpu or without a "
         "GPU); default 1")
      ->check(whole_number(1, 1024));
  app->add_flag("--allow-uneven", allow_uneven,
                "Let replicas take unequal shares of a batch_size they do not divide; their gradients are "
                "weighted by sample count");
  app->add_option("--scale-lr", scale_lr,
                  "none: the learning rate stays the spec's; linear: multiplied by the number of replicas "
                  "(logged). Default: none, or with --resume the factor of the checkpoint's run")
      ->check(CLI::IsMember({"none", "linear"}));
  app->add_option(
         "--collective-timeout", collective_timeout_s,
         "Seconds a gradient reduction may wait for the other replicas before the run stops (default "
         "300, from 0.001 to 1e7)")
      ->check(
          [](const std::string& v) -> std::string {
            char* end = nullptr;
            const double seconds = std::strtod(v.c_str(), &end);
            if (end != v.c_str() && !*end && seconds >= 0.001 && seconds <= 1e7) return "";
            return fmt::format("'{}' is not a number of seconds from 0.001 to 1e7", v);
          },
          "SECONDS");
}

namespace {

std::string found_text(const engine::CudaDevices& found) {
  if (found.devices.empty()) return fmt::format("no CUDA device ({})", found.why_none);
  std::vector<std::string> names;
  for (const engine::CudaDeviceInfo& d : found.devices)
    names.push_back(fmt::format("{}: {}", d.index, d.name));
  return fmt::format("{} CUDA device{} ({})", found.devices.size(), found.devices.size() == 1 ? "" : "s",
                     fmt::join(names, ", "));
}

}  // namespace

std::vector<int> DeviceOptions::cuda_device_ids(bool quiet) const {
  const bool want_cuda = device.starts_with("cuda") || !gpus.empty();
  if (device == "cpu" && !gpus.empty())
    throw InputError("--gpus", "--gpus runs on GPUs, and --device cpu asks for the CPU",
                     "leave out one of them");
  if (!want_cuda && device != "auto") return {};
  const engine::CudaDevices found = engine::cuda_devices();
  if (!want_cuda) {  // auto
    if (!found.devices.empty()) return {found.devices.front().index};
    if (engine::cuda_built() && !quiet) eprint("trainer: {}; running on the CPU\n", found_text(found));
    return {};
  }
  const int present = static_cast<int>(found.devices.size());
  auto exists = [&](int id) {
    for (const engine::CudaDeviceInfo& d : found.devices)
      if (d.index == id) return true;
    return false;
  };
  std::vector<int> ids;
  if (!gpus.empty()) {
    if (device != "auto" && device != "cuda")
      throw InputError("--gpus", fmt::format("--gpus chooses the GPUs, and --device {} does too", device),
                       "leave out --device");
    if (gpus == "all") {
      for (const engine::CudaDeviceInfo& d : found.devices) ids.push_back(d.index);
      if (ids.empty())
        throw InputError("--gpus", fmt::format("--gpus all, and there is {}", found_text(found)),
                         "run on the CPU: leave out --gpus");
    } else if (gpus.find(',') == std::string::npos &&
               gpus.find_first_not_of("0123456789") == std::string::npos) {
      const int n = std::atoi(gpus.c_str());
      if (n < 1) throw InputError("--gpus", "--gpus 0 asks for no GPU", "give a count of at least 1, or all");
      if (n > present)
        throw InputError("--gpus",
                         fmt::format("--gpus {} asks for {} GPU{}, and there is {}", gpus, n,
                                     n == 1 ? "" : "s", found_text(found)),
                         present == 0 ? "run on the CPU: leave out --gpus"
                                      : fmt::format("use at most --gpus {}", present));
      for (int i = 0; i < n; ++i) ids.push_back(found.devices[i].index);
    } else {
      std::stringstream ss(gpus);
      std::string item;
      while (std::getline(ss, item, ',')) {
        if (item.empty() || item.size() > 6 || item.find_first_not_of("0123456789") != std::string::npos)
          throw InputError("--gpus", fmt::format("'{}' in --gpus {} is no device id", item, gpus),
                           "give a count (--gpus 2), all, or ids (--gpus 0,2)");
        const int id = std::atoi(item.c_str());
        if (std::find(ids.begin(), ids.end(), id) != ids.end())
          throw InputError("--gpus", fmt::format("GPU {} appears twice in --gpus {}", id, gpus),
                           "name each GPU once: one replica runs per GPU");
        ids.push_back(id);
      }
      for (const int id : ids)
        if (!exists(id))
          throw InputError("--gpus", fmt::format("GPU {} does not exist: there is {}", id, found_text(found)),
                           "list the GPUs with nvidia-smi");
    }
  } else {
    const int id = device == "cuda" ? 0 : std::atoi(device.c_str() + 5);
    if (!exists(id))
      throw InputError(
          "--device", fmt::format("--device {} asks for a GPU, and there is {}", device, found_text(found)),
          found.devices.empty() ? "use --device cpu (or auto)" : "list the GPUs with nvidia-smi");
    ids.push_back(id);
  }
  return ids;
}

namespace {

std::unique_ptr<engine::Backend> backend_for(const std::vector<int>& ids, bool cuda_graph, bool allow_tf32) {
  if (ids.empty()) return engine::make_cpu_backend();
  engine::CudaOptions o;
  o.device = ids.front();
  o.cuda_graph = cuda_graph;
  o.allow_tf32 = allow_tf32;
  return engine::make_cuda_backend(o);
}

}  // namespace

std::unique_ptr<engine::Backend> DeviceOptions::make_backend(bool quiet) const {
  const std::vector<int> ids = cuda_device_ids(quiet);
  if (ids.size() > 1)
    throw InputError("--gpus",
                     fmt::format("{} GPUs were asked for, and this command runs on one", ids.size()),
                     "give one: --gpus 1 (trainer fit trains on several)");
  return backend_for(ids, !no_cuda_graph, false);
}

DeviceOptions::Opened DeviceOptions::open(const formats::ModelSpec& spec, bool quiet) const {
  const std::vector<int> ids = cuda_device_ids(quiet);
  int sm = 0;
  if (!ids.empty())
    for (const engine::CudaDeviceInfo& d : engine::cuda_devices().devices)
      if (d.index == ids.front()) sm = d.sm;
  const std::string& setting = spec.train.precision;
  Opened o;
  if (setting == "auto") {
    o.precision = sm >= 80 ? engine::Precision::bf16 : engine::Precision::fp32;
  } else {
    std::optional<engine::Precision> p = engine::parse_precision(setting);
    TRAINER_ASSERT(p.has_value(), "precision '{}' passed the spec reader", setting);
    o.precision = *p;
  }
  const std::string where =
      spec.train.precision_pos.file.empty() ? spec.path : spec.train.precision_pos.str();
  if (ids.empty() && o.precision == engine::Precision::fp16)
    throw InputError(where, "train.precision = \"fp16\" runs on GPUs only, and this run is on the CPU",
                     engine::cpu_supports_bf16()
                         ? "use precision = \"bf16\" or \"fp32\" on the CPU, or run on a GPU"
                         : "use precision = \"fp32\" on this CPU, or run on a GPU");
  if (ids.empty() && o.precision == engine::Precision::bf16 && !engine::cpu_supports_bf16())
    throw InputError(
        where,
        "train.precision = \"bf16\" needs a CPU with AVX-512 (oneDNN's bf16 kernels), and this "
        "one has none",
        "use precision = \"fp32\" on this CPU, or run on a GPU of compute capability 8.0 or newer");
  if (!ids.empty() && sm < 80 && o.precision == engine::Precision::bf16)
    throw InputError(where,
                     fmt::format("train.precision = \"bf16\" needs a GPU of compute capability 8.0 or newer; "
                                 "this one is {}.{}",
                                 sm / 10, sm % 10),
                     "use precision = \"fp16\" or \"fp32\"");
  o.backend = backend_for(ids, !no_cuda_graph, o.precision == engine::Precision::tf32);
  o.devices = ids;
  for (size_t k = 1; k < ids.size(); ++k)
    o.more.push_back(backend_for({ids[k]}, !no_cuda_graph, o.precision == engine::Precision::tf32));
  return o;
}

void read_onnx_bytes(formats::ModelSpec& spec) {
  if (spec.model.onnx.empty() || spec.model.onnx_bytes) return;
  const std::string path = formats::resolve_data_path(spec, spec.model.onnx);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw InputError(
        spec.model.onnx_pos.str(), fmt::format("the ONNX model {} does not exist", path),
        spec.model.onnx_pos.line > 0
            ? "[model] onnx is relative to the spec's folder"
            : "check the path: a model on the command line is relative to the working directory");
  std::string bytes = formats::read_file_bytes(path);
  // Weights in external data files (PyTorch's dynamo exports: model.onnx.data) join the model's bytes, so
  // that a checkpoint, which embeds them, needs no other file (a model past protobuf's 2 GiB stays as it is).
  // Only a file that holds an external_data entry's "location" key is parsed here (the import parses it
  // again).
  onnx::ModelProto model;
  if (bytes.size() <= static_cast<size_t>(INT_MAX) && bytes.find("location") != std::string::npos &&
      model.ParseFromString(bytes)) {
    const std::string dir = std::filesystem::path(path).parent_path().string();
    bool inlined = false;
    size_t total = bytes.size();
    for (onnx::TensorProto& t : *model.mutable_graph()->mutable_initializer()) {
      if (t.data_location() != onnx::TensorProto::EXTERNAL) continue;
      inlined = formats::inline_external_data(&t, fmt::format("{}: initializer '{}'", path, t.name()), dir) ||
                inlined;
      total += t.raw_data().size();
    }
    if (inlined && total <= static_cast<size_t>(INT_MAX)) bytes = model.SerializeAsString();
  }
  spec.model.onnx_bytes = std::make_shared<const std::string>(std::move(bytes));
}

// --- ONNX models ([model] onnx = "model.onnx")
// ----------------------------------------------------------------

std::shared_ptr<const formats::OnnxModelFile> open_onnx(formats::ModelSpec spec) {
  read_onnx_bytes(spec);
  return std::make_shared<const formats::OnnxModelFile>(*spec.model.onnx_bytes,
                                                        formats::resolve_data_path(spec, spec.model.onnx));
}

namespace {

OnnxModelFacts facts_of(const onnx::GraphProto& g) {
  std::set<std::string> initializers;
  for (const onnx::TensorProto& t : g.initializer()) initializers.insert(t.name());
  OnnxModelFacts f;
  bool agree = true;
  for (const onnx::ValueInfoProto& in : g.input()) {
    if (initializers.count(in.name())) continue;
    const bool fixed = in.type().has_tensor_type() && in.type().tensor_type().has_shape() &&
                       in.type().tensor_type().shape().dim_size() > 0 &&
                       in.type().tensor_type().shape().dim(0).has_dim_value();
    const int64_t b = fixed ? in.type().tensor_type().shape().dim(0).dim_value() : 0;
    if (f.fixed_batch != 0 && b != f.fixed_batch) agree = false;
    if (f.fixed_batch == 0) f.fixed_batch = b;
    if (b == 0) agree = false;
  }
  if (!agree || f.fixed_batch < 1) f.fixed_batch = 0;
  for (const onnx::ValueInfoProto& out : g.output()) f.outputs.push_back(out.name());
  return f;
}

}  // namespace

OnnxModelFacts onnx_model_facts(const formats::ModelSpec& spec) {
  const std::shared_ptr<const formats::OnnxModelFile> file = open_onnx(spec);
  return facts_of(file->model().graph());
}

int64_t probe_batch(const formats::ModelSpec& spec, bool* fixed) {
  const bool fixes = !spec.model.onnx.empty() && onnx_model_facts(spec).fixed_batch > 0;
  if (fixed) *fixed = fixes;
  return fixes ? spec.train.batch_size : 1;
}

namespace {

bool frozen(const formats::ModelSection& m, const std::string& name) {
  for (const std::string& p : m.freeze)
    if (fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

std::string names_text(const engine::Graph& g, const std::vector<engine::ValueId>& values) {
  std::vector<std::string> names;
  for (engine::ValueId v : values) names.push_back(fmt::format("'{}'", g.value(v).name));
  return fmt::format("{}", fmt::join(names, ", "));
}

// A layer table for `trainer summary`: one row per node, each float initializer counted at its first reader
// (integer ones are shapes, axes and indices, which Keras would not call parameters).
std::vector<models::LayerInfo> onnx_layers(const engine::Graph& g,
                                           const std::vector<std::string>& initializers, int64_t batch) {
  std::set<std::string> unseen(initializers.begin(), initializers.end());
  auto per_sample = [&](const Shape& s) {
    std::vector<int64_t> d = s.dims();
    if (!d.empty() && d[0] == batch) d.erase(d.begin());
    return d;
  };
  auto shape = [&](const engine::Node& n, size_t i) -> const Shape* {
    return i < n.inputs.size() && n.inputs[i] != engine::kNoValue ? &g.value(n.inputs[i]).shape : nullptr;
  };
  std::vector<models::LayerInfo> out;
  for (engine::NodeId id : g.topo_order()) {
    const engine::Node& n = g.node(id);
    models::LayerInfo l;
    l.name = n.name;
    l.type = n.op;
    for (engine::ValueId v : n.outputs)
      if (v != engine::kNoValue) {
        l.output_shape = per_sample(g.value(v).shape);
        break;
      }
    for (engine::ValueId v : n.inputs) {
      if (v == engine::kNoValue || !unseen.erase(g.value(v).name)) continue;
      const engine::Value& val = g.value(v);
      if (!engine::is_float(val.dtype)) continue;
      l.params += val.shape.numel();
      if (val.kind == engine::ValueKind::parameter && val.trainable) l.trainable_params += val.shape.numel();
    }
    // 2 x multiply-adds of the matrix products, as the layer library counts them.
    const Shape* a = shape(n, 0);
    const Shape* w = shape(n, 1);
    const engine::Value* y =
        n.outputs.empty() || n.outputs[0] == engine::kNoValue ? nullptr : &g.value(n.outputs[0]);
    if ((n.op == "LSTM" || n.op == "GRU") && a && w && a->rank() == 3 && w->rank() == 3 && shape(n, 2)) {
      // Its Y may be absent (a model that reads only Y_h).
      const bool batch_major = n.attrs.has("layout") && n.attrs.i("layout") == 1;
      const int64_t steps = batch_major ? (*a)[1] : (*a)[0];
      l.flops_per_sample = 2 * steps * (w->numel() + shape(n, 2)->numel());
    } else if (a && w && y && batch > 0) {
      const int64_t per = y->shape.numel() / batch;
      if (n.op == "Gemm" && a->rank() == 2)
        l.flops_per_sample = 2 * per * (n.attrs.has("transA") && n.attrs.i("transA") ? (*a)[0] : (*a)[1]);
      else if (n.op == "MatMul" && a->rank() >= 1)
        l.flops_per_sample = 2 * per * a->dims().back();
      else if (n.op == "Conv" && w->rank() >= 2 && (*w)[0] > 0)
        l.flops_per_sample = 2 * per * (w->numel() / (*w)[0]);
    }
    out.push_back(std::move(l));
  }
  return out;
}

// The model of an ONNX spec: its initializers trainable unless frozen, its inputs fed the data, its
// single output the model's output.
models::BuiltModel build_onnx(const formats::ModelSpec& spec, const formats::OnnxModelFile& file,
                              int64_t batch, bool training, bool initialize = true) {
  const formats::ModelSection& ms = spec.model;
  formats::OnnxImportOptions o;
  o.batch_size = batch;
  o.replace_fixed_batch = true;
  o.mode = training ? formats::OnnxGraphMode::training : formats::OnnxGraphMode::inference;
  // Layers on top take the ONNX model's one output; without them, [model] outputs are the ONNX model's.
  const bool several = ms.layers.empty() && !ms.outputs.empty();
  if (!ms.output.empty()) o.outputs = {ms.output};
  if (several) o.outputs = ms.outputs;
  o.initializer_is_trainable = [&ms](const std::string& name, const engine::Tensor&) {
    return !frozen(ms, name);
  };
  formats::OnnxImportResult r;
  try {
    r = file.import(o);
  } catch (const InputError& e) {
    // A batch the file fixes in its shape constants (a PyTorch export without dynamic_axes) builds at that
    // batch only: say which batch the run asked for, and why, rather than which node broke at it.
    const onnx::GraphProto& graph = file.model().graph();
    const int64_t fixed = facts_of(graph).fixed_batch;
    // (only a failure the replaced batch may cause: the importer notes it)
    const size_t note = e.message().find(" (the model fixes the batch dimension");
    if (fixed <= 0 || fixed == batch || note == std::string::npos) throw;
    std::set<std::string> initializers;
    for (const onnx::TensorProto& t : graph.initializer()) initializers.insert(t.name());
    std::string input = "input";
    for (const onnx::ValueInfoProto& in : graph.input())
      if (!initializers.count(in.name())) {
        input = in.name();
        break;
      }
    // The importer's own note of the replaced batch says less than this message.
    const std::string why = e.message().substr(0, note);
    throw InputError(
        file.path(),
        fmt::format(
            "the model fixes its batch at {}, and its shapes hold it, so it builds at a batch of {} "
            "only; {}: {}",
            fixed, fixed,
            batch == spec.train.batch_size
                ? fmt::format("this run's batch_size is {}", batch)
                : fmt::format("this run also needs a batch of {} (the last, partial batch of a data set "
                              "whose sample count is not a multiple of {}, or a replica's share of the "
                              "batch)",
                              batch, fixed),
            why),
        fmt::format("export the model with a symbolic batch dimension (torch.onnx.export(..., "
                    "dynamic_axes={{'{}': {{0: 'batch'}}}})), or train at batch_size = {} on one device, on "
                    "a multiple of {} samples in each data set (data.train.limit, data.validation.limit)",
                    input, fixed, fixed));
  }
  const std::string where = ms.onnx_pos.str();
  for (size_t i = 0; i < ms.freeze.size(); ++i) {
    const std::string& p = ms.freeze[i];
    bool any = false;
    for (const std::string& name : r.initializer_names) any = any || fnmatch(p.c_str(), name.c_str(), 0) == 0;
    if (any) continue;
    std::vector<std::string> some(
        r.initializer_names.begin(),
        r.initializer_names.begin() + std::min<size_t>(r.initializer_names.size(), 8));
    throw InputError(i < ms.freeze_pos.size() ? ms.freeze_pos[i].str() : where,
                     fmt::format("model.freeze pattern '{}' matches no initializer of {}", p, file.path()),
                     r.initializer_names.empty()
                         ? "the model has no initializers"
                         : fmt::format("its initializers are named like: {}{}", fmt::join(some, ", "),
                                       r.initializer_names.size() > some.size() ? ", ..." : ""));
  }
  engine::Graph& g = r.graph;
  if (r.inputs.empty())
    throw InputError(file.path(), "the model has no graph inputs: nothing takes the data",
                     "export the model with its input (initializers are not inputs)");
  if (r.outputs.size() != 1 && !several)
    throw InputError(
        file.path(),
        fmt::format("the model has {} graph outputs ({}); a model of one output takes one of them",
                    r.outputs.size(), names_text(g, r.outputs)),
        "take the output the loss compares with the labels by [model] output = \"NAME\", or train them all: "
        "[model] outputs = [...] with a loss for each in [train]");
  models::BuiltModel m;
  m.input = r.inputs[0];
  for (size_t k = 1; k < r.inputs.size(); ++k) m.more_inputs.push_back({r.inputs[k], false});
  for (engine::ValueId v : r.inputs) {
    const engine::Value& in = g.value(v);
    if (in.dtype != DType::f32 && in.dtype != DType::i32 && in.dtype != DType::i64)
      throw InputError(
          file.path(),
          fmt::format("the model's input '{}' is {}; the data feeds float32 features or int32/int64 "
                      "token ids",
                      in.name, engine::dtype_name(in.dtype)),
          "export the model with float32 (or integer) inputs");
    if (in.shape.rank() < 1 || in.shape[0] != batch)
      throw InputError(file.path(),
                       fmt::format("the model's input '{}' has shape {} at a batch of {}: it does not lead "
                                   "with the batch",
                                   in.name, in.shape.str(), batch),
                       "every input must be [batch, ...], one row per sample");
  }
  for (size_t k = 0; k < r.outputs.size(); ++k) {
    const engine::Value& out = g.value(r.outputs[k]);
    if (out.dtype != DType::f32)
      throw InputError(file.path(),
                       fmt::format("the model's output '{}' is {}; losses and metrics take float32", out.name,
                                   engine::dtype_name(out.dtype)),
                       "export the model with a float32 output");
    if (out.shape.rank() < 1 || out.shape[0] != batch) {
      // A batch the file fixes may be held in its shape constants: the graph then builds at that batch only.
      const int64_t fixed = facts_of(file.model().graph()).fixed_batch;
      if (fixed > 0 && fixed != batch)
        throw InputError(
            file.path(),
            fmt::format("the model's output '{}' has shape {} at a batch of {}: the model fixes its batch at "
                        "{}, and its shapes hold it",
                        out.name, out.shape.str(), batch, fixed),
            fmt::format(
                "export the model with a symbolic batch dimension (torch.onnx.export(..., "
                "dynamic_axes={{'{}': {{0: 'batch'}}}})), or train at batch_size = {} on a multiple of "
                "{} samples (data.train.limit), so that no batch is partial",
                g.value(r.inputs[0]).name, fixed, fixed));
      throw InputError(
          file.path(),
          fmt::format("the model's output '{}' has shape {} at a batch of {}: it does not lead with "
                      "the batch",
                      out.name, out.shape.str(), batch),
          "the output must be [batch, ...], one row per sample");
    }
    if (out.shape.numel() == 0)
      throw InputError(file.path(),
                       fmt::format("the model's output '{}' has shape {}: no values per sample", out.name,
                                   out.shape.str()),
                       "the output must hold values for the loss to compare with the labels");
    models::BuiltModel::Output o;
    o.name = several ? ms.outputs[k] : "";
    o.value = r.outputs[k];
    o.shape.assign(out.shape.dims().begin() + 1, out.shape.dims().end());
    // A final Softmax or Sigmoid is the activation that losses fuse with and that predictions report.
    if (out.producer >= 0) {
      const engine::Node& last = g.node(out.producer);
      if (last.domain.empty() && (last.op == "Softmax" || last.op == "Sigmoid")) {
        o.final_activation = last.op == "Softmax" ? "softmax" : "sigmoid";
        o.logits = last.inputs[0];
      }
    }
    models::add_output(m, std::move(o));
  }
  m.layers = onnx_layers(g, r.initializer_names, batch);
  m.graph = std::move(r.graph);
  // Layers in Keras's vocabulary on top of the ONNX model (a new head on a pretrained network).
  if (!ms.layers.empty()) {
    models::BuildOptions o;
    o.batch_size = batch;
    o.training = training;
    o.seed = spec.train.seed;
    o.sync_batch_norm = spec.parallel.sync_batch_norm;
    o.initialize = initialize;
    std::set<std::string> names;
    const onnx::GraphProto& graph = file.model().graph();
    for (const auto& i : graph.initializer()) names.insert(i.name());
    for (const auto& i : graph.input()) names.insert(i.name());
    for (const auto& n : graph.node())
      for (const std::string& out : n.output()) names.insert(out);
    models::build_head(m, ms, o, names);
  }
  return m;
}

}  // namespace

models::BuiltModel build(const formats::ModelSpec& spec, int64_t batch, bool training, bool initialize) {
  if (!spec.model.onnx.empty()) return build_onnx(spec, *open_onnx(spec), batch, training, initialize);
  models::BuildOptions o;
  o.batch_size = batch;
  o.training = training;
  o.seed = spec.train.seed;
  o.sync_batch_norm = spec.parallel.sync_batch_norm;
  o.initialize = initialize;
  return models::build_model(spec.model, o);
}

void mark_onnx_batch_axes(models::BuiltModel& m, const formats::ModelSpec& spec, int64_t batch,
                          bool training) {
  if (spec.model.onnx.empty() || batch <= 0) return;
  std::optional<models::BuiltModel> next;
  try {
    next = build(spec, batch + 1, training, false);
  } catch (const InputError&) {
    return;  // its shape constants hold the batch
  }
  // Each node's first output, by node name.
  auto outputs = [](const engine::Graph& g) {
    std::map<std::string, std::pair<std::string, Shape>> out;
    for (engine::NodeId id : g.topo_order()) {
      const engine::Node& n = g.node(id);
      for (engine::ValueId v : n.outputs)
        if (v != engine::kNoValue) {
          out.emplace(n.name, std::pair{n.op, g.value(v).shape});
          break;
        }
    }
    return out;
  };
  const auto here = outputs(m.graph), there = outputs(next->graph);
  // The ONNX model's rows come first; a Keras head's layers (one row each) have their shapes already.
  const size_t onnx_rows = m.layers.size() - std::min(m.layers.size(), spec.model.layers.size());
  for (size_t r = 0; r < onnx_rows; ++r) {
    models::LayerInfo& l = m.layers[r];
    auto a = here.find(l.name), b = there.find(l.name);
    if (a == here.end() || b == there.end() || a->second.first != l.type) continue;
    const Shape &s1 = a->second.second, &s2 = b->second.second;
    if (s1.rank() != s2.rank()) continue;
    std::vector<int64_t> d;
    bool known = true;
    for (int i = 0; i < s1.rank(); ++i) {
      const int64_t k = s1[i] / batch;
      if (s1[i] == s2[i])
        d.push_back(s1[i]);
      else if (s1[i] % batch == 0 && s2[i] == k * (batch + 1) && k > 0)
        d.push_back(-k);
      else
        known = false;  // it follows the batch some other way: keep the row as it is
    }
    if (!known) continue;
    if (!d.empty() && d[0] == -1) d.erase(d.begin());
    l.output_shape = std::move(d);
  }
}

engine::ModelFactory model_factory(const formats::ModelSpec& spec) {
  auto shared = std::make_shared<formats::ModelSpec>(spec);
  // An ONNX model file is read and parsed once, then imported for each batch size and mode.
  std::shared_ptr<const formats::OnnxModelFile> onnx = spec.model.onnx.empty() ? nullptr : open_onnx(spec);
  return [shared, onnx](int64_t batch, bool training, bool initialize) {
    models::BuiltModel m = onnx ? build_onnx(*shared, *onnx, batch, training, initialize)
                                : build(*shared, batch, training, initialize);
    engine::ForwardModel fm;
    fm.graph = std::move(m.graph);
    // Batch normalizations a data-parallel run synchronizes: the layers that ask, or every one in training
    // mode with [parallel] sync_batch_norm (an ONNX model's too).
    fm.synchronized_batch_norms = m.synchronized_norms;
    if (training && shared->parallel.sync_batch_norm)
      fm.synchronized_batch_norms = engine::ops::training_batch_norms(fm.graph);
    fm.input = m.input;
    for (const models::BuiltModel::Input& in : m.more_inputs) fm.more_inputs.push_back(in.value);
    fm.output = m.output;
    fm.final_activation = m.final_activation;
    fm.penalty = m.penalty;
    fm.output_mask = m.output_mask;
    for (const models::BuiltModel::Output& o : m.more_outputs) {
      fm.more_outputs.push_back(o.value);
      fm.more_output_masks.push_back(o.mask);
    }
    fm.constraints = m.constraints;
    return fm;
  };
}

namespace {

// Whether any data source gives sample weights: then every source feeds them (1 where it gives none).
bool any_sample_weights(const formats::ModelSpec& spec) {
  for (const auto* src : {&spec.data.train, &spec.data.validation, &spec.data.test})
    if (*src && formats::has_sample_weights(**src)) return true;
  return false;
}

// Whether any data source weighs a model's outputs apart: then every source feeds one set per output.
bool output_sample_weights(const formats::ModelSpec& spec) {
  for (const auto* src : {&spec.data.train, &spec.data.validation, &spec.data.test})
    if (*src && formats::has_output_sample_weights(**src)) return true;
  return false;
}

}  // namespace

engine::FitConfig fit_config(const formats::ModelSpec& spec) {
  const formats::TrainSection& t = spec.train;
  engine::FitConfig c;
  c.loss = t.loss;
  c.from_logits = t.from_logits;
  c.label_smoothing = t.label_smoothing;
  c.loss_options = t.loss_options;
  c.metrics = t.metrics;
  c.weighted_metrics = t.weighted_metrics;
  c.top_k = t.top_k;
  c.metric_options = t.metric_options;
  c.class_weight = t.class_weight;
  c.class_weight_by_id = t.class_weight_by_id;
  c.sample_weights = any_sample_weights(spec);
  c.sample_weights_per_output = output_sample_weights(spec);
  if (!t.outputs.empty()) {
    c.output_name = t.outputs[0].name;
    c.loss_weight = t.outputs[0].loss_weight;
    for (size_t k = 1; k < t.outputs.size(); ++k) {
      const formats::OutputTrainSpec& o = t.outputs[k];
      c.more_outputs.push_back({o.name, o.loss, o.from_logits, o.label_smoothing, o.metrics, t.top_k,
                                o.loss_weight, 1, o.weighted_metrics, o.loss_options, o.metric_options});
    }
  }
  c.epochs = t.epochs;
  c.validation_freq = t.validation_freq;
  c.steps_per_epoch = t.steps_per_epoch;
  c.validation_steps = t.validation_steps;
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
  c.optimizer.amsgrad = o.amsgrad;
  c.optimizer.centered = o.centered;
  c.optimizer.rho = static_cast<float>(o.rho);
  c.optimizer.initial_accumulator_value = static_cast<float>(o.initial_accumulator_value);
  c.optimizer.weight_decay = static_cast<float>(o.weight_decay);
  c.clipnorm = static_cast<float>(o.clipnorm);
  c.global_clipnorm = static_cast<float>(o.global_clipnorm);
  c.clipvalue = static_cast<float>(o.clipvalue);
  c.gradient_accumulation_steps = o.gradient_accumulation_steps;
  c.use_ema = o.use_ema;
  c.ema_momentum = o.ema_momentum;
  c.ema_overwrite_frequency = o.ema_overwrite_frequency;
  c.bucket_bytes = static_cast<size_t>(spec.parallel.bucket_mb * 1e6);
  c.shard_optimizer = spec.parallel.shard_optimizer;
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
  if (s.warmup_target) {  // the cosine decays from the target; learning_rate is where the warmup starts
    c.schedule.warmup_from = c.schedule.base;
    c.schedule.base = *s.warmup_target;
  }
  c.schedule.end_learning_rate = s.end_learning_rate;
  c.schedule.power = s.power;
  c.schedule.cycle = s.cycle;
  c.schedule.first_decay_steps = s.first_decay_steps;
  c.schedule.t_mul = s.t_mul;
  c.schedule.m_mul = s.m_mul;
  c.schedule.boundaries = s.boundaries;
  c.schedule.values = s.values;
  const formats::EarlyStoppingSpec& e = t.early_stopping;
  c.early_stopping.enabled = e.enabled;
  c.early_stopping.monitor = e.monitor;
  c.early_stopping.mode = e.mode;
  c.early_stopping.min_delta = e.min_delta;
  c.early_stopping.patience = e.patience;
  c.early_stopping.restore_best_weights = e.restore_best_weights;
  c.early_stopping.baseline = e.baseline;
  c.early_stopping.start_from_epoch = e.start_from_epoch;
  const formats::ReduceLrSpec& p = t.reduce_lr;
  c.reduce_lr = {p.enabled, p.monitor, p.factor, p.patience, p.mode, p.min_delta, p.cooldown, p.min_lr};
  return c;
}

namespace {

std::string shape_str(const Shape& s) {
  return s.str();
}

// One input of the model, as the data must feed it.
struct ModelInput {
  engine::ValueId value = engine::kNoValue;
  const formats::InputSpec* keras = nullptr;  // its spec (null for an ONNX model)
  bool channels_last = false;                 // a Keras image input: HWC in the spec, CHW in the IR
};

std::vector<ModelInput> model_inputs(const formats::ModelSpec& spec, const models::BuiltModel& m) {
  const bool onnx = !spec.model.onnx.empty();
  std::vector<ModelInput> out = {{m.input, onnx ? nullptr : &spec.model.input, m.input_channels_last}};
  for (size_t k = 0; k < m.more_inputs.size(); ++k)
    out.push_back({m.more_inputs[k].value, onnx ? nullptr : &spec.model.more_inputs.at(k),
                   m.more_inputs[k].channels_last});
  return out;
}

// The dataset's samples must hold exactly the input's values; images stored HWC become CHW.
void check_samples(const engine::data::Dataset& d, const formats::DataSource& src,
                   const models::BuiltModel& m, const ModelInput& input, engine::data::InputFormat* fmt) {
  const Shape& s = d.sample_shape();
  const engine::Value& in = m.graph.value(input.value);
  const std::string named = m.more_inputs.empty() ? "" : fmt::format(" '{}'", in.name);
  if (!input.keras) {
    const std::vector<int64_t> want(in.shape.dims().begin() + 1, in.shape.dims().end());
    const int64_t want_n = in.shape.numel() / std::max<int64_t>(in.shape[0], 1);
    if (s.numel() != want_n)
      throw InputError(
          src.pos.str(),
          fmt::format("{} holds samples of shape {} ({} values), but the ONNX model's input '{}' "
                      "takes [{}] ({} values) per sample",
                      d.describe(), shape_str(s), s.numel(), in.name, fmt::join(want, ", "), want_n),
          "give data whose samples fit the model's input");
    fmt->to_chw = fmt->to_hwc = false;
    fmt->chw_channels = 0;
    if (want.size() == 3) {
      // An image input: channels first ([C, H, W], ONNX's and PyTorch's order) unless the model transposes
      // it from channels last (a spec's or a Keras model's export, [H, W, C]).
      const bool channels_first = !onnx_input_channels_last(m.graph, input.value);
      auto squeezed = [](std::vector<int64_t> v) {
        std::erase(v, int64_t{1});
        return v;
      };
      if (s.rank() == 3 && !engine::is_integer(in.dtype)) {
        const std::vector<int64_t> got = {s[0], s[1], s[2]};
        // Float samples stored channels last for a [C, H, W] input are converted, as predict converts them,
        // and channels first for an [H, W, C] input (CIFAR-10 for a Keras model's export); samples in the
        // input's own order (NCHW arrays, as PyTorch saves them) are taken as they are; any other order would
        // feed scrambled images.
        const bool hwc_of_chw = channels_first && got == std::vector<int64_t>{want[1], want[2], want[0]};
        const bool chw_of_hwc = !channels_first && got == std::vector<int64_t>{want[2], want[0], want[1]};
        const bool same_order = squeezed(got) == squeezed(want);  // dimensions of 1 aside
        if (!same_order && hwc_of_chw && d.layout() == engine::data::Layout::hwc)
          fmt->to_chw = true;
        else if (!same_order && chw_of_hwc)
          fmt->to_hwc = true;
        else if (!same_order)
          throw InputError(
              src.pos.str(),
              fmt::format("{} holds samples of shape {}, and the ONNX model's input '{}' takes [{}]: the "
                          "images are in another order",
                          d.describe(), shape_str(s), in.name, fmt::join(want, ", ")),
              channels_first ? "the input is channels first ([C, H, W], as ONNX lays images out): store the "
                               "images so, or channels last ([H, W, C]) to have them converted"
                             : "the input is channels last (the model transposes it from [H, W, C]): store "
                               "the images so, or channels first ([C, H, W]) to have them converted");
      }
      // Per-channel mean and std follow the input's channel axis.
      if (!fmt->to_chw && !fmt->to_hwc && channels_first) fmt->chw_channels = want[0];
    }
    return;
  }
  const std::vector<int64_t>& want = input.keras->shape;
  int64_t want_n = 1;
  for (int64_t v : want) want_n *= v;
  if (s.numel() != want_n)
    throw InputError(
        src.pos.str(),
        fmt::format("{} holds samples of shape {} ({} values), but the model's input{} is [{}] ({} values)",
                    d.describe(), shape_str(s), s.numel(), named, fmt::join(want, ", "), want_n),
        named.empty() ? "set [model] input to the data's sample shape"
                      : fmt::format("set the shape of input{} to the data's sample shape", named));
  if (input.channels_last && want.size() == 3 && want[2] > 1) {
    // CHW data (CIFAR-10, or an array of samples of shape [C, H, W] that [H, W, C] is not) is already what
    // the IR takes; data of shape [H, W, C] is converted.
    const bool chw_shape = s.rank() == 3 && s[0] == want[2] && s[1] == want[0] && s[2] == want[1];
    const bool hwc_shape = s.rank() == 3 && s[0] == want[0] && s[1] == want[1] && s[2] == want[2];
    bool chw = d.layout() == engine::data::Layout::chw || (chw_shape && !hwc_shape);
    fmt->to_chw = !chw;
    fmt->chw_channels = chw ? want[2] : 0;
  }
}

// The input formats of a dataset of the model's inputs (the first's is `f` itself).
void check_all_samples(const engine::data::Dataset& d, const formats::DataSource& src,
                       const models::BuiltModel& m, const std::vector<ModelInput>& inputs,
                       engine::data::BatchFormat* f) {
  // The further inputs are the model's, then the sample weights, if any.
  const auto more = d.more_inputs();
  TRAINER_ASSERT(more.size() + 1 >= inputs.size() && f->more_inputs.size() == more.size());
  check_samples(d, src, m, inputs[0], f);
  for (size_t k = 0; k + 1 < inputs.size(); ++k)
    check_samples(*more[k], src, m, inputs[k + 1], &f->more_inputs[k]);
}

// The labels of an output (`output` names it in a model of several; "" otherwise) must fit its loss: one
// class id (or binary label) per position the output classifies, a sample or each step of a [steps, classes]
// output; one-hot labels and regression targets have the output's shape.
void check_labels(const std::string& loss, const std::vector<int64_t>& output_shape, const Shape& ls,
                  const engine::data::Dataset& d, const formats::DataSource& src, const std::string& output) {
  const std::string of = output.empty() ? "" : fmt::format(" (the output '{}')", output);
  // Where the labels come from: their own files when the source has them, else the samples' files.
  const std::string from = src.y.empty() ? d.describe() : fmt::format("{}", fmt::join(src.y, ", "));
  const bool sparse = loss == "sparse_categorical_crossentropy";
  if (sparse || formats::label_family(loss) == "binary_crossentropy") {
    int64_t positions = 1;
    for (int64_t v : output_shape) positions *= v;
    if (sparse && !output_shape.empty()) positions /= std::max<int64_t>(output_shape.back(), 1);
    if (ls.numel() != positions)
      throw InputError(
          src.pos.str(),
          positions == 1
              ? fmt::format("{}{} needs one label per sample, {} has labels of shape {}", loss, of, from,
                            ls.str())
              : fmt::format("{}{} needs {} labels per sample, one per {} of the output [{}], {} has "
                            "labels of shape {}",
                            loss, of, positions, sparse ? "position" : "value", fmt::join(output_shape, ", "),
                            from, ls.str()),
          positions == 1 ? "use categorical_crossentropy for one-hot labels"
          : sparse && output_shape.size() > 2
              ? "for one class per sample, put Flatten or a global pooling layer before the Dense layers"
          : sparse ? "give one class id per step, or put Flatten or a global pooling layer before the Dense "
                     "layers for one per sample"
                   : "binary_crossentropy with several outputs is multi-label (one 0/1 label per output); "
                     "for one class id per sample, use sparse_categorical_crossentropy");
  } else if (!output_shape.empty()) {
    int64_t values = 1;
    for (int64_t v : output_shape) values *= v;
    if (ls.numel() != values)
      throw InputError(
          src.pos.str(),
          fmt::format("{}{} compares the output [{}] with a label of the same shape, {} has labels "
                      "of shape {}",
                      loss, of, fmt::join(output_shape, ", "), from, ls.str()),
          loss.find("categorical") != std::string::npos
              ? "give one-hot labels of one value per class, or use sparse_categorical_crossentropy "
                "for class ids"
              : "give targets of the output's shape");
  }
}

}  // namespace

int64_t onnx_token_count(const engine::Graph& g, engine::ValueId v) {
  for (engine::ValueId c : g.value(v).consumers) {
    const engine::Node& n = g.node(c);
    // Through a Cast of the ids (an exported model's int64 -> int32) to the Gather of a table.
    if (n.op == "Cast" && engine::is_integer(g.value(n.outputs[0]).dtype))
      if (const int64_t k = onnx_token_count(g, n.outputs[0]); k > 0) return k;
    if (n.op == "Gather" && n.inputs.size() == 2 && n.inputs[1] == v &&
        (!n.attrs.has("axis") || n.attrs.i("axis") == 0) && g.initializer(n.inputs[0]))
      return g.value(n.inputs[0]).shape[0];
  }
  return 0;
}

std::vector<std::string> input_names(const models::BuiltModel& model) {
  std::vector<std::string> out = {model.graph.value(model.input).name};
  for (const models::BuiltModel::Input& in : model.more_inputs)
    out.push_back(model.graph.value(in.value).name);
  return out;
}

engine::data::BatchFormat batch_format(const formats::ModelSpec& spec, const models::BuiltModel& model) {
  const std::vector<ModelInput> inputs = model_inputs(spec, model);
  const std::vector<std::string> names = input_names(model);
  engine::data::BatchFormat f;
  // The loader's scaling is for a model of one input (a spec of several rejects it when read; an ONNX
  // model's inputs are known only now).
  if (inputs.size() > 1 && (spec.data.scale != 1 || !spec.data.mean.empty() || !spec.data.std.empty()))
    throw InputError(
        spec.data.pos.str(),
        fmt::format("data.scale, mean and std apply to a model of one input, and this model has {} "
                    "({})",
                    inputs.size(), fmt::join(names, ", ")),
        "scale the arrays before training, or put Rescaling or Normalization layers on top of the "
        "inputs in a Keras spec");
  f.scale = spec.data.scale;
  f.mean = spec.data.mean;
  f.std = spec.data.std;
  f.more_inputs.resize(inputs.size() - 1);
  const std::string& loss = spec.train.loss;
  f.y_dtype = loss == "sparse_categorical_crossentropy" ? DType::i64 : DType::f32;
  if (loss == "sparse_categorical_crossentropy" && !model.output_shape.empty())
    f.num_classes = model.output_shape.back();
  f.ignore_class = spec.train.loss_options.ignore_class;
  // Binary labels lie in [0, 1] (0/1, or a soft label between): 5, or class ids 0..9, are a mistake that
  // trains without a sign of it.
  // An output under a mask leaves its masked steps' labels alone (padding such as -1, which its loss skips).
  if (formats::label_family(loss) == "binary_crossentropy" && model.output_mask == engine::kNoValue)
    f.num_classes = 2;
  for (size_t k = 0; k < inputs.size(); ++k) {
    engine::data::InputFormat& inf = k == 0 ? f : f.more_inputs[k - 1];
    const engine::ValueId v = inputs[k].value;
    inf.x_dtype = model.graph.value(v).dtype;
    if (!engine::is_integer(inf.x_dtype)) continue;
    // Token ids feed an Embedding (an ONNX model's Gather from a table): ids outside its table are bad data,
    // named by sample.
    if (!spec.model.onnx.empty()) inf.num_tokens = onnx_token_count(model.graph, v);
    // The Embedding (TokenAndPositionEmbedding, CategoryEncoding) of the input: the first one, or with
    // several inputs the first that takes this input.
    const std::string& name = names[k];
    for (size_t li = 0; li < spec.model.layers.size(); ++li) {
      const formats::LayerSpec& l = spec.model.layers[li];
      if (l.type != "Embedding" && l.type != "CategoryEncoding" && l.type != "TokenAndPositionEmbedding")
        continue;
      const bool takes = l.inputs.empty() ? li == 0 && k == 0 : l.inputs == std::vector<std::string>{name};
      if (inputs.size() > 1 && !takes) continue;
      auto it = l.args.find(l.type == "Embedding"                   ? "input_dim"
                            : l.type == "TokenAndPositionEmbedding" ? "vocabulary_size"
                                                                    : "num_tokens");
      if (it != l.args.end() && std::holds_alternative<int64_t>(it->second.value))
        inf.num_tokens = std::get<int64_t>(it->second.value);
      break;
    }
    // Lists of word ranks (keras.datasets' imdb.npz) go past an Embedding's size unless num_words bounds
    // them.
    if (k == 0 && spec.data.sequences && inf.num_tokens > 0)
      inf.token_hint =
          spec.data.sequences->load_data
              ? fmt::format(
                    "set [data.sequences] num_words = {}: ids from it on become oov_char, as in Keras's "
                    "load_data(num_words={})",
                    inf.num_tokens, inf.num_tokens)
              : fmt::format(
                    "lists of word ranks such as keras.datasets' imdb.npz take [data.sequences] load_data "
                    "= true and num_words = {}",
                    inf.num_tokens);
  }
  // The further outputs' labels follow the inputs: class ids for sparse_categorical_crossentropy (checked
  // against the output's classes), else float targets.
  for (size_t k = 1; k < spec.train.outputs.size() && k - 1 < model.more_outputs.size(); ++k) {
    engine::data::InputFormat lf;
    lf.labels = true;
    const bool sparse = spec.train.outputs[k].loss == "sparse_categorical_crossentropy";
    lf.x_dtype = sparse ? DType::i64 : DType::f32;
    if (sparse && !model.more_outputs[k - 1].shape.empty())
      lf.label_classes = model.more_outputs[k - 1].shape.back();
    lf.label_ignore = spec.train.outputs[k].loss_options.ignore_class;
    if (formats::label_family(spec.train.outputs[k].loss) == "binary_crossentropy" &&
        model.more_outputs[k - 1].mask == engine::kNoValue)
      lf.label_classes = 2;
    f.more_inputs.push_back(lf);
  }
  return f;
}

bool onnx_input_channels_last(const engine::Graph& g, engine::ValueId input) {
  if (g.value(input).shape.rank() != 4) return false;
  for (engine::NodeId c : g.value(input).consumers) {
    const engine::Node& n = g.node(c);
    if (n.op == "Transpose" && n.domain.empty() && n.attrs.has("perm") &&
        n.attrs.ints("perm") == std::vector<int64_t>{0, 3, 1, 2})
      return true;
  }
  return false;
}

// Cross-entropy on probabilities needs probabilities: an ONNX model that ends in a linear op gives logits,
// and the log of a logit would train to NaN. PyTorch classifiers usually end so. And from_logits needs
// logits: an output that ends in softmax or sigmoid (an ONNX node, or a spec's layer) gives probabilities.
void check_output_and_loss(const formats::ModelSpec& spec, const models::BuiltModel& m) {
  const formats::TrainSection& t = spec.train;
  // An ONNX model alone is judged by the node that gives its output; a spec's output (or that of layers on
  // top of an ONNX model) by what it comes from through layers that move values and change none.
  const bool onnx_alone = !spec.model.onnx.empty() && spec.model.layers.empty();
  static const std::set<std::string> moves = {"Reshape", "Flatten",   "Identity", "Dropout",
                                              "Squeeze", "Unsqueeze", "Transpose"};
  const bool several = !t.outputs.empty();
  for (size_t k = 0; k <= m.more_outputs.size() && (!several || k < t.outputs.size()); ++k) {
    const std::string& loss = several ? t.outputs.at(k).loss : t.loss;
    const bool from_logits = several ? t.outputs.at(k).from_logits : t.from_logits;
    if (!loss.ends_with("crossentropy") || (!onnx_alone && !from_logits)) continue;
    const engine::Value& out = m.graph.value(k == 0 ? m.output : m.more_outputs[k - 1].value);
    const engine::Node* last = nullptr;
    for (engine::ValueId v = k == 0 ? m.output : m.more_outputs[k - 1].value;
         v != engine::kNoValue && m.graph.value(v).producer >= 0;) {
      last = &m.graph.node(m.graph.value(v).producer);
      if (onnx_alone || !last->domain.empty() || !moves.count(last->op) || last->inputs.empty()) break;
      v = last->inputs[0];
    }
    if (!last || !last->domain.empty()) continue;
    const formats::SourcePos& at = several ? t.outputs.at(k).loss_pos : t.loss_pos;
    const std::string where = (at.file.empty() ? t.pos : at).str();
    const bool probabilities = last->op == "Softmax" || last->op == "Sigmoid";
    // Probabilities taken as logits go through a second softmax or sigmoid: the loss is never small (and
    // class ids decided at 0 on probabilities are all 1).
    // The from_logits errors name where it was set (a --set override, say), the others the loss.
    const formats::SourcePos& set_at = several ? t.outputs.at(k).from_logits_pos : t.from_logits_pos;
    const std::string logits_where = set_at.file.empty() ? where : set_at.str();
    if (from_logits && probabilities && onnx_alone)
      throw InputError(logits_where,
                       fmt::format("from_logits is set, but the ONNX model's output '{}' comes from a {} "
                                   "node ('{}'): it gives probabilities",
                                   out.name, last->op, last->name),
                       "leave from_logits out (the loss then takes the probabilities)");
    if (from_logits && probabilities) {
      const std::string act = last->op == "Softmax" ? "softmax" : "sigmoid";
      const std::string layer = k == 0 ? (m.output_name.empty() ? m.layers.back().name : m.output_name)
                                       : m.more_outputs[k - 1].name;
      throw InputError(logits_where,
                       fmt::format("from_logits is set, but the output '{}' comes from a {}: it gives "
                                   "probabilities, which the loss would put through a second {}",
                                   layer, act, act),
                       fmt::format("leave from_logits out, or end the model without the {} (activation = "
                                   "\"linear\"; the loss then applies the {} itself)",
                                   act, act));
    }
    if (from_logits) continue;
    // LogSoftmax gives log-probabilities (PyTorch's pairing with NLLLoss): as logits, softmax recovers the
    // probabilities; as probabilities, every value is clipped and nothing trains.
    static const std::set<std::string> linear = {"Gemm", "MatMul", "Conv", "Add", "Sub", "LogSoftmax"};
    if (!linear.count(last->op)) continue;
    throw InputError(
        where,
        fmt::format("{} takes probabilities, but the ONNX model's output '{}' comes from a {} node "
                    "('{}'): it gives {}",
                    loss, out.name, last->op, last->name,
                    last->op == "LogSoftmax" ? "log-probabilities" : "logits"),
        several
            ? fmt::format("add from_logits = {{ {} = true }} to [train] (the loss then applies the softmax "
                          "or sigmoid itself)",
                          t.outputs.at(k).name)
            : "add from_logits = true to [train] (the loss then applies the softmax or sigmoid itself)");
  }
}

std::vector<int64_t> image_input_shape(const formats::ModelSpec& spec, const models::BuiltModel& model) {
  if (spec.model.onnx.empty()) return spec.model.input.shape;
  std::vector<int64_t> d = model.graph.value(model.input).shape.dims();
  d.erase(d.begin());
  const auto colours = [](int64_t c) { return c == 1 || c == 3 || c == 4; };
  if (d.size() == 3 && !colours(d[2]) && colours(d[0])) d = {d[1], d[2], d[0]};
  return d;
}

formats::SequenceSpec resolved_sequences(const formats::ModelSpec& spec, const models::BuiltModel& model) {
  formats::SequenceSpec s = *spec.data.sequences;
  const std::vector<int64_t> in = image_input_shape(spec, model);
  if (s.maxlen == 0 && in.size() == 1) s.maxlen = in[0];
  return s;
}

SpecData open_data(const formats::ModelSpec& spec, const models::BuiltModel& model,
                   const std::vector<std::string>& training_classes, bool classes_named) {
  SpecData out;
  const formats::DataSection& ds = spec.data;
  if (!ds.train)
    throw InputError(ds.pos.str(), "the spec has no [data.train] source", "add a [data.train] table");
  const std::vector<ModelInput> inputs = model_inputs(spec, model);
  const std::vector<std::string> names = input_names(model);
  // With sample weights anywhere, every source feeds them (1 for a source that gives none).
  const bool weighted = any_sample_weights(spec), per_output = output_sample_weights(spec);
  std::vector<std::string> outputs = {model.output_name};
  for (const models::BuiltModel::Output& o : model.more_outputs) outputs.push_back(o.name);
  // The weight inputs' values per sample (Keras's temporal weights: one per step), as the training source
  // gives them; the other sources must give the same, and feed ones of that shape where they give none.
  std::vector<std::vector<int64_t>>& weight_shapes = out.sample_weight_shapes;
  const size_t weight_sets = weighted ? (per_output ? outputs.size() : 1) : 0;
  formats::DatasetOptions options;
  if (ds.text) options.text = &*ds.text;
  // [data.sequences] pads to the model input's length unless it says maxlen.
  formats::SequenceSpec sequences;
  if (ds.sequences) {
    sequences = resolved_sequences(spec, model);
    if (sequences.maxlen == 0)
      throw InputError(ds.sequences->pos.str(),
                       fmt::format("[data.sequences] pads to the model input's length, and the input is [{}]",
                                   fmt::join(image_input_shape(spec, model), ", ")),
                       "give the length: maxlen = 200");
    options.sequences = &sequences;
  }
  options.image_shape = image_input_shape(spec, model);
  options.training_classes = training_classes;
  options.training_classes_named = classes_named;
  // Folders of classes give one-hot rows to a loss that compares the output with a distribution.
  {
    const std::string& loss = spec.train.outputs.empty() ? spec.train.loss : spec.train.outputs[0].loss;
    options.one_hot_labels =
        formats::label_family(loss) == "categorical_crossentropy" || loss == "categorical_hinge";
  }
  auto open = [&](const formats::DataSource& src) {
    std::shared_ptr<const engine::data::Dataset> d =
        formats::open_dataset(src, spec.base_dir, names, outputs, options);
    if (per_output)
      d = formats::with_output_sample_weights(std::move(d), src, spec.base_dir, outputs, {}, weight_shapes);
    else if (weighted)
      d = formats::with_sample_weights(std::move(d), src, spec.base_dir, {},
                                       weight_shapes.empty() ? std::vector<int64_t>{} : weight_shapes[0]);
    const auto more = d->more_inputs();
    for (size_t k = 0; k < weight_sets; ++k) {
      const engine::data::Dataset& w = *more.at(more.size() - weight_sets + k);
      std::vector<int64_t> got = w.sample_shape().dims();
      // [N, 1] is one weight per sample (as Keras takes it), unless an output has a single step.
      if (got == std::vector<int64_t>{1}) {
        bool one_step = false;
        for (size_t o = per_output ? k : 0; o < (per_output ? k + 1 : outputs.size()); ++o) {
          const std::vector<int64_t>& os = o == 0 ? model.output_shape : model.more_outputs.at(o - 1).shape;
          one_step = one_step || (os.size() >= 2 && os[0] == 1);
        }
        if (!one_step) got.clear();
      }
      if (weight_shapes.size() <= k) {
        // Keras's temporal weights: [steps] per sample, for outputs of [steps, ...].
        for (size_t o = per_output ? k : 0; o < (per_output ? k + 1 : outputs.size()); ++o) {
          const std::vector<int64_t>& os = o == 0 ? model.output_shape : model.more_outputs.at(o - 1).shape;
          if (!got.empty() && (got.size() != 1 || os.size() < 2 || os[0] != got[0]))
            throw InputError(
                src.pos.str(),
                fmt::format("{} holds {} sample weights per sample, and the model's output{} is "
                            "[{}]",
                            w.describe(), engine::Shape(got).numel(),
                            outputs.size() > 1 ? fmt::format(" '{}'", outputs[o]) : "", fmt::join(os, ", ")),
                "give one weight per sample, or one per step of an output of steps");
        }
        weight_shapes.push_back(got);
      } else if (got != weight_shapes[k]) {
        throw InputError(
            src.pos.str(),
            fmt::format("{} holds sample weights of shape {} per sample, and the training data's "
                        "are {}",
                        w.describe(), engine::Shape(got).str(), engine::Shape(weight_shapes[k]).str()),
            "give every source weights of one shape (the training data's decide it)");
      }
    }
    return d;
  };
  out.train = open(*ds.train);
  // Validation and test folders of classes label as the training folders do (a class they lack moves no
  // label), unless they name their classes.
  if (training_classes.empty() && (ds.train->format == "text" || ds.train->format == "images")) {
    options.training_classes = formats::source_classes(*ds.train, spec.base_dir);
    options.training_classes_named = !ds.train->class_names.empty();
  }
  engine::data::BatchFormat& f = out.format;
  f = batch_format(spec, model);
  // The vocabulary's ids must be ids the model takes (an Embedding's input_dim).
  if (ds.text && f.num_tokens > 0 && ds.text->max_tokens > f.num_tokens)
    throw InputError(
        ds.text->pos.str(),
        fmt::format("data.text.max_tokens is {}, and the model's embedding takes ids below {}",
                    ds.text->max_tokens, f.num_tokens),
        fmt::format("set data.text.max_tokens = {} (the embedding's input_dim or vocabulary_size)",
                    f.num_tokens));
  if (ds.text && f.num_tokens > 0 && static_cast<int64_t>(ds.text->vocabulary.size()) + 2 > f.num_tokens)
    throw InputError(
        ds.text->pos.str(),
        fmt::format("the text vocabulary gives ids up to {} ({} words after 0, padding, and 1, unknown "
                    "words), and the model's embedding takes ids below {}",
                    ds.text->vocabulary.size() + 1, ds.text->vocabulary.size(), f.num_tokens),
        fmt::format("set data.text.max_tokens = {} (the embedding's input_dim or vocabulary_size) and let "
                    "fit adapt the vocabulary, "
                    "or give at most {} words",
                    f.num_tokens, f.num_tokens - 2));
  // f32 weights, as stored: one set, or one per output.
  if (weighted) f.more_inputs.resize(f.more_inputs.size() + weight_sets);
  check_all_samples(*out.train, *ds.train, model, inputs, &f);
  if (ds.validation) {
    out.validation = open(*ds.validation);
    engine::data::BatchFormat vf = f;
    check_all_samples(*out.validation, *ds.validation, model, inputs, &vf);
    f.validation = std::make_shared<const engine::data::BatchFormat>(std::move(vf));
  } else if (ds.validation_split > 0) {
    // Keras's split: the first floor(n * (1 - validation_split)) samples train, the rest validate.
    int64_t n = out.train->size();
    const int64_t kept =
        static_cast<int64_t>(std::floor(static_cast<double>(n) * (1.0 - ds.validation_split)));
    int64_t held = n - kept;
    if (held < 1 || held >= n)
      throw InputError(
          ds.pos.str(),
          fmt::format("validation_split {} of {} samples leaves {} for validation and {} for training",
                      ds.validation_split, n, held, n - held),
          "a split of more samples: each part needs one at least");
    out.validation = engine::data::subset(out.train, n - held, n);
    out.train = engine::data::subset(out.train, 0, n - held);
  }
  if (ds.test) {
    out.test = open(*ds.test);
    engine::data::BatchFormat tf = f;
    tf.validation.reset();
    check_all_samples(*out.test, *ds.test, model, inputs, &tf);
    f.test = std::make_shared<const engine::data::BatchFormat>(std::move(tf));
  }
  // The label kind must fit each output's loss, in every source.
  auto check_source = [&](const engine::data::Dataset& d, const formats::DataSource& src) {
    check_labels(spec.train.loss, model.output_shape, d.label_shape(), d, src,
                 model.more_outputs.empty() ? "" : model.output_name);
    const auto more = d.more_inputs();
    for (size_t k = 0; k < model.more_outputs.size(); ++k) {
      const engine::data::Dataset& labels = *more.at(inputs.size() - 1 + k);
      check_labels(spec.train.outputs.at(k + 1).loss, model.more_outputs[k].shape, labels.sample_shape(),
                   labels, src, model.more_outputs[k].name);
    }
  };
  check_source(*out.train, *ds.train);
  if (ds.validation) check_source(*out.validation, *ds.validation);
  if (ds.test) check_source(*out.test, *ds.test);
  return out;
}

size_t adapt_text(formats::ModelSpec& spec) {
  formats::DataSection& ds = spec.data;
  if (!ds.text || !ds.text->vocabulary.empty() || !ds.train || ds.train->format != "text") return 0;
  formats::TextCorpus corpus = formats::read_text_source(*ds.train, spec.base_dir);
  // Keras adapts on the data that trains: a validation_split's held-out texts (the last ones) are left out.
  size_t n = corpus.texts.size();
  if (ds.validation_split > 0)
    n = static_cast<size_t>(std::floor(static_cast<double>(n) * (1.0 - ds.validation_split)));
  corpus.texts.resize(n);
  ds.text->vocabulary = formats::adapt_vocabulary(corpus.texts, *ds.text);
  if (ds.text->vocabulary.empty())
    throw InputError(ds.train->pos.str(), "the training texts hold no words to make a vocabulary of",
                     "point [data.train] x at folders of class folders of .txt files with text in them");
  return n;
}

std::vector<std::string> adapt_normalization(formats::ModelSpec& spec, const SpecData& data,
                                             const models::BuiltModel& model) {
  std::vector<std::string> adapted;
  auto& layers = spec.model.layers;
  for (size_t k = 0; k < layers.size(); ++k) {
    formats::LayerSpec& l = layers[k];
    if (l.type != "Normalization" || l.args.count("mean") || l.args.count("variance")) continue;
    // (Past an ONNX model's own rows, the spec's layers come after them.)
    const size_t row = spec.model.onnx.empty() ? k : model.layers.size() - layers.size() + k;
    const std::string name = row < model.layers.size() ? model.layers[row].name : l.name;
    // The input it takes, if it takes one of the model's inputs.
    const std::vector<ModelInput> inputs = model_inputs(spec, model);
    size_t q = inputs.size();
    for (size_t i = 0; i < inputs.size() && spec.model.onnx.empty(); ++i)
      if (l.inputs.empty() ? k == 0 && i == 0 : l.inputs == std::vector<std::string>{inputs[i].keras->name})
        q = i;
    if (q == inputs.size())
      throw InputError(l.pos.str(),
                       fmt::format("Normalization layer '{}' has no mean and variance, and does not take "
                                   "a model input, from which trainer fit would compute them",
                                   name),
                       spec.model.onnx.empty()
                           ? "give mean = [...] and variance = [...], or put the layer on an input"
                           : "give mean = [...] and variance = [...]: layers on an ONNX model do not adapt");
    const engine::data::InputFormat& inf = q == 0 ? data.format : data.format.more_inputs.at(q - 1);
    if (inf.x_dtype != DType::f32)
      throw InputError(l.pos.str(), fmt::format("Normalization layer '{}' takes token ids", name),
                       "normalize float features");
    // The feature axis in the IR's sample layout (images are CHW there, with the channels first).
    const std::vector<int64_t>& keras = inputs[q].keras->shape;
    const int rank = static_cast<int>(keras.size());
    int64_t axis = -1;  // Keras's default
    if (auto it = l.args.find("axis");
        it != l.args.end() && std::holds_alternative<int64_t>(it->second.value))
      axis = std::get<int64_t>(it->second.value);
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) continue;  // the layer's build reports it
    const Shape ir = model.graph.value(inputs[q].value).shape;
    const int ir_axis = inputs[q].channels_last ? (axis == rank - 1 ? 0 : static_cast<int>(axis) + 1)
                                                : static_cast<int>(axis);
    const int64_t features = ir[ir_axis + 1];
    int64_t inner = 1;
    for (int d = ir_axis + 2; d < ir.rank(); ++d) inner *= ir[d];
    const int64_t per_sample = ir.numel() / ir[0];
    std::vector<double> sum(static_cast<size_t>(features), 0.0), sq(static_cast<size_t>(features), 0.0);
    int64_t samples = 0;
    engine::data::BatchLoader loader(data.train, 256, data.format, false, 0);
    loader.start_epoch(0);
    engine::data::Batch b;
    while (loader.next(&b)) {
      const float* x = static_cast<const float*>(b.xs[q]);
      for (int64_t i = 0; i < b.size * per_sample; ++i) {
        const size_t f = static_cast<size_t>((i % per_sample) / inner % features);
        sum[f] += x[i];
        sq[f] += static_cast<double>(x[i]) * x[i];
      }
      samples += b.size;
    }
    const double count = static_cast<double>(samples) * static_cast<double>(per_sample / features);
    std::vector<double> mean(sum.size()), variance(sum.size());
    for (size_t f = 0; f < sum.size(); ++f) {
      mean[f] = count > 0 ? sum[f] / count : 0.0;
      variance[f] = count > 0 ? std::max(sq[f] / count - mean[f] * mean[f], 0.0) : 1.0;
    }
    l.args["mean"] = formats::Arg{mean, l.pos, {}};
    l.args["variance"] = formats::Arg{variance, l.pos, {}};
    adapted.push_back(name);
  }
  return adapted;
}

void rethrow_at_spec_place(const formats::ModelSpec& spec, const InputError& e) {
  const formats::SourcePos* pos = nullptr;
  std::string whose;  // a model of several outputs: the output whose loss is at fault
  if (e.where() == "train.loss")
    pos = &spec.train.loss_pos;
  else if (e.where().starts_with("train.early_stopping"))
    pos = &spec.train.early_stopping.pos;
  else if (e.where().starts_with("train.reduce_lr_on_plateau"))
    pos = &spec.train.reduce_lr.pos;
  else if (e.where() == "train.class_weight")
    pos = &spec.train.class_weight_pos;
  else if (e.where() == "train.metrics")
    pos = &spec.train.metrics_pos;
  else if (e.where() == "train.weighted_metrics")
    pos = &spec.train.weighted_metrics_pos;
  for (const formats::OutputTrainSpec& o : spec.train.outputs) {
    if (e.where() == "train.loss." + o.name) {
      pos = &o.loss_pos;
      whose = fmt::format(" (the output '{}')", o.name);
    }
    // (the metrics' messages name their output)
    if (e.where() == "train.metrics." + o.name) pos = &o.metrics_pos;
    if (e.where() == "train.weighted_metrics." + o.name) pos = &o.weighted_metrics_pos;
  }
  if (!pos || pos->file.empty()) throw e;
  std::string what = e.what();
  throw InputError(pos->str(), what.substr(std::min(what.size(), e.where().size() + 2)) + whose, e.hint());
}

}  // namespace trainer::cli
