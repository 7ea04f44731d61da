// The layer library's inside: how a Keras layer is declared (signature, inputs, builder) and the helpers its
// builder uses to add weights, track the layout of images and apply activations. build.cpp drives it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "engine/ir/graph.h"
#include "engine/ops/conv_volume.h"
#include "models/args.h"
#include "models/build.h"
#include "models/initializers.h"
#include "models/regularizers.h"

namespace trainer::models {

// A layer's output as the builder tracks it. A rank-3 image ([H, W, C] in Keras's terms) is held either as
// [N, C, H, W] (channels_first, what Conv and pooling take) or as [N, H, W, C]; everything else is
// [N] + shape. Layers convert between the two only where they must (see to_channels_first).
struct LayerValue {
  engine::ValueId value = engine::kNoValue;
  std::vector<int64_t> shape;  // per sample, Keras-style (channels last)
  bool channels_first = false;
  // The layer's closing activation ("" when it has none) and, for softmax and sigmoid, the value before it.
  std::string activation;
  engine::ValueId pre_activation = engine::kNoValue;
  std::string from;  // the layer that produced it ("input" for the model's input), for messages
  // Keras's mask of a sequence: [N, steps] float, 1 for the steps that count and 0 for padding, from an
  // Embedding with mask_zero or a Masking layer; layers that keep the steps pass it on
  // (LayerDef::keeps_mask), the recurrent layers and GlobalAveragePooling1D honour it, and every other layer
  // drops it.
  engine::ValueId mask = engine::kNoValue;
  // Non-empty: a Flatten of a channels-first value of this per-sample (Keras) shape, its features left in the
  // engine's order (C, H, W) where Keras's is (H, W, C). Dense (whose kernel rows then follow that order) and
  // the elementwise layers take it as it is, which costs no transpose; build_model gives every other layer,
  // and the model's outputs, Keras's order.
  std::vector<int64_t> flattened_channels_first;
};

// The Transpose permutations between [N, D1, ..., C] and [N, C, D1, ...] for a per-sample rank (2: sequences,
// 3: images, 4: volumes).
std::vector<int64_t> channels_first_perm(size_t keras_rank);
std::vector<int64_t> channels_last_perm(size_t keras_rank);

// "(None, 28, 28, 1)": a per-sample shape with the batch, as Keras prints it.
std::string keras_shape(const std::vector<int64_t>& shape);

// The largest size a layer's argument may give (units, filters, kernel sizes, strides, vocabularies):
// anything larger overflows the tensors it shapes.
inline constexpr int64_t kLargestSize = (int64_t{1} << 31) - 1;
// The largest a window argument (kernel_size, pool_size, strides, dilation_rate) may be: far beyond any
// model's, and small enough that a window's extent and its padding stay exact and a pooling loop stays short.
inline constexpr int64_t kLargestWindow = int64_t{1} << 20;
inline int64_t largest_value_of(const std::string& arg) {
  return arg == "kernel_size" || arg == "pool_size" || arg == "strides" || arg == "dilation_rate"
             ? kLargestWindow
             : kLargestSize;
}

class LayerBuilder {
 public:
  LayerBuilder(engine::Graph& graph, const BuildOptions& options, const formats::LayerSpec& spec,
               const LayerArgs& args, LayerInfo& info);

  engine::Graph& graph;
  const BuildOptions& options;
  const formats::LayerSpec& spec;
  const LayerArgs& args;
  LayerInfo& info;

