// Op family 'shape': data movement without arithmetic (Reshape, Flatten, Squeeze, Unsqueeze as views; Expand,
// Transpose, Concat, Slice, Gather as copies), their shape inference and gradient rules. Shape operands
// (Reshape's shape, Slice's bounds, axes) must be constants: every shape in a plan is static.
#include <algorithm>

#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/pad_geometry.h"
#include "engine/ops/shape_slice.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

// The values of a constant 1-D integer input.
std::vector<int64_t> const_ints(InferContext& c, int i, const char* what) {
  const Tensor& t = c.require_constant(i, what);
  if (t.dtype() != DType::i64 && t.dtype() != DType::i32)
    c.fail("{} must be i64, got {}", what, dtype_name(t.dtype()));
  if (t.shape().rank() != 1) c.fail("{} must be 1-D, got shape {}", what, t.shape().str());
  std::vector<int64_t> v(t.numel());
  for (int64_t k = 0; k < t.numel(); ++k) v[k] = t.get_i64(k);
  return v;
}

// Axes from input 1 (opset 13) or the `axes` attribute (older opsets); `has` tells whether any were given.
std::vector<int64_t> axes_input_or_attr(InferContext& c, bool* has) {
  *has = false;
  if (c.has_input(1)) {
    if (c.attrs().has("axes")) c.fail("axes are given both as an input and as an attribute");
    *has = true;
    return const_ints(c, 1, "axes");
  }
  if (c.attrs().has("axes")) {
    *has = true;
    return c.attrs().ints("axes");
  }
  return {};
}

// The gradient of every view-like op: dy reshaped to the input's shape.
void grad_reshape_back(GradContext& c) {
  c.set_grad(0, c.op("Reshape", {c.dy(), c.constant_i64(c.shape(c.input(0)).dims())}));
}

OpExample with_const(OpExample e, std::vector<int> const_inputs) {
  for (int i : const_inputs) e.constant[i] = true;
  return e;
}

void infer_reshape(InferContext& c) {
  std::vector<int64_t> req = const_ints(c, 1, "shape");
  const Shape& in = c.shape(0);
  bool allowzero = c.attrs().i("allowzero") != 0;
  std::vector<int64_t> d;
  int infer_at = -1;
  int64_t known = 1;
  for (size_t i = 0; i < req.size(); ++i) {
    int64_t v = req[i];
    if (v == -1) {
      if (infer_at >= 0) c.fail("shape {} has more than one -1", Shape(req).str());
      infer_at = static_cast<int>(i);
      d.push_back(1);
      continue;
    }
    if (v == 0 && !allowzero) {
      if (static_cast<int>(i) >= in.rank())
        c.fail("shape {}: a 0 at position {} has no input dim to copy", Shape(req).str(), i);
      v = in[static_cast<int>(i)];
    } else if (v < 0) {
      c.fail("shape {} has a negative dim {}", Shape(req).str(), v);
    }
    d.push_back(v);
    known *= v;
  }
  if (infer_at >= 0) {
    if (known == 0 || in.numel() % known != 0)
      c.fail("cannot infer the -1 of shape {} from {} elements", Shape(req).str(), in.numel());
    d[infer_at] = in.numel() / known;
  }
  Shape out(std::move(d));
  if (out.numel() != in.numel())
    c.fail("cannot reshape {} elements to {} (from the requested shape {})", in.numel(), out.str(),
           Shape(req).str());
  c.set_output(0, c.dtype(0), std::move(out));
}

void infer_expand(InferContext& c) {
  std::vector<int64_t> req = const_ints(c, 1, "shape");
  Shape out;
  if (!broadcast_shapes(c.shape(0), Shape(req), &out))
    c.fail("cannot expand {} to {}: dims must be equal or 1", c.shape(0).str(), Shape(req).str());
  c.set_output(0, c.dtype(0), std::move(out));
}

