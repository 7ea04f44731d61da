// ONNX export: writes the nodes that compute the requested outputs as a ModelProto for the target opset,
// lowering private fused ops, with a symbolic batch dimension proven by re-inferring the graph at another
// batch size.
#include "formats/onnx_export.h"

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <functional>
#include <numbers>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "engine/ir/op_schema.h"
#include "engine/ops/rnn_config.h"
#include "engine/util/error.h"
#include "formats/atomic_file.h"
#include "formats/onnx_tensor.h"

namespace trainer::formats {

using engine::AttrValue;
using engine::DType;
using engine::Graph;
using engine::kNoValue;
using engine::Node;
using engine::NodeId;
using engine::Shape;
using engine::Tensor;
using engine::ValueId;
using engine::ValueKind;

namespace {

// First opset of ai.onnx ops that the IR has and that are newer than kMinOnnxExportOpset.
int op_since(const std::string& op) {
  if (op == "LayerNormalization") return 17;
  if (op == "Gelu") return 20;
  if (op == "HardSwish") return 14;
  if (op == "GridSample") return 16;
  return 0;
}

// Attributes that ai.onnx added to an op after opset 13. Below `since` the attribute must hold the value that
// means what the older op did, and is then left out.
struct LaterAttribute {
  const char* op;
  const char* attr;
  int since;
};
constexpr LaterAttribute kLaterAttributes[] = {
    {"BatchNormalization", "training_mode", 14},
    {"Reshape", "allowzero", 14},
    {"Shape", "start", 15},
    {"Shape", "end", 15},
    {"AveragePool", "dilations", 19},
    {"Cast", "saturate", 19},
    {"ReduceMean", "noop_with_empty_axes", 18},
    {"ReduceMax", "noop_with_empty_axes", 18},
    {"ReduceMin", "noop_with_empty_axes", 18},
    {"ReduceProd", "noop_with_empty_axes", 18},
};

// Whether attribute `attr` of node n behaves as the op did before the attribute existed.
bool neutral_value(const Graph& g, const Node& n, const std::string& attr, const AttrValue& v) {
  // saturate only affects float8 casts, which the IR has no type for.
  if (attr == "saturate") return true;
  if (attr == "dilations") {
    const auto* d = std::get_if<std::vector<int64_t>>(&v);
    return d && std::all_of(d->begin(), d->end(), [](int64_t x) { return x == 1; });
  }
  if (attr == "end") {
    const auto* e = std::get_if<int64_t>(&v);
    return e && *e >= g.value(n.inputs[0]).shape.rank();
  }
  const auto* i = std::get_if<int64_t>(&v);
  return i && *i == 0;
}

// The opset from which ai.onnx takes `axes` as input 1 instead of an attribute; 0 when the op has no axes.
int axes_input_since(const std::string& op) {
  if (op == "Squeeze" || op == "Unsqueeze" || op == "ReduceSum") return 13;
  if (op.rfind("Reduce", 0) == 0) return 18;
  return 0;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t end = s.find(',', start);
    std::string item = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    out.push_back(item);
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

void set_attribute(onnx::AttributeProto* a, const std::string& name, const AttrValue& v, bool as_strings) {
  a->set_name(name);
  if (const auto* i = std::get_if<int64_t>(&v)) {
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(*i);
  } else if (const auto* f = std::get_if<float>(&v)) {
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(*f);
  } else if (const auto* s = std::get_if<std::string>(&v)) {
    if (as_strings) {
      a->set_type(onnx::AttributeProto::STRINGS);
      for (const std::string& item : split_commas(*s)) a->add_strings(item);
    } else {
      a->set_type(onnx::AttributeProto::STRING);
      a->set_s(*s);
    }
  } else if (const auto* is = std::get_if<std::vector<int64_t>>(&v)) {
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : *is) a->add_ints(x);
  } else if (const auto* fs = std::get_if<std::vector<float>>(&v)) {
    a->set_type(onnx::AttributeProto::FLOATS);
    for (float x : *fs) a->add_floats(x);
  } else {
    a->set_type(onnx::AttributeProto::TENSOR);
    tensor_to_onnx(std::get<Tensor>(v), "", a->mutable_t());
  }
}

// An InputError's message without its "where: " prefix, to quote inside another message.

std::string node_label(const Node& n) {
  return fmt::format("node '{}' ({})", n.name, n.op);
}

class Exporter {
 public:
  Exporter(const Graph& g, const std::vector<ValueId>& inputs, const std::vector<ValueId>& outputs,
           const OnnxExportOptions& o)
      : g_(g), inputs_(inputs), outputs_(outputs), o_(o) {}

