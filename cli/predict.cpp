// trainer predict: a model (a checkpoint or an ONNX file) applied to samples streamed from a file or stdin,
// one batch at a time in constant memory, with class ids or output rows written to stdout as CSV or NPY.
#include <onnx/onnx_pb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "cli/checkpoint_io.h"
#include "cli/common.h"
#include "engine/train/session.h"
#include "engine/util/error.h"
#include "formats/data_image.h"
#include "formats/data_npy.h"
#include "formats/onnx_import.h"
#include "formats/stream_input.h"
#include "formats/stream_output.h"

namespace trainer::cli {

namespace {

using engine::DType;
using engine::Shape;

// An inference graph for one batch size, with the values predict feeds and reads.
struct InferenceGraph {
  std::shared_ptr<engine::Graph> graph;
  std::vector<engine::ValueId> inputs;   // in the model's order
  std::vector<engine::ValueId> outputs;  // the ones predict writes, in the model's order
};

// What predict needs of a model, whichever file it came from.
struct PredictModel {
  // The inference graph at a batch size, giving the outputs `outputs` (indices into the model's).
  std::function<InferenceGraph(int64_t batch, const std::vector<size_t>& outputs)> build;
  struct Input {
    std::string name;
    std::vector<int64_t> sample_shape;  // per sample, as the samples are given (channels last for images)
    engine::data::BatchFormat format;   // dtype, scaling and layout (BatchFormat's InputFormat part)
    bool onnx_channels_last = false;    // an ONNX image input the model transposes from [H, W, C]
  };
  std::vector<Input> inputs;  // in the model's order: one INPUT file each
  int64_t fixed_batch = 0;    // an ONNX input whose batch dimension is a number
  // The model's outputs: the output layers of a spec of several (else "output"), an ONNX model's graph
  // outputs; and for each, where a single output's class id turns 1 (0 for a model trained on logits).
  std::vector<std::string> outputs;
  std::vector<double> thresholds;
  // Each output's training loss when the model says it (a checkpoint's spec, or the spec an exported model
  // holds); "" when unknown. A regression's values are written as they are; a binary cross-entropy of several
  // columns gives a 0 or 1 per column (multi-label).
  std::vector<std::string> losses;
  std::vector<size_t> written = {0};  // the ones predict writes (--output): one, or all in order
  std::string kind;                   // "checkpoint" or "ONNX model"
  std::string path;
  std::vector<std::string> notes;  // for stderr: how predict reads the model where that may surprise
  // A checkpoint trained on text data ([data.text]): INPUT is text, a sample per line, vectorized so.
  std::shared_ptr<const formats::TextVectorizer> text;
  // A checkpoint trained on image folders (format = "images"): image files and folders of them are INPUT
  // too, decoded and resized to this [height, width, channels] as fit read the training images.
  std::vector<int64_t> image_shape;
  // A checkpoint trained with [data.sequences] (its maxlen resolved): NPY and NPZ arrays of Python lists of
  // token ids are mapped and padded as fit read them.
  std::optional<formats::SequenceSpec> sequences;
};

// The loss output k was trained with: [train] loss for a model of one output, else its own; "" for none.
std::string loss_of_output(const formats::ModelSpec& spec, size_t k) {
  if (spec.train.outputs.empty()) return k == 0 ? spec.train.loss : std::string();
  return k < spec.train.outputs.size() ? spec.train.outputs[k].loss : std::string();
}

// A regular file, or a missing one (whose reader then says so); not a pipe or a device.
bool is_regular_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode);
}

// A checkpoint starts with the safetensors header length and '{' (whatever its name); anything else is taken
// as ONNX (whose parser then names what is wrong with it).
bool is_checkpoint(const std::string& path) {
  // A pipe (<(cat m.ckpt), a FIFO) cannot be peeked at and then read again.
  if (!is_regular_file(path))
    throw InputError(path, "the model is not a regular file (a pipe or a device)",
                     "save the checkpoint or ONNX model to a file first; INPUT may come from a pipe");
  std::ifstream f(path, std::ios::binary);
  char head[9] = {};
  return f.read(head, sizeof head) && head[8] == '{';
}

