// The CUDA backend: one device arena per replica, allocated once; kernels bound to it at prepare time; a step
// enqueued on a compute stream and, after a warm-up step, captured once as a CUDA graph and replayed. Nodes
// with no CUDA kernel run on the host through pinned staging buffers, inside the same stream order.
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_kernel.h"
#include "engine/backend/cuda/cuda_kernel.h"
#include "engine/backend/cuda/dynload.h"
#include "engine/backend/cuda/launch_step.h"

namespace trainer::engine {

namespace cuda {

void cuda_failed(cudaError_t status, const char* call, const char* file, int line) {
  throw RuntimeError(fmt::format("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(status),
                                 cudaGetErrorString(status), call, file, line));
}

namespace {

std::atomic<uint64_t> g_allocation_calls{0};

// Every allocation the backend makes goes through these, so a test can prove a steady-state step makes none.
void* device_malloc(size_t bytes) {
  ++g_allocation_calls;
  void* p = nullptr;
  cudaError_t s = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (s != cudaSuccess) {
    size_t free_bytes = 0, total = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_bytes, &total);
    throw RuntimeError(
        fmt::format("cannot allocate {:.1f} MiB on the GPU ({:.1f} MiB of {:.1f} MiB free): {}",
                    bytes / 1048576.0, free_bytes / 1048576.0, total / 1048576.0, cudaGetErrorString(s)));
  }
  return p;
}
void device_free(void* p) {
  if (!p) return;
  ++g_allocation_calls;
  cudaFree(p);
}
void* host_malloc(size_t bytes) {
  ++g_allocation_calls;
  void* p = nullptr;
  TRAINER_CUDA_CHECK(cudaMallocHost(&p, std::max<size_t>(bytes, 1)));
  return p;
}
void host_free(void* p) {
  if (!p) return;
  ++g_allocation_calls;
  cudaFreeHost(p);
}

void cublas_check(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw RuntimeError(
        fmt::format("cuBLASLt error {} in {} at {}:{}", static_cast<int>(s), call, file, line));
}
void cudnn_check(cudnnStatus_t s, const char* call, const char* file, int line) {
  if (s != CUDNN_STATUS_SUCCESS)
    throw RuntimeError(
        fmt::format("cuDNN error {} in {} at {}:{}", lib::cudnn().cudnnGetErrorString(s), call, file, line));
}
#define BACKEND_CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
#define BACKEND_CUDNN_CHECK(call) cudnn_check((call), #call, __FILE__, __LINE__)

// Pinned host memory, move-only.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes) : ptr_(host_malloc(bytes)), bytes_(bytes) {}
  ~PinnedBuffer() { host_free(ptr_); }
  PinnedBuffer(PinnedBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(int device, size_t bytes, std::shared_ptr<std::atomic<size_t>> held, cudaStream_t stream)
      : device_(device), bytes_(bytes), held_(std::move(held)) {
    TRAINER_CUDA_CHECK(cudaSetDevice(device_));
    ptr_ = device_malloc(bytes);
    // Zeroed like the CPU's arena, so values no step has written read the same on both. On the compute
    // stream: a plain cudaMemset goes to the legacy default stream, which a cudaStreamNonBlocking stream does
    // not wait for, so the uploads of initializers that follow could land first and then be zeroed.
    TRAINER_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, std::max<size_t>(bytes, 1), stream));
    *held_ += bytes_;
  }
  ~CudaBuffer() override {
    cudaSetDevice(device_);
    device_free(ptr_);
    *held_ -= bytes_;
  }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  void* data() const override { return ptr_; }
  size_t bytes() const override { return bytes_; }

 private:
  int device_;
  void* ptr_ = nullptr;
  size_t bytes_;
  std::shared_ptr<std::atomic<size_t>> held_;  // the backend's total, which may end before the buffer
};

}  // namespace

KernelMemory::KernelMemory(CudaLibs& libs, size_t bytes)
    : device_(libs.device), bytes_(bytes), counter_(libs.kernel_bytes) {
  TRAINER_CUDA_CHECK(cudaSetDevice(device_));
  ptr_ = device_malloc(bytes);
  // Prepare time: a synchronous zeroing, finished before any stream uses the memory.
  TRAINER_CUDA_CHECK(cudaMemset(ptr_, 0, std::max<size_t>(bytes, 1)));
  TRAINER_CUDA_CHECK(cudaDeviceSynchronize());
  *counter_ += bytes_;
}

