// Memory planner properties: on random graphs no two simultaneously live buffers overlap, the arena never
// exceeds the naive sum, planned execution equals unplanned execution bitwise, and a planned step allocates
// nothing.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "alloc_counter.h"
#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/train/session.h"

using namespace trainer;
using namespace trainer::engine;

namespace {

// A random DAG of elementwise ops and views over a few shapes that broadcast into each other.
std::shared_ptr<Graph> random_graph(uint32_t seed, std::vector<ValueId>* inputs) {
  std::mt19937 rng(seed);
  auto g = std::make_shared<Graph>();
  std::vector<ValueId> pool;
  int n_in = 2 + rng() % 3;
  for (int i = 0; i < n_in; ++i) {
    ValueId v = g->add_input("x" + std::to_string(i), DType::f32, Shape{4, 16});
    inputs->push_back(v);
    pool.push_back(v);
  }
  pool.push_back(g->add_parameter("p", ops::random_tensor({16}, -1, 1, seed, DType::f32)));
  const char* unary[] = {"Relu", "Neg", "Tanh", "Identity", "Sigmoid"};
  const char* binary[] = {"Add", "Mul", "Sub"};
  int n_nodes = 5 + rng() % 30;
  for (int i = 0; i < n_nodes; ++i) {
    // Prefer recent values so chains form and many values die early.
    auto pick = [&] { return pool[pool.size() - 1 - rng() % std::min<size_t>(pool.size(), 6)]; };
    ValueId out;
    if (rng() % 2) {
      out = g->op(unary[rng() % 5], {pick()});
    } else {
      out = g->op(binary[rng() % 3], {pick(), pick()});
    }
    pool.push_back(out);
    if (rng() % 7 == 0) g->mark_output(out);
  }
  g->mark_output(pool.back());
  return g;
}

bool lifetimes_overlap(const Program& p, ValueId a, ValueId b) {
  return !(p.last_step[a] < p.first_step[b] || p.last_step[b] < p.first_step[a]);
}

// A one-element i64 constant: a Slice bound, a Reshape shape.
ValueId constant(Graph& g, int64_t v) {
  return g.add_constant(g.unique_name("bound"), Tensor::from<int64_t>(Shape{1}, {v}));
}

}  // namespace