PredictModel checkpoint_model(const std::string& path) {
  LoadedCheckpoint ck = load_training_checkpoint(path);
  formats::ModelSpec spec = ck.spec();
  PredictModel m;
  // An ONNX model whose inputs fix the batch dimension may hold it in shape constants, so that the graph
  // builds at few batch sizes: it runs at the batch size it trained at (which built), the last batch padded.
  bool fixed = false;
  const int64_t probe_at = probe_batch(spec, &fixed);
  if (fixed) m.fixed_batch = probe_at;
  models::BuiltModel probe = build(spec, probe_at, false, false);  // shapes alone
  m.kind = "checkpoint";
  m.path = path;
  // The loader's preparation of the training data, so the model sees inputs as it did in training.
  const engine::data::BatchFormat all = batch_format(spec, probe);
  const std::vector<std::string> names = input_names(probe);
  for (size_t k = 0; k < names.size(); ++k) {
    PredictModel::Input in;
    in.name = names[k];
    const engine::ValueId v = k == 0 ? probe.input : probe.more_inputs[k - 1].value;
    const bool channels_last = k == 0 ? probe.input_channels_last : probe.more_inputs[k - 1].channels_last;
    if (spec.model.onnx.empty()) {
      in.sample_shape = k == 0 ? spec.model.input.shape : spec.model.more_inputs.at(k - 1).shape;
    } else {  // an ONNX model's input says it: its dimensions after the batch
      const std::vector<int64_t> dims = probe.graph.value(v).shape.dims();
      in.sample_shape.assign(dims.begin() + 1, dims.end());
    }
    static_cast<engine::data::InputFormat&>(in.format) =
        k == 0 ? static_cast<const engine::data::InputFormat&>(all) : all.more_inputs[k - 1];
    in.format.to_chw = channels_last && in.sample_shape.size() == 3 && in.sample_shape[2] > 1;
    // An ONNX model's [C, H, W] input fed in its own order takes per-channel constants channel first, as fit
    // gives them (check_sample_shape turns on to_chw instead for data stored channels last).
    const std::vector<int64_t>& ss = in.sample_shape;
    in.onnx_channels_last = !spec.model.onnx.empty() && onnx_input_channels_last(probe.graph, v);
    in.format.chw_channels = !spec.model.onnx.empty() && ss.size() == 3 && !in.onnx_channels_last ? ss[0] : 0;
    m.inputs.push_back(std::move(in));
  }
  if (spec.data.text && !spec.data.text->vocabulary.empty() && m.inputs.size() == 1)
    m.text = std::make_shared<const formats::TextVectorizer>(*spec.data.text);
  if (spec.data.train && spec.data.train->format == "images" && m.inputs.size() == 1)
    m.image_shape = image_input_shape(spec, probe);
  if (spec.data.sequences && m.inputs.size() == 1) {
    m.sequences = resolved_sequences(spec, probe);
    if (m.sequences->maxlen == 0) m.sequences.reset();
  }
  // A model trained on logits has its decision boundary at 0.
  m.outputs = {probe.output_name.empty() ? std::string("output") : probe.output_name};
  m.thresholds = {spec.train.from_logits ? 0.0 : 0.5};
  m.losses = {loss_of_output(spec, 0)};
  for (size_t k = 0; k < probe.more_outputs.size(); ++k) {
    m.outputs.push_back(probe.more_outputs[k].name);
    const bool logits = k + 1 < spec.train.outputs.size() && spec.train.outputs[k + 1].from_logits;
    m.thresholds.push_back(logits ? 0.0 : 0.5);
    m.losses.push_back(loss_of_output(spec, k + 1));
  }
  engine::ModelFactory factory = trained_model_factory(spec, std::move(ck.state.values), path);
  m.build = [factory](int64_t batch, const std::vector<size_t>& outputs) {
    engine::ForwardModel fm = factory(batch, false, false);
    std::vector<engine::ValueId> inputs = {fm.input};
    inputs.insert(inputs.end(), fm.more_inputs.begin(), fm.more_inputs.end());
    InferenceGraph g{std::make_shared<engine::Graph>(std::move(fm.graph)), inputs, {}};
    for (size_t k : outputs) {
      g.outputs.push_back(k == 0 ? fm.output : fm.more_outputs.at(k - 1));
      g.graph->mark_output(g.outputs.back());
    }
    return g;
  };
  return m;
}

PredictModel onnx_model(const std::string& path, int64_t batch) {
  // The initializers stay parameters (and running statistics state): plans share those by name, so the full
  // and the last partial batch hold one copy of the weights. Nothing trains them here. A batch dimension that
  // the model fixes is kept (the last batch is padded): changing it could silently break the model's shape
  // constants.
  auto import = [path](int64_t b) {
    formats::OnnxImportOptions o;
    o.batch_size = b;
    o.mode = formats::OnnxGraphMode::inference;  // Dropout off, BatchNormalization on its running statistics
    return formats::import_onnx_file(path, o);
  };
  formats::OnnxImportResult r = import(batch);
  if (r.inputs.empty())
    throw InputError(path, "the model has no inputs", "predict needs a graph input that takes the samples");
  if (r.outputs.empty())
    throw InputError(path, "the model has no outputs",
                     "predict writes the graph's outputs: export the model again, or list an output in "
                     "graph.output");
  PredictModel m;
  // A model exported in training mode (PyTorch's TrainingMode.TRAINING) normalizes each batch by its own
  // statistics as written; prediction uses the running statistics, as every inference does.
  {
    const formats::OnnxModelFile file(path);
    std::vector<std::string> training;
    const auto& nodes = file.model().graph().node();
    for (int k = 0; k < nodes.size(); ++k) {
      const onnx::NodeProto& n = nodes.Get(k);
      if (n.op_type() == "BatchNormalization" && (n.domain().empty() || n.domain() == "ai.onnx"))
        for (const onnx::AttributeProto& a : n.attribute())
          if (a.name() == "training_mode" && a.i() != 0)
            training.push_back(n.name().empty() ? fmt::format("node #{}", k) : n.name());
    }
    if (!training.empty())
      m.notes.push_back(
          fmt::format("note: {} BatchNormalization node{} ({}{}) {} training_mode = 1; predict normalizes "
                      "with the running statistics, as inference does (onnxruntime would use each batch's "
                      "own statistics)",
                      training.size(), training.size() == 1 ? "" : "s", training[0],
                      training.size() > 1 ? ", ..." : "", training.size() == 1 ? "has" : "have"));
  }
  m.kind = "ONNX model";
  m.path = path;
  for (engine::ValueId v : r.inputs) {
    const engine::Value& in = r.graph.value(v);
    if (in.shape.rank() == 0)
      throw InputError(
          path, fmt::format("the input '{}' is a scalar; predict needs a batch dimension", in.name), "");
    PredictModel::Input pi;
    pi.name = in.name;
    pi.sample_shape.assign(in.shape.dims().begin() + 1, in.shape.dims().end());
    pi.format.x_dtype = in.dtype;
    // Token ids outside the table an input indexes are bad data, named by sample (not wrapped or clamped).
    if (engine::is_integer(in.dtype)) pi.format.num_tokens = onnx_token_count(r.graph, v);
    pi.onnx_channels_last = onnx_input_channels_last(r.graph, v);
    if (in.shape[0] != batch) {
      if (m.fixed_batch && m.fixed_batch != in.shape[0])
        throw InputError(path,
                         fmt::format("the model's inputs fix different batch sizes ({} and {} for '{}')",
                                     m.fixed_batch, in.shape[0], in.name),
                         "export the model with one batch dimension for every input");
      m.fixed_batch = in.shape[0];
    }
    m.inputs.push_back(std::move(pi));
  }
  for (engine::ValueId v : r.outputs) {
    m.outputs.push_back(r.graph.value(v).name);
    m.thresholds.push_back(0.5);
  }
  // A model trainer exported holds its spec: an output trained on logits has its decision boundary at 0, as
  // for the checkpoint it came from. (A spec that no longer reads keeps 0.5: it only picks the threshold.)
  if (auto it = r.info.metadata.find("trainer.spec"); it != r.info.metadata.end()) {
    try {
      const formats::ModelSpec spec = formats::parse_model_spec(it->second, path + " (the spec it holds)");
      m.losses.assign(m.thresholds.size(), std::string());
      for (size_t k = 0; k < m.thresholds.size(); ++k) {
        const bool logits = k == 0 ? spec.train.from_logits
                                   : k < spec.train.outputs.size() && spec.train.outputs[k].from_logits;
        if (logits) m.thresholds[k] = 0.0;
        m.losses[k] = loss_of_output(spec, k);
      }
    } catch (const InputError&) {
    }
  }
  m.build = [import](int64_t b, const std::vector<size_t>& outputs) {
    formats::OnnxImportResult r = import(b);
    InferenceGraph g{std::make_shared<engine::Graph>(std::move(r.graph)), r.inputs, {}};
    for (size_t k : outputs) g.outputs.push_back(r.outputs.at(k));
    return g;
  };
  return m;
}

