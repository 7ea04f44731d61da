// build_model: walks the spec's layers in order (sequentially, or by name in the graph form), checks each
// against its Keras signature, expands it to IR ops and collects the summary rows.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>

#include "engine/ops/norm_dropout.h"
#include "engine/util/error.h"
#include "models/build.h"
#include "models/layer_library.h"
#include "models/regularizers.h"

namespace trainer::models {

using namespace trainer::engine;

namespace {

const LayerDef* find_def(const formats::LayerSpec& spec) {
  const std::vector<LayerDef>& defs = layer_defs();
  const std::string type = formats::canonical_layer_type(spec.type);  // TimeDistributed's layer, too
  for (const LayerDef& d : defs)
    if (d.type == type) return &d;
  std::vector<std::string> types;
  for (const LayerDef& d : defs) types.push_back(d.type);
  const formats::SourcePos& at = spec.type_pos.file.empty() ? spec.pos : spec.type_pos;
  throw InputError(at.str(), fmt::format("unknown layer type '{}'", spec.type),
                   fmt::format("{}layers: {}", did_you_mean(spec.type, types), fmt::join(types, ", ")));
}

DType input_dtype(const formats::InputSpec& input) {
  if (input.dtype == "float32") return DType::f32;
  if (input.dtype == "int64") return DType::i64;
  if (input.dtype == "int32") return DType::i32;
  throw InputError(input.pos.str(), fmt::format("unknown input dtype '{}'", input.dtype),
                   did_you_mean(input.dtype, {"float32", "int32", "int64"}) +
                       "use float32 (features, images) or int32/int64 (token ids for an Embedding)");
}

// NCHW -> NHWC for a model whose last layer leaves an image: its output is channels-last, as its shape says.
// A channels-first output back in Keras's layout: [N, C, H, W] -> [N, H, W, C], [N, F, T] -> [N, T, F].
ValueId channels_last(Graph& g, ValueId v, size_t keras_rank, const std::string& prefix) {
  if (v == kNoValue) return v;
  NodeId n = g.add_node("Transpose", {v}, {{"perm", channels_last_perm(keras_rank)}}, 1,
                        g.unique_name(prefix + "/Transpose"));
  return g.node(n).outputs[0];
}

// A Flatten's value in Keras's feature order (LayerValue::flattened_channels_first): back to [N, C, D...],
// moved to channels last, flattened again.
LayerValue in_keras_order(Graph& g, LayerValue x, const std::string& prefix) {
  if (x.flattened_channels_first.empty()) return x;
  const std::vector<int64_t> keras = std::move(x.flattened_channels_first);
  x.flattened_channels_first.clear();
  std::vector<int64_t> dims = {-1, keras.back()};
  dims.insert(dims.end(), keras.begin(), keras.end() - 1);
  auto move = [&](ValueId v, const std::string& name) {
    if (v == kNoValue) return v;
    const ValueId shape =
        g.add_constant(g.unique_name(name + "/channels_first_shape"),
                       Tensor::from<int64_t>(Shape{static_cast<int64_t>(dims.size())}, dims));
    NodeId r = g.add_node("Reshape", {v, shape}, {}, 1, g.unique_name(name + "/Reshape"));
    const ValueId last = channels_last(g, g.node(r).outputs[0], keras.size(), name);
    return g.node(g.add_node("Flatten", {last}, {{"axis", int64_t{1}}}, 1, g.unique_name(name + "/Flatten")))
        .outputs[0];
  };
  x.value = move(x.value, prefix + "/keras_order");
  x.pre_activation = move(x.pre_activation, prefix + "/keras_order_logits");
  return x;
}

// The elementwise layers: a Flatten's features keep their order through them (in_keras_order).
bool passes_feature_order(const std::string& type) {
  static const std::set<std::string> elementwise = {"Activation",      "ReLU",
                                                    "LeakyReLU",       "ELU",
                                                    "Identity",        "Dropout",
                                                    "AlphaDropout",    "GaussianNoise",
                                                    "GaussianDropout", "ActivityRegularization"};
  return elementwise.count(type) > 0;
}

// Layers that take a Flatten's features in whatever order they come (in_keras_order): Dense, whose kernel
// rows meet them in that order, and the elementwise layers, which pass the order on.
bool takes_any_feature_order(const std::string& type) {
  return type == "Dense" || passes_feature_order(type);
}

// TimeDistributed: the wrapped layer applied to every step of a [N, T, ...] input, as one layer on [N T, ...]
// (the steps moved to the batch by a Reshape, and back after). Keras's weights are shared over the steps,
// which is what a layer on the merged batch does.
LayerValue time_distributed(LayerBuilder& b, const LayerValue& in, const LayerDef& wrapped) {
  if (in.shape.size() < 2)
    b.fail_layer(fmt::format("needs steps to distribute over, (None, steps, ...), got {} from '{}'",
                             keras_shape(in.shape), in.from),
                 "a TimeDistributed layer takes sequences of samples: frames, steps of features");
  const LayerValue x = b.to_channels_last(in);
  const int64_t steps = x.shape[0];
  LayerValue merged;
  merged.shape.assign(x.shape.begin() + 1, x.shape.end());
  merged.from = x.from;
  std::vector<int64_t> dims = {-1};
  dims.insert(dims.end(), merged.shape.begin(), merged.shape.end());
  merged.value = b.op("Reshape", {x.value, b.shape_constant("merged_shape", dims)});
  // The wrapped layer sees a batch of N T samples (its dropout masks are drawn per merged sample).
  BuildOptions merged_options = b.options;
  merged_options.batch_size = b.options.batch_size * steps;
  LayerBuilder inner(b.graph, merged_options, b.spec, b.args, b.info);
  const NodeId first_node = b.graph.num_nodes();
  LayerValue y =
      inner.to_channels_last(in_keras_order(b.graph, wrapped.build(inner, {merged}), b.name() + "/step"));
  // Its random draws count `steps` rows per sample of the batch, so that replicas, which take other samples'
  // rows, draw what one device draws (ops::kRowsPerSample; nested, the factors multiply).
  for (NodeId id = first_node; id < b.graph.num_nodes(); ++id) {
    Node& n = b.graph.node(id);
    const bool draws = n.op == "Dropout" || n.op == "RandomUniformLike" || n.op == "RandomNormalLike";
    if (n.dead || !draws) continue;
    const Shape& s = b.graph.value(n.op == "Dropout" ? n.inputs[0] : n.outputs[0]).shape;
    const int64_t rows = n.attrs.has(ops::kRowsPerSample) ? n.attrs.i(ops::kRowsPerSample) : 1;
    if (s.rank() > 0 && s[0] == merged_options.batch_size * rows)
      n.attrs.set(ops::kRowsPerSample, rows * steps);
  }
  b.absorb(inner);
  LayerValue out = y;
  out.shape = {steps};
  out.shape.insert(out.shape.end(), y.shape.begin(), y.shape.end());
  dims = {-1};
  dims.insert(dims.end(), out.shape.begin(), out.shape.end());
  const ValueId split = b.shape_constant("split_shape", dims);
  out.value = b.op("Reshape", {y.value, split});
  if (y.pre_activation != kNoValue) out.pre_activation = b.op("Reshape", {y.pre_activation, split});
  out.mask = in.mask;
  b.info.flops_per_sample *= steps;
  return out;
}

// Whether `names` hold "<name>" or "<name>/...": the weights a layer of that name would make.
bool taken_in(const std::set<std::string>& names, const std::string& name) {
  const std::string prefix = name + "/";
  auto it = names.lower_bound(prefix);  // the first name of the prefix sorts first among them
  return names.count(name) || (it != names.end() && it->starts_with(prefix));
}

// An input of the layers and where it is defined, for messages.
struct SourcePlace {
  std::string name, where;
};

// Expands `spec_layers` on `values` (the model's inputs, named as `inputs` lists them; the first layer takes
// the first), sets m's output from the last layer, and adds the layers' rows and penalties.
// `outputs` ([model] outputs) names the layers whose outputs the model gives; empty: the last layer's.
void build_layers(BuiltModel& m, const std::vector<formats::LayerSpec>& spec_layers,
                  const BuildOptions& options, std::map<std::string, LayerValue> values,
                  const std::vector<SourcePlace>& inputs, const formats::ModelSection& model);

}  // namespace

BuiltModel build_model(const formats::ModelSection& model, const BuildOptions& options) {
  TRAINER_ASSERT(options.batch_size >= 1, "batch_size {}", options.batch_size);
  BuiltModel m;
  Graph& g = m.graph;
  std::vector<const formats::InputSpec*> model_inputs = {&model.input};
  for (const formats::InputSpec& in : model.more_inputs) model_inputs.push_back(&in);
  if (model.layers.empty())
    throw InputError(model.pos.str(), "the model has no layers", "add [[model.layers]] tables");

  std::map<std::string, LayerValue> values;
  std::vector<std::string> input_names;
  for (const formats::InputSpec* input : model_inputs) {
    const std::string what =
        model_inputs.size() == 1 ? "the model's input" : fmt::format("input '{}'", input->name);
    if (input->shape.empty())
      throw InputError(input->pos.str(), fmt::format("{} has an empty shape", what),
                       "give the shape of one sample, e.g. input = [28, 28, 1] or input = [784]");
    if (input->shape.size() > 8)
      throw InputError(input->pos.str(),
                       fmt::format("{} has {} dimensions; a sample has at most 8", what, input->shape.size()),
                       "flatten the samples' leading dimensions, or Reshape them in the model");
    for (int64_t d : input->shape)
      if (d < 1)
        throw InputError(input->pos.str(), fmt::format("{} shape [{}] must hold positive sizes", what,
                                                       fmt::join(input->shape, ", ")));
    if (values.count(input->name))
      throw InputError(input->pos.str(), fmt::format("two inputs are named '{}'", input->name));
    // A rank-3 float sample is an image, fed as NCHW (the loader transposes each sample).
    const DType dtype = input_dtype(*input);
    LayerValue in;
    in.shape = input->shape;
    in.from = input->name;
    in.channels_first = !is_integer(dtype) && input->shape.size() == 3;
    std::vector<int64_t> dims = {options.batch_size};
    if (in.channels_first)
      dims.insert(dims.end(), {input->shape[2], input->shape[0], input->shape[1]});
    else
      dims.insert(dims.end(), input->shape.begin(), input->shape.end());
    try {
      engine::tensor_bytes(Shape(dims), dtype);  // sizes no batch of this input could have
    } catch (const InputError& e) {
      throw InputError(input->pos.str(),
                       fmt::format("{} of shape [{}]: {}", what, fmt::join(input->shape, ", "), e.what()),
                       e.hint());
    }
    in.value = g.add_input(input->name, dtype, Shape(dims));
    if (input == &model.input) {
      m.input = in.value;
      m.input_channels_last = in.channels_first;
    } else {
      m.more_inputs.push_back({in.value, in.channels_first});
    }
    values[input->name] = in;
    input_names.push_back(input->name);
  }
  std::vector<SourcePlace> places;
  for (const formats::InputSpec* input : model_inputs) places.push_back({input->name, input->pos.str()});
  build_layers(m, model.layers, options, std::move(values), places, model);
  return m;
}

void build_head(BuiltModel& m, const formats::ModelSection& model, const BuildOptions& options,
                const std::set<std::string>& onnx_names) {
  Graph& g = m.graph;
  const Value& out = g.value(m.output);
  const std::string where = model.onnx_pos.str();
  if (!is_float(out.dtype))
    throw InputError(where,
                     fmt::format("the ONNX model's output '{}' is {}; [[model.layers]] take float values",
                                 out.name, dtype_name(out.dtype)),
                     "end the ONNX model with float features");
  if (out.shape.rank() < 2 || out.shape[0] != options.batch_size)
    throw InputError(
        where,
        fmt::format("the ONNX model's output '{}' has shape {}: [[model.layers]] take [batch, ...] "
                    "features",
                    out.name, out.shape.str()),
        "export the model with the batch as its output's first dimension");
  // The ONNX output in Keras's terms: [N, C, H, W] (and [N, C, D, H, W]) are channels-first images (volumes),
  // [N, T, F] a sequence, [N, F] features.
  LayerValue x;
  x.value = m.output;
  x.from = kOnnxOutputName;
  const std::vector<int64_t>& d = out.shape.dims();
  x.channels_first = d.size() >= 4;
  if (x.channels_first) {
    x.shape.assign(d.begin() + 2, d.end());
    x.shape.push_back(d[1]);
  } else {
    x.shape.assign(d.begin() + 1, d.end());
  }
  // Layer names must not name weights like the ONNX model's values ("dense/kernel" of a model that trainer
  // exported): a given name that does is an error; a generated one moves to the next free name of its kind
  // (dense -> dense_1), and the layers that take it by that name follow.
  std::vector<formats::LayerSpec> layers = model.layers;
  std::map<std::string, std::string> renamed;
  auto free = [&](const std::string& n) {
    return !taken_in(onnx_names, n) && n != kOnnxOutputName &&
           std::none_of(layers.begin(), layers.end(),
                        [&](const formats::LayerSpec& l) { return l.name == n; });
  };
  for (formats::LayerSpec& l : layers) {
    if (l.name.empty() || !taken_in(onnx_names, l.name)) continue;
    if (l.named)
      throw InputError(
          l.pos.str(),
          fmt::format("layer name '{}' names values of the ONNX model already ('{}/...')", l.name, l.name),
          "give the layer another name");
    const size_t cut = l.name.find_last_of('_');
    const bool numbered = cut != std::string::npos && cut + 1 < l.name.size() &&
                          l.name.find_first_not_of("0123456789", cut + 1) == std::string::npos;
    const std::string base = numbered ? l.name.substr(0, cut) : l.name;
    std::string n;
    for (int k = 1; !free(n = fmt::format("{}_{}", base, k)); ++k) {
    }
    renamed[l.name] = n;
    l.name = n;
  }
  for (formats::LayerSpec& l : layers) {
    for (std::string& in : l.inputs)
      if (auto it = renamed.find(in); it != renamed.end()) in = it->second;
    // A shared layer's weights are found by its layer's name: the renamed one, never the ONNX model's.
    if (auto it = renamed.find(l.shares); it != renamed.end()) l.shares = it->second;
  }
  formats::ModelSection named = model;  // outputs follow the renamed layers
  for (std::string& o : named.outputs)
    if (auto it = renamed.find(o); it != renamed.end()) o = it->second;
  build_layers(m, layers, options, {{kOnnxOutputName, x}}, {{kOnnxOutputName, where}}, named);
}

namespace {

void build_layers(BuiltModel& m, const std::vector<formats::LayerSpec>& spec_layers,
                  const BuildOptions& options, std::map<std::string, LayerValue> values,
                  const std::vector<SourcePlace>& inputs, const formats::ModelSection& model) {
  Graph& g = m.graph;
  std::vector<std::string> input_names;
  for (const SourcePlace& p : inputs) input_names.push_back(p.name);
  std::map<std::string, int> uses;
  std::map<std::string, LayerValue> keras_ordered;  // Flatten values in Keras's order (in_keras_order)
  std::map<std::string, const formats::LayerSpec*> specs;
  std::map<std::string, int> generated;
  std::vector<std::string> all_names;  // every layer's name, to tell "defined later" from "unknown"
  std::vector<formats::LayerSpec> layers = spec_layers;
  for (formats::LayerSpec& spec : layers) {
    if (!spec.name.empty()) continue;
    const LayerDef* def = find_def(spec);
    // Keras's generated names: dense, dense_1, dense_2, ...
    for (;;) {
      int& k = generated[def->base_name];
      std::string n = k == 0 ? def->base_name : fmt::format("{}_{}", def->base_name, k);
      ++k;
      bool taken = std::any_of(spec_layers.begin(), spec_layers.end(),
                               [&](const formats::LayerSpec& s) { return s.name == n; });
      if (!taken) {
        spec.name = n;
        break;
      }
    }
  }
  for (const formats::LayerSpec& spec : layers) all_names.push_back(spec.name);

  std::string previous = input_names.at(0);
  for (const formats::LayerSpec& spec : layers) {
    const LayerDef* def = find_def(spec);
    if (std::find(input_names.begin(), input_names.end(), spec.name) != input_names.end())
      throw InputError(spec.pos.str(), fmt::format("a layer cannot be named '{}'", spec.name),
                       fmt::format("'{}' names a model input", spec.name));
    // Weights are named "<layer>/kernel", so a '/' in a layer's name could collide with another layer's
    // weights.
    if (spec.name.find('/') != std::string::npos)
      throw InputError(spec.pos.str(), fmt::format("layer name '{}' contains '/'", spec.name),
                       "use letters, digits, '_' or '-', as Keras does");
    if (specs.count(spec.name))
      throw InputError(spec.pos.str(), fmt::format("two layers are named '{}'", spec.name),
                       fmt::format("the other one is at {}", specs[spec.name]->pos.str()));

    std::vector<std::string> input_names =
        spec.inputs.empty() ? std::vector<std::string>{previous} : spec.inputs;
    std::vector<LayerValue> inputs;
    for (const std::string& name : input_names) {
      auto it = values.find(name);
      if (it != values.end()) {
        inputs.push_back(it->second);
        continue;
      }
      if (name == spec.name)
        throw InputError(spec.pos.str(), fmt::format("layer '{}' lists itself in its inputs", spec.name));
      if (std::find(all_names.begin(), all_names.end(), name) != all_names.end())
        throw InputError(spec.pos.str(),
                         fmt::format("layer '{}' takes '{}', which is defined after it", spec.name, name),
                         "list layers after the layers they take as inputs");
      std::vector<std::string> known;
      for (const auto& [n, v] : values) known.push_back(n);
      throw InputError(spec.pos.str(), fmt::format("layer '{}' takes an unknown input '{}'", spec.name, name),
                       fmt::format("{}known so far: {}", did_you_mean(name, known), fmt::join(known, ", ")));
    }
    // TimeDistributed: `layer` names the wrapped layer, whose arguments sit beside it (as Bidirectional's).
    const LayerDef* wrapped = nullptr;
    std::vector<ArgDecl> decls = def->args;
    if (def->type == "TimeDistributed") {
      auto it = spec.args.find("layer");
      const std::string* type = it == spec.args.end() ? nullptr : std::get_if<std::string>(&it->second.value);
      if (type == nullptr)
        throw InputError(it == spec.args.end() ? spec.pos.str() : it->second.pos.str(),
                         "TimeDistributed needs layer = \"<type>\", the layer it applies to every step",
                         "e.g. layer = \"Dense\" with the Dense layer's arguments beside it: units = 8");
      formats::LayerSpec inner = spec;
      inner.type = *type;
      inner.pos = inner.type_pos = it->second.pos;
      wrapped = find_def(inner);
      if (wrapped->type == "TimeDistributed" || wrapped->min_inputs != 1 || wrapped->max_inputs != 1)
        throw InputError(
            it->second.pos.str(),
            fmt::format("TimeDistributed wraps a layer of one input, not {}", wrapped->type),
            wrapped->type == "TimeDistributed"
                ? "one TimeDistributed applies its layer to every step already; for steps within "
                  "steps, Reshape them into one axis first"
                : "apply it to each input with a TimeDistributed of its own, then combine them");
      decls = wrapped->args;
      decls.push_back({"layer", ArgKind::string, std::nullopt});
    }
    const LayerDef* shape_def = wrapped ? wrapped : def;
    const int count = static_cast<int>(inputs.size());
    if (count < def->min_inputs || (def->max_inputs >= 0 && count > def->max_inputs)) {
      std::string want = def->max_inputs < 0 ? fmt::format("at least {} inputs", def->min_inputs)
                         : def->min_inputs == def->max_inputs
                             ? fmt::format("{} input{}", def->min_inputs, def->min_inputs == 1 ? "" : "s")
                             : fmt::format("{} to {} inputs", def->min_inputs, def->max_inputs);
      throw InputError(spec.pos.str(),
                       fmt::format("{} layer '{}' takes {}, got {}", spec.type, spec.name, want, count),
                       def->min_inputs > 1 ? "name them in the layer: inputs = [\"a\", \"b\"]" : "");
    }
    for (const LayerValue& x : inputs) {
      const bool ids = is_integer(g.value(x.value).dtype);
      if (shape_def->takes_ids && !ids)
        throw InputError(spec.pos.str(),
                         fmt::format("{} layer '{}' takes integer token ids, got float values from '{}'",
                                     spec.type, spec.name, x.from),
                         "declare the model's input with dtype = \"int64\"");
      if (!shape_def->takes_ids && ids)
        throw InputError(spec.pos.str(),
                         fmt::format("{} layer '{}' takes float values, got integer token ids from '{}'",
                                     spec.type, spec.name, x.from),
                         "start with an Embedding layer, or declare the input with dtype = \"float32\"");
    }

    LayerArgs args(spec, decls);
    LayerInfo info;
    info.name = spec.name;
    info.type = spec.type;
    LayerBuilder builder(g, options, spec, args, info);
    // Keras's order for the readers that need it, made once per value (a Dense reading the same value keeps
    // the channels-first order whatever the layers' order in the spec).
    if (!takes_any_feature_order(def->type))
      for (size_t k = 0; k < inputs.size(); ++k)
        if (!inputs[k].flattened_channels_first.empty()) {
          auto [it, added] = keras_ordered.try_emplace(input_names[k]);
          if (added) it->second = in_keras_order(g, inputs[k], spec.name);
          inputs[k] = it->second;
        }
    LayerValue out = wrapped ? time_distributed(builder, inputs[0], *wrapped) : def->build(builder, inputs);
    if (passes_feature_order(def->type) && out.shape == inputs[0].shape)
      out.flattened_channels_first = inputs[0].flattened_channels_first;
    else if (def->type != "Flatten")
      out.flattened_channels_first.clear();
    // A mask goes on only through layers that keep it and the steps it describes; a layer that made a new one
    // (Embedding, Masking) keeps its own.
    if (!inputs.empty() && inputs[0].mask != kNoValue && out.mask == inputs[0].mask) {
      const bool same_steps = out.shape.size() >= 2 && out.shape[0] == inputs[0].shape[0];
      if (!def->keeps_mask || !same_steps) out.mask = kNoValue;
    }
    // An activity regularizer on the layer's output: its values, whatever the layout they are in.
    if (args.has("activity_regularizer")) {
      const Regularizer r = parse_regularizer(args.string("activity_regularizer"),
                                              [&](const std::string& what, const std::string& hint) {
                                                builder.fail("activity_regularizer", what, hint);
                                              });
      builder.penalize_activity(out.value, r.l1, r.l2);
    }
    m.constraints.insert(builder.constraints.begin(), builder.constraints.end());
    m.synchronized_norms.insert(m.synchronized_norms.end(), builder.synchronized_norms.begin(),
                                builder.synchronized_norms.end());
    m.masked_norms += builder.masked_norms;
    m.synchronized_masked_norms += builder.synchronized_masked_norms;
    for (ValueId p : builder.penalties)
      m.penalty = m.penalty == kNoValue
                      ? p
                      : g.node(g.add_node("Add", {m.penalty, p}, {}, 1, g.unique_name("regularization/Add")))
                            .outputs[0];
    out.from = spec.name;
    info.output_shape = out.shape;
    m.layers.push_back(info);
    for (const std::string& name : input_names) ++uses[name];
    values[spec.name] = out;
    specs[spec.name] = &spec;
    previous = spec.name;
  }

  // The model's outputs: the layers [model] outputs names, or the last one.
  std::vector<std::string> outputs = model.outputs;
  for (size_t k = 0; k < outputs.size(); ++k)
    if (!specs.count(outputs[k]))
      throw InputError(k < model.outputs_pos.size() ? model.outputs_pos[k].str() : model.pos.str(),
                       fmt::format("model.outputs names '{}', which is not a layer of the model", outputs[k]),
                       std::find(input_names.begin(), input_names.end(), outputs[k]) != input_names.end()
                           ? "an output is a layer's: put a layer after the input"
                           : fmt::format("{}the layers: {}", did_you_mean(outputs[k], all_names),
                                         fmt::join(all_names, ", ")));
  if (outputs.empty()) outputs = {previous};
  // A layer whose output reaches nothing would be computed every step for nothing: almost surely a mistake.
  for (const formats::LayerSpec& spec : layers)
    if (uses[spec.name] == 0 && std::find(outputs.begin(), outputs.end(), spec.name) == outputs.end())
      throw InputError(spec.pos.str(), fmt::format("the output of layer '{}' is not used", spec.name),
                       model.outputs.empty()
                           ? fmt::format("the model's output is its last layer, '{}'; name '{}' in a later "
                                         "layer's inputs, list the outputs in [model] outputs, or remove it",
                                         previous, spec.name)
                           : fmt::format("name '{}' in a later layer's inputs or in [model] outputs, or "
                                         "remove it",
                                         spec.name));

  for (const SourcePlace& input : inputs)
    if (uses[input.name] == 0)
      throw InputError(input.where, fmt::format("the model's input '{}' is not used", input.name),
                       fmt::format("name '{}' in a layer's inputs, or remove the input", input.name));

  // The layers' outputs are the model's (on an ONNX model, in place of the output the layers take).
  m.output = kNoValue;
  m.more_outputs.clear();
  for (size_t k = 0; k < outputs.size(); ++k) {
    const std::string& name = outputs[k];
    auto ordered = keras_ordered.find(name);
    LayerValue out = ordered != keras_ordered.end() ? ordered->second : in_keras_order(g, values[name], name);
    if (out.channels_first) {
      out.value = channels_last(g, out.value, out.shape.size(), name);
      out.pre_activation = channels_last(g, out.pre_activation, out.shape.size(), name + "/logits");
    }
    BuiltModel::Output o;
    o.name = model.outputs.empty() ? "" : name;
    o.value = out.value;
    o.logits = out.pre_activation;
    o.final_activation = out.activation.empty() ? "linear" : out.activation;
    o.shape = out.shape;
    if (out.mask != kNoValue && out.shape.size() >= 2) o.mask = out.mask;
    add_output(m, std::move(o));
  }
}

}  // namespace

void add_output(BuiltModel& m, BuiltModel::Output o) {
  if (m.output != kNoValue) {
    m.more_outputs.push_back(std::move(o));
    return;
  }
  m.output = o.value;
  m.logits = o.logits;
  m.final_activation = o.final_activation;
  m.output_shape = o.shape;
  m.output_mask = o.mask;
  m.output_name = o.name;
}

}  // namespace trainer::models
