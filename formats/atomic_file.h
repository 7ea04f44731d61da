// Crash-safe file writing: bytes go to a temporary file in the destination's directory, which is fsynced and
// renamed over the destination, and the directory is fsynced. A reader sees the old file or the whole new
// one, never a part, even after a crash or power loss.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace trainer::formats {

// The file that writing `path` replaces: path itself, or the target its symbolic links lead to, followed by
// hand (a dangling link has no canonical form; its target is made). InputError for a loop of links or a link
// that cannot be read.
std::string written_path(const std::string& path);

class AtomicFile {
 public:
  // Creates the temporary file "<dir>/.<name>.tmp-<random>" beside `path`, locked (flock) while it is
  // written, and removes those that dead writers left beside it for files of its extension (unlocked,
  // untouched for a minute). A directory that is missing or not writable is an InputError naming `path`.
  explicit AtomicFile(std::string path);
  // Without commit() (an exception, an early return), the temporary file is removed and `path` is untouched.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends n bytes. A failed write (disk full, I/O error) is a RuntimeError naming `path`.
  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Overwrites n bytes written earlier, at `offset` (a checksum known only at the end).
  void write_at(uint64_t offset, const void* data, size_t n);
  uint64_t size() const { return size_bytes_; }

  // fsync, close, rename over `path`, fsync of the directory. After it returns, the new file is durable.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void discard() noexcept;
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  uint64_t size_bytes_ = 0;
  bool committed_ = false;
};

// The whole file at once, through AtomicFile.
void write_file_atomically(const std::string& path, std::string_view contents);

}  // namespace trainer::formats
