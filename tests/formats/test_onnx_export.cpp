// ONNX export: models from the layer library and hand-made graphs with private ops are exported, pass
// libonnx's checker, keep their names and take a symbolic batch; each case also leaves model.onnx, inputs and
// the engine's outputs at two batch sizes (.npy) under TRAINER_ONNX_EXPORT_DIR, where onnx_export_check.py
// runs them in onnxruntime. Bad graphs (private ops, batch-dependent constants, opsets) are errors naming the
// node.
#include <doctest/doctest.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include "engine/backend/backend.h"
#include "engine/ops/op_helpers.h"
#include "engine/plan/fusion.h"
#include "engine/train/session.h"
#include "formats/onnx_export.h"
#include "formats/onnx_import.h"
#include "formats/onnx_tensor.h"
#include "models/build.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::formats;

namespace fs = std::filesystem;

namespace {

// ---- model sections written by hand, as a spec's [model] would be

LayerSpec layer(std::string type, std::vector<std::pair<std::string, ArgValue>> args = {},
                std::string name = "", std::vector<std::string> inputs = {}) {
  LayerSpec l;
  l.type = std::move(type);
  l.name = std::move(name);
  l.inputs = std::move(inputs);
  l.pos = SourcePos{"model.toml", 1, 1};
  l.type_pos = l.pos;
  for (auto& [k, v] : args) l.args[k] = Arg{std::move(v), l.pos, {}};
  return l;
}

ModelSection section(std::vector<int64_t> input, std::vector<LayerSpec> layers,
                     std::string dtype = "float32") {
  ModelSection s;
  s.input.shape = std::move(input);
  s.input.dtype = std::move(dtype);
  s.layers = std::move(layers);
  return s;
}

ArgValue i(int64_t v) {
  return v;
}
ArgValue s(const char* v) {
  return std::string(v);
}

// ---- running graphs on the engine

std::vector<Tensor> run_engine(const Graph& graph, const std::vector<ValueId>& inputs,
                               const std::vector<Tensor>& xs, const std::vector<ValueId>& outputs) {
  auto g = std::make_shared<Graph>(graph);
  for (ValueId v : outputs) g->mark_output(v);
  auto backend = make_cpu_backend();
  Session session(g, *backend);
  for (size_t k = 0; k < inputs.size(); ++k) session.write(inputs[k], xs[k]);
  session.run({});
  std::vector<Tensor> ys;
  for (ValueId v : outputs) ys.push_back(session.read(v));
  return ys;
}

Tensor nhwc_to_nchw(const Tensor& t) {
  const Shape& s = t.shape();
  const int64_t n = s[0], h = s[1], w = s[2], c = s[3];
  Tensor out(t.dtype(), Shape{n, c, h, w});
  for (int64_t b = 0; b < n; ++b)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t k = 0; k < c; ++k)
          out.set_f64(((b * c + k) * h + y) * w + x, t.get_f64(((b * h + y) * w + x) * c + k));
  return out;
}

// ---- fixture files for onnx_export_check.py

fs::path fixture_dir() {
  return fs::path(TRAINER_ONNX_EXPORT_DIR);
}

void write_npy(const fs::path& path, const Tensor& t) {
  const char* descr = t.dtype() == DType::f32   ? "<f4"
                      : t.dtype() == DType::i64 ? "<i8"
                      : t.dtype() == DType::i32 ? "<i4"
                                                : nullptr;
  REQUIRE(descr != nullptr);
  std::string shape;
  for (int64_t d : t.shape().dims()) shape += std::to_string(d) + ", ";
  if (t.shape().rank() == 1)
    shape.resize(shape.size() - 1);  // "(5,)"
  else if (!shape.empty())
    shape.resize(shape.size() - 2);
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, shape);
  // Magic (6) + version (2) + header length (2) + header + newline is a multiple of 64.
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&len), 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  REQUIRE(f.good());
}

std::string json_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t k = 0; k < items.size(); ++k) out += (k ? ", \"" : "\"") + items[k] + "\"";
  return out + "]";
}

// One fixture entry of manifest.json: a model file and its runs.
struct FixtureCase {
  std::string name, model;
  int opset = 0;
  std::vector<std::string> inputs, outputs, initializers;
  std::vector<std::string> runs;  // JSON objects
};

// Every case the tests wrote in this process; manifest.json is rewritten after each, so it lists them all.
std::vector<FixtureCase>& fixture_cases() {
  static std::vector<FixtureCase> cases;
  return cases;
}

void write_manifest() {
  std::string out = "{\"cases\": [\n";
  const auto& cases = fixture_cases();
  for (size_t k = 0; k < cases.size(); ++k) {
    const FixtureCase& c = cases[k];
    std::string runs;
    for (size_t r = 0; r < c.runs.size(); ++r) runs += (r ? ", " : "") + c.runs[r];
    out += fmt::format(
        "  {{\"name\": \"{}\", \"model\": \"{}\", \"opset\": {}, \"inputs\": {}, \"outputs\": {}, "
        "\"initializers\": {}, \"runs\": [{}]}}{}\n",
        c.name, c.model, c.opset, json_list(c.inputs), json_list(c.outputs), json_list(c.initializers), runs,
        k + 1 < cases.size() ? "," : "");
  }
  out += "]}\n";
  std::ofstream(fixture_dir() / "manifest.json") << out;
}