KernelMemory::~KernelMemory() {
  int current = device_;
  cudaGetDevice(&current);
  cudaSetDevice(device_);
  device_free(ptr_);
  cudaSetDevice(current);
  *counter_ -= bytes_;
}

namespace {

class CudaEvent final : public Event {
 public:
  CudaEvent(int device, cudaStream_t stream) : device_(device) {
    TRAINER_CUDA_CHECK(cudaSetDevice(device_));
    TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    TRAINER_CUDA_CHECK(cudaEventRecord(event_, stream));
  }
  ~CudaEvent() override {
    cudaSetDevice(device_);
    cudaEventDestroy(event_);
  }
  bool done() const override { return query_event(event_) == cudaSuccess; }
  void synchronize() override { TRAINER_CUDA_CHECK(cudaEventSynchronize(event_)); }

 private:
  int device_;
  cudaEvent_t event_ = nullptr;
};

// A node without a CUDA kernel runs the CPU's kernel on pinned copies of its operands: device-to-host copies,
// a host function, host-to-device copies, all in stream order (and so inside a captured graph too). Operands
// that share a device buffer share a host buffer, so the CPU kernel sees the aliasing it was planned with.
class HostFallbackKernel final : public CudaKernel {
 public:
  HostFallbackKernel(const Graph& g, const Node& n, const std::vector<void*>& dev_in,
                     const std::vector<void*>& dev_out, const StepContext* host_ctx)
      : host_ctx_(host_ctx) {
    std::map<void*, size_t> sizes;  // device pointer -> the largest operand there
    auto note = [&](void* p, ValueId v) {
      if (p) sizes[p] = std::max(sizes[p], g.value(v).nbytes());
    };
    for (size_t i = 0; i < dev_in.size(); ++i) note(dev_in[i], n.inputs[i]);
    for (size_t i = 0; i < dev_out.size(); ++i) note(dev_out[i], n.outputs[i]);
    std::map<void*, void*> host_of;
    for (const auto& [dev, bytes] : sizes) {
      buffers_.emplace_back(bytes);
      host_of[dev] = buffers_.back().data();
    }
    std::vector<void*> host_in, host_out;
    for (size_t i = 0; i < dev_in.size(); ++i) {
      host_in.push_back(dev_in[i] ? host_of[dev_in[i]] : nullptr);
      if (dev_in[i]) downloads_.push_back({dev_in[i], host_of[dev_in[i]], g.value(n.inputs[i]).nbytes()});
    }
    for (size_t i = 0; i < dev_out.size(); ++i) {
      host_out.push_back(dev_out[i] ? host_of[dev_out[i]] : nullptr);
      if (dev_out[i]) uploads_.push_back({dev_out[i], host_of[dev_out[i]], g.value(n.outputs[i]).nbytes()});
    }
    const cpu::KernelFactory* f = cpu::KernelRegistry::global().find(n.op);
    if (!f)
      throw InputError(n.name, fmt::format("no CUDA or CPU kernel for {} (node '{}')", n.op, n.name), "");
    cpu::KernelArgs args{g, n, host_in, host_out};
    cpu_kernel_ = (*f)(args);
  }

  void launch(cudaStream_t stream) override {
    for (const Copy& c : downloads_)
      TRAINER_CUDA_CHECK(cudaMemcpyAsync(c.host, c.device, c.bytes, cudaMemcpyDeviceToHost, stream));
    TRAINER_CUDA_CHECK(cudaLaunchHostFunc(stream, &HostFallbackKernel::run_on_host, this));
    for (const Copy& c : uploads_)
      TRAINER_CUDA_CHECK(cudaMemcpyAsync(c.device, c.host, c.bytes, cudaMemcpyHostToDevice, stream));
  }

 private:
  struct Copy {
    void* device;
    void* host;
    size_t bytes;
  };
  static void CUDART_CB run_on_host(void* self) {
    auto* k = static_cast<HostFallbackKernel*>(self);
    k->cpu_kernel_->run(*k->host_ctx_);
  }

