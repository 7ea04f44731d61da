// Fusion rewrites: each pattern is a chain whose intermediate values have exactly one consumer and are not
// graph outputs, so removing them changes nothing observable; the chain is replaced by one fused node.
#include "engine/plan/fusion.h"

#include <algorithm>

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
  if (options.softmax_cross_entropy) fuse_sigmoid_bce(g, r);
  if (options.softmax_cross_entropy) fuse_softmax_xent(g, r);
  if (options.gemm_bias_activation) fuse_gemm(g, r);
  return r;
}

}  // namespace trainer::engine
