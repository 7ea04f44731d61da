// Op family 'loss': ONNX's SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss, and the private elementwise
// losses of the Keras vocabulary (BinaryCrossEntropy, BinaryCrossEntropyWithLogits, MeanSquaredError,
// MeanAbsoluteError). Each gradient is one private op that writes d(loss)/d(first input) in a single pass.
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

void check_reduction(InferContext& c) {
  const std::string& r = c.attrs().s("reduction");
  if (r != "mean" && r != "sum" && r != "none")
    c.fail("reduction must be 'mean', 'sum' or 'none', got '{}'", r);
}

// A loss output: one value per element (or position) for reduction 'none', else a scalar.
Shape loss_shape(InferContext& c, const Shape& per_element) {
  return c.attrs().s("reduction") == "none" ? per_element : Shape{};
}

// ---- class-index losses: scores N x C x D1..., labels N x D1... ----

// Checks (scores, labels, [weights]) at inputs first, first+1, first+2 and returns the labels' shape.
Shape check_class_inputs(InferContext& c, int first) {
  c.expect_float(first);
  const Shape& s = c.shape(first);
  if (s.rank() < 2) c.fail("scores must be N x C x ..., got {}", s.str());
  DType lt = c.dtype(first + 1);
  if (lt != DType::i32 && lt != DType::i64) c.fail("labels must be int32 or int64, got {}", dtype_name(lt));
  std::vector<int64_t> want = s.dims();
  want.erase(want.begin() + 1);
  if (c.shape(first + 1) != Shape(want))
    c.fail("labels must have the shape of the scores without the class axis, {}", Shape(want).str());
  if (c.has_input(first + 2)) {
    c.expect_same_dtype(first, first + 2);
    if (c.shape(first + 2) != Shape{s[1]}) c.fail("weights must have shape [{}] (one per class)", s[1]);
  }
  check_reduction(c);
  return Shape(want);
}

void infer_softmax_cross_entropy(InferContext& c) {
  Shape labels = check_class_inputs(c, 0);
  c.set_output(0, c.dtype(0), loss_shape(c, labels));
  if (c.num_outputs() > 1) c.set_output(1, c.dtype(0), c.shape(0));
}

void infer_nll(InferContext& c) {
  Shape labels = check_class_inputs(c, 0);
  c.set_output(0, c.dtype(0), loss_shape(c, labels));
}

// (dloss, scores, labels, [weights], ...) -> dscores.
void infer_class_loss_grad(InferContext& c) {
  Shape labels = check_class_inputs(c, 1);
  if (c.shape(0) != loss_shape(c, labels))
    c.fail("dloss has shape {}, the loss {}", c.shape(0).str(), loss_shape(c, labels).str());
  if (c.has_input(4) && c.shape(4) != c.shape(1)) c.fail("d log_prob must have the shape of the scores");
  c.set_output(0, c.dtype(1), c.shape(1));
}

Attributes class_loss_attrs(const GradContext& c) {
  Attributes a{{"reduction", c.attrs().s("reduction")}};
  if (c.attrs().has("ignore_index")) a.set("ignore_index", c.attrs().i("ignore_index"));
  return a;
}

void grad_softmax_cross_entropy(GradContext& c) {
  c.set_grad(0, c.op("SoftmaxCrossEntropyLossGrad",
                     {c.grad_output_or_zeros(0), c.input(0), c.input(1), c.input(2), c.grad_output(1)},
                     class_loss_attrs(c)));
}

void grad_nll(GradContext& c) {
  c.set_grad(0, c.op("NegativeLogLikelihoodLossGrad", {c.dy(), c.input(0), c.input(1), c.input(2)},
                     class_loss_attrs(c)));
}

// Labels and class weights are constants of the example, as in training.
OpExample class_example(std::string label, Tensor scores, Tensor labels, Tensor weights, Attributes attrs,
                        int num_outputs = 1) {
  bool has_weights = weights.numel() > 0 && weights.shape().rank() == 1;
  OpExample e =
      example(std::move(label), {std::move(scores), std::move(labels), std::move(weights)}, std::move(attrs));
  e.constant = {false, true, true};
  e.absent[2] = !has_weights;
  e.num_outputs = num_outputs;
  return e;
}

