// The fit loop: loss and label graphs per loss kind, the device's plans (train and evaluate, full and last
// partial batch) in one arena, metrics computed on the host from the fetched outputs, schedules, early
// stopping.
#include "engine/train/fit.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <limits>
#include <map>
#include <numbers>
#include <optional>
#include <set>

#include "engine/autodiff/autodiff.h"
#include "engine/dist/bucket_reducer.h"
#include "engine/dist/replica_threads.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/sync_batch_norm.h"
#include "engine/train/session.h"
#include "engine/train/training.h"
#include "engine/util/error.h"

namespace trainer::engine {

std::atomic<int> g_stop_signal{0};

LearningRateSchedule run_schedule(const FitConfig& cfg, int64_t steps_per_epoch,
                                  const TrainingState* resume) {
  LearningRateSchedule s = cfg.schedule;
  // The run's steps: those before the epoch it resumes in (at their own epochs' length), then the epochs left
  // at this one's, so that a resume that changes the epochs' length (steps_per_epoch, the batch size) goes on
  // along a schedule that ends with the run.
  const int64_t before = resume ? resume->global_step - resume->batch : 0;
  const int64_t left = cfg.epochs - (resume ? resume->epoch : 0);
  if (s.kind == "cosine" && s.decay_steps == 0)
    s.decay_steps = std::max<int64_t>(1, before + left * steps_per_epoch - s.warmup_steps);
  return s;
}

std::vector<OutputLoss> output_losses(const FitConfig& cfg) {
  std::vector<OutputLoss> out = {OutputLoss{cfg.output_name, cfg.loss, cfg.from_logits, cfg.label_smoothing,
                                            cfg.metrics, cfg.top_k, cfg.loss_weight, 1, cfg.weighted_metrics,
                                            cfg.loss_options, cfg.metric_options}};
  for (OutputLoss o : cfg.more_outputs) {
    o.top_k = cfg.top_k;
    out.push_back(std::move(o));
  }
  return out;
}

double LearningRateSchedule::unscaled_at(int64_t step) const {
  // Keras's CosineDecay warmup (from initial_learning_rate, 0 unless given, to warmup_target): step k of the
  // warmup at k / warmup_steps of the way, the first at the start.
  if (warmup_steps > 0 && step < warmup_steps)
    return warmup_from + (base - warmup_from) * static_cast<double>(step) / warmup_steps;
  int64_t s = step - warmup_steps;
  if (kind == "step")
    return step_size > 0 ? base * std::pow(gamma, static_cast<double>(s / step_size)) : base;
  if (kind == "exponential") {
    if (decay_steps <= 0) return base;
    double p = static_cast<double>(s) / decay_steps;
    if (staircase) p = std::floor(p);
    return base * std::pow(decay_rate, p);
  }
  if (kind == "cosine") {
    if (decay_steps <= 0) return base;
    double p = std::min<double>(s, decay_steps) / decay_steps;
    double c = 0.5 * (1 + std::cos(std::numbers::pi * p));
    return base * ((1 - alpha) * c + alpha);
  }
  if (kind == "polynomial") {
    if (decay_steps <= 0) return base;
    double steps = static_cast<double>(decay_steps), t = static_cast<double>(s);
    if (cycle)  // each cycle decays over the next multiple of decay_steps
      steps *= s == 0 ? 1.0 : std::ceil(t / steps);
    else
      t = std::min(t, steps);
    return (base - end_learning_rate) * std::pow(1 - t / steps, power) + end_learning_rate;
  }
  if (kind == "inverse_time") {
    if (decay_steps <= 0) return base;
    double p = static_cast<double>(s) / decay_steps;
    if (staircase) p = std::floor(p);
    return base / (1 + decay_rate * p);
  }
  if (kind == "cosine_restarts") {
    if (first_decay_steps <= 0) return base;
    double done = static_cast<double>(s) / first_decay_steps, restart;
    if (t_mul == 1.0) {
      restart = std::floor(done);
      done -= restart;
    } else {
      restart = std::floor(std::log(1 - done * (1 - t_mul)) / std::log(t_mul));
      const double before = (1 - std::pow(t_mul, restart)) / (1 - t_mul);
      done = (done - before) / std::pow(t_mul, restart);
    }
    const double c = 0.5 * std::pow(m_mul, restart) * (1 + std::cos(std::numbers::pi * done));
    return base * ((1 - alpha) * c + alpha);
  }
  if (kind == "piecewise_constant" && !values.empty()) {
    size_t i = 0;
    while (i < boundaries.size() && s > boundaries[i]) ++i;
    return values[std::min(i, values.size() - 1)];
  }
  return base;
}

namespace {

struct LossKind {
  bool sparse = false, categorical = false, binary = false, regression = false;
};

LossKind loss_kind(const std::string& loss) {
  LossKind k;
  if (loss == "sparse_categorical_crossentropy")
    k.sparse = true;
  else if (loss == "categorical_crossentropy" || loss == "categorical_focal_crossentropy")
    k.categorical = true;
  else if (loss == "binary_crossentropy" || loss == "binary_focal_crossentropy")
    k.binary = true;
  else if (loss == "mse" || loss == "mae" || loss == "huber" || loss == "log_cosh" || loss == "poisson" ||
           loss == "kl_divergence" || loss == "hinge" || loss == "squared_hinge" ||
           loss == "categorical_hinge" || loss == "cosine_similarity" || loss == "msle" || loss == "mape")
    k.regression = true;  // labels of the output's shape
  else
    throw InputError("train.loss", fmt::format("unknown loss '{}'", loss),
                     "use sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy, "
                     "binary_focal_crossentropy, categorical_focal_crossentropy, mse, mae, huber, "
                     "log_cosh, poisson, kl_divergence, hinge, squared_hinge, categorical_hinge, "
                     "cosine_similarity, msle or "
                     "mape");
  return k;
}

// A forward model with its labels input and loss; the output stays readable for metrics.
struct LossGraph {
  std::shared_ptr<Graph> graph;
  ValueId x = kNoValue, y = kNoValue, output = kNoValue, loss = kNoValue;
  // The further inputs: the model's, then the further outputs' labels (from more_x[labels_at - 1] on), then
  // the sample weights.
  std::vector<ValueId> more_x;
  size_t labels_at = 1;
  // [batch, steps] (or the labels' shape under ignore_class): the positions the loss and metrics count, when
  // masked
  ValueId mask = kNoValue;
  // With fed_counts, per output: the scalar input its masked loss's sum is divided by, or kNoValue.
  std::vector<ValueId> mask_counts;
  std::vector<ValueId> sample_ws;  // the sample weight inputs: the last of more_x (one, or one per output)
  // A model of several outputs: the second, third, ... output, its labels and mask (or none), and every
  // output's own loss (the first's included); head_loss is empty for a model of one output.
  std::vector<ValueId> more_output, more_y, more_mask, head_loss;
  std::map<std::string, WeightConstraint> constraints;  // the model's, for the training graph
};

TrainingOptions training_options(const FitConfig& cfg, const LossGraph& lg) {
  TrainingOptions o;
  o.constraints = lg.constraints;
  o.optimizer = cfg.optimizer;
  o.clipnorm = cfg.clipnorm;
  o.global_clipnorm = cfg.global_clipnorm;
  o.clipvalue = cfg.clipvalue;
  o.precision = cfg.precision;
  o.loss_scaling = cfg.precision == Precision::fp16;
  o.accumulation_steps = cfg.gradient_accumulation_steps;
  o.use_ema = cfg.use_ema;
  o.ema_momentum = cfg.ema_momentum;
  o.ema_overwrite_frequency = cfg.ema_overwrite_frequency;
  return o;
}

// A rank-0 constant of dtype t.
ValueId scalar_constant(Graph& g, double v, DType t) {
  Tensor c(t, Shape{});
  c.set_f64(0, v);
  return g.add_constant(g.unique_name("scalar"), std::move(c));
}

// Keras's other losses, written in IR ops as Keras defines them (so autodiff gives their gradients): each a
// per-sample value (a mean or sum over the sample's outputs), averaged over the batch. p is the model's
// output and y the labels, of one shape. `mean` reduces values that lead with the batch to the loss: their
// mean, weighted by their samples' weights, over the positions a mask keeps.
ValueId keras_loss(Graph& g, const std::string& loss, const LossOptions& options, ValueId p, ValueId y,
                   const std::function<ValueId(ValueId)>& mean) {
  const DType t = g.value(p).dtype;
  auto c = [&](double v) { return scalar_constant(g, v, t); };
  auto op = [&](const char* name, std::vector<ValueId> in) { return g.op(name, std::move(in)); };
  auto last_axis_sum = [&](ValueId v) {
    return g.op("ReduceSum", {v}, {{"axes", std::vector<int64_t>{-1}}, {"keepdims", int64_t{0}}});
  };
  const ValueId e = op("Sub", {p, y});
  if (loss == "huber") {  // 0.5 e^2 where |e| <= delta, delta (|e| - 0.5 delta) beyond
    const double d = options.delta;
    const ValueId a = op("Abs", {e});
    return mean(op("Where", {op("LessOrEqual", {a, c(d)}), op("Mul", {c(0.5), op("Mul", {e, e})}),
                             op("Mul", {c(d), op("Sub", {a, c(0.5 * d)})})}));
  }
  if (loss == "log_cosh")  // log(cosh(e)) = e + softplus(-2e) - log 2, without overflow
    return mean(op("Sub", {op("Add", {e, op("Softplus", {op("Mul", {e, c(-2.0)})})}), c(std::log(2.0))}));
  if (loss == "msle") {  // (log(1 + p) - log(1 + y))^2, both clipped at 1e-7 below
    auto log1p = [&](ValueId v) { return op("Log", {op("Add", {op("Max", {v, c(1e-7)}), c(1.0)})}); };
    const ValueId d = op("Sub", {log1p(p), log1p(y)});
    return mean(op("Mul", {d, d}));
  }
  if (loss == "mape")  // 100 |y - p| / max(|y|, 1e-7)
    return mean(op("Mul", {c(100.0), op("Div", {op("Abs", {e}), op("Max", {op("Abs", {y}), c(1e-7)})})}));
  if (loss == "poisson")  // p - y log(p + 1e-7)
    return mean(op("Sub", {p, op("Mul", {y, op("Log", {op("Add", {p, c(1e-7)})})})}));
  if (loss == "kl_divergence") {  // sum of y log(y / p), both clipped to [1e-7, 1]
    auto clip = [&](ValueId v) { return op("Clip", {v, c(1e-7), c(1.0)}); };
    const ValueId yc = clip(y);
    return mean(last_axis_sum(op("Mul", {yc, op("Log", {op("Div", {yc, clip(p)})})})));
  }
  if (loss == "hinge" || loss == "squared_hinge") {
    // Labels 0/1 become -1/1 as Keras converts them (and -1/1 stay).
    const ValueId sign = op("Where", {op("Greater", {y, c(0.0)}), c(1.0), c(-1.0)});
    ValueId margin = op("Relu", {op("Sub", {c(1.0), op("Mul", {sign, p})})});
    if (loss == "squared_hinge") margin = op("Mul", {margin, margin});
    return mean(margin);
  }
  if (loss == "categorical_hinge") {
    // Keras's: max(0, 1 + the largest output of a wrong class - the label's class's output), one-hot labels.
    const ValueId right = last_axis_sum(op("Mul", {y, p}));
    const ValueId wrong = g.op("ReduceMax", {op("Mul", {op("Sub", {c(1.0), y}), p})},
                               {{"axes", std::vector<int64_t>{-1}}, {"keepdims", int64_t{0}}});
    return mean(op("Relu", {op("Add", {op("Sub", {wrong, right}), c(1.0)})}));
  }
  // cosine_similarity: minus the cosine of the sample's outputs and labels, each l2-normalized with Keras's
  // 1e-12 floor on the squared norm.
  auto normalized = [&](ValueId v) {
    const ValueId sq = g.op("ReduceSum", {op("Mul", {v, v})},
                            {{"axes", std::vector<int64_t>{-1}}, {"keepdims", int64_t{1}}});
    return op("Div", {v, op("Sqrt", {op("Max", {sq, c(1e-12)})})});
  };
  return op("Neg", {mean(last_axis_sum(op("Mul", {normalized(y), normalized(p)})))});
}

// One output's labels input, loss and mask, in a loss graph.
struct HeadLoss {
  ValueId y = kNoValue, loss = kNoValue, mask = kNoValue;
  ValueId mask_count = kNoValue;  // with fed_count: the f32 scalar input the masked sum is divided by
};

// The loss of one output (`output`, with its Keras mask `output_mask` or none) under `h`: adds its labels
// input. `class_weight` weighs the classes (training only); `sample_w` is the [batch] f32 input of sample
// weights, or none. `fed_count`: a masked loss divides its sum by a scalar input (HeadLoss::mask_count)
// instead of by its own rows' unmasked positions (a replica's share of the whole batch's count, fed by fit).
HeadLoss head_loss(Graph& g, ValueId output, ValueId output_mask, int64_t batch, const OutputLoss& h,
                   const std::vector<double>& class_weight, bool class_weight_by_id, bool training,
                   ValueId sample_w, bool fed_count = false) {
  HeadLoss r;
  // Errors name the spec key, the output's own entry in a model of several ("train.loss.digit").
  const std::string loss_key = h.name.empty() ? "train.loss" : "train.loss." + h.name;
  // By value: adding nodes moves the graph's values.
  const DType odt = g.value(output).dtype;
  const Shape os = g.value(output).shape;
  LossKind k = loss_kind(h.loss);
  auto mean_of = [&](ValueId v) { return g.op("ReduceMean", {v}, {{"keepdims", int64_t{0}}}); };
  auto scalar = [&](double v, DType dtype) { return scalar_constant(g, v, dtype); };
  // The logits of a probability output that the model's own final Softmax (over the last axis) or Sigmoid
  // makes, or kNoValue: the cross-entropies then take them, as Keras (TensorFlow) does, exact where the
  // probabilities would round to 0 or 1; training and evaluation compute the same function.
  auto logits_of = [&](const char* activation) -> ValueId {
    if (h.from_logits) return kNoValue;
    const Value& out = g.value(output);
    if (out.producer < 0) return kNoValue;
    const Node& n = g.node(out.producer);
    if (n.op != activation) return kNoValue;
    if (n.op == std::string("Softmax") && normalize_axis(n.attrs.i("axis"), os.rank()) != os.rank() - 1)
      return kNoValue;
    return n.inputs[0];
  };
  constexpr double kEpsilon = 1e-7;  // Keras's clip of probabilities
  // Keras's label smoothing: y (1 - s) + s / classes (binary: 2), in training and evaluation alike.
  auto smoothed = [&](ValueId y, int64_t classes) {
    if (h.label_smoothing == 0) return y;
    const double s = h.label_smoothing;
    return g.op("Add", {g.op("Mul", {y, scalar(1 - s, odt)}), scalar(s / static_cast<double>(classes), odt)});
  };
  // Class weights, one per class of the output (a class the spec leaves out weighs 1).
  const bool weighted = training && !class_weight.empty();
  // One weight per class; keyed by class id, none past the last class (a class left out weighs 1).
  auto check_class_weight = [&](int64_t classes) {
    const auto given = static_cast<int64_t>(class_weight.size());
    if (class_weight_by_id && given > classes)
      throw InputError("train.class_weight",
                       fmt::format("train.class_weight keys class {}, and the model has {} classes (0 to {})",
                                   given - 1, classes, classes - 1),
                       "key the weights by the output's class ids");
    if (!class_weight_by_id && given != classes)
      throw InputError(
          "train.class_weight",
          fmt::format("train.class_weight has {} weights, and the model has {} classes", given, classes),
          "give one weight per class of the output, or key them by class id ({ \"1\" = 5.0 }: a class "
          "left out weighs 1)");
  };
  auto class_weights = [&](int64_t classes) {
    check_class_weight(classes);
    Tensor w(odt, Shape{classes});
    for (int64_t c = 0; c < classes; ++c)
      w.set_f64(c, c < static_cast<int64_t>(class_weight.size()) ? class_weight[c] : 1.0);
    return g.add_constant(g.unique_name("class_weight"), std::move(w));
  };
  // The classes are the output's last axis. An output of more axes ([batch, steps, classes]: a
  // TimeDistributed or return_sequences head) classifies every position, and the loss is the mean over all of
  // them, as Keras's.
  const int64_t classes = os.rank() >= 2 ? os[os.rank() - 1] : 1;
  const int64_t positions = os.rank() >= 2 ? os.numel() / batch / classes : 1;
  // A Keras mask over the steps of a per-step output (a classification, or a regression of [batch, steps,
  // values]): the loss is the mean over the steps that count (Keras divides by their number; a batch with
  // none gives 0), and the metrics skip the others.
  bool masked =
      output_mask != kNoValue && positions > 1 && g.value(output_mask).shape.numel() == batch * positions;
  if (masked) r.mask = output_mask;
  if (sample_w != kNoValue && odt != DType::f32)
    sample_w = g.op("Cast", {sample_w}, {{"to", int64_t{dtype_to_onnx(odt)}}});
  // Keras's temporal weights: one per step of an output of [batch, steps, ...], weighing the steps' losses.
  const int64_t weight_steps =
      sample_w == kNoValue || g.value(sample_w).shape.rank() < 2 ? 0 : g.value(sample_w).shape[1];
  auto weigh = [&](ValueId v) {
    if (sample_w == kNoValue) return v;
    const int rank = g.value(v).shape.rank();
    if (weight_steps > 0) {
      if (rank < 2 || g.value(v).shape[1] != weight_steps)
        throw InputError(
            loss_key,
            fmt::format("{} with sample weights of {} steps needs an output of [batch, {}, ...], "
                        "and the model gives {}",
                        h.loss, weight_steps, weight_steps, os.str()),
            "give one weight per sample, or one per step of the output");
      std::vector<int64_t> dims(static_cast<size_t>(rank), 1);
      dims[0] = batch;
      dims[1] = weight_steps;
      const ValueId w =
          rank == 2 ? sample_w
                    : g.op("Reshape", {sample_w, g.add_constant(g.unique_name("weight_shape"),
                                                                Tensor::from<int64_t>(Shape{rank}, dims))});
      return g.op("Mul", {v, w});
    }
    if (rank == 0)  // a loss that sums a [batch] output's last axis leaves no per-sample values
      throw InputError(loss_key,
                       fmt::format("{} with sample weights needs an output of [batch, values], and the model "
                                   "gives {}",
                                   h.loss, os.str()),
                       "end the model with a Dense layer, or leave out the sample weights");
    TRAINER_ASSERT(g.value(v).shape[0] == batch, "weighing {}", g.value(v).shape.str());
    std::vector<int64_t> dims(static_cast<size_t>(rank), 1);
    dims[0] = batch;
    const ValueId w =
        rank == 1 ? sample_w
                  : g.op("Reshape", {sample_w, g.add_constant(g.unique_name("weight_shape"),
                                                              Tensor::from<int64_t>(Shape{rank}, dims))});
    return g.op("Mul", {v, w});
  };
  // Per-position losses of a [batch positions] run, as [batch, positions] weighted rows.
  auto weigh_rows = [&](ValueId per) {
    return weigh(g.op("Reshape", {per, g.add_constant(g.unique_name("rows_shape"),
                                                      Tensor::from<int64_t>(Shape{2}, {batch, -1}))}));
  };
  // per: batch * positions losses; or, for a multi-label binary output, batch * positions * labels, whose
  // mean over each step's labels is its loss (Keras's binary cross-entropy averages the last axis).
  auto masked_mean = [&](ValueId per) {
    const ValueId flat =
        g.add_constant(g.unique_name("positions_shape"), Tensor::from<int64_t>(Shape{1}, {-1}));
    ValueId m = g.op("Reshape", {r.mask, flat});
    if (g.value(m).dtype != odt) m = g.op("Cast", {m}, {{"to", int64_t{dtype_to_onnx(odt)}}});
    const int64_t steps = g.value(r.mask).shape.numel(), values = g.value(per).shape.numel();
    ValueId per_step = g.op("Reshape", {per, flat});
    if (values != steps) {
      TRAINER_ASSERT(values % steps == 0, "{} losses for {} masked positions", values, steps);
      per_step = g.op("ReduceMean",
                      {g.op("Reshape", {per, g.add_constant(g.unique_name("labels_shape"),
                                                            Tensor::from<int64_t>(Shape{2}, {steps, -1}))})},
                      {{"axes", std::vector<int64_t>{1}}, {"keepdims", int64_t{0}}});
    }
    const ValueId sum = g.op("ReduceSum", {g.op("Mul", {per_step, m})}, {{"keepdims", int64_t{0}}});
    if (fed_count) {  // an f32 scalar, so the loop writes it as it is
      TRAINER_ASSERT(r.mask_count == kNoValue, "a second masked mean of one output");
      r.mask_count = g.add_input(g.unique_name("mask_count"), DType::f32, Shape{});
      const ValueId count = odt == DType::f32
                                ? r.mask_count
                                : g.op("Cast", {r.mask_count}, {{"to", int64_t{dtype_to_onnx(odt)}}});
      return g.op("Div", {sum, count});
    }
    const ValueId count = g.op("Max", {g.op("ReduceSum", {m}, {{"keepdims", int64_t{0}}}), scalar(1, odt)});
    return g.op("Div", {sum, count});
  };
  if (k.sparse) {
    if (os.rank() < 2)
      throw InputError(loss_key,
                       fmt::format("sparse_categorical_crossentropy needs an output of [batch, classes] (or "
                                   "[batch, steps, classes]), the model gives {}",
                                   os.str()),
                       "end the model with a Dense layer of one unit per class");
    // One class id per position: [batch] or [batch, steps...].
    r.y = g.add_input(g.unique_name("labels"), DType::i64,
                      Shape(std::vector<int64_t>(os.dims().begin(), os.dims().end() - 1)));
    // A final Softmax's logits go to the stable log-softmax cross-entropy. Other probabilities are clipped to
    // [1e-7, 1 - 1e-7] and renormalized, as Keras does: the log-softmax of their logs is log(p / sum p).
    // Per-position outputs are seen as [batch positions, classes] rows. With class weights: ONNX's weighted
    // sum, over the batch's positions (Keras's mean of weighted losses, where ONNX's weighted mean would
    // divide by the weights).
    ValueId scores = logits_of("Softmax");
    if (scores == kNoValue)
      scores = h.from_logits
                   ? output
                   : g.op("Log", {g.op("Clip", {output, scalar(kEpsilon, odt), scalar(1 - kEpsilon, odt)})});
    ValueId labels = r.y;
    // Keras's ignore_class: the positions of that label count as masked ones (the loss is the mean over the
    // others; a mask of the output's own leaves out its steps too), and class 0 stands in for it, so the
    // cross-entropy reads a class the output has.
    if (const std::optional<int64_t> ignore = h.loss_options.ignore_class) {
      const ValueId skip = g.op("Equal", {r.y, scalar(static_cast<double>(*ignore), DType::i64)});
      labels = g.op("Where", {skip, scalar(0, DType::i64), r.y});
      ValueId keep = g.op("Where", {skip, scalar(0, DType::f32), scalar(1, DType::f32)});
      if (masked) {
        ValueId m = output_mask;
        if (g.value(m).dtype != DType::f32)
          m = g.op("Cast", {m}, {{"to", int64_t{dtype_to_onnx(DType::f32)}}});
        const Shape ys = g.value(r.y).shape;
        keep = g.op(
            "Mul",
            {keep, g.op("Reshape", {m, g.add_constant(g.unique_name("ids_shape"),
                                                      Tensor::from<int64_t>(Shape{ys.rank()}, ys.dims()))})});
      }
      r.mask = keep;
      masked = true;
    }
    if (os.rank() > 2) {
      scores = g.op("Reshape", {scores, g.add_constant(g.unique_name("rows_shape"),
                                                       Tensor::from<int64_t>(Shape{2}, {-1, classes}))});
      labels =
          g.op("Reshape",
               {labels, g.add_constant(g.unique_name("ids_shape"), Tensor::from<int64_t>(Shape{1}, {-1}))});
    }
    std::vector<ValueId> ins = {scores, labels};
    Attributes reduction;
    if (weighted) {
      ins.push_back(class_weights(classes));
      reduction.set("reduction", std::string("sum"));
    }
    if (masked || sample_w != kNoValue) reduction.set("reduction", std::string("none"));
    r.loss = g.op("SoftmaxCrossEntropyLoss", ins, reduction);
    if (sample_w != kNoValue) {
      // Per position (class-weighted when asked), times its sample's weight, averaged over the positions.
      const ValueId per = weigh_rows(r.loss);
      r.loss = masked ? masked_mean(per) : mean_of(per);
    } else if (masked) {
      r.loss = masked_mean(r.loss);
    } else if (weighted) {
      r.loss = g.op("Div", {r.loss, scalar(static_cast<double>(batch * positions), odt)});
    }
  } else if (k.categorical) {
    if (os.rank() < 2)
      throw InputError(loss_key,
                       fmt::format("categorical_crossentropy needs an output of [batch, classes] (or "
                                   "[batch, steps, classes]), the model gives {}",
                                   os.str()),
                       "");
    r.y = g.add_input(g.unique_name("labels"), odt, os);
    const int64_t last = os.rank() - 1;
    const Attributes classes_axis{{"axes", std::vector<int64_t>{last}}, {"keepdims", int64_t{0}}};
    ValueId per;
    if (h.loss == "categorical_focal_crossentropy") {
      // Keras's: probabilities renormalized and clipped to [1e-7, 1 - 1e-7], then per class
      // alpha (1 - p)^gamma (-y log p), summed (alpha 0.25, gamma 2 unless the loss's call says).
      ValueId p = h.from_logits ? g.op("Softmax", {output}, {{"axis", last}}) : output;
      p = g.op("Div",
               {p, g.op("ReduceSum", {p}, {{"axes", std::vector<int64_t>{last}}, {"keepdims", int64_t{1}}})});
      p = g.op("Clip", {p, scalar(1e-7, odt), scalar(1 - 1e-7, odt)});
      ValueId modulating = g.op("Pow", {g.op("Sub", {scalar(1, odt), p}), scalar(h.loss_options.gamma, odt)});
      ValueId focal = g.op("Mul", {g.op("Mul", {modulating, scalar(h.loss_options.alpha, odt)}),
                                   g.op("Mul", {smoothed(r.y, classes), g.op("Log", {p})})});
      per = g.op("ReduceSum", {focal}, classes_axis);  // minus the loss, as the cross-entropy below
    } else {
      // Logits (given, or a final Softmax's) through log-softmax; other probabilities renormalized and
      // clipped to [1e-7, 1 - 1e-7], as Keras does.
      ValueId logp;
      const ValueId z = h.from_logits ? output : logits_of("Softmax");
      if (z != kNoValue) {
        logp = g.op("LogSoftmax", {z}, {{"axis", last}});
      } else {
        ValueId p =
            g.op("Div", {output, g.op("ReduceSum", {output},
                                      {{"axes", std::vector<int64_t>{last}}, {"keepdims", int64_t{1}}})});
        logp = g.op("Log", {g.op("Clip", {p, scalar(kEpsilon, odt), scalar(1 - kEpsilon, odt)})});
      }
      per = g.op("ReduceSum", {g.op("Mul", {smoothed(r.y, classes), logp})}, classes_axis);
    }
    // A position's weight: its label's class's, the class of its largest entry as Keras picks it (ties
    // share).
    if (weighted) {
      const ValueId top =
          g.op("Cast",
               {g.op("Equal", {r.y, g.op("ReduceMax", {r.y},
                                         {{"axes", std::vector<int64_t>{last}}, {"keepdims", int64_t{1}}})})},
               {{"to", int64_t{dtype_to_onnx(odt)}}});
      per = g.op(
          "Mul",
          {per, g.op("Div", {g.op("ReduceSum", {g.op("Mul", {top, class_weights(classes)})}, classes_axis),
                             g.op("ReduceSum", {top}, classes_axis)})});
    }
    per = weigh(per);
    r.loss = g.op("Neg", {masked ? masked_mean(per) : mean_of(per)});
  } else if (k.binary) {
    // One probability per sample, or one per position ([batch, steps] or [batch, steps, 1]), each with its
    // label; the loss is their mean.
    r.y = g.add_input(g.unique_name("labels"), odt, os);
    // A final Sigmoid's logits go to the exact logits form (as Keras on TensorFlow); other probabilities are
    // clamped to [1e-7, 1 - 1e-7].
    const ValueId z = logits_of("Sigmoid");
    const char* bce = h.from_logits || z != kNoValue ? "BinaryCrossEntropyWithLogits" : "BinaryCrossEntropy";
    const ValueId scored = z != kNoValue ? z : output;
    // A sample's class weight: class 1's for a label above 0.5, class 0's otherwise (Keras rounds labels).
    auto class_w = [&]() {
      check_class_weight(2);
      const double w0 = class_weight[0], w1 = class_weight.size() > 1 ? class_weight[1] : 1.0;
      return g.op("Where", {g.op("Greater", {r.y, scalar(0.5, odt)}), scalar(w1, odt), scalar(w0, odt)});
    };
    if (h.loss == "binary_focal_crossentropy") {
      // Keras's: each sample's cross-entropy times (1 - p_t)^gamma, p_t = y p + (1 - y)(1 - p), gamma 2;
      // with apply_class_balancing, times alpha y + (1 - alpha)(1 - y) too.
      const ValueId y = smoothed(r.y, 2);
      const ValueId p = h.from_logits ? g.op("Sigmoid", {output}) : output;
      const ValueId one = scalar(1, odt);
      const ValueId p_t =
          g.op("Add", {g.op("Mul", {y, p}), g.op("Mul", {g.op("Sub", {one, y}), g.op("Sub", {one, p})})});
      // (1 - p_t) at 1e-7 at least: a confident sigmoid's 0 to a power below 1 has no finite gradient.
      const ValueId miss = g.op("Max", {g.op("Sub", {one, p_t}), scalar(1e-7, odt)});
      ValueId per = g.op("Mul", {g.op("Pow", {miss, scalar(h.loss_options.gamma, odt)}),
                                 g.op(bce, {scored, y}, {{"reduction", std::string("none")}})});
      if (h.loss_options.apply_class_balancing) {
        const double a = h.loss_options.alpha;
        per = g.op("Mul", {per, g.op("Add", {g.op("Mul", {y, scalar(2 * a - 1, odt)}), scalar(1 - a, odt)})});
      }
      if (weighted) per = g.op("Mul", {per, class_w()});
      per = weigh(per);
      r.loss = masked ? masked_mean(per) : mean_of(per);
    } else if (!weighted && (masked || sample_w != kNoValue)) {
      const ValueId per = weigh(g.op(bce, {scored, smoothed(r.y, 2)}, {{"reduction", std::string("none")}}));
      r.loss = masked ? masked_mean(per) : mean_of(per);
    } else if (!weighted) {
      r.loss = g.op(bce, {scored, smoothed(r.y, 2)});
    } else {
      const ValueId per = weigh(g.op(
          "Mul", {g.op(bce, {scored, smoothed(r.y, 2)}, {{"reduction", std::string("none")}}), class_w()}));
      r.loss = masked ? masked_mean(per) : mean_of(per);
    }
  } else {
    r.y = g.add_input(g.unique_name("labels"), odt, os);
    auto mean = [&](ValueId v) { return masked ? masked_mean(weigh(v)) : mean_of(weigh(v)); };
    if ((h.loss == "mse" || h.loss == "mae") && sample_w == kNoValue && !masked) {
      r.loss = g.op(h.loss == "mse" ? "MeanSquaredError" : "MeanAbsoluteError", {output, r.y});
    } else if (h.loss == "mse" || h.loss == "mae") {
      const ValueId e = g.op("Sub", {output, r.y});
      r.loss = mean(h.loss == "mse" ? g.op("Mul", {e, e}) : g.op("Abs", {e}));
    } else {
      r.loss = keras_loss(g, h.loss, h.loss_options, output, r.y, mean);
    }
  }
  return r;
}

// The training plans' loss weighs samples by cfg.class_weight; `training` false (evaluation) never does. A
// model of several outputs trains on the sum of their losses, each times its weight. `fed_counts`: masked
// losses divide by fed inputs (LossGraph::mask_counts), as replicas do.
LossGraph add_loss(ForwardModel fm, int64_t batch, const FitConfig& cfg, bool training = true,
                   bool fed_counts = false) {
  LossGraph lg;
  lg.graph = std::make_shared<Graph>(std::move(fm.graph));
  Graph& g = *lg.graph;
  lg.x = fm.input;
  lg.more_x = fm.more_inputs;
  lg.constraints = std::move(fm.constraints);
  lg.output = fm.output;
  lg.labels_at = 1 + fm.more_inputs.size();
  const std::vector<OutputLoss> hs = output_losses(cfg);
  TRAINER_ASSERT(hs.size() == 1 + fm.more_outputs.size(), "{} outputs, {} losses", 1 + fm.more_outputs.size(),
                 hs.size());
  // Sample weights: one per sample, fed after the model's inputs and the further outputs' labels; for every
  // output, or one set per output.
  std::vector<ValueId> sample_ws;
  if (cfg.sample_weights)
    for (size_t i = 0; i < (cfg.sample_weights_per_output ? hs.size() : 1); ++i)
      sample_ws.push_back(g.add_input(g.unique_name("sample_weight"), DType::f32, [&] {
        std::vector<int64_t> dims = {batch};
        if (i < cfg.sample_weight_shapes.size())
          dims.insert(dims.end(), cfg.sample_weight_shapes[i].begin(), cfg.sample_weight_shapes[i].end());
        return Shape(dims);
      }()));
  auto sample_w_of = [&](size_t i) {
    return sample_ws.empty() ? kNoValue : sample_ws[std::min(i, sample_ws.size() - 1)];
  };
  for (size_t i = 0; i < hs.size(); ++i) {
    const ValueId out = i == 0 ? fm.output : fm.more_outputs[i - 1];
    const ValueId mask = i == 0                                ? fm.output_mask
                         : i - 1 < fm.more_output_masks.size() ? fm.more_output_masks[i - 1]
                                                               : kNoValue;
    const HeadLoss h =
        head_loss(g, out, mask, batch, hs[i], i == 0 ? cfg.class_weight : std::vector<double>{},
                  cfg.class_weight_by_id, training, sample_w_of(i), fed_counts);
    lg.mask_counts.push_back(h.mask_count);
    if (i == 0) {
      lg.y = h.y;
      lg.mask = h.mask;
    } else {
      lg.more_output.push_back(out);
      lg.more_y.push_back(h.y);
      lg.more_mask.push_back(h.mask);
      lg.more_x.push_back(h.y);
    }
    lg.head_loss.push_back(h.loss);
  }
  lg.more_x.insert(lg.more_x.end(), sample_ws.begin(), sample_ws.end());
  lg.sample_ws = sample_ws;
  // One output: its loss. Several: the weighted sum (Keras's loss_weights), each output's loss reported too.
  lg.loss = lg.head_loss[0];
  if (hs.size() == 1) {
    lg.head_loss.clear();
  } else {
    for (size_t i = 0; i < hs.size(); ++i) {
      ValueId term = lg.head_loss[i];
      if (hs[i].weight != 1)
        term = g.op("Mul", {term, scalar_constant(g, hs[i].weight, g.value(term).dtype)});
      lg.loss = i == 0 ? term : g.op("Add", {lg.loss, term});
    }
  }
  // Regularization penalties count in the loss that trains and in the one reported, as in Keras.
  if (fm.penalty != kNoValue) lg.loss = g.op("Add", {lg.loss, fm.penalty});
  g.mark_output(lg.output);
  g.mark_output(lg.loss);
  if (lg.mask != kNoValue) g.mark_output(lg.mask);  // the metrics read it
  for (size_t i = 0; i < lg.more_output.size(); ++i) {
    g.mark_output(lg.more_output[i]);
    if (lg.more_mask[i] != kNoValue) g.mark_output(lg.more_mask[i]);
  }
  for (ValueId v : lg.head_loss) g.mark_output(v);
  return lg;
}

// Keras's AUC: 200 thresholds, -epsilon, i / 199 for i in 1..198, and 1 + epsilon; a prediction above a
// threshold counts as positive there.
constexpr int kAucThresholds = 200;

const std::array<float, kAucThresholds>& auc_thresholds() {
  static const std::array<float, kAucThresholds> t = [] {
    std::array<float, kAucThresholds> a{};
    const double eps = 1e-7;
    a[0] = static_cast<float>(-eps);
    for (int i = 1; i < kAucThresholds - 1; ++i) a[i] = static_cast<float>(i / double(kAucThresholds - 1));
    a[kAucThresholds - 1] = static_cast<float>(1 + eps);
    return a;
  }();
  return t;
}

// Keras's names for accuracy (the spec reader checks that each fits the loss's labels) and top-k accuracy.
bool is_accuracy(const std::string& m) {
  return m == "accuracy" || m == "acc" || m == "binary_accuracy" || m == "categorical_accuracy" ||
         m == "sparse_categorical_accuracy";
}
// Keras's metrics that compute a loss on the outputs and labels (reported as a mean over the judged samples),
// told apart once, not at every judged position.
enum class LossMetric {
  none,
  binary_crossentropy,
  categorical_crossentropy,  // and sparse_categorical_crossentropy: the labels are one-hot by then
  kl_divergence,
  poisson,
  cosine_similarity,
  logcosh,
  hinge,
  squared_hinge,
  categorical_hinge
};
LossMetric loss_metric_of(const std::string& m) {
  if (m == "binary_crossentropy") return LossMetric::binary_crossentropy;
  if (m == "categorical_crossentropy" || m == "sparse_categorical_crossentropy")
    return LossMetric::categorical_crossentropy;
  if (m == "kl_divergence") return LossMetric::kl_divergence;
  if (m == "poisson") return LossMetric::poisson;
  if (m == "cosine_similarity") return LossMetric::cosine_similarity;
  if (m == "logcosh") return LossMetric::logcosh;
  if (m == "hinge") return LossMetric::hinge;
  if (m == "squared_hinge") return LossMetric::squared_hinge;
  if (m == "categorical_hinge") return LossMetric::categorical_hinge;
  return LossMetric::none;
}
bool is_top_k(const std::string& m) {
  return m == "top_k_accuracy" || m == "top_k_categorical_accuracy" ||
         m == "sparse_top_k_categorical_accuracy";
}

// Loss and metrics summed over samples; divided by the count at the end, so the last partial batch weighs
// what it holds. Every metric is kept as additive counts (AUC as a histogram of the predictions over its
// thresholds, per class of the label), so replicas and processes add theirs and a checkpoint continues them.
struct MetricAccumulator {
  // The slots of `extra`.
  enum : size_t { kAbsError, kSquaredError, kPercentError, kTruePos, kFalsePos, kFalseNeg, kAucHistogram };
  // (f1_score reads the true and false positives and false negatives.)
  static constexpr size_t kAucBuckets = kAucThresholds + 1;  // predictions above 0..200 thresholds

