// ONNX import: models built with the onnx protobuf API, saved, loaded back and run; malformed files and
// models; TensorProto conversion in both directions.
#include <doctest/doctest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/train/session.h"
#include "formats/onnx_import.h"
#include "formats/onnx_tensor.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::formats;

namespace {

onnx::ModelProto make_model(int opset) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("test_onnx_import");
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  m.mutable_graph()->set_name("g");
  return m;
}

// A dim of -1 becomes the symbolic dimension "N".
void add_input(onnx::GraphProto* g, const std::string& name, int elem_type,
               const std::vector<int64_t>& dims) {
  auto* in = g->add_input();
  in->set_name(name);
  auto* tt = in->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  auto* shape = tt->mutable_shape();
  for (int64_t d : dims) {
    auto* dim = shape->add_dim();
    if (d < 0)
      dim->set_dim_param("N");
    else
      dim->set_dim_value(d);
  }
}

void add_output(onnx::GraphProto* g, const std::string& name) {
  g->add_output()->set_name(name);
}

onnx::NodeProto* add_node(onnx::GraphProto* g, const std::string& op, std::vector<std::string> inputs,
                          std::vector<std::string> outputs, const std::string& name) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (auto& i : inputs) n->add_input(i);
  for (auto& o : outputs) n->add_output(o);
  return n;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / fmt::format("trainer_test_{}_{}", getpid(), name))
      .string();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// x[N,3] + b (initializer), times c (Constant node), LeakyRelu(alpha=0.1) -> y; Cast(y, to=double) -> y64.
onnx::ModelProto small_model() {
  onnx::ModelProto m = make_model(17);
  auto* g = m.mutable_graph();
  add_input(g, "x", onnx::TensorProto::FLOAT, {-1, 3});
  tensor_to_onnx(Tensor::from<float>(Shape{3}, {1, 2, 3}), "b", g->add_initializer());
  tensor_to_onnx(Tensor::from<int64_t>(Shape{2}, {7, 8}), "unused_ints", g->add_initializer());
  auto* c = add_node(g, "Constant", {}, {"c"}, "make_c");
  auto* cv = c->add_attribute();
  cv->set_name("value_float");
  cv->set_type(onnx::AttributeProto::FLOAT);
  cv->set_f(0.5f);
  add_node(g, "Add", {"x", "b"}, {"xb"}, "add_bias");
  add_node(g, "Mul", {"xb", "c"}, {"scaled"}, "scale");
  auto* lr = add_node(g, "LeakyRelu", {"scaled"}, {"y"}, "leaky");
  auto* alpha = lr->add_attribute();
  alpha->set_name("alpha");
  alpha->set_type(onnx::AttributeProto::FLOAT);
  alpha->set_f(0.1f);
  auto* cast = add_node(g, "Cast", {"y"}, {"y64"}, "to_double");
  auto* to = cast->add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(onnx::TensorProto::DOUBLE);
  add_output(g, "y");
  add_output(g, "y64");
  return m;
}

std::string error_text(const InputError& e) {
  return std::string(e.what()) + " | hint: " + e.hint();
}

}  // namespace

