// The IDX reader: checks the magic number, the dimensions and the size, then exposes the records in place.
#include "formats/data_idx.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

#include "engine/util/error.h"

namespace trainer::formats {

namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

struct IdxType {
  uint8_t code;
  int bytes;            // stored element size
  engine::DType dtype;  // in memory
  const char* name;
};

constexpr IdxType kIdxTypes[] = {
    {0x08, 1, engine::DType::u8, "unsigned byte"}, {0x09, 1, engine::DType::i32, "signed byte"},
    {0x0B, 2, engine::DType::i32, "short"},        {0x0C, 4, engine::DType::i32, "int"},
    {0x0D, 4, engine::DType::f32, "float"},        {0x0E, 8, engine::DType::f64, "double"},
};

// Big-endian elements of a wider or signed type, converted to host order in blocks.
std::shared_ptr<const Bytes> convert_elements(const uint8_t* src, uint64_t count, const IdxType& t,
                                              const std::string& name, int64_t spill_bytes) {
  SpillWriter out(spill_bytes, name);
  constexpr uint64_t kBlock = 1 << 16;
  std::vector<uint8_t> block(kBlock * 8);
  for (uint64_t first = 0; first < count; first += kBlock) {
    const uint64_t n = std::min(kBlock, count - first);
    const uint8_t* s = src + first * static_cast<uint64_t>(t.bytes);
    uint8_t* d = block.data();
    for (uint64_t i = 0; i < n; ++i, s += t.bytes) {
      switch (t.code) {
        case 0x09: {
          int32_t v = static_cast<int8_t>(s[0]);
          std::memcpy(d + 4 * i, &v, 4);
          break;
        }
        case 0x0B: {
          int32_t v = static_cast<int16_t>(static_cast<uint16_t>((s[0] << 8) | s[1]));
          std::memcpy(d + 4 * i, &v, 4);
          break;
        }
        case 0x0C:
        case 0x0D: {
          uint32_t v = be32(s);
          std::memcpy(d + 4 * i, &v, 4);
          break;
        }
        default: {
          uint64_t v = (uint64_t{be32(s)} << 32) | be32(s + 4);
          std::memcpy(d + 8 * i, &v, 8);
          break;
        }
      }
    }
    out.append(block.data(), n * engine::dtype_bytes(t.dtype));
  }
  return out.finish();
}

}  // namespace

Column read_idx(const std::string& path, int64_t spill_bytes) {
  const std::string name = file_name(path);
  bool gz = false;
  auto bytes = load_file(path, spill_bytes, &gz);
  // Offsets in a compressed file count decompressed bytes; say so, or they would not match the file on disk.
  const char* unpacked = gz ? " (decompressed)" : "";
  const uint8_t* p = bytes->data();
  const uint64_t size = bytes->size();
  const char* hint_magic =
      "IDX files start with 0x00000801 (labels) or 0x00000803 (images); is this the right file, fully "
      "downloaded?";
  if (size < 4) {
    throw InputError(at_byte(name, size),
                     fmt::format("the file ends after {} bytes, inside the IDX magic number", size),
                     hint_magic);
  }
  const uint32_t magic = be32(p);
  const IdxType* type = nullptr;
  for (const auto& t : kIdxTypes) {
    if (t.code == p[2]) type = &t;
  }
  const int rank = p[3];
  if (p[0] != 0 || p[1] != 0 || type == nullptr || rank == 0) {
    // Another format read as IDX (one file of a dataset whose other file is IDX): said by its name.
    const std::string_view head(reinterpret_cast<const char*>(p), std::min<uint64_t>(size, 8));
    // IDX-like bytes with a bad type or rank stay a bad magic number; gzip here was inflated once already.
    const char* other = p[0] == 0 ? nullptr : data_file_kind(head);
    if (other && head.starts_with("\x1f\x8b")) other = "gzip data that holds no IDX file";
    if (other)
      throw InputError(at_byte(name, 0), fmt::format("is {}, read as IDX (the dataset's format)", other),
                       "a dataset's files share one format (its format key, or the first file's name, sets "
                       "it): give the samples and the labels in one format");
    throw InputError(at_byte(name, 0), fmt::format("bad magic number 0x{:08x}: not an IDX file", magic),
                     hint_magic);
  }
  const uint64_t header = 4 + 4 * static_cast<uint64_t>(rank);
  if (size < header) {
    throw InputError(
        at_byte(name, size),
        fmt::format("the file ends inside the header{}: {} dimensions need {} bytes", unpacked, rank, header),
        "the file is truncated: download it again");
  }
  std::vector<int64_t> dims(static_cast<size_t>(rank));
  uint64_t data_bytes = type->bytes;
  bool too_large = false;
  for (int d = 0; d < rank; ++d) {
    dims[static_cast<size_t>(d)] = be32(p + 4 + 4 * d);
    too_large =
        too_large ||
        __builtin_mul_overflow(data_bytes, static_cast<uint64_t>(dims[static_cast<size_t>(d)]), &data_bytes);
  }
  if (too_large)
    throw InputError(at_byte(name, 4),
                     fmt::format("the header's dimensions [{}] of {} need more than 2^64 data bytes",
                                 fmt::join(dims, ", "), type->name),
                     "the header is damaged: download the file again");
  engine::Shape record_shape(std::vector<int64_t>(dims.begin() + 1, dims.end()));
  if (size < header + data_bytes) {
    throw InputError(
        at_byte(name, size),
        fmt::format("the file ends after {} of its {} data bytes{} ({} records of shape {}, {})",
                    size - header, data_bytes, unpacked, dims[0], record_shape.str(), type->name),
        "the file is truncated: download it again");
  }
  if (size > header + data_bytes) {
    throw InputError(
        at_byte(name, header + data_bytes),
        fmt::format("{} bytes follow the data{}: the header says {} records of shape {} ({})",
                    size - header - data_bytes, unpacked, dims[0], record_shape.str(), type->name),
        "the header does not describe this data: the file may be damaged");
  }
  Column col(type->dtype, record_shape);
  Segment seg;
  seg.file = name;
  seg.count = dims[0];
  seg.stride = col.record_bytes();
  if (type->code == 0x08) {
    seg.bytes = std::move(bytes);
    seg.offset = header;
  } else {
    seg.bytes = convert_elements(p + header, data_bytes / type->bytes, *type, name, spill_bytes);
    seg.offset = 0;
  }
  col.add(std::move(seg));
  return col;
}

}  // namespace trainer::formats