  LossKind kind;
  const OutputLoss* cfg;
  // Keras's weighted_metrics: each judged position counts its weight (its sample's, or its step's, times its
  // class's in training), and the metrics are weighted means; the accumulator then reports no loss.
  bool weighted = false;
  const std::vector<std::string>* names;  // the metrics it computes: cfg's metrics or weighted_metrics
  int64_t positions = 1;  // judged positions per sample (the steps of a per-step classification)
  double loss_sum = 0;
  double correct = 0, topk = 0;
  int64_t samples = 0;
  // Sums of mae and mse (each sample's mean over its outputs); binary true and false positives and false
  // negatives at 0.5; then AUC's histograms, positives' then negatives'; msle's sum; r2_score's sums of the
  // labels, their squares and the squared errors, per column; the counted positions.
  std::vector<double> extra;
  size_t log_slot = 0, r2_slot = 0;  // where msle's and r2_score's sums start
  size_t iou_slot = 0;  // mean_iou's true positives, false positives and false negatives per class
  size_t f1_slot = 0;   // the same for F1Score(average=...), which counts what MeanIoU's ignore_class skips
  size_t binary_iou_slot =
      0;  // BinaryIoU's counts at its threshold, by label and prediction (0 0, 0 1, 1 0, 1 1)
  // The positives and negatives predicted exactly 0, which the constrained metrics' lowest threshold (0, not
  // AUC's -1e-7) leaves out
  size_t zero_slot = 0;
  // AUC(multi_label=True): each label's histogram (as kAucHistogram's), for a row of labels
  size_t label_hist_slot = 0;
  // Keras's metrics that compute a loss (binary_crossentropy, kl_divergence, hinge, ...), each with its sum.
  struct LossMetricSlot {
    std::string name;
    LossMetric metric;
    size_t slot;
  };
  std::vector<LossMetricSlot> loss_metrics;
  // loss_metric's outputs and labels of one position (kept: it runs for every judged position).
  mutable std::vector<double> metric_p, metric_t;

  MetricAccumulator(LossKind k, const OutputLoss* c, bool w = false)
      : kind(k), cfg(c), weighted(w), names(w ? &c->weighted_metrics : &c->metrics) {
    log_slot = kAucHistogram + (histogram() ? 2 * kAucBuckets : 0);
    r2_slot = log_slot + (has("msle") ? 1 : 0);
    iou_slot = r2_slot + (has("r2_score") ? 3 * static_cast<size_t>(cfg->columns) : 0);
    f1_slot = iou_slot + (class_iou() ? 3 * static_cast<size_t>(cfg->columns) : 0);
    binary_iou_slot = f1_slot + (f1_of_classes() ? 3 * static_cast<size_t>(f1_columns()) : 0);
    zero_slot = binary_iou_slot + (has("binary_iou") ? 4 : 0);
    label_hist_slot = zero_slot + (constrained() ? 2 : 0);
    size_t end =
        label_hist_slot + (multi_label_auc() ? 2 * kAucBuckets * static_cast<size_t>(cfg->labels) : 0);
    for (const std::string& m : *names)
      if (const LossMetric lm = loss_metric_of(m); lm != LossMetric::none)
        loss_metrics.push_back({m, lm, end++});
    extra.assign(end + 1, 0.0);
  }

