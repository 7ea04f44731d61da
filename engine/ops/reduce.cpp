// Op family 'reduce': ReduceSum, ReduceMean, ReduceMax, and Softmax/LogSoftmax (a reduction along one axis),
// with their gradient rules. Sum and mean gradients broadcast dy back with Reshape + Expand, never a zeros
// tensor of the input's size; max and softmax gradients are private ops so each is one kernel.
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/reduce_axes.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

ReduceAxes axes_of(InferContext& c) {
  ReduceAxes r = resolve_reduce_axes(c.shape(0), c.attrs(), c.constant(1), c.has_input(1));
  if (!r.error.empty()) c.fail("{}", r.error);
  return r;
}

ReduceAxes axes_of(GradContext& c) {
  ValueId ax = c.input(1);
  const Tensor* t = ax == kNoValue ? nullptr : c.graph().initializer(ax);
  ReduceAxes r = resolve_reduce_axes(c.shape(c.input(0)), c.attrs(), t, ax != kNoValue);
  TRAINER_ASSERT(r.error.empty(), "{}", r.error);
  return r;
}

void infer_reduce(InferContext& c) {
  if (c.has_input(1) && c.dtype(1) != DType::i64) c.fail("axes must be i64, got {}", dtype_name(c.dtype(1)));
  ReduceAxes r = axes_of(c);
  if (r.identity) {
    c.set_output(0, c.dtype(0), c.shape(0));
    return;
  }
  c.set_output(0, c.dtype(0), reduced_shape(c.shape(0), r.axes, c.attrs().i("keepdims") != 0));
}

// dy (the reduced shape) -> the input's shape: Reshape to the keepdims form, then Expand.
ValueId broadcast_back(GradContext& c, ValueId g, const ReduceAxes& r) {
  const Shape xs = c.shape(c.input(0));  // a copy: c.op() below can reallocate the graph's value table
  if (r.identity) return g;
  Shape keep = reduced_shape(xs, r.axes, true);
  if (c.shape(g) != keep) g = c.op("Reshape", {g, c.constant_i64(keep.dims())});
  if (keep != xs) g = c.op("Expand", {g, c.constant_i64(xs.dims())});
  return g;
}

OpSchema reduce_schema(const char* name, int since) {
  OpSchema s(name);
  s.since(since)
      .doc(
          "Reduces along `axes` (a constant i64 input, or the older attribute); no axes means all axes, "
          "unless noop_with_empty_axes = 1.")
      .inputs(1, 2)
      .attr("keepdims", int64_t{1})
      .attr("noop_with_empty_axes", int64_t{0})
      .attr_optional("axes", AttrType::ints)
      .no_grad_inputs({1})
      .infer(infer_reduce);
  return s;
}

std::vector<OpExample> reduce_examples(double lo, double hi) {
  auto with_axes = [&](std::string label, Shape s, std::vector<int64_t> axes, int64_t keep, uint64_t seed) {
    OpExample e =
        example(std::move(label), {random_tensor(s, lo, hi, seed), i64_tensor(axes)}, {{"keepdims", keep}});
    e.constant[1] = true;
    return e;
  };
  std::vector<OpExample> v;
  v.push_back(with_axes("last axis keepdims", {2, 3, 4}, {-1}, 1, 41));
  v.push_back(with_axes("first axis dropped", {3, 4}, {0}, 0, 42));
  v.push_back(with_axes("middle axis", {2, 3, 4}, {1}, 1, 43));
  v.push_back(with_axes("outer and inner axes", {2, 3, 2, 2}, {0, 2, 3}, 0, 44));
  v.push_back(example("all axes", {random_tensor({2, 3}, lo, hi, 45)}, {{"keepdims", int64_t{0}}}));
  v.push_back(example("attribute axes", {random_tensor({2, 3, 2}, lo, hi, 46)},
                      {{"axes", std::vector<int64_t>{1, 2}}}));
  OpExample noop = example("noop with empty axes", {random_tensor({2, 3}, lo, hi, 47), i64_tensor({})},
                           {{"noop_with_empty_axes", int64_t{1}}});
  noop.constant[1] = true;
  v.push_back(noop);
  return v;
}

// Softmax and LogSoftmax (opset 13: along one axis).
void infer_softmax(InferContext& c) {
  c.expect_float(0);
  if (normalize_axis(c.attrs().i("axis"), c.rank(0)) < 0)
    c.fail("axis {} is out of range for rank {}", c.attrs().i("axis"), c.rank(0));
  infer_like_input0(c);
}

std::vector<OpExample> softmax_examples() {
  return {
      example("last axis", {random_tensor({3, 5}, -2, 2, 51)}),
      example("middle axis", {random_tensor({2, 4, 3}, -2, 2, 52)}, {{"axis", int64_t{1}}}),
      example("first axis", {random_tensor({3, 2}, -2, 2, 53)}, {{"axis", int64_t{0}}}),
      example("vector", {random_tensor({6}, -3, 3, 54)}),
  };
}

