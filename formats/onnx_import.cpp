// ONNX import: checks the opsets and that every op is known before building anything, then maps graph inputs,
// initializers, Constant nodes and nodes onto engine::Graph. ONNX semantics are the IR's, so nodes map 1:1,
// except for older op forms (opsets 11 and 12), the training flags of Dropout and BatchNormalization, and
// constant subgraphs, which are evaluated here.
#include "formats/onnx_import.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/unknown_field_set.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "engine/ir/op_schema.h"
#include "engine/ops/conv_geometry.h"
#include "engine/ops/conv_volume.h"
#include "engine/plan/constant_folding.h"
#include "formats/data_array.h"
#include "formats/onnx_tensor.h"

namespace trainer::formats {

using engine::DType;
using engine::Graph;
using engine::NodeId;
using engine::Shape;
using engine::Tensor;
using engine::ValueId;

namespace {

// PyTorch's torch.export (its dynamo=True ONNX exporter) names a parameter NAME in its nodes' metadata as the
// placeholder %p_NAME (a buffer %b_NAME), NAME with '_' for every '.' (torch_placeholder).
bool placeholder_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}
std::string torch_placeholder(const std::string& name) {
  std::string s = name;
  for (char& c : s)
    if (!placeholder_char(c)) c = '_';
  return s;
}

// A float type an initializer may train in.
bool is_float_data(int32_t type) {
  return type == onnx::TensorProto::FLOAT || type == onnx::TensorProto::DOUBLE ||
         type == onnx::TensorProto::FLOAT16 || type == onnx::TensorProto::BFLOAT16;
}

// A node's metadata_props entry `key` (field 9 of NodeProto since ONNX 1.16, which this protobuf schema
// predates: read from the fields it keeps unparsed), or "".
std::string metadata_of(const onnx::NodeProto& n, std::string_view key) {
  const google::protobuf::UnknownFieldSet& fields = n.unknown_fields();
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.number() != 9 || f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    onnx::StringStringEntryProto entry;
    if (entry.ParseFromString(f.length_delimited()) && entry.key() == key) return entry.value();
  }
  return "";
}

// The parameters and buffers node `n` was made from, by torch.export's metadata: NAME of each %p_NAME and
// %b_NAME (none without the metadata).
void placeholders_of(const onnx::NodeProto& n, std::set<std::string>* out) {
  const std::string fx = metadata_of(n, "pkg.torch.onnx.fx_node");
  for (size_t at = fx.find('%'); at != std::string::npos; at = fx.find('%', at + 1)) {
    if (at + 2 >= fx.size() || (fx[at + 1] != 'p' && fx[at + 1] != 'b') || fx[at + 2] != '_') continue;
    size_t end = at + 3;
    while (end < fx.size() && placeholder_char(fx[end])) ++end;
    if (end > at + 3) out->insert(fx.substr(at + 3, end - at - 3));
  }
}

// "" and "ai.onnx" both name the default domain.
std::string normalize_domain(const std::string& d) {
  return d == "ai.onnx" ? std::string() : d;
}

std::string node_label(const onnx::NodeProto& n, int index) {
  if (n.name().empty()) return fmt::format("node #{} ({})", index, n.op_type());
  return fmt::format("node '{}' ({})", n.name(), n.op_type());
}

std::string_view attr_type_name(int type) {
  switch (type) {
    case onnx::AttributeProto::FLOAT:
      return "FLOAT";
    case onnx::AttributeProto::INT:
      return "INT";
    case onnx::AttributeProto::STRING:
      return "STRING";
    case onnx::AttributeProto::TENSOR:
      return "TENSOR";
    case onnx::AttributeProto::GRAPH:
      return "GRAPH";
    case onnx::AttributeProto::SPARSE_TENSOR:
      return "SPARSE_TENSOR";
    case onnx::AttributeProto::TYPE_PROTO:
      return "TYPE_PROTO";
    case onnx::AttributeProto::FLOATS:
      return "FLOATS";
    case onnx::AttributeProto::INTS:
      return "INTS";
    case onnx::AttributeProto::STRINGS:
      return "STRINGS";
    case onnx::AttributeProto::TENSORS:
      return "TENSORS";
    case onnx::AttributeProto::GRAPHS:
      return "GRAPHS";
    case onnx::AttributeProto::SPARSE_TENSORS:
      return "SPARSE_TENSORS";
    case onnx::AttributeProto::TYPE_PROTOS:
      return "TYPE_PROTOS";
    default:
      return "UNDEFINED";
  }
}

// Models written before IR version 2 may leave an attribute's type unset; the filled field tells it.
int attribute_type(const onnx::AttributeProto& a) {
  if (a.type() != onnx::AttributeProto::UNDEFINED) return a.type();
  if (a.has_f()) return onnx::AttributeProto::FLOAT;
  if (a.has_i()) return onnx::AttributeProto::INT;
  if (a.has_s()) return onnx::AttributeProto::STRING;
  if (a.has_t()) return onnx::AttributeProto::TENSOR;
  if (a.has_g()) return onnx::AttributeProto::GRAPH;
  if (a.floats_size() > 0) return onnx::AttributeProto::FLOATS;
  if (a.ints_size() > 0) return onnx::AttributeProto::INTS;
  if (a.strings_size() > 0) return onnx::AttributeProto::STRINGS;
  return onnx::AttributeProto::UNDEFINED;
}

// Ops the importer turns into constants itself (add_constant_node, add_shape_node, add_range, add_window...).
const std::set<std::string>& constant_ops() {
  static const std::set<std::string> ops = {"Constant",        "Shape",          "Size",
                                            "ConstantOfShape", "Range",          "HannWindow",
                                            "HammingWindow",   "BlackmanWindow", "MelWeightMatrix"};
  return ops;
}

bool imported_by_importer(const onnx::NodeProto& n) {
  return normalize_domain(n.domain()).empty() && constant_ops().count(n.op_type()) > 0;
}

// The rewrites that are short formulas of other ops (Importer::add_formula).
const std::set<std::string>& formula_ops() {
  static const std::set<std::string> ops = {"DepthToSpace",
                                            "SpaceToDepth",
                                            "Trilu",
                                            "CastLike",
                                            "Celu",
                                            "Mish",
                                            "ThresholdedRelu",
                                            "Cosh",
                                            "Sinh",
                                            "Tan",
                                            "MeanVarianceNormalization",
                                            "OneHot",
                                            "And",
                                            "Or",
                                            "Xor",
                                            "Not",
                                            "IsNaN",
                                            "IsInf",
                                            "ArgMax",
                                            "ArgMin",
                                            "CumSum",
                                            "TopK",
                                            "Shrink",
                                            "Hardmax",
                                            "EyeLike",
                                            "GatherElements",
                                            "GatherND",
                                            "ScatterND",
                                            "ScatterElements",
                                            "Scatter",
                                            "LRN",
                                            "ReverseSequence",
                                            "Bernoulli",
                                            "GroupNormalization",
                                            "AffineGrid",
                                            "CenterCropPad",
                                            "MaxUnpool",
                                            "QuantizeLinear",
                                            "DequantizeLinear",
                                            "DynamicQuantizeLinear",
                                            "MatMulInteger",
                                            "QLinearMatMul",
                                            "ConvInteger",
                                            "QLinearConv",
                                            "Compress",
                                            "NonZero"};
  return ops;
}

bool formula_op(const std::string& op) {
  return formula_ops().count(op) > 0;
}

// ai.onnx ops that the importer writes with other IR ops. Sum, Mean, Max and Min of any number of inputs
// become chains of the two-input op; Split becomes one Slice per output; GlobalMaxPool is a ReduceMax over
// the spatial axes; Resize (nearest, integer scales) is a Reshape, an Expand and a Reshape;
// InstanceNormalization is its formula in ReduceMean, Sub, Mul, Sqrt, Div and Add; ReduceMin, ReduceL1,
// ReduceL2, ReduceSumSquare and ReduceLogSumExp are ReduceMax or ReduceSum of Neg, Abs or Mul
// (ReduceLogSumExp shifted by the maximum, so exp never overflows); Tile is a Reshape, an Expand and a
// Reshape; Einsum of one or two operands is ReduceSum, Transpose, Reshape and one MatMul; DepthToSpace and
// SpaceToDepth are Reshape, Transpose, Reshape; Trilu a Where with a constant triangle; CastLike a Cast;
// ReduceLogSum, ReduceProd (exp of the summed log magnitudes, signed), Celu, ThresholdedRelu, Cosh, Sinh, Tan
// and MeanVarianceNormalization their formulas; OneHot an Equal against the class ids feeding a Where; And,
// Or, Xor, Not, IsNaN and IsInf arithmetic on bytes or comparisons; ArgMax and ArgMin a ReduceMax over the
// indices where the extreme is, TopK K of those rounds and Hardmax one; Shrink two Wheres; EyeLike a
// constant; CumSum a MatMul with a triangle of ones; GatherElements a Where over one-hot rows of the
// indices, summed; GatherND a Gather of flat row numbers from the data seen as a table, and ScatterND and
// ScatterElements the data with the rows the indices name cleared (reduction none) plus a scatter-add of the
// updates (GatherGrad) there. A gradient flows to the inputs that
// rewritten_input_has_grad names (which decides what initializers become parameters).
const std::set<std::string>& other_rewritten_ops() {
  static const std::set<std::string> ops = {"Sum",
                                            "Mean",
                                            "Max",
                                            "Min",
                                            "Split",
                                            "GlobalMaxPool",
                                            "Resize",
                                            "InstanceNormalization",
                                            "ReduceMin",
                                            "ReduceL1",
                                            "ReduceL2",
                                            "ReduceSumSquare",
                                            "ReduceLogSumExp",
                                            "Tile",
                                            "Einsum",
                                            "ReduceLogSum",
                                            "ReduceProd",
                                            "Upsample",
                                            "DFT",
                                            "STFT",
                                            "If"};
  return ops;
}

bool rewritten(const onnx::NodeProto& n) {
  if (!normalize_domain(n.domain()).empty()) return false;
  return other_rewritten_ops().count(n.op_type()) > 0 || formula_op(n.op_type());
}

bool rewritten_input_has_grad(const onnx::NodeProto& n, int i) {
  const std::string& op = n.op_type();
  if (op == "Sum" || op == "Mean" || op == "Max" || op == "Min" || op == "Einsum") return true;
  if (op == "InstanceNormalization") return i <= 2;
  if (op == "OneHot") return i == 2;  // the values; indices and depth take none
  if (op == "GatherElements" || op == "GatherND") return i == 0;
  if (op == "ScatterND" || op == "ScatterElements" || op == "Scatter")
    return i == 0 || i == 2;                          // not indices
  if (op == "Bernoulli" || op == "If") return false;  // a random draw; a condition
  if (op == "STFT") return i == 0 || i == 2;          // the signal and the window
  if (op == "GroupNormalization") return i <= 2;
  if (op.find("Quantize") != std::string::npos || op == "MatMulInteger" || op == "QLinearMatMul" ||
      op == "ConvInteger" || op == "QLinearConv")
    return false;  // integers and their scales: no gradient
  if (op.starts_with("Reduce")) return i == 0;
  return i == 0;
}

class Importer {
 public:
  Importer(const onnx::ModelProto& model, std::string source, const OnnxImportOptions& options,
           std::string base_dir)
      : model_(model), source_(std::move(source)), options_(options), base_dir_(std::move(base_dir)) {}

  OnnxImportResult run() {
    if (!model_.has_graph())
      throw InputError(source_, "the model has no graph",
                       "the file is truncated, or it is not an ONNX model");
    read_info();
    check_newer_opsets();
    check_supported();
    check_older_opset();
    scan_uses();
    add_initializers();
    add_inputs();
    const auto& nodes = model_.graph().node();
    for (int i = 0; i < nodes.size(); ++i) add_node(nodes[i], i);
    add_outputs();
    return std::move(result_);
  }

 private:
  Graph& g() { return result_.graph; }

  [[noreturn]] void fail(std::string what, std::string hint = {}) const {
    throw InputError(source_, std::move(what), std::move(hint));
  }

  void read_info() {
    OnnxModelInfo& info = result_.info;
    info.ir_version = model_.ir_version();
    for (const auto& o : model_.opset_import()) info.opsets[normalize_domain(o.domain())] = o.version();
    auto it = info.opsets.find("");
    info.opset = it == info.opsets.end() ? 0 : it->second;
    info.producer_name = model_.producer_name();
    info.producer_version = model_.producer_version();
    info.graph_name = model_.graph().name();
    info.doc_string = model_.doc_string();
    for (const auto& kv : model_.metadata_props()) info.metadata[kv.key()] = kv.value();
  }

  bool uses_default_domain() const {
    for (const auto& n : model_.graph().node())
      if (normalize_domain(n.domain()).empty()) return true;
    return false;
  }

  void check_newer_opsets() const {
    const OnnxModelInfo& info = result_.info;
    if (info.opset > kMaxOnnxOpset)
      fail(
          fmt::format("the model's opset_import asks for ONNX opset {}, newer than the newest supported ({})",
                      info.opset, kMaxOnnxOpset),
          fmt::format("export the model with opset {} or older", kMaxOnnxOpset));
    if (info.opset == 0 && uses_default_domain())
      fail("the model declares no opset for the default ONNX domain (opset_import is missing)",
           "the file is truncated, or the exporter is broken");
  }

  // An opset older than kMinOnnxOpset is accepted when each op it uses still has the definition it had then:
  // the engine implements the current definitions (with some older attribute forms).
  void check_older_opset() const {
    const int64_t opset = result_.info.opset;
    if (opset == 0 || opset >= kMinOnnxOpset) return;
    std::vector<std::string> changed;
    const auto& nodes = model_.graph().node();
    for (int i = 0; i < nodes.size(); ++i) {
      const auto& n = nodes[i];
      if (!normalize_domain(n.domain()).empty() || imported_by_importer(n)) continue;
      // Upsample (7, 9), Resize-10 and Scatter (9) are read by their old definitions (add_upsample; Scatter
      // is ScatterElements without a reduction).
      if (n.op_type() == "Upsample" || n.op_type() == "Scatter" || (n.op_type() == "Resize" && opset == 10))
        continue;
      const auto* then = onnx::OpSchemaRegistry::Schema(n.op_type(), static_cast<int>(opset), "");
      const auto* now = onnx::OpSchemaRegistry::Schema(n.op_type(), kMaxOnnxOpset, "");
      if (then == nullptr) {
        changed.push_back(fmt::format("{}: not defined in opset {}", node_label(n, i), opset));
      } else if (now != nullptr && now->since_version() != then->since_version()) {
        changed.push_back(fmt::format("{}: defined by version {} in opset {}, redefined in version {}",
                                      node_label(n, i), then->since_version(), opset, now->since_version()));
      }
    }
    if (!changed.empty())
      fail(fmt::format("the model uses ONNX opset {} (supported: {} to {}, and older opsets whose ops are "
                       "defined as in opset {}), and these ops changed since: {}",
                       opset, kMinOnnxOpset, kMaxOnnxOpset, kMinOnnxOpset, fmt::join(changed, "; ")),
           "convert the model to a newer opset, e.g. with onnx.version_converter.convert_version(model, 13)");
  }

  void check_supported() const {
    std::vector<UnsupportedNode> bad = find_unsupported_nodes(model_);
    if (bad.empty()) return;
    std::vector<std::string> items;
    std::set<std::string> ops;
    for (const auto& u : bad) {
      std::string op = u.domain.empty() ? u.op_type : u.domain + "." + u.op_type;
      items.push_back(fmt::format("graph.node[{}] '{}' ({})", u.index, u.name, op));
      ops.insert(op);
    }
    fail(fmt::format("{} node{} use{} ops the engine does not implement ({}): {}", bad.size(),
                     bad.size() == 1 ? "" : "s", bad.size() == 1 ? "s" : "", fmt::join(ops, ", "),
                     fmt::join(items, ", ")),
         "`trainer --list-ops` lists the supported ops; express these with them when exporting the model");
  }

  Tensor read_tensor(const onnx::TensorProto& t, const std::string& where) const {
    return tensor_from_onnx(t, where, base_dir_);
  }

  // Which values a gradient from the model's outputs reaches, and which are BatchNormalization's running
  // statistics: that decides between parameters, state and constants for initializers. A float initializer
  // that only shape arithmetic reads (tf2onnx's Cast(Shape) * 2.0 for a Resize's sizes) stays a constant.
  void scan_uses() { scan_uses_in(model_.graph()); }

  // The nodes of `graph`, and of the branches of its If nodes (any of which may be imported). In the main
  // graph a gradient is followed back from the outputs through the inputs that take one; in a branch every
  // such input counts, and the If node passes a gradient to what its branches read so (`branch_reads`) and to
  // the outer values they output.
  void scan_uses_in(const onnx::GraphProto& graph, std::vector<std::string>* branch_reads = nullptr) {
    const bool top = &graph == &model_.graph();
    const auto& registry = engine::OpRegistry::global();
    struct Flow {
      std::vector<std::string> from, to;  // the inputs that take a gradient; the outputs
      // Running statistics: no gradient, but what computes them is judged as if one reached it (a tensor
      // other nodes train makes the BatchNormalization's error below, not a silent inference form).
      std::vector<std::string> stats;
    };
    std::vector<Flow> flows;
    for (const auto& n : graph.node()) {
      if (imported_by_importer(n)) continue;
      Flow f;
      f.to.assign(n.output().begin(), n.output().end());
      if (normalize_domain(n.domain()).empty() && n.op_type() == "If")
        for (const auto& a : n.attribute())
          if (a.type() == onnx::AttributeProto::GRAPH) scan_uses_in(a.g(), top ? &f.from : branch_reads);
      const bool batch_norm = normalize_domain(n.domain()).empty() && n.op_type() == "BatchNormalization";
      const bool other_ops = rewritten(n);
      const engine::OpSchema* schema = registry.find(n.op_type());
      for (int i = 0; i < n.input_size(); ++i) {
        const std::string& name = n.input(i);
        if (name.empty()) continue;
        if (batch_norm && i >= 3) {
          running_stats_.insert(name);
          f.stats.push_back(name);
        } else if ((other_ops ? rewritten_input_has_grad(n, i)
                              : schema && schema->has_grad() && schema->input_has_grad(i)) &&
                   !casts_to_integer(n)) {
          f.from.push_back(name);
        }
      }
      if (top) {
        flows.push_back(std::move(f));
      } else {
        differentiable_.insert(f.from.begin(), f.from.end());
        if (branch_reads) branch_reads->insert(branch_reads->end(), f.from.begin(), f.from.end());
      }
      for (const std::string& name : n.input()) {
        read_names_.insert(name);
        if (!name.empty()) ++input_uses_[name];
      }
    }
    for (const auto& out : graph.output()) {
      read_names_.insert(out.name());
      if (!top && branch_reads) branch_reads->push_back(out.name());
    }
    if (!top) return;
    for (const auto& out : model_.graph().output()) {
      read_names_.insert(out.name());
      graph_outputs_.insert(out.name());
    }
    // Nodes come in topological order: walked backwards, a node's outputs are settled before its inputs.
    std::set<std::string> reached(graph_outputs_);
    for (auto it = flows.rbegin(); it != flows.rend(); ++it)
      if (std::any_of(it->to.begin(), it->to.end(), [&](const std::string& o) { return reached.count(o); })) {
        for (const std::string& name : it->from) {
          reached.insert(name);
          differentiable_.insert(name);
        }
        reached.insert(it->stats.begin(), it->stats.end());
      }
  }

  // A Cast to an integer or boolean type passes no gradient.
  static bool casts_to_integer(const onnx::NodeProto& n) {
    if (n.op_type() != "Cast" || !normalize_domain(n.domain()).empty()) return false;
    for (const auto& a : n.attribute())
      if (a.name() == "to")
        return a.i() != onnx::TensorProto::FLOAT && a.i() != onnx::TensorProto::DOUBLE &&
               a.i() != onnx::TensorProto::FLOAT16 && a.i() != onnx::TensorProto::BFLOAT16;
    return false;
  }

  bool training_flags() const { return options_.mode != OnnxGraphMode::as_written; }

