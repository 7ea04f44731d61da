// The fit loop through the engine API: partial last batches in training and validation, metrics weighted by
// samples, schedules, early stopping with restore, a NaN loss, and a stop request.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "engine/data/synthetic.h"
#include "engine/dist/communicator.h"
#include "engine/train/fit.h"
#include "models/layers.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

// A dataset over host tensors: x [N, ...] f32, y [N] i64.
class TensorDataset final : public data::Dataset {
 public:
  TensorDataset(Tensor x, Tensor y)
      : x_(std::move(x)),
        y_(std::move(y)),
        sample_(std::vector<int64_t>(x_.shape().dims().begin() + 1, x_.shape().dims().end())) {}
  int64_t size() const override { return x_.shape()[0]; }
  const Shape& sample_shape() const override { return sample_; }
  DType sample_dtype() const override { return x_.dtype(); }
  const Shape& label_shape() const override { return label_; }
  DType label_dtype() const override { return y_.dtype(); }
  void read_sample(int64_t i, void* out) const override {
    size_t b = x_.nbytes() / size();
    std::memcpy(out, static_cast<const std::byte*>(x_.raw()) + i * b, b);
  }
  void read_label(int64_t i, void* out) const override {
    size_t b = y_.nbytes() / size();
    std::memcpy(out, static_cast<const std::byte*>(y_.raw()) + i * b, b);
  }
  std::string describe() const override { return "tensors"; }

 private:
  Tensor x_, y_;
  Shape sample_, label_;
};

ModelFactory mlp(int classes, uint64_t seed) {
  return [=](int64_t batch, bool, bool) {
    ForwardModel fm;
    fm.input = fm.graph.add_input("x", DType::f32, Shape{batch, 2});
    models::LayerContext ctx{fm.graph, seed};
    ValueId h = models::dense(ctx, fm.input, 32, "relu", "dense");
    fm.output = models::dense(ctx, h, classes, "softmax", "dense_1");
    fm.final_activation = "softmax";
    return fm;
  };
}

class Recorder final : public FitObserver {
 public:
  std::vector<EpochReport> epochs;
  int64_t batches = 0;
  void on_batch_end(int64_t, int64_t, int64_t, int64_t, const Logs&) override { ++batches; }
  void on_epoch_end(const EpochReport& r) override { epochs.push_back(r); }
};

double log_of(const Logs& l, const std::string& k) {
  for (auto& [n, v] : l)
    if (n == k) return v;
  FAIL("no log " << k);
  return 0;
}

FitConfig base_config() {
  FitConfig c;
  c.loss = "sparse_categorical_crossentropy";
  c.metrics = {"accuracy"};
  c.epochs = 60;
  c.batch_size = 32;  // 250 train samples: 7 full batches and one of 26
  c.seed = 3;
  c.schedule.base = 0.01;
  return c;
}

}  // namespace

