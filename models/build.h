// Builds the IR graph of a ModelSpec's model section: each Keras layer expands to IR ops with Keras's
// argument names, defaults and initializers, and the table `trainer summary` prints comes with it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/ir/graph.h"
#include "formats/model_spec.h"

namespace trainer::models {

struct LayerInfo {
  std::string name;
  std::string type;
  std::vector<int64_t> output_shape;  // per sample, Keras-style (channels last), without the batch dimension
  int64_t params = 0;                 // trainable and non-trainable
  int64_t trainable_params = 0;
  int64_t flops_per_sample = 0;  // forward multiply-adds x 2
};

struct BuildOptions {
  int64_t batch_size = 32;
  bool training =
      true;           // Dropout active, BatchNorm on batch statistics with running statistics bound as state
  uint64_t seed = 0;  // initializers: each layer seeded by (seed, layer name)
};

struct BuiltModel {
  engine::Graph graph;
  engine::ValueId input = engine::kNoValue;   // [batch, ...] in IR layout (NCHW for images)
  engine::ValueId output = engine::kNoValue;  // the last layer's output (after its activation)
  // When the last layer ends in softmax or sigmoid, the value before it (losses fuse with it); else kNoValue.
  engine::ValueId logits = engine::kNoValue;
  std::string final_activation;       // "softmax", "sigmoid", "linear", ...
  bool input_channels_last = false;   // the spec's input is HWC; the IR input is CHW (the loader converts)
  std::vector<int64_t> output_shape;  // per sample, Keras-style
  std::vector<LayerInfo> layers;
};

// Throws InputError at the layer's position: unknown layer type or argument (with did-you-mean), wrong types,
// impossible values (zero units), shapes that do not fit (a kernel larger than its input names both shapes).
BuiltModel build_model(const formats::ModelSection& model, const BuildOptions& options);

}  // namespace trainer::models
