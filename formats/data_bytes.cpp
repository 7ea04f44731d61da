// Memory mapping, gzip and raw-deflate decompression, and the spill-to-temporary-file writer behind them.
#include "formats/data_bytes.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include "engine/util/error.h"

namespace trainer::formats {

namespace {

std::string errno_text() {
  return std::strerror(errno);
}

// Memory is filled in blocks of this size before it goes to the temporary file.
constexpr size_t kWriteBlock = size_t{1} << 20;

}  // namespace

std::string file_name(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string at_byte(const std::string& file, uint64_t offset) {
  return fmt::format("{}: byte {}", file, offset);
}

std::string clipped(std::string_view text, size_t most) {
  if (text.size() <= most) return std::string(text);
  size_t n = most;
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;  // whole UTF-8 characters
  return fmt::format("{}... ({} more bytes)", text.substr(0, n), text.size() - n);
}

bool starts_as_pickle(std::string_view head) {
  return head.size() >= 2 && static_cast<uint8_t>(head[0]) == 0x80 && head[1] >= 2 && head[1] <= 5;
}

const char* data_file_kind(std::string_view head) {
  if (head.starts_with("\x93NUMPY")) return "an NPY array";
  if (head.starts_with("PK\x03\x04") || head.starts_with("PK\x05\x06")) return "a zip archive (NPZ)";
  if (head.starts_with("\x1f\x8b")) return "a gzip file";
  if (head.size() >= 4 && head[0] == 0 && head[1] == 0 && head[2] >= 0x08 && head[2] <= 0x0E)
    return "an IDX file";
  if (starts_as_pickle(head)) return "a Python pickle";
  return nullptr;
}

CsvNumber parse_csv_number(std::string_view s, double* out) {
  if (s.empty()) return CsvNumber::not_a_number;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (*b == '+') ++b;
  auto r = std::from_chars(b, e, *out);
  if (r.ptr != e) return CsvNumber::not_a_number;
  if (r.ec == std::errc::result_out_of_range) return CsvNumber::out_of_range;
  return r.ec == std::errc() ? CsvNumber::ok : CsvNumber::not_a_number;
}

Bytes::~Bytes() {
  if (map_) munmap(map_, size_);
}

std::shared_ptr<const Bytes> Bytes::from_vector(std::vector<uint8_t> v) {
  std::shared_ptr<Bytes> b(new Bytes());
  b->heap_ = std::move(v);
  b->data_ = b->heap_.data();
  b->size_ = b->heap_.size();
  return b;
}

std::shared_ptr<const Bytes> Bytes::map_fd(int fd, size_t size, const std::string& name) {
  if (size == 0) return from_vector({});
  void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    throw RuntimeError(fmt::format("{}: cannot memory-map {} bytes: {}", name, size, errno_text()));
  std::shared_ptr<Bytes> b(new Bytes());
  b->map_ = p;
  b->data_ = static_cast<const uint8_t*>(p);
  b->size_ = size;
  return b;
}

std::shared_ptr<const Bytes> map_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw InputError(path, fmt::format("cannot open the data file: {}", errno_text()),
                     err == ENOENT   ? "check the path; relative paths are resolved from the spec's folder"
                     : err == EACCES ? "check the file's permissions: this user must be able to read it"
                                     : "check the path and the file");
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    throw InputError(path, "not a regular file");
  }
  try {
    auto b = Bytes::map_fd(fd, static_cast<size_t>(st.st_size), path);
    close(fd);
    return b;
  } catch (...) {
    close(fd);
    throw;
  }
}

bool is_gzip(const Bytes& b) {
  return b.size() >= 2 && b.data()[0] == 0x1f && b.data()[1] == 0x8b;
}

