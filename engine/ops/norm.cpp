// Op family 'norm': BatchNormalization, LayerNormalization and Dropout, with their gradient rules. Each
// gradient is one private op (BatchNormalizationGrad, LayerNormalizationGrad, DropoutGrad) that recomputes
// what it needs from the forward inputs, so the forward pass saves nothing extra and stays ONNX-shaped.
#include "engine/ir/op_schema.h"
#include "engine/ops/norm_dropout.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/sync_batch_norm.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

// ---- BatchNormalization ----

void infer_batch_norm(InferContext& c) {
  c.expect_float(0);
  if (c.rank(0) < 2) c.fail("X must be N x C x ..., got rank {}", c.rank(0));
  int64_t channels = c.shape(0)[1];
  const char* names[] = {"X", "scale", "B", "input_mean", "input_var"};
  for (int i = 1; i < 5; ++i) {
    c.expect_same_dtype(0, i);
    if (c.shape(i) != Shape{channels})
      c.fail("{} must have shape [{}] (the channels of X)", names[i], channels);
  }
  if (c.attrs().f("epsilon") < 0) c.fail("epsilon must not be negative");
  c.set_output(0, c.dtype(0), c.shape(0));
  for (int i = 1; i < c.num_outputs(); ++i) c.set_output(i, c.dtype(0), Shape{channels});
}

// (dY, X, scale, [input_mean], [input_var], [d running_mean], [d running_var]) -> dX, dscale, dB, [dmean,
// dvar]. input_mean and input_var are required in inference mode only.
void infer_batch_norm_grad(InferContext& c) {
  int64_t channels = c.shape(1)[1];
  if (c.shape(0) != c.shape(1)) c.fail("dY and X must have the same shape");
  if (c.attrs().i("training_mode") == 0 && (!c.has_input(3) || !c.has_input(4)))
    c.fail("input_mean and input_var are required outside training mode");
  for (int i = 2; i < c.num_inputs(); ++i)
    if (c.has_input(i) && c.shape(i) != Shape{channels}) c.fail("input {} must have shape [{}]", i, channels);
  c.set_output(0, c.dtype(1), c.shape(1));
  for (int i = 1; i < c.num_outputs(); ++i) c.set_output(i, c.dtype(1), Shape{channels});
}

void grad_batch_norm(GradContext& c) {
  bool want_stats = c.needs_grad(3) || c.needs_grad(4);
  bool training = c.attrs().i("training_mode") != 0;
  Attributes a{{"epsilon", c.attrs().f("epsilon")},
               {"momentum", c.attrs().f("momentum")},
               {"training_mode", c.attrs().i("training_mode")}};
  // In training mode the statistics come from X, so backward does not read input_mean and input_var: they are
  // usually state that this very node updates, and a reader after the update would make the step
  // unschedulable.
  ValueId mean = training ? kNoValue : c.input(3), var = training ? kNoValue : c.input(4);
  std::vector<ValueId> in{c.grad_output_or_zeros(0), c.input(0),      c.input(1), mean, var,
                          c.grad_output(1),          c.grad_output(2)};
  std::vector<ValueId> g = c.op_multi("BatchNormalizationGrad", in, a, want_stats ? 5 : 3);
  for (int i = 0; i < static_cast<int>(g.size()); ++i) c.set_grad(i, g[i]);
}

std::vector<OpExample> batch_norm_examples() {
  auto make = [](std::string label, Shape x, bool training, int num_outputs, uint64_t seed) {
    int64_t ch = x[1];
    OpExample e = example(std::move(label),
                          {random_tensor(x, -2, 2, seed), random_tensor({ch}, 0.5, 1.5, seed + 1),
                           random_tensor({ch}, -0.5, 0.5, seed + 2), random_tensor({ch}, -0.5, 0.5, seed + 3),
                           random_tensor({ch}, 0.5, 1.5, seed + 4)});
    if (training) e.attrs.set("training_mode", int64_t{1});
    e.num_outputs = num_outputs;
    return e;
  };
  std::vector<OpExample> out;
  out.push_back(make("inference NCHW", {2, 3, 2, 2}, false, 1, 41));
  out.push_back(make("inference NC", {4, 3}, false, 1, 42));
  out.back().attrs.set("epsilon", 1e-2f);
  out.push_back(make("training NCHW with running stats", {2, 3, 2, 3}, true, 3, 43));
  out.push_back(make("training NC", {5, 2}, true, 1, 44));
  out.push_back(make("training NCL momentum", {2, 2, 3}, true, 3, 45));
  out.back().attrs.set("momentum", 0.7f);
  out.back().attrs.set("epsilon", 1e-3f);
  return out;
}

