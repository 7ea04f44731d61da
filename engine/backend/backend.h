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

// A Program bound to an arena, ready to run.
class Executable {
 public:
  virtual ~Executable() = default;
  // Enqueues one step. On the CPU it has finished when this returns; on a GPU call Backend::synchronize().
  virtual void run(const StepContext& ctx) = 0;
  // Called (on the executing thread) as soon as the gradients of bucket `b` are written, before later steps
  // run. The data-parallel layer starts the bucket's reduction here. Optional.
  virtual void set_bucket_ready_hook(std::function<void(int bucket)> hook) = 0;
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
  virtual void copy_to_host(void* dst, const DeviceBuffer& src, size_t offset, size_t bytes) = 0;
  // An event after everything enqueued so far.
  virtual std::unique_ptr<Event> record_event() = 0;
  // Waits for everything enqueued.
  virtual void synchronize() = 0;
};

struct CpuOptions {
  int threads = 0;  // 0: OMP_NUM_THREADS when set, else all hardware threads
};
std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options = {});

}  // namespace trainer::engine
