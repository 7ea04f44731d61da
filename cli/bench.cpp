// trainer bench: times one training step of a spec's model (forward, loss, backward, optimizer update) on
// synthetic batches: the whole step, eagerly and by CUDA graph replay, and each kernel by phase, with
// samples/s and achieved FLOP/s. The result is one JSON object on stdout; a table for people goes to stderr.
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <unordered_map>

#include "cli/common.h"
#include "engine/dist/bucket_reducer.h"
#include "engine/dist/replica_threads.h"
#if TRAINER_HAVE_CUDA
#include "engine/dist/nccl_communicator.h"
#endif
#include "engine/plan/flops.h"
#include "engine/train/session.h"
#include "engine/util/error.h"

namespace trainer::cli {

namespace {

using engine::DType;
using engine::Tensor;

enum class Phase { forward, backward, update };
constexpr const char* kPhaseNames[] = {"forward", "backward", "update"};

struct BenchOptions {
  int64_t steps = 20;
  int64_t warmup = 3;
  int64_t top = 10;
  bool quiet = false;
  int devices = 1;  // CPU replicas sharing the global batch
};

struct Stats {
  double median = 0, mean = 0, min = 0, max = 0;  // seconds
};

Stats stats_of(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / n;
  s.min = v.front();
  s.max = v.back();
  return s;
}

// A batch for the step: inputs of the model's shapes and dtypes, labels valid for the loss, so that no
// dataset is read and the loss stays finite.
struct SyntheticBatch {
  Tensor x, y;
  std::vector<Tensor> more_x;  // a model's further inputs
};

// Values for input `v`: token ids valid for the tables that Gather them, or features in [0, 1).
Tensor synthetic_input(const engine::Graph& g, engine::ValueId v, std::mt19937_64& rng) {
  const engine::Value& xv = g.value(v);
  Tensor x(xv.dtype, xv.shape);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  if (engine::is_integer(xv.dtype)) {
    // Token ids index the tables that Gather them (an Embedding): ids beyond the smallest table are invalid.
    int64_t tokens = 0;
    for (engine::NodeId c : xv.consumers) {
      const engine::Node& n = g.node(c);
      if (n.op == "Gather" && n.inputs.size() == 2 && n.inputs[1] == v) {
        const int64_t rows = g.value(n.inputs[0]).shape.rank() > 0 ? g.value(n.inputs[0]).shape[0] : 1;
        tokens = tokens == 0 ? rows : std::min(tokens, rows);
      }
    }
    std::uniform_int_distribution<int64_t> id(0, std::max<int64_t>(tokens, 1) - 1);
    for (int64_t i = 0; i < x.numel(); ++i) x.set_f64(i, static_cast<double>(id(rng)));
  } else {
    for (int64_t i = 0; i < x.numel(); ++i) x.set_f64(i, unit(rng));
  }
  return x;
}

// Labels for an output of shape `os` that suit `loss`. The classes are the output's last axis: one label per
// sample, or per step of a [batch, steps, classes] output.
void fill_labels(Tensor& y, const engine::Shape& os, const std::string& loss, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const int64_t classes = os.rank() > 1 ? std::max<int64_t>(os[os.rank() - 1], 1) : 1;
  const int64_t positions = os.numel() / classes;
  for (int64_t i = 0; i < y.numel(); ++i) y.set_f64(i, 0.0);
  if (loss == "sparse_categorical_crossentropy") {
    std::uniform_int_distribution<int64_t> label(0, classes - 1);
    for (int64_t i = 0; i < y.numel(); ++i) y.set_f64(i, static_cast<double>(label(rng)));
  } else if (formats::label_family(loss) == "categorical_crossentropy") {
    std::uniform_int_distribution<int64_t> label(0, classes - 1);
    for (int64_t i = 0; i < positions; ++i) y.set_f64(i * classes + label(rng), 1.0);
  } else if (formats::label_family(loss) == "binary_crossentropy") {
    for (int64_t i = 0; i < y.numel(); ++i) y.set_f64(i, unit(rng) < 0.5 ? 0.0 : 1.0);
  } else {
    for (int64_t i = 0; i < y.numel(); ++i) y.set_f64(i, unit(rng));
  }
}

SyntheticBatch synthetic_batch(const engine::TrainingStep& step, const engine::FitConfig& cfg) {
  const engine::Graph& g = *step.graph;
  const engine::Value& yv = g.value(step.y);
  std::mt19937_64 rng(cfg.seed);
  SyntheticBatch b{synthetic_input(g, step.x, rng), Tensor(yv.dtype, yv.shape), {}};
  for (engine::ValueId v : step.more_x) {
    // A further output's labels suit its own loss; the model's inputs and the sample weights are features.
    const auto it = std::find(step.more_y.begin(), step.more_y.end(), v);
    if (it == step.more_y.end()) {
      b.more_x.push_back(synthetic_input(g, v, rng));
      continue;
    }
    const size_t k = static_cast<size_t>(it - step.more_y.begin());
    Tensor y(g.value(v).dtype, g.value(v).shape);
    fill_labels(y, g.value(step.more_output.at(k)).shape, cfg.more_outputs.at(k).loss, rng);
    b.more_x.push_back(std::move(y));
  }
  fill_labels(b.y, g.value(step.output).shape, cfg.loss, rng);
  return b;
}

// One kernel's time per step (the median over the profiled steps) and what it computes.
struct OpTime {
  std::string op, node, shapes;
  Phase phase = Phase::forward;
  double seconds = 0;
  int64_t flops = 0;
};

struct Measurement {
  std::vector<double> step_seconds;
  std::vector<double>
      host_seconds;         // per step: until run() returned (on a GPU: the enqueue, the host's share)
  size_t device_bytes = 0;  // memory the backend holds for the step (arena, workspace, ...)
  int64_t flops = 0;        // per step, over the plan's nodes
  double loss = 0;          // after the timed steps
  std::vector<OpTime> ops;  // in plan order; empty when the backend does not time kernels
  std::string device;
};

// Runs steps of the training step on `backend`: warm-up, timed steps (each fenced by synchronize(), inputs
// written before the clock starts), then, with `profile`, as many steps again timed kernel by kernel.
Measurement measure(engine::Backend& backend, const engine::TrainingStep& step, const SyntheticBatch& batch,
                    const engine::FitConfig& cfg, const BenchOptions& o, bool profile) {
  engine::PlanOptions po;
  po.gradients = step.gradients;
  engine::Session session(step.graph, backend, po);
  Measurement m;
  m.device = backend.description();
  const float lr = static_cast<float>(cfg.schedule.base);
  int64_t done = 0;
  // Writes the batch and the step's scalars: in-place kernels may have overwritten the inputs last step.
  auto feed = [&] {
    session.write(step.x, batch.x);
    for (size_t k = 0; k < step.more_x.size(); ++k) session.write(step.more_x[k], batch.more_x[k]);
    session.write(step.y, batch.y);
    const int64_t iteration = done + 1;
    session.write(step.learning_rate, &lr, sizeof lr);
    session.write(step.iteration, &iteration, sizeof iteration);
    backend.synchronize();
  };
  // `timed`: a step of the measurement (the profiled steps, kernel by kernel, would skew host_seconds).
  auto run = [&](bool timed = true) {
    auto t0 = std::chrono::steady_clock::now();
    session.run(engine::StepContext{static_cast<uint64_t>(done), cfg.seed, 0});
    if (timed)
      m.host_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    backend.synchronize();
    ++done;
  };
  for (int64_t i = 0; i < o.warmup; ++i) {
    feed();
    run();
  }
  m.host_seconds.clear();
  for (int64_t i = 0; i < o.steps; ++i) {
    feed();
    auto t0 = std::chrono::steady_clock::now();
    run();
    m.step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  m.device_bytes = backend.memory_bytes() + engine::held_bytes(backend, session.program());
  const engine::Graph& g = *step.graph;
  const std::vector<engine::NodeId>& plan = session.program().steps;
  for (engine::NodeId id : plan) m.flops += engine::node_flops(g, g.node(id));
  if (g.value(step.loss).dtype == DType::f32) {
    float loss = 0;
    session.read(step.loss, &loss, sizeof loss);
    m.loss = loss;
  }
  if (!profile) return m;

  // Kernels report their node by name, in plan order: names map back to nodes, in order where names repeat.
  // A kernel no node answers to (a backend's own fusion) is listed without FLOPs, under forward.
  std::unordered_map<std::string, std::vector<engine::NodeId>> by_name;
  for (auto it = plan.rbegin(); it != plan.rend(); ++it) by_name[g.node(*it).name].push_back(*it);
  std::vector<std::vector<double>> samples;
  engine::Executable& exec = session.executable();
  for (int64_t i = 0; i < o.steps; ++i) {
    feed();
    exec.set_profiling(true);  // afresh: one step's times
    run(false);
    exec.set_profiling(false);
    std::vector<engine::KernelTiming> t = exec.kernel_timings();
    if (t.empty()) return m;
    if (m.ops.empty()) {
      for (const engine::KernelTiming& k : t) {
        OpTime op{k.op, k.node, k.shapes};
        auto found = by_name.find(k.node);
        if (found != by_name.end() && !found->second.empty()) {
          const engine::NodeId id = found->second.back();
          found->second.pop_back();
          if (id < static_cast<engine::NodeId>(step.phase.size()))
            op.phase = static_cast<Phase>(step.phase[id]);
          else
            op.phase = id >= step.update_begin     ? Phase::update
                       : id >= step.backward_begin ? Phase::backward
                                                   : Phase::forward;
          op.flops = engine::node_flops(g, g.node(id));
        }
        m.ops.push_back(std::move(op));
      }
      samples.resize(t.size());
    }
    TRAINER_ASSERT(t.size() == m.ops.size(), "{} kernel timings after {}", t.size(), m.ops.size());
    for (size_t k = 0; k < t.size(); ++k) samples[k].push_back(t[k].runs > 0 ? t[k].seconds / t[k].runs : 0);
  }
  for (size_t k = 0; k < m.ops.size(); ++k) m.ops[k].seconds = stats_of(samples[k]).median;
  return m;
}

// The step on N CPU replicas, each with its share of the batch and of the CPU threads, gradient buckets
// summed across them on communication threads (engine/dist/bucket_reducer.h), as trainer fit --devices N runs
// it.
struct ReplicaMeasurement {
  std::vector<double> step_seconds;     // per step: until every replica has finished
  std::vector<double> exposed_seconds;  // per step: the longest time a replica waited for a reduction
};

// `steps[k]` is replica k's step (with ZeRO-1, its own shard's update); `split`, when sharded: each range of
// a gradient is summed into its owner (unless clipping or loss scaling reads every gradient) and the updated
// ranges are gathered into every replica's parameters after the step, as fit does.
ReplicaMeasurement measure_replicas(const std::vector<engine::Backend*>& backends,
                                    const std::vector<engine::dist::Communicator*>& comms,
                                    const std::vector<engine::TrainingStep>& steps,
                                    const SyntheticBatch& data, const engine::FitConfig& cfg,
                                    const BenchOptions& o, const engine::ShardSplit* split) {
  const int n = static_cast<int>(backends.size());
  std::vector<std::unique_ptr<engine::dist::BucketReducer>> reducers;
  std::vector<std::unique_ptr<engine::Session>> sessions;
  std::vector<std::vector<engine::dist::BucketReducer::Bucket>> buckets(n);
  std::vector<std::vector<engine::dist::Communicator::Copy>> gathers(n);
  const bool to_owner = split && engine::shard_reduces_to_owner(cfg);
  for (int k = 0; k < n; ++k) {
    const engine::TrainingStep& step = steps[k];
    engine::PlanOptions po;
    po.gradients = step.gradients;
    po.bucket_bytes = cfg.bucket_bytes;
    reducers.push_back(std::make_unique<engine::dist::BucketReducer>(comms[k], nullptr, k));
    sessions.push_back(std::make_unique<engine::Session>(step.graph, *backends[k], po));
    engine::Session& s = *sessions.back();
    buckets[k] = engine::reduction_buckets(s, step.grad_param, to_owner ? split : nullptr);
    reducers.back()->attach(s.executable(), &buckets[k]);
    if (split) gathers[k] = engine::shard_gathers(s, *split, k);
  }
  const float lr = static_cast<float>(cfg.schedule.base);
  engine::dist::ReplicaThreads threads(n);
  ReplicaMeasurement m;
  for (int64_t i = 0; i < o.warmup + o.steps; ++i) {
    for (int k = 0; k < n; ++k) {
      engine::Session& s = *sessions[k];
      const engine::TrainingStep& step = steps[k];
      s.write(step.x, data.x);
      for (size_t q = 0; q < step.more_x.size(); ++q) s.write(step.more_x[q], data.more_x[q]);
      s.write(step.y, data.y);
      const int64_t iteration = i + 1;
      s.write(step.learning_rate, &lr, sizeof lr);
      s.write(step.iteration, &iteration, sizeof iteration);
      reducers[k]->begin_step(buckets[k], i, 1.0 / n);
      reducers[k]->reset_exposed();
    }
    auto t0 = std::chrono::steady_clock::now();
    auto step_of = [&](int k) {
      sessions[k]->run(engine::StepContext{static_cast<uint64_t>(i), cfg.seed,
                                           static_cast<uint64_t>(k * data.x.shape()[0])});
      if (split) comms[k]->broadcast_group(gathers[k], {-1, i});
      comms[k]->wait({-1, i});
      backends[k]->synchronize();
    };
    threads.run(step_of);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i < o.warmup) continue;
    double exposed = 0;
    for (const auto& r : reducers) exposed = std::max(exposed, r->exposed_seconds());
    m.step_seconds.push_back(seconds);
    m.exposed_seconds.push_back(exposed);
  }
  return m;
}

std::string stats_json(const Stats& s) {
  return json_object({{"median", json_number(1e3 * s.median)},
                      {"mean", json_number(1e3 * s.mean)},
                      {"min", json_number(1e3 * s.min)},
                      {"max", json_number(1e3 * s.max)}});
}

double gflops(double flops, double seconds) {
  return seconds > 0 ? flops / seconds / 1e9 : std::nan("");
}

std::string grouped(int64_t n) {
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}

// Node names end in what a node does ("dense/MatMul/fused/grad/ReluGrad"): long ones keep their end.
std::string cut(const std::string& s, size_t width) {
  return s.size() <= width ? s : "..." + s.substr(s.size() - (width - 3));
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench", "Time one training step of a spec's model on synthetic data: per op, per phase, FLOP/s");
  auto spec = std::make_shared<SpecOptions>();
  auto device = std::make_shared<DeviceOptions>();
  auto o = std::make_shared<BenchOptions>();
  spec->add_spec(cmd);
  spec->add_overrides(cmd, false);
  cmd->add_option("--steps", o->steps, "Timed steps (default 20); as many again are timed kernel by kernel")
      ->check(whole_number(1));
  cmd->add_option("--warmup", o->warmup, "Untimed steps first (default 3)")->check(whole_number(0));
  cmd->add_option("--top", o->top, "Ops the table on stderr lists, slowest first (default 10)")
      ->check(whole_number(0));
  cmd->add_option(
         "--devices", o->devices,
         "Also time the step on N CPU replicas sharing the batch, as trainer fit --devices N runs it: "
         "compute, exposed communication, scaling efficiency against one device")
      ->check(whole_number(1, 1024));
  device->add(cmd, true);
  cmd->add_flag("-q,--quiet", o->quiet, "Print nothing on stderr but errors");
  auto run = [=]() -> int {
    Output out(LogFormat::jsonl, o->quiet);
    formats::ModelSpec s = spec->load();
    require_training(s);
    read_onnx_bytes(s);
    const int64_t batch = s.train.batch_size;
    DeviceOptions::Opened opened = device->open(s, o->quiet);
    // With --gpus N the step is timed on the first GPU, then on all N as replicas.
    const std::vector<int> gpu_ids = opened.devices;
    opened.more.clear();
    engine::FitConfig cfg = fit_config(s);
    cfg.precision = opened.precision;
    const engine::TrainingStep step =
        at_spec_places(s, [&] { return engine::training_step(model_factory(s), cfg, batch); });
    const SyntheticBatch data = synthetic_batch(step, cfg);

    // The step as fit runs it (on CUDA by graph replay unless --no-cuda-graph), then, on CUDA, eagerly by a
    // second backend: the eager run is also the one timed kernel by kernel.
    Measurement eager, replay;
    bool have_replay = false;
    {
      auto backend = std::move(opened.backend);
      const bool cuda = backend->name() != "cpu";
      have_replay = cuda && !device->no_cuda_graph;
      if (have_replay)
        replay = measure(*backend, step, data, cfg, *o, false);
      else
        eager = measure(*backend, step, data, cfg, *o, true);
    }
    if (have_replay) {
      DeviceOptions without_graph = *device;
      without_graph.no_cuda_graph = true;
      auto backend = without_graph.open(s, true).backend;
      eager = measure(*backend, step, data, cfg, *o, true);
    }

    // N CPU replicas share one machine's cores, so they split the batch: the efficiency is the single
    // device's fastest step over theirs at the same global batch (1 = replication costs nothing). N GPUs add
    // N devices, so each takes the whole batch (weak scaling, the global batch N times it, as docs/scaling.md
    // models): the efficiency is one GPU's step time over the N GPUs' (1 = N times the samples per second).
    std::vector<std::pair<std::string, std::string>> replica_json;
    Stats replica_stats, exposed_stats;
    double efficiency = 0;
    int64_t global_batch = batch;
    const bool on_gpus = gpu_ids.size() > 1;
    const int replicas = on_gpus ? static_cast<int>(gpu_ids.size()) : o->devices;
    if (replicas > 1) {
      if (o->devices > 1 && eager.device.rfind("CPU", 0) != 0)
        throw InputError("--devices", "--devices times CPU replicas, and this bench runs on a GPU",
                         "add --device cpu; GPUs are chosen with --gpus");
      if (!on_gpus && batch % replicas != 0)
        throw InputError("--devices",
                         fmt::format("the batch of {} does not divide among {} replicas", batch, replicas),
                         "choose --batch-size as a multiple of the replica count");
      const int64_t per_replica = on_gpus ? batch : batch / replicas;
      global_batch = per_replica * replicas;
      // With [parallel] shard_optimizer each replica updates its range of the parameters (ZeRO-1), as fit
      // does.
      std::optional<engine::ShardSplit> split;
      if (s.parallel.shard_optimizer)
        split = at_spec_places(s, [&] { return engine::shard_split(model_factory(s), cfg, replicas); });
      std::vector<engine::TrainingStep> rsteps;
      for (int k = 0; k < replicas; ++k) {
        const auto ranges =
            split ? split->ranges_of(k) : std::map<std::string, engine::TrainingOptions::ShardRange>{};
        rsteps.push_back(at_spec_places(s, [&] {
          return engine::training_step(engine::synchronized_factory(model_factory(s)), cfg, per_replica,
                                       split ? &ranges : nullptr);
        }));
      }
      const engine::TrainingStep& rstep = rsteps.front();
      const SyntheticBatch rdata = synthetic_batch(rstep, cfg);
      // CPU replicas share the threads and a ThreadGroup; GPU replicas get a backend and an NCCL rank each.
      std::vector<std::unique_ptr<engine::Backend>> owned;
      std::vector<std::unique_ptr<engine::dist::Communicator>> comm_owned;
      std::unique_ptr<engine::dist::ThreadGroup> group;
      if (gpu_ids.size() > 1) {
#if TRAINER_HAVE_CUDA
        std::vector<cudaStream_t> streams;
        for (int id : gpu_ids) {
          engine::CudaOptions co;
          co.device = id;
          co.cuda_graph = !device->no_cuda_graph;
          co.allow_tf32 = cfg.precision == engine::Precision::tf32;
          owned.push_back(engine::make_cuda_backend(co));
          streams.push_back(static_cast<cudaStream_t>(owned.back()->native_stream()));
        }
        comm_owned = engine::dist::make_nccl_group(gpu_ids, streams);
#endif
      } else {
        engine::CpuOptions co;
        co.threads = std::max(1, engine::default_cpu_threads() / replicas);
        group = std::make_unique<engine::dist::ThreadGroup>(replicas);
        for (int k = 0; k < replicas; ++k) {
          owned.push_back(engine::make_cpu_backend(co));
          comm_owned.push_back(group->communicator(k));
        }
      }
      std::vector<engine::Backend*> bks;
      std::vector<engine::dist::Communicator*> cms;
      for (auto& b : owned) bks.push_back(b.get());
      for (auto& c : comm_owned) cms.push_back(c.get());
      const ReplicaMeasurement rm =
          measure_replicas(bks, cms, rsteps, rdata, cfg, *o, split ? &*split : nullptr);
      replica_stats = stats_of(rm.step_seconds);
      exposed_stats = stats_of(rm.exposed_seconds);
      // Against the single device run the same way: replayed when the replicas replay.
      const bool replicas_replay = have_replay && !device->no_cuda_graph;
      // Fastest steps against fastest steps: a load spike on a shared machine slows some steps of one
      // measurement and not the other's (medians gave 378% on a machine busy with another process).
      const double reference = stats_of(replicas_replay ? replay.step_seconds : eager.step_seconds).min;
      efficiency = reference / replica_stats.min;
      replica_json = {{"replicas", std::to_string(replicas)},
                      {"batch_per_replica", std::to_string(per_replica)},
                      {"shard_optimizer", split ? "true" : "false"},
                      {"step_ms", stats_json(replica_stats)},
                      {"exposed_comm_ms", json_number(1e3 * exposed_stats.median)},
                      {"compute_ms", json_number(1e3 * (replica_stats.median - exposed_stats.median))},
                      {"samples_per_s", json_number(global_batch / replica_stats.median)},
                      {"scaling_efficiency", json_number(efficiency)}};
    }

    const int64_t flops = eager.flops;
    const Stats eager_stats = stats_of(eager.step_seconds);
    const Stats replay_stats = stats_of(replay.step_seconds);
    // Throughput is that of the step fit would run: the replayed graph where there is one.
    const double step_s = have_replay ? replay_stats.median : eager_stats.median;
    const double samples_per_s = step_s > 0 ? batch / step_s : std::nan("");

    double phase_s[3] = {0, 0, 0}, ops_s = 0;
    int64_t phase_flops[3] = {0, 0, 0}, phase_ops[3] = {0, 0, 0};
    for (const OpTime& op : eager.ops) {
      const int p = static_cast<int>(op.phase);
      phase_s[p] += op.seconds;
      phase_flops[p] += op.flops;
      ++phase_ops[p];
      ops_s += op.seconds;
    }

    std::vector<std::string> ops_json;
    for (const OpTime& op : eager.ops)
      ops_json.push_back(json_object({{"op", json_string(op.op)},
                                      {"node", json_string(op.node)},
                                      {"phase", json_string(kPhaseNames[static_cast<int>(op.phase)])},
                                      {"shapes", json_string(op.shapes)},
                                      {"ms_per_step", json_number(1e3 * op.seconds)},
                                      {"flops", std::to_string(op.flops)},
                                      {"gflops", json_number(gflops(op.flops, op.seconds))}}));
    std::vector<std::pair<std::string, std::string>> phases;
    for (int p = 0; p < 3; ++p)
      phases.emplace_back(kPhaseNames[p], json_object({{"ms_per_step", json_number(1e3 * phase_s[p])},
                                                       {"flops", std::to_string(phase_flops[p])},
                                                       {"ops", std::to_string(phase_ops[p])}}));
    const bool timed_ops = !eager.ops.empty();
    out.json_line(json_object({
        {"event", json_string("bench")},
        {"spec", json_string(spec->path)},
        {"device", json_string(eager.device)},
        {"batch_size", std::to_string(batch)},
        {"warmup", std::to_string(o->warmup)},
        {"steps", std::to_string(o->steps)},
        {"step_ms", stats_json(eager_stats)},
        {"step_ms_graph", have_replay ? stats_json(replay_stats) : "null"},
        {"precision", json_string(std::string(engine::precision_name(cfg.precision)))},
        {"host_us_per_step",
         json_number(1e6 * stats_of(have_replay ? replay.host_seconds : eager.host_seconds).median)},
        {"device_memory_bytes", std::to_string(have_replay ? replay.device_bytes : eager.device_bytes)},
        {"samples_per_s", json_number(samples_per_s)},
        {"flops_per_step", std::to_string(flops)},
        {"achieved_gflops", json_number(gflops(static_cast<double>(flops), step_s))},
        {"loss", json_number(eager.loss)},
        {"ops_ms_per_step", timed_ops ? json_number(1e3 * ops_s) : "null"},
        {"phases", timed_ops ? json_object(phases) : "null"},
        {"ops", "[" + fmt::format("{}", fmt::join(ops_json, ", ")) + "]"},
        {"replicas", replica_json.empty() ? "null" : json_object(replica_json)},
    }));

    // Times measured on NaN or infinities may not be those of training (denormals, branches).
    if (!std::isfinite(eager.loss))
      out.say(
          "trainer: warning: the loss on the synthetic data became {}; times may not be those of "
          "training\n",
          eager.loss);
    if (o->quiet) return 0;
    out.say("trainer bench {} · {} · batch {} · {} timed steps after {} warm-up\n", spec->path, eager.device,
            batch, o->steps, o->warmup);
    out.say("Step (eager):      {:>9.3f} ms median, {:.3f} mean, {:.3f} min\n", 1e3 * eager_stats.median,
            1e3 * eager_stats.mean, 1e3 * eager_stats.min);
    if (have_replay)
      out.say("Step (CUDA graph): {:>9.3f} ms median, {:.3f} mean, {:.3f} min\n", 1e3 * replay_stats.median,
              1e3 * replay_stats.mean, 1e3 * replay_stats.min);
    out.say("{:.0f} samples/s · {} FLOP per step · {:.1f} GFLOP/s achieved · {}\n", samples_per_s,
            grouped(flops), gflops(static_cast<double>(flops), step_s),
            engine::precision_name(cfg.precision));
    out.say("Host time per step {:.1f} us (until run() returns) · device memory {:.1f} MiB\n",
            1e6 * stats_of(have_replay ? replay.host_seconds : eager.host_seconds).median,
            (have_replay ? replay.device_bytes : eager.device_bytes) / 1048576.0);
    if (!replica_json.empty())
      out.say(
          "{} {} replicas of batch {}{}: step {:.3f} ms median (compute {:.3f} ms, exposed communication "
          "{:.3f} ms) · {:.0f} samples/s · scaling efficiency {:.0f}% against one device\n",
          replicas, on_gpus ? "GPU" : "CPU", global_batch / replicas,
          s.parallel.shard_optimizer ? ", optimizer state sharded" : "", 1e3 * replica_stats.median,
          1e3 * (replica_stats.median - exposed_stats.median), 1e3 * exposed_stats.median,
          global_batch / replica_stats.median, 100 * efficiency);
    if (!timed_ops) {
      out.say("(this backend does not time kernels one by one)\n");
      return 0;
    }
    out.say("\n{:<10} {:>10} {:>7} {:>6} {:>10}\n", "Phase", "ms/step", "share", "ops", "GFLOP/s");
    for (int p = 0; p < 3; ++p)
      out.say("{:<10} {:>10.3f} {:>6.1f}% {:>6} {:>10.1f}\n", kPhaseNames[p], 1e3 * phase_s[p],
              100 * phase_s[p] / std::max(ops_s, 1e-12), phase_ops[p],
              gflops(static_cast<double>(phase_flops[p]), phase_s[p]));
    out.say("{:<10} {:>10.3f} {:>6.1f}% {:>6}   (sum of per-op medians; the step's median is {:.3f})\n",
            "all ops", 1e3 * ops_s, 100.0, eager.ops.size(), 1e3 * eager_stats.median);
    if (o->top == 0) return 0;
    std::vector<const OpTime*> order;
    for (const OpTime& op : eager.ops) order.push_back(&op);
    std::stable_sort(order.begin(), order.end(),
                     [](const OpTime* a, const OpTime* b) { return a->seconds > b->seconds; });
    order.resize(std::min<size_t>(order.size(), static_cast<size_t>(o->top)));
    out.say("\n{:>10} {:>7} {:>10}  {:<8} {:<24} {:<32} {}\n", "ms/step", "share", "GFLOP/s", "phase", "op",
            "node", "input shapes");
    for (const OpTime* op : order)
      out.say("{:>10.4f} {:>6.1f}% {:>10.1f}  {:<8} {:<24} {:<32} {}\n", 1e3 * op->seconds,
              100 * op->seconds / std::max(ops_s, 1e-12), gflops(static_cast<double>(op->flops), op->seconds),
              kPhaseNames[static_cast<int>(op->phase)], op->op, cut(op->node, 32), op->shapes);
    return 0;
  };
  return {cmd, run};
}

}  // namespace trainer::cli
