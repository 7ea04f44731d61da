// Op family 'matmul': MatMul (numpy semantics), Gemm, the private MatMulTransposed that backward passes use
// instead of Transpose copies, and FusedGemm, the bias + activation epilogue the planner's fusion rewrites
// into.
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

// Output shape of a batched product of a [..., M, K] and b [..., K, N] (each optionally transposed in its
// last two dims), with numpy broadcasting of the batch dims. 1-D operands are promoted as numpy does (only
// without transposes).
std::string matmul_shape(Shape a, Shape b, bool ta, bool tb, Shape* out) {
  if (a.rank() == 0 || b.rank() == 0) return "operands must have rank 1 or more";
  bool a_vec = a.rank() == 1, b_vec = b.rank() == 1;
  if ((a_vec && ta) || (b_vec && tb)) return "a transposed operand must have rank 2 or more";
  if (a_vec) a = Shape{1, a[0]};
  if (b_vec) b = Shape{b[0], 1};
  int ra = a.rank(), rb = b.rank();
  int64_t m = ta ? a[ra - 1] : a[ra - 2], ka = ta ? a[ra - 2] : a[ra - 1];
  int64_t kb = tb ? b[rb - 1] : b[rb - 2], n = tb ? b[rb - 2] : b[rb - 1];
  if (ka != kb) return fmt::format("inner dimensions differ: {} and {}", ka, kb);
  Shape batch;
  if (!broadcast_shapes(Shape(std::vector<int64_t>(a.dims().begin(), a.dims().end() - 2)),
                        Shape(std::vector<int64_t>(b.dims().begin(), b.dims().end() - 2)), &batch))
    return "batch dimensions do not broadcast";
  std::vector<int64_t> d = batch.dims();
  if (!a_vec) d.push_back(m);
  if (!b_vec) d.push_back(n);
  *out = Shape(d);
  return {};
}

void infer_matmul_like(InferContext& c, bool ta, bool tb) {
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  Shape out;
  std::string err = matmul_shape(c.shape(0), c.shape(1), ta, tb, &out);
  if (!err.empty()) c.fail("{}", err);
  c.set_output(0, c.dtype(0), out);
}

// x·y with optional transposes and a scale: one MatMulTransposed node.
ValueId mm(GradContext& c, ValueId x, bool tx, ValueId y, bool ty, float alpha = 1.0f) {
  return c.op("MatMulTransposed", {x, y},
              {{"transA", int64_t{tx}}, {"transB", int64_t{ty}}, {"alpha", alpha}});
}

// `s` by value: callers pass shapes that live in the graph, which emitting nodes can move.
ValueId reshape(GradContext& c, ValueId x, Shape s) {
  if (c.shape(x) == s) return x;
  return c.op("Reshape", {x, c.constant_i64(s.dims())});
}

// Gradients of y = alpha · op_a(a) · op_b(b) for operands of rank >= 2 with batch broadcasting, given dy.
void matmul_grads(GradContext& c, ValueId a, bool ta, ValueId b, bool tb, ValueId dy, float alpha,
                  ValueId* da, ValueId* db, bool need_a, bool need_b) {
  const Shape sa = c.shape(a), sb = c.shape(b), sy = c.shape(dy);
  if (need_a) {
    // d(op_a(a)) = dy · op_b(b)^T; when a is transposed, da = op_b(b) · dy^T.
    ValueId g = ta ? mm(c, b, tb, dy, true, alpha) : mm(c, dy, false, b, !tb, alpha);
    *da = c.reduce_to(g, sa);
  }
  if (need_b) {
    if (sb.rank() == 2 && sa.rank() > 2 && !ta) {
      // A 2-D weight shared across a batch: fold the batch into the rows so one GEMM sums over it.
      int64_t rows = sa.numel() / sa[sa.rank() - 1];
      ValueId a2 = reshape(c, a, Shape{rows, sa[sa.rank() - 1]});
      ValueId dy2 = reshape(c, dy, Shape{rows, sy[sy.rank() - 1]});
      *db = tb ? mm(c, dy2, true, a2, false, alpha) : mm(c, a2, true, dy2, false, alpha);
    } else {
      // d(op_b(b)) = op_a(a)^T · dy; when b is transposed, db = dy^T · op_a(a).
      ValueId g = tb ? mm(c, dy, true, a, ta, alpha) : mm(c, a, !ta, dy, false, alpha);
      *db = c.reduce_to(g, sb);
    }
  }
}

