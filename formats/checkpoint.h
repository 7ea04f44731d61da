// Checkpoint files: every parameter and optimizer state tensor plus the metadata an exact resume needs, in
// the safetensors layout so that Python (numpy, safetensors) reads the weights, with a version and a
// checksum.
//
// Layout (all integers little-endian):
//   bytes [0, 8)        N, the header length (u64)
//   bytes [8, 8 + N)    the header: one JSON object, padded with spaces so that 8 + N is a multiple of 8:
//                         {"__metadata__": {"key": "value", ...},
//                          "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   bytes [8 + N, end)  the payload: each tensor's row-major bytes at [8 + N + begin, 8 + N + end).
//                       Tensors tile the payload with no gap or overlap; they are stored by decreasing
//                       element size, so each starts aligned to its element size.
// dtypes: F32 F64 BF16 F16 I32 I64 U8 BOOL (one byte per element).
//
// Metadata values are strings, as safetensors requires. The writer sets "format" = "trainer-checkpoint",
// "format_version" = "1", "producer" = "trainer <version>" and "checksum"; the caller supplies "spec" (the
// resolved TOML spec), "plan_signature", "epoch", "step" (decimal integers), "cursor", "rng" and any
// other keys.
//
// Checksum: "checksum" = "xxh64:<H>:<P>", H and P 16 lowercase hex digits of XXH64 with seed 0:
//   P = XXH64 of the payload, bytes [8 + N, end of file).
//   H = XXH64 of bytes [0, 8 + N) (the length, the header and its padding, P included) with the 16
//       digits of H itself read as sixteen '0' characters.
// So any changed byte is found: in the header by a JSON error or H (the metadata-only read checks it), in
// the payload by P (the full read checks it); a changed length by a JSON error, H, or the payload's size.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/ir/tensor.h"

namespace trainer::formats {

inline constexpr const char* kCheckpointFormat = "trainer-checkpoint";
inline constexpr int kCheckpointFormatVersion = 1;

// Metadata keys. The writer sets the first four; write_checkpoint requires the caller to give the rest.
namespace checkpoint_key {
inline constexpr const char* kFormat = "format";
inline constexpr const char* kFormatVersion = "format_version";
inline constexpr const char* kProducer = "producer";
inline constexpr const char* kChecksum = "checksum";
inline constexpr const char* kSpec = "spec";
inline constexpr const char* kPlanSignature = "plan_signature";
inline constexpr const char* kEpoch = "epoch";
inline constexpr const char* kStep = "step";
inline constexpr const char* kCursor = "cursor";
inline constexpr const char* kRng = "rng";
}  // namespace checkpoint_key

struct CheckpointTensor {
  std::string name;  // "dense/kernel", "dense/kernel/adam_m"
  engine::Tensor value;
};

struct Checkpoint {
  std::map<std::string, std::string> metadata;
  std::vector<CheckpointTensor> tensors;  // as read: in file order

  const engine::Tensor* find(const std::string& name) const;
};

// A tensor to write, whose bytes are pulled in chunks while the file is written, so that a large checkpoint
// never needs a second copy in memory (and device memory can be copied out chunk by chunk).
struct CheckpointTensorSource {
  std::string name;
  engine::DType dtype = engine::DType::f32;
  engine::Shape shape;
  // Fills `dst` with bytes [offset, offset + dst.size()) of the tensor's row-major little-endian data. It may
  // throw: the write is then abandoned and the destination left as it was.
  std::function<void(uint64_t offset, std::span<std::byte> dst)> read;
};

// A source reading a host tensor, which must outlive the write.
CheckpointTensorSource tensor_source(std::string name, const engine::Tensor& t);

// Writes atomically (formats/atomic_file.h): on any failure `path` keeps its old contents and no temporary
// file is left. Keys the writer sets are overwritten when present in `metadata`; the caller's keys listed
// above must be present (a missing one is an internal error). A tensor name that is empty, "__metadata__", a
// duplicate, or not valid UTF-8 is an InputError naming `path`; so is an unwritable directory.
void write_checkpoint(const std::string& path, const std::map<std::string, std::string>& metadata,
                      const std::vector<CheckpointTensorSource>& tensors);
void write_checkpoint(const std::string& path, const Checkpoint& checkpoint);

// A tensor's entry in the header.
struct CheckpointTensorInfo {
  std::string name;
  engine::DType dtype = engine::DType::f32;
  engine::Shape shape;
  uint64_t file_offset = 0;  // where its bytes start in the file
  uint64_t nbytes = 0;
};

struct CheckpointInfo {
  std::map<std::string, std::string> metadata;
  std::vector<CheckpointTensorInfo> tensors;  // in file order
  uint64_t file_bytes = 0;
};

// Reads and validates the header without reading tensor data: the length, the JSON, the format and version,
// the header checksum H, every tensor entry (dtype, shape, offsets tiling the payload exactly to the end of
// the file) and the required metadata keys. The payload checksum P is not checked (that needs every byte):
// use read_checkpoint for that. Every failure is an InputError whose `where` is the path (with ": byte
// <offset>" where a place is known) and whose hint says what to do.
CheckpointInfo read_checkpoint_metadata(const std::string& path);

// Everything read_checkpoint_metadata checks, then every tensor read and the payload checksum P verified.
Checkpoint read_checkpoint(const std::string& path);

// A metadata value, or an InputError naming the file and the key when it is missing.
const std::string& checkpoint_value(const std::map<std::string, std::string>& metadata,
                                    const std::string& key, const std::string& path);
// A metadata value that must be a non-negative decimal integer ("epoch", "step").
int64_t checkpoint_int(const std::map<std::string, std::string>& metadata, const std::string& key,
                       const std::string& path);

// safetensors dtype names.
std::string_view safetensors_dtype_name(engine::DType t);
bool dtype_from_safetensors_name(std::string_view name, engine::DType* out);

}  // namespace trainer::formats