  const StepContext* host_ctx_;
  std::vector<PinnedBuffer> buffers_;
  std::vector<Copy> downloads_, uploads_;
  cpu::KernelPtr cpu_kernel_;
};

struct StepLabel {
  std::string op, node, shapes;
};

// Says once per process which ops run on the host for want of a CUDA kernel for their types or shapes: their
// inputs and outputs cross PCIe, and a plan with one is not replayed as a CUDA graph.
void report_host_fallbacks(int device, const std::set<std::string>& ops) {
  static std::mutex mu;
  static std::set<std::string> told;
  std::lock_guard<std::mutex> lock(mu);
  std::vector<std::string> fresh;
  for (const std::string& op : ops)
    if (told.insert(op).second) fresh.push_back(op);
  if (fresh.empty()) return;
  eprint(
      "note: cuda:{} runs {} on the host: no CUDA kernel takes {} types or shapes; plans with {} run "
      "kernel by kernel, not as a CUDA graph\n",
      device, fmt::join(fresh, ", "), fresh.size() == 1 ? "its" : "their", fresh.size() == 1 ? "it" : "them");
}

class CudaExecutable final : public Executable {
 public:
  CudaExecutable(int device, cudaStream_t stream, bool use_graph, std::vector<KernelPtr> kernels,
                 std::vector<StepLabel> labels, std::vector<std::vector<int>> buckets_after,
                 bool has_host_kernels, std::unique_ptr<StepContext> host_ctx, DeviceStepContext* dev_ctx)
      : device_(device),
        stream_(stream),
        use_graph_(use_graph && !has_host_kernels),
        kernels_(std::move(kernels)),
        labels_(std::move(labels)),
        buckets_after_(std::move(buckets_after)),
        has_host_kernels_(has_host_kernels),
        host_ctx_(std::move(host_ctx)),
        dev_ctx_(dev_ctx) {
    TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~CudaExecutable() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
    for (cudaEvent_t e : profile_events_) cudaEventDestroy(e);
    cudaEventDestroy(done_);
  }

  void run(const StepContext& ctx) override {
    TRAINER_CUDA_CHECK(cudaSetDevice(device_));
    // Host kernels read the step's counters from host memory when the stream reaches them: the previous step
    // must be done before they change.
    if (has_host_kernels_) TRAINER_CUDA_CHECK(cudaEventSynchronize(done_));
    *host_ctx_ = ctx;
    TRAINER_CUDA_CHECK(launch_set_step_context(dev_ctx_, ctx.step, ctx.seed, ctx.sample_offset, stream_));
    if (profiling_) {
      collect_profile();
      run_profiled();
    } else if (graph_exec_ && ctx.may_capture &&
               (!hook_ || (reductions_captured_ && capture_key_() == captured_key_))) {
      TRAINER_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
    } else if (graph_exec_ || !ctx.may_capture) {
      // Reductions the graph does not hold as this step needs them (hooks set after the capture, or another
      // weight), or a step the replicas run eagerly: kernel by kernel, handing its buckets on.
      run_eager(ctx.may_capture);
    } else if (use_graph_ && (!hook_ || capture_ready_) && eager_runs_ >= 1) {
      capture_and_launch();
    } else {
      run_eager(true);
    }
    TRAINER_CUDA_CHECK(cudaEventRecord(done_, stream_));
  }

  void set_bucket_ready_hook(std::function<void(int)> hook) override { hook_ = std::move(hook); }
  void set_bucket_wait_hook(std::function<void(int)> hook) override { wait_hook_ = std::move(hook); }
  void set_bucket_capture_hooks(std::function<void(int)> ready, std::function<void(int)> wait,
                                std::function<double()> key) override {
    capture_ready_ = std::move(ready);
    capture_wait_ = std::move(wait);
    capture_key_ = std::move(key);
  }
  void set_buckets_before(std::vector<std::vector<int>> before) { buckets_before_ = std::move(before); }

  void set_profiling(bool on) override {
    TRAINER_CUDA_CHECK(cudaSetDevice(device_));
    // Turning it on restarts the totals (as on the CPU); the events are made once.
    if (on) {
      if (profile_events_.empty()) {
        profile_events_.resize(kernels_.size() + 1);
        for (cudaEvent_t& e : profile_events_) TRAINER_CUDA_CHECK(cudaEventCreate(&e));
      }
      if (profile_pending_) TRAINER_CUDA_CHECK(cudaEventSynchronize(profile_events_.back()));
      profile_pending_ = false;
      timings_.resize(kernels_.size());
      for (size_t i = 0; i < kernels_.size(); ++i)
        timings_[i] = KernelTiming{labels_[i].op, labels_[i].node, labels_[i].shapes, 0, 0};
    } else {
      collect_profile();
    }
    profiling_ = on;
  }

