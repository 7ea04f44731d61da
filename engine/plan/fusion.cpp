// Fusion rewrites: pattern matching on single-consumer chains, replaced by one private fused node.
#include "engine/plan/fusion.h"

#include "engine/ir/op_schema.h"

namespace trainer::engine {

FusionReport fuse(Graph& g, const FusionOptions& options) { return {}; }

}  // namespace trainer::engine