void infer_flatten(InferContext& c) {
  int r = c.rank(0);
  int64_t axis = c.attrs().i("axis");
  if (axis < -r || axis > r) c.fail("axis {} is out of range [{}, {}]", axis, -r, r);
  if (axis < 0) axis += r;
  int64_t a = 1, b = 1;
  for (int i = 0; i < r; ++i) (i < axis ? a : b) *= c.shape(0)[i];
  c.set_output(0, c.dtype(0), Shape{a, b});
}

std::vector<int64_t> perm_of(const Attributes& attrs, int rank) {
  std::vector<int64_t> p = attrs.ints_or("perm", {});
  if (p.empty())
    for (int i = rank - 1; i >= 0; --i) p.push_back(i);
  return p;
}

void infer_transpose(InferContext& c) {
  int r = c.rank(0);
  std::vector<int64_t> p = perm_of(c.attrs(), r);
  if (static_cast<int>(p.size()) != r)
    c.fail("perm {} has {} entries for rank {}", Shape(p).str(), p.size(), r);
  std::vector<bool> seen(r, false);
  std::vector<int64_t> d(r);
  for (int i = 0; i < r; ++i) {
    if (p[i] < 0 || p[i] >= r || seen[p[i]])
      c.fail("perm {} is not a permutation of 0..{}", Shape(p).str(), r - 1);
    seen[p[i]] = true;
    d[i] = c.shape(0)[static_cast<int>(p[i])];
  }
  c.set_output(0, c.dtype(0), Shape(std::move(d)));
}

void infer_concat(InferContext& c) {
  int r = c.rank(0);
  int axis = normalize_axis(c.attrs().i("axis"), r);
  if (axis < 0) c.fail("axis {} is out of range for rank {}", c.attrs().i("axis"), r);
  Shape out = c.shape(0);
  for (int i = 1; i < c.num_inputs(); ++i) {
    if (!c.has_input(i)) c.fail("input {} is missing", i);
    c.expect_same_dtype(0, i);
    const Shape& s = c.shape(i);
    if (s.rank() != r) c.fail("input {} has rank {}, input 0 has rank {}", i, s.rank(), r);
    for (int d = 0; d < r; ++d)
      if (d != axis && s[d] != out[d])
        c.fail("input {} differs from input 0 in dim {} (not the axis {})", i, d, axis);
    out[axis] += s[axis];
  }
  c.set_output(0, c.dtype(0), std::move(out));
}

void infer_slice(InferContext& c) {
  std::array<const Tensor*, 4> consts{};
  std::array<bool, 4> present{};
  for (int k = 0; k < 4; ++k) {
    present[k] = c.has_input(k + 1);
    consts[k] = c.constant(k + 1);
  }
  SliceDims sd;
  std::string err = slice_of_node(c.shape(0), c.attrs(), consts, present, &sd);
  if (!err.empty()) c.fail("{}", err);
  c.set_output(0, c.dtype(0), Shape(sd.count));
}

void infer_squeeze(InferContext& c) {
  bool has = false;
  std::vector<int64_t> axes = axes_input_or_attr(c, &has);
  const Shape& in = c.shape(0);
  std::vector<bool> drop(in.rank(), false);
  if (!has) {
    for (int i = 0; i < in.rank(); ++i) drop[i] = in[i] == 1;
  } else {
    for (int64_t a : axes) {
      int n = normalize_axis(a, in.rank());
      if (n < 0) c.fail("axis {} is out of range for rank {}", a, in.rank());
      if (drop[n]) c.fail("axis {} is given twice", a);
      if (in[n] != 1) c.fail("cannot squeeze axis {}: its size is {}, not 1", a, in[n]);
      drop[n] = true;
    }
  }
  std::vector<int64_t> d;
  for (int i = 0; i < in.rank(); ++i)
    if (!drop[i]) d.push_back(in[i]);
  c.set_output(0, c.dtype(0), Shape(std::move(d)));
}

