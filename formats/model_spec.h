// ModelSpec: what a model description (a TOML file in Keras's vocabulary) says, with the source position of
// every value so that the layer library, the data readers and the fit loop report errors at the right place.
// formats/model_spec.cpp parses and validates the TOML; models/ turns the model section into an IR graph.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "engine/train/loss_options.h"

namespace trainer::formats {

inline constexpr int kModelSpecFormatVersion = 1;

// "file:line:col" of a value in the spec, or of a --set override ("--set train.epochs=3").
struct SourcePos {
  std::string file;
  int line = 0;
  int col = 0;
  std::string str() const;  // "model.toml:12:5", "model.toml" when the line is unknown
  bool operator==(const SourcePos&) const = default;
};

// A layer argument as written: TOML scalars and homogeneous arrays.
using ArgValue = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
                              std::vector<std::string>>;

struct Arg {
  ArgValue value;
  SourcePos pos;      // the value's
  SourcePos key_pos;  // the key's (an unknown argument is reported there); empty: the value's
  bool operator==(const Arg&) const = default;
  const SourcePos& where_key() const { return key_pos.file.empty() ? pos : key_pos; }
};

// One layer in Keras's vocabulary. The parser checks the table's structure (type, name, inputs); the layer
// library checks the arguments against each layer's Keras signature and reports unknown ones.
struct LayerSpec {
  std::string type;    // Keras class name: "Dense", "Conv2D", "LSTM", ...
  std::string name;    // given, or generated Keras-style: "dense", "dense_1", ...
  bool named = false;  // the spec gives the name (to_toml writes only such names)
  // Graph form: the layers (or model inputs) it takes, each defined earlier; empty: the previous layer (the
  // first input for the first layer).
  std::vector<std::string> inputs;
  std::map<std::string, Arg> args;  // every other key of the layer's table
  // Keras's shared layer: the layer of this name (listed before it) called again, on this layer's inputs,
  // with the same weights. Its type and arguments are that layer's (copied here); "" for a layer of its own.
  std::string shares;
  SourcePos pos;       // the layer's table
  SourcePos type_pos;  // its `type` value: where an unknown layer type is reported
  bool operator==(const LayerSpec&) const = default;
};

struct InputSpec {
  // "input" for `input = ...`; a [[model.inputs]] table's name, which layers name in their `inputs`.
  std::string name = "input";
  std::vector<int64_t> shape;     // per sample, Keras-style (channels last for images): [28, 28, 1]
  std::string dtype = "float32";  // float32 | int32 | int64 (token ids for Embedding)
  SourcePos pos;
  bool operator==(const InputSpec&) const = default;
};

// Either layers in Keras's vocabulary (input and layers), or an ONNX model file (onnx, with freeze).
struct ModelSection {
  InputSpec input;  // the first input: `input`, or the first [[model.inputs]] table
  // A model of several inputs ([[model.inputs]]): the second, third, ...; sample i of each goes with sample
  // i of the first.
  std::vector<InputSpec> more_inputs;
  std::vector<LayerSpec> layers;
  // An ONNX model file, relative to the spec's folder (resolve_data_path). It defines the inputs and the
  // layers, its graph inputs taking the data; its single output is the model's output, or what `layers`,
  // when given, take (as "onnx" in their inputs).
  std::string onnx;
  // Glob patterns (fnmatch(3): *, ?, [...]) on the ONNX model's initializer names: the initializers they
  // match stay fixed while training; matched running statistics keep their BatchNormalization in inference
  // form.
  std::vector<std::string> freeze;
  // With onnx: the value to take as the ONNX model's output instead of its own: one of several graph
  // outputs, or an intermediate value, which cuts the model there (a pretrained network without its
  // classifier, for new layers on top). "" = the model's single output.
  std::string output;
  SourcePos output_pos;
  // Keras's Model(outputs=[...]): the layers whose outputs the model gives, in order, each with its own
  // labels, loss and metrics ([train] keys written as tables by output name). Empty: the last layer. With
  // onnx and no layers on top, values of the ONNX model (its graph outputs, or any others, as `output`).
  std::vector<std::string> outputs;
  std::vector<SourcePos> outputs_pos;  // one per name
  // The ONNX file's bytes when they came from a checkpoint, which embeds them so that it needs no other file;
  // null when the model is read from `onnx`. Not a setting: same_settings ignores it.
  std::shared_ptr<const std::string> onnx_bytes;
  SourcePos pos;
  SourcePos onnx_pos;
  std::vector<SourcePos> freeze_pos;  // one per pattern
  bool operator==(const ModelSection&) const = default;
};

// One data source: a reader format and its files. Readers (formats/data_*.cpp) interpret the options.
struct DataSource {
  std::string format;  // idx | cifar10 | npy | npz | csv | text | images; "" = from the file extension
  std::vector<std::string> x;  // feature files (globs allowed; resolved relative to the spec's folder)
  std::vector<std::string> y;  // label files, for formats that keep labels apart (idx, npy); empty otherwise
  std::string x_key = "x";     // npz array names
  std::string y_key = "y";
  // A model of several inputs. npy: each input's feature files, by input name (`x` written as a table; `x`
  // is then empty). npz: each input's array name when it is not the input's name (`x_key` as a table).
  std::map<std::string, std::vector<std::string>> x_by_input;
  std::map<std::string, std::string> x_keys;
  // A model of several outputs: each output's label files, by output name (`y` written as a table; `y` is
  // then empty), or each output's array of the .npz when it is not the output's name (`y_key` as a table).
  std::map<std::string, std::vector<std::string>> y_by_output;
  std::map<std::string, std::string> y_keys;
  // Keras's sample_weight: one weight per sample, from .npy files (sample_weight) or from an array of the
  // .npz x files (sample_weight_key); neither: every sample weighs 1.
  std::vector<std::string> sample_weight;
  std::string sample_weight_key;
  // A model of several outputs: each output's weights apart (Keras's sample_weight dict), .npy files by
  // output name (`sample_weight` written as a table) or arrays of the .npz by output name
  // (`sample_weight_key` as a table); an output left out weighs 1.
  std::map<std::string, std::vector<std::string>> sample_weight_by_output;
  std::map<std::string, std::string> sample_weight_keys;
  bool header = true;        // csv
  std::string label_column;  // csv: a column name, or a 0-based index written as digits; "" = last column
  int64_t limit = 0;         // use only the first N samples (0: all); handy for quick runs
  // text, images: the class folders to read, in label order (Keras's class_names); empty: every folder,
  // sorted.
  std::vector<std::string> class_names;
  SourcePos pos;
  bool operator==(const DataSource&) const = default;
};

// Keras's TextVectorization, which the loader applies to the texts of "text" sources: each text
// standardized, split at white space, and its words turned into ids (0 pads, 1 stands for a word outside the
// vocabulary, the vocabulary's words count from 2), cut or padded to output_sequence_length.
struct TextSpec {
  int64_t max_tokens = 0;              // ids in all, 0 and 1 included; 0: every word of the vocabulary
  int64_t output_sequence_length = 0;  // ids per text (required)
  std::string standardize = "lower_and_strip_punctuation";  // | lower | strip_punctuation | none
  std::string padding = "post";     // where zeros go: post (Keras's TextVectorization) | pre (pad_sequences)
  std::string truncating = "post";  // which end a long text loses: post | pre
  // The words of ids 2, 3, ...: given (a list, or a file of one word per line, read when the spec is), or
  // left out for trainer fit to adapt on the training texts (the most frequent first), after which the
  // checkpoint's spec holds them.
  std::vector<std::string> vocabulary;
  SourcePos pos;
  bool operator==(const TextSpec&) const = default;
};

// How arrays of Python lists of token ids (numpy object arrays in .npy and .npz files, as keras.datasets'
// imdb.npz and reuters.npz hold them) become rows of ids: with load_data, Keras's load_data id mapping
// ([start_char] + each id + index_from, then ids outside [skip_top, num_words) become oov_char), then Keras's
// pad_sequences (cut and padded to maxlen).
struct SequenceSpec {
  int64_t maxlen = 0;              // 0: the model input's length
  std::string padding = "pre";     // where `value` goes: pre (pad_sequences) | post
  std::string truncating = "pre";  // which end a long sequence loses: pre | post
  int64_t value = 0;
  bool load_data = false;
  int64_t num_words = 0;  // 0: every id
  // start_char and oov_char -1: Keras's None (no start id; ids outside [skip_top, num_words) dropped)
  int64_t skip_top = 0, start_char = 1, oov_char = 2, index_from = 3;
  SourcePos pos;
  bool operator==(const SequenceSpec&) const = default;
};

// Without a [data] table (enough for summary and check) every source is empty; with one, train is required.
struct DataSection {
  std::optional<DataSource> train;
  std::optional<DataSource> validation;
  // Fraction of train held out (its last samples, as Keras does) when there is no validation source.
  double validation_split = 0;
  std::optional<DataSource> test;
  // Feature preprocessing, applied by the loader: x = (x * scale - mean) / std.
  double scale = 1.0;        // e.g. 1/255 for 8-bit images
  std::vector<double> mean;  // one value, or one per channel
  std::vector<double> std;
  bool shuffle = true;
  std::optional<TextSpec> text;           // [data.text]: how "text" sources become token ids
  std::optional<SequenceSpec> sequences;  // [data.sequences]: how lists of token ids become rows
  SourcePos pos;
  bool operator==(const DataSection&) const = default;
};

struct ScheduleSpec {
  // constant | step | exponential | cosine, and Keras's polynomial (PolynomialDecay), inverse_time
  // (InverseTimeDecay), cosine_restarts (CosineDecayRestarts), piecewise_constant (PiecewiseConstantDecay)
  std::string kind = "constant";
  int64_t step_size = 0;              // step: decay every step_size steps
  double gamma = 0.1;                 // step: factor
  int64_t decay_steps = 0;            // exponential, cosine, polynomial, inverse_time
  double decay_rate = 0.96;           // exponential, inverse_time
  bool staircase = false;             // exponential, inverse_time
  double alpha = 0.0;                 // cosine, cosine_restarts: final fraction of the learning rate
  double end_learning_rate = 0.0001;  // polynomial
  double power = 1.0;                 // polynomial
  bool cycle = false;                 // polynomial
  int64_t first_decay_steps = 0;      // cosine_restarts
  double t_mul = 2.0, m_mul = 1.0;    // cosine_restarts: period and height factors of each restart
  std::vector<int64_t> boundaries;    // piecewise_constant: steps where the rate changes
  std::vector<double> values;         // piecewise_constant: the rates (one more than boundaries)
  int64_t warmup_steps = 0;           // linear warmup from 0 (any kind)
  // cosine: Keras's warmup_target, the rate the warmup rises to and the cosine decays from; the warmup then
  // starts at the optimizer's learning_rate (Keras's initial_learning_rate) instead of 0.
  std::optional<double> warmup_target;
  SourcePos pos;
  bool operator==(const ScheduleSpec&) const = default;
};

// A loss's own arguments, as Keras's loss classes take them: Huber(delta=2.0),
// BinaryFocalCrossentropy(gamma=3.0, alpha=0.5, apply_class_balancing=True). Written in the spec as that call
// (`loss = "Huber(delta=2.0)"`); the defaults are Keras's.
using LossOptions = engine::LossOptions;

// The optimizer `text` names (Keras's class names too: "SGD" is sgd), or "" for none.
std::string optimizer_name(const std::string& text);

// The loss as the spec writes it: its name, or the call of its non-default options
// ("huber(delta=2.0)").
std::string loss_call_text(const std::string& loss, const LossOptions& options);

// The loss whose labels and outputs `loss` takes: binary_crossentropy for binary_focal_crossentropy,
// categorical_crossentropy for categorical_focal_crossentropy, else the loss itself.
std::string label_family(const std::string& loss);

struct OptimizerSpec {
  std::string name = "adam";  // sgd | adam | adamw | rmsprop | adagrad | adamax | nadam | lion | adadelta
  double learning_rate = 0.001;
  double beta_1 = 0.9, beta_2 = 0.999, epsilon = 1e-7;  // beta_2: Keras's 0.99 for lion
  double momentum = 0.0;
  bool nesterov = false;
  bool amsgrad = false;                    // adam, adamw
  bool centered = false;                   // rmsprop
  double rho = 0.9;                        // Keras's 0.95 for adadelta
  double initial_accumulator_value = 0.1;  // adagrad
  double weight_decay = 0.0;               // when not given: 0, or Keras's 0.004 for adamw
  // Keras's gradient clipping, at most one of them > 0: each gradient to this L2 norm, all of them together
  // to this global norm, each element to [-clipvalue, clipvalue].
  double clipnorm = 0.0, global_clipnorm = 0.0, clipvalue = 0.0;
  // Keras 3's gradient_accumulation_steps: the gradients of this many steps are averaged into one update,
  // made every this-many-th step (1: every step).
  int64_t gradient_accumulation_steps = 1;
  // Keras 3's use_ema: an exponential moving average of the weights, taken after every step
  // (ema_momentum, 0.99), which the weights become every ema_overwrite_frequency steps (0: never) and at the
  // end of training.
  bool use_ema = false;
  double ema_momentum = 0.99;
  int64_t ema_overwrite_frequency = 0;
  ScheduleSpec schedule;
  SourcePos pos;
  bool operator==(const OptimizerSpec&) const = default;
};

struct EarlyStoppingSpec {
  bool enabled = false;
  std::string monitor = "val_loss";
  std::string mode = "auto";  // auto | min | max
  double min_delta = 0.0;
  int64_t patience = 0;
  bool restore_best_weights = false;
  std::optional<double> baseline;  // Keras's: the value the monitor must beat for the wait to restart
  int64_t start_from_epoch = 0;    // Keras's: epochs trained before the monitor is watched
  SourcePos pos;
  bool operator==(const EarlyStoppingSpec&) const = default;
};

// [train.reduce_lr_on_plateau]: Keras's ReduceLROnPlateau. The table's presence turns it on.
struct ReduceLrSpec {
  bool enabled = false;
  std::string monitor = "val_loss";
  double factor = 0.1;        // in (0, 1): the learning rate is multiplied by it
  int64_t patience = 10;      // epochs without improvement before a reduction
  std::string mode = "auto";  // auto | min | max
  double min_delta = 1e-4;
  int64_t cooldown = 0;  // epochs after a reduction before counting again
  double min_lr = 0.0;   // the learning rate is not reduced below this
  SourcePos pos;
  bool operator==(const ReduceLrSpec&) const = default;
};

// [train.checkpoint]: when `trainer fit` writes checkpoints under --output-dir. The table's presence turns it
// on; without it, a run with --output-dir still writes one checkpoint at the end and one when interrupted.
struct CheckpointSpec {
  bool enabled = false;
  int64_t every_epochs = 1;   // 0: not by epochs
  int64_t every_steps = 0;    // 0: not by steps
  int64_t keep_last = 3;      // periodic checkpoints kept (0: all)
  std::string save_best;      // a reported quantity ("val_loss"): keep best.ckpt for it; "" = off
  std::string mode = "auto";  // auto | min | max
  SourcePos pos;
  bool operator==(const CheckpointSpec&) const = default;
};

// One output's loss and metrics in a model of several outputs (Keras's compile with dicts by output name).
struct OutputTrainSpec {
  std::string name;  // the output layer's: the prefix of its reported quantities (digit_loss, ...)
  std::string loss;
  LossOptions loss_options;
  bool from_logits = false;
  double label_smoothing = 0;
  std::vector<std::string> metrics;
  std::vector<std::string> weighted_metrics;  // Keras's: counting the sample (and class) weights
  double loss_weight = 1;                // its loss counts this much in the loss that trains (loss_weights)
  engine::MetricOptions metric_options;  // what its metrics' calls set: MeanIoU's num_classes, ...
  SourcePos loss_pos;
  SourcePos from_logits_pos;  // where from_logits was set (its key, or the loss's call); none if not
  SourcePos metrics_pos, weighted_metrics_pos;  // where the lists are given; none if not
  bool operator==(const OutputTrainSpec&) const = default;
};

struct TrainSection {
  // sparse_categorical_crossentropy | categorical_crossentropy | binary_crossentropy | mse | mae (the reader
  // maps Keras's mean_squared_error and mean_absolute_error). "" only when the spec has no [train] (enough
  // for summary and check; fit needs a loss).
  std::string loss;
  LossOptions loss_options;
  bool from_logits = false;
  double label_smoothing = 0;  // categorical and binary cross-entropy, as Keras's
  // accuracy, top_k_accuracy (with top_k), precision, recall, auc, mae, mse; the loss is always reported
  std::vector<std::string> metrics;
  // Keras's weighted_metrics: the same metrics, each judged position counting its sample weight (and its
  // class weight in training); reported as NAME, or weighted_NAME when `metrics` reports NAME too.
  std::vector<std::string> weighted_metrics;
  // A model of several outputs ([model] outputs): each output's settings, in the model's order (loss,
  // from_logits, label_smoothing and metrics above are then the first output's). Empty for one output.
  std::vector<OutputTrainSpec> outputs;
  int64_t top_k = 5;
  // What the metrics' calls set (MeanIoU's num_classes, checked against the output's classes, FBetaScore's
  // beta, ...). In a model of several outputs, the first's (each output's is in `outputs`).
  engine::MetricOptions metric_options;
  // Keras's class_weight: the weight of each class's samples in the training loss, by class id (empty: all
  // 1).
  std::vector<double> class_weight;
  // Given as a table keyed by class id: the classes past its highest key weigh 1. An array has one weight
  // per class of the output.
  bool class_weight_by_id = false;
  SourcePos class_weight_pos;
  int64_t epochs = 1;
  // Keras's validation_freq: the validation data is evaluated after every N-th epoch (N, 2N, ...); monitors
  // of val_ quantities skip the epochs between.
  int64_t validation_freq = 1;
  // Keras's steps_per_epoch: an epoch is this many steps, the data read on from where the last epoch stopped
  // (into the next shuffled pass at a pass's end); 0 (not given): an epoch is one pass over the data.
  int64_t steps_per_epoch = 0;
  // Keras's validation_steps: validation evaluates the first this many batches; 0 (not given): all.
  int64_t validation_steps = 0;
  int64_t batch_size = 32;  // global
  uint64_t seed = 0;
  // auto | fp32 | tf32 | bf16 | fp16. auto: bf16 on a GPU of compute capability 8.0 or newer, else fp32. The
  // CLI resolves it once it knows the device (cli/common.h).
  std::string precision = "auto";
  SourcePos precision_pos;  // empty: not in the spec
  OptimizerSpec optimizer;
  EarlyStoppingSpec early_stopping;
  ReduceLrSpec reduce_lr;
  CheckpointSpec checkpoint;
  SourcePos pos;
  SourcePos loss_pos;
  SourcePos from_logits_pos;  // where from_logits was set (its key, or the loss's call); none if not
  SourcePos metrics_pos, weighted_metrics_pos;  // where the lists are given; none if not
  bool operator==(const TrainSection&) const = default;
};

// The quantities a run reports for its training data: loss, then per output (several) its loss, then the
// metrics, each output's prefixed with its name ("digit_accuracy"), as Keras names them.
std::vector<std::string> reported_quantities(const TrainSection& train);

// Data parallelism: how gradients are grouped for their reduction across replicas.
struct ParallelSection {
  double bucket_mb =
      25;  // gradients per bucket, in MB (1e6 bytes): each bucket is reduced as soon as it is ready
  // ZeRO-1: each replica keeps the optimizer state of its share of the parameters, updates only those, and
  // sends the new values to the others.
  bool shard_optimizer = false;
  // Every BatchNormalization of the model (its layers', an ONNX model's) normalizes with the global batch's
  // statistics across replicas, as BatchNormalization(synchronized = true) does.
  bool sync_batch_norm = false;
  SourcePos pos;
  bool operator==(const ParallelSection&) const = default;
};

struct ModelSpec {
  int format_version = kModelSpecFormatVersion;
  std::string path;      // the spec file, as given
  std::string base_dir;  // its folder, absolute: relative data paths resolve here
  ModelSection model;
  DataSection data;
  TrainSection train;
  ParallelSection parallel;
  bool operator==(const ModelSpec&) const = default;
};

// Parses and validates a spec file; `overrides` are --set KEY=VALUE strings applied as if written in the
// file. Unknown keys, wrong types, impossible values: InputError with file:line:col and a did-you-mean hint.
// KEY is a dotted path ("train.optimizer.learning_rate", "model.layers.0.units": layers by 0-based index);
// VALUE is a TOML value, or else a bare string. Overridden values report "--set KEY=VALUE" as their place.
ModelSpec load_model_spec(const std::string& path, const std::vector<std::string>& overrides = {});
// A spec file's text, read once (a pipe's too); a directory, an unreadable path and more than 16 MiB (a
// device such as /dev/zero) are InputErrors.
std::string read_spec_text(const std::string& path);
// The same from text (tests); `path` names it in errors and sets base_dir.
ModelSpec parse_model_spec(const std::string& text, const std::string& path,
                           const std::vector<std::string>& overrides = {});

// `trainer fit MODEL.onnx --train TRAIN.toml`: the TOML file supplies data, loss, optimizer and metrics, and
// its [model] table, if any, only `freeze` and layers on top of the model; model.onnx is `onnx_path`, taken
// relative to the TOML's folder (its place in errors is the path as given).
ModelSpec load_onnx_training_spec(const std::string& onnx_path, const std::string& toml_path,
                                  const std::vector<std::string>& overrides = {});
// A spec of an ONNX model alone, with no data or training settings (`trainer summary MODEL.onnx`).
ModelSpec load_onnx_model_spec(const std::string& onnx_path, const std::vector<std::string>& overrides = {});

// The resolved spec as TOML text, every setting spelled out (defaults included, keys that do not apply to the
// chosen optimizer or schedule left out). Parsing it gives the same settings: checkpoints embed it.
std::string to_toml(const ModelSpec& spec);

// Equal settings: everything but source positions, path and base_dir.
bool same_settings(const ModelSpec& a, const ModelSpec& b);

// Keras's other names of a layer class (MaxPool2D, AvgPool1D, GlobalAvgPool2D, Convolution2D, ...) as the
// class's own name (MaxPooling2D, ...); any other name unchanged. The spec reader stores layers so.
std::string canonical_layer_type(const std::string& type);

// A data path as the readers open it: absolute paths unchanged, relative ones against spec.base_dir.
std::string resolve_data_path(const ModelSpec& spec, const std::string& path);

}  // namespace trainer::formats