std::vector<int64_t> squeezed(const std::vector<int64_t>& s) {
  std::vector<int64_t> out;
  for (int64_t d : s)
    if (d != 1) out.push_back(d);
  return out;
}

// The samples must be the model's per-sample input: the same shape, the same values as flat rows (CSV, or a
// 2-D array), the same shape but for dimensions of 1 ([28, 28] for [28, 28, 1]), or images in the other
// order (channels last for an input of [C, H, W], channels first for one of [H, W, C]), then converted.
void check_sample_shape(const formats::SampleReader& in, PredictModel& m, size_t input) {
  const std::vector<int64_t>& got = in.sample_shape();
  const std::vector<int64_t>& want = m.inputs[input].sample_shape;
  if (in.count() == 0 && got.empty()) return;  // an empty input: no samples to check
  // Images stored channels last ([H, W, C]) for a float input of [C, H, W] (an ONNX model's, or a checkpoint
  // of one) are transposed, as trainer fit takes them.
  // Images stored channels first for a channels-last input (a spec's, or the export of one) are taken as
  // they are or transposed, as fit takes them.
  engine::data::BatchFormat& format = m.inputs[input].format;
  if (!engine::is_integer(format.x_dtype) && want.size() == 3 && got.size() == 3 && got != want) {
    const bool keras = format.to_chw;  // a spec's channels-last input, which the engine takes as [C, H, W]
    const bool channels_first = !keras && !m.inputs[input].onnx_channels_last;
    if (!keras && channels_first && want[0] > 1 && got == std::vector<int64_t>{want[1], want[2], want[0]}) {
      format.to_chw = true;
      format.chw_channels = 0;
      m.inputs[input].sample_shape = got;
      return;
    }
    if (got == std::vector<int64_t>{want[2], want[0], want[1]} && (keras || !channels_first)) {
      format.to_chw = false;
      format.to_hwc = !keras;  // an ONNX input of [H, W, C]; a spec's computes in [C, H, W]
      format.chw_channels = keras ? want[2] : 0;
      m.inputs[input].sample_shape = got;
      return;
    }
  }
  const std::string named = m.inputs.size() > 1 ? fmt::format(" input '{}'", m.inputs[input].name) : "";
  const int64_t got_n = Shape(got).numel(), want_n = Shape(want).numel();
  if (got == want) return;
  if (got_n == want_n && (got.size() == 1 || squeezed(got) == squeezed(want))) return;
  const bool csv = in.format() == formats::StreamFormat::csv;
  throw InputError(
      in.name(),
      fmt::format("the {} input holds samples of shape {} ({} values), but the {}{} takes samples of "
                  "shape [{}] ({} values)",
                  formats::stream_format_name(in.format()), Shape(got).str(), got_n, m.kind, named,
                  fmt::join(want, ", "), want_n),
      csv ? fmt::format("each CSV row is one sample of {} values", want_n)
      : in.format() == formats::StreamFormat::cifar10
          ? fmt::format("a file named .bin is read as a CIFAR-10 batch of 32x32 colour images; give samples "
                        "of shape [{}] as NPY, IDX or CSV",
                        fmt::join(want, ", "))
          : fmt::format("give an array of shape [N, {}]", fmt::join(want, ", ")));
}

// A zip archive (an .npz) starts with a local file header, or with the end record when it holds nothing
// (numpy.savez with no arrays).
bool is_npz(const std::string& path) {
  // A pipe (stdin, <(cat x.npy), a FIFO) is read as it streams: peeking would take its first bytes away.
  if (path == "-" || !is_regular_file(path)) return false;
  std::ifstream f(path, std::ios::binary);
  char head[4] = {};
  return f.read(head, sizeof head) &&
         (std::memcmp(head, "PK\x03\x04", 4) == 0 || std::memcmp(head, "PK\x05\x06", 4) == 0);
}