  // The last slot of `extra`: the positions a masked output counted (its mask's ones).
  size_t counted_slot() const { return extra.size() - 1; }
  // What the per-position metrics divide by: every position, or under a mask the counted ones; weighted, the
  // weights' sum.
  double judged(double samples_done) const {
    const double counted = extra[counted_slot()];
    if (weighted) return counted;
    return counted > 0 ? counted : samples_done * static_cast<double>(positions);
  }

  // `per_sample` outputs per sample, of which the last axis holds `last`. A classification judges each
  // position (a sample, or each step of a [batch, steps, classes] output) with its own label.
  // `mask` (or null): one value per position, 0 for those a Keras mask leaves out. A weighted accumulator
  // takes `weights` (or null: 1), `weights_per_row` per sample (1, or one per step of the positions), and
  // `class_weight` (or null), the weight of each label's class.
  void add(double batch_loss, const float* out, const void* labels, int64_t samples_in, int64_t per_sample,
           int64_t last, const float* mask = nullptr, int64_t mask_per_row = 0,
           const float* weights = nullptr, int64_t weights_per_row = 1,
           const std::vector<double>* class_weight = nullptr) {
    loss_sum += batch_loss * samples_in;
    samples += samples_in;
    const bool classify = kind.sparse || kind.categorical || kind.binary;
    // A regression output is judged per sample, or under a mask per step ([batch, steps, values]).
    const bool per_step = classify || mask;
    const int64_t classes = kind.binary ? 1 : per_step ? last : per_sample;
    positions = per_step ? per_sample / classes : 1;
    const int64_t n = samples_in * positions;
    const bool acc = std::any_of(names->begin(), names->end(), is_accuracy);
    const bool tk = std::any_of(names->begin(), names->end(), is_top_k);
    // A step's weight weighs each of its positions (a multi-label step's labels).
    TRAINER_ASSERT(!weighted || positions % weights_per_row == 0, "{} weights per sample for {} positions",
                   weights_per_row, positions);
    const int64_t per_weight = weighted ? positions / weights_per_row : 1;
    // A mask of one value per step covers each of a multi-label step's labels.
    if (mask_per_row == 0) mask_per_row = positions;
    TRAINER_ASSERT(!mask || positions % mask_per_row == 0, "{} mask values per sample for {} positions",
                   mask_per_row, positions);
    const int64_t per_mask = positions / mask_per_row;
    const bool auc = histogram(), zeros = constrained(), binary_iou = has("binary_iou");
    const bool errors = has("mae") || has("mse") || has("root_mean_squared_error") || has("mape") ||
                        has("msle") || has("r2_score");
    const bool msle = has("msle"), r2 = has("r2_score"), iou = class_iou(), f1 = f1_of_classes();
    const bool precision_recall = has("precision") || has("recall");
    // The per-label counts of a binary output's rows of labels index them by i % positions.
    const bool label_auc = multi_label_auc();
    TRAINER_ASSERT((!(f1 && kind.binary) && !label_auc) || positions == cfg->labels,
                   "{} labels per row, {} planned", positions, cfg->labels);
    TRAINER_ASSERT(!r2 || kind.sparse || classes == cfg->columns, "r2_score of {} columns, rows of {}",
                   cfg->columns, classes);
    const auto& thresholds = auc_thresholds();
    // Position i's value of a per-sample array holding `per_row` values per sample, each covering
    // positions / per_row consecutive positions (a step's labels).
    auto at = [&](const float* v, int64_t per_row, int64_t per_value, int64_t i) {
      return v[i / positions * per_row + i % positions / per_value];
    };
    // Position i's label class: its class id, its one-hot label's largest entry, or (binary) whether it is 1.
    auto label_class = [&](int64_t i) -> int64_t {
      if (kind.sparse) return static_cast<const int64_t*>(labels)[i];
      const float* t = static_cast<const float*>(labels);
      if (kind.binary) return t[i] > 0.5f;
      return std::max_element(t + i * classes, t + (i + 1) * classes) - (t + i * classes);
    };
    for (int64_t i = 0; i < n; ++i) {
      if (mask && at(mask, mask_per_row, per_mask, i) == 0.0f) continue;
      double w = 1;
      if (weighted && weights) w = at(weights, weights_per_row, per_weight, i);
      if (weighted && class_weight && !class_weight->empty() && !kind.regression) {
        const int64_t c = label_class(i);
        if (c >= 0 && c < static_cast<int64_t>(class_weight->size())) w *= (*class_weight)[c];
      }
      if (mask || weighted) extra[counted_slot()] += w;
      const float* row = out + i * classes;
      // Keras's rule for a regression loss: binary accuracy with one output, else categorical.
      if (kind.sparse || kind.categorical || (kind.regression && classes > 1)) {
        const int64_t label = label_class(i);
        const int64_t predicted = std::max_element(row, row + classes) - row;
        if (acc) correct += w * (predicted == label);
        // Per class from `slot` on: true positives, false positives and false negatives (Keras's MeanIoU, and
        // F1Score of the classes).
        auto count_classes = [&](size_t slot) {
          double* c = extra.data() + slot;
          if (predicted == label) {
            c[3 * label] += w;
          } else {
            c[3 * predicted + 1] += w;
            c[3 * label + 2] += w;
          }
        };
        if (iou && label >= 0 && label < classes && label != cfg->metric_options.iou_ignore)
          count_classes(iou_slot);
        // A one-hot label row of zeros names no class: Keras's F-scores count only the predicted class's
        // false positive.
        const bool no_class = f1 && kind.categorical && [&] {
          const float* t = static_cast<const float*>(labels) + i * classes;
          return std::all_of(t, t + classes, [](float v) { return v == 0.0f; });
        }();
        if (no_class) extra[f1_slot + 3 * static_cast<size_t>(predicted) + 1] += w;
        if (f1 && !no_class && label >= 0 && label < classes) count_classes(f1_slot);
        if (tk) {
          int64_t better = 0;
          for (int64_t c = 0; c < classes; ++c) better += row[c] > row[label];
          topk += w * (better < cfg->top_k);
        }
        if (precision_recall) count_class_entries(row, classes, labels, i, label, w);
      } else if (kind.binary || kind.regression) {
        // With logits the metrics judge the probability, as the loss does.
        const float p = cfg->from_logits ? 1.0f / (1.0f + std::exp(-row[0])) : row[0];
        // A threshold a call gave is compared with the output as it is (Keras's, in float32); none: the
        // probability with 0.5.
        const std::optional<double>& threshold = cfg->metric_options.threshold;
        const bool positive = static_cast<const float*>(labels)[i] > 0.5f,
                   predicted = threshold ? row[0] > static_cast<float>(*threshold) : p > 0.5f;
        if (acc) correct += w * (predicted == positive);
        topk += w * tk;  // one output: always among the top k
        if (kind.binary) {
          extra[kTruePos] += w * (predicted && positive);
          extra[kFalsePos] += w * (predicted && !positive);
          extra[kFalseNeg] += w * (!predicted && positive);
        }
        if (f1 && kind.binary) {  // per label of a row of labels (i % positions)
          double* c = extra.data() + f1_slot + 3 * static_cast<size_t>(i % positions);
          c[0] += w * (predicted && positive);
          c[1] += w * (predicted && !positive);
          c[2] += w * (!predicted && positive);
        }
        if (binary_iou) extra[binary_iou_slot + 2 * positive + (p >= cfg->metric_options.iou_threshold)] += w;
        if (auc) {
          const size_t above = std::lower_bound(thresholds.begin(), thresholds.end(), p) - thresholds.begin();
          extra[kAucHistogram + (positive ? 0 : kAucBuckets) + above] += w;
          if (label_auc)
            extra[label_hist_slot + 2 * kAucBuckets * static_cast<size_t>(i % positions) +
                  (positive ? 0 : kAucBuckets) + above] += w;
          // (a prediction at or below -1e-7 is above no threshold of either)
          if (zeros && p <= 0 && above == 1) extra[zero_slot + !positive] += w;
        }
      }
      for (const LossMetricSlot& lm : loss_metrics)
        extra[lm.slot] += w * loss_metric(lm.metric, row, classes, labels, i, label_class);
      if (errors && !kind.sparse) {
        const float* t = static_cast<const float*>(labels) + i * classes;
        double abs_sum = 0, sq_sum = 0, pct_sum = 0, log_sum = 0;
        for (int64_t c = 0; c < classes; ++c) {
          const double d = static_cast<double>(row[c]) - t[c];
          abs_sum += std::abs(d);
          sq_sum += d * d;
          pct_sum += std::abs(d) / std::max<double>(std::abs(t[c]), 1e-7);  // Keras's epsilon
          if (msle) {  // Keras's: both clipped at epsilon below
            const double l =
                std::log1p(std::max<double>(row[c], 1e-7)) - std::log1p(std::max<double>(t[c], 1e-7));
            log_sum += l * l;
          }
          if (r2) {
            double* col = extra.data() + r2_slot + 3 * static_cast<size_t>(c);
            col[0] += w * t[c];
            col[1] += w * t[c] * t[c];
            col[2] += w * d * d;
          }
        }
        extra[kAbsError] += w * abs_sum / classes;
        extra[kSquaredError] += w * sq_sum / classes;
        extra[kPercentError] += w * 100 * pct_sum / classes;
        if (msle) extra[log_slot] += w * log_sum / classes;
      }
    }
  }
  bool has(std::string_view m) const { return std::find(names->begin(), names->end(), m) != names->end(); }
  // Precision's and Recall's counts of a categorical position (scores `row`, label class `label`): each class
  // entry, or class_id's alone, judged as a binary prediction, as Keras counts rows of one-hot labels (a
  // sparse label is its one-hot row). An entry is predicted where it is among the row's top_k (ties to the
  // lower class, as top_k orders them) and above the threshold: a given one compared with the output as it
  // is; without one, 0.5 for the probability (the softmax of logits), or none under top_k.
  void count_class_entries(const float* row, int64_t classes, const void* labels, int64_t i, int64_t label,
                           double w) {
    const MetricOptions& mo = cfg->metric_options;
    const int64_t first = mo.class_id ? *mo.class_id : 0, end = mo.class_id ? *mo.class_id + 1 : classes;
    if (first >= classes) return;  // (refused before the run)
    float top = row[0];
    double sum = 0;
    const bool softmax = cfg->from_logits && !mo.threshold && !mo.top_k;
    if (softmax) {
      for (int64_t c = 1; c < classes; ++c) top = std::max(top, row[c]);
      for (int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(row[c]) - top);
    }
    for (int64_t c = first; c < end; ++c) {
      const bool positive =
          kind.sparse ? label == c : static_cast<const float*>(labels)[i * classes + c] > 0.5f;
      bool predicted = true;
      if (mo.top_k) {
        int64_t rank = 0;
        for (int64_t o = 0; o < classes; ++o) rank += row[o] > row[c] || (row[o] == row[c] && o < c);
        predicted = rank < *mo.top_k;
      }
      if (mo.threshold)
        predicted = predicted && row[c] > static_cast<float>(*mo.threshold);
      else if (softmax)
        predicted = std::exp(static_cast<double>(row[c]) - top) / sum > 0.5;
      else if (!mo.top_k)
        predicted = row[c] > 0.5f;
      extra[kTruePos] += w * (predicted && positive);
      extra[kFalsePos] += w * (predicted && !positive);
      extra[kFalseNeg] += w * (!predicted && positive);
    }
  }
  // MeanIoU, IoU, OneHotIoU or OneHotMeanIoU: per-class counts.
  bool class_iou() const {
    return has("mean_iou") || has("iou") || has("one_hot_iou") || has("one_hot_mean_iou");
  }
  // PrecisionAtRecall, RecallAtPrecision, SensitivityAtSpecificity or SpecificityAtSensitivity.
  bool constrained() const { return constraint_of("") != nullptr; }
  // The constrained metric `m` (or, for "", any listed), its key in metric_options.at; null if none.
  const char* constraint_of(std::string_view m) const {
    for (const char* c : kConstrained)
      if ((m.empty() && has(c)) || m == c) return c;
    return nullptr;
  }
  // Keras's PrecisionAtRecall, RecallAtPrecision, SensitivityAtSpecificity and SpecificityAtSensitivity, each
  // with the rate it reports and the rate it constrains (0 precision, 1 recall, 2 specificity).
  static constexpr const char* kConstrained[] = {"precision_at_recall", "recall_at_precision",
                                                 "sensitivity_at_specificity", "specificity_at_sensitivity"};
  static constexpr int kReported[] = {0, 1, 1, 2}, kConstraint[] = {1, 0, 2, 1};
  // AUC(multi_label=True) of a row of labels: a histogram per label.
  bool multi_label_auc() const {
    return (has("auc") || has("pr_auc")) && cfg->metric_options.auc_multi_label && cfg->labels > 0;
  }
  // AUC or PR AUC (`f`, of a histogram's positives' and negatives' counts), of every label together or, with
  // multi_label, per label and averaged as Keras's does (a label without positives scores 0).
  template <class F>
  double auc_of(F f) const {
    if (!multi_label_auc()) return f(extra.data() + kAucHistogram);
    double total = 0;
    for (int64_t c = 0; c < cfg->labels; ++c)
      total += f(extra.data() + label_hist_slot + 2 * kAucBuckets * static_cast<size_t>(c));
    return total / static_cast<double>(cfg->labels);
  }
  // The predictions' histogram over the thresholds: AUC's and the constrained metrics'.
  bool histogram() const { return has("auc") || has("pr_auc") || constrained(); }
  // F1Score(average=...) of a categorical output's classes (each position's largest output, as Keras's
  // threshold=None), from per-class counts.
  bool f1_of_classes() const {
    return (has("f1_score") || has("fbeta_score")) && !cfg->metric_options.f1_average.empty();
  }
  // What F1Score(average=...) counts apart: a categorical output's classes, a binary output's labels.
  int64_t f1_columns() const { return kind.binary ? cfg->labels : cfg->columns; }
  // Keras's FBetaScore: per class P = TP / (TP + FP + e), R = TP / (TP + FN + e) and
  // (1 + b^2) P R / (b^2 P + R + e) (e = 1e-7); macro: their mean over every class (one never seen scores 0),
  // weighted: by each class's labels, micro: of the counts summed over the classes.
  static double f_beta(double tp, double fp, double fn, double beta) {
    constexpr double e = 1e-7;
    const double p = tp / (tp + fp + e), r = tp / (tp + fn + e), b2 = beta * beta;
    return (1 + b2) * p * r / (b2 * p + r + e);
  }
  double f1_of_classes_score(double beta = 1) const {
    auto f1 = [beta](double tp, double fp, double fn) { return f_beta(tp, fp, fn, beta); };
    double total = 0, labels = 0, tp = 0, fp = 0, fn = 0;
    const int64_t n = std::max<int64_t>(f1_columns(), 1);
    for (int64_t c = 0; c < f1_columns(); ++c) {
      const double* k = extra.data() + f1_slot + 3 * static_cast<size_t>(c);
      tp += k[0], fp += k[1], fn += k[2];
      const double support = k[0] + k[2];
      total += (cfg->metric_options.f1_average == "weighted" ? support : 1.0) * f1(k[0], k[1], k[2]);
      labels += support;
    }
    if (cfg->metric_options.f1_average == "micro") return f1(tp, fp, fn);
    if (cfg->metric_options.f1_average == "weighted") return labels > 0 ? total / labels : 0.0;
    return total / static_cast<double>(n);
  }
  // Keras's R2Score (uniform_average): 1 - squared errors / the labels' total sum of squares per column,
  // averaged over the columns; a column of constant labels scores 0.
  double r2_score(double rows) const {
    double total = 0;
    for (int64_t c = 0; c < cfg->columns; ++c) {
      const double* col = extra.data() + r2_slot + 3 * static_cast<size_t>(c);
      const double sst = rows > 0 ? col[1] - col[0] * col[0] / rows : 0;
      // Constant labels leave only the sums' rounding: sum t^2 - (sum t)^2 / n of n terms is off by up to
      // about 4 n u sum t^2 (u = 1.1e-16), and a column within that bound has no variance the sums resolve.
      total += sst > 4.4e-16 * std::max(rows, 1.0) * col[1] ? 1 - col[2] / sst : 0;
    }
    return total / static_cast<double>(std::max<int64_t>(cfg->columns, 1));
  }
  // One position's value of a loss metric, as Keras's metric of that name computes it on the outputs `row`
  // (`classes` of them; with from_logits, their softmax or sigmoid, as the loss reads them) and the labels:
  // the mean over the row's values, or for the categorical ones their sum.
  template <typename LabelClass>
  double loss_metric(LossMetric m, const float* row, int64_t classes, const void* labels, int64_t i,
                     const LabelClass& label_class) const {
    constexpr double eps = 1e-7;
    std::vector<double>& p = metric_p;
    std::vector<double>& t = metric_t;
    p.assign(static_cast<size_t>(classes), 0.0);
    t.assign(static_cast<size_t>(classes), 0.0);
    for (int64_t c = 0; c < classes; ++c) p[static_cast<size_t>(c)] = row[c];
    if (kind.sparse) {
      const int64_t label = label_class(i);
      if (label >= 0 && label < classes) t[static_cast<size_t>(label)] = 1;
    } else {
      const float* y = static_cast<const float*>(labels) + i * classes;
      for (int64_t c = 0; c < classes; ++c) t[static_cast<size_t>(c)] = y[c];
    }
    const bool probabilities =
        m == LossMetric::binary_crossentropy || m == LossMetric::categorical_crossentropy;
    if (cfg->from_logits && probabilities) {
      if (classes == 1 || kind.binary) {
        for (double& v : p) v = 1 / (1 + std::exp(-v));
      } else {
        const double top = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& v : p) sum += (v = std::exp(v - top));
        for (double& v : p) v /= sum;
      }
    }
    const double n = static_cast<double>(classes);
    double total = 0;
    if (m == LossMetric::binary_crossentropy) {
      for (int64_t c = 0; c < classes; ++c) {
        const double q = std::clamp(p[static_cast<size_t>(c)], eps, 1 - eps), y = t[static_cast<size_t>(c)];
        total -= y * std::log(q) + (1 - y) * std::log(1 - q);
      }
      return total / n;
    }
    if (m == LossMetric::categorical_crossentropy) {
      double sum = 0;
      for (double v : p) sum += v;
      for (int64_t c = 0; c < classes; ++c)
        total -=
            t[static_cast<size_t>(c)] * std::log(std::clamp(p[static_cast<size_t>(c)] / sum, eps, 1 - eps));
      return total;
    }
    if (m == LossMetric::kl_divergence) {
      for (int64_t c = 0; c < classes; ++c) {
        const double y = std::clamp(t[static_cast<size_t>(c)], eps, 1.0);
        total += y * std::log(y / std::clamp(p[static_cast<size_t>(c)], eps, 1.0));
      }
      return total;
    }
    if (m == LossMetric::cosine_similarity) {
      double yy = 0, pp = 0, yp = 0;
      for (int64_t c = 0; c < classes; ++c) {
        const double y = t[static_cast<size_t>(c)], q = p[static_cast<size_t>(c)];
        yy += y * y, pp += q * q, yp += y * q;
      }
      return yp / (std::sqrt(std::max(yy, 1e-12)) * std::sqrt(std::max(pp, 1e-12)));
    }
    if (m == LossMetric::categorical_hinge) {
      double right = 0, wrong = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < classes; ++c) {
        right += t[static_cast<size_t>(c)] * p[static_cast<size_t>(c)];
        wrong = std::max(wrong, (1 - t[static_cast<size_t>(c)]) * p[static_cast<size_t>(c)]);
      }
      return std::max(0.0, 1 + wrong - right);
    }
    for (int64_t c = 0; c < classes; ++c) {
      const double y = t[static_cast<size_t>(c)], q = p[static_cast<size_t>(c)];
      if (m == LossMetric::poisson) total += q - y * std::log(q + eps);
      if (m == LossMetric::logcosh) {  // log(cosh(d)) = |d| + log1p(exp(-2|d|)) - log 2, without overflow
        const double a = std::abs(q - y);
        total += a + std::log1p(std::exp(-2 * a)) - std::log(2.0);
      }
      if (m == LossMetric::hinge || m == LossMetric::squared_hinge) {
        const double margin = std::max(0.0, 1 - (y > 0 ? 1.0 : -1.0) * q);
        total += m == LossMetric::hinge ? margin : margin * margin;
      }
    }
    return total / n;
  }
  // Keras's MeanIoU: each class's TP / (TP + FP + FN), averaged over the classes that occur (in the labels or
  // the predictions).
  // IoU and OneHotIoU average `targets` (their target_class_ids) alone, each counted once it occurs.
  double mean_iou(const std::vector<int64_t>* targets = nullptr) const {
    double total = 0;
    int64_t counted = 0;
    const int64_t n = targets ? static_cast<int64_t>(targets->size()) : cfg->columns;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = targets ? (*targets)[static_cast<size_t>(i)] : i;
      if (c < 0 || c >= cfg->columns) continue;
      const double* k = extra.data() + iou_slot + 3 * static_cast<size_t>(c);
      const double denominator = k[0] + k[1] + k[2];
      if (denominator > 0) total += k[0] / denominator, ++counted;
    }
    return counted > 0 ? total / static_cast<double>(counted) : 0.0;
  }
  // Keras's BinaryIoU: class 1 (a prediction at or above the threshold) and class 0 each scores
  // TP / (TP + FP + FN) of its own, averaged over its target_class_ids that occur.
  double binary_iou() const {
    const double* k = extra.data() + binary_iou_slot;  // by label, then prediction
    const std::vector<int64_t>& targets = cfg->metric_options.iou_targets;
    double total = 0;
    int counted = 0;
    for (int64_t c : targets.empty() ? std::vector<int64_t>{0, 1} : targets) {
      const double tp = k[3 * c], denominator = k[2 * c] + k[2 * c + 1] + k[c] + k[2 + c] - tp;
      if (denominator > 0) total += tp / denominator, ++counted;
    }
    return counted > 0 ? total / counted : 0.0;
  }
  // Keras's PrecisionAtRecall, RecallAtPrecision, SensitivityAtSpecificity and SpecificityAtSensitivity:
  // over the thresholds 0, 1/199, ..., 1 (a prediction above one counts as positive), the largest of one
  // rate among those whose other rate is at least the metric's value; 0 when none is.
  double constrained_metric(const std::string& m) const {
    const double* pos = extra.data() + kAucHistogram;
    const double* neg = pos + kAucBuckets;
    double positives = 0, negatives = 0;
    for (size_t b = 0; b < kAucBuckets; ++b) positives += pos[b], negatives += neg[b];
    const auto it = cfg->metric_options.at.find(m);
    const double value = it == cfg->metric_options.at.end() ? 0.0 : it->second;
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    const size_t k =
        std::find(std::begin(kConstrained), std::end(kConstrained), m) - std::begin(kConstrained);
    double tp = 0, fp = 0, best = 0;
    for (int j = kAucThresholds - 1; j >= 0; --j) {
      tp += pos[j + 1], fp += neg[j + 1];
      // At the lowest threshold, 0, a prediction of exactly 0 is not above it (it is above AUC's -1e-7).
      const double t = j == 0 ? tp - extra[zero_slot] : tp, f = j == 0 ? fp - extra[zero_slot + 1] : fp;
      const double rates[] = {ratio(t, t + f), ratio(t, positives), ratio(negatives - f, negatives)};
      if (rates[kConstraint[k]] >= value) best = std::max(best, rates[kReported[k]]);
    }
    return best;
  }
  // The area under the ROC curve by the trapezoidal rule over the thresholds (Keras's AUC()).
  static double auc(const double* pos) {
    const double* neg = pos + kAucBuckets;
    double positives = 0, negatives = 0;
    for (size_t b = 0; b < kAucBuckets; ++b) positives += pos[b], negatives += neg[b];
    // Walking the thresholds from the highest: true and false positives at threshold j count the
    // predictions above it, those in buckets j + 1 and up.
    double tp = 0, fp = 0, area = 0;
    double tpr_prev = 0, fpr_prev = 0;
    for (int j = kAucThresholds - 1; j >= 0; --j) {
      tp += pos[j + 1];
      fp += neg[j + 1];
      const double tpr = positives > 0 ? tp / positives : 0, fpr = negatives > 0 ? fp / negatives : 0;
      if (j < kAucThresholds - 1) area += (fpr - fpr_prev) * (tpr + tpr_prev) / 2;
      tpr_prev = tpr, fpr_prev = fpr;
    }
    return area;
  }
  // The area under the precision-recall curve, interpolated between the thresholds as Keras's
  // AUC(curve="PR") does (Davis & Goadrich): true positives and predicted positives vary linearly between two
  // thresholds, and precision over recall integrates in closed form.
  static double pr_auc(const double* pos) {
    const double* neg = pos + kAucBuckets;
    // At threshold j: the positives and negatives predicted above it, those in buckets j + 1 and up.
    std::array<double, kAucThresholds> tp{}, fp{};
    double t = 0, f = 0;
    for (int j = kAucThresholds - 1; j >= 0; --j) {
      t += pos[j + 1], f += neg[j + 1];
      tp[static_cast<size_t>(j)] = t, fp[static_cast<size_t>(j)] = f;
    }
    double positives = 0;
    for (size_t b = 0; b < kAucBuckets; ++b) positives += pos[b];
    if (!(positives > 0)) return 0;
    double area = 0;
    for (size_t j = 0; j + 1 < kAucThresholds; ++j) {
      const double dtp = tp[j] - tp[j + 1];
      const double p_a = tp[j] + fp[j], p_b = tp[j + 1] + fp[j + 1];
      const double dp = std::max(p_a - p_b, 0.0);
      const double slope = dp > 0 ? dtp / dp : 0;
      const double intercept = tp[j + 1] - slope * p_b;
      const double ratio = p_a > 0 && p_b > 0 ? p_a / p_b : 1;
      // (the recall's denominator, tp + fn at every threshold, is the positives)
      area += slope * (dtp + intercept * std::log(ratio)) / positives;
    }
    return area;
  }
  // Every sum in one array, for reductions across processes and for checkpoints.
  // Into *out, whose storage is reused: the training loop calls this every step.
  void flat(double* out) const {
    out[0] = loss_sum, out[1] = correct, out[2] = topk, out[3] = static_cast<double>(samples);
    std::copy(extra.begin(), extra.end(), out + 4);
  }
  size_t flat_size() const { return 4 + extra.size(); }
  void set_flat(const double* v) {
    loss_sum = v[0], correct = v[1], topk = v[2], samples = std::llround(v[3]);
    std::copy(v + 4, v + flat_size(), extra.begin());
  }
  // The loss, then the metrics; weighted, only the metrics, each named as Keras names it (weighted_NAME when
  // the output's metrics report NAME too).
  Logs logs(const std::string& prefix) const {
    Logs l;
    double n = std::max<int64_t>(samples, 1);
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    if (!weighted) l.emplace_back(prefix + "loss", loss_sum / n);
    // In the order the spec lists them, as Keras reports them.
    for (const std::string& m : *names) {
      const std::string name = prefix + (weighted ? weighted_metric_name(cfg->metrics, m) : m);
      if (is_accuracy(m)) l.emplace_back(name, ratio(correct, judged(n)));
      if (is_top_k(m)) l.emplace_back(name, ratio(topk, judged(n)));
      if (m == "precision") l.emplace_back(name, ratio(extra[kTruePos], extra[kTruePos] + extra[kFalsePos]));
      if (m == "recall") l.emplace_back(name, ratio(extra[kTruePos], extra[kTruePos] + extra[kFalseNeg]));
      if (m == "f1_score" && f1_of_classes()) l.emplace_back(name, f1_of_classes_score());
      if (m == "f1_score" && !f1_of_classes())  // of the positive class at 0.5: 2 TP / (2 TP + FP + FN)
        l.emplace_back(name,
                       ratio(2 * extra[kTruePos], 2 * extra[kTruePos] + extra[kFalsePos] + extra[kFalseNeg]));
      // Keras's confusion counts at the threshold 0.5 (weighted: the weights' sums); every judged position is
      // one of the four.
      if (m == "true_positives") l.emplace_back(name, extra[kTruePos]);
      if (m == "false_positives") l.emplace_back(name, extra[kFalsePos]);
      if (m == "false_negatives") l.emplace_back(name, extra[kFalseNeg]);
      if (m == "true_negatives")
        l.emplace_back(name,
                       std::max(0.0, judged(n) - extra[kTruePos] - extra[kFalsePos] - extra[kFalseNeg]));
      if (m == "auc") l.emplace_back(name, auc_of([](const double* h) { return auc(h); }));
      if (m == "pr_auc") l.emplace_back(name, auc_of([](const double* h) { return pr_auc(h); }));
      if (m == "mean_iou" || m == "one_hot_mean_iou") l.emplace_back(name, mean_iou());
      if (m == "iou" || m == "one_hot_iou") l.emplace_back(name, mean_iou(&cfg->metric_options.iou_targets));
      if (m == "binary_iou") l.emplace_back(name, binary_iou());
      if (constraint_of(m)) l.emplace_back(name, constrained_metric(m));
      if (m == "fbeta_score" && f1_of_classes())
        l.emplace_back(name, f1_of_classes_score(cfg->metric_options.beta));
      if (m == "fbeta_score" && !f1_of_classes())
        l.emplace_back(name,
                       f_beta(extra[kTruePos], extra[kFalsePos], extra[kFalseNeg], cfg->metric_options.beta));
      for (const LossMetricSlot& lm : loss_metrics)
        if (m == lm.name) l.emplace_back(name, ratio(extra[lm.slot], judged(n)));
      if (m == "mae") l.emplace_back(name, ratio(extra[kAbsError], judged(n)));
      if (m == "mse") l.emplace_back(name, ratio(extra[kSquaredError], judged(n)));
      if (m == "root_mean_squared_error")
        l.emplace_back(name, std::sqrt(ratio(extra[kSquaredError], judged(n))));
      if (m == "mape") l.emplace_back(name, ratio(extra[kPercentError], judged(n)));
      if (m == "msle") l.emplace_back(name, ratio(extra[log_slot], judged(n)));
      if (m == "r2_score") l.emplace_back(name, r2_score(judged(n)));
    }
    return l;
  }
};

