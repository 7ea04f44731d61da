// FLOP counts of nodes by the convention flops.h documents: matrix products, convolutions and recurrent gate
// GEMMs from their dimensions, data movement as zero, and everything else one per element.
#include "engine/plan/flops.h"

#include <algorithm>
#include <set>
#include <string>

namespace trainer::engine {

namespace {

const Shape* input_shape(const Graph& g, const Node& n, size_t i) {
  return i < n.inputs.size() && n.inputs[i] != kNoValue ? &g.value(n.inputs[i]).shape : nullptr;
}

const Shape* output_shape(const Graph& g, const Node& n, size_t i) {
  return i < n.outputs.size() && n.outputs[i] != kNoValue ? &g.value(n.outputs[i]).shape : nullptr;
}

bool has_output(const Node& n, size_t i) {
  return i < n.outputs.size() && n.outputs[i] != kNoValue;
}

// 2·K per output element: the output holds every M·N (and batch) entry, K is A's reduced dimension.
int64_t matmul_flops(const Graph& g, const Node& n) {
  const Shape* a = input_shape(g, n, 0);
  const Shape* y = output_shape(g, n, 0);
  if (!a || !y || a->rank() == 0) return 0;
  const bool ta = n.attrs.has("transA") && n.attrs.i("transA") != 0;
  const int64_t k = a->rank() == 1 ? (*a)[0] : ta ? (*a)[a->rank() - 2] : (*a)[a->rank() - 1];
  return 2 * y->numel() * k;
}

// 2 per multiply-add of each output element with its window: W holds Cout · (Cin/group) · kernel elements.
int64_t conv_flops(const Shape& y, const Shape& w) {
  if (w.rank() < 1 || w[0] == 0) return 0;
  return 2 * y.numel() * (w.numel() / w[0]);
}

int64_t window_elements(const Node& n) {
  if (!n.attrs.has("kernel_shape")) return 1;
  int64_t k = 1;
  for (int64_t d : n.attrs.ints("kernel_shape")) k *= d;
  return k;
}

// Rows of X the gate GEMMs run over (seq · batch, in either layout).
int64_t rnn_rows(const Shape& x) {
  return x.rank() == 3 && x[2] > 0 ? x.numel() / x[2] : 0;
}

bool moves_data_only(const std::string& op) {
  static const std::set<std::string> ops = {"Identity",  "Cast",      "Reshape", "Flatten", "Squeeze",
                                            "Unsqueeze", "Transpose", "Expand",  "Concat",  "Slice",
                                            "SliceGrad", "Gather",    "Shape"};
  return ops.count(op) != 0;
}

}  // namespace

int64_t node_flops(const Graph& g, const Node& n) {
  const std::string& op = n.op;
  if (op == "MatMul" || op == "MatMulTransposed" || op == "Gemm" || op == "FusedGemm")
    return matmul_flops(g, n);
  if (op == "Conv" || op == "ConvGradInput" || op == "ConvTranspose") {
    const Shape* w = input_shape(g, n, 1);
    // Conv's work is that of its output; ConvGradInput runs the same products backwards from dy, and
    // ConvTranspose is a ConvGradInput from its input (plus one add per output element for a bias).
    const Shape* y = op == "Conv" ? output_shape(g, n, 0) : input_shape(g, n, 0);
    if (!w || !y) return 0;
    const Shape* out = output_shape(g, n, 0);
    const bool bias = op == "ConvTranspose" && n.inputs.size() > 2 && n.inputs[2] != kNoValue;
    return conv_flops(*y, *w) + (bias && out ? out->numel() : 0);
  }
  if (op == "GemmGradWeightBias") {
    // dW: 2 m k n (a [m, k], dz [m, n]); dB: one add per element of dz.
    const Shape* a = input_shape(g, n, 0);
    const Shape* dz = input_shape(g, n, 1);
    if (!a || !dz || a->rank() != 2 || dz->rank() != 2) return 0;
    return 2 * (*a)[0] * (*a)[1] * (*dz)[1] + dz->numel();
  }
  if (op == "ConvGradWeight") {
    const Shape* dy = input_shape(g, n, 0);
    const Shape* dw = output_shape(g, n, 0);
    if (!dy || !dw) return 0;
    return conv_flops(*dy, *dw) + (has_output(n, 1) ? dy->numel() : 0);
  }
  if (op == "LSTM" || op == "GRU" || op == "RNN") {
    const Shape* x = input_shape(g, n, 0);
    const Shape* w = input_shape(g, n, 1);
    const Shape* r = input_shape(g, n, 2);
    return x && w && r ? 2 * rnn_rows(*x) * (w->numel() + r->numel()) : 0;
  }
  if (op == "LSTMGrad" || op == "GRUGrad" || op == "RNNGrad") {
    // Outputs 0, 1, 2 are dX, dW, dR (each present only when that gradient is needed).
    const Shape* x = input_shape(g, n, 0);
    const Shape* w = input_shape(g, n, 1);
    const Shape* r = input_shape(g, n, 2);
    if (!x || !w || !r) return 0;
    const int64_t rows = rnn_rows(*x);
    int64_t f = 2 * rows * r->numel();
    if (has_output(n, 0)) f += 2 * rows * w->numel();
    if (has_output(n, 1)) f += 2 * rows * w->numel();
    if (has_output(n, 2)) f += 2 * rows * r->numel();
    return f;
  }
  if (op == "MaxPool" || op == "AveragePool") {
    const Shape* y = output_shape(g, n, 0);
    return y ? y->numel() * window_elements(n) : 0;
  }
  if (op == "MaxPoolGrad" || op == "AveragePoolGrad") {
    const Shape* dy = input_shape(g, n, 0);
    return dy ? dy->numel() * window_elements(n) : 0;
  }
  if (moves_data_only(op)) return 0;
  if (op == "ClipByGlobalNorm") {
    int64_t total = 0;
    for (ValueId v : n.inputs)
      if (v != kNoValue) total += g.value(v).shape.numel();
    return total;
  }
  int64_t most = 0;
  for (ValueId v : n.inputs)
    if (v != kNoValue) most = std::max(most, g.value(v).shape.numel());
  for (ValueId v : n.outputs)
    if (v != kNoValue) most = std::max(most, g.value(v).shape.numel());
  return most;
}

}  // namespace trainer::engine
