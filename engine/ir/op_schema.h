// Op schemas, declared fluently in each op's file: name, domain, arity, attributes with defaults, shape
// inference, gradient rule and the examples the registry-walking tests run. One OpRegistry lists them all.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/ir/attribute.h"
#include "engine/ir/graph.h"

namespace trainer::engine {

inline constexpr const char* kOnnxDomain = "";                              // ai.onnx
inline constexpr const char* kTrainingDomain = "ai.onnx.preview.training";  // ONNX's optimizer ops
inline constexpr const char* kPrivateDomain = "com.trainer";  // gradients, fused kernels, updates

// What shape inference sees of one node.
struct OutputMeta {
  bool set = false;
  DType dtype = DType::f32;
  Shape shape;
};

class InferContext {
 public:
  InferContext(const Graph& g, Node& n, std::vector<OutputMeta>& outs) : g_(g), n_(n), outs_(outs) {}
  int num_inputs() const { return static_cast<int>(n_.inputs.size()); }
  bool has_input(int i) const { return i < num_inputs() && n_.inputs[i] != kNoValue; }
  DType dtype(int i) const { return g_.value(n_.inputs[i]).dtype; }
  const Shape& shape(int i) const { return g_.value(n_.inputs[i]).shape; }
  int rank(int i) const { return shape(i).rank(); }
  // The value of input i when it is an initializer (needed by Reshape's shape, Slice's starts, ...); else
  // nullptr.
  const Tensor* constant(int i) const { return has_input(i) ? g_.initializer(n_.inputs[i]) : nullptr; }
  // Like constant(), but fails with a clear message when the input is not an initializer.
  const Tensor& require_constant(int i, const char* what) const;
  const Attributes& attrs() const { return n_.attrs; }
  Attributes& mutable_attrs() { return n_.attrs; }
  int num_outputs() const { return static_cast<int>(n_.outputs.size()); }
  bool has_output(int i) const { return i < num_outputs() && n_.outputs[i] != kNoValue; }
  void set_output(int i, DType dtype, Shape shape);
  const Node& node() const { return n_; }

  // Throws an InputError that names the node and every input shape.
  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) const {
    fail_msg(fmt::format(f, std::forward<Args>(args)...));
  }
  void check(bool cond, const char* what) const {
    if (!cond) fail_msg(what);
  }
  // Common checks.
  void expect_rank(int i, int rank) const;
  void expect_float(int i) const;
  void expect_same_dtype(int i, int j) const;

 private:
  [[noreturn]] void fail_msg(const std::string& msg) const;
  const Graph& g_;
  Node& n_;
  std::vector<OutputMeta>& outs_;
};

// What a gradient rule sees: the forward node, the gradients of its outputs, and a builder for backward
// nodes.
class GradContext {
 public:
  GradContext(Graph& g, NodeId n, std::vector<ValueId> grad_outputs, std::vector<bool> needs_grad);
  Graph& graph() { return g_; }
  const Node& node() const { return node_; }
  const Attributes& attrs() const { return node_.attrs; }
  ValueId input(int i) const {
    return i < static_cast<int>(node_.inputs.size()) ? node_.inputs[i] : kNoValue;
  }
  ValueId output(int i) const {
    return i < static_cast<int>(node_.outputs.size()) ? node_.outputs[i] : kNoValue;
  }
  // Gradient flowing into output i, or kNoValue when nothing downstream needs it.
  ValueId grad_output(int i) const { return i < static_cast<int>(gy_.size()) ? gy_[i] : kNoValue; }
  ValueId dy() const { return grad_output(0); }
  // Gradient of output i, or zeros of its shape when nothing flows into it.
  ValueId grad_output_or_zeros(int i);
  bool needs_grad(int i) const { return i < static_cast<int>(needs_.size()) && needs_[i]; }
  void set_grad(int i, ValueId g);
  const std::vector<ValueId>& grads() const { return dx_; }

  const Shape& shape(ValueId v) const { return g_.value(v).shape; }
  DType dtype(ValueId v) const { return g_.value(v).dtype; }
  // Emits a backward node; names are derived from the forward node's name.
  ValueId op(const std::string& op, std::vector<ValueId> inputs, Attributes attrs = {});
  std::vector<ValueId> op_multi(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                                int num_outputs);
  ValueId scalar(double v, DType dtype);                // a rank-0 constant
  ValueId zeros(const Shape& s, DType dtype);           // a constant of zeros
  ValueId constant_i64(const std::vector<int64_t>& v);  // a 1-D i64 constant (shapes, axes)
  // Sums a broadcast gradient back to `target` (the shape of the input that was broadcast).
  // `target` by value: callers pass shapes that live in the graph, which emitting nodes can reallocate.
  ValueId reduce_to(ValueId grad, Shape target);

 private:
  Graph& g_;
  Node node_;  // a copy: emitting nodes may move the graph's storage
  std::vector<ValueId> gy_;
  std::vector<bool> needs_;
  std::vector<ValueId> dx_;
};

// One test case for an op: inputs (f64 for gradient checks where the op allows), attributes, and which inputs
// are constants (shape operands, indices). Registry-walking tests build a one-node graph from each example.
struct OpExample {
  std::string label;
  std::vector<Tensor> inputs;  // an input with dtype bool and shape [-1]... is not used; see absent
  std::vector<bool> absent;    // absent[i]: input i is an omitted optional input
  std::vector<bool> constant;  // constant[i]: input i becomes a graph constant (never differentiated)
  Attributes attrs;
  int num_outputs = -1;
  double grad_tolerance = 1e-6;  // relative tolerance of the f64 finite-difference check
  bool grad_check = true;        // false: forward only (an op whose gradient is checked elsewhere)
};