  onnx::ModelProto run() {
    check_arguments();
    collect_nodes();
    check_batch_independence();
    assign_names();

    model_.set_ir_version(onnx_ir_version_for_opset(o_.opset));
    model_.set_producer_name("trainer");
    model_.set_producer_version(o_.producer_version);
    if (!o_.doc_string.empty()) model_.set_doc_string(o_.doc_string);
    auto* opset = model_.add_opset_import();
    opset->set_domain("");
    opset->set_version(o_.opset);
    for (const auto& [key, value] : o_.metadata) {
      auto* p = model_.add_metadata_props();
      p->set_key(key);
      p->set_value(value);
    }
    gp_ = model_.mutable_graph();
    gp_->set_name(o_.graph_name);

    write_inputs();
    for (NodeId n : nodes_) emit(g_.node(n));
    write_outputs();
    // Initializers last: the ones the nodes (and lowerings) read, in first-use order. With
    // fixed_as_constant_nodes, fixed float values (a Normalization's mean and variance among them) are
    // Constant nodes instead, ahead of the others: an importer that trains float initializers (trainer fit
    // model.onnx, as for PyTorch's weights) leaves them as they are.
    google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
    nodes.Swap(gp_->mutable_node());
    auto constant_node = [&](const Tensor& t, const std::string& name) {
      onnx::NodeProto* n = gp_->add_node();
      n->set_op_type("Constant");
      n->set_name(fresh_node(name + "/Constant"));
      n->add_output(name);
      onnx::AttributeProto* a = n->add_attribute();
      a->set_name("value");
      a->set_type(onnx::AttributeProto::TENSOR);
      tensor_to_onnx(t, "", a->mutable_t());
    };
    for (ValueId v : initializer_order_) {
      if (o_.fixed_as_constant_nodes && fixed_float(v))
        constant_node(*g_.initializer(v), names_.at(v));
      else
        tensor_to_onnx(*g_.initializer(v), names_.at(v), gp_->add_initializer());
    }
    for (auto& [name, t] : new_constants_) {
      if (o_.fixed_as_constant_nodes && engine::is_float(t.dtype()))
        constant_node(t, name);
      else
        tensor_to_onnx(t, name, gp_->add_initializer());
    }
    for (onnx::NodeProto& n : nodes) gp_->add_node()->Swap(&n);
    return std::move(model_);
  }

  bool fixed_float(ValueId v) const {
    const engine::Value& val = g_.value(v);
    if (!engine::is_float(val.dtype) || o_.keep_as_initializers.count(val.name)) return false;
    if (val.kind == engine::ValueKind::constant) return true;
    // A frozen layer's weights and statistics: fine-tuning the export leaves them as they are (a
    // BatchNormalization whose statistics are Constants keeps its inference form there, as a frozen one does
    // in the spec).
    if (val.kind == engine::ValueKind::parameter) return !val.trainable;
    if (val.kind != engine::ValueKind::state) return false;
    if (val.frozen) return true;
    for (NodeId c : val.consumers)
      if (g_.node(c).op == "BatchNormalization") return false;
    return true;
  }

 private:
  const Graph& g_;
  const std::vector<ValueId>& inputs_;
  const std::vector<ValueId>& outputs_;
  const OnnxExportOptions& o_;
  int64_t batch_ = 0;

  std::vector<NodeId> nodes_;  // exported nodes, topologically ordered
  std::unordered_set<NodeId> node_set_;

  std::unordered_map<ValueId, std::string> names_;      // ONNX name of every value the export reads or writes
  std::unordered_set<std::string> taken_;               // ONNX value names in use
  std::unordered_set<std::string> node_names_;          // ONNX node names in use
  std::unordered_set<std::string> written_node_names_;  // names of the nodes add_node has written
  std::vector<std::string> input_names_, output_names_;
  bool channels_last(size_t input) const {
    return input < o_.channels_last_inputs.size() && o_.channels_last_inputs[input];
  }
  std::vector<bool> output_direct_;  // output i is its producer's own output (else an Identity makes it)

  std::vector<ValueId> initializer_order_;
  std::unordered_set<ValueId> initializer_seen_;
  std::vector<std::pair<std::string, Tensor>> new_constants_;
  std::map<std::pair<int, double>, std::string> scalar_cache_;

  onnx::ModelProto model_;
  onnx::GraphProto* gp_ = nullptr;

  void check_arguments() {
    if (o_.opset < kMinOnnxExportOpset || o_.opset > kMaxOnnxExportOpset)
      throw InputError("opset", fmt::format("ONNX opset {} is not supported for export", o_.opset),
                       fmt::format("choose an opset from {} to {} (default {})", kMinOnnxExportOpset,
                                   kMaxOnnxExportOpset, kDefaultOnnxExportOpset));
    TRAINER_ASSERT(!inputs_.empty() && !outputs_.empty(), "an export needs inputs and outputs");
    TRAINER_ASSERT(o_.input_names.empty() || o_.input_names.size() == inputs_.size(),
                   "{} input names for {} inputs", o_.input_names.size(), inputs_.size());
    TRAINER_ASSERT(o_.output_names.empty() || o_.output_names.size() == outputs_.size(),
                   "{} output names for {} outputs", o_.output_names.size(), outputs_.size());
    TRAINER_ASSERT(!o_.batch_dim_name.empty(), "empty batch dimension name");
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const engine::Value& v = g_.value(inputs_[i]);
      TRAINER_ASSERT(v.kind == ValueKind::input, "'{}' is not a graph input", v.name);
      if (v.shape.rank() < 1)
        throw InputError(v.name,
                         fmt::format("input '{}' is a scalar; exported inputs lead with the batch", v.name));
      if (i == 0) batch_ = v.shape[0];
      if (v.shape[0] != batch_)
        throw InputError(v.name,
                         fmt::format("input '{}' has {} samples where input '{}' has {}", v.name, v.shape[0],
                                     g_.value(inputs_[0]).name, batch_),
                         "every exported input leads with the same batch dimension");
    }
  }

  // The live nodes the outputs depend on, in topological order.
  void collect_nodes() {
    std::vector<ValueId> stack(outputs_.begin(), outputs_.end());
    std::unordered_set<ValueId> seen;
    std::unordered_set<ValueId> fed(inputs_.begin(), inputs_.end());
    while (!stack.empty()) {
      ValueId v = stack.back();
      stack.pop_back();
      if (v == kNoValue || !seen.insert(v).second) continue;
      const engine::Value& val = g_.value(v);
      if (val.kind == ValueKind::input && !fed.count(v))
        throw InputError(val.name,
                         fmt::format("the exported outputs need graph input '{}', which is not among the "
                                     "exported inputs",
                                     val.name),
                         "export the inference graph, or list the input");
      if (val.producer < 0) continue;
      if (node_set_.insert(val.producer).second)
        for (ValueId in : g_.node(val.producer).inputs) stack.push_back(in);
    }
    for (NodeId n : g_.topo_order())
      if (node_set_.count(n)) nodes_.push_back(n);
  }

