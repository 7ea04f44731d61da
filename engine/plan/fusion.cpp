// Fusion rewrites: each pattern is a chain whose intermediate values have exactly one consumer and are not
// graph outputs, so removing them changes nothing observable; the chain is replaced by one fused node.
#include "engine/plan/fusion.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "engine/ir/op_schema.h"

namespace trainer::engine {

namespace {

bool is_graph_output(const Graph& g, ValueId v) {
  return std::find(g.outputs().begin(), g.outputs().end(), v) != g.outputs().end();
}

// The single consumer of v, when v has exactly one use and is not a graph output; else -1.
NodeId sole_consumer(const Graph& g, ValueId v) {
  const Value& val = g.value(v);
  if (val.consumers.size() != 1 || is_graph_output(g, v)) return -1;
  return val.consumers[0];
}

// Erases the chain's nodes and gives its final value to the fused node.
void take_over(Graph& g, const std::vector<NodeId>& chain, NodeId fused, ValueId final_value) {
  for (NodeId d : chain) g.erase_node(d);
  g.move_output(fused, 0, final_value);
}

// The value of v when it is a one-element floating-point constant.
std::optional<double> scalar_constant(const Graph& g, ValueId v) {
  const Value& val = g.value(v);
  const Tensor* t = g.initializer(v);
  if (val.kind != ValueKind::constant || !t || !is_float(t->dtype()) || t->numel() != 1) return std::nullopt;
  return t->get_f64(0);
}

bool near(std::optional<double> v, double want) {
  return v && std::abs(*v - want) <= 1e-6 * std::abs(want);
}

// For a two-input node with `v` as one input: the other input.
ValueId other_input(const Node& n, ValueId v) {
  if (n.inputs.size() != 2) return kNoValue;
  if (n.inputs[0] == v) return n.inputs[1];
  if (n.inputs[1] == v) return n.inputs[0];
  return kNoValue;
}

// The exact GELU as exporters write it before ONNX's Gelu op (opset 20): x * (erf(x / sqrt 2) + 1) * 0.5,
// with x / sqrt 2 also as x * (1 / sqrt 2) and the 0.5 also applied to x first  ==>  Gelu(x). Five
// elementwise kernels forward and more backward become one each way.
void fuse_erf_gelu(Graph& g, FusionReport& r) {
  if (!OpRegistry::global().find("Gelu")) return;
  const double sqrt2 = std::sqrt(2.0);
  for (NodeId id : g.topo_order()) {
    const Node& erf = g.node(id);
    if (erf.dead || erf.op != "Erf") continue;
    // x / sqrt 2, or x * (1 / sqrt 2)
    const ValueId u = erf.inputs[0];
    const NodeId scale_id = g.value(u).producer;
    if (scale_id < 0 || sole_consumer(g, u) != id) continue;
    const Node& scale = g.node(scale_id);
    ValueId x = kNoValue;
    if (scale.op == "Div" && near(scalar_constant(g, scale.inputs[1]), sqrt2)) {
      x = scale.inputs[0];
    } else if (scale.op == "Mul") {
      for (int k = 0; k < 2 && x == kNoValue; ++k)
        if (near(scalar_constant(g, scale.inputs[k]), 1 / sqrt2)) x = scale.inputs[1 - k];
    }
    if (x == kNoValue || !is_float(g.value(x).dtype) || g.value(u).shape != g.value(x).shape) continue;
    // + 1
    const NodeId add_id = sole_consumer(g, erf.outputs[0]);
    if (add_id < 0 || g.node(add_id).op != "Add") continue;
    if (!near(scalar_constant(g, other_input(g.node(add_id), erf.outputs[0])), 1.0)) continue;
    const ValueId w = g.node(add_id).outputs[0];
    // * x then * 0.5, or * (x * 0.5)
    const NodeId mul_id = sole_consumer(g, w);
    if (mul_id < 0 || g.node(mul_id).op != "Mul") continue;
    const ValueId other = other_input(g.node(mul_id), w);
    std::vector<NodeId> chain = {scale_id, id, add_id, mul_id};
    ValueId out = kNoValue;
    if (other == x) {
      const NodeId half_id = sole_consumer(g, g.node(mul_id).outputs[0]);
      if (half_id < 0 || g.node(half_id).op != "Mul" ||
          !near(scalar_constant(g, other_input(g.node(half_id), g.node(mul_id).outputs[0])), 0.5))
        continue;
      chain.push_back(half_id);
      out = g.node(half_id).outputs[0];
    } else if (other != kNoValue && g.value(other).producer >= 0) {
      const NodeId half_id = g.value(other).producer;
      const Node& half = g.node(half_id);
      if (half.op != "Mul" || sole_consumer(g, other) != mul_id || other_input(half, x) == kNoValue ||
          !near(scalar_constant(g, other_input(half, x)), 0.5))
        continue;
      chain.insert(chain.begin(), half_id);
      out = g.node(mul_id).outputs[0];
    } else {
      continue;
    }
    if (g.value(out).shape != g.value(x).shape) continue;
    NodeId f = g.add_node("Gelu", {x}, {{"approximate", std::string("none")}}, 1,
                          g.unique_name(g.node(mul_id).name + "/gelu"));
    take_over(g, chain, f, out);
    ++r.erf_gelu;
  }
}

// MatMul(A [M,K], B [K,N]) -> Add(., bias [N]) -> optional Relu/Gelu  ==>  FusedGemm(A, B, bias, activation).
void fuse_gemm(Graph& g, FusionReport& r) {
  const OpSchema* fused = OpRegistry::global().find("FusedGemm");
  if (!fused) return;
  for (NodeId id : g.topo_order()) {
    const Node& mm = g.node(id);
    if (mm.dead || mm.op != "MatMul") continue;
    ValueId a = mm.inputs[0], b = mm.inputs[1], y = mm.outputs[0];
    if (g.value(a).shape.rank() != 2 || g.value(b).shape.rank() != 2 || !is_float(g.value(y).dtype)) continue;
    NodeId add_id = sole_consumer(g, y);
    if (add_id < 0 || g.node(add_id).op != "Add") continue;
    const Node& add = g.node(add_id);
    ValueId bias = add.inputs[0] == y ? add.inputs[1] : add.inputs[0];
    if (bias == y) continue;
    const Shape& bs = g.value(bias).shape;
    int64_t n = g.value(b).shape[1];
    if (bs.rank() != 1 || bs[0] != n) continue;
    ValueId z = add.outputs[0];
    std::string act = "none";
    NodeId act_id = sole_consumer(g, z);
    ValueId out = z;
    if (act_id >= 0) {
      const Node& an = g.node(act_id);
      if (an.op == "Relu")
        act = "relu";
      else if (an.op == "Gelu")
        act = an.attrs.s("approximate") == "tanh" ? "gelu_tanh" : "gelu";
      if (act != "none") out = an.outputs[0];
    }
    std::string name = g.node(id).name;
    // GELU's gradient needs the pre-activation: the fused node keeps it as a second output rather than having
    // backward recompute the GEMM.
    int outputs = act == "gelu" || act == "gelu_tanh" ? 2 : 1;
    NodeId f =
        g.add_node("FusedGemm", {a, b, bias}, {{"activation", act}}, outputs, g.unique_name(name + "/fused"));
    std::vector<NodeId> chain = {id, add_id};
    if (act != "none") chain.push_back(act_id);
    take_over(g, chain, f, out);
    ++r.gemm_bias_activation;
  }
}

// Softmax(x, class axis) -> Log -> NegativeLogLikelihoodLoss(., labels[, weights])  ==>
// SoftmaxCrossEntropyLoss(x, labels[, weights]) with the same reduction and ignore_index.
void fuse_softmax_xent(Graph& g, FusionReport& r) {
  if (!OpRegistry::global().find("SoftmaxCrossEntropyLoss")) return;
  for (NodeId id : g.topo_order()) {
    const Node& sm = g.node(id);
    if (sm.dead || sm.op != "Softmax") continue;
    ValueId x = sm.inputs[0], p = sm.outputs[0];
    int rank = g.value(x).shape.rank();
    if (rank < 2 || normalize_axis(sm.attrs.i("axis"), rank) != 1) continue;
    // The probabilities may also feed predictions or metrics; only the Log branch is rewritten.
    NodeId log_id = -1;
    for (NodeId c : g.value(p).consumers)
      if (g.node(c).op == "Log") log_id = c;
    if (log_id < 0) continue;
    ValueId lp = g.node(log_id).outputs[0];
    NodeId nll_id = sole_consumer(g, lp);
    if (nll_id < 0 || g.node(nll_id).op != "NegativeLogLikelihoodLoss") continue;
    const Node nll = g.node(nll_id);
    std::vector<ValueId> ins = {x, nll.inputs[1]};
    if (nll.inputs.size() > 2 && nll.inputs[2] != kNoValue) ins.push_back(nll.inputs[2]);
    Attributes at;
    at.set("reduction", nll.attrs.s("reduction"));
    if (nll.attrs.has("ignore_index")) at.set("ignore_index", nll.attrs.i("ignore_index"));
    NodeId f = g.add_node("SoftmaxCrossEntropyLoss", ins, at, 1, g.unique_name(nll.name + "/fused"));
    take_over(g, {nll_id, log_id}, f, nll.outputs[0]);
    if (g.value(p).consumers.empty() && !is_graph_output(g, p)) g.erase_node(id);
    ++r.softmax_cross_entropy;
  }
}

// Sigmoid(x) -> BinaryCrossEntropy(., t)  ==>  BinaryCrossEntropyWithLogits(x, t): exact where the
// probability form must clamp (Keras clamps to [1e-7, 1 - 1e-7]).
void fuse_sigmoid_bce(Graph& g, FusionReport& r) {
  if (!OpRegistry::global().find("BinaryCrossEntropyWithLogits")) return;
  for (NodeId id : g.topo_order()) {
    const Node& sg = g.node(id);
    if (sg.dead || sg.op != "Sigmoid") continue;
    ValueId x = sg.inputs[0], p = sg.outputs[0];
    NodeId bce_id = -1;
    for (NodeId c : g.value(p).consumers)
      if (g.node(c).op == "BinaryCrossEntropy" && g.node(c).inputs[0] == p) bce_id = c;
    if (bce_id < 0) continue;
    const Node bce = g.node(bce_id);
    NodeId f = g.add_node("BinaryCrossEntropyWithLogits", {x, bce.inputs[1]},
                          {{"reduction", bce.attrs.s("reduction")}}, 1, g.unique_name(bce.name + "/fused"));
    take_over(g, {bce_id}, f, bce.outputs[0]);
    if (g.value(p).consumers.empty() && !is_graph_output(g, p)) g.erase_node(id);
    ++r.sigmoid_binary_cross_entropy;
  }
}

}  // namespace

FusionReport fuse(Graph& g, const FusionOptions& options) {
  FusionReport r;
  if (options.erf_gelu) fuse_erf_gelu(g, r);  // first: the Gelu may then join a GEMM's epilogue
  if (options.softmax_cross_entropy) fuse_sigmoid_bce(g, r);
  if (options.softmax_cross_entropy) fuse_softmax_xent(g, r);
  if (options.gemm_bias_activation) fuse_gemm(g, r);
  return r;
}

}  // namespace trainer::engine