  static bool all_finite(const Tensor& t) {
    if (t.dtype() == DType::f32) {
      const float* p = t.data<float>();
      return std::all_of(p, p + t.numel(), [](float v) { return std::isfinite(v); });
    }
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(t.get_f64(i))) return false;
    return true;
  }

  void add_initializers() {
    // The placeholders torch.export's nodes were made from, if it exported the model.
    for (const auto& n : model_.graph().node()) placeholders_of(n, &exported_placeholders_);
    for (const auto& init : model_.graph().initializer()) {
      if (init.name().empty()) fail("an initializer has no name", "the exporter is broken");
      Tensor t = read_tensor(init, fmt::format("{}: initializer '{}'", source_, init.name()));
      result_.initializer_names.push_back(init.name());
      const bool is_float = engine::is_float(t.dtype());
      auto wanted = [&] {
        return !options_.initializer_is_trainable || options_.initializer_is_trainable(init.name(), t);
      };
      enum { constant, parameter, state } kind = constant;
      // torch.export's own scalars (an attention's scale, val_70) are no parameter of the model: none of its
      // nodes was made from them. (Its larger tensors of its own are weights it folded: val_89, a Linear's
      // transposed weight, trains.)
      const bool exporter_scalar = t.numel() <= 1 && !exported_placeholders_.empty() &&
                                   !exported_placeholders_.count(torch_placeholder(init.name()));
      if (!exporter_scalar && is_float && training_flags() && running_stats_.count(init.name()))
        kind = wanted() ? state : constant;
      else if (!exporter_scalar && is_float && differentiable_.count(init.name()) && wanted() &&
               all_finite(t))
        kind = parameter;  // (a float holding inf or NaN is a mask or a sentinel: a constant, never trained)
      wrap(fmt::format("initializer '{}'", init.name()), [&] {
        if (kind == parameter) {
          g().add_parameter(init.name(), std::move(t), true);
        } else if (kind == state) {
          g().add_state(init.name(), std::move(t));
        } else {
          g().add_constant(init.name(), std::move(t));
        }
      });
    }
    if (model_.graph().sparse_initializer_size() > 0)
      fail(fmt::format("sparse initializer '{}' is not supported",
                       model_.graph().sparse_initializer(0).values().name()),
           "store the initializer as a dense tensor");
  }

  Shape input_shape(const onnx::ValueInfoProto& in, const onnx::TypeProto_Tensor& tt) const {
    if (!tt.has_shape())
      fail(fmt::format("graph input '{}' has no shape", in.name()), "the engine needs static input shapes");
    std::vector<int64_t> dims;
    for (int i = 0; i < tt.shape().dim_size(); ++i) {
      const auto& d = tt.shape().dim(i);
      if (i == 0 && d.has_dim_value() && d.dim_value() >= 0 && options_.replace_fixed_batch &&
          options_.batch_size > 0) {
        if (d.dim_value() != options_.batch_size) {
          fixed_batch_input_ = in.name();
          fixed_batch_note_ = fmt::format(
              "the model fixes the batch dimension of input '{}' at {}; it was set to the batch size {}",
              in.name(), d.dim_value(), options_.batch_size);
        }
        dims.push_back(options_.batch_size);
        continue;
      }
      if (d.has_dim_value() && d.dim_value() >= 0) {
        dims.push_back(d.dim_value());
        continue;
      }
      std::string what = d.has_dim_param() ? fmt::format("symbolic dimension '{}'", d.dim_param())
                                           : std::string("unknown dimension");
      if (i == 0 && options_.batch_size > 0) {
        dims.push_back(options_.batch_size);
        continue;
      }
      if (i == 0)
        fail(fmt::format("graph input '{}' has a {} at axis 0", in.name(), what),
             "give a batch size to fix the leading (batch) dimension");
      fail(fmt::format("graph input '{}' has a {} at axis {}; only the batch dimension may vary", in.name(),
                       what, i),
           "fix the input's shape in the model (e.g. with onnx.tools.update_model_dims)");
    }
    return Shape(std::move(dims));
  }

  void add_inputs() {
    std::set<std::string> initializers;
    for (const auto& init : model_.graph().initializer()) initializers.insert(init.name());
    std::set<std::string> baked;
    for (const auto& in : model_.graph().input()) {
      // Before IR version 4, initializers were also listed as inputs; the initializer is the value.
      if (initializers.count(in.name())) continue;
      const auto& type = in.type();
      if (!type.has_tensor_type())
        fail(fmt::format("graph input '{}' is not a tensor (a sequence, map or optional)", in.name()),
             "the engine handles tensor inputs only");
      const auto& tt = type.tensor_type();
      DType dtype;
      try {
        dtype = engine::dtype_from_onnx(tt.elem_type());
      } catch (const InputError& e) {
        fail(fmt::format("graph input '{}': {}", in.name(), e.what()), e.hint());
      }
      auto it = options_.constant_inputs.find(in.name());
      if (it != options_.constant_inputs.end()) {
        const Tensor& t = it->second;
        if (t.dtype() != dtype)
          fail(fmt::format("graph input '{}' is {} but the constant given for it is {}", in.name(),
                           engine::dtype_name(dtype), engine::dtype_name(t.dtype())));
        wrap(fmt::format("graph input '{}'", in.name()), [&] { g().add_constant(in.name(), t); });
        baked.insert(in.name());
        continue;
      }
      Shape shape = input_shape(in, tt);
      wrap(fmt::format("graph input '{}'", in.name()),
           [&] { result_.inputs.push_back(g().add_input(in.name(), dtype, std::move(shape))); });
      const Shape& s = g().value(result_.inputs.back()).shape;
      if (options_.batch_size > 0 && s.rank() >= 1 && s[0] == options_.batch_size)
        batched_.insert(result_.inputs.back());
    }
    for (const auto& [name, t] : options_.constant_inputs)
      if (!baked.count(name))
        fail(fmt::format("a constant is given for '{}', which is not a graph input of the model", name));
  }

  // Constant nodes become graph constants named after their output.
  void add_constant_node(const onnx::NodeProto& n, int index) {
    std::string label = node_label(n, index);
    if (n.output_size() != 1 || n.attribute_size() != 1)
      fail(fmt::format("{} must have one output and one attribute", label), "the exporter is broken");
    const auto& a = n.attribute(0);
    std::string where = fmt::format("{}: {}", source_, label);
    Tensor t;
    if (a.name() == "value") {
      t = read_tensor(a.t(), where);
    } else if (a.name() == "value_float") {
      t = Tensor::scalar<float>(a.f());
    } else if (a.name() == "value_floats") {
      t = Tensor::from<float>(Shape{a.floats_size()},
                              std::vector<float>(a.floats().begin(), a.floats().end()));
    } else if (a.name() == "value_int") {
      t = Tensor::scalar<int64_t>(a.i());
    } else if (a.name() == "value_ints") {
      t = Tensor::from<int64_t>(Shape{a.ints_size()}, std::vector<int64_t>(a.ints().begin(), a.ints().end()));
    } else {
      fail(fmt::format("{}: attribute '{}' is not supported", label, a.name()),
           "supported: value, value_float(s), value_int(s)");
    }
    wrap(label, [&] { g().add_constant(n.output(0), std::move(t)); });
  }

  engine::Attributes convert_attributes(const onnx::NodeProto& n, const std::string& label) const {
    engine::Attributes attrs;
    for (const auto& a : n.attribute()) {
      if (!a.ref_attr_name().empty())
        fail(fmt::format("{}: attribute '{}' refers to a function attribute", label, a.name()),
             "only function bodies may use attribute references");
      switch (attribute_type(a)) {
        case onnx::AttributeProto::INT:
          attrs.set(a.name(), static_cast<int64_t>(a.i()));
          break;
        case onnx::AttributeProto::FLOAT:
          attrs.set(a.name(), a.f());
          break;
        case onnx::AttributeProto::STRING:
          attrs.set(a.name(), a.s());
          break;
        case onnx::AttributeProto::INTS:
          attrs.set(a.name(), std::vector<int64_t>(a.ints().begin(), a.ints().end()));
          break;
        case onnx::AttributeProto::FLOATS:
          attrs.set(a.name(), std::vector<float>(a.floats().begin(), a.floats().end()));
          break;
        case onnx::AttributeProto::STRINGS: {
          // The IR keeps a list of names (the RNN ops' `activations`) as one comma-joined string, which
          // export splits again.
          std::string joined;
          for (const std::string& s : a.strings()) {
            if (s.find(',') != std::string::npos)
              fail(fmt::format("{}: attribute '{}' holds '{}', with a comma", label, a.name(), s),
                   "the engine keeps string lists comma-joined; names with commas are not supported");
            joined += (joined.empty() ? "" : ",") + s;
          }
          attrs.set(a.name(), joined);
          break;
        }
        case onnx::AttributeProto::TENSOR:
          attrs.set(a.name(),
                    read_tensor(a.t(), fmt::format("{}: {} attribute '{}'", source_, label, a.name())));
          break;
        default:
          fail(fmt::format("{}: attribute '{}' has type {}, which the engine does not support", label,
                           a.name(), attr_type_name(attribute_type(a))),
               "supported attribute types: INT, FLOAT, STRING, INTS, FLOATS, STRINGS, TENSOR");
      }
    }
    return attrs;
  }

  ValueId lookup(const std::string& name, const std::string& label) const {
    ValueId v = result_.graph.find(name);
    if (v == engine::kNoValue)
      fail(fmt::format("{} reads '{}', which is no graph input, initializer or output of an earlier node",
                       label, name),
           "the nodes must be in topological order");
    return v;
  }

  // Shape and Size only read static shapes, so they become constants here; the shape operands computed from
  // them (Reshape's shape, ...) are then constants too, as the static-shape IR requires.
  void add_shape_node(const onnx::NodeProto& n, int index) {
    std::string label = node_label(n, index);
    if (n.input_size() != 1 || n.output_size() != 1)
      fail(fmt::format("{} must have one input and one output", label), "the exporter is broken");
    const Shape& shape = g().value(lookup(n.input(0), label)).shape;
    Tensor t;
    if (n.op_type() == "Size") {
      t = Tensor::scalar<int64_t>(shape.numel());
    } else {
      const int64_t rank = shape.rank();
      int64_t start = 0, end = rank;
      for (const auto& a : n.attribute()) {
        if (a.name() == "start")
          start = a.i();
        else if (a.name() == "end")
          end = a.i();
        else
          fail(fmt::format("{}: unknown attribute '{}'", label, a.name()), "Shape takes: start, end");
      }
      // As ONNX defines it: negative positions count from the back, and both ends are clamped to [0, rank].
      auto clamp = [&](int64_t p) { return std::clamp(p < 0 ? p + rank : p, int64_t{0}, rank); };
      start = clamp(start);
      end = std::max(clamp(end), start);
      std::vector<int64_t> dims(shape.dims().begin() + start, shape.dims().begin() + end);
      t = Tensor::from<int64_t>(Shape{end - start}, dims);
    }
    wrap(label, [&] { shape_constants_.insert(g().add_constant(n.output(0), std::move(t))); });
  }

  // ConstantOfShape of a constant shape (exporters build RNN initial states this way, from the batch size) is
  // a constant; its shape must be known at import, as every shape in the IR is.
  void add_constant_of_shape(const onnx::NodeProto& n, int index) {
    std::string label = node_label(n, index);
    if (n.input_size() != 1 || n.output_size() != 1)
      fail(fmt::format("{} must have one input and one output", label), "the exporter is broken");
    PendingNode p;
    p.inputs = {lookup(n.input(0), label)};
    restore_folded_values(p);
    const engine::Value& in = g().value(p.inputs[0]);
    if (in.kind != engine::ValueKind::constant || in.dtype != engine::DType::i64 || in.shape.rank() != 1)
      fail(fmt::format("{}: its shape '{}' is not a constant 1-D int64 tensor", label, in.name),
           "the engine needs static shapes: compute the shape from constants and input shapes only");
    const Tensor& dims_t = *g().initializer(p.inputs[0]);
    std::vector<int64_t> dims(dims_t.data<int64_t>(), dims_t.data<int64_t>() + dims_t.numel());
    Tensor fill = Tensor::scalar<float>(0.0f);
    for (const auto& a : n.attribute()) {
      if (a.name() != "value")
        fail(fmt::format("{}: unknown attribute '{}'", label, a.name()), "ConstantOfShape takes: value");
      fill = read_tensor(a.t(), fmt::format("{}: {} attribute 'value'", source_, label));
      if (fill.numel() != 1)
        fail(fmt::format("{}: 'value' holds {} elements", label, fill.numel()), "ONNX requires exactly one");
    }
    for (int64_t d : dims)
      if (d < 0) fail(fmt::format("{}: negative dimension {} in shape {}", label, d, Shape(dims).str()));
    wrap(label, [&] {
      Tensor t(fill.dtype(), Shape(dims));
      const size_t elem = fill.nbytes();
      for (int64_t i = 0; i < t.numel(); ++i)
        std::memcpy(static_cast<char*>(t.raw()) + i * elem, fill.raw(), elem);
      folded_.insert(g().add_constant(n.output(0), std::move(t)));
    });
    result_.folded_nodes.push_back(n.name().empty() ? n.output(0) : n.name());
  }

  // The inputs of a node that generates a constant (Range, the windows, MelWeightMatrix): each must be a
  // constant scalar; `names` name them in errors, `hint` says why. `dtype`, when given, receives the last
  // one's type.
  std::vector<double> constant_scalars(const onnx::NodeProto& n, const std::string& label,
                                       const std::vector<const char*>& names, const char* hint,
                                       DType* dtype = nullptr) {
    static const char* const counts[] = {"no inputs",    "one input",   "two inputs",
                                         "three inputs", "four inputs", "five inputs"};
    if (n.input_size() != static_cast<int>(names.size()) || n.output_size() != 1)
      fail(fmt::format("{} must have {} and one output", label, counts[names.size()]),
           "the exporter is broken");
    PendingNode p;
    for (const std::string& in : n.input()) p.inputs.push_back(lookup(in, label));
    restore_folded_values(p);
    std::vector<double> v;
    for (size_t i = 0; i < names.size(); ++i) {
      const engine::Value& in = g().value(p.inputs[i]);
      if (in.kind != engine::ValueKind::constant || in.shape.numel() != 1)
        fail(fmt::format("{}: its {} '{}' is not a constant scalar", label, names[i], in.name), hint);
      v.push_back(g().initializer(p.inputs[i])->get_f64(0));
      if (dtype) *dtype = in.dtype;
    }
    return v;
  }

  // The output of such a node, `make`'s tensor, as a constant named after it.
  template <class F>
  void add_generated(const onnx::NodeProto& n, const std::string& label, F&& make) {
    wrap(label, [&] { folded_.insert(g().add_constant(n.output(0), make())); });
    result_.folded_nodes.push_back(n.name().empty() ? n.output(0) : n.name());
  }

  // Range(start, limit, delta) of constants (torch.arange of a length the shapes fix): a constant,
  // max(ceil((limit - start) / delta), 0) elements start + i delta, of the inputs' dtype.
  void add_range(const onnx::NodeProto& n, int index) {
    const std::string label = node_label(n, index);
    DType t = DType::f32;
    const std::vector<double> v = constant_scalars(
        n, label, {"start", "limit", "delta"},
        "the engine needs static shapes: compute the range from constants and input shapes only", &t);
    if (v[2] == 0) fail(fmt::format("{}: delta is 0", label));
    const double steps = std::ceil((v[1] - v[0]) / v[2]);
    // Judged as a double: a cast of infinity, NaN or 1e30 to an integer is undefined.
    if (!std::isfinite(steps) || steps > 9007199254740992.0)
      fail(fmt::format("{}: Range({}, {}, {}) has no finite number of elements", label, v[0], v[1], v[2]),
           "start, limit and delta must be finite and give fewer than 2^53 elements");
    const int64_t count = std::max<int64_t>(static_cast<int64_t>(steps), 0);
    add_generated(n, label, [&] {
      Tensor out(t, Shape{count});
      for (int64_t i = 0; i < count; ++i) out.set_f64(i, v[0] + static_cast<double>(i) * v[2]);
      return out;
    });
  }

  // HannWindow, HammingWindow and BlackmanWindow of a constant size: the window as a constant, from ONNX's
  // definitions (periodic: N = size, symmetric: N = size - 1; w[n] = a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n
  // / N)).
  void add_window(const onnx::NodeProto& n, int index) {
    const std::string label = node_label(n, index);
    const double given = constant_scalars(
        n, label, {"size"}, "the engine needs static shapes: give the window's length as a constant")[0];
    if (!(given >= 0 && given <= 9007199254740992.0 && given == std::floor(given)))  // NaN too
      fail(fmt::format("{}: size {} is not a length", label, given),
           "the size must be a whole number from 0 to 2^53");
    const int64_t size = static_cast<int64_t>(given);
    int64_t periodic = 1, type = 1;
    for (const auto& a : n.attribute()) {
      if (a.name() == "periodic") periodic = a.i();
      if (a.name() == "output_datatype") type = a.i();
    }
    const double pi = 3.14159265358979323846;
    double a0 = 0.5, a1 = 0.5, a2 = 0;  // Hann
    if (n.op_type() == "HammingWindow") a0 = 25.0 / 46.0, a1 = 1 - a0;
    if (n.op_type() == "BlackmanWindow") a0 = 0.42, a1 = 0.5, a2 = 0.08;
    const double period = static_cast<double>(periodic ? size : size - 1);
    add_generated(n, label, [&] {
      Tensor out(engine::dtype_from_onnx(static_cast<int>(type)), Shape{size});
      for (int64_t i = 0; i < size; ++i) {
        const double x = period > 0 ? 2 * pi * static_cast<double>(i) / period : 0;
        out.set_f64(i, a0 - a1 * std::cos(x) + a2 * std::cos(2 * x));
      }
      return out;
    });
  }

  // MelWeightMatrix of constant inputs: the [dft_length / 2 + 1, num_mel_bins] matrix of triangular filters
  // as ONNX defines it (num_mel_bins + 2 edges evenly spaced in mel = 2595 log10(1 + f / 700), each mapped to
  // the DFT bin floor((dft_length + 1) f / sample_rate); filter i rises from edge i to edge i + 1 and falls
  // to i + 2).
  void add_mel_weight_matrix(const onnx::NodeProto& n, int index) {
    const std::string label = node_label(n, index);
    const std::vector<double> v = constant_scalars(
        n, label, {"num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz"},
        "the engine needs static shapes: give MelWeightMatrix constants");
    const int64_t mels = static_cast<int64_t>(v[0]), dft = static_cast<int64_t>(v[1]);
    const int64_t rate = static_cast<int64_t>(v[2]);
    // (Beyond 2^20 mel bins or DFT points no audio model goes; the table would take minutes to fill.)
    if (mels < 1 || dft < 1 || rate < 1 || v[3] < 0 || v[4] <= v[3] || mels > (1 << 20) || dft > (1 << 20))
      fail(fmt::format(
          "{}: needs num_mel_bins and dft_length from 1 to 2^20, a sample_rate of 1 or more and 0 <= "
          "lower_edge_hertz "
          "< upper_edge_hertz (got {}, {}, {}, {}, {})",
          label, mels, dft, rate, v[3], v[4]));
    const int64_t bins = dft / 2 + 1;
    auto mel = [](double f) { return 2595 * std::log10(1 + f / 700); };
    const double low = mel(v[3]), step = (mel(v[4]) - low) / static_cast<double>(mels + 2);
    std::vector<int64_t> edge(static_cast<size_t>(mels + 2));
    for (int64_t i = 0; i < mels + 2; ++i) {
      const double hz = 700 * (std::pow(10.0, (low + static_cast<double>(i) * step) / 2595) - 1);
      edge[static_cast<size_t>(i)] =
          static_cast<int64_t>(std::floor(static_cast<double>(dft + 1) * hz / static_cast<double>(rate)));
    }
    int64_t type = 1;
    for (const auto& a : n.attribute())
      if (a.name() == "output_datatype") type = a.i();
    add_generated(n, label, [&] {
      Tensor out(engine::dtype_from_onnx(static_cast<int>(type)), Shape{bins, mels});
      auto set = [&](int64_t bin, int64_t filter, double w) {
        if (bin >= 0 && bin < bins) out.set_f64(bin * mels + filter, w);
      };
      for (int64_t i = 0; i < mels; ++i) {
        const int64_t left = edge[static_cast<size_t>(i)], centre = edge[static_cast<size_t>(i) + 1],
                      right = edge[static_cast<size_t>(i) + 2];
        if (centre == left) set(centre, i, 1);
        for (int64_t j = left; centre > left && j <= centre; ++j)
          set(j, i, static_cast<double>(j - left) / static_cast<double>(centre - left));
        for (int64_t j = centre; right > centre && j < right; ++j)
          set(j, i, static_cast<double>(right - j) / static_cast<double>(right - centre));
      }
      return out;
    });
  }

  // If whose condition is a constant once shapes are static (PyTorch's squeeze of an axis that may be 1,
  // checks of sizes): the chosen branch's initializers and nodes are imported in its place, and the If's
  // outputs are the branch's (constants stay constants, so shape arithmetic keeps folding). A condition
  // computed from the data is an error: a static plan cannot branch.
  void add_if(const onnx::NodeProto& n, int index) {
    const std::string label = node_label(n, index);
    if (n.input_size() != 1)
      fail(fmt::format("{} must have one input, the condition", label), "the exporter is broken");
    PendingNode p;
    p.inputs.push_back(lookup(n.input(0), label));
    restore_folded_values(p);
    const engine::Value& cond = g().value(p.inputs[0]);
    if (cond.kind != engine::ValueKind::constant || cond.shape.numel() != 1)
      fail(fmt::format("{}: its condition '{}' is computed from the data, and a static plan cannot branch",
                       label, cond.name),
           "export the model with the condition decided: make it depend on shapes only (torch.jit.trace "
           "rather "
           "than script)");
    const char* chosen = g().initializer(p.inputs[0])->get_f64(0) != 0 ? "then_branch" : "else_branch";
    const onnx::GraphProto* branch = nullptr;
    for (const auto& a : n.attribute())
      if (a.name() == chosen && a.type() == onnx::AttributeProto::GRAPH) branch = &a.g();
    if (branch == nullptr || branch->output_size() != n.output_size())
      fail(fmt::format("{}: its {} is missing or has {} outputs for the If's {}", label, chosen,
                       branch ? branch->output_size() : 0, n.output_size()),
           "the exporter is broken");
    for (const auto& init : branch->initializer())
      wrap(label, [&] {
        folded_.insert(g().add_constant(
            init.name(),
            read_tensor(init, fmt::format("{}: {} initializer '{}'", label, chosen, init.name()))));
      });
    for (int i = 0; i < branch->node_size(); ++i) add_node(branch->node(i), i);
    for (int k = 0; k < n.output_size(); ++k) {
      if (n.output(k).empty()) continue;
      const ValueId out = lookup(branch->output(k).name(), label);
      wrap(label, [&] {
        if (g().value(out).kind == engine::ValueKind::constant) {
          folded_.insert(g().add_constant(n.output(k), *g().initializer(out)));
        } else {
          mark_batched(
              g().add_node_named("Identity", {out}, {}, {n.output(k)},
                                 n.name().empty() ? n.output(k) : fmt::format("{}/{}", n.name(), k)));
        }
      });
    }
    result_.folded_nodes.push_back(n.name().empty() ? n.output(0) : n.name());
  }

  // A node as the engine takes it: ONNX's inputs, attributes and output names after the rewrites below.
  struct PendingNode {
    std::string op, domain, name, label;
    std::vector<ValueId> inputs;
    engine::Attributes attrs;
    std::vector<std::string> outputs;
    std::vector<std::pair<int, ValueId>> updates;  // (output, the state it updates): Graph::bind_update
    int batch_relative_input = -1;                 // the input that may read a batch-relative shape
    std::string base() const { return name.empty() ? outputs.at(0) : name; }
  };

  // The inputs the ONNX schema of a node's op requires must be there, and no more than it takes: a node
  // without them is malformed, whatever its op.
  void check_arity(const onnx::NodeProto& n, int index) const {
    // The ONNX library knows the schemas up to its own newest opset: for a model past it, the schema found is
    // an older version, so only the inputs it requires are checked (later versions add optional inputs and
    // attributes, such as ReduceMean-18's axes).
    static const int known = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map().at("").second;
    const int opset = result_.info.opset > 0 ? static_cast<int>(result_.info.opset) : kMaxOnnxOpset;
    const bool newer = opset > known;
    const auto* schema =
        onnx::OpSchemaRegistry::Schema(n.op_type(), std::min({opset, kMaxOnnxOpset, known}), "");
    if (schema == nullptr) return;
    const auto& formal = schema->inputs();
    for (size_t i = 0; i < formal.size(); ++i)
      if (formal[i].GetOption() == onnx::OpSchema::Single &&
          (static_cast<int>(i) >= n.input_size() || n.input(static_cast<int>(i)).empty()))
        fail(fmt::format("{} has no input {} ('{}'), which {} requires", node_label(n, index), i,
                         formal[i].GetName(), n.op_type()),
             "the exporter is broken, or the file was edited");
    if (newer) return;
    if (n.input_size() < schema->min_input() || n.input_size() > schema->max_input())
      fail(fmt::format("{} has {} inputs; {} takes {} to {}", node_label(n, index), n.input_size(),
                       n.op_type(), schema->min_input(), schema->max_input()),
           "the exporter is broken, or the file was edited");
    // Attributes of the types the schema gives them (an axis that is a string would be read as an int).
    for (const onnx::AttributeProto& a : n.attribute()) {
      auto it = schema->attributes().find(a.name());
      if (it == schema->attributes().end() || a.type() == onnx::AttributeProto::UNDEFINED ||
          a.type() == it->second.type)
        continue;
      fail(fmt::format("{}: attribute '{}' is of type {}; {} takes {}", node_label(n, index), a.name(),
                       onnx::AttributeProto_AttributeType_Name(a.type()), n.op_type(),
                       onnx::AttributeProto_AttributeType_Name(it->second.type)),
           "the exporter is broken, or the file was edited");
    }
  }

  void add_node(const onnx::NodeProto& n, int index) {
    const std::string domain = normalize_domain(n.domain());
    if (domain.empty()) check_arity(n, index);
    if (domain.empty() && n.op_type() == "Constant") return add_constant_node(n, index);
    if (domain.empty() && (n.op_type() == "Shape" || n.op_type() == "Size")) return add_shape_node(n, index);
    if (domain.empty() && n.op_type() == "ConstantOfShape") return add_constant_of_shape(n, index);
    if (domain.empty() && n.op_type() == "Range") return add_range(n, index);
    if (domain.empty() && n.op_type() == "If") return add_if(n, index);
    if (domain.empty() && n.op_type().ends_with("Window")) return add_window(n, index);
    if (domain.empty() && n.op_type() == "MelWeightMatrix") return add_mel_weight_matrix(n, index);
    PendingNode p;
    p.op = n.op_type();
    p.domain = domain;
    p.name = n.name();
    p.label = node_label(n, index);
    for (const std::string& name : n.input())
      p.inputs.push_back(name.empty() ? engine::kNoValue : lookup(name, p.label));
    p.attrs = convert_attributes(n, p.label);
    p.outputs.assign(n.output().begin(), n.output().end());
    if (p.outputs.empty()) fail(fmt::format("{} has no outputs", p.label), "the exporter is broken");
    if (domain.empty() && !p.inputs.empty() && p.inputs[0] != engine::kNoValue) {
      if (p.op == "Dropout") {
        adapt_dropout(p);
      } else if (p.op == "BatchNormalization") {
        adapt_batch_norm(p);
      } else if ((p.op == "Softmax" || p.op == "LogSoftmax" || p.op == "Hardmax") &&
                 result_.info.opset < 13) {
        if (adapt_opset11_softmax(p)) return;
      } else if (p.op == "Reshape") {
        adapt_reshape(p);
      } else if (p.op == "LSTM" || p.op == "GRU" || p.op == "RNN") {
        drop_zero_initial_states(p);
      }
    }
    restore_folded_values(p);
    if (p.op == "Split" && domain.empty()) return add_split(p);
    if (p.op == "GlobalMaxPool" && domain.empty()) return add_global_max_pool(p);
    if ((p.op == "Upsample" || (p.op == "Resize" && result_.info.opset < 11)) && domain.empty())
      return add_upsample(p);
    if (p.op == "Resize" && domain.empty()) return add_resize(p);
    if ((p.op == "DFT" || p.op == "STFT") && domain.empty()) return add_fourier(p);
    if (p.op == "MaxPool" && domain.empty() && p.outputs.size() == 2 && !p.outputs[1].empty() &&
        g().value(p.inputs.at(0)).shape.rank() == 4)
      return add_max_pool_with_indices(p);
    if ((p.op == "MaxPool" || p.op == "AveragePool" || p.op == "Conv" || p.op == "ConvTranspose") &&
        domain.empty() && g().value(p.inputs.at(0)).shape.rank() == 5)
      return add_volume_op(p);
    if (p.op == "InstanceNormalization" && domain.empty()) return add_instance_norm(p);
    if (p.op.starts_with("Reduce") && rewritten(n)) return add_reduction(p);
    if (p.op == "Tile" && domain.empty()) return add_tile(p);
    if (p.op == "Einsum" && domain.empty()) return add_einsum(p);
    if (domain.empty() && rewritten(n) && add_formula(p)) return;
    if (rewritten(n) && (p.op == "Sum" || p.op == "Mean" || p.inputs.size() != 2))
      return add_variadic(p, p.op == "Sum" || p.op == "Mean" ? "Add" : p.op);
    if (options_.fold_constants && fold(p)) return;
    insert(p);
  }

  // Helpers of the rewrites below, which write one ONNX node as several IR nodes named after it.
  // A 1-D int64 constant "<node>/<what>".
  ValueId ints_constant(const PendingNode& p, const std::string& what, const std::vector<int64_t>& v) {
    return g().add_constant(g().unique_name(p.base() + "/" + what),
                            Tensor::from<int64_t>(Shape{static_cast<int64_t>(v.size())}, v));
  }
  // A node "<node>/<what>" with a fresh output; or, the `last` of the rewrite, one that takes the node's name
  // and output.
  ValueId add_part(const PendingNode& p, const std::string& op, std::vector<ValueId> ins,
                   engine::Attributes a, const std::string& what, bool last = false) {
    const std::string part = p.base() + "/" + what;
    return add_rewritten(p, op, std::move(ins), std::move(a), last ? p.outputs[0] : g().unique_name(part),
                         last ? p.name : part);
  }
  // A node of a rewrite, named `name`, writing `output`; a constant instead when its inputs are all constants
  // (shape arithmetic through an op the importer rewrites: ReduceProd of a Shape's slice, a Split of a
  // Shape), as fold() makes one of any other node.
  ValueId add_rewritten(const PendingNode& p, const std::string& op, std::vector<ValueId> ins,
                        engine::Attributes a, const std::string& output, const std::string& name) {
    if (options_.fold_constants) {
      PendingNode part;
      part.op = op;
      part.name = name;
      part.label = p.label;
      part.inputs = ins;
      part.attrs = a;
      part.outputs = {output};
      if (fold(part)) return g().find(output);
    }
    NodeId id = g().add_node_named(op, std::move(ins), std::move(a), {output}, name);
    mark_batched(id);
    return g().node(id).outputs[0];
  }
  // Input 0 repeated: Reshape to `split`, Expand to `repeat`, Reshape to `merged` (the Reshapes with
  // `reshape_attrs`), the last taking the node's name and output.
  void add_repeat(const PendingNode& p, const std::vector<int64_t>& split, const std::vector<int64_t>& repeat,
                  const std::vector<int64_t>& merged, const engine::Attributes& reshape_attrs) {
    wrap(p.label, [&] {
      ValueId v =
          add_part(p, "Reshape", {p.inputs[0], ints_constant(p, "split", split)}, reshape_attrs, "split");
      v = add_part(p, "Expand", {v, ints_constant(p, "repeat", repeat)}, {}, "repeat");
      add_part(p, "Reshape", {v, ints_constant(p, "merged", merged)}, reshape_attrs, "merged", true);
    });
  }

  // Split along `axis` into the parts that the `split` input gives, or into num_outputs (opset 18) parts of
  // ceil(d / n) elements (the last one smaller), or into as many equal parts as there are outputs: one Slice
  // per output. The first Slice keeps the node's name.
  void add_split(const PendingNode& p) {
    if (p.inputs.empty() || p.inputs[0] == engine::kNoValue)
      fail(fmt::format("{} has no input", p.label), "Split takes the tensor to split as its first input");
    const Shape shape = g().value(p.inputs[0]).shape;
    const int64_t rank = shape.rank();
    int64_t axis = p.attrs.has("axis") ? p.attrs.i("axis") : 0;
    if (axis < -rank || axis >= rank)
      fail(fmt::format("{}: axis {} is out of range for a rank-{} input {}", p.label, axis, rank,
                       shape.str()));
    if (axis < 0) axis += rank;
    const int64_t dim = shape[static_cast<int>(axis)];
    const int64_t parts = static_cast<int64_t>(p.outputs.size());
    std::vector<int64_t> sizes;
    if (p.inputs.size() > 1 && p.inputs[1] != engine::kNoValue) {
      const engine::Value& sv = g().value(p.inputs[1]);
      if (sv.kind != engine::ValueKind::constant || sv.dtype != DType::i64 || sv.shape.rank() != 1)
        fail(fmt::format("{}: its split sizes '{}' are not a constant 1-D int64 tensor", p.label, sv.name),
             "the engine needs static shapes: give the sizes as a constant");
      const Tensor& t = *g().initializer(p.inputs[1]);
      sizes.assign(t.data<int64_t>(), t.data<int64_t>() + t.numel());
    } else if (p.attrs.has("split")) {
      sizes = p.attrs.ints("split");
    } else if (p.attrs.has("num_outputs")) {
      const int64_t n = p.attrs.i("num_outputs");
      if (n != parts)
        fail(fmt::format("{}: num_outputs is {}, and the node has {} outputs", p.label, n, parts));
      const int64_t chunk = n > 0 ? (dim + n - 1) / n : 0;
      for (int64_t k = 0; k < n; ++k) sizes.push_back(std::max<int64_t>(0, std::min(chunk, dim - k * chunk)));
    } else {
      if (parts == 0 || dim % parts != 0)
        fail(fmt::format("{}: {} elements along axis {} do not split into {} equal parts", p.label, dim, axis,
                         parts),
             "give the split sizes");
      sizes.assign(static_cast<size_t>(parts), dim / parts);
    }
    int64_t total = 0;
    for (int64_t v : sizes) total += v < 0 ? -1 : v;
    if (static_cast<int64_t>(sizes.size()) != parts || total != dim)
      fail(fmt::format("{}: split sizes {} for {} outputs do not add up to {}, the size of axis {}", p.label,
                       fmt::join(sizes, ","), parts, dim, axis));
    wrap(p.label, [&] {
      int64_t start = 0;
      for (int64_t k = 0; k < parts; ++k) {
        const int64_t end = start + sizes[k];
        if (!p.outputs[k].empty()) {
          const std::string name = k == 0 ? p.name : fmt::format("{}/{}", p.base(), k);
          add_rewritten(p, "Slice",
                        {p.inputs[0], ints_constant(p, "starts", {start}), ints_constant(p, "ends", {end}),
                         ints_constant(p, "axes", {axis})},
                        {}, p.outputs[k], name);
        }
        start = end;
      }
    });
  }

  // Upsample (opset 7: scales as an attribute; 9: as input 1) and Resize-10 (input 1), both from before
  // Resize had coordinate modes: output size floor(d * scale); nearest samples floor(x / scale) and linear
  // interpolates at x / scale, which is Resize's asymmetric transformation with nearest_mode floor.
  void add_upsample(const PendingNode& p) {
    PendingNode r = p;
    r.op = "Resize";
    ValueId scales = engine::kNoValue;
    if (p.attrs.has("scales")) {
      std::vector<double> v;
      for (float f : p.attrs.floats("scales")) v.push_back(f);
      Tensor t(DType::f32, Shape{static_cast<int64_t>(v.size())});
      for (size_t i = 0; i < v.size(); ++i) t.set_f64(static_cast<int64_t>(i), v[i]);
      scales = g().add_constant(g().unique_name(p.base() + "/scales"), std::move(t));
    } else if (p.inputs.size() == 2) {
      scales = p.inputs[1];
    } else {
      fail(fmt::format("{} has neither a scales attribute nor a scales input", p.label),
           "the exporter is broken");
    }
    const std::string mode = p.attrs.has("mode") ? p.attrs.s("mode") : "nearest";
    if (mode != "nearest" && mode != "linear")
      fail(fmt::format("{}: mode '{}' is not one of nearest, linear", p.label, mode));
    r.inputs = {p.inputs.at(0), engine::kNoValue, scales};
    r.attrs = engine::Attributes{{"mode", mode},
                                 {"coordinate_transformation_mode", std::string("asymmetric")},
                                 {"nearest_mode", std::string("floor")}};
    add_resize(r);
  }

  // Resize: nearest-neighbour by whole factors, with coordinates that repeat each pixel as a block (PyTorch's
  // F.interpolate(scale_factor=2)), is Reshape [N, C, H, 1, W, 1] -> Expand -> Reshape [N, C, H s, W s],
  // whose shapes read N and C with 0 so the graph holds at any batch size. Any other resize of the last two
  // axes (nearest, linear or cubic; any coordinate transformation but tf_crop_and_resize; any sizes)
  // multiplies by the constant interpolation matrix of each axis, built from ONNX's definition: MatMul(x,
  // M_W) along the last axis, MatMul(M_H, x) along the one before.
  void add_resize(const PendingNode& p) {
    const std::string hint = "the engine resizes the last two axes (nearest, linear or cubic)";
    if (p.inputs.empty() || p.inputs[0] == engine::kNoValue || p.outputs.size() != 1)
      fail(fmt::format("{} has no input or more than one output", p.label), hint);
    auto str = [&](const char* key, const char* def) {
      return p.attrs.has(key) ? p.attrs.s(key) : std::string(def);
    };
    const std::string mode = str("mode", "nearest"),
                      ctm = str("coordinate_transformation_mode", "half_pixel");
    const std::string nearest = str("nearest_mode", "round_prefer_floor");
    if (p.attrs.has("axes"))
      fail(fmt::format("{}: the axes attribute is not supported", p.label), "give scales for every axis");
    if (p.attrs.has("antialias") && p.attrs.i("antialias") != 0)
      fail(fmt::format("{}: antialias is not supported", p.label), hint);
    if (p.attrs.has("keep_aspect_ratio_policy") && p.attrs.s("keep_aspect_ratio_policy") != "stretch")
      fail(fmt::format("{}: keep_aspect_ratio_policy '{}' is not supported", p.label,
                       p.attrs.s("keep_aspect_ratio_policy")),
           hint);
    const std::set<std::string> transforms = {"half_pixel", "pytorch_half_pixel", "align_corners",
                                              "asymmetric", "tf_half_pixel_for_nn"};
    if ((mode != "nearest" && mode != "linear" && mode != "cubic") || !transforms.count(ctm))
      fail(fmt::format("{}: mode '{}' with coordinate_transformation_mode '{}' is not supported", p.label,
                       mode, ctm),
           hint);
    const Shape in = g().value(p.inputs[0]).shape;
    const int rank = in.rank();
    auto constant_input = [&](size_t k) -> const Tensor* {
      if (k >= p.inputs.size() || p.inputs[k] == engine::kNoValue) return nullptr;
      const engine::Value& v = g().value(p.inputs[k]);
      if (v.kind != engine::ValueKind::constant)
        fail(fmt::format("{}: input {} ('{}') is not a constant", p.label, k, v.name),
             "the engine needs static shapes: give scales or sizes as constants");
      const Tensor* t = g().initializer(p.inputs[k]);
      return t->numel() > 0 ? t : nullptr;
    };
    const Tensor* scales = constant_input(2);
    const Tensor* sizes = constant_input(3);
    std::vector<int64_t> out(rank);
    std::vector<double> scale(rank);
    for (int d = 0; d < rank; ++d) {
      if (sizes && sizes->numel() == rank) {
        out[d] = static_cast<int64_t>(sizes->get_f64(d));
        scale[d] = static_cast<double>(out[d]) / static_cast<double>(in[d]);
      } else if (scales && scales->numel() == rank) {
        scale[d] = scales->get_f64(d);
        out[d] = static_cast<int64_t>(std::floor(static_cast<double>(in[d]) * scale[d]));
      } else {
        fail(fmt::format("{}: neither scales nor sizes has one value per axis of its {}-D input", p.label,
                         rank),
             hint);
      }
      if (out[d] < 1 || scale[d] <= 0)
        fail(fmt::format("{}: axis {} of {} would have {} elements", p.label, d, in.str(), out[d]), hint);
      if (d < rank - 2 && out[d] != in[d])
        fail(fmt::format("{}: resizing axis {} of {} is not supported", p.label, d, in.str()), hint);
    }
    // The block form: nearest, whole factors, coordinates that map each block of outputs to one pixel.
    bool blocks =
        mode == "nearest" && ((ctm == "asymmetric" && nearest == "floor") ||
                              ((ctm == "half_pixel" || ctm == "pytorch_half_pixel") &&
                               (nearest == "round_prefer_floor" || nearest == "round_prefer_ceil")));
    for (int d = 0; d < rank && blocks; ++d)
      blocks = out[d] % in[d] == 0 && scale[d] == static_cast<double>(out[d] / in[d]) &&
               (d >= 2 || out[d] == in[d]);
    if (blocks) {
      std::vector<int64_t> split = {0, 0}, expand = {1, 1}, merged = {0, 0};
      for (int d = 2; d < rank; ++d) {
        const int64_t f = out[d] / in[d];
        split.push_back(in[d]);
        expand.push_back(1);
        if (f > 1) {
          split.push_back(1);
          expand.push_back(f);
        }
        merged.push_back(out[d]);
      }
      add_repeat(p, split, expand, merged, {});
      return;
    }
    const std::string base = p.base();
    const double a = p.attrs.has("cubic_coeff_a") ? p.attrs.f("cubic_coeff_a") : -0.75;
    const bool exclude = p.attrs.has("exclude_outside") && p.attrs.i("exclude_outside") != 0;
    const DType t = g().value(p.inputs[0]).dtype;
    // The interpolation matrix of one axis, [n, m]: column o holds the weights of output o.
    auto matrix = [&](int64_t n, int64_t m, double s) {
      std::vector<double> w(static_cast<size_t>(n * m), 0.0);
      for (int64_t o = 0; o < m; ++o) {
        // ONNX measures the resized length as n * scale before flooring it (2.4 for 4 elements at 0.6).
        const double length = static_cast<double>(n) * s;
        double x;
        if (ctm == "half_pixel")
          x = (o + 0.5) / s - 0.5;
        else if (ctm == "pytorch_half_pixel")
          x = length > 1 ? (o + 0.5) / s - 0.5 : 0.0;
        else if (ctm == "align_corners")
          x = length == 1 ? 0.0 : static_cast<double>(o) * static_cast<double>(n - 1) / (length - 1);
        else if (ctm == "asymmetric")
          x = o / s;
        else  // tf_half_pixel_for_nn
          x = (o + 0.5) / s;
        auto clamp = [&](int64_t i) { return std::clamp<int64_t>(i, 0, n - 1); };
        if (mode == "nearest") {
          const double f = std::floor(x), frac = x - f;
          int64_t i;
          if (nearest == "floor")
            i = static_cast<int64_t>(f);
          else if (nearest == "ceil")
            i = static_cast<int64_t>(std::ceil(x));
          else if (nearest == "round_prefer_ceil")
            i = static_cast<int64_t>(frac >= 0.5 ? f + 1 : f);
          else
            i = static_cast<int64_t>(frac > 0.5 ? f + 1 : f);
          w[static_cast<size_t>(clamp(i) * m + o)] += 1.0;
          continue;
        }
        // The taps around x: i0 = ceil(x) - 1 and its neighbours, with ratio x - i0 in (0, 1], as ONNX's
        // reference takes them; taps past the edges repeat the edge element.
        const int64_t i0 = static_cast<int64_t>(std::ceil(x)) - 1;
        const double r = x - static_cast<double>(i0);
        std::vector<std::pair<int64_t, double>> taps;
        if (mode == "linear") {
          taps = {{i0, 1 - r}, {i0 + 1, r}};
        } else {
          auto far = [&](double u) { return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a; };  // 1 < u < 2
          auto near = [&](double u) { return ((a + 2) * u - (a + 3)) * u * u + 1; };       // u <= 1
          taps = {{i0 - 1, far(r + 1)}, {i0, near(r)}, {i0 + 1, near(1 - r)}, {i0 + 2, far(2 - r)}};
        }
        double total = 0;
        for (auto& [i, c] : taps) {
          if (exclude && (i < 0 || i >= n)) c = 0;
          total += c;
        }
        for (const auto& [i, c] : taps)
          w[static_cast<size_t>(clamp(i) * m + o)] += exclude && total != 0 ? c / total : c;
      }
      return w;
    };
    wrap(p.label, [&] {
      ValueId v = p.inputs[0];
      const int last = rank - 1;
      std::vector<int> axes;
      for (int d = std::max(rank - 2, 0); d < rank; ++d)
        if (out[d] != in[d] || scale[d] != 1.0) axes.push_back(d);
      if (axes.empty()) {
        mark_batched(g().add_node_named("Identity", {v}, {}, p.outputs, p.name));
        return;
      }
      for (size_t k = 0; k < axes.size(); ++k) {
        const int d = axes[k];
        const std::vector<double> w = matrix(in[d], out[d], scale[d]);
        const bool along_last = d == last;
        // Along the last axis, x [.., n] times M [n, m]; along the one before, M^T [m, n] times x [.., n, W].
        Tensor mt(t, along_last ? Shape{in[d], out[d]} : Shape{out[d], in[d]});
        for (int64_t i = 0; i < in[d]; ++i)
          for (int64_t o = 0; o < out[d]; ++o)
            mt.set_f64(along_last ? i * out[d] + o : o * in[d] + i, w[static_cast<size_t>(i * out[d] + o)]);
        ValueId mc = g().add_constant(g().unique_name(base + (along_last ? "/weights_w" : "/weights_h")),
                                      std::move(mt));
        const bool final_node = k + 1 == axes.size();
        const std::string name = final_node ? p.name : base + (along_last ? "/resize_w" : "/resize_h");
        std::vector<std::string> outs = {final_node ? p.outputs[0] : g().unique_name(name)};
        NodeId id = g().add_node_named(
            "MatMul", along_last ? std::vector<ValueId>{v, mc} : std::vector<ValueId>{mc, v}, {}, outs, name);
        mark_batched(id);
        v = g().node(id).outputs[0];
      }
    });
  }

  // Tile(x [d0, d1, ...], repeats [r0, r1, ...]): x as [1, d0, 1, d1, ...] expanded to [r0, d0, r1, d1, ...]
  // and merged to [r0 d0, r1 d1, ...] (a dim repeated once gets no axis of its own). The repeats must be
  // constant, as every shape in a plan is.
  void add_tile(const PendingNode& p) {
    if (p.inputs.size() != 2 || p.inputs[0] == engine::kNoValue || p.inputs[1] == engine::kNoValue ||
        p.outputs.size() != 1)
      fail(fmt::format("{} must have an input, repeats and one output", p.label), "the exporter is broken");
    const engine::Value& rv = g().value(p.inputs[1]);
    if (rv.kind != engine::ValueKind::constant || rv.dtype != DType::i64 || rv.shape.rank() != 1)
      fail(fmt::format("{}: its repeats '{}' are not a constant 1-D int64 tensor", p.label, rv.name),
           "the engine needs static shapes: compute the repeats from constants and input shapes only");
    const Shape in = g().value(p.inputs[0]).shape;
    const Tensor& rt = *g().initializer(p.inputs[1]);
    if (rt.numel() != in.rank())
      fail(fmt::format("{}: {} repeats for a rank-{} input {}", p.label, rt.numel(), in.rank(), in.str()),
           "give one repeat per dimension");
    std::vector<int64_t> split, expand, merged;
    for (int d = 0; d < in.rank(); ++d) {
      const int64_t r = rt.get_i64(d);
      if (r < 0) fail(fmt::format("{}: repeat {} of dim {} is negative", p.label, r, d));
      if (r != 1) {
        split.push_back(1);
        expand.push_back(r);
      }
      split.push_back(in[d]);
      expand.push_back(in[d]);
      merged.push_back(r * in[d]);
    }
    add_repeat(p, split, expand, merged, {{"allowzero", int64_t{1}}});
  }

  // Einsum of one operand (sums over the indices the output lacks, then a Transpose) or two: indices only
  // one operand has and the output lacks are summed first; then each operand is transposed to [batch,
  // free, summed] (the other: [batch, summed, free]) and reshaped to [batch..., free, summed], one MatMul
  // contracts them (batch indices broadcast as MatMul's batch dimensions do), and the result is reshaped to
  // [batch..., free of the first..., free of the second...] and transposed to the output's order. An
  // ellipsis stands for the leading dimensions, aligned from the right. An index repeated within one operand
  // takes the diagonal: the operand times an identity mask, summed over the repeat.
  void add_einsum(const PendingNode& p) {
    if (p.outputs.size() != 1 || !p.attrs.has("equation"))
      fail(fmt::format("{} needs an equation and one output", p.label), "the exporter is broken");
    if (p.inputs.empty() || p.inputs.size() > 2)
      fail(fmt::format("{} has {} operands; Einsum of one or two is supported", p.label, p.inputs.size()),
           "write a product of more operands as a chain of two-operand einsums");
    std::string eq;
    for (char c : p.attrs.s("equation"))
      if (c != ' ') eq += c;
    const size_t arrow = eq.find("->");
    const std::string lhs = eq.substr(0, arrow);
    std::vector<std::string> terms;
    for (size_t start = 0;;) {
      const size_t comma = lhs.find(',', start);
      terms.push_back(lhs.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    auto bad = [&](const std::string& why) {
      fail(fmt::format("{}: equation '{}' {}", p.label, p.attrs.s("equation"), why),
           "Einsum takes letters, an optional ellipsis per operand, and an output after ->");
    };
    if (terms.size() != p.inputs.size())
      bad(fmt::format("names {} operands for {} inputs", terms.size(), p.inputs.size()));
    // Labels: a letter is its character; the ellipsis's dimensions are 256 + their place from the right.
    std::vector<std::vector<int>> labels;
    std::vector<Shape> shapes;
    int ellipsis = 0;
    auto parse = [&](const std::string& term, int64_t rank) {
      std::vector<int> out;
      const size_t dots = term.find("...");
      const int64_t letters = static_cast<int64_t>(term.size()) - (dots == std::string::npos ? 0 : 3);
      const int64_t e = dots == std::string::npos ? 0 : rank - letters;
      if (e < 0 || (dots == std::string::npos && letters != rank))
        bad(fmt::format("gives operand '{}' {} indices, and its rank is {}", term, letters, rank));
      ellipsis = std::max<int>(ellipsis, static_cast<int>(e));
      for (size_t i = 0; i < term.size(); ++i) {
        if (i == dots) {
          for (int64_t k = e; k > 0; --k) out.push_back(256 + static_cast<int>(k) - 1);
          i += 2;
          continue;
        }
        if (!std::isalpha(static_cast<unsigned char>(term[i])))
          bad(fmt::format("has '{}', which is not an index letter", term[i]));
        out.push_back(term[i]);
      }
      return out;
    };
    for (size_t k = 0; k < terms.size(); ++k) {
      shapes.push_back(g().value(p.inputs[k]).shape);
      labels.push_back(parse(terms[k], shapes[k].rank()));
    }
    std::vector<int> out;
    if (arrow != std::string::npos) {
      const std::string rhs = eq.substr(arrow + 2);
      const bool dots = rhs.find("...") != std::string::npos;
      if (ellipsis > 0 && !dots) bad("drops the ellipsis's dimensions from the output");
      out = parse(rhs, static_cast<int64_t>(rhs.size()) - (dots ? 3 - ellipsis : 0));
      std::vector<int> seen = out;
      std::sort(seen.begin(), seen.end());
      if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) bad("repeats an output index");
    } else {  // implicit output: the ellipsis, then the letters used once, in alphabetical order
      for (int k = ellipsis; k > 0; --k) out.push_back(256 + k - 1);
      std::map<int, int> uses;
      for (const auto& l : labels)
        for (int c : l)
          if (c < 256) ++uses[c];
      for (const auto& [c, n] : uses)
        if (n == 1) out.push_back(c);
    }
    auto has = [](const std::vector<int>& v, int c) { return std::find(v.begin(), v.end(), c) != v.end(); };
    for (int c : out)
      if (!std::any_of(labels.begin(), labels.end(), [&](const std::vector<int>& l) { return has(l, c); }))
        bad(fmt::format("has output index '{}', which no operand has", static_cast<char>(c)));
    std::map<int, int64_t> size;  // the broadcast size of each label
    for (size_t k = 0; k < labels.size(); ++k)
      for (size_t d = 0; d < labels[k].size(); ++d) {
        int64_t& s = size[labels[k][d]];
        const int64_t n = shapes[k][static_cast<int>(d)];
        if (s > 1 && n > 1 && s != n)
          fail(fmt::format("{}: index '{}' has sizes {} and {}", p.label,
                           labels[k][d] < 256 ? std::string(1, static_cast<char>(labels[k][d])) : "...", s,
                           n));
        s = std::max(s, n);
      }

    wrap(p.label, [&] {
      int part = 0;
      auto next = [&](const char* what) { return fmt::format("{}{}", what, part++); };
      std::vector<ValueId> operands(p.inputs.begin(), p.inputs.end());
      for (size_t k = 0; k < labels.size(); ++k)
        for (;;) {
          std::vector<int>& l = labels[k];
          size_t first = 0, second = 0;
          for (size_t i = 0; i < l.size() && !second; ++i)
            for (size_t j = i + 1; j < l.size() && !second; ++j)
              if (l[i] == l[j]) first = i, second = j;
          if (!second) break;
          const std::vector<int64_t> d = g().value(operands[k]).shape.dims();
          if (d[first] != d[second])
            fail(fmt::format("{}: the repeated index '{}' has sizes {} and {}", p.label,
                             static_cast<char>(l[first]), d[first], d[second]));
          std::vector<int64_t> mask_dims(d.size(), 1);
          mask_dims[first] = mask_dims[second] = d[first];
          Tensor mask(g().value(operands[k]).dtype, Shape(mask_dims));
          for (int64_t i = 0; i < d[first]; ++i) mask.set_f64(i * d[first] + i, 1.0);
          ValueId m = g().add_constant(g().unique_name(p.base() + "/" + next("diagonal")), std::move(mask));
          ValueId v = add_part(p, "Mul", {operands[k], m}, {}, next("masked"));
          operands[k] =
              add_part(p, "ReduceSum", {v, ints_constant(p, next("axes"), {static_cast<int64_t>(second)})},
                       {{"keepdims", int64_t{0}}}, next("diagonal"));
          l.erase(l.begin() + static_cast<std::ptrdiff_t>(second));
        }
      // Sums over the labels of operand k that nothing else has.
      auto sum_alone = [&](size_t k, ValueId v) {
        std::vector<int64_t> axes;
        std::vector<int> kept;
        for (size_t d = 0; d < labels[k].size(); ++d) {
          const int c = labels[k][d];
          const bool elsewhere = has(out, c) || (labels.size() == 2 && has(labels[1 - k], c));
          if (elsewhere)
            kept.push_back(c);
          else
            axes.push_back(static_cast<int64_t>(d));
        }
        if (!axes.empty())
          v = add_part(p, "ReduceSum", {v, ints_constant(p, next("axes"), axes)}, {{"keepdims", int64_t{0}}},
                       next("sum"));
        labels[k] = kept;
        return v;
      };
      // v (labels `from`) in the order `to`; nothing when it already is.
      auto permute = [&](ValueId v, const std::vector<int>& from, const std::vector<int>& to, bool last) {
        std::vector<int64_t> perm;
        for (int c : to) perm.push_back(std::find(from.begin(), from.end(), c) - from.begin());
        bool identity = true;
        for (size_t i = 0; i < perm.size(); ++i) identity = identity && perm[i] == static_cast<int64_t>(i);
        if (identity && !last) return v;
        if (identity) return add_part(p, "Identity", {v}, {}, "identity", true);
        return add_part(p, "Transpose", {v}, {{"perm", perm}}, next("transpose"), last);
      };
      auto dims = [&](ValueId v) { return g().value(v).shape.dims(); };
      if (labels.size() == 1) {
        ValueId v = sum_alone(0, operands[0]);
        permute(v, labels[0], out, true);
        return;
      }
      ValueId a = sum_alone(0, operands[0]), b = sum_alone(1, operands[1]);
      std::vector<int> batch, free_a, free_b, summed;
      for (int c : labels[0]) {
        if (has(labels[1], c))
          (has(out, c) ? batch : summed).push_back(c);
        else
          free_a.push_back(c);
      }
      for (int c : labels[1])
        if (!has(labels[0], c)) free_b.push_back(c);
      auto concat = [](std::vector<int> x, const std::vector<int>& y) {
        x.insert(x.end(), y.begin(), y.end());
        return x;
      };
      auto product = [&](const std::vector<int>& ls) {
        int64_t n = 1;
        for (int c : ls) n *= size[c];
        return n;
      };
      // An operand as [its own sizes of the batch labels (MatMul broadcasts ones), rows, columns].
      auto matrix = [&](ValueId v, int64_t rows, int64_t cols) {
        std::vector<int64_t> shape = dims(v);
        shape.resize(batch.size());
        shape.insert(shape.end(), {rows, cols});
        return add_part(p, "Reshape", {v, ints_constant(p, next("shape"), shape)}, {}, next("matrix"));
      };
      a = permute(a, labels[0], concat(concat(batch, free_a), summed), false);
      b = permute(b, labels[1], concat(concat(batch, summed), free_b), false);
      a = matrix(a, product(free_a), product(summed));
      b = matrix(b, product(summed), product(free_b));
      ValueId c = add_part(p, "MatMul", {a, b}, {}, "product");
      std::vector<int64_t> split;
      for (int l : batch) split.push_back(size[l]);
      for (int l : concat(free_a, free_b)) split.push_back(size[l]);
      const std::vector<int> have = concat(concat(batch, free_a), free_b);
      std::vector<int64_t> perm;
      for (int l : out) perm.push_back(std::find(have.begin(), have.end(), l) - have.begin());
      bool identity = true;
      for (size_t i = 0; i < perm.size(); ++i) identity = identity && perm[i] == static_cast<int64_t>(i);
      c = add_part(p, "Reshape", {c, ints_constant(p, next("shape"), split)}, {}, next("split"), identity);
      if (!identity) permute(c, have, out, true);
    });
  }

  // A scalar constant "<node>/<what>" of dtype t.
  ValueId scalar_constant(const PendingNode& p, const std::string& what, double v, DType t) {
    Tensor c(t, Shape{});
    c.set_f64(0, v);
    return g().add_constant(g().unique_name(p.base() + "/" + what), std::move(c));
  }

  // The rewrites that are short formulas of other ops (see rewritten()); false for an op that is not one.
  bool add_formula(const PendingNode& p) {
    if (!formula_op(p.op)) return false;
    const size_t outputs = p.op == "TopK" ? 2u : p.op == "DynamicQuantizeLinear" ? 3u : 1u;
    if (p.inputs.empty() || p.inputs[0] == engine::kNoValue || p.outputs.size() != outputs)
      fail(fmt::format("{} has no input or a wrong number of outputs", p.label), "the exporter is broken");
    const ValueId x = p.inputs[0];
    const Shape xs = g().value(x).shape;
    const DType t = g().value(x).dtype;
    auto node = [&](const std::string& op, std::vector<ValueId> ins, engine::Attributes a,
                    const std::string& what,
                    bool last = false) { return add_part(p, op, std::move(ins), std::move(a), what, last); };
    auto c = [&](const std::string& what, double v) { return scalar_constant(p, what, v, t); };
    auto float_attr = [&](const char* name, double d) { return p.attrs.has(name) ? p.attrs.f(name) : d; };
    auto constant_input = [&](size_t i, const char* what) -> const Tensor& {
      if (p.inputs.size() <= i || p.inputs[i] == engine::kNoValue ||
          g().value(p.inputs[i]).kind != engine::ValueKind::constant)
        fail(fmt::format("{}: its {} must be a constant", p.label, what),
             "the engine needs static shapes: compute it from constants and input shapes only");
      return *g().initializer(p.inputs[i]);
    };
    // A constant input that holds one integer (TopK's K, CumSum's axis).
    auto single_value = [&](const Tensor& t, const char* what) {
      if (t.numel() != 1)
        fail(fmt::format("its {} holds {} values, not one", what, t.numel()), "the exporter is broken");
      return t.get_i64(0);
    };
    // The node's axis attribute (default d), made non-negative and checked against the input's rank.
    auto axis_attr = [&](int64_t d) {
      int64_t axis = p.attrs.has("axis") ? p.attrs.i("axis") : d;
      if (axis < 0) axis += xs.rank();
      if (axis < 0 || axis >= xs.rank())
        fail(fmt::format("{}: axis {} is out of range for {}", p.label, axis, xs.str()));
      return axis;
    };
    // Where ReduceMax's top came from: the positions equal to it, or, when it is NaN (which nothing equals),
    // the NaN positions; "equal to the top" compared with "is a number", in float f (bools have no
    // arithmetic).
    auto at_top = [&](ValueId v, ValueId top, DType f, const std::string& s) {
      const engine::Attributes to_f{{"to", int64_t{engine::dtype_to_onnx(f)}}};
      const ValueId number = node("Cast", {node("Equal", {v, v}, {}, "self" + s)}, to_f, "number" + s);
      const ValueId equal = node("Cast", {node("Equal", {v, top}, {}, "equal" + s)}, to_f, "at_top" + s);
      return node("Equal", {number, equal}, {}, "hit" + s);
    };
    // Integer indices as int64, negative ones counted from the end of an axis of n, as ONNX says.
    auto class_index = [&](ValueId v, int64_t n) {
      const ValueId ids = node("Cast", {v}, {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}}, "ids");
      auto i64 = [&](const std::string& what, double d) { return scalar_constant(p, what, d, DType::i64); };
      return node("Where",
                  {node("Less", {ids, i64("zero", 0)}, {}, "negative"),
                   node("Add", {ids, i64("count", static_cast<double>(n))}, {}, "shifted"), ids},
                  {}, "wrapped");
    };
    // The int64 constant 0..n-1 along axis `at` of a rank-`rank` shape of ones.
    auto class_ids = [&](int64_t rank, int64_t at, int64_t n) {
      std::vector<int64_t> shape(static_cast<size_t>(rank), 1), ids(static_cast<size_t>(n));
      shape[static_cast<size_t>(at)] = n;
      for (int64_t k = 0; k < n; ++k) ids[static_cast<size_t>(k)] = k;
      return g().add_constant(g().unique_name(p.base() + "/classes"),
                              Tensor::from<int64_t>(Shape(shape), ids));
    };
    wrap(p.label, [&] {
      if (p.op == "DepthToSpace" || p.op == "SpaceToDepth") {
        if (xs.rank() != 4) fail(fmt::format("{}: the input {} is not [N, C, H, W]", p.label, xs.str()));
        const int64_t b = p.attrs.has("blocksize") ? p.attrs.i("blocksize") : 0;
        const int64_t ch = xs[1], h = xs[2], w = xs[3];
        const bool to_space = p.op == "DepthToSpace";
        if (b < 1 || b > (int64_t{1} << 20) || (to_space ? ch % (b * b) : h % b + w % b) != 0)
          fail(fmt::format("{}: blocksize {} does not divide the input {}", p.label, b, xs.str()));
        const bool crd = to_space && p.attrs.has("mode") && p.attrs.s("mode") == "CRD";
        std::vector<int64_t> split, perm, merged;
        if (!to_space) {
          split = {0, ch, h / b, b, w / b, b}, perm = {0, 3, 5, 1, 2, 4},
          merged = {0, ch * b * b, h / b, w / b};
        } else if (crd) {
          split = {0, ch / (b * b), b, b, h, w}, perm = {0, 1, 4, 2, 5, 3},
          merged = {0, ch / (b * b), h * b, w * b};
        } else {  // DCR
          split = {0, b, b, ch / (b * b), h, w}, perm = {0, 3, 4, 1, 5, 2},
          merged = {0, ch / (b * b), h * b, w * b};
        }
        ValueId v = node("Reshape", {x, ints_constant(p, "split", split)}, {}, "split");
        v = node("Transpose", {v}, {{"perm", perm}}, "transpose");
        node("Reshape", {v, ints_constant(p, "merged", merged)}, {}, "merged", true);
      } else if (p.op == "Trilu") {
        // Keeps j - i >= k (upper, the default) or j - i <= k (lower) of the last two axes.
        if (xs.rank() < 2) fail(fmt::format("{}: the input {} has fewer than two axes", p.label, xs.str()));
        const int64_t k = p.inputs.size() > 1 && p.inputs[1] != engine::kNoValue
                              ? single_value(constant_input(1, "k"), "k")
                              : 0;
        const bool upper = !p.attrs.has("upper") || p.attrs.i("upper") != 0;
        const int64_t rows = xs[xs.rank() - 2], cols = xs[xs.rank() - 1];
        Tensor keep(DType::boolean, Shape{rows, cols});
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j) keep.set_f64(i * cols + j, upper ? j - i >= k : j - i <= k);
        ValueId m = g().add_constant(g().unique_name(p.base() + "/triangle"), std::move(keep));
        node("Where", {m, x, c("zero", 0)}, {}, "where", true);
      } else if (p.op == "CastLike") {
        if (p.inputs.size() != 2 || p.inputs[1] == engine::kNoValue)
          fail(fmt::format("{} needs an input and a target", p.label), "the exporter is broken");
        node("Cast", {x}, {{"to", int64_t{engine::dtype_to_onnx(g().value(p.inputs[1]).dtype)}}}, "cast",
             true);
      } else if (p.op == "Celu") {  // max(0, x) + min(0, alpha (exp(x / alpha) - 1))
        const double a = float_attr("alpha", 1.0);
        ValueId e = node("Exp", {node("Mul", {x, c("inverse_alpha", 1 / a)}, {}, "scaled")}, {}, "exp");
        ValueId neg =
            node("Min",
                 {c("zero", 0),
                  node("Mul", {node("Sub", {e, c("one", 1)}, {}, "expm1"), c("alpha", a)}, {}, "elu")},
                 {}, "negative");
        node("Add", {node("Relu", {x}, {}, "positive"), neg}, {}, "celu", true);
      } else if (p.op == "Mish") {  // x tanh(softplus(x))
        node("Mul", {x, node("Tanh", {node("Softplus", {x}, {}, "softplus")}, {}, "tanh")}, {}, "mish", true);
      } else if (p.op == "ThresholdedRelu") {  // x where x > alpha, else 0
        ValueId above = node("Greater", {x, c("alpha", float_attr("alpha", 1.0))}, {}, "above");
        node("Where", {above, x, c("zero", 0)}, {}, "where", true);
      } else if (p.op == "Cosh" || p.op == "Sinh") {  // (exp(x) +- exp(-x)) / 2
        ValueId ep = node("Exp", {x}, {}, "exp");
        ValueId en = node("Exp", {node("Neg", {x}, {}, "negated")}, {}, "exp_negated");
        ValueId s = node(p.op == "Cosh" ? "Add" : "Sub", {ep, en}, {}, "sum");
        node("Mul", {s, c("half", 0.5)}, {}, "half", true);
      } else if (p.op == "And" || p.op == "Or" || p.op == "Xor" || p.op == "Not") {
        // On bytes: And is a product, Or a maximum, Xor a difference that is not 0, Not 1 minus the byte.
        const int64_t u8 = engine::dtype_to_onnx(DType::u8), boolean = engine::dtype_to_onnx(DType::boolean);
        auto bytes = [&](ValueId v, const char* what) { return node("Cast", {v}, {{"to", u8}}, what); };
        const ValueId a = bytes(x, "a");
        ValueId r;
        if (p.op == "Not") {
          r = node("Sub", {scalar_constant(p, "one", 1, DType::u8), a}, {}, "not");
        } else {
          if (p.inputs.size() != 2 || p.inputs[1] == engine::kNoValue)
            fail(fmt::format("{} needs two inputs", p.label), "the exporter is broken");
          const ValueId b = bytes(p.inputs[1], "b");
          r = node(p.op == "And" ? "Mul" : p.op == "Or" ? "Max" : "Sub", {a, b}, {}, "bytes");
        }
        node("Cast", {r}, {{"to", boolean}}, "bool", true);
      } else if (p.op == "ArgMax" || p.op == "ArgMin") {
        // The extreme's index along the axis: the positions equal to the ReduceMax (of -x for ArgMin) keep
        // their index, negated to find the first (or, with select_last_index, the last) by another ReduceMax;
        // indices travel as floats (exact below 2^24) and end as int64. A NaN is the extreme, as numpy's
        // argmax and argmin (ONNX's reference) take it.
        const int64_t axis = axis_attr(0);
        const bool keepdims = !p.attrs.has("keepdims") || p.attrs.i("keepdims") != 0;
        const bool last = p.attrs.has("select_last_index") && p.attrs.i("select_last_index") != 0;
        const int64_t n = xs[static_cast<int>(axis)];
        const DType f = DType::f32;
        ValueId v = x;
        if (t != f) v = node("Cast", {v}, {{"to", int64_t{engine::dtype_to_onnx(f)}}}, "float");
        if (p.op == "ArgMin") v = node("Neg", {v}, {}, "negated");
        const engine::Attributes along{{"axes", std::vector<int64_t>{axis}}, {"keepdims", int64_t{1}}};
        const ValueId hit = at_top(v, node("ReduceMax", {v}, along, "top"), f, "");
        std::vector<int64_t> index_shape(static_cast<size_t>(xs.rank()), 1);
        index_shape[static_cast<size_t>(axis)] = n;
        Tensor index(f, Shape(index_shape));
        for (int64_t k = 0; k < n; ++k)
          index.set_f64(k, last ? static_cast<double>(k) : -static_cast<double>(k));
        const ValueId ids = g().add_constant(g().unique_name(p.base() + "/index"), std::move(index));
        ValueId best = node("Where", {hit, ids, scalar_constant(p, "miss", -static_cast<double>(n) - 1, f)},
                            {}, "candidates");
        best =
            node("ReduceMax", {best},
                 {{"axes", std::vector<int64_t>{axis}}, {"keepdims", int64_t{keepdims ? 1 : 0}}}, "chosen");
        if (!last) best = node("Neg", {best}, {}, "first");
        node("Cast", {best}, {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}}, "index", true);
      } else if (p.op == "TopK") {
        // K rounds of the ArgMax above over the elements not yet taken (a float mask of 1s and 0s): each
        // takes the first largest (smallest) element left, reads its value from x through a one-hot Where (so
        // values carry gradients), and clears it from the mask; the rounds are concatenated along the axis,
        // sorted, ties broken by the lower index as ONNX says. A NaN ranks above every number, as onnxruntime
        // ranks it: first when largest, last when smallest (while numbers are left, only they are eligible).
        // The mask, not a sentinel value, marks what is taken, so an input's -inf is never taken twice.
        const int64_t rank = xs.rank();
        const int64_t axis = axis_attr(-1);
        const int64_t n = xs[static_cast<int>(axis)];
        const int64_t k = single_value(constant_input(1, "K"), "K");
        if (k < 1 || k > n) fail(fmt::format("{}: K = {} is not in [1, {}]", p.label, k, n));
        const bool largest = !p.attrs.has("largest") || p.attrs.i("largest") != 0;
        const DType f = t == DType::f32 || t == DType::f64 ? t : DType::f64;
        const int64_t as_f = engine::dtype_to_onnx(f);
        auto to_float = [&](ValueId b, const std::string& name) {
          return node("Cast", {b}, {{"to", as_f}}, name);
        };
        ValueId v = f == t ? x : to_float(x, "float");
        const ValueId source = v;
        if (!largest) v = node("Neg", {v}, {}, "negated");
        std::vector<int64_t> index_shape(static_cast<size_t>(rank), 1);
        index_shape[static_cast<size_t>(axis)] = n;
        Tensor up(f, Shape(index_shape)), down(f, Shape(index_shape));
        for (int64_t i = 0; i < n; ++i)
          up.set_f64(i, static_cast<double>(i)), down.set_f64(i, -static_cast<double>(i));
        const ValueId ids = g().add_constant(g().unique_name(p.base() + "/index"), std::move(up));
        const ValueId neg_ids =
            g().add_constant(g().unique_name(p.base() + "/negated_index"), std::move(down));
        const engine::Attributes along{{"axes", std::vector<int64_t>{axis}}, {"keepdims", int64_t{1}}};
        const ValueId miss = scalar_constant(p, "miss", -static_cast<double>(n) - 1, f);
        const ValueId zero = scalar_constant(p, "zero", 0, f);
        const ValueId one = scalar_constant(p, "one", 1, f);
        const ValueId low = scalar_constant(p, "low", -std::numeric_limits<double>::infinity(), f);
        const ValueId number =
            largest ? engine::kNoValue : to_float(node("Equal", {v, v}, {}, "self"), "number");
        ValueId left = engine::kNoValue;  // the mask of elements not taken; none before the first round
        std::vector<ValueId> values, indices;
        for (int64_t r = 0; r < k; ++r) {
          const std::string s = std::to_string(r);
          ValueId eligible = left;
          if (!largest) {
            const ValueId numbers =
                left == engine::kNoValue ? number : node("Mul", {left, number}, {}, "numbers" + s);
            const ValueId any =
                node("Equal", {node("ReduceMax", {numbers}, along, "any" + s), one}, {}, "some" + s);
            eligible =
                node("Where", {any, numbers, left == engine::kNoValue ? one : left}, {}, "eligible" + s);
          }
          const ValueId ranked =
              eligible == engine::kNoValue
                  ? v
                  : node("Where", {node("Equal", {eligible, one}, {}, "open" + s), v, low}, {}, "ranked" + s);
          ValueId same =
              to_float(at_top(ranked, node("ReduceMax", {ranked}, along, "top" + s), f, s), "same" + s);
          if (eligible != engine::kNoValue) same = node("Mul", {same, eligible}, {}, "same_open" + s);
          const ValueId hit = node("Equal", {same, one}, {}, "open_hit" + s);
          const ValueId first =
              node("Neg",
                   {node("ReduceMax", {node("Where", {hit, neg_ids, miss}, {}, "candidates" + s)}, along,
                         "chosen" + s)},
                   {}, "first" + s);
          const ValueId pick = node("Equal", {ids, first}, {}, "pick" + s);
          values.push_back(
              node("ReduceSum", {node("Where", {pick, source, zero}, {}, "picked" + s)}, along, "value" + s));
          indices.push_back(
              node("Cast", {first}, {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}}, "index" + s));
          if (r + 1 < k)
            left = node("Sub", {left == engine::kNoValue ? one : left, to_float(pick, "taken" + s)}, {},
                        "left" + s);
        }
        const engine::Attributes cat{{"axis", axis}};
        ValueId vals = values.size() == 1 ? values[0] : node("Concat", values, cat, "values");
        if (f != t) vals = node("Cast", {vals}, {{"to", int64_t{engine::dtype_to_onnx(t)}}}, "cast");
        const ValueId idx = indices.size() == 1 ? indices[0] : node("Concat", indices, cat, "indices");
        mark_batched(g().add_node_named("Identity", {vals}, {}, {p.outputs[0]},
                                        p.name.empty() ? g().unique_name(p.base() + "/Values") : p.name));
        mark_batched(g().add_node_named("Identity", {idx}, {}, {p.outputs[1]},
                                        g().unique_name(p.base() + "/Indices")));
      } else if (p.op == "GatherElements") {
        // out[..i..] = data[..indices[..i..]..] along the axis (torch.gather): each index as a one-hot row
        // over the data's axis, the data picked by a Where and summed over that axis, so the gradient reaches
        // it.
        if (p.inputs.size() != 2 || p.inputs[1] == engine::kNoValue)
          fail(fmt::format("{} needs data and indices", p.label), "the exporter is broken");
        const int64_t axis = axis_attr(0), rank = xs.rank();
        const Shape is = g().value(p.inputs[1]).shape;
        bool fits = is.rank() == rank;
        for (int64_t d = 0; fits && d < rank; ++d)
          fits = d == axis || is[static_cast<int>(d)] == xs[static_cast<int>(d)];
        if (!fits)
          fail(fmt::format("{}: indices {} must match the data {} but along axis {}", p.label, is.str(),
                           xs.str(), axis),
               "gather from data of the indices' size (slice it first)");
        const int64_t n = xs[static_cast<int>(axis)];
        auto with_one = [&](const Shape& s, int64_t at) {  // s with a dimension of 1 inserted at `at`
          std::vector<int64_t> d = s.dims();
          d.insert(d.begin() + at, 1);
          return d;
        };
        const ValueId wrapped = class_index(p.inputs[1], n);
        const ValueId classes = class_ids(rank + 1, axis + 1, n);
        const ValueId rows =
            node("Reshape", {wrapped, ints_constant(p, "rows", with_one(is, axis + 1))}, {}, "rows");
        const ValueId hot = node("Equal", {rows, classes}, {}, "hot");  // [.., m, n, ..]
        const ValueId data = node("Reshape", {x, ints_constant(p, "data", with_one(xs, axis))}, {}, "data");
        const ValueId picked = node("Where", {hot, data, c("zero", 0)}, {}, "picked");
        node("ReduceSum", {picked}, {{"axes", std::vector<int64_t>{axis + 1}}, {"keepdims", int64_t{0}}},
             "gathered", true);
      } else if (p.op == "GatherND" || p.op == "ScatterND" || p.op == "ScatterElements" ||
                 p.op == "Scatter") {
        // The data as a table [rows, rest...] and each index as a flat row number: GatherND gathers the rows;
        // ScatterND and ScatterElements add the updates into them (GatherGrad, a deterministic scatter-add)
        // after clearing them unless the reduction is add.
        const bool gather = p.op == "GatherND", elements = p.op == "ScatterElements" || p.op == "Scatter";
        const size_t arity = gather ? 2 : 3;
        if (p.inputs.size() != arity || p.inputs[1] == engine::kNoValue ||
            (!gather && p.inputs[2] == engine::kNoValue))
          fail(fmt::format("{} needs {} inputs", p.label, arity), "the exporter is broken");
        const Shape is = g().value(p.inputs[1]).shape;
        const int64_t rank = xs.rank();
        const int64_t to_i64 = engine::dtype_to_onnx(DType::i64);
        auto i64 = [&](const std::string& what, double d) { return scalar_constant(p, what, d, DType::i64); };
        const ValueId ids = node("Cast", {p.inputs[1]}, {{"to", to_i64}}, "ids");
        // An index along an axis of n: negative counts from the end, and one outside [-n, n) is an error
        // naming the node (not a write into a neighbouring row of the flat table): a Gather from 0 .. n-1
        // checks and wraps it.
        auto wrapped = [&](ValueId v, int64_t n, const std::string& what, int64_t axis) {
          // Constant indices (folded at import) are checked here, against the ONNX node.
          if (const Tensor* t = g().initializer(v))
            for (int64_t i = 0; i < t->numel(); ++i)
              if (const int64_t at = t->get_i64(i); at < -n || at >= n)
                fail(fmt::format("{}: index {} is out of range for axis {} of size {} of the data {}",
                                 p.label, at, axis, n, xs.str()),
                     axis == 0 && options_.batch_size > 0 && xs[0] == options_.batch_size
                         ? std::string("axis 0 is the batch, whose size varies (the model is also built at "
                                       "batch 1, and a last batch may be smaller): constant indices into it "
                                       "hold at some sizes only; export the model so that it does not index "
                                       "the batch")
                         : "the model's constant indices must lie within the data's shape");
          std::vector<int64_t> positions(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = i;
          return node("Gather",
                      {g().add_constant(g().unique_name(p.base() + "/" + what + "/positions"),
                                        Tensor::from<int64_t>(Shape{n}, positions)),
                       v},
                      {{"axis", int64_t{0}}}, what + "/wrapped");
        };
        ValueId rows = engine::kNoValue;  // flat row numbers
        int64_t table_rows = 1, count = 1;
        std::vector<int64_t> rest;
        if (elements) {
          const int64_t axis = axis_attr(0);
          bool fits = is.rank() == rank;
          for (int64_t d = 0; fits && d < rank; ++d)
            fits = is[static_cast<int>(d)] <= xs[static_cast<int>(d)];
          if (!fits)
            fail(fmt::format("{}: indices {} must have the data's rank and fit in {}", p.label, is.str(),
                             xs.str()));
          // Row number = the position's offset in the data with the axis coordinate replaced by the index.
          std::vector<int64_t> stride(static_cast<size_t>(rank), 1), base(static_cast<size_t>(is.numel()));
          for (int64_t d = rank - 2; d >= 0; --d)
            stride[static_cast<size_t>(d)] = stride[static_cast<size_t>(d) + 1] * xs[static_cast<int>(d) + 1];
          for (int64_t i = 0; i < is.numel(); ++i) {
            int64_t rem = i, off = 0;
            for (int64_t d = rank - 1; d >= 0; --d) {
              const int64_t coord = rem % is[static_cast<int>(d)];
              rem /= is[static_cast<int>(d)];
              if (d != axis) off += coord * stride[static_cast<size_t>(d)];
            }
            base[static_cast<size_t>(i)] = off;
          }
          const ValueId offsets =
              g().add_constant(g().unique_name(p.base() + "/offsets"), Tensor::from<int64_t>(is, base));
          const ValueId along = node("Mul",
                                     {wrapped(ids, xs[static_cast<int>(axis)], "index", axis),
                                      i64("stride", static_cast<double>(stride[static_cast<size_t>(axis)]))},
                                     {}, "along");
          rows = node("Reshape",
                      {node("Add", {offsets, along}, {}, "rows"), ints_constant(p, "flat", {is.numel()})}, {},
                      "row_numbers");
          table_rows = xs.numel();
          count = is.numel();
        } else {
          const int64_t batch = gather && p.attrs.has("batch_dims") ? p.attrs.i("batch_dims") : 0;
          const int64_t k = is.rank() > 0 ? is[is.rank() - 1] : 0;
          bool fits = is.rank() >= 1 && batch >= 0 && batch < is.rank() && k >= 1 && batch + k <= rank;
          for (int64_t d = 0; fits && d < batch; ++d)
            fits = is[static_cast<int>(d)] == xs[static_cast<int>(d)];
          if (!fits)
            fail(fmt::format("{}: indices {} do not index the data {}{}", p.label, is.str(), xs.str(),
                             batch ? fmt::format(" after {} batch dims", batch) : std::string()));
          // Horner over the index columns: ((i0 * d1 + i1) * d2 + i2) ...
          int64_t span = 1;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t n = xs[static_cast<int>(batch + j)];
            const std::string col = fmt::format("column{}", j);
            const ValueId c =
                wrapped(node("Slice",
                             {ids, ints_constant(p, col + "/start", {j}),
                              ints_constant(p, col + "/end", {j + 1}), ints_constant(p, col + "/axis", {-1})},
                             {}, col),
                        n, col, batch + j);
            rows = j == 0 ? c
                          : node("Add",
                                 {node("Mul", {rows, i64(col + "/scale", static_cast<double>(n))}, {},
                                       col + "/scaled"),
                                  c},
                                 {}, col + "/row");
            span *= n;
          }
          if (batch > 0) {  // rows of batch item b start at b * span
            std::vector<int64_t> shape = is.dims(), starts;
            shape.back() = 1;
            int64_t items = 1;
            for (int64_t d = 0; d < batch; ++d) items *= is[static_cast<int>(d)];
            for (int64_t d = batch; d < is.rank(); ++d) shape[static_cast<size_t>(d)] = 1;
            for (int64_t b = 0; b < items; ++b) starts.push_back(b * span);
            rows = node("Add",
                        {rows, g().add_constant(g().unique_name(p.base() + "/batch_rows"),
                                                Tensor::from<int64_t>(Shape(shape), starts))},
                        {}, "rows");
          }
          for (int64_t d = 0; d < batch + k; ++d) table_rows *= xs[static_cast<int>(d)];
          rest.assign(xs.dims().begin() + batch + k, xs.dims().end());
          std::vector<int64_t> lead(is.dims().begin(), is.dims().end() - 1);
          for (int64_t d : lead) count *= d;
          // The row numbers in the indices' leading shape (a gather keeps it; a scatter takes them flat).
          rows = node("Reshape",
                      {rows, ints_constant(p, "row_shape", gather ? lead : std::vector<int64_t>{count})}, {},
                      "row_numbers");
        }
        std::vector<int64_t> table = {table_rows};
        table.insert(table.end(), rest.begin(), rest.end());
        ValueId data = node("Reshape", {x, ints_constant(p, "table", table)}, {}, "table");
        if (gather) {
          node("Gather", {data, rows}, {{"axis", int64_t{0}}}, "gathered", true);
        } else {
          const std::string reduction =
              p.attrs.has("reduction") ? p.attrs.s("reduction") : std::string("none");
          if (reduction != "none" && reduction != "add")
            fail(fmt::format("{}: reduction '{}' is not supported", p.label, reduction), "use none or add");
          std::vector<int64_t> flat_updates = {count};
          flat_updates.insert(flat_updates.end(), rest.begin(), rest.end());
          if (g().value(p.inputs[2]).shape.numel() !=
              count * (table.empty() ? 1 : Shape(table).numel() / table_rows))
            fail(fmt::format("{}: updates {} do not fit indices {} into {}", p.label,
                             g().value(p.inputs[2]).shape.str(), is.str(), xs.str()));
          const ValueId updates = node(
              "Reshape", {p.inputs[2], ints_constant(p, "update_rows", flat_updates)}, {}, "update_rows");
          const engine::Attributes into{{"axis", int64_t{0}}, {"shape", table}};
          if (reduction == "none") {
            // Rows that some index names are replaced: cleared by a mask of where a scatter of ones lands.
            std::vector<int64_t> ones_shape(flat_updates.size(), 1), hit_shape(table.size(), 1);
            ones_shape[0] = count;
            hit_shape[0] = table_rows;
            Tensor ones(t, Shape(ones_shape));
            for (int64_t i = 0; i < count; ++i) ones.set_f64(i, 1.0);
            const ValueId hits = node(
                "GatherGrad", {g().add_constant(g().unique_name(p.base() + "/ones"), std::move(ones)), rows},
                {{"axis", int64_t{0}}, {"shape", hit_shape}}, "hits");
            const ValueId keep = node("Cast", {node("Equal", {hits, c("zero", 0)}, {}, "untouched")},
                                      {{"to", int64_t{engine::dtype_to_onnx(t)}}}, "keep");
            data = node("Mul", {data, keep}, {}, "cleared");
          }
          const ValueId added =
              node("Add", {data, node("GatherGrad", {updates, rows}, into, "scattered")}, {}, "updated");
          node("Reshape", {added, ints_constant(p, "shape", xs.dims())}, {}, "result", true);
        }
      } else if (p.op == "Shrink") {  // x - bias above lambd, x + bias below -lambd, 0 between
        const double lambd = float_attr("lambd", 0.5), bias = float_attr("bias", 0.0);
        const ValueId above = node("Greater", {x, c("lambd", lambd)}, {}, "above");
        const ValueId below = node("Less", {x, c("minus_lambd", -lambd)}, {}, "below");
        const ValueId low =
            node("Where", {below, node("Add", {x, c("bias", bias)}, {}, "raised"), c("zero", 0)}, {}, "low");
        node("Where", {above, node("Sub", {x, c("minus_bias", bias)}, {}, "lowered"), low}, {}, "shrink",
             true);
      } else if (p.op == "Hardmax") {  // 1 at the first maximum (or NaN) along the axis, 0 elsewhere
        const int64_t rank = xs.rank();
        const int64_t axis = axis_attr(-1);
        const int64_t n = xs[static_cast<int>(axis)];
        std::vector<int64_t> index_shape(static_cast<size_t>(rank), 1);
        index_shape[static_cast<size_t>(axis)] = n;
        Tensor up(t, Shape(index_shape)), down(t, Shape(index_shape));
        for (int64_t i = 0; i < n; ++i)
          up.set_f64(i, static_cast<double>(i)), down.set_f64(i, -static_cast<double>(i));
        const engine::Attributes along{{"axes", std::vector<int64_t>{axis}}, {"keepdims", int64_t{1}}};
        const ValueId hit = at_top(x, node("ReduceMax", {x}, along, "top"), t, "");
        const ValueId neg = g().add_constant(g().unique_name(p.base() + "/negated_index"), std::move(down));
        const ValueId first =
            node("Neg",
                 {node("ReduceMax",
                       {node("Where", {hit, neg, c("miss", -static_cast<double>(n) - 1)}, {}, "candidates")},
                       along, "chosen")},
                 {}, "first");
        const ValueId ids = g().add_constant(g().unique_name(p.base() + "/index"), std::move(up));
        node("Cast", {node("Equal", {ids, first}, {}, "one")}, {{"to", int64_t{engine::dtype_to_onnx(t)}}},
             "hardmax", true);
      } else if (p.op == "EyeLike") {  // a constant: ones on diagonal k of the input's 2-D shape
        if (xs.rank() != 2) fail(fmt::format("{}: the input {} is not 2-D", p.label, xs.str()));
        const int64_t k = p.attrs.has("k") ? p.attrs.i("k") : 0;
        DType dt = t;
        if (p.attrs.has("dtype")) {
          const int64_t d = p.attrs.i("dtype");
          if (d != 1 && d != 11 && d != 6 && d != 7 && d != 9)
            fail(fmt::format("{}: dtype {} is not supported", p.label, d));
          dt = d == 1    ? DType::f32
               : d == 11 ? DType::f64
               : d == 6  ? DType::i32
               : d == 7  ? DType::i64
                         : DType::boolean;
        }
        wrap(p.label, [&] {
          Tensor eye(dt, xs);
          for (int64_t i = 0; i < xs[0]; ++i)
            if (i + k >= 0 && i + k < xs[1]) eye.set_f64(i * xs[1] + i + k, 1.0);
          folded_.insert(g().add_constant(p.outputs[0], std::move(eye)));
        });
      } else if (p.op == "CumSum") {
        // A product with a constant triangle of ones along the axis (moved last and back): j <= i sums the
        // elements up to i; exclusive and reverse change the triangle. Integers go through float64.
        const int64_t rank = xs.rank();
        int64_t axis = single_value(constant_input(1, "axis"), "axis");
        if (axis < 0) axis += rank;
        if (axis < 0 || axis >= rank)
          fail(fmt::format("{}: axis {} is out of range for {}", p.label, axis, xs.str()));
        const bool exclusive = p.attrs.has("exclusive") && p.attrs.i("exclusive") != 0;
        const bool reverse = p.attrs.has("reverse") && p.attrs.i("reverse") != 0;
        const int64_t n = xs[static_cast<int>(axis)];
        const DType f = t == DType::f32 || t == DType::f64 ? t : DType::f64;
        Tensor tri(f, Shape{n, n});
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < n; ++i) {
            const bool in = reverse ? (exclusive ? j > i : j >= i) : (exclusive ? j < i : j <= i);
            tri.set_f64(j * n + i, in ? 1.0 : 0.0);
          }
        std::vector<int64_t> perm;
        for (int64_t d = 0; d < rank; ++d)
          if (d != axis) perm.push_back(d);
        perm.push_back(axis);
        std::vector<int64_t> back(static_cast<size_t>(rank));
        for (int64_t d = 0; d < rank; ++d) back[static_cast<size_t>(perm[static_cast<size_t>(d)])] = d;
        const bool moved = axis != rank - 1;
        ValueId v = x;
        if (f != t) v = node("Cast", {v}, {{"to", int64_t{engine::dtype_to_onnx(f)}}}, "float");
        if (moved) v = node("Transpose", {v}, {{"perm", perm}}, "last");
        const bool done = !moved && f == t;
        v = node("MatMul", {v, g().add_constant(g().unique_name(p.base() + "/triangle"), std::move(tri))}, {},
                 "sums", done);
        if (moved) v = node("Transpose", {v}, {{"perm", back}}, "back", f == t);
        if (f != t) node("Cast", {v}, {{"to", int64_t{engine::dtype_to_onnx(t)}}}, "cast", true);
      } else if (p.op == "IsNaN") {  // not equal to itself
        const ValueId same = node("Cast", {node("Equal", {x, x}, {}, "equal")},
                                  {{"to", int64_t{engine::dtype_to_onnx(DType::u8)}}}, "bytes");
        node("Cast", {node("Sub", {scalar_constant(p, "one", 1, DType::u8), same}, {}, "not")},
             {{"to", int64_t{engine::dtype_to_onnx(DType::boolean)}}}, "bool", true);
      } else if (p.op == "IsInf") {
        const bool pos = !p.attrs.has("detect_positive") || p.attrs.i("detect_positive") != 0;
        const bool neg = !p.attrs.has("detect_negative") || p.attrs.i("detect_negative") != 0;
        const double inf = std::numeric_limits<double>::infinity();
        if (pos && neg)
          node("Equal", {node("Abs", {x}, {}, "abs"), c("inf", inf)}, {}, "inf", true);
        else
          node("Equal",
               {x, c("inf", pos   ? inf
                            : neg ? -inf
                                  : 0.5)},
               {}, "inf", true);  // neither: 0.5 is never
      } else if (p.op == "Tan") {
        node("Div", {node("Sin", {x}, {}, "sin"), node("Cos", {x}, {}, "cos")}, {}, "tan", true);
      } else if (p.op == "LRN") {
        // y = x / (bias + alpha / size * S)^beta, S the sum of squares over channels c - floor((size - 1) /
        // 2)
        // .. c + ceil((size - 1) / 2): a MatMul of a constant band of ones with the squares seen as [N, C,
        // rest].
        const int64_t size = p.attrs.has("size") ? p.attrs.i("size") : 0;
        if (xs.rank() < 3 || size < 1)
          fail(fmt::format("{}: needs an input [N, C, D1, ...] and a size of 1 or more (got {} and {})",
                           p.label, xs.str(), size));
        const int64_t ch = xs[1], before = (size - 1) / 2, after = size - 1 - before;
        Tensor band(t, Shape{ch, ch});
        for (int64_t i = 0; i < ch; ++i)
          for (int64_t j = 0; j < ch; ++j)
            band.set_f64(i * ch + j, j >= i - before && j <= i + after ? 1 : 0);
        const ValueId b = g().add_constant(g().unique_name(p.base() + "/band"), std::move(band));
        std::vector<int64_t> back(xs.dims().begin(), xs.dims().end());
        back[0] = 0;
        const ValueId sq =
            node("Reshape", {node("Mul", {x, x}, {}, "squares"), ints_constant(p, "rows", {0, ch, -1})}, {},
                 "rows");
        const ValueId sums = node(
            "Reshape", {node("MatMul", {b, sq}, {}, "window"), ints_constant(p, "back", back)}, {}, "sums");
        const ValueId scaled =
            node("Add",
                 {node("Mul", {sums, c("alpha", float_attr("alpha", 1e-4) / size)}, {}, "scaled"),
                  c("bias", float_attr("bias", 1.0))},
                 {}, "base");
        node("Div", {x, node("Pow", {scaled, c("beta", float_attr("beta", 0.75))}, {}, "denominator")}, {},
             "lrn", true);
      } else if (p.op == "ReverseSequence") {
        // Row b's first len[b] steps reversed: the data as [B, T, rest] multiplied by one-hot rows [B, T, T]
        // that pick step len[b] - 1 - t for t < len[b] and t itself after.
        if (p.inputs.size() != 2 || p.inputs[1] == engine::kNoValue)
          fail(fmt::format("{} needs the data and sequence_lens", p.label), "the exporter is broken");
        const int64_t batch_axis = p.attrs.has("batch_axis") ? p.attrs.i("batch_axis") : 1;
        const int64_t time_axis = p.attrs.has("time_axis") ? p.attrs.i("time_axis") : 0;
        if (xs.rank() < 2 || batch_axis + time_axis != 1 || std::min(batch_axis, time_axis) != 0)
          fail(fmt::format(
              "{}: batch_axis {} and time_axis {} must be 0 and 1 of an input of rank 2 or more, got {}",
              p.label, batch_axis, time_axis, xs.str()));
        const int64_t steps = xs[static_cast<int>(time_axis)];
        std::vector<int64_t> flat = {0, 0, -1};
        flat[static_cast<size_t>(time_axis)] = steps;
        auto i64 = [&](const std::string& what, double d) { return scalar_constant(p, what, d, DType::i64); };
        const ValueId lens = node(
            "Reshape",
            {node("Cast", {p.inputs[1]}, {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}}, "lengths"),
             ints_constant(p, "column", {-1, 1})},
            {}, "length_column");                     // [B, 1]
        const ValueId time = class_ids(2, 1, steps);  // [1, T]
        const ValueId source = node(                  // [B, T]
            "Where",
            {node("Less", {time, lens}, {}, "inside"),
             node("Sub", {node("Sub", {lens, i64("one", 1)}, {}, "last"), time}, {}, "reversed"), time},
            {}, "source");
        const ValueId hot =
            node("Cast",
                 {node("Equal",
                       {node("Unsqueeze", {source, ints_constant(p, "axis", {2})}, {}, "source_column"),
                        class_ids(3, 2, steps)},
                       {}, "picks")},
                 {{"to", int64_t{engine::dtype_to_onnx(t)}}}, "one_hot");  // [B, T, T]
        ValueId v = node("Reshape", {x, ints_constant(p, "flat", flat)}, {}, "flat");
        if (time_axis == 0)
          v = node("Transpose", {v}, {{"perm", std::vector<int64_t>{1, 0, 2}}}, "batch_major");
        v = node("MatMul", {hot, v}, {}, "picked");
        if (time_axis == 0)
          v = node("Transpose", {v}, {{"perm", std::vector<int64_t>{1, 0, 2}}}, "time_major");
        std::vector<int64_t> back(xs.dims().begin(), xs.dims().end());
        back[static_cast<size_t>(batch_axis)] = 0;
        node("Reshape", {v, ints_constant(p, "back", back)}, {}, "reversed_sequences", true);
      } else if (p.op == "GroupNormalization") {
        // x [N, C, D...] in num_groups groups of C / G channels, each normalized over its values, then scaled
        // and shifted: per group in opsets 18 to 20 (scale and bias [G]), per channel from 21 ([C]).
        if (p.inputs.size() != 3 || p.inputs[1] == engine::kNoValue || p.inputs[2] == engine::kNoValue)
          fail(fmt::format("{} needs the data, a scale and a bias", p.label), "the exporter is broken");
        const int64_t groups = p.attrs.has("num_groups") ? p.attrs.i("num_groups") : 0;
        const int64_t ch = xs.rank() >= 2 ? xs[1] : 0;
        const bool per_group = result_.info.opset < 21;
        const int64_t params = per_group ? groups : ch;
        if (xs.rank() < 3 || groups < 1 || ch % groups != 0 ||
            g().value(p.inputs[1]).shape.numel() != params || g().value(p.inputs[2]).shape.numel() != params)
          fail(fmt::format(
              "{}: needs [N, C, D...] data whose C a num_groups of {} divides, and a scale and bias of {} "
              "values ({}), got {}",
              p.label, groups, params, per_group ? "one per group before opset 21" : "one per channel",
              xs.str()));
        const engine::Attributes last{{"axes", std::vector<int64_t>{2}}, {"keepdims", int64_t{1}}};
        const ValueId v = node("Reshape", {x, ints_constant(p, "groups", {0, groups, -1})}, {}, "grouped");
        const ValueId d = node("Sub", {v, node("ReduceMean", {v}, last, "mean")}, {}, "centred");
        const ValueId var = node("ReduceMean", {node("Mul", {d, d}, {}, "squares")}, last, "variance");
        const ValueId n = node(
            "Div",
            {d, node("Sqrt", {node("Add", {var, c("epsilon", float_attr("epsilon", 1e-5))}, {}, "guarded")},
                     {}, "sd")},
            {}, "normalized");
        std::vector<int64_t> back(xs.dims().begin(), xs.dims().end()),
            column(static_cast<size_t>(xs.rank() - 1), 1);
        back[0] = 0;
        column[0] = ch;
        auto channels = [&](ValueId param, const std::string& what) {  // [G] or [C] -> [C, 1, ...]
          ValueId v2 = param;
          if (per_group)
            v2 = node("Reshape",
                      {node("Expand",
                            {node("Reshape", {param, ints_constant(p, what + "/group_column", {groups, 1})},
                                  {}, what + "/groups"),
                             ints_constant(p, what + "/per_channel", {groups, ch / groups})},
                            {}, what + "/expanded"),
                       ints_constant(p, what + "/flat", {ch})},
                      {}, what + "/channels");
          return node("Reshape", {v2, ints_constant(p, what + "/column", column)}, {},
                      what + "/column_shape");
        };
        const ValueId y = node("Reshape", {n, ints_constant(p, "back", back)}, {}, "ungrouped");
        node("Add",
             {node("Mul", {y, channels(p.inputs[1], "scale")}, {}, "scaled"), channels(p.inputs[2], "bias")},
             {}, "shifted", true);
      } else if (p.op == "AffineGrid") {
        // theta [N, 2, 3] (or [N, 3, 4]) applied to each output position's normalized coordinates (x, y[, z],
        // 1): a constant [positions, 3 or 4] base grid times theta transposed, as [N, H, W, 2] (or [N, D, H,
        // W, 3]).
        const Tensor& size = constant_input(1, "size");
        const int64_t dims = size.numel() - 2;  // 2 or 3 spatial dims
        if ((dims != 2 && dims != 3) || xs.rank() != 3 || xs[1] != dims || xs[2] != dims + 1)
          fail(fmt::format(
              "{}: needs theta [N, 2, 3] with a size of 4 values, or [N, 3, 4] with 5; got {} and {} values",
              p.label, xs.str(), size.numel()));
        const bool align = p.attrs.has("align_corners") && p.attrs.i("align_corners") != 0;
        std::vector<int64_t> extent(static_cast<size_t>(dims));  // (D,) H, W
        int64_t positions = 1;
        for (int64_t k = 0; k < dims; ++k) {
          extent[static_cast<size_t>(k)] = static_cast<int64_t>(size.get_f64(2 + k));
          positions *= extent[static_cast<size_t>(k)];
        }
        auto coord = [&](int64_t i, int64_t n) {  // the i-th of n positions in [-1, 1]
          if (align) return n > 1 ? -1.0 + 2.0 * static_cast<double>(i) / static_cast<double>(n - 1) : 0.0;
          return (2.0 * static_cast<double>(i) + 1.0) / static_cast<double>(n) - 1.0;
        };
        Tensor base(t, Shape{positions, dims + 1});
        for (int64_t pos = 0; pos < positions; ++pos) {
          int64_t rem = pos;
          std::vector<int64_t> idx(static_cast<size_t>(dims));
          for (int64_t k = dims - 1; k >= 0; --k) {
            idx[static_cast<size_t>(k)] = rem % extent[static_cast<size_t>(k)];
            rem /= extent[static_cast<size_t>(k)];
          }
          // Columns x (the last axis), y, (z), then 1.
          for (int64_t k = 0; k < dims; ++k) {
            const size_t axis = static_cast<size_t>(dims - 1 - k);
            base.set_f64(pos * (dims + 1) + k, coord(idx[axis], extent[axis]));
          }
          base.set_f64(pos * (dims + 1) + dims, 1.0);
        }
        const ValueId b = g().add_constant(g().unique_name(p.base() + "/base_grid"), std::move(base));
        const ValueId tt = node("Transpose", {x}, {{"perm", std::vector<int64_t>{0, 2, 1}}}, "theta_columns");
        std::vector<int64_t> shape = {-1};
        shape.insert(shape.end(), extent.begin(), extent.end());
        shape.push_back(dims);
        node("Reshape", {node("MatMul", {b, tt}, {}, "points"), ints_constant(p, "grid_shape", shape)}, {},
             "grid", true);
      } else if (p.op == "CenterCropPad") {
        // Each axis (all, or `axes`) cut or zero-padded to the target size around its centre: a Slice from
        // (size - target) / 2 where it is longer, a Pad of (target - size) / 2 before where it is shorter.
        const Tensor& target = constant_input(1, "shape");
        std::vector<int64_t> axes;
        if (p.attrs.has("axes")) {
          for (int64_t a : p.attrs.ints("axes")) axes.push_back(a < 0 ? a + xs.rank() : a);
        } else {
          for (int64_t a = 0; a < xs.rank(); ++a) axes.push_back(a);
        }
        if (static_cast<int64_t>(axes.size()) != target.numel())
          fail(fmt::format("{}: {} target sizes for {} axes", p.label, target.numel(), axes.size()));
        std::vector<int64_t> starts, ends, cut_axes, pads(static_cast<size_t>(2 * xs.rank()), 0);
        bool pad = false;
        for (size_t k = 0; k < axes.size(); ++k) {
          const int64_t a = axes[k], size = xs[static_cast<int>(a)],
                        want = static_cast<int64_t>(target.get_f64(k));
          if (a < 0 || a >= xs.rank() || want < 1)
            fail(fmt::format("{}: axis {} or size {} is out of range", p.label, a, want));
          if (want < size) {
            starts.push_back((size - want) / 2);
            ends.push_back((size - want) / 2 + want);
            cut_axes.push_back(a);
          } else if (want > size) {
            pads[static_cast<size_t>(a)] = (want - size) / 2;
            pads[static_cast<size_t>(a + xs.rank())] = want - size - (want - size) / 2;
            pad = true;
          }
        }
        ValueId v = x;
        if (!cut_axes.empty())
          v = node("Slice",
                   {v, ints_constant(p, "starts", starts), ints_constant(p, "ends", ends),
                    ints_constant(p, "axes", cut_axes)},
                   {}, "cropped", !pad);
        if (pad) v = node("Pad", {v, ints_constant(p, "pads", pads)}, {}, "padded", true);
        if (cut_axes.empty() && !pad) node("Identity", {v}, {}, "same", true);
      } else if (p.op == "MaxUnpool") {
        // Each value at its flat index (MaxPool's Indices) in zeros of the pooled input's shape, (in - 1)
        // stride + kernel - pads per axis: a scatter-add (GatherGrad) into the flat tensor, divided by how
        // often each index is named; a larger output_shape adds zeros at the end of each axis, keeping the
        // positions.
        if (p.inputs.size() < 2 || p.inputs[1] == engine::kNoValue)
          fail(fmt::format("{} needs the values and their indices", p.label), "the exporter is broken");
        const std::vector<int64_t> kernel =
            p.attrs.has("kernel_shape") ? p.attrs.ints("kernel_shape") : std::vector<int64_t>{};
        const int64_t spatial = xs.rank() - 2;
        if (spatial < 1 || static_cast<int64_t>(kernel.size()) != spatial)
          fail(fmt::format("{}: kernel_shape {} does not fit the input {}", p.label, fmt::join(kernel, ","),
                           xs.str()));
        const std::vector<int64_t> stride =
            p.attrs.has("strides") ? p.attrs.ints("strides") : std::vector<int64_t>(spatial, 1);
        const std::vector<int64_t> pads =
            p.attrs.has("pads") ? p.attrs.ints("pads") : std::vector<int64_t>(2 * spatial, 0);
        std::vector<int64_t> shape = {xs[0], xs[1]};
        for (int64_t d = 0; d < spatial; ++d)
          shape.push_back((xs[static_cast<int>(d) + 2] - 1) * stride[static_cast<size_t>(d)] +
                          kernel[static_cast<size_t>(d)] - pads[static_cast<size_t>(d)] -
                          pads[static_cast<size_t>(d + spatial)]);
        int64_t total = 1;
        for (int64_t v : shape) total *= v;
        const ValueId flat = ints_constant(p, "flat", {-1});
        const ValueId ids = node("Cast", {node("Reshape", {p.inputs[1], flat}, {}, "index_rows")},
                                 {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}}, "ids");
        const engine::Attributes into{{"axis", int64_t{0}}, {"shape", std::vector<int64_t>{total}}};
        const ValueId summed =
            node("GatherGrad", {node("Reshape", {x, flat}, {}, "value_rows"), ids}, into, "summed");
        // An index named twice (overlapping windows share a maximum) holds the mean of its values, which is
        // the value itself when they are that maximum.
        Tensor ones(t, Shape{xs.numel()});
        for (int64_t k = 0; k < xs.numel(); ++k) ones.set_f64(k, 1.0);
        const ValueId hits =
            node("GatherGrad", {g().add_constant(g().unique_name(p.base() + "/ones"), std::move(ones)), ids},
                 into, "hits");
        const ValueId spread =
            node("Div", {summed, node("Max", {hits, c("one", 1)}, {}, "count")}, {}, "spread");
        const bool larger = p.inputs.size() > 2 && p.inputs[2] != engine::kNoValue;
        ValueId y =
            node("Reshape", {spread, ints_constant(p, "unpooled_shape", shape)}, {}, "unpooled", !larger);
        if (larger) {
          const Tensor& want = constant_input(2, "output_shape");
          std::vector<int64_t> pad_end(static_cast<size_t>(2 * xs.rank()), 0);
          for (int64_t d = 0; d < xs.rank(); ++d) {
            const int64_t extra = static_cast<int64_t>(want.get_f64(d)) - shape[static_cast<size_t>(d)];
            if (extra < 0 || (d < 2 && extra != 0))
              fail(fmt::format(
                  "{}: output_shape [{}] is smaller than the unpooled [{}]", p.label,
                  fmt::join(std::vector<double>(want.data<int64_t>(), want.data<int64_t>() + want.numel()),
                            ", "),
                  fmt::join(shape, ", ")));
            pad_end[static_cast<size_t>(xs.rank() + d)] = extra;
          }
          node("Pad", {y, ints_constant(p, "output_pads", pad_end)}, {}, "output", true);
        }
      } else if (p.op == "QuantizeLinear" || p.op == "DequantizeLinear" || p.op == "DynamicQuantizeLinear" ||
                 p.op == "MatMulInteger" || p.op == "QLinearMatMul" || p.op == "ConvInteger" ||
                 p.op == "QLinearConv") {
        // Quantized integers (uint8, int32) in float arithmetic: dequantize (q - zero_point) scale, quantize
        // saturate(round_half_even(x / scale) + zero_point) to [0, 255]; the integer products in f64, exact.
        const auto f32 = int64_t{engine::dtype_to_onnx(DType::f32)},
                   f64 = int64_t{engine::dtype_to_onnx(DType::f64)};
        const auto u8 = int64_t{engine::dtype_to_onnx(DType::u8)};
        auto input = [&](size_t i) { return i < p.inputs.size() ? p.inputs[i] : engine::kNoValue; };
        auto as = [&](ValueId v, int64_t to, const std::string& what) {
          return node("Cast", {v}, {{"to", to}}, what);
        };
        auto k = [&](const std::string& what, double v, DType d) { return scalar_constant(p, what, v, d); };
        // A per-axis scale or zero point [C] as [C, 1, ...] along `axis` of x; a scalar as it is.
        auto along = [&](ValueId v, const std::string& what) {
          const Shape vs = g().value(v).shape;
          if (vs.numel() == 1 && vs.rank() <= 1)
            return vs.rank() == 0
                       ? v
                       : node("Reshape", {v, ints_constant(p, what + "/scalar", std::vector<int64_t>{})}, {},
                              what + "/scalar_value");
          int64_t axis = p.attrs.has("axis") ? p.attrs.i("axis") : 1;
          if (axis < 0) axis += xs.rank();
          if (axis < 0 || axis >= xs.rank() || vs.numel() != xs[axis])
            fail(fmt::format("its {} of {} values does not fit axis {} of the input {}", what, vs.numel(),
                             p.attrs.has("axis") ? p.attrs.i("axis") : 1, xs.str()),
                 "give one value, or one per element of the axis");
          std::vector<int64_t> shape(static_cast<size_t>(xs.rank() - axis), 1);
          shape[0] = vs.numel();
          return node("Reshape", {v, ints_constant(p, what + "/along", shape)}, {}, what + "/along_axis");
        };
        auto quantize = [&](ValueId real, ValueId scale, ValueId zero, const std::string& what, bool last) {
          ValueId q =
              node("Round", {node("Div", {real, scale}, {}, what + "/scaled")}, {}, what + "/rounded");
          if (zero != engine::kNoValue) q = node("Add", {q, zero}, {}, what + "/shifted");
          q = node("Clip",
                   {q, k(what + "/low", 0, g().value(q).dtype), k(what + "/high", 255, g().value(q).dtype)},
                   {}, what + "/saturated");
          return node("Cast", {q}, {{"to", u8}}, what, last);
        };
        if (p.op == "DequantizeLinear") {
          ValueId v = as(x, f32, "real");
          if (input(2) != engine::kNoValue)
            v = node("Sub", {v, along(as(input(2), f32, "zero_real"), "zero")}, {}, "centred");
          node("Mul", {v, along(input(1), "scale")}, {}, "dequantized", true);
        } else if (p.op == "QuantizeLinear") {
          if (input(2) != engine::kNoValue && g().value(input(2)).dtype != DType::u8)
            fail(fmt::format("{}: only uint8 zero points are supported", p.label), "int8 is not an IR dtype");
          const ValueId zero =
              input(2) == engine::kNoValue ? engine::kNoValue : along(as(input(2), f32, "zero_real"), "zero");
          quantize(as(x, f32, "real"), along(input(1), "scale"), zero, "quantized", true);
        } else if (p.op == "DynamicQuantizeLinear") {
          // The range of x widened to hold 0, over 255 steps; the zero point where 0 falls.
          const ValueId xr = as(x, f32, "real");
          const engine::Attributes all{{"keepdims", int64_t{0}}};
          const ValueId lo =
              node("Min",
                   {node("Neg", {node("ReduceMax", {node("Neg", {xr}, {}, "negated")}, all, "max_negated")},
                         {}, "min"),
                    k("zero", 0, DType::f32)},
                   {}, "low");
          const ValueId hi =
              node("Max", {node("ReduceMax", {xr}, all, "max"), k("zero_high", 0, DType::f32)}, {}, "high");
          const ValueId scale = node("Div", {node("Sub", {hi, lo}, {}, "range"), k("steps", 255, DType::f32)},
                                     {}, "scale_value");
          const ValueId zero = node(
              "Clip",
              {node("Round", {node("Div", {node("Neg", {lo}, {}, "minus_low"), scale}, {}, "zero_scaled")},
                    {}, "zero_rounded"),
               k("zero_low", 0, DType::f32), k("zero_top", 255, DType::f32)},
              {}, "zero_value");
          quantize(xr, scale, zero, "quantized", true);
          mark_batched(g().add_node_named("Identity", {scale}, {}, {p.outputs[1]},
                                          g().unique_name(p.base() + "/scale")));
          mark_batched(g().add_node_named("Cast", {zero}, {{"to", u8}}, {p.outputs[2]},
                                          g().unique_name(p.base() + "/zero_point")));
        } else if (p.op == "ConvInteger" || p.op == "QLinearConv") {
          // ConvInteger (x, w, x_zero, w_zero) -> int32; QLinearConv (x, x_scale, x_zero, w, w_scale, w_zero,
          // y_scale, y_zero[, B int32]) -> uint8. A weight zero point or scale per output channel applies
          // along the weight's first axis, and the output's second.
          const bool qlinear = p.op == "QLinearConv";
          const ValueId w = input(qlinear ? 3 : 1), xz = input(qlinear ? 2 : 2), wz = input(qlinear ? 5 : 3);
          if (w == engine::kNoValue)
            fail(fmt::format("{} needs a weight", p.label), "the exporter is broken");
          const Shape ws = g().value(w).shape;
          if (ws.rank() < 3)
            fail(fmt::format("its weight has shape {}; a convolution's is [filters, channels, kernel...]",
                             ws.str()),
                 "the exporter is broken");
          std::vector<int64_t> per_filter(static_cast<size_t>(ws.rank()), 1),
              per_channel(static_cast<size_t>(ws.rank() - 1), 1);
          per_filter[0] = ws[0];
          per_channel[0] = ws[0];
          auto filters = [&](ValueId v, const std::vector<int64_t>& shape, const std::string& what) {
            return g().value(v).shape.numel() > 1
                       ? node("Reshape", {v, ints_constant(p, what + "/shape", shape)}, {}, what)
                       : v;
          };
          ValueId xf = as(x, f64, "x_real"), wf = as(w, f64, "w_real");
          if (xz != engine::kNoValue) xf = node("Sub", {xf, as(xz, f64, "x_zero_real")}, {}, "x_centred");
          if (wz != engine::kNoValue)
            wf = node("Sub", {wf, filters(as(wz, f64, "w_zero_real"), per_filter, "w_zero_filters")}, {},
                      "w_centred");
          engine::Attributes conv = p.attrs;
          ValueId product = node("Conv", {xf, wf}, conv, "product");
          if (!qlinear) {
            node("Cast", {product}, {{"to", int64_t{engine::dtype_to_onnx(DType::i32)}}}, "integers", true);
          } else {
            if (input(8) != engine::kNoValue)
              product = node("Add",
                             {product, filters(as(input(8), f64, "bias_real"), per_channel, "bias_channels")},
                             {}, "biased");
            const ValueId multiplier =
                node("Div",
                     {node("Mul",
                           {as(input(1), f64, "x_scale_real"),
                            filters(as(input(4), f64, "w_scale_real"), per_channel, "w_scale_channels")},
                           {}, "xw_scale"),
                      as(input(6), f64, "y_scale_real")},
                     {}, "multiplier");
            const ValueId yz =
                input(7) == engine::kNoValue ? engine::kNoValue : as(input(7), f64, "y_zero_real");
            quantize(node("Mul", {product, multiplier}, {}, "rescaled"), k("unit", 1, DType::f64), yz,
                     "quantized", true);
          }
        } else {  // MatMulInteger (A, B, a_zero, b_zero) -> int32; QLinearMatMul (a, a_scale, a_zero, b, ...)
                  // -> uint8
          const bool qlinear = p.op == "QLinearMatMul";
          const ValueId a = x, b = input(qlinear ? 3 : 1);
          const ValueId az = input(qlinear ? 2 : 2), bz = input(qlinear ? 5 : 3);
          if (b == engine::kNoValue)
            fail(fmt::format("{} needs two matrices", p.label), "the exporter is broken");
          ValueId af = as(a, f64, "a_real"), bf = as(b, f64, "b_real");
          if (az != engine::kNoValue) {
            ValueId z = as(az, f64, "a_zero_real");
            const Shape zs = g().value(az).shape;
            if (zs.numel() > 1)
              z = node("Reshape", {z, ints_constant(p, "a_zero_rows", {zs.numel(), 1})}, {},
                       "a_zero_column");  // per row
            af = node("Sub", {af, z}, {}, "a_centred");
          }
          if (bz != engine::kNoValue)
            bf = node("Sub", {bf, as(bz, f64, "b_zero_real")}, {}, "b_centred");  // per column
          const ValueId product = node("MatMul", {af, bf}, {}, "product");
          if (!qlinear) {
            node("Cast", {product}, {{"to", int64_t{engine::dtype_to_onnx(DType::i32)}}}, "integers", true);
          } else {
            const ValueId multiplier =
                node("Div",
                     {node("Mul", {as(input(1), f64, "a_scale_real"), as(input(4), f64, "b_scale_real")}, {},
                           "ab_scale"),
                      as(input(6), f64, "y_scale_real")},
                     {}, "multiplier");
            const ValueId yz =
                input(7) == engine::kNoValue ? engine::kNoValue : as(input(7), f64, "y_zero_real");
            quantize(node("Mul", {product, multiplier}, {}, "rescaled"), k("unit", 1, DType::f64), yz,
                     "quantized", true);
          }
        }
      } else if (p.op == "Compress" || p.op == "NonZero") {
        // Shapes that depend on values: taken when those values are constants. Compress keeps the slices
        // (along axis, or of the flattened input) whose condition is true: a Gather of their constant
        // positions. NonZero of a constant is a constant: the coordinates [rank, count] of its nonzero
        // elements.
        const bool nonzero = p.op == "NonZero";
        const Tensor& values = constant_input(nonzero ? 0 : 1, nonzero ? "input" : "condition");
        if (nonzero) {
          const Shape vs = values.shape();
          std::vector<int64_t> hits;
          for (int64_t i = 0; i < values.numel(); ++i)
            if (values.get_f64(i) != 0) hits.push_back(i);
          const int64_t rank = std::max(vs.rank(), 1), count = static_cast<int64_t>(hits.size());
          std::vector<int64_t> coords(static_cast<size_t>(rank * count));
          for (int64_t h = 0; h < count; ++h) {
            int64_t rem = hits[static_cast<size_t>(h)];
            for (int64_t d = rank - 1; d >= 0; --d) {
              const int64_t n = vs.rank() ? vs[static_cast<int>(d)] : 1;
              coords[static_cast<size_t>(d * count + h)] = rem % n;
              rem /= n;
            }
          }
          node("Identity",
               {g().add_constant(g().unique_name(p.base() + "/coordinates"),
                                 Tensor::from<int64_t>(Shape{rank, count}, coords))},
               {}, "nonzero", true);
        } else {
          std::vector<int64_t> kept;
          for (int64_t i = 0; i < values.numel(); ++i)
            if (values.get_f64(i) != 0) kept.push_back(i);
          const bool flat = !p.attrs.has("axis");
          const int64_t axis = flat ? 0 : axis_attr(0);
          const int64_t size = flat ? xs.numel() : xs[static_cast<int>(axis)];
          while (!kept.empty() && kept.back() >= size)
            kept.pop_back();  // a longer condition: its tail is unused
          const ValueId data = flat ? node("Reshape", {x, ints_constant(p, "flat", {-1})}, {}, "flat") : x;
          node(
              "Gather",
              {data, g().add_constant(g().unique_name(p.base() + "/kept"),
                                      Tensor::from<int64_t>(Shape{static_cast<int64_t>(kept.size())}, kept))},
              {{"axis", axis}}, "compressed", true);
        }
      } else if (p.op == "Bernoulli") {  // 1 where a uniform draw falls below the probability
        engine::Attributes draw;
        if (p.attrs.has("seed")) draw.set("seed", p.attrs.f("seed"));
        const ValueId u = node("RandomUniformLike", {x}, std::move(draw), "uniform");
        const int64_t to = p.attrs.has("dtype") ? p.attrs.i("dtype") : int64_t{engine::dtype_to_onnx(t)};
        node("Cast", {node("Less", {u, x}, {}, "below")}, {{"to", to}}, "bernoulli", true);
      } else if (p.op == "MeanVarianceNormalization") {  // (x - E[x]) / (sqrt(E[(x - E[x])^2]) + 1e-9)
        const std::vector<int64_t> axes =
            p.attrs.has("axes") ? p.attrs.ints("axes") : std::vector<int64_t>{0, 2, 3};
        const engine::Attributes keep{{"axes", axes}, {"keepdims", int64_t{1}}};
        ValueId d = node("Sub", {x, node("ReduceMean", {x}, keep, "mean")}, {}, "centred");
        ValueId sd = node(
            "Sqrt", {node("ReduceMean", {node("Mul", {d, d}, {}, "squares")}, keep, "variance")}, {}, "sd");
        node("Div", {d, node("Add", {sd, c("epsilon", 1e-9)}, {}, "guarded")}, {}, "normalized", true);
      } else {  // OneHot(indices, depth, values [off, on]), the class axis at `axis` (default last)
        if (p.inputs.size() != 3 || p.inputs[2] == engine::kNoValue)
          fail(fmt::format("{} needs indices, depth and values", p.label), "the exporter is broken");
        // Checked as read (a float depth of 1e30 or NaN has no integer), and before the class ids [depth] and
        // the output are made: a depth of 2^40 ran out of memory.
        const double given = constant_input(1, "depth").get_f64(0);
        const std::string shown = given == std::floor(given) && std::abs(given) < 9e15
                                      ? std::to_string(static_cast<int64_t>(given))
                                      : fmt::format("{:.7g}", given);
        if (!(given >= 1)) fail(fmt::format("{}: depth {} is not positive", p.label, shown));
        constexpr int64_t kMostClasses = (int64_t{1} << 31) - 1;
        const double out_bytes = static_cast<double>(xs.numel()) * std::floor(given) *
                                 static_cast<double>(engine::dtype_bytes(g().value(p.inputs[2]).dtype));
        if (given > static_cast<double>(kMostClasses) || out_bytes > static_cast<double>(int64_t{1} << 40))
          fail(
              fmt::format("{}: depth {} is more classes than a one-hot output may hold ({} at most, and 2^40 "
                          "bytes for the output of {} indices)",
                          p.label, shown, kMostClasses, xs.numel()),
              "check the depth input: the number of classes");
        const auto depth = static_cast<int64_t>(given);
        const int64_t rank = xs.rank() + 1;
        int64_t axis = p.attrs.has("axis") ? p.attrs.i("axis") : -1;
        if (axis < 0) axis += rank;
        if (axis < 0 || axis >= rank) fail(fmt::format("{}: axis {} is out of range", p.label, axis));
        const ValueId wrapped = class_index(x, depth);
        std::vector<int64_t> with_axis = xs.dims();
        with_axis.insert(with_axis.begin() + axis, 1);
        const ValueId classes = class_ids(rank, axis, depth);
        const ValueId hot = node(
            "Equal",
            {node("Reshape", {wrapped, ints_constant(p, "with_axis", with_axis)}, {}, "column"), classes}, {},
            "hot");
        const ValueId values = p.inputs[2];
        auto pick = [&](int64_t k, const char* what) {
          return node("Reshape",
                      {node("Slice",
                            {values, ints_constant(p, std::string(what) + "_start", {k}),
                             ints_constant(p, std::string(what) + "_end", {k + 1})},
                            {}, what),
                       ints_constant(p, std::string(what) + "_scalar", {})},
                      {}, std::string(what) + "_value");
        };
        node("Where", {hot, pick(1, "on"), pick(0, "off")}, {}, "one_hot", true);
      }
    });
    return true;
  }

  // The reductions ONNX has beyond ReduceSum, ReduceMean and ReduceMax, written with those: each IR reduce
  // node takes the node's axes (input or attribute), keepdims and noop_with_empty_axes.
  void add_reduction(const PendingNode& p) {
    if (p.inputs.empty() || p.inputs[0] == engine::kNoValue || p.outputs.size() != 1)
      fail(fmt::format("{} has no input or more than one output", p.label),
           p.op + " takes data and gives one output");
    const ValueId axes = p.inputs.size() > 1 ? p.inputs[1] : engine::kNoValue;
    auto node = [&](const std::string& op, std::vector<ValueId> ins, engine::Attributes a,
                    const std::string& what,
                    bool last) { return add_part(p, op, std::move(ins), std::move(a), what, last); };
    auto reduce = [&](const std::string& op, ValueId x, int64_t keepdims, const std::string& what,
                      bool last) {
      engine::Attributes a = p.attrs;
      a.set("keepdims", keepdims);
      std::vector<ValueId> ins = {x};
      if (axes != engine::kNoValue) ins.push_back(axes);
      return node(op, ins, a, what, last);
    };
    const int64_t keep = p.attrs.has("keepdims") ? p.attrs.i("keepdims") : 1;
    const ValueId x = p.inputs[0];
    wrap(p.label, [&] {
      if (p.op == "ReduceMin") {
        ValueId m = reduce("ReduceMax", node("Neg", {x}, {}, "negated", false), keep, "max", false);
        node("Neg", {m}, {}, "min", true);
      } else if (p.op == "ReduceL1") {
        reduce("ReduceSum", node("Abs", {x}, {}, "abs", false), keep, "sum", true);
      } else if (p.op == "ReduceProd") {
        // exp(sum log|x|) with the sign of the negatives' count (cos(pi n)); a zero gives exp(-inf) = 0.
        // Integers (PyTorch's element counts of shapes, as in x.std(dim)) go through f64 and come back
        // rounded: exact for every product of a shape's dimensions.
        const DType given = g().value(x).dtype;
        const bool integer = engine::is_integer(given);
        const DType t = integer ? DType::f64 : given;
        const ValueId xf = integer ? node("Cast", {p.inputs[0]}, {{"to", int64_t{engine::dtype_to_onnx(t)}}},
                                          "as_f64", false)
                                   : x;
        ValueId logs = node("Log", {node("Abs", {xf}, {}, "abs", false)}, {}, "log", false);
        ValueId size = node("Exp", {reduce("ReduceSum", logs, keep, "sum", false)}, {}, "size", false);
        ValueId negatives =
            node("Cast", {node("Less", {xf, scalar_constant(p, "zero", 0, t)}, {}, "negative", false)},
                 {{"to", int64_t{engine::dtype_to_onnx(t)}}}, "negative_count", false);
        ValueId count = reduce("ReduceSum", negatives, keep, "count", false);
        ValueId sign = node(
            "Cos",
            {node("Mul", {count, scalar_constant(p, "pi", 3.14159265358979323846, t)}, {}, "angle", false)},
            {}, "sign", false);
        if (!integer) {
          node("Mul", {size, sign}, {}, "prod", true);
        } else {
          ValueId prod = node("Round", {node("Mul", {size, sign}, {}, "prod", false)}, {}, "rounded", false);
          node("Cast", {prod}, {{"to", int64_t{engine::dtype_to_onnx(given)}}}, "as_given", true);
        }
      } else if (p.op == "ReduceLogSum") {
        node("Log", {reduce("ReduceSum", x, keep, "sum", false)}, {}, "log", true);
      } else if (p.op == "ReduceSumSquare" || p.op == "ReduceL2") {
        const bool l2 = p.op == "ReduceL2";
        ValueId s = reduce("ReduceSum", node("Mul", {x, x}, {}, "squares", false), keep, "sum", !l2);
        if (l2) node("Sqrt", {s}, {}, "sqrt", true);
      } else {  // ReduceLogSumExp: log(sum(exp(x - m))) + m, m the maximum
        ValueId shift = reduce("ReduceMax", x, 1, "shift", false);
        ValueId e = node("Exp", {node("Sub", {x, shift}, {}, "shifted", false)}, {}, "exp", false);
        ValueId l = node("Log", {reduce("ReduceSum", e, keep, "sum", false)}, {}, "log", false);
        node("Add", {l, keep ? shift : reduce("ReduceMax", x, 0, "max", false)}, {}, "lse", true);
      }
    });
  }

  // InstanceNormalization(x [N, C, D...], scale [C], B [C]): per sample and channel, (x - mean) /
  // sqrt(var + epsilon) over D..., times scale plus B (PyTorch also exports GroupNorm this way). The scale
  // and bias are reshaped to [C, 1...] by constant shapes, so the graph holds at any batch size.
  void add_instance_norm(const PendingNode& p) {
    if (p.inputs.size() != 3 || p.outputs.size() != 1)
      fail(fmt::format("{} has {} inputs and {} outputs", p.label, p.inputs.size(), p.outputs.size()),
           "InstanceNormalization takes input, scale and B, and gives one output");
    for (ValueId v : p.inputs)
      if (v == engine::kNoValue) fail(fmt::format("{} has an empty input name", p.label));
    const Shape in = g().value(p.inputs[0]).shape;
    const int64_t rank = in.rank();
    if (rank < 3)
      fail(fmt::format("{}: its input {} has no spatial dimensions", p.label, in.str()),
           "InstanceNormalization takes [N, C, D1, ...]");
    for (int k = 1; k < 3; ++k)
      if (g().value(p.inputs[k]).shape != Shape{in[1]})
        fail(fmt::format("{}: {} has shape {}, the input has {} channels", p.label, k == 1 ? "scale" : "B",
                         g().value(p.inputs[k]).shape.str(), in[1]));
    const double epsilon = p.attrs.has("epsilon") ? p.attrs.f("epsilon") : 1e-5;
    const DType t = g().value(p.inputs[0]).dtype;
    std::vector<int64_t> axes, per_channel = {in[1]};
    for (int64_t d = 2; d < rank; ++d) {
      axes.push_back(d);
      per_channel.push_back(1);
    }
    auto ints = [&](const std::string& what, const std::vector<int64_t>& v) {
      return ints_constant(p, what, v);
    };
    auto node = [&](const std::string& op, std::vector<ValueId> ins, engine::Attributes a,
                    const std::string& what) { return add_part(p, op, std::move(ins), std::move(a), what); };
    wrap(p.label, [&] {
      const engine::Attributes keep = {{"keepdims", int64_t{1}}};
      ValueId mean = node("ReduceMean", {p.inputs[0], ints("axes", axes)}, keep, "mean");
      ValueId centered = node("Sub", {p.inputs[0], mean}, {}, "centered");
      ValueId var =
          node("ReduceMean", {node("Mul", {centered, centered}, {}, "squares"), ints("var_axes", axes)}, keep,
               "var");
      Tensor eps(t, Shape{});
      eps.set_f64(0, epsilon);
      ValueId std_dev =
          node("Sqrt",
               {node("Add", {var, g().add_constant(g().unique_name(p.base() + "/epsilon"), std::move(eps))},
                     {}, "var_eps")},
               {}, "std");
      ValueId normalized = node("Div", {centered, std_dev}, {}, "normalized");
      ValueId scale = node("Reshape", {p.inputs[1], ints("scale_shape", per_channel)}, {}, "scale");
      ValueId bias = node("Reshape", {p.inputs[2], ints("bias_shape", per_channel)}, {}, "bias");
      ValueId scaled = node("Mul", {normalized, scale}, {}, "scaled");
      add_part(p, "Add", {scaled, bias}, {}, "output", true);
    });
  }

  // DFT (opset 17: axis an attribute, default 1; 20: an input, default -2) and STFT. The transform is two
  // MatMuls with constant cosine and sine matrices along the signal axis, moved last by a Transpose: forward
  // X_k = sum_n x_n e^(-2 pi i k n / L), inverse the conjugate divided by L, where L is dft_length (the
  // signal zero-padded or cut to it) and onesided keeps bins 0 .. L / 2. A real input ([.., 1]) skips the
  // imaginary products. STFT gathers frames [batch, frames, frame_length, c] with constant indices,
  // multiplies them by the window, and transforms along the frame axis (onesided by default). Both are
  // differentiable in the signal (and the window).
  void add_fourier(const PendingNode& p) {
    const bool stft = p.op == "STFT";
    if (p.inputs.empty() || p.inputs[0] == engine::kNoValue || p.outputs.size() != 1)
      fail(fmt::format("{} has no input or more than one output", p.label), "the exporter is broken");
    auto input_at = [&](size_t i) { return i < p.inputs.size() ? p.inputs[i] : engine::kNoValue; };
    auto constant_int = [&](size_t i, const char* what) -> std::optional<int64_t> {
      const ValueId v = input_at(i);
      if (v == engine::kNoValue) return std::nullopt;
      const engine::Value& val = g().value(v);
      if (val.kind != engine::ValueKind::constant || val.shape.numel() != 1)
        fail(fmt::format("{}: its {} '{}' is not a constant scalar", p.label, what, val.name),
             "the engine needs static shapes: give it as a constant");
      return static_cast<int64_t>(g().initializer(v)->get_f64(0));
    };
    auto int_attr = [&](const char* name, int64_t d) { return p.attrs.has(name) ? p.attrs.i(name) : d; };
    const Shape xs = g().value(p.inputs[0]).shape;
    const DType t = g().value(p.inputs[0]).dtype;
    const int rank = xs.rank();
    if (rank < 3 || (xs[rank - 1] != 1 && xs[rank - 1] != 2))
      fail(fmt::format("{}: the input {} must be [batch, signal..., 1 or 2] (real or complex)", p.label,
                       xs.str()));
    const bool complex = xs[rank - 1] == 2;
    wrap(p.label, [&] {
      auto node = [&](const std::string& op, std::vector<ValueId> ins, engine::Attributes a,
                      const std::string& what, bool last = false) {
        return add_part(p, op, std::move(ins), std::move(a), what, last);
      };
      ValueId x = p.inputs[0];
      int64_t axis = 0, length = 0;
      bool inverse = false, onesided = false;
      if (stft) {
        // Frames: indices [frames, frame_length] into axis 1 (Gather gives [batch, frames, frame_length, c]).
        const int64_t step = constant_int(1, "frame_step").value_or(0);
        const ValueId window = input_at(2);
        std::optional<int64_t> frame = constant_int(3, "frame_length");
        if (window != engine::kNoValue) {
          const Shape ws = g().value(window).shape;
          if (ws.rank() != 1 || (frame && *frame != ws[0]))
            fail(fmt::format("{}: the window {} must be 1-D of frame_length", p.label, ws.str()));
          frame = ws[0];
        }
        if (!frame || *frame < 1 || *frame > xs[1] || step < 1)
          fail(fmt::format("{}: needs frame_step >= 1 and a frame_length (or window) of 1 .. {} samples",
                           p.label, xs[1]));
        const int64_t frames = (xs[1] - *frame) / step + 1;
        std::vector<int64_t> at(static_cast<size_t>(frames * *frame));
        for (int64_t f = 0; f < frames; ++f)
          for (int64_t j = 0; j < *frame; ++j) at[static_cast<size_t>(f * *frame + j)] = f * step + j;
        const ValueId idx = g().add_constant(g().unique_name(p.base() + "/frame_indices"),
                                             Tensor::from<int64_t>(Shape{frames, *frame}, at));
        x = node("Gather", {x, idx}, {{"axis", int64_t{1}}}, "frames");
        if (window != engine::kNoValue)
          x = node("Mul",
                   {x, node("Reshape", {window, ints_constant(p, "window_shape", {1, 1, *frame, 1})}, {},
                            "window_column")},
                   {}, "windowed");
        axis = 2, length = *frame, onesided = int_attr("onesided", 1) != 0;
      } else {
        axis = int_attr("axis", 1);
        if (const auto a = constant_int(2, "axis"))
          axis = *a;
        else if (result_.info.opset >= 20 && !p.attrs.has("axis"))
          axis = -2;
        if (axis < 0) axis += rank;
        if (axis < 1 || axis >= rank - 1)
          fail(fmt::format("{}: axis {} is not a signal axis of {}", p.label, axis, xs.str()));
        length = constant_int(1, "dft_length").value_or(xs[static_cast<int>(axis)]);
        inverse = int_attr("inverse", 0) != 0, onesided = int_attr("onesided", 0) != 0;
        if (inverse && onesided)
          fail(fmt::format("{}: onesided inverse transforms are not supported", p.label));
        if (length < 1) fail(fmt::format("{}: dft_length {} is not positive", p.label, length));
      }
      const Shape fs = g().value(x).shape;  // [.., signal at axis, .., c]
      const int q = fs.rank() - 1;          // rank without the complex axis
      const int64_t in_len = fs[static_cast<int>(axis)], bins = onesided ? length / 2 + 1 : length;
      // The parts as [.., c] -> [..] with the signal axis last.
      std::vector<int64_t> perm, back(static_cast<size_t>(q));
      for (int d = 0; d < q; ++d)
        if (d != axis) perm.push_back(d);
      perm.push_back(axis);
      for (int d = 0; d < q; ++d) back[static_cast<size_t>(perm[static_cast<size_t>(d)])] = d;
      const bool moved = axis != q - 1;
      auto part = [&](int64_t k, const std::string& what) {
        ValueId v = node("Slice",
                         {x, ints_constant(p, what + "/start", {k}), ints_constant(p, what + "/end", {k + 1}),
                          ints_constant(p, what + "/axis", {q})},
                         {}, what);
        v = node("Squeeze", {v, ints_constant(p, what + "/squeezed", {q})}, {}, what + "_part");
        return moved ? node("Transpose", {v}, {{"perm", perm}}, what + "_last") : v;
      };
      // cos and sin of 2 pi k n / L for input sample n (zero rows past L) and output bin k.
      const double pi = 3.14159265358979323846, scale = inverse ? 1.0 / static_cast<double>(length) : 1.0;
      Tensor cs(t, Shape{in_len, bins}), sn(t, Shape{in_len, bins});
      for (int64_t n = 0; n < in_len; ++n)
        for (int64_t k = 0; k < bins; ++k) {
          const double th = 2 * pi * static_cast<double>((k * n) % length) / static_cast<double>(length);
          cs.set_f64(n * bins + k, n < length ? scale * std::cos(th) : 0);
          sn.set_f64(n * bins + k, n < length ? scale * std::sin(th) : 0);
        }
      const ValueId cm = g().add_constant(g().unique_name(p.base() + "/cos"), std::move(cs));
      const ValueId sm = g().add_constant(g().unique_name(p.base() + "/sin"), std::move(sn));
      const ValueId re = part(0, "real");
      ValueId yr = node("MatMul", {re, cm}, {}, "real_cos");
      ValueId yi = node("Neg", {node("MatMul", {re, sm}, {}, "real_sin")}, {}, "minus_real_sin");
      if (inverse) yi = node("Neg", {yi}, {}, "real_sin_inverse");
      if (complex) {
        const ValueId im = part(1, "imaginary");
        const ValueId is = node("MatMul", {im, sm}, {}, "imaginary_sin");
        yr = node(inverse ? "Sub" : "Add", {yr, is}, {}, "real_out");
        yi = node("Add", {yi, node("MatMul", {im, cm}, {}, "imaginary_cos")}, {}, "imaginary_out");
      }
      auto finish = [&](ValueId v, const std::string& what) {
        if (moved) v = node("Transpose", {v}, {{"perm", back}}, what + "_back");
        return node("Unsqueeze", {v, ints_constant(p, what + "/axis", {q})}, {}, what + "_column");
      };
      node("Concat", {finish(yr, "real_result"), finish(yi, "imaginary_result")}, {{"axis", int64_t{q}}},
           "complex", true);
    });
  }

  // Conv, MaxPool and AveragePool over 3-D data [N, C, D, H, W], written with the 2-D ops
  // (engine/ops/conv_volume.h): a convolution as one 2-D convolution per depth tap, a pool as two separable
  // 2-D passes.
  void add_volume_op(const PendingNode& p) {
    if (p.op == "ConvTranspose") return add_conv_transpose3d(p);
    const bool conv = p.op == "Conv";
    if (p.outputs.size() != 1)
      fail(fmt::format("{}: MaxPool's Indices output is not supported", p.label),
           "export the pooling without return_indices");
    const Shape xs = g().value(p.inputs[0]).shape;
    Shape ws;
    if (conv) {
      if (p.inputs.size() < 2 || p.inputs[1] == engine::kNoValue)
        fail(fmt::format("{} has no weight", p.label), "the exporter is broken");
      ws = g().value(p.inputs[1]).shape;
      if (ws.rank() != 5)
        fail(fmt::format("{}: the weight {} is not [M, C / group, kD, kH, kW]", p.label, ws.str()));
    }
    const std::vector<int64_t> kernel = p.attrs.has("kernel_shape") ? p.attrs.ints("kernel_shape")
                                        : conv ? std::vector<int64_t>{ws[2], ws[3], ws[4]}
                                               : std::vector<int64_t>{};
    const bool ceil_mode = !conv && p.attrs.has("ceil_mode") && p.attrs.i("ceil_mode") != 0;
    engine::ops::WindowGeometry w;
    const std::string err =
        engine::ops::resolve_window(p.attrs, {xs[2], xs[3], xs[4]}, kernel, ceil_mode, &w);
    if (!err.empty()) fail(fmt::format("{}: {}", p.label, err));
    const int64_t group = conv && p.attrs.has("group") ? p.attrs.i("group") : 1;
    if (conv && (group < 1 || xs[1] != ws[1] * group || ws[0] % group != 0))
      fail(fmt::format("{}: the input {} and weight {} do not match for group {}", p.label, xs.str(),
                       ws.str(), group));
    wrap(p.label, [&] {
      const engine::ops::VolumeEmitter e = volume_emitter(p);
      if (conv) {
        const ValueId bias = p.inputs.size() > 2 ? p.inputs[2] : engine::kNoValue;
        engine::ops::conv3d_as_2d(e, p.inputs[0], xs, p.inputs[1], ws, bias, w, group);
      } else {
        engine::ops::pool3d_as_2d(e, p.op, p.inputs[0], xs, w, ceil_mode,
                                  p.attrs.has("count_include_pad") ? p.attrs.i("count_include_pad") : 0);
      }
    });
  }

  // How engine/ops/conv_volume.h adds node p's parts: named after it, the last one taking its output.
  engine::ops::VolumeEmitter volume_emitter(const PendingNode& p) {
    engine::ops::VolumeEmitter e;
    e.op = [this, &p](const std::string& op, std::vector<ValueId> ins, engine::Attributes a,
                      const std::string& what,
                      bool last) { return add_part(p, op, std::move(ins), std::move(a), what, last); };
    e.constant = [this, &p](Tensor t, const std::string& what) {
      return g().add_constant(g().unique_name(p.base() + "/" + what), std::move(t));
    };
    return e;
  }

  // ConvTranspose over 3-D data: one 2-D transposed convolution per depth tap (engine/ops/conv_volume.h).
  void add_conv_transpose3d(const PendingNode& p) {
    if (p.inputs.size() < 2 || p.inputs[1] == engine::kNoValue || p.outputs.size() != 1)
      fail(fmt::format("{} needs an input and a weight", p.label), "the exporter is broken");
    const Shape xs = g().value(p.inputs[0]).shape, ws = g().value(p.inputs[1]).shape;
    if (ws.rank() != 5)
      fail(fmt::format("{}: the weight {} is not [C, M / group, kD, kH, kW]", p.label, ws.str()));
    wrap(p.label, [&] {
      const engine::ops::VolumeEmitter e = volume_emitter(p);
      std::string err;
      const ValueId bias = p.inputs.size() > 2 ? p.inputs[2] : engine::kNoValue;
      engine::ops::conv_transpose3d_as_2d(e, p.inputs[0], xs, p.inputs[1], ws, bias, p.attrs, &err);
      if (!err.empty()) fail(fmt::format("{}: {}", p.label, err));
    });
  }

  // MaxPool of [N, C, H, W] with its Indices output: the pool itself, then for every tap of the window (in
  // row-major order) the data at that tap for every output position (a strided Slice of the data padded with
  // -inf), compared with the maximum; the first tap that equals it gives its flat index into x (row-major, or
  // column-major within the image under storage_order 1), in int64 arithmetic.
  void add_max_pool_with_indices(const PendingNode& p) {
    const Shape xs = g().value(p.inputs[0]).shape;
    const DType t = g().value(p.inputs[0]).dtype;
    const std::vector<int64_t> kernel =
        p.attrs.has("kernel_shape") ? p.attrs.ints("kernel_shape") : std::vector<int64_t>{};
    const bool ceil_mode = p.attrs.has("ceil_mode") && p.attrs.i("ceil_mode") != 0;
    engine::ops::WindowGeometry w;
    const std::string err = engine::ops::resolve_window(p.attrs, {xs[2], xs[3]}, kernel, ceil_mode, &w);
    if (!err.empty()) fail(fmt::format("{}: {}", p.label, err));
    const bool column_major = p.attrs.has("storage_order") && p.attrs.i("storage_order") != 0;
    const int64_t n = xs[0], ch = xs[1], h = xs[2], wd = xs[3], oh = w.out[0], ow = w.out[1];
    wrap(p.label, [&] {
      auto node = [&](const std::string& op, std::vector<ValueId> ins, engine::Attributes a,
                      const std::string& what, bool last = false) {
        return add_part(p, op, std::move(ins), std::move(a), what, last);
      };
      engine::Attributes pool = p.attrs;
      const ValueId y = node("MaxPool", {p.inputs[0]}, pool, "pool", true);
      auto i64 = [&](const std::string& what, const std::vector<int64_t>& v, Shape s) {
        return g().add_constant(g().unique_name(p.base() + "/" + what),
                                Tensor::from<int64_t>(std::move(s), v));
      };
      const ValueId padded =
          node("Pad",
               {p.inputs[0],
                ints_constant(p, "pads",
                              {0, 0, w.pad_begin[0], w.pad_begin[1], 0, 0, w.reach_end(0), w.reach_end(1)}),
                scalar_constant(p, "minus_infinity", -std::numeric_limits<double>::infinity(), t)},
               {}, "padded");
      const ValueId one = scalar_constant(p, "one", 1, DType::i64);
      ValueId found = engine::kNoValue, index = engine::kNoValue;
      for (int64_t i = 0; i < w.kernel[0]; ++i)
        for (int64_t j = 0; j < w.kernel[1]; ++j) {
          const std::string tap = fmt::format("tap{}_{}", i, j);
          const int64_t r0 = i * w.dilation[0], c0 = j * w.dilation[1];
          const ValueId values =
              node("Slice",
                   {padded, ints_constant(p, tap + "/starts", {r0, c0}),
                    ints_constant(p, tap + "/ends",
                                  {r0 + (oh - 1) * w.stride[0] + 1, c0 + (ow - 1) * w.stride[1] + 1}),
                    ints_constant(p, tap + "/axes", {2, 3}),
                    ints_constant(p, tap + "/steps", {w.stride[0], w.stride[1]})},
                   {}, tap + "/values");
          std::vector<int64_t> at(static_cast<size_t>(oh * ow));
          for (int64_t a = 0; a < oh; ++a)
            for (int64_t b = 0; b < ow; ++b) {
              const int64_t r = a * w.stride[0] - w.pad_begin[0] + r0,
                            c = b * w.stride[1] - w.pad_begin[1] + c0;
              at[static_cast<size_t>(a * ow + b)] = column_major ? c * h + r : r * wd + c;
            }
          ValueId hit = node("Cast", {node("Equal", {values, y}, {}, tap + "/is_max")},
                             {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}}, tap + "/hit");
          if (found != engine::kNoValue)
            hit = node("Mul", {hit, node("Sub", {one, found}, {}, tap + "/open")}, {}, tap + "/first");
          const ValueId contribution =
              node("Mul", {hit, i64(tap + "/at", at, Shape{oh, ow})}, {}, tap + "/index");
          found = found == engine::kNoValue ? hit : node("Add", {found, hit}, {}, tap + "/found");
          index =
              index == engine::kNoValue ? contribution : node("Add", {index, contribution}, {}, tap + "/sum");
        }
      // Flat over the whole tensor: (n C + c) H W on top.
      std::vector<int64_t> base(static_cast<size_t>(n * ch));
      for (int64_t k = 0; k < n * ch; ++k) base[static_cast<size_t>(k)] = k * h * wd;
      const ValueId offsets = i64("image_offsets", base, Shape{n, ch, 1, 1});
      mark_batched(g().add_node_named("Add", {index, offsets}, {}, {p.outputs[1]},
                                      g().unique_name(p.base() + "/indices")));
    });
  }

  // GlobalMaxPool of [N, C, D1, ...]: the maximum over D1... with the dims kept (a ReduceMax that keeps the
  // node's name).
  void add_global_max_pool(const PendingNode& p) {
    if (p.inputs.size() != 1 || p.inputs[0] == engine::kNoValue || p.outputs.size() != 1)
      fail(fmt::format("{} has {} inputs and {} outputs", p.label, p.inputs.size(), p.outputs.size()),
           "GlobalMaxPool takes one input and gives one output");
    const int64_t rank = g().value(p.inputs[0]).shape.rank();
    if (rank < 3)
      fail(fmt::format("{}: its input {} has no spatial dimensions", p.label,
                       g().value(p.inputs[0]).shape.str()),
           "GlobalMaxPool takes [N, C, D1, ...]");
    std::vector<int64_t> axes;
    for (int64_t a = 2; a < rank; ++a) axes.push_back(a);
    wrap(p.label, [&] {
      add_part(p, "ReduceMax", {p.inputs[0], ints_constant(p, "axes", axes)}, {{"keepdims", int64_t{1}}},
               "max", true);
    });
  }

  // Sum, Mean, Max and Min of any number of inputs: a chain of the two-input IR op `op` (Mean's sum is then
  // divided by the count), or Identity for a single input.
  void add_variadic(const PendingNode& p, const std::string& op) {
    if (p.inputs.empty() || p.outputs.size() != 1)
      fail(fmt::format("{} has {} inputs and {} outputs", p.label, p.inputs.size(), p.outputs.size()),
           fmt::format("{} takes one or more inputs and gives one output", p.op));
    for (ValueId v : p.inputs)
      if (v == engine::kNoValue)
        fail(fmt::format("{} has an empty input name", p.label), "every input of " + p.op + " must be named");
    const bool mean = p.op == "Mean" && p.inputs.size() > 1;
    wrap(p.label, [&] {
      if (p.inputs.size() == 1) {
        add_part(p, "Identity", {p.inputs[0]}, {}, "", true);
        return;
      }
      ValueId acc = p.inputs[0];
      for (size_t k = 1; k < p.inputs.size(); ++k) {
        acc = add_part(p, op, {acc, p.inputs[k]}, {}, std::to_string(k), k + 1 == p.inputs.size() && !mean);
      }
      if (mean) {
        Tensor count(g().value(acc).dtype, Shape{});
        count.set_f64(0, static_cast<double>(p.inputs.size()));
        ValueId c = g().add_constant(g().unique_name(p.base() + "/count"), std::move(count));
        add_part(p, "Div", {acc, c}, {}, "mean", true);
      }
    });
  }

  void insert(const PendingNode& p) {
    // find_unsupported_nodes let through only registered ops and the rewrites, which never get here.
    TRAINER_ASSERT(engine::OpRegistry::global().find(p.op) != nullptr,
                   "{}: op {} is neither registered nor rewritten", p.label, p.op);
    NodeId id = -1;
    wrap(p.label, [&] { id = g().add_node_named(p.op, p.inputs, p.attrs, p.outputs, p.name); });
    for (const auto& [k, state] : p.updates) g().bind_update(g().node(id).outputs.at(k), state);
    mark_batched(id);
  }

  // A node that reads constants only becomes constants (Shape -> Gather -> Concat chains, Cast of a
  // constant).
  bool fold(const PendingNode& p) {
    if (!p.updates.empty() || !engine::is_foldable_op(p.op, p.domain)) return false;
    std::vector<const Tensor*> values;
    std::vector<std::string> names;
    bool any = false;
    for (ValueId v : p.inputs) {
      if (v != engine::kNoValue && g().value(v).kind != engine::ValueKind::constant) return false;
      values.push_back(v == engine::kNoValue ? nullptr : g().initializer(v));
      names.push_back(v == engine::kNoValue ? std::string() : g().value(v).name);
      any = any || v != engine::kNoValue;
    }
    if (!any) return false;
    // The model's outputs stay computed by their nodes.
    for (const std::string& o : p.outputs)
      if (graph_outputs_.count(o)) return false;
    std::optional<std::vector<Tensor>> out;
    wrap(p.label, [&] {
      out = engine::evaluate_constant_node(p.op, values, p.attrs, p.outputs, p.name, names, kMaxFoldedBytes);
    });
    if (!out) return false;
    for (size_t i = 0; i < p.outputs.size(); ++i) {
      if (p.outputs[i].empty()) continue;
      wrap(p.label, [&] { folded_.insert(g().add_constant(p.outputs[i], std::move((*out)[i]))); });
    }
    result_.folded_nodes.push_back(p.base());
    return true;
  }

  // Opset 10's Dropout (in opset-11 models) takes the ratio as an attribute. In training mode the node drops
  // (training_mode true); in inference mode it passes its input through (no training_mode).
  void adapt_dropout(PendingNode& p) {
    if (p.attrs.has("ratio")) {
      Tensor ratio(g().value(p.inputs[0]).dtype, Shape{});
      ratio.set_f64(0, p.attrs.f("ratio"));
      p.attrs.erase("ratio");
      p.inputs.resize(std::max<size_t>(p.inputs.size(), 2), engine::kNoValue);
      if (p.inputs[1] == engine::kNoValue)
        p.inputs[1] = g().add_constant(g().unique_name(p.base() + "/ratio"), std::move(ratio));
    }
    if (options_.mode == OnnxGraphMode::training) {
      p.inputs.resize(3, engine::kNoValue);
      p.inputs[2] =
          g().add_constant(g().unique_name(p.base() + "/training_mode"), Tensor::scalar<bool>(true));
    } else if (options_.mode == OnnxGraphMode::inference && p.inputs.size() > 2) {
      p.inputs.resize(2);
    }
  }

  // An all-zero constant initial state (initial_h, LSTM's initial_c) means what an absent one means.
  // Exporters write one sized by the batch; dropping it keeps the graph valid at any batch size, so it
  // exports again.
  void drop_zero_initial_states(PendingNode& p) {
    for (size_t k : {size_t{5}, size_t{6}}) {
      if (k >= p.inputs.size() || p.inputs[k] == engine::kNoValue) continue;
      const engine::Value& v = g().value(p.inputs[k]);
      if (v.kind != engine::ValueKind::constant) continue;
      const Tensor& t = *g().initializer(p.inputs[k]);
      bool zero = true;
      for (int64_t i = 0; i < t.numel() && zero; ++i) zero = t.get_f64(i) == 0.0;
      if (zero) p.inputs[k] = engine::kNoValue;
    }
    while (!p.inputs.empty() && p.inputs.back() == engine::kNoValue) p.inputs.pop_back();
  }

  void adapt_batch_norm(PendingNode& p) {
    auto read_later = [&](size_t k) { return k < p.outputs.size() && read_names_.count(p.outputs[k]) > 0; };
    // Before opset 14 there is no training_mode: outputs besides Y mean training. Opset 9's outputs 3 and 4
    // (the saved batch statistics) have no counterpart in the engine's op.
    if (!p.attrs.has("training_mode") && result_.info.opset < 14) {
      bool more = false;
      for (size_t k = 1; k < p.outputs.size(); ++k) more = more || !p.outputs[k].empty();
      if (more) p.attrs.set("training_mode", int64_t{1});
    }
    if (read_later(3) || read_later(4))
      fail(fmt::format("{}: other nodes read its saved_mean or saved_var output (opset 9's training form), "
                       "which the engine does not compute",
                       p.label),
           "export the model in inference mode (PyTorch: model.eval() before torch.onnx.export)");
    if (p.outputs.size() > 3) p.outputs.resize(3);
    if (!training_flags()) return;
    auto is_state = [&](size_t i) {
      return i < p.inputs.size() && p.inputs[i] != engine::kNoValue &&
             g().value(p.inputs[i]).kind == engine::ValueKind::state;
    };
    // Running statistics that are frozen (constants) keep the inference form in training. Ones that are
    // another node's result, a tensor other nodes train (a graph optimizer that merges equal initializers
    // makes an untrained model's zero running mean some layer's zero bias), or an initializer that other
    // inputs read too
    // (a deduplicating optimizer's work: the scale that is also the running variance) cannot be updated
    // without changing what those read.
    if (options_.mode == OnnxGraphMode::training)
      for (size_t i = 3; i <= 4 && i < p.inputs.size(); ++i) {
        if (p.inputs[i] == engine::kNoValue) continue;
        const engine::Value& v = g().value(p.inputs[i]);
        if (v.kind == engine::ValueKind::constant) continue;
        const auto uses = input_uses_.find(v.name);
        const bool shared = uses != input_uses_.end() && uses->second > 1;
        if (v.kind == engine::ValueKind::state && !shared) continue;
        fail(
            fmt::format("{}: its running {} '{}' is {}, not an initializer of its own, so training cannot "
                        "update it",
                        p.label, i == 3 ? "mean" : "variance", v.name,
                        v.kind == engine::ValueKind::intermediate ? "computed by other nodes"
                        : v.kind == engine::ValueKind::state
                            ? "an initializer that other inputs read too"
                            : "a trainable tensor that other nodes read too"),
            "export the model with each BatchNormalization's running statistics as initializers of their own "
            "(a graph optimizer merges equal initializers: export without it; PyTorch's own merge, through "
            "Identity nodes, is undone on reading), or freeze the tensors they come from with [model] freeze "
            "(the layer then normalizes with them as they are)");
      }
    // One statistic frozen and the other not: the training form would update the frozen one, the inference
    // form would leave the other as it is; neither is what was asked.
    if (options_.mode == OnnxGraphMode::training && p.inputs.size() > 4 && is_state(3) != is_state(4))
      fail(fmt::format("{}: its running {} '{}' is frozen and its running {} '{}' is not; a "
                       "BatchNormalization updates both (training on batch statistics) or neither",
                       p.label, is_state(3) ? "variance" : "mean",
                       g().value(p.inputs[is_state(3) ? 4 : 3]).name, is_state(3) ? "mean" : "variance",
                       g().value(p.inputs[is_state(3) ? 3 : 4]).name),
           "freeze both running statistics (and the layer then normalizes with them), or neither");
    if (options_.mode == OnnxGraphMode::training && is_state(3) && is_state(4)) {
      p.attrs.set("training_mode", int64_t{1});
      p.outputs.resize(3);
      if (p.outputs[1].empty()) p.outputs[1] = g().unique_name(p.outputs[0] + "/running_mean");
      if (p.outputs[2].empty()) p.outputs[2] = g().unique_name(p.outputs[0] + "/running_var");
      p.updates = {{1, p.inputs[3]}, {2, p.inputs[4]}};
      return;
    }
    // Inference form: normalization with the running statistics, which the node then does not output.
    if (read_later(1) || read_later(2))
      fail(fmt::format("{}: other nodes read the running statistics it outputs in training mode, which it "
                       "does not compute in inference mode",
                       p.label),
           "export the model in inference mode (PyTorch: model.eval() before torch.onnx.export)");
    p.attrs.set("training_mode", int64_t{0});
    p.outputs.resize(1);
  }

  // Softmax, LogSoftmax and Hardmax before opset 13 work over all dimensions from `axis` (default 1) on, as
  // one. Over the last axis that is today's op; otherwise the node becomes Flatten -> op -> Reshape (the
  // Reshape reads -1 for the first dimension, so the graph holds at any batch size). Returns true when it
  // added the nodes itself.
  bool adapt_opset11_softmax(PendingNode& p) {
    const Shape shape = g().value(p.inputs[0]).shape;
    const int64_t rank = shape.rank();
    int64_t axis = p.attrs.has("axis") ? p.attrs.i("axis") : 1;
    if (rank == 0 || axis < -rank || axis >= rank) return false;  // validation reports it
    if (axis < 0) axis += rank;
    p.attrs.set("axis", axis);
    if (axis == rank - 1) return false;
    const std::string base = p.base();
    ValueId flat = engine::kNoValue, normalized = engine::kNoValue;
    wrap(p.label, [&] {
      NodeId f = g().add_node_named("Flatten", {p.inputs[0]}, {{"axis", axis}},
                                    {g().unique_name(base + "/flattened")}, base + "/flatten");
      flat = g().node(f).outputs[0];
      mark_batched(f);
    });
    if (p.op == "Hardmax") {
      // The importer writes Hardmax as a formula: that of the 2-D form.
      PendingNode q = p;
      q.inputs[0] = flat;
      q.attrs.set("axis", int64_t{1});
      q.outputs = {g().unique_name(base + "/2d")};
      add_formula(q);
      normalized = lookup(q.outputs[0], p.label);
    }
    wrap(p.label, [&] {
      if (normalized == engine::kNoValue) {
        NodeId s =
            g().add_node_named(p.op, {flat}, {{"axis", int64_t{1}}}, {g().unique_name(base + "/2d")}, p.name);
        normalized = g().node(s).outputs[0];
        mark_batched(s);
      }
      std::vector<int64_t> dims = shape.dims();
      if (shape.numel() > 0) dims[0] = -1;
      mark_batched(g().add_node_named("Reshape", {normalized, ints_constant(p, "shape", dims)}, {},
                                      {p.outputs[0]}, base + "/reshape"));
    });
    return true;
  }

  // A Reshape of a batch to a shape computed from shapes ([batch, -1] from Shape -> Gather -> Concat) reads
  // 0 (the input's dimension) instead of the batch size, so the folded graph holds at every batch size: the
  // training graphs of the last partial batch, and the exported model with its symbolic batch.
  void adapt_reshape(PendingNode& p) {
    const int64_t batch = options_.batch_size;
    if (batch <= 0 || p.inputs.size() != 2 || p.inputs[1] == engine::kNoValue) return;
    const ValueId data = p.inputs[0], shape = p.inputs[1];
    if (!batched_.count(data) || !(folded_.count(shape) || shape_constants_.count(shape))) return;
    if (p.attrs.has("allowzero") && p.attrs.i("allowzero") != 0) return;
    p.batch_relative_input = 1;
    if (relative_.count(shape)) return;  // already rewritten
    const Tensor* t = g().initializer(shape);
    if (t->dtype() != DType::i64 || t->shape().rank() != 1 || t->numel() < 1 ||
        t->data<int64_t>()[0] != batch)
      return;
    Tensor rel = *t;
    rel.data<int64_t>()[0] = 0;
    if (g().value(shape).consumers.empty() && !graph_outputs_.count(g().value(shape).name)) {
      // In place, so the exported model keeps the name; other readers get the value as folded.
      relative_[shape] = RelativeShape{*t, engine::kNoValue};
      *g().mutable_initializer(shape) = std::move(rel);
    } else {
      p.inputs[1] =
          g().add_constant(g().unique_name(g().value(shape).name + "/batch_relative"), std::move(rel));
    }
  }

  // Readers of a shape rewritten for a Reshape (other than such Reshapes) read its folded value.
  void restore_folded_values(PendingNode& p) {
    for (size_t i = 0; i < p.inputs.size(); ++i) {
      auto it = relative_.find(p.inputs[i]);
      if (it == relative_.end() || static_cast<int>(i) == p.batch_relative_input) continue;
      if (it->second.as_folded == engine::kNoValue) {
        const std::string name = g().value(it->first).name;
        it->second.as_folded = g().add_constant(g().unique_name(name + "/as_folded"), it->second.original);
        folded_.insert(it->second.as_folded);
      }
      p.inputs[i] = it->second.as_folded;
    }
  }

  // Values that follow the batch: the inputs, and what nodes compute from them with the batch leading.
  void mark_batched(NodeId id) {
    const int64_t batch = options_.batch_size;
    const engine::Node& n = g().node(id);
    bool from_batch = false;
    for (ValueId v : n.inputs) from_batch = from_batch || (v != engine::kNoValue && batched_.count(v));
    if (!from_batch) return;
    for (ValueId v : n.outputs) {
      if (v == engine::kNoValue) continue;
      const Shape& s = g().value(v).shape;
      if (s.rank() >= 1 && s[0] == batch) batched_.insert(v);
    }
  }

  void add_outputs() {
    for (const auto& out : model_.graph().output()) {
      ValueId v = g().find(out.name());
      if (v == engine::kNoValue)
        fail(fmt::format("graph output '{}' is produced by no node", out.name()), "the exporter is broken");
      g().mark_output(v);
      result_.outputs.push_back(v);
    }
  }

  // Runs f; an InputError from the engine gets the file name and the item (a node) in front of its message.
  template <class F>
  void wrap(const std::string& label, F&& f) {
    try {
      f();
    } catch (const InputError& e) {
      std::string msg = e.what();
      if (!e.where().empty() && msg.rfind(e.where() + ": ", 0) == 0) msg = msg.substr(e.where().size() + 2);
      // Engine messages about a node already name it ("node 'x' (Op): ..."), as do the importer's own.
      if (msg.rfind("node '", 0) != 0 && msg.rfind(label, 0) != 0) msg = fmt::format("{}: {}", label, msg);
      if (!fixed_batch_note_.empty())
        fail(fmt::format("{} ({})", msg, fixed_batch_note_),
             fmt::format("export the model with a symbolic batch dimension, e.g. torch.onnx.export(..., "
                         "dynamic_axes={{'{}': {{0: 'batch'}}}})",
                         fixed_batch_input_));
      fail(std::move(msg),
           e.hint().empty() ? "check the model against the ONNX operator definitions" : e.hint());
    }
  }

  // A folded shape rewritten to be batch-relative in place, and its value as folded for other readers.
  struct RelativeShape {
    Tensor original;
    ValueId as_folded = engine::kNoValue;
  };
  // Folding stops at outputs this large: such a node runs at every step instead of occupying the arena.
  static constexpr size_t kMaxFoldedBytes = size_t{1} << 22;

  const onnx::ModelProto& model_;
  std::string source_;
  const OnnxImportOptions& options_;
  std::string base_dir_;
  OnnxImportResult result_;
  std::set<std::string> exported_placeholders_;  // torch.export's %p_ and %b_ names (without them): none else
  std::set<std::string> differentiable_;         // values some node input with a gradient reads
  std::set<std::string> running_stats_;          // inputs 3 and 4 of BatchNormalization nodes
  std::map<std::string, int> input_uses_;  // how many node inputs name each value (an input read twice: 2)
  std::set<std::string> read_names_;       // values some node or the graph's outputs read
  std::set<std::string> graph_outputs_;
  std::set<ValueId> batched_;          // values whose leading dimension is the batch
  std::set<ValueId> shape_constants_;  // outputs of Shape and Size
  std::set<ValueId> folded_;           // outputs of folded nodes
  std::map<ValueId, RelativeShape> relative_;
  mutable std::string fixed_batch_note_;   // set when a fixed batch dimension was replaced
  mutable std::string fixed_batch_input_;  // the input whose fixed batch dimension was replaced
};

