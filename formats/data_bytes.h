// Read-only bytes of data files: memory-mapped files, and decompressed data kept in memory or, past a
// threshold, in an unlinked temporary file that is memory-mapped, so a dataset larger than memory pages in
// and out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace trainer::formats {

// Decompressed or parsed data larger than this goes to a temporary file ($TMPDIR, else /tmp) instead of
// memory.
inline constexpr int64_t kDefaultSpillBytes = int64_t{256} << 20;

class Bytes {
 public:
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  ~Bytes();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool file_backed() const {
    return map_ != nullptr;
  }  // memory-mapped (a data file or a spilled temporary file)

  static std::shared_ptr<const Bytes> from_vector(std::vector<uint8_t> v);
  // Maps `size` bytes of an open descriptor read-only; the caller keeps ownership of fd.
  static std::shared_ptr<const Bytes> map_fd(int fd, size_t size, const std::string& name);

 private:
  Bytes() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;
  std::vector<uint8_t> heap_;
};

// Maps a file. A missing or unreadable file is an InputError naming it.
std::shared_ptr<const Bytes> map_file(const std::string& path);

// The file's contents: gzip files (found by their magic bytes) are decompressed once, anything else is
// mapped. `decompressed`, when given, says which.
std::shared_ptr<const Bytes> load_file(const std::string& path, int64_t spill_bytes = kDefaultSpillBytes,
                                       bool* decompressed = nullptr);

// Whether the file starts with the gzip magic bytes.
bool is_gzip(const Bytes& b);

// Inflates a raw deflate stream (a zip member) that must produce exactly `expected` bytes with CRC-32
// `expected_crc`. `name` names it in errors.
std::shared_ptr<const Bytes> inflate_raw(const uint8_t* data, size_t size, uint64_t expected,
                                         uint32_t expected_crc, const std::string& name,
                                         int64_t spill_bytes = kDefaultSpillBytes);

// Collects bytes in memory until they pass `spill_bytes`, then in an unlinked temporary file.
class SpillWriter {
 public:
  explicit SpillWriter(int64_t spill_bytes, std::string name);
  ~SpillWriter();
  SpillWriter(const SpillWriter&) = delete;
  SpillWriter& operator=(const SpillWriter&) = delete;
  void append(const void* data, size_t n);
  // Expects about `n` bytes: memory for them up to the spill threshold is taken at once rather than by
  // doubling.
  void reserve(uint64_t n);
  uint64_t size() const { return size_; }
  bool spilled() const { return fd_ >= 0; }
  std::shared_ptr<const Bytes> finish();

 private:
  void flush();
  int64_t spill_bytes_;
  std::string name_;
  std::vector<uint8_t> buf_;
  uint64_t size_ = 0;
  int fd_ = -1;
};

// "train-images-idx3-ubyte.gz" from "/data/fashion/train-images-idx3-ubyte.gz": files named in messages.
std::string file_name(const std::string& path);

// The `where` of a message about a byte of a file: "t10k-images-idx3-ubyte.gz: byte 16".
std::string at_byte(const std::string& file, uint64_t offset);

// Text of a damaged input as a message quotes it: its first `most` bytes, then how many more there are.
std::string clipped(std::string_view text, size_t most = 200);

// What a data file is by its first bytes: "an NPY array", "a zip archive (NPZ)", "a gzip file" or "an IDX
// file"; nullptr when they tell none of these (for messages about a file given in the wrong place).
const char* data_file_kind(std::string_view head);
// Whether bytes start as a Python pickle of protocol 2 to 5 does (the CIFAR Python version's batches).
bool starts_as_pickle(std::string_view head);

// A CSV cell as a number: all of it in decimal or exponent form, with an optional leading '+'. What a cell
// that is not one holds, for the message: "" when it is none at all, or a note such as "past the range of
// numbers" for 1e400 (from_chars' out-of-range).
enum class CsvNumber { ok, not_a_number, out_of_range };
CsvNumber parse_csv_number(std::string_view s, double* out);

}  // namespace trainer::formats