void infer_unsqueeze(InferContext& c) {
  bool has = false;
  std::vector<int64_t> axes = axes_input_or_attr(c, &has);
  if (!has || axes.empty()) c.fail("Unsqueeze needs axes (input 1, or the attribute in older opsets)");
  const Shape& in = c.shape(0);
  int r = in.rank() + static_cast<int>(axes.size());
  std::vector<bool> insert(r, false);
  for (int64_t a : axes) {
    int n = normalize_axis(a, r);
    if (n < 0) c.fail("axis {} is out of range for output rank {}", a, r);
    if (insert[n]) c.fail("axis {} is given twice", a);
    insert[n] = true;
  }
  std::vector<int64_t> d;
  int k = 0;
  for (int i = 0; i < r; ++i) d.push_back(insert[i] ? 1 : in[k++]);
  c.set_output(0, c.dtype(0), Shape(std::move(d)));
}

void infer_gather(InferContext& c) {
  if (c.dtype(1) != DType::i64 && c.dtype(1) != DType::i32)
    c.fail("indices must be i64 or i32, got {}", dtype_name(c.dtype(1)));
  const Shape& in = c.shape(0);
  if (in.rank() < 1) c.fail("data must have rank >= 1");
  int axis = normalize_axis(c.attrs().i("axis"), in.rank());
  if (axis < 0) c.fail("axis {} is out of range for rank {}", c.attrs().i("axis"), in.rank());
  if (const Tensor* idx = c.constant(1)) {
    for (int64_t k = 0; k < idx->numel(); ++k) {
      int64_t v = idx->get_i64(k);
      if (v < -in[axis] || v >= in[axis])
        c.fail("index {} is out of range for dim {} of size {}", v, axis, in[axis]);
    }
  }
  std::vector<int64_t> d(in.dims().begin(), in.dims().begin() + axis);
  for (int64_t v : c.shape(1).dims()) d.push_back(v);
  for (int i = axis + 1; i < in.rank(); ++i) d.push_back(in[i]);
  c.set_output(0, c.dtype(0), Shape(std::move(d)));
}

// ---- Pad ----

void infer_pad(InferContext& c) {
  const std::string& mode = c.attrs().s("mode");
  if (mode != "constant" && mode != "reflect" && mode != "edge")
    c.fail("mode '{}' is not supported: use constant, reflect or edge", mode);
  const Shape& x = c.shape(0);
  if (x.rank() < 1 || x.rank() > 8) c.fail("Pad takes a tensor of rank 1 to 8, got rank {}", x.rank());
  std::vector<int64_t> pads = const_ints(c, 1, "pads");
  std::vector<int64_t> axes;
  if (c.has_input(3)) axes = const_ints(c, 3, "axes");
  if (c.has_input(2)) {
    c.expect_same_dtype(0, 2);
    if (c.shape(2).numel() != 1) c.fail("constant_value must be one value, got shape {}", c.shape(2).str());
  }
  std::vector<int64_t> begin, end;
  std::string err = pad_amounts(x.rank(), pads, c.has_input(3) ? &axes : nullptr, &begin, &end);
  if (!err.empty()) c.fail("{}", err);
  std::vector<int64_t> out(x.rank());
  for (int d = 0; d < x.rank(); ++d) {
    if (mode != "constant" && (begin[d] < 0 || end[d] < 0))
      c.fail("{} padding cannot crop: pads of dim {} are {} and {}", mode, d, begin[d], end[d]);
    if (mode == "reflect" && (begin[d] > 0 || end[d] > 0) && (begin[d] >= x[d] || end[d] >= x[d]))
      c.fail("reflect pads of dim {} ({} and {}) must be smaller than its size {}", d, begin[d], end[d],
             x[d]);
    if (mode == "edge" && (begin[d] > 0 || end[d] > 0) && x[d] == 0)
      c.fail("edge padding of an empty dim {}", d);
    out[d] = x[d] + begin[d] + end[d];
    if (out[d] < 0)
      c.fail("pads of dim {} ({} and {}) crop more than its size {}", d, begin[d], end[d], x[d]);
  }
  c.set_output(0, c.dtype(0), Shape(out));
}

