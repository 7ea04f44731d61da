// The one list of every op family. Adding a family adds one line here; adding an op touches only its family
// file.
#include "engine/ir/op_schema.h"

namespace trainer::engine {

namespace ops {
void register_elementwise_ops(OpRegistry& r);
void register_shape_ops(OpRegistry& r);
void register_reduce_ops(OpRegistry& r);
void register_matmul_ops(OpRegistry& r);
void register_conv_ops(OpRegistry& r);
void register_norm_ops(OpRegistry& r);
void register_loss_ops(OpRegistry& r);
void register_rnn_ops(OpRegistry& r);
void register_optimizer_ops(OpRegistry& r);
}  // namespace ops

void register_all_ops(OpRegistry& r) {
  ops::register_elementwise_ops(r);
  ops::register_shape_ops(r);
  ops::register_reduce_ops(r);
  ops::register_matmul_ops(r);
  ops::register_conv_ops(r);
  ops::register_norm_ops(r);
  ops::register_loss_ops(r);
  ops::register_rnn_ops(r);
  ops::register_optimizer_ops(r);
}

}  // namespace trainer::engine
