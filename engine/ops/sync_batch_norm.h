// Synchronized batch normalization (Keras's BatchNormalization(synchronized=True), PyTorch's SyncBatchNorm):
// a training-mode BatchNormalization rewritten into IR ops whose batch statistics are those of the global
// batch across data-parallel replicas. The per-channel mean and the biased variance are each taken over a
// replica's own rows and then averaged across replicas by ReplicaMean (two passes, so the variance loses no
// precision to cancellation); backward gets its two cross-replica sums from ReplicaMean's gradient. One
// device computes what BatchNormalization computes, to rounding.
#pragma once

#include "engine/ir/graph.h"

namespace trainer::engine::ops {

// Rewrites node `bn` when it is a BatchNormalization in training mode, keeping its output values (ids and
// names), so the running statistics' updates stay bound; returns whether it did. Throws InputError naming the
// node for an input that is not f32 or f64.
bool synchronize_batch_norm(Graph& g, NodeId bn);

// Every training-mode BatchNormalization of `g`; returns how many were rewritten.
int synchronize_batch_norms(Graph& g);

}  // namespace trainer::engine::ops
