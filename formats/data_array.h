// The dataset every reader produces: a column of samples and a column of labels, each a run of fixed-size
// records in one or more byte ranges (mapped files, decompressed or parsed data), read by memcpy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "formats/data_bytes.h"

namespace trainer::formats {

// Records [0, count) of one file: record i starts at offset + i * stride of bytes.
struct Segment {
  std::shared_ptr<const Bytes> bytes;
  uint64_t offset = 0;
  uint64_t stride = 0;
  int64_t count = 0;
  std::string file;              // names the file in messages
  std::vector<int64_t> line_of;  // text formats: the line of each record (empty otherwise)
};

// Records of one dtype and shape, concatenated over segments (data_batch_1.bin, data_batch_2.bin, ...).
class Column {
 public:
  Column() = default;
  Column(engine::DType dtype, engine::Shape shape) : dtype_(dtype), shape_(std::move(shape)) {}

  engine::DType dtype() const { return dtype_; }
  const engine::Shape& shape() const { return shape_; }
  size_t record_bytes() const;  // the copied bytes of one record
  int64_t size() const { return starts_.empty() ? 0 : starts_.back(); }
  const std::vector<Segment>& segments() const { return segments_; }

  // Appends a segment; its records must hold this column's dtype and shape.
  void add(Segment s);
  // Appends another column's segments; a dtype or shape that differs is an InputError naming both files.
  void append(Column other);

  void read(int64_t i, void* out) const;
  // The segment that holds record i and the index of the record in it.
  const Segment& find(int64_t i, int64_t* index_in_segment) const;

 private:
  engine::DType dtype_ = engine::DType::u8;
  engine::Shape shape_;
  std::vector<Segment> segments_;
  std::vector<int64_t> starts_;  // cumulative counts: segment k holds [starts_[k-1], starts_[k])
};

class ArrayDataset final : public engine::data::Dataset {
 public:
  // x and y must have the same number of records (checked by the caller, which can name the files).
  ArrayDataset(Column x, Column y, engine::data::Layout layout, std::string name);
  int64_t size() const override { return x_.size(); }
  const engine::Shape& sample_shape() const override { return x_.shape(); }
  engine::DType sample_dtype() const override { return x_.dtype(); }
  engine::data::Layout layout() const override { return layout_; }
  const engine::Shape& label_shape() const override { return y_.shape(); }
  engine::DType label_dtype() const override { return y_.dtype(); }
  void read_sample(int64_t i, void* out) const override { x_.read(i, out); }
  void read_label(int64_t i, void* out) const override { y_.read(i, out); }
  std::string describe() const override { return name_; }
  std::string locate(int64_t i) const override;

 private:
  Column x_, y_;
  engine::data::Layout layout_;
  std::string name_;
};

// "did you mean 'label'?" for the candidate nearest to `word` by edit distance, or "" when none is close.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace trainer::formats