  // Re-infers every exported node with the inputs at another batch size. A constant that holds the batch
  // size (a Reshape target, a mask, an initial state) makes a node fail to check or an output keep the old
  // batch.
  void check_batch_independence() {
    const int64_t other = batch_ + 1;
    Graph r;
    std::unordered_map<ValueId, ValueId> map;
    for (ValueId v : inputs_) {
      const engine::Value& val = g_.value(v);
      std::vector<int64_t> dims = val.shape.dims();
      dims[0] = other;
      map[v] = r.add_input(val.name, val.dtype, Shape(dims));
    }
    for (NodeId id : nodes_) {
      const Node& n = g_.node(id);
      std::vector<ValueId> ins;
      for (ValueId v : n.inputs) {
        if (v == kNoValue) {
          ins.push_back(kNoValue);
          continue;
        }
        auto it = map.find(v);
        if (it == map.end()) {
          const engine::Value& val = g_.value(v);
          const Tensor* t = g_.initializer(v);
          TRAINER_ASSERT(t != nullptr, "value '{}' has no producer and no initial value", val.name);
          // Shape inference reads only integer initializers (shapes, axes, indices) and small ones; large
          // float weights stand in by their type and shape.
          if (!engine::is_float(val.dtype) || t->numel() <= 4096)
            it = map.emplace(v, r.add_constant(val.name, *t)).first;
          else
            it = map.emplace(v, r.add_input(val.name, val.dtype, val.shape)).first;
        }
        ins.push_back(it->second);
      }
      std::vector<std::string> outs;
      for (ValueId v : n.outputs) outs.push_back(v == kNoValue ? std::string() : g_.value(v).name);
      NodeId rn;
      try {
        rn = r.add_node_named(n.op, ins, n.attrs, outs, n.name);
      } catch (const InputError& e) {
        throw BatchDependentError(
            n.name,
            fmt::format("{} depends on the batch size: with {} samples instead of {} it fails: {}",
                        node_label(n), other, batch_, e.message()),
            "shape constants must say -1 (or 0) for the batch dimension, and no constant may "
            "be shaped by the batch");
      }
      for (size_t i = 0; i < n.outputs.size(); ++i)
        if (n.outputs[i] != kNoValue) map[n.outputs[i]] = r.node(rn).outputs[i];
    }
    for (ValueId v : outputs_) {
      const engine::Value& val = g_.value(v);
      if (!map.count(v)) continue;  // an initializer as an output: checked below as not batched
      const Shape& a = val.shape;
      const Shape& b = r.value(map.at(v)).shape;
      bool follows = a.rank() >= 1 && b.rank() == a.rank() && a[0] == batch_ && b[0] == other;
      for (int d = 1; follows && d < a.rank(); ++d) follows = a[d] == b[d];
      if (!follows) {
        std::string from = val.producer >= 0 ? " from " + node_label(g_.node(val.producer)) : std::string();
        throw BatchDependentError(
            val.name,
            fmt::format("output '{}'{} does not follow the batch: its shape is {} with {} "
                        "samples and {} with {}",
                        val.name, from, a.str(), batch_, b.str(), other),
            "an exported output must lead with the batch dimension");
      }
    }
    for (ValueId v : outputs_)
      if (!map.count(v))
        throw InputError(
            g_.value(v).name,
            fmt::format("output '{}' is a weight or constant, not a batch of results", g_.value(v).name));
  }

  std::string fresh(const std::string& base) {
    std::string n = base;
    for (int k = 1; taken_.count(n); ++k) n = fmt::format("{}_{}", base, k);
    taken_.insert(n);
    return n;
  }
  std::string fresh_node(const std::string& base) {
    std::string n = base;
    for (int k = 1; node_names_.count(n); ++k) n = fmt::format("{}_{}", base, k);
    node_names_.insert(n);
    return n;
  }

  void assign_names() {
    auto claim = [&](const std::string& name, const char* what) {
      if (!taken_.insert(name).second)
        throw InputError(name, fmt::format("{} name '{}' is given twice", what, name),
                         "graph inputs and outputs need distinct names");
    };
    for (size_t i = 0; i < inputs_.size(); ++i) {
      input_names_.push_back(o_.input_names.empty() ? g_.value(inputs_[i]).name : o_.input_names[i]);
      claim(input_names_.back(), "input");
    }
    std::unordered_set<ValueId> claimed;
    for (size_t i = 0; i < outputs_.size(); ++i) {
      ValueId v = outputs_[i];
      const bool direct = node_set_.count(g_.value(v).producer) != 0 && claimed.insert(v).second;
      output_direct_.push_back(direct);
      std::string name = o_.output_names.empty() ? g_.value(v).name : o_.output_names[i];
      // Without requested names, an output that needs an Identity (it is also an input or an earlier
      // output) takes a fresh name.
      if (o_.output_names.empty() && taken_.count(name))
        name = fresh(name + "/output");
      else
        claim(name, "output");
      output_names_.push_back(name);
      if (direct) names_[v] = name;
    }
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const bool nhwc = channels_last(i) && g_.value(inputs_[i]).shape.rank() == 4;
      names_[inputs_[i]] = nhwc ? fresh(input_names_[i] + "/nchw") : input_names_[i];
    }
    auto name_value = [&](ValueId v) {
      if (v != kNoValue && !names_.count(v)) names_[v] = fresh(g_.value(v).name);
    };
    for (NodeId id : nodes_) node_names_.insert(g_.node(id).name);
    for (NodeId id : nodes_) {
      for (ValueId v : g_.node(id).inputs) name_value(v);
      for (ValueId v : g_.node(id).outputs) name_value(v);
    }
    for (ValueId v : outputs_) name_value(v);
  }