// The loss and metrics of every output of a run: an accumulator per output (its own loss and metrics) and,
// for a model of several outputs, the sum of the loss that trains (the outputs' weighted losses and the
// penalties).
struct Metrics {
  std::vector<MetricAccumulator> heads;
  // Keras's weighted_metrics: an accumulator for each output that lists any, in the outputs' order, and
  // per output its index there (or -1).
  std::vector<MetricAccumulator> weighted;
  std::vector<int> weighted_at;
  double loss_sum = 0;

  explicit Metrics(const std::vector<OutputLoss>& outputs) {
    for (const OutputLoss& o : outputs) {
      heads.emplace_back(loss_kind(o.loss), &o);
      weighted_at.push_back(o.weighted_metrics.empty() ? -1 : static_cast<int>(weighted.size()));
      if (!o.weighted_metrics.empty()) weighted.emplace_back(loss_kind(o.loss), &o, true);
    }
  }
  bool several() const { return heads.size() > 1; }
  int64_t samples() const { return heads[0].samples; }
  // Every sum in one array (one output: its accumulator's alone, as checkpoints have always held them).
  // Into *out, whose storage is reused: the training loop calls this every step.
  size_t flat_size() const {
    size_t n = several() ? 1 : 0;
    for (const MetricAccumulator& h : heads) n += h.flat_size();
    for (const MetricAccumulator& h : weighted) n += h.flat_size();
    return n;
  }
  void flat(std::vector<double>* out) const {
    out->resize(flat_size());
    double* at = out->data();
    if (several()) *at++ = loss_sum;
    for (const auto* list : {&heads, &weighted})
      for (const MetricAccumulator& h : *list) {
        h.flat(at);
        at += h.flat_size();
      }
  }
  void set_flat(const std::vector<double>& v) {
    TRAINER_ASSERT(v.size() == flat_size(), "{} metric sums for {}", v.size(), flat_size());
    const double* at = v.data();
    if (several()) loss_sum = *at++;
    for (auto* list : {&heads, &weighted})
      for (MetricAccumulator& h : *list) {
        h.set_flat(at);
        at += h.flat_size();
      }
  }
  // The judged positions per sample, as the replicas that saw any rows found them.
  void merge_positions(const Metrics& other) {
    for (size_t i = 0; i < heads.size(); ++i)
      heads[i].positions = std::max(heads[i].positions, other.heads[i].positions);
    for (size_t i = 0; i < weighted.size(); ++i)
      weighted[i].positions = std::max(weighted[i].positions, other.weighted[i].positions);
  }
  // Keras's names: loss, then each output's NAME_loss, then each output's NAME_METRIC, then its weighted
  // metrics.
  Logs logs(const std::string& prefix) const {
    Logs l, metrics;
    if (!several()) {
      l = heads[0].logs(prefix);
    } else {
      l.emplace_back(prefix + "loss", loss_sum / static_cast<double>(std::max<int64_t>(samples(), 1)));
      for (const MetricAccumulator& h : heads) {
        Logs own = h.logs(prefix + h.cfg->name + "_");
        l.push_back(own[0]);
        metrics.insert(metrics.end(), own.begin() + 1, own.end());
      }
    }
    for (const MetricAccumulator& h : weighted) {
      Logs own = h.logs(several() ? prefix + h.cfg->name + "_" : prefix);
      metrics.insert(metrics.end(), own.begin(), own.end());
    }
    l.insert(l.end(), metrics.begin(), metrics.end());
    return l;
  }
};

// One plan of the device with the values the loop feeds and reads.
struct Plan {
  int index = -1;
  ValueId x = kNoValue, y = kNoValue, output = kNoValue, loss = kNoValue, lr = kNoValue, iteration = kNoValue;
  std::vector<ValueId> more_x;  // the further inputs (LossGraph::more_x)
  size_t labels_at = 1;         // the further outputs' labels: Batch::xs[labels_at] on
  ValueId mask = kNoValue;      // a masked per-step output's [batch, steps] mask
  std::vector<ValueId> more_output, more_y, more_mask, head_loss;  // LossGraph's
  std::vector<ValueId> mask_counts;  // per output, its fed masked-loss divisor or kNoValue (replicas only)
  std::vector<ValueId> sample_ws;    // LossGraph's: Batch::xs[weights_at] on
  size_t weights_at = 0;
  int64_t batch = 0;
  ValueId loss_scale = kNoValue, grads_finite = kNoValue;  // training plans with loss scaling
  ValueId apply_update = kNoValue;            // training plans accumulating gradients: true on an update step
  ValueId replica_weight = kNoValue;          // and the replica's share of the global batch
  std::map<ValueId, std::string> grad_param;  // training plans: gradient -> its parameter's name
};

// A fingerprint of the training data: its sizes, every label and the samples at up to 64 evenly spaced
// places (of each input), FNV-1a over their bytes. A mid-epoch resume on other data would train on other
// samples than the permutation's rest; this finds another file, not every edit of one.
uint64_t data_fingerprint(const data::Dataset& d) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 0x100000001b3ull;
  };
  const int64_t n = d.size();
  mix(&n, sizeof n);
  std::vector<std::byte> buf(static_cast<size_t>(d.label_shape().numel() * dtype_bytes(d.label_dtype())));
  for (int64_t i = 0; i < n; ++i) {
    d.read_label(i, buf.data());
    mix(buf.data(), buf.size());
  }
  std::vector<const data::Dataset*> inputs = {&d};
  const auto more = d.more_inputs();
  for (const auto& m : more) inputs.push_back(m.get());
  for (const data::Dataset* in : inputs) {
    buf.resize(static_cast<size_t>(in->sample_shape().numel() * dtype_bytes(in->sample_dtype())));
    const int64_t picks = std::min<int64_t>(n, 64);
    for (int64_t k = 0; k < picks; ++k) {
      in->read_sample(k * n / picks, buf.data());
      mix(buf.data(), buf.size());
    }
  }
  return h;
}

// What an epoch's running sums count (TrainingState::metric_layout): the quantities `m` reports, then the
// batches (their size, from how many samples: the data's position in the epoch) and what weighs or masks the
// counts, which a resumed run must share to go on with them. `order`: also the order of the samples (shuffled
// by which seed, or not) and the data's fingerprint; checkpoints before those were kept hold the rest alone.
std::string metric_layout(const Metrics& m, const FitConfig& cfg, int64_t train_samples, const Plan& p,
                          std::optional<uint64_t> order) {
  std::string out;
  for (const auto& [name, value] : m.logs("")) out += (out.empty() ? "" : ", ") + name;
  out += fmt::format(" (batches of {} from {} samples", cfg.batch_size, train_samples);
  std::vector<std::string> masked;
  for (size_t i = 0; i <= p.more_mask.size(); ++i)
    if ((i == 0 ? p.mask : p.more_mask[i - 1]) != kNoValue) masked.push_back(std::to_string(i + 1));
  if (!masked.empty()) out += fmt::format("; masked output {}", fmt::join(masked, ", "));
  if (cfg.sample_weights) out += "; sample weights";
  if (!cfg.class_weight.empty()) out += fmt::format("; class_weight [{}]", fmt::join(cfg.class_weight, ", "));
  // (the counts a threshold decides; only when one is given, so that earlier layouts read as they were)
  const std::vector<OutputLoss> outputs = output_losses(cfg);
  for (size_t i = 0; i < outputs.size(); ++i)
    if (outputs[i].metric_options.threshold)
      out += fmt::format("; threshold {} of output {}", *outputs[i].metric_options.threshold, i + 1);
  if (order) {
    out += cfg.shuffle ? fmt::format("; shuffled by seed {}", cfg.seed) : std::string("; in order");
    out += fmt::format("; data {:016x}", *order);
  }
  return out + ")";
}

double read_scalar(Session& s, ValueId v) {
  const Value& val = s.graph().value(v);
  if (val.dtype == DType::f64) {
    double d;
    s.read(v, &d, sizeof d);
    return d;
  }
  float f;
  s.read(v, &f, sizeof f);
  return f;
}

// The batch sizes a pass over n samples uses: full batches, then the remainder.
std::vector<int64_t> batch_sizes(int64_t n, int64_t b) {
  std::vector<int64_t> out;
  if (n <= 0) return out;
  out.push_back(std::min(n, b));
  if (n > b && n % b) out.push_back(n % b);
  return out;
}

class Device {
 public:
  Device(const ModelFactory& factory, const FitConfig& cfg, Backend& backend, int64_t train_samples,
         const std::vector<int64_t>& eval_samples)
      : Device(factory, cfg, backend, batch_sizes(train_samples, cfg.batch_size),
               eval_batches(eval_samples, cfg)) {}

  // Plans for exactly these training and evaluation batch sizes (a replica plans its slices of the batches).
  // `shard`: ZeRO-1's ranges of the parameters this replica updates (TrainingOptions::shard).
  // `fed_counts`: masked losses divide by fed counts (Plan::mask_counts), as a replica of several does.
  Device(const ModelFactory& factory, const FitConfig& cfg, Backend& backend,
         const std::vector<int64_t>& train, const std::vector<int64_t>& eval,
         std::optional<std::map<std::string, TrainingOptions::ShardRange>> shard = std::nullopt,
         bool fed_counts = false)
      : plans_(backend) {
    // The plans share one copy of the weights, which the first graph uploads: only it draws their values.
    bool drawn = false;
    for (int64_t batch : train) {
      LossGraph lg = add_loss(factory(batch, true, !drawn), batch, cfg, true, fed_counts);
      drawn = true;
      TrainingOptions topt = training_options(cfg, lg);
      topt.shard = shard;
      constrained_ = constrained_ || !topt.constraints.empty();
      TrainingGraph tg = build_training_graph(std::move(*lg.graph), lg.loss, topt);
      tg.graph->mark_output(lg.output);
      PlanOptions po;
      po.gradients = tg.gradients;
      po.early = tg.step_gradients;
      po.bucket_bytes = cfg.bucket_bytes;
      train_[batch] = make_plan(plans_.add(tg.graph, po), lg, tg.learning_rate, tg.iteration, batch);
      train_[batch].loss_scale = tg.loss_scale;
      train_[batch].grads_finite = tg.grads_finite;
      train_[batch].apply_update = tg.apply_update;
      train_[batch].replica_weight = tg.replica_weight;
      const std::vector<ValueId> params = trainable_parameters(*tg.graph);
      for (size_t i = 0; i < params.size() && i < tg.gradients.size(); ++i)
        train_[batch].grad_param[tg.gradients[i]] = tg.graph->value(params[i]).name;
    }
    for (int64_t batch : eval) {
      if (eval_.count(batch)) continue;
      LossGraph lg = add_loss(factory(batch, false, !drawn), batch, cfg, false, fed_counts);
      drawn = true;
      apply_precision(*lg.graph, cfg.precision);
      eval_[batch] = make_plan(plans_.add(lg.graph), lg, kNoValue, kNoValue, batch);
    }
    plans_.finalize();
  }

  static Plan make_plan(int index, const LossGraph& lg, ValueId lr, ValueId iteration, int64_t batch) {
    Plan p;
    p.index = index;
    p.x = lg.x;
    p.more_x = lg.more_x;
    p.labels_at = lg.labels_at;
    p.more_output = lg.more_output;
    p.more_y = lg.more_y;
    p.more_mask = lg.more_mask;
    p.head_loss = lg.head_loss;
    p.mask_counts = lg.mask_counts;
    p.sample_ws = lg.sample_ws;
    p.weights_at = 1 + lg.more_x.size() - lg.sample_ws.size();
    p.y = lg.y;
    p.output = lg.output;
    p.loss = lg.loss;
    p.mask = lg.mask;
    p.lr = lr;
    p.iteration = iteration;
    p.batch = batch;
    return p;
  }

