// The helpers every layer builder uses: weights with Keras's names and counts, validated arguments, the image
// layout (NCHW inside, channels-last in the spec) and activations.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <string>

#include "engine/util/error.h"
#include "engine/util/memory.h"
#include "models/layer_library.h"

namespace trainer::models {

using namespace trainer::engine;

std::string keras_shape(const std::vector<int64_t>& shape) {
  std::string s = "(None";
  for (int64_t d : shape) s += fmt::format(", {}", d);
  return s + ")";
}

const std::vector<std::string>& activation_names() {
  static const std::vector<std::string> names = {
      "relu",         "sigmoid",   "tanh",       "softmax",  "linear",     "gelu",  "leaky_relu",
      "elu",          "selu",      "softplus",   "softsign", "silu",       "swish", "relu6",
      "hard_sigmoid", "hard_silu", "hard_swish", "mish",     "exponential"};
  return names;
}

const std::vector<LayerDef>& layer_defs() {
  static const std::vector<LayerDef> defs = [] {
    std::vector<LayerDef> d;
    add_core_layers(d);
    add_conv_layers(d);
    add_recurrent_layers(d);
    add_conv_recurrent_layers(d);
    add_sequence_layers(d);
    add_reshaping_layers(d);
    add_attention_layers(d);
    add_augmentation_layers(d);
    add_volume_layers(d);
    for (LayerDef& def : d) {
      // Keras pairs every weight's initializer argument with a regularizer argument (kernel_initializer,
      // kernel_regularizer); the moving statistics are not weights.
      // Constraints pair with them the same way (kernel_constraint).
      std::vector<ArgDecl> regularizers;
      for (const ArgDecl& a : def.args)
        if (a.name.ends_with("_initializer") && !a.name.starts_with("moving_")) {
          regularizers.push_back({regularizer_arg(a.name), ArgKind::string, std::nullopt, true});
          regularizers.push_back({constraint_arg(a.name), ArgKind::string, std::nullopt, true});
        }
      def.args.insert(def.args.end(), regularizers.begin(), regularizers.end());
      // Every Keras layer takes an activity regularizer on its output (build_model applies it).
      if (def.type != "ActivityRegularization")
        def.args.push_back({"activity_regularizer", ArgKind::string, std::nullopt, true});
      def.args.push_back({"trainable", ArgKind::boolean, true});
    }
    return d;
  }();
  return defs;
}

LayerBuilder::LayerBuilder(Graph& g, const BuildOptions& o, const formats::LayerSpec& s, const LayerArgs& a,
                           LayerInfo& i)
    : graph(g), options(o), spec(s), args(a), info(i) {}

bool LayerBuilder::trainable() const {
  return args.boolean("trainable");
}

uint64_t LayerBuilder::seed(const std::string& suffix) const {
  return layer_seed(options.seed, name() + "/" + suffix);
}

ValueId LayerBuilder::ones(const std::string& suffix, const std::vector<int64_t>& dims) {
  Tensor t(DType::f32, Shape(dims));
  for (int64_t i = 0; i < t.numel(); ++i) t.set_f64(i, 1.0);
  return constant(suffix, std::move(t));
}

ValueId LayerBuilder::dropout_mask(const std::string& suffix, const std::vector<int64_t>& dims, double rate,
                                   const std::string& seed_arg) {
  if (!options.training || rate == 0) return kNoValue;
  ValueId ratio = constant(suffix + "/ratio", Tensor::scalar<float>(static_cast<float>(rate)));
  ValueId mode = constant(suffix + "/training_mode", Tensor::scalar<bool>(true));
  Attributes attrs;
  if (!seed_arg.empty() && args.has(seed_arg)) attrs.set("seed", args.integer(seed_arg));
  return graph
      .node(graph.add_node("Dropout", {ones(suffix + "/ones", dims), ratio, mode}, attrs, 1,
                           graph.unique_name(name() + "/" + suffix)))
      .outputs[0];
}

void LayerBuilder::absorb(const LayerBuilder& inner) {
  penalties.insert(penalties.end(), inner.penalties.begin(), inner.penalties.end());
  constraints.insert(inner.constraints.begin(), inner.constraints.end());
  synchronized_norms.insert(synchronized_norms.end(), inner.synchronized_norms.begin(),
                            inner.synchronized_norms.end());
  masked_norms += inner.masked_norms;
  synchronized_masked_norms += inner.synchronized_masked_norms;
}

void keep_masks(std::vector<LayerDef>& defs, const std::vector<std::string>& types) {
  for (LayerDef& d : defs)
    if (std::find(types.begin(), types.end(), d.type) != types.end()) d.keeps_mask = true;
}

ValueId LayerBuilder::nonzero_mask(ValueId ids) {
  const DType t = graph.value(ids).dtype;
  ValueId zero =
      constant("padding_id", t == DType::i64 ? Tensor::scalar<int64_t>(0) : Tensor::scalar<int32_t>(0));
  ValueId pad = op("Cast", {op("Equal", {ids, zero})}, {{"to", int64_t{dtype_to_onnx(DType::f32)}}});
  return op("Sub", {constant("one", Tensor::scalar<float>(1.0f)), pad});
}

ValueId LayerBuilder::counted(ValueId v, bool is_trainable) {
  int64_t n = graph.value(v).shape.numel();
  info.params += n;
  if (is_trainable) info.trainable_params += n;
  return v;
}

ValueId LayerBuilder::shared_weight(const std::string& suffix, const Shape& shape) const {
  if (spec.shares.empty()) return kNoValue;
  const ValueId v = graph.find(spec.shares + "/" + suffix);
  if (v == kNoValue || !graph.value(v).persistent())
    fail_layer(fmt::format("it shares the layer '{}', which made no weight '{}' for it", spec.shares, suffix),
               "a shared layer is called on inputs like its layer's");
  if (graph.value(v).shape != shape)
    fail_layer(
        fmt::format("it shares the weights of '{}', and its input needs a '{}' of shape {} where '{}' has "
                    "{}",
                    spec.shares, suffix, shape.str(), spec.shares, graph.value(v).shape.str()),
        "a shared layer takes inputs of the shapes its layer took (the same features or channels)");
  return v;
}

ValueId LayerBuilder::weight(const std::string& suffix, Tensor init) {
  if (const ValueId shared = shared_weight(suffix, init.shape()); shared != kNoValue) return shared;
  return counted(graph.add_parameter(name() + "/" + suffix, std::move(init), trainable()), trainable());
}

engine::Tensor LayerBuilder::initial(const std::string& init, const Shape& shape, const WeightFans& fans,
                                     uint64_t seed) const {
  if (!options.initialize) return engine::Tensor(engine::DType::f32, shape);
  return initialize(init, shape, fans, seed);
}

ValueId LayerBuilder::weight(const std::string& suffix, const std::string& init_arg, const Shape& shape,
                             const WeightFans& fans) {
  // A shared layer's weights are its layer's, with their regularizers and constraints counted once there.
  if (const ValueId shared = shared_weight(suffix, shape); shared != kNoValue) return shared;
  // A weight larger than the machine's memory is a spec mistake (units = 100000000), said before allocating;
  // so are weights that together outgrow it (two Dense layers of 5000000 units), which would otherwise fill
  // the memory before the model is whole.
  const double memory = engine::usable_memory_bytes();
  double bytes = 4.0;  // in double: a product of huge sizes overflows int64
  for (int64_t d : shape.dims()) bytes *= static_cast<double>(d);
  if (memory > 0 && bytes > memory)
    fail_layer(fmt::format("its weight '{}' of shape {} needs {:.1f} GiB, more than the {:.1f} GiB of memory "
                           "this process may use",
                           suffix, shape.str(), bytes / (1 << 30), memory / (1 << 30)),
               "check the layer's sizes (units, filters, kernel_size, input_dim)");
  double before = 0;
  for (engine::ValueId v = 0; v < graph.num_values(); ++v)
    if (graph.value(v).persistent()) before += static_cast<double>(graph.value(v).nbytes());
  if (memory > 0 && before + bytes > memory)
    fail_layer(
        fmt::format("its weight '{}' of shape {} needs {:.1f} GiB, and with the {:.1f} GiB of the "
                    "weights before it the model outgrows the {:.1f} GiB of memory this process may use",
                    suffix, shape.str(), bytes / (1 << 30), before / (1 << 30), memory / (1 << 30)),
        "check the sizes of this layer and those before it (units, filters, kernel_size, input_dim)");
  ValueId w = weight(suffix, initial(initializer(init_arg), shape, fans, seed(suffix)));
  regularize(w, regularizer_arg(init_arg));
  constrain(w, constraint_arg(init_arg), fans);
  return w;
}

void LayerBuilder::constrain(ValueId w, const std::string& arg, const WeightFans& fans) {
  if (!args.has(arg) || !trainable()) return;
  const Constraint c = parse_constraint(
      args.string(arg), [&](const std::string& what, const std::string& hint) { fail(arg, what, hint); });
  if (c.kind.empty()) return;
  const Shape& s = graph.value(w).shape;
  WeightConstraint wc{c.kind, c.min_value, c.max_value, c.rate, {}};
  if (c.kind != "non_neg") {
    // Keras's axes count in Keras's layout of the weight. A vector, and a matrix kept as Keras keeps it
    // (Dense's kernel, Embedding's table), have the same layout here; convolution and recurrent kernels are
    // permutations of it (fans.keras_axes); a depthwise kernel is neither.
    std::vector<int64_t> ir_axis = fans.keras_axes;
    if (ir_axis.empty()) {
      const bool same_layout =
          !fans.other_layout && (s.rank() <= 1 || (s.rank() == 2 && s[0] == fans.rows && s[1] == fans.cols));
      if (!same_layout)
        fail(arg,
             fmt::format("{} on the weight {} (shape {}) is not supported: its layout here is not Keras's",
                         c.kind, graph.value(w).name, s.str()),
             "use non_neg, or put the norm constraint on a Dense, convolution or recurrent kernel, an "
             "embedding table or a bias");
      for (int64_t a = 0; a < std::max<int64_t>(s.rank(), 1); ++a) ir_axis.push_back(a);
    }
    const int64_t rank = static_cast<int64_t>(ir_axis.size());
    for (const int64_t keras : c.axes) {
      const int64_t axis = keras < 0 ? keras + rank : keras;
      if (axis < 0 || axis >= rank)
        fail(arg, fmt::format("axis {} is out of range for the weight {}, of {} axes in Keras's layout",
                              keras, graph.value(w).name, rank));
      if (std::find(wc.axes.begin(), wc.axes.end(), ir_axis[axis]) != wc.axes.end())
        fail(arg, fmt::format("axis {} is listed twice", keras));
      wc.axes.push_back(ir_axis[axis]);
    }
    std::sort(wc.axes.begin(), wc.axes.end());
  }
  constraints[graph.value(w).name] = wc;
}

void LayerBuilder::regularize(ValueId w, const std::string& arg) {
  if (!args.has(arg) || !trainable()) return;
  const Regularizer r = parse_regularizer(
      args.string(arg), [&](const std::string& what, const std::string& hint) { fail(arg, what, hint); });
  if (r.l1 == 0 && r.l2 == 0) return;
  const std::string& wname = graph.value(w).name;
  const std::string at = wname.substr(name().size() + 1);  // "kernel", "forward_lstm/kernel"
  auto scaled = [&](ValueId sum, double factor, const char* kind) {
    return op("Mul", {sum, constant(at + "/" + kind, Tensor::scalar<float>(static_cast<float>(factor)))});
  };
  const Attributes all = {{"keepdims", int64_t{0}}};
  ValueId penalty = kNoValue;
  if (r.l1 != 0) penalty = scaled(op("ReduceSum", {op("Abs", {w})}, all), r.l1, "l1");
  if (r.l2 != 0) {
    ValueId l2 = scaled(op("ReduceSum", {op("Mul", {w, w})}, all), r.l2, "l2");
    penalty = penalty == kNoValue ? l2 : op("Add", {penalty, l2});
  }
  penalties.push_back(penalty);
}

void LayerBuilder::penalize_activity(ValueId v, double l1, double l2) {
  if (l1 == 0 && l2 == 0) return;
  const Attributes all = {{"keepdims", int64_t{0}}};
  const double per_sample = 1.0 / static_cast<double>(options.batch_size);
  auto scaled = [&](ValueId sum, double factor, const char* kind) {
    return op("Mul", {sum, constant(std::string("activity/") + kind,
                                    Tensor::scalar<float>(static_cast<float>(factor * per_sample)))});
  };
  ValueId penalty = kNoValue;
  if (l1 != 0) penalty = scaled(op("ReduceSum", {op("Abs", {v})}, all), l1, "l1");
  if (l2 != 0) {
    const ValueId p2 = scaled(op("ReduceSum", {op("Mul", {v, v})}, all), l2, "l2");
    penalty = penalty == kNoValue ? p2 : op("Add", {penalty, p2});
  }
  penalties.push_back(penalty);
}

ValueId LayerBuilder::state(const std::string& suffix, Tensor init) {
  if (!spec.shares.empty())
    fail_layer(
        fmt::format("it shares the layer '{}', which holds state ('{}'): a shared layer with state is not "
                    "supported",
                    spec.shares, suffix),
        "give this call a layer of its own");
  const ValueId v = graph.add_state(name() + "/" + suffix, std::move(init));
  graph.value(v).frozen = !trainable();
  return counted(v, false);
}

ValueId LayerBuilder::constant(const std::string& suffix, Tensor value) {
  return graph.add_constant(graph.unique_name(name() + "/" + suffix), std::move(value));
}

ValueId LayerBuilder::shape_constant(const std::string& suffix, const std::vector<int64_t>& dims) {
  return constant(suffix, Tensor::from<int64_t>(Shape{static_cast<int64_t>(dims.size())}, dims));
}

NodeId LayerBuilder::node(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                          int num_outputs) {
  return graph.add_node(op, std::move(inputs), std::move(attrs), num_outputs,
                        graph.unique_name(name() + "/" + op));
}

ValueId LayerBuilder::op(const std::string& op, std::vector<ValueId> inputs, Attributes attrs) {
  return graph.node(node(op, std::move(inputs), std::move(attrs), 1)).outputs[0];
}

int64_t LayerBuilder::positive(const std::string& arg) const {
  int64_t v = args.integer(arg);
  if (v < 1) fail(arg, fmt::format("{} must be a positive integer, got {}", arg, v));
  if (v > largest_value_of(arg))
    fail(arg, fmt::format("{} = {} is too large (at most {})", arg, v, largest_value_of(arg)),
         largest_value_of(arg) == kLargestSize
             ? "a layer's sizes (units, filters, kernels, vocabularies) fit in 32 bits"
             : "windows, strides and dilations are at most 2^20");
  return v;
}

std::vector<int64_t> LayerBuilder::positive_pair(const std::string& arg) const {
  std::vector<int64_t> v = args.pair(arg);
  for (int64_t x : v)
    if (x < 1 || x > largest_value_of(arg))
      fail(arg, fmt::format("{} must hold positive integers of at most {}, got [{}]", arg,
                            largest_value_of(arg), fmt::join(v, ", ")));
  return v;
}

std::string LayerBuilder::choice(const std::string& arg, const std::vector<std::string>& options) const {
  std::string v = args.string(arg);
  std::string low = v;
  for (char& c : low) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (std::find(options.begin(), options.end(), low) != options.end()) return low;
  std::vector<std::string> quoted;
  for (const std::string& o : options) quoted.push_back(fmt::format("\"{}\"", o));
  fail(arg, fmt::format("{} must be {}, got \"{}\"", arg, fmt::join(quoted, " or "), v),
       did_you_mean_only(v, options));
}

std::string LayerBuilder::activation_name(const std::string& arg) const {
  std::string v = args.string(arg);
  if (v == "None") return "linear";
  const auto& names = activation_names();
  if (std::find(names.begin(), names.end(), v) != names.end()) return v;
  fail(arg, fmt::format("unknown activation \"{}\"", v),
       fmt::format("{}activations: {}", did_you_mean(v, names), fmt::join(names, ", ")));
}

std::vector<int64_t> LayerBuilder::four_sides(const std::string& arg) const {
  std::vector<int64_t> p = args.ints(arg);
  if (p.size() == 1) p = {p[0], p[0], p[0], p[0]};
  if (p.size() == 2) p = {p[0], p[0], p[1], p[1]};
  if (p.size() != 4)
    fail(arg, fmt::format("{} has {} values", arg, p.size()),
         "give one number, [h, w], or [top, bottom, left, right]");
  for (int64_t v : p)
    if (v < 0) fail(arg, fmt::format("{} must not be negative, got {}", arg, v));
  return p;
}

std::vector<int64_t> LayerBuilder::six_sides(const std::string& arg) const {
  std::vector<int64_t> p = args.ints(arg);
  if (p.size() == 1) p = {p[0], p[0], p[0], p[0], p[0], p[0]};
  if (p.size() == 3) p = {p[0], p[0], p[1], p[1], p[2], p[2]};
  if (p.size() != 6)
    fail(arg, fmt::format("{} has {} values", arg, p.size()),
         "give one number, [d, h, w], or [front, back, top, bottom, left, right]");
  for (int64_t v : p)
    if (v < 0) fail(arg, fmt::format("{} must not be negative, got {}", arg, v));
  return p;
}

std::string LayerBuilder::initializer(const std::string& arg) const {
  std::string v = args.string(arg);
  std::string name = v.substr(0, v.find('('));
  name.erase(0, name.find_first_not_of(" \t"));
  name.erase(name.find_last_not_of(" \t") + 1);
  if (canonical_initializer(name).empty())
    fail(arg, fmt::format("unknown initializer \"{}\"", v),
         fmt::format("{}initializers: {}", did_you_mean(name, initializer_names()),
                     fmt::join(initializer_names(), ", ")));
  try {
    return canonical_initializer_call(v);
  } catch (const InputError& e) {
    fail(arg, e.message(), e.hint());
  }
}

namespace {
int64_t numel_of(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}
}  // namespace

void LayerBuilder::require_image(const LayerValue& x) const {
  if (x.shape.size() != 3)
    fail_layer(fmt::format("needs an image input (None, height, width, channels), got {} from '{}'",
                           keras_shape(x.shape), x.from),
               "declare [model] input = [height, width, channels], or put a Reshape layer before it");
}

int LayerBuilder::ir_axis(const LayerValue& x, int k) const {
  if (x.channels_first) return k == static_cast<int>(x.shape.size()) - 1 ? 1 : k + 2;
  return k + 1;
}

std::vector<int64_t> channels_first_perm(size_t keras_rank) {
  std::vector<int64_t> perm = {0, static_cast<int64_t>(keras_rank)};
  for (int64_t d = 1; d < static_cast<int64_t>(keras_rank); ++d) perm.push_back(d);
  return perm;
}

std::vector<int64_t> channels_last_perm(size_t keras_rank) {
  std::vector<int64_t> perm = {0};
  for (int64_t d = 2; d <= static_cast<int64_t>(keras_rank); ++d) perm.push_back(d);
  perm.push_back(1);
  return perm;
}

// Volumes (D, H, W, C), images (H, W, C) and sequences (T, F): the channels (features) move between the last
// axis and axis 1. A Reshape does it when the other axes hold one element in all (the bytes are already in
// order), else a Transpose.
LayerValue LayerBuilder::to_channels_first(const LayerValue& x) {
  if (x.channels_first || x.shape.size() < 2 || x.shape.size() > 4) return x;
  LayerValue y = x;
  y.channels_first = true;
  const int64_t c = x.shape.back(), rest = numel_of(x.shape) / std::max<int64_t>(c, 1);
  std::vector<int64_t> dims = {-1, c};
  dims.insert(dims.end(), x.shape.begin(), x.shape.end() - 1);
  if (c == 1 || rest == 1)
    y.value = op("Reshape", {x.value, shape_constant("channels_first_shape", dims)});
  else
    y.value = op("Transpose", {x.value}, {{"perm", channels_first_perm(x.shape.size())}});
  y.pre_activation = kNoValue;
  return y;
}

LayerValue LayerBuilder::to_channels_last(const LayerValue& x) {
  if (!x.channels_first) return x;
  LayerValue y = x;
  y.channels_first = false;
  const int64_t c = x.shape.back(), rest = numel_of(x.shape) / std::max<int64_t>(c, 1);
  std::vector<int64_t> dims = {-1};
  dims.insert(dims.end(), x.shape.begin(), x.shape.end());
  if (c == 1 || rest == 1)
    y.value = op("Reshape", {x.value, shape_constant("channels_last_shape", dims)});
  else
    y.value = op("Transpose", {x.value}, {{"perm", channels_last_perm(x.shape.size())}});
  y.pre_activation = kNoValue;
  return y;
}

LayerValue LayerBuilder::reshape(const LayerValue& x, const std::vector<int64_t>& shape) {
  TRAINER_ASSERT(!x.channels_first, "reshape of a channels-first value");
  LayerValue y;
  y.from = x.from;
  y.shape = shape;
  if (shape == x.shape) {
    y.value = x.value;
    return y;
  }
  std::vector<int64_t> dims = {-1};
  dims.insert(dims.end(), shape.begin(), shape.end());
  y.value = op("Reshape", {x.value, shape_constant("shape", dims)});
  return y;
}

LayerValue LayerBuilder::activate(LayerValue x, const std::string& name) {
  x.activation = name;
  x.pre_activation = kNoValue;
  if (name == "linear") return x;
  if (name == "softmax" || name == "sigmoid") x.pre_activation = x.value;
  ActivationOps ops{[&](const std::string& o, std::vector<ValueId> in, Attributes a) {
                      return op(o, std::move(in), std::move(a));
                    },
                    [&](const std::string& suffix, Tensor t) { return constant(suffix, std::move(t)); }};
  const ValueId y = emit_activation(ops, x.value, graph.value(x.value).dtype, name,
                                    ir_axis(x, static_cast<int>(x.shape.size()) - 1));
  TRAINER_ASSERT(y != kNoValue, "activation '{}'", name);
  x.value = y;
  return x;
}

}  // namespace trainer::models
