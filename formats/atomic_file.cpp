// Temporary file, fsync, rename, directory fsync; and removal of the temporary file on every failure path.
#include "formats/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>

#include "engine/util/error.h"

namespace trainer::formats {

namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string directory_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// A suffix that differs between processes and between files of one process, so that two writers of the same
// destination never share a temporary file.
std::string temp_suffix() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t process_salt = [] {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
  }();
  uint64_t v = process_salt ^ (uint64_t(::getpid()) << 40) ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ULL);
  return fmt::format("{:016x}", v);
}

// Removes the temporary files that writers killed mid-write (SIGKILL, a power loss) left in `dir`: this
// class's ".NAME.tmp-<16 hex digits>" of files of `name`'s kind (its extension: every checkpoint of an output
// directory, say). A live writer holds an exclusive lock on its file, which a dead one's kernel released;
// files touched within the last minute are left alone, so that one just created, not yet locked, is never
// taken.
void remove_stale_temporaries(const std::string& dir, const std::string& name, const std::string& own) {
  const size_t dot = name.find_last_of('.');
  const std::string kind = dot == std::string::npos || dot == 0 ? name : name.substr(dot);
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const time_t now = ::time(nullptr);
  while (const dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    constexpr size_t kSuffix = 5 + 16;  // ".tmp-" and the digits
    if (entry.size() <= 1 + kind.size() + kSuffix || entry[0] != '.') continue;
    const std::string target = entry.substr(1, entry.size() - 1 - kSuffix);
    const std::string suffix = entry.substr(entry.size() - kSuffix);
    if (!target.ends_with(kind) || !suffix.starts_with(".tmp-") ||
        suffix.find_first_not_of("0123456789abcdef", 5) != std::string::npos)
      continue;
    const std::string path = dir + "/" + entry;
    struct stat st {};
    if (path == own || ::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || now - st.st_mtime < 60)
      continue;
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) ::unlink(path.c_str());
    ::close(fd);
  }
  ::closedir(d);
}

}  // namespace

std::string written_path(const std::string& path) {
  std::string at = path;
  struct stat st {};
  for (int hops = 0; ::lstat(at.c_str(), &st) == 0 && S_ISLNK(st.st_mode); ++hops) {
    std::error_code ec;
    std::filesystem::path target = std::filesystem::read_symlink(at, ec);
    if (ec || hops == 40)
      throw InputError(path,
                       ec ? "is a symbolic link that cannot be read: " + ec.message()
                          : std::string("is a symbolic link in a loop of links"),
                       "name a file, or a new path");
    if (target.is_relative()) target = std::filesystem::path(at).parent_path() / target;
    at = target.string();
  }
  return at;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  if (path_.empty() || path_.back() == '/')
    throw InputError(path_.empty() ? "(empty path)" : path_, "a file name is needed, not a directory");
  // A symbolic link is written through: its target is replaced (or made) and the link stays. What is not a
  // regular file (a directory, a FIFO, a device such as /dev/null) is never replaced by one.
  path_ = written_path(path_);
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw InputError(path_, "is not a regular file, and writing would replace it with one",
                     "name a file, or a new path");
  const std::string dir = directory_of(path_);
  const std::string name = base_name(path_);
  for (int attempt = 0;; ++attempt) {
    temp_path_ = fmt::format("{}/.{}.tmp-{}", dir, name, temp_suffix());
    // 0666 before the umask: the same permissions a plain open() of the destination would give.
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) {
      // Held until the file is renamed or removed: it tells a later writer that this one is alive.
      (void)::flock(fd_, LOCK_EX | LOCK_NB);
      remove_stale_temporaries(dir, name, temp_path_);
      break;
    }
    int err = errno;
    if (err == EEXIST && attempt < 100) continue;
    temp_path_.clear();
    throw InputError(path_, fmt::format("cannot create a file in directory {}: {}", dir, errno_text(err)),
                     "check that the directory exists and is writable");
  }
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  write_at(size_bytes_, data, n);
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t n) {
  TRAINER_ASSERT(fd_ >= 0 && !committed_, "write to {} after commit", path_);
  TRAINER_ASSERT(offset <= size_bytes_, "write at {} past the end ({}) of {}", offset, size_bytes_, path_);
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      throw RuntimeError(fmt::format(
          "{}: writing failed: {}{}", path_, errno_text(e),
          e == ENOSPC || e == EDQUOT ? " (the file keeps what it held before; free some space and try again)"
                                     : ""));
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  size_bytes_ = std::max(size_bytes_, offset);
}

void AtomicFile::commit() {
  TRAINER_ASSERT(fd_ >= 0 && !committed_, "{} committed twice", path_);
  if (::fsync(fd_) != 0)
    throw RuntimeError(fmt::format("{}: flushing to disk failed: {}", path_, errno_text(errno)));
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw RuntimeError(fmt::format("{}: closing failed: {}", path_, errno_text(errno)));
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    throw InputError(path_, fmt::format("cannot replace the file: {}", errno_text(err)),
                     "check that the path is not a directory and that its directory is writable");
  }
  committed_ = true;
  // The rename is durable only once the directory entry is on disk.
  const std::string dir = directory_of(path_);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    throw RuntimeError(fmt::format("{}: cannot open the directory to flush it: {}", dir, errno_text(errno)));
  int rc = ::fsync(dfd);
  int err = errno;
  ::close(dfd);
  // Some file systems cannot fsync a directory (EINVAL); the rename is as durable as they make it.
  if (rc != 0 && err != EINVAL)
    throw RuntimeError(fmt::format("{}: flushing the directory to disk failed: {}", dir, errno_text(err)));
}

void write_file_atomically(const std::string& path, std::string_view contents) {
  AtomicFile f(path);
  f.write(contents);
  f.commit();
}

}  // namespace trainer::formats