// Saves a model and one run per batch size (inputs and the engine's outputs) for the Python check.
struct Fixture {
  FixtureCase c;
  fs::path dir;
  Fixture(const std::string& name, const onnx::ModelProto& model,
          const std::vector<std::string>& initializers) {
    c.name = name;
    dir = fixture_dir() / name;
    fs::create_directories(dir);
    c.model = name + "/model.onnx";
    save_onnx(model, (fixture_dir() / c.model).string());
    for (const auto& op : model.opset_import())
      if (op.domain().empty()) c.opset = static_cast<int>(op.version());
    for (const auto& in : model.graph().input()) c.inputs.push_back(in.name());
    for (const auto& out : model.graph().output()) c.outputs.push_back(out.name());
    c.initializers = initializers;
  }
  void add_run(const std::vector<Tensor>& xs, const std::vector<Tensor>& ys) {
    const int64_t batch = xs.at(0).shape()[0];
    std::vector<std::string> x_files, y_files;
    for (size_t k = 0; k < xs.size(); ++k) {
      x_files.push_back(fmt::format("{}/x{}_b{}.npy", c.name, k, batch));
      write_npy(fixture_dir() / x_files.back(), xs[k]);
    }
    for (size_t k = 0; k < ys.size(); ++k) {
      y_files.push_back(fmt::format("{}/y{}_b{}.npy", c.name, k, batch));
      write_npy(fixture_dir() / y_files.back(), ys[k]);
    }
    c.runs.push_back(fmt::format("{{\"batch\": {}, \"x\": {}, \"y\": {}}}", batch, json_list(x_files),
                                 json_list(y_files)));
  }
  void finish() {
    auto& cases = fixture_cases();
    cases.erase(
        std::remove_if(cases.begin(), cases.end(), [&](const FixtureCase& o) { return o.name == c.name; }),
        cases.end());
    cases.push_back(c);
    write_manifest();
  }
};

// ---- checks on exported models

int known_libonnx_opset() {
  return onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map().at("").second;
}

const onnx::NodeProto* find_node(const onnx::ModelProto& m, const std::string& name) {
  for (const auto& n : m.graph().node())
    if (n.name() == name) return &n;
  return nullptr;
}

int count_ops(const onnx::ModelProto& m, const std::string& op) {
  int k = 0;
  for (const auto& n : m.graph().node()) k += n.op_type() == op;
  return k;
}

std::set<std::string> op_types(const onnx::ModelProto& m) {
  std::set<std::string> ops;
  for (const auto& n : m.graph().node()) ops.insert(n.op_type());
  return ops;
}

const onnx::AttributeProto* find_attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}

// [dim_param or value, ...] of a graph input or output.
std::vector<std::string> dims_of(const onnx::ValueInfoProto& v) {
  std::vector<std::string> out;
  for (const auto& d : v.type().tensor_type().shape().dim())
    out.push_back(d.has_dim_param() ? d.dim_param() : std::to_string(d.dim_value()));
  return out;
}

// The common checks: header, checker, symbolic batch, and every weight and node under its own name.
void check_exported(const onnx::ModelProto& m, const Graph& g, int opset) {
  CHECK(m.producer_name() == "trainer");
  CHECK(m.producer_version() == "test-1");
  CHECK(m.ir_version() == onnx_ir_version_for_opset(opset));
  REQUIRE(m.opset_import_size() == 1);
  CHECK(m.opset_import(0).domain().empty());
  CHECK(m.opset_import(0).version() == opset);
  if (opset <= known_libonnx_opset()) CHECK(check_onnx(m));
  CHECK(m.graph().value_info_size() == 0);
  for (const auto& v : m.graph().input()) CHECK(dims_of(v).at(0) == "batch");
  for (const auto& v : m.graph().output()) CHECK(dims_of(v).at(0) == "batch");
  for (const auto& n : m.graph().node()) CHECK_MESSAGE(n.domain().empty(), n.name());

  std::map<std::string, const onnx::TensorProto*> inits;
  for (const auto& t : m.graph().initializer()) inits[t.name()] = &t;
  for (ValueId v = 0; v < g.num_values(); ++v) {
    const Value& val = g.value(v);
    if (val.kind != ValueKind::parameter && val.kind != ValueKind::state) continue;
    if (val.consumers.empty()) continue;
    auto it = inits.find(val.name);
    REQUIRE_MESSAGE(it != inits.end(), "no initializer named " << val.name);
    Tensor t = tensor_from_onnx(*it->second, "test");
    CHECK(t.shape() == val.shape);
    CHECK(std::memcmp(t.raw(), g.initializer(v)->raw(), t.nbytes()) == 0);
  }
}

std::vector<std::string> weight_names(const Graph& g) {
  std::vector<std::string> names;
  for (ValueId v = 0; v < g.num_values(); ++v)
    if ((g.value(v).kind == ValueKind::parameter || g.value(v).kind == ValueKind::state) &&
        !g.value(v).consumers.empty())
      names.push_back(g.value(v).name);
  return names;
}

// ---- layer-library models

struct ModelCase {
  std::string name;
  ModelSection model;
  int opset = 17;
  int64_t vocab = 0;  // > 0: token ids in [0, vocab)
  bool fuse = false;  // apply the planner's fusion first: FusedGemm nodes to lower
};

// Moving statistics away from their initial 0 and 1, so that BatchNorm's inference form shows.
void randomize_state(Graph& g) {
  for (ValueId v = 0; v < g.num_values(); ++v) {
    if (g.value(v).kind != ValueKind::state) continue;
    Tensor* t = g.mutable_initializer(v);
    const bool variance = g.value(v).name.find("variance") != std::string::npos;
    Tensor r = ops::random_tensor(t->shape(), variance ? 0.5 : -0.5, variance ? 1.5 : 0.5,
                                  std::hash<std::string>{}(g.value(v).name) % 1000, DType::f32);
    *t = r;
  }
}

models::BuiltModel build(const ModelCase& c, int64_t batch) {
  models::BuildOptions o;
  o.batch_size = batch;
  o.training = false;
  o.seed = 11;
  models::BuiltModel m = models::build_model(c.model, o);
  randomize_state(m.graph);
  if (c.fuse) fuse(m.graph);
  return m;
}

