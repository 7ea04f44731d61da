// A Session runs one planned graph on one backend: it binds the kernels to an arena (its own, or one shared
// with the device's other plans), and then runs steps, feeding inputs and fetching values without allocating.
#pragma once

#include <memory>
#include <unordered_set>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/plan/program.h"

namespace trainer::engine {

class Session {
 public:
  // Plans the graph, allocates its own arena and uploads every initializer.
  Session(std::shared_ptr<const Graph> graph, Backend& backend, PlanOptions options = {});
  // Binds an already planned program to an arena it may share with other sessions. Initializers are uploaded
  // except those whose arena offset is in `uploaded` (another session already wrote them); the offsets
  // written are added.
  Session(Program program, Backend& backend, std::shared_ptr<DeviceBuffer> arena,
          std::unordered_set<size_t>* uploaded);

  const Program& program() const { return program_; }
  const Graph& graph() const { return *program_.graph; }
  Backend& backend() { return backend_; }

  // Copies host bytes into a value's buffer (a fed input or a persistent value). Checks the size.
  void write(ValueId v, const void* host, size_t bytes);
  void write(ValueId v, const Tensor& t);
  void read(ValueId v, void* host, size_t bytes) const;
  Tensor read(ValueId v) const;

  void run(const StepContext& ctx);
  // Where a value's buffer is, in the backend's memory (a device pointer on a GPU): for collectives.
  void* device_pointer(ValueId v) const;
  // Re-uploads every initializer (parameters, constants, state) from the graph.
  void reset_initializers();
  Executable& executable() { return *exec_; }

 private:
  void upload_initializers(std::unordered_set<size_t>* uploaded);

  Backend& backend_;
  Program program_;
  std::shared_ptr<DeviceBuffer> arena_;
  std::unique_ptr<Executable> exec_;
};

// Every plan one device runs shares one arena. Parameters and optimizer state live once, by name, in its
// persistent region, so the training plans for the full and the last partial batch, evaluation and prediction
// all see the same weights; the transient region is shared too, because the plans never run at the same time:
// a plan's fed inputs and outputs are valid until another plan of the device runs.
// What the kernels of `program` hold outside the arena on `backend` (Backend::held_bytes of each step: a
// recurrence's records), for the memory a plan is said to take.
size_t held_bytes(const Backend& backend, const Program& program);

class DevicePlans {
 public:
  explicit DevicePlans(Backend& backend) : backend_(backend) {}
  // Adds a graph to plan; returns its index. All graphs are added before finalize().
  int add(std::shared_ptr<const Graph> graph, PlanOptions options = {});
  // Plans every graph against one persistent layout, allocates the arena, uploads initializers (the first
  // graph holding a persistent value uploads it) and prepares the executables.
  void finalize();
  Session& session(int i) { return *sessions_.at(i); }
  int size() const { return static_cast<int>(graphs_.size()); }
  size_t arena_bytes() const { return arena_ ? arena_->bytes() : 0; }
  // What the plans' kernels hold outside the arena (Backend::held_bytes: a recurrence's records).
  size_t held_bytes() const;
  const PersistentLayout& layout() const { return layout_; }

 private:
  Backend& backend_;
  std::vector<std::pair<std::shared_ptr<const Graph>, PlanOptions>> graphs_;
  PersistentLayout layout_;
  std::shared_ptr<DeviceBuffer> arena_;
  std::vector<std::unique_ptr<Session>> sessions_;
};

}  // namespace trainer::engine
