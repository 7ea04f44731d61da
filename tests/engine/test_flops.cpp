// FLOP counts of nodes (engine/plan/flops.h) against counts worked out by hand from the convention, and the
// phase boundaries of a training graph that trainer bench reports time by.
#include <doctest/doctest.h>

#include "engine/autodiff/autodiff.h"
#include "engine/ir/op_schema.h"
#include "engine/plan/flops.h"
#include "engine/train/training.h"

using namespace trainer;
using namespace trainer::engine;
using V = std::vector<int64_t>;

namespace {

// FLOPs of one node over fresh f32 inputs of the given shapes.
int64_t flops_of(const std::string& op, const std::vector<Shape>& inputs, Attributes attrs = {},
                 int num_outputs = 1) {
  Graph g;
  std::vector<ValueId> in;
  for (size_t i = 0; i < inputs.size(); ++i)
    in.push_back(g.add_input("in" + std::to_string(i), DType::f32, inputs[i]));
  NodeId n = g.add_node(op, in, std::move(attrs), num_outputs, "op");
  return node_flops(g, g.node(n));
}

// The gradient node of op `grad_op` that build_backward makes for an LSTM or GRU over X [5, 2, 3] with
// hidden size 4, differentiating with respect to W and R, and to X too when `with_dx`.
int64_t rnn_grad_flops(const std::string& cell, bool with_dx) {
  const int64_t gates = cell == "LSTM" ? 4 : 3;
  Graph g;
  ValueId x = with_dx ? g.add_parameter("x", Tensor(DType::f32, Shape{5, 2, 3}))
                      : g.add_input("x", DType::f32, Shape{5, 2, 3});
  ValueId w = g.add_parameter("w", Tensor(DType::f32, Shape{1, gates * 4, 3}));
  ValueId r = g.add_parameter("r", Tensor(DType::f32, Shape{1, gates * 4, 4}));
  ValueId y = g.op(cell, {x, w, r}, {{"hidden_size", int64_t{4}}});
  ValueId loss = g.op("ReduceSum", {y}, {{"keepdims", int64_t{0}}});
  std::vector<ValueId> wrt = {w, r};
  if (with_dx) wrt.push_back(x);
  build_backward(g, loss, wrt);
  int64_t found = -1;
  for (NodeId id = 0; id < g.num_nodes(); ++id)
    if (!g.node(id).dead && g.node(id).op == cell + "Grad") {
      REQUIRE(found == -1);
      found = node_flops(g, g.node(id));
    }
  REQUIRE(found >= 0);
  return found;
}

}  // namespace