// --- where a damaged file stops being protobuf -----------------------------------------------------------

// Field names of the messages the scan descends into, for the messages it reports.
struct WireMessage {
  const char* name;
  std::map<int, std::pair<const char*, const WireMessage*>> fields;  // number -> (name, sub-message or null)
  int name_field = 0;  // the string field that names an element (NodeProto.name, TensorProto.name, ...)
};

const WireMessage& graph_wire() {
  static const WireMessage node{"NodeProto",
                                {{1, {"input", nullptr}},
                                 {2, {"output", nullptr}},
                                 {3, {"name", nullptr}},
                                 {4, {"op_type", nullptr}},
                                 {5, {"attribute", nullptr}},
                                 {6, {"doc_string", nullptr}},
                                 {7, {"domain", nullptr}}},
                                3};
  static const WireMessage tensor{"TensorProto", {{8, {"name", nullptr}}, {9, {"raw_data", nullptr}}}, 8};
  static const WireMessage value_info{"ValueInfoProto", {{1, {"name", nullptr}}, {2, {"type", nullptr}}}, 1};
  static const WireMessage graph{"GraphProto",
                                 {{1, {"node", &node}},
                                  {2, {"name", nullptr}},
                                  {5, {"initializer", &tensor}},
                                  {10, {"doc_string", nullptr}},
                                  {11, {"input", &value_info}},
                                  {12, {"output", &value_info}},
                                  {13, {"value_info", &value_info}},
                                  {14, {"quantization_annotation", nullptr}},
                                  {15, {"sparse_initializer", nullptr}}}};
  return graph;
}

