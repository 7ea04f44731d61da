// Op family 'conv': schemas, shape inference, gradient rules and examples.
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

void register_conv_ops(OpRegistry& r) {}

}  // namespace trainer::engine::ops