TEST_SUITE("onnx_import") {
  TEST_CASE("a model saved with the onnx API loads back, keeps its names and runs") {
    std::string path = temp_path("small.onnx");
    std::string bytes;
    REQUIRE(small_model().SerializeToString(&bytes));
    write_file(path, bytes);

    OnnxImportOptions opt;
    opt.batch_size = 2;
    OnnxImportResult r = import_onnx_file(path, opt);
    std::remove(path.c_str());
    const Graph& g = r.graph;

    REQUIRE(r.inputs.size() == 1);
    CHECK(g.value(r.inputs[0]).name == "x");
    CHECK(g.value(r.inputs[0]).shape == Shape{2, 3});  // the symbolic batch dimension took the batch size
    ValueId b = g.find("b");
    REQUIRE(b != kNoValue);
    CHECK(g.value(b).kind == ValueKind::parameter);
    CHECK(g.value(b).trainable);
    CHECK(g.value(g.find("unused_ints")).kind == ValueKind::constant);
    ValueId c = g.find("c");
    REQUIRE(c != kNoValue);
    CHECK(g.value(c).kind == ValueKind::constant);
    CHECK(g.initializer(c)->get_f64(0) == 0.5);
    CHECK(r.info.opset == 17);
    CHECK(r.info.producer_name == "test_onnx_import");

    std::vector<std::string> node_names;
    for (NodeId n = 0; n < g.num_nodes(); ++n) node_names.push_back(g.node(n).name);
    CHECK(node_names == std::vector<std::string>{"add_bias", "scale", "leaky", "to_double"});
    const Node& leaky = g.node(2);
    CHECK(leaky.attrs.f("alpha") == doctest::Approx(0.1f));
    CHECK(g.node(3).attrs.i("to") == onnx::TensorProto::DOUBLE);
    REQUIRE(r.outputs.size() == 2);
    CHECK(g.value(r.outputs[0]).name == "y");
    CHECK(g.value(r.outputs[1]).dtype == DType::f64);
    CHECK(g.outputs() == r.outputs);

    auto graph = std::make_shared<const Graph>(std::move(r.graph));
    auto cpu = make_cpu_backend();
    Session s(graph, *cpu);
    s.write(r.inputs[0], Tensor::from<float>(Shape{2, 3}, {-4, -3, -2, 0, 1, 2}));
    s.run({});
    std::vector<double> want = {-0.15, -0.05, 0.5, 0.5, 1.5, 2.5};
    Tensor y = s.read(r.outputs[0]);
    Tensor y64 = s.read(r.outputs[1]);
    for (int i = 0; i < 6; ++i) {
      CHECK(y.get_f64(i) == doctest::Approx(want[i]).epsilon(1e-6));
      CHECK(y64.get_f64(i) == doctest::Approx(want[i]).epsilon(1e-6));
    }
  }

  TEST_CASE("the initializer callback decides between parameters and constants") {
    OnnxImportOptions opt;
    opt.batch_size = 1;
    std::vector<std::string> asked;
    opt.initializer_is_trainable = [&](const std::string& name, const Tensor&) {
      asked.push_back(name);
      return false;
    };
    std::string bytes;
    REQUIRE(small_model().SerializeToString(&bytes));
    OnnxImportResult r = import_onnx_bytes(bytes, "small", opt);
    CHECK(asked == std::vector<std::string>{"b"});  // integer initializers are never asked about
    CHECK(r.graph.value(r.graph.find("b")).kind == ValueKind::constant);
  }

  TEST_CASE("a symbolic batch dimension without a batch size is an error with a hint") {
    std::string bytes;
    REQUIRE(small_model().SerializeToString(&bytes));
    try {
      import_onnx_bytes(bytes, "small.onnx");
      FAIL("expected an error");
    } catch (const InputError& e) {
      std::string msg = error_text(e);
      CHECK(msg.find("small.onnx") != std::string::npos);
      CHECK(msg.find("'x'") != std::string::npos);
      CHECK(msg.find("'N'") != std::string::npos);
      CHECK(msg.find("batch size") != std::string::npos);
    }
  }

  TEST_CASE("graph inputs can be baked in as constants") {
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "a", onnx::TensorProto::FLOAT, {2});
    add_input(g, "k", onnx::TensorProto::FLOAT, {2});
    add_node(g, "Mul", {"a", "k"}, {"y"}, "mul");
    add_output(g, "y");
    OnnxImportOptions opt;
    opt.constant_inputs["k"] = Tensor::from<float>(Shape{2}, {3, 4});
    OnnxImportResult r = import_onnx_model(m, "baked", opt);
    REQUIRE(r.inputs.size() == 1);
    CHECK(r.graph.value(r.graph.find("k")).kind == ValueKind::constant);
    opt.constant_inputs["nope"] = Tensor::scalar<float>(1);
    CHECK_THROWS_AS(import_onnx_model(m, "baked", opt), InputError);
  }

  TEST_CASE("Shape and Size become constants from the static shapes") {
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "x", onnx::TensorProto::FLOAT, {-1, 3, 5});
    add_node(g, "Shape", {"x"}, {"all"}, "shape_all");
    auto* tail = add_node(g, "Shape", {"x"}, {"tail"}, "shape_tail");
    auto* start = tail->add_attribute();
    start->set_name("start");
    start->set_type(onnx::AttributeProto::INT);
    start->set_i(-2);
    add_node(g, "Size", {"x"}, {"n"}, "size");
    add_node(g, "Relu", {"x"}, {"y"}, "relu");
    add_output(g, "y");
    OnnxImportOptions opt;
    opt.batch_size = 4;
    OnnxImportResult r = import_onnx_model(m, "shapes.onnx", opt);
    const Graph& gr = r.graph;
    CHECK(gr.value(gr.find("all")).kind == ValueKind::constant);
    CHECK(gr.initializer(gr.find("all"))->to_vector<int64_t>() == std::vector<int64_t>{4, 3, 5});
    CHECK(gr.initializer(gr.find("tail"))->to_vector<int64_t>() == std::vector<int64_t>{3, 5});
    CHECK(gr.initializer(gr.find("n"))->to_vector<int64_t>() == std::vector<int64_t>{60});
    CHECK(gr.initializer(gr.find("n"))->shape().rank() == 0);
  }

  TEST_CASE("ConstantOfShape of a constant shape is a constant; a non-constant shape is an error") {
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "x", onnx::TensorProto::FLOAT, {-1, 3});
    add_node(g, "Shape", {"x"}, {"s"}, "shape");
    auto* cos = add_node(g, "ConstantOfShape", {"s"}, {"sevens"}, "fill");
    auto* v = cos->add_attribute();
    v->set_name("value");
    v->set_type(onnx::AttributeProto::TENSOR);
    v->mutable_t()->set_data_type(onnx::TensorProto::INT64);
    v->mutable_t()->add_dims(1);
    v->mutable_t()->add_int64_data(7);
    add_node(g, "ConstantOfShape", {"s"}, {"zeros"}, "zero_fill");
    add_node(g, "Relu", {"x"}, {"y"}, "relu");
    add_output(g, "y");
    OnnxImportOptions opt;
    opt.batch_size = 2;
    OnnxImportResult r = import_onnx_model(m, "fill.onnx", opt);
    const Graph& gr = r.graph;
    CHECK(gr.initializer(gr.find("sevens"))->to_vector<int64_t>() == std::vector<int64_t>(6, 7));
    CHECK(gr.initializer(gr.find("zeros"))->dtype() == DType::f32);
    CHECK(gr.initializer(gr.find("zeros"))->to_vector<float>() == std::vector<float>(6, 0.0f));

    onnx::ModelProto bad = make_model(17);
    add_input(bad.mutable_graph(), "dims", onnx::TensorProto::INT64, {2});
    add_node(bad.mutable_graph(), "ConstantOfShape", {"dims"}, {"z"}, "fill_from_input");
    add_output(bad.mutable_graph(), "z");
    CHECK_THROWS_WITH_AS(
        import_onnx_model(bad, "bad_fill.onnx"),
        doctest::Contains("'fill_from_input' (ConstantOfShape): its shape 'dims' is not a constant"),
        InputError);
  }

  TEST_CASE("a truncated or corrupt file gives a clear error") {
    std::string bytes;
    REQUIRE(small_model().SerializeToString(&bytes));
    std::string path = temp_path("truncated.onnx");
    write_file(path, bytes.substr(0, bytes.size() - 3));
    try {
      import_onnx_file(path);
      FAIL("expected an error");
    } catch (const InputError& e) {
      std::string msg = error_text(e);
      CHECK(msg.find(path) != std::string::npos);
      CHECK(msg.find("truncated") != std::string::npos);
    }
    write_file(path, "this is not a protobuf message at all");
    CHECK_THROWS_AS(import_onnx_file(path), InputError);
    std::remove(path.c_str());
    try {
      import_onnx_file(path);
      FAIL("expected an error");
    } catch (const InputError& e) {
      CHECK(std::string(e.what()).find("cannot open") != std::string::npos);
    }
  }

  TEST_CASE("every unsupported node is reported in one error before anything is built") {
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "x", onnx::TensorProto::FLOAT, {2});
    add_node(g, "FrobnicateA", {"x"}, {"a"}, "first_bad");
    add_node(g, "Relu", {"a"}, {"r"}, "fine");
    add_node(g, "FrobnicateB", {"r"}, {"b"}, "second_bad");
    add_node(g, "Relu", {"b"}, {"c"}, "")->set_domain("com.example");  // known name, unknown domain
    add_output(g, "c");
    std::vector<UnsupportedNode> bad = find_unsupported_nodes(m);
    REQUIRE(bad.size() == 3);
    CHECK(bad[0].name == "first_bad");
    CHECK(bad[1].op_type == "FrobnicateB");
    CHECK(bad[2].domain == "com.example");
    try {
      import_onnx_model(m, "bad.onnx");
      FAIL("expected an error");
    } catch (const InputError& e) {
      std::string msg = e.what();
      CHECK(msg.find("bad.onnx") != std::string::npos);
      CHECK(msg.find("'first_bad' (FrobnicateA)") != std::string::npos);
      CHECK(msg.find("'second_bad' (FrobnicateB)") != std::string::npos);
      CHECK(msg.find("com.example.Relu") != std::string::npos);
      CHECK(msg.find("'fine'") == std::string::npos);
    }
  }

  TEST_CASE(
      "the ops listed as imported as other ops pass the support check; registry ops are not among them") {
    const std::vector<std::string> ops = onnx_ops_imported_as_others();
    CHECK(std::is_sorted(ops.begin(), ops.end()));
    for (const char* op : {"Einsum", "LRN", "ReverseSequence", "Upsample", "HannWindow", "Range"})
      CHECK_MESSAGE(std::find(ops.begin(), ops.end(), op) != ops.end(), op);
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "x", onnx::TensorProto::FLOAT, {2});
    for (const std::string& op : ops) {
      CHECK_MESSAGE(engine::OpRegistry::global().find(op) == nullptr, op);
      add_node(g, op, {"x"}, {op + "_out"}, op);
    }
    add_node(g, "Det", {"x"}, {"det"}, "det");
    const std::vector<UnsupportedNode> bad = find_unsupported_nodes(m);
    REQUIRE(bad.size() == 1);
    CHECK(bad[0].op_type == "Det");
  }

  TEST_CASE("If: a branch's unsupported nodes are reported; a condition computed from data is an error") {
    // y = If(cond) then Relu(x) else Det(x) (Det: no engine op).
    auto if_model = [](bool cond_from_data) {
      onnx::ModelProto m = make_model(17);
      auto* g = m.mutable_graph();
      add_input(g, "x", onnx::TensorProto::FLOAT, {2, 2});
      if (cond_from_data) {
        add_input(g, "cond", onnx::TensorProto::BOOL, {});
      } else {
        tensor_to_onnx(Tensor::scalar<bool>(true), "cond", g->add_initializer());
      }
      auto* n = add_node(g, "If", {"cond"}, {"y"}, "choose");
      for (const char* branch : {"then_branch", "else_branch"}) {
        auto* a = n->add_attribute();
        a->set_name(branch);
        a->set_type(onnx::AttributeProto::GRAPH);
        const bool then = std::string(branch) == "then_branch";
        add_node(a->mutable_g(), then ? "Relu" : "Det", {"x"}, {then ? "r" : "d"}, then ? "relu" : "det");
        add_output(a->mutable_g(), then ? "r" : "d");
      }
      add_output(g, "y");
      return m;
    };
    const std::vector<UnsupportedNode> bad = find_unsupported_nodes(if_model(false));
    REQUIRE(bad.size() == 1);
    CHECK(bad[0].name == "choose/else_branch/det");
    CHECK(bad[0].index == 0);
    CHECK_THROWS_WITH_AS(import_onnx_model(if_model(false), "if.onnx"), doctest::Contains("(Det)"),
                         InputError);
    // Without Det the taken branch imports, and the If's output is the branch's.
    onnx::ModelProto fine = if_model(false);
    fine.mutable_graph()->mutable_node(0)->mutable_attribute(1)->mutable_g()->mutable_node(0)->set_op_type(
        "Neg");
    OnnxImportResult r = import_onnx_model(fine, "if.onnx");
    CHECK(r.graph.node(r.graph.value(r.outputs.at(0)).producer).op == "Identity");
    onnx::ModelProto data = if_model(true);
    data.mutable_graph()->mutable_node(0)->mutable_attribute(1)->mutable_g()->mutable_node(0)->set_op_type(
        "Neg");
    CHECK_THROWS_WITH_AS(import_onnx_model(data, "if.onnx"), doctest::Contains("computed from the data"),
                         InputError);
  }

  TEST_CASE(
      "NonZero and Compress of values computed from the data are errors: a static plan needs constants") {
    for (const char* op : {"NonZero", "Compress"}) {
      onnx::ModelProto m = make_model(13);
      auto* g = m.mutable_graph();
      add_input(g, "x", onnx::TensorProto::FLOAT, {2, 3});
      add_input(g, "cond", onnx::TensorProto::BOOL, {2});
      add_node(g, op,
               std::string(op) == "NonZero" ? std::vector<std::string>{"x"}
                                            : std::vector<std::string>{"x", "cond"},
               {"y"}, "dynamic");
      add_output(g, "y");
      CHECK(find_unsupported_nodes(m).empty());
      CHECK_THROWS_WITH_AS(import_onnx_model(m, "dynamic.onnx"), doctest::Contains("must be a constant"),
                           InputError);
    }
  }

  TEST_CASE("a node error names the file, the node and its op") {
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "a", onnx::TensorProto::FLOAT, {2, 3});
    add_input(g, "b", onnx::TensorProto::FLOAT, {4});
    add_node(g, "Add", {"a", "b"}, {"y"}, "bad_add");
    add_output(g, "y");
    try {
      import_onnx_model(m, "shapes.onnx");
      FAIL("expected an error");
    } catch (const InputError& e) {
      std::string msg = e.what();
      CHECK(msg.rfind("shapes.onnx: node 'bad_add' (Add)", 0) == 0);
      CHECK(msg.find("[2, 3]") != std::string::npos);
      CHECK_FALSE(e.hint().empty());
    }
    // A read of a value nothing produced.
    m.mutable_graph()->mutable_node(0)->set_input(1, "missing");
    try {
      import_onnx_model(m, "order.onnx");
      FAIL("expected an error");
    } catch (const InputError& e) {
      CHECK(std::string(e.what()).find("'missing'") != std::string::npos);
      CHECK(e.hint().find("topological") != std::string::npos);
    }
  }

  TEST_CASE("Einsum equations the rewrite cannot take are errors that name the node") {
    struct Case {
      std::string equation;
      int operands;
      std::string what;
    };
    const Case cases[] = {{"ij,jk,kl->il", 3, "has 3 operands"},
                          {"ij,jk->ik", 1, "names 2 operands for 1 inputs"},
                          {"ijk,jk->ik", 2, "gives operand 'ijk' 3 indices, and its rank is 2"},
                          {"ij,jk->iz", 2, "has output index 'z', which no operand has"},
                          {"i1,jk->ik", 2, "has '1', which is not an index letter"},
                          {"ij,jk->ii", 2, "repeats an output index"},
                          {"ij,il->il", 2, "index 'i' has sizes 2 and 3"}};
    for (const Case& c : cases) {
      CAPTURE(c.equation);
      onnx::ModelProto m = make_model(17);
      auto* g = m.mutable_graph();
      add_input(g, "a", onnx::TensorProto::FLOAT, {2, 3});
      std::vector<std::string> ins = {"a"};
      for (int k = 1; k < c.operands; ++k) {
        const std::string name = "b" + std::to_string(k);
        add_input(g, name, onnx::TensorProto::FLOAT, {3, 2});
        ins.push_back(name);
      }
      onnx::NodeProto* n = add_node(g, "Einsum", ins, {"y"}, "mix");
      auto* a = n->add_attribute();
      a->set_name("equation");
      a->set_type(onnx::AttributeProto::STRING);
      a->set_s(c.equation);
      add_output(g, "y");
      try {
        import_onnx_model(m, "einsum.onnx");
        FAIL("expected an error");
      } catch (const InputError& e) {
        CHECK(std::string(e.what()).find("node 'mix' (Einsum)") != std::string::npos);
        CHECK(std::string(e.what()).find(c.what) != std::string::npos);
      }
    }
  }

  TEST_CASE("opsets outside the supported range are rejected with a hint") {
    onnx::ModelProto m = make_model(kMaxOnnxOpset + 1);
    auto* g = m.mutable_graph();
    add_input(g, "x", onnx::TensorProto::FLOAT, {2});
    add_node(g, "Relu", {"x"}, {"y"}, "r");
    add_output(g, "y");
    CHECK_THROWS_WITH_AS(import_onnx_model(m, "new.onnx"), doctest::Contains("newer than"), InputError);
    // Relu was redefined after opset 6, so an opset-6 model is not taken as today's Relu.
    m.mutable_opset_import(0)->set_version(6);
    try {
      import_onnx_model(m, "old.onnx");
      FAIL("expected an error");
    } catch (const InputError& e) {
      CHECK(std::string(e.what()).find("node 'r' (Relu)") != std::string::npos);
      CHECK(e.hint().find("version_converter") != std::string::npos);
    }
    m.mutable_opset_import(0)->set_version(kMinOnnxOpset);
    CHECK_NOTHROW(import_onnx_model(m, "ok.onnx"));
  }

  TEST_CASE("unsupported attribute types are named") {
    onnx::ModelProto m = make_model(17);
    auto* g = m.mutable_graph();
    add_input(g, "x", onnx::TensorProto::FLOAT, {2});
    auto* n = add_node(g, "Relu", {"x"}, {"y"}, "r");
    auto* a = n->add_attribute();
    a->set_name("body");
    a->set_type(onnx::AttributeProto::GRAPH);
    a->mutable_g()->set_name("inner");
    add_output(g, "y");
    CHECK_THROWS_WITH_AS(import_onnx_model(m, "attrs.onnx"), doctest::Contains("'body' has type GRAPH"),
                         InputError);
  }
}