const WireMessage& model_wire() {
  static const WireMessage model{"ModelProto",
                                 {{1, {"ir_version", nullptr}},
                                  {2, {"producer_name", nullptr}},
                                  {3, {"producer_version", nullptr}},
                                  {4, {"domain", nullptr}},
                                  {5, {"model_version", nullptr}},
                                  {6, {"doc_string", nullptr}},
                                  {7, {"graph", &graph_wire()}},
                                  {8, {"opset_import", nullptr}},
                                  {14, {"metadata_props", nullptr}},
                                  {20, {"training_info", nullptr}},
                                  {25, {"functions", nullptr}}}};
  return model;
}

// Scans the protobuf wire format (tags, varints, lengths) of a message and of the sub-messages it knows.
// Returns the first place where the bytes cannot be protobuf: "byte N: ..." with the element holding it.
class WireScan {
 public:
  explicit WireScan(std::string_view bytes) : b_(bytes) {}

  std::optional<std::string> message(size_t begin, size_t end, const WireMessage& m,
                                     const std::string& path) {
    std::map<int, int> counts;
    size_t pos = begin;
    while (pos < end) {
      const size_t tag_at = pos;
      std::optional<uint64_t> tag = varint(pos, end);
      if (!tag) return at(tag_at, fmt::format("the file ends inside a field tag{}", in(path)), true);
      const int field = static_cast<int>(*tag >> 3), wire = static_cast<int>(*tag & 7);
      auto known = m.fields.find(field);
      const std::string fname =
          known != m.fields.end() ? known->second.first : fmt::format("field {}", field);
      // "raw_data of graph.initializer[5] 'fc.weight'"; elements go on as "graph.initializer[5] 'fc.weight'".
      const std::string fpath = path.empty() ? fname : fmt::format("{} of {}", fname, path);
      const std::string dotted = path.empty() ? fname : fmt::format("{}.{}", path, fname);
      if (field == 0)
        return at(tag_at, fmt::format("field number 0{} is not valid protobuf", in(path)), false);
      switch (wire) {
        case 0:
          if (!varint(pos, end)) return at(tag_at, fmt::format("the file ends inside {}", fpath), true);
          break;
        case 1:
        case 5: {
          const size_t n = wire == 1 ? 8 : 4;
          if (end - pos < n) return at(tag_at, fmt::format("the file ends inside {}", fpath), true);
          pos += n;
          break;
        }
        case 2: {
          std::optional<uint64_t> len = varint(pos, end);
          if (!len) return at(tag_at, fmt::format("the file ends inside the length of {}", fpath), true);
          const int index = counts[field]++;
          const WireMessage* sub = known != m.fields.end() ? known->second.second : nullptr;
          const size_t avail = end - pos;
          const std::string element =
              !sub ? fpath
                   : fmt::format("{}{}{}", dotted, sub == &graph_wire() ? "" : fmt::format("[{}]", index),
                                 named(pos, pos + std::min<uint64_t>(*len, avail), sub));
          if (*len > avail) {
            // The element is cut off: look inside it for the innermost element that is, to name it.
            if (sub) {
              if (auto inner = message(pos, end, *sub, element); inner && inner_is_cut_) return inner;
            }
            return at(tag_at, fmt::format("{} declares {} bytes but only {} remain", element, *len, avail),
                      true);
          }
          if (sub) {
            if (auto inner = message(pos, pos + *len, *sub, element)) return inner;
          }
          pos += *len;
          break;
        }
        default:
          return at(tag_at,
                    fmt::format("{} has wire type {}, which no field of an ONNX model has", fpath, wire),
                    false);
      }
    }
    return std::nullopt;
  }

