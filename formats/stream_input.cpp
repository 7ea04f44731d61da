// The streaming sample reader (NPY, IDX, CSV; gzip inflated on the fly) and the per-sample conversion to a
// model's input.
#include "formats/stream_input.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>

#include "engine/ir/shape.h"
#include "engine/util/error.h"
#include "formats/data_array.h"
#include "formats/data_bytes.h"
#include "formats/data_cifar.h"
#include "formats/data_npy.h"

namespace trainer::formats {

using engine::DType;

const char* stream_format_name(StreamFormat f) {
  switch (f) {
    case StreamFormat::npy:
      return "NPY";
    case StreamFormat::idx:
      return "IDX";
    case StreamFormat::csv:
      return "CSV";
    case StreamFormat::cifar10:
      return "CIFAR-10";
    case StreamFormat::text:
      return "text";
  }
  return "?";
}

namespace {

static_assert(std::endian::native == std::endian::little, "NPY data is read in place as little-endian");

constexpr size_t kBufferBytes = size_t{1} << 16;
// How long a pipe may stay silent before the samples already read are handed out (read(..., partial)).
constexpr int kQuietMs = 50;

// IDX element types: the code in byte 2 of the magic number.
struct IdxType {
  uint8_t code;
  size_t bytes;
  DType out;  // what read() returns (i8 and i16 widen to i32)
};
constexpr IdxType kIdxTypes[] = {{0x08, 1, DType::u8},  {0x09, 1, DType::i32}, {0x0B, 2, DType::i32},
                                 {0x0C, 4, DType::i32}, {0x0D, 4, DType::f32}, {0x0E, 8, DType::f64}};

const IdxType* idx_type(uint8_t code) {
  for (const IdxType& t : kIdxTypes)
    if (t.code == code) return &t;
  return nullptr;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

struct SampleReader::Impl {
  std::string name;
  int fd = -1;
  // Or an array of an .npz archive: its NPY bytes in memory, [mem_pos, mem_end) still unread.
  std::shared_ptr<const Bytes> mem;
  uint64_t mem_pos = 0, mem_end = 0;
  StreamFormat format = StreamFormat::csv;
  bool compressed = false;  // gzip: `raw` holds its compressed bytes, zs.next_in the unread ones
  z_stream zs{};
  bool zs_open = false, member_done = false, raw_eof = false;
  std::vector<uint8_t> raw;
  std::vector<int64_t> shape;
  DType dtype = DType::f64;
  size_t sample_bytes = 0;
  int64_t count = -1;
  int64_t read_samples = 0;

  // Decompressed bytes: buf[pos, end) are read but not consumed; `offset` counts the bytes consumed.
  std::vector<uint8_t> buf = std::vector<uint8_t>(kBufferBytes);
  size_t pos = 0, end = 0;
  bool eof = false;
  uint64_t offset = 0;
  bool waiting = false;      // the last read stopped because no further sample had arrived
  bool end_checked = false;  // a counted input (NPY, IDX) was seen to end after its last sample

  // IDX: the stored element type, and scratch for the big-endian bytes of a batch (CIFAR-10: its records).
  const IdxType* idx = nullptr;
  std::vector<uint8_t> scratch;
  // CIFAR-10: the input's name ends in .bin (or .bin.gz); the file's size when it is a regular file.
  bool cifar = false;
  int64_t file_bytes = -1;

  // CSV: the line being parsed, its number, and the first data row (read to learn the column count).
  std::string line;
  int64_t line_no = 0;
  std::vector<std::string_view> cells;
  std::vector<size_t> cell_cols;
  std::vector<double> first_row;
  bool have_first_row = false;
  // Text: each line's words as token ids.
  std::shared_ptr<const TextVectorizer> vectorizer;

  ~Impl() {
    if (zs_open) inflateEnd(&zs);
    if (fd >= 0) ::close(fd);
  }

  std::string at() const { return at_byte(name, offset); }

  // Whether the descriptor has bytes (or its end, or an error) to read now, waiting up to `ms` for them.
  bool readable(int ms) const {
    pollfd p{fd, POLLIN, 0};
    int r;
    while ((r = ::poll(&p, 1, ms)) < 0 && errno == EINTR) {
    }
    return r != 0;
  }

  // One read(2) of up to n bytes; 0 at the end of the input.
  size_t read_some(uint8_t* dst, size_t n) {
    for (;;) {
      const ssize_t got = ::read(fd, dst, n);
      if (got >= 0) return static_cast<size_t>(got);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // a non-blocking descriptor: wait for it
        readable(-1);
        continue;
      }
      throw InputError(name, fmt::format("cannot read: {}", std::strerror(errno)), "");
    }
  }

  // Reads the first bytes and tells gzip (magic 1f 8b) from plain data, which goes straight to buf.
  void open_fd() {
    raw.resize(kBufferBytes);
    size_t have = 0;
    while (have < 2) {
      const size_t got = read_some(raw.data() + have, raw.size() - have);
      if (got == 0) break;
      have += got;
    }
    if (have >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
      compressed = true;
      if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw std::bad_alloc();
      zs_open = true;
      zs.next_in = raw.data();
      zs.avail_in = static_cast<uInt>(have);
      return;
    }
    raw_eof = have == 0;
    std::memcpy(buf.data(), raw.data(), have);
    end = have;
    eof = have == 0;
    raw.clear();
    raw.shrink_to_fit();
  }

  [[noreturn]] void gz_fail(const char* msg) {
    throw InputError(at(), fmt::format("the gzip data is damaged: {}", msg ? msg : "unknown error"),
                     "the file is truncated or corrupt: compress it again");
  }

  // Refills buf after moving the unconsumed bytes to its front; false when nothing was added: at the end of
  // the input, or, when `wait` is false, when no byte arrives within kQuietMs.
  bool fill(bool wait = true) {
    if (eof) return false;
    if (pos > 0) {
      std::memmove(buf.data(), buf.data() + pos, end - pos);
      end -= pos;
      pos = 0;
    }
    if (end == buf.size()) return false;
    if (mem) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size() - end, mem_end - mem_pos));
      std::memcpy(buf.data() + end, mem->data() + mem_pos, n);
      mem_pos += n;
      end += n;
      eof = n == 0;
      return n > 0;
    }
    if (!compressed) {
      if (!wait && !readable(kQuietMs)) return false;
      const size_t n = read_some(buf.data() + end, buf.size() - end);
      end += n;
      eof = n == 0;
      return n > 0;
    }
    for (;;) {
      if (zs.avail_in == 0) {
        if (raw_eof) {
          if (!member_done) gz_fail("the gzip stream ends early");
          eof = true;
          return false;
        }
        if (!wait && !readable(kQuietMs)) return false;
        const size_t n = read_some(raw.data(), raw.size());
        raw_eof = n == 0;
        zs.next_in = raw.data();
        zs.avail_in = static_cast<uInt>(n);
        continue;
      }
      if (member_done) {
        // Another gzip member follows (concatenated files), or the end: zero bytes may pad it (tape blocks),
        // and any other byte is not the input's data (a damaged file, or another appended to it).
        if (zs.avail_in == 1 && !raw_eof) {
          raw[0] = *zs.next_in;
          const size_t n = read_some(raw.data() + 1, raw.size() - 1);
          raw_eof = n == 0;
          zs.next_in = raw.data();
          zs.avail_in = static_cast<uInt>(n + 1);
        }
        if (zs.avail_in < 2 || zs.next_in[0] != 0x1f || zs.next_in[1] != 0x8b) {
          for (;;) {
            for (uInt k = 0; k < zs.avail_in; ++k)
              if (zs.next_in[k] != 0)
                throw InputError(
                    name, "bytes that are not gzip data follow the gzip stream",
                    "the file is damaged, or another file was appended to it: compress it again");
            if (raw_eof) break;
            const size_t n = read_some(raw.data(), raw.size());
            raw_eof = n == 0;
            zs.next_in = raw.data();
            zs.avail_in = static_cast<uInt>(n);
          }
          zs.avail_in = 0;
          eof = true;
          return false;
        }
        inflateReset(&zs);
        member_done = false;
      }
      zs.next_out = buf.data() + end;
      zs.avail_out = static_cast<uInt>(buf.size() - end);
      const int r = inflate(&zs, Z_NO_FLUSH);
      const size_t made = buf.size() - end - zs.avail_out;
      end += made;
      if (r == Z_STREAM_END)
        member_done = true;
      else if (r != Z_OK && r != Z_BUF_ERROR)
        gz_fail(zs.msg);
      if (made > 0) return true;
    }
  }

  // Bytes one stored sample takes (CSV: unknown, a line).
  size_t stored_sample_bytes() const {
    if (cifar) return formats::kCifar10RecordBytes;
    if (!idx) return sample_bytes;
    return sample_bytes / engine::dtype_bytes(dtype) * idx->bytes;
  }

  // Whether the next sample can be read without waiting on the input (or the input has ended): false when a
  // pipe stays silent for kQuietMs before the sample is complete in buf.
  bool sample_ready() {
    if (mem) return true;
    // CSV: whether a complete line that is not blank has arrived (blank lines are skipped, and the sample
    // after them may not have). Each byte is looked at once: `scanned` bytes from pos are, and the line they
    // end in holds text when `text`.
    size_t scanned = 0;
    bool text = false;
    for (;;) {
      if (format == StreamFormat::csv || format == StreamFormat::text) {
        for (; pos + scanned < end; ++scanned) {
          const uint8_t c = buf[pos + scanned];
          if (c == '\n') {
            if (text) return true;
          } else if (c != ' ' && c != '\t' && c != '\r') {
            text = true;
          }
        }
      } else if (end - pos >= stored_sample_bytes()) {
        return true;
      }
      if (eof) return true;
      if (pos == 0 && end == buf.size()) buf.resize(2 * buf.size());  // a line longer than buf
      if (!fill(false)) return eof;  // (fill moves buf[pos, end) to the front: `scanned` counts from pos)
    }
  }

  // Makes n bytes available in buf[pos, pos + n) when the input has them; returns how many are.
  size_t ensure(size_t n) {
    while (end - pos < n && fill()) {
    }
    return std::min(n, end - pos);
  }

  // Copies up to n bytes out; returns how many the input had.
  size_t take(void* dst, size_t n) {
    auto* d = static_cast<uint8_t*>(dst);
    size_t done = 0;
    while (done < n) {
      if (pos == end && !fill()) break;
      size_t k = std::min(n - done, end - pos);
      std::memcpy(d + done, buf.data() + pos, k);
      pos += k;
      done += k;
      offset += k;
    }
    return done;
  }

  void take_exact(void* dst, size_t n, const char* what) {
    if (take(dst, n) != n)
      throw InputError(at(), fmt::format("the input ends inside the {}", what),
                       "the file is truncated: write it again");
  }

  void open_npy() {
    uint8_t pre[12];
    take_exact(pre, 8, "NPY header");
    const int major = pre[6];
    uint64_t len = 0;
    if (major == 1) {
      take_exact(pre + 8, 2, "NPY header");
      len = pre[8] | (pre[9] << 8);
    } else if (major == 2 || major == 3) {
      take_exact(pre + 8, 4, "NPY header");
      len =
          uint64_t{pre[8]} | (uint64_t{pre[9]} << 8) | (uint64_t{pre[10]} << 16) | (uint64_t{pre[11]} << 24);
    } else {
      throw npy_version_error(name, major, pre[7]);
    }
    // numpy writes headers of a few hundred bytes (and reads none over 10000 unless told to): a length far
    // beyond is a damaged file, not a header to allocate.
    constexpr uint64_t kMaxHeader = uint64_t{1} << 20;
    if (len > kMaxHeader)
      throw InputError(at_byte(name, 8),
                       fmt::format("the NPY header says it is {} bytes long; headers are at most {} bytes",
                                   len, kMaxHeader),
                       "the file is damaged: write it again with numpy.save");
    const uint64_t start = offset;
    std::string text(len, '\0');
    take_exact(text.data(), len, "NPY header");
    const NpyDict d = parse_npy_dict(text, at_byte(name, start));
    dtype = npy_dtype(d.descr, name);
    if (d.fortran)
      throw InputError(name, "the array is in Fortran (column-major) order",
                       "save a C-ordered copy: numpy.save(path, numpy.ascontiguousarray(x))");
    if (d.shape.empty())
      throw InputError(name, "the array is a scalar", "the first dimension of the array counts samples");
    count = d.shape[0];
    shape.assign(d.shape.begin() + 1, d.shape.end());
  }

  void open_idx() {
    uint8_t magic[4];
    take_exact(magic, 4, "IDX header");
    idx = idx_type(magic[2]);
    const int rank = magic[3];
    std::vector<uint8_t> dims(4 * static_cast<size_t>(rank));
    take_exact(dims.data(), dims.size(), "IDX header");
    count = be32(dims.data());
    for (int i = 1; i < rank; ++i) shape.push_back(be32(dims.data() + 4 * i));
    dtype = idx->out;
  }

  // A CIFAR-10 binary batch: records of a label byte (skipped) and a [3, 32, 32] image. Its sample count is
  // known from a plain file's size; compressed or piped, the input's end tells it.
  void open_cifar() {
    format = StreamFormat::cifar10;
    shape = {3, 32, 32};
    dtype = DType::u8;
    if (compressed || file_bytes < 0) return;
    if (file_bytes % kCifar10RecordBytes != 0)
      throw InputError(name, cifar10_size_problem(static_cast<uint64_t>(file_bytes)),
                       "a file named .bin is read as a CIFAR-10 binary batch; CIFAR-100 (2 label bytes) is "
                       "another format");
    count = file_bytes / kCifar10RecordBytes;
  }

  // A batch of the Python version of CIFAR-10 or CIFAR-100 (a pickle, read as data): its images, [3, 32, 32]
  // each, read in place from the mapped file. A pickle is read whole, so it must be a plain file.
  void open_cifar_python() {
    if (compressed || file_bytes < 0 || fd < 0 || mem)
      throw InputError(name, "is a Python pickle, which cannot be read as a stream",
                       "give the pickle's path (a CIFAR Python batch, such as data_batch_1) uncompressed");
    auto bytes = Bytes::map_fd(fd, static_cast<size_t>(file_bytes), name);
    const pickle::Array a = cifar_python_images(bytes, name);
    format = StreamFormat::cifar10;
    cifar = false;  // the images alone, with no label bytes between them
    shape = {3, 32, 32};
    dtype = DType::u8;
    count = a.shape[0];
    mem = a.holder;
    mem_pos = a.offset;
    mem_end = a.offset + a.size;
    pos = end = 0;
    eof = false;
    offset = a.offset;
  }

  // The next line that is not blank, without its line end; false at the end of the input.
  bool next_line() {
    for (;;) {
      line.clear();
      bool any = false;
      for (;;) {
        if (pos == end && !fill()) break;
        any = true;
        const uint8_t* b = buf.data() + pos;
        const void* nl = std::memchr(b, '\n', end - pos);
        size_t k = nl ? static_cast<const uint8_t*>(nl) - b : end - pos;
        line.append(reinterpret_cast<const char*>(b), k);
        pos += k + (nl ? 1 : 0);
        offset += k + (nl ? 1 : 0);
        if (nl) break;
      }
      if (!any) return false;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line_no == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // a UTF-8 byte-order mark
      if (line.find_first_not_of(" \t") != std::string::npos) return true;
      if (pos == end && eof) return false;
    }
  }

  void split() {
    cells.clear();
    cell_cols.clear();
    std::string_view s = line;
    size_t i = 0;
    for (;;) {
      size_t j = s.find(',', i);
      size_t e = j == std::string_view::npos ? s.size() : j;
      size_t b = i;
      while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
      size_t t = e;
      while (t > b && (s[t - 1] == ' ' || s[t - 1] == '\t')) --t;
      if (t - b >= 2 && s[b] == '"' && s[t - 1] == '"') ++b, --t;
      cells.push_back(s.substr(b, t - b));
      cell_cols.push_back(b + 1);
      if (j == std::string_view::npos) break;
      i = j + 1;
    }
  }

  // Parses the current line into out[0, columns).
  void parse_row(double* out) {
    split();
    if (static_cast<int64_t>(cells.size()) != shape[0])
      throw InputError(fmt::format("{}:{}", name, line_no),
                       fmt::format("the row has {} values, but the first row has {}", cells.size(), shape[0]),
                       "every row is one sample of the same number of values");
    for (size_t c = 0; c < cells.size(); ++c) {
      const CsvNumber n = parse_csv_number(cells[c], &out[c]);
      if (n == CsvNumber::ok) continue;
      throw InputError(
          fmt::format("{}:{}:{}", name, line_no, cell_cols[c]),
          n == CsvNumber::out_of_range
              ? fmt::format("'{}' is a number past the range of numbers (about 1.8e308)", clipped(cells[c]))
              : fmt::format("'{}' is not a number", clipped(cells[c])),
          n == CsvNumber::out_of_range
              ? "scale the data into float32's range (about 3.4e38)"
              : "CSV input holds numbers only (a first line of column names is skipped)");
    }
  }

  void open_csv() {
    dtype = DType::f64;
    if (!next_line()) {  // blank lines only: no samples
      count = 0;
      return;
    }
    split();
    // Column names: a first line without a single number ("a,1" quoted is one name). A first line of numbers
    // with a bad field is a sample, and its error is reported (it was once skipped as a header).
    bool names = true;
    double v = 0;
    for (std::string_view c : cells) names = names && parse_csv_number(c, &v) == CsvNumber::not_a_number;
    if (names && !next_line()) {  // a header alone: no samples
      shape = {static_cast<int64_t>(cells.size())};
      return;
    }
    split();  // the first sample sets the width
    shape = {static_cast<int64_t>(cells.size())};
    first_row.resize(cells.size());
    parse_row(first_row.data());
    have_first_row = true;
  }

  int64_t read_csv(int64_t max, double* out, bool partial) {
    if (shape.empty()) return 0;  // an empty input
    const int64_t cols = shape[0];
    int64_t n = 0;
    if (have_first_row && max > 0) {
      std::copy(first_row.begin(), first_row.end(), out);
      have_first_row = false;
      ++n;
    }
    while (n < max) {
      if (partial && n > 0 && !sample_ready()) {
        waiting = true;
        break;
      }
      if (!next_line()) break;
      parse_row(out + n * cols);
      ++n;
    }
    return n;
  }

  int64_t read_text(int64_t max, int32_t* out, bool partial) {
    const int64_t length = vectorizer->length();
    int64_t n = 0;
    while (n < max) {
      if (partial && n > 0 && !sample_ready()) {
        waiting = true;
        break;
      }
      if (!next_line()) break;
      vectorizer->encode(line, out + n * length);
      ++n;
    }
    return n;
  }

  int64_t read_fixed(int64_t max, void* out, bool partial) {
    const int64_t left = count >= 0 ? count - read_samples : max;  // unknown: a CIFAR-10 stream
    const int64_t n = std::min(max, left);
    if (n <= 0 && count >= 0 && !end_checked) {
      // Bytes after the samples the header declares: the header does not describe the data (fit refuses
      // such a file too). A pipe is not waited on: only what arrives within a moment counts, so that a
      // writer that keeps it open after the last sample does not hold the predictions back.
      end_checked = true;
      if (pos < end || fill(false))
        throw InputError(at_byte(name, offset),
                         fmt::format("data follows the {} samples the header declares", count),
                         "the header does not describe this data: the file may be damaged");
    }
    if (n <= 0) return 0;
    // A whole stored sample fits in buf, so that whether the next one has arrived can be seen (allocated at
    // the first read, once the caller has accepted the sample shape).
    if (buf.size() < stored_sample_bytes()) buf.resize(stored_sample_bytes());
    const size_t elems = sample_bytes / engine::dtype_bytes(dtype);
    const size_t stored_sample = stored_sample_bytes();
    void* dst = out;
    if (cifar || (idx && (idx->bytes > 1 || idx->out != DType::u8))) {
      scratch.resize(std::max(scratch.size(), static_cast<size_t>(n) * stored_sample));
      dst = scratch.data();
    }
    // Whole samples: all n, or with `partial`, those the input holds now (at least one).
    int64_t got = 0;
    while (got < n) {
      int64_t k = n - got;
      if (partial && got > 0) {
        if (!sample_ready()) {
          waiting = true;
          break;
        }
        k = std::clamp<int64_t>(static_cast<int64_t>((end - pos) / std::max<size_t>(stored_sample, 1)), 1, k);
      } else if (partial) {
        k = 1;
      }
      const size_t want = static_cast<size_t>(k) * stored_sample;
      const uint64_t start = offset;
      const size_t have = take(static_cast<uint8_t*>(dst) + static_cast<size_t>(got) * stored_sample, want);
      if (have != want && count < 0 && have % stored_sample == 0) {  // the end of a stream of records
        got += static_cast<int64_t>(have / stored_sample);
        break;
      }
      if (have != want && count < 0) {
        throw InputError(at_byte(name, start + have),
                         fmt::format("the input ends inside record {} ({} of its {} bytes)",
                                     read_samples + got + static_cast<int64_t>(have / stored_sample) + 1,
                                     have % stored_sample, stored_sample),
                         "the file is truncated: write it again");
      }
      if (have != want) {
        const int64_t whole = read_samples + got + static_cast<int64_t>(have / stored_sample);
        throw InputError(at_byte(name, start + have),
                         fmt::format("the input ends after {} of its {} samples", whole, count),
                         "the file is truncated: write it again");
      }
      got += k;
    }
    if (cifar) {  // the images without their label bytes
      for (int64_t k = 0; k < got; ++k)
        std::memcpy(static_cast<uint8_t*>(out) + static_cast<size_t>(k) * sample_bytes,
                    scratch.data() + static_cast<size_t>(k) * stored_sample + 1, sample_bytes);
    } else if (dst != out) {
      widen_idx(static_cast<size_t>(got) * elems, out);
    }
    return got;
  }

  // Big-endian IDX elements to host order, i8/i16 widened to i32.
  void widen_idx(size_t elems, void* out) {
    const uint8_t* s = scratch.data();
    switch (idx->code) {
      case 0x09:
        for (size_t i = 0; i < elems; ++i) static_cast<int32_t*>(out)[i] = static_cast<int8_t>(s[i]);
        break;
      case 0x0B:
        for (size_t i = 0; i < elems; ++i)
          static_cast<int32_t*>(out)[i] = static_cast<int16_t>((s[2 * i] << 8) | s[2 * i + 1]);
        break;
      case 0x0C:
      case 0x0D:
        for (size_t i = 0; i < elems; ++i) {
          uint32_t v = be32(s + 4 * i);
          std::memcpy(static_cast<uint8_t*>(out) + 4 * i, &v, 4);
        }
        break;
      case 0x0E:
        for (size_t i = 0; i < elems; ++i) {
          uint64_t v = (uint64_t{be32(s + 8 * i)} << 32) | be32(s + 8 * i + 4);
          std::memcpy(static_cast<uint8_t*>(out) + 8 * i, &v, 8);
        }
        break;
      default:
        TRAINER_ASSERT(false, "IDX type {}", idx->code);
    }
  }
};