  const std::string& name() const { return spec.name; }
  // Weights are named "<layer>/<suffix>" (Keras's names: kernel, bias, gamma, ...) and counted in info.
  engine::ValueId weight(const std::string& suffix, engine::Tensor init);
  // In a shared layer (spec.shares), the weight of that name its layer made (checked to have `shape`);
  // kNoValue in a layer of its own.
  engine::ValueId shared_weight(const std::string& suffix, const engine::Shape& shape) const;
  // The initial value of a weight or state: initializer `init` (canonical) drawn from `seed`, or zeros when
  // the build wants shapes alone (BuildOptions::initialize).
  engine::Tensor initial(const std::string& init, const engine::Shape& shape, const WeightFans& fans,
                         uint64_t seed) const;
  // A weight initialized by the initializer named in argument `init_arg`, seeded by its own name.
  // Its regularizer is argument `init_arg` with _regularizer for _initializer (kernel_regularizer), when the
  // layer declares one (see regularize).
  engine::ValueId weight(const std::string& suffix, const std::string& init_arg, const engine::Shape& shape,
                         const WeightFans& fans);
  // Adds the penalty of regularizer argument `arg` ("l2", "l1(0.001)", "l1_l2(l1=1e-5, l2=1e-4)", ...) on
  // trainable weight w to `penalties`; nothing when the argument is absent or "None", or the layer is frozen.
  void regularize(engine::ValueId w, const std::string& arg);
  // An activity regularizer on v (the layer's output, [batch, ...]): l1 sum |v| + l2 sum v^2 over the batch,
  // divided by the batch size as Keras divides it, so the strength does not depend on the batch size or
  // on how many replicas share it. Nothing when both are 0.
  void penalize_activity(engine::ValueId v, double l1, double l2);
  // The scalar penalties of this layer's regularizers, which build_model adds to the model's.
  std::vector<engine::ValueId> penalties;
  // Adds the constraint of argument `arg` ("max_norm(3)", "non_neg", ...) on trainable weight w to
  // `constraints`; nothing when the argument is absent or "None", or the layer is frozen.
  void constrain(engine::ValueId w, const std::string& arg, const WeightFans& fans);
  // This layer's weight constraints, by weight name, which training applies after each update.
  std::map<std::string, engine::WeightConstraint> constraints;
  // BatchNormalization(synchronized = true) in training mode: its node, which a data-parallel run rewrites
  // to normalize with the global batch's statistics (engine::ForwardModel::synchronized_batch_norms).
  std::vector<engine::NodeId> synchronized_norms;
  // BatchNormalizations built as masked moments (no BatchNormalization node), and how many are synchronized.
  int64_t masked_norms = 0, synchronized_masked_norms = 0;
  // Takes over what a builder of a wrapped layer (TimeDistributed's) collected: penalties, constraints and
  // batch normalizations, which build_model reads from this one.
  void absorb(const LayerBuilder& inner);
  // Persistent, never trained (BatchNorm's moving statistics); counted as non-trainable parameters.
  engine::ValueId state(const std::string& suffix, engine::Tensor init);
  engine::ValueId constant(const std::string& suffix, engine::Tensor value);
  // A float32 constant of ones of shape `dims`: the shape a random draw (Dropout, RandomUniformLike) takes.
  engine::ValueId ones(const std::string& suffix, const std::vector<int64_t>& dims);
  // Keras's mask_zero: [N, steps] float, 1 where token id `ids` is not 0 (padding).
  engine::ValueId nonzero_mask(engine::ValueId ids);
  // A 1-D int64 constant (Reshape's shape).
  engine::ValueId shape_constant(const std::string& suffix, const std::vector<int64_t>& dims);
  uint64_t seed(const std::string& suffix) const;
  // A dropout mask of IR shape `dims` (batch first): 1 / (1 - rate) where kept, 0 where dropped, drawn anew
  // each step as Dropout draws its own (it is a Dropout of ones), so a mask broadcast over some axes drops
  // whole channels or whole features of a sequence. kNoValue outside training or at rate 0.
  // `seed_arg` names the layer's optional seed argument (Dropout's seed attribute), or is empty.
  engine::ValueId dropout_mask(const std::string& suffix, const std::vector<int64_t>& dims, double rate,
                               const std::string& seed_arg = {});
  bool trainable() const;

