// Fusion rewrites on the IR, applied before autodiff: the erf formula of GELU into Gelu, bias + activation
// into one GEMM, and softmax followed by a cross-entropy on probabilities into one stable log-softmax
// cross-entropy. Fused ops carry their own gradients. The fused node takes over the chain's final value, so
// value ids and names held by callers stay valid.
#pragma once

#include "engine/ir/graph.h"

namespace trainer::engine {

struct FusionReport {
  int gemm_bias_activation = 0;
  int softmax_cross_entropy = 0;
  int sigmoid_binary_cross_entropy = 0;
  int erf_gelu = 0;
};

struct FusionOptions {
  bool gemm_bias_activation = true;
  bool softmax_cross_entropy = true;  // also sigmoid + binary cross-entropy into the logits form
  bool erf_gelu = true;               // x * (erf(x / sqrt 2) + 1) * 0.5 into Gelu
};

FusionReport fuse(Graph& g, const FusionOptions& options = {});

}  // namespace trainer::engine
