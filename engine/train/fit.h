// The training loop behind `trainer fit`: a model factory (one forward graph per batch size and mode),
// datasets, and a configuration in Keras's terms become a set of plans sharing one arena (training for the
// full and the last partial batch, evaluation likewise), run epoch by epoch with validation, metrics,
// schedules, clipping and early stopping. It knows nothing of TOML or the command line: cli/ translates a
// ModelSpec into a FitConfig.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/data/dataset.h"
#include "engine/ir/graph.h"
#include "engine/optim/optimizer.h"

namespace trainer::engine {

struct LearningRateSchedule {
  std::string kind = "constant";  // constant | step | exponential | cosine
  double base = 0.001;
  int64_t step_size = 0;          // step
  double gamma = 0.1;             // step
  int64_t decay_steps = 0;        // exponential, cosine
  double decay_rate = 0.96;       // exponential
  bool staircase = false;         // exponential
  double alpha = 0.0;             // cosine: final fraction
  int64_t warmup_steps = 0;       // linear warmup from base/warmup_steps to base, then the schedule (shifted)
  double at(int64_t step) const;  // step is 0-based
};

struct EarlyStopping {
  bool enabled = false;
  std::string monitor = "val_loss";
  std::string mode = "auto";  // auto: max for accuracies, min otherwise
  double min_delta = 0.0;
  int64_t patience = 0;
  bool restore_best_weights = false;
};

struct FitConfig {
  std::string
      loss;  // sparse_categorical_crossentropy | categorical_crossentropy | binary_crossentropy | mse | mae
  bool from_logits = false;
  std::vector<std::string> metrics;  // accuracy, top_k_accuracy
  int64_t top_k = 5;
  int64_t epochs = 1;
  int64_t batch_size = 32;
  uint64_t seed = 0;
  bool shuffle = true;
  OptimizerConfig optimizer;
  LearningRateSchedule schedule;
  float clipnorm = 0;
  EarlyStopping early_stopping;
};

// The forward model for one batch size and mode. Parameter and state names must not depend on either, so that
// all plans share them.
struct ForwardModel {
  Graph graph;
  ValueId input = kNoValue;
  ValueId output = kNoValue;
  std::string final_activation;  // "softmax", "sigmoid", ... ("" when unknown)
};
using ModelFactory = std::function<ForwardModel(int64_t batch, bool training)>;

using Logs = std::vector<std::pair<std::string, double>>;  // in display order: loss, metrics, val_loss, ...

struct EpochReport {
  int64_t epoch = 0;  // 1-based
  int64_t epochs = 0;
  int64_t steps = 0;
  Logs logs;
  double seconds = 0;
  double samples_per_s = 0;
};

struct FitPlanInfo {
  int64_t train_samples = 0, val_samples = 0, steps_per_epoch = 0;
  size_t arena_bytes = 0;
  int plans = 0;
  std::string device;
};

class FitObserver {
 public:
  virtual ~FitObserver() = default;
  virtual void on_train_begin(const FitPlanInfo&) {}
  virtual void on_batch_end(int64_t epoch, int64_t step, int64_t steps, const Logs& running) {}
  virtual void on_epoch_end(const EpochReport&) {}
};

struct FitResult {
  std::vector<EpochReport> history;
  bool stopped_early = false;
  int64_t best_epoch = 0;  // with early stopping: the epoch whose weights were kept
  int interrupted_by = 0;  // a signal number when a stop was requested, else 0
  double seconds = 0;
  Logs test;  // loss and metrics on the test data, when given (prefixed "test_")
};

// Requests a stop after the current step (set from a signal handler with the signal's number).
extern std::atomic<int> g_stop_signal;

// Trains. The batch loaders are built here from the datasets and `format`. Errors in the data are InputError;
// a NaN or infinite loss is RuntimeError naming the epoch and step.
FitResult fit(const ModelFactory& factory, std::shared_ptr<const data::Dataset> train,
              std::shared_ptr<const data::Dataset> validation, std::shared_ptr<const data::Dataset> test,
              const data::BatchFormat& format, const FitConfig& config, Backend& backend,
              FitObserver& observer);

// Peak arena bytes of the training plan for one batch size (trainer summary).
size_t planned_training_bytes(const ModelFactory& factory, const FitConfig& config, int64_t batch,
                              Backend& backend);

}  // namespace trainer::engine
