// Importing ONNX models for training: constant folding (the engine pass and at import), the training and
// inference forms of Dropout and BatchNormalization, opset-11 forms, batch-relative folded shapes, damaged
// files reported at their byte offset, and the spec's onnx and freeze keys.
#include <doctest/doctest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <memory>

#include "engine/autodiff/autodiff.h"
#include "engine/backend/backend.h"
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/plan/constant_folding.h"
#include "engine/train/session.h"
#include "formats/model_spec.h"
#include "formats/onnx_import.h"
#include "formats/onnx_tensor.h"

using namespace trainer;
using namespace trainer::engine;
using namespace trainer::formats;

namespace {

onnx::ModelProto make_model(int opset) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("test_onnx_fit");
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  m.mutable_graph()->set_name("g");
  return m;
}

// A dim of -1 is the symbolic "N".
void add_input(onnx::GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
               int elem_type = onnx::TensorProto::FLOAT) {
  auto* in = g->add_input();
  in->set_name(name);
  auto* tt = in->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  for (int64_t d : dims) {
    auto* dim = tt->mutable_shape()->add_dim();
    if (d < 0)
      dim->set_dim_param("N");
    else
      dim->set_dim_value(d);
  }
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

void set_float(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

void add_init(onnx::GraphProto* g, const std::string& name, const Tensor& t) {
  tensor_to_onnx(t, name, g->add_initializer());
}

// x [N, 2, 3] -> BatchNormalization(scale, bias, mean, var) -> Dropout -> y.
onnx::ModelProto batch_norm_model(int opset) {
  onnx::ModelProto m = make_model(opset);
  auto* g = m.mutable_graph();
  add_input(g, "x", {-1, 2, 3});
  add_init(g, "scale", Tensor::from<float>(Shape{2}, {1, 2}));
  add_init(g, "bias", Tensor::from<float>(Shape{2}, {0, 1}));
  add_init(g, "mean", Tensor::from<float>(Shape{2}, {0.5f, -0.5f}));
  add_init(g, "var", Tensor::from<float>(Shape{2}, {1, 4}));
  auto* bn = add_node(g, "BatchNormalization", {"x", "scale", "bias", "mean", "var"}, {"b"}, "bn");
  set_float(bn, "momentum", 0.8f);
  if (opset < 12) {
    set_float(add_node(g, "Dropout", {"b"}, {"y"}, "drop"), "ratio", 0.25f);
  } else {
    add_init(g, "ratio", Tensor::scalar<float>(0.25f));
    add_node(g, "Dropout", {"b", "ratio"}, {"y"}, "drop");
  }
  g->add_output()->set_name("y");
  return m;
}

const Node& node_named(const Graph& g, const std::string& name) {
  for (NodeId id : g.topo_order())
    if (g.node(id).name == name) return g.node(id);
  FAIL("no node named " << name);
  return g.node(0);
}

// Runs a graph once with `x` fed to its first input and returns its first output.
Tensor run_once(const OnnxImportResult& r, const Tensor& x) {
  auto backend = make_cpu_backend();
  auto g = std::make_shared<Graph>(r.graph);
  Session s(g, *backend);
  s.write(r.inputs.at(0), x);
  s.run(StepContext{});
  return s.read(r.outputs.at(0));
}

void set_int(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

// An INTS attribute; none when v is empty (the attribute left at its default).
void set_ints(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  if (v.empty()) return;
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t e : v) a->add_ints(e);
}

// A model of one node reading the double input x (and initializers): y = op(x, ...).
onnx::ModelProto one_node_model(int opset, const std::string& op, const std::vector<int64_t>& dims,
                                std::vector<std::string> extra_inputs = {}) {
  onnx::ModelProto m = make_model(opset);
  auto* g = m.mutable_graph();
  add_input(g, "x", dims, onnx::TensorProto::DOUBLE);
  extra_inputs.insert(extra_inputs.begin(), "x");
  add_node(g, op, extra_inputs, {"y"}, "node");
  g->add_output()->set_name("y");
  return m;
}

// Checks the backward graph of an imported model against central differences: loss = sum(y * w) for fixed
// random weights w, differentiated with respect to graph input `k` at feeds[k] (feeds: every graph input).
void check_import_gradient(const onnx::ModelProto& m, const std::vector<Tensor>& feeds, size_t k = 0) {
  OnnxImportResult r = import_onnx_model(m, m.graph().node(0).op_type());
  auto g = std::make_shared<Graph>(std::move(r.graph));
  REQUIRE(r.inputs.size() == feeds.size());
  const ValueId x = r.inputs.at(k), y = r.outputs.at(0);
  const ValueId w =
      g->add_constant("loss_weights", ops::random_tensor(g->value(y).shape, -1, 1, 5, DType::f64));
  const ValueId loss = g->op("ReduceSum", {g->op("Mul", {y, w})}, {{"keepdims", int64_t{0}}});
  const ValueId dx = build_backward(*g, loss, {x}).at(x);
  g->mark_output(loss);
  g->mark_output(dx);
  auto backend = make_cpu_backend();
  Session s(g, *backend);
  for (size_t i = 0; i < feeds.size(); ++i) s.write(r.inputs[i], feeds[i]);
  s.run(StepContext{});
  const Tensor analytic = s.read(dx);
  Tensor probe = feeds[k];
  for (int64_t j = 0; j < probe.numel(); ++j) {
    const double v = probe.get_f64(j), h = 1e-6;
    double l[2];
    for (int side = 0; side < 2; ++side) {
      probe.set_f64(j, side ? v - h : v + h);
      s.write(x, probe);
      s.run(StepContext{});
      l[side] = s.read(loss).get_f64(0);
    }
    probe.set_f64(j, v);
    s.write(x, probe);
    const double numeric = (l[0] - l[1]) / (2 * h);
    CHECK_MESSAGE(std::fabs(analytic.get_f64(j) - numeric) <= 1e-6 * (1 + std::fabs(numeric)),
                  m.graph().node(0).op_type() << " d/d(input " << k << ")[" << j << "]: analytic "
                                              << analytic.get_f64(j) << ", numeric " << numeric);
  }
}

void check_import_gradient(const onnx::ModelProto& m, const Tensor& x0) {
  check_import_gradient(m, std::vector<Tensor>{x0}, 0);
}

}  // namespace

TEST_SUITE("onnx_fit") {
  TEST_CASE("gradients flow through the ops the importer writes as formulas") {
    SUBCASE("LRN: a band of ones over the channels") {
      onnx::ModelProto m = one_node_model(13, "LRN", {2, 5, 2, 2});
      auto* n = m.mutable_graph()->mutable_node(0);
      set_int(n, "size", 4);  // an even size: one more channel after than before
      set_float(n, "alpha", 0.5f);
      set_float(n, "bias", 1.5f);
      check_import_gradient(m, ops::random_tensor({2, 5, 2, 2}, -1, 1, 21, DType::f64));
    }
    SUBCASE("ReverseSequence, time-major and batch-major") {
      for (int64_t time_axis : {0, 1}) {
        const std::vector<int64_t> dims =
            time_axis == 0 ? std::vector<int64_t>{4, 3, 2} : std::vector<int64_t>{3, 4, 2};
        onnx::ModelProto m = one_node_model(13, "ReverseSequence", dims, {"lens"});
        add_init(m.mutable_graph(), "lens", Tensor::from<int64_t>(Shape{3}, {4, 1, 2}));
        set_int(m.mutable_graph()->mutable_node(0), "time_axis", time_axis);
        set_int(m.mutable_graph()->mutable_node(0), "batch_axis", 1 - time_axis);
        check_import_gradient(m, ops::random_tensor(Shape(dims), -1, 1, 22, DType::f64));
      }
    }
    SUBCASE("Upsample (opset 9), linear: asymmetric coordinates") {
      onnx::ModelProto m = one_node_model(9, "Upsample", {1, 1, 2, 2}, {"scales"});
      add_init(m.mutable_graph(), "scales", Tensor::from<float>(Shape{4}, {1, 1, 2, 2}));
      auto* mode = m.mutable_graph()->mutable_node(0)->add_attribute();
      mode->set_name("mode");
      mode->set_type(onnx::AttributeProto::STRING);
      mode->set_s("linear");
      const Tensor y =
          run_once(import_onnx_model(m, "upsample"), Tensor::from<double>(Shape{1, 1, 2, 2}, {1, 2, 3, 4}));
      REQUIRE(y.shape() == Shape{1, 1, 4, 4});
      const std::vector<double> first_rows = {1, 1.5, 2, 2, 2, 2.5, 3, 3};  // rows at 0 and 0.5
      for (int64_t i = 0; i < 8; ++i)
        CHECK(y.get_f64(i) == doctest::Approx(first_rows[static_cast<size_t>(i)]));
      check_import_gradient(m, ops::random_tensor({1, 1, 2, 2}, -1, 1, 23, DType::f64));
    }
    SUBCASE("DFT: complex along axis 2 cut to 4, and real onesided along axis 1") {
      onnx::ModelProto m = one_node_model(17, "DFT", {2, 3, 5, 2}, {"length"});
      add_init(m.mutable_graph(), "length", Tensor::scalar<int64_t>(4));
      set_int(m.mutable_graph()->mutable_node(0), "axis", 2);
      check_import_gradient(m, ops::random_tensor({2, 3, 5, 2}, -1, 1, 25, DType::f64));
      onnx::ModelProto r = one_node_model(17, "DFT", {2, 6, 1});
      set_int(r.mutable_graph()->mutable_node(0), "onesided", 1);
      const Tensor x = ops::random_tensor({2, 6, 1}, -1, 1, 26, DType::f64);
      const Tensor y = run_once(import_onnx_model(r, "dft"), x);
      REQUIRE(y.shape() == Shape{2, 4, 2});
      double sum = 0;  // bin 0 is the sum of the samples, with no imaginary part
      for (int64_t n = 0; n < 6; ++n) sum += x.get_f64(n);
      CHECK(y.get_f64(0) == doctest::Approx(sum));
      CHECK(y.get_f64(1) == doctest::Approx(0));
      check_import_gradient(r, x);
    }
    SUBCASE("STFT with a window") {
      onnx::ModelProto m = one_node_model(17, "STFT", {2, 12, 1}, {"step", "window"});
      add_init(m.mutable_graph(), "step", Tensor::scalar<int64_t>(3));
      add_init(m.mutable_graph(), "window", Tensor::from<double>(Shape{4}, {0.1, 0.6, 0.9, 0.4}));
      check_import_gradient(m, ops::random_tensor({2, 12, 1}, -1, 1, 27, DType::f64));
    }
    SUBCASE("3-D MaxPool and AveragePool, in two 2-D passes, against a direct loop") {
      struct Case {
        const char* op;
        std::vector<int64_t> kernel, strides, pads, dilations;
        int64_t ceil, include_pad;
      };
      const Case cases[] = {
          {"AveragePool", {2, 3, 2}, {2, 1, 2}, {1, 1, 0, 0, 1, 1}, {}, 1, 0},
          {"AveragePool", {3, 2, 2}, {1, 2, 1}, {1, 0, 1, 1, 1, 0}, {}, 0, 1},
          {"MaxPool", {2, 2, 3}, {2, 1, 1}, {0, 1, 1, 1, 0, 1}, {1, 2, 1}, 1, 0},
      };
      const Shape xs{2, 2, 5, 6, 4};
      const Tensor x = ops::random_tensor(xs, -1, 1, 28, DType::f64);
      for (const Case& k : cases) {
        onnx::ModelProto m = one_node_model(13, k.op, xs.dims());
        auto* n = m.mutable_graph()->mutable_node(0);
        set_ints(n, "kernel_shape", k.kernel);
        set_ints(n, "strides", k.strides);
        set_ints(n, "pads", k.pads);
        set_ints(n, "dilations", k.dilations);
        set_int(n, "ceil_mode", k.ceil);
        if (std::string(k.op) == "AveragePool") set_int(n, "count_include_pad", k.include_pad);
        const Tensor y = run_once(import_onnx_model(m, k.op), x);
        // The direct loop: out = floor or ceil((in + pads - span) / stride) + 1, a window starting in the
        // padding is dropped under ceil_mode.
        std::vector<int64_t> out(3), dil = k.dilations.empty() ? std::vector<int64_t>{1, 1, 1} : k.dilations;
        for (size_t d = 0; d < 3; ++d) {
          const int64_t in = xs[static_cast<int>(d) + 2], span = dil[d] * (k.kernel[d] - 1) + 1;
          const int64_t room = in + k.pads[d] + k.pads[d + 3] - span;
          out[d] = (k.ceil ? (room + k.strides[d] - 1) / k.strides[d] : room / k.strides[d]) + 1;
          if (k.ceil && (out[d] - 1) * k.strides[d] >= in + k.pads[d]) --out[d];
        }
        REQUIRE(y.shape() == Shape{2, 2, out[0], out[1], out[2]});
        const bool max = std::string(k.op) == "MaxPool";
        int64_t at = 0;
        for (int64_t nc = 0; nc < 4; ++nc)
          for (int64_t a = 0; a < out[0]; ++a)
            for (int64_t b = 0; b < out[1]; ++b)
              for (int64_t c = 0; c < out[2]; ++c, ++at) {
                double acc = max ? -1e300 : 0;
                int64_t count[3] = {0, 0, 0};
                const int64_t o[3] = {a, b, c};
                for (int d = 0; d < 3; ++d)  // per-axis counts: inside the data, or inside data and pads
                  for (int64_t i = 0; i < k.kernel[static_cast<size_t>(d)]; ++i) {
                    const int64_t pos = o[d] * k.strides[static_cast<size_t>(d)] -
                                        k.pads[static_cast<size_t>(d)] + i * dil[static_cast<size_t>(d)];
                    const bool inside = pos >= 0 && pos < xs[d + 2];
                    const bool padded = pos >= -k.pads[static_cast<size_t>(d)] &&
                                        pos < xs[d + 2] + k.pads[static_cast<size_t>(d) + 3];
                    count[d] += k.include_pad ? padded : inside;
                  }
                for (int64_t i = 0; i < k.kernel[0]; ++i)
                  for (int64_t j = 0; j < k.kernel[1]; ++j)
                    for (int64_t l = 0; l < k.kernel[2]; ++l) {
                      const int64_t p0 = a * k.strides[0] - k.pads[0] + i * dil[0];
                      const int64_t p1 = b * k.strides[1] - k.pads[1] + j * dil[1];
                      const int64_t p2 = c * k.strides[2] - k.pads[2] + l * dil[2];
                      if (p0 < 0 || p0 >= xs[2] || p1 < 0 || p1 >= xs[3] || p2 < 0 || p2 >= xs[4]) continue;
                      const double v = x.get_f64(((nc * xs[2] + p0) * xs[3] + p1) * xs[4] + p2);
                      acc = max ? std::max(acc, v) : acc + v;
                    }
                const double want = max ? acc : acc / static_cast<double>(count[0] * count[1] * count[2]);
                CHECK_MESSAGE(y.get_f64(at) == doctest::Approx(want), k.op << " at " << at);
              }
        check_import_gradient(m, x);
      }
    }
    SUBCASE("3-D Conv, one 2-D convolution per depth tap, against a direct loop") {
      // Input 6x5x4 with 4 channels in 2 groups, 3 filters per group, kernel 3x2x2, strides (2, 1, 2),
      // dilations (1, 2, 1), pads (1, 0, 1 | 1, 1, 0), a bias.
      const Shape xs{2, 4, 6, 5, 4}, ws{6, 2, 3, 2, 2};
      onnx::ModelProto m = make_model(13);
      auto* g = m.mutable_graph();
      add_input(g, "x", xs.dims(), onnx::TensorProto::DOUBLE);
      add_input(g, "w", ws.dims(), onnx::TensorProto::DOUBLE);
      add_init(g, "b", ops::random_tensor({6}, -1, 1, 29, DType::f64));
      auto* n = add_node(g, "Conv", {"x", "w", "b"}, {"y"}, "conv3d");
      g->add_output()->set_name("y");
      const std::vector<int64_t> st{2, 1, 2}, dil{1, 2, 1}, pads{1, 0, 1, 1, 1, 0};
      set_ints(n, "strides", st);
      set_ints(n, "dilations", dil);
      set_ints(n, "pads", pads);
      set_int(n, "group", 2);
      const Tensor x = ops::random_tensor(xs, -1, 1, 30, DType::f64),
                   w = ops::random_tensor(ws, -1, 1, 31, DType::f64);
      const Tensor b = tensor_from_onnx(g->initializer(0), "b");
      OnnxImportResult r = import_onnx_model(m, "conv3d");
      auto backend = make_cpu_backend();
      auto graph = std::make_shared<Graph>(r.graph);
      Session s(graph, *backend);
      s.write(r.inputs.at(0), x);
      s.write(r.inputs.at(1), w);
      s.run(StepContext{});
      const Tensor y = s.read(r.outputs.at(0));
      std::vector<int64_t> out(3);
      for (size_t d = 0; d < 3; ++d)
        out[d] = (xs[static_cast<int>(d) + 2] + pads[d] + pads[d + 3] -
                  dil[d] * (ws[static_cast<int>(d) + 2] - 1) - 1) /
                     st[d] +
                 1;
      REQUIRE(y.shape() == Shape{2, 6, out[0], out[1], out[2]});
      int64_t at = 0;
      for (int64_t bn = 0; bn < 2; ++bn)
        for (int64_t f = 0; f < 6; ++f)
          for (int64_t a0 = 0; a0 < out[0]; ++a0)
            for (int64_t a1 = 0; a1 < out[1]; ++a1)
              for (int64_t a2 = 0; a2 < out[2]; ++a2, ++at) {
                double acc = b.get_f64(f);
                const int64_t group = f / 3;
                for (int64_t ci = 0; ci < 2; ++ci)
                  for (int64_t i = 0; i < 3; ++i)
                    for (int64_t j = 0; j < 2; ++j)
                      for (int64_t l = 0; l < 2; ++l) {
                        const int64_t p0 = a0 * st[0] - pads[0] + i * dil[0];
                        const int64_t p1 = a1 * st[1] - pads[1] + j * dil[1];
                        const int64_t p2 = a2 * st[2] - pads[2] + l * dil[2];
                        if (p0 < 0 || p0 >= xs[2] || p1 < 0 || p1 >= xs[3] || p2 < 0 || p2 >= xs[4]) continue;
                        const int64_t c = group * 2 + ci;
                        acc += x.get_f64((((bn * 4 + c) * xs[2] + p0) * xs[3] + p1) * xs[4] + p2) *
                               w.get_f64((((f * 2 + ci) * 3 + i) * 2 + j) * 2 + l);
                      }
                CHECK_MESSAGE(y.get_f64(at) == doctest::Approx(acc), "at " << at);
              }
      check_import_gradient(m, {x, w}, 0);
      check_import_gradient(m, {x, w}, 1);
    }
    SUBCASE("3-D ConvTranspose, one 2-D transposed convolution per depth tap, against a direct loop") {
      struct Case {
        std::vector<int64_t> strides, dilations, pads, output_padding, output_shape;
        int64_t group;
      };
      const Case cases[] = {
          {{2, 1, 2}, {1, 2, 1}, {1, 0, 1, 0, 1, 0}, {1, 0, 1}, {}, 2},
          {{3, 2, 1}, {2, 1, 1}, {}, {}, {10, 6, 3}, 1},  // output_shape past the reach in depth: zeros there
          {{1, 1, 1}, {1, 1, 1}, {0, 1, 0, 2, 0, 1}, {}, {}, 1},
      };
      const Shape xs{2, 4, 3, 3, 2}, ws{4, 3, 2, 2, 2};  // 2 groups: [C, M / group, kD, kH, kW]
      const Tensor x = ops::random_tensor(xs, -1, 1, 32, DType::f64),
                   w = ops::random_tensor(ws, -1, 1, 33, DType::f64);
      for (const Case& k : cases) {
        const int64_t group = k.group, m = ws[1] * group;
        onnx::ModelProto model = make_model(13);
        auto* g = model.mutable_graph();
        add_input(g, "x", xs.dims(), onnx::TensorProto::DOUBLE);
        add_input(g, "w", group == 2 ? ws.dims() : std::vector<int64_t>{4, 3, 2, 2, 2},
                  onnx::TensorProto::DOUBLE);
        add_init(g, "b", ops::random_tensor({m}, -1, 1, 34, DType::f64));
        auto* n = add_node(g, "ConvTranspose", {"x", "w", "b"}, {"y"}, "deconv3d");
        g->add_output()->set_name("y");
        set_ints(n, "strides", k.strides);
        set_ints(n, "dilations", k.dilations);
        set_ints(n, "pads", k.pads);
        set_ints(n, "output_padding", k.output_padding);
        set_ints(n, "output_shape", k.output_shape);
        set_int(n, "group", group);
        OnnxImportResult r = import_onnx_model(model, "deconv3d");
        auto backend = make_cpu_backend();
        auto graph = std::make_shared<Graph>(r.graph);
        Session s(graph, *backend);
        s.write(r.inputs.at(0), x);
        s.write(r.inputs.at(1), w);
        s.run(StepContext{});
        const Tensor y = s.read(r.outputs.at(0));
        const Tensor b = *graph->initializer(graph->find("b"));
        // Sizes: the given output_shape, else stride (in - 1) + span + output_padding - pads.
        std::vector<int64_t> out(3), begin(3);
        for (size_t d = 0; d < 3; ++d) {
          const int64_t span = k.dilations[d] * (ws[static_cast<int>(d) + 2] - 1) + 1;
          const int64_t full = k.strides[d] * (xs[static_cast<int>(d) + 2] - 1) + span +
                               (k.output_padding.empty() ? 0 : k.output_padding[d]);
          if (!k.output_shape.empty()) {
            out[d] = k.output_shape[d];
            const int64_t total = std::max<int64_t>(full - out[d], 0);
            begin[d] = total - total / 2;
          } else {
            begin[d] = k.pads.empty() ? 0 : k.pads[d];
            out[d] = full - begin[d] - (k.pads.empty() ? 0 : k.pads[d + 3]);
          }
        }
        REQUIRE(y.shape() == Shape{2, m, out[0], out[1], out[2]});
        std::vector<double> want(static_cast<size_t>(y.numel()));
        for (int64_t bn = 0; bn < 2; ++bn)
          for (int64_t f = 0; f < m; ++f)
            for (int64_t i = 0; i < out[0] * out[1] * out[2]; ++i)
              want[static_cast<size_t>((bn * m + f) * out[0] * out[1] * out[2] + i)] = b.get_f64(f);
        const int64_t per_group_in = 4 / group, per_group_out = ws[1];
        for (int64_t bn = 0; bn < 2; ++bn)
          for (int64_t c = 0; c < 4; ++c)
            for (int64_t d0 = 0; d0 < xs[2]; ++d0)
              for (int64_t d1 = 0; d1 < xs[3]; ++d1)
                for (int64_t d2 = 0; d2 < xs[4]; ++d2)
                  for (int64_t fl = 0; fl < per_group_out; ++fl)
                    for (int64_t t0 = 0; t0 < 2; ++t0)
                      for (int64_t t1 = 0; t1 < 2; ++t1)
                        for (int64_t t2 = 0; t2 < 2; ++t2) {
                          const int64_t o0 = d0 * k.strides[0] + t0 * k.dilations[0] - begin[0];
                          const int64_t o1 = d1 * k.strides[1] + t1 * k.dilations[1] - begin[1];
                          const int64_t o2 = d2 * k.strides[2] + t2 * k.dilations[2] - begin[2];
                          if (o0 < 0 || o0 >= out[0] || o1 < 0 || o1 >= out[1] || o2 < 0 || o2 >= out[2])
                            continue;
                          const int64_t f = c / per_group_in * per_group_out + fl;
                          want[static_cast<size_t>((((bn * m + f) * out[0] + o0) * out[1] + o1) * out[2] +
                                                   o2)] +=
                              x.get_f64((((bn * 4 + c) * xs[2] + d0) * xs[3] + d1) * xs[4] + d2) *
                              w.get_f64((((c * per_group_out + fl) * 2 + t0) * 2 + t1) * 2 + t2);
                        }
        for (int64_t i = 0; i < y.numel(); ++i)
          CHECK_MESSAGE(y.get_f64(i) == doctest::Approx(want[static_cast<size_t>(i)]),
                        "group " << group << " at " << i);
        check_import_gradient(model, {x, w}, 0);
        check_import_gradient(model, {x, w}, 1);
      }
    }
    SUBCASE("GroupNormalization: scale and bias per group (opset 18), per channel (opset 21)") {
      const Tensor x = ops::random_tensor({2, 4, 3}, -1, 1, 35, DType::f64);
      for (int opset : {18, 21}) {
        CAPTURE(opset);
        const int64_t params = opset < 21 ? 2 : 4;
        onnx::ModelProto m = one_node_model(opset, "GroupNormalization", {2, 4, 3}, {"scale", "bias"});
        const Tensor scale = ops::random_tensor({params}, 0.5, 2, 36, DType::f64);
        const Tensor bias = ops::random_tensor({params}, -1, 1, 37, DType::f64);
        add_init(m.mutable_graph(), "scale", scale);
        add_init(m.mutable_graph(), "bias", bias);
        set_int(m.mutable_graph()->mutable_node(0), "num_groups", 2);
        const Tensor y = run_once(import_onnx_model(m, "group_norm"), x);
        REQUIRE(y.shape() == Shape{2, 4, 3});
        for (int64_t n = 0; n < 2; ++n)
          for (int64_t grp = 0; grp < 2; ++grp) {  // channels 2 grp and 2 grp + 1: 6 values
            double mean = 0, var = 0;
            for (int64_t i = 0; i < 6; ++i) mean += x.get_f64(n * 12 + grp * 6 + i) / 6;
            for (int64_t i = 0; i < 6; ++i) var += std::pow(x.get_f64(n * 12 + grp * 6 + i) - mean, 2) / 6;
            for (int64_t i = 0; i < 6; ++i) {
              const int64_t ch = grp * 2 + i / 3, k = opset < 21 ? grp : ch;
              const double want =
                  (x.get_f64(n * 12 + grp * 6 + i) - mean) / std::sqrt(var + 1e-5) * scale.get_f64(k) +
                  bias.get_f64(k);
              CHECK(y.get_f64(n * 12 + grp * 6 + i) == doctest::Approx(want));
            }
          }
        check_import_gradient(m, x);
      }
    }
    SUBCASE("AffineGrid: theta on the normalized coordinates, with and without align_corners") {
      const Tensor theta = ops::random_tensor({2, 2, 3}, -1, 1, 38, DType::f64);
      for (int64_t align : {0, 1}) {
        onnx::ModelProto m = one_node_model(20, "AffineGrid", {2, 2, 3}, {"size"});
        add_init(m.mutable_graph(), "size", Tensor::from<int64_t>(Shape{4}, {2, 1, 3, 4}));
        set_int(m.mutable_graph()->mutable_node(0), "align_corners", align);
        const Tensor y = run_once(import_onnx_model(m, "affine_grid"), theta);
        REQUIRE(y.shape() == Shape{2, 3, 4, 2});
        auto coord = [&](int64_t i, int64_t n) {
          return align ? -1.0 + 2.0 * static_cast<double>(i) / static_cast<double>(n - 1)
                       : (2.0 * static_cast<double>(i) + 1.0) / static_cast<double>(n) - 1.0;
        };
        for (int64_t n = 0; n < 2; ++n)
          for (int64_t r = 0; r < 3; ++r)
            for (int64_t q = 0; q < 4; ++q)
              for (int64_t o = 0; o < 2; ++o) {
                const double want = theta.get_f64(n * 6 + o * 3) * coord(q, 4) +
                                    theta.get_f64(n * 6 + o * 3 + 1) * coord(r, 3) +
                                    theta.get_f64(n * 6 + o * 3 + 2);
                CHECK(y.get_f64(((n * 3 + r) * 4 + q) * 2 + o) == doctest::Approx(want));
              }
        check_import_gradient(m, theta);
      }
    }
    SUBCASE("CenterCropPad: cut around the centre where longer, zeros around where shorter") {
      onnx::ModelProto m = one_node_model(18, "CenterCropPad", {2, 5, 2}, {"shape"});
      add_init(m.mutable_graph(), "shape", Tensor::from<int64_t>(Shape{2}, {2, 5}));
      auto* at = m.mutable_graph()->mutable_node(0)->add_attribute();
      at->set_name("axes");
      at->set_type(onnx::AttributeProto::INTS);
      at->add_ints(1);
      at->add_ints(-1);
      Tensor x(DType::f64, Shape{2, 5, 2});
      for (int64_t i = 0; i < 20; ++i) x.set_f64(i, static_cast<double>(i + 1));
      const Tensor y = run_once(import_onnx_model(m, "center_crop_pad"), x);
      REQUIRE(y.shape() == Shape{2, 2, 5});
      // Rows 1 and 2 of the 5 (start (5 - 2) / 2 = 1); columns padded by (5 - 2) / 2 = 1 before, 2 after.
      for (int64_t n = 0; n < 2; ++n)
        for (int64_t r = 0; r < 2; ++r)
          for (int64_t q = 0; q < 5; ++q) {
            const double want = q >= 1 && q < 3 ? x.get_f64((n * 5 + r + 1) * 2 + q - 1) : 0.0;
            CHECK(y.get_f64((n * 2 + r) * 5 + q) == want);
          }
      check_import_gradient(m, x);
    }
    SUBCASE("MaxPool's Indices against a direct loop (first maximum on ties), and MaxUnpool of them") {
      const Shape xs{2, 3, 7, 7};
      auto pool_model = [&](bool unpool) {
        onnx::ModelProto m = make_model(12);
        auto* g = m.mutable_graph();
        add_input(g, "x", xs.dims(), onnx::TensorProto::DOUBLE);
        auto* n = add_node(g, "MaxPool", {"x"}, {"y", "i"}, "pool");
        set_ints(n, "kernel_shape", {3, 2});
        set_ints(n, "strides", {2, 2});
        set_ints(n, "pads", {1, 0, 1, 1});
        set_int(n, "ceil_mode", 1);
        if (unpool) {
          auto* u = add_node(g, "MaxUnpool", {"y", "i", "shape"}, {"z"}, "unpool");
          add_init(g, "shape", Tensor::from<int64_t>(Shape{4}, xs.dims()));
          set_ints(u, "kernel_shape", {3, 2});
          set_ints(u, "strides", {2, 2});
          set_ints(u, "pads", {1, 0, 1, 1});
          g->add_output()->set_name("z");
        } else {
          g->add_output()->set_name("i");
        }
        return m;
      };
      for (bool ties : {false, true}) {
        CAPTURE(ties);
        Tensor x = ops::random_tensor(xs, -1, 1, 39, DType::f64);
        if (ties)
          for (int64_t k = 0; k < x.numel(); ++k)
            x.set_f64(k, std::round(x.get_f64(k)));  // -1, 0, 1: many ties
        const Tensor idx = run_once(import_onnx_model(pool_model(false), "pool"), x);
        // Output 4 x 4 (ceil((7 + 2 - 3) / 2) + 1 = 4, ceil((7 + 1 - 2) / 2) + 1 = 4).
        REQUIRE(idx.shape() == Shape{2, 3, 4, 4});
        for (int64_t img = 0; img < 6; ++img)
          for (int64_t a = 0; a < 4; ++a)
            for (int64_t b = 0; b < 4; ++b) {
              int64_t best = -1;
              for (int64_t i = 0; i < 3; ++i)
                for (int64_t j = 0; j < 2; ++j) {
                  const int64_t r = a * 2 - 1 + i, c = b * 2 + j;
                  if (r < 0 || r >= 7 || c < 0 || c >= 7) continue;
                  const int64_t flat = img * 49 + r * 7 + c;
                  if (best < 0 || x.get_f64(flat) > x.get_f64(best)) best = flat;
                }
              CHECK(idx.get_f64((img * 4 + a) * 4 + b) == best);
            }
      }
      // Pool then unpool: each window's maximum back where it was, zeros elsewhere; the gradient reaches the
      // maxima only.
      const Tensor x = ops::random_tensor(xs, -1, 1, 40, DType::f64);
      const Tensor z = run_once(import_onnx_model(pool_model(true), "unpool"), x);
      REQUIRE(z.shape() == xs);
      for (int64_t k = 0; k < x.numel(); ++k) CHECK((z.get_f64(k) == 0 || z.get_f64(k) == x.get_f64(k)));
      check_import_gradient(pool_model(true), x);
    }
    SUBCASE("Scatter (opset 10): the data's named elements replaced") {
      onnx::ModelProto m = one_node_model(10, "Scatter", {3, 3}, {"indices", "updates"});
      add_init(m.mutable_graph(), "indices", Tensor::from<int64_t>(Shape{2, 3}, {1, 0, 2, 0, 2, 1}));
      add_init(m.mutable_graph(), "updates", Tensor::from<double>(Shape{2, 3}, {10, 11, 12, 13, 14, 15}));
      const Tensor y = run_once(import_onnx_model(m, "scatter"),
                                Tensor::from<double>(Shape{3, 3}, {0, 1, 2, 3, 4, 5, 6, 7, 8}));
      CHECK(y.to_vector<double>() == std::vector<double>{13, 11, 2, 10, 4, 15, 6, 14, 12});
      check_import_gradient(m, ops::random_tensor({3, 3}, -1, 1, 24, DType::f64));
    }
  }

  TEST_CASE("Bernoulli draws ones with the input's probabilities") {
    onnx::ModelProto m = make_model(15);
    auto* g = m.mutable_graph();
    add_input(g, "p", {3, 4000});
    add_node(g, "Bernoulli", {"p"}, {"y"}, "coin");
    g->add_output()->set_name("y");
    std::vector<float> p(3 * 4000);
    for (size_t i = 0; i < p.size(); ++i) p[i] = i < 4000 ? 0.0f : i < 8000 ? 1.0f : 0.3f;
    const Tensor y = run_once(import_onnx_model(m, "bernoulli"), Tensor::from<float>(Shape{3, 4000}, p));
    double sums[3] = {0, 0, 0};
    for (int64_t i = 0; i < y.numel(); ++i) {
      const double v = y.get_f64(i);
      REQUIRE((v == 0 || v == 1));
      sums[i / 4000] += v;
    }
    CHECK(sums[0] == 0);
    CHECK(sums[1] == 4000);
    CHECK(sums[2] / 4000 == doctest::Approx(0.3).epsilon(0.1));  // 0.03: four standard deviations
  }

  TEST_CASE("fold_constants evaluates constant chains and rewires their readers") {
    Graph g;
    ValueId x = g.add_input("x", DType::f32, Shape{3});
    ValueId shape = g.add_constant("shape", Tensor::from<int64_t>(Shape{2}, {4, 6}));
    ValueId zero = g.add_constant("zero", Tensor::scalar<int64_t>(0));
    ValueId n = g.op("Gather", {shape, zero});
    ValueId n1 = g.op("Unsqueeze", {n, g.add_constant("axes", Tensor::from<int64_t>(Shape{1}, {0}))});
    ValueId target = g.op("Concat", {n1, g.add_constant("rest", Tensor::from<int64_t>(Shape{2}, {2, 3}))},
                          {{"axis", int64_t{0}}});
    ValueId y = g.op("Add", {g.op("Cast", {target}, {{"to", int64_t{onnx::TensorProto::FLOAT}}}), x});
    g.mark_output(y);
    CHECK(fold_constants(g) == 4);
    g.validate();
    const Node& add = g.node(g.value(y).producer);
    ValueId folded = add.inputs[0];
    CHECK(g.value(folded).kind == ValueKind::constant);
    CHECK(g.initializer(folded)->to_vector<float>() == std::vector<float>{4, 2, 3});
    int live = 0;
    for (NodeId id = 0; id < g.num_nodes(); ++id) live += !g.node(id).dead;
    CHECK(live == 1);
    // The reader of a parameter is not folded: parameters change while training.
    Graph p;
    ValueId w = p.add_parameter("w", Tensor::from<float>(Shape{2}, {1, 2}));
    p.mark_output(p.op("Relu", {w}));
    CHECK(fold_constants(p) == 0);
  }

  TEST_CASE("evaluate_constant_node computes on the CPU and leaves large outputs alone") {
    Tensor a = Tensor::from<float>(Shape{3}, {-1, 2, -3});
    auto out = evaluate_constant_node("Relu", {&a}, {}, {"r"}, "relu");
    REQUIRE(out);
    CHECK((*out)[0].to_vector<float>() == std::vector<float>{0, 2, 0});
    CHECK_FALSE(evaluate_constant_node("Relu", {&a}, {}, {"r"}, "relu", {}, 8));
    Tensor bad = Tensor::from<float>(Shape{2}, {1, 2});
    CHECK_THROWS_WITH_AS(evaluate_constant_node("Add", {&a, &bad}, {}, {"s"}, "bad_add"),
                         doctest::Contains("node 'bad_add' (Add)"), InputError);
    CHECK_FALSE(is_foldable_op("Dropout", ""));
  }

  TEST_CASE("training mode: BatchNormalization on batch statistics updates its running statistics") {
    for (int opset : {11, 17}) {
      CAPTURE(opset);
      onnx::ModelProto m = batch_norm_model(opset);
      OnnxImportOptions o;
      o.batch_size = 4;
      o.mode = OnnxGraphMode::training;
      OnnxImportResult r = import_onnx_model(m, "bn.onnx", o);
      const Graph& g = r.graph;
      CHECK(g.value(g.find("mean")).kind == ValueKind::state);
      CHECK(g.value(g.find("var")).kind == ValueKind::state);
      CHECK(g.value(g.find("scale")).kind == ValueKind::parameter);
      const Node& bn = node_named(g, "bn");
      CHECK(bn.attrs.i("training_mode") == 1);
      REQUIRE(bn.outputs.size() == 3);
      REQUIRE(g.updates().size() == 2);
      CHECK(g.updates()[0] == std::make_pair(bn.outputs[1], g.find("mean")));
      CHECK(g.updates()[1] == std::make_pair(bn.outputs[2], g.find("var")));
      // Dropout drops: training_mode is a constant true; the ratio (an attribute at opset 11) an input.
      const Node& drop = node_named(g, "drop");
      REQUIRE(drop.inputs.size() == 3);
      CHECK(g.initializer(drop.inputs[1])->get_f64(0) == 0.25);
      CHECK(g.initializer(drop.inputs[2])->get_f64(0) == 1);
      CHECK_FALSE(drop.attrs.has("ratio"));
      if (opset >= 12) CHECK(g.value(g.find("ratio")).kind == ValueKind::constant);  // no gradient reaches it

      o.mode = OnnxGraphMode::inference;
      OnnxImportResult ri = import_onnx_model(m, "bn.onnx", o);
      const Node& bni = node_named(ri.graph, "bn");
      CHECK(bni.attrs.i("training_mode") == 0);
      CHECK(bni.outputs.size() == 1);
      CHECK(ri.graph.value(ri.graph.find("mean")).kind == ValueKind::state);  // shared with training plans
      CHECK(ri.graph.updates().empty());
      CHECK(node_named(ri.graph, "drop").inputs.size() == 2);

      // Frozen running statistics keep the node in inference form.
      o.mode = OnnxGraphMode::training;
      o.initializer_is_trainable = [](const std::string& name, const Tensor&) {
        return name != "mean" && name != "var";
      };
      OnnxImportResult rf = import_onnx_model(m, "bn.onnx", o);
      CHECK(rf.graph.value(rf.graph.find("mean")).kind == ValueKind::constant);
      CHECK(node_named(rf.graph, "bn").attrs.i("training_mode") == 0);
      CHECK(rf.graph.updates().empty());
      // One of them frozen: neither form does what was asked.
      o.initializer_is_trainable = [](const std::string& name, const Tensor&) { return name != "mean"; };
      CHECK_THROWS_WITH_AS(
          import_onnx_model(m, "bn.onnx", o),
          doctest::Contains("its running mean 'mean' is frozen and its running variance 'var' "
                            "is not"),
          InputError);
    }
  }

  TEST_CASE("opset-11 Softmax normalizes over every dimension from its axis") {
    onnx::ModelProto m = make_model(11);
    auto* g = m.mutable_graph();
    add_input(g, "x", {2, 2, 2});
    add_node(g, "Softmax", {"x"}, {"y"}, "softmax");  // axis 1 by default: over 4 values per sample
    g->add_output()->set_name("y");
    OnnxImportResult r = import_onnx_model(m, "softmax11.onnx");
    Tensor x = Tensor::from<float>(Shape{2, 2, 2}, {0, 1, 2, 3, 1, 1, 1, 1});
    Tensor y = run_once(r, x);
    REQUIRE(y.shape() == Shape{2, 2, 2});
    std::vector<float> v = y.to_vector<float>();
    const double z = 1 + std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
    CHECK(v[0] == doctest::Approx(1 / z));
    CHECK(v[3] == doctest::Approx(std::exp(3.0) / z));
    CHECK(v[5] == doctest::Approx(0.25));
    // Over the last axis the node stays one Softmax.
    m.mutable_graph()->mutable_node(0)->add_attribute()->CopyFrom([] {
      onnx::AttributeProto a;
      a.set_name("axis");
      a.set_type(onnx::AttributeProto::INT);
      a.set_i(-1);
      return a;
    }());
    OnnxImportResult last = import_onnx_model(m, "softmax11.onnx");
    CHECK(node_named(last.graph, "softmax").attrs.i("axis") == 2);
  }

  TEST_CASE("a folded [batch, -1] reshape shape reads the batch from its input") {
    onnx::ModelProto m = make_model(13);
    auto* g = m.mutable_graph();
    add_input(g, "x", {-1, 2, 3});
    add_node(g, "Shape", {"x"}, {"s"}, "shape");
    add_init(g, "zero", Tensor::scalar<int64_t>(0));
    add_node(g, "Gather", {"s", "zero"}, {"n"}, "gather");
    add_init(g, "axes", Tensor::from<int64_t>(Shape{1}, {0}));
    add_node(g, "Unsqueeze", {"n", "axes"}, {"n1"}, "unsqueeze");
    add_init(g, "minus_one", Tensor::from<int64_t>(Shape{1}, {-1}));
    add_node(g, "Concat", {"n1", "minus_one"}, {"target"}, "concat")->add_attribute()->CopyFrom([] {
      onnx::AttributeProto a;
      a.set_name("axis");
      a.set_type(onnx::AttributeProto::INT);
      a.set_i(0);
      return a;
    }());
    add_node(g, "Reshape", {"x", "target"}, {"flat"}, "reshape");
    add_node(g, "Cast", {"target"}, {"target_f"}, "cast")->add_attribute()->CopyFrom([] {
      onnx::AttributeProto a;
      a.set_name("to");
      a.set_type(onnx::AttributeProto::INT);
      a.set_i(onnx::TensorProto::FLOAT);
      return a;
    }());
    add_node(g, "Mul", {"flat", "flat"}, {"y"}, "square");
    add_node(g, "Relu", {"target_f"}, {"t"}, "relu");
    g->add_output()->set_name("y");
    g->add_output()->set_name("t");
    OnnxImportOptions o;
    o.batch_size = 5;
    OnnxImportResult r = import_onnx_model(m, "chain.onnx", o);
    const Graph& gr = r.graph;
    CHECK(r.folded_nodes == std::vector<std::string>{"gather", "unsqueeze", "concat", "cast"});
    const Node& reshape = node_named(gr, "reshape");
    CHECK(gr.value(reshape.inputs[1]).name == "target");
    CHECK(gr.initializer(reshape.inputs[1])->to_vector<int64_t>() == std::vector<int64_t>{0, -1});
    CHECK(gr.value(reshape.outputs[0]).shape == Shape{5, 6});
    // Another reader sees the value as folded: the batch size.
    const Node& relu = node_named(gr, "relu");
    CHECK(gr.initializer(relu.inputs[0])->to_vector<float>() == std::vector<float>{5, -1});
  }

  TEST_CASE("a fixed batch dimension is replaced when asked, and named when a node then fails") {
    onnx::ModelProto m = make_model(13);
    auto* g = m.mutable_graph();
    add_input(g, "x", {1, 6});
    add_init(g, "fixed", Tensor::from<int64_t>(Shape{2}, {1, 6}));
    add_node(g, "Reshape", {"x", "fixed"}, {"y"}, "reshape");
    g->add_output()->set_name("y");
    OnnxImportOptions o;
    o.batch_size = 4;
    OnnxImportResult kept = import_onnx_model(m, "fixed.onnx", o);
    CHECK(kept.graph.value(kept.inputs.at(0)).shape == Shape{1, 6});
    o.replace_fixed_batch = true;
    try {
      import_onnx_model(m, "fixed.onnx", o);
      FAIL("expected an error");
    } catch (const InputError& e) {
      CHECK(std::string(e.what()).find("node 'reshape' (Reshape)") != std::string::npos);
      CHECK(std::string(e.what()).find("fixes the batch dimension of input 'x' at 1") != std::string::npos);
      CHECK(e.hint().find("dynamic_axes={'x': {0: 'batch'}}") != std::string::npos);
    }
  }

  TEST_CASE("a damaged file is reported at the byte where it stops being protobuf") {
    onnx::ModelProto m = batch_norm_model(17);
    add_init(m.mutable_graph(), "big", Tensor(DType::f32, Shape{64}));
    std::string bytes;
    REQUIRE(m.SerializeToString(&bytes));
    onnx::ModelProto out;
    try {
      // Cut in the middle of the raw data of 'big' (256 zero bytes).
      const size_t cut = bytes.find(std::string(200, '\0')) + 100;
      parse_onnx_model(std::string_view(bytes).substr(0, cut), "cut.onnx", &out);
      FAIL("expected an error");
    } catch (const InputError& e) {
      std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find("cut.onnx: ") == 0);
      CHECK(msg.find("byte ") != std::string::npos);
      CHECK(msg.find("raw_data of graph.initializer[5] 'big' declares 256 bytes") != std::string::npos);
    }
    std::string junk = "\x0f\x01\x02";  // field 1 with wire type 7
    CHECK_THROWS_WITH_AS(parse_onnx_model(junk, "junk.onnx", &out),
                         doctest::Contains("byte 0: ir_version has wire type 7"), InputError);
  }

  TEST_CASE("the spec's onnx and freeze keys") {
    const std::string text =
        "format_version = 1\n[model]\nonnx = \"m.onnx\"\nfreeze = [\"conv1.*\", \"fc.bias\"]\n"
        "[train]\nloss = \"mse\"\n";
    ModelSpec s = parse_model_spec(text, "/tmp/specs/a.toml");
    CHECK(s.model.onnx == "m.onnx");
    CHECK(s.model.freeze == std::vector<std::string>{"conv1.*", "fc.bias"});
    CHECK(s.model.freeze_pos.at(1).str() == "/tmp/specs/a.toml:4:22");
    CHECK(s.model.layers.empty());
    CHECK(resolve_data_path(s, s.model.onnx) == "/tmp/specs/m.onnx");
    ModelSpec back = parse_model_spec(to_toml(s), "/tmp/specs/a.toml");
    CHECK(same_settings(s, back));
    CHECK(to_toml(s).find("input") == std::string::npos);
    auto error = [](const std::string& t) {
      try {
        parse_model_spec(t, "e.toml");
      } catch (const InputError& e) {
        return std::string(e.what()) + " | " + e.hint();
      }
      return std::string("no error");
    };
    CHECK(error("format_version = 1\n[model]\nonnx = \"m.onnx\"\ninput = [3]\n")
              .find("model.input does not go with model.onnx") != std::string::npos);
    // Layers on top of the model take its output as "onnx".
    const ModelSpec head = parse_model_spec(
        "format_version = 1\n[model]\nonnx = \"m.onnx\"\n[[model.layers]]\ntype = \"Dense\"\ninputs = "
        "[\"onnx\"]\nunits = 2\n",
        "e.toml");
    REQUIRE(head.model.layers.size() == 1);
    CHECK(head.model.layers[0].inputs == std::vector<std::string>{"onnx"});
    CHECK(error("format_version = 1\n[model]\nonnx = \"m.onnx\"\n[[model.layers]]\ntype = \"Dense\"\nname = "
                "\"onnx\"\n")
              .find("'onnx' is reserved for the ONNX model's output") != std::string::npos);
    CHECK(error("format_version = 1\n[model]\nonnx = \"\"\n").find("e.toml:3:8: model.onnx is empty") == 0);
    CHECK(
        error(
            "format_version = 1\n[model]\ninput = [2]\nfreeze = \"a\"\n[[model.layers]]\ntype = \"Dense\"\n")
            .find("e.toml:4:10: model.freeze applies to ONNX models") == 0);
    CHECK(error("format_version = 1\n[model]\nonxx = \"m.onnx\"\n").find("did you mean 'onnx'?") !=
          std::string::npos);
  }
}