TEST_SUITE("flops") {
  TEST_CASE("matrix products count 2 per multiply-add, batched and transposed") {
    // [2, 3, 4] x [4, 5]: 2 batches of M=3, N=5, K=4.
    CHECK(flops_of("MatMul", {{2, 3, 4}, {4, 5}}) == 2 * 2 * 3 * 5 * 4);
    // Vector-matrix: M=1, N=3, K=4.
    CHECK(flops_of("MatMul", {{4}, {4, 3}}) == 2 * 3 * 4);
    // Gemm with transA: A [4, 3] is K=4 by M=3; B [4, 5]; the bias is not counted.
    CHECK(flops_of("Gemm", {{4, 3}, {4, 5}, {5}}, {{"transA", int64_t{1}}}) == 2 * 3 * 5 * 4);
    CHECK(flops_of("Gemm", {{3, 4}, {5, 4}}, {{"transB", int64_t{1}}}) == 2 * 3 * 5 * 4);
    // FusedGemm: the bias and activation epilogue are not counted either.
    CHECK(flops_of("FusedGemm", {{6, 8}, {8, 10}, {10}}, {{"activation", std::string("relu")}}) ==
          2 * 6 * 10 * 8);
    // MatMulTransposed with transA: A [2, 7, 3] is K=7 by M=3 per batch.
    CHECK(flops_of("MatMulTransposed", {{2, 7, 3}, {2, 7, 5}}, {{"transA", int64_t{1}}}) ==
          2 * 2 * 3 * 5 * 7);
  }

  TEST_CASE("convolutions: 2 N Cout Hout Wout (Cin/group) kh kw") {
    // Padded 3x3: the output stays 8x8.
    const int64_t conv = 2 * 2 * 4 * 8 * 8 * 3 * 3 * 3;
    CHECK(flops_of("Conv", {{2, 3, 8, 8}, {4, 3, 3, 3}, {4}}, {{"pads", V{1, 1, 1, 1}}}) == conv);
    // Two groups of 2 input channels, valid 3x3 on 6x6: 4x4 out.
    CHECK(flops_of("Conv", {{2, 4, 6, 6}, {4, 2, 3, 3}}, {{"group", int64_t{2}}}) ==
          2 * 2 * 4 * 4 * 4 * 2 * 3 * 3);
    // Strided: 9x9 with a 3x3 kernel, strides 2: 4x4 out.
    CHECK(flops_of("Conv", {{1, 1, 9, 9}, {2, 1, 3, 3}}, {{"strides", V{2, 2}}}) == 2 * 1 * 2 * 4 * 4 * 9);
    // The gradient ops run the same products.
    CHECK(flops_of("ConvGradInput", {{2, 4, 8, 8}, {4, 3, 3, 3}},
                   {{"pads", V{1, 1, 1, 1}}, {"input_shape", V{2, 3, 8, 8}}}) == conv);
    CHECK(flops_of("ConvGradWeight", {{2, 4, 8, 8}, {2, 3, 8, 8}},
                   {{"pads", V{1, 1, 1, 1}}, {"kernel_shape", V{3, 3}}}) == conv);
    // With the bias gradient: one more per element of dy.
    CHECK(flops_of("ConvGradWeight", {{2, 4, 8, 8}, {2, 3, 8, 8}},
                   {{"pads", V{1, 1, 1, 1}}, {"kernel_shape", V{3, 3}}}, 2) == conv + 2 * 4 * 8 * 8);
  }

  TEST_CASE("recurrent layers count their gate GEMMs") {
    // seq 5, batch 2, input 3, hidden 4: rows = 10; LSTM W [1, 16, 3], R [1, 16, 4].
    CHECK(flops_of("LSTM", {{5, 2, 3}, {1, 16, 3}, {1, 16, 4}}) == 2 * 10 * (16 * 3 + 16 * 4));
    // Bidirectional doubles W and R.
    CHECK(flops_of("LSTM", {{5, 2, 3}, {2, 16, 3}, {2, 16, 4}},
                   {{"direction", std::string("bidirectional")}}) == 2 * 10 * 2 * (16 * 3 + 16 * 4));
    // layout 1 ([batch, seq, input]) has the same rows.
    CHECK(flops_of("GRU", {{2, 5, 3}, {1, 12, 3}, {1, 12, 4}}, {{"layout", int64_t{1}}}) ==
          2 * 10 * (12 * 3 + 12 * 4));
    // Backward: the recurrence through R, then dW and dR; dX through W only when X needs a gradient.
    CHECK(rnn_grad_flops("LSTM", false) == 2 * 10 * (16 * 4 + 16 * 3 + 16 * 4));
    CHECK(rnn_grad_flops("LSTM", true) == 2 * 10 * (16 * 4 + 16 * 3 + 16 * 4 + 16 * 3));
    CHECK(rnn_grad_flops("GRU", false) == 2 * 10 * (12 * 4 + 12 * 3 + 12 * 4));
  }

  TEST_CASE("elementwise, reductions, pooling and data movement") {
    CHECK(flops_of("Add", {{2, 3}, {3}}) == 6);
    CHECK(flops_of("Relu", {{4, 5}}) == 20);
    CHECK(flops_of("ReduceSum", {{4, 5}}, {{"keepdims", int64_t{0}}}) == 20);
    CHECK(flops_of("Transpose", {{4, 5}}, {{"perm", V{1, 0}}}) == 0);
    CHECK(flops_of("Flatten", {{4, 5, 2}}) == 0);
    // 2x2 windows, strides 2, on 4x4: 2x2 out per channel, 4 compares each.
    CHECK(flops_of("MaxPool", {{1, 2, 4, 4}}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}}) ==
          2 * 2 * 2 * 4);
  }

  TEST_CASE("a training graph's nodes come forward, then backward, then update") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{8, 4});
    ValueId w = g.add_parameter("w", Tensor(DType::f32, Shape{4, 3}));
    ValueId t = g.add_input("t", DType::f32, Shape{8, 3});
    ValueId y = g.op("Relu", {g.op("MatMul", {x, w})});
    ValueId loss = g.op("MeanSquaredError", {y, t});
    TrainingOptions o;
    o.optimizer.kind = "adam";
    o.clipnorm = 1.0f;
    TrainingGraph tg = build_training_graph(std::move(g), loss, o);
    const Graph& tgg = *tg.graph;
    REQUIRE(0 < tg.backward_begin);
    REQUIRE(tg.backward_begin < tg.update_begin);
    REQUIRE(tg.update_begin < tgg.num_nodes());
    int forward = 0, backward = 0, update = 0;
    for (NodeId id : tgg.topo_order()) {
      const Node& n = tgg.node(id);
      if (id < tg.backward_begin) {
        ++forward;
        CHECK_MESSAGE(n.name.find("/grad/") == std::string::npos, n.name);
      } else if (id < tg.update_begin) {
        ++backward;
        const bool grad_op =
            n.schema->domain() == kPrivateDomain || n.name.find("/grad/") != std::string::npos;
        CHECK_MESSAGE(grad_op, n.name);
      } else {
        ++update;
        const bool update_op = n.op == "Adam" || n.op == "ClipByGlobalNorm";
        CHECK_MESSAGE(update_op, n.op);
      }
    }
    CHECK(forward >= 2);
    CHECK(backward >= 2);
    CHECK(update == 2);
  }
}
