// Synchronized batch normalization (Keras's BatchNormalization(synchronized=True), PyTorch's SyncBatchNorm):
// a training-mode BatchNormalization rewritten into IR ops whose batch statistics are those of the global
// batch across data-parallel replicas. The per-channel mean and the biased variance are each taken over a
// replica's own rows and then averaged across replicas by ReplicaMean (two passes, so the variance loses no
// precision to cancellation); backward gets its two cross-replica sums from ReplicaMean's gradient. One
// device computes what BatchNormalization computes, to rounding.
#pragma once

#include <string>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine::ops {

// A training-mode batch normalization of x (N x C x ..., statistics per channel over every other axis) as IR
// ops: the mean, then the biased variance around it, each over this replica's rows or, across_replicas,
// averaged across the replicas by ReplicaMean. With `weights` (broadcast against x, e.g. [R, 1] for the rows
// of a masked sequence), the statistics are weighted means: Keras's masked moments. scale, bias and the
// running statistics may be kNoValue.
struct BatchNormInputs {
  std::string name;  // the prefix of every node and constant made
  ValueId x = kNoValue, scale = kNoValue, bias = kNoValue;
  ValueId running_mean = kNoValue, running_var = kNoValue;  // the old values, read for the updates
  ValueId weights = kNoValue;
  double epsilon = 1e-5, momentum = 0.9;
  bool across_replicas = false;
};
struct BatchNormGraph {
  ValueId y = kNoValue;
  ValueId running_mean = kNoValue, running_var = kNoValue;  // the new values (kNoValue without old ones)
};
BatchNormGraph batch_norm_graph(Graph& g, const BatchNormInputs& in);

// Rewrites node `bn` when it is a BatchNormalization in training mode, keeping its output values (ids and
// names), so the running statistics' updates stay bound; returns whether it did. Throws InputError naming the
// node for an input that is not f32 or f64.
bool synchronize_batch_norm(Graph& g, NodeId bn);

// The live training-mode BatchNormalization nodes of `g` (those synchronize_batch_norm rewrites).
std::vector<NodeId> training_batch_norms(const Graph& g);

}  // namespace trainer::engine::ops