TEST_SUITE("fit") {
  TEST_CASE("fit: trains with partial last batches and validates every sample") {
    auto all = data::spirals(100, 3, 0.1f, 5);  // 300 samples
    auto head = [&](int64_t b, int64_t e, const Tensor& t) {
      std::vector<int64_t> d = t.shape().dims();
      int64_t row = static_cast<int64_t>(t.nbytes()) / d[0];
      d[0] = e - b;
      Tensor out(t.dtype(), Shape(d));
      std::memcpy(out.raw(), static_cast<const std::byte*>(t.raw()) + b * row, (e - b) * row);
      return out;
    };
    // Every sixth point of each arm is held out, so both splits cover the whole spiral.
    Tensor xs(DType::f32, Shape{300, 2}), ys(DType::i64, Shape{300});
    for (int i = 0; i < 300; ++i) {
      int j = i < 250 ? i / 5 * 6 + i % 5 : (i - 250) * 6 + 5;  // position along the 300 interleaved points
      int src = (j % 3) * 100 + j / 3;
      std::memcpy(xs.data<float>() + 2 * i, all.x.data<float>() + 2 * src, 8);
      ys.data<int64_t>()[i] = all.y.data<int64_t>()[src];
    }
    auto train = std::make_shared<TensorDataset>(head(0, 250, xs), head(0, 250, ys));
    auto val = std::make_shared<TensorDataset>(head(250, 300, xs), head(250, 300, ys));  // 50: 32 + 18
    FitConfig cfg = base_config();
    auto backend = make_cpu_backend();
    Recorder rec;
    FitResult r = fit(mlp(3, 1), train, val, nullptr, data::BatchFormat{}, cfg, *backend, rec);
    REQUIRE(r.history.size() == 60);
    CHECK(rec.batches == 60 * 8);
    CHECK(r.history[0].steps == 8);
    double first = log_of(r.history.front().logs, "loss"), last = log_of(r.history.back().logs, "loss");
    MESSAGE("loss " << first << " -> " << last << ", val_accuracy "
                    << log_of(r.history.back().logs, "val_accuracy"));
    CHECK(last < first * 0.5);
    CHECK(log_of(r.history.back().logs, "val_accuracy") > 0.8);
    // Accuracies are fractions of whole samples: with 50 validation samples, multiples of 1/50.
    double va = log_of(r.history.back().logs, "val_accuracy") * 50;
    CHECK(std::fabs(va - std::round(va)) < 1e-9);
  }

  TEST_CASE("fit: schedules give Keras's values") {
    LearningRateSchedule s;
    s.base = 0.1;
    CHECK(s.at(1000) == doctest::Approx(0.1));
    s.kind = "step";
    s.step_size = 10;
    s.gamma = 0.5;
    CHECK(s.at(9) == doctest::Approx(0.1));
    CHECK(s.at(10) == doctest::Approx(0.05));
    CHECK(s.at(25) == doctest::Approx(0.025));
    s.kind = "exponential";
    s.decay_steps = 100;
    s.decay_rate = 0.5;
    CHECK(s.at(50) == doctest::Approx(0.1 * std::sqrt(0.5)));
    s.staircase = true;
    CHECK(s.at(150) == doctest::Approx(0.05));
    s.kind = "cosine";
    s.alpha = 0.1;
    CHECK(s.at(0) == doctest::Approx(0.1));
    CHECK(s.at(50) == doctest::Approx(0.1 * (0.9 * 0.5 + 0.1)));
    CHECK(s.at(100) == doctest::Approx(0.01));
    CHECK(s.at(500) == doctest::Approx(0.01));
    s.warmup_steps = 10;
    // Keras's CosineDecay(initial_learning_rate=0, warmup_target=0.1, warmup_steps=10): 0, 0.01, ..., 0.09.
    CHECK(s.at(0) == doctest::Approx(0.0));
    CHECK(s.at(1) == doctest::Approx(0.01));
    CHECK(s.at(9) == doctest::Approx(0.09));
    CHECK(s.at(10) == doctest::Approx(0.1));  // the cosine starts after the warmup
    // With initial_learning_rate 0.02: the warmup starts there, 0.02, 0.028, ..., then the cosine from 0.1.
    s.warmup_from = 0.02;
    CHECK(s.at(0) == doctest::Approx(0.02));
    CHECK(s.at(1) == doctest::Approx(0.028));
    CHECK(s.at(5) == doctest::Approx(0.06));
    CHECK(s.at(10) == doctest::Approx(0.1));
    CHECK(s.at(60) == doctest::Approx(0.1 * (0.9 * 0.5 + 0.1)));
    s.warmup_from = 0;
    // Keras's PolynomialDecay, InverseTimeDecay, CosineDecayRestarts and PiecewiseConstantDecay (values of
    // their Python formulas).
    LearningRateSchedule k;
    k.base = 0.1;
    k.kind = "polynomial";
    k.decay_steps = 100;
    k.end_learning_rate = 0.001;
    k.power = 2;
    CHECK(k.at(50) == doctest::Approx(0.02575));
    CHECK(k.at(150) == doctest::Approx(0.001));
    k.cycle = true;
    CHECK(k.at(150) == doctest::Approx(0.0071875));
    CHECK(k.at(0) == doctest::Approx(0.1));
    k.kind = "inverse_time";
    k.decay_steps = 10;
    k.decay_rate = 0.5;
    CHECK(k.at(15) == doctest::Approx(0.05714285714285715));
    k.staircase = true;
    CHECK(k.at(15) == doctest::Approx(0.06666666666666667));
    k.kind = "cosine_restarts";
    k.first_decay_steps = 10;
    k.t_mul = 2;
    k.m_mul = 0.5;
    k.alpha = 0.1;
    CHECK(k.at(5) == doctest::Approx(0.055));
    CHECK(k.at(10) == doctest::Approx(0.055));  // the first restart, at half height
    CHECK(k.at(25) == doctest::Approx(0.016590097423302683));
    CHECK(k.at(35) == doctest::Approx(0.03164364474075198));
    k.kind = "piecewise_constant";
    k.boundaries = {10, 20};
    k.values = {0.5, 0.25, 0.125};
    CHECK(k.at(10) == doctest::Approx(0.5));  // up to the boundary, inclusive
    CHECK(k.at(11) == doctest::Approx(0.25));
    CHECK(k.at(20) == doctest::Approx(0.25));
    CHECK(k.at(21) == doctest::Approx(0.125));
    // Without decay_steps a cosine spans the whole run: 3 epochs of 40 steps, after 10 warmup steps.
    FitConfig run;
    run.epochs = 3;
    run.schedule.kind = "cosine";
    run.schedule.base = 0.1;
    run.schedule.warmup_steps = 10;
    LearningRateSchedule r = run_schedule(run, 40);
    CHECK(r.decay_steps == 110);
    CHECK(r.at(119) < 1e-4);
    CHECK(r.at(65) == doctest::Approx(0.05));
    // Resumed after 2 epochs of 40 steps with epochs of 25: 80 + 25 steps in all.
    TrainingState at;
    at.epoch = 2;
    at.global_step = 80;
    CHECK(run_schedule(run, 25, &at).decay_steps == 95);
    at.batch = 5;  // in the middle of the third epoch: its steps count at the new length
    at.global_step = 85;
    CHECK(run_schedule(run, 25, &at).decay_steps == 95);
  }

  TEST_CASE("fit: early stopping stops and restores the best weights") {
    auto all = data::spirals(40, 3, 0.1f, 6);
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    cfg.epochs = 40;
    cfg.schedule.base = 0.5;  // large enough to make the loss bounce
    cfg.early_stopping.enabled = true;
    cfg.early_stopping.monitor = "loss";
    cfg.early_stopping.patience = 1;
    cfg.early_stopping.restore_best_weights = true;
    auto backend = make_cpu_backend();
    Recorder rec;
    FitResult r = fit(mlp(3, 2), train, nullptr, nullptr, data::BatchFormat{}, cfg, *backend, rec);
    CHECK(r.stopped_early);
    CHECK(r.history.size() < 40);
    // Keras's rule: patience 1 stops at the first epoch without improvement.
    CHECK(r.best_epoch >= 1);
    CHECK(r.best_epoch == static_cast<int64_t>(r.history.size()) - 1);
    double best = log_of(r.history[r.best_epoch - 1].logs, "loss");
    for (const EpochReport& e : r.history) CHECK(log_of(e.logs, "loss") >= best);
  }

  TEST_CASE("fit: validation_freq validates every N-th epoch, and val_ monitors wait for those epochs") {
    auto all = data::spirals(40, 3, 0.1f, 6);
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    auto val = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    cfg.epochs = 40;
    cfg.validation_freq = 3;
    cfg.schedule.base = 0.5;  // large enough to make the loss bounce
    cfg.early_stopping.enabled = true;
    cfg.early_stopping.monitor = "val_loss";
    cfg.early_stopping.patience = 1;
    auto backend = make_cpu_backend();
    Recorder rec;
    FitResult r = fit(mlp(3, 2), train, val, nullptr, data::BatchFormat{}, cfg, *backend, rec);
    REQUIRE(r.stopped_early);
    // Validation after epochs 3, 6, 9, ... only; the run stops after one of them, the first validation
    // without improvement after its best (patience 1 counts validations, not epochs).
    std::vector<double> seen;
    for (const EpochReport& e : r.history) {
      CAPTURE(e.epoch);
      bool found = false;
      for (const auto& [k, v] : e.logs)
        if (k == "val_loss") found = true, seen.push_back(v);
      CHECK(found == (e.epoch % 3 == 0));
    }
    CHECK(r.history.size() % 3 == 0);
    REQUIRE(seen.size() >= 2);
    CHECK(r.best_epoch % 3 == 0);
    const double best = *std::min_element(seen.begin(), seen.end());
    CHECK(seen[seen.size() - 2] == best);
    CHECK(seen.back() >= best);
  }

  TEST_CASE("fit: ReduceLROnPlateau follows Keras's rule and trains at the rate it reports") {
    auto all = data::spirals(40, 3, 0.1f, 6);
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    cfg.epochs = 30;
    cfg.schedule.base = 0.5;  // large enough to make the loss bounce
    cfg.reduce_lr = {true, "loss", 0.5, 1, "auto", 1e-4, 1, 0.05};
    auto backend = make_cpu_backend();
    Recorder rec;
    FitResult r = fit(mlp(3, 2), train, nullptr, nullptr, data::BatchFormat{}, cfg, *backend, rec);
    REQUIRE(r.history.size() == 30);
    // Keras's ReduceLROnPlateau.on_epoch_end, replayed on the reported losses.
    double lr = 0.5, best = 1e300;
    int64_t wait = 0, cooldown = 0, reductions = 0;
    for (const EpochReport& e : r.history) {
      CAPTURE(e.epoch);
      CHECK(log_of(e.logs, "learning_rate") == doctest::Approx(lr).epsilon(1e-6));
      const double loss = log_of(e.logs, "loss");
      if (cooldown > 0) --cooldown, wait = 0;
      if (loss < best - 1e-4) {
        best = loss, wait = 0;
      } else if (cooldown == 0 && ++wait >= 1 && lr > 0.05) {
        lr = std::max(lr * 0.5, 0.05), cooldown = 1, wait = 0, ++reductions;
      }
    }
    CHECK(reductions >= 2);
    CHECK(lr == doctest::Approx(0.05));  // the floor was reached and kept

    // The rate reported is the rate trained at. With max mode on a falling loss only the first epoch
    // improves, so patience 0 halves the rate after every later epoch: epochs at 0.01, 0.01, 0.005. The same
    // as two epochs at 0.01 and a third resumed at 0.005.
    FitConfig halving = base_config();
    halving.epochs = 3;
    halving.optimizer.kind = "sgd";
    halving.reduce_lr = {true, "loss", 0.5, 0, "max", 0.0, 0, 0.0};
    TrainingState last[2];
    CheckpointPolicy each_epoch;
    each_epoch.every_epochs = 1;
    Recorder q;
    FitResult fr = fit(mlp(3, 2), train, nullptr, nullptr, data::BatchFormat{}, halving, *backend, q,
                       each_epoch, [&](const TrainingState& st, SaveReason) { last[0] = st; });
    REQUIRE(fr.history.size() == 3);
    CHECK(log_of(fr.history[2].logs, "learning_rate") == doctest::Approx(0.005));
    CHECK(last[0].lr_factor == doctest::Approx(0.25));  // after the third epoch, for the next
    FitConfig plain = halving;
    plain.reduce_lr.enabled = false;
    plain.epochs = 2;
    TrainingState two;
    fit(mlp(3, 2), train, nullptr, nullptr, data::BatchFormat{}, plain, *backend, q, each_epoch,
        [&](const TrainingState& st, SaveReason) { two = st; });
    plain.epochs = 3;
    plain.schedule.base = 0.005;
    fit(
        mlp(3, 2), train, nullptr, nullptr, data::BatchFormat{}, plain, *backend, q, each_epoch,
        [&](const TrainingState& st, SaveReason) { last[1] = st; }, &two);
    REQUIRE(last[0].values.size() == last[1].values.size());
    for (size_t i = 0; i < last[0].values.size(); ++i) {
      CAPTURE(last[0].values[i].first);
      for (int64_t j = 0; j < last[0].values[i].second.numel(); ++j)
        CHECK(last[0].values[i].second.get_f64(j) ==
              doctest::Approx(last[1].values[i].second.get_f64(j)).epsilon(1e-6));
    }
  }

  TEST_CASE("fit: a loss that is no longer finite is a run-time error naming the step") {
    // A learning rate far too large blows the weights up within a few steps.
    auto all = data::spirals(20, 3, 0.1f, 7);
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    cfg.optimizer.kind = "sgd";
    cfg.schedule.base = 1e30;
    auto backend = make_cpu_backend();
    Recorder rec;
    try {
      fit(mlp(3, 1), train, nullptr, nullptr, data::BatchFormat{}, cfg, *backend, rec);
      FAIL("expected a run-time error");
    } catch (const RuntimeError& e) {
      std::string msg = e.what();
      CHECK(msg.find("the loss became") != std::string::npos);
      CHECK(msg.find("epoch 1, step") != std::string::npos);
    }
  }

  TEST_CASE("fit: a stop request ends the run after the current step") {
    auto all = data::spirals(40, 3, 0.1f, 8);
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    auto backend = make_cpu_backend();
    struct Stopper : FitObserver {
      void on_batch_end(int64_t, int64_t step, int64_t, int64_t, const Logs&) override {
        if (step == 2) g_stop_signal.store(15);
      }
    } stopper;
    FitResult r = fit(mlp(3, 1), train, nullptr, nullptr, data::BatchFormat{}, cfg, *backend, stopper);
    g_stop_signal.store(0);
    CHECK(r.interrupted_by == 15);
    CHECK(r.history.empty());
  }
}