SampleReader::SampleReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  open_path(path);
  open();
}

void SampleReader::open_path(const std::string& path) {
  Impl& m = *impl_;
  const bool is_stdin = path == "-";
  m.name = is_stdin ? "stdin" : path;
  const int fd = is_stdin ? dup(STDIN_FILENO) : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw InputError(m.name, fmt::format("cannot open: {}", std::strerror(errno)),
                     is_stdin ? "" : "check the path");
  struct stat st {};
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw InputError(m.name, "is a directory", "give a NPY, IDX or CSV file, or - for standard input");
  }
  m.fd = fd;
  m.cifar = !is_stdin && (path.ends_with(".bin") || path.ends_with(".bin.gz"));
  if (S_ISREG(st.st_mode)) m.file_bytes = static_cast<int64_t>(st.st_size);
  m.open_fd();
}

SampleReader::SampleReader(const std::string& npz_path, const std::string& key)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  ZipArchive zip(npz_path);
  const std::string member = key + ".npy";
  const ZipArchive::Member* z = zip.find(member);
  if (!z) {
    std::vector<std::string> keys;
    for (const auto& e : zip.members())
      keys.push_back(e.name.ends_with(".npy") ? e.name.substr(0, e.name.size() - 4) : e.name);
    throw InputError(npz_path,
                     fmt::format("has no array '{}'; its arrays: {}", key,
                                 keys.empty() ? "none" : fmt::format("{}", fmt::join(keys, ", "))),
                     did_you_mean(key, keys));
  }
  m.name = fmt::format("{}/{}", npz_path, member);
  m.mem = zip.open(*z, &m.mem_pos, kDefaultSpillBytes);
  m.mem_end = m.mem_pos + z->size;
  open();
}