// ---- ReplicaMean ----

// The examples run on one device, where the op is the identity; tests/cli/test_sync_batch_norm.py checks it
// across replicas.
std::vector<OpExample> replica_mean_examples() {
  std::vector<OpExample> out;
  out.push_back(example("channel statistics", {random_tensor({1, 3, 1, 1}, -2, 2, 61)}));
  out.push_back(example("vector", {random_tensor({5}, -2, 2, 62)}));
  return out;
}

// ---- LayerNormalization ----

// Splits X at `axis` into rows (the leading dims) and the normalized inner block.
int layer_norm_axis(InferContext& c) {
  int axis = normalize_axis(c.attrs().i("axis"), c.rank(0));
  if (axis < 0) c.fail("axis {} is out of range for rank {}", c.attrs().i("axis"), c.rank(0));
  return axis;
}

// Scale and B must hold one value per normalized element: the normalized shape, possibly with leading 1s.
void check_layer_norm_param(InferContext& c, int i, int axis, const char* name) {
  c.expect_same_dtype(0, i);
  const Shape& x = c.shape(0);
  const Shape& p = c.shape(i);
  int inner_rank = x.rank() - axis;
  bool ok = p.rank() >= inner_rank || p.numel() == 1;
  for (int k = 0; ok && k < p.rank(); ++k) {
    int xd = x.rank() - p.rank() + k;
    int64_t want = xd >= axis ? x[xd] : 1;
    if (p[k] != want) ok = false;
  }
  int64_t inner = 1;
  for (int k = axis; k < x.rank(); ++k) inner *= x[k];
  if (!ok || p.numel() != inner)
    c.fail("{} must have the normalized shape of X from axis {} on, got {}", name, axis, p.str());
}

DType layer_norm_stat_dtype(DType x) {
  return x == DType::f64 ? DType::f64 : DType::f32;
}

void infer_layer_norm(InferContext& c) {
  c.expect_float(0);
  int axis = layer_norm_axis(c);
  check_layer_norm_param(c, 1, axis, "Scale");
  if (c.has_input(2)) check_layer_norm_param(c, 2, axis, "B");
  c.set_output(0, c.dtype(0), c.shape(0));
  Shape stat = c.shape(0);
  for (int k = axis; k < stat.rank(); ++k) stat[k] = 1;
  for (int i = 1; i < c.num_outputs(); ++i) c.set_output(i, layer_norm_stat_dtype(c.dtype(0)), stat);
}

// (dY, X, Scale, [d Mean], [d InvStdDev]) -> dX, dScale, [dB].
void infer_layer_norm_grad(InferContext& c) {
  int axis = normalize_axis(c.attrs().i("axis"), c.rank(1));
  if (axis < 0) c.fail("axis is out of range");
  if (c.shape(0) != c.shape(1)) c.fail("dY and X must have the same shape");
  c.set_output(0, c.dtype(1), c.shape(1));
  c.set_output(1, c.dtype(2), c.shape(2));
  if (c.num_outputs() > 2) c.set_output(2, c.dtype(2), c.shape(2));
}

void grad_layer_norm(GradContext& c) {
  bool want_bias = c.input(2) != kNoValue && c.needs_grad(2);
  Attributes a{{"axis", c.attrs().i("axis")}, {"epsilon", c.attrs().f("epsilon")}};
  std::vector<ValueId> g =
      c.op_multi("LayerNormalizationGrad",
                 {c.grad_output_or_zeros(0), c.input(0), c.input(1), c.grad_output(1), c.grad_output(2)}, a,
                 want_bias ? 3 : 2);
  c.set_grad(0, g[0]);
  c.set_grad(1, g[1]);
  if (want_bias) c.set_grad(2, g[2]);
}

