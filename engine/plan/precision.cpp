// Mixed-precision rewrite (precision.h).
#include "engine/plan/precision.h"

#include <fmt/format.h>

#include <map>

#include "engine/util/error.h"

namespace trainer::engine {

std::string_view precision_name(Precision p) {
  switch (p) {
    case Precision::fp32:
      return "fp32";
    case Precision::tf32:
      return "tf32";
    case Precision::bf16:
      return "bf16";
    case Precision::fp16:
      return "fp16";
  }
  return "?";
}

std::optional<Precision> parse_precision(std::string_view s) {
  for (Precision p : {Precision::fp32, Precision::tf32, Precision::bf16, Precision::fp16})
    if (precision_name(p) == s) return p;
  return std::nullopt;
}

bool runs_in_low_precision(const std::string& op) {
  return op == "MatMul" || op == "MatMulTransposed" || op == "Gemm" || op == "FusedGemm" ||
         op == "GemmGradWeightBias" || op == "Conv" || op == "ConvGradInput" || op == "ConvGradWeight";
}

PrecisionReport apply_precision(Graph& g, Precision p) {
  PrecisionReport report;
  if (p != Precision::bf16 && p != Precision::fp16) return report;
  const DType low = p == Precision::bf16 ? DType::bf16 : DType::f16;
  std::map<ValueId, ValueId> lowered;  // f32 value -> its cast to `low`, shared by every reader
  NodeId serving = -1;                 // the node being rewritten, which the Casts made for it serve
  auto cast_down = [&](ValueId v) {
    auto it = lowered.find(v);
    if (it != lowered.end()) return it->second;
    NodeId c = g.add_node("Cast", {v}, {{"to", int64_t{dtype_to_onnx(low)}}}, 1,
                          g.unique_name(g.value(v).name + "/" + std::string(dtype_name(low))));
    ++report.casts;
    report.origin.emplace_back(c, serving);
    return lowered[v] = g.node(c).outputs[0];
  };
  for (NodeId n : g.topo_order()) {
    const Node& node = g.node(n);
    if (node.dead || !runs_in_low_precision(node.op)) continue;
    bool f32_operand = false, other_float = false;
    for (ValueId v : node.inputs) {
      if (v == kNoValue) continue;
      DType t = g.value(v).dtype;
      f32_operand = f32_operand || t == DType::f32;
      other_float = other_float || (is_float(t) && t != DType::f32);
    }
    if (!f32_operand || other_float) continue;
    serving = n;
    const std::string op = node.op, name = node.name;
    const Attributes attrs = node.attrs;
    const std::vector<ValueId> inputs = node.inputs, outputs = node.outputs;
    g.erase_node(n);
    std::vector<ValueId> low_inputs;
    for (ValueId v : inputs)
      low_inputs.push_back(v != kNoValue && g.value(v).dtype == DType::f32 ? cast_down(v) : v);
    std::vector<std::string> names;
    for (ValueId v : outputs)
      names.push_back(v == kNoValue ? std::string()
                                    : g.unique_name(g.value(v).name + "/" + std::string(dtype_name(low))));
    NodeId ln = g.add_node_named(op, low_inputs, attrs, names,
                                 g.unique_name(name + "/" + std::string(dtype_name(low))));
    ++report.nodes;
    report.origin.emplace_back(ln, n);
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i] == kNoValue) continue;
      const ValueId produced = g.node(ln).outputs[i];
      TRAINER_ASSERT(g.value(produced).dtype == low, "{} output {} is {}, not {}", op, i,
                     dtype_name(g.value(produced).dtype), dtype_name(low));
      NodeId back = g.add_node("Cast", {produced}, {{"to", int64_t{dtype_to_onnx(DType::f32)}}}, 1,
                               g.unique_name(g.value(outputs[i]).name + "/f32"));
      ++report.casts;
      report.origin.emplace_back(back, n);
      // The Cast takes over the original value, so its id, name and graph-output mark stay.
      g.move_output(back, 0, outputs[i]);
    }
  }
  return report;
}

}  // namespace trainer::engine