std::shared_ptr<const Bytes> load_file(const std::string& path, int64_t spill_bytes, bool* decompressed) {
  auto raw = map_file(path);
  if (decompressed) *decompressed = is_gzip(*raw);
  if (!is_gzip(*raw)) return raw;
  // Decompress from the mapping with inflate (gzip wrapper, concatenated members allowed).
  const std::string name = file_name(path);
  SpillWriter out(spill_bytes, name);
  // A gzip file ends with its data's size modulo 2^32: right for all but huge or concatenated files.
  if (raw->size() >= 18) {
    const uint8_t* t = raw->data() + raw->size() - 4;
    out.reserve(uint32_t{t[0]} | (uint32_t{t[1]} << 8) | (uint32_t{t[2]} << 16) | (uint32_t{t[3]} << 24));
  }
  z_stream z{};
  if (inflateInit2(&z, 15 + 16) != Z_OK) throw RuntimeError("zlib: inflateInit2 failed");
  std::vector<uint8_t> block(kWriteBlock);
  size_t in_pos = 0;
  int rc = Z_OK;
  for (;;) {
    const size_t chunk = std::min<size_t>(raw->size() - in_pos, size_t{1} << 30);
    z.next_in = const_cast<Bytef*>(raw->data() + in_pos);
    z.avail_in = static_cast<uInt>(chunk);
    z.next_out = block.data();
    z.avail_out = static_cast<uInt>(block.size());
    rc = inflate(&z, Z_NO_FLUSH);
    in_pos += chunk - z.avail_in;
    out.append(block.data(), block.size() - z.avail_out);
    if (rc == Z_STREAM_END) {
      // Another gzip member may follow (files made by concatenating .gz files).
      if (in_pos + 2 <= raw->size() && raw->data()[in_pos] == 0x1f && raw->data()[in_pos + 1] == 0x8b) {
        inflateReset(&z);
        continue;
      }
      // Zero bytes may pad the end (tape blocks); anything else is not part of the file's data.
      const uint8_t* rest = raw->data() + in_pos;
      const size_t left = raw->size() - in_pos;
      if (std::any_of(rest, rest + left, [](uint8_t b) { return b != 0; })) {
        inflateEnd(&z);
        throw InputError(fmt::format("{}: byte {}", name, in_pos),
                         fmt::format("{} bytes that are not gzip data follow the gzip stream", left),
                         "the file is damaged, or another file was appended to it: download it again");
      }
      break;
    }
    if (rc != Z_OK && !(rc == Z_BUF_ERROR && z.avail_in > 0)) {
      std::string msg = z.msg ? z.msg : "corrupt data";
      inflateEnd(&z);
      if (rc == Z_BUF_ERROR || in_pos >= raw->size()) {
        throw InputError(fmt::format("{}: byte {}", name, raw->size()),
                         fmt::format("the gzip stream ends early, after {} decompressed bytes", out.size()),
                         "the file is truncated: download it again");
      }
      throw InputError(fmt::format("{}: byte {}", name, in_pos), fmt::format("corrupt gzip data ({})", msg),
                       "download the file again");
    }
    if (in_pos >= raw->size() && z.avail_out != 0) {
      inflateEnd(&z);
      throw InputError(fmt::format("{}: byte {}", name, raw->size()),
                       fmt::format("the gzip stream ends early, after {} decompressed bytes", out.size()),
                       "the file is truncated: download it again");
    }
  }
  inflateEnd(&z);
  return out.finish();
}