std::vector<OpExample> layer_norm_examples() {
  std::vector<OpExample> out;
  out.push_back(example("last axis", {random_tensor({3, 4}, -2, 2, 51), random_tensor({4}, 0.5, 1.5, 52),
                                      random_tensor({4}, -0.5, 0.5, 53)}));
  OpExample stats = example("axis 1 with Mean and InvStdDev",
                            {random_tensor({2, 3, 2}, -2, 2, 54), random_tensor({3, 2}, 0.5, 1.5, 55),
                             random_tensor({3, 2}, -0.5, 0.5, 56)},
                            {{"axis", int64_t{1}}, {"epsilon", 1e-3f}});
  stats.num_outputs = 3;
  out.push_back(stats);
  OpExample no_bias =
      example("no bias, negative axis",
              {random_tensor({2, 2, 3}, -2, 2, 57), random_tensor({2, 3}, 0.5, 1.5, 58), Tensor()},
              {{"axis", int64_t{-2}}});
  no_bias.absent[2] = true;
  out.push_back(no_bias);
  return out;
}

// ---- Dropout ----

void infer_dropout(InferContext& c) {
  c.expect_float(0);
  if (c.has_input(1)) {
    c.expect_float(1);
    if (c.shape(1).numel() != 1) c.fail("ratio must be a scalar, got {}", c.shape(1).str());
    if (const Tensor* r = c.constant(1)) {
      double v = r->get_f64(0);
      if (!(v >= 0 && v < 1)) c.fail("ratio must be in [0, 1), got {}", v);
    }
  }
  if (c.has_input(2)) {
    if (c.dtype(2) != DType::boolean) c.fail("training_mode must be bool, got {}", dtype_name(c.dtype(2)));
    if (c.shape(2).numel() != 1) c.fail("training_mode must be a scalar, got {}", c.shape(2).str());
  }
  c.set_output(0, c.dtype(0), c.shape(0));
  if (c.num_outputs() > 1) c.set_output(1, DType::boolean, c.shape(0));
}

// Training mode is off when the input is absent or a constant false: then Dropout is the identity.
bool dropout_surely_inference(GradContext& c) {
  ValueId tm = c.input(2);
  if (tm == kNoValue) return true;
  const Tensor* t = c.graph().initializer(tm);
  return t && c.graph().value(tm).kind == ValueKind::constant && t->get_f64(0) == 0;
}

void grad_dropout(GradContext& c) {
  if (dropout_surely_inference(c)) {
    c.set_grad(0, c.dy());
    return;
  }
  // DropoutGrad regenerates the forward mask from the same (seed, stream, step), so no mask tensor stays
  // alive between forward and backward. The stream is the forward node's, passed explicitly.
  Attributes a{{"stream", static_cast<int64_t>(dropout_stream(c.node().name))}};
  if (c.attrs().has("seed")) a.set("seed", c.attrs().i("seed"));
  if (c.attrs().has(kRowsPerSample)) a.set(kRowsPerSample, c.attrs().i(kRowsPerSample));
  c.set_grad(0, c.op("DropoutGrad", {c.dy(), c.input(1), c.input(2)}, a));
}

// RandomNormalLike and RandomUniformLike: the input gives the shape (and, without dtype, the type) of the
// draw. ONNX's dtype is a TensorProto type: float (1) or double (11) here.
void infer_random_like(InferContext& c) {
  DType t = c.dtype(0);
  if (c.attrs().has("dtype")) {
    const int64_t d = c.attrs().i("dtype");
    if (d != 1 && d != 11) c.fail("dtype {} is not supported; use float (1) or double (11)", d);
    t = d == 1 ? DType::f32 : DType::f64;
  }
  if (t != DType::f32 && t != DType::f64) c.fail("the draw must be float or double, got {}", dtype_name(t));
  c.set_output(0, t, c.shape(0));
}

std::vector<OpExample> random_like_examples(bool normal) {
  std::vector<OpExample> out;
  OpExample plain = example("default", {random_tensor({4, 6}, -1, 1, 65)});
  Attributes moved = normal ? Attributes{{"mean", 2.0f}, {"scale", 0.5f}, {"seed", 3.0f}}
                            : Attributes{{"low", -2.0f}, {"high", 4.0f}, {"seed", 3.0f}};
  OpExample shifted = example("moved, seeded", {random_tensor({3, 2, 5}, -1, 1, 66)}, std::move(moved));
  for (OpExample* e : {&plain, &shifted}) {
    e->grad_check = false;
    out.push_back(std::move(*e));
  }
  return out;
}