void matmul_grad(GradContext& c) {
  ValueId a = c.input(0), b = c.input(1), dy = c.dy();
  Shape sa = c.shape(a), sb = c.shape(b);
  // Promote 1-D operands (free reshapes) so one rule covers every case, then reshape the gradients back.
  Shape pa = sa.rank() == 1 ? Shape{1, sa[0]} : sa;
  Shape pb = sb.rank() == 1 ? Shape{sb[0], 1} : sb;
  Shape py;
  matmul_shape(pa, pb, false, false, &py);
  ValueId a2 = reshape(c, a, pa), b2 = reshape(c, b, pb), dy2 = reshape(c, dy, py);
  ValueId da = kNoValue, db = kNoValue;
  matmul_grads(c, a2, false, b2, false, dy2, 1.0f, &da, &db, c.needs_grad(0), c.needs_grad(1));
  if (c.needs_grad(0)) c.set_grad(0, reshape(c, da, sa));
  if (c.needs_grad(1)) c.set_grad(1, reshape(c, db, sb));
}

void infer_gemm(InferContext& c) {
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  c.expect_rank(0, 2);
  c.expect_rank(1, 2);
  bool ta = c.attrs().i("transA") != 0, tb = c.attrs().i("transB") != 0;
  int64_t m = c.shape(0)[ta ? 1 : 0], ka = c.shape(0)[ta ? 0 : 1];
  int64_t kb = c.shape(1)[tb ? 1 : 0], n = c.shape(1)[tb ? 0 : 1];
  if (ka != kb) c.fail("inner dimensions differ: {} and {}", ka, kb);
  if (c.has_input(2)) {
    c.expect_same_dtype(0, 2);
    const Shape& s = c.shape(2);
    Shape out;
    // C broadcasts one way, to [M, N].
    if (s.rank() > 2 || !broadcast_shapes(s, Shape{m, n}, &out) || out != Shape{m, n})
      c.fail("C of shape {} does not broadcast to [{}, {}]", s.str(), m, n);
  }
  c.set_output(0, c.dtype(0), Shape{m, n});
}

void gemm_grad(GradContext& c) {
  bool ta = c.attrs().i("transA") != 0, tb = c.attrs().i("transB") != 0;
  float alpha = c.attrs().f("alpha"), beta = c.attrs().f("beta");
  ValueId da = kNoValue, db = kNoValue;
  matmul_grads(c, c.input(0), ta, c.input(1), tb, c.dy(), alpha, &da, &db, c.needs_grad(0), c.needs_grad(1));
  c.set_grad(0, da);
  c.set_grad(1, db);
  if (c.needs_grad(2)) {
    ValueId g = c.dy();
    if (beta != 1.0f) g = c.op("Mul", {g, c.scalar(beta, c.dtype(g))});
    c.set_grad(2, c.reduce_to(g, c.shape(c.input(2))));
  }
}

bool is_gelu(const std::string& act) {
  return act == "gelu" || act == "gelu_tanh";
}

void infer_fused_gemm(InferContext& c) {
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  const std::string& act = c.attrs().s("activation");
  if (act != "none" && act != "relu" && !is_gelu(act))
    c.fail("activation must be none, relu, gelu or gelu_tanh, got '{}'", act);
  bool ta = c.attrs().i("transA") != 0, tb = c.attrs().i("transB") != 0;
  if (c.rank(0) < 2) c.fail("A must have rank 2 or more");
  if (ta && c.rank(0) != 2) c.fail("a transposed A must have rank 2");
  c.expect_rank(1, 2);
  const Shape& sa = c.shape(0);
  int64_t ka = ta ? sa[0] : sa[sa.rank() - 1];
  int64_t kb = c.shape(1)[tb ? 1 : 0], n = c.shape(1)[tb ? 0 : 1];
  if (ka != kb) c.fail("inner dimensions differ: {} and {}", ka, kb);
  if (c.has_input(2)) {
    c.expect_same_dtype(0, 2);
    if (c.shape(2).numel() != n || c.shape(2).rank() > 2 || (c.shape(2).rank() == 2 && c.shape(2)[0] != 1))
      c.fail("bias must have shape [{}] or [1, {}]", n, n);
  }
  std::vector<int64_t> d = sa.dims();
  if (ta)
    d = {sa[1], n};
  else
    d.back() = n;
  c.set_output(0, c.dtype(0), Shape(d));
  if (c.has_output(1)) c.set_output(1, c.dtype(0), Shape(d));
}

