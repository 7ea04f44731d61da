// The narrow interface every backend implements, in three parts as in ggml: device buffers (allocation and
// alignment), the device (name, supports(op)), and execution (prepare a Program once, run it per step,
// events, synchronize). The CPU runs steps inline; CUDA enqueues them on a stream. Backend headers stay
// behind this file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/plan/program.h"

namespace trainer::engine {

// Per-step inputs every kernel may read: the step index and seed key the counter-based RNG (Dropout).
struct StepContext {
  uint64_t step = 0;
  uint64_t seed = 0;
  // Index of this replica's first sample in the global batch. Per-element random numbers are keyed by the
  // global element index (sample_offset * elements per sample + local index), so N replicas draw what one
  // device would.
  uint64_t sample_offset = 0;
  // Whether a backend that captures steps into a replayable graph may capture or replay this one. Replicas
  // whose steps hold collectives must decide alike (NCCL: a collective is captured on every rank or on none),
  // so the data-parallel loop passes what all of them know: false for a partial batch, whose shares differ.
  bool may_capture = true;
};

// Device memory: move-only, freed by its destructor.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() const = 0;
  virtual size_t bytes() const = 0;
};

// A point in a backend's stream of work. The CPU's events are complete when recorded; a GPU's complete when
// the work enqueued before them has run. The data-parallel layer orders communication after computation with
// them.
class Event {
 public:
  virtual ~Event() = default;
  virtual bool done() const = 0;
  virtual void synchronize() = 0;  // blocks until done
};

// Time spent in one kernel of a plan over the profiled runs (trainer bench).
struct KernelTiming {
  std::string op;      // the node's op
  std::string node;    // the node's name
  std::string shapes;  // its input shapes, "[64, 784] [784, 512]"
  double seconds = 0;  // total over `runs`
  int64_t runs = 0;
};

// A Program bound to an arena, ready to run.
class Executable {
 public:
  virtual ~Executable() = default;
  // Enqueues one step. On the CPU it has finished when this returns; on a GPU call Backend::synchronize().
  virtual void run(const StepContext& ctx) = 0;
  // Called (on the executing thread) as soon as the gradients of bucket `b` are written, before later steps
  // run. The data-parallel layer starts the bucket's reduction here. Optional.
  virtual void set_bucket_ready_hook(std::function<void(int bucket)> hook) = 0;
  // Called (on the executing thread) before the first step that reads a gradient of bucket `b`
  // (GradBucket::needed_by_step), so a reduction started by the ready hook on another thread can finish while
  // the steps in between run. Buckets nothing reads are waited for when the step ends. Optional: a backend
  // that orders communication by itself (streams and events) may ignore it.
  virtual void set_bucket_wait_hook(std::function<void(int bucket)> hook) {}
  // For a backend that captures steps into a replayable graph (CUDA): called in place of the two hooks above
  // while a step with them is being captured. `ready` enqueues the bucket's reduction on the calling thread,
  // into the capture; `wait` orders the later work after it. Replays then run the reductions as part of the
  // graph and call no hook. `key` names what the captured reductions depend on (the replica's weight in the
  // sum): a step whose key differs from the captured one runs kernel by kernel with the hooks above. Without
  // capture hooks, a step with hooks is never captured. Optional.
  virtual void set_bucket_capture_hooks(std::function<void(int bucket)> ready,
                                        std::function<void(int bucket)> wait, std::function<double()> key) {}
  // Per-kernel timing (steady clock on the CPU, CUDA events on a GPU). While on, runs are timed kernel by
  // kernel; a GPU then runs eagerly, not by graph replay. Optional: the default records nothing.
  virtual void set_profiling(bool on) {}
  // The timings since profiling was turned on, in plan order.
  virtual std::vector<KernelTiming> kernel_timings() const { return {}; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu", "cuda:0"
  virtual std::string description() const = 0;  // human-readable device description
  virtual size_t alignment() const = 0;         // arena offsets are multiples of this
  virtual bool supports(const Graph& g, const Node& n) const = 0;

  virtual std::unique_ptr<DeviceBuffer> allocate(size_t bytes) = 0;
  // Binds kernels to the arena once: every pointer, primitive and workspace is fixed here, none per step.
  virtual std::unique_ptr<Executable> prepare(const Program& program, DeviceBuffer& arena) = 0;

  virtual void copy_to_device(DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) = 0;
  // The largest copy_to_device that, made twice in a row (a batch's inputs and labels), never waits for work
  // already enqueued: a larger one may wait for the step in flight. Unlimited where copies never wait so.
  virtual size_t unblocked_copy_bytes() const { return SIZE_MAX; }
  virtual void copy_to_host(void* dst, const DeviceBuffer& src, size_t offset, size_t bytes) = 0;
  // An event after everything enqueued so far.
  virtual std::unique_ptr<Event> record_event() = 0;
  // Waits for everything enqueued.
  virtual void synchronize() = 0;
  // Memory the backend holds now: its buffers (arenas) plus its own (a GPU's library workspace, staging).
  virtual size_t memory_bytes() const = 0;
  // Optional: the bytes the kernel of node n would hold outside the arena once prepared (a recurrence's
  // records of the forward pass and its workspaces, a convolution's reordered operands), so that the memory a
  // plan is said to take counts them.
  virtual size_t held_bytes(const Graph& g, const Node& n) const { return 0; }
  // The stream a GPU backend runs steps on (a cudaStream_t), for communicators that order themselves after
  // it; null on the CPU.
  virtual void* native_stream() const { return nullptr; }
};

struct CpuOptions {
  int threads = 0;  // 0: OMP_NUM_THREADS when set, else all hardware threads
};
std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options = {});
// Whether this CPU runs oneDNN's bf16 kernels (they need AVX-512); precision = "bf16" on the CPU needs it.
bool cpu_supports_bf16();
// What CpuOptions::threads = 0 means: OMP_NUM_THREADS when set, else every hardware thread.
int default_cpu_threads();

// ---- CUDA (engine/backend/cuda; a build without CUDA has stubs that find no device) ----
struct CudaDeviceInfo {
  int index = 0;
  std::string name;         // "NVIDIA H200"
  int sm = 0;               // compute capability as major * 10 + minor: 90
  size_t memory_bytes = 0;  // total
  std::string pci_bus_id;   // "0000:1b:00.0"
};
struct CudaDevices {
  std::vector<CudaDeviceInfo> devices;
  std::string why_none;  // when there are none: "built without CUDA", "no CUDA driver", "no CUDA device", ...
};
bool cuda_built();           // compiled with the CUDA backend
CudaDevices cuda_devices();  // never throws

struct CudaOptions {
  int device = 0;
  bool allow_tf32 = false;  // [train] precision = "tf32": TF32 in GEMMs and convolutions
  bool cuda_graph = true;   // capture the step after warm-up and replay it
  // cuBLASLt/cuDNN workspace, allocated once per backend; 32 MiB is what cuBLASLt asks for on Hopper
  size_t workspace_bytes = size_t{32} << 20;
};
// Throws InputError when the device does not exist or the build has no CUDA.
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options = {});
// cudaMalloc/cudaFree/cudaMallocHost/cudaFreeHost calls made by the CUDA backends of this process: tests
// prove that steady-state steps make none.
uint64_t cuda_allocation_calls();

}  // namespace trainer::engine