  // Argument helpers that validate values, failing at the argument's position.
  int64_t positive(const std::string& arg) const;
  std::vector<int64_t> positive_pair(const std::string& arg) const;
  std::string choice(const std::string& arg, const std::vector<std::string>& options) const;  // lower case
  // Margins of an image as [top, bottom, left, right], from one number (every side), [h, w] or all four
  // (Keras's ((top, bottom), (left, right)) flattened); each 0 or more. ZeroPadding2D and Cropping2D.
  std::vector<int64_t> four_sides(const std::string& arg) const;
  // Margins of a volume as [front, back, top, bottom, left, right], from one number, [d, h, w] or all six
  // (Keras's ((front, back), (top, bottom), (left, right)) flattened). ZeroPadding3D and Cropping3D.
  std::vector<int64_t> six_sides(const std::string& arg) const;
  std::string activation_name(const std::string& arg = "activation") const;  // canonical
  std::string initializer(const std::string& arg) const;                     // canonical

  // Fails unless x is an image, (height, width, channels).
  void require_image(const LayerValue& x) const;
  // The IR axis of per-sample Keras axis k (0-based, without the batch).
  int ir_axis(const LayerValue& x, int k) const;
  // Layout changes of a rank-3 image. A Reshape when C == 1 or H * W == 1 (the bytes are already in order),
  // else a Transpose.
  LayerValue to_channels_first(const LayerValue& x);
  LayerValue to_channels_last(const LayerValue& x);
  // Applies activation `name` (canonical) along the channel axis for softmax; records it in the result.
  LayerValue activate(LayerValue x, const std::string& name);
  // Reshapes a channels-last value to per-sample `shape` (row-major, as Keras's Reshape).
  LayerValue reshape(const LayerValue& x, const std::vector<int64_t>& shape);
  // Adds a node named "<layer>/<Op>"; returns its first output.
  engine::ValueId op(const std::string& op, std::vector<engine::ValueId> inputs,
                     engine::Attributes attrs = {});
  engine::NodeId node(const std::string& op, std::vector<engine::ValueId> inputs, engine::Attributes attrs,
                      int num_outputs);

  [[noreturn]] void fail(const std::string& arg, const std::string& what,
                         const std::string& hint = {}) const {
    args.fail(arg, what, hint);
  }
  [[noreturn]] void fail_layer(const std::string& what, const std::string& hint = {}) const {
    args.fail_layer(what, hint);
  }

