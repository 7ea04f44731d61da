// Session: plan, arena, initializer upload and kernel binding, then steps.
#include "engine/train/session.h"

#include "engine/util/error.h"

namespace trainer::engine {

Session::Session(std::shared_ptr<const Graph> graph, Backend& backend, PlanOptions options)
    : backend_(backend) {
  options.alignment = std::max(options.alignment, backend.alignment());
  program_ = plan_program(std::move(graph), options);
  arena_ = backend_.allocate(program_.arena_bytes());
  reset_initializers();
  exec_ = backend_.prepare(program_, *arena_);
}

void Session::reset_initializers() {
  const Graph& g = *program_.graph;
  for (ValueId v = 0; v < g.num_values(); ++v) {
    const Tensor* t = g.initializer(v);
    if (t && program_.slots[v].assigned && program_.alias_root[v] == v) write(v, *t);
  }
}

void Session::write(ValueId v, const void* host, size_t bytes) {
  const Slot& s = program_.slots.at(v);
  TRAINER_ASSERT(s.assigned, "value '{}' has no buffer", graph().value(v).name);
  if (bytes != s.bytes)
    throw InputError(graph().value(v).name,
                     fmt::format("'{}' takes {} bytes ({} {}), got {}", graph().value(v).name, s.bytes,
                                 dtype_name(graph().value(v).dtype), graph().value(v).shape.str(), bytes),
                     "check the shape of the data");
  backend_.copy_to_device(*arena_, s.offset, host, bytes);
}

void Session::write(ValueId v, const Tensor& t) {
  const Value& val = graph().value(v);
  if (t.dtype() != val.dtype || t.shape() != val.shape)
    throw InputError(val.name,
                     fmt::format("'{}' is {} {}, got {} {}", val.name, dtype_name(val.dtype), val.shape.str(),
                                 dtype_name(t.dtype()), t.shape().str()),
                     "check the shape and type of the data");
  write(v, t.raw(), t.nbytes());
}

void Session::read(ValueId v, void* host, size_t bytes) const {
  const Slot& s = program_.slots.at(v);
  TRAINER_ASSERT(s.assigned && s.bytes == bytes, "read of '{}'", graph().value(v).name);
  backend_.synchronize();
  backend_.copy_to_host(host, *arena_, s.offset, bytes);
}

Tensor Session::read(ValueId v) const {
  const Value& val = graph().value(v);
  Tensor t(val.dtype, val.shape);
  read(v, t.raw(), t.nbytes());
  return t;
}

void Session::run(const StepContext& ctx) {
  exec_->run(ctx);
}

}  // namespace trainer::engine
