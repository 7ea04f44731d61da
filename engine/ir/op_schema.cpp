// Schema validation (arity, attributes, defaults), the shape-inference and gradient contexts, and the op
// registry.
#include "engine/ir/op_schema.h"

#include <fmt/ranges.h>

#include <algorithm>

namespace trainer::engine {

AttrType attr_type_of(const AttrValue& v) {
  return static_cast<AttrType>(v.index());
}

std::string_view attr_type_name(AttrType t) {
  switch (t) {
    case AttrType::i:
      return "int";
    case AttrType::f:
      return "float";
    case AttrType::s:
      return "string";
    case AttrType::ints:
      return "ints";
    case AttrType::floats:
      return "floats";
    case AttrType::t:
      return "tensor";
  }
  return "?";
}

// ---- InferContext ----

void InferContext::set_output(int i, DType dtype, Shape shape) {
  if (i >= static_cast<int>(outs_.size())) outs_.resize(i + 1);
  for (int64_t d : shape.dims())
    if (d < 0) fail("output {} would have a negative dimension {}", i, shape.str());
  // Sizes no tensor of a model has (a product that overflowed, a Tile or Pad of 2^40): refused here, before
  // any plan allocates them.
  try {
    tensor_bytes(shape, dtype);
  } catch (const InputError&) {
    fail("output {} of shape {} would take more than 2^40 bytes", i, shape.str());
  }
  outs_[i] = OutputMeta{true, dtype, std::move(shape)};
}

const Tensor& InferContext::require_constant(int i, const char* what) const {
  const Tensor* t = constant(i);
  if (!t) fail("input {} ({}) must be a constant initializer: shapes are static", i, what);
  return *t;
}

void InferContext::expect_rank(int i, int r) const {
  if (rank(i) != r) fail("input {} must have rank {}, got {}", i, r, shape(i).str());
}

void InferContext::expect_float(int i) const {
  if (!is_float(dtype(i))) fail("input {} must be a floating-point tensor, got {}", i, dtype_name(dtype(i)));
}

void InferContext::expect_same_dtype(int i, int j) const {
  if (dtype(i) != dtype(j))
    fail("inputs {} and {} must have the same type, got {} and {}", i, j, dtype_name(dtype(i)),
         dtype_name(dtype(j)));
}

void InferContext::fail_msg(const std::string& msg) const {
  std::vector<std::string> shapes;
  for (ValueId v : n_.inputs) {
    if (v == kNoValue) {
      shapes.push_back("(absent)");
    } else {
      const Value& val = g_.value(v);
      shapes.push_back(fmt::format("{}: {} {}", val.name, dtype_name(val.dtype), val.shape.str()));
    }
  }
  throw InputError(n_.name,
                   fmt::format("node '{}' ({}): {}; inputs {}", n_.name, n_.op, msg, fmt::join(shapes, ", ")),
                   "check the shapes and attributes the model gives this node");
}

// ---- GradContext ----

GradContext::GradContext(Graph& g, NodeId n, std::vector<ValueId> gy, std::vector<bool> needs)
    : g_(g),
      node_(g.node(n)),
      gy_(std::move(gy)),
      needs_(std::move(needs)),
      dx_(node_.inputs.size(), kNoValue) {}

void GradContext::set_grad(int i, ValueId grad) {
  if (i >= static_cast<int>(dx_.size()) || !needs_grad(i)) return;
  TRAINER_ASSERT(grad == kNoValue || g_.value(grad).shape == g_.value(node_.inputs[i]).shape,
                 "gradient of {} input {} has shape {}, the input {}", node_.op, i,
                 g_.value(grad).shape.str(), g_.value(node_.inputs[i]).shape.str());
  dx_[i] = grad;
}

ValueId GradContext::grad_output_or_zeros(int i) {
  ValueId g = grad_output(i);
  if (g != kNoValue) return g;
  return zeros(shape(output(i)), dtype(output(i)));
}

ValueId GradContext::op(const std::string& op, std::vector<ValueId> inputs, Attributes attrs) {
  NodeId n =
      g_.add_node(op, std::move(inputs), std::move(attrs), 1, g_.unique_name(node_.name + "/grad/" + op));
  return g_.node(n).outputs[0];
}

std::vector<ValueId> GradContext::op_multi(const std::string& op, std::vector<ValueId> inputs,
                                           Attributes attrs, int num_outputs) {
  NodeId n = g_.add_node(op, std::move(inputs), std::move(attrs), num_outputs,
                         g_.unique_name(node_.name + "/grad/" + op));
  return g_.node(n).outputs;
}

ValueId GradContext::scalar(double v, DType dtype) {
  Tensor t(dtype, Shape{});
  t.set_f64(0, v);
  return g_.add_constant(g_.unique_name(node_.name + "/grad/const"), std::move(t));
}

ValueId GradContext::zeros(const Shape& s, DType dtype) {
  return g_.add_constant(g_.unique_name(node_.name + "/grad/zeros"), Tensor(dtype, s));
}

ValueId GradContext::constant_i64(const std::vector<int64_t>& v) {
  return g_.add_constant(g_.unique_name(node_.name + "/grad/i64"),
                         Tensor::from<int64_t>(Shape{static_cast<int64_t>(v.size())}, v));
}

ValueId GradContext::reduce_to(ValueId grad, Shape target) {
  const Shape s = shape(grad);  // a copy: op() below can reallocate the graph's value table
  if (s == target) return grad;
  std::vector<int64_t> axes;
  int lead = s.rank() - target.rank();
  for (int i = 0; i < s.rank(); ++i)
    if (i < lead || (target[i - lead] == 1 && s[i] != 1)) axes.push_back(i);
  ValueId r = grad;
  if (!axes.empty()) r = op("ReduceSum", {grad, constant_i64(axes)}, {{"keepdims", int64_t{1}}});
  if (shape(r) != target) r = op("Reshape", {r, constant_i64(target.dims())});
  return r;
}

// ---- OpSchema ----

const AttrSpec* OpSchema::find_attr(const std::string& name) const {
  for (const AttrSpec& a : attrs_)
    if (a.name == name) return &a;
  return nullptr;
}

bool OpSchema::input_has_grad(int i) const {
  return std::find(no_grad_inputs_.begin(), no_grad_inputs_.end(), i) == no_grad_inputs_.end();
}

void OpSchema::validate_and_infer(const Graph& g, Node& n, std::vector<OutputMeta>* outs) const {
  auto fail = [&](const std::string& msg, const std::string& hint) {
    throw InputError(n.name, fmt::format("node '{}' ({}): {}", n.name, n.op, msg), hint);
  };
  int nin = static_cast<int>(n.inputs.size());
  if (nin < min_in_ || (max_in_ >= 0 && nin > max_in_))
    fail(fmt::format("has {} inputs", nin), max_in_ < 0
                                                ? fmt::format("{} takes at least {}", name_, min_in_)
                                                : fmt::format("{} takes {} to {}", name_, min_in_, max_in_));
  for (int i = 0; i < std::min(nin, min_in_); ++i)
    if (n.inputs[i] == kNoValue)
      fail(fmt::format("required input {} is missing", i), "connect every required input");
  int nout = static_cast<int>(n.outputs.size());
  if (nout < min_out_ || (max_out_ >= 0 && nout > max_out_))
    fail(fmt::format("has {} outputs", nout), fmt::format("{} has {} to {}", name_, min_out_, max_out_));
  for (const auto& [key, val] : n.attrs.all()) {
    const AttrSpec* spec = find_attr(key);
    if (!spec) {
      std::vector<std::string> names;
      for (const AttrSpec& a : attrs_) names.push_back(a.name);
      fail(fmt::format("unknown attribute '{}'", key),
           fmt::format("{} takes: {}", name_, fmt::join(names, ", ")));
    }
    AttrType t = attr_type_of(val);
    if (t != spec->type) {
      // Accept an int where a float is declared (a literal like alpha=1 from a hand-written spec).
      if (spec->type == AttrType::f && t == AttrType::i) {
        n.attrs.set(key, static_cast<float>(std::get<int64_t>(val)));
        continue;
      }
      fail(fmt::format("attribute '{}' is {}, expected {}", key, attr_type_name(t),
                       attr_type_name(spec->type)),
           "");
    }
  }
  for (const AttrSpec& a : attrs_) {
    if (n.attrs.has(a.name)) continue;
    if (a.required) fail(fmt::format("required attribute '{}' is missing", a.name), "");
    if (a.default_value) n.attrs.set(a.name, *a.default_value);
  }
  outs->assign(n.outputs.size(), OutputMeta{});
  InferContext ctx(g, n, *outs);
  TRAINER_ASSERT(static_cast<bool>(infer_), "op {} has no shape inference", name_);
  infer_(ctx);
}

// ---- OpRegistry ----

const OpRegistry& OpRegistry::global() {
  static const OpRegistry registry = [] {
    OpRegistry r;
    register_all_ops(r);
    return r;
  }();
  return registry;
}

void OpRegistry::add(OpSchema s) {
  std::string name = s.name();
  TRAINER_ASSERT(!ops_.count(name), "op {} registered twice", name);
  ops_.emplace(name, std::move(s));
}

const OpSchema* OpRegistry::find(const std::string& name) const {
  auto it = ops_.find(name);
  return it == ops_.end() ? nullptr : &it->second;
}

const OpSchema& OpRegistry::get(const std::string& name) const {
  if (const OpSchema* s = find(name)) return *s;
  // Nearest name by edit distance, for the hint.
  auto dist = [](const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= b.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1,
                           prev[j - 1] + (std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1)});
      std::swap(prev, cur);
    }
    return prev[b.size()];
  };
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& [k, v] : ops_) {
    size_t d = dist(name, k);
    if (d < best_d) {
      best_d = d;
      best = k;
    }
  }
  throw InputError(
      "", fmt::format("unknown op '{}'", name),
      best_d <= 3 ? fmt::format("did you mean '{}'?", best) : "`trainer --list-ops` lists the supported ops");
}

}  // namespace trainer::engine
