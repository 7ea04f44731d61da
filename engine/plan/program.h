// A Program: one step of a graph, planned once. The node order, every value's place in the device arena, the
// gradient buckets whose reduction can start as soon as backward has produced them, and the plan's signature.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine {

struct Slot {
  size_t offset = 0;
  size_t bytes = 0;
  bool assigned = false;
};

// Gradients that become ready together. Reduction of bucket b may start right after step `ready_after_step`
// and must finish before step `needed_by_step` (the first reader of any of its gradients, usually an
// optimizer update). The output of each ReplicaMean node (synchronized batch normalization's statistics and
// their gradients) is a bucket of its own, reduced the same way.
struct GradBucket {
  std::vector<ValueId> grads;
  size_t bytes = 0;
  int ready_after_step = -1;
  int needed_by_step = -1;
};

struct Program {
  std::shared_ptr<const Graph> graph;
  std::vector<NodeId> steps;    // execution order
  std::vector<Slot> slots;      // indexed by ValueId; unassigned for values nothing uses
  std::vector<int> first_step;  // per value: step that writes it (-1: before the step, persistent or fed)
  std::vector<int> last_step;   // per value: last step that reads it (steps.size(): kept to the end)
  size_t alignment = 64;
  size_t persistent_bytes = 0;  // parameters, constants, optimizer state: the arena's first region
  size_t transient_bytes = 0;   // peak of everything else, after liveness-based reuse
  size_t naive_bytes = 0;       // what one buffer per value would take
  size_t transient_base =
      0;  // where the transient region starts (persistent_bytes unless a layout is shared)
  size_t arena_bytes() const { return transient_base + transient_bytes; }
  std::vector<GradBucket> buckets;
  uint64_t signature = 0;  // hash of ops, attributes, types and shapes: equal plans, equal signatures

  // Two values whose buffers are live at the same step overlap nowhere (unless one is a view or in-place
  // alias of the other). Used by tests and debug builds.
  bool aliases(ValueId a, ValueId b) const { return alias_root[a] == alias_root[b]; }
  std::vector<ValueId> alias_root;  // values sharing a buffer by view/in-place/update share a root
};

// Where persistent values live when several plans of one device share an arena (training steps for the full
// and the last partial batch, evaluation, prediction): parameters and state by name, so every plan sees the
// same weights; constants under their plan's own namespace, since two plans may hold different constants of
// one name.
struct PersistentLayout {
  std::unordered_map<std::string, Slot> slots;
  size_t bytes = 0;  // end of the persistent region
};

struct PlanOptions {
  size_t alignment = 64;     // bytes; CUDA uses 256
  bool reuse_memory = true;  // false: one buffer per value (for debugging and as the test's naive reference)
  bool inplace = true;       // let elementwise ops write over an input that dies with them
  size_t bucket_bytes = 25u << 20;
  size_t first_bucket_bytes = 1000000;  // the first bucket's size: min(this, bucket_bytes)
  // Values to pack into reduction buckets, usually the parameter gradients; the schedule then computes them
  // as early as it can (weight gradients first) and runs their readers in the order they were produced.
  std::vector<ValueId> gradients;
  // Values the schedule computes as early as those gradients, without bucketing them: each step's own
  // gradients where `gradients` are sums accumulated from them (gradient accumulation).
  std::vector<ValueId> early;
  // Shared persistent placement (see PersistentLayout); values it lacks are appended to it. The transient
  // region then starts at max(transient_base, layout->bytes).
  PersistentLayout* layout = nullptr;
  std::string constant_namespace;
  size_t transient_base = 0;
};

Program plan_program(std::shared_ptr<const Graph> graph, const PlanOptions& options = {});

}  // namespace trainer::engine