 private:
  std::optional<uint64_t> varint(size_t& pos, size_t end) const {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && pos < end; shift += 7) {
      const auto byte = static_cast<unsigned char>(b_[pos++]);
      v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return v;
    }
    return std::nullopt;
  }
  static std::string in(const std::string& path) { return path.empty() ? "" : " in " + path; }
  // " 'conv1'" when the (possibly cut) element's name field is readable.
  std::string named(size_t begin, size_t end, const WireMessage* m) const {
    if (!m || m->name_field == 0) return "";
    size_t pos = begin;
    while (pos < end) {
      std::optional<uint64_t> tag = varint(pos, end);
      if (!tag) return "";
      const int field = static_cast<int>(*tag >> 3), wire = static_cast<int>(*tag & 7);
      if (wire == 0) {
        if (!varint(pos, end)) return "";
      } else if (wire == 1 || wire == 5) {
        pos += wire == 1 ? 8 : 4;
      } else if (wire == 2) {
        std::optional<uint64_t> len = varint(pos, end);
        if (!len || *len > end - pos) return "";
        if (field == m->name_field) return fmt::format(" '{}'", b_.substr(pos, *len));
        pos += *len;
      } else {
        return "";
      }
    }
    return "";
  }
  std::string at(size_t offset, std::string what, bool cut) {
    inner_is_cut_ = cut;
    return fmt::format("byte {}: {}", offset, what);
  }

  std::string_view b_;
  bool inner_is_cut_ = false;
};

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
}

}  // namespace

