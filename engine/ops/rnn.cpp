// Op family 'rnn': ONNX LSTM, GRU (opset 14) and RNN and their gradients. Backpropagation through time is one
// private op per cell (LSTMGrad, GRUGrad, RNNGrad) that recomputes the forward gates from the forward inputs,
// so the ONNX ops keep their ONNX outputs and nothing extra lives in the arena between forward and backward.
#include "engine/ir/op_schema.h"
#include "engine/ops/op_helpers.h"
#include "engine/ops/rnn_config.h"

namespace trainer::engine::ops {

namespace {

const char* kGradOpReason = "a gradient op: training needs first derivatives only";

// Forward inputs: see rnn_forward_inputs.
int num_forward_inputs(RnnCell cell) {
  return rnn_forward_inputs(cell);
}
int num_forward_outputs(RnnCell cell) {
  return cell == RnnCell::lstm ? 3 : 2;
}
// Gradient-op output k is the gradient of forward input kGradOf[k]: sequence_lens (4) has none.
const std::vector<int>& grad_outputs_of(RnnCell cell) {
  static const std::vector<int> lstm = {0, 1, 2, 3, 5, 6, 7}, gru = {0, 1, 2, 3, 5};
  return cell == RnnCell::lstm ? lstm : gru;
}

void declare_attrs(OpSchema& s, RnnCell cell) {
  s.attr_optional("hidden_size", AttrType::i)
      .attr("direction", std::string("forward"))
      .attr_optional("activations", AttrType::s)
      .attr_optional("activation_alpha", AttrType::floats)
      .attr_optional("activation_beta", AttrType::floats)
      .attr_optional("clip", AttrType::f)
      .attr("layout", int64_t{0});
  if (cell == RnnCell::lstm) s.attr("input_forget", int64_t{0});
  if (cell == RnnCell::gru) s.attr("linear_before_reset", int64_t{0});
}

// Validates the forward inputs (shared by the gradient ops, whose first inputs are the same) and returns the
// config.
RnnConfig check_inputs(InferContext& c, RnnCell cell) {
  RnnConfig cfg;
  std::string err = parse_rnn_config(cell, c.attrs(), c.shape(0), c.shape(2), &cfg);
  if (!err.empty()) c.fail("{}", err);
  c.expect_float(0);
  c.expect_same_dtype(0, 1);
  c.expect_same_dtype(0, 2);
  const int64_t gh = cfg.gates() * cfg.hidden;
  if (c.shape(1) != Shape{cfg.dirs, gh, cfg.input})
    c.fail("W must be [{}, {}, {}], got {}", cfg.dirs, gh, cfg.input, c.shape(1).str());
  if (c.has_input(3)) {
    c.expect_same_dtype(0, 3);
    if (c.shape(3) != Shape{cfg.dirs, 2 * gh})
      c.fail("B must be [{}, {}], got {}", cfg.dirs, 2 * gh, c.shape(3).str());
  }
  if (c.has_input(4)) {
    if (c.dtype(4) != DType::i32 && c.dtype(4) != DType::i64)
      c.fail("sequence_lens must be int32, got {}", dtype_name(c.dtype(4)));
    if (c.shape(4) != Shape{cfg.batch})
      c.fail("sequence_lens must be [{}], got {}", cfg.batch, c.shape(4).str());
  }
  const char* state_names[] = {"initial_h", "initial_c"};
  for (int i = 5; i <= (cell == RnnCell::lstm ? 6 : 5); ++i) {
    if (!c.has_input(i)) continue;
    c.expect_same_dtype(0, i);
    if (c.shape(i) != cfg.state_shape())
      c.fail("{} must be {} (layout {}), got {}", state_names[i - 5], cfg.state_shape().str(), cfg.layout,
             c.shape(i).str());
  }
  if (cell == RnnCell::lstm && c.has_input(7)) {
    c.expect_same_dtype(0, 7);
    if (c.shape(7) != Shape{cfg.dirs, 3 * cfg.hidden})
      c.fail("P must be [{}, {}], got {}", cfg.dirs, 3 * cfg.hidden, c.shape(7).str());
  }
  if (const int m = rnn_mask_input(cell); c.has_input(m)) {
    c.expect_same_dtype(0, m);
    if (c.shape(m) != cfg.state_shape())
      c.fail("the recurrent dropout mask must be {} (layout {}), got {}", cfg.state_shape().str(), cfg.layout,
             c.shape(m).str());
  }
  return cfg;
}

void infer_forward(InferContext& c, RnnCell cell) {
  RnnConfig cfg = check_inputs(c, cell);
  DType t = c.dtype(0);
  c.set_output(0, t, cfg.y_shape());
  for (int i = 1; i < num_forward_outputs(cell); ++i) c.set_output(i, t, cfg.state_shape());
}

// Gradient op inputs: the forward inputs, then dY, dY_h (and dY_c), each possibly absent (zero).
void infer_grad(InferContext& c, RnnCell cell) {
  RnnConfig cfg = check_inputs(c, cell);
  int nf = num_forward_inputs(cell);
  for (int k = 0; k < num_forward_outputs(cell); ++k) {
    int i = nf + k;
    if (!c.has_input(i)) continue;
    c.expect_same_dtype(0, i);
    Shape want = k == 0 ? cfg.y_shape() : cfg.state_shape();
    if (c.shape(i) != want)
      c.fail("the gradient of forward output {} must be {}, got {}", k, want.str(), c.shape(i).str());
  }
  DType t = c.dtype(0);
  const int64_t gh = cfg.gates() * cfg.hidden;
  const std::vector<int>& of = grad_outputs_of(cell);
  for (size_t k = 0; k < of.size(); ++k) {
    Shape s;
    switch (of[k]) {
      case 0:
        s = c.shape(0);
        break;
      case 1:
        s = Shape{cfg.dirs, gh, cfg.input};
        break;
      case 2:
        s = Shape{cfg.dirs, gh, cfg.hidden};
        break;
      case 3:
        s = Shape{cfg.dirs, 2 * gh};
        break;
      case 5:
      case 6:
        s = cfg.state_shape();
        break;
      case 7:
        s = Shape{cfg.dirs, 3 * cfg.hidden};
        break;
    }
    c.set_output(static_cast<int>(k), t, s);
  }
}

// Emits one gradient node whose outputs exist only for the inputs that need a gradient, so the kernel skips
// the rest (dX of a network's first layer, dB of a node without B).
void grad_rule(GradContext& c, RnnCell cell, const char* grad_op) {
  Graph& g = c.graph();
  std::vector<ValueId> ins;
  for (int i = 0; i < num_forward_inputs(cell); ++i) ins.push_back(c.input(i));
  for (int k = 0; k < num_forward_outputs(cell); ++k) ins.push_back(c.grad_output(k));
  static const char* labels[] = {"dX", "dW", "dR", "dB", "", "dinitial_h", "dinitial_c", "dP"};
  const std::vector<int>& of = grad_outputs_of(cell);
  std::vector<std::string> names(of.size());
  const std::string base = c.node().name + "/grad/";
  bool any = false;
  for (size_t k = 0; k < of.size(); ++k) {
    if (!c.needs_grad(of[k])) continue;
    names[k] = g.unique_name(base + labels[of[k]]);
    any = true;
  }
  if (!any) return;
  NodeId n = g.add_node_named(grad_op, std::move(ins), c.attrs(), names, g.unique_name(base + grad_op));
  std::vector<ValueId> outs = g.node(n).outputs;
  for (size_t k = 0; k < of.size(); ++k)
    if (!names[k].empty()) c.set_grad(of[k], outs[k]);
}

// ---- examples: f64, seq 3, batch 2, input 3, hidden 4 ----

constexpr int64_t kSeq = 3, kBatch = 2, kIn = 3, kHid = 4;

struct ExampleSpec {
  std::string label;
  int dirs = 1;
  int layout = 0;
  bool bias = true, lens = false, h0 = true, c0 = true, peep = false, mask = false;
  Attributes attrs;
};

OpExample make_example(RnnCell cell, const ExampleSpec& s, uint64_t seed) {
  const int64_t gh = (cell == RnnCell::lstm ? 4 : cell == RnnCell::gru ? 3 : 1) * kHid;
  Shape x = s.layout == 0 ? Shape{kSeq, kBatch, kIn} : Shape{kBatch, kSeq, kIn};
  Shape st = s.layout == 0 ? Shape{s.dirs, kBatch, kHid} : Shape{kBatch, s.dirs, kHid};
  std::vector<Tensor> in = {random_tensor(x, -1, 1, seed),
                            random_tensor({s.dirs, gh, kIn}, -0.7, 0.7, seed + 1),
                            random_tensor({s.dirs, gh, kHid}, -0.7, 0.7, seed + 2),
                            random_tensor({s.dirs, 2 * gh}, -0.5, 0.5, seed + 3),
                            Tensor::from<int32_t>({kBatch}, {2, 3}),
                            random_tensor(st, -1, 1, seed + 4)};
  if (cell == RnnCell::lstm) {
    in.push_back(random_tensor(st, -1, 1, seed + 5));
    in.push_back(random_tensor({s.dirs, 3 * kHid}, -0.5, 0.5, seed + 6));
  }
  in.push_back(random_tensor(st, 0, 2, seed + 7));  // the recurrent dropout mask
  OpExample e = example(s.label, std::move(in), s.attrs);
  const int mask = rnn_mask_input(cell);
  e.constant[mask] = true;
  e.absent[mask] = !s.mask;
  e.constant[4] = true;
  e.absent[3] = !s.bias;
  e.absent[4] = !s.lens;
  e.absent[5] = !s.h0;
  if (cell == RnnCell::lstm) {
    e.absent[6] = !s.c0;
    e.absent[7] = !s.peep;
  }
  e.attrs.set("hidden_size", kHid);
  if (s.dirs == 2) e.attrs.set("direction", std::string("bidirectional"));
  if (s.layout == 1) e.attrs.set("layout", int64_t{1});
  e.num_outputs = num_forward_outputs(cell);
  return e;
}

std::vector<OpExample> lstm_examples() {
  std::vector<ExampleSpec> specs(7);
  specs[0].label = "forward with bias and initial states";
  specs[1].label = "bidirectional, batch-major (layout 1), initial states";
  specs[1].dirs = 2;
  specs[1].layout = 1;
  specs[2].label = "reverse with peepholes and sequence lengths";
  specs[2].peep = specs[2].lens = true;
  specs[2].attrs.set("direction", std::string("reverse"));
  specs[3].label = "clip and input_forget";
  specs[3].attrs.set("clip", 1.5f);
  specs[3].attrs.set("input_forget", int64_t{1});
  specs[4].label = "X, W, R only";
  specs[4].bias = specs[4].h0 = specs[4].c0 = false;
  specs[5].label = "bidirectional with sequence lengths and HardSigmoid, Tanh, Relu";
  specs[5].dirs = 2;
  specs[5].lens = specs[5].peep = true;
  specs[5].attrs.set("activations", std::string("HardSigmoid,Tanh,Relu,Sigmoid,Tanh,Tanh"));
  specs[5].attrs.set("activation_alpha", std::vector<float>{0.3f});
  specs[5].attrs.set("activation_beta", std::vector<float>{0.45f});
  specs[6].label = "bidirectional, batch-major, recurrent dropout mask";
  specs[6].dirs = 2;
  specs[6].layout = 1;
  specs[6].mask = true;
  std::vector<OpExample> out;
  for (size_t i = 0; i < specs.size(); ++i)
    out.push_back(make_example(RnnCell::lstm, specs[i], 100 + 10 * i));
  return out;
}

std::vector<OpExample> gru_examples() {
  std::vector<ExampleSpec> specs(7);
  specs[0].label = "forward with bias and initial state";
  specs[1].label = "bidirectional, batch-major (layout 1), linear_before_reset";
  specs[1].dirs = 2;
  specs[1].layout = 1;
  specs[1].attrs.set("linear_before_reset", int64_t{1});
  specs[2].label = "reverse with sequence lengths and clip";
  specs[2].lens = true;
  specs[2].attrs.set("direction", std::string("reverse"));
  specs[2].attrs.set("clip", 1.2f);
  specs[3].label = "X, W, R only";
  specs[3].bias = specs[3].h0 = false;
  specs[4].label = "bidirectional with sequence lengths, linear_before_reset and LeakyRelu";
  specs[4].dirs = 2;
  specs[4].lens = true;
  specs[4].attrs.set("linear_before_reset", int64_t{1});
  specs[4].attrs.set("activations", std::string("Sigmoid,LeakyRelu"));
  specs[4].attrs.set("activation_alpha", std::vector<float>{0.2f});
  specs[5].label = "recurrent dropout mask, reset before the linear map";
  specs[5].mask = true;
  specs[6].label = "bidirectional, batch-major, recurrent dropout mask, linear_before_reset";
  specs[6].dirs = 2;
  specs[6].layout = 1;
  specs[6].mask = true;
  specs[6].attrs.set("linear_before_reset", int64_t{1});
  std::vector<OpExample> out;
  for (size_t i = 0; i < specs.size(); ++i) out.push_back(make_example(RnnCell::gru, specs[i], 200 + 10 * i));
  return out;
}

std::vector<OpExample> rnn_examples() {
  std::vector<ExampleSpec> specs(5);
  specs[0].label = "forward with bias and initial state";
  specs[1].label = "bidirectional, batch-major (layout 1), recurrent dropout mask";
  specs[1].dirs = 2;
  specs[1].layout = 1;
  specs[1].mask = true;
  specs[2].label = "reverse with sequence lengths and clip";
  specs[2].lens = true;
  specs[2].attrs.set("direction", std::string("reverse"));
  specs[2].attrs.set("clip", 1.2f);
  specs[3].label = "X, W, R only, Relu";
  specs[3].bias = specs[3].h0 = false;
  specs[3].attrs.set("activations", std::string("Relu"));
  specs[4].label = "bidirectional with sequence lengths, Sigmoid and LeakyRelu";
  specs[4].dirs = 2;
  specs[4].lens = true;
  specs[4].attrs.set("activations", std::string("Sigmoid,LeakyRelu"));
  specs[4].attrs.set("activation_alpha", std::vector<float>{0.2f});
  std::vector<OpExample> out;
  for (size_t i = 0; i < specs.size(); ++i) out.push_back(make_example(RnnCell::rnn, specs[i], 400 + 10 * i));
  return out;
}

ExamplesFn examples_of(RnnCell cell) {
  return cell == RnnCell::lstm  ? ExamplesFn(lstm_examples)
         : cell == RnnCell::gru ? ExamplesFn(gru_examples)
                                : ExamplesFn(rnn_examples);
}

// Gradient-op examples run the kernel forward only (the forward ops' gradient checks cover their values): the
// forward example's inputs plus random output gradients, one of them absent.
std::vector<OpExample> grad_examples(RnnCell cell) {
  std::vector<OpExample> fwd = examples_of(cell)();
  std::vector<OpExample> out;
  for (size_t k : {size_t{1}, size_t{2}, fwd.size() - 1}) {
    OpExample e = fwd[k];
    RnnConfig cfg;
    const Shape& x = e.inputs[0].shape();
    Shape r = e.inputs[2].shape();
    parse_rnn_config(cell, e.attrs, x, r, &cfg);
    for (int o = 0; o < num_forward_outputs(cell); ++o) {
      Shape s = o == 0 ? cfg.y_shape() : cfg.state_shape();
      e.inputs.push_back(random_tensor(s, -1, 1, 300 + o));
      e.absent.push_back(o == 1 && k == 2);
      e.constant.push_back(false);
    }
    e.num_outputs = static_cast<int>(grad_outputs_of(cell).size());
    e.grad_check = false;
    out.push_back(std::move(e));
  }
  return out;
}

OpSchema forward_schema(const char* name, RnnCell cell, const char* grad_op) {
  OpSchema s(name);
  s.since(14).inputs(3, num_forward_inputs(cell)).outputs(1, num_forward_outputs(cell));
  declare_attrs(s, cell);
  s.no_grad_inputs({4, rnn_mask_input(cell)})
      .infer([cell](InferContext& c) { infer_forward(c, cell); })
      .grad([cell, grad_op](GradContext& c) { grad_rule(c, cell, grad_op); })
      .examples(examples_of(cell));
  return s;
}

OpSchema grad_schema(const char* name, RnnCell cell) {
  OpSchema s(name, kPrivateDomain);
  int nf = num_forward_inputs(cell);
  s.inputs(3, nf + num_forward_outputs(cell)).outputs(1, static_cast<int>(grad_outputs_of(cell).size()));
  declare_attrs(s, cell);
  s.non_differentiable(kGradOpReason)
      .infer([cell](InferContext& c) { infer_grad(c, cell); })
      .examples([cell] { return grad_examples(cell); });
  return s;
}

}  // namespace

void register_rnn_ops(OpRegistry& r) {
  r.add(forward_schema("LSTM", RnnCell::lstm, "LSTMGrad")
            .doc("ONNX LSTM: gates i, o, f, c; optional peepholes, clip, input_forget, sequence_lens and "
                 "batch-major layout; a private trailing input, the recurrent dropout mask"));
  r.add(forward_schema("GRU", RnnCell::gru, "GRUGrad")
            .doc("ONNX GRU: gates z, r, h; linear_before_reset 0 or 1; optional clip, sequence_lens and "
                 "batch-major layout; a private trailing input, the recurrent dropout mask"));
  r.add(
      forward_schema("RNN", RnnCell::rnn, "RNNGrad")
          .doc("ONNX RNN: H = f(X·Wᵀ + H·Rᵀ + Wb + Rb); optional clip, sequence_lens and batch-major layout; "
               "a private trailing input, the recurrent dropout mask"));
  r.add(grad_schema("RNNGrad", RnnCell::rnn)
            .doc("RNN backpropagation through time: (RNN inputs, dY, dY_h) -> dX, dW, dR, dB, dinitial_h"));
  r.add(grad_schema("LSTMGrad", RnnCell::lstm)
            .doc("LSTM backpropagation through time: (LSTM inputs, dY, dY_h, dY_c) -> dX, dW, dR, dB, "
                 "dinitial_h, "
                 "dinitial_c, dP; recomputes the gates"));
  r.add(grad_schema("GRUGrad", RnnCell::gru)
            .doc("GRU backpropagation through time: (GRU inputs, dY, dY_h) -> dX, dW, dR, dB, dinitial_h; "
                 "recomputes the "
                 "gates"));
}

}  // namespace trainer::engine::ops