// The schema of RandomNormalLike and RandomUniformLike, with their two float attributes and defaults.
OpSchema random_like_schema(const char* name, const char* doc, std::pair<const char*, float> first,
                            std::pair<const char*, float> second) {
  const bool normal = std::string(name) == "RandomNormalLike";
  OpSchema s(name);
  s.since(1)
      .doc(doc)
      .inputs(1, 1)
      .attr_optional("dtype", AttrType::i)
      .attr(first.first, first.second)
      .attr(second.first, second.second)
      .attr_optional("seed", AttrType::f)
      .attr_optional(kRowsPerSample, AttrType::i)
      .infer(infer_random_like)
      .non_differentiable("a random draw: its values do not depend on the input's")
      .examples([normal] { return random_like_examples(normal); });
  return s;
}

std::vector<OpExample> dropout_examples() {
  std::vector<OpExample> out;
  OpExample inference = example("inference", {random_tensor({3, 4}, -1, 1, 61)});
  inference.num_outputs = 2;
  out.push_back(inference);
  OpExample train = example("training ratio 0.3", {random_tensor({4, 5}, -1, 1, 62),
                                                   Tensor::scalar<float>(0.3f), Tensor::scalar<bool>(true)});
  train.constant = {false, true, true};
  train.num_outputs = 2;
  out.push_back(train);
  OpExample seeded = example("training default ratio, seed attribute",
                             {random_tensor({2, 3, 3}, -1, 1, 63), Tensor(), Tensor::scalar<bool>(true)},
                             {{"seed", int64_t{5}}});
  seeded.absent[1] = true;
  seeded.constant[2] = true;
  out.push_back(seeded);
  OpExample off = example("training_mode false", {random_tensor({5}, -1, 1, 64), Tensor::scalar<double>(0.5),
                                                  Tensor::scalar<bool>(false)});
  off.constant = {false, true, true};
  out.push_back(off);
  return out;
}

}  // namespace

BatchNormGraph batch_norm_graph(Graph& g, const BatchNormInputs& in) {
  const DType dt = g.value(in.x).dtype;
  const Shape xs = g.value(in.x).shape;
  const int64_t channels = xs[1];
  std::vector<int64_t> axes{0}, stat_shape(static_cast<size_t>(xs.rank()), 1);
  for (int k = 2; k < xs.rank(); ++k) axes.push_back(k);
  stat_shape[1] = channels;
  auto name = [&](const std::string& what) { return g.unique_name(in.name + "/" + what); };
  auto i64s = [&](const std::string& what, const std::vector<int64_t>& v) {
    return g.add_constant(name(what), Tensor::from<int64_t>(Shape{static_cast<int64_t>(v.size())}, v));
  };
  auto scalar = [&](const std::string& what, double v) {
    Tensor t(dt, Shape{});
    t.set_f64(0, v);
    return g.add_constant(name(what), std::move(t));
  };
  auto op = [&](const std::string& what, const char* op, std::vector<ValueId> ins, Attributes a = {}) {
    return g.node(g.add_node(op, std::move(ins), std::move(a), 1, name(what))).outputs[0];
  };
  const Attributes keep{{"keepdims", int64_t{1}}};
  const ValueId reduce_axes = i64s("axes", axes);
  // A mean over the rows, of this replica's or (across replicas) the global batch's.
  auto mean_of = [&](const std::string& what, ValueId v) {
    const ValueId local = op("local_" + what, "ReduceMean", {v, reduce_axes}, keep);
    return in.across_replicas ? op(what, "ReplicaMean", {local}) : local;
  };
  // With weights, each mean is a weighted sum over the sum of the weights; a batch with no weight (every step
  // masked) has a zero mean and variance.
  ValueId weight_mean = kNoValue;
  auto weighted_mean_of = [&](const std::string& what, ValueId v) {
    if (in.weights == kNoValue) return mean_of(what, v);
    const ValueId sum = mean_of(what + "_weighted", op(what + "_terms", "Mul", {v, in.weights}));
    if (weight_mean == kNoValue)
      weight_mean = op("weight_floor", "Max", {mean_of("weights", in.weights), scalar("tiny", 1e-30)});
    return op(what, "Div", {sum, weight_mean});
  };
  const ValueId mean = weighted_mean_of("mean", in.x);
  const ValueId centred = op("centred", "Sub", {in.x, mean});
  const ValueId var = weighted_mean_of("variance", op("squares", "Mul", {centred, centred}));
  const ValueId stddev =
      op("stddev", "Sqrt", {op("variance_epsilon", "Add", {var, scalar("epsilon", in.epsilon)})});
  const ValueId per_channel = i64s("channel_shape", stat_shape);
  ValueId y = op("normalized", "Div", {centred, stddev});
  if (in.scale != kNoValue) y = op("scaled", "Mul", {y, op("scale", "Reshape", {in.scale, per_channel})});
  if (in.bias != kNoValue) y = op("y", "Add", {y, op("bias", "Reshape", {in.bias, per_channel})});
  // ONNX's and Keras's running statistics: running * momentum + batch * (1 - momentum), with the biased
  // variance.
  const ValueId flat = i64s("flat_shape", {channels});
  auto running = [&](const std::string& what, ValueId batch, ValueId old) {
    if (old == kNoValue) return kNoValue;
    return op(
        what, "Add",
        {op(what + "_kept", "Mul", {old, scalar("momentum", in.momentum)}),
         op(what + "_new", "Mul",
            {op(what + "_batch", "Reshape", {batch, flat}), scalar("one_minus_momentum", 1 - in.momentum)})});
  };
  return {y, running("running_mean", mean, in.running_mean), running("running_var", var, in.running_var)};
}