namespace {

// PyTorch's eval-mode export merges initializers of equal values into one and names each merged one by an
// Identity of the one kept (a chain of them, for three or more). Some were never one parameter: an untrained
// model's LayerNorm scales and zero biases, the layers of an nn.TransformerEncoder (deep copies of one
// layer). Others are: a module called twice folds its own transposed copy of its weight for each call. A
// parameter shared by two names is exported as one initializer, never through an Identity, so an Identity
// whose output bears a name of its own (not an exporter's "onnx::...") is a parameter of its own. An
// anonymous one (a folded constant) is when its readers are the same ops as its source's in other modules (a
// copied layer: /enc/layers.1/linear1 beside /enc/layers.0/linear1); readers in the same module (PyTorch
// names a module's further calls /l_1 beside /l) or of other kinds keep the source's tensor. Either way an
// Identity read apart becomes an initializer under its output's name; one that gives a graph output stays.

// A node's module: its name's folders, each without the _N that PyTorch gives a module's further calls (only
// where the module without it exists: blk_1 and blk_2 are modules of their own).
std::string module_of(const std::string& node_name, const std::unordered_set<std::string>& scopes) {
  const size_t slash = node_name.rfind('/');
  if (slash == std::string::npos || slash == 0) return "";
  const std::string scope = node_name.substr(0, slash);
  std::string raw, out;  // the path as written, and as normalized
  size_t from = 1;
  while (from <= scope.size()) {
    size_t to = scope.find('/', from);
    if (to == std::string::npos) to = scope.size();
    std::string part = scope.substr(from, to - from);
    raw += "/" + part;
    const size_t under = part.rfind('_');
    if (under != std::string::npos && under + 1 < part.size() &&
        std::all_of(part.begin() + static_cast<std::ptrdiff_t>(under) + 1, part.end(),
                    [](unsigned char c) { return std::isdigit(c); }) &&
        scopes.count(raw.substr(0, raw.size() - (part.size() - under))))
      part.resize(under);
    out += "/" + part;
    from = to + 1;
  }
  return out;
}

void untie_merged_initializers(onnx::GraphProto* graph,
                               std::vector<std::pair<std::string, std::string>>* untied) {
  std::unordered_map<std::string, int> initializer_at;
  for (int i = 0; i < graph->initializer_size(); ++i) initializer_at.emplace(graph->initializer(i).name(), i);
  std::unordered_set<std::string> outputs;
  for (const auto& out : graph->output()) outputs.insert(out.name());
  auto is_identity = [](const onnx::NodeProto& n) {
    return n.op_type() == "Identity" && (n.domain().empty() || n.domain() == "ai.onnx") &&
           n.input_size() == 1 && n.output_size() == 1 && !n.output(0).empty();
  };
  // Every scope of the nodes' names and its ancestors ("/enc", "/enc/layers.0", ...).
  std::unordered_set<std::string> scopes;
  for (const onnx::NodeProto& n : graph->node())
    for (size_t at = n.name().find('/', 1); at != std::string::npos; at = n.name().find('/', at + 1))
      scopes.insert(n.name().substr(0, at));
  // The nodes other than Identities that read each name: their ops and their modules.
  struct Readers {
    std::set<std::string> ops, modules;
  };
  std::unordered_map<std::string, Readers> readers;
  for (const onnx::NodeProto& n : graph->node()) {
    if (is_identity(n)) continue;
    for (const std::string& in : n.input()) {
      if (in.empty()) continue;
      readers[in].ops.insert(n.op_type());
      readers[in].modules.insert(module_of(n.name(), scopes));
    }
  }
  auto apart = [&](const std::string& source, const std::string& copy) {
    if (!copy.starts_with("onnx::")) return true;  // a parameter's own name
    const Readers& a = readers[source];
    const Readers& b = readers[copy];
    if (a.ops.empty() || a.ops != b.ops) return false;
    for (const std::string& m : a.modules)
      if (b.modules.count(m)) return false;
    return true;
  };
  // Each link of a chain is judged against its source once that is an initializer: passes until none is read
  // apart (the Identities may come in any order).
  auto* nodes = graph->mutable_node();
  for (bool more = true; more;) {
    more = false;
    int kept = 0;
    for (int i = 0; i < nodes->size(); ++i) {
      const onnx::NodeProto& n = nodes->Get(i);
      const bool untie = is_identity(n) && initializer_at.count(n.input(0)) && !outputs.count(n.output(0)) &&
                         !initializer_at.count(n.output(0)) &&
                         is_float_data(graph->initializer(initializer_at.at(n.input(0))).data_type()) &&
                         apart(n.input(0), n.output(0));
      if (untie) {
        onnx::TensorProto copy = graph->initializer(initializer_at.at(n.input(0)));
        copy.set_name(n.output(0));
        if (untied) untied->emplace_back(n.output(0), n.input(0));
        initializer_at.emplace(n.output(0), graph->initializer_size());
        *graph->add_initializer() = std::move(copy);
        more = true;
        continue;
      }
      if (kept != i) nodes->SwapElements(kept, i);
      ++kept;
    }
    nodes->DeleteSubrange(kept, nodes->size() - kept);
  }
}

// torch.export (PyTorch's dynamo=True exporter, its default from 2.9) merges initializers of equal values
// too, with no Identity: the readers of the one it keeps read it directly. Each node keeps what it was made
// from in its metadata, "pkg.torch.onnx.fx_node" ("... args = (%gelu, [64], %p_ln2_weight, %p_ln2_bias)
// ..."), where a parameter is %p_NAME and a buffer %b_NAME, NAME its path with '_' for '.'. A reader of an
// initializer whose node names the initializer's own placeholder read it (a parameter tied by the model reads
// as one placeholder); one whose node names instead a single placeholder of another of the same kind
// (ln2_weight for ln1.weight) read a parameter merged into it, and gets a copy of its own under that
// parameter's name (its module path from "pkg.torch.onnx.name_scopes", where that spells the placeholder).
void untie_exported_duplicates(onnx::GraphProto* graph,
                               std::vector<std::pair<std::string, std::string>>* untied) {
  std::unordered_map<std::string, int> initializer_at;
  std::unordered_set<std::string> names;  // every name in use: a copy takes a new one
  for (int i = 0; i < graph->initializer_size(); ++i) {
    const auto& t = graph->initializer(i);
    names.insert(t.name());
    if (is_float_data(t.data_type())) initializer_at.emplace(t.name(), i);
  }
  for (const auto& n : graph->node())
    for (const std::string& o : n.output()) names.insert(o);
  for (const auto& i : graph->input()) names.insert(i.name());
  std::map<std::pair<std::string, std::string>, std::string> copies;  // (initializer, placeholder) -> copy
  for (onnx::NodeProto& n : *graph->mutable_node()) {
    std::set<std::string> held;  // the placeholders the node was made from
    placeholders_of(n, &held);
    if (held.empty()) continue;
    std::set<std::string> own;  // the placeholders of the initializers the node reads
    for (const std::string& in : n.input())
      if (initializer_at.count(in)) own.insert(torch_placeholder(in));
    for (int j = 0; j < n.input_size(); ++j) {
      const std::string source = n.input(j);
      if (!initializer_at.count(source) || held.count(torch_placeholder(source))) continue;
      // The parameter it was: one placeholder the node names that none of its initializers has, of the same
      // kind (its name ends as the initializer's: _weight for ln1.weight).
      const size_t dot = source.rfind('.');
      if (dot == std::string::npos) continue;  // an exporter's constant (val_3), never a parameter
      const std::string kind = "_" + torch_placeholder(source.substr(dot + 1));
      std::vector<std::string> candidates;
      for (const std::string& h : held)
        if (!own.count(h) && h.size() > kind.size() && h.ends_with(kind)) candidates.push_back(h);
      if (candidates.size() != 1) continue;
      const std::string& placeholder = candidates.front();
      auto [it, fresh] = copies.emplace(std::make_pair(source, placeholder), "");
      if (fresh) {
        // Its name: the deepest module path of the node's scopes that spells the placeholder, else the
        // placeholder itself.
        std::vector<std::string> scopes;
        const std::string listed = metadata_of(n, "pkg.torch.onnx.name_scopes");
        for (size_t q = listed.find('\''); q != std::string::npos; q = listed.find('\'', q + 1)) {
          const size_t close = listed.find('\'', q + 1);
          if (close == std::string::npos) break;
          scopes.push_back(listed.substr(q + 1, close - q - 1));
          q = close;
        }
        std::string name = placeholder;
        // (Scopes are module names, ['', 'ln2', 'layer_norm_1'], or whole paths, ['', 'enc', 'enc.layers.0',
        // 'enc.layers.0.norm2', 'layer_norm_1'], as PyTorch's versions write them.)
        for (size_t depth = scopes.size(); depth-- > 0 && name == placeholder;) {
          std::string joined;
          for (size_t k = 0; k <= depth; ++k)
            if (!scopes[k].empty()) joined += (joined.empty() ? "" : ".") + scopes[k];
          for (const std::string& path : {scopes[depth], joined}) {
            const std::string candidate = path.empty() ? source.substr(dot + 1) : path + source.substr(dot);
            if (torch_placeholder(candidate) == placeholder) {
              name = candidate;
              break;
            }
          }
        }
        // A parameter of a module no scope names (an attention's out_proj) whose path differs only in
        // letters and digits (layers.1 for layers.0): the source's name with those.
        if (name == placeholder && torch_placeholder(source).size() == placeholder.size()) {
          std::string spelled = placeholder;
          bool fits = true;
          for (size_t k = 0; k < source.size(); ++k)
            if (!placeholder_char(source[k])) {
              fits = fits && placeholder[k] == '_';
              spelled[k] = source[k];
            }
          if (fits) name = spelled;
        }
        for (int k = 2; names.count(name); ++k) name = fmt::format("{}#{}", name, k);
        names.insert(name);
        onnx::TensorProto copy = graph->initializer(initializer_at.at(source));
        copy.set_name(name);
        *graph->add_initializer() = std::move(copy);
        if (untied) untied->emplace_back(name, source);
        it->second = name;
      }
      n.set_input(j, it->second);
    }
  }
}

}  // namespace