  std::vector<KernelTiming> kernel_timings() const override {
    const_cast<CudaExecutable*>(this)->collect_profile();
    return timings_;
  }

 private:
  // Launches every kernel, calling `ready` for the buckets a kernel completes and `wait` before the first
  // reader of a bucket (and at the end for buckets nothing reads); either may be empty.
  void launch_all(const std::function<void(int)>& ready, const std::function<void(int)>& wait) {
    for (size_t s = 0; s < kernels_.size(); ++s) {
      if (wait)
        for (int b : buckets_before_[s]) wait(b);
      kernels_[s]->launch(stream_);
      if (ready)
        for (int b : buckets_after_[s]) ready(b);
    }
    if (wait)
      for (int b : buckets_before_.back()) wait(b);
  }

  // A bucket's reduction is enqueued by the communication thread (ordered before this stream's later work by
  // an event): launching its first reader waits until that enqueue has happened.
  // Only steps that may be captured count towards the capture, so replicas that share a plan between full
  // and partial batches capture at the same step.
  void run_eager(bool counts) {
    launch_all(hook_, wait_hook_);
    if (counts) ++eager_runs_;
  }

  void run_profiled() {
    TRAINER_CUDA_CHECK(cudaEventRecord(profile_events_[0], stream_));
    for (size_t s = 0; s < kernels_.size(); ++s) {
      if (wait_hook_)
        for (int b : buckets_before_[s]) wait_hook_(b);
      kernels_[s]->launch(stream_);
      TRAINER_CUDA_CHECK(cudaEventRecord(profile_events_[s + 1], stream_));
      if (hook_)
        for (int b : buckets_after_[s]) hook_(b);
    }
    if (wait_hook_)
      for (int b : buckets_before_.back()) wait_hook_(b);
    profile_pending_ = true;
  }

  // Adds the last profiled run's kernel times (waiting for it) to the totals.
  void collect_profile() {
    if (!profile_pending_) return;
    TRAINER_CUDA_CHECK(cudaEventSynchronize(profile_events_.back()));
    for (size_t s = 0; s < kernels_.size(); ++s) {
      float ms = 0;
      TRAINER_CUDA_CHECK(cudaEventElapsedTime(&ms, profile_events_[s], profile_events_[s + 1]));
      timings_[s].seconds += ms * 1e-3;
      ++timings_[s].runs;
    }
    profile_pending_ = false;
  }

  // The whole step as one graph: every kernel launch, library call and host fallback is recorded once and
  // replayed with one launch per step. With buckets to reduce, the capture hooks record each bucket's
  // collectives into the graph where the ready hook would hand it on, and its readers' wait where the wait
  // hook would block. A failed capture leaves the executable eager for good.
  void capture_and_launch() {
    cudaGraph_t graph = nullptr;
    TRAINER_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    std::string failure;
    std::exception_ptr reduction_error;
    try {
      static const std::function<void(int)> none;
      // A reduction that fails while captured cannot fall back: collectives already recorded into the
      // discarded graph would leave this rank out of step with the others. It ends the run instead.
      auto guarded = [&](const std::function<void(int)>& hook) -> std::function<void(int)> {
        if (!hook_) return none;
        return [&hook, &reduction_error](int b) {
          try {
            hook(b);
          } catch (...) {
            reduction_error = std::current_exception();
            throw;
          }
        };
      };
      launch_all(guarded(capture_ready_), guarded(capture_wait_));
    } catch (const std::exception& e) {
      // A call that is not capturable fails only here (the same launches ran eagerly in the first step), so
      // the step runs eagerly below; an error that is not about capture recurs there and is thrown then.
      failure = e.what();
    }
    cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    cudaError_t inst = !failure.empty()     ? cudaErrorStreamCaptureInvalidated
                       : end == cudaSuccess ? cudaGraphInstantiate(&graph_exec_, graph, 0)
                                            : end;
    if (graph) cudaGraphDestroy(graph);
    if (reduction_error) {
      if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
      graph_exec_ = nullptr;
      use_graph_ = false;
      cudaGetLastError();
      std::rethrow_exception(reduction_error);
    }
    if (inst != cudaSuccess) {
      cudaGetLastError();
      graph_exec_ = nullptr;
      use_graph_ = false;
      // With reductions recorded into the discarded graph, NCCL's count of this rank's collectives may no
      // longer match the other ranks': going on could hang until the watchdog fires. Said plainly instead.
      if (hook_)
        throw RuntimeError(
            fmt::format("CUDA graph capture of a replica's step failed ({}); run again with --no-cuda-graph",
                        failure.empty() ? cudaGetErrorString(inst) : failure));
      // Said once per plan, so a GPU run shows why its steps are not replayed.
      eprint("warning: CUDA graph capture failed ({}); this plan runs kernel by kernel\n",
             failure.empty() ? cudaGetErrorString(inst) : failure);
      run_eager(true);
      return;
    }
    reductions_captured_ = hook_ != nullptr;
    if (reductions_captured_) captured_key_ = capture_key_();
    TRAINER_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
  }

