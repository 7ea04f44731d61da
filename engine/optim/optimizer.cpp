// Optimizer graph construction.
#include "engine/optim/optimizer.h"

#include "engine/ir/op_schema.h"

namespace trainer::engine {

std::vector<OptimizerState> add_optimizer(Graph& g, const std::vector<std::pair<ValueId, ValueId>>& params_and_grads,
                                          ValueId lr, ValueId step, const OptimizerConfig& config) {
  throw InternalError("add_optimizer: not built yet");
}

}  // namespace trainer::engine