void parse_onnx_model(std::string_view bytes, const std::string& source, onnx::ModelProto* model,
                      std::vector<std::pair<std::string, std::string>>* untied) {
  if (bytes.size() > static_cast<size_t>(INT_MAX))
    throw InputError(source, fmt::format("the model is {} bytes, over protobuf's 2 GiB limit", bytes.size()),
                     "save the weights as ONNX external data");
  if (bytes.empty()) throw InputError(source, "the file is empty", "it is not an ONNX model");
  if (!model->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    std::optional<std::string> place = WireScan(bytes).message(0, bytes.size(), model_wire(), "");
    throw InputError(
        source,
        place ? fmt::format("not a valid ONNX model ({} bytes): {}", bytes.size(), *place)
              : fmt::format("not a valid ONNX model: the protobuf message ({} bytes) does not parse",
                            bytes.size()),
        "the file is truncated or corrupt, or it is not an ONNX model");
  }
  if (model->has_graph()) {
    untie_merged_initializers(model->mutable_graph(), untied);
    untie_exported_duplicates(model->mutable_graph(), untied);
  }
}

namespace {

// Every name the nodes of `graph` (and of their subgraphs) read.
void names_read(const onnx::GraphProto& graph, std::set<std::string>* out) {
  for (const auto& n : graph.node()) {
    for (const std::string& name : n.input())
      if (!name.empty()) out->insert(name);
    for (const auto& a : n.attribute())
      if (a.type() == onnx::AttributeProto::GRAPH) names_read(a.g(), out);
  }
  for (const auto& o : graph.output()) out->insert(o.name());
}

// The model cut at `outputs`: the nodes they need (a backward walk in the nodes' topological order; a node
// with a subgraph needs every name its subgraph reads), and the initializers and graph inputs those read.
onnx::ModelProto cut_at(const onnx::ModelProto& model, std::vector<std::string> outputs,
                        const std::string& source) {
  const onnx::GraphProto& g = model.graph();
  std::set<std::string> known;
  for (const auto& n : g.node())
    for (const std::string& o : n.output()) known.insert(o);
  for (const auto& i : g.input()) known.insert(i.name());
  for (const auto& i : g.initializer()) known.insert(i.name());
  // A node's name stands for its first output (the names `trainer summary` lists as layers).
  for (std::string& o : outputs)
    if (!known.count(o))
      for (const auto& n : g.node())
        if (n.name() == o && n.output_size() > 0 && !n.output(0).empty()) o = n.output(0);
  for (const std::string& o : outputs)
    if (!known.count(o)) {
      std::vector<std::string> names;
      for (const auto& n : g.node()) {
        for (const std::string& v : n.output()) names.push_back(v);
        if (!n.name().empty()) names.push_back(n.name());
      }
      for (const auto& out : g.output()) names.push_back(out.name());
      std::vector<std::string> listed(g.output_size());
      for (int i = 0; i < g.output_size(); ++i) listed[static_cast<size_t>(i)] = g.output(i).name();
      const std::string near = did_you_mean(o, names);
      throw InputError(source,
                       fmt::format("the model has no value or node named '{}' to take as its output", o),
                       near.empty() ? fmt::format("its graph outputs: {}", fmt::join(listed, ", ")) : near);
    }
  std::set<std::string> needed(outputs.begin(), outputs.end());
  std::vector<bool> keep(static_cast<size_t>(g.node_size()), false);
  for (int i = g.node_size() - 1; i >= 0; --i) {
    const onnx::NodeProto& n = g.node(i);
    bool used = false;
    for (const std::string& o : n.output()) used = used || needed.count(o);
    if (!used) continue;
    keep[static_cast<size_t>(i)] = true;
    for (const std::string& in : n.input())
      if (!in.empty()) needed.insert(in);
    for (const auto& a : n.attribute())
      if (a.type() == onnx::AttributeProto::GRAPH) names_read(a.g(), &needed);
  }
  onnx::ModelProto cut;
  cut.set_ir_version(model.ir_version());
  *cut.mutable_opset_import() = model.opset_import();
  cut.set_producer_name(model.producer_name());
  cut.set_producer_version(model.producer_version());
  cut.set_domain(model.domain());
  cut.set_model_version(model.model_version());
  cut.set_doc_string(model.doc_string());
  *cut.mutable_metadata_props() = model.metadata_props();
  *cut.mutable_functions() = model.functions();
  onnx::GraphProto& c = *cut.mutable_graph();
  c.set_name(g.name());
  for (int i = 0; i < g.node_size(); ++i)
    if (keep[static_cast<size_t>(i)]) *c.add_node() = g.node(i);
  for (const auto& in : g.input())
    if (needed.count(in.name())) *c.add_input() = in;
  for (const auto& init : g.initializer())
    if (needed.count(init.name())) *c.add_initializer() = init;
  for (const auto& init : g.sparse_initializer()) *c.add_sparse_initializer() = init;
  for (const auto& vi : g.value_info())
    if (needed.count(vi.name())) *c.add_value_info() = vi;
  for (const std::string& o : outputs) {
    onnx::ValueInfoProto* vi = c.add_output();
    vi->set_name(o);
    for (const auto& out : g.output())
      if (out.name() == o) *vi = out;
    for (const auto& v : g.value_info())
      if (v.name() == o) *vi = v;
  }
  return cut;
}

}  // namespace