  const std::string& name(ValueId v) {
    if (g_.initializer(v) && initializer_seen_.insert(v).second) initializer_order_.push_back(v);
    return names_.at(v);
  }

  void set_value_info(onnx::ValueInfoProto* info, const std::string& name, DType dtype,
                      const std::vector<int64_t>& per_sample) {
    info->set_name(name);
    auto* tensor = info->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(engine::dtype_to_onnx(dtype));
    auto* shape = tensor->mutable_shape();
    shape->add_dim()->set_dim_param(o_.batch_dim_name);
    for (int64_t d : per_sample) shape->add_dim()->set_dim_value(d);
  }

  onnx::NodeProto* add_node(const std::string& op, const std::string& node_name,
                            const std::vector<std::string>& ins, const std::vector<std::string>& outs) {
    onnx::NodeProto* p = gp_->add_node();
    // Two graph nodes may share a name (parts of an imported node's rewrite can); ONNX wants them unique, so
    // the second written gets a fresh one.
    std::string unique = node_name;
    if (!written_node_names_.insert(unique).second) {
      unique = fresh_node(node_name);
      written_node_names_.insert(unique);
    }
    p->set_name(unique);
    p->set_op_type(op);
    size_t n_in = ins.size(), n_out = outs.size();
    while (n_in > 0 && ins[n_in - 1].empty()) --n_in;
    while (n_out > 0 && outs[n_out - 1].empty()) --n_out;
    for (size_t i = 0; i < n_in; ++i) p->add_input(ins[i]);
    for (size_t i = 0; i < n_out; ++i) p->add_output(outs[i]);
    return p;
  }
  // A node of the export's own (a lowering's part), named after the node it comes from.
  std::string add_part(const std::string& op, const std::string& base, const std::vector<std::string>& ins,
                       std::string out = {}, std::map<std::string, AttrValue> attrs = {}) {
    if (out.empty()) out = fresh(base + "/" + op);
    onnx::NodeProto* p = add_node(op, fresh_node(base + "/" + op), ins, {out});
    for (const auto& [k, v] : attrs) set_attribute(p->add_attribute(), k, v, false);
    return out;
  }

  std::string add_constant(const std::string& base, Tensor t) {
    std::string n = fresh(base);
    new_constants_.emplace_back(n, std::move(t));
    return n;
  }
  std::string scalar(DType dtype, double v, const std::string& base) {
    auto key = std::make_pair(static_cast<int>(dtype), v);
    auto it = scalar_cache_.find(key);
    if (it != scalar_cache_.end()) return it->second;
    Tensor t(dtype, Shape{});
    t.set_f64(0, v);
    return scalar_cache_[key] = add_constant(base, std::move(t));
  }

