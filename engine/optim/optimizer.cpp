// Optimizer graph construction: state values, one update node per parameter, and the in-place bindings.
#include "engine/optim/optimizer.h"

#include <algorithm>
#include <map>

#include "engine/ir/op_schema.h"

namespace trainer::engine {

namespace {

void check_range(const char* name, float v, float lo, float hi, bool hi_open) {
  if (v < lo || v > hi || (hi_open && v == hi))
    throw InputError(
        "optimizer",
        fmt::format("{} = {} is out of range: it must be in [{}, {}{}", name, v, lo, hi, hi_open ? ")" : "]"),
        "Keras's defaults are beta1 0.9, beta2 0.999, rho 0.9, epsilon 1e-7");
}

void validate(const OptimizerConfig& c) {
  static const std::vector<std::string> kinds = {"sgd",    "adam",  "adamw", "rmsprop", "adagrad",
                                                 "adamax", "nadam", "lion",  "adadelta"};
  if (std::find(kinds.begin(), kinds.end(), c.kind) == kinds.end())
    throw InputError("optimizer", fmt::format("unknown optimizer '{}'", c.kind),
                     "use sgd, adam, adamw, rmsprop, adagrad, adamax, nadam, lion or adadelta");
  if (!(c.initial_accumulator_value >= 0))
    throw InputError(
        "optimizer",
        fmt::format("initial_accumulator_value = {} must be 0 or more", c.initial_accumulator_value),
        "Keras's default is 0.1");
  if (c.amsgrad && c.kind != "adam" && c.kind != "adamw")
    throw InputError("optimizer", fmt::format("amsgrad does not apply to {}", c.kind),
                     "adam and adamw take it");
  if (c.centered && c.kind != "rmsprop")
    throw InputError("optimizer", fmt::format("centered does not apply to {}", c.kind), "rmsprop takes it");
  check_range("momentum", c.momentum, 0, 1, false);
  check_range("beta1", c.beta1, 0, 1, true);
  check_range("beta2", c.beta2, 0, 1, true);
  check_range("rho", c.rho, 0, 1, true);
  check_range("epsilon", c.epsilon, 0, 1, false);
  check_range("weight_decay", c.weight_decay, 0, 1, false);
}

}  // namespace

std::vector<OptimizerState> add_optimizer(Graph& g,
                                          const std::vector<std::pair<ValueId, ValueId>>& params_and_grads,
                                          ValueId lr, ValueId step, const OptimizerConfig& config) {
  validate(config);
  std::vector<OptimizerState> states;
  states.reserve(params_and_grads.size());
  // Keras 3's decoupled weight decay, param -= lr * weight_decay * param before the step: inside the update
  // ops that have it, and as two nodes before the ONNX ops (whose norm_coefficient would add it to the
  // gradient, L2, which feeds the moments).
  const std::string& kind = config.kind;
  // Adam with amsgrad runs as AdamWUpdate, which has it (and the same decoupled decay).
  const bool adam_op = kind == "adamw" || (kind == "adam" && config.amsgrad);
  const bool decay_in_op = adam_op || kind == "adamax" || kind == "nadam" || kind == "lion" ||
                           kind == "adadelta" || kind == "adagrad";
  // lr * weight_decay in each parameter dtype, computed in it (an f64 model's parameters take the f32 rate).
  std::map<DType, ValueId> decay_rate;
  auto rate_in = [&](DType dtype) {
    auto [it, added] = decay_rate.try_emplace(dtype, kNoValue);
    if (added) {
      const ValueId rate =
          g.value(lr).dtype == dtype ? lr : g.op("Cast", {lr}, {{"to", int64_t{dtype_to_onnx(dtype)}}});
      Tensor wd(dtype, Shape{});
      wd.set_f64(0, config.weight_decay);
      it->second = g.op("Mul", {rate, g.add_constant(g.unique_name("weight_decay"), std::move(wd))});
    }
    return it->second;
  };
  // The learning rate in each parameter dtype, and the rate 1 (sgd's momentum runs on rate-scaled gradients).
  std::map<DType, ValueId> rate_as;
  auto lr_in = [&](DType dtype) {
    auto [it, added] = rate_as.try_emplace(dtype, kNoValue);
    if (added)
      it->second =
          g.value(lr).dtype == dtype ? lr : g.op("Cast", {lr}, {{"to", int64_t{dtype_to_onnx(dtype)}}});
    return it->second;
  };
  ValueId unit_rate = kNoValue;
  for (auto [param, grad] : params_and_grads) {
    const Value& p = g.value(param);
    TRAINER_ASSERT(p.kind == ValueKind::parameter, "'{}' is not a parameter", p.name);
    std::string name = p.name;
    DType dtype = p.dtype;
    Shape shape = p.shape;
    OptimizerState st{param, grad, {}, -1};
    auto slot = [&](const char* suffix) {
      st.slots.push_back(g.add_state(name + "/" + suffix, Tensor(dtype, shape)));  // Tensor() is zero-filled
      return st.slots.back();
    };

    std::string op;
    std::vector<ValueId> inputs{lr, step, param, grad};
    if (!decay_in_op && config.weight_decay > 0)
      inputs[2] = g.op("Sub", {param, g.op("Mul", {param, rate_in(dtype)})});
    Attributes attrs;
    if (kind == "sgd" && config.momentum == 0) {
      op = "SGDUpdate";
      attrs = {{"norm_coefficient", 0.0f}};
    } else if (kind == "sgd") {
      // Keras's velocity v = m*v - lr*g holds steps already scaled by their rates: Momentum runs on the
      // gradient times the rate, at a rate of 1, so that its V = m*V + lr*g is -v and X -= V is Keras's
      // update (Nesterov: X -= lr*g + m*V) whatever the schedule does to the rate.
      op = "Momentum";
      if (unit_rate == kNoValue)
        unit_rate = g.add_constant(g.unique_name("momentum/unit_rate"), Tensor::scalar<float>(1.0f));
      inputs[0] = unit_rate;
      inputs[3] = g.op("Mul", {grad, lr_in(g.value(grad).dtype)});
      inputs.push_back(slot("momentum"));
      attrs = {{"alpha", config.momentum},
               {"beta", 1.0f},
               {"mode", std::string(config.nesterov ? "nesterov" : "standard")},
               {"norm_coefficient", 0.0f}};
    } else if (kind == "adam" && !adam_op) {
      // With the 1-based step as T, ONNX Adam's bias correction and epsilon placement are Keras's.
      op = "Adam";
      inputs.push_back(slot("adam_m"));
      inputs.push_back(slot("adam_v"));
      attrs = {{"alpha", config.beta1},
               {"beta", config.beta2},
               {"epsilon", config.epsilon},
               {"norm_coefficient", 0.0f}};
    } else if (adam_op) {
      op = "AdamWUpdate";
      inputs.push_back(slot("adam_m"));
      inputs.push_back(slot("adam_v"));
      if (config.amsgrad) inputs.push_back(slot("adam_vhat"));
      attrs = {{"beta1", config.beta1},
               {"beta2", config.beta2},
               {"epsilon", config.epsilon},
               {"weight_decay", config.weight_decay},
               {"amsgrad", int64_t{config.amsgrad ? 1 : 0}}};
    } else if (kind == "adagrad") {
      // Keras 3's: H += g^2, x -= lr g / sqrt(H + epsilon), H starting at initial_accumulator_value.
      op = "AdagradUpdate";
      Tensor init(dtype, shape);
      for (int64_t i = 0; i < init.numel(); ++i) init.set_f64(i, config.initial_accumulator_value);
      st.slots.push_back(g.add_state(name + "/adagrad_accumulator", std::move(init)));
      inputs.push_back(st.slots.back());
      attrs = {{"epsilon", config.epsilon}, {"weight_decay", config.weight_decay}};
    } else if (kind == "adamax" || kind == "nadam" || kind == "lion") {
      op = kind == "adamax" ? "AdamaxUpdate" : kind == "nadam" ? "NadamUpdate" : "LionUpdate";
      inputs.push_back(slot(kind == "adamax" ? "adamax_m" : kind == "nadam" ? "nadam_m" : "lion_m"));
      if (kind != "lion") inputs.push_back(slot(kind == "adamax" ? "adamax_u" : "nadam_v"));
      attrs = {{"beta1", config.beta1}, {"beta2", config.beta2}, {"weight_decay", config.weight_decay}};
      if (kind != "lion") attrs.set("epsilon", config.epsilon);
    } else if (kind == "adadelta") {
      op = "AdadeltaUpdate";
      inputs.push_back(slot("adadelta_grad"));
      inputs.push_back(slot("adadelta_delta"));
      attrs = {{"rho", config.rho}, {"epsilon", config.epsilon}, {"weight_decay", config.weight_decay}};
    } else {  // rmsprop
      op = "RMSpropUpdate";
      inputs.push_back(slot("rms_v"));
      if (config.momentum != 0) inputs.push_back(slot("rms_momentum"));
      if (config.centered) inputs.push_back(slot("rms_mg"));
      attrs = {{"rho", config.rho},
               {"epsilon", config.epsilon},
               {"momentum", config.momentum},
               {"norm_coefficient", 0.0f},
               {"centered", int64_t{config.centered ? 1 : 0}}};
    }

    int num_outputs = static_cast<int>(inputs.size()) - 3;  // X_new and one per state
    st.update =
        g.add_node(op, std::move(inputs), std::move(attrs), num_outputs, g.unique_name(name + "/update"));
    std::vector<ValueId> outs = g.node(st.update).outputs;
    g.bind_update(outs[0], param);
    for (size_t k = 0; k < st.slots.size(); ++k) g.bind_update(outs[k + 1], st.slots[k]);
    states.push_back(std::move(st));
  }
  return states;
}

std::vector<std::string> optimizer_slots(const OptimizerConfig& config) {
  // Read off the rewrite itself on a one-element parameter, so the two never disagree.
  Graph g;
  const ValueId p = g.add_parameter("p", Tensor(DType::f32, Shape{1}));
  const ValueId grad = g.add_input("g", DType::f32, Shape{1});
  const ValueId lr = g.add_input("lr", DType::f32, Shape{});
  const ValueId step = g.add_input("step", DType::i64, Shape{});
  std::vector<std::string> out;
  const std::vector<OptimizerState> states = add_optimizer(g, {{p, grad}}, lr, step, config);
  for (ValueId s : states.front().slots) out.push_back(g.value(s).name.substr(2));  // after "p/"
  return out;
}

}  // namespace trainer::engine