namespace {

// A model with Dropout and BatchNorm, so resuming must also restore running statistics and the dropout
// stream.
ModelFactory regularized(uint64_t seed) {
  return [=](int64_t batch, bool training, bool) {
    ForwardModel fm;
    Graph& g = fm.graph;
    fm.input = g.add_input("x", DType::f32, Shape{batch, 2});
    models::LayerContext ctx{g, seed};
    ValueId h = models::dense(ctx, fm.input, 16, "linear", "dense");
    ValueId gamma = g.add_parameter("bn/gamma", Tensor::from<float>({16}, std::vector<float>(16, 1.0f)));
    ValueId beta = g.add_parameter("bn/beta", Tensor(DType::f32, Shape{16}));
    ValueId mean = g.add_state("bn/moving_mean", Tensor(DType::f32, Shape{16}));
    ValueId var = g.add_state("bn/moving_variance", Tensor::from<float>({16}, std::vector<float>(16, 1.0f)));
    NodeId bn = g.add_node("BatchNormalization", {h, gamma, beta, mean, var},
                           {{"training_mode", int64_t{training ? 1 : 0}}}, training ? 3 : 1, "bn");
    h = g.node(bn).outputs[0];
    if (training) {
      g.bind_update(g.node(bn).outputs[1], mean);
      g.bind_update(g.node(bn).outputs[2], var);
      h = g.op("Dropout", {h, g.add_constant("ratio", Tensor::scalar<float>(0.2f)),
                           g.add_constant("training", Tensor::scalar<bool>(true))});
    }
    fm.output = models::dense(ctx, g.op("Relu", {h}), 3, "softmax", "dense_1");
    fm.final_activation = "softmax";
    return fm;
  };
}

bool same_values(const TrainingState& a, const TrainingState& b) {
  if (a.values.size() != b.values.size()) return false;
  for (size_t i = 0; i < a.values.size(); ++i) {
    if (a.values[i].first != b.values[i].first) return false;
    const Tensor &x = a.values[i].second, &y = b.values[i].second;
    if (x.nbytes() != y.nbytes() || std::memcmp(x.raw(), y.raw(), x.nbytes()) != 0) return false;
  }
  return true;
}

}  // namespace

