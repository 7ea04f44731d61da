// Mixed precision as a plan rewrite: with bf16 (or fp16), every GEMM and convolution of the training graph
// (forward and backward) reads its float operands cast to the low precision and its results are cast back to
// f32. Parameters, optimizer state, activations between those ops and every other op stay f32: fp32 master
// weights, with the heavy math on the tensor cores at fp32 accumulation (the kernels' compute type).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/ir/graph.h"

namespace trainer::engine {

enum class Precision {
  fp32,  // IEEE single precision everywhere (TF32 off)
  tf32,  // fp32 tensors; GPU GEMMs and convolutions may round operands to TF32 (no graph change)
  bf16,  // GEMMs and convolutions on bf16 operands
  fp16,  // GEMMs and convolutions on fp16 operands, with dynamic loss scaling
};

std::string_view precision_name(Precision p);
std::optional<Precision> parse_precision(std::string_view s);  // "fp32", "tf32", "bf16", "fp16"

// The ops that run in the low precision under bf16/fp16; everything else keeps its dtype.
bool runs_in_low_precision(const std::string& op);

struct PrecisionReport {
  int nodes = 0;  // nodes moved to the low precision
  int casts = 0;  // Cast nodes added (one per value and direction, shared by its readers)
  // Every node the rewrite added, with the node it stands for (the rewritten node, or the one a Cast serves):
  // what a per-phase report files it under.
  std::vector<std::pair<NodeId, NodeId>> origin;
};

// Rewrites g in place for p (nothing for fp32 and tf32). Values keep their ids and dtypes: a rewritten node's
// outputs are produced by the Casts back to f32, so callers' ids (loss, gradients, outputs) stay valid. Nodes
// on f64 or non-float operands are left alone.
PrecisionReport apply_precision(Graph& g, Precision p);

}  // namespace trainer::engine