SampleReader::SampleReader(std::shared_ptr<const Bytes> npy, std::string name)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.name = std::move(name);
  m.mem_end = npy->size();
  m.mem = std::move(npy);
  open();
}

SampleReader::SampleReader(const std::string& path, std::shared_ptr<const TextVectorizer> vectorizer)
    : impl_(std::make_unique<Impl>()) {
  open_path(path);
  Impl& m = *impl_;
  // NPY and IDX files hold token ids already. A pipe is text: waiting for its first 8 bytes would hold back
  // a short first line.
  const size_t have = m.file_bytes >= 0 ? m.ensure(8) : 0;
  const uint8_t* p = m.buf.data();
  if ((have >= 6 && std::memcmp(p, "\x93NUMPY", 6) == 0) ||
      (have >= 4 && p[0] == 0 && p[1] == 0 && idx_type(p[2]) && p[3] >= 1)) {
    open();
    return;
  }
  m.cifar = false;
  m.vectorizer = std::move(vectorizer);
  m.format = StreamFormat::text;
  m.dtype = DType::i32;
  m.shape = {m.vectorizer->length()};
  m.sample_bytes = static_cast<size_t>(m.vectorizer->length()) * sizeof(int32_t);
  m.count = -1;
}

void SampleReader::open() {
  Impl& m = *impl_;
  const size_t have = m.ensure(8);
  if (have == 0) {  // no samples: CSV of no rows
    m.count = 0;
    return;
  }
  const uint8_t* p = m.buf.data();
  if (have >= 6 && std::memcmp(p, "\x93NUMPY", 6) == 0) {
    m.cifar = false;  // an NPY file, whatever its name
    m.format = StreamFormat::npy;
    m.open_npy();
  } else if (starts_as_pickle({reinterpret_cast<const char*>(p), have})) {
    // A pickle, whatever its name (a CIFAR-10 binary record starts with a label below 128).
    m.open_cifar_python();
  } else if (m.cifar) {
    m.open_cifar();
  } else if (have >= 4 && (std::memcmp(p, "PK\x03\x04", 4) == 0 || std::memcmp(p, "PK\x05\x06", 4) == 0)) {
    // A zip archive (an .npz) lists its members at its end: it is read from a file, never streamed.
    throw InputError(m.name, "is a zip archive (an .npz), which cannot be read as a stream",
                     m.name == "stdin"
                         ? "give the .npz file's path instead of piping it"
                         : "give it as the only INPUT of trainer predict, which reads its arrays");
  } else if (have >= 4 && p[0] == 0 && p[1] == 0 && idx_type(p[2]) && p[3] >= 1) {
    m.format = StreamFormat::idx;
    m.open_idx();
  } else {
    for (size_t i = 0; i < have; ++i)
      if (p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\r')
        throw InputError(at_byte(m.name, i), "the input is neither NPY, IDX nor CSV text",
                         "give samples as NPY (numpy.save), IDX or CSV, optionally gzip-compressed");
    m.format = StreamFormat::csv;
    m.open_csv();
  }
  // A header's sample shape is checked against the model before anything is read: its size is only
  // computed here (a damaged header's dimensions may multiply past any memory, or past 64 bits).
  uint64_t values = 1;
  for (int64_t d : m.shape) {
    if (d < 0 || (d > 0 && values > (uint64_t{1} << 48) / static_cast<uint64_t>(d)))
      throw InputError(m.name,
                       fmt::format("the header's sample shape [{}] holds more than 2^48 values per sample",
                                   fmt::join(m.shape, ", ")),
                       "the file is damaged, or not what it seems: write it again");
    values *= static_cast<uint64_t>(d);
  }
  m.sample_bytes = static_cast<size_t>(values) * engine::dtype_bytes(m.dtype);
}

SampleReader::~SampleReader() = default;

StreamFormat SampleReader::format() const {
  return impl_->format;
}
bool SampleReader::compressed() const {
  return impl_->compressed;
}
const std::string& SampleReader::name() const {
  return impl_->name;
}
const std::vector<int64_t>& SampleReader::sample_shape() const {
  return impl_->shape;
}
DType SampleReader::dtype() const {
  return impl_->dtype;
}
size_t SampleReader::sample_bytes() const {
  return impl_->sample_bytes;
}
int64_t SampleReader::count() const {
  return impl_->count;
}
int64_t SampleReader::samples_read() const {
  return impl_->read_samples;
}

int64_t SampleReader::read(int64_t max_samples, void* out, bool partial) {
  Impl& m = *impl_;
  m.waiting = false;
  int64_t n = m.format == StreamFormat::csv    ? m.read_csv(max_samples, static_cast<double*>(out), partial)
              : m.format == StreamFormat::text ? m.read_text(max_samples, static_cast<int32_t*>(out), partial)
                                               : m.read_fixed(max_samples, out, partial);
  m.read_samples += n;
  return n;
}

bool SampleReader::waiting() const {
  return impl_->waiting;
}

// ---- conversion to the model's input ----

namespace {

template <class S, class D>
void convert_floats(const S* s, D* d, int64_t channels, int64_t positions, bool transpose, bool channel_first,
                    bool transpose_back, const std::vector<double>& alpha, const std::vector<double>& beta) {
  if (transpose_back) {  // [C, H, W] -> [H, W, C]
    for (int64_t c = 0; c < channels; ++c) {
      const double a = alpha[alpha.size() > 1 ? c : 0], b = beta[beta.size() > 1 ? c : 0];
      for (int64_t p = 0; p < positions; ++p)
        d[p * channels + c] = static_cast<D>(static_cast<double>(s[c * positions + p]) * a + b);
    }
  } else if (channel_first && alpha.size() > 1) {  // per-channel constants, channel first
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t p = 0; p < positions; ++p)
        d[c * positions + p] = static_cast<D>(static_cast<double>(s[c * positions + p]) * alpha[c] + beta[c]);
  } else if (transpose) {  // [H, W, C] -> [C, H, W]
    for (int64_t c = 0; c < channels; ++c) {
      const double a = alpha[alpha.size() > 1 ? c : 0], b = beta[beta.size() > 1 ? c : 0];
      for (int64_t p = 0; p < positions; ++p)
        d[c * positions + p] = static_cast<D>(static_cast<double>(s[p * channels + c]) * a + b);
    }
  } else if (alpha.size() > 1) {  // per-channel constants, channel last
    for (int64_t p = 0; p < positions; ++p)
      for (int64_t c = 0; c < channels; ++c)
        d[p * channels + c] = static_cast<D>(static_cast<double>(s[p * channels + c]) * alpha[c] + beta[c]);
  } else {
    const double a = alpha[0], b = beta[0];
    for (int64_t e = 0; e < channels * positions; ++e)
      d[e] = static_cast<D>(static_cast<double>(s[e]) * a + b);
  }
}

template <class S>
const S* typed(const void* p) {
  return static_cast<const S*>(p);
}

template <class F>
void with_stored(DType t, F&& f) {
  switch (t) {
    case DType::u8:
      return f(uint8_t{});
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    default:
      TRAINER_ASSERT(false, "stored dtype {}", engine::dtype_name(t));
  }
}

template <class F>
void with_input(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    default:
      throw InputError(
          "", fmt::format("the model's input has dtype {}, which predict cannot feed", engine::dtype_name(t)),
          "models take float32, float64, int32 or int64 inputs");
  }
}

}  // namespace