OnnxExportOptions options_for(const models::BuiltModel& m, int opset) {
  OnnxExportOptions o;
  o.opset = opset;
  o.producer_version = "test-1";
  o.channels_last_inputs = {m.input_channels_last};
  o.input_names = {"input"};
  o.output_names = {"output"};
  o.metadata = {{"final_activation", m.final_activation}};
  return o;
}

// Exports the case's model (built for 3 samples), checks it, and writes it with runs at 3 and 5 samples.
onnx::ModelProto export_case(const ModelCase& c) {
  models::BuiltModel m3 = build(c, 3);
  onnx::ModelProto model = export_onnx(m3.graph, {m3.input}, {m3.output}, options_for(m3, c.opset));
  check_exported(model, m3.graph, c.opset);
  REQUIRE(model.graph().input_size() == 1);
  REQUIRE(model.graph().output_size() == 1);
  CHECK(model.graph().input(0).name() == "input");
  CHECK(model.graph().output(0).name() == "output");
  if (!c.fuse)
    for (NodeId n = 0; n < m3.graph.num_nodes(); ++n)
      CHECK_MESSAGE(find_node(model, m3.graph.node(n).name) != nullptr, m3.graph.node(n).name);

  Fixture f(c.name, model, weight_names(m3.graph));
  for (int64_t batch : {3, 5}) {
    models::BuiltModel m = batch == 3 ? std::move(m3) : build(c, batch);
    const Value& in = m.graph.value(m.input);
    Tensor x;
    if (c.vocab > 0) {
      x = ops::random_int_tensor(in.shape, 0, c.vocab, 100 + batch, in.dtype);
    } else if (m.input_channels_last) {
      const Shape& s = in.shape;
      x = ops::random_tensor(Shape{s[0], s[2], s[3], s[1]}, -1, 1, 100 + batch, DType::f32);
    } else {
      x = ops::random_tensor(in.shape, -1, 1, 100 + batch, DType::f32);
    }
    Tensor fed = m.input_channels_last ? nhwc_to_nchw(x) : x;
    f.add_run({x}, run_engine(m.graph, {m.input}, {fed}, {m.output}));
  }
  f.finish();
  return model;
}

ModelCase mlp_case() {
  return {"mlp", section({20}, {layer("Dense", {{"units", i(16)}, {"activation", s("relu")}}),
                                layer("Dense", {{"units", i(10)}, {"activation", s("softmax")}})})};
}

ModelCase cifar_cnn_case() {
  return {
      "cifar_cnn",
      section(
          {32, 32, 3},
          {layer("Conv2D", {{"filters", i(8)}, {"kernel_size", i(3)}, {"activation", s("relu")}}),
           layer("MaxPooling2D", {{"pool_size", i(2)}}),
           layer(
               "Conv2D",
               {{"filters", i(8)}, {"kernel_size", i(3)}, {"padding", s("same")}, {"activation", s("relu")}}),
           layer("Flatten"), layer("Dense", {{"units", i(32)}, {"activation", s("relu")}}),
           layer("Dense", {{"units", i(10)}, {"activation", s("softmax")}})})};
}

ModelCase lstm_case() {
  ModelCase c{"embedding_lstm", section({12},
                                        {layer("Embedding", {{"input_dim", i(50)}, {"output_dim", i(8)}}),
                                         layer("LSTM", {{"units", i(16)}}),
                                         layer("Dense", {{"units", i(1)}, {"activation", s("sigmoid")}})},
                                        "int64")};
  c.vocab = 50;
  return c;
}

ModelCase batchnorm_case() {
  return {"batchnorm_dropout",
          section({6, 6, 4},
                  {layer("Conv2D", {{"filters", i(6)}, {"kernel_size", i(3)}}), layer("BatchNormalization"),
                   layer("Activation", {{"activation", s("relu")}}), layer("Dropout", {{"rate", 0.5}}),
                   layer("Flatten"), layer("Dense", {{"units", i(12)}}), layer("BatchNormalization"),
                   layer("Dropout", {{"rate", 0.25}}),
                   layer("Dense", {{"units", i(3)}, {"activation", s("softmax")}})})};
}

ModelCase gru_case() {
  return {"gru", section({7, 5}, {layer("GRU", {{"units", i(6)}, {"return_sequences", true}}),
                                  layer("GRU", {{"units", i(4)}, {"reset_after", false}}),
                                  layer("Dense", {{"units", i(2)}})})};
}

ModelCase residual_case() {
  return {"residual",
          section({16}, {layer("Dense", {{"units", i(16)}, {"activation", s("relu")}}, "a"),
                         layer("Dense", {{"units", i(16)}, {"activation", s("gelu")}}, "b"),
                         layer("Add", {}, "sum", {"a", "b"}), layer("LayerNormalization", {}, "norm"),
                         layer("Dense", {{"units", i(5)}, {"activation", s("tanh")}}, "out")})};
}

// The remaining layers and layout paths: Keras's Reshape to a one-channel image (then a Reshape to NCHW),
// leaky_relu, pooling with "same" padding, global pooling, Keras's Reshape (back to channels-last), BatchNorm
// and LayerNorm on a sequence, Concatenate.
ModelCase other_layers_case() {
  return {
      "other_layers",
      section({64},
              {layer("Reshape", {{"target_shape", std::vector<int64_t>{8, 8, 1}}}, "image"),
               layer("Conv2D",
                     {{"filters", i(4)},
                      {"kernel_size", i(3)},
                      {"padding", s("same")},
                      {"activation", s("leaky_relu")}},
                     "conv"),
               layer("MaxPooling2D", {{"pool_size", i(3)}, {"strides", i(2)}, {"padding", s("same")}}, "max"),
               layer("AveragePooling2D", {{"pool_size", i(2)}, {"padding", s("same")}}, "avg"),
               layer("GlobalAveragePooling2D", {}, "gap", {"avg"}),
               layer("Reshape", {{"target_shape", std::vector<int64_t>{-1, 4}}}, "seq", {"avg"}),
               layer("BatchNormalization", {}, "seq_bn"), layer("LayerNormalization", {}, "seq_ln"),
               layer("GRU", {{"units", i(4)}}, "gru"), layer("Concatenate", {}, "cat", {"gap", "gru"}),
               layer("Dense", {{"units", i(3)}, {"activation", s("softmax")}}, "out")})};
}

