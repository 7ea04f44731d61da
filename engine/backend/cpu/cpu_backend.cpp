// The CPU backend: a 64-byte-aligned arena, kernels bound to it once at prepare time, and steps run inline on
// the calling thread (OpenMP and oneDNN parallelize inside kernels).
#include <fmt/ranges.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <thread>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/ir/op_schema.h"

namespace trainer::engine {

namespace {

class HostBuffer final : public DeviceBuffer {
 public:
  HostBuffer(size_t bytes, std::shared_ptr<std::atomic<size_t>> held)
      : bytes_(bytes), held_(std::move(held)) {
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    // A large arena is mapped: the kernel's zero pages cost nothing until a step writes them (a plan's
    // regions that a run never reaches stay free). A small one is allocated and cleared.
    constexpr size_t kMapped = size_t{1} << 20;
    if (rounded >= kMapped) {
      void* p = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p != MAP_FAILED) {
        ptr_ = p;
        mapped_ = rounded;
      }
    } else {
      ptr_ = std::aligned_alloc(64, rounded);
      if (ptr_) std::memset(ptr_, 0, rounded);
    }
    if (!ptr_)
      throw RuntimeError(
          fmt::format("cannot allocate {:.1f} MiB of host memory for the plan", bytes / 1048576.0),
          "lower the batch size (train.batch_size, or predict's --batch-size), or free memory (trainer check "
          "prints what a training step plans)");
    *held_ += bytes_;
  }
  ~HostBuffer() override {
    if (mapped_)
      ::munmap(ptr_, mapped_);
    else
      std::free(ptr_);
    *held_ -= bytes_;
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  void* data() const override { return ptr_; }
  size_t bytes() const override { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t mapped_ = 0;  // the mapping's length, or 0 when allocated
  size_t bytes_;
  std::shared_ptr<std::atomic<size_t>> held_;  // the backend's total, which may end before the buffer
};

// Work on the CPU runs inline, so every event is complete when it is recorded.
class CompletedEvent final : public Event {
 public:
  bool done() const override { return true; }
  void synchronize() override {}
};

// Per-kernel wall time of one plan. Two users: trainer bench turns it on at run time through
// Executable::set_profiling and reads per-kernel totals; TRAINER_CPU_PROFILE=1 keeps it on for the plan's
// life and prints a table of medians to stderr when the plan is destroyed (on a shared machine preemption
// inflates some runs arbitrarily). Storage is reserved when timing is turned on, so timed runs allocate
// nothing.
struct KernelProfile {
  static constexpr size_t kMaxRuns = 4096;  // runs sampled per kernel for the table; later ones are dropped
  bool table = false;                       // TRAINER_CPU_PROFILE: keep per-run samples, print at the end
  bool totals_on = false;                   // set_profiling(true)
  std::vector<double> totals;               // per step: seconds since set_profiling(true)
  int64_t total_runs = 0;
  std::vector<std::vector<double>> samples;  // per step, per run (table only)
  int64_t table_runs = 0;

  static bool from_environment() {
    static const bool on = [] {
      const char* v = std::getenv("TRAINER_CPU_PROFILE");
      return v && *v && std::string(v) != "0";
    }();
    return on;
  }

  bool on() const { return table || totals_on; }

  void start_table(size_t steps) {
    table = true;
    samples.resize(steps);
    for (std::vector<double>& v : samples) v.reserve(kMaxRuns);
  }
  void start_totals(size_t steps) {
    totals.assign(steps, 0.0);
    total_runs = 0;
    totals_on = true;
  }

  void begin_run() {
    if (table) ++table_runs;
    if (totals_on) ++total_runs;
  }
  void record(size_t step, double s) {
    if (totals_on) totals[step] += s;
    if (table && samples[step].size() < kMaxRuns) samples[step].push_back(s);
  }

  void print(const std::vector<std::string>& labels) {
    if (!table || table_runs == 0) return;
    // Kernels of one op and shape add up under one label; the table lists labels by median time per run.
    std::map<std::string, std::pair<double, int>> by_label;
    double total = 0;
    for (size_t i = 0; i < labels.size(); ++i) {
      std::vector<double>& v = samples[i];
      if (v.empty()) continue;
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      double median = v[v.size() / 2];
      auto& [s, count] = by_label[labels[i]];
      s += median;
      ++count;
      total += median;
    }
    std::vector<std::pair<std::string, std::pair<double, int>>> rows(by_label.begin(), by_label.end());
    std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.first > b.second.first; });
    eprint("CPU plan profile: {} kernels, {} runs, {:.3f} ms per run (sum of medians)\n", labels.size(),
           table_runs, 1e3 * total);
    for (const auto& [label, v] : rows)
      eprint("  {:>6.2f}%  {:>9.4f} ms  x{:<3} {}\n", 100 * v.first / std::max(total, 1e-12), 1e3 * v.first,
             v.second, label);
  }
};

// What a kernel's timing is reported under: its node's op, name and input shapes.
struct KernelLabel {
  std::string op, node, shapes;
};

class CpuExecutable final : public Executable {
 public:
  CpuExecutable(std::vector<cpu::KernelPtr> kernels, std::vector<std::vector<int>> buckets_after,
                std::vector<std::vector<int>> buckets_before, std::vector<KernelLabel> labels, int threads)
      : kernels_(std::move(kernels)),
        buckets_after_(std::move(buckets_after)),
        buckets_before_(std::move(buckets_before)),
        labels_(std::move(labels)),
        threads_(threads) {
    if (KernelProfile::from_environment()) profile_.start_table(kernels_.size());
  }
  ~CpuExecutable() override {
    if (!profile_.table) return;
    std::vector<std::string> text;
    for (const KernelLabel& l : labels_) text.push_back(fmt::format("{} {}", l.op, l.shapes));
    profile_.print(text);
  }

