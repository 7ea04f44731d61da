// The row writer behind `trainer predict`'s stdout: formatted into one reused buffer, written with write(2)
// so a closed pipe shows up as EPIPE at the call that hit it.
#include "formats/stream_output.h"

#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <iterator>

#include "engine/util/error.h"

namespace trainer::formats {

namespace {
constexpr size_t kFlushBytes = size_t{1} << 16;
}

std::string npy_header(engine::DType dtype, const std::string& shape_tuple) {
  const char* descr = dtype == engine::DType::i64   ? "<i8"
                      : dtype == engine::DType::f32 ? "<f4"
                      : dtype == engine::DType::u8  ? "|u1"
                                                    : nullptr;
  TRAINER_ASSERT(descr != nullptr, "NPY output of {}", engine::dtype_name(dtype));
  std::string dict =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape_tuple);
  // magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::string h("\x93NUMPY\x01\x00", 8);
  h += static_cast<char>(dict.size() & 0xff);
  h += static_cast<char>(dict.size() >> 8);
  return h + dict;
}

RowWriter::RowWriter(int fd, std::string name, RowFormat format, engine::DType dtype, int64_t columns,
                     int64_t rows)
    : fd_(fd), name_(std::move(name)), format_(format), dtype_(dtype), columns_(columns), rows_(rows) {
  TRAINER_ASSERT(dtype == engine::DType::i64 || dtype == engine::DType::f32, "rows of {}",
                 engine::dtype_name(dtype));
  buf_.reserve(2 * kFlushBytes);
  if (format_ == RowFormat::npy) {
    TRAINER_ASSERT(rows >= 0, "NPY output needs the row count");
    buf_ =
        npy_header(dtype, columns == 0 ? fmt::format("({},)", rows) : fmt::format("({}, {})", rows, columns));
  }
}

// An error ends the output at the last complete rows: CSV's are written (NPY's header promised more rows, so
// the array is left short, as the error says).
RowWriter::~RowWriter() {
  if (format_ != RowFormat::csv || closed_) return;
  try {
    flush();
  } catch (const std::exception&) {  // the error being reported is the one that matters
  }
}

bool RowWriter::flush() {
  size_t done = 0;
  while (done < buf_.size() && !closed_) {
    ssize_t k = ::write(fd_, buf_.data() + done, buf_.size() - done);
    if (k >= 0) {
      done += static_cast<size_t>(k);
    } else if (errno == EPIPE) {
      closed_ = true;
    } else if (errno != EINTR) {
      const int err = errno;
      throw RuntimeError(fmt::format("writing to {} failed: {}", name_, std::strerror(err)),
                         err == ENOSPC || err == EDQUOT
                             ? "free space where the output goes, or send it elsewhere"
                         : err == EBADF ? "the output is closed: give the command somewhere to write"
                                        : "check where the output goes");
    }
  }
  buf_.clear();
  return !closed_;
}

bool RowWriter::write(const void* values, int64_t n) {
  if (closed_) return false;
  const int64_t per_row = std::max<int64_t>(columns_, 1);
  const size_t bytes = static_cast<size_t>(n * per_row) * engine::dtype_bytes(dtype_);
  if (format_ == RowFormat::npy) {
    buf_.append(static_cast<const char*>(values), bytes);
    if (buf_.size() >= kFlushBytes && !flush()) return false;
  } else {
    auto out = std::back_inserter(buf_);
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < per_row; ++c) {
        if (c) buf_ += ',';
        if (dtype_ == engine::DType::i64)
          fmt::format_to(out, "{}", static_cast<const int64_t*>(values)[r * per_row + c]);
        else if (const float v = static_cast<const float*>(values)[r * per_row + c]; std::isnan(v))
          buf_ += "nan";  // whatever its sign bit (numpy and pandas read "nan", not "-nan")
        else
          fmt::format_to(out, "{}", v);
      }
      buf_ += '\n';
      if (buf_.size() >= kFlushBytes && !flush()) return false;
    }
  }
  rows_written_ += n;
  // Each batch's rows go out as they are computed, so a reader sees them while later input is read.
  return flush();
}

bool RowWriter::finish() {
  if (!flush()) return false;
  if (format_ == RowFormat::npy)
    TRAINER_ASSERT(rows_written_ == rows_, "the NPY header promised {} rows, {} were written", rows_,
                   rows_written_);
  return true;
}

}  // namespace trainer::formats
