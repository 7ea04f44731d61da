// The training loop behind `trainer fit`: a model factory (one forward graph per batch size and mode),
// datasets, and a configuration in Keras's terms become a set of plans sharing one arena (training for the
// full and the last partial batch, evaluation likewise), run epoch by epoch with validation, metrics,
// schedules, clipping and early stopping. It knows nothing of TOML or the command line: cli/ translates a
// ModelSpec into a FitConfig.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/data/dataset.h"
#include "engine/dist/bucket_reducer.h"
#include "engine/dist/communicator.h"
#include "engine/ir/graph.h"
#include "engine/ir/tensor.h"
#include "engine/optim/optimizer.h"
#include "engine/plan/precision.h"
#include "engine/train/loss_options.h"
#include "engine/train/trace.h"
#include "engine/train/training.h"

namespace trainer::engine {

struct LearningRateSchedule {
  // constant | step | exponential | cosine | polynomial | inverse_time | cosine_restarts | piecewise_constant
  // (Keras's PolynomialDecay, InverseTimeDecay, CosineDecayRestarts and PiecewiseConstantDecay formulas)
  std::string kind = "constant";
  double base = 0.001;       // piecewise_constant: values[0]
  int64_t step_size = 0;     // step
  double gamma = 0.1;        // step
  int64_t decay_steps = 0;   // exponential, cosine (0 = the whole run, set by fit), polynomial, inverse_time
  double decay_rate = 0.96;  // exponential, inverse_time
  bool staircase = false;    // exponential, inverse_time
  double alpha = 0.0;        // cosine, cosine_restarts: final fraction
  double end_learning_rate = 0.0001, power = 1.0;  // polynomial
  bool cycle = false;                              // polynomial
  int64_t first_decay_steps = 0;                   // cosine_restarts
  double t_mul = 2.0, m_mul = 1.0;                 // cosine_restarts
  std::vector<int64_t> boundaries;                 // piecewise_constant
  std::vector<double> values;                      // piecewise_constant
  int64_t warmup_steps = 0;  // linear warmup from warmup_from (step k at k/warmup_steps of the way to base)
  double warmup_from = 0.0;  // Keras's CosineDecay(initial_learning_rate, warmup_target=base)
  // --scale-lr's factor: every rate the schedule gives (piecewise values and end_learning_rate included) is
  // multiplied by it.
  double scale = 1.0;
  double at(int64_t step) const { return scale * unscaled_at(step); }  // step is 0-based
  double scaled_base() const { return scale * base; }