  int device_;
  cudaStream_t stream_;
  bool use_graph_;
  std::vector<KernelPtr> kernels_;
  std::vector<StepLabel> labels_;
  std::vector<std::vector<int>> buckets_after_;
  bool has_host_kernels_;
  std::unique_ptr<StepContext> host_ctx_;  // read by host fallback kernels
  DeviceStepContext* dev_ctx_;
  std::function<void(int)> hook_, wait_hook_, capture_ready_, capture_wait_;
  std::function<double()> capture_key_;
  bool reductions_captured_ = false;  // the graph holds the buckets' collectives, for captured_key_
  double captured_key_ = 0;
  std::vector<std::vector<int>> buckets_before_;  // per step (and one past the end): buckets it reads first
  cudaEvent_t done_ = nullptr;
  cudaGraphExec_t graph_exec_ = nullptr;
  int64_t eager_runs_ = 0;
  bool profiling_ = false, profile_pending_ = false;
  std::vector<cudaEvent_t> profile_events_;
  std::vector<KernelTiming> timings_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaOptions& o) : options_(o) {
    TRAINER_CUDA_CHECK(cudaSetDevice(o.device));
    cudaDeviceProp prop{};
    TRAINER_CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
    name_ = prop.name;
    libs_.device = o.device;
    libs_.sm = prop.major * 10 + prop.minor;
    memory_bytes_ = prop.totalGlobalMem;
    TRAINER_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
    BACKEND_CUBLAS_CHECK(lib::cublaslt().cublasLtCreate(&libs_.cublaslt));
    BACKEND_CUDNN_CHECK(lib::cudnn().cudnnCreate(&libs_.cudnn));
    BACKEND_CUDNN_CHECK(lib::cudnn().cudnnSetStream(libs_.cudnn, compute_));
    libs_.workspace_bytes = o.workspace_bytes;
    libs_.allow_tf32 = o.allow_tf32;
    libs_.workspace = device_malloc(o.workspace_bytes);
    dev_ctx_ = static_cast<DeviceStepContext*>(device_malloc(sizeof(DeviceStepContext)));
    TRAINER_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    for (Staging& s : staging_) {
      s.buffer = PinnedBuffer(kStagingBytes);
      s.device = device_malloc(kStagingBytes);
      TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&s.free, cudaEventDisableTiming));
      TRAINER_CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
    }
  }
  ~CudaBackend() override {
    cudaSetDevice(options_.device);
    cudaStreamSynchronize(compute_);
    cudaStreamSynchronize(copy_);
    for (Staging& s : staging_) {
      cudaEventDestroy(s.free);
      cudaEventDestroy(s.copied);
      device_free(s.device);
    }
    cudaStreamDestroy(copy_);
    device_free(dev_ctx_);
    device_free(libs_.workspace);
    lib::cudnn().cudnnDestroy(libs_.cudnn);
    lib::cublaslt().cublasLtDestroy(libs_.cublaslt);
    cudaStreamDestroy(compute_);
  }

  std::string name() const override { return fmt::format("cuda:{}", options_.device); }
  std::string description() const override {
    return fmt::format("{} (cuda:{}, sm_{}, {:.0f} GiB)", name_, options_.device, libs_.sm,
                       memory_bytes_ / 1073741824.0);
  }
  size_t alignment() const override { return 256; }
  bool supports(const Graph&, const Node& n) const override {
    return cuda::KernelRegistry::global().find(n.op) != nullptr;
  }

  std::unique_ptr<DeviceBuffer> allocate(size_t bytes) override {
    return std::make_unique<CudaBuffer>(options_.device, bytes, held_, compute_);
  }
  // Arenas, the library workspace and the step counters: what the process asked the device for.
  size_t memory_bytes() const override {
    return held_->load() + libs_.kernel_bytes->load() + libs_.workspace_bytes + sizeof(DeviceStepContext) +
           staging_.size() * kStagingBytes;
  }

  std::unique_ptr<Executable> prepare(const Program& p, DeviceBuffer& arena) override {
    TRAINER_ASSERT(arena.bytes() >= p.arena_bytes(), "arena of {} bytes for a plan of {}", arena.bytes(),
                   p.arena_bytes());
    TRAINER_CUDA_CHECK(cudaSetDevice(options_.device));
    const Graph& g = *p.graph;
    auto* base = static_cast<std::byte*>(arena.data());
    auto ptr = [&](ValueId v) -> void* {
      if (v == kNoValue) return nullptr;
      const Slot& s = p.slots[v];
      TRAINER_ASSERT(s.assigned, "value '{}' has no buffer", g.value(v).name);
      return base + s.offset;
    };
    auto host_ctx = std::make_unique<StepContext>();
    std::vector<KernelPtr> kernels;
    std::vector<StepLabel> labels;
    std::set<std::string> host_ops;
    for (NodeId id : p.steps) {
      const Node& n = g.node(id);
      KernelArgs args{g, n, {}, {}, dev_ctx_, &libs_};
      for (ValueId v : n.inputs) args.inputs.push_back(ptr(v));
      for (ValueId v : n.outputs) args.outputs.push_back(ptr(v));
      KernelPtr k;
      if (const KernelFactory* f = KernelRegistry::global().find(n.op)) k = (*f)(args);
      if (!k) {
        k = std::make_unique<HostFallbackKernel>(g, n, args.inputs, args.outputs, host_ctx.get());
        host_ops.insert(n.op);
      }
      kernels.push_back(std::move(k));
      std::string shapes;
      for (ValueId v : n.inputs)
        if (v != kNoValue) shapes += fmt::format("{}{}", shapes.empty() ? "" : " ", g.value(v).shape.str());
      labels.push_back({n.op, n.name, shapes});
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
    auto exec = std::make_unique<CudaExecutable>(options_.device, compute_, options_.cuda_graph,
                                                 std::move(kernels), std::move(labels), std::move(after),
                                                 !host_ops.empty(), std::move(host_ctx), dev_ctx_);
    exec->set_buckets_before(std::move(before));
    if (!host_ops.empty()) report_host_fallbacks(options_.device, host_ops);
    return exec;
  }

  void* native_stream() const override { return compute_; }

  // Host bytes go through a pinned staging buffer, so the copy is asynchronous and the caller may reuse its
  // memory at once. Two buffers alternate: filling one waits only for the copy out of the other before last.
  void copy_to_device(DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) override {
    TRAINER_CUDA_CHECK(cudaSetDevice(options_.device));
    auto* d = static_cast<std::byte*>(dst.data()) + offset;
    const auto* s = static_cast<const std::byte*>(src);
    while (bytes > 0) {
      const size_t n = std::min(bytes, kStagingBytes);
      Staging& st = staging_[next_staging_];
      next_staging_ = (next_staging_ + 1) % staging_.size();
      TRAINER_CUDA_CHECK(cudaEventSynchronize(st.free));
      std::memcpy(st.buffer.data(), s, n);
      if (n >= kCopyStreamBytes) {
        // A batch: the slow host-to-device copy runs on the copy stream, overlapping the step the compute
        // stream is running; the compute stream then only waits for it and moves it into the arena (a
        // device-to-device copy, at memory speed) in its own order, after the readers of the old value.
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(st.device, st.buffer.data(), n, cudaMemcpyHostToDevice, copy_));
        TRAINER_CUDA_CHECK(cudaEventRecord(st.copied, copy_));
        TRAINER_CUDA_CHECK(cudaStreamWaitEvent(compute_, st.copied, 0));
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(d, st.device, n, cudaMemcpyDeviceToDevice, compute_));
      } else {
        TRAINER_CUDA_CHECK(cudaMemcpyAsync(d, st.buffer.data(), n, cudaMemcpyHostToDevice, compute_));
      }
      TRAINER_CUDA_CHECK(cudaEventRecord(st.free, compute_));
      d += n;
      s += n;
      bytes -= n;
    }
  }

  // One staging buffer each for the inputs and the labels; a third chunk waits for the first's move into the
  // arena, which the compute stream makes after the step in flight.
  size_t unblocked_copy_bytes() const override { return kStagingBytes; }

  void copy_to_host(void* dst, const DeviceBuffer& src, size_t offset, size_t bytes) override {
    TRAINER_CUDA_CHECK(cudaSetDevice(options_.device));
    const auto* s = static_cast<const std::byte*>(src.data()) + offset;
    auto* d = static_cast<std::byte*>(dst);
    Staging& st = staging_[next_staging_];
    TRAINER_CUDA_CHECK(cudaEventSynchronize(st.free));
    while (bytes > 0) {
      const size_t n = std::min(bytes, kStagingBytes);
      TRAINER_CUDA_CHECK(cudaMemcpyAsync(st.buffer.data(), s, n, cudaMemcpyDeviceToHost, compute_));
      TRAINER_CUDA_CHECK(cudaStreamSynchronize(compute_));
      std::memcpy(d, st.buffer.data(), n);
      d += n;
      s += n;
      bytes -= n;
    }
  }

  std::unique_ptr<Event> record_event() override {
    return std::make_unique<CudaEvent>(options_.device, compute_);
  }
  void synchronize() override {
    TRAINER_CUDA_CHECK(cudaSetDevice(options_.device));
    TRAINER_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }

 private:
  static constexpr size_t kStagingBytes = size_t{4} << 20;
  struct Staging {
    PinnedBuffer buffer;
    void* device = nullptr;        // the batch's landing place on the device, before its place in the arena
    cudaEvent_t free = nullptr;    // recorded on the compute stream after the last copy out of the buffers
    cudaEvent_t copied = nullptr;  // recorded on the copy stream after the host-to-device copy
  };
  // Copies this large go host -> device on the copy stream, while the compute stream runs the step before.
  static constexpr size_t kCopyStreamBytes = size_t{64} << 10;

  CudaOptions options_;
  std::string name_;
  size_t memory_bytes_ = 0;
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ =
      nullptr;  // host-to-device copies of batches; room beside it for a communication stream
  CudaLibs libs_;
  DeviceStepContext* dev_ctx_ = nullptr;
  std::array<Staging, 2> staging_;
  size_t next_staging_ = 0;
  std::shared_ptr<std::atomic<size_t>> held_ = std::make_shared<std::atomic<size_t>>(0);
};

}  // namespace