// The readers of an .npz INPUT: each input's array, named after the input; a model of one input reads the
// array x (as training data does by default), or the one named after its input.
std::vector<std::unique_ptr<formats::SampleReader>> npz_readers(const std::string& path,
                                                                const PredictModel& m) {
  std::vector<std::unique_ptr<formats::SampleReader>> out;
  const formats::ZipArchive zip(path);
  std::string key = m.inputs[0].name;
  if (m.inputs.size() == 1 && zip.find("x.npy")) key = "x";
  std::vector<std::string> names;
  for (const PredictModel::Input& in : m.inputs) names.push_back(in.name);
  for (size_t k = 0; k < m.inputs.size(); ++k) {
    const std::string want = k == 0 ? key : m.inputs[k].name;
    if (zip.find(want + ".npy")) continue;
    std::vector<std::string> arrays;
    for (const auto& e : zip.members())
      arrays.push_back(e.name.ends_with(".npy") ? e.name.substr(0, e.name.size() - 4) : e.name);
    throw InputError(
        path,
        fmt::format("has no array '{}' for the {}'s input '{}'; its arrays: {}", want, m.kind,
                    m.inputs[k].name, arrays.empty() ? "none" : fmt::format("{}", fmt::join(arrays, ", "))),
        m.inputs.size() == 1 ? fmt::format("name the array x or {}", m.inputs[0].name)
                             : fmt::format("name the arrays after the inputs: {}", fmt::join(names, ", ")));
  }
  if (m.sequences)
    if (auto padded = formats::padded_sequences_npy(path, key, *m.sequences)) {
      out.push_back(
          std::make_unique<formats::SampleReader>(std::move(padded), fmt::format("{}/{}.npy", path, key)));
      return out;
    }
  for (size_t k = 0; k < m.inputs.size(); ++k)
    out.push_back(std::make_unique<formats::SampleReader>(path, k == 0 ? key : m.inputs[k].name));
  return out;
}

// The device's plans for the batch sizes a pass over the input uses. With a known count, the full batch and
// the remainder share one arena (and the weights) from the start; with an unknown count (CSV) the remainder's
// plan is made when the input ends short. An input whose batch dimension the model fixes runs padded batches.
// Each sample's row holds the written outputs' values one after the other.
class Runner {
 public:
  Runner(const PredictModel& model, engine::Backend& backend, int64_t batch, int64_t count)
      : model_(model), backend_(backend), plans_(backend) {
    batch_ = model.fixed_batch             ? model.fixed_batch
             : count >= 0 && count < batch ? std::max<int64_t>(count, 1)
                                           : batch;
    std::vector<int64_t> sizes = {batch_};
    if (!model.fixed_batch && count > batch_ && count % batch_) sizes.push_back(count % batch_);
    for (int64_t b : sizes) {
      InferenceGraph g = model.build(b, model.written);
      // A model that passes an input through (a lone Dropout or Identity layer, whose inference graph is
      // empty) outputs a copy of it.
      for (engine::ValueId& o : g.outputs)
        if (g.graph->value(o).kind == engine::ValueKind::input) {
          o = g.graph->op("Identity", {o});
          g.graph->mark_output(o);
        }
      plan_[b] = {plans_.add(g.graph), g};
    }
    plans_.finalize();
    const InferenceGraph& g = plan_.at(batch_).second;
    for (size_t k = 0; k < g.outputs.size(); ++k) {
      const engine::Value& out = g.graph->value(g.outputs[k]);
      Output o;
      o.dtype = out.dtype;
      const std::string& name = model.outputs.at(model.written[k]);
      if (out.kind != engine::ValueKind::intermediate)
        throw InputError(model.path,
                         fmt::format("the output '{}' is {}, not computed from the inputs", name,
                                     out.kind == engine::ValueKind::input ? "an input" : "an initializer"),
                         "export the model with the outputs its nodes compute");
      if (out.shape.rank() < 1 || out.shape[0] != batch_)
        throw InputError(
            model.path,
            fmt::format("the output '{}' has shape {} at a batch of {}: it does not lead with the "
                        "batch",
                        name, out.shape.str(), batch_),
            "the output must be [batch, ...], one row per sample");
      const bool integer = o.dtype == DType::i64 || o.dtype == DType::i32;
      if (o.dtype != DType::f32 && o.dtype != DType::f64 && !integer)
        throw InputError(
            model.path,
            fmt::format("the output{} has dtype {}; predict reads float32, float64, int32 or int64 "
                        "outputs",
                        model.outputs.size() > 1 ? fmt::format(" '{}'", name) : "",
                        engine::dtype_name(o.dtype)),
            "");
      o.shape = std::vector<int64_t>(out.shape.dims().begin() + std::min(1, out.shape.rank()),
                                     out.shape.dims().end());
      o.columns = Shape(o.shape).numel();
      if (o.columns == 0)
        throw InputError(
            model.path,
            fmt::format("the output '{}' has shape {}: no values per sample", name, out.shape.str()),
            "export the model with an output that holds values");
      o.offset = columns_;
      columns_ += o.columns;
      outputs_.push_back(std::move(o));
    }
    for (const PredictModel::Input& in : model.inputs) {
      in_sample_bytes_.push_back(static_cast<size_t>(Shape(in.sample_shape).numel()) *
                                 engine::dtype_bytes(in.format.x_dtype));
    }
    padded_.resize(model.inputs.size());
    out_.resize(static_cast<size_t>(batch_ * columns_));
    one_.resize(out_.size());
    raw_.resize(out_.size() * sizeof(double));
  }

