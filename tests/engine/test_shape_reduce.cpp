// Forward values of the shape and reduce ops on small hand-computed cases, run through a Session on the CPU
// backend, plus the shape of ReduceSum's gradient (Reshape + Expand, never a zeros tensor of the input's
// size).
#include <doctest/doctest.h>

#include <cmath>

#include "alloc_counter.h"
#include "engine/autodiff/autodiff.h"
#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

Tensor f32(Shape s, std::vector<float> v) {
  return Tensor::from<float>(std::move(s), v);
}
Tensor f64(Shape s, std::vector<double> v) {
  return Tensor::from<double>(std::move(s), v);
}
Tensor iota(DType t, Shape s) {
  Tensor x(t, s);
  for (int64_t i = 0; i < x.numel(); ++i) x.set_f64(i, static_cast<double>(i));
  return x;
}

// Builds input x, applies make(g, x), runs once on the CPU and returns the result.
template <class F>
Tensor run_op(const Tensor& x, F make) {
  auto g = std::make_shared<Graph>();
  ValueId in = g->add_input("x", x.dtype(), x.shape());
  ValueId out = make(*g, in);
  g->mark_output(out);
  auto backend = make_cpu_backend();
  Session s(g, *backend);
  s.write(in, x);
  s.run(StepContext{});
  return s.read(out);
}

ValueId c64(Graph& g, std::vector<int64_t> v) {
  return g.add_constant(g.unique_name("c"), ops::i64_tensor(v));
}

void check_values(const Tensor& t, Shape shape, std::vector<double> expect, double tol = 1e-6) {
  REQUIRE(t.shape() == shape);
  REQUIRE(t.numel() == static_cast<int64_t>(expect.size()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    CAPTURE(i);
    CHECK(t.get_f64(i) == doctest::Approx(expect[i]).epsilon(tol));
  }
}

}  // namespace