TEST_SUITE("onnx_tensor") {
  TEST_CASE("typed fields are read for every supported type") {
    onnx::TensorProto t;
    t.set_name("f");
    t.set_data_type(onnx::TensorProto::FLOAT);
    t.add_dims(2);
    t.add_float_data(1.5f);
    t.add_float_data(-2.0f);
    Tensor f = tensor_from_onnx(t, "here");
    CHECK(f.dtype() == DType::f32);
    CHECK(f.to_vector<float>() == std::vector<float>{1.5f, -2.0f});

    onnx::TensorProto i64;
    i64.set_data_type(onnx::TensorProto::INT64);
    i64.add_dims(1);
    i64.add_dims(2);
    i64.add_int64_data(-5);
    i64.add_int64_data(1LL << 40);
    Tensor ti = tensor_from_onnx(i64, "here");
    CHECK(ti.shape() == Shape{1, 2});
    CHECK(ti.to_vector<int64_t>() == std::vector<int64_t>{-5, 1LL << 40});

    onnx::TensorProto b;
    b.set_data_type(onnx::TensorProto::BOOL);
    b.add_dims(3);
    for (int v : {1, 0, 7}) b.add_int32_data(v);
    Tensor tb = tensor_from_onnx(b, "here");
    CHECK(tb.dtype() == DType::boolean);
    CHECK(tb.get_i64(0) == 1);
    CHECK(tb.get_i64(1) == 0);
    CHECK(tb.get_i64(2) == 1);

    onnx::TensorProto h;
    h.set_data_type(onnx::TensorProto::FLOAT16);
    h.add_dims(1);
    h.add_int32_data(f32_to_f16(0.75f));
    CHECK(tensor_from_onnx(h, "here").get_f64(0) == 0.75);

    onnx::TensorProto d;
    d.set_data_type(onnx::TensorProto::DOUBLE);  // a scalar: no dims
    d.add_double_data(0.125);
    Tensor td = tensor_from_onnx(d, "here");
    CHECK(td.shape().rank() == 0);
    CHECK(td.get_f64(0) == 0.125);

    onnx::TensorProto i32;
    i32.set_data_type(onnx::TensorProto::INT32);
    i32.add_dims(2);
    i32.add_int32_data(-3);
    i32.add_int32_data(4);
    CHECK(tensor_from_onnx(i32, "here").to_vector<int32_t>() == std::vector<int32_t>{-3, 4});
  }

  TEST_CASE("raw_data round-trips and mismatched sizes are errors") {
    Tensor src = Tensor::from<double>(Shape{2, 2}, {1, -2, 3.5, 1e-300});
    onnx::TensorProto p;
    tensor_to_onnx(src, "w", &p);
    CHECK(p.name() == "w");
    CHECK(p.raw_data().size() == 32);
    Tensor back = tensor_from_onnx(p, "here");
    CHECK(back.shape() == src.shape());
    CHECK(back.to_vector<double>() == src.to_vector<double>());

    std::string bytes;
    REQUIRE(p.SerializeToString(&bytes));
    CHECK(parse_onnx_tensor(bytes, "w.pb").to_vector<double>() == src.to_vector<double>());

    p.mutable_raw_data()->resize(24);
    CHECK_THROWS_WITH_AS(tensor_from_onnx(p, "w.pb"), doctest::Contains("24 bytes of raw_data"), InputError);

    onnx::TensorProto short_typed;
    short_typed.set_name("s");
    short_typed.set_data_type(onnx::TensorProto::FLOAT);
    short_typed.add_dims(3);
    short_typed.add_float_data(1);
    CHECK_THROWS_WITH_AS(tensor_from_onnx(short_typed, "s.pb"), doctest::Contains("tensor 's' has 1 values"),
                         InputError);

    onnx::TensorProto str;
    str.set_name("txt");
    str.set_data_type(onnx::TensorProto::STRING);
    CHECK_THROWS_WITH_AS(tensor_from_onnx(str, "m.onnx"), doctest::Contains("tensor 'txt'"), InputError);
  }

  TEST_CASE("external data is read relative to the model's folder") {
    std::string dir = std::filesystem::temp_directory_path().string();
    std::string name = fmt::format("trainer_test_{}_ext.bin", getpid());
    std::vector<float> vals = {9, 8, 7, 6};
    std::string payload(8, 'x');  // 8 bytes of padding before the tensor
    payload.append(reinterpret_cast<const char*>(vals.data()), 16);
    write_file(dir + "/" + name, payload);
    onnx::TensorProto p;
    p.set_name("e");
    p.set_data_type(onnx::TensorProto::FLOAT);
    p.add_dims(4);
    p.set_data_location(onnx::TensorProto::EXTERNAL);
    auto add_kv = [&](const char* k, const std::string& v) {
      auto* kv = p.add_external_data();
      kv->set_key(k);
      kv->set_value(v);
    };
    add_kv("location", name);
    add_kv("offset", "8");
    add_kv("length", "16");
    CHECK(tensor_from_onnx(p, "m.onnx", dir).to_vector<float>() == vals);
    // Offsets and lengths that do not fit the file, however large, and malformed ones.
    auto with = [&](const char* key, const std::string& v) {
      onnx::TensorProto q = p;
      for (auto& kv : *q.mutable_external_data())
        if (kv.key() == key) kv.set_value(v);
      return q;
    };
    for (const char* offset : {"9223372036854775807", "20"})
      CHECK_THROWS_WITH_AS(tensor_from_onnx(with("offset", offset), "m.onnx", dir),
                           doctest::Contains("which has 24"), InputError);
    CHECK_THROWS_WITH_AS(tensor_from_onnx(with("length", "9223372036854775807"), "m.onnx", dir),
                         doctest::Contains("which has 24"), InputError);
    for (const char* bad : {"8junk", "-8", ""})
      CHECK_THROWS_WITH_AS(tensor_from_onnx(with("offset", bad), "m.onnx", dir),
                           doctest::Contains("malformed external_data 'offset'"), InputError);
    // Locations outside the model's folder, and ones that are not files.
    for (const std::string& where : {std::string("../") + name, dir + "/" + name})
      CHECK_THROWS_WITH_AS(tensor_from_onnx(with("location", where), "m.onnx", dir),
                           doctest::Contains("outside the model's folder"), InputError);
    CHECK_THROWS_WITH_AS(tensor_from_onnx(with("location", "."), "m.onnx", dir),
                         doctest::Contains("not a readable file"), InputError);
    std::remove((dir + "/" + name).c_str());
    CHECK_THROWS_WITH_AS(tensor_from_onnx(p, "m.onnx", dir), doctest::Contains("not a readable file"),
                         InputError);
  }

  TEST_CASE("ops of opsets past the ONNX library's schemas keep their newer inputs") {
    // ReduceMean-18 takes its axes as an input, Pad-18 an axes input: valid at opsets 18 to 21, whatever the
    // linked ONNX library's newest schemas are.
    for (int opset : {18, 21}) {
      CAPTURE(opset);
      onnx::ModelProto m = make_model(opset);
      auto* g = m.mutable_graph();
      add_input(g, "x", onnx::TensorProto::FLOAT, {4, 3, 8});
      tensor_to_onnx(Tensor::from<int64_t>(Shape{1}, {2}), "axes", g->add_initializer());
      tensor_to_onnx(Tensor::from<int64_t>(Shape{2}, {1, 1}), "pads", g->add_initializer());
      add_node(g, "ReduceMean", {"x", "axes"}, {"m"}, "mean");
      add_node(g, "Pad", {"m", "pads", "", "axes"}, {"y"}, "pad");
      add_output(g, "y");
      OnnxImportResult r = import_onnx_model(m, "new.onnx");
      CHECK(r.graph.value(r.outputs[0]).shape == Shape{4, 3, 3});
    }
  }

  TEST_CASE("malformed nodes are errors that name them, whatever their op") {
    auto error_of = [](const onnx::ModelProto& m) {
      try {
        import_onnx_model(m, "bad.onnx");
      } catch (const InputError& e) {
        return error_text(e);
      }
      return std::string("no error");
    };
    auto one_node = [](const std::string& op, std::vector<std::string> inputs,
                       const std::vector<Tensor>& initializers, std::vector<std::string> outputs = {"y"}) {
      onnx::ModelProto m = make_model(17);
      auto* g = m.mutable_graph();
      add_input(g, "x", onnx::TensorProto::FLOAT, {4, 3, 8, 8});
      for (size_t i = 0; i < initializers.size(); ++i)
        tensor_to_onnx(initializers[i], fmt::format("c{}", i), g->add_initializer());
      add_node(g, op, std::move(inputs), std::move(outputs), "n");
      add_output(g, "y");
      return m;
    };
    // Required inputs missing or left empty, for any op (the ONNX schema says which).
    CHECK(error_of(one_node("Conv", {}, {}))
              .find("node 'n' (Conv) has no input 0 ('X'), which Conv requires") != std::string::npos);
    CHECK(error_of(one_node("MaxPool", {""}, {})).find("has no input 0 ('X')") != std::string::npos);
    CHECK(error_of(one_node("DequantizeLinear", {"x"}, {})).find("has no input 1 ('x_scale')") !=
          std::string::npos);
    CHECK(error_of(one_node("Relu", {"x", "x"}, {})).find("has 2 inputs; Relu takes 1 to 1") !=
          std::string::npos);
    // Inputs that hold no value where one is needed, or do not fit the input.
    const Tensor none = Tensor(DType::i64, Shape{0});
    CHECK(error_of(one_node("TopK", {"x", "c0"}, {none}, {"y", "i"})).find("its K holds 0 values, not one") !=
          std::string::npos);
    CHECK(error_of(one_node("CumSum", {"x", "c0"}, {none})).find("its axis holds 0 values, not one") !=
          std::string::npos);
    CHECK(
        error_of(one_node("DequantizeLinear", {"x", "c0"}, {Tensor::from<float>(Shape{5}, {1, 1, 1, 1, 1})}))
            .find("its scale of 5 values does not fit axis 1 of the input [4, 3, 8, 8]") !=
        std::string::npos);
    // A shape no machine holds.
    CHECK(error_of(one_node("ConstantOfShape", {"c0"}, {Tensor::from<int64_t>(Shape{1}, {int64_t{1} << 40})}))
              .find("is too large: over 2^40 bytes") != std::string::npos);
    CHECK(error_of(one_node("Tile", {"x", "c0"}, {Tensor::from<int64_t>(Shape{4}, {1, 1 << 30, 1 << 30, 1})}))
              .find("would take more than 2^40 bytes") != std::string::npos);
    // Attributes of another type than the op's schema gives them.
    auto with_attr = [&](onnx::ModelProto m, const std::string& name, auto set) {
      auto* a = m.mutable_graph()->mutable_node(0)->add_attribute();
      a->set_name(name);
      set(a);
      return m;
    };
    CHECK(error_of(with_attr(one_node("ArgMax", {"x"}, {}), "axis", [](onnx::AttributeProto* a) {
            a->set_type(onnx::AttributeProto::STRING);
            a->set_s("1");
          })).find("attribute 'axis' is of type STRING; ArgMax takes INT") != std::string::npos);
    // Windows no convolution or pooling can have: no filters, strides past 2^31, pads as wide as the kernel.
    CHECK(error_of(one_node("Conv", {"x", "c0"}, {Tensor(DType::f32, Shape{0, 3, 3, 3})}))
              .find("holds no values") != std::string::npos);
    auto ints = [](const std::vector<int64_t>& v) {
      return [v](onnx::AttributeProto* a) {
        a->set_type(onnx::AttributeProto::INTS);
        for (int64_t i : v) a->add_ints(i);
      };
    };
    CHECK(error_of(with_attr(one_node("Conv", {"x", "c0"}, {Tensor(DType::f32, Shape{2, 3, 3, 3})}),
                             "strides", ints({int64_t{1} << 62, 1})))
              .find("must be below 2^31") != std::string::npos);
    onnx::ModelProto pool = with_attr(one_node("AveragePool", {"x"}, {}), "kernel_shape", ints({2, 2}));
    CHECK(error_of(with_attr(pool, "pads", ints({2, 2, 2, 2})))
              .find("pads 2, 2, 2, 2 must be smaller than the kernel") != std::string::npos);
  }
}