// The input's gradient: constant padding is undone by padding dy with the negated pads (a crop); reflect and
// edge padding sum the outputs that read each input element (PadGrad).
void pad_grad(GradContext& c) {
  const Shape x = c.shape(c.input(0));
  std::vector<int64_t> pads, axes, begin, end;
  const bool with_axes = c.input(3) != kNoValue;
  const bool constants = constant_ints(c.graph(), c.input(1), &pads) &&
                         (!with_axes || constant_ints(c.graph(), c.input(3), &axes));
  TRAINER_ASSERT(constants, "Pad's pads or axes are not constants");
  std::string err = pad_amounts(x.rank(), pads, with_axes ? &axes : nullptr, &begin, &end);
  TRAINER_ASSERT(err.empty(), "{}", err);
  std::vector<int64_t> full = begin;
  full.insert(full.end(), end.begin(), end.end());
  const std::string& mode = c.attrs().s("mode");
  if (mode == "constant") {
    for (int64_t& v : full) v = -v;
    c.set_grad(0, c.op("Pad", {c.dy(), c.constant_i64(full)}, {{"mode", std::string("constant")}}));
  } else {
    c.set_grad(0, c.op("PadGrad", {c.dy()}, {{"mode", mode}, {"pads", full}, {"input_shape", x.dims()}}));
  }
}

std::vector<OpExample> pad_examples() {
  auto pad = [](std::string label, Shape s, std::vector<int64_t> pads, std::string mode, uint64_t seed,
                std::optional<double> value = std::nullopt, std::vector<int64_t> axes = {}) {
    std::vector<Tensor> in{random_tensor(s, -1, 1, seed), i64_tensor(pads)};
    if (value || !axes.empty()) in.push_back(Tensor::scalar<double>(value.value_or(0)));
    if (!axes.empty()) in.push_back(i64_tensor(axes));
    OpExample e = example(std::move(label), std::move(in), {{"mode", mode}});
    for (size_t k = 1; k < e.constant.size(); ++k) e.constant[k] = true;
    return e;
  };
  return {
      pad("constant, value 0.5", {2, 3, 4}, {0, 1, 2, 0, 0, 1}, "constant", 131, 0.5),
      pad("constant, cropping", {3, 5}, {-1, 2, 1, -2}, "constant", 132),
      pad("reflect", {2, 4, 5}, {0, 3, 2, 0, 1, 4}, "reflect", 133),
      pad("edge", {3, 4}, {2, 0, 1, 3}, "edge", 134),
      pad("edge, one element", {2, 1}, {0, 2, 0, 1}, "edge", 135),
      pad("axes input", {2, 3, 4}, {1, 2, 0, 1}, "reflect", 136, 0.0, {-1, 1}),
  };
}

}  // namespace