bool synchronize_batch_norm(Graph& g, NodeId id) {
  const Node bn = g.node(id);  // a copy: adding nodes below can reallocate the node table
  if (bn.dead || bn.op != "BatchNormalization" || bn.attrs.i("training_mode") == 0) return false;
  const DType dt = g.value(bn.inputs[0]).dtype;
  if (dt != DType::f32 && dt != DType::f64)
    throw InputError(bn.name,
                     fmt::format("synchronized batch normalization '{}' takes f32 or f64 input, got {}",
                                 bn.name, dtype_name(dt)),
                     "run the model in f32, or leave its batch normalization unsynchronized");
  auto wanted = [&](size_t i) { return bn.outputs.size() > i && bn.outputs[i] != kNoValue; };
  BatchNormInputs in;
  in.name = bn.name;
  in.x = bn.inputs[0];
  in.scale = bn.inputs[1];
  in.bias = bn.inputs[2];
  in.running_mean = wanted(1) ? bn.inputs[3] : kNoValue;
  in.running_var = wanted(2) ? bn.inputs[4] : kNoValue;
  in.epsilon = bn.attrs.f("epsilon");
  in.momentum = bn.attrs.f("momentum");
  in.across_replicas = true;
  const BatchNormGraph made = batch_norm_graph(g, in);
  g.erase_node(id);
  const ValueId outs[3] = {made.y, made.running_mean, made.running_var};
  for (size_t i = 0; i < 3; ++i)
    if (outs[i] != kNoValue) g.move_output(g.value(outs[i]).producer, 0, bn.outputs[i]);
  return true;
}

std::vector<NodeId> training_batch_norms(const Graph& g) {
  std::vector<NodeId> out;
  for (NodeId id = 0; id < g.num_nodes(); ++id) {
    const Node& n = g.node(id);
    if (!n.dead && n.op == "BatchNormalization" && n.attrs.i("training_mode") != 0) out.push_back(id);
  }
  return out;
}