SampleConverter::SampleConverter(const engine::data::BatchFormat& format,
                                 const std::vector<int64_t>& sample_shape, DType stored, std::string source)
    : format_(format), stored_(stored), source_(std::move(source)) {
  elems_ = engine::Shape(sample_shape).numel();
  with_input(format.x_dtype, [](auto) {});
  const bool ids = engine::is_integer(format.x_dtype);
  transpose_ = !ids && format.to_chw && sample_shape.size() == 3;
  TRAINER_ASSERT(!format.to_chw || sample_shape.size() == 3, "to_chw needs [H, W, C] samples");
  const size_t norm = ids ? 1 : std::max<size_t>({1, format.mean.size(), format.std.size()});
  transpose_back_ = !ids && format.to_hwc && sample_shape.size() == 3;
  TRAINER_ASSERT(!format.to_hwc || sample_shape.size() == 3, "to_hwc needs [C, H, W] samples");
  // Values already in a CHW input's order take per-channel constants channel first.
  channel_first_ = !ids && !transpose_ && !transpose_back_ && format.chw_channels > 0 && norm > 1;
  channels_ = transpose_back_                                     ? sample_shape.front()
              : channel_first_                                    ? format.chw_channels
              : (transpose_ || norm > 1) && !sample_shape.empty() ? sample_shape.back()
                                                                  : 1;
  positions_ = channels_ > 0 ? elems_ / channels_ : 0;
  if (!transpose_ && !transpose_back_ && norm == 1) {
    channels_ = 1;
    positions_ = elems_;
  }
  if (!ids) {
    for (const auto* v : {&format.mean, &format.std})
      if (v->size() > 1 && static_cast<int64_t>(v->size()) != channels_)
        throw InputError(source_,
                         fmt::format("data.{} has {} values, but the samples (shape {}) have {} channels",
                                     v == &format.mean ? "mean" : "std", v->size(),
                                     engine::Shape(sample_shape).str(), channels_),
                         "give one value, or one per channel");
    for (double sd : format.std)
      if (!(sd > 0)) throw InputError(source_, fmt::format("data.std holds {}", sd), "std must be > 0");
  }
  alpha_.assign(norm, 1.0);
  beta_.assign(norm, 0.0);
  for (size_t c = 0; c < norm && !ids; ++c) {
    double mu = format.mean.empty() ? 0.0 : format.mean[format.mean.size() == 1 ? 0 : c];
    double sd = format.std.empty() ? 1.0 : format.std[format.std.size() == 1 ? 0 : c];
    alpha_[c] = format.scale / sd;
    beta_[c] = -mu / sd;
  }
}