OnnxImportResult import_onnx_model(const onnx::ModelProto& model, const std::string& source,
                                   const OnnxImportOptions& options, const std::string& base_dir) {
  if (!options.outputs.empty() && model.has_graph()) {
    const onnx::ModelProto cut = cut_at(model, options.outputs, source);
    return Importer(cut, source, options, base_dir).run();
  }
  return Importer(model, source, options, base_dir).run();
}

OnnxImportResult import_onnx_bytes(std::string_view bytes, const std::string& source,
                                   const OnnxImportOptions& options) {
  onnx::ModelProto model;
  parse_onnx_model(bytes, source, &model);
  return import_onnx_model(model, source, options);
}

OnnxImportResult import_onnx_file(const std::string& path, const OnnxImportOptions& options) {
  std::string bytes = read_file_bytes(path);
  onnx::ModelProto model;
  parse_onnx_model(bytes, path, &model);
  return import_onnx_model(model, path, options, parent_dir(path));
}

OnnxModelFile::OnnxModelFile(const std::string& path) : path_(path) {
  auto model = std::make_shared<onnx::ModelProto>();
  parse_onnx_model(read_file_bytes(path), path, model.get(), &untied_);
  model_ = std::move(model);
}

OnnxModelFile::OnnxModelFile(std::string_view bytes, const std::string& path) : path_(path) {
  auto model = std::make_shared<onnx::ModelProto>();
  parse_onnx_model(bytes, path, model.get(), &untied_);
  model_ = std::move(model);
}

OnnxImportResult OnnxModelFile::import(const OnnxImportOptions& options) const {
  return import_onnx_model(*model_, path_, options, parent_dir(path_));
}

bool imported_as_other_ops(const onnx::NodeProto& n) {
  return imported_by_importer(n) || rewritten(n);
}

std::vector<std::string> onnx_ops_imported_as_others() {
  std::set<std::string> all = constant_ops();
  all.insert(formula_ops().begin(), formula_ops().end());
  all.insert(other_rewritten_ops().begin(), other_rewritten_ops().end());
  // Max and Min of two inputs are engine ops; the importer only chains them for more.
  std::vector<std::string> out;
  for (const std::string& op : all)
    if (engine::OpRegistry::global().find(op) == nullptr) out.push_back(op);
  return out;
}

namespace {

// The nodes of `graph` and of its If branches (reported at the If's index, named after the If) that no engine
// op or rewrite takes.
void find_unsupported_in(const onnx::GraphProto& graph, const std::string& scope, int scope_index,
                         std::vector<UnsupportedNode>* out) {
  const auto& registry = engine::OpRegistry::global();
  const auto& nodes = graph.node();
  for (int i = 0; i < nodes.size(); ++i) {
    const auto& n = nodes[i];
    const std::string domain = normalize_domain(n.domain());
    const std::string name = n.name().empty() ? fmt::format("#{}", i) : n.name();
    const int index = scope.empty() ? i : scope_index;
    if (domain.empty() && n.op_type() == "If")
      for (const auto& a : n.attribute())
        if (a.type() == onnx::AttributeProto::GRAPH)
          find_unsupported_in(a.g(), (scope.empty() ? name : scope + "/" + name) + "/" + a.name(), index,
                              out);
    if (imported_by_importer(n) || rewritten(n)) continue;
    const engine::OpSchema* s = registry.find(n.op_type());
    if (s != nullptr && s->domain() == domain) continue;
    out->push_back({scope.empty() ? name : scope + "/" + name, n.op_type(), domain, index});
  }
}

}  // namespace

std::vector<UnsupportedNode> find_unsupported_nodes(const onnx::ModelProto& model) {
  std::vector<UnsupportedNode> out;
  find_unsupported_in(model.graph(), "", 0, &out);
  return out;
}

}  // namespace trainer::formats
