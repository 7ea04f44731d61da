// Session: arena, initializer upload and kernel binding, then steps. DevicePlans: one arena for many plans.
#include "engine/train/session.h"

#include <fmt/format.h>

#include "engine/util/error.h"

namespace trainer::engine {

Session::Session(std::shared_ptr<const Graph> graph, Backend& backend, PlanOptions options)
    : backend_(backend) {
  options.alignment = std::max(options.alignment, backend.alignment());
  program_ = plan_program(std::move(graph), options);
  arena_ = backend_.allocate(program_.arena_bytes());
  upload_initializers(nullptr);
  exec_ = backend_.prepare(program_, *arena_);
}

Session::Session(Program program, Backend& backend, std::shared_ptr<DeviceBuffer> arena,
                 std::unordered_set<size_t>* uploaded)
    : backend_(backend), program_(std::move(program)), arena_(std::move(arena)) {
  TRAINER_ASSERT(arena_->bytes() >= program_.arena_bytes(), "arena of {} bytes for a plan of {}",
                 arena_->bytes(), program_.arena_bytes());
  upload_initializers(uploaded);
  exec_ = backend_.prepare(program_, *arena_);
}

void Session::reset_initializers() {
  upload_initializers(nullptr);
}

void Session::upload_initializers(std::unordered_set<size_t>* uploaded) {
  const Graph& g = *program_.graph;
  for (ValueId v = 0; v < g.num_values(); ++v) {
    const Tensor* t = g.initializer(v);
    if (!t || !program_.slots[v].assigned || program_.alias_root[v] != v) continue;
    if (uploaded && !uploaded->insert(program_.slots[v].offset).second) continue;
    write(v, *t);
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

void* Session::device_pointer(ValueId v) const {
  const Slot& s = program_.slots.at(v);
  TRAINER_ASSERT(s.assigned, "value '{}' has no buffer", graph().value(v).name);
  return static_cast<std::byte*>(arena_->data()) + s.offset;
}

void Session::run(const StepContext& ctx) {
  exec_->run(ctx);
}

int DevicePlans::add(std::shared_ptr<const Graph> graph, PlanOptions options) {
  TRAINER_ASSERT(!arena_, "DevicePlans::add after finalize");
  graphs_.emplace_back(std::move(graph), std::move(options));
  return static_cast<int>(graphs_.size()) - 1;
}

void DevicePlans::finalize() {
  // Pass 1 grows the shared layout with every graph's persistent values; pass 2 plans each graph again with
  // the final layout, so every transient region starts after all persistent values.
  auto plan_all = [&] {
    std::vector<Program> programs;
    for (size_t i = 0; i < graphs_.size(); ++i) {
      PlanOptions o = graphs_[i].second;
      o.alignment = std::max(o.alignment, backend_.alignment());
      o.layout = &layout_;
      o.constant_namespace = fmt::format("plan{}", i);
      programs.push_back(plan_program(graphs_[i].first, o));
    }
    return programs;
  };
  plan_all();
  std::vector<Program> programs = plan_all();
  size_t bytes = 0;
  for (const Program& p : programs) bytes = std::max(bytes, p.arena_bytes());
  arena_ = backend_.allocate(bytes);
  std::unordered_set<size_t> uploaded;
  for (Program& p : programs)
    sessions_.push_back(std::make_unique<Session>(std::move(p), backend_, arena_, &uploaded));
}

size_t held_bytes(const Backend& backend, const Program& program) {
  size_t bytes = 0;
  for (NodeId n : program.steps) bytes += backend.held_bytes(*program.graph, program.graph->node(n));
  return bytes;
}

size_t DevicePlans::held_bytes() const {
  size_t bytes = 0;
  for (const auto& s : sessions_) bytes += engine::held_bytes(backend_, s->program());
  return bytes;
}

}  // namespace trainer::engine
