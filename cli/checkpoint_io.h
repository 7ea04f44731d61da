// Checkpoints of `trainer fit`: a TrainingState and the resolved spec as a checkpoint file, and back. The
// file is formats/checkpoint.h's; this file decides what goes in it: metadata keys, the state as JSON, tensor
// names.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/train/fit.h"
#include "formats/model_spec.h"

namespace trainer::cli {

// Metadata of ours, besides formats/checkpoint.h's keys.
inline constexpr const char* kSpecPathKey =
    "spec_path";  // where the spec was read: relative data paths resolve there
inline constexpr const char* kStateKey = "state";  // the TrainingState's numbers and history, as JSON
// The factor --scale-lr applied to the spec's learning rate ("4" for linear on 4 replicas); absent means 1.
inline constexpr const char* kLrScaleKey = "lr_scale";
inline constexpr const char* kBestPrefix = "@best/";  // tensors of early stopping's best weights
// An ONNX run's model file, embedded as a u8 tensor so that the checkpoint needs no other file to resume,
// export, predict or evaluate.
inline constexpr const char* kOnnxModelTensor = "@model.onnx";

void save_training_checkpoint(const std::string& path, const formats::ModelSpec& spec,
                              uint64_t plan_signature, const engine::TrainingState& state,
                              double lr_scale = 1);

struct LoadedCheckpoint {
  std::string spec_text;  // the resolved spec, TOML
  std::string spec_path;
  std::string path;  // the checkpoint file, as given
  uint64_t plan_signature = 0;
  double lr_scale = 1;  // what the run multiplied the spec's learning rate by (--scale-lr)
  engine::TrainingState state;
  std::shared_ptr<const std::string> onnx_bytes;  // the embedded ONNX model, for an ONNX run

  // The checkpoint's spec, parsed, with its embedded ONNX model attached.
  formats::ModelSpec spec(const std::vector<std::string>& overrides = {}) const;
};
// Reads and verifies (checksum included) a checkpoint written by save_training_checkpoint.
LoadedCheckpoint load_training_checkpoint(const std::string& path);
// Whether a file given as a checkpoint is an ONNX model instead: not a checkpoint by its first bytes, and
// named .onnx or starting as a ModelProto does (its ir_version field).
bool looks_like_onnx(const std::string& path);
// What a file that does not start as a checkpoint does (its header's length, then '{') is, by its first
// bytes ("an NPY array", "a gzip file", ...): "" when nothing tells; nullopt for a checkpoint's start, or a
// file that reads nothing (its reader names the problem).
std::optional<std::string> other_file_kind(const std::string& path);
// Whether a file starts as a checkpoint does: its header's length (below 2^40), then '{'.
bool starts_as_checkpoint(const std::string& path);
// The bytes of a path that is no regular file (a pipe, `<(...)`, /dev/stdin), which can be read only once:
// read whole the first time, kept for every later look (the sniffing of its first bytes too); null for a
// regular file, a directory or a path that does not exist. More than 16 MiB is an InputError.
const std::string* spooled(const std::string& path);
// Whether a file given as a trained model is a model spec (TOML) instead: named .toml, or text that sets
// format_version. `command` ("predict", "fit --resume", ...) refuses it with a hint on how a spec becomes a
// trained model.
bool looks_like_spec(const std::string& path);
void refuse_spec_as_model(const std::string& path, const std::string& command);

// The first line where two specs' TOML texts differ, as "line N: 'a' vs 'b'", or "" when they are equal.
std::string first_difference(const std::string& a, const std::string& b);

}  // namespace trainer::cli