void register_shape_ops(OpRegistry& r) {
  r.add(OpSchema("Pad")
            .since(18)
            .doc("Pads (or, with negative pads in constant mode, crops) each dim: constant (constant_value, "
                 "default 0), reflect or edge.")
            .inputs(2, 4)
            .attr("mode", std::string("constant"))
            .no_grad_inputs({1, 2, 3})
            .infer(infer_pad)
            .grad(pad_grad)
            .examples(pad_examples));
  r.add(
      OpSchema("PadGrad", kPrivateDomain)
          .doc(
              "dy -> dx of reflect or edge Pad: each input element gets the sum of the outputs that read it.")
          .inputs(1, 1)
          .attr_required("mode", AttrType::s)
          .attr_required("pads", AttrType::ints)
          .attr_required("input_shape", AttrType::ints)
          .infer([](InferContext& c) {
            const auto& in = c.attrs().ints("input_shape");
            const auto& pads = c.attrs().ints("pads");
            const size_t rank = in.size();
            if (pads.size() != 2 * rank || c.rank(0) != static_cast<int>(rank))
              c.fail("pads, input_shape and dy must agree in rank");
            for (size_t d = 0; d < rank; ++d)
              if (c.shape(0)[static_cast<int>(d)] != in[d] + pads[d] + pads[rank + d])
                c.fail("dy does not match the padding of {}", Shape(in).str());
            c.set_output(0, c.dtype(0), Shape(in));
          })
          .non_differentiable(kGradOpReason));

  r.add(
      OpSchema("Reshape")
          .since(14)
          .doc("Reshapes to a constant shape: 0 copies the input dim (unless allowzero = 1), -1 is "
               "inferred.")
          .inputs(2, 2)
          .attr("allowzero", int64_t{0})
          .no_grad_inputs({1})
          .view(0, 0)
          .infer(infer_reshape)
          .grad(grad_reshape_back)
          .examples([] {
            return std::vector<OpExample>{
                with_const(
                    example("copy and infer", {random_tensor({2, 3, 4}, -1, 1, 61), i64_tensor({0, -1})}),
                    {1}),
                with_const(example("explicit", {random_tensor({6}, -1, 1, 62), i64_tensor({3, 1, 2})}), {1}),
                with_const(example("allowzero", {random_tensor({2, 2}, -1, 1, 63), i64_tensor({4})},
                                   {{"allowzero", int64_t{1}}}),
                           {1}),
            };
          }));

  r.add(OpSchema("Expand")
            .since(13)
            .doc("Broadcasts the input to a constant shape with numpy rules (the result may have a higher "
                 "rank).")
            .inputs(2, 2)
            .no_grad_inputs({1})
            .infer(infer_expand)
            .grad([](GradContext& c) { c.set_grad(0, c.reduce_to(c.dy(), c.shape(c.input(0)))); })
            .examples([] {
              return std::vector<OpExample>{
                  with_const(example("row to matrix", {random_tensor({1, 3}, -1, 1, 71), i64_tensor({2, 3})}),
                             {1}),
                  with_const(
                      example("higher rank", {random_tensor({3, 1}, -1, 1, 72), i64_tensor({2, 1, 4})}), {1}),
                  with_const(example("shape smaller", {random_tensor({2, 3}, -1, 1, 73), i64_tensor({3})}),
                             {1}),
              };
            }));

  r.add(OpSchema("Flatten")
            .since(13)
            .doc("Reshapes to 2-D: [prod(dims before axis), prod(dims from axis)].")
            .attr("axis", int64_t{1})
            .view(0, 0)
            .infer(infer_flatten)
            .grad(grad_reshape_back)
            .examples([] {
              return std::vector<OpExample>{
                  example("default axis", {random_tensor({2, 3, 2}, -1, 1, 81)}),
                  example("axis 0", {random_tensor({2, 3}, -1, 1, 82)}, {{"axis", int64_t{0}}}),
                  example("negative axis", {random_tensor({2, 3, 2}, -1, 1, 83)}, {{"axis", int64_t{-1}}}),
              };
            }));

  r.add(OpSchema("Transpose")
            .doc("Permutes the dims; perm defaults to reversing them.")
            .attr_optional("perm", AttrType::ints)
            .infer(infer_transpose)
            .grad([](GradContext& c) {
              std::vector<int64_t> p = perm_of(c.attrs(), c.shape(c.input(0)).rank()), inv(p.size());
              for (size_t i = 0; i < p.size(); ++i) inv[p[i]] = static_cast<int64_t>(i);
              c.set_grad(0, c.op("Transpose", {c.dy()}, {{"perm", inv}}));
            })
            .examples([] {
              return std::vector<OpExample>{
                  example("matrix", {random_tensor({3, 4}, -1, 1, 91)}),
                  example("3-D default", {random_tensor({2, 3, 4}, -1, 1, 92)}),
                  example("NCHW to NHWC", {random_tensor({2, 3, 2, 2}, -1, 1, 93)},
                          {{"perm", std::vector<int64_t>{0, 2, 3, 1}}}),
                  example("swap leading", {random_tensor({2, 3, 4}, -1, 1, 94)},
                          {{"perm", std::vector<int64_t>{1, 0, 2}}}),
              };
            }));

  r.add(OpSchema("Concat")
            .since(13)
            .doc("Joins tensors along `axis`; every other dim must match.")
            .inputs(1, -1)
            .attr_required("axis", AttrType::i)
            .infer(infer_concat)
            .grad([](GradContext& c) {
              int r = c.shape(c.input(0)).rank();
              int axis = normalize_axis(c.attrs().i("axis"), r);
              int64_t off = 0;
              for (int i = 0; i < static_cast<int>(c.node().inputs.size()); ++i) {
                int64_t len = c.shape(c.input(i))[axis];
                if (c.needs_grad(i)) {
                  c.set_grad(i, c.op("Slice", {c.dy(), c.constant_i64({off}), c.constant_i64({off + len}),
                                               c.constant_i64({axis})}));
                }
                off += len;
              }
            })
            .examples([] {
              return std::vector<OpExample>{
                  example("axis 1", {random_tensor({2, 2}, -1, 1, 101), random_tensor({2, 3}, -1, 1, 102)},
                          {{"axis", int64_t{1}}}),
                  example("three on axis 0",
                          {random_tensor({1, 3}, -1, 1, 103), random_tensor({2, 3}, -1, 1, 104),
                           random_tensor({1, 3}, -1, 1, 105)},
                          {{"axis", int64_t{0}}}),
                  example("negative axis",
                          {random_tensor({2, 1, 2}, -1, 1, 106), random_tensor({2, 2, 2}, -1, 1, 107)},
                          {{"axis", int64_t{-2}}}),
              };
            }));

  r.add(OpSchema("Slice")
            .since(13)
            .doc("Takes start:end:step along the given axes (constant inputs; opset-1 attributes also "
                 "accepted). Bounds are clamped as in ONNX; negative steps walk backwards.")
            .inputs(1, 5)
            .attr_optional("starts", AttrType::ints)
            .attr_optional("ends", AttrType::ints)
            .attr_optional("axes", AttrType::ints)
            .no_grad_inputs({1, 2, 3, 4})
            .infer(infer_slice)
            .grad([](GradContext& c) {
              std::array<const Tensor*, 4> consts{};
              std::array<bool, 4> present{};
              for (int k = 0; k < 4; ++k) {
                present[k] = c.input(k + 1) != kNoValue;
                consts[k] = present[k] ? c.graph().initializer(c.input(k + 1)) : nullptr;
              }
              SliceDims sd;
              std::string err = slice_of_node(c.shape(c.input(0)), c.attrs(), consts, present, &sd);
              TRAINER_ASSERT(err.empty(), "{}", err);
              c.set_grad(
                  0, c.op("SliceGrad", {c.dy()},
                          {{"shape", c.shape(c.input(0)).dims()}, {"starts", sd.start}, {"steps", sd.step}}));
            })
            .examples([] {
              auto sl = [](std::string label, Shape s, std::vector<std::vector<int64_t>> ops, uint64_t seed) {
                std::vector<Tensor> in{random_tensor(s, -1, 1, seed)};
                for (auto& v : ops) in.push_back(i64_tensor(v));
                OpExample e = example(std::move(label), std::move(in));
                for (size_t k = 1; k < e.constant.size(); ++k) e.constant[k] = true;
                return e;
              };
              std::vector<OpExample> v{
                  sl("starts and ends", {3, 4}, {{1, 0}, {3, 3}}, 111),
                  sl("axes and steps", {4, 5}, {{0}, {5}, {1}, {2}}, 112),
                  sl("negative step", {5, 3}, {{-1}, {-6}, {0}, {-2}}, 113),
                  sl("clamped and negative bounds", {2, 6}, {{-4, -100}, {1000, 100}, {1, 0}}, 114),
              };
              OpExample attr = example("opset-1 attributes", {random_tensor({3, 4}, -1, 1, 115)},
                                       {{"starts", std::vector<int64_t>{1}},
                                        {"ends", std::vector<int64_t>{-1}},
                                        {"axes", std::vector<int64_t>{1}}});
              v.push_back(attr);
              return v;
            }));

  r.add(OpSchema("SliceGrad", kPrivateDomain)
            .doc("dy scattered into zeros of `shape` at start + i * step per dim (the adjoint of Slice).")
            .attr_required("shape", AttrType::ints)
            .attr_required("starts", AttrType::ints)
            .attr_required("steps", AttrType::ints)
            .infer([](InferContext& c) {
              const auto& s = c.attrs().ints("shape");
              if (c.attrs().ints("starts").size() != s.size() || c.attrs().ints("steps").size() != s.size() ||
                  c.rank(0) != static_cast<int>(s.size()))
                c.fail("shape, starts, steps and dy must have one entry per dim");
              c.set_output(0, c.dtype(0), Shape(s));
            })
            .non_differentiable(kGradOpReason));

  r.add(
      OpSchema("Squeeze")
          .since(13)
          .doc("Removes size-1 dims: the given axes (input 1, or the older attribute), or all of them.")
          .inputs(1, 2)
          .attr_optional("axes", AttrType::ints)
          .no_grad_inputs({1})
          .view(0, 0)
          .infer(infer_squeeze)
          .grad(grad_reshape_back)
          .examples([] {
            return std::vector<OpExample>{
                with_const(example("axes input", {random_tensor({2, 1, 3, 1}, -1, 1, 121), i64_tensor({-1})}),
                           {1}),
                example("all ones", {random_tensor({1, 3, 1}, -1, 1, 122)}),
                example("attribute", {random_tensor({1, 3}, -1, 1, 123)},
                        {{"axes", std::vector<int64_t>{0}}}),
            };
          }));

  r.add(OpSchema("Unsqueeze")
            .since(13)
            .doc("Inserts size-1 dims at the given axes of the output (input 1, or the older attribute).")
            .inputs(1, 2)
            .attr_optional("axes", AttrType::ints)
            .no_grad_inputs({1})
            .view(0, 0)
            .infer(infer_unsqueeze)
            .grad(grad_reshape_back)
            .examples([] {
              return std::vector<OpExample>{
                  with_const(example("axes input", {random_tensor({2, 3}, -1, 1, 131), i64_tensor({0, -1})}),
                             {1}),
                  example("attribute", {random_tensor({3}, -1, 1, 132)}, {{"axes", std::vector<int64_t>{1}}}),
              };
            }));

  r.add(OpSchema("Gather")
            .since(13)
            .doc("Picks entries along `axis` by index (i64 or i32; negative counts from the end). The "
                 "gradient scatter-adds dy in index order, so repeated indices sum deterministically.")
            .inputs(2, 2)
            .attr("axis", int64_t{0})
            .no_grad_inputs({1})
            .infer(infer_gather)
            .grad([](GradContext& c) {
              int axis = normalize_axis(c.attrs().i("axis"), c.shape(c.input(0)).rank());
              c.set_grad(0, c.op("GatherGrad", {c.dy(), c.input(1)},
                                 {{"axis", int64_t{axis}}, {"shape", c.shape(c.input(0)).dims()}}));
            })
            .examples([] {
              OpExample rows = example("rows with repeats",
                                       {random_tensor({4, 3}, -1, 1, 141), i64_tensor({3, 0, 3, -1})});
              rows.constant[1] = true;
              OpExample mid =
                  example("axis 1, 2-D indices, i32",
                          {random_tensor({2, 4, 3}, -1, 1, 142), Tensor::from<int32_t>({2, 2}, {1, 0, 3, 1})},
                          {{"axis", int64_t{1}}});
              OpExample fed =
                  example("indices fed at run time", {random_tensor({5, 2}, -1, 1, 143), i64_tensor({4, 1})});
              OpExample scalar = example("scalar index on last axis",
                                         {random_tensor({2, 3}, -1, 1, 144), Tensor::scalar<int64_t>(-2)},
                                         {{"axis", int64_t{-1}}});
              return std::vector<OpExample>{rows, mid, fed, scalar};
            }));

  r.add(OpSchema("Shape")
            .since(15)
            .doc("The input's dims as a 1-D i64 tensor, optionally dims[start:end] (negative counts from "
                 "the end).")
            .attr("start", int64_t{0})
            .attr_optional("end", AttrType::i)
            .infer([](InferContext& c) {
              int r = c.rank(0);
              auto clamp_dim = [r](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + r : v, 0, r); };
              int64_t b = clamp_dim(c.attrs().i("start")), e = clamp_dim(c.attrs().i_or("end", r));
              c.set_output(0, DType::i64, Shape{std::max<int64_t>(e - b, 0)});
            })
            .non_differentiable("its output is integer shape data, constant for a static shape")
            .examples([] {
              return std::vector<OpExample>{
                  example("all dims", {random_tensor({2, 3, 4}, -1, 1, 151)}),
                  example("start and end", {random_tensor({2, 3, 4}, -1, 1, 152)},
                          {{"start", int64_t{-2}}, {"end", int64_t{10}}}),
              };
            }));

  r.add(OpSchema("GatherGrad", kPrivateDomain)
            .doc("(dy, indices) -> zeros of `shape` with dy added at the gathered positions along `axis`, "
                 "in index order (deterministic for repeated indices). Also the forward form of a "
                 "scatter-add (imported ScatterND and ScatterElements), so it has a gradient: a Gather.")
            .inputs(2, 2)
            .attr_required("axis", AttrType::i)
            .attr_required("shape", AttrType::ints)
            .infer([](InferContext& c) {
              Shape s(c.attrs().ints("shape"));
              int axis = normalize_axis(c.attrs().i("axis"), s.rank());
              if (axis < 0) c.fail("axis {} is out of range for rank {}", c.attrs().i("axis"), s.rank());
              int64_t expect = c.shape(1).numel() * (s[axis] ? s.numel() / s[axis] : 0);
              if (c.shape(0).numel() != expect)
                c.fail("dy has {} elements, expected {} for indices {} into {}", c.shape(0).numel(), expect,
                       c.shape(1).str(), s.str());
              c.set_output(0, c.dtype(0), std::move(s));
            })
            .no_grad_inputs({1})
            .grad([](GradContext& c) {
              // The gathered rows come in the indices' shape; dy may have held them flat.
              ValueId g = c.op("Gather", {c.dy(), c.input(1)}, {{"axis", c.attrs().i("axis")}});
              const Shape want = c.shape(c.input(0));
              if (c.shape(g) != want) g = c.op("Reshape", {g, c.constant_i64(want.dims())});
              c.set_grad(0, g);
            })
            .examples([] {
              OpExample rows =
                  example("rows with repeats", {random_tensor({4, 3}, -1, 1, 145), i64_tensor({2, 0, 2, -1})},
                          {{"axis", int64_t{0}}, {"shape", std::vector<int64_t>{5, 3}}});
              rows.constant[1] = true;
              OpExample mid = example("axis 1", {random_tensor({2, 2, 3}, -1, 1, 146), i64_tensor({3, 1})},
                                      {{"axis", int64_t{1}}, {"shape", std::vector<int64_t>{2, 4, 3}}});
              mid.constant[1] = true;
              OpExample flat = example(
                  "flat dy, 2-D indices",
                  {random_tensor({6}, -1, 1, 147), Tensor::from<int64_t>(Shape{2, 3}, {4, 0, 4, 1, 2, 0})},
                  {{"axis", int64_t{0}}, {"shape", std::vector<int64_t>{5}}});
              flat.constant[1] = true;
              return std::vector<OpExample>{rows, mid, flat};
            }));
}

}  // namespace trainer::engine::ops
