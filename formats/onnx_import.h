// ONNX model import: a ModelProto (from a file or bytes) becomes an engine Graph with its inputs,
// initializers, constants, nodes and outputs, keeping the model's value and node names.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/ir/graph.h"

namespace onnx {
class ModelProto;
class NodeProto;
}  // namespace onnx

namespace trainer::formats {

// Opsets of the default ONNX domain the importer accepts without question. Models with an older opset are
// accepted when every op they use is still defined as it was then (see check in onnx_import.cpp).
inline constexpr int kMinOnnxOpset = 11;
inline constexpr int kMaxOnnxOpset = 21;

// How Dropout and BatchNormalization nodes are imported.
enum class OnnxGraphMode {
  as_written,  // as the file has them
  // For training: Dropout active (training_mode true); BatchNormalization on batch statistics, its running
  // statistics state values that the node updates (Graph::bind_update), as in the layer library. A node
  // whose running statistics are constants (frozen) stays in inference form.
  training,
  // For evaluation and export: Dropout off; BatchNormalization on its running statistics, which are state as
  // in the training graphs, so that plans sharing an arena share them by name.
  inference,
};

struct OnnxImportOptions {
  // Replaces a symbolic or unknown leading (batch) dimension of the graph inputs. 0: such a dimension is an
  // error.
  int64_t batch_size = 0;
  // Also replaces a fixed leading dimension by batch_size (models exported with a batch of 1). A node that
  // then fails to check says that the model fixed its batch.
  bool replace_fixed_batch = false;
  OnnxGraphMode mode = OnnxGraphMode::as_written;
  // Evaluates nodes whose inputs are all constants at import (engine/plan/constant_folding.h): the shape
  // arithmetic of PyTorch and tf2onnx exports (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) becomes the
  // constants that the static-shape IR needs. A folded shape whose first entry is the batch size, read by a
  // Reshape of a batch, says 0 (copy the input's batch) instead, so the graph stays valid at any batch size.
  bool fold_constants = true;
  // Decides whether a floating-point initializer that some node differentiates through becomes a trainable
  // parameter (true) or a constant (false); for the running statistics of BatchNormalization in the training
  // and inference modes, whether they are state (true) or constants (false). Unset: true. Integer
  // initializers, and initializers that nodes read only where no gradient flows (Reshape's shape, Dropout's
  // ratio), are always constants.
  std::function<bool(const std::string& name, const engine::Tensor& value)> initializer_is_trainable;
  // Graph inputs baked in as constants with these values. A static-shape IR needs the operands that determine
  // shapes (Reshape's shape, Slice's starts, ...) as constants; test data feeds them as inputs.
  std::map<std::string, engine::Tensor> constant_inputs;
  // The values to take as the model's outputs instead of its own: any value names (a graph output of
  // several, or an intermediate value, which cuts the model there), or node names for their first output.
  // Only the nodes, initializers and graph inputs that they need are imported. A name that no value of the
  // model has is an InputError.
  std::vector<std::string> outputs;
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
  std::vector<std::string> initializer_names;  // every initializer of the file, in its order
  std::vector<std::string> folded_nodes;       // nodes evaluated at import: their outputs are constants
};

// A node the engine has no op for.
struct UnsupportedNode {
  std::string name;  // the node's name, or "#<index>" when it has none
  std::string op_type;
  std::string domain;
  int index = 0;  // in graph.node
};

// Parses serialized ModelProto bytes; `source` names them in errors. A truncated or corrupt file is an
// InputError at the byte offset where its protobuf encoding stops making sense, naming the graph element
// (graph.node[3] 'conv1', graph.initializer[0] 'fc.weight') that holds it. An Identity of a float initializer
// (PyTorch's merge of equal initializers) that merged parameters which only started equal becomes an
// initializer of its own, named by its output (see untie_merged_initializers), so that every reader (import,
// export with trained values) sees them apart; `untied`, when given, receives each such initializer's name
// and the one it copies.
void parse_onnx_model(std::string_view bytes, const std::string& source, onnx::ModelProto* model,
                      std::vector<std::pair<std::string, std::string>>* untied = nullptr);

OnnxImportResult import_onnx_file(const std::string& path, const OnnxImportOptions& options = {});
OnnxImportResult import_onnx_bytes(std::string_view bytes, const std::string& source,
                                   const OnnxImportOptions& options = {});
// `base_dir` is where external tensor data is looked up (the model file's folder).
OnnxImportResult import_onnx_model(const onnx::ModelProto& model, const std::string& source,
                                   const OnnxImportOptions& options = {}, const std::string& base_dir = {});

// A model file parsed once and imported as often as needed: one graph per batch size and mode.
class OnnxModelFile {
 public:
  explicit OnnxModelFile(const std::string& path);  // reads and parses; InputError naming the file
  // Parses bytes read elsewhere (a checkpoint's embedded model); `path` names them in errors and is where
  // external data would be looked for.
  OnnxModelFile(std::string_view bytes, const std::string& path);
  OnnxImportResult import(const OnnxImportOptions& options) const;
  const onnx::ModelProto& model() const { return *model_; }
  const std::string& path() const { return path_; }
  // The initializers read apart from the one their Identity copied (parse_onnx_model): (name, source).
  const std::vector<std::pair<std::string, std::string>>& untied() const { return untied_; }

 private:
  std::string path_;
  std::shared_ptr<const onnx::ModelProto> model_;
  std::vector<std::pair<std::string, std::string>> untied_;
};

// Every node whose op (in its domain) is not in engine::OpRegistry, in model order. Constant, Shape and Size
// nodes become constants in the importer itself and are never listed.
std::vector<UnsupportedNode> find_unsupported_nodes(const onnx::ModelProto& model);

// The ai.onnx ops that the importer takes without an engine op of that name: as constants (Shape, Range, the
// windows ...) or as other IR ops (Einsum, Resize, LRN ...). Sorted.
std::vector<std::string> onnx_ops_imported_as_others();

// Whether import writes node n as something other than the engine op of its name: constants (Constant,
// Shape, Size, ConstantOfShape) or other ops (Sum, Split, Resize, InstanceNormalization, ReduceL2, ...).
bool imported_as_other_ops(const onnx::NodeProto& n);

}  // namespace trainer::formats