void register_norm_ops(OpRegistry& r) {
  r.add(OpSchema("BatchNormalization")
            .since(15)
            .doc("Per-channel normalization of N x C x ...; training_mode=1 uses batch statistics and "
                 "updates the "
                 "running ones (outputs 1 and 2, biased variance, as ONNX specifies)")
            .inputs(5, 5)
            .outputs(1, 3)
            .attr("epsilon", 1e-5f)
            .attr("momentum", 0.9f)
            .attr("training_mode", int64_t{0})
            .infer(infer_batch_norm)
            .grad(grad_batch_norm)
            .examples(batch_norm_examples));
  r.add(
      OpSchema("BatchNormalizationGrad", kPrivateDomain)
          .doc(
              "dX, dscale, dB (and d input_mean, d input_var) of BatchNormalization, in one pass per channel")
          .inputs(3, 7)
          .outputs(3, 5)
          .attr("epsilon", 1e-5f)
          .attr("momentum", 0.9f)
          .attr("training_mode", int64_t{0})
          .infer(infer_batch_norm_grad)
          .non_differentiable(kGradOpReason));

  // Across data-parallel replicas, replica r holding share w_r of the global batch's rows: y = sum_r w_r x_r,
  // the same on every replica (the mean over the global batch, when each x_r is a mean over replica r's
  // rows). Its gradient is the same op: replica r's loss gradient is weighted by w_r where the replicas'
  // gradients are summed, so dL/dx_r = w_r sum_s w_s dy_s takes the place of w_r dx_r. One device: the
  // identity. The plan turns every output into a reduction bucket of its own (engine/plan/planner.cpp).
  r.add(OpSchema("ReplicaMean", kPrivateDomain)
            .doc("Mean across data-parallel replicas, weighted by each replica's share of the global batch; "
                 "the identity on one device")
            .inputs(1, 1)
            .infer([](InferContext& c) {
              if (c.dtype(0) != DType::f32 && c.dtype(0) != DType::f64)
                c.fail("X must be f32 or f64, got {}", dtype_name(c.dtype(0)));
              c.set_output(0, c.dtype(0), c.shape(0));
            })
            .inplace(0, 0)
            .grad([](GradContext& c) { c.set_grad(0, c.op("ReplicaMean", {c.dy()})); })
            .examples(replica_mean_examples));

  r.add(OpSchema("LayerNormalization")
            .since(17)
            .doc("Normalizes over the dims from `axis` on; optional outputs Mean and InvStdDev (f64 for f64 "
                 "inputs, "
                 "else f32)")
            .inputs(2, 3)
            .outputs(1, 3)
            .attr("axis", int64_t{-1})
            .attr("epsilon", 1e-5f)
            .attr("stash_type", int64_t{1})
            .infer(infer_layer_norm)
            .grad(grad_layer_norm)
            .examples(layer_norm_examples));
  r.add(OpSchema("LayerNormalizationGrad", kPrivateDomain)
            .doc("dX, dScale and dB of LayerNormalization; recomputes the row statistics")
            .inputs(3, 5)
            .outputs(2, 3)
            .attr("axis", int64_t{-1})
            .attr("epsilon", 1e-5f)
            .infer(infer_layer_norm_grad)
            .non_differentiable(kGradOpReason));

  r.add(OpSchema("Dropout")
            .since(13)
            .doc("Keeps each element with probability 1 - ratio and scales it by 1 / (1 - ratio) when "
                 "training; the "
                 "mask comes from Philox keyed by (step seed ^ seed attribute, hash of the node name, step, "
                 "element)")
            .inputs(1, 3)
            .outputs(1, 2)
            .attr_optional("seed", AttrType::i)
            .attr_optional(kRowsPerSample, AttrType::i)
            .no_grad_inputs({1, 2})
            .inplace(0, 0)
            .infer(infer_dropout)
            .grad(grad_dropout)
            .examples(dropout_examples));
  r.add(random_like_schema(
      "RandomNormalLike",
      "A draw of N(mean, scale^2) of the input's shape, from Philox keyed as Dropout's masks "
      "are (step seed ^ seed attribute, hash of the node name, step, element): the same on "
      "every backend, replica count and resume",
      {"mean", 0.0f}, {"scale", 1.0f}));
  r.add(random_like_schema("RandomUniformLike",
                           "A draw of U[low, high) of the input's shape, keyed as "
                           "RandomNormalLike's",
                           {"low", 0.0f}, {"high", 1.0f}));
  r.add(OpSchema("DropoutGrad", kPrivateDomain)
            .doc("(dy, [ratio], [training_mode]) -> dx: regenerates the forward node's mask from its stream")
            .inputs(1, 3)
            .attr_optional("seed", AttrType::i)
            .attr_optional(kRowsPerSample, AttrType::i)
            .attr_required("stream", AttrType::i)
            .inplace(0, 0)
            .infer(infer_dropout)
            .non_differentiable(kGradOpReason));
}

}  // namespace trainer::engine::ops
