// Conversion between ONNX TensorProto messages and engine host tensors, and reading serialized TensorProto
// files (the .pb files of ONNX's test data).
#pragma once

#include <string>
#include <string_view>

#include "engine/ir/tensor.h"

namespace onnx {
class TensorProto;
}

namespace trainer::formats {

// Converts a TensorProto to a host tensor. Reads raw_data (little-endian), the typed fields (float_data,
// double_data, int32_data, int64_data) or external data, which is resolved relative to `base_dir`.
// `where` names the source (a file, a node) in the InputError raised for a malformed or unsupported tensor.
engine::Tensor tensor_from_onnx(const onnx::TensorProto& proto, const std::string& where,
                                const std::string& base_dir = {});

// A tensor stored as external data (PyTorch's dynamo exports keep weights in NAME.onnx.data) moved into its
// raw_data, read relative to `base_dir`; false for one that holds its data already.
bool inline_external_data(onnx::TensorProto* proto, const std::string& where, const std::string& base_dir);

// Fills `proto` with the tensor's name, dims, type and little-endian raw_data.
void tensor_to_onnx(const engine::Tensor& tensor, const std::string& name, onnx::TensorProto* proto);

// Parses one serialized TensorProto. `source` names it in errors.
engine::Tensor parse_onnx_tensor(std::string_view bytes, const std::string& source);
// Reads a file holding one serialized TensorProto.
engine::Tensor read_onnx_tensor_file(const std::string& path);

// Reads a whole file; throws InputError naming the path when it cannot be read.
std::string read_file_bytes(const std::string& path);

}  // namespace trainer::formats