  static std::vector<int64_t> eval_batches(const std::vector<int64_t>& samples, const FitConfig& cfg) {
    std::vector<int64_t> out;
    for (int64_t n : samples)
      for (int64_t b : batch_sizes(n, cfg.batch_size)) out.push_back(b);
    return out;
  }

  DevicePlans& plans() { return plans_; }
  const std::map<int64_t, Plan>& train_plans() const { return train_; }
  const Plan& train_plan(int64_t n) const { return train_.at(n); }
  const Plan& largest_train_plan() const { return train_.rbegin()->second; }
  const Plan& eval_plan(int64_t n) const { return eval_.at(n); }
  // A plan that evaluates, or else one that trains: each has every output.
  const Plan& any_plan() const { return eval_.empty() ? train_.begin()->second : eval_.begin()->second; }
  // A plan holding every parameter and state value: a training plan.
  Session& weights_session() { return plans_.session(train_.begin()->second.index); }
  // Whether training projects weights with constraints (on every step, one that only accumulates too).
  bool constrained() const { return constrained_; }

 private:
  DevicePlans plans_;
  std::map<int64_t, Plan> train_, eval_;
  bool constrained_ = false;
};

// Copies of every parameter and state value (early stopping's best weights).
std::vector<std::pair<ValueId, Tensor>> snapshot(Session& s) {
  std::vector<std::pair<ValueId, Tensor>> out;
  const Graph& g = s.graph();
  for (ValueId v = 0; v < g.num_values(); ++v) {
    const Value& val = g.value(v);
    if ((val.kind == ValueKind::parameter || val.kind == ValueKind::state) && s.program().slots[v].assigned)
      out.emplace_back(v, s.read(v));
  }
  return out;
}

// A plan's output mask as floats, in a buffer of the thread's that is reused (no allocation once grown), or
// null when the plan has none.
const float* read_mask(Session& s, ValueId mask) {
  if (mask == kNoValue) return nullptr;
  thread_local std::vector<float> buf;
  const Value& v = s.graph().value(mask);
  buf.resize(static_cast<size_t>(v.shape.numel()));
  if (v.dtype == DType::f32) {
    s.read(mask, buf.data(), v.nbytes());
  } else {
    const Tensor t = s.read(mask);
    for (int64_t i = 0; i < t.numel(); ++i) buf[static_cast<size_t>(i)] = static_cast<float>(t.get_f64(i));
  }
  return buf.data();
}

// Outputs per sample, and the size of the output's last axis (the classes of a classification).
std::pair<int64_t, int64_t> output_dims(const Graph& g, ValueId output) {
  const Shape& s = g.value(output).shape;
  if (s.rank() < 2) return {1, 1};
  return {s.numel() / s[0], s[s.rank() - 1]};
}

// Each output's OutputLoss::columns, as MetricAccumulator::add will see its rows, from a loss graph `g`
// with the outputs (`output`, then `more_output`), their masks and the sample weights; checks the metrics
// that depend on the outputs' shapes.
void set_columns(std::vector<OutputLoss>& outputs, const Graph& g, ValueId output,
                 const std::vector<ValueId>& more_output, ValueId mask, const std::vector<ValueId>& more_mask,
                 const std::vector<ValueId>& sample_ws) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto [per_sample, last] = output_dims(g, i == 0 ? output : more_output.at(i - 1));
    const LossKind k = loss_kind(outputs[i].loss);
    const bool masked = (i == 0 ? mask : more_mask.at(i - 1)) != kNoValue;
    outputs[i].columns = k.binary ? 1 : k.sparse || k.categorical || masked ? last : per_sample;
    outputs[i].labels = k.binary && per_sample == last ? last : 0;
    // Keras's metrics that reduce the last axis (a distribution, a direction, a largest wrong class) judge
    // its rows; they are computed where a judged position is one.
    const bool rows = k.sparse || k.categorical || masked || (k.regression && per_sample == last) ||
                      (k.binary && per_sample == 1);
    // The list that names one of `names` (metrics first), for errors; "" if neither does.
    const auto where_of = [&](std::initializer_list<std::string_view> names) -> std::string {
      for (const char* key : {"train.metrics", "train.weighted_metrics"})
        for (const std::string& m :
             std::string_view(key) == "train.metrics" ? outputs[i].metrics : outputs[i].weighted_metrics)
          if (std::find(names.begin(), names.end(), m) != names.end())
            return outputs[i].name.empty() ? key : std::string(key) + "." + outputs[i].name;
      return "";
    };
    for (const auto* list : {&outputs[i].metrics, &outputs[i].weighted_metrics})
      for (const std::string& m : *list)
        if (!rows && (m == "kl_divergence" || m == "categorical_crossentropy" || m == "cosine_similarity" ||
                      m == "categorical_hinge"))
          throw InputError(
              where_of({m}),
              fmt::format("metric '{}' reduces the last axis of each output, and the output{} ({} values per "
                          "sample, {} on its last axis) is judged {} here",
                          m, outputs[i].name.empty() ? "" : " '" + outputs[i].name + "'", per_sample, last,
                          k.binary ? "label by label" : "sample by sample"),
              "report it on an output of one row per sample (or per step, under a mask), or leave it out");
    // The IoU metrics of the classes: their num_classes is the output's, and their target_class_ids among
    // them.
    const auto lists = [&](std::initializer_list<std::string_view> names) {
      return !where_of(names).empty();
    };
    const MetricOptions& mo = outputs[i].metric_options;
    const std::string output = outputs[i].name.empty() ? "" : " '" + outputs[i].name + "'";
    // Keras's AUC(multi_label=True) likewise.
    if (k.binary && mo.auc_multi_label && lists({"auc", "pr_auc"})) {
      if (outputs[i].labels == 0)
        throw InputError(where_of({"auc", "pr_auc"}),
                         fmt::format("AUC(multi_label=True) needs rows of labels ([batch, labels]), and the "
                                     "output{} gives {} per sample, {} on its last axis",
                                     output, per_sample, last),
                         "leave multi_label out (the area of every label together)");
      if (mo.auc_num_labels > 0 && mo.auc_num_labels != outputs[i].labels)
        throw InputError(where_of({"auc", "pr_auc"}),
                         fmt::format("AUC's num_labels={} counts {} labels, and the output{} has {}",
                                     mo.auc_num_labels, mo.auc_num_labels, output, outputs[i].labels),
                         fmt::format("num_labels={}, the size of the output's last axis", outputs[i].labels));
    }
    // Keras's F-scores of a binary output average the labels of its rows ([batch, labels]).
    if (k.binary && !mo.f1_average.empty() && outputs[i].labels == 0 && lists({"f1_score", "fbeta_score"}))
      throw InputError(
          where_of({"f1_score", "fbeta_score"}),
          fmt::format("an F-score averaged over labels needs rows of labels ([batch, labels]), and "
                      "the output{} gives {} per sample, {} on its last axis",
                      output, per_sample, last),
          "leave the average out (the score of every label at 0.5 counted together)");
    if (mo.iou_classes > 0 && lists({"mean_iou", "iou", "one_hot_iou", "one_hot_mean_iou"}) &&
        outputs[i].columns != mo.iou_classes)
      throw InputError(
          where_of({"mean_iou", "iou", "one_hot_iou", "one_hot_mean_iou"}),
          fmt::format("the IoU metric's num_classes={} counts {} classes, and the output{} has {}",
                      mo.iou_classes, mo.iou_classes, output, outputs[i].columns),
          fmt::format("num_classes={}, the size of the output's last axis", outputs[i].columns));
    if (!k.binary && lists({"precision", "recall"})) {
      if (mo.class_id && *mo.class_id >= outputs[i].columns)
        throw InputError(
            where_of({"precision", "recall"}),
            fmt::format("Precision's and Recall's class_id={} names class {}, and the output{} has "
                        "{} classes (0 to {})",
                        *mo.class_id, *mo.class_id, output, outputs[i].columns, outputs[i].columns - 1),
            "name a class of the output");
      if (mo.top_k && *mo.top_k > outputs[i].columns)
        throw InputError(where_of({"precision", "recall"}),
                         fmt::format("Precision's and Recall's top_k={} ranks more classes than the output{} "
                                     "has ({})",
                                     *mo.top_k, output, outputs[i].columns),
                         fmt::format("top_k from 1 to {}", outputs[i].columns));
    }
    if (lists({"iou", "one_hot_iou"}))
      for (int64_t c : mo.iou_targets)
        if (c >= outputs[i].columns)
          throw InputError(
              where_of({"iou", "one_hot_iou"}),
              fmt::format("the IoU metric's target_class_ids name class {}, and the output{} has "
                          "{} classes (0 to {})",
                          c, output, outputs[i].columns, outputs[i].columns - 1),
              "list classes of the output");
    // Weighted metrics judge a regression output's samples whole: one weight each.
    if (k.regression && !outputs[i].weighted_metrics.empty() && !sample_ws.empty()) {
      const Shape& ws = g.value(sample_ws[std::min(i, sample_ws.size() - 1)]).shape;
      if (ws.rank() > 1 && ws.numel() != ws[0])
        throw InputError(
            outputs[i].name.empty() ? "train.weighted_metrics" : "train.weighted_metrics." + outputs[i].name,
            fmt::format("the weighted metrics of a {} output weigh whole samples, and the sample "
                        "weights give {} per sample",
                        outputs[i].loss, ws.numel() / ws[0]),
            "give one weight per sample, or report these metrics unweighted (train.metrics)");
    }
  }
}

void set_columns(std::vector<OutputLoss>& outputs, Device& dev) {
  const Plan& p = dev.any_plan();
  set_columns(outputs, dev.plans().session(p.index).graph(), p.output, p.more_output, p.mask, p.more_mask,
              p.sample_ws);
}

// Rows [lo, hi) of a batch into a plan's inputs (a replica's share); returns where those rows' labels start.
const std::byte* write_rows(Session& s, const Plan& p, const data::Batch& b, int64_t lo, int64_t hi) {
  const Graph& g = s.graph();
  const size_t x_row = g.value(p.x).nbytes() / (hi - lo), y_row = g.value(p.y).nbytes() / (hi - lo);
  const std::byte* labels = static_cast<const std::byte*>(b.y) + lo * y_row;
  s.write(p.x, static_cast<const std::byte*>(b.x) + lo * x_row, g.value(p.x).nbytes());
  TRAINER_ASSERT(b.xs.size() == p.more_x.size() + 1, "{} inputs fed, the model has {}", b.xs.size(),
                 p.more_x.size() + 1);
  for (size_t k = 0; k < p.more_x.size(); ++k) {
    const size_t bytes = g.value(p.more_x[k]).nbytes(), row = bytes / (hi - lo);
    s.write(p.more_x[k], static_cast<const std::byte*>(b.xs[k + 1]) + lo * row, bytes);
  }
  s.write(p.y, labels, g.value(p.y).nbytes());
  return labels;
}

// The unmasked positions of each masked per-step output over a whole global batch, counted on the host before
// the replicas run it. Each replica's masked loss divides its own sum by its share of that count (the count
// times its share of the rows: Plan::mask_counts), so the replicas' weighted sum is the global batch's masked
// mean however the padding falls among them, as one device computes it. The counts come from the forward
// model's mask values alone (computed from the inputs, through Dropout and the like when training: their
// draws are keyed by the rows' places in the global batch, so the whole batch draws what the replicas draw)
// and from the labels where a loss's ignore_class masks by them, planned on the CPU for each global batch
// size, in training and in evaluation.
class MaskCounter {
 public:
  // nullptr when no output of the model is masked.
  static std::unique_ptr<MaskCounter> make(const ModelFactory& factory, const FitConfig& cfg,
                                           const std::vector<int64_t>& train_sizes,
                                           const std::vector<int64_t>& eval_sizes) {
    std::unique_ptr<MaskCounter> c(new MaskCounter);
    for (const bool training : {true, false})
      for (int64_t n : training ? train_sizes : eval_sizes) {
        if (c->plans_.count({training, n})) continue;
        LossGraph lg = add_loss(factory(n, training, false), n, cfg, training, true);
        if (std::all_of(lg.mask_counts.begin(), lg.mask_counts.end(),
                        [](ValueId v) { return v == kNoValue; }))
          return nullptr;
        // Outputs of one masked trunk share its mask: each distinct mask is one output of the counting graph.
        std::vector<ValueId> masks;
        std::vector<int> mask_of;
        for (size_t i = 0; i < lg.mask_counts.size(); ++i) {
          if (lg.mask_counts[i] == kNoValue) {
            mask_of.push_back(-1);
            continue;
          }
          const ValueId m = i == 0 ? lg.mask : lg.more_mask[i - 1];
          const auto at = std::find(masks.begin(), masks.end(), m);
          mask_of.push_back(static_cast<int>(at - masks.begin()));
          if (at == masks.end()) masks.push_back(m);
        }
        std::optional<Graph> sub = input_subgraph(*lg.graph, masks);
        if (!sub)
          throw InputError(
              "model",
              "the mask of a per-step output depends on the model's weights (a Masking layer after "
              "a trained layer), so replicas cannot count the whole batch's masked steps",
              "mask the inputs (Embedding mask_zero, or Masking as the first layer), or train on "
              "one device");
        if (!c->cpu_) c->cpu_ = make_cpu_backend(CpuOptions{1});
        Counting& k = c->plans_[{training, n}];
        k.session = std::make_unique<Session>(std::make_shared<const Graph>(std::move(*sub)), *c->cpu_);
        const Graph& g = k.session->graph();
        TRAINER_ASSERT(g.outputs().size() == masks.size(), "{} masks counted, {} asked", g.outputs().size(),
                       masks.size());
        for (ValueId v : g.inputs()) {
          const std::string& name = g.value(v).name;
          // The first output's labels (a loss's ignore_class masks by them) come from Batch::y: slot -1.
          int slot = name == lg.graph->value(lg.x).name ? 0 : name == lg.graph->value(lg.y).name ? -1 : -2;
          for (size_t j = 0; j < lg.more_x.size() && slot < -1; ++j)
            if (lg.graph->value(lg.more_x[j]).name == name) slot = static_cast<int>(j) + 1;
          TRAINER_ASSERT(slot >= -1, "the mask reads '{}', which is not fed", name);
          k.inputs.emplace_back(v, slot);
        }
        for (int m : mask_of) k.masks.push_back(m < 0 ? kNoValue : g.outputs()[static_cast<size_t>(m)]);
      }
    return c;
  }

  // Counts batch b's unmasked positions, row by row, for write(): a training step's (`ctx`: the step's, from
  // the batch's first row), or an evaluation's.
  void count(const data::Batch& b, bool training, const StepContext& ctx = {}) {
    Counting& k = plans_.at({training, b.size});
    const Graph& g = k.session->graph();
    for (const auto& [v, slot] : k.inputs)
      k.session->write(v,
                       slot == -1  ? b.y
                       : slot == 0 ? b.x
                                   : b.xs[static_cast<size_t>(slot)],
                       g.value(v).nbytes());
    k.session->run(ctx);
    // Every step: the buffers keep their storage, so steady steps allocate nothing.
    prefix_.resize(k.masks.size());
    for (size_t i = 0; i < k.masks.size(); ++i) {
      std::vector<double>& pre = prefix_[i];
      pre.clear();
      if (k.masks[i] == kNoValue) continue;
      const Value& mv = g.value(k.masks[i]);
      TRAINER_ASSERT(mv.dtype == DType::f32, "a mask of {}",
                     dtype_name(mv.dtype));  // Keras masks are f32 here
      mask_.resize(static_cast<size_t>(mv.shape.numel()));
      k.session->read(k.masks[i], mask_.data(), mv.nbytes());
      const int64_t per_row = mv.shape.numel() / b.size;
      pre.assign(static_cast<size_t>(b.size) + 1, 0.0);
      for (int64_t r = 0; r < b.size; ++r) {
        double n = 0;
        for (int64_t j = 0; j < per_row; ++j) n += mask_[static_cast<size_t>(r * per_row + j)];
        pre[r + 1] = pre[r] + n;
      }
    }
    rows_ = b.size;
  }

  // Writes the divisors of plan p (on session s), which runs rows [lo, hi) of the batch counted last.
  void write(Session& s, const Plan& p, int64_t lo, int64_t hi) const {
    for (size_t i = 0; i < p.mask_counts.size(); ++i) {
      const ValueId v = p.mask_counts[i];
      if (v == kNoValue) continue;
      TRAINER_ASSERT(i < prefix_.size() && !prefix_[i].empty(), "output {} was not counted", i);
      const float d = static_cast<float>(std::max(prefix_[i].back(), 1.0) * static_cast<double>(hi - lo) /
                                         static_cast<double>(rows_));
      s.write(v, &d, sizeof d);
    }
  }

 private:
  MaskCounter() = default;
  struct Counting {
    std::unique_ptr<Session> session;
    std::vector<std::pair<ValueId, int>> inputs;  // each with its place in a Batch: -1 y, 0 x, k xs[k]
    std::vector<ValueId> masks;                   // per output, its mask's value or kNoValue
  };
  std::unique_ptr<Backend> cpu_;                        // declared before the sessions that run on it
  std::map<std::pair<bool, int64_t>, Counting> plans_;  // by (training, global batch size)
  std::vector<std::vector<double>> prefix_;  // per masked output: unmasked positions of rows [0, r)
  std::vector<float> mask_;                  // a mask read back
  int64_t rows_ = 0;
};

// Adds the results of `rows` rows that plan p (on session s) has run to `m`: `loss` is the plan's loss,
// read already, labels[i] output i's labels of those rows, and weights[j] the rows of sample weight input j
// (Plan::sample_ws; for weighted metrics). `class_weight`: the first output's class weights, in training.
void add_results(Session& s, const Plan& p, Metrics& m, double loss, int64_t rows,
                 const std::vector<const std::byte*>& labels, std::vector<float>& out_buf,
                 const std::vector<const float*>& weights = {},
                 const std::vector<double>* class_weight = nullptr) {
  const Graph& g = s.graph();
  if (m.several()) m.loss_sum += loss * static_cast<double>(rows);
  for (size_t i = 0; i < m.heads.size(); ++i) {
    const ValueId out = i == 0 ? p.output : p.more_output[i - 1];
    const size_t out_bytes = g.value(out).nbytes();
    out_buf.resize(std::max(out_buf.size(), out_bytes / sizeof(float)));
    s.read(out, out_buf.data(), out_bytes);
    const auto [per_sample, last] = output_dims(g, out);
    const double own = m.several() ? read_scalar(s, p.head_loss[i]) : loss;
    const ValueId mask_value = i == 0 ? p.mask : p.more_mask[i - 1];
    const float* mask = read_mask(s, mask_value);
    const int64_t mask_per_row = mask ? g.value(mask_value).shape.numel() / rows : 0;
    m.heads[i].add(own, out_buf.data(), labels[i], rows, per_sample, last, mask, mask_per_row);
    if (m.weighted_at[i] < 0) continue;
    const float* w = nullptr;
    int64_t per_row = 1;
    if (!p.sample_ws.empty()) {
      const size_t j = std::min(i, p.sample_ws.size() - 1);
      TRAINER_ASSERT(j < weights.size() && weights[j], "no weights of output {}", i);
      w = weights[j];
      per_row = g.value(p.sample_ws[j]).shape.numel() / rows;
    }
    m.weighted[static_cast<size_t>(m.weighted_at[i])].add(own, out_buf.data(), labels[i], rows, per_sample,
                                                          last, mask, mask_per_row, w, per_row,
                                                          i == 0 ? class_weight : nullptr);
  }
}

// The rows [lo, hi) of a plan's sample weight inputs in batch b (for weighted metrics).
std::vector<const float*> weight_rows(const Graph& g, const Plan& p, const data::Batch& b, int64_t lo,
                                      int64_t hi) {
  std::vector<const float*> out;
  for (size_t j = 0; j < p.sample_ws.size(); ++j)
    out.push_back(reinterpret_cast<const float*>(static_cast<const std::byte*>(b.xs[p.weights_at + j]) +
                                                 lo * (g.value(p.sample_ws[j]).nbytes() / (hi - lo))));
  return out;
}

// Evaluates rows [lo, hi) of a batch on `dev`, adding their loss and metrics to `m`.
// `counts`: the batch's masked positions (replicas), or nullptr.
void evaluate_rows(Device& dev, const data::Batch& b, int64_t lo, int64_t hi, const FitConfig& cfg,
                   Metrics& m, std::vector<float>& out_buf, const MaskCounter* counts = nullptr) {
  const Plan& p = dev.eval_plan(hi - lo);
  Session& s = dev.plans().session(p.index);
  if (counts) counts->write(s, p, lo, hi);
  const Graph& g = s.graph();
  std::vector<const std::byte*> labels = {write_rows(s, p, b, lo, hi)};
  for (size_t i = 0; i < p.more_y.size(); ++i)
    labels.push_back(static_cast<const std::byte*>(b.xs[p.labels_at + i]) +
                     lo * (g.value(p.more_y[i]).nbytes() / (hi - lo)));
  s.run(StepContext{0, cfg.seed, static_cast<uint64_t>(lo)});
  add_results(s, p, m, read_scalar(s, p.loss), hi - lo, labels, out_buf, weight_rows(g, p, b, lo, hi));
}