TEST_SUITE("shape_reduce") {
  TEST_CASE("ReduceSum over axes inputs, attributes, all axes and none") {
    Tensor x = iota(DType::f32, {2, 3, 4});  // x[a, b, c] = 12a + 4b + c
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceSum", {v, c64(g, {-1})});
                        }),
                 {2, 3, 1}, {6, 22, 38, 54, 70, 86});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceSum", {v, c64(g, {1})}, {{"keepdims", int64_t{0}}});
                        }),
                 {2, 4}, {12, 15, 18, 21, 48, 51, 54, 57});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceSum", {v, c64(g, {0, 2})}, {{"keepdims", int64_t{0}}});
                        }),
                 {3}, {6 + 54, 22 + 70, 38 + 86});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceSum", {v}, {{"keepdims", int64_t{0}}});
                        }),
                 {}, {276});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceSum", {v}, {{"axes", std::vector<int64_t>{0}}});
                        }),
                 {1, 3, 4}, {12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34});
    Tensor same = run_op(x, [](Graph& g, ValueId v) {
      return g.op("ReduceSum", {v, c64(g, {})}, {{"noop_with_empty_axes", int64_t{1}}});
    });
    CHECK(same.shape() == x.shape());
    CHECK(same.get_f64(23) == 23);
    // Integers reduce too.
    check_values(run_op(iota(DType::i64, {2, 3}),
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceSum", {v, c64(g, {0})});
                        }),
                 {1, 3}, {3, 5, 7});
  }

  TEST_CASE("large reductions take every path and agree with a double-precision sum") {
    // [16, 3000] rows, [3000, 16] columns, [4, 50, 8, 40] two reduced groups.
    Tensor x = ops::random_tensor({4, 50, 8, 40}, -1, 1, 5, DType::f32);
    Tensor sum = run_op(x, [](Graph& g, ValueId v) {
      return g.op("ReduceSum", {v, c64(g, {1, 3})}, {{"keepdims", int64_t{0}}});
    });
    REQUIRE(sum.shape() == Shape{4, 8});
    for (int a = 0; a < 4; ++a)
      for (int c = 0; c < 8; ++c) {
        double s = 0;
        for (int b = 0; b < 50; ++b)
          for (int d = 0; d < 40; ++d) s += x.get_f64(((a * 50 + b) * 8 + c) * 40 + d);
        CHECK(sum.get_f64(a * 8 + c) == doctest::Approx(s).epsilon(1e-4));
      }
    Tensor cols = run_op(x, [](Graph& g, ValueId v) {
      return g.op("ReduceMean", {g.op("Reshape", {v, c64(g, {1600, 40})}), c64(g, {0})});
    });
    REQUIRE(cols.shape() == Shape{1, 40});
    for (int c = 0; c < 40; ++c) {
      double s = 0;
      for (int r = 0; r < 1600; ++r) s += x.get_f64(r * 40 + c);
      CHECK(cols.get_f64(c) == doctest::Approx(s / 1600).epsilon(1e-4));
    }
  }

  TEST_CASE("ReduceMean and ReduceMax") {
    Tensor x = f64({2, 3}, {1, 5, 3, -2, -1, -4});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceMean", {v, c64(g, {1})});
                        }),
                 {2, 1}, {3, -7.0 / 3});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("ReduceMax", {v, c64(g, {1})});
                        }),
                 {2, 1}, {5, -1});
    check_values(
        run_op(x,
               [](Graph& g, ValueId v) {
                 return g.op("ReduceMax", {v}, {{"axes", std::vector<int64_t>{0}}, {"keepdims", int64_t{0}}});
               }),
        {3}, {1, 5, 3});
  }

  TEST_CASE("ReduceMax's gradient goes to the first maximum only") {
    auto g = std::make_shared<Graph>();
    ValueId x = g->add_input("x", DType::f64, {2, 3});
    ValueId m = g->op("ReduceMax", {x, c64(*g, {1})}, {{"keepdims", int64_t{0}}});
    ValueId loss = g->op("ReduceSum", {g->op("Mul", {m, g->add_constant("w", f64({2}, {2, 3}))})},
                         {{"keepdims", int64_t{0}}});
    auto grads = build_backward(*g, loss, {x});
    g->mark_output(grads.at(x));
    auto backend = make_cpu_backend();
    Session s(g, *backend);
    s.write(x, f64({2, 3}, {1, 4, 4, 7, 2, 7}));
    s.run(StepContext{});
    check_values(s.read(grads.at(x)), {2, 3}, {0, 2, 0, 3, 0, 0});
  }

  TEST_CASE("ReduceSum's gradient broadcasts dy without a zeros tensor of the input's size") {
    auto g = std::make_shared<Graph>();
    ValueId x = g->add_input("x", DType::f64, {2, 3, 4});
    ValueId r = g->op("ReduceSum", {x, c64(*g, {0, 2})}, {{"keepdims", int64_t{0}}});
    ValueId loss = g->op("ReduceSum", {g->op("Mul", {r, g->add_constant("w", f64({3}, {1, 2, 3}))})},
                         {{"keepdims", int64_t{0}}});
    int before = g->num_nodes();
    auto grads = build_backward(*g, loss, {x});
    bool saw_expand = false;
    for (NodeId n = before; n < g->num_nodes(); ++n) {
      saw_expand |= g->node(n).op == "Expand";
      for (ValueId v : g->node(n).inputs) {
        const Tensor* t = g->initializer(v);
        CHECK_MESSAGE(!(t && t->numel() >= 24), "a constant of the input's size feeds ", g->node(n).op);
      }
    }
    CHECK(saw_expand);
    g->mark_output(grads.at(x));
    auto backend = make_cpu_backend();
    Session s(g, *backend);
    s.write(x, iota(DType::f64, {2, 3, 4}));
    s.run(StepContext{});
    Tensor dx = s.read(grads.at(x));
    for (int64_t i = 0; i < 24; ++i) CHECK(dx.get_f64(i) == 1 + (i / 4) % 3);
  }

  TEST_CASE("Reshape copies dims with 0, infers -1, honours allowzero, and rejects bad shapes") {
    Tensor x = iota(DType::i64, {2, 3, 4});
    Tensor y = run_op(x, [](Graph& g, ValueId v) { return g.op("Reshape", {v, c64(g, {0, -1})}); });
    CHECK(y.shape() == Shape{2, 12});
    CHECK(y.get_i64(13) == 13);
    CHECK(run_op(x, [](Graph& g, ValueId v) {
            return g.op("Reshape", {v, c64(g, {-1, 2, 2})});
          }).shape() == Shape{6, 2, 2});
    Graph g;
    ValueId v = g.add_input("x", DType::f32, {2, 3});
    CHECK_THROWS_AS(g.op("Reshape", {v, c64(g, {4, -1})}), InputError);
    CHECK_THROWS_AS(g.op("Reshape", {v, c64(g, {-1, -1})}), InputError);
    CHECK_THROWS_AS(g.op("Reshape", {v, c64(g, {0, 3})}, {{"allowzero", int64_t{1}}}), InputError);
    ValueId fed = g.add_input("shape", DType::i64, {2});
    try {
      g.op("Reshape", {v, fed});
      FAIL("expected an error");
    } catch (const InputError& e) {
      CHECK(std::string(e.what()).find("constant") != std::string::npos);
    }
    // A persistent input cannot be aliased: the kernel copies.
    auto gp = std::make_shared<Graph>();
    ValueId c = gp->add_constant("p", f32({2, 2}, {1, 2, 3, 4}));
    ValueId out = gp->op("Reshape", {c, c64(*gp, {4})});
    gp->mark_output(out);
    auto backend = make_cpu_backend();
    Session s(gp, *backend);
    s.run(StepContext{});
    check_values(s.read(out), {4}, {1, 2, 3, 4});
  }

  TEST_CASE("Expand broadcasts to a constant shape") {
    check_values(run_op(f32({3, 1}, {1, 2, 3}),
                        [](Graph& g, ValueId v) {
                          return g.op("Expand", {v, c64(g, {2, 1, 2})});
                        }),
                 {2, 3, 2}, {1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3});
    check_values(run_op(f32({1, 3}, {1, 2, 3}),
                        [](Graph& g, ValueId v) {
                          return g.op("Expand", {v, c64(g, {2, 1})});
                        }),
                 {2, 3}, {1, 2, 3, 1, 2, 3});
    Graph g;
    ValueId v = g.add_input("x", DType::f32, {2, 3});
    CHECK_THROWS_AS(g.op("Expand", {v, c64(g, {4, 3})}), InputError);
  }

  TEST_CASE("Flatten, Squeeze and Unsqueeze") {
    Tensor x = iota(DType::f32, {2, 1, 3});
    CHECK(run_op(x, [](Graph& g, ValueId v) { return g.op("Flatten", {v}); }).shape() == Shape{2, 3});
    CHECK(run_op(x, [](Graph& g, ValueId v) {
            return g.op("Flatten", {v}, {{"axis", int64_t{0}}});
          }).shape() == Shape{1, 6});
    CHECK(run_op(x, [](Graph& g, ValueId v) {
            return g.op("Flatten", {v}, {{"axis", int64_t{3}}});
          }).shape() == Shape{6, 1});
    CHECK(run_op(x, [](Graph& g, ValueId v) { return g.op("Squeeze", {v}); }).shape() == Shape{2, 3});
    CHECK(run_op(x, [](Graph& g, ValueId v) {
            return g.op("Squeeze", {v, c64(g, {-2})});
          }).shape() == Shape{2, 3});
    Tensor u = run_op(x, [](Graph& g, ValueId v) { return g.op("Unsqueeze", {v, c64(g, {0, -1})}); });
    CHECK(u.shape() == Shape{1, 2, 1, 3, 1});
    CHECK(u.get_f64(5) == 5);
    Graph g;
    ValueId v = g.add_input("x", DType::f32, {2, 3});
    CHECK_THROWS_AS(g.op("Squeeze", {v, c64(g, {0})}), InputError);  // dim 0 has size 2
    CHECK_THROWS_AS(g.op("Unsqueeze", {v}), InputError);
  }

  TEST_CASE("Transpose: 2-D blocked, NCHW to NHWC, and a general permutation") {
    Tensor m = iota(DType::f32, {37, 70});  // not a multiple of the tile
    Tensor t = run_op(m, [](Graph& g, ValueId v) { return g.op("Transpose", {v}); });
    REQUIRE(t.shape() == Shape{70, 37});
    bool ok = true;
    for (int i = 0; i < 37; ++i)
      for (int j = 0; j < 70; ++j) ok &= t.get_f64(j * 37 + i) == i * 70 + j;
    CHECK(ok);
    Tensor x = iota(DType::i64, {2, 3, 2, 2});
    Tensor nhwc = run_op(x, [](Graph& g, ValueId v) {
      return g.op("Transpose", {v}, {{"perm", std::vector<int64_t>{0, 2, 3, 1}}});
    });
    REQUIRE(nhwc.shape() == Shape{2, 2, 2, 3});
    // out[n, h, w, c] = x[n, c, h, w] = 12n + 4c + 2h + w
    CHECK(nhwc.get_i64(0 * 12 + 1 * 6 + 0 * 3 + 2) == 0 * 12 + 2 * 4 + 1 * 2 + 0);
    CHECK(nhwc.get_i64(1 * 12 + 1 * 6 + 1 * 3 + 1) == 12 + 4 + 2 + 1);
    Tensor y = iota(DType::f64, {2, 3, 4});
    Tensor p = run_op(y, [](Graph& g, ValueId v) {
      return g.op("Transpose", {v}, {{"perm", std::vector<int64_t>{2, 0, 1}}});
    });
    REQUIRE(p.shape() == Shape{4, 2, 3});
    // out[c, a, b] = 12a + 4b + c
    ok = true;
    for (int c = 0; c < 4; ++c)
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 3; ++b) ok &= p.get_f64((c * 2 + a) * 3 + b) == 12 * a + 4 * b + c;
    CHECK(ok);
    Graph g;
    ValueId v = g.add_input("x", DType::f32, {2, 3});
    CHECK_THROWS_AS(g.op("Transpose", {v}, {{"perm", std::vector<int64_t>{0, 0}}}), InputError);
  }

  TEST_CASE("Concat along an inner axis") {
    auto g = std::make_shared<Graph>();
    ValueId a = g->add_input("a", DType::f32, {2, 1});
    ValueId b = g->add_input("b", DType::f32, {2, 2});
    ValueId c = g->op("Concat", {a, b, a}, {{"axis", int64_t{-1}}});
    g->mark_output(c);
    auto backend = make_cpu_backend();
    Session s(g, *backend);
    s.write(a, f32({2, 1}, {1, 2}));
    s.write(b, f32({2, 2}, {10, 11, 12, 13}));
    s.run(StepContext{});
    check_values(s.read(c), {2, 4}, {1, 10, 11, 1, 2, 12, 13, 2});
  }

  TEST_CASE("Slice clamps like ONNX and walks negative steps") {
    Tensor x = iota(DType::f32, {3, 4});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("Slice", {v, c64(g, {1, 1}), c64(g, {1000, -1})});
                        }),
                 {2, 2}, {5, 6, 9, 10});
    check_values(
        run_op(x,
               [](Graph& g, ValueId v) {
                 return g.op("Slice", {v, c64(g, {-1}), c64(g, {INT64_MIN}), c64(g, {1}), c64(g, {-2})});
               }),
        {3, 2}, {3, 1, 7, 5, 11, 9});
    check_values(run_op(x,
                        [](Graph& g, ValueId v) {
                          return g.op("Slice", {v, c64(g, {10}), c64(g, {-10}), c64(g, {0}), c64(g, {-1})});
                        }),
                 {3, 4}, {8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3});
    CHECK(run_op(x, [](Graph& g, ValueId v) {
            return g.op("Slice", {v, c64(g, {3}), c64(g, {1})});
          }).shape() == Shape{0, 4});
    // Slice's gradient scatters into zeros.
    auto g = std::make_shared<Graph>();
    ValueId in = g->add_input("x", DType::f64, {5});
    ValueId sl = g->op("Slice", {in, c64(*g, {4}), c64(*g, {0}), c64(*g, {0}), c64(*g, {-2})});
    ValueId loss = g->op("ReduceSum", {g->op("Mul", {sl, g->add_constant("w", f64({2}, {3, 5}))})},
                         {{"keepdims", int64_t{0}}});
    auto grads = build_backward(*g, loss, {in});
    g->mark_output(grads.at(in));
    auto backend = make_cpu_backend();
    Session s(g, *backend);
    s.write(in, iota(DType::f64, {5}));
    s.run(StepContext{});
    check_values(s.read(grads.at(in)), {5}, {0, 0, 5, 0, 3});
  }

  TEST_CASE("Gather with negative and repeated indices, and its deterministic gradient") {
    Tensor x = iota(DType::f64, {4, 3});
    auto g = std::make_shared<Graph>();
    ValueId in = g->add_input("x", DType::f64, {4, 3});
    ValueId idx = g->add_input("idx", DType::i32, {2, 2});
    ValueId y = g->op("Gather", {in, idx});
    ValueId loss = g->op("ReduceSum", {y}, {{"keepdims", int64_t{0}}});
    auto grads = build_backward(*g, loss, {in});
    g->mark_output(y);
    g->mark_output(grads.at(in));
    auto backend = make_cpu_backend();
    Session s(g, *backend);
    s.write(in, x);
    s.write(idx, Tensor::from<int32_t>({2, 2}, {-1, 0, 3, 3}));
    s.run(StepContext{});
    check_values(s.read(y), {2, 2, 3}, {9, 10, 11, 0, 1, 2, 9, 10, 11, 9, 10, 11});
    check_values(s.read(grads.at(in)), {4, 3}, {1, 1, 1, 0, 0, 0, 0, 0, 0, 3, 3, 3});
    s.write(idx, Tensor::from<int32_t>({2, 2}, {0, 4, 0, 0}));
    CHECK_THROWS_AS(s.run(StepContext{}), InputError);
    // Along an inner axis.
    check_values(run_op(iota(DType::f32, {2, 3}),
                        [](Graph& gg, ValueId v) {
                          return gg.op("Gather", {v, c64(gg, {2, 0})}, {{"axis", int64_t{1}}});
                        }),
                 {2, 2}, {2, 0, 5, 3});
  }

  TEST_CASE("Softmax and LogSoftmax are stable and run along any axis") {
    Tensor x = f64({2, 3}, {1, 2, 3, 1000, 1000, 1000});
    double e1 = std::exp(-2.0), e2 = std::exp(-1.0), z = e1 + e2 + 1;
    check_values(run_op(x, [](Graph& g, ValueId v) { return g.op("Softmax", {v}); }), {2, 3},
                 {e1 / z, e2 / z, 1 / z, 1.0 / 3, 1.0 / 3, 1.0 / 3});
    check_values(
        run_op(x, [](Graph& g, ValueId v) { return g.op("LogSoftmax", {v}); }), {2, 3},
        {-2 - std::log(z), -1 - std::log(z), -std::log(z), -std::log(3.0), -std::log(3.0), -std::log(3.0)});
    // Along axis 0 of [2, 3]: pairs (1, 1000) etc.
    Tensor s0 = run_op(x, [](Graph& g, ValueId v) { return g.op("Softmax", {v}, {{"axis", int64_t{0}}}); });
    CHECK(s0.get_f64(0) == doctest::Approx(std::exp(-999.0)));
    CHECK(s0.get_f64(3) == doctest::Approx(1.0));
    CHECK(s0.get_f64(0) + s0.get_f64(3) == doctest::Approx(1.0));
  }

  TEST_CASE("f32 softmax (oneDNN on the last axis, loops elsewhere) matches f64, forward and backward") {
    for (const char* op : {"Softmax", "LogSoftmax"})
      for (int64_t axis : {int64_t{1}, int64_t{-1}}) {
        CAPTURE(op);
        CAPTURE(axis);
        std::vector<Tensor> results[2];
        for (DType t : {DType::f32, DType::f64}) {
          auto g = std::make_shared<Graph>();
          ValueId x = g->add_input("x", t, {3, 5, 4});
          ValueId y = g->op(op, {x}, {{"axis", axis}});
          ValueId w = g->add_constant("w", ops::random_tensor({3, 5, 4}, -1, 1, 9, t));
          ValueId loss = g->op("ReduceSum", {g->op("Mul", {y, w})}, {{"keepdims", int64_t{0}}});
          auto grads = build_backward(*g, loss, {x});
          g->mark_output(y);
          g->mark_output(grads.at(x));
          auto backend = make_cpu_backend();
          Session s(g, *backend);
          s.write(x, ops::random_tensor({3, 5, 4}, -3, 3, 8, t));
          s.run(StepContext{});
          results[t == DType::f64].push_back(s.read(y));
          results[t == DType::f64].push_back(s.read(grads.at(x)));
        }
        for (int k = 0; k < 2; ++k)
          for (int64_t i = 0; i < 60; ++i) {
            CAPTURE(k);
            CAPTURE(i);
            CHECK(results[0][k].get_f64(i) == doctest::Approx(results[1][k].get_f64(i)).epsilon(1e-5));
          }
      }
  }

  TEST_CASE("Shape gives the dims, or a clamped range of them") {
    Tensor x = iota(DType::f32, {2, 3, 4});
    Tensor all = run_op(x, [](Graph& g, ValueId v) { return g.op("Shape", {v}); });
    CHECK(all.dtype() == DType::i64);
    CHECK(all.to_vector<int64_t>() == std::vector<int64_t>{2, 3, 4});
    Tensor tail = run_op(x, [](Graph& g, ValueId v) {
      return g.op("Shape", {v}, {{"start", int64_t{-2}}, {"end", int64_t{100}}});
    });
    CHECK(tail.to_vector<int64_t>() == std::vector<int64_t>{3, 4});
  }

  TEST_CASE("a steady-state step of these kernels allocates nothing") {
    // f64 runs only this family's loops: nothing may allocate. f32 softmax along the last axis runs oneDNN,
    // whose execute builds a small argument map; there the count must stay the same step after step.
    using V = std::vector<int64_t>;
    for (DType t : {DType::f64, DType::f32}) {
      CAPTURE(dtype_name(t));
      auto g = std::make_shared<Graph>();
      ValueId x = g->add_input("x", t, {4, 6, 8});
      ValueId idx = g->add_input("idx", DType::i64, {3});
      ValueId p = g->add_parameter("p", ops::random_tensor({4, 6, 8}, -1, 1, 3, t));
      std::vector<ValueId> outs;
      auto add = [&](ValueId v) {
        outs.push_back(v);
        return v;
      };
      add(g->op("ReduceSum", {x, c64(*g, {2})}));
      add(g->op("ReduceSum", {x, c64(*g, {1})}));
      add(g->op("ReduceSum", {x, c64(*g, {0, 2})}));
      add(g->op("ReduceMean", {x, c64(*g, {0, 2})}));
      ValueId m = add(g->op("ReduceMax", {x, c64(*g, {1})}));
      add(g->op("ReduceMaxGrad", {x, m}, {{"axes", V{1}}}));
      ValueId sm = add(g->op("Softmax", {x}));
      ValueId sm1 = add(g->op("Softmax", {x}, {{"axis", int64_t{1}}}));
      ValueId lsm = add(g->op("LogSoftmax", {x}));
      add(g->op("SoftmaxGrad", {x, sm}));
      add(g->op("SoftmaxGrad", {x, sm1}, {{"axis", int64_t{1}}}));
      add(g->op("LogSoftmaxGrad", {x, lsm}));
      add(g->op("Reshape", {p, c64(*g, {24, 8})}));
      add(g->op("Flatten", {x}));
      add(g->op("Unsqueeze", {g->op("Squeeze", {m, c64(*g, {1})}), c64(*g, {0})}));
      add(g->op("Expand", {m, c64(*g, {2, 4, 6, 8})}));
      add(g->op("Transpose", {g->op("Reshape", {x, c64(*g, {24, 8})})}));
      add(g->op("Transpose", {x}, {{"perm", V{1, 2, 0}}}));
      add(g->op("Concat", {x, p}, {{"axis", int64_t{1}}}));
      ValueId sl =
          add(g->op("Slice", {x, c64(*g, {5, 1}), c64(*g, {0, 7}), c64(*g, {1, 2}), c64(*g, {-2, 3})}));
      add(g->op("SliceGrad", {sl}, {{"shape", V{4, 6, 8}}, {"starts", V{0, 5, 1}}, {"steps", V{1, -2, 3}}}));
      ValueId ga = add(g->op("Gather", {x, idx}, {{"axis", int64_t{1}}}));
      add(g->op("GatherGrad", {ga, idx}, {{"axis", int64_t{1}}, {"shape", V{4, 6, 8}}}));
      add(g->op("Shape", {x}));
      for (ValueId v : outs) g->mark_output(v);
      auto backend = make_cpu_backend();
      Session sess(g, *backend);
      Tensor tx = ops::random_tensor({4, 6, 8}, -1, 1, 4, t), ti = ops::i64_tensor({5, -1, 2});
      sess.write(x, tx);
      sess.write(idx, ti);
      sess.run({});  // warm-up
      std::vector<int64_t> counts;
      for (int i = 0; i < 3; ++i) {
        test::arm_allocation_counter();
        sess.write(x, tx.raw(), tx.nbytes());
        sess.write(idx, ti.raw(), ti.nbytes());
        sess.run({});
        counts.push_back(test::disarm_allocation_counter());
      }
      if (t == DType::f64) {
        CHECK(counts == std::vector<int64_t>{0, 0, 0});
      } else {
        CHECK(counts[1] == counts[0]);
        CHECK(counts[2] == counts[0]);
      }
    }
  }
}
