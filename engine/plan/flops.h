// The floating-point work of one node, counted from its op, attributes and shapes (trainer bench reports
// achieved FLOP/s from it).
#pragma once

#include <cstdint>

#include "engine/ir/graph.h"

namespace trainer::engine {

// FLOPs of node `n` of `g` by one fixed convention, so that numbers compare across runs and devices:
//   - Matrix products (MatMul, MatMulTransposed, Gemm, FusedGemm): 2 per multiply-add, 2·M·N·K for each
//     matrix of a batch. Epilogues (alpha, beta·C, bias, activation) are not counted.
//   - Conv and ConvGradInput: 2·N·Cout·Hout·Wout·(Cin/group)·kh·kw (any number of spatial dims);
//   ConvGradWeight
//     the same, plus one per element of dy when it also computes the bias gradient.
//   - LSTM and GRU: their gate GEMMs only, 2·seq·batch·(W + R elements) over all directions. LSTMGrad and
//     GRUGrad: the product through R that carries the gradient back in time, plus one product per gradient
//     output: dX through W, dW (as big as the forward product through W) and dR (as through R). Cell
//     nonlinearities are not counted.
//   - Pooling (MaxPool, AveragePool and their gradients): one per window element of each output element.
//   - Data movement (Identity, Cast, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Concat, Slice,
//     SliceGrad, Gather, Shape): zero.
//   - ClipByGlobalNorm: one per element of its inputs.
//   - Every other op (elementwise math, activations and their gradients, reductions, normalizations, losses,
//     optimizer updates): one per element of its largest input or output.
int64_t node_flops(const Graph& g, const Node& n);

}  // namespace trainer::engine