const KernelRegistry& KernelRegistry::global() {
  static const KernelRegistry r = [] {
    KernelRegistry k;
    register_elementwise_kernels(k);
    register_reduce_kernels(k);
    register_blas_kernels(k);
    register_dnn_kernels(k);
    register_rnn_kernels(k);
    return k;
  }();
  return r;
}

}  // namespace cuda

bool cuda_built() {
  return true;
}

CudaDevices cuda_devices() {
  CudaDevices out;
  int count = 0;
  cudaError_t s = cudaGetDeviceCount(&count);
  if (s != cudaSuccess) {
    cudaGetLastError();
    switch (s) {
      case cudaErrorNoDevice:
        out.why_none = "no CUDA device";
        break;
      case cudaErrorInsufficientDriver:
        out.why_none = "no CUDA driver, or one older than CUDA " + std::to_string(CUDART_VERSION / 1000);
        break;
      default:
        out.why_none = cudaGetErrorString(s);
    }
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    out.devices.push_back(
        {i, prop.name, prop.major * 10 + prop.minor, prop.totalGlobalMem,
         fmt::format("{:04x}:{:02x}:{:02x}.0", prop.pciDomainID, prop.pciBusID, prop.pciDeviceID)});
  }
  if (out.devices.empty()) out.why_none = "no CUDA device";
  return out;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options) {
  CudaDevices found = cuda_devices();
  bool present = false;
  for (const CudaDeviceInfo& d : found.devices) present = present || d.index == options.device;
  if (!present)
    throw InputError(fmt::format("cuda:{}", options.device),
                     found.devices.empty()
                         ? fmt::format("CUDA device {} does not exist: {}", options.device, found.why_none)
                         : fmt::format("CUDA device {} does not exist: there are {}", options.device,
                                       found.devices.size()),
                     "run on the CPU with --device cpu");
  return std::make_unique<cuda::CudaBackend>(options);
}

uint64_t cuda_allocation_calls() {
  return cuda::g_allocation_calls.load();
}

}  // namespace trainer::engine
