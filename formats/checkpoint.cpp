// Writing checkpoints (header, streamed payload, checksum patched in last) and reading them back with every
// field, offset and checksum validated.
#include "formats/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <numeric>

#include "engine/util/error.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint_hash.h"
#include "formats/checkpoint_json.h"
#include "formats/data_bytes.h"

#ifndef TRAINER_VERSION
#error "TRAINER_VERSION must be defined (formats/CMakeLists.txt)"
#endif

namespace trainer::formats {

namespace {

static_assert(std::endian::native == std::endian::little, "tensor bytes are written as they are in memory");

namespace key = checkpoint_key;

constexpr const char* kMetadataKey = "__metadata__";
// A header this large is damage, not a spec: safetensors readers refuse the same.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
constexpr int kMaxRank = 64;
// Tensor bytes go to the file through a buffer of this size.
constexpr size_t kChunkBytes = size_t{1} << 20;

constexpr std::string_view kChecksumPrefix = "xxh64:";
// "xxh64:" H ":" P
constexpr size_t kChecksumChars = 6 + 16 + 1 + 16;
constexpr size_t kHeaderDigitsAt = 6;
constexpr size_t kPayloadDigitsAt = 6 + 16 + 1;

constexpr const char* kDamagedHint = "the file is damaged; use an earlier checkpoint";

const char* const kCallerKeys[] = {key::kSpec, key::kPlanSignature, key::kEpoch,
                                   key::kStep, key::kCursor,        key::kRng};

std::string checksum_text(uint64_t header_digest, uint64_t payload_digest) {
  return fmt::format("{}{}:{}", kChecksumPrefix, hex64(header_digest), hex64(payload_digest));
}

bool parse_hex64(std::string_view s, uint64_t* out) {
  if (s.size() != 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= static_cast<uint64_t>(c - 'a' + 10);
    else
      return false;  // upper case too: one spelling per digest, so no byte can change unnoticed
  }
  *out = v;
  return true;
}

bool parse_checksum(std::string_view s, uint64_t* header_digest, uint64_t* payload_digest) {
  return s.size() == kChecksumChars && s.substr(0, kChecksumPrefix.size()) == kChecksumPrefix &&
         s[kPayloadDigitsAt - 1] == ':' && parse_hex64(s.substr(kHeaderDigitsAt, 16), header_digest) &&
         parse_hex64(s.substr(kPayloadDigitsAt, 16), payload_digest);
}

bool parse_decimal(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  if (s.size() > 1 && s[0] == '0') return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

void put_u64_le(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

uint64_t get_u64_le(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// Reads exactly n bytes at `offset`; false when the file ends first.
bool read_exactly(int fd, void* dst, size_t n, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw InputError(path, fmt::format("reading failed: {}", std::strerror(errno)), kDamagedHint);
    }
    if (r == 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

class ReadFd {
 public:
  explicit ReadFd(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0)
      throw InputError(path, fmt::format("cannot open the checkpoint: {}", std::strerror(errno)),
                       "check the path and its permissions");
    struct stat st;
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw InputError(path, "not a regular file", "give the path of a checkpoint file");
    }
    size_bytes_ = static_cast<uint64_t>(st.st_size);
  }
  ~ReadFd() { ::close(fd_); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
  int get() const { return fd_; }
  uint64_t size() const { return size_bytes_; }

 private:
  int fd_ = -1;
  uint64_t size_bytes_ = 0;
};

// The header as read, with what the payload check needs.
struct Header {
  CheckpointInfo info;
  uint64_t payload_offset = 0;
  uint64_t payload_digest = 0;
};

[[noreturn]] void damaged(const std::string& where, const std::string& what) {
  throw InputError(where, what, kDamagedHint);
}

const JsonValue* string_member(const JsonValue& obj, std::string_view name) {
  const JsonValue* v = obj.find(name);
  return v && v->kind == JsonValue::Kind::string ? v : nullptr;
}

CheckpointTensorInfo parse_tensor_entry(const std::string& name, const JsonValue& v, uint64_t header_at,
                                        uint64_t payload_bytes, uint64_t* begin, uint64_t* end,
                                        const std::string& path) {
  const std::string where = at_byte(path, header_at + v.begin);
  if (v.kind != JsonValue::Kind::object)
    damaged(where, fmt::format("the entry of tensor \"{}\" is not an object", name));
  for (const auto& [k, _] : v.members)
    if (k != "dtype" && k != "shape" && k != "data_offsets")
      damaged(where, fmt::format("tensor \"{}\" has an unknown field \"{}\"", name, k));
  CheckpointTensorInfo t;
  t.name = name;
  const JsonValue* dtype = string_member(v, "dtype");
  if (!dtype || !dtype_from_safetensors_name(dtype->text, &t.dtype))
    damaged(where,
            fmt::format("tensor \"{}\" has no dtype this trainer reads (F32, F64, BF16, F16, I32, I64, U8, "
                        "BOOL)",
                        name));
  const JsonValue* shape = v.find("shape");
  if (!shape || shape->kind != JsonValue::Kind::array || shape->items.size() > kMaxRank)
    damaged(where, fmt::format("tensor \"{}\" has no valid shape", name));
  uint64_t nbytes = engine::dtype_bytes(t.dtype);
  for (const JsonValue& d : shape->items) {
    uint64_t n;
    if (!d.to_u64(&n) || n > uint64_t{INT64_MAX} || __builtin_mul_overflow(nbytes, n, &nbytes))
      damaged(at_byte(path, header_at + d.begin),
              fmt::format("tensor \"{}\" has a dimension that is not a size", name));
    t.shape.dims().push_back(static_cast<int64_t>(n));
  }
  const JsonValue* offsets = v.find("data_offsets");
  if (!offsets || offsets->kind != JsonValue::Kind::array || offsets->items.size() != 2 ||
      !offsets->items[0].to_u64(begin) || !offsets->items[1].to_u64(end) || *begin > *end)
    damaged(where, fmt::format("tensor \"{}\" has no valid data_offsets [begin, end]", name));
  if (*end - *begin != nbytes)
    damaged(where,
            fmt::format("tensor \"{}\" of shape {} and dtype {} needs {} bytes, but its data_offsets span {}",
                        name, t.shape.str(), safetensors_dtype_name(t.dtype), nbytes, *end - *begin));
  if (*end > payload_bytes)
    damaged(where,
            fmt::format("tensor \"{}\" ends at byte {} of the data, past the end of the file (the file is "
                        "truncated or damaged)",
                        name, *end));
  t.nbytes = nbytes;
  return t;
}

// Everything but the payload digest: see checkpoint.h for the order of checks and what each one catches.
Header read_header(const ReadFd& fd, const std::string& path) {
  const uint64_t file_bytes = fd.size();
  unsigned char prefix[8];
  if (file_bytes < 8 || !read_exactly(fd.get(), prefix, 8, 0, path))
    damaged(path, fmt::format("{} bytes are too few for a checkpoint (the file is truncated)", file_bytes));
  const uint64_t header_bytes = get_u64_le(prefix);
  if (header_bytes > file_bytes - 8)
    damaged(at_byte(path, 0),
            fmt::format("the header length {} runs past the end of the file ({} bytes): the file "
                        "is truncated or damaged",
                        header_bytes, file_bytes));
  if (header_bytes < 2 || header_bytes > kMaxHeaderBytes)
    damaged(at_byte(path, 0), fmt::format("the header length {} is not plausible", header_bytes));

  std::string raw(8 + header_bytes, '\0');
  std::memcpy(raw.data(), prefix, 8);
  if (!read_exactly(fd.get(), raw.data() + 8, header_bytes, 8, path))
    damaged(path, "the file ended inside the header (it is truncated)");
  const std::string_view header_text = std::string_view(raw).substr(8);
  JsonValue root;
  try {
    root = parse_json(header_text);
  } catch (const JsonSyntaxError& e) {
    damaged(at_byte(path, 8 + e.offset()), fmt::format("the header is not valid JSON: {}", e.what()));
  }
  if (root.kind != JsonValue::Kind::object) damaged(at_byte(path, 8), "the header is not a JSON object");

  Header h;
  CheckpointInfo& info = h.info;
  info.file_bytes = file_bytes;
  const JsonValue* meta = root.find(kMetadataKey);
  if (!meta)
    throw InputError(path, "not a trainer checkpoint: its header has no __metadata__",
                     "the file is damaged, or is a safetensors file that trainer did not write");
  if (meta->kind != JsonValue::Kind::object)
    damaged(at_byte(path, 8 + meta->begin), "__metadata__ is not a JSON object");
  for (const auto& [k, v] : meta->members) {
    if (v.kind != JsonValue::Kind::string)
      damaged(at_byte(path, 8 + v.begin), fmt::format("metadata value \"{}\" is not a string", k));
    info.metadata[k] = v.text;
  }

  // The header checksum comes first: with it verified, every later message describes the file as written.
  auto version_text = [&]() -> std::string {
    auto it = info.metadata.find(key::kFormatVersion);
    return it == info.metadata.end() ? "" : it->second;
  };
  int64_t version = 0;
  const bool version_ok = parse_decimal(version_text(), &version);
  const bool newer = version_ok && version > kCheckpointFormatVersion;
  const std::string newer_hint = fmt::format(
      "the file was written by a newer trainer (checkpoint format_version {}; this trainer reads {} and "
      "older): "
      "read it with a trainer at least as new",
      version, kCheckpointFormatVersion);

  const JsonValue* checksum = string_member(*meta, key::kChecksum);
  uint64_t header_digest = 0;
  // The span check (quotes included) makes sure the digits in the file are the digits read: no escapes.
  const bool checksum_ok = checksum && checksum->end - checksum->begin == kChecksumChars + 2 &&
                           parse_checksum(checksum->text, &header_digest, &h.payload_digest);
  if (checksum_ok) {
    const size_t digits_at = 8 + checksum->begin + 1 + kHeaderDigitsAt;
    Xxh64 hash;
    hash.update(raw.data(), digits_at);
    hash.update("0000000000000000", 16);
    hash.update(raw.data() + digits_at + 16, raw.size() - digits_at - 16);
    if (hash.digest() != header_digest) {
      if (newer)
        throw InputError(path,
                         fmt::format("the header does not match its checksum: the file is damaged, or uses "
                                     "checkpoint format_version {} (this trainer reads {})",
                                     version, kCheckpointFormatVersion),
                         newer_hint + "; if it is damaged, use an earlier checkpoint");
      damaged(path, "the header does not match its checksum");
    }
  }
  auto format = info.metadata.find(key::kFormat);
  if (format == info.metadata.end() || format->second != kCheckpointFormat)
    throw InputError(
        path,
        fmt::format("not a trainer checkpoint: __metadata__ lacks \"format\": \"{}\"", kCheckpointFormat),
        checksum_ok ? "the file may be a safetensors file from another program; give a file written "
                      "by trainer"
                    : kDamagedHint);
  if (!version_ok || version < 1)
    damaged(path, fmt::format("format_version \"{}\" is not a version number", version_text()));
  if (newer)
    throw InputError(path,
                     fmt::format("checkpoint format_version {} is newer than this trainer reads ({})",
                                 version, kCheckpointFormatVersion),
                     newer_hint);
  if (!checksum) damaged(path, "the metadata has no checksum");
  if (!checksum_ok)
    damaged(at_byte(path, 8 + checksum->begin),
            fmt::format("the checksum \"{}\" is not written as xxh64:<16 hex digits>:<16 hex digits>",
                        checksum->text));

  const uint64_t payload_offset = 8 + header_bytes;
  const uint64_t payload_bytes = file_bytes - payload_offset;
  struct Entry {
    uint64_t begin, end;
    size_t header_at;
    CheckpointTensorInfo t;
  };
  std::vector<Entry> entries;
  for (const auto& [name, v] : root.members) {
    if (name == kMetadataKey) continue;
    Entry e;
    e.header_at = 8 + v.begin;
    e.t = parse_tensor_entry(name, v, 8, payload_bytes, &e.begin, &e.end, path);
    entries.push_back(std::move(e));
  }
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  for (Entry& e : entries) {
    if (e.begin != covered)
      damaged(
          at_byte(path, e.header_at),
          fmt::format("tensor \"{}\" starts at byte {} of the data, but the tensors before it end at {} (the "
                      "data must be tiled without gaps or overlaps)",
                      e.t.name, e.begin, covered));
    covered = e.end;
    e.t.file_offset = payload_offset + e.begin;
    info.tensors.push_back(std::move(e.t));
  }
  if (covered != payload_bytes)
    damaged(path,
            fmt::format("the tensors end at byte {} of the data, but the file has {} bytes of data after the "
                        "header",
                        covered, payload_bytes));

  if (!info.metadata.contains(key::kProducer)) damaged(path, "the metadata has no \"producer\"");
  for (const char* k : kCallerKeys)
    if (!info.metadata.contains(k)) damaged(path, fmt::format("the metadata has no \"{}\"", k));
  checkpoint_int(info.metadata, key::kEpoch, path);
  checkpoint_int(info.metadata, key::kStep, path);
  h.payload_offset = payload_offset;
  return h;
}

}  // namespace

std::string_view safetensors_dtype_name(engine::DType t) {
  switch (t) {
    case engine::DType::f32:
      return "F32";
    case engine::DType::f64:
      return "F64";
    case engine::DType::bf16:
      return "BF16";
    case engine::DType::f16:
      return "F16";
    case engine::DType::i32:
      return "I32";
    case engine::DType::i64:
      return "I64";
    case engine::DType::u8:
      return "U8";
    case engine::DType::boolean:
      return "BOOL";
  }
  TRAINER_ASSERT(false, "unknown dtype {}", static_cast<int>(t));
  return "";
}

bool dtype_from_safetensors_name(std::string_view name, engine::DType* out) {
  for (int i = 0; i < engine::kNumDTypes; ++i) {
    auto t = static_cast<engine::DType>(i);
    if (safetensors_dtype_name(t) == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

const engine::Tensor* Checkpoint::find(const std::string& name) const {
  for (const CheckpointTensor& t : tensors)
    if (t.name == name) return &t.value;
  return nullptr;
}

CheckpointTensorSource tensor_source(std::string name, const engine::Tensor& t) {
  CheckpointTensorSource s;
  s.name = std::move(name);
  s.dtype = t.dtype();
  s.shape = t.shape();
  const auto* bytes = static_cast<const std::byte*>(t.raw());
  s.read = [bytes](uint64_t offset, std::span<std::byte> dst) {
    std::memcpy(dst.data(), bytes + offset, dst.size());
  };
  return s;
}

void write_checkpoint(const std::string& path, const std::map<std::string, std::string>& metadata,
                      const std::vector<CheckpointTensorSource>& tensors) {
  std::map<std::string, std::string> meta = metadata;
  for (const char* k : kCallerKeys) TRAINER_ASSERT(meta.contains(k), "checkpoint metadata lacks \"{}\"", k);
  int64_t unused;
  for (const char* k : {key::kEpoch, key::kStep})
    TRAINER_ASSERT(parse_decimal(meta[k], &unused), "checkpoint metadata \"{}\" = \"{}\" is not a count", k,
                   meta[k]);
  meta[key::kFormat] = kCheckpointFormat;
  meta[key::kFormatVersion] = std::to_string(kCheckpointFormatVersion);
  meta[key::kProducer] = std::string("trainer ") + TRAINER_VERSION;
  meta[key::kChecksum] = checksum_text(0, 0);

  // Larger elements first keeps every tensor aligned to its element size in the file (the payload starts at a
  // multiple of 8), which lets readers map the data in place.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return engine::dtype_bytes(tensors[a].dtype) > engine::dtype_bytes(tensors[b].dtype);
  });

  std::string header = "{";
  auto add_string = [&](std::string_view s, const char* what) {
    if (!append_json_string(header, s))
      throw InputError(path, fmt::format("{} \"{}\" is not valid UTF-8", what, s),
                       "checkpoint metadata and tensor names must be text");
  };
  add_string(kMetadataKey, "key");
  header += ":{";
  size_t checksum_at = 0;
  bool first = true;
  for (const auto& [k, v] : meta) {
    if (!first) header += ',';
    first = false;
    add_string(k, "the metadata key");
    header += ':';
    if (k == key::kChecksum) checksum_at = header.size() + 1;
    add_string(v, fmt::format("the value of metadata key \"{}\"", k).c_str());
  }
  header += '}';
  std::vector<std::string_view> names;
  uint64_t payload_bytes = 0, largest = 0;
  for (size_t i : order) {
    const CheckpointTensorSource& t = tensors[i];
    TRAINER_ASSERT(t.read, "tensor \"{}\" has no source", t.name);
    if (t.name.empty() || t.name == kMetadataKey)
      throw InputError(path, fmt::format("\"{}\" cannot name a tensor in a checkpoint", t.name),
                       "rename the parameter");
    names.push_back(t.name);
    uint64_t nbytes = engine::dtype_bytes(t.dtype);
    for (int64_t d : t.shape.dims()) {
      TRAINER_ASSERT(d >= 0, "tensor \"{}\" has shape {}", t.name, t.shape.str());
      nbytes *= static_cast<uint64_t>(d);
    }
    header += ',';
    add_string(t.name, "the tensor name");
    header += fmt::format(R"(:{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}})",
                          safetensors_dtype_name(t.dtype), fmt::join(t.shape.dims(), ","), payload_bytes,
                          payload_bytes + nbytes);
    payload_bytes += nbytes;
    largest = std::max(largest, nbytes);
  }
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end())
    throw InputError(path, fmt::format("two tensors are named \"{}\"", *dup),
                     "give every tensor its own name");
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');

  std::string prefix(8, '\0');
  put_u64_le(reinterpret_cast<unsigned char*>(prefix.data()), header.size());
  AtomicFile file(path);
  file.write(prefix);
  file.write(header);

  std::vector<std::byte> buffer(std::min<uint64_t>(largest, kChunkBytes));
  Xxh64 payload_hash;
  for (size_t i : order) {
    const CheckpointTensorSource& t = tensors[i];
    uint64_t nbytes = engine::dtype_bytes(t.dtype) * static_cast<uint64_t>(t.shape.numel());
    for (uint64_t at = 0; at < nbytes;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(nbytes - at, buffer.size()));
      t.read(at, std::span<std::byte>(buffer.data(), n));
      payload_hash.update(buffer.data(), n);
      file.write(buffer.data(), n);
      at += n;
    }
  }

  // P goes into the header first, then H over the header with its own digits still zero (see checkpoint.h).
  header.replace(checksum_at + kPayloadDigitsAt, 16, hex64(payload_hash.digest()));
  Xxh64 header_hash;
  header_hash.update(prefix.data(), prefix.size());
  header_hash.update(header.data(), header.size());
  header.replace(checksum_at + kHeaderDigitsAt, 16, hex64(header_hash.digest()));
  file.write_at(8 + checksum_at, header.data() + checksum_at, kChecksumChars);
  file.commit();
}

void write_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  std::vector<CheckpointTensorSource> sources;
  sources.reserve(checkpoint.tensors.size());
  for (const CheckpointTensor& t : checkpoint.tensors) sources.push_back(tensor_source(t.name, t.value));
  write_checkpoint(path, checkpoint.metadata, sources);
}

CheckpointInfo read_checkpoint_metadata(const std::string& path) {
  ReadFd fd(path);
  return read_header(fd, path).info;
}

Checkpoint read_checkpoint(const std::string& path) {
  ReadFd fd(path);
  Header h = read_header(fd, path);
  Checkpoint c;
  c.metadata = std::move(h.info.metadata);
  c.tensors.reserve(h.info.tensors.size());
  Xxh64 payload_hash;
  for (const CheckpointTensorInfo& t : h.info.tensors) {
    engine::Tensor value(t.dtype, t.shape);
    if (!read_exactly(fd.get(), value.raw(), t.nbytes, t.file_offset, path))
      damaged(path, "the file ended while its tensors were read (it is truncated)");
    payload_hash.update(value.raw(), t.nbytes);
    c.tensors.push_back({t.name, std::move(value)});
  }
  if (payload_hash.digest() != h.payload_digest) damaged(path, "the tensor data does not match the checksum");
  return c;
}

const std::string& checkpoint_value(const std::map<std::string, std::string>& metadata, const std::string& k,
                                    const std::string& path) {
  auto it = metadata.find(k);
  if (it == metadata.end())
    throw InputError(path, fmt::format("the checkpoint metadata has no \"{}\"", k), kDamagedHint);
  return it->second;
}

int64_t checkpoint_int(const std::map<std::string, std::string>& metadata, const std::string& k,
                       const std::string& path) {
  const std::string& v = checkpoint_value(metadata, k, path);
  int64_t n;
  if (!parse_decimal(v, &n))
    throw InputError(path, fmt::format("the checkpoint metadata \"{}\" = \"{}\" is not a count", k, v),
                     kDamagedHint);
  return n;
}

}  // namespace trainer::formats
