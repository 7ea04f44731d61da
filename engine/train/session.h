// A Session runs one graph on one backend: it plans the graph once, allocates the arena, uploads the
// initializers, binds the kernels, and then runs steps, feeding inputs and fetching values without
// allocating.
#pragma once

#include <memory>

#include "engine/backend/backend.h"
#include "engine/plan/program.h"

namespace trainer::engine {

class Session {
 public:
  Session(std::shared_ptr<const Graph> graph, Backend& backend, PlanOptions options = {});

  const Program& program() const { return program_; }
  const Graph& graph() const { return *program_.graph; }
  Backend& backend() { return backend_; }

  // Copies host bytes into a value's buffer (a fed input or a persistent value). Checks the size.
  void write(ValueId v, const void* host, size_t bytes);
  void write(ValueId v, const Tensor& t);
  void read(ValueId v, void* host, size_t bytes) const;
  Tensor read(ValueId v) const;

  void run(const StepContext& ctx);
  // Re-uploads every initializer (parameters, constants, state) from the graph.
  void reset_initializers();
  Executable& executable() { return *exec_; }

 private:
  Backend& backend_;
  Program program_;
  std::unique_ptr<DeviceBuffer> arena_;
  std::unique_ptr<Executable> exec_;
};

}  // namespace trainer::engine
