// ONNX model export: an inference graph (models::build_model with training = false, or an imported model)
// becomes a ModelProto with a symbolic batch dimension, its parameters as initializers under their own names,
// and private fused ops lowered to standard ONNX ops.
#pragma once

#include <onnx/onnx_pb.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/ir/graph.h"
#include "engine/util/error.h"

namespace trainer::formats {

// Opsets of the default ONNX domain that export_onnx writes.
inline constexpr int kMinOnnxExportOpset = 13;
inline constexpr int kMaxOnnxExportOpset = 21;
inline constexpr int kDefaultOnnxExportOpset = 17;

struct OnnxExportOptions {
  int opset = kDefaultOnnxExportOpset;
  std::string producer_version;  // the ModelProto's producer_version ("0.1.0"); producer_name is "trainer"
  std::string graph_name = "trainer";
  std::string doc_string;
  // dim_param of the leading (batch) dimension of every graph input and output.
  std::string batch_dim_name = "batch";
  // Rank-4 inputs (the IR's NCHW images) are taken as NHWC, Keras's layout that the spec documents: a
  // Transpose at the graph input turns them into the NCHW the graph computes in. One flag per exported
  // input; inputs past the end of the list are taken as they are.
  std::vector<bool> channels_last_inputs;
  // Names of the graph inputs and outputs, one per exported value; empty: the values' own names (the layer
  // library names its input "input"; outputs are named after the nodes that produce them). A value elsewhere
  // in the graph that already holds a requested name is renamed (a "_1" suffix).
  std::vector<std::string> input_names;
  std::vector<std::string> output_names;
  std::map<std::string, std::string> metadata;  // metadata_props
  // Fixed float values (constants, frozen parameters and state, and state that no BatchNormalization keeps as
  // running statistics) go out as Constant nodes rather than initializers, so that an importer that trains
  // float initializers leaves them alone; except those named here (an imported model's own initializers,
  // frozen weights among them, which keep their form).
  bool fixed_as_constant_nodes = false;
  std::set<std::string> keep_as_initializers;
  // Runs check_onnx on the result (a failure is an InternalError: the exporter wrote a broken model).
  bool check = true;
};

// The opset's ir_version: the lowest one that defines it (7 for opset 13-14, 8 for 15-18, 9 for 19-20, 10 for
// 21).
int64_t onnx_ir_version_for_opset(int opset);

// Exports the part of `graph` that computes `outputs` from `inputs` (every input's dimension 0 is the batch).
//
// - Nodes keep their names and value names are kept (except the renames asked for above); parameters, state
//   (BatchNorm's moving statistics) and constants become initializers named as in the graph
//   ("dense/kernel"). Intermediate values carry no value_info.
// - ai.onnx ops are written 1:1, with the forms of the target opset: attributes introduced after it are
//   dropped when they hold their neutral value (else an error), `axes` moves between attribute and input as
//   the opset wants, Slice's attribute form becomes inputs, and RNN `activations` (one comma-separated
//   string in the IR) becomes a STRINGS attribute. Gelu below opset 20 becomes its erf (or tanh) formula.
//   LSTM, GRU and RNN with layout = 1 (batch-major) are written with layout 0 between Transposes, the form
//   onnxruntime's CPU kernels take.
// - Private ops: FusedGemm becomes Gemm (rank-2 A) or MatMul + Add, then Relu or Gelu; MatMulTransposed
//   becomes Gemm (rank-2 operands) or Transpose + MatMul (+ Mul by alpha). Any other private op is an error.
// - The batch dimension of inputs and outputs is symbolic. The graph is re-inferred at another batch size
//   to prove that no constant depends on the batch: a node whose shapes then fail to check, or an output that
//   does not follow the batch, is an error naming it.
//
// Errors (InputError, `where` = the node or value): an op or attribute the opset cannot express, a private
// op, a batch-dependent node, an input that the outputs need but that is not among `inputs`, an opset outside
// [kMinOnnxExportOpset, kMaxOnnxExportOpset].
onnx::ModelProto export_onnx(const engine::Graph& inference_graph, const std::vector<engine::ValueId>& inputs,
                             const std::vector<engine::ValueId>& outputs,
                             const OnnxExportOptions& options = {});

// export_onnx's error for a graph whose shapes hold the batch size: a node that fails to check at another
// batch size, or an output that does not follow it. An imported model can still go back as its own graph
// (with_trained_values).
class BatchDependentError : public InputError {
 public:
  using InputError::InputError;
};

// An imported ONNX model given back with trained values: `original` as its file had it, each initializer
// that `values` names replaced by the value, in inference form (BatchNormalization without training_mode
// and its extra outputs, Dropout without its training_mode input), with options.metadata added to its
// metadata_props and options.producer_version as producer ("trainer"), and checked as export_onnx's result
// is when options.check. A value whose dtype or shape differs from its initializer's is an InputError.
// *replaced (when given) counts the initializers replaced.
onnx::ModelProto with_trained_values(const onnx::ModelProto& original,
                                     const std::vector<std::pair<std::string, engine::Tensor>>& values,
                                     const OnnxExportOptions& options, int64_t* replaced = nullptr);

// libonnx's checker with full_check (the checker, then strict shape inference with type checks). Throws
// InternalError with the checker's message. Returns false, having checked nothing, when the model's opset or
// ir_version is newer than the linked libonnx knows (Python's onnx.checker covers those in the tests).
bool check_onnx(const onnx::ModelProto& model);

// Writes the model crash-safely (formats/atomic_file.h: a temporary file beside `path`, fsync, rename, fsync
// of the directory). A missing or unwritable folder, or a model over protobuf's 2 GiB limit, is an InputError
// naming `path`; a failing write is a RuntimeError. On any failure `path` is untouched and no temporary file
// is left.
void save_onnx(const onnx::ModelProto& model, const std::string& path);

}  // namespace trainer::formats
