// Samples streamed from a file or standard input, a batch at a time in constant memory: NPY, IDX or CSV (any
// of them gzip-compressed), told apart by their first bytes, and CIFAR-10 binary batches, told by their name.
// `trainer predict` reads its input through this.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/ir/dtype.h"
#include "formats/data_bytes.h"
#include "formats/data_text.h"

namespace trainer::formats {

enum class StreamFormat { npy, idx, csv, cifar10, text };
const char* stream_format_name(StreamFormat f);

// Reads samples in order. Construction reads the header (NPY, IDX) or the first row (CSV), so the sample
// shape is known before any sample is used; nothing is ever seeked, so pipes work.
//
// - NPY (magic "\x93NUMPY", versions 1-3): little-endian u1, b1, i4, i8, f4 or f8 in C order; the first
//   dimension counts samples.
// - IDX (magic 00 00 <type> <rank>): u8, i8, i16, i32, f32 or f64, big-endian; the first dimension counts
//   samples. i8 and i16 widen to i32.
// - CSV (anything else): one sample per line of comma-separated numbers, a 1-D sample of one value per
// column.
//   A first line that is not all numbers is a header and is skipped; blank lines are skipped; "\r\n" line
//   ends are accepted. Values are read as f64. The sample count is unknown until the end.
// - CIFAR-10 (a file whose name ends in .bin or .bin.gz and that is not NPY): records of a label byte, which
//   is skipped, and a u8 [3, 32, 32] image. count() is the plain file's size / 3073 (a size that is not a
//   multiple is an error), or -1 when compressed; a record cut short is an error.
// - Text (only when the reader is made for it): each line that is not blank is one sample's text.
// - An empty input (or blank lines only) holds no samples: CSV, count() 0, sample_shape() empty.
// gzip data (magic 1f 8b, one member or several concatenated) is decompressed on the fly. Errors (unreadable
// file, bad header, truncated data, a ragged row or a cell that is not a number) are InputErrors naming the
// input and the byte offset or line.
class SampleReader {
 public:
  // `path` "-" is standard input.
  explicit SampleReader(const std::string& path);
  // The array `key` of an .npz archive (a member `key`.npy, stored or deflated, inflated in memory or, when
  // large, in a temporary file). A missing array is an InputError listing the archive's arrays.
  SampleReader(const std::string& npz_path, const std::string& key);
  // The bytes of an NPY array made in memory (images decoded for trainer predict), named `name`.
  SampleReader(std::shared_ptr<const Bytes> npy, std::string name);
  // Text, one sample per line that is not blank (gzip-compressed or not), turned into token ids by
  // `vectorizer` (a checkpoint trained on text data): i32 samples of [vectorizer.length()]. An NPY or IDX
  // file holds ids already, and is read as the constructor above reads it (a pipe is always text).
  SampleReader(const std::string& path, std::shared_ptr<const TextVectorizer> vectorizer);
  ~SampleReader();
  SampleReader(const SampleReader&) = delete;
  SampleReader& operator=(const SampleReader&) = delete;

  StreamFormat format() const;
  bool compressed() const;
  const std::string& name() const;                   // the file name, or "stdin"
  const std::vector<int64_t>& sample_shape() const;  // CSV: [columns]
  engine::DType dtype() const;                       // of the values read() returns: u8, i32, i64, f32 or f64
  size_t sample_bytes() const;
  // Samples in all (NPY, IDX, CIFAR-10 files, an empty input), or -1 when unknown (CSV, gzip CIFAR-10).
  int64_t count() const;

  // Reads the next samples, up to `max_samples`, into `out` (max_samples * sample_bytes(), host byte order).
  // Returns how many were read: fewer only at the end of the input, 0 after it. With `partial`, it returns
  // early, with at least one sample, when a pipe or terminal stays silent for 50 ms before the next sample is
  // complete (waiting() then says so), so that a slow writer's samples are used as they arrive.
  int64_t read(int64_t max_samples, void* out, bool partial = false);
  // Whether the last read stopped early because the input had no further sample ready (it has not ended).
  bool waiting() const;
  int64_t samples_read() const;

 private:
  void open_path(const std::string& path);  // opens a file, or standard input for "-"
  void open();  // reads the header or first row of the source the constructor set up
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Turns stored samples into a model's input, sample by sample, with the batch loader's arithmetic
// (engine/data/loader.cpp): floating-point inputs get x * scale / std - mean / std per channel, computed in
// double and rounded once; HWC images become CHW when format.to_chw; integer inputs (token ids) must be whole
// numbers within format.num_tokens. The channel of mean and std is the last dimension of `sample_shape` (HWC
// images, or one value per CSV column).
class SampleConverter {
 public:
  // `sample_shape` is the model's per-sample input shape as the samples store it ([H, W, C] for to_chw).
  // `source` names the input in errors about a sample.
  SampleConverter(const engine::data::BatchFormat& format, const std::vector<int64_t>& sample_shape,
                  engine::DType stored, std::string source);
  // Converts n samples; `first` is the index of the first one in the input (for messages).
  void convert(const void* stored, int64_t n, int64_t first, void* out) const;
  size_t out_sample_bytes() const;

 private:
  engine::data::BatchFormat format_;
  engine::DType stored_;
  std::string source_;
  int64_t elems_ = 0, channels_ = 1, positions_ = 0;
  bool transpose_ = false;       // HWC to CHW
  bool channel_first_ = false;   // per-channel constants on values in CHW order
  bool transpose_back_ = false;  // CHW to HWC
  std::vector<double> alpha_, beta_;
};

}  // namespace trainer::formats