  struct Output {
    DType dtype = DType::f32;
    std::vector<int64_t> shape;  // per sample
    int64_t columns = 0;         // values per sample
    int64_t offset = 0;          // where its values start in a sample's row
    // A model that gives integers (class ids from an exported ArgMax): predict writes them as they are.
    bool integer() const { return dtype == DType::i64 || dtype == DType::i32; }
  };
  const std::vector<Output>& outputs() const { return outputs_; }
  int64_t batch() const { return batch_; }
  int64_t columns() const { return columns_; }
  size_t arena_bytes() const { return plans_.arena_bytes(); }

  // Runs n <= batch() samples of model input (xs[k]: input k's); returns their n rows (valid until the next
  // call), each the written outputs' values as floats. `more`: the input goes on after these (a slow pipe
  // gave fewer than a batch): they run padded in the full batch's plan rather than in a plan of their own.
  const float* run(const std::vector<const void*>& xs, int64_t n, bool more = false) {
    const bool pad = n < batch_ && (model_.fixed_batch || (more && !plan_.contains(n)));
    const int64_t b = pad ? batch_ : n;
    engine::Session& s = session(b);
    const InferenceGraph& g = graph(b);
    for (size_t k = 0; k < xs.size(); ++k) {
      const size_t row = in_sample_bytes_[k];
      const void* feed = xs[k];
      if (pad) {
        padded_[k].resize(static_cast<size_t>(batch_) * row);
        std::memcpy(padded_[k].data(), xs[k], static_cast<size_t>(n) * row);
        std::memset(padded_[k].data() + static_cast<size_t>(n) * row, 0,
                    static_cast<size_t>(batch_ - n) * row);
        feed = padded_[k].data();
      }
      s.write(g.inputs[k], feed, static_cast<size_t>(b) * row);
    }
    s.run(engine::StepContext{0, 0, 0});
    for (size_t k = 0; k < outputs_.size(); ++k) {
      const Output& o = outputs_[k];
      const size_t values = static_cast<size_t>(b * o.columns);
      float* dst = outputs_.size() == 1 ? out_.data() : one_.data();
      if (o.dtype == DType::f32) {
        s.read(g.outputs[k], dst, values * sizeof(float));
      } else {  // f64, or integers (exact as floats below 2^24, as class ids are)
        s.read(g.outputs[k], raw_.data(), values * engine::dtype_bytes(o.dtype));
        for (size_t i = 0; i < values; ++i)
          dst[i] = o.dtype == DType::f64 ? static_cast<float>(reinterpret_cast<const double*>(raw_.data())[i])
                   : o.dtype == DType::i64
                       ? static_cast<float>(reinterpret_cast<const int64_t*>(raw_.data())[i])
                       : static_cast<float>(reinterpret_cast<const int32_t*>(raw_.data())[i]);
      }
      if (outputs_.size() == 1) continue;
      for (int64_t r = 0; r < b; ++r)
        std::memcpy(out_.data() + r * columns_ + o.offset, one_.data() + r * o.columns,
                    static_cast<size_t>(o.columns) * sizeof(float));
    }
    return out_.data();
  }

 private:
  engine::Session& session(int64_t b) {
    auto it = plan_.find(b);
    if (it != plan_.end()) return plans_.session(it->second.first);
    // The input ended short and its length was not known: a plan of its own for this one batch.
    InferenceGraph g = model_.build(b, model_.written);
    extra_graph_ = g;
    extra_ = std::make_unique<engine::Session>(g.graph, backend_);
    extra_batch_ = b;
    return *extra_;
  }
  const InferenceGraph& graph(int64_t b) const {
    auto it = plan_.find(b);
    return it != plan_.end() ? it->second.second : extra_graph_;
  }

  const PredictModel& model_;
  engine::Backend& backend_;
  engine::DevicePlans plans_;
  std::map<int64_t, std::pair<int, InferenceGraph>> plan_;
  std::unique_ptr<engine::Session> extra_;
  InferenceGraph extra_graph_;
  int64_t extra_batch_ = 0;
  int64_t batch_ = 0, columns_ = 0;
  std::vector<Output> outputs_;
  std::vector<size_t> in_sample_bytes_;       // per input
  std::vector<std::vector<uint8_t>> padded_;  // per input, a short batch padded to the full one
  std::vector<float> out_, one_;              // the rows; one output's values
  std::vector<std::byte> raw_;                // an output's values in its own dtype
};

}  // namespace