std::vector<OpExample> class_loss_examples(double lo, double hi, bool log_prob) {
  std::vector<OpExample> out;
  out.push_back(class_example("mean NC", random_tensor({3, 4}, lo, hi, 71), random_int_tensor({3}, 0, 4, 72),
                              Tensor(), {}));
  out.push_back(class_example("sum NCD with weights", random_tensor({2, 3, 2}, lo, hi, 73),
                              random_int_tensor({2, 2}, 0, 3, 74), random_tensor({3}, 0.5, 2, 75),
                              {{"reduction", std::string("sum")}}, log_prob ? 2 : 1));
  out.push_back(class_example("none with ignore_index", random_tensor({4, 3}, lo, hi, 76),
                              i64_tensor({0, 2, -1, 1}), Tensor(),
                              {{"reduction", std::string("none")}, {"ignore_index", int64_t{-1}}}));
  out.push_back(class_example(
      "mean NCD1D2 i32 labels, weights and ignore_index", random_tensor({2, 3, 2, 2}, lo, hi, 77),
      Tensor::from<int32_t>({2, 2, 2}, {0, 1, 2, 1, 2, 0, 1, 0}), random_tensor({3}, 0.5, 2, 78),
      {{"ignore_index", int64_t{1}}}, log_prob ? 2 : 1));
  return out;
}

// ---- elementwise losses: (prediction, target) of one shape ----

void infer_elementwise_loss(InferContext& c) {
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  if (c.shape(0) != c.shape(1))
    c.fail("prediction {} and target {} must have the same shape", c.shape(0).str(), c.shape(1).str());
  check_reduction(c);
  if (c.attrs().has("epsilon") && !(c.attrs().f("epsilon") >= 0 && c.attrs().f("epsilon") < 0.5f))
    c.fail("epsilon must be in [0, 0.5)");
  c.set_output(0, c.dtype(0), loss_shape(c, c.shape(0)));
}

// (dloss, prediction, target) -> dprediction.
void infer_elementwise_loss_grad(InferContext& c) {
  c.expect_same_dtype(1, 2);
  if (c.shape(1) != c.shape(2)) c.fail("prediction and target must have the same shape");
  if (c.shape(0) != loss_shape(c, c.shape(1))) c.fail("dloss has shape {}", c.shape(0).str());
  c.set_output(0, c.dtype(1), c.shape(1));
}

// The gradient with respect to the prediction; `symmetric` losses (functions of p - t) also give the
// target's.
GradFn elementwise_loss_grad(std::string grad_op, bool symmetric) {
  return [grad_op, symmetric](GradContext& c) {
    Attributes a = c.attrs();
    ValueId dp = c.op(grad_op, {c.dy(), c.input(0), c.input(1)}, a);
    c.set_grad(0, dp);
    if (symmetric && c.needs_grad(1)) c.set_grad(1, c.op("Neg", {dp}));
  };
}

std::vector<OpExample> elementwise_loss_examples(double lo, double hi, double t_lo, double t_hi,
                                                 bool targets_const) {
  auto make = [&](std::string label, Shape s, const char* reduction, uint64_t seed) {
    OpExample e =
        example(std::move(label), {random_tensor(s, lo, hi, seed), random_tensor(s, t_lo, t_hi, seed + 1)},
                {{"reduction", std::string(reduction)}});
    e.constant[1] = targets_const;
    return e;
  };
  return {make("mean", {3, 2}, "mean", 81), make("sum", {4}, "sum", 83), make("none", {2, 3}, "none", 85)};
}

// Targets a fixed distance from the predictions, so |p - t| stays away from its kink.
std::vector<OpExample> absolute_error_examples() {
  std::vector<OpExample> out = elementwise_loss_examples(-1, 1, -1, 1, false);
  for (OpExample& e : out) {
    Tensor& t = e.inputs[1];
    for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, e.inputs[0].get_f64(i) + (i % 2 ? 0.5 : -0.7));
  }
  return out;
}