TEST_SUITE("fit") {
  TEST_CASE("fit: resuming from a saved state continues bitwise like a run that never stopped") {
    auto all = data::spirals(30, 3, 0.1f, 9);  // 90 samples: 5 batches of 20 (the last of 10)
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    cfg.epochs = 2;
    cfg.batch_size = 20;
    auto backend = make_cpu_backend();
    Recorder rec;
    FitResult straight = fit(regularized(4), train, train, nullptr, data::BatchFormat{}, cfg, *backend, rec);

    // Stop after epoch 1 (a checkpoint every epoch), then resume for the second.
    std::vector<TrainingState> saved;
    CheckpointPolicy every_epoch;
    every_epoch.every_epochs = 1;
    FitConfig first = cfg;
    first.epochs = 1;
    fit(regularized(4), train, train, nullptr, data::BatchFormat{}, first, *backend, rec, every_epoch,
        [&](const TrainingState& s, SaveReason) { saved.push_back(s); });
    REQUIRE(saved.size() == 1);
    CHECK(saved[0].epoch == 1);
    FitResult resumed = fit(regularized(4), train, train, nullptr, data::BatchFormat{}, cfg, *backend, rec,
                            {}, {}, &saved[0]);
    CHECK(same_values(resumed.final_state, straight.final_state));
    REQUIRE(resumed.history.size() == 2);
    CHECK(log_of(resumed.history[1].logs, "loss") == log_of(straight.history[1].logs, "loss"));
    CHECK(log_of(resumed.history[1].logs, "val_accuracy") ==
          log_of(straight.history[1].logs, "val_accuracy"));

    // Stop in the middle of epoch 2 (every 3 steps: after step 6, batch 1 of epoch 2), then resume.
    std::vector<TrainingState> mid;
    CheckpointPolicy every_3;
    every_3.every_steps = 3;
    fit(regularized(4), train, train, nullptr, data::BatchFormat{}, cfg, *backend, rec, every_3,
        [&](const TrainingState& s, SaveReason r) {
          CHECK(r == SaveReason::steps);
          mid.push_back(s);
        });
    REQUIRE(mid.size() >= 2);
    const TrainingState& m = mid[1];
    CHECK(m.epoch == 1);
    CHECK(m.batch == 1);
    FitResult from_mid =
        fit(regularized(4), train, train, nullptr, data::BatchFormat{}, cfg, *backend, rec, {}, {}, &m);
    CHECK(same_values(from_mid.final_state, straight.final_state));
    CHECK(log_of(from_mid.history[1].logs, "loss") == log_of(straight.history[1].logs, "loss"));

    // The check can fail: a different seed ends elsewhere.
    FitConfig other = cfg;
    other.seed = 99;
    FitResult diff = fit(regularized(4), train, train, nullptr, data::BatchFormat{}, other, *backend, rec);
    CHECK_FALSE(same_values(diff.final_state, straight.final_state));
  }

  TEST_CASE("fit: one replica that reduces through a communicator trains bitwise what the plain run trains") {
    // `trainer fit --gpus 1` runs one replica through NCCL: the gradients go into buckets, are weighted by
    // the replica's share (1) and summed over a group of one. That run must equal `--device cuda` bitwise
    // (the GPU check); here the same plan runs with the in-process group, whose sum over one rank is the
    // identity, so a plan change that the buckets bring (a view, a fusion lost) shows here first. Batch norm,
    // dropout and a partial last batch (90 samples by 20) included.
    auto all = data::spirals(30, 3, 0.1f, 9);
    auto train = std::make_shared<TensorDataset>(all.x, all.y);
    FitConfig cfg = base_config();
    cfg.epochs = 3;
    cfg.batch_size = 20;
    cfg.bucket_bytes = 256;  // several buckets
    auto backend = make_cpu_backend();
    Recorder rec;
    FitResult plain = fit(regularized(4), train, train, nullptr, data::BatchFormat{}, cfg, *backend, rec);
    dist::ThreadGroup group(1);
    std::unique_ptr<dist::Communicator> comm = group.communicator(0);
    Replicas one;
    one.backends = {backend.get()};
    one.comms = {comm.get()};
    FitResult reduced = fit(regularized(4), train, train, nullptr, data::BatchFormat{}, cfg, one, rec);
    CHECK(same_values(reduced.final_state, plain.final_state));
    REQUIRE(reduced.history.size() == plain.history.size());
    for (size_t e = 0; e < plain.history.size(); ++e) {
      CHECK(log_of(reduced.history[e].logs, "loss") == log_of(plain.history[e].logs, "loss"));
      CHECK(log_of(reduced.history[e].logs, "val_loss") == log_of(plain.history[e].logs, "val_loss"));
    }
  }
}
