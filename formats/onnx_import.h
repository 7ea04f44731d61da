// ONNX model import: a ModelProto (from a file or bytes) becomes an engine Graph with its inputs,
// initializers, constants, nodes and outputs, keeping the model's value and node names.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/ir/graph.h"

namespace onnx {
class ModelProto;
}

namespace trainer::formats {

// Opsets of the default ONNX domain the importer accepts without question. Models with an older opset are
// accepted when every op they use is still defined as it was then (see check in onnx_import.cpp).
inline constexpr int kMinOnnxOpset = 11;
inline constexpr int kMaxOnnxOpset = 21;

struct OnnxImportOptions {
  // Replaces a symbolic or unknown leading (batch) dimension of the graph inputs. 0: such a dimension is an
  // error.
  int64_t batch_size = 0;
  // Decides whether a floating-point initializer becomes a trainable parameter (true) or a constant (false).
  // Unset: every floating-point initializer is trainable. Integer initializers are always constants.
  std::function<bool(const std::string& name, const engine::Tensor& value)> initializer_is_trainable;
  // Graph inputs baked in as constants with these values. A static-shape IR needs the operands that determine
  // shapes (Reshape's shape, Slice's starts, ...) as constants; test data feeds them as inputs.
  std::map<std::string, engine::Tensor> constant_inputs;
};

struct OnnxModelInfo {
  int64_t ir_version = 0;
  int64_t opset = 0;                      // of the default domain; 0 when the model declares none
  std::map<std::string, int64_t> opsets;  // every imported domain ("" is ai.onnx)
  std::string producer_name, producer_version, graph_name, doc_string;
  std::map<std::string, std::string> metadata;
};

struct OnnxImportResult {
  engine::Graph graph;
  std::vector<engine::ValueId> inputs;   // the fed graph inputs, in the model's order (initializers and
                                         // baked-in constant_inputs excluded)
  std::vector<engine::ValueId> outputs;  // the model's outputs, in order; marked as graph outputs
  OnnxModelInfo info;
};

// A node the engine has no op for.
struct UnsupportedNode {
  std::string name;
  std::string op_type;
  std::string domain;
};

// Parses serialized ModelProto bytes; `source` names them in errors (a truncated or corrupt file is an
// InputError).
void parse_onnx_model(std::string_view bytes, const std::string& source, onnx::ModelProto* model);

OnnxImportResult import_onnx_file(const std::string& path, const OnnxImportOptions& options = {});
OnnxImportResult import_onnx_bytes(std::string_view bytes, const std::string& source,
                                   const OnnxImportOptions& options = {});
// `base_dir` is where external tensor data is looked up (the model file's folder).
OnnxImportResult import_onnx_model(const onnx::ModelProto& model, const std::string& source,
                                   const OnnxImportOptions& options = {}, const std::string& base_dir = {});

// Every node whose op (in its domain) is not in engine::OpRegistry, in model order. Constant, Shape and Size
// nodes become constants in the importer itself and are never listed.
std::vector<UnsupportedNode> find_unsupported_nodes(const onnx::ModelProto& model);

}  // namespace trainer::formats
