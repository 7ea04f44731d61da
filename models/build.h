// Builds the IR graph of a ModelSpec's model section: each Keras layer expands to IR ops with Keras's
// argument names, defaults and initializers, and the table `trainer summary` prints comes with it.
//
// Conventions of the built graph:
// - The input value is named "input" (each input of a model of several has its name): [batch] + the
//   spec's shape, except for a rank-3 float input ([H, W, C], Keras's channels-last), which is
//   [batch, C, H, W]; input_channels_last tells the loader to convert each sample. Conv2D, pooling and
//   BatchNormalization run NCHW. Layouts change only where a layer needs it: by a Reshape when C or H * W is
//   1, else by a Transpose.
// - Flatten after convolutions flattens C, H, W (Keras: H, W, C). This changes only which row of the next
//   Dense kernel meets which feature; models train the same.
// - Weights: "<layer>/kernel", "/bias", "/recurrent_kernel", "/embeddings", "/gamma", "/beta"; the state
//   "/moving_mean", "/moving_variance". Dense kernels are [in, units] as in Keras; Conv2D kernels are OIHW
//   (ONNX). LSTM and GRU keep ONNX's W [1, gates * units, features] and R [1, gates * units, units] in ONNX's
//   gate order (LSTM i, o, f, c; GRU z, r, h). LSTM's bias is [1, 4 * units], the input half of ONNX's B (the
//   recurrent half is a constant zero), so parameter counts are Keras's. GRU's bias is ONNX's whole B
//   [1, 6 * units] with reset_after (Keras's two biases; linear_before_reset = 1), else [1, 3 * units].
// - Training and inference graphs of one spec name every weight and state alike: plans share them by name.
// - No value is marked as a graph output: the caller marks what it reads.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/ir/graph.h"
#include "engine/optim/optimizer.h"
#include "formats/model_spec.h"

namespace trainer::models {

struct LayerInfo {
  std::string name;
  std::string type;
  // Per sample, Keras-style (channels last), without the batch dimension. An ONNX node's output may have
  // the batch elsewhere (an LSTM's Y_h: [directions, batch, hidden]): a dimension of k times the batch is -k.
  std::vector<int64_t> output_shape;
  int64_t params = 0;  // trainable and non-trainable
  int64_t trainable_params = 0;
  // Forward FLOPs: 2 x the multiply-adds of the matrix products (Dense, convolutions, LSTM and GRU gates,
  // MultiHeadAttention's projections and attention). Elementwise work (bias, activations, pooling,
  // normalization) and lookups count 0.
  int64_t flops_per_sample = 0;
};

struct BuildOptions {
  int64_t batch_size = 32;
  // Dropout active (ONNX Dropout, training_mode true); BatchNorm on batch statistics with its moving
  // statistics bound as state (Graph::bind_update). Without it, Dropout leaves no node and BatchNorm uses the
  // moving ones.
  bool training = true;
  uint64_t seed = 0;  // initializers: each weight seeded by (seed, "<layer>/<weight>")
  // [parallel] sync_batch_norm: every BatchNormalization is synchronized, as with synchronized = true.
  bool sync_batch_norm = false;
  // false: weights and states are left at zero, no initializer drawn (trainer check and summary need their
  // shapes alone; zeros cost no memory until written, engine::Tensor).
  bool initialize = true;
};

struct BuiltModel {
  engine::Graph graph;
  engine::ValueId input = engine::kNoValue;   // [batch, ...] in IR layout (NCHW for images)
  engine::ValueId output = engine::kNoValue;  // the last layer's output (after its activation)
  // When the last layer ends in softmax or sigmoid, the value before it (losses fuse with it); else kNoValue.
  engine::ValueId logits = engine::kNoValue;
  std::string final_activation;  // the last layer's activation: "softmax", "sigmoid", "relu", "linear", ...
  // The sum of the weight regularizers' penalties (a scalar), which training adds to the loss, as Keras adds
  // them to the loss it reports and to val_loss; kNoValue without regularizers.
  engine::ValueId penalty = engine::kNoValue;
  // The Keras mask of an output of steps ([batch, steps] float, 1 for the steps that count) that the last
  // layer passed on (Embedding mask_zero through layers that keep masks); losses and metrics skip the other
  // steps. kNoValue when there is none.
  engine::ValueId output_mask = engine::kNoValue;
  bool input_channels_last = false;  // the spec's input is HWC; the IR input is CHW (the loader converts)
  // A model of several inputs ([[model.inputs]]): the second, third, ..., named as the spec names them (the
  // first input too then).
  struct Input {
    engine::ValueId value = engine::kNoValue;
    bool channels_last = false;
  };
  std::vector<Input> more_inputs;
  // Keras's weight constraints (kernel_constraint, ...), by parameter name.
  std::map<std::string, engine::WeightConstraint> constraints;
  // Synchronized BatchNormalization nodes (training mode): see LayerBuilder::synchronized_norms.
  std::vector<engine::NodeId> synchronized_norms;
  // BatchNormalizations under a mask, built as weighted moments, and the synchronized ones among them.
  int64_t masked_norms = 0, synchronized_masked_norms = 0;
  std::vector<int64_t> output_shape;  // per sample, Keras-style
  // A model of several outputs ([model] outputs): the layer the first output comes from, and the second,
  // third, ... output, each with what the first has above.
  std::string output_name;
  struct Output {
    std::string name;  // its layer's
    engine::ValueId value = engine::kNoValue, logits = engine::kNoValue, mask = engine::kNoValue;
    std::string final_activation;
    std::vector<int64_t> shape;  // per sample, Keras-style
  };
  std::vector<Output> more_outputs;
  std::vector<LayerInfo> layers;
};

// Adds an output to m: the first sets BuiltModel's own fields (output, logits, final_activation,
// output_shape, output_mask, output_name), the others go to more_outputs.
void add_output(BuiltModel& m, BuiltModel::Output o);

// Throws InputError at the argument's position (or the layer's table when no argument is to blame): unknown
// layer type or argument (with did-you-mean), wrong types, impossible values (zero units), shapes that do not
// fit (a kernel larger than its input names both shapes), unknown or unused layer names in the graph form.
BuiltModel build_model(const formats::ModelSection& model, const BuildOptions& options);

// The name the layers of an ONNX spec use, in their `inputs`, for the ONNX model's output.
inline constexpr const char* kOnnxOutputName = "onnx";

// An ONNX spec's [[model.layers]] on top of its imported model `m`: the first takes m's output (named "onnx"
// in `inputs`), an [N, C, H, W] output taken as channels-first images, [N, T, F] as a sequence, [N, F] as
// features; the last layer becomes m's output (with its activation and penalties), and the layers' rows
// follow the imported ones. `onnx_names` are the ONNX file's value names (initializers, inputs, node
// outputs): a layer name that would name weights like them ("dense" for "dense/kernel") is an error when
// given and moves to the next free name when generated; taking them from the file keeps that choice the same
// in every mode the model is imported in.
void build_head(BuiltModel& m, const formats::ModelSection& model, const BuildOptions& options,
                const std::set<std::string>& onnx_names);

}  // namespace trainer::models
