// IR basics: shapes, broadcasting, dtype tables, graph construction and validation messages.
#include <doctest/doctest.h>

#include "engine/ir/graph.h"
#include "engine/ir/op_schema.h"

using namespace trainer;
using namespace trainer::engine;

TEST_SUITE("ir") {
  TEST_CASE("broadcasting follows numpy") {
    Shape out;
    CHECK(broadcast_shapes(Shape{2, 3, 4}, Shape{3, 1}, &out));
    CHECK(out == Shape{2, 3, 4});
    CHECK(broadcast_shapes(Shape{2, 1}, Shape{1, 3}, &out));
    CHECK(out == Shape{2, 3});
    CHECK_FALSE(broadcast_shapes(Shape{2, 3}, Shape{4}, &out));
    CHECK(broadcast_strides(Shape{3, 1}, Shape{2, 3, 4}) == std::vector<int64_t>{0, 1, 0});
  }

  TEST_CASE("dtype round trips through ONNX codes") {
    for (int i = 0; i < kNumDTypes; ++i) {
      DType t = static_cast<DType>(i);
      CHECK(dtype_from_onnx(dtype_to_onnx(t)) == t);
    }
    CHECK_THROWS_AS(dtype_from_onnx(8), InputError);  // string tensors
  }

  TEST_CASE("half-precision conversions round to nearest even") {
    CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f);
    CHECK(f16_to_f32(f32_to_f16(0.333251953125f)) == 0.333251953125f);
    CHECK(f16_to_f32(f32_to_f16(65504.0f)) == 65504.0f);
    CHECK(f16_to_f32(f32_to_f16(5.960464477539063e-08f)) == 5.960464477539063e-08f);  // smallest subnormal
    CHECK(bf16_to_f32(f32_to_bf16(1.00390625f)) == 1.0f);                             // tie goes to even
  }

  TEST_CASE("input_subgraph keeps what computes the outputs from inputs and constants") {
    Graph g;
    const ValueId ids = g.add_input("ids", DType::i64, Shape{2, 3});
    const ValueId other = g.add_input("other", DType::f32, Shape{2, 3});
    const ValueId zero = g.add_constant("zero", Tensor::scalar<int64_t>(0));
    const ValueId w = g.add_parameter("w", Tensor::scalar<float>(2.0f));
    const ValueId one = g.add_constant("one", Tensor::scalar<float>(1.0f));
    const ValueId mask = g.op("Sub", {one, g.op("Cast", {g.op("Equal", {ids, zero})}, {{"to", int64_t{1}}})});
    const ValueId scaled = g.op("Mul", {other, w});
    g.op("Add", {scaled, mask});
    std::optional<Graph> sub = input_subgraph(g, {mask});
    REQUIRE(sub.has_value());
    REQUIRE(sub->inputs().size() == 1);
    CHECK(sub->value(sub->inputs()[0]).name == "ids");
    CHECK(sub->num_nodes() == 3);
    REQUIRE(sub->outputs().size() == 1);
    CHECK(sub->value(sub->outputs()[0]).name == g.value(mask).name);
    CHECK(sub->value(sub->outputs()[0]).shape == Shape{2, 3});
    REQUIRE(sub->find("zero") != kNoValue);
    CHECK(sub->initializer(sub->find("zero"))->get_f64(0) == 0.0);
    CHECK(sub->find("w") == kNoValue);
    CHECK(sub->find("other") == kNoValue);
    CHECK_FALSE(input_subgraph(g, {scaled}).has_value());  // it reads a parameter
  }

  TEST_CASE("a malformed node is rejected with its name and shapes") {
    Graph g;
    ValueId a = g.add_input("a", DType::f32, Shape{2, 3});
    ValueId b = g.add_input("b", DType::f32, Shape{4});
    try {
      g.add_node("Add", {a, b}, {}, 1, "bad_add");
      FAIL("expected an error");
    } catch (const InputError& e) {
      std::string msg = e.what();
      CHECK(msg.find("bad_add") != std::string::npos);
      CHECK(msg.find("[2, 3]") != std::string::npos);
      CHECK(msg.find("[4]") != std::string::npos);
    }
    CHECK_THROWS_AS(g.add_node("Ad", {a, a}), InputError);  // unknown op, with a did-you-mean hint
    try {
      g.add_node("Relu", {a}, {{"alpha", 1.0f}});
      FAIL("expected an error");
    } catch (const InputError& e) {
      CHECK(std::string(e.what()).find("unknown attribute 'alpha'") != std::string::npos);
    }
  }

  TEST_CASE("names are unique and outputs are named after their node") {
    Graph g;
    ValueId a = g.add_input("x", DType::f32, Shape{2});
    ValueId r = g.op("Relu", {a});
    ValueId r2 = g.op("Relu", {r});
    CHECK(g.value(r).name != g.value(r2).name);
    CHECK_THROWS_AS(g.add_input("x", DType::f32, Shape{1}), InputError);
    CHECK(g.topo_order().size() == 2);
  }
}