// y = act(z), z = op_a(a) · op_b(b) + bias. Output 1, when present, holds z: gelu's gradient needs it.
void fused_gemm_grad(GradContext& c) {
  const std::string& act = c.attrs().s("activation");
  bool ta = c.attrs().i("transA") != 0, tb = c.attrs().i("transB") != 0;
  ValueId dy = c.grad_output(0), dz = kNoValue;
  if (dy != kNoValue) {
    if (act == "none") {
      dz = dy;
    } else if (act == "relu") {
      dz = c.op("ReluGrad", {dy, c.output(0)});
    } else {
      ValueId z = c.output(1);
      if (z == kNoValue) {
        // Without the saved pre-activation, recompute it: one more GEMM. The fusion pass asks for output 1.
        std::vector<ValueId> in = {c.input(0), c.input(1)};
        if (c.input(2) != kNoValue) in.push_back(c.input(2));
        z = c.op("FusedGemm", in,
                 {{"transA", int64_t{ta}}, {"transB", int64_t{tb}}, {"activation", std::string("none")}});
      }
      dz = c.op("GeluGrad", {dy, z}, {{"approximate", std::string(act == "gelu_tanh" ? "tanh" : "none")}});
    }
  }
  if (ValueId dz_direct = c.grad_output(1); dz_direct != kNoValue)
    dz = dz == kNoValue ? dz_direct : c.op("Add", {dz, dz_direct});
  if (dz == kNoValue) return;
  ValueId da = kNoValue, db = kNoValue;
  // A Dense layer's weight and bias gradients as one op: the GEMM and the bias's column sums over one read of
  // dz.
  const bool joint = c.needs_grad(1) && c.needs_grad(2) && !ta && c.shape(c.input(0)).rank() == 2 &&
                     c.shape(c.input(1)).rank() == 2 && c.shape(dz).rank() == 2;
  matmul_grads(c, c.input(0), ta, c.input(1), tb, dz, 1.0f, &da, &db, c.needs_grad(0),
               c.needs_grad(1) && !joint);
  c.set_grad(0, da);
  if (joint) {
    std::vector<ValueId> wb =
        c.op_multi("GemmGradWeightBias", {c.input(0), dz}, {{"transB", int64_t{tb}}}, 2);
    c.set_grad(1, wb[0]);
    c.set_grad(2, reshape(c, wb[1], c.shape(c.input(2))));
    return;
  }
  c.set_grad(1, db);
  if (c.needs_grad(2)) c.set_grad(2, c.reduce_to(dz, c.shape(c.input(2))));
}

OpExample fused(std::string label, Shape a, Shape b, bool with_bias, const std::string& act, bool tb,
                int outputs, uint64_t seed) {
  int64_t n = tb ? b[0] : b[1];
  std::vector<Tensor> in = {random_tensor(a, -1, 1, seed), random_tensor(b, -1, 1, seed + 1)};
  if (with_bias) in.push_back(random_tensor(Shape{n}, -0.5, 0.5, seed + 2));
  OpExample e = example(std::move(label), std::move(in), {{"activation", act}, {"transB", int64_t{tb}}});
  e.num_outputs = outputs;
  return e;
}

}  // namespace