TEST_SUITE("plan") {
  TEST_CASE("plan: live buffers never overlap, the peak is at most the naive sum, results equal unplanned") {
    auto backend = make_cpu_backend();
    int reused = 0;
    for (uint32_t seed = 1; seed <= 200; ++seed) {
      CAPTURE(seed);
      std::vector<ValueId> inputs;
      auto g = random_graph(seed, &inputs);
      Program p = plan_program(g);
      CHECK(p.arena_bytes() <= p.naive_bytes);
      if (p.arena_bytes() < p.naive_bytes) ++reused;
      for (ValueId a = 0; a < g->num_values(); ++a) {
        const Slot& sa = p.slots[a];
        if (!sa.assigned || sa.bytes == 0) continue;
        for (ValueId b = a + 1; b < g->num_values(); ++b) {
          const Slot& sb = p.slots[b];
          if (!sb.assigned || sb.bytes == 0 || p.aliases(a, b)) continue;
          if (!lifetimes_overlap(p, a, b)) continue;
          bool disjoint = sa.offset + sa.bytes <= sb.offset || sb.offset + sb.bytes <= sa.offset;
          if (!disjoint)
            FAIL_CHECK("values " << g->value(a).name << " and " << g->value(b).name
                                 << " are live together and overlap");
        }
      }
      // Execution with reuse and in-place equals one buffer per value, bit for bit.
      PlanOptions naive;
      naive.reuse_memory = false;
      Session planned(g, *backend), unplanned(g, *backend, naive);
      for (size_t i = 0; i < inputs.size(); ++i) {
        Tensor t = ops::random_tensor({4, 16}, -2, 2, seed * 10 + i, DType::f32);
        planned.write(inputs[i], t);
        unplanned.write(inputs[i], t);
      }
      planned.run({});
      unplanned.run({});
      for (ValueId o : g->outputs()) {
        Tensor a = planned.read(o), b = unplanned.read(o);
        CHECK(std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
      }
    }
    CHECK(reused > 150);  // the planner does reuse memory
  }

  TEST_CASE("plan: in-place and views share buffers only where safe") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{8});
    ValueId a = g.op("Relu", {x});      // x is a fed input: not overwritten
    ValueId b = g.op("Neg", {a});       // a dies here: b may take its buffer
    ValueId c = g.op("Identity", {b});  // a view of b
    ValueId d = g.op("Add", {b, c});    // b is read by d and via c: no in-place over b
    g.mark_output(d);
    auto gp = std::make_shared<Graph>(g);
    Program p = plan_program(gp);
    CHECK_FALSE(p.aliases(x, a));
    CHECK(p.aliases(a, b));
    CHECK(p.aliases(b, c));
    CHECK_FALSE(p.aliases(d, b));
  }

  TEST_CASE(
      "plan: a contiguous range of a vector is read where it lies, when the offset keeps the alignment") {
    // ZeRO-1's update reads its range of a gradient: Slice of a vector, a view at an offset when aligned.
    for (const int64_t start : {16, 3}) {
      CAPTURE(start);
      Graph g;
      ValueId x = g.add_input("x", DType::f32, Shape{64});
      ValueId a = g.op("Relu", {x});
      ValueId b = g.op("Slice", {a, constant(g, start), constant(g, start + 24)});
      ValueId c = g.op("Neg", {b});
      ValueId d = g.op("Sigmoid", {a});  // a is read after the view too
      g.mark_output(c);
      g.mark_output(d);
      auto gp = std::make_shared<Graph>(g);
      PlanOptions po;
      po.alignment = 64;
      Program p = plan_program(gp, po);
      const bool aligned = start * 4 % 64 == 0;
      CHECK(p.aliases(a, b) == aligned);
      if (aligned) CHECK(p.slots[b].offset == p.slots[a].offset + static_cast<size_t>(start) * 4);
      auto backend = make_cpu_backend();
      Session sess(gp, *backend, po);
      std::vector<float> in(64);
      for (int i = 0; i < 64; ++i) in[i] = static_cast<float>(i % 7) - 2.0f;
      sess.write(x, in.data(), in.size() * sizeof(float));
      sess.run({});
      const Tensor got = sess.read(c), all = sess.read(d);
      for (int i = 0; i < 24; ++i) CHECK(got.data<float>()[i] == -std::max(0.0f, in[start + i]));
      for (int i = 0; i < 64; ++i)
        CHECK(all.data<float>()[i] == doctest::Approx(1 / (1 + std::exp(-std::max(0.0f, in[i])))));
    }
  }

  TEST_CASE("plan: a gradient to bucket is a view only of bytes nothing else reads after it") {
    // Buckets are summed across replicas in place while backward goes on: a gradient lying in a buffer that
    // a later node still reads (Concat's gradient is a Slice of the incoming one) would change that node's
    // input. Where the buffer dies with the view, sharing is safe.
    for (const bool slice : {true, false})
      for (const bool read_later : {true, false}) {
        CAPTURE(slice);
        CAPTURE(read_later);
        Graph g;
        ValueId x = g.add_input("x", DType::f32, Shape{64});
        ValueId a = g.op("Relu", {x});
        const ValueId grad =
            slice ? g.op("Slice", {a, constant(g, 0), constant(g, 32)})  // at offset 0: aligned
                  : g.op("Reshape", {a, constant(g, 64)});               // a full-size view
        g.mark_output(g.op("Neg", {grad}));
        if (read_later) g.mark_output(g.op("Sigmoid", {a}));
        auto gp = std::make_shared<Graph>(g);
        PlanOptions po;
        CHECK(plan_program(gp, po).aliases(grad, a));  // not a gradient: a view either way
        po.gradients = {grad};
        CHECK(plan_program(gp, po).aliases(grad, a) == !read_later);
      }
  }

  TEST_CASE("plan: a ReplicaMean output is a bucket of its own, its bytes alive until it is waited for") {
    // Reduced in place on the communication thread between its step and its first reader (or the end of the
    // step when nothing reads it): its buffer must not be another value's meanwhile.
    for (const bool read : {true, false}) {
      CAPTURE(read);
      Graph g;
      ValueId x = g.add_input("x", DType::f32, Shape{8, 4});
      ValueId m = g.op("ReplicaMean", {g.op("ReduceMean", {x, constant(g, 0)}, {{"keepdims", int64_t{1}}})});
      // Values of m's size made after it: a dead m's bytes would be theirs.
      ValueId y = g.op(
          "Relu",
          {g.op("Neg", {g.op("Exp", {g.op("ReduceMax", {x, constant(g, 0)}, {{"keepdims", int64_t{1}}})})})});
      if (read) y = g.op("Sub", {y, m});
      g.mark_output(y);
      auto gp = std::make_shared<Graph>(g);
      const Program p = plan_program(gp, {});
      REQUIRE(p.buckets.size() == 1);
      const GradBucket& b = p.buckets[0];
      CHECK(b.grads == std::vector<ValueId>{m});
      CHECK(b.ready_after_step == p.first_step[m]);
      const int end = static_cast<int>(p.steps.size());
      CHECK(b.needed_by_step == (read ? end - 1 : end));
      CHECK(p.last_step[m] >= b.needed_by_step);
      // No value written after m overlaps it while it lives.
      for (ValueId v = 0; v < g.num_values(); ++v) {
        if (v == m || !p.slots[v].assigned || p.first_step[v] <= p.first_step[m] ||
            p.first_step[v] > p.last_step[m])
          continue;
        CAPTURE(g.value(v).name);
        const Slot &a = p.slots[m], &o = p.slots[v];
        CHECK((o.offset + o.bytes <= a.offset || a.offset + a.bytes <= o.offset));
      }
    }
  }

  TEST_CASE("plan: the writer of a state update runs after every other reader") {
    Graph g;
    ValueId s = g.add_state("s", Tensor(DType::f32, Shape{4}));
    ValueId one = g.add_constant("one", Tensor::from<float>({4}, {1, 1, 1, 1}));
    ValueId next = g.op("Add", {s, one});  // created first: without the rule it would run first
    ValueId read = g.op("Neg", {s});
    g.mark_output(read);
    g.bind_update(next, s);
    auto gp = std::make_shared<Graph>(g);
    Program p = plan_program(gp);
    CHECK(p.first_step[next] > p.first_step[read]);
    CHECK(p.slots[next].offset == p.slots[s].offset);
    auto backend = make_cpu_backend();
    Session sess(gp, *backend);
    sess.run({});
    sess.run({});
    CHECK(sess.read(s).data<float>()[0] == 2.0f);
    CHECK(sess.read(read).data<float>()[0] == -1.0f);  // read the old state in step 2
  }

  TEST_CASE("plan: a steady-state step performs zero heap allocations") {
    std::vector<ValueId> inputs;
    auto g = random_graph(99, &inputs);
    auto backend = make_cpu_backend();
    Session sess(g, *backend);
    Tensor t = ops::random_tensor({4, 16}, -2, 2, 5, DType::f32);
    for (ValueId v : inputs) sess.write(v, t);
    sess.run({});  // warm-up
    test::arm_allocation_counter();
    for (int i = 0; i < 10; ++i) {
      sess.write(inputs[0], t.raw(), t.nbytes());
      sess.run({static_cast<uint64_t>(i), 1});
    }
    int64_t n = test::disarm_allocation_counter();
    CHECK(n == 0);
    // The counter itself works: a vector allocation is seen.
    test::arm_allocation_counter();
    std::vector<int>* v = new std::vector<int>(100);
    delete v;
    CHECK(test::disarm_allocation_counts().outside_onednn() >= 2);
  }
}

