// Predictions written as they are computed: CSV text or one NPY array on a file descriptor (standard output),
// through a fixed buffer. A reader that goes away (a closed pipe) ends the writing quietly.
#pragma once

#include <cstdint>
#include <string>

#include "engine/ir/dtype.h"

namespace trainer::formats {

enum class RowFormat { csv, npy };

// Rows of `columns` values: i64 (class ids) or f32 (output rows). columns == 0 means one value per row
// written as a 1-D array (NPY shape (rows,)); otherwise NPY shape (rows, columns). CSV writes one line per
// row, values separated by commas, floats in their shortest form that reads back exactly.
//
// SIGPIPE must be ignored by the caller for `closed()` to see a closed pipe (EPIPE) instead of the process
// being killed. Any other write error is a RuntimeError naming `name`.
class RowWriter {
 public:
  // NPY needs the row count up front (rows >= 0); CSV ignores it.
  RowWriter(int fd, std::string name, RowFormat format, engine::DType dtype, int64_t columns, int64_t rows);
  ~RowWriter();
  RowWriter(const RowWriter&) = delete;
  RowWriter& operator=(const RowWriter&) = delete;

  // Appends n rows of values (n * max(columns, 1) values of the writer's dtype). Returns false once the
  // reader has closed the pipe: nothing more can be written, and the caller should stop.
  bool write(const void* values, int64_t n);
  // Flushes. For NPY, checks that exactly `rows` rows were written (an InternalError otherwise: the header
  // promised them). Returns false when the reader has closed the pipe.
  bool finish();
  bool closed() const { return closed_; }
  int64_t rows_written() const { return rows_written_; }

 private:
  bool flush();

  int fd_;
  std::string name_;
  RowFormat format_;
  engine::DType dtype_;
  int64_t columns_, rows_, rows_written_ = 0;
  std::string buf_;
  bool closed_ = false;
};

// The NPY (version 1.0) header of a C-ordered little-endian array, padded so the data starts 64-byte aligned.
std::string npy_header(engine::DType dtype, const std::string& shape_tuple);

}  // namespace trainer::formats