Logs evaluate_on(Device& dev, data::BatchLoader& loader, const FitConfig& cfg, const std::string& prefix,
                 std::vector<float>& out_buf, int64_t steps = 0) {
  std::vector<OutputLoss> outputs = output_losses(cfg);
  set_columns(outputs, dev);
  Metrics acc(outputs);
  loader.start(0, 0, steps > 0 ? steps : loader.batches_per_epoch());
  data::Batch batch;
  while (loader.next(&batch)) evaluate_rows(dev, batch, 0, batch.size, cfg, acc, out_buf);
  return acc.logs(prefix);
}

// ZeRO-1's shards: the trainable parameters' elements, concatenated in the model's order, split into `world`
// ranges of nearly equal size (their bounds on multiples of 16 elements), rank r owning range r. A piece is
// where one parameter meets one range; pieces come in the model's order, then the ranks'. Every rank computes
// the same split.
ShardSplit split_of(const Graph& g, int world) {
  const std::vector<ValueId> params = trainable_parameters(g);
  int64_t total = 0;
  for (ValueId p : params) total += g.value(p).shape.numel();
  std::vector<int64_t> bound(world + 1);
  for (int r = 0; r <= world; ++r) bound[r] = std::min(total, (total * r / world + 15) / 16 * 16);
  bound[world] = total;
  ShardSplit out;
  int64_t base = 0;
  for (ValueId p : params) {
    const int64_t n = g.value(p).shape.numel();
    for (int r = 0; r < world; ++r) {
      const int64_t lo = std::max(base, bound[r]), hi = std::min(base + n, bound[r + 1]);
      if (hi > lo) out.pieces.push_back({g.value(p).name, r, lo - base, hi - lo});
    }
    base += n;
  }
  return out;
}

// A stop signal as it travels between processes: counts per signal number in kSignalSlots slots of a sum
// (put_signal marks this rank's), of which every rank takes the lowest number (summed_signal), so that all
// report and exit alike.
constexpr int kSignalSlots = 32;
void put_signal(double* slots, int sig) {
  if (sig > 0) slots[std::min(sig, kSignalSlots - 1)] = 1.0;
}
int summed_signal(const double* slots) {
  for (int k = 1; k < kSignalSlots; ++k)
    if (slots[k] > 0) return k;
  return 0;
}

double find_log(const Logs& logs, const std::string& name, bool* found) {
  for (const auto& [k, v] : logs)
    if (k == name) {
      *found = true;
      return v;
    }
  *found = false;
  return 0;
}

}  // namespace

namespace {

// Every parameter and state value by name, from the plan that holds them all.
std::vector<std::pair<std::string, Tensor>> named_values(Session& s) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [v, t] : snapshot(s)) out.emplace_back(s.graph().value(v).name, std::move(t));
  return out;
}

bool improves(bool have, double best, double value, bool maximize, double min_delta) {
  return !have || (maximize ? value > best + min_delta : value < best - min_delta);
}

// auto: larger is better for accuracies, precision, recall, F1, the AUCs and the true positives and
// negatives; smaller for the loss, errors and false positives and negatives. A model of several outputs
// prefixes each output's quantities with its name (`outputs`), which the rule looks past: parity_auc is
// maximized, accent_loss minimized.
bool maximized(const std::string& mode, const std::string& monitor, const std::vector<OutputLoss>& outputs) {
  if (mode != "auto") return mode == "max";
  std::string m = monitor.starts_with("val_") ? monitor.substr(4) : monitor;
  if (outputs.size() > 1)
    for (const OutputLoss& o : outputs)
      if (m.starts_with(o.name + "_")) {
        m = m.substr(o.name.size() + 1);
        break;
      }
  if (m.starts_with("weighted_")) m = m.substr(9);
  return m.find("acc") != std::string::npos || m == "precision" || m == "recall" || m == "auc" ||
         m == "pr_auc" || m == "f1_score" || m == "fbeta_score" || m == "r2_score" || m.ends_with("iou") ||
         m.find("_at_") != std::string::npos || m == "cosine_similarity" || m == "true_positives" ||
         m == "true_negatives";
}

}  // namespace

FitResult fit(const ModelFactory& factory, std::shared_ptr<const data::Dataset> train,
              std::shared_ptr<const data::Dataset> validation, std::shared_ptr<const data::Dataset> test,
              const data::BatchFormat& format, const FitConfig& cfg, Backend& backend, FitObserver& observer,
              const CheckpointPolicy& policy, const SaveFn& save, const TrainingState* resume) {
  Replicas one;
  one.backends = {&backend};
  return fit(factory, train, validation, test, format, cfg, one, observer, policy, save, resume);
}