// ---- hand-made graphs

Tensor f32_random(Shape s, uint64_t seed) {
  return ops::random_tensor(s, -1, 1, seed, DType::f32);
}

// MatMulTransposed and FusedGemm in their Gemm and batched (MatMul) forms, with transposes, alpha, relu,
// tanh-GELU and the saved pre-activation: three inputs, eight outputs.
struct PrivateOpsGraph {
  Graph g;
  std::vector<ValueId> inputs, outputs;
  explicit PrivateOpsGraph(int64_t batch) {
    ValueId x = g.add_input("x", DType::f32, Shape{batch, 6});
    ValueId sq = g.add_input("seq", DType::f32, Shape{batch, 3, 6});
    ValueId t = g.add_input("cols", DType::f32, Shape{batch, 6, 3});
    inputs = {x, sq, t};
    ValueId w = g.add_parameter("w", f32_random({5, 6}, 1));
    ValueId k = g.add_parameter("k", f32_random({1, 5, 6}, 2));
    ValueId k2 = g.add_parameter("k2", f32_random({6, 4}, 3));
    ValueId w2 = g.add_parameter("w2", f32_random({5, 6}, 4));
    ValueId b2 = g.add_parameter("b2", f32_random({5}, 5));
    ValueId w3 = g.add_parameter("w3", f32_random({6, 4}, 6));
    ValueId b3 = g.add_parameter("b3", f32_random({4}, 7));
    auto node = [&](const char* op, std::vector<ValueId> in, Attributes a, int outs, const char* name) {
      return g.node(g.add_node(op, std::move(in), std::move(a), outs, name)).outputs;
    };
    outputs.push_back(
        node("MatMulTransposed", {x, w}, {{"transB", int64_t{1}}, {"alpha", 0.5f}}, 1, "mmt_gemm")[0]);
    outputs.push_back(
        node("MatMulTransposed", {sq, k}, {{"transB", int64_t{1}}, {"alpha", 2.0f}}, 1, "mmt_batched")[0]);
    outputs.push_back(node("MatMulTransposed", {t, k2}, {{"transA", int64_t{1}}}, 1, "mmt_trans_a")[0]);
    auto gelu = node("FusedGemm", {sq, w2, b2},
                     {{"transB", int64_t{1}}, {"activation", std::string("gelu_tanh")}}, 2, "fused_gelu");
    outputs.push_back(gelu[0]);
    outputs.push_back(gelu[1]);
    outputs.push_back(
        node("FusedGemm", {x, w3, b3}, {{"activation", std::string("relu")}}, 1, "fused_relu")[0]);
    auto plain = node("FusedGemm", {x, w}, {{"transB", int64_t{1}}}, 2, "fused_plain");
    outputs.push_back(plain[0]);
    outputs.push_back(plain[1]);
  }
};

// ReduceMean with an axes input, Squeeze with the attribute form, Slice with the opset-1 attributes and a
// Cast: what moves between attributes and inputs with the opset.
struct AxesGraph {
  Graph g;
  ValueId x, y;
  explicit AxesGraph(int64_t batch) {
    x = g.add_input("x", DType::f32, Shape{batch, 4, 3});
    ValueId axes = g.add_constant("mean_axes", ops::i64_tensor({2}));
    ValueId m = g.node(g.add_node("ReduceMean", {x, axes}, {}, 1, "mean")).outputs[0];
    ValueId sq =
        g.node(g.add_node("Squeeze", {m}, {{"axes", std::vector<int64_t>{2}}}, 1, "squeeze")).outputs[0];
    ValueId sl = g.node(g.add_node("Slice", {sq},
                                   {{"starts", std::vector<int64_t>{1}},
                                    {"ends", std::vector<int64_t>{3}},
                                    {"axes", std::vector<int64_t>{1}}},
                                   1, "slice"))
                     .outputs[0];
    y = g.node(g.add_node("Cast", {sl}, {{"to", int64_t{1}}}, 1, "cast")).outputs[0];
  }
};

template <class F>
InputError export_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e;
  }
  FAIL("the export succeeded");
  return InputError("", "");
}

OnnxExportOptions plain(int opset = 17) {
  OnnxExportOptions o;
  o.opset = opset;
  o.producer_version = "test-1";
  return o;
}

}  // namespace