 private:
  double unscaled_at(int64_t step) const;
};

struct FitConfig;
// The schedule a run uses: a cosine without decay_steps spans the whole run (epochs x steps after the
// warmup; resumed, the steps before its epoch and then the epochs left at this run's length).
struct TrainingState;
LearningRateSchedule run_schedule(const FitConfig& cfg, int64_t steps_per_epoch,
                                  const TrainingState* resume = nullptr);

struct EarlyStopping {
  bool enabled = false;
  std::string monitor = "val_loss";
  std::string mode = "auto";  // auto: max for accuracies, min otherwise
  double min_delta = 0.0;
  int64_t patience = 0;
  bool restore_best_weights = false;
  // Keras's baseline: an improvement restarts the wait only when it also beats this value (none: always).
  std::optional<double> baseline;
  // Keras's start_from_epoch: the first this many epochs are not watched (nothing improves or waits).
  int64_t start_from_epoch = 0;
};

// Keras's ReduceLROnPlateau: the learning rate (the schedule's, times a factor the run keeps) is multiplied
// by `factor` when `monitor` has not improved by min_delta for `patience` epochs, then left alone for
// `cooldown` epochs; it is not reduced below min_lr.
struct ReduceLrOnPlateau {
  bool enabled = false;
  std::string monitor = "val_loss";
  double factor = 0.1;
  int64_t patience = 10;
  std::string mode = "auto";
  double min_delta = 1e-4;
  int64_t cooldown = 0;
  double min_lr = 0.0;
};

// One output's loss and metrics (Keras's compile with dicts by output name, for a model of several).
struct OutputLoss {
  std::string name;  // the prefix of its reported quantities ("digit" -> digit_loss); "" for one output
  std::string loss;
  bool from_logits = false;
  double label_smoothing = 0;
  std::vector<std::string> metrics;
  int64_t top_k = 5;
  double weight = 1;  // its loss's weight in the loss that trains (loss_weights)
  // The values per judged row: a regression's outputs per sample, a classification's classes (1 for binary);
  // r2_score keeps sums per column. Set by fit and evaluate from the model.
  int64_t columns = 1;
  // Keras's weighted_metrics: metrics whose judged positions count their sample weights (and, in training,
  // their class weights), reported after `metrics` under weighted_metric_name.
  std::vector<std::string> weighted_metrics;
  LossOptions loss_options;  // huber's delta, the focal losses' gamma and alpha
  // What its metrics' calls set (MeanIoU's num_classes, FBetaScore's beta, ...).
  MetricOptions metric_options;
  // A binary output whose samples are rows of labels ([batch, labels]): their number, which
  // F1Score(average=...) counts apart (Keras's per-label scores); 0 for one judged otherwise (per step, per
  // pixel). Set with columns.
  int64_t labels = 0;
};

// The name a weighted metric is reported under, as Keras names it: `metric`, or weighted_METRIC when the
// output's (unweighted) `metrics` report that name already.
inline std::string weighted_metric_name(const std::vector<std::string>& metrics, const std::string& metric) {
  for (const std::string& m : metrics)
    if (m == metric) return "weighted_" + metric;
  return metric;
}

struct FitConfig {
  std::string
      loss;  // sparse_categorical_crossentropy | categorical_crossentropy | binary_crossentropy | mse | mae
  bool from_logits = false;
  double label_smoothing = 0;  // categorical and binary cross-entropy: labels y (1 - s) + s / classes
  LossOptions loss_options;    // huber's delta, the focal losses' gamma and alpha
  // accuracy, top_k_accuracy; precision, recall, auc (binary); mae, mse
  std::vector<std::string> metrics;
  int64_t top_k = 5;
  MetricOptions metric_options;  // what the first output's metrics' calls set (OutputLoss::metric_options)
  // Keras's class_weight, by class id (empty: none): the training loss weighs each sample by its class's
  // weight, averaged over the batch's samples; evaluation is unweighted, as in Keras.
  std::vector<double> class_weight;
  bool class_weight_by_id = false;  // keyed by class id: classes past the last weigh 1 (else one per class)
  // Keras's sample_weight: every loss graph (training and evaluation) takes one f32 weight per sample, fed
  // after the model's inputs (the last of Dataset::more_inputs()), and the loss is the mean of the weighted
  // per-sample losses (divided by the batch, or by the unmasked positions under a mask, not by the weights'
  // sum). Metrics are unweighted, as Keras's `metrics`; weighted_metrics count the weights.
  bool sample_weights = false;
  std::vector<std::string> weighted_metrics;  // the first output's (OutputLoss::weighted_metrics)
  // With several outputs: one weight input per output, in the outputs' order (Keras's sample_weight by output
  // name), instead of one for all.
  bool sample_weights_per_output = false;
  // Each weight input's values per sample: empty (one weight), or [steps] (Keras's temporal weights, one
  // per step of an output of [batch, steps, ...]). Missing entries are empty.
  std::vector<std::vector<int64_t>> sample_weight_shapes;
  // A model of several outputs (ForwardModel::more_outputs): the fields above are the first output's, named
  // output_name and weighing loss_weight; more_outputs are the others'. The loss that trains and is reported
  // as `loss` is the weighted sum of the outputs' losses (plus the penalties); each output's own loss is
  // reported as NAME_loss and its metrics as NAME_METRIC, as Keras reports them. The further outputs' labels
  // are fed after the model's further inputs (Dataset::more_inputs()), before the sample weights; class
  // weights apply to a model of one output only.
  std::string output_name;
  double loss_weight = 1;
  std::vector<OutputLoss> more_outputs;
  int64_t epochs = 1;
  // Keras's validation_freq: validation runs after epochs N, 2N, ...; early stopping, ReduceLROnPlateau and
  // save_best skip a val_ monitor on the epochs between, as Keras's callbacks skip a missing quantity.
  int64_t validation_freq = 1;
  // Keras's steps_per_epoch: an epoch is this many steps, read on from where the last one stopped through
  // passes over the training data (each shuffled by its own number); 0: an epoch is one pass.
  int64_t steps_per_epoch = 0;
  // Keras's validation_steps: validation reads the first this many batches of the validation data; 0: all.
  int64_t validation_steps = 0;
  int64_t batch_size = 32;
  uint64_t seed = 0;
  bool shuffle = true;
  OptimizerConfig optimizer;
  LearningRateSchedule schedule;
  float clipnorm = 0, global_clipnorm = 0, clipvalue = 0;  // see TrainingOptions
  // Keras 3's: the update averages the gradients of this many steps and is made on every this-many-th
  // global step (the others only add theirs); Adam's bias correction and the schedule count every step.
  int64_t gradient_accumulation_steps = 1;
  // Keras 3's use_ema (TrainingOptions): at the end of a run that was not interrupted, the weights become
  // their moving averages, before early stopping restores its best ones and before the test data.
  bool use_ema = false;
  double ema_momentum = 0.99;
  int64_t ema_overwrite_frequency = 0;
  EarlyStopping early_stopping;
  ReduceLrOnPlateau reduce_lr;
  Precision precision = Precision::fp32;  // resolved (never "auto"); see engine/plan/precision.h
  size_t bucket_bytes = 25'000'000;       // gradients per reduction bucket with several replicas
  bool shard_optimizer = false;           // ZeRO-1 across replicas (see Replicas)
};

// The forward model for one batch size and mode. Parameter and state names must not depend on either, so that
// all plans share them.
struct ForwardModel {
  Graph graph;
  ValueId input = kNoValue;
  std::vector<ValueId> more_inputs;  // a model's second, third, ... input, fed from Dataset::more_inputs()
  ValueId output = kNoValue;
  // A model of several outputs: the second, third, ... output and each one's Keras mask (or kNoValue).
  std::vector<ValueId> more_outputs, more_output_masks;
  std::string final_activation;  // "softmax", "sigmoid", ... ("" when unknown)
  ValueId penalty = kNoValue;    // a scalar added to the loss (weight regularizers), or none
  // [batch, steps] float: which steps of a per-step output count (a Keras mask), or none.
  ValueId output_mask = kNoValue;
  // Weight constraints applied after each update, by parameter name (TrainingOptions::constraints).
  std::map<std::string, WeightConstraint> constraints;
  // Training-mode BatchNormalization nodes to normalize with the global batch's statistics across replicas
  // (BatchNormalization(synchronized = true), [parallel] sync_batch_norm). A data-parallel run rewrites them
  // (synchronized_factory); a single device keeps the fused op, which computes the same.
  std::vector<NodeId> synchronized_batch_norms;
};
// Builds the forward model for a batch size and mode. With `initialize` false the weights' initial values
// may be left at zero: the caller needs the graph's shapes alone, or takes the values from another graph of
// the run (a device's plans share one copy of the weights, which its first training plan uploads).
using ModelFactory = std::function<ForwardModel(int64_t batch, bool training, bool initialize)>;

// What a data-parallel run plans with: `factory`'s training models with their synchronized_batch_norms
// rewritten into per-replica statistics averaged across the replicas (ops::synchronize_batch_norm).
ModelFactory synchronized_factory(ModelFactory factory);

// Every output's loss settings, the first output's (FitConfig's own fields) first.
std::vector<OutputLoss> output_losses(const FitConfig& cfg);

using Logs = std::vector<std::pair<std::string, double>>;  // in display order: loss, metrics, val_loss, ...

struct EpochReport {
  int64_t epoch = 0;  // 1-based
  int64_t epochs = 0;
  int64_t steps = 0;
  Logs logs;
  double seconds = 0;
  double samples_per_s = 0;
  // The optimizer's learning rate after the epoch, as Keras's optimizer.learning_rate reads then: the
  // schedule's rate of the next step, times a plateau's factor.
  double next_learning_rate = std::numeric_limits<double>::quiet_NaN();
  // The optimizer's updates so far (Keras's optimizer.iterations): the steps, over N under gradient
  // accumulation, less those skipped for an fp16 overflow.
  int64_t optimizer_iterations = 0;
};

struct FitPlanInfo {
  // val_samples: those validation evaluates (the first validation_steps batches' with it).
  int64_t train_samples = 0, val_samples = 0, steps_per_epoch = 0;
  int64_t steps_per_pass = 0;      // batches in a pass over the training data (steps_per_epoch's default)
  int64_t accumulation_steps = 1;  // steps per update (gradient accumulation)
  size_t arena_bytes = 0;
  // Held by the plans' kernels outside the arena: a recurrence's records, a convolution's operands in
  // oneDNN's layouts.
  size_t held_bytes = 0;
  int plans = 0;
  std::string device;
  uint64_t signature = 0;  // of the full-batch training plan
};

class FitObserver {
 public:
  virtual ~FitObserver() = default;
  virtual void on_train_begin(const FitPlanInfo&) {}
  // After each batch: the 1-based epoch, the batch's number in it of `steps`, the steps trained in the whole
  // run so far (the resumed run's included; the schedule's count), and the epoch's running logs.
  virtual void on_batch_end(int64_t epoch, int64_t step, int64_t steps, int64_t global_step,
                            const Logs& running) {}
  virtual void on_epoch_end(const EpochReport&) {}
  // Whether on_weights should see the model's parameters after this (1-based) epoch; reading them copies
  // every parameter from the device, so an observer asks only for the epochs it uses.
  virtual bool wants_weights(int64_t epoch) const { return false; }
  // The parameters by name after the epoch's update, right after its on_epoch_end.
  virtual void on_weights(int64_t epoch, const std::vector<std::pair<std::string, Tensor>>& weights) {}
};

// Everything a run needs to continue exactly where it stopped, besides the spec: the position in the data,
// the running sums of the epoch in progress, early stopping's memory, the history, and every parameter and
// state value (optimizer moments, running statistics) by name. The random streams need nothing more: shuffles
// are keyed by (seed, epoch) and dropout by (seed, step, element).
struct TrainingState {
  int64_t epoch = 0;        // 0-based epoch in progress (== epochs when training is complete)
  int64_t batch = 0;        // batches of that epoch already trained
  int64_t global_step = 0;  // steps trained in all
  // Where the next batch comes from in the stream of passes over the training data (pass p in the order
  // keyed by (seed, p)): the pass and the samples of it already trained. Without steps_per_epoch an epoch is
  // a pass, and data_pass is the epoch; with it, epochs run on through the passes.
  int64_t data_pass = 0, data_samples = 0;
  // What orders the passes (sample count, seed, shuffle, a fingerprint of the data): a run resumed in the
  // middle of a pass must order it alike. Empty in checkpoints from before it was kept.
  std::string data_order;
  // The steps_per_epoch of the run that wrote the state (0: an epoch was a pass over the data); a run resumed
  // in the middle of an epoch must keep it.
  int64_t steps_per_epoch = 0;
  // The running sums of the epoch in progress: loss, correct predictions, top-k hits and samples, then the
  // other metrics' counts (their layout follows train.metrics); empty at the start of an epoch.
  std::vector<double> metric_sums;
  // The quantities those sums report ("loss,accuracy,weighted_accuracy"): a run resumed in the middle of the
  // epoch must report the same. Empty in checkpoints from before it was kept.
  std::string metric_layout;
  double seconds = 0;      // training seconds of the epoch in progress so far
  bool have_best = false;  // early stopping
  double best = 0;
  int64_t waited = 0, best_epoch = 0;
  // Early stopping ended the run (at the end of epoch `epoch`): a resumed run trains no more.
  bool stopped = false;
  // Dynamic loss scaling (fp16): the scale, finite steps since it last changed, and the steps skipped for
  // overflow (the optimizer's update count is global_step - skipped_steps).
  // ReduceLROnPlateau: the factor on the schedule's rate, and the callback's memory.
  double lr_factor = 1.0;
  bool plateau_have_best = false;
  double plateau_best = 0;
  int64_t plateau_wait = 0, plateau_cooldown = 0;
  // save_best's memory: the best value so far of the quantity it monitors (named, so that a run resumed
  // monitoring another starts afresh).
  std::string saved_best_of;
  double saved_best = 0;
  float loss_scale = 0;  // 0: not scaling
  int64_t loss_scale_good_steps = 0;
  int64_t skipped_steps = 0;
  // sgd's momentum state ("P/momentum") holds Keras's rate-scaled velocity; false in a checkpoint of an
  // earlier version, whose velocity held gradients: a resume multiplies it by its last step's rate.
  bool rate_scaled_velocity = true;
  std::vector<EpochReport> history;
  std::vector<std::pair<std::string, Tensor>> values;
  std::vector<std::pair<std::string, Tensor>>
      best_values;  // early stopping's best weights, when it restores them
};

struct FitResult {
  std::vector<EpochReport> history;
  bool stopped_early = false;
  int64_t best_epoch = 0;  // with early stopping: the epoch whose weights were kept
  // restore_best_weights put the best epoch's weights back after the last epoch: final_state holds them, and
  // no checkpoint written during the run does.
  bool restored_best = false;
  // The weights became their moving averages at the end (use_ema): other than the last step's checkpoint.
  bool averaged = false;
  int interrupted_by = 0;  // a signal number when a stop was requested, else 0
  double seconds = 0;
  Logs test;                  // loss and metrics on the test data, when given (prefixed "test_")
  TrainingState final_state;  // where the run ended, with every value: what a final checkpoint holds
  // A run that ran all its epochs and then went back to its best weights: its last epoch's state, which a
  // resume that trains further continues from (final_state holds the best weights).
  std::optional<TrainingState> before_restore;
};

// When to hand the state to the caller for saving. The caller writes files; the loop only decides when.
struct CheckpointPolicy {
  int64_t every_epochs = 0;   // after every N epochs (0: never)
  int64_t every_steps = 0;    // after every N steps (0: never)
  std::string save_best;      // a log name ("val_loss"): also save when it improves
  std::string mode = "auto";  // for save_best: min | max | auto (max for accuracies)
  bool on_interrupt = true;   // save when a stop is requested
};
// restored: the end of a run whose weights restore_best_weights put back after its last epoch.
enum class SaveReason { epoch, steps, best, interrupt, restored };
using SaveFn = std::function<void(const TrainingState&, SaveReason)>;

// Requests a stop after the current step (set from a signal handler with the signal's number).
extern std::atomic<int> g_stop_signal;

// Trains. The batch loaders are built here from the datasets and `format`. Errors in the data are InputError;
// a NaN or infinite loss is RuntimeError naming the epoch and step.
FitResult fit(const ModelFactory& factory, std::shared_ptr<const data::Dataset> train,
              std::shared_ptr<const data::Dataset> validation, std::shared_ptr<const data::Dataset> test,
              const data::BatchFormat& format, const FitConfig& config, Backend& backend,
              FitObserver& observer, const CheckpointPolicy& policy = {}, const SaveFn& save = {},
              const TrainingState* resume = nullptr);

// Data parallelism: the replicas this process runs, one backend and one communicator each, ranks
// first_rank .. first_rank + backends.size() - 1 of world_size. Every rank computes its slice of every global
// batch (config.batch_size stays the global batch: rank r takes rows [r n / W, (r + 1) n / W) of a batch of
// n), gradient buckets are summed across ranks as backward produces them, each slice's gradient weighted by
// its share of the batch, and every replica applies the same update. Metrics are the sample-weighted mean
// over the slices. Evaluation, checkpoints and the observer use the first replica (rank 0 writes what the CLI
// prints).
struct Replicas {
  std::vector<Backend*> backends;
  std::vector<dist::Communicator*> comms;  // empty with a single replica in a world of one
  int world_size = 1;
  int first_rank = 0;
  bool allow_uneven = false;  // a global batch that the ranks do not divide is an error unless this is set
  // With ranks in other processes: reduces the metrics' sums over host memory, so every rank logs the global
  // batch's metrics (MPI). Null when every rank is in this process.
  dist::Communicator* host_comm = nullptr;
  Trace* trace = nullptr;  // when set: each replica's steps, bucket-ready moments and reductions (--trace)
};
FitResult fit(const ModelFactory& factory, std::shared_ptr<const data::Dataset> train,
              std::shared_ptr<const data::Dataset> validation, std::shared_ptr<const data::Dataset> test,
              const data::BatchFormat& format, const FitConfig& config, const Replicas& replicas,
              FitObserver& observer, const CheckpointPolicy& policy = {}, const SaveFn& save = {},
              const TrainingState* resume = nullptr);

// The optimizer's state (moments, accumulators) in bytes: in all, and the most one of `replicas` replicas
// holds (the whole with one replica or without shard_optimizer; about 1/replicas with it).
struct OptimizerStateBytes {
  size_t total = 0;
  size_t per_replica = 0;
};
OptimizerStateBytes optimizer_state_bytes(const ModelFactory& factory, const FitConfig& config, int64_t batch,
                                          int replicas);

// Peak arena bytes of the training plan for one global batch size (trainer summary), plus what its kernels
// hold outside the arena on `backend` (Backend::held_bytes: a recurrence's records, a convolution's reordered
// operands). With `replicas` > 1, those of one replica as fit plans it: the largest slice of the batch and,
// with [parallel] shard_optimizer, the first replica's shard of the optimizer state.
size_t planned_training_bytes(const ModelFactory& factory, const FitConfig& config, int64_t batch,
                              Backend& backend, int replicas = 1);

// One training step as fit plans it at batch size `batch`: forward, loss, backward and optimizer update,
// with the values a step feeds and reads (trainer bench runs it on synthetic batches). Nodes
// [0, backward_begin) are the forward pass and loss, [backward_begin, update_begin) the backward pass, and
// the rest gradient clipping and the optimizer update.
struct TrainingStep {
  std::shared_ptr<Graph> graph;
  ValueId x = kNoValue, y = kNoValue, output = kNoValue, loss = kNoValue;
  std::vector<ValueId> more_x;  // a model's second, third, ... input, then the sample weights if any
  // A model of several outputs: the second, third, ... output and the labels input of each (among more_x).
  std::vector<ValueId> more_output, more_y;
  ValueId learning_rate = kNoValue, iteration = kNoValue;
  std::vector<ValueId> gradients;             // per trainable parameter: what PlanOptions::gradients buckets
  std::map<ValueId, std::string> grad_param;  // gradient -> its parameter's name
  NodeId backward_begin = 0, update_begin = 0;
  std::vector<uint8_t> phase;  // per node id: 0 forward, 1 backward, 2 update (TrainingGraph::phase)
};
// `shard`: ZeRO-1's ranges of the parameters this replica updates (TrainingOptions::shard, shard_split).
TrainingStep training_step(const ModelFactory& factory, const FitConfig& config, int64_t batch,
                           const std::map<std::string, TrainingOptions::ShardRange>* shard = nullptr);

// ZeRO-1's split of the trainable parameters' elements among `world` replicas, exactly as fit makes it: a
// piece is where one parameter meets one replica's range (trainer bench times the sharded step with it).
struct ShardSplit {
  struct Piece {
    std::string param;
    int owner = 0;
    int64_t offset = 0, count = 0;  // in the parameter's flattened elements
  };
  std::vector<Piece> pieces;
  std::map<std::string, TrainingOptions::ShardRange> ranges_of(int rank) const;
};
ShardSplit shard_split(const ModelFactory& factory, const FitConfig& config, int world);

// Whether ZeRO-1 sums each gradient range into its owner only: not with clipping or fp16 loss scaling, which
// read every gradient on every replica (the buckets are then all-reduced).
bool shard_reduces_to_owner(const FitConfig& config);

class Session;
// A replica's gradient buckets as its BucketReducer sums them: each gradient whole, or with `to_owner`
// (ZeRO-1 reducing into the owners) each of its ranges to its owner. `param_of`: gradient -> parameter name.
// `accumulating`: the plan accumulates gradients, and its gradient buckets are reduced on update steps only.
std::vector<dist::BucketReducer::Bucket> reduction_buckets(Session& session,
                                                           const std::map<ValueId, std::string>& param_of,
                                                           const ShardSplit* to_owner,
                                                           bool accumulating = false);
// ZeRO-1's all-gather after a step, for replica `rank`: each range from its owner's "P@shard" into P.
std::vector<dist::Communicator::Copy> shard_gathers(Session& session, const ShardSplit& split, int rank);

// Loss and metrics of the model `factory` builds in inference mode (its initializers are the weights) on
// every sample of `data`, the last partial batch included, as fit computes its validation logs; names are
// `prefix` + "loss", "accuracy", ... (trainer evaluate).
Logs evaluate(const ModelFactory& factory, std::shared_ptr<const data::Dataset> data,
              const data::BatchFormat& format, const FitConfig& config, Backend& backend,
              const std::string& prefix = "");

}  // namespace trainer::engine