FitResult fit(const ModelFactory& given, std::shared_ptr<const data::Dataset> train,
              std::shared_ptr<const data::Dataset> validation, std::shared_ptr<const data::Dataset> test,
              const data::BatchFormat& format, const FitConfig& cfg, const Replicas& replicas,
              FitObserver& observer, const CheckpointPolicy& policy, const SaveFn& save,
              const TrainingState* resume) {
  auto t_start = std::chrono::steady_clock::now();
  // Replicas (communicators: --devices N, --gpus, MPI) synchronize the batch normalizations that ask for it.
  const ModelFactory factory = replicas.comms.empty() ? given : synchronized_factory(given);
  std::vector<OutputLoss> outputs = output_losses(cfg);  // the accumulators point into it
  int64_t n_train = train ? train->size() : 0;
  int64_t n_val = validation ? validation->size() : 0;
  const int local = static_cast<int>(replicas.backends.size());
  const int world = replicas.world_size;
  TRAINER_ASSERT(local >= 1 && replicas.first_rank + local <= world, "{} replicas from rank {} of {}", local,
                 replicas.first_rank, world);
  TRAINER_ASSERT(world == 1 || static_cast<int>(replicas.comms.size()) == local,
                 "replicas without communicators");
  // Rank g's rows of a batch of n: [n g / W, n (g + 1) / W).
  auto slice = [world](int64_t n, int g) {
    return std::pair<int64_t, int64_t>{n * g / world, n * (g + 1) / world};
  };
  if (world > 1) {
    if (cfg.batch_size % world != 0 && !replicas.allow_uneven)
      throw InputError(
          "train.batch_size",
          fmt::format("the global batch of {} does not divide among {} replicas", cfg.batch_size, world),
          fmt::format("use a batch_size that {} divides, or --allow-uneven (the ranks' gradients "
                      "are then weighted by their sample counts)",
                      world));
    if (std::min(cfg.batch_size, n_train) < world)
      throw InputError(
          "train.batch_size",
          fmt::format("a batch of {} training samples leaves some of {} replicas without a sample",
                      std::min(cfg.batch_size, n_train), world),
          fmt::format("use a batch_size of {} or more, or fewer replicas", world));
    for (int64_t n : batch_sizes(n_train, cfg.batch_size))
      if (n < world)
        throw InputError(
            "data.train",
            fmt::format("a batch of {} training samples (the last one of an epoch) leaves some of {} "
                        "replicas without a sample",
                        n, world),
            "change data.train.limit or train.batch_size so that every batch holds a sample per "
            "replica");
  }
  // Every replica plans its slices of the training batches, and of the evaluation batches: evaluation is
  // shared the same way.
  // ZeRO-1: each rank updates its range of the parameters' elements (shard_split).
  const bool sharded = cfg.shard_optimizer && world > 1;
  ShardSplit split;
  std::map<std::string, std::vector<const ShardSplit::Piece*>> pieces_of;  // by parameter, in rank order
  std::vector<std::string> slots;                                          // the optimizer's, "adam_m", ...
  if (sharded) {
    split = shard_split(factory, cfg, world);
    for (const ShardSplit::Piece& sp : split.pieces) pieces_of[sp.param].push_back(&sp);
    slots = optimizer_slots(cfg.optimizer);
  }
  const bool reduce_to_owner = sharded && shard_reduces_to_owner(cfg);
  // Collectives on host memory across processes gather a checkpoint's shards: every rank then captures.
  const bool gather_across_processes = sharded && world > local;
  // Under gradient accumulation, each replica gathers its own weighted share of the gradients between
  // updates, and one reduction per update adds them. A checkpoint written between two updates holds the
  // replicas' sum and each replica's share (across processes a collective: every rank captures). A resume on
  // as many replicas gives each its own share back, so the next update adds the same numbers in the same
  // order, bit for bit; on another count it gives the sum to the first replica and 0 to the others: the sum
  // is what the next update reduces.
  const bool split_accumulation = cfg.gradient_accumulation_steps > 1 && world > 1;
  std::set<std::string> accumulated;  // the accumulators' names: P/accumulated_gradient of each trainable P
  std::vector<std::unique_ptr<Device>> devs;
  for (int k = 0; k < local; ++k) {
    std::vector<int64_t> slices;
    for (int64_t n : batch_sizes(n_train, cfg.batch_size)) {
      auto [lo, hi] = slice(n, replicas.first_rank + k);
      slices.push_back(hi - lo);
    }
    std::vector<int64_t> eval;
    for (int64_t n : Device::eval_batches({n_val, test ? test->size() : 0}, cfg)) {
      auto [lo, hi] = slice(n, replicas.first_rank + k);
      if (hi > lo) eval.push_back(hi - lo);
    }
    std::optional<std::map<std::string, TrainingOptions::ShardRange>> shard;
    if (sharded) shard = split.ranges_of(replicas.first_rank + k);
    devs.push_back(
        std::make_unique<Device>(factory, cfg, *replicas.backends[k], slices, eval, shard, world > 1));
  }
  // Replicas of a model with masked per-step outputs: the whole batch's masked steps, counted before each
  // step.
  std::unique_ptr<MaskCounter> mask_counter;
  if (world > 1)
    mask_counter = MaskCounter::make(factory, cfg, batch_sizes(n_train, cfg.batch_size),
                                     Device::eval_batches({n_val, test ? test->size() : 0}, cfg));
  Device& dev = *devs[0];
  set_columns(outputs, dev);
  if (split_accumulation) {
    const Graph& g = dev.weights_session().graph();
    for (ValueId p : trainable_parameters(g)) {
      const ValueId a = g.find(g.value(p).name + "/accumulated_gradient");
      if (a != kNoValue && g.value(a).kind == ValueKind::state) accumulated.insert(g.value(a).name);
    }
  }
  std::vector<Session*> weight_sessions;
  for (auto& d : devs) weight_sessions.push_back(&d->weights_session());
  // ZeRO-1: after the update, each shard goes from its owner to that range of the parameter on every replica
  // (one all-gather). The shard values of replica k: the parameter's ("P@shard") and its optimizer state's
  // ("P@shard/adam_m"), each with the name it has in a checkpoint ("P", "P/adam_m") and its range there.
  struct ShardValue {
    ValueId value;
    std::string full;
    int64_t offset, count;
  };
  std::vector<std::vector<dist::Communicator::Copy>> gathers(local);
  std::vector<std::vector<ShardValue>> shard_values(local);
  // Every shard's checkpoint names, whichever replica owns it: an MPI rank holds its own shards only, and a
  // checkpoint's values of the others' land on them.
  std::set<std::string> world_shard_names;
  if (sharded)
    for (const ShardSplit::Piece& sp : split.pieces) {
      world_shard_names.insert(sp.param);
      for (const std::string& slot : slots) world_shard_names.insert(sp.param + "/" + slot);
    }
  if (sharded)
    for (int k = 0; k < local; ++k) {
      Session& w = devs[k]->weights_session();
      const int rank = replicas.first_rank + k;
      gathers[k] = shard_gathers(w, split, rank);
      for (const ShardSplit::Piece& sp : split.pieces) {
        if (sp.owner != rank) continue;
        std::vector<std::string> suffixes = {""};
        for (const std::string& slot : slots) suffixes.push_back("/" + slot);
        for (const std::string& suffix : suffixes) {
          const ValueId sv = w.graph().find(sp.param + kShardSuffix + suffix);
          TRAINER_ASSERT(sv != kNoValue, "no shard value {}{}{}", sp.param, kShardSuffix, suffix);
          shard_values[k].push_back({sv, sp.param + suffix, sp.offset, sp.count});
        }
      }
    }
  // Gradient buckets are summed across ranks as backward produces them, each rank's gradient first weighted
  // by its share of the global batch, so the sum is the gradient of the global batch's mean loss. The sums
  // run on a communication thread per replica, overlapping the rest of backward.
  // A reducer whose thread is stuck (after a collective's timeout) is deliberately leaked: threads of the run
  // that are still blocked on it would otherwise wait on a destroyed condition variable. The process is
  // ending.
  struct Reducers : std::vector<std::unique_ptr<dist::BucketReducer>> {
    ~Reducers() {
      for (auto& r : *this)
        if (!r->shutdown()) (void)r.release();
    }
  };
  Reducers reducers;
  std::unique_ptr<dist::ReplicaThreads> replica_threads;
  if (local > 1) replica_threads = std::make_unique<dist::ReplicaThreads>(local);
  std::map<std::pair<int, int64_t>, std::vector<dist::BucketReducer::Bucket>>
      plan_buckets;  // (replica, batch)
  if (!replicas.comms.empty())
    for (int k = 0; k < local; ++k) {
      reducers.push_back(std::make_unique<dist::BucketReducer>(replicas.comms[k], replicas.trace, k));
      for (const auto& [n, p] : devs[k]->train_plans()) {
        Session& s = devs[k]->plans().session(p.index);
        std::vector<dist::BucketReducer::Bucket>& buckets = plan_buckets[{k, n}];
        buckets = reduction_buckets(s, p.grad_param, reduce_to_owner ? &split : nullptr,
                                    p.apply_update != kNoValue);
        reducers.back()->attach(s.executable(), &buckets);
      }
    }

  // Bad labels are found before the first step (also the validation and test data's): later, a run would
  // end an epoch in with nothing saved.
  for (const auto& d : {train, validation, test})
    if (d) data::check_labels(*d, format);
  data::BatchLoader train_loader(train, cfg.batch_size, format, cfg.shuffle, cfg.seed);
  std::unique_ptr<data::BatchLoader> val_loader;
  if (validation)
    val_loader = std::make_unique<data::BatchLoader>(validation, cfg.batch_size, format.of_validation(),
                                                     false, cfg.seed);

  // An epoch is steps_per_epoch steps of the stream of passes over the training data, a pass by default.
  const int64_t steps_per_pass = train_loader.batches_per_epoch();
  const int64_t epoch_steps = cfg.steps_per_epoch > 0 ? cfg.steps_per_epoch : steps_per_pass;
  const LearningRateSchedule schedule = run_schedule(cfg, epoch_steps, resume);
  // validation_steps: the first batches of the validation data.
  const int64_t val_steps =
      val_loader ? (cfg.validation_steps > 0 ? std::min(cfg.validation_steps, val_loader->batches_per_epoch())
                                             : val_loader->batches_per_epoch())
                 : 0;

  FitPlanInfo info;
  info.train_samples = n_train;
  info.val_samples = std::min(n_val, val_steps * cfg.batch_size);
  info.steps_per_epoch = epoch_steps;
  info.steps_per_pass = steps_per_pass;
  info.accumulation_steps = cfg.gradient_accumulation_steps;
  info.arena_bytes = dev.plans().arena_bytes();
  info.held_bytes = dev.plans().held_bytes();
  info.plans = dev.plans().size();
  info.device = replicas.backends[0]->description();
  if (world > 1) info.device = fmt::format("{} replicas · {}", world, info.device);
  if (cfg.precision != Precision::fp32) info.device += fmt::format(" · {}", precision_name(cfg.precision));
  info.signature = dev.weights_session().program().signature;

  // Parameters and optimizer state by their checkpoint names, into every replica that holds them; a shard
  // (ZeRO-1) takes its range. Every value must land somewhere: in this process, or in another MPI rank's
  // shard.
  auto check_fits = [](const std::string& name, const Tensor& t, const Value& val) {
    if (t.dtype() != val.dtype || t.shape() != val.shape)
      throw InputError(
          name,
          fmt::format("the checkpoint holds '{}' as {} {}, and this model has it as {} {}", name,
                      dtype_name(t.dtype()), t.shape().str(), dtype_name(val.dtype), val.shape.str()),
          "resume with the spec the checkpoint was written with (a --set that changes a "
          "layer's size cannot resume it)");
  };
  auto load_values = [&](const std::vector<std::pair<std::string, Tensor>>& values) {
    // The replicas' shares of accumulated gradients, where the checkpoint holds them: each replica takes its
    // own back when the checkpoint's replicas are this run's, and the sum stands for them otherwise.
    std::set<std::string> shares;
    for (const auto& [name, t] : values)
      if (name.find(kReplicaShareSuffix) != std::string::npos) shares.insert(name);
    const auto own_shares = [&](const std::string& sum) {
      if (!accumulated.count(sum)) return false;
      for (int q = 0; q <= world; ++q)
        if (shares.count(replica_share_name(sum, q)) != (q < world)) return false;
      return true;
    };
    for (const auto& [name, t] : values) {
      if (shares.count(name)) {
        const size_t at = name.rfind(kReplicaShareSuffix);
        const std::string sum = name.substr(0, at);
        const ValueId v = weight_sessions[0]->graph().find(sum);
        const std::string_view rank = std::string_view(name).substr(at + std::strlen(kReplicaShareSuffix));
        int q = -1;
        const auto parsed = std::from_chars(rank.data(), rank.data() + rank.size(), q);
        if (v == kNoValue || !weight_sessions[0]->graph().value(v).persistent() || parsed.ec != std::errc() ||
            parsed.ptr != rank.data() + rank.size() || q < 0)
          throw InputError(name,
                           fmt::format("the checkpoint holds '{}', which this model does not have", name),
                           "resume with the spec the checkpoint was written with");
        if (!own_shares(sum)) continue;  // another replica count, or no accumulation across replicas
        const int k = q - replicas.first_rank;
        if (k < 0 || k >= local) continue;  // another process's
        Session& w = *weight_sessions[k];
        check_fits(name, t, w.graph().value(v));
        w.write(v, t);
        continue;
      }
      bool landed = false;
      for (int k = 0; k < local; ++k) {
        Session& w = *weight_sessions[k];
        const ValueId v = w.graph().find(name);
        if (v != kNoValue && w.graph().value(v).persistent()) {
          check_fits(name, t, w.graph().value(v));
          // (An accumulator whose replicas' shares are held takes them instead.)
          if (!accumulated.count(name))
            w.write(v, t);
          else if (!own_shares(name))
            w.write(v, replicas.first_rank + k == 0 ? t : Tensor(t.dtype(), t.shape()));
          landed = true;
        }
        for (const ShardValue& sv : shard_values[k]) {
          if (sv.full != name) continue;
          const size_t es = dtype_bytes(t.dtype());
          if ((sv.offset + sv.count) * es > t.nbytes())
            throw InputError(name,
                             fmt::format("'{}' holds {} bytes, fewer than this model's", name, t.nbytes()),
                             "resume with the spec the checkpoint was written with");
          w.write(sv.value, static_cast<const std::byte*>(t.raw()) + sv.offset * es, sv.count * es);
          landed = true;
        }
      }
      if (!landed && !world_shard_names.count(name))
        throw InputError(name, fmt::format("the checkpoint holds '{}', which this model does not have", name),
                         "resume with the spec the checkpoint was written with");
    }
  };
  // Each replica's moving averages of the weights (use_ema's "P/ema" states), with their weights.
  auto for_each_average = [&](const std::function<void(Session&, ValueId, ValueId)>& each) {
    for (int k = 0; k < local; ++k) {
      Session& w = *weight_sessions[k];
      const Graph& g = w.graph();
      for (ValueId v = 0; v < g.num_values(); ++v) {
        const std::string& name = g.value(v).name;
        if (g.value(v).kind != ValueKind::state || !name.ends_with("/ema")) continue;
        const ValueId param = g.find(name.substr(0, name.size() - 4));
        if (param != kNoValue && g.value(param).persistent()) each(w, v, param);
      }
    }
  };
  TrainingState st;
  DynamicLossScaler scaler;
  const bool scaling = cfg.precision == Precision::fp16;
  if (resume) {
    st = *resume;
    st.values.clear();
    if (!resume->rate_scaled_velocity && cfg.optimizer.kind == "sgd" && cfg.optimizer.momentum > 0 &&
        st.global_step > 0) {
      // An earlier version's velocity of gradients becomes Keras's rate-scaled one, at its last step's rate
      // (exact where the rate was constant). At an epoch's end ReduceLROnPlateau may have lowered the factor
      // for the next step already: the epoch's logged rate is the one its last step took.
      double rate = schedule.at(st.global_step - 1) * st.lr_factor;
      if (st.batch == 0 && !st.history.empty()) {
        bool logged = false;
        const double last = find_log(st.history.back().logs, "learning_rate", &logged);
        if (logged) rate = last;
      }
      auto convert = [&](std::vector<std::pair<std::string, Tensor>> values) {
        for (auto& [name, t] : values)
          if (name.ends_with("/momentum") && !name.ends_with("/rms_momentum"))
            for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, t.get_f64(i) * rate);
        return values;
      };
      load_values(convert(resume->values));
      // Early stopping's best weights, restored at the end, hold the velocity too (their own epoch's rate is
      // not kept: the last step's stands in for it).
      st.best_values = convert(resume->best_values);
    } else {
      load_values(resume->values);
    }
    st.rate_scaled_velocity = true;  // what this run's checkpoints hold
    // Every weight comes from the checkpoint: one it lacks would train on from its initial value, silently
    // another run.
    {
      std::set<std::string> held;
      for (const auto& [name, t] : resume->values) held.insert(name);
      const Graph& g = weight_sessions[0]->graph();
      for (const ShardValue& sv : shard_values[0]) held.insert(g.value(sv.value).name);  // ZeRO-1's own part
      for (ValueId v = 0; v < g.num_values(); ++v)
        if (g.value(v).kind == ValueKind::parameter && g.value(v).persistent() &&
            !held.count(g.value(v).name))
          throw InputError(g.value(v).name,
                           fmt::format("the checkpoint has no '{}', which this model has", g.value(v).name),
                           "resume with the spec the checkpoint was written with");
    }
    // Averages the checkpoint does not hold (use_ema turned on at the resume) start at the weights.
    if (cfg.use_ema) {
      std::set<std::string> held;
      for (const auto& [name, t] : resume->values) held.insert(name);
      for_each_average([&](Session& w, ValueId average, ValueId param) {
        if (!held.count(w.graph().value(average).name)) w.write(average, w.read(param));
      });
    }
    if (st.batch > 0 && st.steps_per_epoch != cfg.steps_per_epoch)
      throw InputError(
          "--resume",
          fmt::format("the checkpoint stopped in the middle of an epoch of {}, and this run's epochs are {}",
                      st.steps_per_epoch > 0 ? fmt::format("{} steps", st.steps_per_epoch)
                                             : std::string("a pass over the data"),
                      cfg.steps_per_epoch > 0 ? fmt::format("{} steps", cfg.steps_per_epoch)
                                              : std::string("passes over the data")),
          st.steps_per_epoch > 0 ? fmt::format("resume with train.steps_per_epoch = {}, or from a checkpoint "
                                               "written at the end of an epoch",
                                               st.steps_per_epoch)
                                 : std::string("resume without train.steps_per_epoch, or from a checkpoint "
                                               "written at the end of an epoch"));
    if (st.batch > info.steps_per_epoch)
      throw InputError("checkpoint",
                       fmt::format("the checkpoint stopped at batch {} of an epoch, but an epoch now has "
                                   "{} batches",
                                   st.batch, info.steps_per_epoch),
                       "resume with the data and batch size the checkpoint was written with");
    // A checkpoint whose epochs were passes (or from before the position was kept) is at its epoch's pass.
    if (st.steps_per_epoch == 0) {
      st.data_pass = st.epoch;
      st.data_samples = std::min(st.batch * cfg.batch_size, n_train);
    }
    if (n_train > 0 && st.data_samples >= n_train) {
      ++st.data_pass;
      st.data_samples = 0;
    }
    if (st.data_samples % cfg.batch_size != 0)
      throw InputError("--resume",
                       fmt::format("the checkpoint stopped {} samples into a pass over the training data, "
                                   "which batches of {} do not reach",
                                   st.data_samples, cfg.batch_size),
                       "resume with the batch_size the checkpoint was written with, or from a checkpoint "
                       "written at the end of a pass");
  }
  st.steps_per_epoch = cfg.steps_per_epoch;
  if (scaling && st.loss_scale > 0)
    scaler.restore(st.loss_scale, st.loss_scale_good_steps, st.global_step - st.skipped_steps,
                   st.skipped_steps);
  else
    scaler.restore(scaling ? scaler.scale() : 0.0f, 0, st.global_step - st.skipped_steps, st.skipped_steps);
  observer.on_train_begin(info);

  FitResult result;
  result.history = st.history;
  result.best_epoch = st.best_epoch;
  std::vector<float> out_buf;
  // Evaluation on every replica, each on its rows of every batch (the training slices' rule); the loss and
  // metric sums are added over the replicas of this process and, under MPI, across processes, so every rank
  // has the numbers of the whole data.
  std::vector<std::vector<float>> eval_bufs(local);
  // Model state that training updates on each replica from its own rows (BatchNormalization's moving
  // statistics) is made replica 0's everywhere before evaluating, so that every replica evaluates the model a
  // checkpoint holds (as DistributedDataParallel broadcasts its buffers from rank 0).
  std::vector<std::string> model_state;
  if (world > 1) {
    const ForwardModel forward = factory(devs[0]->largest_train_plan().batch, false, false);
    for (ValueId v = 0; v < forward.graph.num_values(); ++v)
      if (forward.graph.value(v).kind == ValueKind::state) model_state.push_back(forward.graph.value(v).name);
  }
  auto sync_model_state = [&] {
    for (const std::string& name : model_state) {
      Session& first = devs[0]->weights_session();
      const ValueId v = first.graph().find(name);
      TRAINER_ASSERT(v != kNoValue, "model state '{}' is not in the training plan", name);
      Tensor t = first.read(v);
      if (replicas.host_comm && world > local)
        replicas.host_comm->broadcast(t.raw(), t.nbytes(), 0, {-1, st.global_step});
      for (int k = replicas.first_rank == 0 ? 1 : 0; k < local; ++k) {
        Session& w = devs[k]->weights_session();
        w.write(w.graph().find(name), t);
      }
    }
  };
  // The first `steps` batches of the loader's data, all of them when 0.
  auto evaluate_all = [&](data::BatchLoader& loader, const std::string& prefix, int64_t steps) -> Logs {
    if (world == 1) return evaluate_on(dev, loader, cfg, prefix, out_buf, steps);
    sync_model_state();
    std::vector<Metrics> accs(local, Metrics(outputs));
    loader.start(0, 0, steps > 0 ? steps : loader.batches_per_epoch());
    data::Batch b;
    auto eval_replica = [&](int k) {
      auto [lo, hi] = slice(b.size, replicas.first_rank + k);
      if (hi > lo) evaluate_rows(*devs[k], b, lo, hi, cfg, accs[k], eval_bufs[k], mask_counter.get());
    };
    while (loader.next(&b)) {
      if (mask_counter) mask_counter->count(b, false);
      if (local == 1)
        eval_replica(0);
      else
        replica_threads->run(eval_replica);
    }
    Metrics total(outputs);
    for (const Metrics& a : accs) total.merge_positions(a);
    std::vector<double> sums, f;
    total.flat(&sums);
    for (const Metrics& a : accs) {
      a.flat(&f);
      for (size_t i = 0; i < sums.size(); ++i) sums[i] += f[i];
    }
    if (replicas.host_comm && world > local) {
      replicas.host_comm->all_reduce_sum(sums.data(), sums.size(), DType::f64, {-1, st.global_step});
      // Rank 0's numbers are the run's, bit for bit, so every rank takes the same early-stopping and
      // save_best decisions (and calls the same collectives after).
      replicas.host_comm->broadcast(sums.data(), sums.size() * sizeof(double), 0, {-1, st.global_step});
    }
    total.set_flat(sums);
    return total.logs(prefix);
  };
  auto capture = [&]() {
    TrainingState c = st;
    c.history = result.history;
    c.values = named_values(dev.weights_session());
    if (split_accumulation) {
      // Every replica's share, in rank order (another process's by a broadcast from it: with ranks in other
      // processes each runs one replica, and its rank is the host communicator's), their sum, and the shares
      // themselves while any is not 0 (between two updates).
      std::vector<std::pair<std::string, Tensor>> own;
      for (auto& [name, t] : c.values) {
        if (!accumulated.count(name)) continue;
        std::vector<Tensor> parts;
        bool gathered = false;
        for (int q = 0; q < world; ++q) {
          const int k = q - replicas.first_rank;
          if (k >= 0 && k < local) {
            Session& w = devs[k]->weights_session();
            parts.push_back(k == 0 ? t : w.read(w.graph().find(name)));
          } else {
            parts.emplace_back(t.dtype(), t.shape());
          }
          if (world > local) {
            TRAINER_ASSERT(replicas.host_comm, "replicas in other processes, and no host communicator");
            replicas.host_comm->broadcast(parts.back().raw(), parts.back().nbytes(), q, {-1, st.global_step});
          }
          for (int64_t i = 0; i < t.numel() && !gathered; ++i) gathered = parts.back().get_f64(i) != 0.0;
        }
        for (int64_t i = 0; i < t.numel(); ++i) {  // rounded to the accumulator's type at every addition
          t.set_f64(i, parts[0].get_f64(i));
          for (int q = 1; q < world; ++q) t.set_f64(i, t.get_f64(i) + parts[q].get_f64(i));
        }
        if (gathered)
          for (int q = 0; q < world; ++q) own.emplace_back(replica_share_name(name, q), std::move(parts[q]));
      }
      for (auto& nv : own) c.values.push_back(std::move(nv));
    }
    if (sharded) {
      // Every parameter is whole on every replica; its optimizer state is in shards, gathered here in the
      // names and shapes of an unsharded run (from other processes over host memory, rank by rank).
      std::erase_if(c.values,
                    [](const auto& nv) { return nv.first.find(kShardSuffix) != std::string::npos; });
      const Graph& g = dev.weights_session().graph();
      for (const auto& [param, ps] : pieces_of)
        for (const std::string& slot : slots) {
          const Value& pv = g.value(g.find(param));
          Tensor whole(pv.dtype, pv.shape);
          const size_t es = dtype_bytes(pv.dtype);
          for (const ShardSplit::Piece* sp : ps) {
            std::byte* at = static_cast<std::byte*>(whole.raw()) + sp->offset * es;
            const int k = sp->owner - replicas.first_rank;
            if (k >= 0 && k < local) {
              Session& w = devs[k]->weights_session();
              w.read(w.graph().find(param + kShardSuffix + "/" + slot), at, sp->count * es);
            }
            if (gather_across_processes)
              replicas.host_comm->broadcast(at, sp->count * es, sp->owner, {-1, st.global_step});
          }
          c.values.emplace_back(param + "/" + slot, std::move(whole));
        }
    }
    return c;
  };
  // A checkpoint is captured where it is saved; with shards or accumulated gradients in other processes
  // every rank captures (the gathering is collective), and the ranks without `save` (all but rank 0) drop it.
  const bool saving = save || gather_across_processes || (split_accumulation && world > local);
  auto keep = [&](SaveReason why) {
    TrainingState c = capture();
    if (save) save(c, why);
  };
  if (st.saved_best_of != policy.save_best) st.saved_best_of.clear();
  const uint64_t fingerprint = train ? data_fingerprint(*train) : 0;
  {
    // An epoch of steps_per_epoch can end in the middle of a pass: the pass goes on only in its own order.
    // (In the middle of an epoch, the epoch's layout below says more.)
    const std::string order = fmt::format("{} samples, seed {}, {}, data {:016x}", n_train, cfg.seed,
                                          cfg.shuffle ? "shuffled" : "in order", fingerprint);
    if (st.batch == 0 && st.data_samples > 0 && !st.data_order.empty() && st.data_order != order)
      throw InputError(
          "--resume",
          fmt::format("the checkpoint stopped {} samples into a pass over the training data of {}, "
                      "and this run has {}",
                      st.data_samples, st.data_order, order),
          "resume with the seed, shuffle setting and training data of the checkpoint's run, or from "
          "a checkpoint written at the end of a pass");
    st.data_order = order;
  }
  while (st.epoch < cfg.epochs && !st.stopped) {
    auto t0 = std::chrono::steady_clock::now();
    Metrics acc(outputs);
    const std::string layout = metric_layout(acc, cfg, n_train, dev.any_plan(), fingerprint);
    if (!st.metric_sums.empty()) {
      // The epoch goes on only as it began: another order, other data or other batches would skip or repeat
      // samples, and other metrics, masks or weights would mix their counts with the sums (a --set or
      // --batch-size on resume). A checkpoint from before the order was kept is held to the rest.
      const bool older = st.metric_layout.find("; data ") == std::string::npos;
      const std::string compared =
          older ? metric_layout(acc, cfg, n_train, dev.any_plan(), std::nullopt) : layout;
      if (!st.metric_layout.empty() && st.metric_layout != compared)
        throw InputError(
            "--resume",
            fmt::format("the checkpoint stopped in the middle of epoch {}, whose running sums count {}, and "
                        "this run counts {}",
                        st.epoch + 1, st.metric_layout, layout),
            "resume with the batch_size, seed, shuffle, data, metrics, masks and weights of the checkpoint's "
            "run, or from a checkpoint written at the end of an epoch");
      // A checkpoint from before a metric's counts existed holds fewer sums: the missing ones start at 0.
      std::vector<double> sums = st.metric_sums;
      sums.resize(acc.flat_size(), 0.0);
      acc.set_flat(sums);
    }
    st.metric_layout = layout;  // what the sums of this epoch's checkpoints count
    // The epoch reads on from where the run is in the stream of passes (a resumed epoch from the batch after
    // those it trained on: each pass's order is the same permutation), into the next pass at a pass's end.
    train_loader.start(st.data_pass, st.data_samples / cfg.batch_size,
                       std::max<int64_t>(epoch_steps - st.batch, 0));
    data::Batch batch;
    // Writes a batch's rows into every replica's inputs. The next batch is written right after a step is
    // launched, before its results are read, when it takes the same plans: on a GPU its copy then overlaps
    // the step (the copy stream), and the plan's inputs are not what the step's outputs occupy.
    auto feed = [&](const data::Batch& b) {
      for (int k = 0; k < local; ++k) {
        auto [lo, hi] = slice(b.size, replicas.first_rank + k);
        const Plan& p = devs[k]->train_plan(hi - lo);
        write_rows(devs[k]->plans().session(p.index), p, b, lo, hi);
      }
    };
    // Whether feeding a full batch could wait for the step in flight (see the watchdog below).
    bool feed_waits = false;
    for (int k = 0; k < local && !replicas.comms.empty(); ++k) {
      const Plan& p = devs[k]->largest_train_plan();
      const Graph& g = devs[k]->plans().session(p.index).graph();
      const size_t limit = replicas.backends[k]->unblocked_copy_bytes();
      feed_waits = feed_waits || g.value(p.x).nbytes() > limit || g.value(p.y).nbytes() > limit;
      for (ValueId v : p.more_x) feed_waits = feed_waits || g.value(v).nbytes() > limit;
    }
    // The current batch's labels of every output, kept once the loader moves on.
    std::vector<std::vector<std::byte>> labels(outputs.size());
    std::vector<const std::byte*> label_rows(outputs.size());
    // Weighted metrics: the current batch's sample weights, kept likewise.
    const bool keep_weights = !acc.weighted.empty() && !dev.any_plan().sample_ws.empty();
    std::vector<std::vector<std::byte>> kept_weights(keep_weights ? dev.any_plan().sample_ws.size() : 0);
    std::vector<const float*> weight_rows_of(kept_weights.size());
    std::vector<double> before, delta;  // metric sums around a step, for the sum across processes
    bool have = train_loader.next(&batch), fed = false;
    while (have) {
      if (!fed) feed(batch);
      const float lr = static_cast<float>(schedule.at(st.global_step) * st.lr_factor);
      // The optimizer counts the updates it made: a step skipped for overflow does not advance it. Under
      // gradient accumulation, every N-th step updates, and the optimizer's iteration is the update's
      // number, as Keras's iterations (the steps over N) count it: N steps of batch B update as one step of
      // batch N B. The schedule reads the global step.
      const int64_t accumulation = cfg.gradient_accumulation_steps;
      const int64_t iteration =
          accumulation > 1 ? st.global_step / accumulation + 1 : scaler.applied_steps() + 1;
      const bool apply_update = (st.global_step + 1) % accumulation == 0;
      const float scale = scaler.scale();
      // Replica k takes its rank's rows of the batch; StepContext::sample_offset keys its dropout masks by
      // the rows' places in the global batch, so every replica count draws the same masks.
      if (mask_counter)
        mask_counter->count(batch, true, StepContext{static_cast<uint64_t>(st.global_step), cfg.seed});
      auto run_replica = [&](int k) {
        auto [lo, hi] = slice(batch.size, replicas.first_rank + k);
        Device& d = *devs[k];
        const Plan& p = d.train_plan(hi - lo);
        Session& s = d.plans().session(p.index);
        if (mask_counter) mask_counter->write(s, p, lo, hi);
        s.write(p.lr, &lr, sizeof lr);
        s.write(p.iteration, &iteration, sizeof iteration);
        if (p.apply_update != kNoValue) {
          s.write(p.apply_update, &apply_update, sizeof apply_update);
          const float share = static_cast<float>(static_cast<double>(hi - lo) / batch.size);
          s.write(p.replica_weight, &share, sizeof share);
        }
        if (p.loss_scale != kNoValue) s.write(p.loss_scale, &scale, sizeof scale);
        if (!reducers.empty())
          reducers[k]->begin_step(plan_buckets.at({k, hi - lo}), st.global_step,
                                  static_cast<double>(hi - lo) / batch.size, apply_update);
        const auto t0 = Trace::Clock::now();
        // With replicas, only full batches are captured into CUDA graphs: every replica knows which they are.
        s.run(StepContext{static_cast<uint64_t>(st.global_step), cfg.seed, static_cast<uint64_t>(lo),
                          world == 1 || batch.size == std::min(cfg.batch_size, n_train)});
        // A step that only accumulates changes no parameter, unless constraints project them.
        if (sharded && (apply_update || d.constrained())) {
          const auto g0 = Trace::Clock::now();
          replicas.comms[k]->broadcast_group(gathers[k], {-1, st.global_step});
          if (replicas.trace)
            replicas.trace->span("gather shards", 2 * k, g0, Trace::Clock::now(),
                                 fmt::format("\"step\": {}", st.global_step));
        }
        if (replicas.trace)
          replicas.trace->span("step", 2 * k, t0, Trace::Clock::now(),
                               fmt::format("\"step\": {}", st.global_step));
      };
      if (local == 1)
        run_replica(0);
      else
        replica_threads->run(
            run_replica,
            replicas.comms.empty() ? std::chrono::milliseconds::max() : replicas.comms[0]->timeout(),
            {-1, st.global_step});
      {
        const Plan& p = dev.train_plan(slice(batch.size, replicas.first_rank).second -
                                       slice(batch.size, replicas.first_rank).first);
        const Graph& g = dev.plans().session(p.index).graph();
        const int64_t rows =
            slice(batch.size, replicas.first_rank).second - slice(batch.size, replicas.first_rank).first;
        auto keep_labels = [&](size_t i, const void* from, ValueId v) {
          const size_t bytes = g.value(v).nbytes() / rows * batch.size;
          labels[i].assign(static_cast<const std::byte*>(from), static_cast<const std::byte*>(from) + bytes);
        };
        keep_labels(0, batch.y, p.y);
        for (size_t i = 0; i < p.more_y.size(); ++i)
          keep_labels(i + 1, batch.xs[p.labels_at + i], p.more_y[i]);
        for (size_t j = 0; j < kept_weights.size(); ++j) {
          const auto* from = static_cast<const std::byte*>(batch.xs[p.weights_at + j]);
          kept_weights[j].assign(from, from + g.value(p.sample_ws[j]).nbytes() / rows * batch.size);
        }
      }
      data::Batch next;
      const bool have_next = train_loader.next(&next);
      const bool prefetched = have_next && next.size == batch.size;
      // The watchdog of communicators whose collectives finish after they return (NCCL), once the next batch
      // is on its way (its copy overlaps the step): a reduction that hangs ends the run here instead of
      // blocking the next read. Nothing for the others. A batch too large to copy without waiting for the
      // step in flight is fed after the watchdog instead, which a hung step would otherwise never reach.
      if (prefetched && !feed_waits) feed(next);
      for (dist::Communicator* c : replicas.comms) c->wait({-1, st.global_step});
      if (prefetched && feed_waits) feed(next);
      // Every replica made the same update, so the first one's overflow flag speaks for all.
      const Plan& p0 = dev.train_plan(slice(batch.size, replicas.first_rank).second -
                                      slice(batch.size, replicas.first_rank).first);
      bool finite = true;
      if (p0.grads_finite != kNoValue)
        dev.plans().session(p0.index).read(p0.grads_finite, &finite, sizeof finite);
      scaler.update(finite, p0.loss_scale != kNoValue);
      st.skipped_steps = scaler.skipped_steps();
      st.loss_scale = p0.loss_scale != kNoValue ? scaler.scale() : 0.0f;
      st.loss_scale_good_steps = scaler.good_steps();
      // Metrics over the slices, weighted by their sample counts.
      const bool across_processes = replicas.host_comm && world > local;
      if (across_processes) acc.flat(&before);
      for (int k = 0; k < local; ++k) {
        auto [lo, hi] = slice(batch.size, replicas.first_rank + k);
        const Plan& p = devs[k]->train_plan(hi - lo);
        Session& s = devs[k]->plans().session(p.index);
        const Graph& g = s.graph();
        double loss = read_scalar(s, p.loss);
        if (!std::isfinite(loss))
          throw RuntimeError(
              fmt::format("the loss became {} at epoch {}, step {}",
                          std::isnan(loss) ? "nan"
                          : loss > 0       ? "inf"
                                           : "-inf",
                          st.epoch + 1, st.batch + 1),
              "lower the learning rate, clip gradients (train.optimizer.clipnorm), or scale the data "
              "(data.scale, "
              "a Normalization layer)");
        label_rows[0] = labels[0].data() + lo * (g.value(p.y).nbytes() / (hi - lo));
        for (size_t i = 0; i < p.more_y.size(); ++i)
          label_rows[i + 1] = labels[i + 1].data() + lo * (g.value(p.more_y[i]).nbytes() / (hi - lo));
        for (size_t j = 0; j < kept_weights.size(); ++j)
          weight_rows_of[j] = reinterpret_cast<const float*>(
              kept_weights[j].data() + lo * (g.value(p.sample_ws[j]).nbytes() / (hi - lo)));
        add_results(s, p, acc, loss, hi - lo, label_rows, out_buf, weight_rows_of, &cfg.class_weight);
      }
      int sig = g_stop_signal.load();
      if (across_processes) {
        // The other processes' slices: every rank adds the same global sums. A signal any rank received
        // stops them all after this step (a launcher delivers it to each at its own moment).
        acc.flat(&delta);
        for (size_t i = 0; i < before.size(); ++i) delta[i] -= before[i];
        const size_t sums = delta.size();
        delta.resize(sums + kSignalSlots, 0.0);
        put_signal(delta.data() + sums, sig);
        replicas.host_comm->all_reduce_sum(delta.data(), delta.size(), DType::f64, {-1, st.global_step});
        sig = summed_signal(delta.data() + sums);
        delta.resize(sums);
        for (size_t i = 0; i < before.size(); ++i) delta[i] += before[i];
        acc.set_flat(delta);
      }
      ++st.global_step;
      ++st.batch;
      st.data_samples += batch.size;
      if (st.data_samples >= n_train) {
        ++st.data_pass;
        st.data_samples = 0;
      }
      acc.flat(&st.metric_sums);
      observer.on_batch_end(st.epoch + 1, st.batch, info.steps_per_epoch, st.global_step, acc.logs(""));
      bool last_of_epoch = st.batch == info.steps_per_epoch;
      if (saving && policy.every_steps > 0 && st.global_step % policy.every_steps == 0 && !last_of_epoch &&
          !sig) {
        st.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        t0 = std::chrono::steady_clock::now();
        keep(SaveReason::steps);
      }
      if (sig) {
        result.interrupted_by = sig;
        break;
      }
      batch = next;
      have = have_next;
      fed = prefetched;
    }
    double train_seconds =
        st.seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (result.interrupted_by) {
      st.seconds = train_seconds;
      if (saving && policy.on_interrupt) keep(SaveReason::interrupt);
      break;
    }
    EpochReport rep;
    rep.epoch = st.epoch + 1;
    rep.epochs = cfg.epochs;
    rep.steps = st.batch;
    rep.logs = acc.logs("");
    rep.samples_per_s = acc.samples() / std::max(train_seconds, 1e-9);
    auto t_eval = std::chrono::steady_clock::now();
    // Keras's validation_freq: the validation data after every N-th epoch only.
    const bool validated = val_loader && (st.epoch + 1) % std::max<int64_t>(cfg.validation_freq, 1) == 0;
    if (validated) {
      Logs v = evaluate_all(*val_loader, "val_", val_steps);
      rep.logs.insert(rep.logs.end(), v.begin(), v.end());
    }
    // A val_ monitor waits for the epochs that have validation, as Keras's callbacks skip a missing quantity.
    auto waits = [&](const std::string& monitor) {
      return val_loader && !validated && monitor.starts_with("val_");
    };
    rep.seconds =
        train_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_eval).count();
    // As Keras's ReduceLROnPlateau logs it: the rate the epoch ended with.
    if (cfg.reduce_lr.enabled)
      rep.logs.emplace_back("learning_rate", schedule.at(st.global_step - 1) * st.lr_factor);
    rep.next_learning_rate = schedule.at(st.global_step) * st.lr_factor;
    rep.optimizer_iterations = cfg.gradient_accumulation_steps > 1
                                   ? st.global_step / cfg.gradient_accumulation_steps
                                   : st.global_step - st.skipped_steps;
    result.history.push_back(rep);
    observer.on_epoch_end(rep);
    if (observer.wants_weights(rep.epoch)) {
      // The model's weights as Keras's layer.weights lists them: the parameters and the layers' own state
      // (BatchNormalization's moving statistics), not the optimizer's or the run's slots ("P/adam_m",
      // "P/ema", named after their parameter) nor a replica's shards ("P@shard").
      // Only those are read from the device.
      std::vector<std::pair<std::string, Tensor>> weights;
      Session& w = dev.weights_session();
      const Graph& g = w.graph();
      std::set<std::string> parameters;
      for (ValueId v = 0; v < g.num_values(); ++v)
        if (g.value(v).kind == ValueKind::parameter) parameters.insert(g.value(v).name);
      for (ValueId v = 0; v < g.num_values(); ++v) {
        const Value& val = g.value(v);
        if ((val.kind != ValueKind::parameter && val.kind != ValueKind::state) ||
            !w.program().slots[v].assigned || val.name.find('@') != std::string::npos)
          continue;
        const size_t slash = val.name.rfind('/');
        if (slash != std::string::npos && parameters.count(val.name.substr(0, slash))) continue;  // a slot
        weights.emplace_back(val.name, w.read(v));
      }
      observer.on_weights(rep.epoch, weights);
    }
    // The next epoch starts from zero.
    st.batch = 0;
    st.metric_sums.clear();
    st.metric_layout.clear();
    st.seconds = 0;
    bool stop = false;
    if (cfg.early_stopping.enabled && !waits(cfg.early_stopping.monitor) &&
        rep.epoch > cfg.early_stopping.start_from_epoch) {
      const EarlyStopping& es = cfg.early_stopping;
      bool found;
      double value = find_log(rep.logs, es.monitor, &found);
      if (!found)
        throw InputError(
            "train.early_stopping.monitor",
            fmt::format("early stopping monitors '{}', which this run does not report", es.monitor),
            "monitor loss, val_loss, or a metric the spec lists");
      const bool maximize = maximized(es.mode, es.monitor, outputs);
      if (improves(st.have_best, st.best, value, maximize, es.min_delta)) {
        st.have_best = true;
        st.best = value;
        // Keras's rule: the wait restarts only for an improvement that also beats the baseline; an
        // improvement short of it counts as a waited epoch, and never stops the run by itself.
        if (!es.baseline || improves(true, *es.baseline, value, maximize, es.min_delta))
          st.waited = 0;
        else
          ++st.waited;
        st.best_epoch = rep.epoch;
        result.best_epoch = rep.epoch;
        if (es.restore_best_weights) st.best_values = capture().values;
      } else if (++st.waited >= es.patience && rep.epoch > 1) {
        stop = true;  // Keras's rule: `patience` epochs without improvement, never after the first epoch
      }
    }
    st.stopped = stop;
    if (cfg.reduce_lr.enabled && !waits(cfg.reduce_lr.monitor)) {
      // Keras's ReduceLROnPlateau.on_epoch_end: a cooldown epoch resets the wait; otherwise an epoch without
      // improvement counts, and `patience` of them multiply the rate by `factor` (not below min_lr).
      const ReduceLrOnPlateau& p = cfg.reduce_lr;
      bool found;
      const double value = find_log(rep.logs, p.monitor, &found);
      if (!found)
        throw InputError(
            "train.reduce_lr_on_plateau.monitor",
            fmt::format("reduce_lr_on_plateau monitors '{}', which this run does not report", p.monitor),
            "monitor loss, val_loss, or a metric the spec lists");
      if (st.plateau_cooldown > 0) {
        --st.plateau_cooldown;
        st.plateau_wait = 0;
      }
      if (improves(st.plateau_have_best, st.plateau_best, value, maximized(p.mode, p.monitor, outputs),
                   p.min_delta)) {
        st.plateau_have_best = true;
        st.plateau_best = value;
        st.plateau_wait = 0;
      } else if (st.plateau_cooldown == 0 && ++st.plateau_wait >= p.patience) {
        const double rate = schedule.scaled_base() * st.lr_factor;
        if (rate > p.min_lr) {
          st.lr_factor = std::max(rate * p.factor, p.min_lr) / schedule.scaled_base();
          st.plateau_cooldown = p.cooldown;
          st.plateau_wait = 0;
        }
      }
    }
    ++st.epoch;
    // save_best's memory is updated before either checkpoint of this epoch captures the state, so that a
    // run resumed from it never takes a worse epoch for the best.
    bool best_now = false;
    if (saving && !policy.save_best.empty() && !waits(policy.save_best)) {
      bool found;
      double value = find_log(rep.logs, policy.save_best, &found);
      if (!found)
        throw InputError(
            "train.checkpoint.save_best",
            fmt::format("save_best monitors '{}', which this run does not report", policy.save_best),
            "monitor loss, val_loss, or a metric the spec lists");
      if (improves(!st.saved_best_of.empty(), st.saved_best, value,
                   maximized(policy.mode, policy.save_best, outputs), 0)) {
        st.saved_best_of = policy.save_best;
        st.saved_best = value;
        best_now = true;
      }
    }
    const bool kept_epoch = saving && policy.every_epochs > 0 && st.epoch % policy.every_epochs == 0;
    if (kept_epoch) keep(SaveReason::epoch);
    if (best_now) keep(SaveReason::best);
    if (stop) {
      result.stopped_early = true;
      break;
    }
    // A signal that came while the epoch ended (its validation, its checkpoints) stops the run here, before
    // the next epoch's first step, with the checkpoint of this boundary; under MPI the ranks agree on it, as
    // after a step. (After the last epoch the run is complete, and the command says so.)
    if (st.epoch < cfg.epochs) {
      int sig = g_stop_signal.load();
      if (replicas.host_comm && world > local) {
        std::vector<double> seen(kSignalSlots, 0.0);
        put_signal(seen.data(), sig);
        replicas.host_comm->all_reduce_sum(seen.data(), kSignalSlots, DType::f64, {-1, st.global_step});
        sig = summed_signal(seen.data());
      }
      if (sig) {
        result.interrupted_by = sig;
        if (saving && policy.on_interrupt && !kept_epoch) keep(SaveReason::interrupt);
        break;
      }
    }
  }
  // A resumed run that early stopping had ended trains nothing and ends as that run did.
  if (st.stopped) {
    result.stopped_early = true;
    result.best_epoch = st.best_epoch;
  }
  // Keras's finalize_variable_values: a run that ends (not one interrupted, which resumes as it was) takes
  // the moving averages as its weights, before early stopping restores its best ones.
  const bool restoring =
      !result.interrupted_by && cfg.early_stopping.restore_best_weights && !st.best_values.empty();
  // A run that ran all its epochs keeps its last state, before the averages and the best weights (one that
  // resumed a complete run and trained nothing has none of its own to keep).
  if (restoring && !result.stopped_early && (!resume || st.global_step > resume->global_step))
    result.before_restore = capture();
  if (cfg.use_ema && !result.interrupted_by) result.averaged = true;
  if (result.averaged)
    for_each_average([](Session& w, ValueId average, ValueId param) { w.write(param, w.read(average)); });
  // Keras's EarlyStopping.on_train_end: the best epoch's weights come back whether the run stopped early or
  // ran all its epochs (a run that stops before its first monitored epoch has none to restore).
  if (cfg.early_stopping.enabled && st.have_best) result.best_epoch = st.best_epoch;
  if (restoring) {
    load_values(st.best_values);
    result.restored_best = true;
  }
  if (test && !result.interrupted_by) {
    data::BatchLoader test_loader(test, cfg.batch_size, format.of_test(), false, cfg.seed);
    result.test = evaluate_all(test_loader, "test_", 0);
  }
  result.final_state = capture();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return result;
}