size_t SampleConverter::out_sample_bytes() const {
  return static_cast<size_t>(elems_) * engine::dtype_bytes(format_.x_dtype);
}

void SampleConverter::convert(const void* stored, int64_t n, int64_t first, void* out) const {
  with_stored(stored_, [&](auto s_tag) {
    using S = decltype(s_tag);
    with_input(format_.x_dtype, [&](auto d_tag) {
      using D = decltype(d_tag);
      const S* s = typed<S>(stored);
      D* d = static_cast<D*>(out);
      for (int64_t i = 0; i < n; ++i, s += elems_, d += elems_) {
        if constexpr (std::is_floating_point_v<D>) {
          convert_floats(s, d, channels_, positions_, transpose_, channel_first_, transpose_back_, alpha_,
                         beta_);
        } else {
          const int64_t limit = format_.num_tokens;
          for (int64_t e = 0; e < elems_; ++e) {
            const double v = static_cast<double>(s[e]);
            if (!(v == std::floor(v)))
              throw InputError(fmt::format("{}: sample {}", source_, first + i),
                               fmt::format("element {} is {}, not a token id", e, v),
                               "token ids are whole numbers");
            if (limit > 0 && (v < 0 || v >= static_cast<double>(limit)))
              throw InputError(
                  fmt::format("{}: sample {}", source_, first + i),
                  fmt::format("token id {} (element {}) is out of range for {} tokens", v, e, limit),
                  fmt::format("the model takes {} distinct token ids: ids must lie in [0, {}]", limit,
                              limit - 1));
            d[e] = static_cast<D>(s[e]);
          }
        }
      }
    });
  });
}

}  // namespace trainer::formats