void register_matmul_ops(OpRegistry& r) {
  r.add(OpSchema("MatMul")
            .since(13)
            .doc("Matrix product with numpy semantics: 1-D operands are promoted, batch dims broadcast.")
            .inputs(2, 2)
            .infer([](InferContext& c) { infer_matmul_like(c, false, false); })
            .grad(matmul_grad)
            .examples([] {
              auto t = [](Shape s, uint64_t seed) { return random_tensor(s, -1, 1, seed); };
              return std::vector<OpExample>{
                  example("2-D", {t({3, 4}, 1), t({4, 5}, 2)}),
                  example("batched", {t({2, 3, 4}, 3), t({2, 4, 5}, 4)}),
                  example("batch broadcast", {t({2, 1, 3, 4}, 5), t({3, 4, 2}, 6)}),
                  example("shared 2-D weight", {t({2, 3, 4}, 7), t({4, 5}, 8)}),
                  example("shared 2-D left operand", {t({3, 4}, 9), t({2, 4, 5}, 10)}),
                  example("vector-matrix", {t({4}, 11), t({4, 3}, 12)}),
                  example("batched matrix-vector", {t({2, 3, 4}, 13), t({4}, 14)}),
                  example("dot", {t({4}, 15), t({4}, 16)}),
              };
            }));

  r.add(OpSchema("Gemm")
            .since(13)
            .doc("Y = alpha * op(A) * op(B) + beta * C, op transposing when transA/transB is set.")
            .inputs(2, 3)
            .attr("alpha", 1.0f)
            .attr("beta", 1.0f)
            .attr("transA", int64_t{0})
            .attr("transB", int64_t{0})
            .infer(infer_gemm)
            .grad(gemm_grad)
            .examples([] {
              auto t = [](Shape s, uint64_t seed) { return random_tensor(s, -1, 1, seed); };
              OpExample no_c = example("no C", {t({3, 4}, 27), t({4, 5}, 28)});
              return std::vector<OpExample>{
                  example("vector bias", {t({3, 4}, 21), t({4, 5}, 22), t({5}, 23)}),
                  example("transposes, alpha, beta, column C", {t({4, 3}, 24), t({5, 4}, 25), t({3, 1}, 26)},
                          {{"transA", int64_t{1}}, {"transB", int64_t{1}}, {"alpha", 0.5f}, {"beta", 2.0f}}),
                  no_c,
                  example("transB, matrix C", {t({3, 4}, 29), t({5, 4}, 30), t({3, 5}, 31)},
                          {{"transB", int64_t{1}}, {"beta", -0.5f}}),
                  example("transA, scalar C", {t({4, 3}, 32), t({4, 5}, 33), t({}, 34)},
                          {{"transA", int64_t{1}}, {"alpha", 1.5f}}),
              };
            }));

  r.add(OpSchema("MatMulTransposed", kPrivateDomain)
            .doc("alpha * op(A) · op(B) with numpy batch broadcasting; op transposes the last two dims. "
                 "Backward "
                 "passes use it so that no Transpose copy is made.")
            .inputs(2, 2)
            .attr("transA", int64_t{0})
            .attr("transB", int64_t{0})
            .attr("alpha", 1.0f)
            .infer([](InferContext& c) {
              infer_matmul_like(c, c.attrs().i("transA") != 0, c.attrs().i("transB") != 0);
            })
            .non_differentiable(kGradOpReason)
            .examples([] {
              auto t = [](Shape s, uint64_t seed) { return random_tensor(s, -1, 1, seed); };
              return std::vector<OpExample>{
                  example("transA", {t({4, 3}, 41), t({4, 5}, 42)}, {{"transA", int64_t{1}}}),
                  example("transB, alpha", {t({3, 4}, 43), t({5, 4}, 44)},
                          {{"transB", int64_t{1}}, {"alpha", 2.0f}}),
                  example("both, batched", {t({2, 4, 3}, 45), t({1, 5, 4}, 46)},
                          {{"transA", int64_t{1}}, {"transB", int64_t{1}}}),
              };
            }));

  // FusedGemm's weight and bias gradients together: dW = A^T · dZ (or dZ^T · A when the weight is [n, k],
  // transB) and dB = the column sums of dZ, so a backend computes both from one pass over dZ (a GEMM and its
  // bias-gradient epilogue).
  r.add(OpSchema("GemmGradWeightBias", kPrivateDomain)
            .doc("dW = A^T dZ (transB: dZ^T A) and dB = sum of dZ's rows, for a 2-D A [m, k] and dZ [m, n]")
            .inputs(2, 2)
            .outputs(2, 2)
            .attr("transB", int64_t{0})
            .non_differentiable(kGradOpReason)
            .infer([](InferContext& c) {
              c.expect_float(0);
              c.expect_same_dtype(1, 0);
              const Shape &sa = c.shape(0), &sd = c.shape(1);
              if (sa.rank() != 2 || sd.rank() != 2 || sa[0] != sd[0])
                c.fail("A and dZ must be [m, k] and [m, n], got {} and {}", sa.str(), sd.str());
              const bool tb = c.attrs().i("transB") != 0;
              c.set_output(0, c.dtype(0), tb ? Shape{sd[1], sa[1]} : Shape{sa[1], sd[1]});
              c.set_output(1, c.dtype(0), Shape{sd[1]});
            }));

  r.add(OpSchema("FusedGemm", kPrivateDomain)
            .doc("Y = act(op(A) · op(B) + bias), act one of none, relu, gelu, gelu_tanh; A may carry leading "
                 "batch "
                 "dims (folded into rows). Optional output 1 is the pre-activation, which gelu's gradient "
                 "needs.")
            .inputs(2, 3)
            .outputs(1, 2)
            .attr("transA", int64_t{0})
            .attr("transB", int64_t{0})
            .attr("activation", std::string("none"))
            .infer(infer_fused_gemm)
            .grad(fused_gemm_grad)
            .examples([] {
              return std::vector<OpExample>{
                  fused("bias, none", {3, 4}, {4, 5}, true, "none", false, 1, 51),
                  fused("bias, relu", {3, 4}, {4, 5}, true, "relu", false, 1, 54),
                  fused("bias, gelu, saved z", {3, 4}, {5, 4}, true, "gelu", true, 2, 57),
                  fused("gelu without saved z", {3, 4}, {4, 5}, true, "gelu", false, 1, 60),
                  fused("gelu_tanh, saved z", {3, 4}, {4, 5}, true, "gelu_tanh", false, 2, 63),
                  fused("no bias, relu, transB", {3, 4}, {5, 4}, false, "relu", true, 1, 66),
                  fused("batched rows, relu", {2, 3, 4}, {4, 5}, true, "relu", false, 1, 69),
              };
            }));
}

}  // namespace trainer::engine::ops
