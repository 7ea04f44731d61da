// 3-D convolution and pooling of [N, C, D, H, W] data written with the engine's 2-D ops, for the ONNX
// importer (Conv, MaxPool, AveragePool of rank 5) and the Keras layers (Conv3D, MaxPooling3D,
// AveragePooling3D). Both backends run them with their tested 2-D kernels, and autodiff differentiates them
// as they are.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/ir/graph.h"
#include "engine/ops/conv_geometry.h"

namespace trainer::engine::ops {

// How the helpers add to a graph: `op` adds a node and returns its first output (`what` names the part; the
// node with `last` set gives the result), `constant` adds a constant.
struct VolumeEmitter {
  std::function<ValueId(const std::string& op, std::vector<ValueId> inputs, Attributes attrs,
                        const std::string& what, bool last)>
      op;
  std::function<ValueId(Tensor value, const std::string& what)> constant;
};

// Conv of x [N, C, D, H, W] with weight [M, C / group, kd, kh, kw] and an optional bias [M] (kNoValue for
// none), in the window `g` resolved for the spatial dims (D, H, W): kd 2-D convolutions, one per depth tap,
// each over the depth slices that tap reads (a strided Slice of the depth-padded data, moved to the batch),
// summed. The products are those of the 3-D convolution, no more. Returns [N, M, D', H', W'].
ValueId conv3d_as_2d(const VolumeEmitter& e, ValueId x, const Shape& xs, ValueId w, const Shape& ws,
                     ValueId bias, const WindowGeometry& g, int64_t group);

// ConvTranspose of x [N, C, D, H, W] with weight [C, M / group, kd, kh, kw] and an optional bias [M], with
// ConvTranspose's attributes `a` (strides, dilations, pads, output_padding, output_shape, auto_pad, group):
// kd 2-D transposed convolutions, one per depth tap, over every input depth plane moved to the batch, each
// spread to output depths d * stride + tap * dilation (zeros between) and summed, then cut by the depth pads.
// Returns [N, M, D', H', W'], or an error message in *err (empty on success).
ValueId conv_transpose3d_as_2d(const VolumeEmitter& e, ValueId x, const Shape& xs, ValueId w, const Shape& ws,
                               ValueId bias, const Attributes& a, std::string* err);

// MaxPool or AveragePool (`op`) of x [N, C, D, H, W] in window `g` (with ceil_mode and, for the average,
// count_include_pad): a box window is separable for the maximum and for the mean, whose divisor (with or
// without the padding) is the product of per-axis counts, so it runs as a 2-D pool over (H, W) with the data
// as [N, C D, H, W] and one over D with it as [N, C, D, H' W']. Returns [N, C, D', H', W'].
ValueId pool3d_as_2d(const VolumeEmitter& e, const std::string& op, ValueId x, const Shape& xs,
                     const WindowGeometry& g, bool ceil_mode, int64_t count_include_pad);

}  // namespace trainer::engine::ops