  void write_inputs() {
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const engine::Value& v = g_.value(inputs_[i]);
      std::vector<int64_t> dims(v.shape.dims().begin() + 1, v.shape.dims().end());
      const bool nhwc = channels_last(i) && v.shape.rank() == 4;
      if (nhwc) dims = {dims[1], dims[2], dims[0]};
      set_value_info(gp_->add_input(), input_names_[i], v.dtype, dims);
      if (nhwc)
        add_part("Transpose", input_names_[i], {input_names_[i]}, names_.at(inputs_[i]),
                 {{"perm", std::vector<int64_t>{0, 3, 1, 2}}});
    }
  }

  void write_outputs() {
    for (size_t i = 0; i < outputs_.size(); ++i) {
      const engine::Value& v = g_.value(outputs_[i]);
      if (!output_direct_[i]) add_part("Identity", output_names_[i], {name(outputs_[i])}, output_names_[i]);
      set_value_info(gp_->add_output(), output_names_[i], v.dtype,
                     std::vector<int64_t>(v.shape.dims().begin() + 1, v.shape.dims().end()));
    }
  }

  [[noreturn]] void fail(const Node& n, const std::string& what, const std::string& hint = {}) {
    throw InputError(n.name, fmt::format("{}: {}", node_label(n), what), hint);
  }

  void emit(const Node& n) {
    if (n.domain == engine::kPrivateDomain && n.op == "FusedGemm") return lower_fused_gemm(n);
    if (n.domain == engine::kPrivateDomain && n.op == "MatMulTransposed") return lower_matmul_transposed(n);
    if (n.domain == engine::kPrivateDomain && n.op == "GatherGrad") return lower_gather_grad(n);
    if (!n.domain.empty())
      fail(n, fmt::format("the {} op {} has no ONNX equivalent", n.domain, n.op),
           "only inference graphs export: gradient, loss and optimizer ops do not");
    if (n.op == "Gelu" && o_.opset < op_since("Gelu"))
      return gelu(n.name, name(n.inputs[0]), name(n.outputs[0]), n.attrs.s("approximate"),
                  g_.value(n.inputs[0]).dtype, n.name);
    if (n.op == "HardSwish" && o_.opset < op_since("HardSwish")) return hard_swish(n);
    if (n.op == "LayerNormalization" && o_.opset < op_since("LayerNormalization")) return layer_norm(n);
    if (o_.opset < op_since(n.op))
      fail(n,
           fmt::format("{} needs opset {} or newer, and the export is for opset {}", n.op, op_since(n.op),
                       o_.opset),
           fmt::format("export with opset {} or newer", op_since(n.op)));

    // `axes`: an attribute up to some opset, input 1 from it on.
    const int axes_since = axes_input_since(n.op);
    const bool fold_axes = axes_since > o_.opset && n.inputs.size() > 1 && n.inputs[1] != kNoValue;
    // Opset 18 gave Pad an axes input: below it, the pads of those axes spread over every axis.
    const bool spread_pads = n.op == "Pad" && o_.opset < 18 && n.inputs.size() > 3 && n.inputs[3] != kNoValue;
    std::vector<std::string> ins, outs;
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const ValueId v = n.inputs[i];
      const bool replaced = (fold_axes && i == 1) || (spread_pads && (i == 1 || i == 3));
      ins.push_back(v == kNoValue || replaced ? std::string() : name(v));
    }
    for (ValueId v : n.outputs) outs.push_back(v == kNoValue ? std::string() : name(v));
    engine::Attributes attrs = n.attrs;

    // Attributes newer than the opset.
    for (const LaterAttribute& later : kLaterAttributes) {
      if (n.op != later.op || o_.opset >= later.since || !attrs.has(later.attr)) continue;
      if (!neutral_value(g_, n, later.attr, attrs.all().at(later.attr)))
        fail(n,
             fmt::format("attribute {} needs opset {} or newer, and the export is for opset {}", later.attr,
                         later.since, o_.opset),
             fmt::format("export with opset {} or newer", later.since));
      attrs.erase(later.attr);
    }
    if (fold_axes) {
      const Tensor* axes = g_.initializer(n.inputs[1]);
      if (!axes)
        fail(n,
             fmt::format("computed axes need opset {} or newer, and the export is for opset {}", axes_since,
                         o_.opset),
             fmt::format("export with opset {} or newer", axes_since));
      std::vector<int64_t> a;
      for (int64_t i = 0; i < axes->numel(); ++i) a.push_back(axes->get_i64(i));
      attrs.set("axes", a);
    } else if (axes_since > 0 && o_.opset >= axes_since && attrs.has("axes")) {
      const std::vector<int64_t> axes = attrs.ints("axes");
      ins.resize(std::max<size_t>(ins.size(), 2));
      ins[1] = add_constant(n.name + "/axes",
                            Tensor::from<int64_t>(Shape{static_cast<int64_t>(axes.size())}, axes));
      attrs.erase("axes");
    }
    // Slice's opset-1 attributes become the inputs every later opset takes.
    if (n.op == "Slice" && attrs.has("starts")) {
      auto as_input = [&](const char* key) {
        std::vector<int64_t> v = attrs.ints(key);
        attrs.erase(key);
        return add_constant(n.name + "/" + key,
                            Tensor::from<int64_t>(Shape{static_cast<int64_t>(v.size())}, v));
      };
      std::string starts = as_input("starts"), ends = as_input("ends");
      std::string axes = attrs.has("axes") ? as_input("axes") : std::string();
      ins = {ins[0], starts, ends, axes};
    }

    if (spread_pads) {
      const Tensor* axes = g_.initializer(n.inputs[3]);
      const Tensor* pads = g_.initializer(n.inputs[1]);
      if (!axes || !pads)
        fail(n,
             fmt::format("computed pads or axes need opset 18 or newer, and the export is for opset {}",
                         o_.opset),
             "export with opset 18 or newer");
      const int64_t rank = g_.value(n.inputs[0]).shape.rank(), k = axes->numel();
      TRAINER_ASSERT(pads->numel() == 2 * k, "Pad: {} pads for {} axes", pads->numel(), k);
      std::vector<int64_t> full(static_cast<size_t>(2 * rank), 0);
      for (int64_t i = 0; i < k; ++i) {
        const int64_t a = axes->get_i64(i) < 0 ? axes->get_i64(i) + rank : axes->get_i64(i);
        full[static_cast<size_t>(a)] = pads->get_i64(i);
        full[static_cast<size_t>(a + rank)] = pads->get_i64(i + k);
      }
      ins[1] = add_constant(n.name + "/pads", Tensor::from<int64_t>(Shape{2 * rank}, full));
      ins.resize(3);
      while (!ins.empty() && ins.back().empty()) ins.pop_back();
    }

    // Opset 20 renamed GridSample's modes bilinear and bicubic to linear and cubic.
    if (n.op == "GridSample" && attrs.has("mode")) {
      const std::string m = attrs.s("mode");
      const bool renamed = o_.opset >= 20;
      if (m == (renamed ? "bilinear" : "linear"))
        attrs.set("mode", std::string(renamed ? "linear" : "bilinear"));
      if (m == (renamed ? "bicubic" : "cubic")) attrs.set("mode", std::string(renamed ? "cubic" : "bicubic"));
    }
    const bool rnn = n.op == "LSTM" || n.op == "GRU" || n.op == "RNN";
    // The engine's private trailing input (the recurrent dropout mask) exists in training graphs only.
    if (rnn) {
      const int mask = engine::ops::rnn_mask_input(n.op == "LSTM"  ? engine::ops::RnnCell::lstm
                                                   : n.op == "GRU" ? engine::ops::RnnCell::gru
                                                                   : engine::ops::RnnCell::rnn);
      if (static_cast<int>(ins.size()) > mask && !ins[static_cast<size_t>(mask)].empty())
        fail(n, fmt::format("{} has a recurrent dropout mask, which only a training graph holds", n.op));
    }
    // Batch-major recurrences (layout 1, Keras's [batch, time, features]) are written time-major between
    // Transposes: onnxruntime's CPU kernels take layout 0 only, and opset 13 has no layout attribute.
    std::vector<std::string> batch_major_outs;
    const bool batch_major = rnn && attrs.i_or("layout", 0) == 1;
    if (rnn) attrs.erase("layout");  // 0 (an imported model's, filled in by the schema) is the default
    if (batch_major) {
      const std::vector<int64_t> swap01 = {1, 0, 2};
      ins[0] = add_part("Transpose", n.name, {ins[0]}, {}, {{"perm", swap01}});
      for (size_t k : {size_t{5}, size_t{6}})  // initial_h, initial_c: [batch, directions, hidden]
        if (k < ins.size() && !ins[k].empty())
          ins[k] = add_part("Transpose", n.name, {ins[k]}, {}, {{"perm", swap01}});
      batch_major_outs = outs;
      for (std::string& o : outs)
        if (!o.empty()) o = fresh(o + "/time_major");
    }

    onnx::NodeProto* p = add_node(n.op, n.name, ins, outs);
    for (const auto& [k, v] : attrs.all()) set_attribute(p->add_attribute(), k, v, rnn && k == "activations");
    // Y [time, directions, batch, hidden] -> [batch, time, directions, hidden]; Y_h, Y_c [directions, batch,
    // hidden] -> [batch, directions, hidden].
    for (size_t k = 0; k < batch_major_outs.size(); ++k)
      if (!outs[k].empty())
        add_part("Transpose", n.name, {outs[k]}, batch_major_outs[k],
                 {{"perm", k == 0 ? std::vector<int64_t>{2, 0, 1, 3} : std::vector<int64_t>{1, 0, 2}}});
  }

  // GELU: the Gelu op from opset 20, else x * (erf(x / sqrt 2) + 1) * 0.5, or the tanh approximation
  // x * (tanh(sqrt(2 / pi) * (x + 0.044715 x^3)) + 1) * 0.5. The node that writes y is named `node_name`
  // when one is given (an IR Gelu keeps its name), else after `base`.
  void gelu(const std::string& base, const std::string& x, const std::string& y,
            const std::string& approximate, DType dtype, const std::string& node_name = {}) {
    if (o_.opset >= op_since("Gelu")) {
      add_part("Gelu", base, {x}, y, {{"approximate", approximate}});
      return;
    }
    std::string one = scalar(dtype, 1.0, "gelu/one"), half = scalar(dtype, 0.5, "gelu/half");
    std::string t;
    if (approximate == "tanh") {
      std::string x2 = add_part("Mul", base, {x, x});
      std::string x3 = add_part("Mul", base, {x2, x});
      std::string c = add_part("Mul", base, {x3, scalar(dtype, 0.044715, "gelu/cubic")});
      std::string s = add_part("Add", base, {x, c});
      std::string k =
          add_part("Mul", base, {s, scalar(dtype, std::sqrt(2.0 / std::numbers::pi), "gelu/sqrt_2_over_pi")});
      t = add_part("Tanh", base, {k});
    } else {
      std::string d = add_part("Div", base, {x, scalar(dtype, std::sqrt(2.0), "gelu/sqrt2")});
      t = add_part("Erf", base, {d});
    }
    std::string p = add_part("Add", base, {t, one});
    std::string q = add_part("Mul", base, {x, p});
    if (node_name.empty())
      add_part("Mul", base, {q, half}, y);
    else
      add_node("Mul", node_name, {q, half}, {y});
  }

  // HardSwish below opset 14: x * HardSigmoid(x) with alpha 1/6 and beta 0.5, its definition.
  void hard_swish(const Node& n) {
    const std::string x = name(n.inputs[0]);
    const std::string gate =
        add_part("HardSigmoid", n.name, {x}, {}, {{"alpha", 1.0f / 6.0f}, {"beta", 0.5f}});
    add_node("Mul", n.name, {x, gate}, {name(n.outputs[0])});
  }

  // LayerNormalization below opset 17, by its definition over the dims from `axis` on: d = x - mean(x),
  // y = d / sqrt(mean(d^2) + epsilon) * scale (+ bias). Only Y: Mean and InvStdDev belong to training.
  void layer_norm(const Node& n) {
    for (size_t k = 1; k < n.outputs.size(); ++k)
      if (n.outputs[k] != kNoValue)
        fail(n,
             fmt::format("LayerNormalization's Mean and InvStdDev outputs need opset 17, and the export is "
                         "for opset {}",
                         o_.opset),
             "export with opset 17 or newer");
    const ValueId xv = n.inputs[0];
    const DType dtype = g_.value(xv).dtype;
    const int64_t rank = g_.value(xv).shape.rank();
    int64_t axis = n.attrs.has("axis") ? n.attrs.i("axis") : -1;
    if (axis < 0) axis += rank;
    std::vector<int64_t> axes;
    for (int64_t a = axis; a < rank; ++a) axes.push_back(a);
    const std::map<std::string, AttrValue> keep = {{"axes", axes}, {"keepdims", int64_t{1}}};
    const std::string x = name(xv);
    const std::string d = add_part("Sub", n.name, {x, add_part("ReduceMean", n.name, {x}, {}, keep)});
    const std::string var = add_part("ReduceMean", n.name, {add_part("Mul", n.name, {d, d})}, {}, keep);
    const double epsilon = n.attrs.has("epsilon") ? n.attrs.f("epsilon") : 1e-5;
    const std::string sd = add_part(
        "Sqrt", n.name, {add_part("Add", n.name, {var, scalar(dtype, epsilon, "layer_norm/epsilon")})});
    const bool bias = n.inputs.size() > 2 && n.inputs[2] != kNoValue;
    const std::string y = name(n.outputs[0]);
    const std::string scaled =
        add_part("Mul", n.name, {add_part("Div", n.name, {d, sd}), name(n.inputs[1])}, bias ? "" : y);
    if (bias) add_part("Add", n.name, {scaled, name(n.inputs[2])}, y);
  }

  // Transposes the last two dimensions of a rank-r operand.
  std::string swap_last_two(const std::string& base, const std::string& v, int rank) {
    std::vector<int64_t> perm;
    for (int i = 0; i < rank; ++i) perm.push_back(i);
    std::swap(perm[static_cast<size_t>(rank - 2)], perm[static_cast<size_t>(rank - 1)]);
    return add_part("Transpose", base, {v}, {}, {{"perm", perm}});
  }

  // FusedGemm(A, B, bias) = act(op(A) op(B) + bias); output 1, when present, is the pre-activation.
  void lower_fused_gemm(const Node& n) {
    const std::string act = n.attrs.s("activation");
    const bool ta = n.attrs.i("transA") != 0, tb = n.attrs.i("transB") != 0;
    const ValueId a = n.inputs[0], b = n.inputs[1];
    const ValueId bias = n.inputs.size() > 2 ? n.inputs[2] : kNoValue;
    const std::string y = name(n.outputs[0]);
    const bool has_z = n.outputs.size() > 1 && n.outputs[1] != kNoValue;
    const std::string z = act == "none" ? y : has_z ? name(n.outputs[1]) : fresh(n.name + "/z");
    const int rank_a = g_.value(a).shape.rank();
    if (rank_a == 2) {
      std::vector<std::string> ins = {name(a), name(b)};
      if (bias != kNoValue) ins.push_back(name(bias));
      onnx::NodeProto* p = add_node("Gemm", n.name, ins, {z});
      set_attribute(p->add_attribute(), "transA", int64_t{ta}, false);
      set_attribute(p->add_attribute(), "transB", int64_t{tb}, false);
    } else {
      // Gemm takes matrices only: leading batch dimensions go through MatMul's broadcasting.
      std::string bm = tb ? swap_last_two(n.name, name(b), 2) : name(b);
      if (bias == kNoValue) {
        add_node("MatMul", n.name, {name(a), bm}, {z});
      } else {
        std::string m = fresh(n.name + "/MatMul");
        add_node("MatMul", n.name, {name(a), bm}, {m});
        add_part("Add", n.name, {m, name(bias)}, z);
      }
    }
    if (act == "relu") add_part("Relu", n.name, {z}, y);
    if (act == "gelu" || act == "gelu_tanh")
      gelu(n.name, z, y, act == "gelu" ? "none" : "tanh", g_.value(a).dtype);
    if (act == "none" && has_z) add_part("Identity", n.name, {y}, name(n.outputs[1]));
  }

  // MatMulTransposed(A, B) = alpha op(A) op(B), op transposing the last two dimensions.
  // GatherGrad in a forward graph (an imported ScatterND or ScatterElements) along axis 0: ONNX's ScatterND
  // with reduction add into zeros, each index a one-element row index.
  void lower_gather_grad(const Node& n) {
    if (n.attrs.i("axis") != 0) fail(n, "a scatter-add along an axis other than 0 has no ONNX form here");
    if (o_.opset < 16)
      fail(n, fmt::format("a scatter-add needs opset 16 or newer, and the export is for opset {}", o_.opset),
           "export with opset 16 or newer");
    const ValueId dy = n.inputs[0], idx = n.inputs[1];
    const Shape shape(n.attrs.ints("shape"));
    std::string ids = name(idx);
    if (g_.value(idx).dtype != DType::i64)
      ids = add_part("Cast", n.name, {ids}, {}, {{"to", int64_t{engine::dtype_to_onnx(DType::i64)}}});
    const std::string rows = add_part(
        "Unsqueeze", n.name,
        {ids,
         add_constant(n.name + "/last_axis", Tensor::from<int64_t>(Shape{1}, std::vector<int64_t>{-1}))});
    const std::string zeros = add_constant(n.name + "/zeros", Tensor(g_.value(dy).dtype, shape));
    onnx::NodeProto* p = add_node("ScatterND", n.name, {zeros, rows, name(dy)}, {name(n.outputs[0])});
    set_attribute(p->add_attribute(), "reduction", std::string("add"), false);
  }

  void lower_matmul_transposed(const Node& n) {
    const bool ta = n.attrs.i("transA") != 0, tb = n.attrs.i("transB") != 0;
    const float alpha = n.attrs.f("alpha");
    const ValueId a = n.inputs[0], b = n.inputs[1];
    const int ra = g_.value(a).shape.rank(), rb = g_.value(b).shape.rank();
    const std::string y = name(n.outputs[0]);
    if (ra == 2 && rb == 2) {
      onnx::NodeProto* p = add_node("Gemm", n.name, {name(a), name(b)}, {y});
      set_attribute(p->add_attribute(), "transA", int64_t{ta}, false);
      set_attribute(p->add_attribute(), "transB", int64_t{tb}, false);
      if (alpha != 1.0f) set_attribute(p->add_attribute(), "alpha", alpha, false);
      return;
    }
    std::string am = ta ? swap_last_two(n.name, name(a), ra) : name(a);
    std::string bm = tb ? swap_last_two(n.name, name(b), rb) : name(b);
    if (alpha == 1.0f) {
      add_node("MatMul", n.name, {am, bm}, {y});
    } else {
      std::string m = fresh(n.name + "/MatMul");
      add_node("MatMul", n.name, {am, bm}, {m});
      add_part("Mul", n.name, {m, scalar(g_.value(a).dtype, alpha, n.name + "/alpha")}, y);
    }
  }
};