using InferFn = std::function<void(InferContext&)>;
using GradFn = std::function<void(GradContext&)>;
using ExamplesFn = std::function<std::vector<OpExample>()>;

struct AttrSpec {
  std::string name;
  AttrType type;
  std::optional<AttrValue> default_value;  // nullopt: optional without default, unless required
  bool required = false;
};

class OpSchema {
 public:
  OpSchema(std::string name, std::string domain = kOnnxDomain)
      : name_(std::move(name)), domain_(std::move(domain)) {}

  OpSchema& doc(std::string d) {
    doc_ = std::move(d);
    return *this;
  }
  OpSchema& since(int opset) {
    since_ = opset;
    return *this;
  }
  OpSchema& inputs(int min, int max) {
    min_in_ = min;
    max_in_ = max;
    return *this;
  }
  OpSchema& outputs(int min, int max) {
    min_out_ = min;
    max_out_ = max;
    return *this;
  }
  OpSchema& attr(std::string name, AttrValue default_value) {
    AttrType t = attr_type_of(default_value);
    attrs_.push_back({std::move(name), t, std::move(default_value), false});
    return *this;
  }
  OpSchema& attr_optional(std::string name, AttrType t) {
    attrs_.push_back({std::move(name), t, {}, false});
    return *this;
  }
  OpSchema& attr_required(std::string name, AttrType t) {
    attrs_.push_back({std::move(name), t, {}, true});
    return *this;
  }
  OpSchema& infer(InferFn f) {
    infer_ = std::move(f);
    return *this;
  }
  OpSchema& grad(GradFn f) {
    grad_ = std::move(f);
    return *this;
  }
  // The op has no gradient by nature (integer results, comparisons, gradient or optimizer ops). The reason is
  // listed by the gradient-check test; an op with neither grad() nor this fails that test.
  OpSchema& non_differentiable(std::string reason) {
    nondiff_reason_ = std::move(reason);
    return *this;
  }
  // Inputs that never receive a gradient (indices, shapes, labels).
  OpSchema& no_grad_inputs(std::vector<int> idx) {
    no_grad_inputs_ = std::move(idx);
    return *this;
  }
  // Output `out` may be computed into the buffer of input `in` when that input dies here (elementwise ops).
  OpSchema& inplace(int out, int in) {
    inplace_ = {{out, in}};
    return *this;
  }
  // Output `out` is a view of input `in`: same bytes, another shape (Reshape, Flatten, ...). No copy is made.
  OpSchema& view(int out, int in) {
    view_ = {{out, in}};
    return *this;
  }
  OpSchema& examples(ExamplesFn f) {
    examples_ = std::move(f);
    return *this;
  }

  const std::string& name() const { return name_; }
  const std::string& domain() const { return domain_; }
  bool is_private() const { return domain_ == kPrivateDomain; }
  int since_version() const { return since_; }
  int min_inputs() const { return min_in_; }
  int max_inputs() const { return max_in_; }
  int min_outputs() const { return min_out_; }
  int max_outputs() const { return max_out_; }
  const std::vector<AttrSpec>& attr_specs() const { return attrs_; }
  const AttrSpec* find_attr(const std::string& name) const;
  bool has_grad() const { return static_cast<bool>(grad_); }
  const GradFn& grad_fn() const { return grad_; }
  const std::optional<std::string>& non_differentiable_reason() const { return nondiff_reason_; }
  bool input_has_grad(int i) const;
  const std::optional<std::pair<int, int>>& inplace_pair() const { return inplace_; }
  const std::optional<std::pair<int, int>>& view_pair() const { return view_; }
  const ExamplesFn& examples_fn() const { return examples_; }
  const std::string& documentation() const { return doc_; }

  // Checks arity and attributes, fills defaults, runs shape inference. n.outputs[i] != kNoValue marks the
  // outputs wanted; their inferred types land in outs. Throws InputError.
  void validate_and_infer(const Graph& g, Node& n, std::vector<OutputMeta>* outs) const;

 private:
  std::string name_, domain_, doc_;
  int since_ = 1;
  int min_in_ = 1, max_in_ = 1, min_out_ = 1, max_out_ = 1;
  std::vector<AttrSpec> attrs_;
  InferFn infer_;
  GradFn grad_;
  std::optional<std::string> nondiff_reason_;
  std::vector<int> no_grad_inputs_;
  std::optional<std::pair<int, int>> inplace_, view_;
  ExamplesFn examples_;
};

// Every op the engine knows. Filled once, by the explicit list in engine/ops/registry.cpp.
class OpRegistry {
 public:
  static const OpRegistry& global();
  void add(OpSchema s);
  const OpSchema* find(const std::string& name) const;
  // Throws InputError with a hint when the op is unknown.
  const OpSchema& get(const std::string& name) const;
  const std::map<std::string, OpSchema>& all() const { return ops_; }

 private:
  std::map<std::string, OpSchema> ops_;
};

// engine/ops/registry.cpp: one line per op family.
void register_all_ops(OpRegistry& r);

}  // namespace trainer::engine