 private:
  engine::ValueId counted(engine::ValueId v, bool trainable);
};

using BuildFn = LayerValue (*)(LayerBuilder& b, const std::vector<LayerValue>& inputs);

struct LayerDef {
  std::string type;       // Keras class name
  std::string base_name;  // Keras's generated layer name: "dense", "conv2d", "max_pooling2d", ...
  std::vector<ArgDecl> args;
  int min_inputs = 1;
  int max_inputs = 1;      // -1: any number
  bool takes_ids = false;  // Embedding: integer token ids in; every other layer takes floats
  BuildFn build = nullptr;
  bool keeps_mask = false;  // passes its input's mask on when its output keeps the input's steps
};

// Marks the layers named in `types` as keeping their input's mask (Keras's supports_masking).
void keep_masks(std::vector<LayerDef>& defs, const std::vector<std::string>& types);

// One axis of a Keras transposed convolution as ONNX's ConvTranspose takes it. Its length is Keras's
// (keras.ops.deconv_output_length): without output_padding, in * stride for "same" and in * stride +
// max(span - stride, 0) for "valid"; with output_padding p, (in - 1) * stride + span - 2 pad + p, pad = span
// / 2 for "same" and 0 for "valid". Either way it is cropped from the full transposed convolution as
// TensorFlow's conv_transpose does, the gradient of the convolution of that output: the odd element of the
// crop at the end, output past the kernel's reach given as `extra` zeros (less than a stride, as
// output_padding). The caller checks p (0 <= p < stride) and out >= 1.
struct DeconvAxis {
  int64_t out = 0, pad_begin = 0, pad_end = 0, extra = 0;
};
DeconvAxis deconv_axis(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, bool same,
                       std::optional<int64_t> output_padding);

// Registration, one function per source file.
// The arguments of a convolution layer: `head` (filters, kernel_size, strides, ...), then activation (none),
// use_bias (true), `kernel_init` (glorot_uniform) and bias_initializer (zeros), in Keras's order.
std::vector<ArgDecl> conv_args(std::vector<ArgDecl> head,
                               const std::string& kernel_init = "kernel_initializer");

void add_core_layers(std::vector<LayerDef>& defs);            // layers_core.cpp
void add_conv_layers(std::vector<LayerDef>& defs);            // layers_conv.cpp
void add_recurrent_layers(std::vector<LayerDef>& defs);       // layers_recurrent.cpp
void add_conv_recurrent_layers(std::vector<LayerDef>& defs);  // layers_conv_lstm.cpp
// How the volume helpers of engine/ops/conv_volume.h add nodes and constants to b's graph
// (layers_conv3d.cpp).
engine::ops::VolumeEmitter volume_emitter(LayerBuilder& b);
// ConvLSTM1D/2D/3D (`rank` spatial axes); with Bidirectional's merge_mode ("concat", ...) a forward and a
// backward layer merged, with "" one (layers_conv_lstm.cpp).
LayerValue build_conv_lstm(LayerBuilder& b, const std::vector<LayerValue>& in, int rank,
                           const std::string& merge);
void add_sequence_layers(std::vector<LayerDef>& defs);   // layers_conv1d.cpp
void add_reshaping_layers(std::vector<LayerDef>& defs);  // layers_reshaping.cpp
// Images in the IR's [N, C, H, W] (x.shape Keras's (h, w, c)) resized to (out_h, out_w), bilinear with
// half-pixel centres as Keras resizes, or nearest: Resizing's and UpSampling2D's products with constant
// matrices.
LayerValue resize_channels_first(LayerBuilder& b, LayerValue x, int64_t out_h, int64_t out_w, bool nearest);
// The largest centred window of x ([N, C, H, W]; x.shape (h, w, c)) with the aspect ratio out_h : out_w, as
// Keras's crop_to_aspect_ratio (x itself when it has that ratio already).
LayerValue crop_to_aspect_ratio(LayerBuilder& b, LayerValue x, int64_t out_h, int64_t out_w);
void add_attention_layers(std::vector<LayerDef>& defs);     // layers_attention.cpp
void add_augmentation_layers(std::vector<LayerDef>& defs);  // layers_augment.cpp
void add_volume_layers(std::vector<LayerDef>& defs);        // layers_conv3d.cpp
// Every layer, in the order above; `trainable` is appended to each signature.
const std::vector<LayerDef>& layer_defs();

// The activations Keras's `activation` arguments accept here; "None" means linear.
const std::vector<std::string>& activation_names();
// The IR op (and attributes) of a one-op activation; false for an unknown name or one of several ops
// (layers.cpp).
bool activation_op(const std::string& name, int64_t softmax_axis, std::string* op, engine::Attributes* attrs);
// How emit_activation adds nodes and scalar constants.
struct ActivationOps {
  std::function<engine::ValueId(const std::string&, std::vector<engine::ValueId>, engine::Attributes)> op;
  std::function<engine::ValueId(const std::string& suffix, engine::Tensor)> constant;
};
// Activation `name` applied to x (dtype `dtype`), one op or a few (silu, mish, relu6); x itself for linear;
// kNoValue for an unknown name.
engine::ValueId emit_activation(const ActivationOps& ops, engine::ValueId x, engine::DType dtype,
                                const std::string& name, int64_t softmax_axis);

}  // namespace trainer::models