std::shared_ptr<const Bytes> inflate_raw(const uint8_t* data, size_t size, uint64_t expected,
                                         uint32_t expected_crc, const std::string& name,
                                         int64_t spill_bytes) {
  SpillWriter out(spill_bytes, name);
  out.reserve(expected);
  z_stream z{};
  if (inflateInit2(&z, -15) != Z_OK) throw RuntimeError("zlib: inflateInit2 failed");
  std::vector<uint8_t> block(kWriteBlock);
  size_t in_pos = 0;
  uLong crc = crc32(0, nullptr, 0);
  for (;;) {
    const size_t chunk = std::min<size_t>(size - in_pos, size_t{1} << 30);
    z.next_in = const_cast<Bytef*>(data + in_pos);
    z.avail_in = static_cast<uInt>(chunk);
    z.next_out = block.data();
    z.avail_out = static_cast<uInt>(block.size());
    int rc = inflate(&z, Z_NO_FLUSH);
    in_pos += chunk - z.avail_in;
    const size_t produced = block.size() - z.avail_out;
    crc = crc32(crc, block.data(), static_cast<uInt>(produced));
    out.append(block.data(), produced);
    if (rc == Z_STREAM_END) break;
    const bool stuck = rc == Z_BUF_ERROR && in_pos >= size;
    if ((rc != Z_OK && rc != Z_BUF_ERROR) || stuck || (in_pos >= size && z.avail_out != 0)) {
      std::string msg = z.msg ? z.msg : "the stream ends early";
      inflateEnd(&z);
      throw InputError(name, fmt::format("corrupt deflate data ({}) after {} bytes", msg, out.size()),
                       "the archive is damaged: write it again");
    }
  }
  inflateEnd(&z);
  if (out.size() != expected) {
    throw InputError(
        name, fmt::format("decompresses to {} bytes; the archive's directory says {}", out.size(), expected));
  }
  if (static_cast<uint32_t>(crc) != expected_crc) {
    throw InputError(name,
                     fmt::format("CRC-32 {:08x} does not match the archive's {:08x}",
                                 static_cast<uint32_t>(crc), expected_crc),
                     "the archive is damaged: write it again");
  }
  return out.finish();
}

SpillWriter::SpillWriter(int64_t spill_bytes, std::string name)
    : spill_bytes_(spill_bytes), name_(std::move(name)) {}

SpillWriter::~SpillWriter() {
  if (fd_ >= 0) close(fd_);
}

void SpillWriter::reserve(uint64_t n) {
  if (fd_ < 0) buf_.reserve(static_cast<size_t>(std::min<uint64_t>(n, static_cast<uint64_t>(spill_bytes_))));
}

void SpillWriter::append(const void* data, size_t n) {
  if (n == 0) return;
  if (fd_ < 0 && static_cast<int64_t>(size_ + n) > spill_bytes_) {
    // Past the threshold: move to an unlinked temporary file, which the kernel pages like a data file.
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = fmt::format("{}/trainer-data-XXXXXX", dir && *dir ? dir : "/tmp");
    fd_ = mkstemp(tmpl.data());
    if (fd_ < 0) {
      throw RuntimeError(
          fmt::format("{}: cannot create a temporary file {}: {} (set TMPDIR to a folder with room)", name_,
                      tmpl, errno_text()));
    }
    unlink(tmpl.c_str());
  }
  const auto* p = static_cast<const uint8_t*>(data);
  buf_.insert(buf_.end(), p, p + n);
  size_ += n;
  if (fd_ >= 0 && buf_.size() >= kWriteBlock) flush();
}

void SpillWriter::flush() {
  size_t off = 0;
  while (off < buf_.size()) {
    ssize_t w = write(fd_, buf_.data() + off, buf_.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      throw RuntimeError(fmt::format(
          "{}: cannot write a temporary file: {} (set TMPDIR to a folder with room)", name_, errno_text()));
    }
    off += static_cast<size_t>(w);
  }
  buf_.clear();
  // The in-memory phase may have grown the buffer to the threshold; writing needs one block.
  if (buf_.capacity() > 4 * kWriteBlock) {
    std::vector<uint8_t>().swap(buf_);
    buf_.reserve(kWriteBlock);
  }
}

std::shared_ptr<const Bytes> SpillWriter::finish() {
  if (fd_ < 0) {
    buf_.shrink_to_fit();
    return Bytes::from_vector(std::move(buf_));
  }
  flush();
  auto b = Bytes::map_fd(fd_, size_, name_);
  close(fd_);
  fd_ = -1;
  return b;
}

}  // namespace trainer::formats