  void run(const StepContext& ctx) override {
    // OpenMP's thread count belongs to the calling thread: replicas run their plans on threads of their own.
    if (omp_get_max_threads() != threads_) omp_set_num_threads(threads_);
    const bool timed = profile_.on();
    if (timed) profile_.begin_run();
    for (size_t s = 0; s < kernels_.size(); ++s) {
      if (wait_hook_)
        for (int b : buckets_before_[s]) wait_hook_(b);
      if (timed) {
        auto t0 = std::chrono::steady_clock::now();
        kernels_[s]->run(ctx);
        profile_.record(s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      } else {
        kernels_[s]->run(ctx);
      }
      if (hook_)
        for (int b : buckets_after_[s]) hook_(b);
    }
    if (wait_hook_)
      for (int b : buckets_before_.back()) wait_hook_(b);
  }
  void set_bucket_ready_hook(std::function<void(int)> hook) override { hook_ = std::move(hook); }
  void set_bucket_wait_hook(std::function<void(int)> hook) override { wait_hook_ = std::move(hook); }

  // Turning timing on (again) starts the totals afresh; turning it off keeps them for kernel_timings().
  void set_profiling(bool on) override {
    if (on)
      profile_.start_totals(kernels_.size());
    else
      profile_.totals_on = false;
  }
  std::vector<KernelTiming> kernel_timings() const override {
    std::vector<KernelTiming> out;
    if (profile_.totals.size() != kernels_.size()) return out;
    out.reserve(kernels_.size());
    for (size_t s = 0; s < kernels_.size(); ++s)
      out.push_back(
          {labels_[s].op, labels_[s].node, labels_[s].shapes, profile_.totals[s], profile_.total_runs});
    return out;
  }

 private:
  std::vector<cpu::KernelPtr> kernels_;
  std::vector<std::vector<int>> buckets_after_;  // per step: buckets complete after it
  // per step: buckets its kernel reads; one more entry at the end for the buckets nothing reads
  std::vector<std::vector<int>> buckets_before_;
  std::function<void(int)> wait_hook_;
  std::vector<KernelLabel> labels_;  // per step
  std::function<void(int)> hook_;
  KernelProfile profile_;
  int threads_;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuOptions& o) {
    threads_ = o.threads > 0 ? o.threads : default_threads();
    omp_set_num_threads(threads_);
  }
  // OMP_NUM_THREADS when it is set to a positive count (the usual way to share a machine), else every
  // hardware thread.
  static int default_threads() {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
      char* end = nullptr;
      long n = std::strtol(env, &end, 10);
      if (end != env && n > 0) return static_cast<int>(std::min<long>(n, 4096));
    }
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  std::string name() const override { return "cpu"; }
  std::string description() const override {
    return fmt::format("CPU, {} thread{}", threads_, threads_ == 1 ? "" : "s");
  }
  size_t alignment() const override { return 64; }
  bool supports(const Graph&, const Node& n) const override {
    return cpu::KernelRegistry::global().find(n.op) != nullptr;
  }
  std::unique_ptr<DeviceBuffer> allocate(size_t bytes) override {
    return std::make_unique<HostBuffer>(bytes, held_);
  }
  size_t memory_bytes() const override { return held_->load(); }
  size_t held_bytes(const Graph& g, const Node& n) const override {
    return cpu::rnn_held_bytes(g, n) + cpu::conv_held_bytes(g, n);
  }