// (dy, y) -> dx along `axis`.
OpSchema softmax_grad_schema(const char* name) {
  OpSchema s(name, kPrivateDomain);
  s.inputs(2, 2)
      .attr("axis", int64_t{-1})
      .infer([](InferContext& c) {
        if (c.shape(0) != c.shape(1)) c.fail("dy and y must have the same shape");
        c.expect_same_dtype(0, 1);
        infer_softmax(c);
      })
      .non_differentiable(kGradOpReason)
      .inplace(0, 0);
  return s;
}

}  // namespace

void register_reduce_ops(OpRegistry& r) {
  r.add(reduce_schema("ReduceSum", 13)
            .grad([](GradContext& c) { c.set_grad(0, broadcast_back(c, c.dy(), axes_of(c))); })
            .examples([] { return reduce_examples(-1, 1); }));

  r.add(reduce_schema("ReduceMean", 18)
            .grad([](GradContext& c) {
              ReduceAxes ax = axes_of(c);
              int64_t out_n = c.shape(c.output(0)).numel();
              int64_t count = out_n ? c.shape(c.input(0)).numel() / out_n : 1;
              ValueId g = c.dy();
              // Scale the small tensor before broadcasting it.
              if (count != 1) g = c.op("Mul", {g, c.scalar(1.0 / static_cast<double>(count), c.dtype(g))});
              c.set_grad(0, broadcast_back(c, g, ax));
            })
            .examples([] { return reduce_examples(-1, 1); }));

  r.add(reduce_schema("ReduceMax", 18)
            .doc("Maximum along `axes`; a group holding NaN gives NaN, as numpy's max. Gradient: dy goes "
                 "to the first position (in row-major order) holding the group's value (its first NaN, "
                 "else its first maximum); tied positions after it get zero, so the result is "
                 "deterministic.")
            .grad([](GradContext& c) {
              ReduceAxes ax = axes_of(c);
              if (ax.identity) {
                c.set_grad(0, c.dy());
                return;
              }
              std::vector<int64_t> axes(ax.axes.begin(), ax.axes.end());
              c.set_grad(0, c.op("ReduceMaxGrad", {c.input(0), c.dy()}, {{"axes", axes}}));
            })
            .examples([] {
              auto v = reduce_examples(-1, 1);
              // Ties: the first maximum takes the whole gradient (forward-only; a tie is a kink).
              OpExample tie =
                  example("ties", {Tensor::from<double>({2, 3}, {1, 3, 3, 2, 2, 0.5}), i64_tensor({1})});
              tie.constant[1] = true;
              tie.grad_check = false;
              v.push_back(tie);
              return v;
            }));

  r.add(OpSchema("ReduceMaxGrad", kPrivateDomain)
            .doc("(x, dy) -> dx: dy at the first NaN, else the first maximum, of each group reduced over "
                 "`axes` (normalized), zero elsewhere.")
            .inputs(2, 2)
            .attr_required("axes", AttrType::ints)
            .infer([](InferContext& c) {
              c.expect_same_dtype(0, 1);
              std::vector<int> axes;
              for (int64_t a : c.attrs().ints("axes")) {
                int n = normalize_axis(a, c.rank(0));
                if (n < 0) c.fail("axis {} is out of range for rank {}", a, c.rank(0));
                axes.push_back(n);
              }
              std::sort(axes.begin(), axes.end());
              if (c.shape(1).numel() != reduced_shape(c.shape(0), axes, true).numel())
                c.fail("dy has {} elements, the reduction of x has {}", c.shape(1).numel(),
                       reduced_shape(c.shape(0), axes, true).numel());
              infer_like_input0(c);
            })
            .non_differentiable(kGradOpReason));

  r.add(OpSchema("Softmax")
            .since(13)
            .doc("exp(x) / sum(exp(x)) along one axis (opset 13 semantics), computed as exp(x - max).")
            .attr("axis", int64_t{-1})
            .infer(infer_softmax)
            .grad([](GradContext& c) {
              c.set_grad(0, c.op("SoftmaxGrad", {c.dy(), c.output(0)}, {{"axis", c.attrs().i("axis")}}));
            })
            .examples(softmax_examples));
  r.add(OpSchema("LogSoftmax")
            .since(13)
            .doc("x - log(sum(exp(x))) along one axis (opset 13 semantics), computed with the maximum "
                 "subtracted.")
            .attr("axis", int64_t{-1})
            .infer(infer_softmax)
            .grad([](GradContext& c) {
              c.set_grad(0, c.op("LogSoftmaxGrad", {c.dy(), c.output(0)}, {{"axis", c.attrs().i("axis")}}));
            })
            .examples(softmax_examples));
  r.add(softmax_grad_schema("SoftmaxGrad").doc("(dy, y) -> y * (dy - sum(dy * y)) along `axis`."));
  r.add(softmax_grad_schema("LogSoftmaxGrad").doc("(dy, y) -> dy - exp(y) * sum(dy) along `axis`."));
}

}  // namespace trainer::engine::ops