Command add_predict_command(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("predict", "Apply a model to samples from a file or stdin; results to stdout");
  auto model_path = std::make_shared<std::string>();
  auto inputs = std::make_shared<std::vector<std::string>>();
  auto batch = std::make_shared<int64_t>(256);
  auto format = std::make_shared<std::string>("csv");
  auto probabilities = std::make_shared<bool>(false);
  auto quiet = std::make_shared<bool>(false);
  auto output = std::make_shared<std::string>();
  auto device = std::make_shared<DeviceOptions>();
  cmd->add_option("MODEL", *model_path, "A checkpoint written by trainer fit, or an ONNX model")->required();
  cmd->add_option(
      "INPUT", *inputs,
      "Samples: an NPY, IDX or CSV file, or a CIFAR-10 batch (.bin, or the Python version's pickle), gzip "
      "allowed; - or none: "
      "standard input. A model of "
      "several inputs takes one file per input, in the model's order, or an NPZ of arrays named "
      "after the inputs. A checkpoint trained on text data reads a text per line; one trained on "
      "image folders also takes image files and folders of them");
  cmd->add_option("--batch-size", *batch, "Samples per step (default 256)")->check(whole_number(1));
  cmd->add_option("--output-format", *format, "csv (text, the default) or npy")
      ->check(CLI::IsMember({"csv", "npy"}));
  cmd->add_flag(
      "--probabilities", *probabilities,
      "Write the model's output rows (the probabilities of a softmax or sigmoid model) instead of class "
      "ids; a regression's values are written either way");
  cmd->add_option("--output", *output,
                  "The output to write, by name, for a model of several outputs (default: the first); all: "
                  "every output, side by side in each row");
  cmd->add_flag("-q,--quiet", *quiet, "Print nothing on stderr but errors");
  device->add(cmd);
  auto run = [=]() -> int {
    auto t0 = std::chrono::steady_clock::now();
    const bool npy = *format == "npy";
    std::vector<std::string> paths = inputs->empty() ? std::vector<std::string>{"-"} : *inputs;
    if (std::count(paths.begin(), paths.end(), "-") > 1)
      throw InputError("stdin", "standard input (-) is given for two inputs", "give files for all but one");
    if (std::count(paths.begin(), paths.end(), "-") == 1 && isatty(STDIN_FILENO))
      throw InputError(
          "stdin", "no INPUT was given and standard input is a terminal",
          fmt::format("trainer predict {} x.npy, or pipe samples in: cat x.npy | trainer predict {} -",
                      *model_path, *model_path));
    if (npy && isatty(STDOUT_FILENO))
      throw InputError("stdout", "NPY output is binary and standard output is a terminal",
                       "redirect it: trainer predict ... --output-format npy > y.npy");
    // The model and the input's header come first: every mistake is found before anything is written.
    refuse_spec_as_model(*model_path, "predict");
    const bool checkpoint = is_checkpoint(*model_path);
    if (!checkpoint && !looks_like_onnx(*model_path))
      if (const std::optional<std::string> kind = other_file_kind(*model_path); kind && !kind->empty())
        throw InputError(*model_path, fmt::format("is {}, not a model", *kind),
                         "MODEL comes first: a checkpoint of trainer fit or an ONNX model, then the samples "
                         "(trainer predict MODEL INPUT)");
    PredictModel model = checkpoint ? checkpoint_model(*model_path) : onnx_model(*model_path, *batch);
    if (!*quiet)
      for (const std::string& note : model.notes) eprint("{}\n", note);
    if (*output == "all") {
      model.written.clear();
      for (size_t k = 0; k < model.outputs.size(); ++k) model.written.push_back(k);
    } else if (!output->empty()) {
      auto it = std::find(model.outputs.begin(), model.outputs.end(), *output);
      if (it == model.outputs.end())
        throw InputError("--output",
                         fmt::format("the {} has no output '{}'; its outputs: {}", model.kind, *output,
                                     fmt::join(model.outputs, ", ")),
                         [&] {
                           std::string hint = formats::did_you_mean(*output, model.outputs);
                           if (model.outputs.size() > 1)
                             hint += (hint.empty() ? "" : "; ") + std::string("--output all writes them all");
                           else if (hint.empty())
                             hint = "--output picks one output of a model of several; leave it out here";
                           return hint;
                         }());
      model.written = {static_cast<size_t>(it - model.outputs.begin())};
    }
    // Image files and folders of them, for a model trained on image folders: one NPY array made of them all.
    std::unique_ptr<formats::SampleReader> images;
    if (model.image_shape.size() == 3 && !paths.empty() &&
        std::all_of(paths.begin(), paths.end(), [](const std::string& p) {
          std::error_code ec;
          return std::filesystem::is_directory(p, ec) || formats::is_image_name(p);
        })) {
      const std::vector<int64_t>& s = model.image_shape;
      std::vector<std::string> files;
      auto npy = formats::images_as_npy(paths, s[0], s[1], s[2], &files);
      images = std::make_unique<formats::SampleReader>(
          std::move(npy),
          paths.size() == 1 ? paths[0] : fmt::format("{} and {} more", paths[0], paths.size() - 1));
      if (!*quiet)
        eprint(
            "{} image{}, in this order: {}{}\n", files.size(), files.size() == 1 ? "" : "s",
            fmt::join(files.begin(),
                      files.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(files.size(), 5)), ", "),
            files.size() > 5 ? ", ..." : "");
      paths = {paths[0]};
    }
    const bool npz = paths.size() == 1 && !images && is_npz(paths[0]);
    for (const std::string& p : paths)
      if (paths.size() > 1 && is_npz(p))
        throw InputError(p, "an .npz INPUT holds the array of every input, and other INPUTs are given",
                         fmt::format("give the .npz alone: trainer predict {} {}", *model_path, p));
    if (!npz && paths.size() != model.inputs.size()) {
      std::vector<std::string> names;
      for (const PredictModel::Input& i : model.inputs) names.push_back(i.name);
      throw InputError(
          model.path,
          fmt::format("the {} has {} input{} ({}), and {} INPUT{} given", model.kind, model.inputs.size(),
                      model.inputs.size() == 1 ? "" : "s", fmt::join(names, ", "), paths.size(),
                      paths.size() == 1 ? " is" : "s are"),
          fmt::format("give one file per input, in this order: trainer predict {} {}, or an .npz "
                      "of arrays named so",
                      *model_path, fmt::format("{}.npy", fmt::join(names, ".npy "))));
    }
    for (const PredictModel::Input& i : model.inputs) {
      const DType t = i.format.x_dtype;
      if (t != DType::f32 && t != DType::f64 && t != DType::i32 && t != DType::i64)
        throw InputError(
            model.path,
            fmt::format("the {}'s input '{}' is {}, which predict cannot feed", model.kind, i.name,
                        engine::dtype_name(t)),
            "predict feeds float32, float64, int32 or int64 inputs: export the model with a float32 "
            "input, cast inside the model");
    }
    std::vector<std::unique_ptr<formats::SampleReader>> readers;
    if (npz) readers = npz_readers(paths[0], model);
    int64_t count = -1;
    for (size_t k = 0; k < model.inputs.size(); ++k) {
      if (images)
        readers.push_back(std::move(images));
      else if (!npz) {
        // Lists of token ids (an object array) are padded as fit padded them; anything else streams.
        std::shared_ptr<const formats::Bytes> padded;
        if (model.sequences && paths[k] != "-" && is_regular_file(paths[k]))
          padded = formats::padded_sequences_npy(paths[k], "", *model.sequences);
        readers.push_back(padded       ? std::make_unique<formats::SampleReader>(std::move(padded), paths[k])
                          : model.text ? std::make_unique<formats::SampleReader>(paths[k], model.text)
                                       : std::make_unique<formats::SampleReader>(paths[k]));
      }
      const formats::SampleReader& r = *readers[k];
      check_sample_shape(r, model, k);
      if (r.count() >= 0 && count >= 0 && r.count() != count)
        throw InputError(r.name(),
                         fmt::format("{} holds {} samples for input '{}', and {} holds {}", r.name(),
                                     r.count(), model.inputs[k].name, readers[0]->name(), count),
                         "every input needs one sample per prediction: give files of equal length");
      if (r.count() >= 0) count = r.count();
    }
    formats::SampleReader& in = *readers[0];
    // NPY's header holds the row count, written before the first row: every input must say how many
    // samples it holds (CSV does not), or a shorter one would leave the array short of its header.
    for (const auto& r : readers)
      if (npy && r->count() < 0)
        throw InputError(r->name(),
                         fmt::format("NPY output needs the number of samples before the first row, and {} "
                                     "input does not say it",
                                     formats::stream_format_name(r->format())),
                         r->format() == formats::StreamFormat::text
                             ? "use --output-format csv"
                             : "use --output-format csv, or give the samples as NPY or IDX");
    // Each input's samples as stored and as the model takes them, for up to a batch.
    std::vector<formats::SampleConverter> converters;
    std::vector<std::vector<uint8_t>> raw(readers.size()), x(readers.size());
    std::vector<const void*> xs(readers.size());
    for (size_t k = 0; k < readers.size(); ++k) {
      const PredictModel::Input& mi = model.inputs[k];
      converters.emplace_back(mi.format, mi.sample_shape, readers[k]->dtype(), readers[k]->name());
    }
    auto hold = [&](int64_t samples) {
      for (size_t k = 0; k < readers.size(); ++k) {
        raw[k].resize(static_cast<size_t>(samples) * readers[k]->sample_bytes());
        x[k].resize(static_cast<size_t>(samples) * converters[k].out_sample_bytes());
        xs[k] = x[k].data();
      }
    };
    int64_t done = 0;
    // Reads the next samples, up to `max`, of every input: the same number from each, or the inputs disagree
    // in length. The first input's samples are taken as they arrive (a batch of fewer when a pipe is slow);
    // the others give as many.
    // `at`: the batch holds that many samples already, and these go after them.
    auto read = [&](int64_t max, int64_t at = 0) -> int64_t {
      int64_t n = -1;
      for (size_t k = 0; k < readers.size(); ++k) {
        const int64_t got = readers[k]->read(k == 0 ? max : std::max<int64_t>(n, 1), raw[k].data(), k == 0);
        if (n >= 0 && got != n)
          throw InputError(
              got < n ? readers[k]->name() : readers[0]->name(),
              fmt::format("{} ends after {} samples, and {} has more",
                          got < n ? readers[k]->name() : readers[0]->name(), done + at + std::min(got, n),
                          got < n ? readers[0]->name() : readers[k]->name()),
              "every input needs one sample per prediction: give files of equal length");
        n = got;
        if (got > 0)
          converters[k].convert(raw[k].data(), got, done + at,
                                x[k].data() + static_cast<size_t>(at) * converters[k].out_sample_bytes());
      }
      return n;
    };
    auto backend = device->make_backend(*quiet);
    // An input that does not say how many samples it holds (CSV) is read ahead before anything is planned, up
    // to a batch: 4097 samples, then twice as many each time while the input keeps up (a file, or a pipe that
    // is not waiting). One that ends first is known whole and planned at its own size, not at a --batch-size
    // that may be far larger (a plan's memory, and these buffers', grow with its batch).
    int64_t ahead = -1;       // samples read ahead, not yet run
    bool ahead_more = false;  // the input goes on after them
    if (count < 0 && !model.fixed_batch) {
      const int64_t most = std::min<int64_t>(*batch, 4097);
      hold(most);
      ahead = read(most);
      ahead_more = ahead == most || readers[0]->waiting();
      while (ahead_more && ahead < *batch && !readers[0]->waiting()) {
        const int64_t next = std::min<int64_t>(*batch, 2 * ahead);
        hold(next);
        const int64_t want = next - ahead, got = read(want, ahead);
        ahead += got;
        ahead_more = got == want || readers[0]->waiting();
      }
      if (!ahead_more) count = ahead;
    }
    Runner runner(model, *backend, *batch, count);
    const int64_t b = runner.batch(), columns = runner.columns();
    hold(std::max(b, ahead));
    // Class ids of each written output: one per sample, or, for an output of [batch, steps..., classes] (a
    // classification of every step), one per position, the outputs' ids side by side in a sample's row. A
    // last axis of 1 is a binary probability.
    struct Ids {
      int64_t last = 1, positions = 1, offset = 0;
      bool single = false, integer = false;
      bool raw = false;  // a regression's values, copied (columns of them)
      int64_t columns = 0;
      double threshold = 0.5;
    };
    // A regression has no class ids: its values are written, as --probabilities writes them. Beside outputs
    // that do have them (--output all), a row holds each classification's ids and each regression's values,
    // as float32.
    std::vector<Ids> id_of;
    int64_t positions = 0;  // ids (and regression values) per sample
    bool any_raw = false, all_raw = true;
    for (size_t k = 0; k < runner.outputs().size(); ++k) {
      const Runner::Output& o = runner.outputs()[k];
      Ids d;
      d.single = o.columns == 1;
      d.integer = o.integer();
      d.last = o.shape.empty() ? 1 : o.shape.back();
      d.offset = o.offset;
      d.threshold = model.thresholds.at(model.written[k]);
      const std::string loss =
          model.written[k] < model.losses.size() ? model.losses[model.written[k]] : std::string();
      const bool regression = !loss.empty() && loss.find("crossentropy") == std::string::npos &&
                              loss.find("hinge") == std::string::npos;
      d.raw = !*probabilities && regression;
      if (d.raw) {
        if (!*quiet)
          eprint(
              "trainer: {} was trained with {} (a regression): writing its output values, as "
              "--probabilities does\n",
              model.outputs.size() > 1 ? fmt::format("output '{}'", model.outputs[model.written[k]])
                                       : fmt::format("the {}", model.kind),
              loss);
        d.columns = o.columns;
        positions += d.columns;
        any_raw = true;
        id_of.push_back(d);
        continue;
      }
      all_raw = false;
      // Binary cross-entropy over several columns (multi-label): each column a 0 or 1 of its own. A hinge
      // loss scores each column against -1 and 1 (Keras turns 0/1 labels into them): its boundary is 0.
      const bool hinge = loss == "hinge" || loss == "squared_hinge";
      if ((loss.starts_with("binary_") || hinge) && !d.integer) d.last = 1;
      if (hinge) d.threshold = 0;
      d.positions = d.single ? 1 : o.columns / d.last;
      if (d.integer && !*probabilities && !d.single)
        throw InputError(model.path,
                         fmt::format("the model gives integer rows [batch, {}], not one class id per sample",
                                     fmt::join(o.shape, ", ")),
                         "use --probabilities to write the output rows");
      positions += d.positions;
      id_of.push_back(d);
    }
    // Rows as they are (--probabilities, or regressions alone), ids, or both side by side as float32.
    const bool values = *probabilities || all_raw, mixed = any_raw && !all_raw;
    const bool several = id_of.size() > 1;
    std::vector<int64_t> ids(static_cast<size_t>(mixed ? 0 : b * positions));
    std::vector<float> side_by_side(static_cast<size_t>(mixed ? b * positions : 0));
    formats::RowWriter out(STDOUT_FILENO, "stdout", npy ? formats::RowFormat::npy : formats::RowFormat::csv,
                           values || mixed ? DType::f32 : DType::i64,
                           values                     ? columns
                           : positions > 1 || several ? positions
                                                      : 0,
                           count);
    // A reader that stops early (`| head`) closes the pipe: writes then fail with EPIPE and predict stops
    // reading and exits 0, instead of being killed by SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    bool open = true;
    for (int64_t n; open && (n = ahead >= 0 ? ahead : read(b)) > 0; done += n) {
      const float* rows = runner.run(xs, n, ahead >= 0 ? ahead_more : in.waiting());
      ahead = -1;
      if (values) {
        open = out.write(rows, n);
        continue;
      }
      auto id_at = [&](const Ids& d, const float* r) -> int64_t {
        return d.integer                 ? std::llround(r[0])
               : d.single || d.last == 1 ? (r[0] > d.threshold ? 1 : 0)
                                         : std::max_element(r, r + d.last) - r;
      };
      if (mixed) {
        float* v = side_by_side.data();
        for (int64_t i = 0; i < n; ++i)
          for (const Ids& d : id_of) {
            const float* r = rows + i * columns + d.offset;
            if (d.raw) {
              v = std::copy(r, r + d.columns, v);
              continue;
            }
            for (int64_t q = 0; q < d.positions; ++q) *v++ = static_cast<float>(id_at(d, r + q * d.last));
          }
        open = out.write(side_by_side.data(), n);
        continue;
      }
      int64_t* id = ids.data();
      for (int64_t i = 0; i < n; ++i)
        for (const Ids& d : id_of)
          for (int64_t q = 0; q < d.positions; ++q)
            *id++ = id_at(d, rows + i * columns + d.offset + q * d.last);
      open = out.write(ids.data(), n);
    }
    if (open && npy && done != count)
      throw InputError(in.name(),
                       fmt::format("the input ends after {} of the {} samples it says it holds", done, count),
                       "the file is truncated: write it again");
    if (open) out.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!*quiet)
      eprint("{} samples ({}{}, {}{}) through the {}{} at batch {} in {:.2f}s{}\n", done,
             formats::stream_format_name(in.format()), in.compressed() ? " gzip" : "", in.name(),
             readers.size() > 1 ? fmt::format(" and {} more", readers.size() - 1) : "", model.kind,
             model.outputs.size() > 1 && !several
                 ? fmt::format(" (its output '{}' of {})", model.outputs[model.written[0]],
                               fmt::join(model.outputs, ", "))
             : several ? fmt::format(" (its outputs {}, side by side)", fmt::join(model.outputs, ", "))
                       : "",
             b, seconds, out.closed() ? "; the reader closed the output early" : "");
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