  std::unique_ptr<Executable> prepare(const Program& p, DeviceBuffer& arena) override {
    TRAINER_ASSERT(arena.bytes() >= p.arena_bytes(), "arena of {} bytes for a plan of {}", arena.bytes(),
                   p.arena_bytes());
    omp_set_num_threads(threads_);
    const Graph& g = *p.graph;
    auto* base = static_cast<std::byte*>(arena.data());
    auto ptr = [&](ValueId v) -> void* {
      if (v == kNoValue) return nullptr;
      const Slot& s = p.slots[v];
      TRAINER_ASSERT(s.assigned, "value '{}' has no buffer", g.value(v).name);
      return base + s.offset;
    };
    std::vector<cpu::KernelPtr> kernels;
    std::vector<std::string> unsupported;
    for (NodeId id : p.steps)
      if (!cpu::KernelRegistry::global().find(g.node(id).op)) unsupported.push_back(g.node(id).op);
    if (!unsupported.empty())
      throw InputError("", fmt::format("the CPU backend has no kernel for: {}", fmt::join(unsupported, ", ")),
                       "");
    for (NodeId id : p.steps) {
      const Node& n = g.node(id);
      cpu::KernelArgs args{g, n, {}, {}};
      for (ValueId v : n.inputs) args.inputs.push_back(ptr(v));
      for (ValueId v : n.outputs) args.outputs.push_back(ptr(v));
      try {
        kernels.push_back((*cpu::KernelRegistry::global().find(n.op))(args));
      } catch (const InputError& e) {
        if (!e.where().empty()) throw;
        throw InputError(fmt::format("node '{}' ({})", n.name, n.op), e.message(), e.hint());  // its place
      }
      TRAINER_ASSERT(kernels.back() != nullptr, "kernel factory for {} returned nothing", n.op);
    }
    std::vector<std::vector<int>> after(p.steps.size()), before(p.steps.size() + 1);
    for (size_t b = 0; b < p.buckets.size(); ++b) {
      int s = std::max(p.buckets[b].ready_after_step, 0);
      if (!p.steps.empty()) after[std::min<size_t>(s, p.steps.size() - 1)].push_back(static_cast<int>(b));
      const int need = p.buckets[b].needed_by_step;
      TRAINER_ASSERT(need > s || need >= static_cast<int>(p.steps.size()),
                     "bucket {} is read at step {}, before it is complete at step {}", b, need, s);
      before[need > s && need < static_cast<int>(p.steps.size()) ? need : p.steps.size()].push_back(
          static_cast<int>(b));
    }
    std::vector<KernelLabel> labels;
    for (NodeId id : p.steps) {
      const Node& n = g.node(id);
      std::string shapes;
      for (ValueId v : n.inputs)
        if (v != kNoValue) shapes += fmt::format("{}{}", shapes.empty() ? "" : " ", g.value(v).shape.str());
      labels.push_back({n.op, n.name, std::move(shapes)});
    }
    return std::make_unique<CpuExecutable>(std::move(kernels), std::move(after), std::move(before),
                                           std::move(labels), threads_);
  }

  // Empty copies (an empty tensor's null data) touch nothing: memcpy's pointers must not be null.
  void copy_to_device(DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(static_cast<std::byte*>(dst.data()) + offset, src, bytes);
  }
  void copy_to_host(void* dst, const DeviceBuffer& src, size_t offset, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, static_cast<const std::byte*>(src.data()) + offset, bytes);
  }
  std::unique_ptr<Event> record_event() override { return std::make_unique<CompletedEvent>(); }
  void synchronize() override {}

 private:
  int threads_;
  std::shared_ptr<std::atomic<size_t>> held_ = std::make_shared<std::atomic<size_t>>(0);
};

}  // namespace

int default_cpu_threads() {
  return CpuBackend::default_threads();
}

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

namespace cpu {

const KernelRegistry& KernelRegistry::global() {
  static const KernelRegistry r = [] {
    KernelRegistry k;
    register_all_cpu_kernels(k);
    return k;
  }();
  return r;
}

}  // namespace cpu

}  // namespace trainer::engine