// The default domain's opset that a model imports.
int64_t model_opset(const onnx::ModelProto& model) {
  for (const auto& op : model.opset_import())
    if (op.domain().empty() || op.domain() == "ai.onnx") return op.version();
  return 0;
}

}  // namespace

int64_t onnx_ir_version_for_opset(int opset) {
  if (opset <= 14) return 7;
  if (opset <= 18) return 8;
  if (opset <= 20) return 9;
  return 10;
}

onnx::ModelProto export_onnx(const Graph& inference_graph, const std::vector<ValueId>& inputs,
                             const std::vector<ValueId>& outputs, const OnnxExportOptions& options) {
  onnx::ModelProto model = Exporter(inference_graph, inputs, outputs, options).run();
  if (options.check) check_onnx(model);
  return model;
}

onnx::ModelProto with_trained_values(const onnx::ModelProto& original,
                                     const std::vector<std::pair<std::string, Tensor>>& values,
                                     const OnnxExportOptions& options, int64_t* replaced) {
  onnx::ModelProto model = original;
  std::unordered_map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : values) by_name.emplace(name, &t);
  int64_t count = 0;
  auto* graph = model.mutable_graph();
  for (auto& init : *graph->mutable_initializer()) {
    auto it = by_name.find(init.name());
    if (it == by_name.end()) continue;
    const Tensor& t = *it->second;
    const Tensor old = tensor_from_onnx(init, fmt::format("initializer '{}'", init.name()));
    if (old.dtype() != t.dtype() || old.shape() != t.shape())
      throw InputError(
          init.name(),
          fmt::format("the trained value is {} {}, the model's initializer {} {}",
                      engine::dtype_name(t.dtype()), t.shape().str(), engine::dtype_name(old.dtype()),
                      old.shape().str()),
          "the checkpoint and the ONNX model it embeds disagree: the file is damaged or was edited");
    const std::string name = init.name();  // tensor_to_onnx clears the proto
    tensor_to_onnx(t, name, &init);
    ++count;
  }
  std::set<std::string> dropped;  // inputs no longer read by the node that read them
  for (auto& n : *graph->mutable_node()) {
    if (!n.domain().empty() && n.domain() != "ai.onnx") continue;
    if (n.op_type() == "BatchNormalization") {
      auto* attrs = n.mutable_attribute();
      for (int i = attrs->size() - 1; i >= 0; --i)
        if (attrs->Get(i).name() == "training_mode") attrs->DeleteSubrange(i, 1);
      while (n.output_size() > 1) n.mutable_output()->RemoveLast();
    } else if (n.op_type() == "Dropout" && n.input_size() > 2) {
      while (n.input_size() > 2) {
        dropped.insert(n.input(n.input_size() - 1));
        n.mutable_input()->RemoveLast();
      }
    }
  }
  // A Dropout's training_mode constant that nothing reads any more goes too (onnxruntime warns of it); a
  // node of a subgraph (an If's branch, a Loop's body) may still read it.
  std::function<void(const onnx::GraphProto&)> keep_read = [&](const onnx::GraphProto& g) {
    for (const auto& n : g.node()) {
      for (const std::string& in : n.input()) dropped.erase(in);
      for (const auto& a : n.attribute()) {
        if (a.has_g()) keep_read(a.g());
        for (const auto& sub : a.graphs()) keep_read(sub);
      }
    }
  };
  keep_read(*graph);
  for (const auto& in : graph->input()) dropped.erase(in.name());
  for (int i = graph->initializer_size() - 1; i >= 0; --i)
    if (dropped.count(graph->initializer(i).name())) graph->mutable_initializer()->DeleteSubrange(i, 1);
  model.set_producer_name("trainer");
  model.set_producer_version(options.producer_version);
  for (const auto& [key, value] : options.metadata) {
    onnx::StringStringEntryProto* p = nullptr;
    for (auto& m : *model.mutable_metadata_props())
      if (m.key() == key) p = &m;
    if (!p) p = model.add_metadata_props();
    p->set_key(key);
    p->set_value(value);
  }
  if (options.check) check_onnx(model);
  if (replaced) *replaced = count;
  return model;
}

bool check_onnx(const onnx::ModelProto& model) {
  const auto& versions = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  const int known_opset = versions.at(onnx::ONNX_DOMAIN).second;
  if (model.ir_version() > onnx::IR_VERSION || model_opset(model) > known_opset) return false;
  try {
    onnx::checker::check_model(model);
    // full_check: strict shape inference with type checks, on a copy (inference adds value_info).
    onnx::ModelProto inferred = model;
    onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(true, 1, false));
  } catch (const std::exception& e) {
    throw InternalError(fmt::format("the exported ONNX model fails onnx's checker: {}", e.what()));
  }
  return true;
}

void save_onnx(const onnx::ModelProto& model, const std::string& path) {
  const size_t size = model.ByteSizeLong();
  if (size > static_cast<size_t>(INT_MAX))
    throw InputError(path, fmt::format("the model needs {} bytes, over protobuf's 2 GiB limit", size),
                     "models this large need external data, which export does not write");
  std::string bytes;
  if (!model.SerializeToString(&bytes)) throw InternalError("serializing the ONNX model failed");
  write_file_atomically(path, bytes);
}

}  // namespace trainer::formats
