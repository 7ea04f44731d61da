// Training through the C++ API: a forward graph and its loss become one training graph (forward, loss,
// backward, optimizer update), planned once and run step after step on one device.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/optim/loss_scale.h"
#include "engine/optim/optimizer.h"
#include "engine/plan/fusion.h"
#include "engine/plan/precision.h"
#include "engine/train/session.h"

namespace trainer::engine {

struct TrainingOptions {
  OptimizerConfig optimizer;
  // By parameter name. With `shard`, only non_neg (elementwise) applies to a replica's shard; a norm needs
  // the whole parameter and is an InputError there.
  std::map<std::string, WeightConstraint> constraints;
  FusionOptions fusion;
  bool fuse = true;
  size_t bucket_bytes = 25u << 20;  // gradient bucket size for reductions
  // Gradient clipping before the update, as Keras's (one of them > 0): clipnorm scales each gradient to at
  // most that L2 norm, global_clipnorm all of them together to at most that joint norm, clipvalue clips each
  // element to [-clipvalue, clipvalue].
  float clipnorm = 0, global_clipnorm = 0, clipvalue = 0;
  // Gradient accumulation (> 1): each trainable parameter P gets a state "P/accumulated_gradient"; a step
  // adds its gradient, times the fed input `replica_weight`, to it, and where the fed input `apply_update`
  // is true the update takes their sum divided by this (clipped after that, as Keras clips the average) and
  // the sum starts again from 0. Where it is false, parameters and optimizer state keep their values. The
  // sums are the values a data-parallel run reduces (TrainingGraph::gradients), on update steps only: each
  // replica gathers its own share of the global batch's gradient, weighted by that share, and one reduction
  // per update adds the replicas' sums.
  int64_t accumulation_steps = 1;
  // Keras 3's use_ema: each trainable parameter P gets a state "P/ema", after every step ema_momentum times
  // itself plus (1 - ema_momentum) times P's new value (P's new value itself at iteration 1); with
  // ema_overwrite_frequency > 0, P takes that average at every iteration it divides. Not with `shard`.
  bool use_ema = false;
  double ema_momentum = 0.99;
  int64_t ema_overwrite_frequency = 0;
  Precision precision = Precision::fp32;  // bf16/fp16: GEMMs and convolutions rewritten (plan/precision.h)
  // Dynamic loss scaling (fp16): backward runs on loss * scale (a fed input); the gradients are unscaled and
  // checked, and a step whose gradients are not all finite leaves parameters and optimizer state as they
  // were.
  bool loss_scaling = false;
  LossScaleOptions loss_scale;  // the Trainer's scaler (fit uses the defaults)
  // ZeRO-1: when set, this replica updates only these elements of the parameters (by name: a range of each
  // one's flattened elements). Each listed parameter P gets a frozen parameter "P@shard" holding those
  // elements, updated from the same range of P's gradient, with optimizer state of that size
  // ("P@shard/adam_m", ...); P itself is not updated here. Every gradient is kept as a graph output for its
  // reduction, and P's new values arrive from the shards' owners (fit gathers them after the step).
  struct ShardRange {
    int64_t offset = 0;
    int64_t count = 0;
  };
  std::optional<std::map<std::string, ShardRange>> shard;
};

// The suffix of a ZeRO-1 shard's name: "dense/kernel@shard", "dense/kernel@shard/adam_m".
inline constexpr const char* kShardSuffix = "@shard";
// The suffix of one replica's share of an accumulated gradient in a checkpoint written between two updates by
// several replicas: "dense/kernel/accumulated_gradient@replica1" (rank 1's).
inline constexpr const char* kReplicaShareSuffix = "@replica";
inline std::string replica_share_name(const std::string& accumulator, int rank) {
  return accumulator + kReplicaShareSuffix + std::to_string(rank);
}

struct TrainingGraph {
  std::shared_ptr<Graph> graph;
  ValueId loss = kNoValue;
  ValueId learning_rate = kNoValue;  // f32 scalar input, fed every step (schedules live on the host)
  ValueId iteration = kNoValue;      // i64 scalar input: the 1-based step number (Adam's bias correction)
  std::vector<OptimizerState> parameters;
  // Per parameter, in parameter order (before clipping): what a data-parallel run reduces. Under
  // gradient accumulation, the accumulated sums (TrainingOptions::accumulation_steps).
  std::vector<ValueId> gradients;
  // Under gradient accumulation, each step's own gradients, which the sums in `gradients` add up: the
  // schedule computes them first too (PlanOptions::early).
  std::vector<ValueId> step_gradients;
  ValueId gradient_norm = kNoValue;  // with global_clipnorm: the norm before clipping (a graph output)
  ValueId loss_scale = kNoValue;     // with loss_scaling: the f32 scalar input the loss is multiplied by
  ValueId grads_finite = kNoValue;   // with loss_scaling: bool scalar output, false when the step was skipped
  ValueId apply_update = kNoValue;   // with accumulation_steps > 1: bool scalar input, true on an update step
  // With accumulation_steps > 1: f32 scalar input, this replica's share of the global batch (1 alone).
  ValueId replica_weight = kNoValue;
  // State beside the optimizer's slots, whole on every replica: the accumulated gradients and the averages.
  std::vector<ValueId> other_state;
  // Nodes are appended phase by phase: [0, backward_begin) forward and loss, then backward, and from
  // update_begin gradient clipping and the optimizer update (trainer bench reports time per phase).
  NodeId backward_begin = 0, update_begin = 0;
  // Per node id: 0 forward and loss, 1 backward, 2 update. Unlike the ranges above it also places the nodes a
  // rewrite appended later (the mixed-precision Casts and low-precision GEMMs go where what they replaced
  // was).
  std::vector<uint8_t> phase;
  FusionReport fusion;
};

// Fuses, differentiates `loss` with respect to every trainable parameter, and appends the optimizer update.
// Extra values to keep readable after a step (metrics, predictions) are marked as graph outputs by the
// caller.
TrainingGraph build_training_graph(Graph forward, ValueId loss, const TrainingOptions& options);

// One device, one Program: feed a batch, step, read the loss. Steps allocate nothing.
class Trainer {
 public:
  Trainer(TrainingGraph tg, Backend& backend, uint64_t seed, const TrainingOptions& options = {});

  const TrainingGraph& training_graph() const { return tg_; }
  Session& session() { return *session_; }
  // Fed inputs by value id (the forward graph's ids are kept by build_training_graph).
  void feed(ValueId input, const Tensor& t) { session_->write(input, t); }
  void feed(ValueId input, const void* bytes, size_t n) { session_->write(input, bytes, n); }
  // Runs one step with learning rate `lr`; returns the loss. With loss scaling, a step whose gradients
  // overflowed changes nothing but the scale (DynamicLossScaler).
  float step(float lr);
  const DynamicLossScaler& loss_scaler() const { return scaler_; }
  uint64_t steps_done() const { return step_; }
  Tensor read(ValueId v) const { return session_->read(v); }
  Tensor parameter(const std::string& name) const;

 private:
  TrainingGraph tg_;
  std::unique_ptr<Session> session_;
  uint64_t seed_;
  uint64_t step_ = 0;
  DynamicLossScaler scaler_;
  int64_t accumulation_steps_ = 1;
};

}  // namespace trainer::engine
