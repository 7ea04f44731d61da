// Opens the dataset a spec's [data] source names: resolves its files (globs, relative to the spec's folder),
// picks the reader (idx, cifar10, npy, npz, csv; text and images for folders of class folders) from `format`
// or the file names, and applies `limit`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "formats/data_bytes.h"
#include "formats/model_spec.h"

namespace trainer::formats {

inline constexpr const char* kDataFormats[] = {"idx", "cifar10", "npy", "npz", "csv", "text", "images"};

struct DatasetOptions {
  // Decompressed or parsed data past this size goes to an unlinked temporary file that is memory-mapped.
  int64_t spill_bytes = kDefaultSpillBytes;
  // The TextVectorization of "text" sources, its vocabulary given or adapted (data_text.h).
  const TextSpec* text = nullptr;
  // [data.sequences], its maxlen resolved (the model input's length when the spec leaves it out): how the
  // first input's arrays of Python lists of token ids become rows (read_npy).
  const SequenceSpec* sequences = nullptr;
  // The model input's [height, width, channels], which "images" sources are decoded and resized to.
  std::vector<int64_t> image_shape;
  // Text and image sources without class_names take these classes (the training source's) when given.
  std::vector<std::string> training_classes;
  bool training_classes_named = false;  // the training source listed them (class_names): others are left out
  // Text and image sources label with one-hot rows, one per class (Keras's label_mode "categorical", for
  // categorical losses), instead of class ids.
  bool one_hot_labels = false;
};

// Missing files, unreadable or malformed data, and x/y files that disagree are InputErrors: at the source's
// position in the spec when the spec is at fault, else at the file and byte offset (or line) of the problem.
std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const DatasetOptions& options = {});

// The data of a model whose inputs have these names, in order. A model of one input reads `src` as above
// (or x = { NAME = ... }). A model of several gets a dataset with Dataset::more_inputs(), each input's
// samples read from its own .npy files (x = { NAME = "FILE.npy", ... }) or from the array of the .npz file
// named after it (or after x_key = { NAME = "ARRAY", ... }); the labels come from y or y_key.
std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const std::vector<std::string>& inputs,
                                                          const DatasetOptions& options = {});

// The data of a model whose outputs have these names (and inputs, as above). The first output's labels are
// the dataset's labels; a model of several outputs reads them from .npy files (y = { NAME = "FILE.npy",
// ... }) or from the .npz arrays named after the outputs (or after y_key = { NAME = "ARRAY", ... }), and the
// further outputs' labels follow the model's further inputs in Dataset::more_inputs(), one dataset per
// output whose samples are the labels.
std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const std::vector<std::string>& inputs,
                                                          const std::vector<std::string>& outputs,
                                                          const DatasetOptions& options = {});

// Whether a source gives sample weights (sample_weight or sample_weight_key), and whether it gives them by
// output name (their tables).
bool has_sample_weights(const DataSource& src);
bool has_output_sample_weights(const DataSource& src);
// The dataset `data` (opened from `src`) with its sample weights as its last further input: one f32 per
// sample (or, for an output of steps, Keras's temporal weights: one per step), from src's sample_weight
// files or sample_weight_key array, or 1 for every sample (weights of `unit_shape` per sample) when it names
// none. Weights must be finite and not negative, one record per sample (after `limit`): an InputError names
// the file and sample otherwise.
std::shared_ptr<const engine::data::Dataset> with_sample_weights(
    std::shared_ptr<const engine::data::Dataset> data, const DataSource& src, const std::string& base_dir,
    const DatasetOptions& options = {}, const std::vector<int64_t>& unit_shape = {});

// A model of several outputs whose losses are weighed apart: `data` with one weights dataset per output (in
// `outputs`' order) as its last further inputs: the output's own weights from src's tables, src's one set
// of weights for every output, or 1 for every sample.
std::shared_ptr<const engine::data::Dataset> with_output_sample_weights(
    std::shared_ptr<const engine::data::Dataset> data, const DataSource& src, const std::string& base_dir,
    const std::vector<std::string>& outputs, const DatasetOptions& options = {},
    const std::vector<std::vector<int64_t>>& unit_shapes = {});

// The files that `patterns` name, each pattern's matches in natural order ("data_batch_2" before
// "data_batch_10"). A file that does not exist or a glob that matches nothing is an InputError at `pos`.
std::vector<std::string> resolve_data_files(const std::vector<std::string>& patterns,
                                            const std::string& base_dir, const SourcePos& pos);

// Little-endian integers of file formats (NPY and zip headers, BMP), read byte by byte.
inline uint16_t le16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
inline uint32_t le32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint64_t le64(const uint8_t* p) {
  return uint64_t{le32(p)} | (uint64_t{le32(p + 4)} << 32);
}

// Orders names as people count: runs of digits compare by value ("data_batch_2" before "data_batch_10").
bool natural_less(const std::string& a, const std::string& b);

// Whether a data path is a glob (holds *, ? or [).
bool has_glob(const std::string& s);
// Where an error about a source is: its place in the spec, or "data" for a source made on the command line.
std::string where_in_spec(const SourcePos& pos);
// A regular file (following links).
bool is_regular_file(const std::string& path);
// Whether `name` ends in `suffix`, letters compared without case (".JPG" ends in ".jpg").
bool ends_with_any_case(const std::string& name, std::string_view suffix);

// The format a file name implies ("train-images-idx3-ubyte.gz" -> "idx"), or "" when it implies none.
std::string data_format_from_name(const std::string& path);

}  // namespace trainer::formats