OpSchema elementwise_loss(const char* name, const char* grad_op, bool symmetric, ExamplesFn examples) {
  OpSchema s(name, kPrivateDomain);
  s.inputs(2, 2)
      .attr("reduction", std::string("mean"))
      .infer(infer_elementwise_loss)
      .grad(elementwise_loss_grad(grad_op, symmetric))
      .examples(std::move(examples));
  if (!symmetric) s.no_grad_inputs({1});
  return s;
}

OpSchema elementwise_loss_grad_schema(const char* name) {
  OpSchema s(name, kPrivateDomain);
  s.inputs(3, 3)
      .attr("reduction", std::string("mean"))
      .infer(infer_elementwise_loss_grad)
      .non_differentiable(kGradOpReason);
  return s;
}

}  // namespace

void register_loss_ops(OpRegistry& r) {
  r.add(OpSchema("SoftmaxCrossEntropyLoss")
            .since(13)
            .doc("Cross-entropy of softmax(scores) over axis 1 against class labels, by log-sum-exp; "
                 "optional class "
                 "weights, ignore_index and log_prob output")
            .inputs(2, 3)
            .outputs(1, 2)
            .attr("reduction", std::string("mean"))
            .attr_optional("ignore_index", AttrType::i)
            .no_grad_inputs({1, 2})
            .infer(infer_softmax_cross_entropy)
            .grad(grad_softmax_cross_entropy)
            .examples([] { return class_loss_examples(-2, 2, true); }));
  r.add(OpSchema("SoftmaxCrossEntropyLossGrad", kPrivateDomain)
            .doc("(dloss, scores, labels, [weights], [d log_prob]) -> dscores = (softmax - onehot) * weight "
                 "* scale")
            .inputs(3, 5)
            .attr("reduction", std::string("mean"))
            .attr_optional("ignore_index", AttrType::i)
            .infer(infer_class_loss_grad)
            .non_differentiable(kGradOpReason));

  r.add(OpSchema("NegativeLogLikelihoodLoss")
            .since(13)
            .doc("-input[n, label, d...] * weight[label], reduced; input holds log-probabilities")
            .inputs(2, 3)
            .attr("reduction", std::string("mean"))
            .attr_optional("ignore_index", AttrType::i)
            .no_grad_inputs({1, 2})
            .infer(infer_nll)
            .grad(grad_nll)
            .examples([] { return class_loss_examples(-3, -0.1, false); }));
  r.add(OpSchema("NegativeLogLikelihoodLossGrad", kPrivateDomain)
            .doc("(dloss, input, target, [weight]) -> dinput: -weight * scale at the label, zero elsewhere")
            .inputs(3, 4)
            .attr("reduction", std::string("mean"))
            .attr_optional("ignore_index", AttrType::i)
            .infer(infer_class_loss_grad)
            .non_differentiable(kGradOpReason));

  r.add(elementwise_loss("BinaryCrossEntropy", "BinaryCrossEntropyGrad", false,
                         [] { return elementwise_loss_examples(0.1, 0.9, 0, 1, true); })
            .doc("Binary cross-entropy of probabilities, clamped to [epsilon, 1 - epsilon] as Keras does")
            .attr("epsilon", 1e-7f));
  r.add(elementwise_loss_grad_schema("BinaryCrossEntropyGrad").attr("epsilon", 1e-7f));
  r.add(elementwise_loss("BinaryCrossEntropyWithLogits", "BinaryCrossEntropyWithLogitsGrad", false, [] {
          return elementwise_loss_examples(-3, 3, 0, 1, true);
        }).doc("Binary cross-entropy of logits: max(x, 0) - x t + log(1 + exp(-|x|))"));
  r.add(elementwise_loss_grad_schema("BinaryCrossEntropyWithLogitsGrad"));
  r.add(elementwise_loss("MeanSquaredError", "MeanSquaredErrorGrad", true, [] {
          return elementwise_loss_examples(-1, 1, -1, 1, false);
        }).doc("(prediction - target)^2, reduced"));
  r.add(elementwise_loss_grad_schema("MeanSquaredErrorGrad"));
  r.add(elementwise_loss("MeanAbsoluteError", "MeanAbsoluteErrorGrad", true, absolute_error_examples)
            .doc("|prediction - target|, reduced"));
  r.add(elementwise_loss_grad_schema("MeanAbsoluteErrorGrad"));
}

}  // namespace trainer::engine::ops