TEST_SUITE("onnx_export") {
  TEST_CASE("a Dense MLP with softmax exports with a symbolic batch and its weights' names") {
    onnx::ModelProto m = export_case(mlp_case());
    CHECK(dims_of(m.graph().input(0)) == std::vector<std::string>{"batch", "20"});
    CHECK(dims_of(m.graph().output(0)) == std::vector<std::string>{"batch", "10"});
    CHECK(op_types(m).count("Softmax") == 1);
    REQUIRE(m.metadata_props_size() == 1);
    CHECK(m.metadata_props(0).key() == "final_activation");
    CHECK(m.metadata_props(0).value() == "softmax");
  }

  TEST_CASE("the CIFAR CNN takes channels-last images through a Transpose at the input") {
    onnx::ModelProto m = export_case(cifar_cnn_case());
    CHECK(dims_of(m.graph().input(0)) == std::vector<std::string>{"batch", "32", "32", "3"});
    const onnx::NodeProto& first = m.graph().node(0);
    CHECK(first.op_type() == "Transpose");
    CHECK(first.input(0) == "input");
    const onnx::AttributeProto* perm = find_attr(first, "perm");
    REQUIRE(perm != nullptr);
    CHECK(std::vector<int64_t>(perm->ints().begin(), perm->ints().end()) == std::vector<int64_t>{0, 3, 1, 2});
  }

  TEST_CASE("Embedding + LSTM + sigmoid: the activations attribute becomes STRINGS") {
    onnx::ModelProto m = export_case(lstm_case());
    CHECK(m.graph().input(0).type().tensor_type().elem_type() == onnx::TensorProto::INT64);
    const onnx::NodeProto* lstm = nullptr;
    for (const auto& n : m.graph().node())
      if (n.op_type() == "LSTM") lstm = &n;
    REQUIRE(lstm != nullptr);
    const onnx::AttributeProto* acts = find_attr(*lstm, "activations");
    REQUIRE(acts != nullptr);
    CHECK(acts->type() == onnx::AttributeProto::STRINGS);
    CHECK(std::vector<std::string>(acts->strings().begin(), acts->strings().end()) ==
          std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"});
    // Batch-major in the IR (layout 1); written time-major between Transposes, which onnxruntime runs.
    CHECK(find_attr(*lstm, "layout") == nullptr);
    CHECK(count_ops(m, "Transpose") == 2);
    // Opset 13 has no layout attribute: the same form exports there.
    ModelCase c13 = lstm_case();
    c13.name = "embedding_lstm_opset13";
    c13.opset = 13;
    export_case(c13);
  }

  TEST_CASE("exported recurrent models import again: STRINGS activations, the same outputs") {
    for (const ModelCase& c : {lstm_case(), gru_case()}) {
      CAPTURE(c.name);
      models::BuiltModel m = build(c, 4);
      onnx::ModelProto model = export_onnx(m.graph, {m.input}, {m.output}, options_for(m, c.opset));
      OnnxImportOptions o;
      o.batch_size = 4;
      OnnxImportResult back = import_onnx_model(model, c.name + ".onnx", o);
      REQUIRE(back.inputs.size() == 1);
      REQUIRE(back.outputs.size() == 1);
      int recurrent = 0;
      for (NodeId n = 0; n < back.graph.num_nodes(); ++n) {
        const Node& node = back.graph.node(n);
        if (node.op != "LSTM" && node.op != "GRU") continue;
        ++recurrent;
        CHECK(node.attrs.s("activations") == (node.op == "LSTM" ? "Sigmoid,Tanh,Tanh" : "Sigmoid,Tanh"));
      }
      CHECK(recurrent >= 1);
      const Value& in = m.graph.value(m.input);
      Tensor x = c.vocab > 0 ? ops::random_int_tensor(in.shape, 0, c.vocab, 7, in.dtype)
                             : ops::random_tensor(in.shape, -1, 1, 7, DType::f32);
      Tensor want = run_engine(m.graph, {m.input}, {x}, {m.output})[0];
      Tensor got = run_engine(back.graph, back.inputs, {x}, back.outputs)[0];
      REQUIRE(got.numel() == want.numel());
      for (int64_t i = 0; i < want.numel(); ++i)
        CHECK(got.data<float>()[i] == doctest::Approx(want.data<float>()[i]).epsilon(1e-5));
    }
  }

  TEST_CASE("BatchNormalization exports in inference form and Dropout leaves nothing") {
    onnx::ModelProto m = export_case(batchnorm_case());
    std::set<std::string> ops = op_types(m);
    CHECK(ops.count("Dropout") == 0);
    int bn = 0;
    for (const auto& n : m.graph().node())
      if (n.op_type() == "BatchNormalization") {
        ++bn;
        CHECK(n.output_size() == 1);
        CHECK(find_attr(n, "training_mode")->i() == 0);
      }
    CHECK(bn == 2);
  }

  TEST_CASE("stacked GRUs, with and without reset_after") {
    onnx::ModelProto m = export_case(gru_case());
    int grus = 0;
    for (const auto& n : m.graph().node())
      if (n.op_type() == "GRU") {
        ++grus;
        const onnx::AttributeProto* acts = find_attr(n, "activations");
        REQUIRE(acts != nullptr);
        CHECK(acts->strings_size() == 2);
      }
    CHECK(grus == 2);
  }

  TEST_CASE("a residual Add graph with GELU and LayerNormalization; GELU is the erf formula below opset 20") {
    onnx::ModelProto m = export_case(residual_case());
    std::set<std::string> ops = op_types(m);
    CHECK(ops.count("Gelu") == 0);
    CHECK(ops.count("Erf") == 1);
    CHECK(ops.count("LayerNormalization") == 1);
    ModelCase c20 = residual_case();
    c20.name = "residual_opset20";
    c20.opset = 20;
    onnx::ModelProto m20 = export_case(c20);
    CHECK(op_types(m20).count("Gelu") == 1);
    CHECK(op_types(m20).count("Erf") == 0);
    CHECK(m20.ir_version() == 9);
  }

  TEST_CASE("the other layers and layout changes") {
    onnx::ModelProto m = export_case(other_layers_case());
    CHECK(dims_of(m.graph().input(0)) == std::vector<std::string>{"batch", "64"});
    // A one-channel image changes layout by a Reshape whose batch dimension is -1.
    const onnx::NodeProto* to_nchw = find_node(m, "conv/Reshape");
    REQUIRE(to_nchw != nullptr);
    int shapes = 0;
    for (const auto& t : m.graph().initializer())
      if (t.name() == to_nchw->input(1)) {
        ++shapes;
        CHECK(tensor_from_onnx(t, "test").get_i64(0) == -1);
      }
    CHECK(shapes == 1);
  }

  TEST_CASE("fused graphs: FusedGemm becomes Gemm with Relu or GELU") {
    ModelCase c = residual_case();
    c.name = "residual_fused";
    c.fuse = true;
    onnx::ModelProto m = export_case(c);
    std::set<std::string> ops = op_types(m);
    CHECK(ops.count("Gemm") == 1);
    CHECK(ops.count("Erf") == 1);
    CHECK(ops.count("FusedGemm") == 0);
    ModelCase mlp = mlp_case();
    mlp.name = "mlp_fused";
    mlp.fuse = true;
    onnx::ModelProto f = export_case(mlp);
    CHECK(count_ops(f, "Gemm") == 2);
    CHECK(count_ops(f, "Relu") == 1);
    CHECK(op_types(f).count("MatMul") == 0);
  }

  TEST_CASE("private MatMulTransposed and FusedGemm lower to ONNX ops, with several inputs and outputs") {
    for (int opset : {17, 20}) {
      CAPTURE(opset);
      PrivateOpsGraph p3(3);
      onnx::ModelProto m = export_onnx(p3.g, p3.inputs, p3.outputs, plain(opset));
      check_exported(m, p3.g, opset);
      CHECK(m.graph().input_size() == 3);
      CHECK(m.graph().output_size() == 8);
      // The pre-activation output keeps its own name; the node names are kept on the main node.
      CHECK(m.graph().output(4).name() == p3.g.value(p3.outputs[4]).name);
      for (const char* n :
           {"mmt_gemm", "mmt_batched", "mmt_trans_a", "fused_gelu", "fused_relu", "fused_plain"})
        CHECK_MESSAGE(find_node(m, n) != nullptr, n);
      CHECK(find_node(m, "mmt_gemm")->op_type() == "Gemm");
      CHECK(find_node(m, "mmt_batched")->op_type() == "MatMul");
      CHECK(find_node(m, "fused_relu")->op_type() == "Gemm");
      CHECK(find_node(m, "fused_plain")->op_type() == "Gemm");
      CHECK(op_types(m).count("Gelu") == (opset >= 20 ? 1u : 0u));
      Fixture f(fmt::format("private_ops_opset{}", opset), m, {"w", "k", "k2", "w2", "b2", "w3", "b3"});
      for (int64_t batch : {3, 5}) {
        PrivateOpsGraph p(batch);
        std::vector<Tensor> xs;
        for (size_t k = 0; k < p.inputs.size(); ++k)
          xs.push_back(f32_random(p.g.value(p.inputs[k]).shape, 200 + batch * 10 + k));
        f.add_run(xs, run_engine(p.g, p.inputs, xs, p.outputs));
      }
      f.finish();
    }
  }

  TEST_CASE("graph nodes that share a name get unique ONNX node names, the first keeping it") {
    // Parts of an imported node's rewrite may share a name; onnxruntime refuses a model with two nodes of one
    // name ("two nodes with same node name").
    Graph g;
    const ValueId x = g.add_input("x", DType::f32, Shape{3, 4});
    const ValueId a = g.node(g.add_node("Relu", {x}, {}, 1, "same")).outputs[0];
    const ValueId b = g.node(g.add_node("Neg", {a}, {}, 1, "same")).outputs[0];
    const ValueId y = g.node(g.add_node("Abs", {b}, {}, 1, "same_1")).outputs[0];
    onnx::ModelProto m = export_onnx(g, {x}, {y}, plain(17));
    check_exported(m, g, 17);
    std::set<std::string> names;
    for (const auto& n : m.graph().node()) CHECK_MESSAGE(names.insert(n.name()).second, n.name());
    REQUIRE(find_node(m, "same") != nullptr);
    CHECK(find_node(m, "same")->op_type() == "Relu");
    CHECK(find_node(m, "same_1")->op_type() == "Abs");
  }

  TEST_CASE("axes move between attribute and input with the opset; Slice attributes become inputs") {
    AxesGraph a3(3);
    onnx::ModelProto m17 = export_onnx(a3.g, {a3.x}, {a3.y}, plain(17));
    check_exported(m17, a3.g, 17);
    const onnx::NodeProto* mean = find_node(m17, "mean");
    REQUIRE(mean != nullptr);
    CHECK(mean->input_size() == 1);
    REQUIRE(find_attr(*mean, "axes") != nullptr);
    CHECK(find_attr(*mean, "axes")->ints(0) == 2);
    CHECK(find_attr(*mean, "noop_with_empty_axes") == nullptr);
    CHECK(find_node(m17, "squeeze")->input_size() == 2);
    CHECK(find_attr(*find_node(m17, "squeeze"), "axes") == nullptr);
    CHECK(find_node(m17, "slice")->input_size() == 4);
    CHECK(find_attr(*find_node(m17, "cast"), "saturate") == nullptr);
    // The axes constant is folded into the attribute, so no initializer is left over.
    for (const auto& t : m17.graph().initializer()) CHECK(t.name() != "mean_axes");

    onnx::ModelProto m18 = export_onnx(a3.g, {a3.x}, {a3.y}, plain(18));
    CHECK(find_node(m18, "mean")->input_size() == 2);
    CHECK(find_attr(*find_node(m18, "mean"), "axes") == nullptr);
    onnx::ModelProto m13 = export_onnx(a3.g, {a3.x}, {a3.y}, plain(13));
    CHECK(m13.ir_version() == 7);

    for (auto* m : {&m13, &m17, &m18}) {
      const int opset = static_cast<int>(m->opset_import(0).version());
      Fixture f(fmt::format("axes_opset{}", opset), *m, {});
      for (int64_t batch : {3, 5}) {
        AxesGraph a(batch);
        Tensor x = f32_random(a.g.value(a.x).shape, 300 + batch);
        f.add_run({x}, run_engine(a.g, {a.x}, {x}, {a.y}));
      }
      f.finish();
    }
  }

  TEST_CASE("GridSample's modes take the opset's names (linear and cubic from 20); below 16 it is an error") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2, 1, 4, 5});
    ValueId grid = g.add_input("grid", DType::f32, Shape{2, 3, 3, 2});
    ValueId a = g.node(g.add_node("GridSample", {x, grid}, {{"mode", std::string("linear")}}, 1, "linear"))
                    .outputs[0];
    ValueId b = g.node(g.add_node("GridSample", {x, grid}, {{"mode", std::string("bicubic")}}, 1, "cubic"))
                    .outputs[0];
    ValueId y = g.node(g.add_node("Add", {a, b}, {}, 1, "sum")).outputs[0];
    for (int opset : {17, 20}) {
      CAPTURE(opset);
      onnx::ModelProto m = export_onnx(g, {x, grid}, {y}, plain(opset));
      check_exported(m, g, opset);
      CHECK(find_attr(*find_node(m, "linear"), "mode")->s() == (opset >= 20 ? "linear" : "bilinear"));
      CHECK(find_attr(*find_node(m, "cubic"), "mode")->s() == (opset >= 20 ? "cubic" : "bicubic"));
    }
    InputError e = export_error([&] { export_onnx(g, {x, grid}, {y}, plain(15)); });
    CHECK(std::string(e.what()).find("opset 16") != std::string::npos);
  }

  TEST_CASE("a scatter-add in a forward graph (an imported ScatterND) exports as ScatterND with add") {
    auto build = [](int64_t batch, Graph& g, ValueId* x, ValueId* y) {
      *x = g.add_input("x", DType::f32, Shape{batch, 4});
      ValueId rows = g.add_parameter("rows", f32_random({3, 2}, 41));
      ValueId table =
          g.node(g.add_node("GatherGrad", {rows, g.add_constant("ids", ops::i64_tensor({2, 0, 2}))},
                            {{"axis", int64_t{0}}, {"shape", std::vector<int64_t>{4, 2}}}, 1, "scatter"))
              .outputs[0];
      *y = g.node(g.add_node("MatMul", {*x, table}, {}, 1, "project")).outputs[0];
    };
    Graph g;
    ValueId x, y;
    build(3, g, &x, &y);
    onnx::ModelProto m = export_onnx(g, {x}, {y}, plain(17));
    check_exported(m, g, 17);
    const onnx::NodeProto* scatter = find_node(m, "scatter");
    REQUIRE(scatter != nullptr);
    CHECK(scatter->op_type() == "ScatterND");
    CHECK(find_attr(*scatter, "reduction")->s() == "add");
    Fixture f("scatter_add", m, {});
    for (int64_t batch : {3, 5}) {
      Graph gb;
      ValueId xb, yb;
      build(batch, gb, &xb, &yb);
      Tensor in = f32_random({batch, 4}, 50 + batch);
      f.add_run({in}, run_engine(gb, {xb}, {in}, {yb}));
    }
    f.finish();
    InputError e = export_error([&] { export_onnx(g, {x}, {y}, plain(15)); });
    CHECK(std::string(e.what()).find("opset 16") != std::string::npos);
  }

  TEST_CASE("a private op without an ONNX form is an error naming the node") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{4, 3});
    ValueId dy = g.add_input("dy", DType::f32, Shape{4, 3});
    ValueId y = g.node(g.add_node("ReluGrad", {dy, x}, {}, 1, "relu_grad")).outputs[0];
    InputError e = export_error([&] { export_onnx(g, {x, dy}, {y}, plain()); });
    CHECK(e.where() == "relu_grad");
    CHECK(std::string(e.what()).find("ReluGrad") != std::string::npos);
  }

  TEST_CASE("a constant that holds the batch size is an error naming the node") {
    SUBCASE("a Reshape target") {
      Graph g;
      ValueId x = g.add_input("x", DType::f32, Shape{4, 6});
      ValueId shape = g.add_constant("target", ops::i64_tensor({4, 2, 3}));
      ValueId y = g.node(g.add_node("Reshape", {x, shape}, {}, 1, "bad_reshape")).outputs[0];
      InputError e = export_error([&] { export_onnx(g, {x}, {y}, plain()); });
      CHECK(e.where() == "bad_reshape");
      CHECK(std::string(e.what()).find("batch") != std::string::npos);
    }
    SUBCASE("a mask shaped by the batch") {
      Graph g;
      ValueId x = g.add_input("x", DType::f32, Shape{4, 6});
      ValueId mask = g.add_constant("mask", f32_random({4, 6}, 9));
      ValueId y = g.node(g.add_node("Mul", {x, mask}, {}, 1, "masked")).outputs[0];
      CHECK(export_error([&] { export_onnx(g, {x}, {y}, plain()); }).where() == "masked");
    }
    SUBCASE("an output that does not follow the batch") {
      Graph g;
      ValueId x = g.add_input("x", DType::f32, Shape{4, 6});
      ValueId y = g.node(g.add_node("ReduceSum", {x, g.add_constant("axes", ops::i64_tensor({0}))},
                                    {{"keepdims", int64_t{0}}}, 1, "sum_over_batch"))
                      .outputs[0];
      InputError e = export_error([&] { export_onnx(g, {x}, {y}, plain()); });
      CHECK(e.where() == g.value(y).name);
      CHECK(std::string(e.what()).find("sum_over_batch") != std::string::npos);
    }
    SUBCASE("every layer of the library builds batch-agnostic graphs") {
      for (const ModelCase& c : {mlp_case(), cifar_cnn_case(), lstm_case(), batchnorm_case(), gru_case(),
                                 residual_case(), other_layers_case()}) {
        CAPTURE(c.name);
        for (int64_t batch : {1, 2}) {
          models::BuiltModel m = build(c, batch);
          CHECK_NOTHROW(export_onnx(m.graph, {m.input}, {m.output}, options_for(m, 17)));
        }
      }
    }
  }

  TEST_CASE("ops and attributes the opset cannot express are errors naming the node") {
    // LayerNormalization below opset 17 is written by its definition; its Mean and InvStdDev outputs are not.
    models::BuiltModel ln = build(residual_case(), 2);
    onnx::ModelProto m16 = export_onnx(ln.graph, {ln.input}, {ln.output}, options_for(ln, 16));
    check_exported(m16, ln.graph, 16);
    for (const auto& n : m16.graph().node()) CHECK(n.op_type() != "LayerNormalization");
    Graph lg;
    ValueId lx = lg.add_input("x", DType::f32, Shape{2, 6});
    std::vector<ValueId> lo =
        lg.node(lg.add_node_named("LayerNormalization",
                                  {lx, lg.add_constant("scale", Tensor(DType::f32, Shape{6})), kNoValue}, {},
                                  {"y", "mean"}, "ln_with_mean"))
            .outputs;
    InputError e = export_error([&] { export_onnx(lg, {lx}, {lo[0], lo[1]}, plain(16)); });
    CHECK(e.where() == "ln_with_mean");
    CHECK(std::string(e.what()).find("need opset 17") != std::string::npos);

    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2, 6});
    ValueId y = g.node(g.add_node("Reshape", {x, g.add_constant("shape", ops::i64_tensor({-1, 2, 3}))},
                                  {{"allowzero", int64_t{1}}}, 1, "reshape_allowzero"))
                    .outputs[0];
    e = export_error([&] { export_onnx(g, {x}, {y}, plain(13)); });
    CHECK(e.where() == "reshape_allowzero");
    CHECK(std::string(e.what()).find("allowzero needs opset 14") != std::string::npos);
    CHECK_NOTHROW(export_onnx(g, {x}, {y}, plain(14)));

    for (int opset : {12, 22}) {
      e = export_error([&] { export_onnx(ln.graph, {ln.input}, {ln.output}, options_for(ln, opset)); });
      CHECK(std::string(e.what()).find(std::to_string(opset)) != std::string::npos);
    }
  }

  TEST_CASE("an input the outputs need must be exported") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2, 3});
    ValueId z = g.add_input("z", DType::f32, Shape{2, 3});
    ValueId y = g.op("Add", {x, z});
    CHECK(export_error([&] { export_onnx(g, {x}, {y}, plain()); }).where() == "z");
  }

  TEST_CASE("outputs that are inputs, repeated or named like another value get Identity nodes or renames") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{2, 3});
    ValueId y = g.node(g.add_node("Relu", {x}, {}, 1, "relu")).outputs[0];
    ValueId z = g.node(g.add_node("Neg", {y}, {}, 1, "output")).outputs[0];
    OnnxExportOptions o = plain();
    o.output_names = {"output", "x_again", "relu_again"};
    o.input_names = {"input"};
    // "output" is the Neg node's value name too; that value is the first output, so it simply keeps it.
    onnx::ModelProto m = export_onnx(g, {x}, {z, x, z}, o);
    CHECK(check_onnx(m));
    std::vector<std::string> outs;
    for (const auto& v : m.graph().output()) outs.push_back(v.name());
    CHECK(outs == std::vector<std::string>{"output", "x_again", "relu_again"});
    o.output_names = {"relu"};  // the Relu node's value name: that value is renamed
    m = export_onnx(g, {x}, {z}, o);
    CHECK(check_onnx(m));
    CHECK(find_node(m, "relu")->output(0) == "relu_1");
  }

  TEST_CASE("check_onnx runs the checker and strict shape inference") {
    models::BuiltModel b = build(mlp_case(), 2);
    onnx::ModelProto good = export_onnx(b.graph, {b.input}, {b.output}, options_for(b, 17));
    REQUIRE(check_onnx(good));
    onnx::ModelProto unknown_value = good;
    unknown_value.mutable_graph()->mutable_node(0)->set_input(1, "no_such_value");
    CHECK_THROWS_AS(check_onnx(unknown_value), InternalError);
    // Inner dimensions that do not match pass the checker; only the shape inference of the full check sees
    // it.
    onnx::ModelProto bad_shape = good;
    for (auto& t : *bad_shape.mutable_graph()->mutable_initializer())
      if (t.name() == "dense/kernel") t.set_dims(0, 21), t.mutable_raw_data()->append(16 * 4, '\0');
    CHECK_THROWS_AS(check_onnx(bad_shape), InternalError);
    if (known_libonnx_opset() < 20) {
      OnnxExportOptions o = options_for(b, 20);
      o.check = false;
      CHECK_FALSE(check_onnx(export_onnx(b.graph, {b.input}, {b.output}, o)));
    }
  }

  TEST_CASE("save_onnx writes atomically and reports an unwritable path") {
    models::BuiltModel m = build(mlp_case(), 2);
    onnx::ModelProto model = export_onnx(m.graph, {m.input}, {m.output}, options_for(m, 17));
    fs::path dir = fixture_dir() / "save";
    fs::remove_all(dir);
    fs::create_directories(dir);
    const fs::path path = dir / "model.onnx";
    save_onnx(model, path.string());
    save_onnx(model, path.string());  // over an existing file
    std::string bytes;
    REQUIRE(model.SerializeToString(&bytes));
    CHECK(read_file_bytes(path.string()) == bytes);
    int files = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
      ++files;
      CHECK(entry.path().filename() == "model.onnx");
    }
    CHECK(files == 1);

    const std::string bad = (dir / "missing" / "model.onnx").string();
    InputError e = export_error([&] { save_onnx(model, bad); });
    CHECK(e.where() == bad);
    CHECK_FALSE(fs::exists(bad));
  }
}