TEST_SUITE("plan") {
  TEST_CASE("plan: the plans of one device share parameters and state by name, and not constants") {
    // Two graphs with the same parameter "w" and state "s", and a constant "c" of one name but different
    // values.
    auto make = [](float c_value, int64_t batch) {
      auto g = std::make_shared<Graph>();
      ValueId x = g->add_input("x", DType::f32, Shape{batch, 2});
      ValueId w = g->add_parameter("w", Tensor::from<float>({2}, {1, 2}));
      ValueId s = g->add_state("s", Tensor::from<float>({2}, {0, 0}));
      ValueId c = g->add_constant("c", Tensor::from<float>({2}, {c_value, c_value}));
      ValueId y = g->op("Mul", {g->op("Add", {x, c}), w});
      g->bind_update(g->op("Add", {s, w}), s);  // s += w every step
      g->mark_output(y);
      return std::tuple{g, x, y, w, s};
    };
    auto [g1, x1, y1, w1, s1] = make(10, 3);
    auto [g2, x2, y2, w2, s2] = make(100, 1);
    auto backend = make_cpu_backend();
    DevicePlans plans(*backend);
    int a = plans.add(g1), b = plans.add(g2);
    plans.finalize();
    Session& sa = plans.session(a);
    Session& sb = plans.session(b);
    CHECK(sa.program().slots[w1].offset == sb.program().slots[w2].offset);
    CHECK(sa.program().slots[s1].offset == sb.program().slots[s2].offset);
    // Writing the parameter through one plan is seen by the other.
    sa.write(w1, Tensor::from<float>({2}, {3, 4}));
    // Transient buffers are shared too: a plan's inputs and outputs are valid until another plan runs.
    sa.write(x1, Tensor::from<float>({3, 2}, {0, 0, 1, 1, 2, 2}));
    sa.run({});
    Tensor ya = sa.read(y1);
    sb.write(x2, Tensor::from<float>({1, 2}, {1, 2}));
    sb.run({});
    Tensor yb = sb.read(y2);
    CHECK(ya.data<float>()[0] == 30.0f);   // (0 + 10) * 3
    CHECK(yb.data<float>()[1] == 408.0f);  // (2 + 100) * 4: b's own constant, a's parameter
    Tensor s = sb.read(s2);
    CHECK(s.data<float>()[0] == 6.0f);  // both steps updated the one state
    CHECK(plans.arena_bytes() >= sa.program().arena_bytes());
  }
}
