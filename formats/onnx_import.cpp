// ONNX import: checks the opsets and that every op is known before building anything, then maps graph inputs,
// initializers, Constant nodes and nodes onto engine::Graph. ONNX semantics are the IR's, so nodes map 1:1.
#include "formats/onnx_import.h"

#include <fmt/format.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <climits>
#include <set>

#include "engine/ir/op_schema.h"
#include "formats/onnx_tensor.h"

namespace trainer::formats {

using engine::DType;
using engine::Graph;
using engine::Shape;
using engine::Tensor;
using engine::ValueId;

namespace {

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

// Ops the importer turns into constants itself (see add_constant_node and add_shape_node).
bool imported_by_importer(const onnx::NodeProto& n) {
  const std::string& op = n.op_type();
  return normalize_domain(n.domain()).empty() && (op == "Constant" || op == "Shape" || op == "Size");
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
      fail(fmt::format("the model uses ONNX opset {}, newer than the newest supported ({})", info.opset,
                       kMaxOnnxOpset),
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
      fail(fmt::format("the model uses ONNX opset {} (supported: {}..{}), and these ops changed since: {}",
                       opset, kMinOnnxOpset, kMaxOnnxOpset, fmt::join(changed, "; ")),
           "convert the model to a newer opset, e.g. with onnx.version_converter.convert_version(model, 13)");
  }

  void check_supported() const {
    std::vector<UnsupportedNode> bad = find_unsupported_nodes(model_);
    if (bad.empty()) return;
    std::vector<std::string> items;
    std::set<std::string> ops;
    for (const auto& u : bad) {
      std::string op = u.domain.empty() ? u.op_type : u.domain + "." + u.op_type;
      items.push_back(fmt::format("'{}' ({})", u.name, op));
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

  void add_initializers() {
    for (const auto& init : model_.graph().initializer()) {
      if (init.name().empty()) fail("an initializer has no name", "the exporter is broken");
      Tensor t = read_tensor(init, fmt::format("{}: initializer '{}'", source_, init.name()));
      bool trainable = engine::is_float(t.dtype()) && (!options_.initializer_is_trainable ||
                                                       options_.initializer_is_trainable(init.name(), t));
      wrap(fmt::format("initializer '{}'", init.name()), [&] {
        if (trainable) {
          g().add_parameter(init.name(), std::move(t), true);
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
        case onnx::AttributeProto::TENSOR:
          attrs.set(a.name(),
                    read_tensor(a.t(), fmt::format("{}: {} attribute '{}'", source_, label, a.name())));
          break;
        default:
          fail(fmt::format("{}: attribute '{}' has type {}, which the engine does not support", label,
                           a.name(), attr_type_name(attribute_type(a))),
               "supported attribute types: INT, FLOAT, STRING, INTS, FLOATS, TENSOR");
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
    wrap(label, [&] { g().add_constant(n.output(0), std::move(t)); });
  }

  void add_node(const onnx::NodeProto& n, int index) {
    const std::string domain = normalize_domain(n.domain());
    if (domain.empty() && n.op_type() == "Constant") return add_constant_node(n, index);
    if (domain.empty() && (n.op_type() == "Shape" || n.op_type() == "Size")) return add_shape_node(n, index);
    std::string label = node_label(n, index);
    std::vector<ValueId> inputs;
    for (const std::string& name : n.input())
      inputs.push_back(name.empty() ? engine::kNoValue : lookup(name, label));
    engine::Attributes attrs = convert_attributes(n, label);
    std::vector<std::string> outputs(n.output().begin(), n.output().end());
    wrap(label,
         [&] { g().add_node_named(n.op_type(), std::move(inputs), std::move(attrs), outputs, n.name()); });
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
      // Engine messages about a node already name it ("node 'x' (Op): ...").
      if (msg.rfind("node '", 0) != 0) msg = fmt::format("{}: {}", label, msg);
      fail(std::move(msg),
           e.hint().empty() ? "check the model against the ONNX operator definitions" : e.hint());
    }
  }

  const onnx::ModelProto& model_;
  std::string source_;
  const OnnxImportOptions& options_;
  std::string base_dir_;
  OnnxImportResult result_;
};

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash == 0 ? 1 : slash);
}

}  // namespace

void parse_onnx_model(std::string_view bytes, const std::string& source, onnx::ModelProto* model) {
  if (bytes.size() > static_cast<size_t>(INT_MAX))
    throw InputError(source, fmt::format("the model is {} bytes, over protobuf's 2 GiB limit", bytes.size()),
                     "save the weights as ONNX external data");
  if (bytes.empty()) throw InputError(source, "the file is empty", "it is not an ONNX model");
  if (!model->ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    throw InputError(
        source,
        fmt::format("not a valid ONNX model: the protobuf message ({} bytes) does not parse", bytes.size()),
        "the file is truncated or corrupt, or it is not an ONNX model");
}

OnnxImportResult import_onnx_model(const onnx::ModelProto& model, const std::string& source,
                                   const OnnxImportOptions& options, const std::string& base_dir) {
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

std::vector<UnsupportedNode> find_unsupported_nodes(const onnx::ModelProto& model) {
  std::vector<UnsupportedNode> out;
  const auto& registry = engine::OpRegistry::global();
  const auto& nodes = model.graph().node();
  for (int i = 0; i < nodes.size(); ++i) {
    const auto& n = nodes[i];
    std::string domain = normalize_domain(n.domain());
    if (imported_by_importer(n)) continue;
    const engine::OpSchema* s = registry.find(n.op_type());
    if (s != nullptr && s->domain() == domain) continue;
    out.push_back({n.name().empty() ? fmt::format("#{}", i) : n.name(), n.op_type(), domain});
  }
  return out;
}

}  // namespace trainer::formats