ModelFactory synchronized_factory(ModelFactory factory) {
  return [factory = std::move(factory)](int64_t batch, bool training, bool initialize) {
    ForwardModel m = factory(batch, training, initialize);
    if (training)
      for (NodeId n : m.synchronized_batch_norms) ops::synchronize_batch_norm(m.graph, n);
    return m;
  };
}

size_t planned_training_bytes(const ModelFactory& given, const FitConfig& cfg, int64_t batch,
                              Backend& backend, int replicas) {
  replicas = std::max(1, replicas);
  const ModelFactory factory = replicas > 1 ? synchronized_factory(given) : given;
  const int64_t rows = (batch + replicas - 1) / replicas;  // the largest slice (fit's slice rule)
  LossGraph lg = add_loss(factory(rows, true, false), rows, cfg);
  // The metrics that depend on the outputs' shapes are checked as fit checks them.
  std::vector<OutputLoss> outputs = output_losses(cfg);
  set_columns(outputs, *lg.graph, lg.output, lg.more_output, lg.mask, lg.more_mask, lg.sample_ws);
  TrainingOptions topt = training_options(cfg, lg);
  if (cfg.shard_optimizer && replicas > 1) topt.shard = split_of(*lg.graph, replicas).ranges_of(0);
  TrainingGraph tg = build_training_graph(std::move(*lg.graph), lg.loss, topt);
  tg.graph->mark_output(lg.output);  // as the Device's training plans do
  PlanOptions po;
  po.alignment = backend.alignment();
  po.gradients = tg.gradients;  // as fit plans it: the schedule depends on them
  po.early = tg.step_gradients;
  po.bucket_bytes = cfg.bucket_bytes;
  // With what kernels hold beyond the arena (a recurrence's records of the forward pass and its workspaces:
  // at a long sequence, many times the arena; a convolution's operands in oneDNN's blocked layouts).
  const Program program = plan_program(tg.graph, po);
  return program.arena_bytes() + held_bytes(backend, program);
}

std::map<std::string, TrainingOptions::ShardRange> ShardSplit::ranges_of(int rank) const {
  std::map<std::string, TrainingOptions::ShardRange> out;
  for (const Piece& p : pieces)
    if (p.owner == rank) out[p.param] = {p.offset, p.count};
  return out;
}

bool shard_reduces_to_owner(const FitConfig& cfg) {
  return cfg.clipnorm <= 0 && cfg.global_clipnorm <= 0 && cfg.precision != Precision::fp16;
}

ShardSplit shard_split(const ModelFactory& factory, const FitConfig& cfg, int world) {
  return split_of(factory(cfg.batch_size, true, false).graph, world);
}

std::vector<dist::BucketReducer::Bucket> reduction_buckets(Session& s,
                                                           const std::map<ValueId, std::string>& param_of,
                                                           const ShardSplit* to_owner, bool accumulating) {
  std::vector<dist::BucketReducer::Bucket> out;
  for (const GradBucket& b : s.program().buckets) {
    out.emplace_back();
    // A bucket holds gradients, or a ReplicaMean's values (reduced every step), not both.
    out.back().accumulated = accumulating && !b.grads.empty() && param_of.count(b.grads.front());
    for (ValueId v : b.grads) {
      const Value& gv = s.graph().value(v);
      TRAINER_ASSERT(!accumulating || out.back().accumulated == (param_of.count(v) > 0),
                     "bucket {} mixes gradients with other values", out.size() - 1);
      // Values that are no parameter's gradient (ReplicaMean's) are needed whole by every replica.
      if (!to_owner || !param_of.count(v)) {
        out.back().grads.push_back({s.device_pointer(v), gv.shape.numel(), gv.dtype, -1});
        continue;
      }
      // ZeRO-1: each range of the gradient is summed into its owner.
      const std::string& param = param_of.at(v);
      for (const ShardSplit::Piece& sp : to_owner->pieces)
        if (sp.param == param)
          out.back().grads.push_back(
              {static_cast<std::byte*>(s.device_pointer(v)) + sp.offset * dtype_bytes(gv.dtype), sp.count,
               gv.dtype, sp.owner});
    }
  }
  return out;
}

std::vector<dist::Communicator::Copy> shard_gathers(Session& s, const ShardSplit& split, int rank) {
  std::vector<dist::Communicator::Copy> out;
  for (const ShardSplit::Piece& sp : split.pieces) {
    const ValueId v = s.graph().find(sp.param);
    const size_t es = dtype_bytes(s.graph().value(v).dtype);
    // The shard of the parameter itself is the source, read at its owner only.
    const void* src = sp.owner == rank ? s.device_pointer(s.graph().find(sp.param + kShardSuffix)) : nullptr;
    out.push_back(
        {src, static_cast<std::byte*>(s.device_pointer(v)) + sp.offset * es, sp.count * es, sp.owner});
  }
  return out;
}

OptimizerStateBytes optimizer_state_bytes(const ModelFactory& factory, const FitConfig& cfg, int64_t batch,
                                          int replicas) {
  LossGraph lg = add_loss(factory(batch, true, false), batch, cfg);
  const std::vector<ShardSplit::Piece> pieces = split_of(*lg.graph, std::max(1, replicas)).pieces;
  const TrainingOptions topt = training_options(cfg, lg);
  TrainingGraph tg = build_training_graph(std::move(*lg.graph), lg.loss, topt);
  OptimizerStateBytes out;
  std::map<std::string, size_t> per_element;  // optimizer state bytes per parameter element
  for (const OptimizerState& p : tg.parameters)
    for (ValueId s : p.slots) {
      const Value& v = tg.graph->value(s);
      out.total += v.nbytes();
      per_element[tg.graph->value(p.param).name] += dtype_bytes(v.dtype);
    }
  std::vector<size_t> per(std::max(1, replicas), 0);
  for (const ShardSplit::Piece& sp : pieces) per[sp.owner] += sp.count * per_element[sp.param];
  out.per_replica =
      cfg.shard_optimizer && replicas > 1 ? *std::max_element(per.begin(), per.end()) : out.total;
  // Accumulated gradients and moving averages: whole on every replica.
  for (ValueId s : tg.other_state) {
    out.total += tg.graph->value(s).nbytes();
    out.per_replica += tg.graph->value(s).nbytes();
  }
  return out;
}

TrainingStep training_step(const ModelFactory& factory, const FitConfig& cfg, int64_t batch,
                           const std::map<std::string, TrainingOptions::ShardRange>* shard) {
  LossGraph lg = add_loss(factory(batch, true, true), batch, cfg);
  std::vector<OutputLoss> outputs = output_losses(cfg);  // the metrics' checks, as fit's
  set_columns(outputs, *lg.graph, lg.output, lg.more_output, lg.mask, lg.more_mask, lg.sample_ws);
  TrainingOptions topt = training_options(cfg, lg);
  topt.accumulation_steps = 1;  // one step as it computes: forward, backward and the update
  if (shard) topt.shard = *shard;
  TrainingGraph tg = build_training_graph(std::move(*lg.graph), lg.loss, topt);
  tg.graph->mark_output(lg.output);  // as the Device's training plans do: metrics read it
  TrainingStep st;
  st.graph = tg.graph;
  st.x = lg.x;
  st.more_x = lg.more_x;
  st.more_output = lg.more_output;
  st.more_y = lg.more_y;
  st.y = lg.y;
  st.output = lg.output;
  st.loss = lg.loss;
  st.learning_rate = tg.learning_rate;
  st.iteration = tg.iteration;
  st.gradients = tg.gradients;
  const std::vector<ValueId> params = trainable_parameters(*tg.graph);
  for (size_t i = 0; i < params.size() && i < tg.gradients.size(); ++i)
    st.grad_param[tg.gradients[i]] = tg.graph->value(params[i]).name;
  st.backward_begin = tg.backward_begin;
  st.update_begin = tg.update_begin;
  st.phase = tg.phase;
  return st;
}

Logs evaluate(const ModelFactory& factory, std::shared_ptr<const data::Dataset> data,
              const data::BatchFormat& format, const FitConfig& cfg, Backend& backend,
              const std::string& prefix) {
  TRAINER_ASSERT(data != nullptr);
  // Evaluation plans only (full and last partial batch) in one arena; the graphs' initializers are the
  // weights.
  Device dev(factory, cfg, backend, 0, {data->size()});
  data::BatchLoader loader(data, cfg.batch_size, format, false, cfg.seed);
  std::vector<float> out_buf;
  return evaluate_on(dev, loader, cfg, prefix, out_buf);
}

}  // namespace trainer::engine
